"""Atomic files: a crash or kill while writing leaves the previous complete file, and a crash at
any point of a checkpoint save (and of the next one) leaves a complete checkpoint to resume from."""

import ast
import contextlib
import os
import signal
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from docre import checkpoint
from docre.checkpoint import find_training_state, load_training_state, save_training_state
from docre.trainer import linear_warmup_decay
from docre.utils import atomic_open, atomic_save_safetensors, atomic_write_json

ROOT = Path(__file__).resolve().parent.parent


class Crash(Exception):
    """Stands for the process dying at this point."""


def test_exception_while_writing_keeps_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"f1": 0.5})
    with pytest.raises(Crash), atomic_open(path) as handle:
        handle.write('{"f1": 0.')
        raise Crash
    assert path.read_text() == '{\n  "f1": 0.5\n}\n'
    assert os.listdir(tmp_path) == ["results.json"]  # the temporary file is gone


def test_crash_inside_safetensors_writer_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "best.safetensors"
    atomic_save_safetensors({"w": torch.ones(3)}, path)
    good = path.read_bytes()

    def half_then_crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(good[: len(good) // 2])
        raise Crash

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_crash)
    with pytest.raises(Crash):
        atomic_save_safetensors({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["best.safetensors"]


def test_sigkill_while_writing_keeps_the_old_file(tmp_path):
    path = tmp_path / "dev_predictions.json"
    path.write_text("old")
    pid = os.fork()
    if pid == 0:  # child: die by SIGKILL in the middle of the write (no cleanup code can run)
        try:
            with atomic_open(path) as handle:
                handle.write("new but only ha")
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert path.read_text() == "old"
    # what a hard kill leaves: one hidden temporary file beside it, never read by docre
    leftovers = [name for name in os.listdir(tmp_path) if name != path.name]
    assert len(leftovers) == 1 and leftovers[0].startswith(".dev_predictions.json.") and leftovers[0].endswith(".tmp")


def test_new_files_follow_the_umask(tmp_path):
    umask = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {})
        atomic_save_safetensors({"w": torch.ones(1)}, tmp_path / "b.safetensors")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640  # as open() would make it, not mkstemp's 0o600
    assert (tmp_path / "b.safetensors").stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------------------------------- last/ swap
class Faults:
    """Counts the filesystem operations of checkpoint saves and raises `Crash` at operation `at`.
    A directory removal is one operation per file (the worst order: state.json last), so a crash
    can also leave a half-deleted directory."""

    def __init__(self, monkeypatch, at: int = 0):
        self.at, self.count = at, 0
        for name in ("atomic_save_safetensors", "atomic_write_json"):
            monkeypatch.setattr(checkpoint, name, self.wrap(getattr(checkpoint, name)))
        monkeypatch.setattr(checkpoint, "os", types.SimpleNamespace(rename=self.wrap(os.rename)))
        monkeypatch.setattr(checkpoint, "shutil", types.SimpleNamespace(rmtree=self.rmtree))

    def tick(self) -> None:
        self.count += 1
        if self.count == self.at:
            raise Crash

    def wrap(self, function):
        def faulty(*args, **kwargs):
            self.tick()
            return function(*args, **kwargs)

        return faulty

    def rmtree(self, path, ignore_errors=False) -> None:
        path = Path(path)
        if not path.exists():
            return
        for file in sorted(path.iterdir()):
            self.tick()
            file.unlink()
        self.tick()
        path.rmdir()


def tiny_state(step: int):
    """A model whose every weight equals `step`, with optimizer, scheduler and scaler."""
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(step)
    return model, optimizer, linear_warmup_decay(optimizer, 0, 10), torch.amp.GradScaler("cpu", enabled=False)


def save(run: Path, step: int) -> None:
    model, optimizer, scheduler, scaler = tiny_state(step)
    save_training_state(run / "last", model, optimizer, scheduler, scaler, {"step": step})


def recovered_step(run: Path) -> int | None:
    """The step of the checkpoint a resume would load; checks that its weights belong to it."""
    directory = find_training_state(run / "last")
    if directory is None:
        return None
    model, optimizer, scheduler, scaler = tiny_state(-1)
    step = load_training_state(directory, model, optimizer, scheduler, scaler)["step"]
    assert all(bool((p == step).all()) for p in model.parameters()), "weights and counters of different saves"
    return step


@pytest.fixture
def fast_fsync(monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what these tests count


def operations_of_a_save(tmp_path, monkeypatch) -> int:
    save(tmp_path / "count", 1)
    with monkeypatch.context() as patch:
        faults = Faults(patch)
        save(tmp_path / "count", 2)
    return faults.count


def test_a_crash_at_any_point_of_a_save_leaves_a_checkpoint(tmp_path, monkeypatch, fast_fsync):
    points = operations_of_a_save(tmp_path, monkeypatch)
    assert points >= 8
    for at in range(1, points + 1):
        run = tmp_path / f"run{at}"
        save(run, 1)
        with monkeypatch.context() as patch:
            Faults(patch, at)
            with pytest.raises(Crash):
                save(run, 2)
        assert recovered_step(run) in (1, 2), at
        save(run, 3)  # the next save completes and clears every leftover
        assert recovered_step(run) == 3 and os.listdir(run) == ["last"], at


def test_two_crashes_in_a_row_still_leave_a_checkpoint(tmp_path, monkeypatch, fast_fsync):
    """E.g. killed between the two renames (only last.old is complete), resumed from last.old, and
    killed again during the next save: that save must not delete last.old before a new last/ exists."""
    points = operations_of_a_save(tmp_path, monkeypatch)
    for first in range(1, points + 1):
        for second in range(1, points + 1):
            run = tmp_path / f"run{first}-{second}"
            save(run, 1)
            for at, step in ((first, 2), (second, 3)):
                with monkeypatch.context() as patch:
                    Faults(patch, at)
                    with pytest.raises(Crash):
                        save(run, step)
            assert recovered_step(run) in (1, 2, 3), (first, second)
    assert recovered_step(tmp_path / f"run{points}-{points}") == 3  # each crash after its new last/ was in place


def test_a_crash_during_the_first_save_leaves_no_checkpoint_or_a_complete_one(tmp_path, monkeypatch, fast_fsync):
    points = operations_of_a_save(tmp_path, monkeypatch)
    for at in range(1, points + 1):
        run = tmp_path / f"run{at}"
        with monkeypatch.context() as patch:
            Faults(patch, at)
            with contextlib.suppress(Crash):
                save(run, 1)
        assert recovered_step(run) in (None, 1), at


def test_best_weights_file_round_trips(tmp_path):
    model = nn.Linear(3, 2)
    checkpoint.save_weights(model, tmp_path / "best.safetensors")
    state = load_file(tmp_path / "best.safetensors")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------- every write is atomic
WRITERS = {"write_text", "write_bytes", "save_file", "dump", "save", "savez", "to_csv", "savefig"}


def direct_writes(source: str) -> list[str]:
    """Calls that write a file other than through docre.utils' atomic helpers: open(..., "w"/"a"/"x"),
    Path.write_text/write_bytes, safetensors save_file, json.dump, torch.save, np.save."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        into_handle = name == "savefig" and node.args and getattr(node.args[0], "id", "") == "handle"
        if name in WRITERS and not into_handle:  # savefig(handle, ...): into an atomic_open handle
            found.append((node.lineno, name))
        if name in ("open", "fdopen"):
            modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
            if any(isinstance(m, str) and set(m) & set("wax+") for m in modes):
                found.append((node.lineno, "open for writing"))
    return [f"line {line}: {what}" for line, what in sorted(found)]  # ast.walk is breadth-first: sort by line


def test_the_write_scanner_finds_direct_writes():
    assert direct_writes("import json\nopen(p, 'w').write(x)\nPath(p).write_text(t)\njson.dump(o, f)\nopen(p)\n") == [
        "line 2: open for writing", "line 3: write_text", "line 4: dump"]


def test_docre_writes_files_only_through_the_atomic_helpers():
    allowed = {ROOT / "docre" / "utils.py",  # the helpers themselves, and the fsynced metrics.jsonl append
               ROOT / "docre" / "cli" / "download_data.py",  # a resumable FILE.part, verified, then renamed
               ROOT / "docre" / "stream.py"}  # append-only shards, synced, their valid length recorded atomically
    sources = [*sorted((ROOT / "docre").rglob("*.py")), ROOT / "train.py", ROOT / "evaluate.py",
               *sorted((ROOT / "scripts").glob("*.py"))]
    offenders = {str(p.relative_to(ROOT)): hits for p in sources if p not in allowed
                 for hits in [direct_writes(p.read_text())] if hits}
    assert offenders == {}
