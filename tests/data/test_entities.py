"""Entities for plain text (docre/data/entities.py): spaCy's labels map onto the dataset's types by
one table; mentions are grouped by the documented name rules (and nothing else); found mentions lie
on whole words of docre's word split and never overlap, whatever spaCy's tokens; sentences come from
the pipeline and never cross a blank line or a mention; a user's own mentions are checked and
grouped; a missing extra or pipeline is one line. The spaCy tests run the real en_core_web_sm 3.8.0
pipeline and are skipped, with one reason, only where the text extra is not installed."""

import gzip
import itertools
import json
import random
import re
import sys

import pytest

from docre.data import entities
from docre.data.docred import validate_docred
from docre.data.entities import (
    ENTITY_TYPES,
    find_entities,
    group_mentions,
    load_pipeline,
    mentions_to_entities,
    name_key,
    paragraph_spans,
    snap_to_words,
    trim_mention,
)
from docre.data.text import text_to_docred, word_spans
from docre.errors import DocreError
from tests.conftest import REDOCRED_DEV, ROOT

DOCRED_TYPES = {"PER", "ORG", "LOC", "TIME", "NUM", "MISC"}


@pytest.fixture(scope="module")
def nlp():
    """The real pipeline; the tests that need it skip only where the text extra is absent."""
    pytest.importorskip("spacy", reason='the text extra is not installed (pip install "docre[text]")')
    return load_pipeline("en_core_web_sm")


def groups(names: list[str], kinds: list[str]) -> list[list[str]]:
    return [[names[m] for m in entity] for entity in group_mentions(names, kinds)]


def assert_whole_words_without_overlap(text: str, found) -> None:
    words = word_spans(text)
    starts, ends = {a for a, _ in words}, {b for _, b in words}
    spans = sorted((a, b) for entity in found.entities for a, b in entity["mentions"])
    assert all(a in starts and b in ends for a, b in spans), [(a, b, text[a:b]) for a, b in spans]
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(spans))


# ------------------------------------------------------------------------------------------ the table


def test_the_table_maps_every_label_of_the_english_pipeline_onto_docred_types_only(nlp):
    table = ENTITY_TYPES["docred"]
    assert set(table.values()) == DOCRED_TYPES  # no type the model never saw
    assert set(nlp.get_pipe("ner").labels) - set(table) == {"ORDINAL"}  # every other OntoNotes label has its type
    with gzip.open(REDOCRED_DEV, "rt") as handle:  # and these are the types Re-DocRED has
        seen = {mention["type"] for doc in json.load(handle) for entity in doc["vertexSet"] for mention in entity}
    assert seen == DOCRED_TYPES


def test_the_docs_show_the_table():
    docs = (ROOT / "docs" / "predict.md").read_text(encoding="utf-8")
    for label, kind in ENTITY_TYPES["docred"].items():
        assert f"`{label}`" in docs and kind in docs, label


def test_the_command_line_names_the_same_default_pipeline():
    from docre.cli import predict

    assert predict.DEFAULT_PIPELINE == entities.DEFAULT_PIPELINE


# --------------------------------------------------------------------------------------- grouping


def test_same_name_ignores_case_punctuation_possessive_and_a_leading_the():
    assert name_key("The U.S.") == name_key("US") == "us"
    assert name_key("Apple Inc.") == name_key("APPLE INC") == "apple inc"
    assert name_key("Curie’s") == name_key("curie") == "curie"
    assert name_key("Jean-Paul Sartre") == "jean paul sartre"
    assert name_key("The") == "the"
    names = ["Apple Inc.", "Warsaw", "APPLE INC", "the Warsaw", "1891", "1891"]
    assert groups(names, ["ORG", "LOC", "ORG", "LOC", "TIME", "TIME"]) == [
        ["Apple Inc.", "APPLE INC"], ["Warsaw", "the Warsaw"], ["1891", "1891"]]


def test_an_acronym_joins_the_name_it_abbreviates_in_either_order():
    names = ["IBM", "International Business Machines", "United States", "U.S.", "Bank of America", "BoA", "BA"]
    kinds = ["ORG", "ORG", "LOC", "LOC", "ORG", "ORG", "ORG"]
    assert groups(names, kinds) == [["IBM", "International Business Machines"], ["United States", "U.S."],
                                    ["Bank of America", "BA"], ["BoA"]]  # "BoA" is not all capitals: not an acronym
    # people, dates and numbers are not abbreviated
    assert groups(["John Fitzgerald Kennedy", "JFK"], ["PER", "PER"]) == [["John Fitzgerald Kennedy"], ["JFK"]]
    assert groups(["New Year", "NY"], ["TIME", "LOC"]) == [["New Year"], ["NY"]]


