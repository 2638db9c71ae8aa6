"""Run a command's main() in the test process (no interpreter start-up), as its command line would."""

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """The command module docre.cli.<name> (scripts/<name>.py is a wrapper around it); main() is not run."""
    return importlib.import_module(f"docre.cli.{name}")


def run_main(script: str, argv: list[str]) -> int:
    """docre.cli.<script>'s main() with `argv`; a DocreError propagates (the CLI would print it)."""
    module = load_script(script)
    saved = sys.argv
    sys.argv = [f"{script}.py", *argv]
    try:
        return module.main()
    finally:
        sys.argv = saved


class FakeProcess:
    """A stand-in for a grid's training process (hashable by identity, as Popen is)."""

    def __init__(self, name: str):
        self.name = name


def fake_training(monkeypatch, finish) -> list[str]:
    """Replace docre.grid's training processes by instant fakes, one at a time: a run named NAME
    "trains" when the grid waits for it, and `finish(NAME)` gives its exit status. Returns the list
    of run names in the order they were started."""
    import docre.grid as grid

    started = []

    def start(self, command, env, prefix=None):
        started.append(command[-1])
        process = FakeProcess(command[-1])
        self.processes.append(process)
        return process

    def wait_any(self):
        process = self.processes.pop(0)
        return process, finish(process.name)

    monkeypatch.setattr(grid.ChildSignals, "start", start)
    monkeypatch.setattr(grid.ChildSignals, "wait_any", wait_any)
    monkeypatch.setattr(grid, "train_command", lambda run, nproc: ["train", run.cfg.run_name])
    return started
