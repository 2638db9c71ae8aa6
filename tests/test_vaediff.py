"""VaeDiff-DocRE's three stages in one command (docre/vaediff.py) on the tiny backbone: the run directory's
layout, its logs, and that it evaluates like any run; a run killed in stage 1 (SIGTERM, through the trainer's own
stop), in stage 2 (after an epoch's checkpoint; SIGTERM, once or twice) and in stage 3 (SIGTERM) ends, run again,
with bitwise the same augmenter, weights and scores as an uninterrupted run, a run resumed at stage 2 under another
thread count too; stage 3 trains on synthetic pairs from its augmentation epoch on; the model takes documents with
more than 42 entities (the official grid's size); refusals, before anything trains. The reference run trains 3
steps per stage (3 documents, batch 3, dropout on, one thread)."""

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from docre import augmenter as augmenter_module
from docre import run_dir as runs
from docre import trainer
from docre import vaediff as vaediff_module
from docre.config import load_config
from docre.data.collate import collate
from docre.data.feature import featurize
from docre.errors import DocreError
from docre.models import build_model_from_config, load_tokenizer
from docre.sweep import run
from docre.trainer import Interrupted
from tests.conftest import ROOT
from tests.test_resume import TIMINGS, restore_threads, signal_after  # noqa: F401 (restore_threads: an autouse fixture)

STEPS_PER_STAGE = 3


def vaediff_config(backbone: str, out: Path, name: str = "vd-s66", *extra: str):
    return load_config(ROOT / "configs/smoke.yaml", [
        f"model.backbone={backbone}", f"output_dir={out}", f"run_name={name}", f"data.cache_dir={out / 'cache'}",
        "model.name=vaediff", "loss={name: vaediff}", f"train.epochs={STEPS_PER_STAGE}", "train.num_threads=1",
        "vaediff.augmenter_epochs=3", "vaediff.augmenter_warmup_epochs=1", "vaediff.augment_from_epoch=1",
        "vaediff.latent_size=8", "vaediff.denoiser_width=64", "vaediff.denoiser_depth=2", "vaediff.diffusion_steps=10",
        *extra])


