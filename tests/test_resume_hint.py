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


@pytest.mark.parametrize("part", ["stage1", "alpha_sweep/alpha=4.125", "alpha_sweep/alpha=4.125/stage3"])
def test_a_part_of_a_run_names_the_whole_run_and_is_not_resumed_alone(tmp_path, monkeypatch, part):
    """A VaeDiff-DocRE stage or an alpha sweep's value was named in the hint after a stop; resumed alone it trained a
    second whole run inside itself, and the run it belonged to then adopted that one's results."""
    from tests.cli import run_main

    whole = tmp_path / "run"
    (whole / part).mkdir(parents=True)
    for folder in [whole, whole / part, *[p for p in (whole / part).parents if p.name.startswith("alpha=")]]:
        (folder / "config.yaml").write_text("seed: 66\n")
    (whole / "alpha_sweep" / "config.yaml").unlink(missing_ok=True)  # the sweep's folder of values is no run
    last = whole / part / "last"
    last.mkdir()
    for name in CHECKPOINT_FILES:
        (last / name).write_text(json.dumps({"counters": {"step": 3}}))
    monkeypatch.setattr(sys, "argv", ["train.py", "configs/quickstart.yaml"])
    assert last_checkpoint_message(whole / part).endswith(f"is in {last}. Resume with: python train.py --resume {whole}")
    with pytest.raises(DocreError) as error:
        run_main("train", ["--resume", str(whole / part)])
    assert str(error.value) == (f"{whole / part}: a part of the run {whole} (an alpha sweep's value or a VaeDiff-DocRE "
                                f"stage), which resumes it: python train.py --resume {whole}")
    with pytest.raises(DocreError) as error:  # CONFIG train.resume=PART, the other spelling
        run_main("train", ["configs/smoke.yaml", f"train.resume={whole / part}"])
    assert str(error.value).startswith(f"{whole / part}: a part of the run {whole} (an alpha sweep's value")
    from docre.sweep import run  # the Python API, as train.py calls it

    with pytest.raises(DocreError, match=f"a part of the run {whole} "):
        run(load_config("configs/smoke.yaml", [f"train.resume={whole / part}"]))
    assert sorted(p.name for p in (whole / part).iterdir()) == ["config.yaml", "last"]  # nothing started inside it


def test_a_part_without_a_checkpoint_names_what_the_run_kept(tmp_path, monkeypatch):
    # a second signal in VaeDiff's stage 3 before its first checkpoint said "No checkpoint was saved yet." and named no
    # command, although stages 1 and 2 had finished
    whole = tmp_path / "run"
    for part in ("stage1", "stage2", "stage3"):
        (whole / part).mkdir(parents=True)
    (whole / "config.yaml").write_text("seed: 66\n")
    (whole / "stage1" / "results.json").write_text("{}")
    (whole / "stage2" / "augmenter.safetensors").write_bytes(b"")
    monkeypatch.setattr(sys, "argv", ["train.py"])
    assert last_checkpoint_message(whole / "stage3") == (
        f"No checkpoint of this part yet; the run {whole} kept: stage1 finished, stage2 finished. Resume with: python "
        f"train.py --resume {whole}")
    assert last_checkpoint_message(tmp_path / "plain") == "No checkpoint was saved yet."
