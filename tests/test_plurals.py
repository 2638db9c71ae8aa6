"""Counts meet their nouns in the right number ("1 document", "2 documents"; docre.utils.plural), and
the warning about repeated labels and mentions is given once per file however often a command reads it
(training reads its file twice, streamed prediction validates chunk after chunk)."""

import json
import logging

from docre.data import read_split
from docre.utils import plural
from tests.cli import run_main
from tests.test_hostile_inputs import Records

ONE_DOC = [{"title": "t", "sents": [["Alice", "met", "Bob", "."]],
            "vertexSet": [[{"name": "Alice", "sent_id": 0, "pos": [0, 1], "type": "PER"}],
                          [{"name": "Bob", "sent_id": 0, "pos": [2, 3], "type": "PER"},
                           {"name": "Bob", "sent_id": 0, "pos": [2, 3], "type": "PER"}]],  # a repeated mention
            "labels": [{"h": 0, "t": 1, "r": "P1", "evidence": [0]}]}]



def test_plural():
    assert [plural(n, "document") for n in (0, 1, 2)] == ["0 documents", "1 document", "2 documents"]
    assert plural(1, "entity", "entities") == "1 entity" and plural(3, "entity", "entities") == "3 entities"


def test_check_data_counts_one_of_each_in_the_singular(tmp_path, capsys):
    (tmp_path / "one.json").write_text(json.dumps(ONE_DOC))
    assert run_main("check_data", [str(tmp_path / "one.json"), "--format", "docred"]) == 0
    out = capsys.readouterr().out
    assert "  1 document, 1 sentence, 2 entities, 3 mentions\n" in out
    assert "  2 candidate pairs, 1 positive pair, 1 relation fact of 1 relation\n" in out


def test_repeated_mentions_are_reported_once_per_file(tmp_path):
    (tmp_path / "docs.json").write_text(json.dumps(ONE_DOC))
    records = Records()
    logging.getLogger("docre").addHandler(records)
    try:
        for _ in range(3):  # as training (features, then Ign F1) and chunked prediction read it again
            read_split("docred", "docs.json", str(tmp_path), None)
    finally:
        logging.getLogger("docre").removeHandler(records)
    assert [m for m in records.messages if "repeated" in m] == [
        f"{tmp_path / 'docs.json'}: 1 repeated mention (kept, as ATLOP keeps them)"]
