"""docre's raw-text tokenizer: words are exact substrings, sentences break where the rules say and
never inside a mention, mention spans map to the right words (punctuation, repeated spaces,
unicode, newlines), and bad spans are one-line errors naming the document and entity."""

import itertools
import random
import unicodedata

import pytest

from docre.data.docred import validate_docred
from docre.data.text import sentence_starts, text_to_docred, word_spans
from docre.errors import DocreError


def words_of(text: str) -> list[str]:
    return [text[a:b] for a, b in word_spans(text)]


def sentences_of(text: str, protected=()) -> list[list[str]]:
    spans = word_spans(text)
    starts = sentence_starts(text, spans, protected)
    return [[text[a:b] for a, b in spans[s:e]] for s, e in zip(starts, starts[1:] + [len(spans)])]


def test_words_split_punctuation_and_keep_letters_digits_and_marks_together():
    text = "Dr.  Müller (né Smith) paid $3.5m\tfor e-mail's 2nd\u00a0copy!"
    assert words_of(text) == ["Dr", ".", "Müller", "(", "né", "Smith", ")", "paid", "$", "3", ".", "5m", "for",
                              "e", "-", "mail", "'", "s", "2nd", "copy", "!"]
    decomposed = "cafe\u0301 ok"  # "é" as e + combining acute accent stays inside the word
    assert words_of(decomposed) == ["cafe\u0301", "ok"]
    assert words_of("东京大学 in Tokyo🙂.") == ["东", "京", "大", "学", "in", "Tokyo", "🙂", "."]
    assert words_of("zero\u200bwidth \ufeffbom") == ["zero", "width", "bom"]  # invisible format characters separate
    assert words_of("  \n\t ") == []


@pytest.mark.parametrize("seed", range(5))
def test_words_are_exact_substrings_and_lose_only_separators(seed):
    rng = random.Random(seed)
    pieces = ["Alpha", "β-gamma", "3.14", "U.S.", "naïve", "東京", "(x)", "“quoted”", "don't", "a\u0301", "🙂", "e\u200bf"]
    separators = [" ", "  ", "\n", "\n\n", "\t", " \u00a0 ", ""]
    text = "".join(rng.choice(pieces) + rng.choice(separators) for _ in range(40))
    spans = word_spans(text)
    assert all(0 <= a < b <= len(text) for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(spans))  # ordered, disjoint
    kept = "".join(text[a:b] for a, b in spans)
    assert kept == "".join(c for c in text if not (c.isspace() or unicodedata.category(c) in ("Cc", "Cf")))


def test_sentences_break_at_terminators_but_not_after_abbreviations_numbers_or_before_lowercase():
    text = 'Dr. Smith met J. Doe of the U.S. Army in 3.5 days. Why? "Because!" she said. It ended... Then more'
    assert sentences_of(text) == [
        ["Dr", ".", "Smith", "met", "J", ".", "Doe", "of", "the", "U", ".", "S", ".", "Army", "in", "3", ".", "5", "days", "."],
        ["Why", "?"],
        ['"', "Because", "!", '"', "she", "said", "."],
        ["It", "ended", ".", ".", "."],
        ["Then", "more"],
    ]


def test_a_blank_line_ends_a_sentence_and_a_single_newline_does_not():
    text = "First line\ncontinues here\n\nA heading\r\n\r\nBody text"
    assert sentences_of(text) == [["First", "line", "continues", "here"], ["A", "heading"], ["Body", "text"]]


def test_no_sentence_break_inside_a_mention():
    text = "They visited Yahoo! Japan last year."
    assert len(sentences_of(text)) == 2
    start = text.index("Yahoo")
    assert sentences_of(text, [(start, start + len("Yahoo! Japan"))]) == [words_of(text)]
    para = "Acme\n\nCorp is big."
    assert len(sentences_of(para)) == 2 and len(sentences_of(para, [(0, 10)])) == 1


def span(text: str, phrase: str, occurrence: int = 0) -> list[int]:
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(phrase, start + 1)
    return [start, start + len(phrase)]


def test_mentions_map_to_their_words_sentences_and_positions():
    text = "Alpha  works for Beta, Inc.\nin Zürich.\n\n«Beta» is in Gamma   City."
    doc = {"title": "t", "text": text, "entities": [
        {"name": "Alpha A.", "mentions": [span(text, "Alpha")], "type": "PER"},
        {"mentions": [span(text, "Beta, Inc."), span(text, "Beta", 1)]},
        {"mentions": [span(text, "Zürich")]},
        {"mentions": [span(text, "Gamma   City")]},
    ]}
    converted = text_to_docred(doc, 0)
    assert converted["sents"] == [
        ["Alpha", "works", "for", "Beta", ",", "Inc", ".", "in", "Zürich", "."],
        ["«", "Beta", "»", "is", "in", "Gamma", "City", "."],
    ]
    entities = converted["vertexSet"]
    assert entities[0] == [{"name": "Alpha", "sent_id": 0, "pos": [0, 1], "type": "PER"}]
    assert [(m["sent_id"], m["pos"], m["name"]) for m in entities[1]] == [(0, [3, 7], "Beta, Inc."), (1, [1, 2], "Beta")]
    assert (entities[2][0]["sent_id"], entities[2][0]["pos"]) == (0, [8, 9])
    assert (entities[3][0]["sent_id"], entities[3][0]["pos"], entities[3][0]["name"]) == (1, [5, 7], "Gamma   City")
    assert converted["entity_names"] == ["Alpha A.", "Beta, Inc.", "Zürich", "Gamma   City"]
    assert [text[a:b] for a, b in converted["sent_spans"]] == ["Alpha  works for Beta, Inc.\nin Zürich.",
                                                               "«Beta» is in Gamma   City."]
    validate_docred([converted], "x", None)


