"""Corpus-scale prediction machinery (docre/stream.py) with a stand-in for the model: chunked
shards merge into the single-process output in input order; an interruption at any chunk, or a chunk
cut short by a kill, resumes into exactly the uninterrupted output; bad lines stop the run with one
line naming the line, or are set aside with --skip-bad; a changed command or input is refused; a
truncated or corrupt gzip input stops scripts/predict.py with one line and exit 1 (never a shorter
output and exit 0), writing no output and leaving an interrupted run's files as they were."""

import gzip
import json
import re
from pathlib import Path

import pytest

from docre.errors import DocreError
from docre.predict import prepare_documents
from docre.stream import Interrupted, input_lines, merged_records, remove_state, run_shard, shard_path, write_lines
from tests.conftest import FIXTURES

DOCS = json.loads((FIXTURES / "docred_tiny.json").read_text())


def corpus(tmp_path: Path, count: int, bad: dict | None = None, gz: bool = False) -> Path:
    """`count` fixture documents under new titles, one per line; `bad` replaces lines (1-based)."""
    lines = []
    for i in range(count):
        lines.append(json.dumps({**DOCS[i % len(DOCS)], "title": f"doc {i}"}))
    for number, text in (bad or {}).items():
        lines[number - 1] = text
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / ("corpus.jsonl.gz" if gz else "corpus.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def prepare(path):
    return lambda docs: prepare_documents(docs, "auto", str(path))


def records(docs):
    return [json.dumps({"title": d["title"], "entities": len(d["vertexSet"])}).encode() + b"\n" for d in docs]


def predict_all(path, output, world=1, chunk=2, skip_bad=False, settings=None, fail_at=None):
    """Every rank in turn (as torchrun would run them side by side), then the merge."""
    for rank in range(world):
        run_shard(path, output, rank, world, settings or {"model": "m"}, chunk, prepare(path), records, skip_bad)
    write_lines(output, merged_records(output, world))
    rejects = list(merged_records(output, world, "rejects"))
    remove_state(output, world)
    return output.read_bytes(), rejects


def expected(count):
    return b"".join(json.dumps({"title": f"doc {i}", "entities": len(DOCS[i % 3]["vertexSet"])}).encode() + b"\n"
                    for i in range(count))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("gz", [False, True])
def test_shards_merge_into_input_order(tmp_path, world, gz):
    path = corpus(tmp_path, 11, gz=gz)
    out, rejects = predict_all(path, tmp_path / "out.jsonl", world=world)
    assert out == expected(11) and rejects == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "out.jsonl"])  # no state left


@pytest.mark.parametrize("stop_after", [0, 1, 3, 5])
def test_interrupted_run_resumes_into_the_same_output(tmp_path, stop_after):
    path = corpus(tmp_path, 11)
    output = tmp_path / "out.jsonl"
    calls = {"n": 0}

    def flaky(docs):
        if calls["n"] == stop_after:
            raise KeyboardInterrupt
        calls["n"] += 1
        return records(docs)

    with pytest.raises(Interrupted if stop_after else KeyboardInterrupt):  # Interrupted: some chunks are kept
        run_shard(path, output, 0, 1, {"model": "m"}, 2, prepare(path), flaky, False)
    shard = shard_path(output, 0, 1)
    with open(shard, "ab") as handle:  # a kill in the middle of writing the next chunk
        handle.write(b'{"title": "half a rec')
    done = []
    progress, new = run_shard(path, output, 0, 1, {"model": "m"}, 2, prepare(path),
                              lambda docs: done.extend(d["title"] for d in docs) or records(docs), False)
    assert progress.finished and progress.documents == 11 and new == 11 - 2 * stop_after
    assert done == [f"doc {i}" for i in range(2 * stop_after, 11)]  # only the chunks not done before
    write_lines(output, merged_records(output, 1))
    assert output.read_bytes() == expected(11)


def test_finished_shard_is_not_redone(tmp_path):
    path = corpus(tmp_path, 5)
    output = tmp_path / "out.jsonl"
    run_shard(path, output, 0, 1, {"model": "m"}, 2, prepare(path), records, False)
    again, new = run_shard(path, output, 0, 1, {"model": "m"}, 2, prepare(path), lambda docs: pytest.fail("redone"), False)
    assert again.finished and again.documents == 5 and new == 0


def test_bad_line_stops_with_one_line_naming_it(tmp_path):
    path = corpus(tmp_path, 6, bad={4: '{"title": "x", "sents": [["a"]], "vertexSet": [[{"name": "a", "sent_id": 3, '
                                       '"pos": [0, 1]}]]}'})
    with pytest.raises(DocreError) as error:
        run_shard(path, tmp_path / "out.jsonl", 0, 1, {"model": "m"}, 2, prepare(path), records, False)
    message = str(error.value)
    assert message.startswith(f"{path}: line 4 ('x'): vertexSet[0][0]") and "\n" not in message
    assert not (tmp_path / "out.jsonl").exists()


