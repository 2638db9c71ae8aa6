"""Threshold diagnostics: hand-worked statistics, a slow per-pair reference, error counts that agree
with the official scorer through the saved-logits round trip, run directories, plots, the CLI."""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from docre.config import load_config, save_config
from docre.data.feature import Feature, all_pairs
from docre.diagnostics import (
    diagnose,
    diagnose_run,
    error_counts,
    load_logits,
    plot_comparison,
    threshold_statistics,
)
from docre.errors import DocreError
from docre.inference import decode_predictions, save_logits
from docre.losses import build_loss, relation_margins
from docre.metrics import docred_scores
from docre.utils import atomic_save_safetensors
from tests.cli import run_main
from tests.losses.helpers import random_case

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def test_hand_worked_statistics():
    logits = torch.tensor([
        [1.0, 3.0, 0.0, -1.0],  # relation r1: offset (1 + 0.5) / (3 + 0.5), ordered
        [2.0, 1.5, 4.0, 0.0],  # relations r1, r2: offset 2 / 2.75; r1 below TH: violation
        [0.0, 1.0, -1.0, -2.0],  # NA: margin -1, violation
        [0.0, -1.0, -2.0, -3.0],  # NA: margin 1
    ])
    labels = torch.tensor([[0.0, 1, 0, 0], [0.0, 1, 1, 0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    stats = threshold_statistics(logits, labels, logits[:, 0])
    offsets = [1.5 / 3.5, 2 / 2.75]
    assert stats["positive_pairs"] == 2 and stats["na_pairs"] == 2 and stats["offset_undefined"] == 0
    assert stats["offset_mean"] == pytest.approx(sum(offsets) / 2)
    assert stats["offset_std"] == pytest.approx(abs(offsets[0] - offsets[1]) / 2)  # population std
    assert stats["violation_rate"] == 0.5
    assert stats["na_margin_mean"] == pytest.approx(0.0) and stats["na_margin_std"] == pytest.approx(1.0)
    assert stats["na_violation_rate"] == 0.5


def reference_statistics(logits: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor) -> dict:
    offsets, violations, margins, na_violations = [], [], [], []
    for s, y, t in zip(logits.tolist(), labels.tolist(), thresholds.tolist()):
        positive = [s[r] for r in range(1, len(s)) if y[r] > 0]
        negative = [s[r] for r in range(1, len(s)) if y[r] == 0]
        if positive:
            offsets.append((t - statistics.fmean(negative)) / (statistics.fmean(positive) - statistics.fmean(negative)))
            violations.append(not (all(p > t for p in positive) and all(t > n for n in negative)))
        else:
            margins.append(t - max(negative))
            na_violations.append(not all(t > n for n in negative))
    return {"offset_mean": statistics.fmean(offsets), "offset_std": statistics.pstdev(offsets),
            "violation_rate": statistics.fmean(violations), "na_margin_mean": statistics.fmean(margins),
            "na_margin_std": statistics.pstdev(margins), "na_violation_rate": statistics.fmean(na_violations)}


@pytest.mark.parametrize("seed", [0, 1])
def test_statistics_match_a_per_pair_reference(seed):
    logits, labels = random_case(pairs=90, classes=8, seed=seed)
    logits = logits + 3 * labels  # TH between the sides for some pairs, not for others
    stats = threshold_statistics(logits, labels, logits[:, 0])
    for key, value in reference_statistics(logits, labels, logits[:, 0]).items():
        assert stats[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_undefined_offsets_are_counted_not_averaged():
    # all relations gold (no negatives), and equal positive and negative means: both undefined
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.5, 1.0, 1.0], [0.0, 2.0, -1.0]])
    labels = torch.tensor([[0.0, 1, 1], [0.0, 1, 0], [0.0, 1, 0]])
    stats = threshold_statistics(logits, labels, logits[:, 0])
    assert stats["offset_undefined"] == 2 and stats["offset_mean"] == pytest.approx(1 / 3)
    assert stats["na_pairs"] == 0 and stats["na_violation_rate"] is None and stats["na_margin_mean"] is None


def decision_thresholds(loss_fn, logits):
    scores, thresholds = relation_margins(loss_fn, logits)
    assert torch.equal(scores, logits.float())  # one threshold per pair: the logits themselves are compared
    return thresholds


def test_thresholds_of_losses_without_a_threshold_class():
    logits, _ = random_case(seed=1)
    assert torch.equal(decision_thresholds(build_loss("atgl"), logits), logits[:, 0])
    assert decision_thresholds(build_loss("balanced_softmax"), logits).abs().sum() == 0
    bce = decision_thresholds(build_loss("bce", threshold=0.25), logits)
    assert torch.allclose(bce, torch.full_like(bce, math.log(0.25 / 0.75)))


def synthetic_split(seed: int = 0, docs: int = 5, relations: int = 6):
    """Features, DocRED-format documents and logits for a few random documents."""
    rng = np.random.default_rng(seed)
    rel2id = {"Na": 0} | {f"P{r}": r for r in range(1, relations + 1)}
    features, gold_docs, logits = [], [], []
    for d in range(docs):
        n = int(rng.integers(2, 6))
        hts = all_pairs(n)
        facts = sorted({(int(rng.integers(len(hts))), int(rng.integers(1, relations + 1)))
                        for _ in range(int(rng.integers(0, 5)))})
        labels = np.asarray(facts, dtype=np.int32).reshape(-1, 2)
        title = f"doc{d}"
        features.append(Feature(title, np.zeros(3, dtype=np.int32), [[1]] * n, hts, labels))
        gold_docs.append({
            "title": title, "sents": [["x"]],
            "vertexSet": [[{"name": f"{title}-e{e}", "sent_id": 0, "pos": [0, 1], "type": "X"}] for e in range(n)],
            "labels": [{"h": int(hts[p][0]), "t": int(hts[p][1]), "r": f"P{r}", "evidence": []} for p, r in facts],
        })
        doc_logits = torch.from_numpy(rng.normal(size=(len(hts), relations + 1))).float() * 2
        doc_logits[labels[:, 0], labels[:, 1]] += 2.5
        logits.append(doc_logits)
    return features, gold_docs, logits, rel2id


@pytest.mark.parametrize("name", ["atgl", "bce", "balanced_softmax", "ncrl"])
def test_error_counts_agree_with_the_official_scorer(tmp_path, name):
    features, gold_docs, logits, rel2id = synthetic_split(seed=3)
    save_logits(tmp_path / "dev_logits.safetensors", features, logits)
    loaded, labels, pairs_per_doc = load_logits(tmp_path / "dev_logits.safetensors")
    assert pairs_per_doc.tolist() == [len(f.hts) for f in features]
    loss_fn = build_loss(name)
    counts = error_counts(loss_fn.decode(loaded, 2), labels)
    # the scorer sees the same (fp16-rounded) logits, decoded and written as leaderboard rows
    rows = decode_predictions(features, list(loaded.split(pairs_per_doc.tolist())), loss_fn, 2, rel2id)
    official = docred_scores(rows, gold_docs, [])
    assert counts["num_gold"] == official["num_gold"] > 0
    assert counts["false_positives"] == official["num_predicted"] - official["num_correct"]
    assert counts["false_negatives"] == official["num_gold"] - official["num_correct"]
    assert counts["num_correct"] > 0 and counts["false_positives"] + counts["false_negatives"] > 0


def make_run(run_dir: Path, loss: dict, decode: dict | None, splits=("dev", "test")) -> None:
    """A run directory as the trainer leaves it, without training: config, decode.json, logits,
    and the scorer's counts in best.json / results.json."""
    overrides = [f"loss.name={loss['name']}"] + [f"loss.{k}={v}" for k, v in loss.items() if k != "name"]
    save_config(load_config(ROOT / "configs/smoke.yaml", overrides), run_dir / "config.yaml")
    if decode is not None:
        (run_dir / "decode.json").write_text(json.dumps(decode))
    loss_fn = build_loss(**{**loss, **(decode or {})})
    results = {}
    for seed, split in enumerate(splits):
        features, gold_docs, logits, rel2id = synthetic_split(seed=seed + 10)
        save_logits(run_dir / f"{split}_logits.safetensors", features, logits)
        # the trainer scores float32 logits; use fp16-exact ones so both sides see the same numbers
        rows = decode_predictions(features, [x.half().float() for x in logits], loss_fn, 4, rel2id)
        results[split] = docred_scores(rows, gold_docs, [])
    if "dev" in results:
        (run_dir / "best.json").write_text(json.dumps(results["dev"]))
    if "test" in results:
        (run_dir / "results.json").write_text(json.dumps({"test": results["test"]}))


def test_diagnose_run_reads_a_run_directory(tmp_path):
    make_run(tmp_path, {"name": "bce"}, {"threshold": 0.3})
    report = diagnose_run(tmp_path, plot_dir=tmp_path)
    assert report["loss"] == {"name": "bce"} and report["decode"] == {"threshold": 0.3} and report["top_k"] == 4
    for split in ("dev", "test"):
        r = report[split]
        assert r["false_positives"] == r["scorer_false_positives"] and r["false_negatives"] == r["scorer_false_negatives"]
        assert (tmp_path / f"margins-{split}.png").read_bytes().startswith(PNG)
    # the tuned threshold is the one used: a different threshold gives other counts
    logits, labels, _ = load_logits(tmp_path / "test_logits.safetensors")
    assert report["test"] == report["test"] | diagnose(logits, labels, build_loss("bce", threshold=0.3), 4)
    assert diagnose(logits, labels, build_loss("bce", threshold=0.9), 4)["num_predicted"] < report["test"]["num_predicted"]


def test_diagnose_run_errors(tmp_path):
    with pytest.raises(DocreError, match="not a run directory"):
        diagnose_run(tmp_path)
    make_run(tmp_path, {"name": "atgl", "alpha": 16.5}, None, splits=())
    with pytest.raises(DocreError, match=r"no dev_logits\.safetensors or test_logits\.safetensors"):
        diagnose_run(tmp_path)


def test_load_logits_errors(tmp_path):
    with pytest.raises(DocreError, match="logits file not found"):
        load_logits(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DocreError, match=r"junk\.safetensors: not a readable safetensors file"):
        load_logits(tmp_path / "junk.safetensors")
    atomic_save_safetensors({"logits": torch.zeros(3, 4)}, tmp_path / "partial.safetensors")
    with pytest.raises(DocreError, match="missing tensor\\(s\\) facts, pairs_per_doc"):
        load_logits(tmp_path / "partial.safetensors")
    good = {"logits": torch.zeros(3, 4).half(), "pairs_per_doc": torch.tensor([1, 2], dtype=torch.int32)}
    atomic_save_safetensors(good | {"facts": torch.tensor([[3, 1]], dtype=torch.int32)}, tmp_path / "facts.safetensors")
    with pytest.raises(DocreError, match="facts refer to pairs or classes outside"):
        load_logits(tmp_path / "facts.safetensors")
    atomic_save_safetensors(good | {"pairs_per_doc": torch.tensor([1], dtype=torch.int32),
                                    "facts": torch.zeros(0, 2, dtype=torch.int32)}, tmp_path / "count.safetensors")
    with pytest.raises(DocreError, match="do not match pairs_per_doc"):
        load_logits(tmp_path / "count.safetensors")


def test_comparison_plot(tmp_path):
    rows = [{"label": "atgl(alpha=16.5)", "f1": 0.7, "false_positives": 30, "false_negatives": 50},
            {"label": "atl()", "f1": 0.65, "false_positives": 20, "false_negatives": 70, "f1_std": 0.01}]
    plot_comparison(rows, tmp_path / "plots" / "comparison.png", "test")
    assert (tmp_path / "plots" / "comparison.png").read_bytes().startswith(PNG)


def test_cli_prints_the_table_and_writes_the_report(tmp_path):
    make_run(tmp_path, {"name": "atgl", "alpha": 16.5}, {})
    result = subprocess.run([sys.executable, "scripts/diagnose.py", str(tmp_path), "--split", "test", "--no-plots"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "atgl(alpha=16.5)" in result.stdout and "| test |" in result.stdout and "| dev |" not in result.stdout
    report = json.loads((tmp_path / "diagnostics.json").read_text())
    assert set(report) == {"loss", "decode", "top_k", "test"} and not (tmp_path / "margins-test.png").exists()
    failed = subprocess.run([sys.executable, "scripts/diagnose.py", str(tmp_path / "nowhere")], cwd=ROOT,
                            capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr


def test_cli_names_the_plots_it_wrote(tmp_path, capsys):
    # a run that saved only test logits: one plot, named as written (not a margins-<split>.png placeholder)
    make_run(tmp_path, {"name": "atgl", "alpha": 16.5}, {}, splits=("test",))
    assert run_main("diagnose", [str(tmp_path)]) == 0
    written = capsys.readouterr().out.strip().splitlines()[-1]
    assert written == f"written: {tmp_path / 'diagnostics.json'}, margins-test.png"
    assert (tmp_path / "margins-test.png").read_bytes().startswith(PNG) and not (tmp_path / "margins-dev.png").exists()


def test_margin_sample_of_a_huge_negative_set_stays_in_range():
    from docre.diagnostics import margin_samples

    logits = torch.zeros(170_000, 101)  # 17 M negatives: float32 linspace indexing overran here
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1
    samples = margin_samples(logits, labels, logits[:, 0], limit=1000)
    assert len(samples["negative"]) == 1000 and len(samples["positive"]) == 0
