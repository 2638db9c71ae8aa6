"""docre's command-line programs, one module per command. Each module has `main() -> int` (the
command, testable in-process) and `run()`, the console entry point that pyproject.toml's
[project.scripts] names (`docre-train = "docre.cli.train:run"`, ...); train.py, evaluate.py and
scripts/<name>.py are thin wrappers that call the same `run()`.

A module's docstring is its command's --help: the first paragraph is the description, the rest
(ending in an "Examples:" paragraph written with the console command's name) follows the list of
arguments. Argument names are the same in every command: RUN_DIR is one training run's directory,
RUNS_DIR a folder of them, MODEL a run directory, exported model folder or Hub id, CONFIG a config
file; `-o/--output` is always a file, a folder is `--output-dir DIR`.
"""

import argparse
import sys


def prog(command: str) -> str:
    """argparse's program name: the script as typed when run as one (`train.py`,
    `scripts/predict.py`), else the console command (`docre-train`)."""
    script = sys.argv[0] if sys.argv else ""
    return script if script.endswith(".py") else command


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring's layout kept as written, and "(default: X)" after each option that has a default
    its help does not already state (None, False and "" mean "off" or "none", which need no saying)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == "":
            return text
        return super()._get_help_string(action)


def command_parser(command: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of a command: its name (`prog`), its module docstring's first paragraph as
    the description and the rest as the text after the arguments, the examples in it written the way
    this process was started (`docre-train ...` or `python train.py ...`)."""
    name = prog(command)
    description, _, rest = doc.strip().partition("\n\n")
    typed = command if name == command else f"python {name}"
    return argparse.ArgumentParser(prog=name, description=description, epilog=rest.replace(command, typed) or None,
                                   formatter_class=HelpFormatter)
