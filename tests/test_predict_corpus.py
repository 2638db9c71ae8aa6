"""scripts/predict.py over a JSON-lines corpus with a real (tiny) model: the streamed output equals
the in-memory one for every format; a run killed about half way and rerun with the same command
ends with exactly the uninterrupted output; two CPU processes under torchrun merge into the
single-process output; a finished output is not redone by the same model, and is by another (a
retrained run under the same name); a partial one is never continued by another model; bad lines
and --skip-bad; nothing is left beside the output but what docs/predict.md names."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from docre.config import load_config
from docre.trainer import train
from tests.conftest import FIXTURES, ROOT
from tests.test_predict import call

DOCS = json.loads((FIXTURES / "docred_tiny.json").read_text())


@pytest.fixture(scope="module")
def run_dir(tiny_backbone, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus_runs")
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={tiny_backbone}", f"output_dir={out}",
                                                    "train.max_steps=3"])
    return Path(train(cfg)["run_dir"])


def write_corpus(folder: Path, count: int) -> tuple[Path, Path]:
    """The fixture documents repeated under new titles: as JSON lines and as one JSON list."""
    docs = [{**DOCS[i % len(DOCS)], "title": f"doc {i}"} for i in range(count)]
    lines, listed = folder / "corpus.jsonl", folder / "corpus.json"
    lines.write_text("".join(json.dumps(d) + "\n" for d in docs))
    listed.write_text(json.dumps(docs))
    return lines, listed


def script(*args, **kwargs):
    return subprocess.Popen([sys.executable, "scripts/predict.py", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".zip"])
def test_streamed_output_equals_the_in_memory_one(run_dir, tmp_path, capsys, suffix):
    lines, listed = write_corpus(tmp_path, 7)
    status, out, _ = call("scripts/predict", [run_dir, lines, "-o", tmp_path / f"streamed{suffix}", "--chunk-size", "3"], capsys)
    assert status == 0 and "7 documents" in out and "documents/s" in out
    status, _, _ = call("scripts/predict", [run_dir, listed, "-o", tmp_path / f"whole{suffix}"], capsys)
    assert status == 0
    read = (lambda p: zipfile.ZipFile(p).read("result.json")) if suffix == ".zip" else Path.read_bytes
    streamed, whole = read(tmp_path / f"streamed{suffix}"), read(tmp_path / f"whole{suffix}")
    assert streamed == whole if suffix != ".json" else json.loads(streamed) == json.loads(whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["corpus.jsonl", "corpus.json", f"streamed{suffix}",
                                                                 f"streamed{suffix}.done.json", f"whole{suffix}"])
    again = [run_dir, lines, "-o", tmp_path / f"streamed{suffix}", "--chunk-size", "3"]
    status, out, _ = call("scripts/predict", again, capsys)
    assert status == 0 and "already complete" in out
    lines.write_text(lines.read_text() + json.dumps({**DOCS[0], "title": "one more"}) + "\n")  # another input: redone
    status, out, _ = call("scripts/predict", again, capsys)
    assert status == 0 and "8 documents" in out


def test_killed_half_way_and_rerun_gives_the_uninterrupted_output(run_dir, tmp_path):
    lines, _ = write_corpus(tmp_path, 240)
    whole = script(run_dir, lines, "-o", tmp_path / "whole.jsonl", "--chunk-size", "2")
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-2000:]
    output = tmp_path / "out.jsonl"
    progress = tmp_path / "out.jsonl.shard-0-of-1.progress.json"
    process = script(run_dir, lines, "-o", output, "--chunk-size", "2")
    chunks = 0
    while process.poll() is None and chunks < 60:  # about half of the 120 chunks
        time.sleep(0.005)
        with contextlib.suppress(OSError, ValueError):  # not written yet, or being replaced
            chunks = json.loads(progress.read_text())["chunks_done"]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not output.exists()  # killed before the end
    done = json.loads(progress.read_text())["chunks_done"]
    assert 0 < done < 120
    rerun = script(run_dir, lines, "-o", output, "--chunk-size", "2")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-2000:]
    assert f"-> {output}" in stdout
    assert output.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert not progress.exists()


def test_two_processes_under_torchrun_merge_into_the_single_process_output(run_dir, tmp_path):
    lines, _ = write_corpus(tmp_path, 25)
    single = script(run_dir, lines, "-o", tmp_path / "one.jsonl", "--chunk-size", "4")
    assert single.wait(timeout=300) == 0
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "scripts/predict.py",
         str(run_dir), str(lines), "-o", str(tmp_path / "two.jsonl"), "--chunk-size", "4", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    assert "on 2 x cpu" in torchrun.stdout
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.json", "corpus.jsonl", "one.jsonl", "one.jsonl.done.json",
                                                          "two.jsonl", "two.jsonl.done.json"]


def test_bad_line_stops_or_is_set_aside(run_dir, tmp_path, capsys):
    lines, _ = write_corpus(tmp_path, 5)
    text = lines.read_text().splitlines(keepends=True)
    lines.write_text("".join(text[:3] + ['{"title": "x", "sents": [["a"]]}\n'] + text[3:]))
    status, _, err = call("scripts/predict", [run_dir, lines, "-o", tmp_path / "out.jsonl"], capsys)
    assert status == 1 and err.strip().splitlines()[-1] == f"error: {lines}: line 4 ('x'): missing field 'vertexSet'"
    assert not (tmp_path / "out.jsonl").exists()
    status, out, _ = call("scripts/predict", [run_dir, lines, "-o", tmp_path / "out.jsonl", "--skip-bad", "--overwrite"],
                          capsys)
    assert status == 0 and "5 documents" in out and "1 bad line -> " in out
    rejects = [json.loads(line) for line in (tmp_path / "out.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [4] and "missing field 'vertexSet'" in rejects[0]["error"]
    assert [json.loads(line)["title"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [
        f"doc {i}" for i in range(5)]


def test_skip_bad_needs_json_lines(run_dir, tmp_path, capsys):
    _, listed = write_corpus(tmp_path, 3)
    status, _, err = call("scripts/predict", [run_dir, listed, "-o", tmp_path / "out.jsonl", "--skip-bad"], capsys)
    assert status == 1 and "--skip-bad and torchrun need JSON-lines input" in err


def retrain(run_dir: Path) -> None:
    """Stand in for training the run again under its name: other weights in best.safetensors (a
    shifted classifier bias, so the model predicts other relations)."""
    weights = load_file(run_dir / "best.safetensors")
    bias = next(name for name in weights if name.endswith("bias") and weights[name].shape[0] == 97)
    weights[bias] = weights[bias] + torch.linspace(-3.0, 3.0, 97)
    save_file(weights, run_dir / "best.safetensors")


def test_retrained_model_predicts_again_and_an_unchanged_one_skips(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    lines, _ = write_corpus(tmp_path, 4)
    command = [run, lines, "-o", tmp_path / "out.jsonl"]
    assert call("scripts/predict", command, capsys)[0] == 0
    old = (tmp_path / "out.jsonl").read_bytes()
    status, out, _ = call("scripts/predict", command, capsys)  # the same model: nothing to do
    assert status == 0 and "already complete" in out and (tmp_path / "out.jsonl").read_bytes() == old

    retrain(run)
    status, out, _ = call("scripts/predict", command, capsys)
    assert status == 0 and f"{tmp_path / 'out.jsonl'} was predicted by another model (changed since: best.safetensors)" in out
    assert call("scripts/predict", [run, lines, "-o", tmp_path / "fresh.jsonl"], capsys)[0] == 0
    new = (tmp_path / "out.jsonl").read_bytes()
    assert new == (tmp_path / "fresh.jsonl").read_bytes() != old  # the retrained model's own output
    assert "already complete" in call("scripts/predict", command, capsys)[1]

    (run / "decode.json").write_text(json.dumps({"th_offset": 0.5}))  # a re-tuned decode is another model too
    status, out, _ = call("scripts/predict", command, capsys)
    assert status == 0 and "changed since: decode.json" in out


def test_partial_output_of_one_model_is_not_continued_with_another(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    lines, _ = write_corpus(tmp_path, 6)
    good = lines.read_text()
    text = good.splitlines(keepends=True)
    lines.write_text("".join(text[:4] + ['{"title": "x", "sents": [["a"]]}\n'] + text[5:]))
    output = tmp_path / "out.jsonl"
    command = [run, lines, "-o", output, "--chunk-size", "2"]
    status, _, err = call("scripts/predict", command, capsys)  # chunks 1-2 done by model A, then a bad line
    assert status == 1 and err.strip().splitlines()[-1] == (
        f"error: {lines}: line 5 ('x'): missing field 'vertexSet' (the 4 documents predicted before it are kept: "
        "run the same command again to go on from there)")
    assert not output.exists() and json.loads((tmp_path / "out.jsonl.shard-0-of-1.progress.json").read_text())["chunks_done"] == 2

    lines.write_text(good)  # the line fixed (after the finished chunks, so the input's done part is unchanged)
    retrain(run)
    status, _, err = call("scripts/predict", command, capsys)
    assert status == 1 and err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'out.jsonl.shard-0-of-1.progress.json'}: an interrupted run of another model "
        "(changed since: best.safetensors); pass --overwrite to start again with this one")
    assert not output.exists()
    assert call("scripts/predict", [*command, "--overwrite"], capsys)[0] == 0
    assert call("scripts/predict", [run, lines, "-o", tmp_path / "fresh.jsonl"], capsys)[0] == 0
    assert output.read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.json", "corpus.jsonl", "fresh.jsonl", "fresh.jsonl.done.json",
                                                          "out.jsonl", "out.jsonl.done.json", "run"]


def test_failed_first_chunk_leaves_no_files(run_dir, tmp_path, capsys):
    lines = tmp_path / "corpus.jsonl"
    lines.write_text('{"title": "x", "sents": [["a"]]}\n')
    status, _, err = call("scripts/predict", [run_dir, lines, "-o", tmp_path / "out.jsonl"], capsys)
    assert status == 1 and err.strip().splitlines()[-1] == f"error: {lines}: line 1 ('x'): missing field 'vertexSet'"
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.jsonl"]
