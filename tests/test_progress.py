"""Progress and remaining time: one rule (docre.utils.hide_progress) decides where bars show: on a
terminal yes, into a file or pipe no, under CI no, DOCRE_PROGRESS=0/1 forces it. The estimates are
pure functions of the work done so far, and a grid, an alpha sweep and a training run report them:
before each run of a grid (from the runs finished in this command, failed ones left out), before
each alpha value (from the values finished, earlier ones too), after each epoch (training's pace)."""

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from tqdm.auto import tqdm

from docre import grid, sweep
from docre.config import load_config, save_config
from docre.trainer import train
from docre.utils import estimate_remaining, format_duration, hide_progress, runs_left_note
from tests.cli import fake_training

ROOT = Path(__file__).resolve().parent.parent


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def bar_output(stream: io.StringIO) -> str:
    """What a 3-step bar with docre's `disable=` writes to `stream`."""
    for _ in tqdm(range(3), file=stream, disable=hide_progress(), desc="work"):
        pass
    return stream.getvalue()


@pytest.fixture
def plain_environment(monkeypatch):
    monkeypatch.delenv("CI", raising=False)  # CI runs these tests with CI=true
    monkeypatch.delenv("DOCRE_PROGRESS", raising=False)
    return monkeypatch


def test_bars_show_on_a_terminal_and_not_into_a_file_or_pipe(plain_environment):
    assert hide_progress() is None  # tqdm's own terminal check decides
    assert "work: 100%" in bar_output(Terminal()) and "3/3" in bar_output(Terminal())
    assert bar_output(io.StringIO()) == ""
    assert hide_progress(wanted=False) is True  # e.g. ranks other than 0: never


@pytest.mark.parametrize("value", ["true", "1", "True", "yes"])
def test_ci_hides_bars_even_on_a_terminal(plain_environment, value):
    plain_environment.setenv("CI", value)
    assert hide_progress() is True and bar_output(Terminal()) == ""


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_ci_set_to_no_leaves_the_terminal_rule(plain_environment, value):
    plain_environment.setenv("CI", value)
    assert hide_progress() is None and "3/3" in bar_output(Terminal())


def test_docre_progress_forces_bars_off_or_on(plain_environment):
    plain_environment.setenv("DOCRE_PROGRESS", "0")
    assert bar_output(Terminal()) == ""
    plain_environment.setenv("DOCRE_PROGRESS", "1")
    plain_environment.setenv("CI", "true")
    assert "3/3" in bar_output(io.StringIO())  # shown into a file, under CI too
    assert hide_progress(wanted=False) is True  # but never where the caller wants none


def test_remaining_time_is_the_pace_so_far():
    assert estimate_remaining(elapsed=120.0, done=4, left=6) == pytest.approx(180.0)
    assert estimate_remaining(elapsed=0.0, done=0, left=6) is None  # nothing done: no pace yet
    assert estimate_remaining(elapsed=50.0, done=5, left=0) == 0.0
    assert [format_duration(s) for s in (0, 44.6, 59.5, 725, 3599, 3600, 11220, 200000)] == [
        "0s", "45s", "1m00s", "12m05s", "59m59s", "1h00m", "3h07m", "55h33m"]


def test_runs_left_note_uses_the_mean_of_the_finished_runs():
    assert runs_left_note([], 5) == "5 to go, no estimate before the first finishes"
    assert runs_left_note([600.0, 1800.0], 3) == "2 done, 20m00s each: about 1h00m left for 3"
    assert runs_left_note([600.0], 0) == "none left"


