"""The HTML page of predictions (docre/html_view.py, `scripts/predict.py ... -o page.html`): parsed
with html.parser, every mention is a span of its entity's colour class inside its sentence, document
text is escaped, relations are marked correct / wrong / missed against the labels with their
evidence, the page needs no network; scripts/predict.py writes it atomically from the Predictor's
triples; and a real headless Chromium renders it and selects a clicked relation's head, tail and
evidence sentences."""

import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from docre import html_view
from docre.config import load_config
from docre.data.docred import parse_json_list, read_bytes
from docre.predict import Predictor, prepare_documents
from docre.trainer import train
from tests.conftest import FIXTURES, ROOT
from tests.test_predict import call

FIXTURE = FIXTURES / "docred_tiny.json"
REDOCRED_TEST = ROOT / "data" / "redocred" / "test_revised.json.gz"
VOID = {"meta", "br", "hr", "img", "input", "link"}

# a hand-made document: markup characters in the title and the words, a mention nested in another,
# two mentions with the same start, one mention crossing another, an entity with two mentions
DOC = {
    "title": 'Tom & "Jerry" <b>',
    "sents": [["Tom", "<b>", "met", "Jerry", "&", "Co", "."], ["He", "lives", "in", "New", "York", "City", "."]],
    "vertexSet": [
        [{"name": "Tom", "sent_id": 0, "pos": [0, 1], "type": "PER"}, {"name": "He", "sent_id": 1, "pos": [0, 1], "type": "PER"}],
        [{"name": 'Jerry & "Co"', "sent_id": 0, "pos": [3, 6], "type": "ORG"}],
        [{"name": "New York City", "sent_id": 1, "pos": [3, 6], "type": "LOC"}],
        [{"name": "New York", "sent_id": 1, "pos": [3, 5], "type": "LOC"}],
        [{"name": "Jerry", "sent_id": 0, "pos": [3, 4], "type": "PER"}],
        [{"name": "York City.", "sent_id": 1, "pos": [4, 7], "type": "MISC"}],  # crosses "New York": cut to "York"
    ],
    "labels": [{"h": 0, "t": 1, "r": "P108", "evidence": [0]}, {"h": 3, "t": 2, "r": "P131", "evidence": [1]}],
}
TRIPLES = [
    {"h_idx": 0, "h_name": "Tom", "t_idx": 1, "t_name": 'Jerry & "Co"', "r": "P108", "r_name": "employer", "score": 2.5,
     "h_sents": [0, 1], "t_sents": [0], "evidence": [0]},
    {"h_idx": 0, "h_name": "Tom", "t_idx": 2, "t_name": "New York City", "r": "P551", "r_name": "residence", "score": 0.75,
     "h_sents": [0, 1], "t_sents": [1], "evidence": [0, 1]},
]
REL_NAMES = {"P108": "employer", "P551": "residence", "P131": "located in the administrative territorial entity"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def find_all(self, tag: str | None = None, classes: set[str] = frozenset(), **attrs) -> list["Node"]:
        """Descendants in document order with that tag, all these classes and these attribute values."""
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if ((tag is None or child.tag == tag) and classes <= child.classes
                        and all(child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())):
                    found.append(child)
                found += child.find_all(tag, classes, **attrs)
        return found


class TreeBuilder(HTMLParser):
    """A strict tree: every end tag must close the innermost open element (no implied closing)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.top = Node("#root", {})

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.top)
        self.top.children.append(node)
        if tag not in VOID:
            self.top = node

    def handle_endtag(self, tag):
        assert self.top.tag == tag, f"</{tag}> closes <{self.top.tag}>"
        self.top = self.top.parent

    def handle_data(self, data):
        self.top.children.append(data)


def parse(page: str) -> Node:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.top is builder.root, f"<{builder.top.tag}> left open"
    return builder.root


def words_of(node: Node) -> str:
    return "".join(node.text().split())


def relation_rows(document: Node) -> list[dict]:
    """The relation table's rows as {"mark", "h", "t", "r", "evidence", "cells"}."""
    rows = []
    for row in document.find_all("tr", {"rel"}):
        cells = [cell.text() for cell in row.find_all("td")]
        kind = row.classes & {"correct", "wrong", "missed"}
        rows.append({"mark": kind.pop() if kind else "", "h": int(row.attrs["data-h"]), "t": int(row.attrs["data-t"]),
                     "r": row.find_all("td")[3].attrs["title"], "evidence": [int(s) for s in row.attrs["data-ev"].split()],
                     "cells": cells, "id": row.attrs["data-ref"], "predicted": "predicted" in row.classes})
    return rows


# ---------------------------------------------------------------------------------------------- the page
def test_document_text_and_names_are_escaped():
    """Markup characters in titles, words and entity names stay text: no element comes from them, and
    the parsed text equals the original."""
    root = parse(html_view.render_page([DOC], [TRIPLES], REL_NAMES, "model <run> & data"))
    assert root.find_all("title")[0].text() == "model <run> & data"
    assert root.find_all("b") == []
    document = root.find_all("details", {"doc"})[0]
    assert document.find_all("summary")[0].find_all("strong")[0].text() == DOC["title"]
    for s, sentence in enumerate(DOC["sents"]):
        node = document.find_all("span", {"s"}, data_s=str(s))[0]
        assert words_of(node) == str(s) + "".join(sentence)  # the sentence number, then every word
    jerry = document.find_all("span", {"m", "e1"})[0]
    assert jerry.attrs["title"] == 'Jerry & "Co" (ORG)' and jerry.text() == "Jerry & Co"
    heads = [row["cells"][2] for row in relation_rows(document)]
    assert heads[0] == "Tom" and relation_rows(document)[0]["cells"][4] == 'Jerry & "Co"'


def test_every_mention_is_a_span_of_its_entity_class_in_its_sentence():
    document = parse(html_view.render_page([DOC], [TRIPLES], REL_NAMES, "t"))
    mentions = document.find_all("span", {"m"})
    assert len(mentions) == sum(map(len, DOC["vertexSet"]))
    for e, entity in enumerate(DOC["vertexSet"]):
        spans = [span for span in mentions if f"e{e}" in span.classes]
        assert len(spans) == len(entity) and all(len(span.classes) == 2 for span in spans)  # "m" and its entity only
        for span, mention in zip(spans, entity):
            sentence = span
            while "s" not in sentence.classes:
                sentence = sentence.parent
            assert sentence.attrs["data-s"] == str(mention["sent_id"])
            start, end = mention["pos"]
            if e != 5:
                assert words_of(span) == "".join(DOC["sents"][mention["sent_id"]][start:end])
    # nesting: "Jerry" inside "Jerry & Co", "New York" inside "New York City"; the crossing mention is cut
    assert mentions[1].classes == {"m", "e1"} and mentions[2].parent is mentions[1]
    assert words_of(mentions[-1]) == "York" and mentions[-1].parent.classes == {"m", "e3"}


def test_entities_have_distinct_colours_and_one_colour_each():
    """One CSS rule per entity index; different entities of a document get different colours."""
    page = html_view.render_page([DOC], [TRIPLES], REL_NAMES, "t")
    style = parse(page).find_all("style")[0].text()
    colours = dict(re.findall(r"\.e(\d+) \{ background: ([^;]+); \}", style))
    assert sorted(map(int, colours)) == list(range(len(DOC["vertexSet"])))
    assert len(set(colours.values())) == len(colours)
    assert len({html_view.entity_colour(i) for i in range(42)}) == 42  # Re-DocRED's largest document


def test_predictions_are_marked_against_the_labels_and_missed_facts_listed():
    document = parse(html_view.render_page([DOC], [TRIPLES], REL_NAMES, "t")).find_all("details", {"doc"})[0]
    rows = relation_rows(document)
    assert [(row["mark"], row["h"], row["t"], row["r"], row["predicted"]) for row in rows] == [
        ("correct", 0, 1, "P108", True), ("wrong", 0, 2, "P551", True), ("missed", 3, 2, "P131", False)]
    assert [row["cells"][0] for row in rows] == ["\u2713 correct", "\u2717 wrong", "missed"]
    assert [row["cells"][1] for row in rows] == ["2.50", "0.75", ""]  # a missed fact has no score
    assert rows[2]["cells"][3] == REL_NAMES["P131"] and rows[2]["cells"][2] == "New York"
    assert "1 correct, 1 wrong, 1 missed" in document.find_all("summary")[0].text()
    assert len({row["id"] for row in rows}) == 3


def test_the_score_column_is_explained():
    """The page says what a score is (a margin past the decision threshold, not a probability), above
    the documents and on the column's header."""
    root = parse(html_view.render_page([DOC], [TRIPLES], REL_NAMES, "t"))
    legend = root.find_all("p", id="score-note")[0].text()
    assert legend.startswith("Score: how far the relation's logit lies past the model's decision threshold")
    assert "not a probability" in legend and "above 0" in legend and "missed facts have none" in legend
    header = next(th for th in root.find_all("th") if th.text() == "score")
    assert header.attrs["title"] == legend.removeprefix("Score: ")


def test_evidence_is_listed_predicted_for_predictions_gold_for_missed_facts():
    rows = relation_rows(parse(html_view.render_page([DOC], [TRIPLES], REL_NAMES, "t")))
    assert [row["evidence"] for row in rows] == [[0], [0, 1], [1]]
    assert [row["cells"][5] for row in rows] == ["0", "0, 1", "1"]


def test_unlabelled_documents_get_no_marks():
    unlabelled = {k: v for k, v in DOC.items() if k != "labels"}
    document = parse(html_view.render_page([unlabelled], [TRIPLES], REL_NAMES, "t"))
    rows = relation_rows(document)
    assert [(row["mark"], row["predicted"], row["cells"][0]) for row in rows] == [("", True, "")] * 2
    assert "correct" not in document.find_all("summary")[0].text()
    # labelled with no facts: every prediction is wrong
    rows = relation_rows(parse(html_view.render_page([{**DOC, "labels": []}], [TRIPLES], REL_NAMES, "t")))
    assert [row["mark"] for row in rows] == ["wrong", "wrong"]


def test_raw_text_documents_show_their_given_entity_names():
    [doc] = prepare_documents([{"title": "raw", "text": "Ann met Bob. Bob left.",
                                "entities": [{"name": "Ann <A>", "mentions": [[0, 3]]}, {"mentions": [[8, 11], [13, 16]]}]}])
    triple = {"h_idx": 0, "h_name": "Ann <A>", "t_idx": 1, "t_name": "Bob", "r": "P26", "r_name": "spouse", "score": 1.0,
              "h_sents": [0], "t_sents": [0, 1], "evidence": []}
    document = parse(html_view.render_page([doc], [[triple]], {}, "t"))
    assert [span.attrs["title"] for span in document.find_all("span", {"m"})] == ["Ann <A>", "Bob", "Bob"]
    assert [words_of(node) for node in document.find_all("span", {"s"})] == ["0AnnmetBob.", "1Bobleft."]
    assert relation_rows(document)[0]["cells"][2:5] == ["Ann <A>", "spouse", "Bob"]


def test_entities_docre_made_are_said_so_and_fewer_than_two_are_one_line():
    grouped, lonely = prepare_documents([
        {"title": "g", "text": "Ann met Bob. Bob left.", "mentions": [[0, 3], [8, 11], [13, 16]]},
        {"title": "one", "text": "Ann & co.", "mentions": [[0, 3]]}])
    page = html_view.render_page([grouped, lonely], [[], []], {}, "t")
    assert page.count('<p class="note">Entities grouped by docre from the given mentions.</p>') == 2
    assert '<p class="note">Only one entity (Ann): a relation needs two.</p>' in page
    assert page.count("<table") == 1  # the document of two entities keeps its (empty) table
    found = {**grouped, "vertexSet": [], "entity_names": [], "entities": [], "entities_by": "en_core_web_<sm>"}
    page = html_view.render_page([found], [[]], {}, "t")
    assert "found by the spaCy pipeline en_core_web_&lt;sm&gt; and grouped by docre" in page
    assert '<p class="note">No entity found in this text, so no relations.</p>' in page and "<table" not in page
    assert [words_of(node) for node in parse(page).find_all("span", {"s"})] == ["0AnnmetBob.", "1Bobleft."]  # the text stays


def test_the_page_works_offline():
    """No external resource: no src or href attribute, no link element; the script and style are inline."""
    root = parse(html_view.render_page([DOC], [TRIPLES], REL_NAMES, "t"))
    nodes = root.find_all()
    assert not [node.tag for node in nodes if "src" in node.attrs or "href" in node.attrs or node.tag == "link"]
    assert len(root.find_all("script")) == 1 and len(root.find_all("style")) == 1


def test_hundreds_of_real_documents_give_a_collapsed_page_with_every_mention():
    """500 Re-DocRED test documents (gold facts as predictions): rendered fast, every document a closed
    section, every mention of every document highlighted in its sentence."""
    docs = parse_json_list(REDOCRED_TEST, read_bytes(REDOCRED_TEST))
    triples = [[{"h_idx": f["h"], "t_idx": f["t"], "r": f["r"], "r_name": f["r"], "score": 1.0, "evidence": f["evidence"]}
                for f in doc["labels"]] for doc in docs]
    started = time.perf_counter()
    page = html_view.render_page(docs, triples, {}, "Re-DocRED test")
    assert time.perf_counter() - started < 5 and len(page) < 20_000_000
    root = parse(page)
    sections = root.find_all("details", {"doc"})
    assert len(sections) == 500 and not any("open" in section.attrs for section in sections)
    for doc, section in zip(docs, sections):
        assert len(section.find_all("span", {"m"})) == sum(map(len, doc["vertexSet"]))
        assert {row["mark"] for row in relation_rows(section)} <= {"correct"}


# ---------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def run_dir(tiny_backbone, tmp_path_factory) -> Path:
    """configs/smoke.yaml as a DREEAM model trained for 3 steps: it predicts evidence sentences."""
    out = tmp_path_factory.mktemp("html_runs")
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={tiny_backbone}", f"output_dir={out}",
                                                    "train.max_steps=3", "model.name=dreeam", "model.evidence_threshold=0.3"])
    return Path(train(cfg)["run_dir"])


