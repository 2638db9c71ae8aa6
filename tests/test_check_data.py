"""scripts/check_data.py: statistics by hand on a small document, real files, and its errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from docre.errors import DocreError
from tests.cli import run_main

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"  # the shared data folder beside the repository (CDR/GDA files)

DOC = {
    "title": "Alpha",
    "sents": [["Ann", "met", "Bob", "in", "Rome", "."], ["Ann", "left", "."]],
    "vertexSet": [
        [{"name": "Ann", "pos": [0, 1], "sent_id": 0, "type": "PER"},
         {"name": "Ann", "pos": [0, 1], "sent_id": 1, "type": "PER"}],
        [{"name": "Bob", "pos": [2, 3], "sent_id": 0, "type": "PER"}],
        [{"name": "Rome", "pos": [4, 5], "sent_id": 0, "type": "LOC"}],
    ],
    "labels": [{"h": 0, "t": 2, "r": "P551", "evidence": []}, {"h": 0, "t": 2, "r": "P27", "evidence": []},
               {"h": 1, "t": 2, "r": "P551", "evidence": []}],
}


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/check_data.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_statistics_of_a_document_worked_by_hand(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps([DOC]))
    stats = last_json(check(str(path), "--format", "docred", "--json"))
    # 3 entities -> 3 x 2 ordered pairs; (0,2) holds two relations and (1,2) one
    assert {k: stats[k] for k in ("docs", "entities", "mentions", "pairs", "positive_pairs", "facts")} == {
        "docs": 1, "entities": 3, "mentions": 4, "pairs": 6, "positive_pairs": 2, "facts": 3}


def test_a_relation_missing_from_the_given_map_names_the_document(tmp_path):
    doc = dict(DOC, labels=DOC["labels"] + [{"h": 1, "t": 0, "r": "P9999", "evidence": []}])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([doc]))
    assert check(str(path), "--format", "docred", "--json").returncode == 0  # relations from the file itself
    result = check(str(path), "--format", "docred", "--rel2id", "data/docred/rel2id.json")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "document 0 ('Alpha')" in lines[0] and "P9999" in lines[0] and str(path) in lines[0]


def test_bad_input_is_one_line_and_exit_1(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[{")
    result = check(str(path), "--format", "docred")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(path) in result.stderr
    missing = check(str(tmp_path / "nowhere.json"), "--format", "docred")
    assert missing.returncode == 1 and "nowhere.json" in missing.stderr and "Traceback" not in missing.stderr


def test_real_files():
    stats = last_json(check("data/redocred/dev_revised.json.gz", "--format", "docred", "--rel2id", "data/docred/rel2id.json",
                            "--json"))
    assert stats["docs"] == 500 and stats["facts"] >= stats["positive_pairs"] > 0
    cdr = SHARED / "cdr" / "test_filter.data.gz"
    if not cdr.exists():
        pytest.skip("the CDR files are not in the shared data folder beside the repository")
    stats = last_json(check(str(cdr), "--format", "cdr", "--json"))
    assert stats["docs"] == 500 and stats["facts"] == stats["positive_pairs"] <= stats["pairs"]


def test_the_format_comes_from_a_json_name(tmp_path):
    # --format may be left out for DocRED's .json / .json.gz (a slice too); CDR and GDA share .data
    path = tmp_path / "one.json"
    path.write_text(json.dumps([DOC, dict(DOC, title="Beta")]))
    result = check(f"{path}[1:]", "--json")
    assert result.stdout.startswith(f"{path}: valid docred file") and last_json(result)["docs"] == 1
    assert last_json(check("data/redocred/dev_revised.json.gz[:5]", "--json"))["docs"] == 5
    unnamed = tmp_path / "corpus.data"
    unnamed.write_text((ROOT / "tests/fixtures/cdr_tiny.data").read_text())
    result = check(str(unnamed))
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: {unnamed}: cannot tell the format from the file name (DocRED files end in .json or .json.gz); "
        "pass --format docred, cdr or gda"]
    assert check(str(unnamed), "--format", "cdr").returncode == 0



def test_a_misspelt_labels_field_or_json_lines_is_refused_with_the_fix(tmp_path):
    # both used to pass as something else: "label" as an unlabelled document ("0 relation facts"), and JSON
    # lines (what docre-predict reads) as "invalid JSON at line 2 column 1: Extra data"
    misspelt = tmp_path / "misspelt.json"
    misspelt.write_text(json.dumps([{**{k: v for k, v in DOC.items() if k != "labels"}, "label": DOC["labels"]}]))
    with pytest.raises(DocreError) as error:
        run_main("check_data", [str(misspelt)])
    assert str(error.value) == f"{misspelt}: document 0 ('Alpha'): unknown field 'label' (did you mean labels?)"
    lines = tmp_path / "docs.jsonl"
    lines.write_text(json.dumps(DOC) + "\n" + json.dumps(dict(DOC, title="Beta")) + "\n")
    with pytest.raises(DocreError) as error:
        run_main("check_data", [str(lines), "--format", "docred"])  # as the hint for a .jsonl name says
    assert str(error.value) == (f"{lines}: looks like JSON lines (one document per line); DocRED files are one JSON list: "
                                "put [ before the first document, a comma after each but the last, and ] at the end")
