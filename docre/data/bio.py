"""CDR and GDA in the edge-oriented-graph ("EoG") preprocessed format: read and validate.

One document per line, tab-separated (the output of the EoG preprocessing,
github.com/fenchri/edge-oriented-graph, as ATLOP's `prepro.py` reads it): PMID, the text (sentences
separated by "|", tokens by spaces), then one 17-field block per candidate pair:

    0 label (1:CID:2 / 1:GDA:2 positive, 1:NR:2 negative, not_include = skip the pair)
    1 direction (L2R: entity 1 is the head; R2L: entity 2 is the head, as ATLOP reads it)
    2 CROSS / NON-CROSS (inter- / intra-sentence pair)
    3-4 closest mention spans (not used)
    5-10 entity 1: id, mention names ("|"), type, start offsets (":"), end offsets (exclusive), sentence ids
    11-16 entity 2: the same fields

Offsets are document-level token indices. Each line becomes a DocRED-format document (the same
dict every reader produces), so featurisation, markers and the model are shared with DocRED:

    title       the PMID
    sents       the sentences' tokens
    vertexSet   every entity named in any block (also those only in not_include pairs: ATLOP puts
                markers around their mentions too), mentions converted to sent_id + pos
    pairs       the listed candidate pairs [head, tail], not_include skipped (featurize uses them
                instead of all ordered pairs)
    entity_ids  the entities' ids (MeSH, NCBI Gene), aligned with vertexSet
    pair_cross  per pair, True if the pair is CROSS (inter-sentence), for the intra/inter metric
    labels      the positive pairs, relation "CID" (CDR) or "GDA" (GDA); NR pairs are NA

Decisions (docs/data.md, "CDR and GDA"): a mention that crosses a sentence boundary is an error
(a DocRED mention lives in one sentence, and no official file has one); a document without any
candidate pair is skipped with a warning, as ATLOP skips it; blank lines are ignored.
"""

from pathlib import Path

from docre.data.docred import read_bytes
from docre.errors import DocreError
from docre.utils import logger, plural

FIELDS_PER_PAIR = 17
NEGATIVE, SKIP = "1:NR:2", "not_include"
ENTITY_FIELDS = ("id", "mention names", "type", "start offsets", "end offsets", "sentence ids")


def read_cdr(path: Path, part: slice, rel2id: dict[str, int] | None) -> list[dict]:
    """Read a CDR file (train/dev/test_filter.data); positive pairs get relation "CID"."""
    return read_eog(path, part, rel2id, "CID")


def read_gda(path: Path, part: slice, rel2id: dict[str, int] | None) -> list[dict]:
    """Read a GDA file (train/dev/test.data); positive pairs get relation "GDA"."""
    return read_eog(path, part, rel2id, "GDA")


