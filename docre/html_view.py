"""One self-contained HTML page showing what a model found in a set of documents
(`python scripts/predict.py MODEL INPUT -o page.html`).

Each document is a collapsible section (`<details>`, so a page of a few hundred documents opens
fast): its text with every entity mention highlighted in the entity's colour, and a table of the
predicted relations (head, relation, tail, score, evidence sentences). Clicking a relation marks its
head and tail mentions and its evidence sentences. For labelled documents, each prediction is marked
correct or wrong against the gold facts, and the gold facts the model missed follow as rows of their
own. The CSS and JavaScript are inline: the page opens offline, from a file. For plain text whose
entities docre found (or grouped from the given mentions) a line says so, and a text with fewer than
two entities says that in one line instead of an empty table.

The page is written in three parts (`page_start`, one `document_html` per document, `page_end`) so
the command line can stream it while predicting; `render_page` joins them.
"""

from html import escape

from docre.utils import plural

# Words printed without the space before or after them, so "Paris , France ." reads "Paris, France."
NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "}", "%", "'s", "n't", "'"}
NO_SPACE_AFTER = {"(", "[", "{", "$"}

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { font-size: 1.3em; }
summary { cursor: pointer; padding: .3em 0; }
details.doc { border-top: 1px solid #ddd; }
.text { line-height: 1.9; }
.s sup { color: #999; font-size: 70%; margin-right: .2em; }
.m { border-radius: 3px; padding: 0 1px; }
.s.sel-ev { background: #fff3b0; box-shadow: 0 0 0 2px #f0d000; }
.selecting .m:not(.sel-h):not(.sel-t) { background: none; }
.m.sel-h { outline: 2px solid #c0392b; font-weight: bold; }
.m.sel-t { outline: 2px dashed #1f5fbf; font-weight: bold; }
table.rels { border-collapse: collapse; font-size: 90%; }
table.rels td, table.rels th { padding: .15em .6em; text-align: left; }
tr.rel { cursor: pointer; }
tr.rel:hover { background: #f3f3f3; }
tr.rel.sel { background: #e4ecfa; }
.mark { font-weight: bold; }
.correct .mark { color: #1e8449; }
.wrong .mark { color: #c0392b; }
.missed { color: #777; }
.missed .mark { color: #b9770e; }
.note { color: #555; font-style: italic; }
"""

SCRIPT = """
function select(row) {
  var doc = row.closest('.doc'), again = row.classList.contains('sel');
  doc.querySelectorAll('.sel, .sel-h, .sel-t, .sel-ev').forEach(function (el) {
    el.classList.remove('sel', 'sel-h', 'sel-t', 'sel-ev');
  });
  doc.classList.toggle('selecting', !again);
  if (again) return;  // a second click on the selected relation clears the marks
  row.classList.add('sel');
  doc.querySelectorAll('.m.e' + row.dataset.h).forEach(function (el) { el.classList.add('sel-h'); });
  doc.querySelectorAll('.m.e' + row.dataset.t).forEach(function (el) { el.classList.add('sel-t'); });
  row.dataset.ev.split(' ').filter(Boolean).forEach(function (s) {
    var sentence = doc.querySelector('.s[data-s="' + s + '"]');
    if (sentence) sentence.classList.add('sel-ev');
  });
}
document.addEventListener('click', function (event) {
  var row = event.target.closest('tr.rel');
  if (row) select(row);
});
var count = function (kind) { return document.querySelectorAll('tr.rel.' + kind).length; };
var totals = document.querySelectorAll('details.doc').length + ' documents, ' + count('predicted') + ' predicted relations';
if (document.querySelector('tr.rel.correct, tr.rel.wrong, tr.rel.missed'))  // some documents have gold labels
  totals += ' (' + count('correct') + ' correct, ' + count('wrong') + ' wrong), ' + count('missed') + ' gold relations missed';
document.getElementById('totals').textContent = totals;
// a link to #d3 opens document 3; #d3r0 also selects its first relation (the browser test uses it). Rows
// carry data-ref, not an id, so the browser does not scroll to the row itself: the text stays in view.
var ref = location.hash.slice(1);
var row = ref && document.querySelector('tr.rel[data-ref="' + CSS.escape(ref) + '"]');
var section = row ? row.closest('details.doc') : ref && document.getElementById(ref);
if (section && section.matches('details.doc')) {
  section.open = true;
  if (row) row.click();
  if (section.getBoundingClientRect().top > innerHeight) section.scrollIntoView();
}
"""


# What the score column holds (docre.predict.decision_scores), said above the documents and on the column's header
SCORE_NOTE = ("how far the relation's logit lies past the model's decision threshold (for ATL, ATGL and the other "
              "threshold-class losses, the logit of the threshold class): above 0 for every predicted relation, and "
              "the higher, the surer the model; a difference of logits, not a probability; missed facts have none.")


def entity_colour(index: int) -> str:
    """A background colour per entity index: hues a golden angle apart, so neighbours differ most."""
    return f"hsl({round(index * 137.508) % 360}, 75%, 82%)"


def page_start(docs: list[dict], title: str) -> str:
    """The page up to its first document: head, style (a colour class per entity index) and title."""
    most = max((len(doc["vertexSet"]) for doc in docs), default=0)
    colours = "".join(f".e{i} {{ background: {entity_colour(i)}; }}\n" for i in range(most))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{STYLE}{colours}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n"
            '<p id="totals"></p>\n<p>Click a relation to mark its head (solid), tail (dashed) and evidence sentences.</p>\n'
            f'<p id="score-note">Score: {escape(SCORE_NOTE)}</p>\n')


def page_end() -> str:
    return f"<script>{SCRIPT}</script>\n</body>\n</html>\n"


def render_page(docs: list[dict], triples: list[list[dict]], rel_names: dict[str, str], title: str) -> str:
    """The whole page for DocRED-format documents and their triples (`Predictor.predict`)."""
    parts = [document_html(i, doc, doc_triples, rel_names) for i, (doc, doc_triples) in enumerate(zip(docs, triples))]
    return page_start(docs, title) + "".join(parts) + page_end()


def document_html(index: int, doc: dict, triples: list[dict], rel_names: dict[str, str]) -> str:
    """One document as a `<details id="d{index}">` section: its highlighted text and its relations."""
    rows = relation_rows(doc, triples, rel_names)
    marks = [row["mark"] for row in rows]
    counts = (f": {marks.count('correct')} correct, {marks.count('wrong')} wrong, {marks.count('missed')} missed"
              if "labels" in doc else "")
    names = doc.get("entity_names") or [entity[0]["name"] for entity in doc["vertexSet"]]
    table = "".join(_row_html(f"d{index}r{i}", row, names) for i, row in enumerate(rows))
    relations = (f'<table class="rels">\n<tr><th></th><th title="{escape(SCORE_NOTE)}">score</th><th>head</th><th>relation</th>'
                 f"<th>tail</th><th>evidence</th></tr>\n{table}</table>\n")
    if len(doc["vertexSet"]) < 2 and not rows:
        relations = f'<p class="note">{_few_entities(doc, names)}</p>\n'
    return (f'<details class="doc" id="d{index}">\n<summary><strong>{escape(doc["title"])}</strong> &middot; '
            f'{plural(len(doc["vertexSet"]), "entity", "entities")} &middot; {len(triples)} predicted{counts}</summary>\n'
            f"{_entities_by(doc)}"
            f'<p class="text">{_text_html(doc, names)}</p>\n{relations}</details>\n')


def _entities_by(doc: dict) -> str:
    """The line saying who made the entities, for raw text that gave none ("" otherwise)."""
    made_by = doc.get("entities_by")
    if made_by is None:
        return ""
    if made_by == "mentions":
        return '<p class="note">Entities grouped by docre from the given mentions.</p>\n'
    return f'<p class="note">Entities found by the spaCy pipeline {escape(made_by)} and grouped by docre.</p>\n'


def _few_entities(doc: dict, names: list[str]) -> str:
    """One line for a document with fewer than two entities: a relation needs two."""
    if not doc["vertexSet"]:
        return "No entity found in this text, so no relations." if "entities_by" in doc else "No entities, so no relations."
    return f"Only one entity ({escape(names[0])}): a relation needs two."


def relation_rows(doc: dict, triples: list[dict], rel_names: dict[str, str]) -> list[dict]:
    """The table rows: each predicted triple, marked "correct" or "wrong" against the document's gold
    labels ("" without labels), then each gold fact not predicted, marked "missed" (its gold evidence)."""
    gold = {(fact["h"], fact["t"], fact["r"]): fact.get("evidence", []) for fact in doc.get("labels", [])}
    labelled = "labels" in doc
    rows, found = [], set()
    for triple in triples:
        key = (triple["h_idx"], triple["t_idx"], triple["r"])
        rows.append({**triple, "mark": ("correct" if key in gold else "wrong") if labelled else ""})
        found.add(key)
    rows += [{"h_idx": h, "t_idx": t, "r": r, "r_name": rel_names.get(r, r), "score": None, "evidence": evidence,
              "mark": "missed"}
             for (h, t, r), evidence in gold.items() if (h, t, r) not in found]
    return rows


def _row_html(ref: str, row: dict, names: list[str]) -> str:
    """A table row; its data attributes tell the page's script what to mark when it is clicked."""
    mark = {"correct": "&#10003; correct", "wrong": "&#10007; wrong", "missed": "missed", "": ""}[row["mark"]]
    kind = "missed" if row["mark"] == "missed" else f"predicted {row['mark']}".strip()
    score = "" if row["score"] is None else f"{row['score']:.2f}"
    head, tail = row["h_idx"], row["t_idx"]
    evidence = " ".join(map(str, row["evidence"]))
    return (f'<tr class="rel {kind}" data-ref="{ref}" data-h="{head}" data-t="{tail}" data-ev="{evidence}">'
            f'<td class="mark">{mark}</td><td>{score}</td><td><span class="e{head}">{escape(names[head])}</span></td>'
            f'<td title="{escape(row["r"])}">{escape(row["r_name"])}</td>'
            f'<td><span class="e{tail}">{escape(names[tail])}</span></td><td>{evidence.replace(" ", ", ")}</td></tr>\n')


def _text_html(doc: dict, names: list[str]) -> str:
    """The document's sentences, each a `<span class="s" data-s="{id}">`, with every mention a
    `<span class="m e{entity}">` (nested where mentions nest)."""
    mentions = [[] for _ in doc["sents"]]  # per sentence: (start, end, entity)
    for entity, vertex in enumerate(doc["vertexSet"]):
        for mention in vertex:
            mentions[mention["sent_id"]].append((mention["pos"][0], mention["pos"][1], entity))
    types = [vertex[0].get("type", "") for vertex in doc["vertexSet"]]
    labels = [escape(f"{name} ({kind})" if kind else name) for name, kind in zip(names, types)]
    sentences = (f'<span class="s" data-s="{i}"><sup>{i}</sup>{_sentence_html(words, mentions[i], labels)}</span>'
                 for i, words in enumerate(doc["sents"]))
    return " ".join(sentences)


def _sentence_html(words: list[str], mentions: list[tuple[int, int, int]], labels: list[str]) -> str:
    """Words joined with spaces, mention spans opened and closed around them. Spans must nest in
    HTML: a mention that starts inside another and ends after it is cut at the other's end."""
    starts: dict[int, list[tuple[int, int]]] = {}
    for start, end, entity in sorted(mentions, key=lambda m: (m[0], -m[1], m[2])):  # the longer one opens first
        starts.setdefault(start, []).append((end, entity))
    open_ends: list[int] = []
    parts = []
    for i, word in enumerate(words):
        if i and word not in NO_SPACE_BEFORE and words[i - 1] not in NO_SPACE_AFTER:
            parts.append(" ")
        for end, entity in starts.get(i, []):
            open_ends.append(min([end, *open_ends]))  # cut to the enclosing mention
            parts.append(f'<span class="m e{entity}" title="{labels[entity]}">')
        parts.append(escape(word))
        while open_ends and open_ends[-1] <= i + 1:
            open_ends.pop()
            parts.append("</span>")
    return "".join(parts) + "</span>" * len(open_ends)  # none left open in validated documents
