"""Turn DocRED-format documents into model features: word-pieces with entity markers (ATLOP's
`prepro.py`, github.com/wzhouad/ATLOP).

Every reader (DocRED family, CDR, GDA) first produces DocRED-format dicts; this module is the one
place where they become token ids, so marker handling and offsets are identical for all datasets.

The marker is one string (`model.marker`, ATLOP's `*`) put before and after every mention, or
`typed`: DocuNet's typed markers (github.com/zjunlp/DocuNet, `prepro.py`, its BERT path), one
vocabulary token per entity type, [unused1]..[unused11] before a mention and [unused51]..[unused61]
after it. Either way the model reads each mention at its opening marker (`Feature.entity_pos`).

Tokenisation is batched: every distinct word of the split is tokenised once, in one call to the
(fast) tokenizer, and documents are assembled from those pieces. Each word is tokenised on its
own, exactly like ATLOP's per-word `tokenizer.tokenize(word)`, so the word-piece sequence is the
same as the per-word loop gives.
"""

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from docre.errors import DocreError
from docre.utils import hide_progress, plural

TYPED = "typed"  # the `model.marker` value that asks for DocuNet's typed markers
# DocuNet's BERT path wraps a mention of type T in [unusedN] ... [unused(N+50)], N the index of T in its
# list ["-", "ORG", "-", "LOC", "-", "TIME", "-", "PER", "-", "MISC", "-", "NUM"] (DocRED's six types).
# The official code has no marker for any other type (its list lookup raises), so neither has docre.
TYPED_MARKER_INDEX = {"ORG": 1, "LOC": 3, "TIME": 5, "PER": 7, "MISC": 9, "NUM": 11}
CLOSING_OFFSET = 50  # [unused(N+50)] closes what [unusedN] opened


@dataclass
class Feature:
    """One document ready for the model.

    Attributes:
        title: document title (the key of the official scorer).
        input_ids: [num_tokens] word-piece ids: start tokens, document with markers, end tokens.
        entity_pos: per entity, the position in `input_ids` of the opening marker of each of its
            mentions; mentions cut by `max_seq_length` are left out (an entity may end up empty).
        hts: [num_pairs, 2] candidate (head, tail) entity indices: all ordered pairs of distinct
            entities, or the listed candidate pairs where the dataset has them (CDR, GDA).
        labels: [num_facts, 2] rows of (pair index, relation id) for the gold relations; pairs
            without a row are NA. None when the split has no labels (e.g. DocRED test).
        sent_pos: [num_sents, 2] per sentence of the document, its [start, end) span in
            `input_ids`, markers included (the same coordinates as `entity_pos`); the spans follow
            each other without gaps from the first document token to the last. A sentence cut by
            `max_seq_length` is clipped, one wholly cut is empty (start == end). None only for
            features built by hand.
        evidence: per row of `labels`, the sorted gold evidence sentence ids of that fact (the
            union over repeated labels; empty where the data gives none, as for CDR/GDA). None
            when `labels` is None.
    """

    title: str
    input_ids: np.ndarray
    entity_pos: list[list[int]]
    hts: np.ndarray
    labels: np.ndarray | None
    sent_pos: np.ndarray | None = None
    evidence: list[list[int]] | None = None


@dataclass
class TokenizerInfo:
    """What featurisation needs from a tokenizer, probed once."""

    start_ids: list[int]  # special tokens before a sequence, e.g. [CLS] or <s>
    end_ids: list[int]  # special tokens after it, e.g. [SEP] or </s>
    marker_ids: list[int]  # the entity marker's word-pieces ([] for typed markers)
    # typed markers only: entity type -> (ids before its mentions, ids after them); None = one marker for all
    typed_marker_ids: dict[str, tuple[list[int], list[int]]] | None = None


