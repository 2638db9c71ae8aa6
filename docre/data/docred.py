"""DocRED-style JSON files (DocRED, Re-DocRED, DocGNRE, DWIE in DocRED form): read and validate.

A file is a JSON list of documents `{"title", "sents", "vertexSet", "labels"?}` (the format of
the DocRED release, Yao et al., ACL 2019, github.com/thunlp/DocRED), plain or gzipped. A split may
be a slice of a file: `dev_revised.json.gz[:400]`.

Validation answers malformed input with one `DocreError` line naming the file, the document
(index and title) and the field. Two things are tolerated with one warning and a count, because
the official files contain them: a label repeated in a document, and a mention repeated inside
an entity (kept as ATLOP keeps it, so the numbers match). Policy: docs/data.md.
"""

import difflib
import gzip
import json
import re
import zlib
from pathlib import Path

import ujson

from docre.errors import DocreError
from docre.utils import logger, plural

# Files whose repeated labels and mentions were reported: once per file and command, though training
# reads its file twice (features, Ign F1) and streamed prediction validates chunk after chunk.
_REPORTED_REPEATS: set[str] = set()
_SLICE = re.compile(r"^(?P<path>.*)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")
# The document fields docre reads, with the type of their value. Other keys are ignored (DocRED variants
# carry extras), except a close spelling of an absent field that holds its kind of value: a misspelt
# "labels" would otherwise pass as an unlabelled document, and a misspelt title as a missing one.
FIELDS = {"title": str, "sents": list, "vertexSet": list, "labels": list}


def split_spec(spec: str) -> tuple[str, slice]:
    """'file.json[10:20]' -> ('file.json', slice(10, 20)); a plain name takes every document."""
    match = _SLICE.match(spec)
    if not match:
        return spec, slice(None)
    bounds = [int(match[k]) if match[k] else None for k in ("start", "stop")]
    return match["path"], slice(*bounds)


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzip (by magic number, not by name)."""
    if not path.is_file():
        raise DocreError(f"{path}: file not found")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DocreError(f"{path}: not a valid gzip file ({error})") from None
    if not raw.strip():
        raise DocreError(f"{path}: file is empty")
    return raw


def parse_json_list(path: Path, raw: bytes) -> list:
    """Parse a JSON document list, with one-line errors for bad encodings, syntax and shape.
    A leading UTF-8 byte order mark (some Windows editors write one) is ignored."""
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DocreError(f"{path}: not UTF-8 text (byte {error.start}, line {line})") from None
    try:
        data = ujson.loads(text)
    except ValueError as error:
        if _first_line_is_object(text):  # then the whole failed on what follows it: a second line
            raise DocreError(f"{path}: looks like JSON lines (one document per line); DocRED files are one JSON list: "
                             "put [ before the first document, a comma after each but the last, and ] at the end") from None
        raise DocreError(f"{path}: invalid JSON {_json_error_position(text, error)}") from None
    if not isinstance(data, list):
        raise DocreError(f"{path}: top level must be a JSON list of documents, got {type(data).__name__}")
    return data


def _first_line_is_object(text: str) -> bool:
    try:
        return isinstance(ujson.loads(text.lstrip().split("\n", 1)[0]), dict)
    except ValueError:
        return False


def _json_error_position(text: str, error: ValueError) -> str:
    """Where the JSON is broken. ujson does not say, so the standard parser reads it again (only
    on this error path)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as std:
        return f"at line {std.lineno} column {std.colno}: {std.msg}"
    except (ValueError, RecursionError):
        pass
    return f"({error})"


def read_docred(path: Path, part: slice, rel2id: dict[str, int] | None) -> list[dict]:
    """Read, slice and validate a DocRED-style file. `rel2id=None` accepts any relation id."""
    every = parse_json_list(path, read_bytes(path))
    docs = every[part]
    validate_docred(docs, path, rel2id, first_index=part.indices(len(every))[0])
    return docs


