"""CDR through the one training loop: the EoG fixture trains with the tiny model, results.json
holds binary F1 with its intra/inter split and the breakdown, and evaluate.py and
scripts/tune_offset.py score the run the same way."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from docre.config import load_config
from docre.trainer import train
from tests.cli import run_main

ROOT = Path(__file__).resolve().parent.parent


def test_cdr_trains_and_evaluates(tiny_backbone, tmp_path, capsys):
    cfg = load_config(ROOT / "configs/smoke.yaml", [
        f"model.backbone={tiny_backbone}", f"output_dir={tmp_path}", "data.dataset=cdr", "data.dir=tests/fixtures",
        "data.train_file=cdr_tiny.data", "data.dev_file=cdr_tiny.data", "data.test_file=cdr_tiny.data",
        "data.rel2id=", "data.rel_info=", "eval.top_k=1", "train.epochs=3", "loss.alpha=7.5",
    ])
    results = train(cfg)
    run_dir = Path(results["run_dir"])
    assert json.loads((run_dir / "rel2id.json").read_text()) == {"Na": 0, "CID": 1}
    for split in ("dev", "test"):
        scores = results[split]
        assert scores["num_gold"] == 2 and scores["intra_num_gold"] == 1 and scores["inter_num_gold"] == 1
        assert {"precision", "recall", "f1", "intra_f1", "inter_f1"} <= scores.keys() and "ign_f1" not in scores
        assert results["breakdown"][split]["intra"]["f1"] == scores["intra_f1"]
    predictions = json.loads((run_dir / "test_predictions.json").read_text())
    candidates = {("1001", 0, 1), ("1001", 0, 2), ("1002", 1, 0), ("1003", 0, 1)}
    assert all((p["title"], p["h_idx"], p["t_idx"]) in candidates and p["r"] == "CID" for p in predictions)

    result = subprocess.run([sys.executable, "evaluate.py", str(run_dir), "--split", "test", "--json"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| split | P | R | F1 | Intra F1 | Inter F1 |" in result.stdout
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("f1", "intra_f1", "inter_f1", "num_predicted"):
        assert scores[key] == results["test"][key], key

    # the model predicts on its corpus's own file format: the run's test predictions, over the file's candidate pairs
    assert run_main("predict", [str(run_dir), "tests/fixtures/cdr_tiny.data", "-o", str(tmp_path / "cdr.json")]) == 0
    predicted = json.loads((tmp_path / "cdr.json").read_text())
    assert sorted((p["title"], p["h_idx"], p["t_idx"], p["r"]) for p in predicted) == \
        sorted((p["title"], p["h_idx"], p["t_idx"], p["r"]) for p in predictions)

    capsys.readouterr()
    assert run_main("tune_offset", [str(run_dir), "--json"]) == 0  # binary scores: no Ign F1 to print
    out = capsys.readouterr().out
    row = json.loads(out.strip().splitlines()[-1])[0]
    assert "ign_f1" not in row["test_official"]
    assert row["test_official"]["f1"] == pytest.approx(results["test"]["f1"], abs=0.02)  # fp16 logits
    assert f"| {run_dir.name} | atgl |" in out and "/ – |" in out
