"""docre.grid with --jobs N: N training processes at a time, each with its share of the machine
(child_env), its output lines prefixed with its run name, a failed run leaving the others going, and
a stop (a signal to the grid, or to one run's own process) reaching every run then training. The
training processes here are small Python scripts that stand in for train.py, so the tests check the
runner itself: which processes run side by side, what environment they get, what the grid reports."""

import json
import os
import signal
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

import docre.grid as grid
from docre.errors import DocreError
from tests.cli import fake_training

# A stand-in training process: argv = NAME MARKERS BEHAVIOUR. It marks itself started (MARKERS/NAME.started,
# NAME.running until it ends, NAME.env with its environment), records how many stand-ins were running at its
# start, then behaves: "wait:OTHER" waits for OTHER to have started (so both must run at once), "fail" exits 1,
# "print" prints two lines, "flood" 400 KB, "stop" exits as a training process stopped by SIGTERM (143), "train"
# runs until it gets SIGTERM, which it answers as docre.trainer does (exit 143, checkpoint saved), "killed:N" is
# killed by signal N with its default action (Popen's status -N: a signal no handler of the run's caught).
STAND_IN = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    name, markers, behaviour = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    def stopped(signum, frame):
        (markers / (name + ".stopped")).write_text(str(signum))
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, stopped)
    (markers / (name + ".env")).write_text(json.dumps({k: os.environ.get(k) for k in
        ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "DOCRE_PROGRESS")}))
    (markers / (name + ".running")).touch()
    (markers / (name + ".started")).touch()
    (markers / (name + ".peers")).write_text(str(len(list(markers.glob("*.running")))))
    def wait_for(path):
        deadline = time.monotonic() + 60
        while not path.exists():
            if time.monotonic() > deadline:
                sys.exit(2)
            time.sleep(0.01)
    status = 0
    if behaviour.startswith("wait:"):
        wait_for(markers / (behaviour[5:] + ".started"))
    elif behaviour == "fail":
        status = 1
    elif behaviour == "print":
        print("first line")
        print("second line", file=sys.stderr)
    elif behaviour == "flood":  # more than a pipe holds (64 KiB)
        for i in range(20000):
            print("a line of output", i)
    elif behaviour == "stop":
        wait_for(markers / "train.started")
        status = 143
    elif behaviour == "train":
        time.sleep(60)
        status = 3
    elif behaviour.startswith("killed:"):
        signum = int(behaviour[7:])
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        time.sleep(60)
    (markers / (name + ".running")).unlink()
    sys.exit(status)