def probe_tokenizer(tokenizer, marker: str) -> TokenizerInfo:
    """Find a tokenizer's start/end special tokens by encoding a probe word with and without them, and
    the marker's ids (`marker` "typed": the typed markers' vocabulary tokens).

    Raises:
        DocreError: typed markers with a vocabulary that lacks the [unusedN] tokens (RoBERTa's, for one).
    """
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    at = next(i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare)
    start_ids, end_ids = full[:at], full[at + len(bare) :]
    if marker == TYPED:
        return TokenizerInfo(start_ids, end_ids, [], typed_marker_ids(tokenizer))
    return TokenizerInfo(start_ids, end_ids, tokenizer(marker, add_special_tokens=False)["input_ids"])


def typed_marker_ids(tokenizer) -> dict[str, tuple[list[int], list[int]]]:
    """Entity type -> ([id of its opening marker], [id of its closing marker]), DocuNet's typed markers.

    The markers are vocabulary entries inserted as ids, as DocuNet inserts them as tokens: text
    "[unused1]" would be split into pieces by a BERT tokenizer.
    """
    tokens = {kind: (f"[unused{n}]", f"[unused{n + CLOSING_OFFSET}]") for kind, n in TYPED_MARKER_INDEX.items()}
    wanted = [token for pair in tokens.values() for token in pair]
    ids = dict(zip(wanted, tokenizer.convert_tokens_to_ids(wanted)))
    if any(i is None or i == tokenizer.unk_token_id for i in ids.values()):
        # DocuNet's RoBERTa path marks every mention with "*"; docre leaves that choice to the config
        raise DocreError(f"model.marker=typed needs the tokens [unused1]..[unused61] of BERT-style vocabularies, which "
                         f"the tokenizer of {tokenizer.name_or_path or type(tokenizer).__name__!r} lacks; "
                         "use model.marker='*' (the marker of DocuNet's non-BERT preprocessing)")
    return {kind: ([ids[opening]], [ids[closing]]) for kind, (opening, closing) in tokens.items()}


def all_pairs(num_entities: int) -> np.ndarray:
    """[n * (n - 1), 2] every ordered pair of distinct entities, head-major."""
    heads, tails = np.meshgrid(np.arange(num_entities), np.arange(num_entities), indexing="ij")
    keep = heads != tails
    return np.stack([heads[keep], tails[keep]], axis=1).astype(np.int32)


def featurize(
    docs: list[dict], tokenizer, rel2id: dict[str, int], marker: str, max_seq_length: int, progress: str = ""
) -> tuple[list[Feature], str]:
    """Tokenise documents with entity markers and build candidate pairs and labels.

    Args:
        docs: validated DocRED-format documents; an optional "pairs" key lists candidate pairs.
        rel2id: relation name -> class id; 0 is NA.
        max_seq_length: cap on tokens per document incl. special tokens; 0 = no cap.
        progress: the label of a progress bar over the documents (shown by `hide_progress`'s rule); "" = none.

    Returns:
        The features, and a one-line report of what `max_seq_length` cut ("" if nothing).
    """
    info = probe_tokenizer(tokenizer, marker)
    vocabulary = list(dict.fromkeys(word for doc in docs for sent in doc["sents"] for word in sent))
    pieces_of = dict(zip(vocabulary, tokenizer(vocabulary, add_special_tokens=False)["input_ids"] if vocabulary else []))
    budget = max_seq_length - len(info.start_ids) - len(info.end_ids) if max_seq_length > 0 else None
    features, cut_docs, cut_pieces, cut_mentions = [], 0, 0, 0
    for doc in tqdm(docs, desc=progress, unit="doc", disable=hide_progress(bool(progress)), leave=False):
        feature, lost_pieces, lost_mentions = _featurize_doc(doc, pieces_of, info, rel2id, budget)
        features.append(feature)
        cut_docs += lost_pieces > 0
        cut_pieces += lost_pieces
        cut_mentions += lost_mentions
    report = ""
    if cut_docs:
        report = (
            f"max_seq_length={max_seq_length} cut {cut_docs} of {plural(len(docs), 'document')}: "
            f"{plural(cut_pieces, 'word-piece')} and {plural(cut_mentions, 'mention')} dropped "
            "(model.max_seq_length=0 keeps whole documents)"
        )
    return features, report