def test_part_of_a_persons_name_after_the_full_name_joins_the_last_such_person():
    names = ["Marie Skłodowska Curie", "Curie", "Marie", "Marie Curie", "Dr. Curie"]
    assert groups(names, ["PER"] * 5) == [names]
    # a lone surname joins whatever spaCy called it; a first name only as a person
    assert groups(["John Smith", "Smith", "John"], ["PER", "ORG", "LOC"]) == [["John Smith", "Smith"], ["John"]]
    # two people with one surname: the last one mentioned before
    names = ["John Smith", "Mary Smith", "Smith", "John"]
    assert groups(names, ["PER"] * 4) == [["John Smith", "John"], ["Mary Smith", "Smith"]]
    # before the full name, and dates or numbers, stay apart
    assert groups(["Curie", "Marie Curie"], ["PER", "PER"]) == [["Curie"], ["Marie Curie"]]
    assert groups(["June Smith", "June"], ["PER", "TIME"]) == [["June Smith"], ["June"]]


def test_nothing_else_is_merged():
    names = ["Marie Curie", "she", "Warsaw", "Warszawa", "the company", "Pierre Curie"]
    assert groups(names, ["PER", "PER", "LOC", "LOC", "ORG", "PER"]) == [[n] for n in names]


# ----------------------------------------------------------------------------- alignment to words


def test_mentions_snap_outwards_to_whole_words_and_never_overlap():
    text = "It cost $3.5m in U.S.-made 5km  runs."
    words = [text[a:b] for a, b in word_spans(text)]
    assert "5m" in words and "5km" in words
    money = text.index("3.5")
    snapped = snap_to_words(text, [(money, money + 3, "NUM"), (text.index("5km"), text.index("5km") + 1, "NUM"),
                                   (text.index("  "), text.index("  ") + 2, "NUM")])  # the last is only spaces
    assert [text[a:b] for a, b, _ in snapped] == ["3.5m", "5km"]
    # two spaCy mentions inside one docre word: the first keeps it
    text = "a 5km2 b"
    assert [text[a:b] for a, b, _ in snap_to_words(text, [(2, 3, "NUM"), (3, 5, "NUM")])] == ["5km2"]


def test_found_mentions_are_trimmed_as_docred_writes_mentions():
    text = "the United States's army; The Beatles' song; the 20th century; Jesus' life"
    def trimmed(phrase, kind):
        start = text.index(phrase)
        a, b, _ = trim_mention(text, start, start + len(phrase), kind)
        return text[a:b]

    assert trimmed("the United States's", "LOC") == "United States"
    assert trimmed("The Beatles'", "ORG") == "Beatles"
    assert trimmed("the 20th century", "TIME") == "the 20th century"  # a date keeps its article
    assert trimmed("Jesus'", "PER") == "Jesus"
    assert trimmed("the", "MISC") == "the"  # nothing left to trim to


@pytest.mark.parametrize("seed", range(3))
def test_snapped_random_spans_are_whole_words_without_overlap(seed):
    rng = random.Random(seed)
    pieces = ["Alpha", "U.S.", "3.5m", "e-mail", "東京", "(x)", "don't", "  ", "\n", "5km", "🙂"]
    text = " ".join(rng.choice(pieces) for _ in range(30))
    spans = []
    for _ in range(20):
        a = rng.randrange(len(text))
        spans.append((a, rng.randrange(a, len(text)) + 1, "MISC"))
    snapped = snap_to_words(text, spans)
    words = word_spans(text)
    starts, ends = {a for a, _ in words}, {b for _, b in words}
    assert all(a in starts and b in ends for a, b, _ in snapped)
    assert all(b1 <= a2 for (_, b1, _), (a2, _, _) in itertools.pairwise(snapped))


