"""Effect of a dev-tuned TH offset on threshold-class losses, from runs' saved logits (no retraining).

    python scripts/tune_offset.py RUN_DIR [RUN_DIR ...] [--json]

For each run: the offset o that maximises dev F1 of `threshold_decode(logits, top_k, o)`
(`docre.losses.common.tune_threshold_offset`, exact), then dev and test P/R/F1 at o = 0 (the official
rule) and at the tuned o. Scores are over (pair, relation) facts of the saved fp16 logits, i.e. the
official P/R/F1 up to fp16 rounding of the logits; Ign F1 needs the documents and is not shown.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from docre.errors import run_cli  # noqa: E402


def prf(decoded, labels) -> dict:
    predicted, gold = decoded[:, 1:] > 0, labels[:, 1:] > 0
    tp, p, g = int((predicted & gold).sum()), int(predicted.sum()), int(gold.sum())
    precision, recall = (tp / p if p else 0.0), (tp / g if g else 0.0)
    return {"precision": precision, "recall": recall, "f1": 2 * tp / (p + g) if p + g else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line at the end")
    args = parser.parse_args()

    from docre.config import load_config
    from docre.diagnostics import load_logits
    from docre.losses.common import threshold_decode, tune_threshold_offset

    rows = []
    for run_dir in map(Path, args.run_dirs):
        cfg = load_config(run_dir / "config.yaml")
        top_k = cfg.eval.top_k
        dev, test = load_logits(run_dir / "dev_logits.safetensors"), load_logits(run_dir / "test_logits.safetensors")
        offset = tune_threshold_offset(dev[0], dev[1], top_k)
        row = {"run": run_dir.name, "loss": cfg.loss["name"], "offset": offset}
        for split, (logits, labels, _) in (("dev", dev), ("test", test)):
            for name, o in (("official", 0.0), ("tuned", offset)):
                row[f"{split}_{name}"] = prf(threshold_decode(logits, top_k, o), labels)
        rows.append(row)
    print("| run | loss | dev-tuned offset | test P / R / F1, offset 0 | test P / R / F1, tuned | dev F1 0 → tuned |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        a, b = row["test_official"], row["test_tuned"]
        print(f"| {row['run']} | {row['loss']} | {row['offset']:+.3f} | {100 * a['precision']:.2f} / {100 * a['recall']:.2f} / "
              f"{100 * a['f1']:.2f} | {100 * b['precision']:.2f} / {100 * b['recall']:.2f} / {100 * b['f1']:.2f} | "
              f"{100 * row['dev_official']['f1']:.2f} → {100 * row['dev_tuned']['f1']:.2f} |")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
