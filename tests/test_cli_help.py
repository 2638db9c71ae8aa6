"""Every console command's --help (run in-process through its parser): examples written with the
command's name, every positional argument described, every option's default shown, and one name per
kind of argument across commands (RUN_DIR is always a run directory, `-o/--output` always a file)."""

import argparse
import re
import sys

import pytest

from tests.cli import ROOT, load_script

# console command -> docre.cli module, from pyproject.toml's [project.scripts]
COMMANDS = dict(re.findall(r'^(docre-[\w-]+) = "docre\.cli\.(\w+):run"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE))


def help_of(module: str, argv0: str, monkeypatch, capsys) -> tuple[str, argparse.ArgumentParser]:
    """The --help text of docre.cli.<module> started as `argv0`, and the parser that printed it."""
    cli = load_script(module)
    built = []
    real = cli.command_parser
    monkeypatch.setattr(cli, "command_parser", lambda *args: built.append(real(*args)) or built[-1])
    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 0
    return capsys.readouterr().out, built[0]


def option_help(text: str, action: argparse.Action) -> str:
    """The lines of option `action` in the help text: from its option strings to the next argument."""
    options = text[text.index("\noptions:"):]
    start = re.search(rf"\n  {re.escape(action.option_strings[0])}\b", options).start() + 1
    following = re.search(r"\n  \S|\n\n", options[start:])
    return options[start:start + following.start()] if following else options[start:]


def test_every_console_command_is_here():
    assert len(COMMANDS) == (ROOT / "pyproject.toml").read_text().count('= "docre.cli.') >= 13


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_has_examples_described_positionals_and_defaults(command, monkeypatch, capsys):
    text, parser = help_of(COMMANDS[command], command, monkeypatch, capsys)
    examples = text.partition("Examples:")[2]
    assert examples, f"{command}: no Examples section"
    assert re.search(rf"^  {re.escape(command)} ", examples, re.MULTILINE), f"{command}: no example starts with {command}"
    for action in parser._actions:  # argparse keeps no public list of them
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            assert action.help, f"{command}: positional {action.dest} has no description"
            assert action.metavar in (action.metavar.upper(), "key=value"), f"{command}: {action.dest} is not upper case"
        elif action.default not in (None, False, ""):
            assert "default" in option_help(text, action), f"{command}: {action.option_strings[-1]} hides its default"


def test_examples_follow_how_the_command_was_started(monkeypatch, capsys):
    text, _ = help_of("train", "train.py", monkeypatch, capsys)
    assert re.search(r"^  python train\.py configs/", text, re.MULTILINE)
    assert "docre-train" not in text
    text, _ = help_of("check_data", "scripts/check_data.py", monkeypatch, capsys)
    assert re.search(r"^  python scripts/check_data\.py ", text, re.MULTILINE)


def test_an_argument_has_one_name_in_every_command(monkeypatch, capsys):
    names: dict[str, set[str]] = {}  # what an argument is (its dest, singular) -> how the help shows it
    for command, module in COMMANDS.items():
        _, parser = help_of(module, command, monkeypatch, capsys)
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            shown = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
            names.setdefault(action.dest.removesuffix("s"), set()).add(shown)
            if "-o" in action.option_strings:
                assert action.dest == "output", f"{command}: -o is {action.dest}, not a file"
            if action.dest.endswith("_dir") and action.option_strings:
                assert action.option_strings == [f"--{action.dest.replace('_', '-')}"], f"{command}: {action.option_strings}"
    assert {key: shown for key, shown in names.items() if len(shown) > 1} == {}
    assert names["run_dir"] == {"RUN_DIR"} and names["runs_dir"] == {"RUNS_DIR"} and names["output"] == {"OUTPUT"}


@pytest.mark.parametrize("module", ["summarize_runs", "plot_runs"])
def test_the_old_o_for_a_folder_still_works(module, monkeypatch, capsys):
    text, parser = help_of(module, "x", monkeypatch, capsys)
    assert not re.search(r"(^|\W)-o\b", text)  # hidden: -o is a file everywhere else
    assert parser.parse_args(["runs", "-o", "out"]).output_dir == "out"