def test_skip_bad_sets_lines_aside_with_reasons(tmp_path):
    duplicate = json.dumps({**DOCS[0], "title": "doc 2"})
    path = corpus(tmp_path, 7, bad={2: "{not json", 5: duplicate, 6: '{"sents": []}'})
    out, rejects = predict_all(path, tmp_path / "out.jsonl", skip_bad=True, chunk=2)
    lines = [json.loads(r) for r in rejects]
    assert [r["line"] for r in lines] == [2, 6]  # doc 2 (line 3) and its repeat (line 5) are in different chunks
    assert lines[0]["error"].startswith(f"{path}: line 2: invalid JSON")
    assert lines[1]["error"].startswith(f"{path}: line 6: ")
    titles = [json.loads(line)["title"] for line in out.splitlines()]
    assert titles == ["doc 0", "doc 2", "doc 3", "doc 2", "doc 6"]
    _, rejects = predict_all(path, tmp_path / "out2.jsonl", skip_bad=True, chunk=7)  # now in one chunk
    assert [json.loads(r)["line"] for r in rejects] == [2, 5, 6]
    assert "repeats line 3" in json.loads(rejects[1])["error"]


def test_changed_settings_or_input_prefix_are_refused(tmp_path):
    path = corpus(tmp_path, 6)
    output = tmp_path / "out.jsonl"

    calls = {"n": 0}

    def once(docs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return records(docs)

    with pytest.raises(Interrupted):
        run_shard(path, output, 0, 1, {"model": "m", "top_k": 4}, 2, prepare(path), once, False)
    with pytest.raises(DocreError, match=r"other settings \(top_k\)"):
        run_shard(path, output, 0, 1, {"model": "m", "top_k": 3}, 2, prepare(path), records, False)
    text = path.read_text().splitlines(keepends=True)
    path.write_text("".join(text[:4] + [text[5], text[4]]))  # after the done prefix: resumes
    progress, _ = run_shard(path, output, 0, 1, {"model": "m", "top_k": 4}, 2, prepare(path), records, False)
    assert progress.finished
    remove_state(output, 1)
    with pytest.raises(Interrupted):
        calls["n"] = 0
        run_shard(path, output, 0, 1, {"model": "m"}, 2, prepare(path), once, False)
    path.write_text("".join([text[1], text[0]] + text[2:]))  # inside the done prefix: refused
    with pytest.raises(DocreError, match="changed in its first"):
        run_shard(path, output, 0, 1, {"model": "m"}, 2, prepare(path), records, False)


@pytest.mark.parametrize("content", ["{", "[]", '{"chunks": 1}'])  # cut short; not an object; not our fields
def test_an_unreadable_progress_file_is_one_line_saying_what_to_delete(tmp_path, content):
    path = corpus(tmp_path, 3)
    output = tmp_path / "out.jsonl"
    shard = shard_path(output, 0, 1)
    Path(f"{shard}.progress.json").write_text(content)
    with pytest.raises(DocreError, match=rf"^{re.escape(str(shard))}\.progress\.json: unreadable progress file; delete it "
                                         rf"and {re.escape(str(shard))} to start again$"):
        run_shard(path, output, 0, 1, {"model": "m"}, 2, prepare(path), records, False)


def test_input_lines_resume_at_a_byte_offset(tmp_path):
    path = corpus(tmp_path, 5, gz=True)
    everything = list(input_lines(path))
    assert [n for n, _, _ in everything] == [1, 2, 3, 4, 5]
    assert list(input_lines(path, everything[1][2])) == everything[2:]


# ------------------------------------------------------------------------------------ a damaged gzip corpus
def damaged(path: Path, how: str) -> Path:
    """`path` (a .jsonl.gz) cut short before its end-of-stream marker, or with a wrong CRC."""
    data = path.read_bytes()
    path.write_bytes(data[:-12] if how == "truncated" else data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:])
    return path


@pytest.mark.parametrize(("how", "reason"), [("truncated", "Compressed file ended before the end-of-stream marker"),
                                             ("corrupt", "CRC check failed")])
def test_damaged_gzip_stops_with_one_line_instead_of_ending_early(tmp_path, how, reason):
    path = damaged(corpus(tmp_path, 11, gz=True), how)
    with pytest.raises(DocreError) as error:
        run_shard(path, tmp_path / "out.jsonl", 0, 1, {"model": "m"}, 2, prepare(path), records, False)
    assert str(error.value).startswith(f"{path}: cannot read ({reason}") and "\n" not in str(error.value)


class StubPredictor:
    """Stands in for a trained model in scripts/predict.py: no relations, or Ctrl-C at call `stop`."""

    def __init__(self, stop=None):
        self.calls, self.stop = 0, stop

    def predict(self, docs, batch_size, top_k, prepared):  # a document's triples
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return [[] for _ in docs]

    def predict_records(self, docs, batch_size, top_k, prepared):  # a document's .jsonl line
        return [{"title": doc["title"], "triples": triples} for doc, triples in zip(docs, self.predict(docs, 0, 0, True))]


