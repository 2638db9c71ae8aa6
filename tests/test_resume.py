"""Exact resume and clean interruption, stopped through the real mechanism (a signal).

A reference run trains 9 CPU steps (3 documents, batch 1: 3 steps per epoch, dropout on) without a
break. Interrupted runs are stopped mid-epoch by SIGTERM (in-process at a chosen step, or sent to a
real `train.py` process once it has logged a step) or SIGKILL (a process that kills itself at a
chosen step), then resumed. On CPU every op here is deterministic, so the resumed run must end
with bitwise the same weights (final and best), the same metrics.jsonl rows (timings aside), the
same predictions and the same results as the reference.
"""

import itertools
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from docre import trainer
from docre.checkpoint import find_training_state
from docre.config import load_config
from docre.errors import DocreError
from docre.trainer import Interrupted, train

ROOT = Path(__file__).resolve().parent.parent
TIMINGS = {"seconds_per_step", "train_seconds", "wall_seconds", "peak_rss_mb", "peak_gpu_mb", "run_dir"}


def run_args(backbone: str, out: Path, name: str, *extra: str) -> list[str]:
    """train.py arguments: 9 steps, a train row every 2 steps (so a resume falls inside a logging
    window), dev evaluation after each epoch, one thread (the same numbers in every process)."""
    return ["configs/smoke.yaml", f"model.backbone={backbone}", f"output_dir={out}", f"run_name={name}",
            f"data.cache_dir={out / 'cache'}", "train.batch_size=1", "train.epochs=3", "train.log_every=2",
            "train.num_threads=1", *extra]


def config(args: list[str]):
    return load_config(ROOT / args[0], args[1:])


class FinalWeights:
    """Records the weights the run ends with (just before it reloads its best checkpoint)."""

    def __init__(self, monkeypatch):
        self.state = None
        real = trainer.load_weights

        def record_then_load(model, path):
            self.state = {k: v.clone() for k, v in model.state_dict().items()}
            real(model, path)

        monkeypatch.setattr(trainer, "load_weights", record_then_load)


def signal_after(monkeypatch, step: int, *signals: int) -> None:
    """Send `signals` to this process right after optimizer step `step` of this process's run."""
    real = trainer._optimizer_step
    calls = itertools.count(1)

    def step_then_signal(*args, **kwargs):
        result = real(*args, **kwargs)
        if next(calls) == step:
            for signum in signals:
                os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(trainer, "_optimizer_step", step_then_signal)


def outcome(run_dir: Path, final: dict) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    return {
        "rows": [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows],
        "results": {k: v for k, v in results.items() if k not in TIMINGS},
        **{name: json.loads((run_dir / name).read_text())
           for name in ("best.json", "decode.json", "dev_predictions.json", "test_predictions.json")},
    }


def assert_same_run(run_dir: Path, final: dict, reference: tuple[Path, dict, dict]) -> None:
    ref_dir, ref_final, ref_outcome = reference
    assert outcome(run_dir, final) == ref_outcome
    for name, tensor in ref_final.items():
        assert torch.equal(final[name], tensor), name  # bitwise
    best, ref_best = load_file(run_dir / "best.safetensors"), load_file(ref_dir / "best.safetensors")
    assert best.keys() == ref_best.keys() and all(torch.equal(best[k], ref_best[k]) for k in best)
    assert not any(p.name.startswith("last") for p in run_dir.iterdir())  # last/ (and .tmp/.old) gone when done


def saved_step(run_dir: Path) -> int:
    return json.loads((run_dir / "last" / "state.json").read_text())["counters"]["step"]


