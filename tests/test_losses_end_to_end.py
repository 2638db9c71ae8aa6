"""The losses that need more than (logits, labels), trained a few steps with the tiny model and used
the whole way: SSR-PU's priors come from the training split once and live in the run directory (so
evaluate, predict and export work after the training file is gone); AMTL's own label space (C + 3
outputs) never reaches predictions, result files, metrics or the Predictor, whose relation ids and
names are docre's; PEMSCL gets the model's pair features while training."""

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from docre.config import load_config
from docre.predict import Predictor
from docre.trainer import train
from tests.conftest import FIXTURES, ROOT
from tests.test_predict import call

DOCS = json.loads((FIXTURES / "docred_tiny.json").read_text())
REL_INFO = json.loads((ROOT / "data/docred/rel_info.json").read_text())


def train_run(backbone, folder: Path, *overrides: str) -> Path:
    data = folder / "data"
    data.mkdir()
    shutil.copy(FIXTURES / "docred_tiny.json", data / "train.json")
    shutil.copy(FIXTURES / "docred_tiny.json", data / "dev.json")
    cfg = load_config(ROOT / "configs/smoke.yaml", [
        f"model.backbone={backbone}", f"output_dir={folder / 'runs'}", "train.max_steps=4", f"data.dir={data}",
        "data.train_file=train.json", "data.dev_file=dev.json", "data.test_file=dev.json", "eval.save_logits=true",
        "data.rel_info=data/docred/rel_info.json", *overrides])
    return Path(train(cfg)["run_dir"])


def test_ssr_pu_run_keeps_its_priors_and_works_without_the_training_file(tiny_backbone, tmp_path, capsys):
    run_dir = train_run(tiny_backbone, tmp_path, "loss.name=ssr_pu")
    statistics = json.loads((run_dir / "loss_statistics.json").read_text())
    gold = [(label["r"]) for doc in DOCS for label in doc["labels"]]
    rel2id = json.loads((run_dir / "rel2id.json").read_text())
    pairs = sum(len(doc["vertexSet"]) * (len(doc["vertexSet"]) - 1) for doc in DOCS)
    expected = [gold.count(r) / pairs for r in sorted(rel2id, key=rel2id.get)[1:]]  # the official ratio, by hand
    assert statistics == {"priors": pytest.approx(expected)}
    results = json.loads((run_dir / "results.json").read_text())

    # the loss is rebuilt from the run directory alone: its decode (predict, export) and the diagnostics
    # of its saved logits work with the training file gone (evaluate.py still reads that file, for the
    # facts Ign F1 leaves out)
    (tmp_path / "data" / "train.json").unlink()
    from docre.diagnostics import diagnose_run, load_logits
    from docre.losses import build_loss

    logits, _, _ = load_logits(run_dir / "test_logits.safetensors")  # fp16 as saved
    decoded = build_loss("ssr_pu", **statistics).decode(logits, 4)
    report = diagnose_run(run_dir, ("test",))
    assert report["test"]["num_predicted"] == int(decoded[:, 1:].sum()) > 0
    assert abs(report["test"]["num_predicted"] - results["test"]["num_predicted"]) <= 2  # fp16 rounding may flip one
    predicted = Predictor.from_pretrained(run_dir, device="cpu").leaderboard_rows(DOCS)
    assert predicted == json.loads((run_dir / "test_predictions.json").read_text())
    status, _, _ = call("scripts/export", [run_dir, tmp_path / "exported"], capsys)
    assert status == 0 and json.loads((tmp_path / "exported" / "loss_statistics.json").read_text()) == statistics
    assert Predictor.from_pretrained(tmp_path / "exported", device="cpu").leaderboard_rows(DOCS) == predicted


def test_amtl_run_speaks_docre_relation_ids_everywhere(tiny_backbone, tmp_path, capsys):
    run_dir = train_run(tiny_backbone, tmp_path, "loss.name=amtl", "loss.spaces=redocred", "train.max_steps=6",
                        "train.head_lr=1e-2")
    rel2id = json.loads((run_dir / "rel2id.json").read_text())
    spaces = json.loads((run_dir / "loss_statistics.json").read_text())["spaces"]
    assert [len(space) for space in spaces] == [10, 20, 46, 20]
    from safetensors.torch import load_file

    assert load_file(run_dir / "best.safetensors")["bilinear.weight"].shape[0] == 100  # the model outputs AMTL's layout
    assert load_file(run_dir / "test_logits.safetensors")["logits"].shape[1] == 100
    predictor = Predictor.from_pretrained(run_dir, device="cpu")
    rows = predictor.leaderboard_rows(DOCS)
    assert rows and rows == json.loads((run_dir / "test_predictions.json").read_text())
    assert {row["r"] for row in rows} <= set(rel2id) - {"Na"}
    # every triple is named as docre names its relation id, with a score past its own space's NA slot
    for triples in predictor.predict(DOCS):
        for triple in triples:
            assert triple["r_name"] == REL_INFO[triple["r"]] and triple["score"] > 0
    status, out, _ = call("evaluate", [run_dir, "--split", "test"], capsys)
    assert status == 0 and "| relation |" in out
    assert any(f"| {REL_INFO[row['r']]}" in out or f"| {row['r']}" in out for row in rows)
    status, _, _ = call("scripts/predict", [run_dir, FIXTURES / "docred_tiny.json", "-o", tmp_path / "result.zip"], capsys)
    assert status == 0
    assert json.loads(zipfile.ZipFile(tmp_path / "result.zip").read("result.json")) == rows


def test_pemscl_trains_on_the_model_pair_features(tiny_backbone, tmp_path):
    run_dir = train_run(tiny_backbone, tmp_path, "loss.name=pemscl", "train.max_steps=6")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row["type"] == "train"]
    assert losses and all(loss == loss for loss in losses)  # finite numbers, features reached the loss
    assert not (run_dir / "loss_statistics.json").exists()  # PEMSCL takes nothing from the training split
    assert "is not a mean over pairs" not in (run_dir / "train.log").read_text()  # whole batches: no warning


def test_a_loss_over_whole_batches_warns_when_batches_are_split(tiny_backbone, tmp_path):
    run_dir = train_run(tiny_backbone, tmp_path, "loss.name=pemscl", "train.max_steps=1", "train.max_batch_tokens=100")
    assert ("loss pemscl is not a mean over pairs, and train.max_batch_tokens=100 / 1 processes split batches"
            in (run_dir / "train.log").read_text())
