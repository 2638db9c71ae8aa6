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