def predict_cli(monkeypatch, capsys, tmp_path, path, predictor):
    """scripts/predict.py MODEL PATH -o out.jsonl --chunk-size 2 with `predictor`; (status, stderr)."""
    import docre.predict
    from tests.test_predict import call

    model = tmp_path / "model"  # what model_kind needs to see a run directory; the stub does the rest
    model.mkdir(exist_ok=True)
    for name in ("config.yaml", "best.safetensors"):
        (model / name).touch()
    monkeypatch.setattr(docre.predict.Predictor, "from_pretrained", lambda *args, **kwargs: predictor)
    status, _, err = call("scripts/predict", [model, path, "-o", tmp_path / "out.jsonl", "--chunk-size", "2"], capsys)
    return status, err


def test_truncated_gzip_corpus_fails_the_command_and_writes_no_output(tmp_path, monkeypatch, capsys):
    path = damaged(corpus(tmp_path, 12, gz=True), "truncated")
    status, err = predict_cli(monkeypatch, capsys, tmp_path, path, StubPredictor())
    assert status == 1
    assert err.strip().splitlines() == [
        f"error: {path}: cannot read (Compressed file ended before the end-of-stream marker was reached)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl.gz", "model"]  # no output, no shard


def test_truncated_gzip_corpus_leaves_an_interrupted_run_as_it_was(tmp_path, monkeypatch, capsys):
    path = corpus(tmp_path, 12, gz=True)
    status, err = predict_cli(monkeypatch, capsys, tmp_path, path, StubPredictor(stop=2))  # Ctrl-C after one chunk
    shard = shard_path(tmp_path / "out.jsonl", 0, 1)
    assert err.strip().splitlines() == [  # one line, no traceback, saying how to go on
        f"error: interrupted after 2 documents, kept in {shard}: run the same command again to go on from there"]
    assert status == 130 and json.loads(Path(f"{shard}.progress.json").read_text())["chunks_done"] == 1
    state = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p != path}
    assert sorted(state) == [shard.name, f"{shard.name}.progress.json", f"{shard.name}.rejects"]
    damaged(path, "truncated")  # cut after the chunk done: the rerun would otherwise go on to the cut and finish
    status, err = predict_cli(monkeypatch, capsys, tmp_path, path, StubPredictor())
    assert status == 1
    assert err.strip().splitlines() == [
        f"error: {path}: cannot read (Compressed file ended before the end-of-stream marker was reached)"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p != path} == state  # no output


def test_ctrl_c_says_how_to_go_on_and_the_same_command_does(tmp_path, monkeypatch, capsys):
    path = corpus(tmp_path, 7)
    status, err = predict_cli(monkeypatch, capsys, tmp_path, path, StubPredictor(stop=3))  # Ctrl-C in the third chunk
    shard = shard_path(tmp_path / "out.jsonl", 0, 1)
    assert status == 130 and err.strip().splitlines() == [
        f"error: interrupted after 4 documents, kept in {shard}: run the same command again to go on from there"]
    again = StubPredictor()
    status, err = predict_cli(monkeypatch, capsys, tmp_path, path, again)
    assert status == 0 and again.calls == 2  # the third chunk (lines 5-6) and the fourth (line 7): nothing redone
    logged = err.strip().splitlines()
    assert len(logged) == 1 and logged[0].endswith(
        f" INFO {shard}: continuing an interrupted run at line 5 of {path} (4 documents predicted before)")
    titles = [json.loads(line)["title"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert titles == [f"doc {i}" for i in range(7)] and not shard.exists()


def test_gzip_cut_within_its_first_bytes_is_one_line_too(tmp_path, monkeypatch, capsys):
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"title": "a"}\n' * 50)[:30])  # the cut lies inside the first 4 KiB read
    status, err = predict_cli(monkeypatch, capsys, tmp_path, path, StubPredictor())
    assert status == 1 and err.strip().splitlines() == [
        f"error: {path}: cannot read (Compressed file ended before the end-of-stream marker was reached)"]


def test_input_cut_inside_the_part_an_interrupted_run_did_is_one_line(tmp_path):
    path = corpus(tmp_path, 12, gz=True)
    output = tmp_path / "out.jsonl"
    calls = []

    def interrupted(docs):  # Ctrl-C in the fourth chunk
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return records(docs)

    with pytest.raises(Interrupted):
        run_shard(path, output, 0, 1, {"model": "m"}, 2, prepare(path), interrupted, False)
    path.write_bytes(path.read_bytes()[:40])  # now cut inside the bytes the interrupted run had done
    with pytest.raises(DocreError, match=rf"^{path}: cannot read \(Compressed file ended"):
        run_shard(path, output, 0, 1, {"model": "m"}, 2, prepare(path), records, False)
