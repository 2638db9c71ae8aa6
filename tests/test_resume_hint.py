"""The resume hint of an unfinished or interrupted run names the command the run was started with:
`docre-train`, `python train.py` (the script as typed) or `python -m docre.cli.train` (docre.grid)."""

import json
import sys

import pytest

from docre.checkpoint import CHECKPOINT_FILES
from docre.config import load_config
from docre.errors import DocreError
from docre.run_dir import last_checkpoint_message, prepare
from tests.cli import ROOT


@pytest.mark.parametrize("argv0, command", [
    (str(ROOT / ".venv/bin/docre-train"), "docre-train"),
    ("train.py", "python train.py"),
    (str(ROOT / "train.py"), f"python {ROOT / 'train.py'}"),
    (str(ROOT / "docre/cli/train.py"), "python -m docre.cli.train"),
])
def test_the_resume_hint_names_the_command_the_run_was_started_with(tmp_path, monkeypatch, argv0, command):
    run_dir = tmp_path / "run"
    last = run_dir / "last"
    last.mkdir(parents=True)
    for name in CHECKPOINT_FILES:  # a complete checkpoint, as far as finding one goes
        (last / name).write_text(json.dumps({"counters": {"step": 3}}))
    monkeypatch.setattr(sys, "argv", [argv0, "configs/quickstart.yaml"])
    assert last_checkpoint_message(run_dir).endswith(f"is in {last}. Resume with: {command} --resume {run_dir}")
    with pytest.raises(DocreError, match=f"resume it with {command} --resume {run_dir}, or set train.overwrite=true"):
        prepare(run_dir, load_config(None), rank=0)