def _where(path, index: int, doc) -> str:
    title = doc.get("title") if isinstance(doc, dict) else None
    return f"{path}: document {index}" + (f" ({title!r})" if isinstance(title, str) else "")


def _is_int(value) -> bool:
    return type(value) is int  # bool is not an index


def validate_docred(docs: list, path, rel2id: dict[str, int] | None, first_index: int = 0) -> None:
    """Raise `DocreError` on the first malformed document; warn once about tolerated repeats.

    The checks run on every load (about 0.07 s for 500 documents), so the loops below are
    written for speed: type() identity checks and one C-level pass per sentence.
    """
    titles: dict[str, int] = {}
    repeated_labels = repeated_mentions = 0
    for offset, doc in enumerate(docs):
        index = first_index + offset
        if type(doc) is not dict:
            raise DocreError(f"{_where(path, index, doc)}: a document must be a JSON object, got {type(doc).__name__}")
        if FIELDS.keys() - doc.keys():
            _check_misspelt_fields(doc, _where(path, index, doc))
        for key in ("title", "sents", "vertexSet"):
            if key not in doc:
                raise DocreError(f"{_where(path, index, doc)}: missing field '{key}'")
        title = doc["title"]
        if type(title) is not str:
            raise DocreError(f"{_where(path, index, doc)}: title: must be a string")
        where = f"{path}: document {index} ({title!r})"
        if title in titles:
            raise DocreError(f"{where}: title: duplicate of document {titles[title]} (titles identify documents in scoring)")
        titles[title] = index
        sents = doc["sents"]
        if type(sents) is not list or not sents:
            raise DocreError(f"{where}: sents: must be a non-empty list of sentences")
        for s, sent in enumerate(sents):
            if type(sent) is not list or not set(map(type, sent)) <= {str}:
                raise DocreError(f"{where}: sents[{s}]: must be a list of word strings")
        entities = doc["vertexSet"]
        if type(entities) is not list or not entities:
            raise DocreError(f"{where}: vertexSet: must be a non-empty list of entities")
        for e, entity in enumerate(entities):
            if type(entity) is not list or not entity:
                raise DocreError(f"{where}: vertexSet[{e}]: an entity must be a non-empty list of mentions")
            seen = set()
            for m, mention in enumerate(entity):
                _check_mention(mention, sents, where, e, m)
                key = (mention["sent_id"], *mention["pos"])
                repeated_mentions += key in seen
                seen.add(key)
        if "labels" in doc:
            repeated_labels += _check_labels(doc["labels"], len(entities), len(sents), rel2id, where)
    repeats = [f"{plural(repeated_labels, 'repeated label')} (scored once)"] * bool(repeated_labels) + [
        f"{plural(repeated_mentions, 'repeated mention')} (kept, as ATLOP keeps them)"] * bool(repeated_mentions)
    if repeats and str(path) not in _REPORTED_REPEATS:
        _REPORTED_REPEATS.add(str(path))
        logger.warning("%s: %s", path, " and ".join(repeats))


def _check_misspelt_fields(doc: dict, where: str) -> None:
    """Refuse a key that is a close spelling (any case) of a field the document lacks and holds that
    field's kind of value ("label": [...], "Title": "..."); a flag such as "labelled": true stays an extra."""
    absent = {name.lower(): name for name in FIELDS if name not in doc}
    for key, value in doc.items():
        close = difflib.get_close_matches(str(key).lower(), absent, n=1, cutoff=0.7) if key not in FIELDS else []
        if close and type(value) is FIELDS[absent[close[0]]]:
            raise DocreError(f"{where}: unknown field {key!r} (did you mean {absent[close[0]]}?)")


