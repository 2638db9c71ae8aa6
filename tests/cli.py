"""Run a script's main() in the test process (no interpreter start-up), as its command line would."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """The module scripts/<name>.py (its main() is not run)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(script: str, argv: list[str]) -> int:
    """scripts/<script>.py's main() with `argv`; a DocreError propagates (the CLI would print it)."""
    module = load_script(script)
    saved = sys.argv
    sys.argv = [f"{script}.py", *argv]
    try:
        return module.main()
    finally:
        sys.argv = saved
