"""Malformed input gets exit status 1 and ONE line naming the file, the document (index and title)
and the field: no traceback, and no half-written run directory that blocks the next attempt.
Tolerated repeats (a label or a mention given twice) warn once with a count and go on.

Every case goes through the reader that train.py and evaluate.py call; a selection also goes
through the command lines themselves (in-process through `run_cli`, and a few as real processes).
Policy: docs/data.md, "Malformed and lenient input".
"""

import gzip
import json
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from docre.config import load_config
from docre.data import load_rel2id, load_rel_names, load_split, read_split
from docre.errors import DocreError
from docre.trainer import train
from tests.conftest import FIXTURES, REL2ID, yaml_wording

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_BYTES = (FIXTURES / "docred_tiny.json").read_bytes()
DOC = "document 1 ('A longer story')"  # the fixture document the cases below damage


def fixture_docs() -> list[dict]:
    return json.loads(FIXTURE_BYTES)


def edited(edit) -> bytes:
    docs = fixture_docs()
    edit(docs)
    return json.dumps(docs).encode()


# (case, file content or an edit of the fixture documents, message after "<file>: ")
READER_CASES = [
    ("invalid JSON", b'[{"title": 1,', "invalid JSON at line 1 column 14: Expecting property name enclosed in double quotes"),
    ("invalid JSON, later line", b'[\n {"title": "a"},\n {"title" "b"}\n]',
     "invalid JSON at line 3 column 11: Expecting ':' delimiter"),
    ("truncated gzip", gzip.compress(FIXTURE_BYTES)[:-20],
     "not a valid gzip file (Compressed file ended before the end-of-stream marker was reached)"),
    ("damaged gzip", b"\x1f\x8b" + b"garbage" * 10, "not a valid gzip file (Unknown compression method)"),
    ("gzip of nothing", gzip.compress(b""), "file is empty"),
    ("empty file", b"", "file is empty"),
    ("blank file", b" \n\t\n", "file is empty"),
    ("no documents", b"[]", "holds no documents"),
    ("non-UTF-8 bytes", b'[{"title": "caf\xe9"}]', "not UTF-8 text (byte 15, line 1)"),
    ("non-UTF-8 on a later line", b'[\n {"title": "caf\xe9"}]', "not UTF-8 text (byte 17, line 2)"),
    ("top level an object", b'{"title": "x"}', "top level must be a JSON list of documents, got dict"),
    ("JSON lines", b"\n".join(json.dumps(doc).encode() for doc in json.loads(FIXTURE_BYTES)),
     "looks like JSON lines (one document per line); DocRED files are one JSON list: put [ before the first document, "
     "a comma after each but the last, and ] at the end"),
    ("top level a string", b'"docs"', "top level must be a JSON list of documents, got str"),
    ("document not an object", edited(lambda d: d.__setitem__(1, [1])), "document 1: a document must be a JSON object, got list"),
    ("missing title", edited(lambda d: d[1].pop("title")), "document 1: missing field 'title'"),
    # a close spelling of an absent field, holding that field's kind of value, is a misspelling, not an extra
    ("misspelt labels", edited(lambda d: d[1].__setitem__("label", d[1].pop("labels"))),
     f"{DOC}: unknown field 'label' (did you mean labels?)"),
    ("misspelt title", edited(lambda d: d[1].__setitem__("Title", d[1].pop("title"))),
     "document 1: unknown field 'Title' (did you mean title?)"),
    ("misspelt vertexSet", edited(lambda d: d[1].__setitem__("vertex_set", d[1].pop("vertexSet"))),
     f"{DOC}: unknown field 'vertex_set' (did you mean vertexSet?)"),
    ("title not a string", edited(lambda d: d[1].__setitem__("title", 7)), "document 1: title: must be a string"),
    ("duplicate titles", edited(lambda d: d[2].__setitem__("title", "Alpha at Beta")),
     "document 2 ('Alpha at Beta'): title: duplicate of document 0 (titles identify documents in scoring)"),
    ("missing sents", edited(lambda d: d[1].pop("sents")), f"{DOC}: missing field 'sents'"),
    ("empty sents", edited(lambda d: d[1].__setitem__("sents", [])), f"{DOC}: sents: must be a non-empty list of sentences"),
    ("sents a string", edited(lambda d: d[1].__setitem__("sents", "A B C")),
     f"{DOC}: sents: must be a non-empty list of sentences"),
    ("word not a string", edited(lambda d: d[1]["sents"][2].__setitem__(3, 5)),
     f"{DOC}: sents[2]: must be a list of word strings"),
    ("missing vertexSet", edited(lambda d: d[1].pop("vertexSet")), f"{DOC}: missing field 'vertexSet'"),
    ("empty vertexSet", edited(lambda d: d[1].__setitem__("vertexSet", [])),
     f"{DOC}: vertexSet: must be a non-empty list of entities"),
    ("entity with no mentions", edited(lambda d: d[1]["vertexSet"].__setitem__(4, [])),
     f"{DOC}: vertexSet[4]: an entity must be a non-empty list of mentions"),
    ("mention not an object", edited(lambda d: d[1]["vertexSet"][4].__setitem__(0, "Ann")),
     f"{DOC}: vertexSet[4][0]: a mention must be a JSON object"),
    ("mention without pos", edited(lambda d: d[1]["vertexSet"][4][0].pop("pos")), f"{DOC}: vertexSet[4][0]: missing field 'pos'"),
    ("mention name not a string", edited(lambda d: d[1]["vertexSet"][4][0].__setitem__("name", None)),
     f"{DOC}: vertexSet[4][0].name: must be a string"),
    ("sent_id out of range", edited(lambda d: d[1]["vertexSet"][4][0].__setitem__("sent_id", 3)),
     f"{DOC}: vertexSet[4][0].sent_id: 3 is not a sentence index (0..2)"),
    ("sent_id negative", edited(lambda d: d[1]["vertexSet"][4][0].__setitem__("sent_id", -1)),
     f"{DOC}: vertexSet[4][0].sent_id: -1 is not a sentence index (0..2)"),
    ("sent_id a string", edited(lambda d: d[1]["vertexSet"][4][0].__setitem__("sent_id", "1")),
     f"{DOC}: vertexSet[4][0].sent_id: '1' is not a sentence index (0..2)"),
    ("pos not a pair", edited(lambda d: d[1]["vertexSet"][4][0].__setitem__("pos", [2])),
     f"{DOC}: vertexSet[4][0].pos: must be [start, end] word indices"),
    ("pos of floats", edited(lambda d: d[1]["vertexSet"][4][0].__setitem__("pos", [1.0, 2.0])),
     f"{DOC}: vertexSet[4][0].pos: must be [start, end] word indices"),
    ("start equal to end", edited(lambda d: d[1]["vertexSet"][4][0].__setitem__("pos", [2, 2])),
     f"{DOC}: vertexSet[4][0].pos: start 2 >= end 2"),
    ("start after end", edited(lambda d: d[1]["vertexSet"][4][0].__setitem__("pos", [3, 1])),
     f"{DOC}: vertexSet[4][0].pos: start 3 >= end 1"),
    ("span past the sentence end", edited(lambda d: d[1]["vertexSet"][4][0].update(sent_id=0, pos=[13, 15])),
     f"{DOC}: vertexSet[4][0].pos: [13, 15) lies outside sentence 0 (14 words)"),
    ("span before the sentence", edited(lambda d: d[1]["vertexSet"][4][0].update(sent_id=0, pos=[-1, 1])),
     f"{DOC}: vertexSet[4][0].pos: [-1, 1) lies outside sentence 0 (14 words)"),
    ("labels not a list", edited(lambda d: d[1].__setitem__("labels", {"h": 0})), f"{DOC}: labels: must be a list"),
    ("label not an object", edited(lambda d: d[1]["labels"].__setitem__(3, [0, 4, "P26"])),
     f"{DOC}: labels[3]: a label must be a JSON object"),
    ("label without r", edited(lambda d: d[1]["labels"][3].pop("r")), f"{DOC}: labels[3]: missing field 'r'"),
    ("label head past the entities", edited(lambda d: d[1]["labels"][3].__setitem__("h", 6)),
     f"{DOC}: labels[3].h: 6 is not an entity index (0..5)"),
    ("label tail a string", edited(lambda d: d[1]["labels"][3].__setitem__("t", "4")),
     f"{DOC}: labels[3].t: '4' is not an entity index (0..5)"),
    ("label with h == t", edited(lambda d: d[1]["labels"][3].__setitem__("t", 0)),
     f"{DOC}: labels[3]: h == t (0); a relation needs two different entities"),
    ("relation missing from the map", edited(lambda d: d[1]["labels"][3].__setitem__("r", "P9999")),
     f"{DOC}: labels[3].r: relation 'P9999' is not in the relation map"),
    ("relation is the NA class", edited(lambda d: d[1]["labels"][3].__setitem__("r", "Na")),
     f"{DOC}: labels[3].r: 'Na' is the NA class, not a relation"),
    ("relation not a string", edited(lambda d: d[1]["labels"][3].__setitem__("r", 26)),
     f"{DOC}: labels[3].r: must be a relation id string"),
    ("evidence not a list", edited(lambda d: d[1]["labels"][3].__setitem__("evidence", "1,2")),
     f"{DOC}: labels[3].evidence: must be a list of sentence indices"),
    ("evidence past the sentences", edited(lambda d: d[1]["labels"][3].__setitem__("evidence", [0, 99])),
     f"{DOC}: labels[3].evidence: 99 is not a sentence index (0..2)"),
]
CASES = {case: (content, message) for case, content, message in READER_CASES}