def read_eog(path: Path, part: slice, rel2id: dict[str, int] | None, relation: str) -> list[dict]:
    """Read, slice and validate an EoG file into DocRED-format documents.

    Args:
        part: which documents (non-blank lines) to take.
        rel2id: if given, `relation` must be a non-NA class of it.
        relation: the positive label's relation name, "CID" or "GDA".
    """
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DocreError(f"{path}: not UTF-8 text (byte {error.start})") from None
    lines = [(number, line) for number, line in enumerate(text.split("\n"), 1) if line.strip()]
    first = part.indices(len(lines))[0] if part.start else 0
    docs, skipped, titles = [], [], {}
    for index, (number, line) in enumerate(lines[part], first):
        doc = parse_line(line.rstrip("\r"), relation, f"{path}: document {index} (line {number}")
        where = f"{path}: document {index} (line {number}, PMID {doc['title']})"
        if doc["title"] in titles:
            raise DocreError(f"{where}: PMID: duplicate of document {titles[doc['title']]} (PMIDs identify documents in scoring)")
        titles[doc["title"]] = index
        if rel2id is not None and doc["labels"] and rel2id.get(relation, 0) <= 0:
            raise DocreError(f"{where}: label: relation {relation!r} is not a relation of the relation map")
        if doc["pairs"]:
            docs.append(doc)
        else:
            skipped.append(doc["title"])
    if skipped:
        logger.warning("%s: %s without candidate pairs skipped (as ATLOP does): PMID %s",
                       path, plural(len(skipped), "document"), ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    return docs


def parse_line(line: str, relation: str, where: str) -> dict:
    """One EoG line -> a DocRED-format document. `where` is "FILE: document I (line N" (the PMID
    and ")" are added once known)."""
    fields = line.split("\t")
    if len(fields) < 2 or (len(fields) - 2) % FIELDS_PER_PAIR:
        raise DocreError(f"{where}): expected PMID, text and {FIELDS_PER_PAIR} fields per candidate pair, "
                         f"got {len(fields)} tab-separated fields")
    pmid, text = fields[0].strip(), fields[1]
    if not pmid:
        raise DocreError(f"{where}): PMID: empty")
    where = f"{where}, PMID {pmid})"
    sents = [sentence.split(" ") for sentence in text.split("|")]
    for s, sentence in enumerate(sents):
        if "" in sentence:
            raise DocreError(f"{where}: text: sentence {s} has an empty token "
                             "(repeated, leading or trailing space, or an empty sentence)")
    # document token offset -> (sentence, position in the sentence)
    sentence_of, position_of = [], []
    for s, sentence in enumerate(sents):
        sentence_of += [s] * len(sentence)
        position_of += range(len(sentence))

    positive = f"1:{relation}:2"
    entity_index: dict[str, int] = {}
    entity_fields: list[list[str]] = []  # the raw fields each entity was first read from
    vertex_set, pairs, pair_cross, labels, seen_pairs = [], [], [], [], {}
    for k in range((len(fields) - 2) // FIELDS_PER_PAIR):
        block = fields[2 + k * FIELDS_PER_PAIR : 2 + (k + 1) * FIELDS_PER_PAIR]
        first_field = 2 + k * FIELDS_PER_PAIR
        pair_where = f"{where}: pair {k} (fields {first_field}-{first_field + FIELDS_PER_PAIR - 1})"
        label, direction, cross = block[0], block[1], block[2]
        if label not in (positive, NEGATIVE, SKIP):
            raise DocreError(f"{pair_where}: label: {label!r} is not {positive}, {NEGATIVE} or {SKIP}")
        if direction not in ("L2R", "R2L"):
            raise DocreError(f"{pair_where}: direction: {direction!r} is not L2R or R2L")
        if cross not in ("CROSS", "NON-CROSS"):
            raise DocreError(f"{pair_where}: cross: {cross!r} is not CROSS or NON-CROSS")
        ids = []
        for side, start in ((1, 5), (2, 11)):
            values = block[start : start + 6]
            entity_id = values[0].strip()
            if not entity_id:
                raise DocreError(f"{pair_where}: entity {side} id: empty")
            if entity_id not in entity_index:
                entity_index[entity_id] = len(vertex_set)
                entity_fields.append(values)
                entity_where = f"{pair_where}: entity {side} ({entity_id})"
                vertex_set.append(_mentions(values, sents, sentence_of, position_of, entity_where))
            elif entity_fields[entity_index[entity_id]] != values:
                earlier = entity_fields[entity_index[entity_id]]
                changed = next(name for name, a, b in zip(ENTITY_FIELDS, earlier, values) if a != b)
                raise DocreError(f"{pair_where}: entity {side} ({entity_id}) {changed}: "
                                 "differ from an earlier pair naming the same entity")
            ids.append(entity_id)
        if ids[0] == ids[1]:
            raise DocreError(f"{pair_where}: entity 2 id: {ids[1]} is also entity 1; a pair needs two different entities")
        if label == SKIP:
            continue
        first, second = entity_index[ids[0]], entity_index[ids[1]]
        head, tail = (first, second) if direction == "L2R" else (second, first)
        if (head, tail) in seen_pairs:
            raise DocreError(f"{pair_where}: pair ({ids[0]}, {ids[1]}) {direction} repeats pair {seen_pairs[head, tail]}")
        seen_pairs[head, tail] = k
        pairs.append([head, tail])
        pair_cross.append(cross == "CROSS")
        if label == positive:
            labels.append({"h": head, "t": tail, "r": relation})
    return {"title": pmid, "sents": sents, "vertexSet": vertex_set, "entity_ids": list(entity_index), "pairs": pairs,
            "pair_cross": pair_cross, "labels": labels}


def _mentions(values: list[str], sents: list[list[str]], sentence_of: list[int], position_of: list[int],
              where: str) -> list[dict]:
    """An entity's mentions from its six fields, as DocRED mentions {name, sent_id, pos, type}."""
    _, names, entity_type, starts, ends, sentence_ids = values
    if not entity_type.strip():
        raise DocreError(f"{where} type: empty")
    names = names.split("|")
    numbers = []
    for name, raw in (("start offsets", starts), ("end offsets", ends), ("sentence ids", sentence_ids)):
        try:
            numbers.append([int(value) for value in raw.split(":")])
        except ValueError:
            raise DocreError(f"{where} {name}: {raw!r} is not ':'-separated integers") from None
    starts, ends, sentence_ids = numbers
    if not len(names) == len(starts) == len(ends) == len(sentence_ids):
        raise DocreError(f"{where}: {plural(len(names), 'mention name')}, {plural(len(starts), 'start offset')}, "
                         f"{plural(len(ends), 'end offset')} and {plural(len(sentence_ids), 'sentence id')}; "
                         "the counts must agree")
    num_tokens = len(sentence_of)
    mentions = []
    for m, (name, start, end, sentence_id) in enumerate(zip(names, starts, ends, sentence_ids)):
        if not 0 <= start < end <= num_tokens:
            raise DocreError(f"{where} offsets: mention {m} [{start}, {end}) is not a token span of the document "
                             f"({plural(num_tokens, 'token')})")
        sentence = sentence_of[start]
        if sentence_of[end - 1] != sentence:
            raise DocreError(f"{where} offsets: mention {m} [{start}, {end}) crosses from sentence {sentence} into "
                             f"sentence {sentence_of[end - 1]}; a mention must lie inside one sentence")
        if sentence_id != sentence:
            raise DocreError(f"{where} sentence ids: mention {m} [{start}, {end}) lies in sentence {sentence}, not {sentence_id}")
        position = position_of[start]
        mentions.append({"name": name, "sent_id": sentence, "pos": [position, position + end - start], "type": entity_type})
    return mentions