@pytest.fixture(scope="module")
def page(run_dir, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("html_page") / "page.html"


def test_cli_writes_the_predictors_triples_as_one_page(run_dir, page, capsys):
    status, out, _ = call("scripts/predict", [run_dir, FIXTURE, "-o", page], capsys)
    assert status == 0 and "-> " in out
    assert sorted(p.name for p in page.parent.iterdir()) == ["page.html"]  # written atomically, nothing left over
    docs = json.loads(FIXTURE.read_text())
    triples = Predictor.from_pretrained(run_dir, device="cpu").predict(docs)
    sections = parse(page.read_text()).find_all("details", {"doc"})
    assert [section.find_all("strong")[0].text() for section in sections] == [doc["title"] for doc in docs]
    for doc, doc_triples, section in zip(docs, triples, sections):
        rows = relation_rows(section)
        predicted = [(row["h"], row["t"], row["r"], row["evidence"]) for row in rows if row["predicted"]]
        assert predicted == [(t["h_idx"], t["t_idx"], t["r"], t["evidence"]) for t in doc_triples]
        gold = {(f["h"], f["t"], f["r"]) for f in doc["labels"]}
        for row in rows:
            assert row["mark"] == ("missed" if not row["predicted"] else "correct" if (row["h"], row["t"], row["r"]) in gold
                                   else "wrong")
        assert {(row["h"], row["t"], row["r"]) for row in rows if row["mark"] in ("correct", "missed")} == gold
    assert any(row["evidence"] for section in sections for row in relation_rows(section) if row["predicted"])


def test_cli_names_html_among_the_outputs(run_dir, tmp_path, capsys):
    status, _, err = call("scripts/predict", [run_dir, FIXTURE, "-o", tmp_path / "page.htm"], capsys)
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert re.search(r"page\.htm: the output must end in \.jsonl, \.json, \.zip, \.html", err)


# ---------------------------------------------------------------------------------------------- a real browser
def dump_dom(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran, from headless Chromium."""
    result = subprocess.run(["chromium", "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
                             "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="needs Debian's chromium (apt-get install chromium; DOCRE_BROWSER=1 bash scripts/setup.sh)")
def test_chromium_renders_the_page_and_a_click_selects_head_tail_and_evidence(run_dir, page, tmp_path, capsys):
    """The page's own script clicks the relation named in the URL's hash (#d{doc}r{row}); the DOM
    Chromium dumps shows the selection: the row, the head's and the tail's mentions, the evidence
    sentences, and nothing else."""
    if not page.exists():
        assert call("scripts/predict", [run_dir, FIXTURE, "-o", page], capsys)[0] == 0
    static = parse(page.read_text())
    rows = [(d, row) for d, section in enumerate(static.find_all("details", {"doc"}))
            for row in relation_rows(section) if row["predicted"] and row["evidence"]]
    d, target = rows[0]  # the first prediction with evidence
    dom = parse(dump_dom(f"{page.as_uri()}#{target['id']}", tmp_path / "profile"))
    sections = dom.find_all("details", {"doc"})
    assert len(sections) == 3 and [("open" in s.attrs) for s in sections] == [i == d for i in range(3)]
    assert re.fullmatch(r"3 documents, \d+ predicted relations \(\d+ correct, \d+ wrong\), \d+ gold relations missed",
                        dom.find_all(id="totals")[0].text())
    section = sections[d]
    assert [row.attrs["data-ref"] for row in dom.find_all("tr", {"sel"})] == [target["id"]]
    for e, entity in enumerate(json.loads(FIXTURE.read_text())[d]["vertexSet"]):
        spans = section.find_all("span", {"m", f"e{e}"})
        assert len(spans) == len(entity)  # every mention highlighted in its entity's colour class
        assert all(("sel-h" in s.classes) == (e == target["h"]) and ("sel-t" in s.classes) == (e == target["t"]) for s in spans)
    selected = [int(s.attrs["data-s"]) for s in section.find_all("span", {"s", "sel-ev"})]
    assert selected == target["evidence"]
    assert "selecting" in section.classes
    assert all(not (n.classes & {"sel", "sel-h", "sel-t", "sel-ev"}) for s in sections if s is not section for n in s.find_all())


def test_the_summary_line_counts_entities_in_words_that_agree():
    lonely = {"title": "t", "sents": [["Alpha", "works", "."]], "vertexSet": [[{"name": "Alpha", "sent_id": 0, "pos": [0, 1]}]]}
    assert "1 entity &middot; 0 predicted" in html_view.document_html(0, lonely, [], {})
    two = {**lonely, "vertexSet": lonely["vertexSet"] * 2}
    assert "2 entities &middot;" in html_view.document_html(0, two, [], {})
