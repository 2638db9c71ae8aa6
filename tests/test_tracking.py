"""Experiment trackers (log.wandb, log.tensorboard) with the real packages, read back from disk.

A smoke run with both trackers on (W&B in offline mode, under WANDB_DIR) must leave in the W&B
run file and in the TensorBoard event files what metrics.jsonl holds: the config, every train row
(loss, learning rates, gradient norm at the logged steps), every dev evaluation, and the final
dev/test scores. An interrupted and resumed run continues the same W&B run and leaves no step
twice in TensorBoard. Without a tracker's package, `import docre` and training still work, and
asking for the tracker fails at once in one line saying what to install. No network: W&B is offline.
"""

import json
import struct
import subprocess
import sys
import types
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from docre.config import load_config, to_dict
from docre.errors import DocreError
from docre.trainer import Interrupted, train
from tests.test_resume import signal_after

ROOT = Path(__file__).resolve().parent.parent


def smoke(backbone: str, out: Path, *extra: str):
    """4 steps (one per epoch), a train row every 2 steps, dev after each epoch, then test."""
    return load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={backbone}", f"output_dir={out}",
                                                      "train.epochs=4", "train.log_every=2", *extra])


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Iterator[Path]:
    """W&B offline, its files under tmp_path/wandb_dir; silent, and without taking over the console.
    (The dev extra installs wandb and tensorboard; a plain `pip install -e .` skips these tests.)"""
    wandb = pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    wandb_dir = tmp_path / "wandb_dir"
    wandb_dir.mkdir()
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true",
                        "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(name, value)
    yield wandb_dir
    wandb.teardown()  # W&B reads the environment once per process: the next test's WANDB_DIR must count