def _mention_markers(doc: dict, info: TokenizerInfo) -> tuple[dict, dict]:
    """(sent_id, word) -> the marker ids to put before that word, and those to put after it.

    One marker per word and side even where mentions share a first (or last) word; with typed markers
    the first such mention in vertexSet order gives the type, as DocuNet's `entity_start.index` does.
    """
    opening, closing = {}, {}
    for entity in doc["vertexSet"]:
        for m in entity:
            before = after = info.marker_ids
            if info.typed_marker_ids is not None:
                kind = m.get("type")
                if kind not in info.typed_marker_ids:
                    raise DocreError(f"document {doc['title']!r}: a mention of type {kind!r} ({m.get('name')!r}) has no typed "
                                     f"marker; model.marker=typed knows DocRED's types {', '.join(TYPED_MARKER_INDEX)} "
                                     "only: give every mention one of them, or use model.marker='*'")
                before, after = info.typed_marker_ids[kind]
            opening.setdefault((m["sent_id"], m["pos"][0]), before)
            closing.setdefault((m["sent_id"], m["pos"][1] - 1), after)
    return opening, closing


def _featurize_doc(doc: dict, pieces_of: dict, info: TokenizerInfo, rel2id: dict, budget: int | None):
    opening, closing = _mention_markers(doc, info)
    pieces: list[int] = []
    word_offsets = []  # per sentence: index in `pieces` where each word (with its marker) begins
    sent_starts = []  # per sentence: index in `pieces` where it begins
    for s, sent in enumerate(doc["sents"]):
        sent_starts.append(len(pieces))
        offsets = []
        for w, word in enumerate(sent):
            offsets.append(len(pieces))
            if (s, w) in opening:
                pieces.extend(opening[(s, w)])
            pieces.extend(pieces_of[word])
            if (s, w) in closing:
                pieces.extend(closing[(s, w)])
        word_offsets.append(offsets)
    lost_pieces = 0
    if budget is not None and len(pieces) > budget:
        lost_pieces = len(pieces) - budget
        pieces = pieces[:budget]
    shift = len(info.start_ids)
    bounds = np.minimum(np.asarray(sent_starts + [len(pieces)], dtype=np.int32), len(pieces)) + shift
    sent_pos = np.stack([bounds[:-1], bounds[1:]], axis=1)  # [num_sents, 2] clipped to what was kept
    entity_pos, lost_mentions = [], 0
    for entity in doc["vertexSet"]:
        positions = [word_offsets[m["sent_id"]][m["pos"][0]] for m in entity]
        kept = [p + shift for p in positions if p < len(pieces)]
        lost_mentions += len(positions) - len(kept)
        entity_pos.append(kept)
    hts = np.asarray(doc["pairs"], dtype=np.int32).reshape(-1, 2) if "pairs" in doc else all_pairs(len(doc["vertexSet"]))
    labels = evidence = None
    if "labels" in doc:
        pair_index = {(int(h), int(t)): i for i, (h, t) in enumerate(hts)}
        facts: dict[tuple[int, int], set[int]] = {}  # (pair index, relation id) -> evidence sentences
        for lab in doc["labels"]:
            if (lab["h"], lab["t"]) in pair_index:
                fact = (pair_index[(lab["h"], lab["t"])], rel2id[lab["r"]])
                facts.setdefault(fact, set()).update(lab.get("evidence", ()))
        labels = np.asarray(sorted(facts), dtype=np.int32).reshape(-1, 2)
        evidence = [sorted(facts[fact]) for fact in sorted(facts)]
    input_ids = np.asarray(info.start_ids + pieces + info.end_ids, dtype=np.int32)
    feature = Feature(doc["title"], input_ids, entity_pos, hts, labels, sent_pos, evidence)
    return feature, lost_pieces, lost_mentions