""")


def stand_in_runs(tmp_path, monkeypatch, behaviours: dict[str, str]):
    """One grid run per entry (run name: behaviour), trained by the stand-in script."""
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setattr(grid, "train_command",
                        lambda run, nproc: [sys.executable, "-c", STAND_IN, run.cfg.run_name, str(markers),
                                            behaviours[run.cfg.run_name]])
    runs = [SimpleNamespace(cfg=SimpleNamespace(run_name=name), state="missing", run_dir=tmp_path / name,
                            row=SimpleNamespace(name="row")) for name in behaviours]
    return runs, markers


def env_of(markers, name: str) -> dict:
    return json.loads((markers / f"{name}.env").read_text())


def test_child_env_shares_threads_and_gpus():
    base = {"PATH": "/bin"}
    assert grid.child_env(0, 1, 1, base, cpus=16) == base  # one job: our environment unchanged
    four = [grid.child_env(slot, 4, 1, base, cpus=16) for slot in range(4)]
    assert all(env["OMP_NUM_THREADS"] == "4" and env["DOCRE_PROGRESS"] == "0" and env["PATH"] == "/bin" for env in four)
    assert grid.child_env(0, 3, 1, base, cpus=2)["OMP_NUM_THREADS"] == "1"  # never 0 threads
    # two GPUs, three jobs: GPUs round robin; four GPUs, two jobs of --nproc 2: a pair each
    gpus = {**base, "CUDA_VISIBLE_DEVICES": "4,5"}
    assert [grid.child_env(slot, 3, 1, gpus, cpus=16)["CUDA_VISIBLE_DEVICES"] for slot in range(3)] == ["4", "5", "4"]
    pairs = {**base, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert [grid.child_env(slot, 2, 2, pairs, cpus=16)["CUDA_VISIBLE_DEVICES"] for slot in range(2)] == ["0,1", "2,3"]
    # what the caller set wins; no GPU visible: no CUDA_VISIBLE_DEVICES of ours
    chosen = grid.child_env(1, 2, 1, {**base, "OMP_NUM_THREADS": "3", "DOCRE_PROGRESS": "1", "CUDA_VISIBLE_DEVICES": ""}, cpus=16)
    assert chosen["OMP_NUM_THREADS"] == "3" and chosen["DOCRE_PROGRESS"] == "1" and chosen["CUDA_VISIBLE_DEVICES"] == ""


def test_jobs_train_side_by_side_and_a_failure_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    # a and b each wait for the other to be running: they finish only if the grid runs them at once
    runs, markers = stand_in_runs(tmp_path, monkeypatch, {"a": "wait:b", "b": "wait:a", "c": "fail", "d": "print"})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    failed = grid.run_grid(runs, jobs=2)
    assert [run.cfg.run_name for run in failed] == ["c"]
    assert max(int((markers / f"{name}.peers").read_text()) for name in "abcd") == 2  # never more than 2 at once
    assert {env_of(markers, "a")["CUDA_VISIBLE_DEVICES"], env_of(markers, "b")["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}
    threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert {env_of(markers, name)["OMP_NUM_THREADS"] for name in "abcd"} == {threads}
    assert {env_of(markers, name)["DOCRE_PROGRESS"] for name in "abcd"} == {"0"}
    captured = capsys.readouterr()
    assert "[d] first line\n" in captured.out and "[d] second line\n" in captured.out  # stderr too, prefixed
    assert "c failed (exit status 1)" in captured.err
    starts = [line for line in captured.out.splitlines() if line.startswith("[") and ": start (" in line]
    assert [line.split("]")[0] for line in starts] == ["[1/4", "[2/4", "[3/4", "[4/4"]


def test_a_run_stopped_by_sigterm_stops_the_runs_beside_it(tmp_path, monkeypatch):
    # "stop" exits 143 (its own process got SIGTERM) while "train" is training: the grid sends "train"
    # SIGTERM (it checkpoints and exits 143), starts nothing more and says how to resume
    runs, markers = stand_in_runs(tmp_path, monkeypatch, {"train": "train", "stop": "stop", "later": "print"})
    with pytest.raises(DocreError, match=r"^stop was stopped by SIGTERM \(exit status 143\) with a checkpoint, "
                                         r"so the grid stops too; run the same command again to resume"):
        grid.run_grid(runs, jobs=2)
    assert (markers / "train.stopped").read_text() == str(int(signal.SIGTERM))
    assert not (markers / "later.env").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_run_killed_by_an_unhandled_sigterm_or_sigint_stops_the_grid(tmp_path, monkeypatch, signum):
    # exit status -15 / -2: a stop like 143 / 130 (the same command resumes it), not a failed run after which the
    # grid goes on (it was, and named a log that did not exist)
    runs, markers = stand_in_runs(tmp_path, monkeypatch, {"killed": f"killed:{int(signum)}", "later": "print"})
    name = signal.Signals(signum).name
    with pytest.raises(DocreError, match=rf"^killed was stopped by {name} \(exit status -{int(signum)}\), so the grid "
                                         r"stops too; run the same command again to resume"):
        grid.run_grid(runs)
    assert not (markers / "later.env").exists()


def test_a_failed_run_names_its_log_only_where_it_exists(tmp_path, monkeypatch, capsys):
    runs, _ = stand_in_runs(tmp_path, monkeypatch, {"early": "fail", "logged": "fail"})
    (tmp_path / "logged").mkdir()
    (tmp_path / "logged" / "train.log").write_text("a line\n")
    assert [run.cfg.run_name for run in grid.run_grid(runs)] == ["early", "logged"]
    err = capsys.readouterr().err
    assert "early failed (exit status 1)\n" in err  # failed before its setup wrote train.log: no log named
    assert f"logged failed (exit status 1); log: {tmp_path / 'logged' / 'train.log'}\n" in err


def test_sigterm_to_the_grid_reaches_every_run_training(tmp_path, monkeypatch):
    runs, markers = stand_in_runs(tmp_path, monkeypatch, {"one": "train", "two": "train", "three": "print"})

    def terminate_once_both_run():
        deadline = time.monotonic() + 60
        while not all((markers / f"{name}.started").exists() for name in ("one", "two")) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # the grid's handler forwards it to both

    threading.Thread(target=terminate_once_both_run, daemon=True).start()
    with pytest.raises(DocreError, match=r"^interrupted during (one, two|two, one); run the same command again to resume"):
        grid.run_grid(runs, jobs=2)
    assert all((markers / f"{name}.stopped").exists() for name in ("one", "two"))
    assert not (markers / "three.env").exists()


def test_a_signal_between_two_runs_names_the_next(tmp_path, monkeypatch):
    # SIGTERM lands as "a" ends cleanly (exit 0): no run was training, so the grid stops before "b"
    def finish(name):
        if name == "a":
            os.kill(os.getpid(), signal.SIGTERM)  # the grid's handler records it; no process is left to forward it to
        return 0

    started = fake_training(monkeypatch, finish)
    runs = [SimpleNamespace(cfg=SimpleNamespace(run_name=name), state="missing", run_dir=tmp_path / name,
                            row=SimpleNamespace(name="row")) for name in "ab"]
    with pytest.raises(DocreError, match=r"^interrupted before b; run the same command again to resume"):
        grid.run_grid(runs)
    assert started == ["a"]


def test_a_closed_stdout_does_not_block_a_run(tmp_path, monkeypatch):
    # our stdout gone (the grid piped into `head`, which has exited): a run's output is still drained,
    # so a run that prints more than a pipe holds finishes instead of blocking on its write
    markers = tmp_path / "markers"
    markers.mkdir()

    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    children = grid.ChildSignals()
    process = children.start([sys.executable, "-c", STAND_IN, "loud", str(markers), "flood"], dict(os.environ), "[loud] ")
    watchdog = threading.Timer(60, process.kill)  # a blocked run is killed, and fails the test, after a minute
    watchdog.start()
    try:
        ended, status = children.wait_any()
    finally:
        watchdog.cancel()
    assert ended is process and status == 0
