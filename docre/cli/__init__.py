"""docre's command-line programs, one module per command. Each module has `main() -> int` (the
command, testable in-process) and `run()`, the console entry point that pyproject.toml's
[project.scripts] names (`docre-train = "docre.cli.train:run"`, ...); train.py, evaluate.py and
scripts/<name>.py are thin wrappers that call the same `run()`."""

import argparse
import sys


def prog(command: str) -> str:
    """argparse's program name: the script as typed when run as one (`train.py`,
    `scripts/predict.py`), else the console command (`docre-train`)."""
    script = sys.argv[0] if sys.argv else ""
    return script if script.endswith(".py") else command


def command_parser(command: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of a command: its name (`prog`), its module docstring's first paragraph as
    the description, and the rest of the docstring's layout kept as written."""
    return argparse.ArgumentParser(prog=prog(command), description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
