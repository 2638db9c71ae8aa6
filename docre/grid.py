"""Training a grid of runs (a result table over seeds, a loss comparison): the one runner behind
scripts/reproduce.py and scripts/compare_losses.py.

Every run of the grid is one `train` process (torchrun with --nproc > 1), so a crash or an
out-of-memory in one run leaves the others, and this process, untouched. What happens to a run is
`run_dir.plan`'s rule, the same as the alpha sweep's: a finished run is skipped, a run with a
checkpoint resumed, a run stopped before its first checkpoint started again. Ctrl-C or SIGTERM
stops the current runs at their next step with a checkpoint; the same command then continues the grid.
A run stopped by a signal sent to its own training process (`kill PID`, a scheduler's preemption)
stops the grid the same way, never a reason to start the next run. Any other exit of a run (a crash,
an out-of-memory kill) is a failed run, and the grid goes on.
With `jobs` > 1 that many runs train at once, each with its share of the machine (`child_env`) and its
output lines prefixed with its name.
Before each run it prints how many are left and how long they will take, each at the pace of its
row's finished runs (earlier ones too).
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

from docre.errors import DocreError
from docre.run_dir import ACTIONS, read_results
from docre.tables import Run
from docre.utils import format_duration

# the exit statuses of a training process stopped by SIGINT/SIGTERM: 128 + the signal (docre.trainer.Interrupted's: at
# a step, its checkpoint saved), or minus the signal (Popen's status of a process killed by one it did not handle,
# e.g. outside a training loop: its last checkpoint, if any, resumes it)
STOPPED_BY_SIGNAL = {128 + signal.SIGINT: "SIGINT", 128 + signal.SIGTERM: "SIGTERM",
                     -signal.SIGINT: "SIGINT", -signal.SIGTERM: "SIGTERM"}


class ChildSignals:
    """The grid's training processes, with SIGINT/SIGTERM forwarded to them. Each child runs in its own
    process group, so a Ctrl-C in the terminal reaches it once, through us: the first signal asks it to
    stop after the current step with a checkpoint, a second one to stop at once (docre.trainer's handling)."""

    def __init__(self):
        self.processes: list[subprocess.Popen] = []
        self.received: list[int] = []
        self._output_lock = threading.Lock()

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        print(f"\n{name}: stopping the current run{'s' if len(self.processes) > 1 else ''} at the next step "
              "(again: at once)", file=sys.stderr, flush=True)
        self.send(signum)

    def __enter__(self) -> "ChildSignals":
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def send(self, signum: int) -> None:
        """Send `signum` to every training process still running."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)

    def start(self, command: list[str], env: dict[str, str], prefix: str | None = None) -> subprocess.Popen:
        """Start a training process; with `prefix`, its output lines are printed after that prefix (runs
        side by side), else it writes to our terminal itself."""
        # its own process group in our session, i.e. setpgid(0, 0): Popen's process_group=0 from Python 3.11 on
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        if prefix is None:
            process = subprocess.Popen(command, env=env, **group)
        else:
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       errors="replace", **group)
            process.relay = threading.Thread(target=self._relay, args=(process.stdout, prefix), daemon=True)
            process.relay.start()
        self.processes.append(process)
        return process

    def _relay(self, stream, prefix: str) -> None:
        for line in stream:
            with self._output_lock:
                try:
                    sys.stdout.write(prefix + line)
                    sys.stdout.flush()
                except (OSError, ValueError):  # our stdout is gone (`| head` ended): drain on, or the run blocks on a full pipe
                    pass

    def wait_any(self) -> tuple[subprocess.Popen, int]:
        """Wait until one of the running processes ends; that process and its exit status."""
        while True:
            for process in self.processes:
                status = process.poll()
                if status is not None:
                    self.processes.remove(process)
                    if getattr(process, "relay", None) is not None:
                        process.relay.join()  # its last lines are printed before we report it
                    return process, status
            with contextlib.suppress(subprocess.TimeoutExpired):  # a brief blocking wait, then poll them all again
                self.processes[0].wait(timeout=0.2)


def visible_gpus(environ: dict[str, str]) -> list[str]:
    """The CUDA devices a child may use: CUDA_VISIBLE_DEVICES's entries where it is set, else 0..n-1."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [gpu.strip() for gpu in environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def child_env(slot: int, jobs: int, nproc: int, environ: dict[str, str] | None = None,
              cpus: int | None = None) -> dict[str, str]:
    """The environment of the run trained in `slot` (0 .. jobs-1) while `jobs` runs train at once.

    One job: ours, unchanged. Several: each gets cpus // jobs CPU threads (OMP_NUM_THREADS, which torch
    takes for its thread count unless train.num_threads is set) and, on a GPU machine, a group of --nproc
    GPUs of its own, slot by slot; with fewer groups than jobs the groups are shared round robin (small
    models share one GPU well). Progress bars are off (several in one terminal are unreadable). The
    caller's own OMP_NUM_THREADS and DOCRE_PROGRESS are kept, and the GPUs its CUDA_VISIBLE_DEVICES names
    are the ones shared out."""
    environ = dict(os.environ if environ is None else environ)
    if jobs == 1:
        return environ
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = {"DOCRE_PROGRESS": "0", "OMP_NUM_THREADS": str(max(1, cpus // jobs)), **environ}
    gpus = visible_gpus(environ)
    groups = len(gpus) // nproc
    if groups:
        group = slot % groups
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[group * nproc:(group + 1) * nproc])
    return env


def train_command(run: Run, nproc: int) -> list[str]:
    """The training command line of a run: resume from its checkpoint, start again, or start."""
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc-per-node={nproc}"]
    train = [*launcher, "-m", "docre.cli.train"]
    if run.state == "resumable":
        return [*train, "--resume", str(run.run_dir)]
    extra = ["train.overwrite=true"] if run.state == "stale" else []
    return [*train, str(run.config_path), *run.overrides, *extra]


def grid_left_note(remaining: list[Run], pace: dict[str, list[float]], jobs: int = 1) -> str:
    """The time the `remaining` runs take: each at the mean pace of its row's finished runs, a row
    with none at the mean of all finished runs, `jobs` at a time, e.g. '3 to go: about 1h05m at each
    row's pace so far'."""
    known = [seconds for row in pace.values() for seconds in row]
    if not known:
        return f"{len(remaining)} to go, no estimate before the first finishes"
    overall = sum(known) / len(known)
    row_mean = {row: sum(times) / len(times) for row, times in pace.items() if times}
    seconds = sum(row_mean.get(run.row.name, overall) for run in remaining)
    at_once = min(jobs, len(remaining))
    if at_once > 1:  # the pace was measured with runs side by side too
        return (f"{len(remaining)} to go: about {format_duration(seconds / at_once)} at each row's pace so far, "
                f"{at_once} at a time")
    return f"{len(remaining)} to go: about {format_duration(seconds)} at each row's pace so far"


def run_grid(runs: list[Run], nproc: int = 1, jobs: int = 1) -> list[Run]:
    """Train every run that is not finished, `jobs` processes at a time; returns the runs that failed.

    Raises:
        DocreError: interrupted by SIGINT/SIGTERM, to the grid or to a run's own training process (the
            runs that were training have saved a checkpoint); the same command continues the grid.
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
    queue = list(todo)
    running: dict[subprocess.Popen, tuple[Run, int, float]] = {}  # process: its run, slot, start time
    stopped: str | None = None  # why the grid stops: the first run stopped by a signal to its own process
    interrupted: list[str] = []  # the runs training when a signal reached the grid
    with ChildSignals() as signals:
        while queue or running:
            while queue and len(running) < jobs and not signals.received and not stopped:
                run = queue.pop(0)
                index = len(todo) - len(queue)
                slot = min(set(range(jobs)) - {slot for _, slot, _ in running.values()})
                print(f"[{index}/{len(todo)}] {run.cfg.run_name}: {ACTIONS[run.state]} "
                      f"({grid_left_note([run, *queue], pace, jobs)})", flush=True)
                process = signals.start(train_command(run, nproc), child_env(slot, jobs, nproc),
                                        prefix=f"[{run.cfg.run_name}] " if jobs > 1 else None)
                running[process] = (run, slot, time.monotonic())
            if not running:
                break
            process, status = signals.wait_any()
            run, _, started = running.pop(process)
            if status == 0:
                pace.setdefault(run.row.name, []).append(time.monotonic() - started)
            if signals.received:  # stopping: the runs still training save a checkpoint, whatever their status
                training = ([] if status == 0 else [run]) + [other for other, _, _ in running.values()]
                interrupted += [other.cfg.run_name for other in training if other.cfg.run_name not in interrupted]
                continue
            if status in STOPPED_BY_SIGNAL:  # a stop, not a failure: the same command resumes it
                saved = " with a checkpoint" if status > 0 else ""  # docre.trainer.Interrupted's exit
                stopped = stopped or (f"{run.cfg.run_name} was stopped by {STOPPED_BY_SIGNAL[status]} "
                                      f"(exit status {status}){saved}, so the grid stops too")
                signals.send(signal.SIGTERM)  # the runs beside it stop at their next step, with a checkpoint
            elif status != 0:
                failed.append(run)
                log = run.run_dir / "train.log"  # absent where the run failed before its setup (or is made of runs)
                print(f"[{todo.index(run) + 1}/{len(todo)}] {run.cfg.run_name} failed (exit status {status})"
                      f"{f'; log: {log}' if log.is_file() else ''}", file=sys.stderr, flush=True)
    resume = f"run the same command again to resume: {' '.join(sys.argv)}"
    if signals.received:
        if not interrupted:  # arrived between two runs
            raise DocreError(f"interrupted before {queue[0].cfg.run_name}; {resume}" if queue else f"interrupted; {resume}")
        raise DocreError(f"interrupted during {', '.join(interrupted)}; {resume}")
    if stopped:
        raise DocreError(f"{stopped}; {resume}")
    return failed