def test_paragraphs_are_the_stretches_between_blank_lines():
    text = "  Title line\n\nFirst para\ncontinues.\n \t\nSecond.\r\n\r\n\n"
    assert [text[a:b] for a, b in paragraph_spans(text)] == ["Title line", "First para\ncontinues.", "Second."]
    assert paragraph_spans("\n\n  \n") == []


# ------------------------------------------------------------------------------- spaCy, for real

CURIE = ("Marie Curie was born in Warsaw, Poland. She moved to Paris in 1891 and worked for IBM "
         "(International Business Machines).\n\nCurie won 2 Nobel Prizes. Marie Curie died in 1934.")


def test_found_entities_are_typed_grouped_and_on_whole_words(nlp):
    found = find_entities([CURIE])[0]
    assert found.by == "en_core_web_sm"
    by_name = {entity["name"]: entity for entity in found.entities}
    assert by_name["Marie Curie"]["type"] == "PER" and len(by_name["Marie Curie"]["mentions"]) >= 2
    assert by_name["Warsaw"]["type"] == "LOC" and by_name["1891"]["type"] == "TIME"
    assert [CURIE[a:b] for a, b in by_name["IBM"]["mentions"]] == ["IBM", "International Business Machines"]
    assert all(entity["type"] in DOCRED_TYPES for entity in found.entities)
    assert_whole_words_without_overlap(CURIE, found)
    doc = text_to_docred({"title": "Curie", "text": CURIE}, 0, found=found)
    validate_docred([doc], "test", None)
    assert doc["entities"] == found.entities and doc["entities_by"] == "en_core_web_sm"
    assert doc["entity_names"] == [entity["name"] for entity in found.entities]
    # spaCy's sentences; the blank line ends one, whatever the pipeline says
    assert [CURIE[a:b] for a, b in doc["sent_spans"]] == [
        "Marie Curie was born in Warsaw, Poland.", "She moved to Paris in 1891 and worked for IBM (International Business "
        "Machines).", "Curie won 2 Nobel Prizes.", "Marie Curie died in 1934."]


def test_no_mention_or_sentence_crosses_a_blank_line(nlp):
    text = "Title Line\n\nAcme Corp. was founded in New York."  # without paragraphs spaCy reads "Title Line\n\nAcme Corp."
    found = find_entities([text])[0]
    assert "Acme Corp." in [entity["name"] for entity in found.entities]
    doc = text_to_docred({"text": text}, 0, found=found)
    start, end = doc["sent_spans"][0]
    assert text[start:end] == "Title Line"


def test_real_documents_as_plain_text_give_valid_documents(nlp):
    """Re-DocRED dev documents joined back into text (odd spacing kept): every found mention is whole
    words of docre's split, none overlap, and each document converts and validates."""
    with gzip.open(REDOCRED_DEV, "rt") as handle:
        docs = json.load(handle)[:8]
    texts = ["  ".join(" ".join(sent) for sent in doc["sents"]) for doc in docs]
    found = find_entities(texts)
    converted = []
    for i, (text, result) in enumerate(zip(texts, found)):
        assert len(result.entities) >= 5
        assert_whole_words_without_overlap(text, result)
        converted.append(text_to_docred({"title": str(i), "text": text}, i, found=result))
    validate_docred(converted, "dev", None)


def test_a_text_without_entities_gives_an_empty_list(nlp):
    found = find_entities(["nothing here at all.", "Paris."])
    assert found[0].entities == [] and [e["name"] for e in found[1].entities] == ["Paris"]
    doc = text_to_docred({"text": "nothing here at all."}, 0, found=found[0])
    assert doc["vertexSet"] == [] and doc["sents"] == [["nothing", "here", "at", "all", "."]]


def test_a_text_longer_than_the_pipeline_reads_is_one_line(nlp, monkeypatch):
    monkeypatch.setattr(nlp, "max_length", 20)
    with pytest.raises(DocreError) as error:
        find_entities(["short", "a text of more than twenty characters"], wheres=["f: document 0", "f: document 1"])
    assert str(error.value) == ("f: document 1: text: 37 characters, more than the spaCy pipeline reads at once (20); "
                                "split it into documents")


# ---------------------------------------------------------------------------------- one-line errors


