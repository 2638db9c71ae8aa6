"""Effect of a dev-tuned TH offset on threshold-class losses, from runs' saved logits (no retraining).

For each run: the offset o that maximises dev F1 of `threshold_decode(logits, top_k, o)`
(`docre.losses.common.tune_threshold_offset`, exact), then dev and test P/R/F1 at o = 0 (the official
rule) and at the tuned o, with the official scorer (P, R, F1, Ign F1 against the run's training
documents; CDR and GDA: binary P, R, F1, no Ign F1). The logits are the saved fp16 ones, so a score can differ from the run's own
results.json in the last digit.

Examples:
  docre-tune-offset runs/minilm_atl-s66
  docre-tune-offset runs/redocred_mini/minilm_atl-s66 runs/redocred_mini/minilm_atgl-s66 --json
"""

import json
from pathlib import Path

from docre.allocator import use_huge_pages
from docre.cli import command_parser
from docre.errors import DocreError, run_cli


def official_scores(run_dir: Path, splits: dict, offsets: dict) -> dict:
    """{f"{split}_{name}": official scores} for the saved logits decoded with each offset."""
    from docre import run_dir as runs
    from docre.data import load_split, read_split
    from docre.inference import decode_predictions
    from docre.losses import build_loss
    from docre.metrics import score
    from docre.models import load_tokenizer

    cfg, _, decode = runs.load_config_and_loss(run_dir)
    data = cfg.data
    rel2id = runs.read_json(run_dir / runs.REL2ID)
    tokenizer = load_tokenizer(cfg.model.backbone, cfg.model.revision, cfg.model.trust_remote_code)
    ign_docs = read_split(data.dataset, data.ign_train_file or data.train_file, data.dir, None)[2]
    scores = {}
    for split, (logits, _, pairs_per_doc) in splits.items():
        spec = data.dev_file if split == "dev" else data.test_file
        features = load_split(split, data.dataset, spec, data.dir, tokenizer, rel2id, cfg.model.marker,
                              cfg.model.max_seq_length, data.cache_dir)
        if [len(f.hts) for f in features.features] != pairs_per_doc.tolist():
            raise DocreError(f"{run_dir}: {split}_logits.safetensors does not match the documents of {spec}")
        per_doc = list(logits.split(pairs_per_doc.tolist()))
        for name, offset in offsets.items():
            loss_fn = build_loss(**{**runs.loss_kwargs(run_dir, cfg), **decode, "th_offset": offset})
            predictions = decode_predictions(features.features, per_doc, loss_fn, cfg.eval.top_k, rel2id)
            scores[f"{split}_{name}"] = score(data.dataset, predictions, features.docs, ign_docs)
    return scores


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = command_parser("docre-tune-offset", __doc__)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a finished run directory with saved logits")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line at the end")
    args = parser.parse_args()

    from docre.diagnostics import load_logits
    from docre.losses import loss_keywords
    from docre.losses.common import tune_threshold_offset
    from docre.run_dir import load_config_and_loss, read_results

    rows = []
    for run_dir in map(Path, args.run_dirs):
        cfg, _, decode = load_config_and_loss(run_dir)
        if "th_offset" not in loss_keywords(cfg.loss["name"]):
            raise DocreError(f"{run_dir}: its loss {cfg.loss['name']!r} decodes without a TH logit to offset; "
                             "docre-tune-offset applies to the threshold-class losses (docs/losses.md)")
        top_k = cfg.eval.top_k
        dev, test = load_logits(run_dir / "dev_logits.safetensors"), load_logits(run_dir / "test_logits.safetensors")
        offset = tune_threshold_offset(dev[0], dev[1], top_k)
        row = {"run": run_dir.name, "loss": cfg.loss["name"], "offset": offset}
        # also decoded as the run decoded them (its decode.json), to compare with what evaluate reports
        as_run = {"as_run": decode["th_offset"]} if decode.get("th_offset") else {}
        row |= official_scores(run_dir, {"dev": dev, "test": test}, {"official": 0.0, "tuned": offset, **as_run})
        row["differs_from_results"] = _differences(row, read_results(run_dir) or {}, "as_run" if as_run else "official")
        rows.append(row)
    print("| run | loss | dev-tuned offset | test P / R / F1 / Ign F1, offset 0 | test P / R / F1 / Ign F1, tuned "
          "| dev F1 0 → tuned |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        a, b = row["test_official"], row["test_tuned"]
        print(f"| {row['run']} | {row['loss']} | {row['offset']:+.3f} | {_prfi(a)} | {_prfi(b)} | "
              f"{100 * row['dev_official']['f1']:.2f} → {100 * row['dev_tuned']['f1']:.2f} |")
    for row in rows:
        if row["differs_from_results"]:
            print(f"\n{row['run']}: these figures come from the saved fp16 logits (eval.save_logits), whose rounding "
                  f"can flip a decision: decoded as the run did, they differ from its results.json, which evaluate.py "
                  f"reproduces from the weights ({'; '.join(row['differs_from_results'])})")
    if args.json:
        print(json.dumps(rows))
    return 0


def _differences(row: dict, results: dict, name: str) -> list[str]:
    """"test F1 45.12 here, 45.13 in results.json" for each score that the saved logits, decoded as the
    run decoded them (`name`'s rows), give otherwise than the run's results.json."""
    labels = {"precision": "P", "recall": "R", "f1": "F1", "ign_f1": "Ign F1"}
    found = []
    for split in ("dev", "test"):
        ours, theirs = row.get(f"{split}_{name}", {}), results.get(split) or {}
        for key, label in labels.items():
            shown = [f"{100 * scores[key]:.2f}" for scores in (ours, theirs) if scores.get(key) is not None]
            if len(shown) == 2 and shown[0] != shown[1]:  # as the table shows them
                found.append(f"{split} {label} {shown[0]} here, {shown[1]} in results.json")
    return found


def _prfi(scores: dict) -> str:
    # CDR and GDA have no Ign F1 (no relation facts to ignore): "–" there
    return " / ".join(f"{100 * scores[k]:.2f}" if k in scores else "–" for k in ("precision", "recall", "f1", "ign_f1"))


def run() -> None:
    """The `docre-tune-offset` console command (and `python scripts/tune_offset.py`)."""
    run_cli(main)