def test_a_grid_prints_runs_done_and_the_time_left(monkeypatch, capsys, tmp_path):
    # four runs to train; one of row r1 finished earlier in 5 min (its results.json); b fails after 30 s
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(grid, "time", SimpleNamespace(monotonic=lambda: clock.now))
    took = {"a": (600, 0), "b": (30, 1), "c": (1200, 0), "d": (900, 0)}

    def finish(name):
        seconds, status = took[name]
        clock.now += seconds
        return status

    fake_training(monkeypatch, finish)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text('{"wall_seconds": 300}')
    runs = [SimpleNamespace(cfg=SimpleNamespace(run_name=name), state=state, run_dir=tmp_path / name,
                            row=SimpleNamespace(name=row))
            for name, state, row in [("done", "finished", "r1"), ("a", "missing", "r1"), ("b", "stale", "r2"),
                                     ("c", "resumable", "r1"), ("d", "missing", "r2")]]
    failed = grid.run_grid(runs)
    assert [run.cfg.run_name for run in failed] == ["b"]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert [line.split(" (", 1)[1] for line in lines] == [
        "4 to go: about 20m00s at each row's pace so far)",  # 4 x 5 min: r2 has no run yet, the mean of all
        "3 to go: about 22m30s at each row's pace so far)",  # r1 now 7m30s a run (5 and 10 min)
        "2 to go: about 15m00s at each row's pace so far)",  # the failed run says nothing about the pace
        "1 to go: about 11m40s at each row's pace so far)",  # r2 still none: the mean of 5, 10 and 20 min
    ]
    assert lines[0].startswith("[1/4] a: ")


def test_an_alpha_sweep_logs_the_time_left(tiny_backbone, tmp_path, monkeypatch):
    # three alpha values; 2 finished in an earlier call (30 min), 1 takes 10 min now: 4 is left
    cfg = load_config(ROOT / "configs/smoke.yaml", [
        f"model.backbone={tiny_backbone}", f"output_dir={tmp_path}", "run_name=sweep", "loss.alpha=auto",
        "sweep.alpha_base=1", "sweep.alpha_grid=[1,2,4]"])
    seconds = {1.0: 600.0, 2.0: 1800.0, 4.0: 900.0}

    def fake_train(sub_cfg):  # a finished run as train() leaves it: config, results
        run_dir = Path(sub_cfg.output_dir) / sub_cfg.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(sub_cfg, run_dir / "config.yaml")
        results = {"dev": {"f1": sub_cfg.loss["alpha"] / 10}, "test": {}, "wall_seconds": seconds[sub_cfg.loss["alpha"]]}
        (run_dir / "results.json").write_text(json.dumps(results))
        return results

    sweep.prepare_parent(tmp_path / "sweep", cfg, rank=0)  # the earlier call's sweep, which finished alpha 2
    fake_train(sweep._sub_config(cfg, 2.0, tmp_path / "sweep" / "alpha_sweep" / "alpha=2"))
    monkeypatch.setattr("docre.trainer.train", fake_train)
    messages = []
    monkeypatch.setattr(sweep, "logger", SimpleNamespace(info=lambda message, *args: messages.append(message % args)))
    assert sweep.tune_alpha(cfg)["alpha"] == 4.0
    started = [m for m in messages if ": start in " in m]
    assert started[0].startswith("alpha 1 (1 of 3)") and started[0].endswith("(2 to go, no estimate before the first finishes)")
    assert started[1].startswith("alpha 4 (3 of 3)") and started[1].endswith("(2 done, 20m00s each: about 20m00s left for 1)")


def test_training_shows_its_bars_by_the_rule_and_logs_the_time_left(tiny_backbone, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("DOCRE_PROGRESS", "1")  # bars into pytest's captured (non-terminal) stderr
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={tiny_backbone}", f"output_dir={tmp_path}",
                                                      "train.epochs=2"])
    train(cfg)
    err = capfd.readouterr().err
    # (dev and test are the training file: their features come from the cache, with no bar)
    for bar in ("featurise train:", "epoch 1/2:", "run_left=", "dev:", "test:"):
        assert bar in err, bar
    log = (tmp_path / cfg.run_name / "train.log").read_text()
    assert "epoch 1/2 done, step 1/2: about " in log and "epoch 2/2 done" not in log  # nothing left to estimate


def test_grid_estimate_paces_each_row_by_its_own_runs():
    def runs(*rows):
        return [SimpleNamespace(row=SimpleNamespace(name=row)) for row in rows]

    assert grid.grid_left_note(runs("a", "b"), {}) == "2 to go, no estimate before the first finishes"
    # a: 10 min a run, b: 30 min; c has none and goes at the mean of all finished runs (23m20s)
    pace = {"a": [600.0], "b": [1200.0, 2400.0]}
    assert grid.grid_left_note(runs("a", "b", "b", "c"), pace) == "4 to go: about 1h33m at each row's pace so far"
    assert grid.grid_left_note(runs("a"), pace) == "1 to go: about 10m00s at each row's pace so far"