def cli(*args: str) -> int:
    """`python train.py args` in this process (same run_cli); returns the exit status."""
    argv = sys.argv
    sys.argv = ["train.py", *args]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return exit_.value.code


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny_backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as monkeypatch:
        final = FinalWeights(monkeypatch)
        results = train(config(run_args(tiny_backbone, out, "reference")))
    torch.set_num_threads(threads)
    run_dir = Path(results["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "train"] == [2, 4, 6, 8]
    assert [r["step"] for r in rows if r["type"] == "eval"] == [3, 6, 9]
    return run_dir, final.state, outcome(run_dir, final.state)


def test_sigterm_mid_epoch_then_resume_is_exact(tmp_path, tiny_backbone, reference, monkeypatch):
    args = run_args(tiny_backbone, tmp_path, "run")
    run_dir = tmp_path / "run"
    handler = signal.getsignal(signal.SIGTERM)
    signal_after(monkeypatch, 5, signal.SIGTERM)  # step 5 = middle of epoch 2, inside a logging window
    with pytest.raises(Interrupted) as error:
        train(config(args))
    assert str(error.value) == (f"interrupted by SIGTERM after step 5; checkpoint saved in {run_dir / 'last'}. "
                                f"Resume with: docre-train --resume {run_dir}")
    assert error.value.exit_status == 128 + signal.SIGTERM
    assert saved_step(run_dir) == 5
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    monkeypatch.undo()

    final = FinalWeights(monkeypatch)
    results = train(config(args + [f"train.resume={run_dir}"]))  # the train.resume= spelling
    assert results["steps"] == 9
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert_same_run(run_dir, final.state, reference)


def test_sigterm_to_train_py_exits_with_a_resume_line_and_resumes_exactly(tmp_path, tiny_backbone, reference, monkeypatch):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "train.py", *run_args(tiny_backbone, tmp_path, "run")], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # the first train row (step 2) is logged: 7 steps are left
    stdout, stderr = process.communicate(timeout=240)
    step = saved_step(run_dir)
    assert 2 <= step < 9
    assert process.returncode == 128 + signal.SIGTERM
    pending = json.loads((run_dir / "last" / "state.json").read_text())["counters"]["dev_pending"]
    when = f"at the dev evaluation after step {step} (the resumed run evaluates first)" if pending else f"after step {step}"
    assert stderr.strip().splitlines()[-1] == (f"error: interrupted by SIGTERM {when}; checkpoint saved in "
                                               f"{run_dir / 'last'}. Resume with: python train.py --resume {run_dir}")
    assert "Traceback" not in stderr and stdout == ""

    final = FinalWeights(monkeypatch)
    assert cli("--resume", str(run_dir)) == 0
    assert f"resumed from {run_dir / 'last'} at step {step}" in (run_dir / "train.log").read_text()
    assert_same_run(run_dir, final.state, reference)


KILL_AT_STEP = """
import itertools, os, runpy, signal, sys
from docre import trainer
real, calls, kill_at = trainer._optimizer_step, itertools.count(1), int(sys.argv[1])
def step_then_kill(*args, **kwargs):
    result = real(*args, **kwargs)
    if next(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
trainer._optimizer_step = step_then_kill
sys.argv = ["train.py", *sys.argv[2:]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_sigkill_loses_at_most_save_every_steps(tmp_path, tiny_backbone, reference, monkeypatch):
    run_dir = tmp_path / "run"
    args = run_args(tiny_backbone, tmp_path, "run", "train.save_every=2")
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP, "5", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert saved_step(run_dir) == 4  # saves after steps 2, 3 (end of epoch), 4; killed after step 5
    assert not (run_dir / "results.json").exists()

    final = FinalWeights(monkeypatch)
    assert cli("--resume", str(run_dir)) == 0
    assert f"resumed from {run_dir / 'last'} at step 4" in (run_dir / "train.log").read_text()
    assert_same_run(run_dir, final.state, reference)


def test_second_signal_stops_at_once(tmp_path, tiny_backbone, monkeypatch):
    run_dir = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)
    signal_after(monkeypatch, 5, signal.SIGINT, signal.SIGINT)
    with pytest.raises(Interrupted) as error:
        train(config(run_args(tiny_backbone, tmp_path, "run")))
    assert str(error.value) == (f"stopped at once by a second SIGINT during step 5. The last checkpoint (step 3) is in "
                                f"{run_dir / 'last'}. Resume with: docre-train --resume {run_dir}")
    assert error.value.exit_status == 128 + signal.SIGINT
    assert saved_step(run_dir) == 3  # the end of epoch 1; step 5 was never saved
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_resume_whose_override_changes_the_model_is_one_line_and_leaves_the_run_as_it_was(
        tmp_path, tiny_backbone, reference, monkeypatch):
    args = run_args(tiny_backbone, tmp_path, "run")
    run_dir = tmp_path / "run"
    signal_after(monkeypatch, 5, signal.SIGTERM)
    with pytest.raises(Interrupted):
        train(config(args))
    monkeypatch.undo()
    records = ("config.yaml", "rel2id.json", "environment.json")
    kept = {name: (run_dir / name).read_bytes() for name in records}
    emb_size = config(args).model.emb_size
    with pytest.raises(DocreError) as error:  # was a traceback, after config.yaml had taken the new size
        train(load_config(run_dir / "config.yaml", [f"model.emb_size={2 * emb_size}", f"train.resume={run_dir}"]))
    assert str(error.value).startswith(f"{run_dir / 'last' / 'model.safetensors'}: ")
    assert str(error.value).endswith(f"in this model; resumed with other settings than the run's (model.emb_size: "
                                     f"{emb_size} -> {2 * emb_size}): resume without the overrides that change the model")
    assert {name: (run_dir / name).read_bytes() for name in records} == kept
    final = FinalWeights(monkeypatch)  # and the run resumes as if the failed attempt never happened
    assert train(config(args + [f"train.resume={run_dir}"]))["steps"] == 9
    assert_same_run(run_dir, final.state, reference)


@pytest.mark.parametrize("where", ["during", "before"])
def test_a_stop_at_a_dev_evaluation_stops_at_once_and_the_resumed_run_evaluates_first(
        tmp_path, tiny_backbone, reference, monkeypatch, where):
    """A scheduler's grace period may be shorter than a dev evaluation: a stop request made during one (or in the
    step before it) stops at once, its checkpoint marked dev_pending, and the resumed run evaluates first."""
    args = run_args(tiny_backbone, tmp_path, "run")
    run_dir = tmp_path / "run"
    calls = itertools.count(1)
    real = trainer.evaluate_split

    def evaluate(run, split, decode, tune=False):
        if where == "during" and next(calls) == 1:  # the first dev evaluation
            os.kill(os.getpid(), signal.SIGTERM)  # as the evaluation starts: it is cut short
        return real(run, split, decode, tune)

    monkeypatch.setattr(trainer, "evaluate_split", evaluate)
    if where == "before":
        signal_after(monkeypatch, 3, signal.SIGTERM)  # the epoch's last step: the request comes before its evaluation
    with pytest.raises(Interrupted) as error:
        train(config(args))
    assert str(error.value) == (f"interrupted by SIGTERM at the dev evaluation after step 3 (the resumed run evaluates "
                                f"first); checkpoint saved in {run_dir / 'last'}. Resume with: docre-train --resume {run_dir}")
    counters = json.loads((run_dir / "last" / "state.json").read_text())["counters"]
    assert (counters["step"], counters["dev_pending"], counters["best_f1"]) == (3, True, None)
    assert not (run_dir / "best.safetensors").exists()
    assert [json.loads(line)["type"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == ["train"]
    monkeypatch.undo()

    final = FinalWeights(monkeypatch)
    assert train(config(args + [f"train.resume={run_dir}"]))["steps"] == 9
    assert_same_run(run_dir, final.state, reference)


def test_a_second_signal_while_the_checkpoint_of_a_cut_evaluation_is_saved_stops_at_once(tmp_path, tiny_backbone,
                                                                                         monkeypatch):
    real = trainer.evaluate_split
    saves, real_save = [], trainer.save_training_state

    def evaluate(run, split, decode, tune=False):
        os.kill(os.getpid(), signal.SIGINT)  # cuts the evaluation short
        return real(run, split, decode, tune)

    def save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # a second one while its checkpoint is being saved
        saves.append(1)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_split", evaluate)
    monkeypatch.setattr(trainer, "save_training_state", save)
    with pytest.raises(Interrupted) as error:
        train(config(run_args(tiny_backbone, tmp_path, "run")))
    assert str(error.value) == ("stopped at once by a second SIGINT during the dev evaluation after step 3. No checkpoint "
                                "was saved yet.")


def test_resume_refusals(tmp_path, reference):
    ref_dir = reference[0]
    finished = tmp_path / "finished"
    finished.mkdir()
    for name in ("config.yaml", "results.json"):
        (finished / name).write_bytes((ref_dir / name).read_bytes())
    cfg = load_config(finished / "config.yaml", [f"train.resume={finished}"])
    with pytest.raises(DocreError) as error:
        train(cfg)
    assert str(error.value) == f"{finished}: this run already finished (results.json); there is nothing to resume"
    (finished / "results.json").unlink()
    with pytest.raises(DocreError) as error:
        train(cfg)
    assert str(error.value) == f"{finished}: no checkpoint to resume from (no complete last/ directory)"
    # a last/ without its optimizer file (e.g. copied by hand, half) is not a checkpoint
    (finished / "last").mkdir()
    (finished / "last" / "state.json").write_text("{}")
    (finished / "last" / "model.safetensors").write_bytes(b"")
    assert find_training_state(finished / "last") is None


def test_a_run_stopped_at_its_last_step_mid_epoch_resumes_without_an_extra_step(tmp_path, tiny_backbone, monkeypatch):
    """train.max_steps=4 ends in the middle of epoch 2 (3 steps an epoch): stopped at that step, the resumed run
    trained a fifth step (its epoch loop still had steps left) and ended with rows the reference never wrote."""
    args = run_args(tiny_backbone, tmp_path, "reference", "train.max_steps=4")
    reference = train(config(args))
    rows = (tmp_path / "reference" / "metrics.jsonl").read_text()
    signal_after(monkeypatch, 4, signal.SIGTERM)
    stopped = run_args(tiny_backbone, tmp_path, "run", "train.max_steps=4")
    with pytest.raises(Interrupted):
        train(config(stopped))
    monkeypatch.undo()
    results = train(config(stopped + [f"train.resume={tmp_path / 'run'}"]))
    assert (results["steps"], results["best_step"]) == (reference["steps"], reference["best_step"]) == (4, results["best_step"])
    strip = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in rows.splitlines()]
    assert [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == strip
