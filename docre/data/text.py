"""Raw text with entity mentions given as character spans -> DocRED-format documents.

Input, one JSON object per document:
    {"text": str, "title": str (optional),
     "entities": [{"name": str (optional), "type": str (optional), "mentions": [[char_start, char_end], ...]}]}
Offsets are Python string indices (Unicode code points), `char_end` exclusive: text[start:end] is
the mention.

docre's own tokenizer, deterministic and with no model or language data behind it:
* words: a run of letters, digits and combining marks is one word; every other visible character
  (punctuation, symbol, emoji, a CJK ideograph) is a word of its own; whitespace and invisible
  format characters (zero-width space, BOM, soft hyphen) separate words and are dropped. Every word
  is the exact substring text[start:end], so each mention maps to whole words or is refused.
* sentences: a blank line always ends one; otherwise a sentence ends after ". ! ? 。 ！ ？ …"
  (plus closing quotes or brackets) when whitespace follows and the next word does not begin with
  a lowercase letter, except after an abbreviation (a single letter, as in "J. Smith" or "U.S.",
  or one of ABBREVIATIONS). A sentence never ends inside a mention. Sentences only number the
  mentions in the output; the model reads the words the same way wherever they break.

Splitting finer than a linguistic tokenizer ("U.S." -> U . S .) is deliberate: it never makes a
correct span cut a word, and BERT-style word-piece tokenizers split punctuation the same way.

A document without entities has them made for it (`docre.data.entities`: grouped from the user's
own mentions, or found by a spaCy pipeline, whose sentences then replace the splitter's); it comes
here as `FoundEntities`, already on whole words and without overlaps.
"""

import bisect
import unicodedata
from dataclasses import dataclass

from docre.errors import DocreError, did_you_mean

TERMINATORS = frozenset(".!?。！？…")
CLOSERS = frozenset(")]}\"'”’»」』")
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc inc ltd co corp no gen col lt sgt capt mt fig approx dept est "  # noqa: SIM905 (words)
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)


@dataclass
class FoundEntities:
    """The entities docre made for a raw-text document that gave none (docre.data.entities)."""

    entities: list[dict]  # [{"name", "type", "mentions": [[start, end], ...]}]: whole words, no word in two entities
    by: str  # "mentions" (the document's own mentions, grouped) or the name of the spaCy pipeline that found them
    sentence_chars: list[int] | None = None  # where the pipeline's sentences begin; None: docre's splitter


def _is_word_char(char: str) -> bool:
    # letters, digits and combining marks (a decomposed "é" is "e" + U+0301 and stays one word)
    return char.isalnum() or unicodedata.category(char).startswith("M")


def _is_cjk(char: str) -> bool:
    """CJK ideographs are written without spaces: each is a word (as BERT's basic tokenizer does)."""
    code = ord(char)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2FA1F
            or 0xF900 <= code <= 0xFAFF)


