"""scripts/tune_offset.py on a trained run: at offset 0 it reproduces the run's own official test
scores (Ign F1 included) from the saved logits; the tuned offset never lowers dev F1; logits that
do not belong to the configured documents are a one-line error; figures that differ from the run's
results.json say that they come from the saved fp16 logits."""

import json
import re
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
    # exact: on this run no decision lies within the fp16 rounding of the saved logits (the last test
    # covers a run where one does), and the counts decide the scores (a tolerance on scores of a few
    # percent, as these are, would let a wrong count through)
    counts = ("num_predicted", "num_gold", "num_correct", "num_correct_in_train")
    assert {key: row["test_official"][key] for key in (*KEYS, *counts)} == {key: results["test"][key] for key in (*KEYS, *counts)}
    assert row["differs_from_results"] == []
    assert results["test"]["num_correct"] > 0 and results["test"]["num_predicted"] > results["test"]["num_correct"]
    assert row["dev_tuned"]["f1"] >= row["dev_official"]["f1"]
    assert set(row["test_tuned"]) >= set(KEYS)


def test_logits_of_other_documents_are_refused(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = load_config(copy / "config.yaml", ["data.test_file=docred_tiny.json[:2]"])
    save_config(cfg, copy / "config.yaml")
    with pytest.raises(DocreError, match=r"test_logits.safetensors does not match the documents of docred_tiny.json\[:2\]"):
        run_main("tune_offset", [str(copy)])


def test_figures_that_differ_from_the_runs_results_say_they_come_from_the_saved_logits(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    row = tune(copy, capsys)
    results = json.loads((copy / "results.json").read_text())
    for split in ("dev", "test"):  # scores as the saved logits give them: nothing to say
        results[split] |= {key: row[f"{split}_official"][key] for key in KEYS}
    (copy / "results.json").write_text(json.dumps(results))
    assert run_main("tune_offset", [str(copy)]) == 0
    assert "saved fp16 logits" not in capsys.readouterr().out
    # what the rounding of a larger run's logits can do: a decision flipped, one score off in the table
    results["test"]["f1"] += 0.0123
    (copy / "results.json").write_text(json.dumps(results))
    assert run_main("tune_offset", [str(copy), "--json"]) == 0
    out = capsys.readouterr().out
    difference = f"test F1 {100 * row['test_official']['f1']:.2f} here, {100 * results['test']['f1']:.2f} in results.json"
    assert (f"run: these figures come from the saved fp16 logits (eval.save_logits), whose rounding can flip a "
            f"decision: decoded as the run did, they differ from its results.json, which evaluate.py reproduces from "
            f"the weights ({difference})") in out.splitlines()
    assert json.loads(out.strip().splitlines()[-1])[0]["differs_from_results"] == [difference]


def test_a_loss_without_a_th_logit_is_refused(tmp_path):
    # BCE decodes with a global threshold: no TH logit to offset (refused before any logits are read)
    save_config(load_config(ROOT / "configs/smoke.yaml", ["loss.name=bce"]), tmp_path / "config.yaml")
    with pytest.raises(DocreError, match=rf"^{re.escape(str(tmp_path))}: its loss 'bce' decodes without a TH logit to "
                                         r"offset; docre-tune-offset applies to the threshold-class losses"):
        run_main("tune_offset", [str(tmp_path)])