def test_without_the_extra_the_refusal_names_the_install_command(monkeypatch):
    load_pipeline.cache_clear()
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy raises ImportError
    try:
        with pytest.raises(DocreError) as error:
            find_entities(["Marie Curie was born in Warsaw."], wheres=["notes.txt: document 0 ('notes')"])
    finally:
        load_pipeline.cache_clear()
    assert str(error.value) == ("notes.txt: document 0 ('notes'): no entities given, and finding them needs spaCy: "
                                'pip install "docre[text]" && python -m spacy download en_core_web_sm '
                                "(docs/predict.md#plain-text)")


def test_a_missing_pipeline_or_a_dataset_without_a_table_is_one_line(nlp, tmp_path):
    with pytest.raises(DocreError) as error:
        find_entities(["Paris."], "en_core_web_xx")
    assert str(error.value) == ("text 0: no entities given, and the spaCy pipeline 'en_core_web_xx' is not installed: "
                                "python -m spacy download en_core_web_xx (or name another: --spacy-model, or "
                                "spacy_model= in Python; docs/predict.md#plain-text)")
    with pytest.raises(DocreError, match=r"^text 0: no entities given, and the spaCy pipeline '.*' does not load: "):
        find_entities(["Paris."], str(tmp_path))  # a folder that holds no pipeline
    with pytest.raises(DocreError, match=r"^text 0: no entities given, and a cdr model's entity types have no table"):
        find_entities(["Paris."], dataset="cdr")
    import spacy

    spacy.blank("en").to_disk(tmp_path / "blank")  # a pipeline that loads, but finds no entities
    with pytest.raises(DocreError, match=r"^text 0: no entities given, and the spaCy pipeline '.*blank' has no entity "
                                         r"recognizer \(ner\); name one that has$"):
        find_entities(["Paris."], str(tmp_path / "blank"))


@pytest.mark.parametrize("name", ["/some/folder", "models/mine", "./mine", "../nosuch", "~/mine", "C:\\models\\mine"])
def test_a_missing_pipeline_folder_is_said_to_be_missing_not_to_be_downloaded(nlp, name):
    with pytest.raises(DocreError) as error:
        find_entities(["Paris."], name)
    tilde = " (~ is not expanded here: give the full path)" if name.startswith("~") else ""
    assert str(error.value) == f"text 0: no entities given, and the spaCy pipeline folder {name!r} does not exist{tilde}"


# ------------------------------------------------------------------------------- a user's mentions


def test_a_users_own_mentions_are_grouped_by_the_same_rules():
    text = "Marie Curie met IBM staff. Curie liked International Business Machines."
    doc = {"text": text, "mentions": [{"span": [0, 11], "type": "PER"}, [16, 19], {"span": [27, 32], "type": "PER"},
                                      {"span": [39, 70], "type": "ORG"}]}
    found = mentions_to_entities(doc, "input: document 0")
    assert found.by == "mentions" and found.sentence_chars is None
    assert [[text[a:b] for a, b in e["mentions"]] for e in found.entities] == [
        ["Marie Curie", "Curie"], ["IBM", "International Business Machines"]]
    assert [e["type"] for e in found.entities] == ["PER", ""]  # the most common type, the first on a tie ("": none given)
    # an untyped mention may be an acronym; only a person's mention joins a person by first name
    assert groups(["IBM", "International Business Machines"], ["", ""]) == [["IBM", "International Business Machines"]]
    assert groups(["Marie Curie", "Marie"], ["PER", ""]) == [["Marie Curie"], ["Marie"]]


def test_a_users_mentions_are_checked_like_entity_mentions():
    text = "Toyota City hosts Toyota."
    where = "input: document 0 ('t')"
    cases = [
        ([[0, 11], [0, 6]], r"mentions\[1\] \[0, 6\] 'Toyota' and mentions\[0\] \[0, 11\] 'Toyota City' overlap; a word "
                            "can be part of one mention only"),
        ([[0, 3]], r"mentions\[0\]: \[0, 3\] 'Toy' ends inside the word 'Toyota'"),
        ([[18, 90]], r"mentions\[0\]: \[18, 90\] lies outside the text"),
        ([{"span": [0, 6], "type": 3}], r"mentions\[0\]\.type: must be a string"),
        ([], r"mentions: must be a non-empty list"),
        ("Toyota", r"mentions: must be a non-empty list"),
    ]
    for mentions, message in cases:
        with pytest.raises(DocreError, match="^" + re.escape(where) + ": " + message):
            mentions_to_entities({"text": text, "mentions": mentions}, where)