def _check_mention(mention, sents: list, where: str, e: int, m: int) -> None:
    if type(mention) is dict and "name" in mention and "sent_id" in mention and "pos" in mention:
        sent_id, pos = mention["sent_id"], mention["pos"]
        if (type(mention["name"]) is str and type(sent_id) is int and 0 <= sent_id < len(sents)
                and type(pos) is list and len(pos) == 2 and type(pos[0]) is int and type(pos[1]) is int
                and 0 <= pos[0] < pos[1] <= len(sents[sent_id])):
            return
    # slow path: say exactly what is wrong
    field = f"{where}: vertexSet[{e}][{m}]"
    if not isinstance(mention, dict):
        raise DocreError(f"{field}: a mention must be a JSON object")
    for key in ("name", "sent_id", "pos"):
        if key not in mention:
            raise DocreError(f"{field}: missing field '{key}'")
    if not isinstance(mention["name"], str):
        raise DocreError(f"{field}.name: must be a string")
    sent_id = mention["sent_id"]
    if not _is_int(sent_id) or not 0 <= sent_id < len(sents):
        raise DocreError(f"{field}.sent_id: {sent_id!r} is not a sentence index (0..{len(sents) - 1})")
    pos = mention["pos"]
    if not isinstance(pos, list) or len(pos) != 2 or not all(_is_int(p) for p in pos):
        raise DocreError(f"{field}.pos: must be [start, end] word indices")
    start, end = pos
    if start >= end:
        raise DocreError(f"{field}.pos: start {start} >= end {end}")
    raise DocreError(f"{field}.pos: [{start}, {end}) lies outside sentence {sent_id} ({plural(len(sents[sent_id]), 'word')})")


def _check_labels(labels, num_entities: int, num_sents: int, rel2id: dict | None, where: str) -> int:
    """Check the labels of one document; return how many repeat an earlier label. A label's
    "evidence" (optional; the sentences that support it) must be a list of sentence indices."""
    if type(labels) is not list:
        raise DocreError(f"{where}: labels: must be a list")
    seen, repeats = set(), 0
    for i, label in enumerate(labels):
        if type(label) is not dict:
            raise DocreError(f"{where}: labels[{i}]: a label must be a JSON object")
        head, tail, relation = label.get("h"), label.get("t"), label.get("r")
        evidence = label.get("evidence", ())
        if not (type(head) is int and type(tail) is int and 0 <= head < num_entities and 0 <= tail < num_entities
                and head != tail and type(relation) is str and (rel2id is None or rel2id.get(relation, 0) > 0)
                and type(evidence) in (list, tuple) and set(map(type, evidence)) <= {int}
                and all(0 <= e < num_sents for e in evidence)):
            _explain_label(label, num_entities, num_sents, rel2id, f"{where}: labels[{i}]")
        key = (head, tail, relation)
        repeats += key in seen
        seen.add(key)
    return repeats


def _explain_label(label: dict, num_entities: int, num_sents: int, rel2id: dict | None, field: str) -> None:
    for key in ("h", "t", "r"):
        if key not in label:
            raise DocreError(f"{field}: missing field '{key}'")
    for key in ("h", "t"):
        value = label[key]
        if not _is_int(value) or not 0 <= value < num_entities:
            raise DocreError(f"{field}.{key}: {value!r} is not an entity index (0..{num_entities - 1})")
    if label["h"] == label["t"]:
        raise DocreError(f"{field}: h == t ({label['h']}); a relation needs two different entities")
    relation = label["r"]
    if not isinstance(relation, str):
        raise DocreError(f"{field}.r: must be a relation id string")
    if rel2id is not None and relation not in rel2id:
        raise DocreError(f"{field}.r: relation {relation!r} is not in the relation map")
    if rel2id is not None and rel2id[relation] == 0:
        raise DocreError(f"{field}.r: {relation!r} is the NA class, not a relation")
    evidence = label.get("evidence")
    if type(evidence) in (list, tuple) and set(map(type, evidence)) <= {int}:
        bad = next(e for e in evidence if not 0 <= e < num_sents)
        raise DocreError(f"{field}.evidence: {bad} is not a sentence index (0..{num_sents - 1})")
    raise DocreError(f"{field}.evidence: must be a list of sentence indices")