def _is_separator(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf")


def word_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) character spans of the words of `text`, in order."""
    spans, start = [], None
    for i, char in enumerate(text):
        if _is_word_char(char) and not _is_cjk(char):
            if start is None:
                start = i
            continue
        if start is not None:
            spans.append((start, i))
            start = None
        if not _is_separator(char):
            spans.append((i, i + 1))
    if start is not None:
        spans.append((start, len(text)))
    return spans


def sentence_starts(text: str, words: list[tuple[int, int]], protected: list[tuple[int, int]] = ()) -> list[int]:
    """Indices of the words that begin a sentence (always 0 first, if there are words).

    Args:
        words: the word spans of `text` (`word_spans`).
        protected: character spans (mentions) no sentence boundary may fall inside.
    """
    def inside_mention(left: int, right: int) -> bool:  # a break between words `left` and `right`
        return any(start < words[right][0] and end > words[left][1] for start, end in protected)

    starts = [0] if words else []
    i = 0
    while i < len(words) - 1:
        gap = text[words[i][1] : words[i + 1][0]]
        last = i
        if text[words[i][0] : words[i][1]] in TERMINATORS:
            # a run of terminators and closers ("?!", '."', "...)") ends together
            while (last + 1 < len(words) and words[last + 1][0] == words[last][1]
                   and text[words[last + 1][0]] in TERMINATORS | CLOSERS):
                last += 1
            if last + 1 < len(words) and _ends_sentence(text, words, i, last) and not inside_mention(last, last + 1):
                starts.append(last + 1)
                i = last + 1
                continue
        if gap.count("\n") >= 2 and not inside_mention(i, i + 1):  # a blank line: a new paragraph
            starts.append(i + 1)
        i += 1
    return starts


def _ends_sentence(text: str, words: list[tuple[int, int]], first: int, last: int) -> bool:
    """Whether the terminator run words[first..last] ends a sentence."""
    after = text[words[last][1] : words[last + 1][0]]
    if not after or not all(_is_separator(c) for c in after):
        return False  # "3.5", "e.g.x": no whitespace after the terminator
    following = text[words[last + 1][0]]
    if following.islower():
        return False
    if text[words[first][0]] == "." and first > 0 and words[first - 1][1] == words[first][0]:
        previous = text[words[first - 1][0] : words[first - 1][1]]
        if (len(previous) == 1 and previous.isalpha()) or previous.lower() in ABBREVIATIONS:
            return False
    return True


def sentence_starts_at(words: list[tuple[int, int]], chars: list[int], protected: list[tuple[int, int]] = ()) -> list[int]:
    """Indices of the words that begin a sentence, where a pipeline's sentences begin (`chars`, character
    offsets): the first word at or after each offset, unless that word only continues one cut there
    (a pipeline token inside one of docre's words), and never inside a mention (`protected`)."""
    word_starts = [start for start, _ in words]
    starts = {0} if words else set()
    for char in chars:
        w = bisect.bisect_left(word_starts, char)
        if 0 < w < len(words) and not (words[w - 1][1] > char) and not any(
                start < words[w][0] and end > words[w - 1][1] for start, end in protected):
            starts.add(w)
    return sorted(starts)


def text_to_docred(doc, index: int, source: str = "input", found: FoundEntities | None = None) -> dict:
    """One raw-text document -> a DocRED-format document.

    The result also carries "entity_names" (the given names, else the first mention's text) and
    "sent_spans", the [start, end) character span of each sentence, so that sentence ids in
    predictions can be traced back to the text. With `found` (the entities docre made for a document
    that gave none), it also carries them as "entities" (character spans, in vertexSet order) and
    "entities_by" (`found.by`); then no entity at all is no error: the document has no relations.

    Raises:
        DocreError: one line naming `source`, the document (index and title), the entity and the
            field, for a malformed document or a mention span outside the text or cutting a word.
    """
    where, title, text = check_text_document(doc, index, source)
    entities = found.entities if found else doc.get("entities")
    if found is None and (not isinstance(entities, list) or not entities):
        raise DocreError(f"{where}: entities: must be a non-empty list of entities, each given by its mentions' character "
                         'spans (or leave entities out and have docre find them: pip install "docre[text]"; '
                         f"{PLAIN_TEXT_DOCS})")
    words = word_spans(text)
    if not words:
        raise DocreError(f"{where}: text: has no words (only spaces or invisible characters)")
    word_at_start = {start: w for w, (start, _) in enumerate(words)}
    word_at_end = {end: w for w, (_, end) in enumerate(words)}
    mentions = []  # per entity: [(first word, last word, start, end), ...]
    for e, entity in enumerate(entities):
        field = f"{where}: entities[{e}]"
        if not isinstance(entity, dict):
            raise DocreError(f"{field}: an entity must be a JSON object")
        for key in ("name", "type"):
            if key in entity and not isinstance(entity[key], str):
                raise DocreError(f"{field}.{key}: must be a string")
        spans = entity.get("mentions")
        if not isinstance(spans, list) or not spans:
            raise DocreError(f"{field}.mentions: must be a non-empty list of [char_start, char_end] spans")
        found_spans = []
        for m, span in enumerate(spans):
            found_spans.append(locate_span(span, text, words, word_at_start, word_at_end, f"{field}.mentions[{m}]"))
        mentions.append(found_spans)
    _check_no_overlap(mentions, text, where)

    protected = [(start, end) for spans in mentions for _, _, start, end in spans]
    if found is not None and found.sentence_chars is not None:
        starts = sentence_starts_at(words, found.sentence_chars, protected)
    else:
        starts = sentence_starts(text, words, protected)
    stops = starts[1:] + [len(words)]
    sentence_of = [0] * len(words)
    for s, (first, stop) in enumerate(zip(starts, stops)):
        sentence_of[first:stop] = [s] * (stop - first)
    sents = [[text[a:b] for a, b in words[first:stop]] for first, stop in zip(starts, stops)]
    vertex_set = []
    for entity, spans in zip(entities, mentions):
        vertex_set.append([
            {"name": text[start:end], "sent_id": sentence_of[first],
             "pos": [first - starts[sentence_of[first]], last + 1 - starts[sentence_of[first]]],
             "type": entity.get("type", "")}
            for first, last, start, end in spans
        ])
    # the names predictions show: the given one, else the first mention's text (as DocRED's first mention name)
    names = [entity.get("name", vertex[0]["name"]) for entity, vertex in zip(entities, vertex_set)]
    sent_spans = [[words[first][0], words[stop - 1][1]] for first, stop in zip(starts, stops)]
    made = {"entities": entities, "entities_by": found.by} if found else {}
    return {"title": title, "sents": sents, "vertexSet": vertex_set, "entity_names": names, "sent_spans": sent_spans} | made


PLAIN_TEXT_DOCS = "docs/predict.md#plain-text"


def check_text_document(doc, index: int, source: str) -> tuple[str, str, str]:
    """(where, title, text) of a raw-text document: `where` names the source, the document and its
    title for error messages; a DocreError if it is no JSON object, or its title or text is wrong."""
    where = f"{source}: document {index}"
    if not isinstance(doc, dict):
        raise DocreError(f"{where}: a document must be a JSON object, got {type(doc).__name__}")
    title = doc.get("title", f"document {index}")
    if not isinstance(title, str):
        raise DocreError(f"{where}: title: must be a string")
    where = f"{where} ({title!r})"
    text = doc.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DocreError(f"{where}: text: must be a non-empty string")
    return where, title, text


def _check_no_overlap(mentions: list[list[tuple[int, int, int, int]]], text: str, where: str) -> None:
    """Refuse a stretch of text marked as mentions of two entities ("Toyota" inside "Toyota City",
    as marking names by string search does): each word belongs to one entity's mention."""
    spans = sorted((start, end, e, m) for e, found in enumerate(mentions) for m, (_, _, start, end) in enumerate(found))
    for i, (start, end, e, m) in enumerate(spans):
        for j in range(i + 1, len(spans)):
            start2, end2, e2, m2 = spans[j]
            if start2 >= end:
                break  # sorted by start: no later span begins inside this one
            if e2 == e:
                continue
            raise DocreError(
                f"{where}: entities[{e}].mentions[{m}] [{start}, {end}] {text[start:end]!r} and entities[{e2}].mentions[{m2}] "
                f"[{start2}, {end2}] {text[start2:end2]!r} overlap; a word can be a mention of one entity only "
                "(drop the shorter span if it was found inside a longer name)")


def locate_span(span, text: str, words: list[tuple[int, int]], word_at_start: dict, word_at_end: dict, field: str):
    """A mention's (first word, last word, start, end), or a DocreError naming `field` and saying what is wrong."""
    if not (isinstance(span, list) and len(span) == 2 and all(type(x) is int for x in span)):
        raise DocreError(f"{field}: must be [char_start, char_end] (two integers), got {span!r}")
    start, end = span
    if not 0 <= start < end <= len(text):
        raise DocreError(
            f"{field}: [{start}, {end}] lies outside the text ({len(text)} characters) or is empty; "
            "spans are [start, end) with end exclusive"
        )
    for position, edge, index in ((start, "begins", word_at_start), (end, "ends", word_at_end)):
        if position in index:
            continue
        cut = next((w for w in words if w[0] < position < w[1]), None)
        if cut is not None:
            raise DocreError(
                f"{field}: [{start}, {end}] {text[start:end]!r} {edge} inside the word {text[cut[0]:cut[1]]!r} at "
                f"[{cut[0]}, {cut[1]}]; a mention must cover whole words (spans are [start, end), end exclusive)"
            )
        raise DocreError(f"{field}: [{start}, {end}] {text[start:end]!r} {edge} with whitespace; trim the span to its words")
    return word_at_start[start], word_at_end[end], start, end


def annotated_to_docred(record, index: int, source: str = "input", rel2id: dict[str, int] | None = None) -> dict:
    """A user's annotated document -> a DocRED-format training document {"title", "sents", "vertexSet",
    "labels"} (docre-convert). The record is raw text with its entities (`text_to_docred`, the same
    checks) and, optionally, "relations": [{"head": entity index, "tail": entity index, "type": relation
    id}, ...], each a label with no evidence (sentence ids depend on docre's sentence split, which the
    annotator did not see). Without "relations" the document has no labels (a file to predict on).

    Raises:
        DocreError: one line naming `source`, the document and the entity or relation.
    """
    doc = text_to_docred(record, index, source)
    converted = {key: doc[key] for key in ("title", "sents", "vertexSet")}
    if "relations" not in record:
        return converted
    where = f"{source}: document {index} ({doc['title']!r})"
    relations, count = record["relations"], len(doc["vertexSet"])
    if not isinstance(relations, list):
        raise DocreError(f'{where}: relations: must be a list of {{"head", "tail", "type"}} objects')
    labels = []
    for k, relation in enumerate(relations):
        field = f"{where}: relations[{k}]"
        if not isinstance(relation, dict):
            raise DocreError(f"{field}: a relation must be a JSON object {{\"head\", \"tail\", \"type\"}}")
        for key in ("head", "tail", "type"):
            if key not in relation:
                raise DocreError(f"{field}: missing field '{key}'")
        head, tail, kind = relation["head"], relation["tail"], relation["type"]
        for key, value in (("head", head), ("tail", tail)):
            if type(value) is not int or not 0 <= value < count:
                raise DocreError(f"{field}.{key}: {value!r} is not an entity index (0..{count - 1}, in the order of entities)")
        if head == tail:
            raise DocreError(f"{field}: head and tail are both entity {head}; a relation needs two different entities")
        if not isinstance(kind, str) or not kind.strip():
            raise DocreError(f"{field}.type: must be a relation id (a non-empty string, e.g. P17)")
        if kind == "Na" or (rel2id is not None and rel2id.get(kind, 0) == 0):
            known = [r for r, i in (rel2id or {}).items() if i > 0]
            what = ("the NA class (no relation), not a relation" if kind == "Na" or kind in (rel2id or {})
                    else f"not in the relation map{did_you_mean(kind, known)}")
            raise DocreError(f"{field}.type: {kind!r} is {what}")
        labels.append({"h": head, "t": tail, "r": kind, "evidence": []})
    return converted | {"labels": labels}