@pytest.fixture(scope="module")
def rel2id() -> dict:
    return json.loads(REL2ID.read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_reader_names_file_document_and_field(case, tmp_path, rel2id):
    content, message = CASES[case]
    (tmp_path / "docs.json").write_bytes(content)
    with pytest.raises(DocreError) as error:
        read_split("docred", "docs.json", str(tmp_path), rel2id)
    assert str(error.value) == f"{tmp_path / 'docs.json'}: {message}"


def test_missing_file_and_empty_slice(tmp_path, rel2id):
    with pytest.raises(DocreError) as error:
        read_split("docred", "absent.json", str(tmp_path), rel2id)
    assert str(error.value) == f"{tmp_path / 'absent.json'}: file not found"
    (tmp_path / "docs.json").write_bytes(FIXTURE_BYTES)
    with pytest.raises(DocreError) as error:
        read_split("docred", "docs.json[3:]", str(tmp_path), rel2id)
    assert str(error.value) == f"{tmp_path / 'docs.json'}: the slice [3:] holds no documents (the file has 3)"


def test_a_slice_reports_the_index_in_the_whole_file(tmp_path, rel2id):
    (tmp_path / "docs.json").write_bytes(CASES["start equal to end"][0])
    with pytest.raises(DocreError, match=r"document 1 \('A longer story'\)"):
        read_split("docred", "docs.json[1:]", str(tmp_path), rel2id)


def test_extra_document_keys_are_kept(tmp_path, rel2id):
    # DocRED variants carry keys docre does not read; only a close spelling of an absent field that holds
    # that field's kind of value is refused (the misspelt-field rows above)
    extras = {"evidences": [[0]], "labelled": False, "label_names": "P26", "doc_id": 7}
    docs = edited(lambda d: [d[0].pop("labels"), d[0].update(extras), d[1].update(label=[])])
    (tmp_path / "docs.json").write_bytes(docs)
    read = read_split("docred", "docs.json", str(tmp_path), rel2id)[2]
    assert read == json.loads(docs) and "labels" not in read[0] and read[1]["label"] == []


def test_byte_order_mark_is_accepted(tmp_path, rel2id):
    (tmp_path / "docs.json").write_bytes(b"\xef\xbb\xbf" + FIXTURE_BYTES)
    assert read_split("docred", "docs.json", str(tmp_path), rel2id)[2] == fixture_docs()


@pytest.mark.parametrize("content, message", [
    (b"{", "invalid relation map (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    (b'["Na", "P1"]', "a relation map must be a JSON object of relation -> class id"),
    (b'{"Na": 0, "P1": "1"}', "a relation map must be a JSON object of relation -> class id"),
    (b'{"Na": 0, "P1": 2}', "class ids must be 0..1 with 0 = NA"),
    (b'{"P1": 1, "P2": 2}', "class ids must be 0..1 with 0 = NA"),
    (b"", "file is empty"),
])
def test_bad_relation_map(tmp_path, content, message):
    path = tmp_path / "rel2id.json"
    path.write_bytes(content)
    with pytest.raises(DocreError) as error:
        load_rel2id("docred", str(path))
    assert str(error.value) == f"{path}: {message}"


@pytest.mark.parametrize("content, message", [
    (b"{", "invalid relation names (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    (b"[1]", "relation names must be a JSON object of relation id -> name"),
    (b'{"P17": 17}', "relation names must be a JSON object of relation id -> name"),  # a rel2id file given as rel_info
])
def test_bad_relation_names(tmp_path, content, message):
    path = tmp_path / "rel_info.json"
    path.write_bytes(content)
    with pytest.raises(DocreError) as error:
        load_rel_names(str(path))
    assert str(error.value) == f"{path}: {message}"


# ------------------------------------------------------------------------------ config files
@pytest.mark.parametrize("text, message", [
    ("train:\n  epoch: 3\n", "unknown key 'train.epoch' (did you mean train.epochs?)"),
    ("train:\n  batch_size: four\n", "train.batch_size: Value 'four' of type 'str' could not be converted to Integer"),
    ("train:\n  epochs: null\n", "train.epochs: Incompatible value 'None' for field of type 'int'"),
    ("- train\n- model\n", "top level must be a mapping of sections "
                          "(seed, output_dir, run_name, data, model, loss, train, eval, sweep, log, vaediff), got a list"),
    ("3\n", "not valid YAML: Invalid loaded object type: int"),
    ("just words\n", "unknown key 'just words'"),
    ("train: 3\n", "train: must be a section of key: value lines, got 3"),
    ("loss: atl\n", "loss: must be a section of key: value lines, got 'atl'"),
    ("train: [unclosed\n", "not valid YAML at line 2 column 1: did not find expected ',' or ']'"),
    ("train:\n  log_every: 0\n", "train.log_every must be at least 1"),
    ("train:\n  epochs: 0\n", "train.epochs must be at least 1 (or set train.max_steps)"),
    ("train:\n  save_every: -5\n", "train.save_every must be 0 or more"),
    ("train:\n  max_nonfinite_steps: 0\n", "train.max_nonfinite_steps must be at least 1"),
    ("train:\n  warmup_ratio: 1.5\n", "train.warmup_ratio must lie in [0, 1]"),
    ("loss:\n  name: atl\n  alpha: 3\n", "loss 'atl': got an unexpected keyword argument 'alpha'; its keywords: th_offset"),
])
def test_bad_config_file(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(DocreError) as error:
        load_config(path)
    assert yaml_wording(str(error.value)) == f"{path}: {message}"


def test_empty_config_section_counts_as_absent(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  # epochs: 3\nseed: 1\n")
    cfg = load_config(path)
    assert cfg.seed == 1 and cfg.train == load_config(None).train


def test_bad_config_bytes_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"train:\n  epochs: \xff\n")
    with pytest.raises(DocreError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: not valid YAML: 'utf-8' codec can't decode byte 0xff in position 17: invalid start byte"
    for override, message in [
        ("train.epochs=[1", "override 'train.epochs=[1': not a valid value (did not find expected ',' or ']')"),
        ("=3", "override '=3': expected key=value"),
        ("train.epochs", "override 'train.epochs': expected key=value"),
    ]:
        with pytest.raises(DocreError) as error:
            load_config(None, [override])
        assert yaml_wording(str(error.value)) == message


# ------------------------------------------------------------------------------ through the CLIs
def cli(capsys, script: str, *args: str) -> tuple[int, str, str]:
    """Run a CLI script in this process exactly as `python script args` would (same `run_cli`)."""
    argv = sys.argv
    sys.argv = [script, *args]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


# what a failed start may leave (failed.json: its error, which docre-summarize shows)
START_FILES = {"config.yaml", "environment.json", "train.log", "rel2id.json", "failed.json", ".lock"}


def train_args(backbone: str, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["configs/smoke.yaml", f"model.backbone={backbone}", f"output_dir={out}", f"data.dir={data_dir}",
            "data.train_file=docs.json", "data.dev_file=", "data.test_file=", "data.cache_dir=none",
            "run_name=hostile", "train.num_threads=1", *extra]


@pytest.fixture
def restore_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TRAIN_CLI_CASES = ["invalid JSON", "truncated gzip", "empty file", "non-UTF-8 bytes", "top level an object",
                   "missing sents", "entity with no mentions", "span past the sentence end", "sent_id out of range",
                   "label head past the entities", "relation missing from the map", "label with h == t", "duplicate titles"]


def test_train_cli_answers_bad_data_in_one_line_and_leaves_nothing_blocking(tmp_path, capsys, tiny_backbone, restore_threads):
    out = tmp_path / "runs"
    data = tmp_path / "data"
    data.mkdir()
    docs = data / "docs.json"
    for case in TRAIN_CLI_CASES:
        content, message = CASES[case]
        docs.write_bytes(content)
        status, stdout, stderr = cli(capsys, "train.py", *train_args(tiny_backbone, data, out))
        # each case reuses the run name: a leftover of the previous failure must not block it
        assert (status, stderr.strip().splitlines()[-1:]) == (1, [f"error: {docs}: {message}"]), case
        assert "Traceback" not in stderr and stdout == "", case
        assert {p.name for p in (out / "hostile").iterdir()} <= START_FILES, case

    # training documents without labels, a missing dev file, a bad relation map
    docs.write_bytes(edited(lambda d: d[2].pop("labels")))
    status, _, stderr = cli(capsys, "train.py", *train_args(tiny_backbone, data, out))
    assert (status, stderr.strip().splitlines()[-1]) == (
        1, f"error: {docs}: document 2 ('Nothing related'): missing field 'labels' (training documents need labels)")
    docs.write_bytes(FIXTURE_BYTES)
    status, _, stderr = cli(capsys, "train.py", *train_args(tiny_backbone, data, out, "data.dev_file=dev.json"))
    assert (status, stderr.strip().splitlines()[-1]) == (1, f"error: {data / 'dev.json'}: file not found")
    (data / "rel2id.json").write_text('{"Na": 1}')
    status, _, stderr = cli(capsys, "train.py", *train_args(tiny_backbone, data, out, f"data.rel2id={data / 'rel2id.json'}"))
    assert (status, stderr.strip().splitlines()[-1]) == (1, f"error: {data / 'rel2id.json'}: class ids must be 0..0 with 0 = NA")

    # backbones: a missing folder, an empty name (smoke.yaml's default), a folder without a model
    for backbone, message in [
        (str(tmp_path / "no_such_folder"), f"model.backbone: folder {str(tmp_path / 'no_such_folder')!r} does not exist"),
        ("", "model.backbone is empty: name a local folder or a Hugging Face model id (model.backbone=PATH)"),
        (str(data), f"model.backbone: folder {str(data)!r} holds no loadable tokenizer and model (config.json, tokenizer files)"),
    ]:
        status, stdout, stderr = cli(capsys, "train.py", *train_args(backbone, data, out))
        assert (status, stderr.strip().splitlines()[-1:]) == (1, [f"error: {message}"]), backbone
        assert "Traceback" not in stderr

    # the leftovers of all those failed starts do not block a good start under the same name; a
    # document with one entity (no candidate pair) is left out of training and predicted without the model
    single = fixture_docs()[2] | {"title": "One entity", "vertexSet": fixture_docs()[2]["vertexSet"][:1], "labels": []}
    docs.write_text(json.dumps(fixture_docs() + [single]))
    status, stdout, stderr = cli(capsys, "train.py", *train_args(tiny_backbone, data, out, "train.max_steps=1",
                                                                "train.batch_size=1", "data.dev_file=docs.json",
                                                                "eval.batch_size=1"))
    assert status == 0, stderr[-2000:]
    assert "train: 1 document with no candidate pair (fewer than two entities) left out of training" in stderr
    assert json.loads((out / "hostile" / "results.json").read_text())["dev"]["num_gold"] == 7
    assert all(row["title"] != "One entity" for row in json.loads((out / "hostile" / "dev_predictions.json").read_text()))


def test_train_cli_refuses_directories_it_must_not_touch(tmp_path, capsys, tiny_backbone):
    out = tmp_path / "runs"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "notes.txt").write_text("not a run")
    status, _, stderr = cli(capsys, "train.py", "configs/smoke.yaml", f"model.backbone={tiny_backbone}", f"output_dir={out}",
                            "run_name=mine")
    assert (status, stderr.strip()) == (
        1, f"error: {out / 'mine'}: directory is not empty; choose another run_name or set train.overwrite=true")
    assert (out / "mine" / "notes.txt").read_text() == "not a run"
    status, _, stderr = cli(capsys, "train.py", "--resume", str(out / "nothing"))
    assert (status, stderr.strip()) == (1, f"error: {out / 'nothing'}: the directory does not exist")
    status, _, stderr = cli(capsys, "train.py", "--resume", str(out / "mine"))
    assert (status, stderr.strip()) == (1, f"error: {out / 'mine'}: not a run directory (no config.yaml)")
    status, _, stderr = cli(capsys, "train.py", "configs/smoke.yaml", "--resume", str(out / "mine"))
    assert (status, stderr.strip()) == (
        1, "error: --resume continues a run with its own config.yaml: give only key=value overrides, not 'configs/smoke.yaml'")
    status, _, stderr = cli(capsys, "train.py")  # neither: argparse's usage error, status 2
    assert status == 2 and stderr.strip().splitlines()[-1].endswith("train.py: error: give a config file, or --resume RUN_DIR")


@pytest.fixture(scope="module")
def tiny_run(tiny_backbone, tmp_path_factory) -> Path:
    """A finished one-step run (no dev/test split) for evaluate.py."""
    import torch

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(ROOT / "configs/smoke.yaml", [
        f"model.backbone={tiny_backbone}", f"output_dir={out}", "data.dev_file=", "data.test_file=",
        f"data.cache_dir={out / 'cache'}", "train.max_steps=1", "train.num_threads=1",
    ])
    train(cfg)
    torch.set_num_threads(threads)
    return Path(out) / cfg.run_name


def test_evaluate_cli_answers_bad_input_in_one_line(tmp_path, capsys, tiny_run):
    docs = tmp_path / "docs.json"
    for case in ("invalid JSON", "relation missing from the map", "sent_id out of range", "empty file"):
        content, message = CASES[case]
        docs.write_bytes(content)
        status, stdout, stderr = cli(capsys, "evaluate.py", str(tiny_run), "--data", str(docs))
        assert (status, stderr.strip().splitlines()[-1:]) == (1, [f"error: {docs}: {message}"]), case
        assert "Traceback" not in stderr and stdout == "", case
    docs.write_bytes(edited(lambda d: [doc.pop("labels") for doc in d]))
    status, _, stderr = cli(capsys, "evaluate.py", str(tiny_run), "--data", str(docs))
    assert status == 1 and stderr.strip().splitlines()[-1].startswith(f"error: {docs}: documents without labels")
    status, _, stderr = cli(capsys, "evaluate.py", str(tmp_path / "none"))
    assert (status, stderr.strip()) == (1, f"error: {tmp_path / 'none'}: not a run directory (no config.yaml)")
    status, _, stderr = cli(capsys, "evaluate.py", str(tiny_run))
    assert (status, stderr.strip()) == (1, f"error: {tiny_run}: the run's config has no dev file; pass --data FILE")

    # a damaged run directory: weights that are not safetensors (e.g. a pickle), a config with a stale key
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.yaml", "rel2id.json"):
        (damaged / name).write_bytes((tiny_run / name).read_bytes())
    (damaged / "best.safetensors").write_bytes(b"\x80\x04\x95pickle")
    status, _, stderr = cli(capsys, "evaluate.py", str(damaged), "--data", str(FIXTURES / "docred_tiny.json"))
    assert status == 1 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"error: {damaged / 'best.safetensors'}: cannot read weights (")
    (damaged / "best.safetensors").unlink()
    status, _, stderr = cli(capsys, "evaluate.py", str(damaged), "--data", str(FIXTURES / "docred_tiny.json"))
    assert (status, stderr.strip()) == (1, f"error: {damaged / 'best.safetensors'}: weights file not found")
    (damaged / "config.yaml").write_text((tiny_run / "config.yaml").read_text() + "stale_option: 1\n")
    status, _, stderr = cli(capsys, "evaluate.py", str(damaged))
    assert (status, stderr.strip()) == (1, f"error: {damaged / 'config.yaml'}: unknown key 'stale_option'")


def run_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"DOCRE_CACHE": "none"})


def test_real_processes_exit_1_with_one_line(tmp_path, tiny_backbone, tiny_run):
    """The same answers from real processes: exit status 1, one line on stderr, no traceback."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "docs.json").write_bytes(CASES["span past the sentence end"][0])
    expected = f"error: {data / 'docs.json'}: {CASES['span past the sentence end'][1]}"
    train_run = run_process("train.py", *train_args(tiny_backbone, data, tmp_path / "runs"))
    evaluate_run = run_process("evaluate.py", str(tiny_run), "--data", str(data / "docs.json"))
    config_run = run_process("train.py", "configs/smoke.yaml", "train.batch_size=four")
    for result, message in [
        (train_run, expected),
        (evaluate_run, expected),
        (config_run, "error: override 'train.batch_size=four': train.batch_size: Value 'four' of type 'str' could not be "
                     "converted to Integer"),
    ]:
        assert (result.returncode, result.stderr.strip().splitlines()) == (1, [message]), result.stderr[-2000:]
        assert result.stdout == ""


# ------------------------------------------------------------------------------ lenient input
class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_repeat_of_one_kind_names_only_that_kind(tmp_path, rel2id, tiny_tokenizer):
    def repeat(docs):
        docs[1]["vertexSet"][4].append(dict(docs[1]["vertexSet"][4][0]))

    (tmp_path / "docs.json").write_bytes(edited(repeat))
    records = Records()
    logging.getLogger("docre").addHandler(records)
    try:
        load_split("x", "docred", "docs.json", str(tmp_path), tiny_tokenizer, rel2id, "*", 1024, "none")
    finally:
        logging.getLogger("docre").removeHandler(records)
    assert [m for m in records.messages if "repeated" in m] == [
        f"{tmp_path / 'docs.json'}: 1 repeated mention (kept, as ATLOP keeps them)"]


def test_repeats_warn_once_with_counts_and_go_on(tmp_path, rel2id, tiny_tokenizer):
    def repeat(docs):
        docs[1]["labels"] += [dict(docs[1]["labels"][3]), dict(docs[1]["labels"][3])]  # 2 repeated labels
        docs[0]["labels"].append(dict(docs[0]["labels"][0]))  # 1 more
        docs[1]["vertexSet"][4].append(dict(docs[1]["vertexSet"][4][0]))  # 1 repeated mention

    (tmp_path / "docs.json").write_bytes(edited(repeat))
    records = Records()
    logging.getLogger("docre").addHandler(records)
    try:
        split = load_split("x", "docred", "docs.json", str(tmp_path), tiny_tokenizer, rel2id, "*", 1024, "none")
    finally:
        logging.getLogger("docre").removeHandler(records)
    warnings = [m for m in records.messages if "repeated" in m]
    assert warnings == [f"{tmp_path / 'docs.json'}: 3 repeated labels (scored once) and 1 repeated mention "
                        "(kept, as ATLOP keeps them)"]
    clean = load_split("x", "docred", "docred_tiny.json", str(FIXTURES), tiny_tokenizer, rel2id, "*", 1024, "none")
    # a repeated label is one fact; a repeated mention is kept (one more marker position)
    for got, want in zip(split.features, clean.features):
        assert got.labels.tolist() == want.labels.tolist()
    expected = [len(e) + (i == 4) for i, e in enumerate(clean.features[1].entity_pos)]
    assert [len(e) for e in split.features[1].entity_pos] == expected
