"""scripts/tune_offset.py on a trained run: at offset 0 it reproduces the run's own official test
scores (Ign F1 included) from the saved logits; the tuned offset never lowers dev F1; logits that
do not belong to the configured documents are a one-line error."""

import json
import shutil

import pytest

from docre.config import load_config, save_config
from docre.errors import DocreError
from docre.trainer import train
from tests.cli import ROOT, run_main

KEYS = ("precision", "recall", "f1", "ign_f1")


@pytest.fixture(scope="module")
def run_dir(tiny_backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune_offset")
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={tiny_backbone}", f"output_dir={out}",
                                                    "loss.name=atl", "train.max_steps=20", "data.cache_dir=none"])
    return train(cfg)["run_dir"]


def tune(run_dir, capsys) -> dict:
    assert run_main("tune_offset", [str(run_dir), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])[0]


def test_offset_zero_is_the_runs_own_score_and_tuning_never_hurts_dev(run_dir, capsys):
    row = tune(run_dir, capsys)
    results = json.loads((ROOT / run_dir / "results.json").read_text())
    for key in KEYS:  # the saved logits are fp16: equal up to a decision flipped by rounding
        assert row["test_official"][key] == pytest.approx(results["test"][key], abs=0.02)
    assert row["dev_tuned"]["f1"] >= row["dev_official"]["f1"]
    assert set(row["test_tuned"]) >= set(KEYS)


def test_logits_of_other_documents_are_refused(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = load_config(copy / "config.yaml", ["data.test_file=docred_tiny.json[:2]"])
    save_config(cfg, copy / "config.yaml")
    with pytest.raises(DocreError, match=r"test_logits.safetensors does not match the documents of docred_tiny.json\[:2\]"):
        run_main("tune_offset", [str(copy)])