@pytest.mark.parametrize("seed", range(5))
def test_random_word_aligned_spans_map_back_to_exactly_their_words(seed):
    rng = random.Random(seed)
    pieces = ["Alpha", "works", "for", "Zürich", "(", "3.5", "!", "naïve", "東", "e\u0301", "Inc.", "?", "x"]
    text = "".join(rng.choice(pieces) + rng.choice([" ", "  ", "\n", "\n\n", "", "\t"]) for _ in range(60))
    spans = word_spans(text)
    chosen, taken = [], set()
    for _ in range(8):
        first = rng.randrange(len(spans))
        last = min(len(spans) - 1, first + rng.randrange(4))
        if taken.isdisjoint(range(first, last + 1)):  # two entities' mentions never share a word (refused)
            taken.update(range(first, last + 1))
            chosen.append([spans[first][0], spans[last][1]])
    doc = text_to_docred({"text": text, "entities": [{"mentions": [s]} for s in chosen]}, 3)
    assert doc["title"] == "document 3"
    for (start, end), entity in zip(chosen, doc["vertexSet"]):
        mention = entity[0]
        words = doc["sents"][mention["sent_id"]][mention["pos"][0] : mention["pos"][1]]
        assert words == words_of(text[start:end])
        assert mention["name"] == text[start:end]
        sent_start, sent_end = doc["sent_spans"][mention["sent_id"]]
        assert sent_start <= start < end <= sent_end
    assert sum(len(s) for s in doc["sents"]) == len(spans)


@pytest.mark.parametrize(("mentions", "message"), [
    ([[0, 3]], r"document 7 \('Doc'\): entities\[1\]\.mentions\[0\]: \[0, 3\] 'Alp' ends inside the word 'Alpha' at \[0, 5\]"),
    ([[1, 5]], r"entities\[1\]\.mentions\[0\]: \[1, 5\] 'lpha' begins inside the word 'Alpha'"),
    ([[0, 4]], r"ends inside the word 'Alpha'.*end exclusive"),  # the inclusive-end mistake
    ([[0, 6]], r"\[0, 6\] 'Alpha ' ends with whitespace"),
    ([[5, 11]], r"\[5, 11\] ' works' begins with whitespace"),
    ([[10, 99]], r"\[10, 99\] lies outside the text \(21 characters\)"),
    ([[-1, 3]], r"lies outside the text"),
    ([[4, 4]], r"lies outside the text .*or is empty"),
    ([[0, 5], [3]], r"entities\[1\]\.mentions\[1\]: must be \[char_start, char_end\]"),
    ([["0", "5"]], r"must be \[char_start, char_end\] \(two integers\)"),
    ([], r"entities\[1\]\.mentions: must be a non-empty list"),
])
def test_bad_spans_are_one_line_errors_naming_document_and_entity(mentions, message):
    doc = {"title": "Doc", "text": "Alpha works for Beta.", "entities": [{"mentions": [[16, 20]]}, {"mentions": mentions}]}
    with pytest.raises(DocreError, match=message) as error:
        text_to_docred(doc, 7, "in.jsonl")
    assert str(error.value).startswith("in.jsonl: document 7 ('Doc')") and "\n" not in str(error.value)


@pytest.mark.parametrize(("doc", "message"), [
    ([], r"document 2: a document must be a JSON object"),
    ({"text": "a b"}, r"document 2 \('document 2'\): entities: must be a non-empty list"),
    ({"text": "  ", "entities": [{"mentions": [[0, 1]]}]}, r"text: must be a non-empty string"),
    ({"text": 5, "entities": []}, r"text: must be a non-empty string"),
    # not blank to str.strip (U+200B is no whitespace), yet no word to put a mention on
    ({"text": "\u200b", "entities": [{"mentions": [[0, 1]]}]},
     r"document 2 \('document 2'\): text: has no words \(only spaces or invisible characters\)$"),
    ({"title": 1, "text": "a", "entities": []}, r"document 2: title: must be a string"),
    ({"text": "a b", "entities": ["a"]}, r"entities\[0\]: an entity must be a JSON object"),
    ({"text": "a b", "entities": [{"name": 3, "mentions": [[0, 1]]}]}, r"entities\[0\]\.name: must be a string"),
    ({"text": "a b", "entities": [{"type": [], "mentions": [[0, 1]]}]}, r"entities\[0\]\.type: must be a string"),
])
def test_malformed_documents_are_one_line_errors(doc, message):
    with pytest.raises(DocreError, match=message):
        text_to_docred(doc, 2)