def final_state(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {
        "results": {k: v for k, v in results.items() if k not in TIMINGS and k not in ("stages", "stage_seconds")},
        "augmenter": load_file(run_dir / "stage2" / "augmenter.safetensors"),
        "best": load_file(run_dir / "best.safetensors"),
        "predictions": json.loads((run_dir / "test_predictions.json").read_text()),
    }


def assert_same(state: dict, reference: dict) -> None:
    assert state["results"] == reference["results"]
    assert state["predictions"] == reference["predictions"]
    for part in ("augmenter", "best"):
        assert state[part].keys() == reference[part].keys()
        assert all(torch.equal(state[part][k], reference[part][k]) for k in state[part]), part


@pytest.fixture(scope="module")
def reference(tiny_backbone, tmp_path_factory):
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = []  # the augment argument of every optimizer step
        real = trainer._optimizer_step

        def record(*args, **kwargs):
            calls.append(args[16] if len(args) > 16 else kwargs.get("augment"))
            return real(*args, **kwargs)

        monkeypatch.setattr(trainer, "_optimizer_step", record)
        results = run(vaediff_config(tiny_backbone, tmp_path_factory.mktemp("runs")))
    torch.set_num_threads(threads)
    return Path(results["run_dir"]), final_state(Path(results["run_dir"])), calls


def test_layout_and_stage3_augments_from_its_epoch(reference):
    run_dir, state, calls = reference
    names = {p.name for p in run_dir.iterdir()}
    assert {"stage1", "stage2", "stage3", "best.safetensors", "results.json", "config.yaml"} <= names
    assert (run_dir / "stage1" / "results.json").is_file() and (run_dir / "stage3" / "results.json").is_file()
    # stage 1 never augments, stage 3 from its second epoch (augment_from_epoch=1)
    assert [call is not None for call in calls] == [False] * STEPS_PER_STAGE + [False] + [True] * (STEPS_PER_STAGE - 1)
    cached = load_file(run_dir / "stage2" / "features.safetensors")
    assert (cached["labels"][:, 0] != 1).all() and cached["features"].shape[0] == cached["labels"].shape[0] > 0
    stage3 = json.loads((run_dir / "stage3" / "results.json").read_text())
    assert state["results"]["test"] == stage3["test"]  # RUN_DIR holds stage 3's run
    # its time is the whole run's: both training stages, the feature cache and the augmenter's fit
    results = json.loads((run_dir / "results.json").read_text())
    fit = json.loads((run_dir / "stage2" / "augmenter_fit.json").read_text())
    assert fit["epoch"] == 3 and fit["pairs"] == cached["labels"].shape[0] and fit["seconds"] > 0
    seconds = results["stage_seconds"]
    assert seconds["stage3"] == stage3["wall_seconds"] and seconds["stage2"] > fit["seconds"]
    assert results["wall_seconds"] == pytest.approx(sum(seconds.values())) and min(seconds.values()) > 0
    assert load_file(run_dir / "best.safetensors").keys() == load_file(run_dir / "stage3" / "best.safetensors").keys()
    saved = load_config(run_dir / "stage3" / "config.yaml")
    assert saved.vaediff.augmenter == str(run_dir / "stage2") and saved.loss["contrastive_alone"] is False
    assert not (run_dir / "stage2" / "last").exists()  # the resume state (twice the augmenter) is gone once it is done
    # RUN_DIR/train.log: the stages' progress (the first line was lost before) and stage 2's lines, which went
    # into stage 1's log; each training stage's own lines stay in its train.log
    log = (run_dir / "train.log").read_text()
    for line in ("stage 1 (the backbone model): start in", "stage 2 epoch 3/3", "stage 3 (training with synthetic pairs): start"):
        assert line in log
    assert "stage 2" not in (run_dir / "stage1" / "train.log").read_text()


def test_run_dir_evaluates_like_any_run(reference):
    from docre.run_dir import load_trained

    run_dir, state, _ = reference
    cfg, _, model, loss_fn, _ = load_trained(run_dir, torch.device("cpu"))
    assert cfg.model.name == "vaediff" and type(loss_fn).__name__ == "VaeDiffLoss"
    assert torch.equal(model.classifier.weight, state["best"]["classifier.weight"])


def test_killed_in_stage1_resumes_to_the_same_result(reference, tiny_backbone, tmp_path, monkeypatch):
    signal_after(monkeypatch, 2, __import__("signal").SIGTERM)
    with pytest.raises(Interrupted):
        run(vaediff_config(tiny_backbone, tmp_path))
    monkeypatch.undo()
    assert (tmp_path / "vd-s66" / "stage1" / "last").is_dir() and not (tmp_path / "vd-s66" / "stage2").exists()
    results = run(vaediff_config(tiny_backbone, tmp_path))
    assert_same(final_state(Path(results["run_dir"])), reference[1])


def test_killed_in_stage2_resumes_to_the_same_result(reference, tiny_backbone, tmp_path, monkeypatch):
    from docre import checkpoint  # fit_augmenter imports save_training_state from it when it runs

    saves, real = [], checkpoint.save_training_state

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # the process dies after epoch 2's checkpoint
    monkeypatch.setattr(checkpoint, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(vaediff_config(tiny_backbone, tmp_path))
    monkeypatch.undo()
    stage2 = tmp_path / "vd-s66" / "stage2"
    assert json.loads((stage2 / "last" / "state.json").read_text())["counters"]["epoch"] == 2
    assert not (stage2 / "augmenter.safetensors").exists()
    run_dir = tmp_path / "vd-s66"
    state = runs.state_of(run_dir)
    assert (state.kind, state.detail) == ("resumable", "kept: stage1 finished, stage2 checkpoint after epoch 2")
    # resumed as a grid resumes it (`docre-train --resume RUN_DIR`: the run's own config.yaml)
    results = run(load_config(run_dir / "config.yaml", [f"train.resume={run_dir}"]))
    assert_same(final_state(Path(results["run_dir"])), reference[1])


@pytest.mark.parametrize(("signum", "signals"), [(signal.SIGTERM, 1), (signal.SIGTERM, 2), (signal.SIGINT, 1)])
def test_a_signal_in_stage2_stops_it_then_resumes_to_the_same_result(reference, tiny_backbone, tmp_path, monkeypatch,
                                                                     signum, signals):
    # one signal: stage 2 stops before its next batch; two: at once. Either way an Interrupted error (exit status
    # 128 + signum) names the checkpoint and the resume command, as in stages 1 and 3 (SIGTERM killed the process
    # silently, Ctrl-C printed only "error: interrupted")
    from docre import checkpoint

    saves, real = [], checkpoint.save_training_state

    def save_then_signal(*args, **kwargs):
        real(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:  # after epoch 2's checkpoint
            for _ in range(signals):
                os.kill(os.getpid(), signum)
    monkeypatch.setattr(checkpoint, "save_training_state", save_then_signal)
    handlers = {each: signal.getsignal(each) for each in (signal.SIGINT, signal.SIGTERM)}
    run_dir = tmp_path / "vd-s66"
    last = run_dir / "stage2" / "last"
    name = signal.Signals(signum).name
    stopped = (f"interrupted by {name} in stage 2 (the augmenter) after epoch 2; checkpoint saved in {last}" if signals == 1
               else f"stopped at once by a second {name} during the current batch of stage 2 (the augmenter). The last "
                    f"checkpoint (after epoch 2) is in {last}")
    resume = rf"\. Resume with: \S.* --resume {re.escape(str(run_dir))}$"
    with pytest.raises(Interrupted, match="^" + re.escape(stopped) + resume) as stop:
        run(vaediff_config(tiny_backbone, tmp_path))
    monkeypatch.undo()
    assert stop.value.exit_status == 128 + signum
    assert {each: signal.getsignal(each) for each in handlers} == handlers  # the previous handlers are back
    assert json.loads((last / "state.json").read_text())["counters"]["epoch"] == 2
    assert not (run_dir / "stage2" / "augmenter.safetensors").exists() and not (run_dir / "stage3").exists()
    results = run(vaediff_config(tiny_backbone, tmp_path))
    assert_same(final_state(Path(results["run_dir"])), reference[1])
    assert not last.exists()


def test_resumed_at_stage2_trains_it_with_the_runs_threads_and_logs_it(reference, tiny_backbone, tmp_path, monkeypatch):
    # stage 1 finished, the process died as stage 2 began; resumed in a process whose thread count is not the run's
    # train.num_threads (1): no train() runs before stage 2 to set it (the augmenter differed by ~1e-7), nor the log
    def die(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(vaediff_module, "fit_augmenter", die)
    with pytest.raises(KeyboardInterrupt):
        run(vaediff_config(tiny_backbone, tmp_path))
    monkeypatch.undo()
    run_dir = tmp_path / "vd-s66"
    assert (run_dir / "stage1" / "results.json").is_file() and not (run_dir / "stage2" / "last").exists()
    torch.set_num_threads(4)  # (restored after the test by the autouse fixture restore_threads)
    results = run(vaediff_config(tiny_backbone, tmp_path))
    assert_same(final_state(Path(results["run_dir"])), reference[1])
    log = (run_dir / "train.log").read_text()
    resumed = log[log.rindex("stage 1 (the backbone model): finished earlier"):]  # the second command's lines
    assert "stage 2 (the augmenter): " in resumed and "stage 2 epoch 3/3" in resumed
    assert "stage 2" not in (run_dir / "stage1" / "train.log").read_text()


def test_killed_in_stage3_resumes_to_the_same_result(reference, tiny_backbone, tmp_path, monkeypatch):
    signal_after(monkeypatch, STEPS_PER_STAGE + 2, __import__("signal").SIGTERM)  # stage 3's second step (augmented)
    with pytest.raises(Interrupted):
        run(vaediff_config(tiny_backbone, tmp_path))
    monkeypatch.undo()
    assert (tmp_path / "vd-s66" / "stage3" / "last").is_dir() and not (tmp_path / "vd-s66" / "results.json").exists()
    results = run(vaediff_config(tiny_backbone, tmp_path))
    assert_same(final_state(Path(results["run_dir"])), reference[1])


def test_documents_with_more_than_42_entities(tiny_backbone):
    """The official model pads every document to a 42 x 42 grid and fails past it; docre's takes any n."""
    cfg = vaediff_config(tiny_backbone, Path("unused"))
    tokenizer = load_tokenizer(tiny_backbone)
    rel2id = json.loads((ROOT / "data/docred/rel2id.json").read_text())
    names = [f"e{i}" for i in range(45)]
    doc = {"title": "many", "sents": [names],
           "vertexSet": [[{"name": n, "sent_id": 0, "pos": [i, i + 1], "type": "MISC"}] for i, n in enumerate(names)],
           "labels": [{"h": 0, "t": 44, "r": "P17", "evidence": []}]}
    features = featurize([doc], tokenizer, rel2id, cfg.model.marker, cfg.model.max_seq_length)[0]
    model = build_model_from_config(cfg.model, tokenizer, len(rel2id)).eval()
    batch = collate(features, len(rel2id), tokenizer.pad_token_id)
    with torch.no_grad():
        logits, cells = model(batch, features=True, synthetic=torch.randn(3, model.classifier.in_features))
    assert logits.shape == (45 * 44 + 3, len(rel2id)) and cells.vector.shape[0] == 45 * 44 + 3
    torch.testing.assert_close(logits[-3:], model.classifier(cells.vector[-3:]))


def test_refusals(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DocreError, match="trains on one process"):
        run(vaediff_config(tiny_backbone, tmp_path))
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(DocreError, match=r"holds no augmenter\.safetensors"):
        augmenter_module.load_augmenter(tmp_path, torch.device("cpu"))


def test_a_loss_without_synthetic_pairs_is_refused_before_stage1(tiny_backbone, tmp_path):
    # stage 3 would train without the augmenter (the trainer's warning), stage 2 fitted for nothing
    with pytest.raises(DocreError, match=r"^model\.name=vaediff: loss atgl takes no synthetic pairs, so stage 3 would "
                                         r"train without the augmenter; use loss=\{name: vaediff, classification: atgl\}, "
                                         r"or model\.name=kd_docre \(the same model without the augmenter\)$"):
        run(vaediff_config(tiny_backbone, tmp_path, "atgl", "loss={name: atgl}"))
    assert not (tmp_path / "atgl").exists()


def test_without_diffusers_it_is_refused_before_stage1(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what an import of a missing package does
    with pytest.raises(DocreError, match=r"^model\.name=vaediff needs diffusers .*pip install 'docre\[vaediff\]'"):
        run(vaediff_config(tiny_backbone, tmp_path))
    assert not (tmp_path / "vd-s66").exists()  # was: stage 1 trained, then stage 2 failed


def test_atgl_swap_with_alpha_tuned_on_dev_runs_the_stages_per_value(tiny_backbone, tmp_path):
    cfg = vaediff_config(tiny_backbone, tmp_path, "swap-s66", "loss={name: vaediff, classification: atgl, alpha: auto}",
                         "sweep.alpha_grid=[0.25,0.5]", "train.epochs=2")
    results = run(cfg)
    run_dir = Path(results["run_dir"])
    assert sorted(row["alpha"] for row in results["alpha_sweep"]) == [4.125, 8.25]
    for row in results["alpha_sweep"]:
        stage3 = load_config(Path(row["run_dir"]) / "stage3" / "config.yaml")
        assert stage3.loss == {"name": "vaediff", "classification": "atgl", "alpha": row["alpha"], "contrastive_alone": False}
    assert json.loads((run_dir / "decode.json").read_text())["alpha"] == results["alpha"]


def test_a_signal_during_stage2s_feature_cache_stops_at_once(reference, tiny_backbone, tmp_path, monkeypatch):
    # the cache is a forward pass over the training split (minutes at full scale), written at its end alone: a stop
    # request there waited for all of it, past a scheduler's grace period
    real = vaediff_module.cached_features

    def signal_then_cache(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the cache's computation
        return real(*args, **kwargs)

    monkeypatch.setattr(vaediff_module, "cached_features", signal_then_cache)
    run_dir = tmp_path / "vd-s66"
    with pytest.raises(Interrupted, match=re.escape("interrupted by SIGTERM in stage 2 (the augmenter) before its first "
                                                    "epoch ended; no checkpoint yet. Resume with: ") + r"\S.* --resume "
                                          + re.escape(str(run_dir)) + "$"):
        run(vaediff_config(tiny_backbone, tmp_path))
    monkeypatch.undo()
    assert not (run_dir / "stage2" / "features.safetensors").exists() and (run_dir / "stage1" / "results.json").is_file()
    results = run(vaediff_config(tiny_backbone, tmp_path))
    assert_same(final_state(Path(results["run_dir"])), reference[1])
