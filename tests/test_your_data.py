"""docs/your_data.md against the code: its example files are the page's text, they pass the checker
with the format taken from the name, the relation map it shows is the one built from the training
file, and its training command runs (one step, tiny model)."""

import json
import re
import shlex
from pathlib import Path

import pytest

from docre.config import load_config
from docre.data import load_rel2id, read_split
from docre.errors import DocreError
from tests.cli import run_main

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "your_data.md"
EXAMPLES = ROOT / "docs" / "examples" / "your_data"


def blocks(language: str) -> list[tuple[str, str]]:
    """(the line before it, the text) of each ```language block of the page."""
    text = PAGE.read_text(encoding="utf-8")
    return [(match["before"], match["body"])
            for match in re.finditer(rf"(?P<before>[^\n]*)\n\n?```{language}\n(?P<body>.*?)```", text, re.DOTALL)]


def test_the_page_shows_each_example_file_as_it_is():
    shown = {before.strip("`:"): body for before, body in blocks("json") if before.startswith("`docs/examples/")}
    # the DocRED-format examples (annotated.jsonl, docre-convert's input, has tests of its own)
    on_disk = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in sorted(EXAMPLES.glob("*.json"))}
    assert set(on_disk) == {"docs/examples/your_data/train.json", "docs/examples/your_data/dev.json"}
    assert shown == on_disk  # one text: the page cannot drift from the files the tests load
    assert str(PAGE.relative_to(ROOT)) in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_examples_pass_the_checker_with_the_format_from_their_name(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the checker prints the path as given
    [expected] = [body for _, body in blocks("text") if body.startswith("docs/examples/your_data/train.json: valid")]
    assert run_main("check_data", ["docs/examples/your_data/train.json"]) == 0
    assert capsys.readouterr().out == expected
    assert run_main("check_data", ["docs/examples/your_data/dev.json"]) == 0
    assert "docs/examples/your_data/dev.json: valid docred file" in capsys.readouterr().out


def documented_map() -> dict:
    [body] = [body for _, body in blocks("json") if body.startswith('{"Na": 0')]
    return json.loads(body)


def test_the_relation_map_is_built_from_the_training_file_as_shown():
    train = read_split("docred", str(EXAMPLES / "train.json"), "", None)[2]
    assert load_rel2id("docred", "", train) == documented_map()
    # the dev file's relations all have a class, so the documented command reads it
    read_split("docred", str(EXAMPLES / "dev.json"), "", documented_map())


def test_without_a_relation_map_or_training_documents_there_is_nothing_to_build_it_from():
    # the trainer always hands the training documents over; a caller of the API that gives neither is told which setting
    with pytest.raises(DocreError, match=r"^data\.rel2id is empty and there are no training documents to take relations from$"):
        load_rel2id("docred", "")


def test_a_training_label_na_is_refused_not_given_a_class(tmp_path):
    docs = json.loads((EXAMPLES / "train.json").read_text())
    docs[1]["labels"].append({"h": 1, "t": 4, "r": "Na", "evidence": []})
    (tmp_path / "train.json").write_text(json.dumps(docs))
    train = read_split("docred", str(tmp_path / "train.json"), "", None)[2]  # any relation string, no map yet
    rel2id = load_rel2id("docred", "", train)
    # Na stays class 0, the threshold class; before, a label "Na" moved it to the end of the map
    assert rel2id == documented_map()
    with pytest.raises(DocreError, match=r"document 1 \('Grace Hopper'\): labels\[6\]\.r: 'Na' is the NA class"):
        read_split("docred", str(tmp_path / "train.json"), "", rel2id, require_labels=True)


def test_the_documented_training_command_runs(tiny_backbone, tmp_path):
    from docre.trainer import train

    [command] = [body for _, body in blocks("bash") if body.startswith("docre-train ")]
    words = shlex.split(command.replace("\\\n", " "))
    config, overrides = words[1], words[2:]
    cfg = load_config(ROOT / config, [*overrides, f"model.backbone={tiny_backbone}", f"output_dir={tmp_path}",
                                      "data.cache_dir=none", "train.epochs=1", "train.device=cpu"])
    assert cfg.run_name == "your_data-s66" and cfg.data.test_file == ""
    results = train(cfg)
    run_dir = Path(results["run_dir"])
    assert run_dir == tmp_path / "your_data-s66"
    assert json.loads((run_dir / "rel2id.json").read_text()) == documented_map()
    assert results["dev"]["num_gold"] == 4  # the dev file's four facts, scored
