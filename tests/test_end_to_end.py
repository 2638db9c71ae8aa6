"""End to end on CPU with a tiny model: train.py runs, the loss falls, the run directory holds its
artefacts, evaluate.py reproduces the logged dev score, and the model learns a planted pattern."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from docre.config import load_config
from docre.errors import DocreError
from docre.trainer import train
from tests.conftest import build_tiny_backbone
from tests.synthetic import NAMES, planted_docs

ROOT = Path(__file__).resolve().parent.parent


def run(args, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def smoke_run(tiny_backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = run(["train.py", "configs/smoke.yaml", f"model.backbone={tiny_backbone}", f"output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "smoke-s66", result


def test_train_cli_prints_the_results_table(smoke_run):
    _, result = smoke_run
    assert "| split | P | R | F1 | Ign F1 |" in result.stdout
    assert "| dev |" in result.stdout and "| test |" in result.stdout
    assert "Traceback" not in result.stderr


def test_loss_falls_and_artefacts_exist(smoke_run):
    run_dir, _ = smoke_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["type"] == "train"]
    assert len(losses) >= 5 and losses[-1] < 0.85 * losses[0]
    for name in ("config.yaml", "best.safetensors", "best.json", "dev_predictions.json", "test_predictions.json",
                 "results.json", "rel2id.json", "environment.json", "train.log", "dev_logits.safetensors"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "last").exists()  # the resume state is dropped once the run finished
    results = json.loads((run_dir / "results.json").read_text())
    assert {"dev", "test", "seconds_per_step", "peak_rss_mb", "best_step"} <= results.keys()
    # ATLOP predicts no evidence: its evidence scores are absent (null), not 0, wherever scores are written
    evidence = ("evidence_precision", "evidence_recall", "evidence_f1")
    dev_rows = [r for r in rows if r["type"] == "eval"]
    for scores in (results["dev"], results["test"], *dev_rows):
        assert scores["num_evidence_predicted"] == 0 and all(scores[key] is None for key in evidence), scores
    environment = json.loads((run_dir / "environment.json").read_text())
    assert {"torch", "transformers", "cpu_threads", "git_commit", "git_dirty", "device"} <= environment.keys()
    predictions = json.loads((run_dir / "dev_predictions.json").read_text())
    assert all(set(row) == {"title", "h_idx", "t_idx", "r", "evidence"} for row in predictions)


def test_saved_config_rebuilds_the_same_config(smoke_run, tiny_backbone):
    run_dir, _ = smoke_run
    saved = load_config(run_dir / "config.yaml")
    assert saved.model.backbone == tiny_backbone and saved.loss == {"name": "atgl", "alpha": 16.5}


def test_evaluate_reproduces_the_logged_dev_score(smoke_run):
    run_dir, _ = smoke_run
    result = run(["evaluate.py", str(run_dir), "--json"])
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    logged = json.loads((run_dir / "best.json").read_text())
    for key in ("precision", "recall", "f1", "ign_f1", "num_predicted", "num_correct"):
        assert scores[key] == logged[key], key


def test_evaluate_scores_the_test_split_like_training(smoke_run):
    run_dir, _ = smoke_run
    result = run(["evaluate.py", str(run_dir), "--split", "test", "--json"])
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["f1"] == json.loads((run_dir / "results.json").read_text())["test"]["f1"]
    assert scores["evidence_f1"] is None and "Evi" not in result.stdout  # no evidence predicted: absent


def test_finished_run_is_not_overwritten(smoke_run, tiny_backbone):
    run_dir, _ = smoke_run
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={tiny_backbone}", f"output_dir={run_dir.parent}"])
    with pytest.raises(DocreError, match="already finished"):
        train(cfg)


def test_learns_a_planted_relation_pattern(tmp_path):
    backbone = build_tiny_backbone(tmp_path / "backbone", ["works", "for", "lives", "in", "met", *NAMES])
    (tmp_path / "train.json").write_text(json.dumps(planted_docs(80, seed=1)))
    (tmp_path / "dev.json").write_text(json.dumps(planted_docs(30, seed=2)))
    cfg = load_config(ROOT / "configs/smoke.yaml", [
        f"model.backbone={backbone}", f"output_dir={tmp_path / 'runs'}", f"data.dir={tmp_path}",
        "data.train_file=train.json", "data.dev_file=dev.json", "data.test_file=", "loss.name=atl",
        "train.batch_size=4", "train.epochs=30", "train.encoder_lr=3e-3", "train.head_lr=3e-3",
        "train.warmup_ratio=0.1", "eval.top_k=2",
    ])
    results = train(cfg)
    assert results["dev"]["f1"] >= 0.8, results["dev"]


def test_results_hold_the_breakdowns_with_relation_names(smoke_run):
    """results.json and evaluate.py carry intra/inter, frequent/long-tail and per-relation scores
    (docs/metrics.md), with relation names from rel_info.json."""
    run_dir, result = smoke_run
    results = json.loads((run_dir / "results.json").read_text())
    for split in ("dev", "test"):
        details = results["breakdown"][split]
        assert {"intra", "inter", "frequent", "long_tail", "frequent_relations", "per_relation"} <= details.keys()
        assert details["intra"]["num_gold"] + details["inter"]["num_gold"] == results[split]["num_gold"]
    assert results["breakdown"]["test"]["per_relation"]["P108"]["name"] == "employer"
    assert "| test | intra-sentence |" in result.stdout
    evaluated = run(["evaluate.py", str(run_dir), "--split", "test", "--json"])
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout.strip().splitlines()[-1])["breakdown"] == results["breakdown"]["test"]
    assert "| P108 | employer |" in evaluated.stdout


def test_tuned_threshold_offset_is_chosen_on_dev_saved_and_reapplied(tiny_backbone, tmp_path):
    from docre.diagnostics import load_logits
    from docre.losses.common import threshold_decode, tune_threshold_offset

    out = tmp_path / "runs"
    result = run(["train.py", "configs/smoke.yaml", f"model.backbone={tiny_backbone}", f"output_dir={out}", "train.epochs=8",
                  "eval.tune_threshold_offset=true", "run_name=offset"])
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = out / "offset"
    offset = json.loads((run_dir / "decode.json").read_text())["th_offset"]
    logits, labels, _ = load_logits(run_dir / "dev_logits.safetensors")  # the best checkpoint's dev logits
    assert offset == pytest.approx(tune_threshold_offset(logits, labels, 4), abs=1e-3)  # fp16 logits on disk
    best = json.loads((run_dir / "best.json").read_text())
    decoded = threshold_decode(logits, 4, offset)[:, 1:] > 0
    assert best["num_predicted"] == int(decoded.sum())  # the logged dev score used the offset
    scores = json.loads(run(["evaluate.py", str(run_dir), "--json"]).stdout.strip().splitlines()[-1])
    assert scores["f1"] == best["f1"] and scores["num_predicted"] == best["num_predicted"]  # evaluate.py reapplies it


def test_threshold_offset_needs_a_threshold_class_loss(tiny_backbone):
    with pytest.raises(DocreError, match="tune_threshold_offset needs a loss that decodes with the TH class"):
        load_config(ROOT / "configs/smoke.yaml", ["loss.name=bce", "eval.tune_threshold_offset=true"])
