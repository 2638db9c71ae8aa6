"""docre-convert (docre/cli/convert.py): annotated text (text, entity mention spans, relations) becomes
the DocRED-format file docs/your_data.md shows, from JSON lines or a JSON list, plain or gzipped; a
converted file trains; bad input is one line naming the file, the line and the entity or relation,
and leaves no output behind."""

import gzip
import json
import re

import pytest

from docre.config import load_config
from docre.trainer import train
from tests.conftest import ROOT
from tests.test_predict import call

EXAMPLES = ROOT / "docs" / "examples" / "your_data"
ANNOTATED = EXAMPLES / "annotated.jsonl"


def without_evidence(docs: list[dict]) -> list[dict]:
    return [{**doc, "labels": [{**label, "evidence": []} for label in doc["labels"]]} for doc in docs]


def test_the_docs_example_converts_to_the_docs_training_file(tmp_path, capsys):
    status, out, _ = call("convert", [ANNOTATED, "-o", tmp_path / "train.json"], capsys)
    assert status == 0
    assert out.strip() == f"2 documents, 9 entities, 12 mentions, 11 relation facts of 4 relations -> {tmp_path / 'train.json'}"
    expected = without_evidence(json.loads((EXAMPLES / "train.json").read_text()))
    assert json.loads((tmp_path / "train.json").read_text()) == expected  # sentences, words, mentions, labels
    # a JSON list in, a gzipped file out, the relation map checked: the same documents
    records = [json.loads(line) for line in ANNOTATED.read_text().splitlines()]
    (tmp_path / "annotated.json").write_text(json.dumps(records))
    rel2id = tmp_path / "rel2id.json"
    rel2id.write_text(json.dumps({"Na": 0, "colleague_of": 1, "designed": 2, "member_of": 3, "worked_in": 4}))
    status, _, _ = call("convert", [tmp_path / "annotated.json", "-o", tmp_path / "train.json.gz", "--rel2id", rel2id], capsys)
    assert status == 0 and json.loads(gzip.decompress((tmp_path / "train.json.gz").read_bytes())) == expected


def test_a_record_without_relations_has_no_labels(tmp_path, capsys):
    source = tmp_path / "test.jsonl"
    source.write_text(json.dumps({"text": "Ada met Bob.", "entities": [{"mentions": [[0, 3]]}, {"mentions": [[8, 11]]}]}) + "\n")
    status, _, _ = call("convert", [source, "-o", tmp_path / "test.json"], capsys)
    [doc] = json.loads((tmp_path / "test.json").read_text())
    assert status == 0 and "labels" not in doc and doc["title"] == "document 0"


def test_a_converted_file_trains(tiny_backbone, tmp_path, capsys):
    status, _, _ = call("convert", [ANNOTATED, "-o", tmp_path / "train.json"], capsys)
    assert status == 0
    cfg = load_config(ROOT / "configs/smoke.yaml", [
        f"model.backbone={tiny_backbone}", f"output_dir={tmp_path}", f"data.dir={tmp_path}", "data.train_file=train.json",
        "data.dev_file=train.json", "data.test_file=", "data.rel2id=", "data.rel_info=", "train.max_steps=2",
        "train.batch_size=2"])
    result = train(cfg)
    assert json.loads((tmp_path / "smoke-s66" / "rel2id.json").read_text()) == {
        "Na": 0, "colleague_of": 1, "designed": 2, "member_of": 3, "worked_in": 4}
    assert "run_dir" in result


GOOD = {"title": "T", "text": "Ada met Bob in Paris.", "entities": [{"mentions": [[0, 3]], "type": "PER"},
                                                                    {"mentions": [[8, 11]]}, {"mentions": [[15, 20]]}],
        "relations": [{"head": 0, "tail": 2, "type": "P551"}]}


def relation(**changes) -> str:
    return json.dumps({**GOOD, "relations": [{**GOOD["relations"][0], **changes}]})


@pytest.mark.parametrize(("content", "message"), [
    (json.dumps(GOOD) + "\n\n{not json\n", r"in\.jsonl: line 3: invalid JSON"),
    (json.dumps({**GOOD, "entities": [{"mentions": [[0, 2]]}]}), r"in\.jsonl: line 1 \('T'\): entities\[0\]\.mentions\[0\]: "
                                                                   r"\[0, 2\] 'Ad' ends inside the word 'Ada'"),
    (json.dumps({**GOOD, "entities": [{"mentions": [[0, 11]]}, {"mentions": [[8, 11]]}]}),
     r"line 1 \('T'\): entities\[0\]\.mentions\[0\] \[0, 11\] 'Ada met Bob' and entities\[1\]\.mentions\[0\] \[8, 11\] 'Bob' "
     r"overlap"),
    (json.dumps({**GOOD, "text": ""}), r"line 1 \('T'\): text: must be a non-empty string"),
    (relation(tail=3), r"line 1 \('T'\): relations\[0\]\.tail: 3 is not an entity index \(0\.\.2, in the order of entities\)$"),
    (relation(tail="2"), r"relations\[0\]\.tail: '2' is not an entity index"),
    (relation(head=2), r"relations\[0\]: head and tail are both entity 2; a relation needs two different entities$"),
    (relation(type=""), r"relations\[0\]\.type: must be a relation id \(a non-empty string, e\.g\. P17\)$"),
    (relation(type="Na"), r"relations\[0\]\.type: 'Na' is the NA class \(no relation\), not a relation$"),
    (json.dumps({**GOOD, "relations": [{"head": 0, "tail": 1}]}), r"relations\[0\]: missing field 'type'$"),
    (json.dumps({**GOOD, "relations": {"head": 0}}), r"relations: must be a list of \{\"head\", \"tail\", \"type\"\} objects$"),
    (json.dumps({**GOOD, "relations": [3]}), r"relations\[0\]: a relation must be a JSON object"),
    (json.dumps(GOOD) + "\n" + json.dumps(GOOD), r"in\.jsonl: document 1 \('T'\): title: duplicate of document 0"),
    ("", r"in\.jsonl: file is empty$"),
    ("[1]", r"in\.jsonl: document 0: a document must be a JSON object, got int$"),
])
def test_bad_input_is_one_line_and_writes_nothing(content, message, tmp_path, capsys):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.json"
    source.write_text(content)
    output.write_text("previous\n")
    status, out, err = call("convert", [source, "-o", output], capsys)
    assert status == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert output.read_text() == "previous\n" and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.json"]


def test_relations_outside_the_map_and_bad_arguments_are_one_line(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text(relation(type="P5511") + "\n")
    status, _, err = call("convert", [source, "-o", tmp_path / "out.json", "--rel2id", ROOT / "data/docred/rel2id.json"], capsys)
    assert status == 1 and err.strip() == (f"error: {source}: line 1 ('T'): relations[0].type: 'P5511' is not in the relation "
                                           "map (did you mean P551?)")
    for args, message in [
        ([source, "-o", tmp_path / "out.jsonl"], r"out\.jsonl: the output must end in \.json or \.json\.gz$"),
        ([tmp_path / "missing.jsonl", "-o", tmp_path / "out.json"], r"missing\.jsonl: file not found$"),
    ]:
        status, _, err = call("convert", args, capsys)
        assert status == 1 and len(err.strip().splitlines()) == 1 and re.search(message, err), err
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"text": "caf\xe9"}\n')
    status, _, err = call("convert", [latin1, "-o", tmp_path / "out.json"], capsys)
    assert status == 1 and re.search(r"latin1\.jsonl: not UTF-8 text \(byte 13\)$", err), err