# ---------------------------------------------------------------------------------------------- readers
def wandb_records(path: Path):
    """The records of a .wandb run file: W&B's LevelDB-style log (a 7-byte file header, then 32 KiB
    blocks of chunks, each with a CRC-32, a length and a full/first/middle/last type) of serialised
    `wandb_internal_pb2.Record`s. Every chunk's checksum is checked."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    position, block, parts = 7, 32768, []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zero padding at the end
            break
        chunk = data[position + 7 : position + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum
        position += 7 + length
        parts.append(chunk)
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def read_wandb_run(path: Path) -> dict:
    """{"id", "name", "project", "config", "history": {step: {key: value}}, "summary"} of a .wandb file."""
    run = {"config": {}, "history": {}, "summary": {}}
    key_of = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run |= {"id": record.run.run_id, "name": record.run.display_name, "project": record.run.project}
            run["config"] |= {key_of(i): json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "config":
            run["config"] |= {key_of(i): json.loads(i.value_json) for i in record.config.update}
        elif kind == "history":
            row = {key_of(i): json.loads(i.value_json) for i in record.history.item}
            run["history"].setdefault(row["_step"], {}).update(row)
        elif kind == "summary":
            run["summary"] |= {key_of(i): json.loads(i.value_json) for i in record.summary.update}
    return run


def read_tensorboard(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- tests
def test_wandb_and_tensorboard_receive_what_metrics_jsonl_holds(tiny_backbone, tmp_path, offline_wandb):
    cfg = smoke(tiny_backbone, tmp_path / "runs", "log.wandb=true", "log.tensorboard=true", "log.wandb_project=docre-test")
    results = train(cfg)
    run_dir = tmp_path / "runs" / cfg.run_name
    rows = metrics_rows(run_dir)
    train_rows = [r for r in rows if r["type"] == "train"]
    dev_rows = [r for r in rows if r["type"] == "eval"]
    assert [r["step"] for r in train_rows] == [2, 4] and [r["step"] for r in dev_rows] == [1, 2, 3, 4]

    # W&B: one offline run under WANDB_DIR (not in the run directory), its id kept beside the run
    files = list(offline_wandb.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1 and not (run_dir / "wandb").exists()
    wandb_run = read_wandb_run(files[0])
    assert wandb_run["id"] == (run_dir / "wandb_id.txt").read_text()
    assert (wandb_run["name"], wandb_run["project"]) == (cfg.run_name, "docre-test")
    saved = to_dict(load_config(run_dir / "config.yaml"))
    assert {k: v for k, v in wandb_run["config"].items() if k != "_wandb"} == json.loads(json.dumps(saved))
    history = wandb_run["history"]
    assert sorted(step for step, row in history.items() if "train/loss" in row) == [2, 4]
    for row in train_rows:
        logged = history[row["step"]]
        for key in ("loss", "lr_encoder", "lr_head", "grad_norm", "epoch", "skipped_steps"):
            assert logged[f"train/{key}"] == pytest.approx(row[key], rel=1e-12), key
    assert sorted(step for step, row in history.items() if "dev/f1" in row) == [1, 2, 3, 4]
    for row in dev_rows:
        for key in ("precision", "recall", "f1", "ign_f1"):
            assert history[row["step"]][f"dev/{key}"] == pytest.approx(row[key], rel=1e-12), key
    for split in ("dev", "test"):
        for key in ("f1", "ign_f1", "precision", "recall"):
            assert wandb_run["summary"][f"{split}/{key}"] == pytest.approx(results[split][key], rel=1e-12)

    # TensorBoard: the same numbers (stored as float32) at the same steps, and the config as text
    events = read_tensorboard(run_dir / "tensorboard")
    for key in ("loss", "lr_encoder", "grad_norm"):
        points = events.Scalars(f"train/{key}")
        assert [p.step for p in points] == [2, 4]
        assert [p.value for p in points] == pytest.approx([r[key] for r in train_rows], rel=1e-6)
    points = events.Scalars("dev/f1")
    assert [(p.step, p.value) for p in points] == [(r["step"], pytest.approx(r["f1"], abs=1e-6)) for r in dev_rows]
    assert [(p.step, p.value) for p in events.Scalars("test/f1")] == [(4, pytest.approx(results["test"]["f1"], abs=1e-6))]
    from tensorboard.util.tensor_util import make_ndarray

    config_text = make_ndarray(events.Tensors("config/text_summary")[0].tensor_proto).item().decode()
    assert "log_every: 2" in config_text and "alpha: 16.5" in config_text


def test_a_resumed_run_continues_its_trackers(tiny_backbone, tmp_path, offline_wandb, monkeypatch):
    # 3 steps per epoch (batch 1); SIGTERM after step 4 stops the run there with a checkpoint, after its
    # step-4 train row; the resumed process logs steps 5 and 6 and the final evaluation
    extra = ["log.wandb=true", "log.tensorboard=true", "train.batch_size=1", "train.epochs=2"]
    cfg = smoke(tiny_backbone, tmp_path / "runs", *extra)
    run_dir = tmp_path / "runs" / cfg.run_name
    with monkeypatch.context() as patch:
        signal_after(patch, 4, 15)
        with pytest.raises(Interrupted):
            train(cfg)
    train(smoke(tiny_backbone, tmp_path / "runs", *extra, f"train.resume={run_dir}"))
    rows = [r for r in metrics_rows(run_dir) if r["type"] == "train"]
    assert [r["step"] for r in rows] == [2, 4, 6]

    runs = [read_wandb_run(path) for path in sorted(offline_wandb.glob("wandb/offline-run-*/run-*.wandb"))]
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"]  # one W&B run, written by two processes
    logged = {step: row["train/loss"] for run in runs for step, row in run["history"].items() if "train/loss" in row}
    assert logged == {r["step"]: pytest.approx(r["loss"], rel=1e-12) for r in rows}

    points = read_tensorboard(run_dir / "tensorboard").Scalars("train/loss")
    assert [p.step for p in points] == [2, 4, 6]  # the first process's step-4 point kept, none twice
    assert [p.value for p in points] == pytest.approx([r["loss"] for r in rows], rel=1e-6)


@pytest.mark.parametrize("flag, package", [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_a_missing_tracker_package_is_one_line_before_any_work(tiny_backbone, tmp_path, monkeypatch, flag, package):
    for module in ("wandb", "tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as when not installed
    cfg = smoke(tiny_backbone, tmp_path / "runs", f"log.{flag}=true")
    with pytest.raises(DocreError) as error:
        train(cfg)
    message = str(error.value)
    assert "\n" not in message and f"log.{flag}=true needs the {package} package" in message
    assert f"pip install {package}" in message
    assert not (tmp_path / "runs").exists()  # nothing was created, loaded or trained


def test_a_wandb_that_does_not_start_is_one_line(tiny_backbone, tmp_path, monkeypatch):
    # wandb.init fails (no API key, no network): its first line, with what to do, not W&B's traceback
    def init(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login(key=[your_api_key])")

    wandb = types.ModuleType("wandb")
    wandb.init = init
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    with pytest.raises(DocreError, match=r"^log\.wandb=true: W&B did not start \(api_key not configured \(no-tty\)\); "
                                         r"run `wandb login`, or set WANDB_MODE=offline$"):
        train(smoke(tiny_backbone, tmp_path / "runs", "log.wandb=true"))


def test_training_works_without_the_tracker_packages(tiny_backbone, tmp_path, monkeypatch):
    for module in ("wandb", "tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)
    results = train(smoke(tiny_backbone, tmp_path / "runs", "train.epochs=1"))
    assert results["steps"] == 1 and "f1" in results["test"]


def test_importing_docre_loads_no_tracker():
    code = ("import sys; import docre, docre.trainer, docre.sweep, docre.grid, docre.inference; "
            "print(sorted(m for m in ('wandb', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
