"""Training a grid of runs (a result table over seeds, a loss comparison): the one runner behind
scripts/reproduce.py and scripts/compare_losses.py.

Every run of the grid is one `train` process (torchrun with --nproc > 1), so a crash or an
out-of-memory in one run leaves the others, and this process, untouched. What happens to a run is
`run_dir.plan`'s rule, the same as the alpha sweep's: a finished run is skipped, a run with a
checkpoint resumed, a run stopped before its first checkpoint started again. Ctrl-C or SIGTERM
stops the current run at its next step with a checkpoint; the same command then continues the grid.
A run stopped by a signal sent to its own training process (`kill PID`, a scheduler's preemption)
stops the grid the same way, never a reason to start the next run. Any other exit of a run (a crash,
an out-of-memory kill) is a failed run, and the grid goes on.
Before each run it prints how many are left and how long they will take, each at the pace of its
row's finished runs (earlier ones too).
"""

import os
import signal
import subprocess
import sys
import time

from docre.errors import DocreError
from docre.run_dir import ACTIONS, read_results
from docre.tables import Run
from docre.utils import format_duration

# the exit statuses of a training process stopped by SIGINT/SIGTERM at a step, its checkpoint saved
STOPPED_BY_SIGNAL = {128 + signal.SIGINT: "SIGINT", 128 + signal.SIGTERM: "SIGTERM"}


class ChildSignals:
    """Forward SIGINT/SIGTERM to the training process. The child runs in its own process group, so
    a Ctrl-C in the terminal reaches it once, through us: the first signal asks it to stop after the
    current step with a checkpoint, a second one to stop at once (docre.trainer's handling)."""

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.received: list[int] = []

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        print(f"\n{name}: stopping the current run at its next step (again: at once)", file=sys.stderr, flush=True)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def __enter__(self) -> "ChildSignals":
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def run(self, command: list[str]) -> int:
        # its own process group in our session, i.e. setpgid(0, 0): Popen's process_group=0 from Python 3.11 on
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        self.process = subprocess.Popen(command, **group)
        try:
            return self.process.wait()
        finally:
            self.process = None


def train_command(run: Run, nproc: int) -> list[str]:
    """The training command line of a run: resume from its checkpoint, start again, or start."""
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc-per-node={nproc}"]
    train = [*launcher, "-m", "docre.cli.train"]
    if run.state == "resumable":
        return [*train, "--resume", str(run.run_dir)]
    extra = ["train.overwrite=true"] if run.state == "stale" else []
    return [*train, str(run.config_path), *run.overrides, *extra]


def grid_left_note(remaining: list[Run], pace: dict[str, list[float]]) -> str:
    """The time the `remaining` runs take: each at the mean pace of its row's finished runs, a row
    with none at the mean of all finished runs, e.g. '3 to go: about 1h05m at each row's pace so far'."""
    known = [seconds for row in pace.values() for seconds in row]
    if not known:
        return f"{len(remaining)} to go, no estimate before the first finishes"
    overall = sum(known) / len(known)
    row_mean = {row: sum(times) / len(times) for row, times in pace.items() if times}
    seconds = sum(row_mean.get(run.row.name, overall) for run in remaining)
    return f"{len(remaining)} to go: about {format_duration(seconds)} at each row's pace so far"


def run_grid(runs: list[Run], nproc: int = 1) -> list[Run]:
    """Train every run that is not finished, one process at a time; returns the runs that failed.

    Raises:
        DocreError: interrupted by SIGINT/SIGTERM (the current run has saved a checkpoint); the same
            command continues the grid.
    """
    todo = [run for run in runs if run.state != "finished"]
    failed = []
    # wall seconds of each row's finished runs: earlier ones (results.json) and this command's (failed
    # runs say nothing about the pace); rows differ (another model, a larger encoder), seeds of a row hardly
    pace: dict[str, list[float]] = {}
    for run in runs:
        wall = (read_results(run.run_dir) or {}).get("wall_seconds") if run.state == "finished" else None
        if wall:
            pace.setdefault(run.row.name, []).append(wall)
    with ChildSignals() as signals:
        for index, run in enumerate(todo, 1):
            if signals.received:  # arrived between two runs
                raise DocreError(f"interrupted before {run.cfg.run_name}; run the same command again to go on")
            print(f"[{index}/{len(todo)}] {run.cfg.run_name}: {ACTIONS[run.state]} "
                  f"({grid_left_note(todo[index - 1:], pace)})", flush=True)
            started = time.monotonic()
            status = signals.run(train_command(run, nproc))
            if signals.received:
                raise DocreError(f"interrupted during {run.cfg.run_name} (exit status {status}); "
                                 f"run the same command again to resume: {' '.join(sys.argv)}")
            if status in STOPPED_BY_SIGNAL:  # docre.trainer.Interrupted's exit: stopped with a checkpoint
                raise DocreError(f"{run.cfg.run_name} was stopped by {STOPPED_BY_SIGNAL[status]} (exit status {status}) "
                                 f"with a checkpoint, so the grid stops too; run the same command again to resume: "
                                 f"{' '.join(sys.argv)}")
            if status == 0:
                pace.setdefault(run.row.name, []).append(time.monotonic() - started)
            else:
                failed.append(run)
                print(f"[{index}/{len(todo)}] {run.cfg.run_name} failed (exit status {status}); "
                      f"log: {run.run_dir / 'train.log'}", file=sys.stderr, flush=True)
    return failed
