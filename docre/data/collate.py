"""Batch features into padded token tensors plus flat index tensors for the vectorised head.

The head never loops over pairs or entities: mentions, entities and pairs of all documents in the
batch are numbered consecutively, and the index tensors below say which is which.
"""

from dataclasses import dataclass, fields

import numpy as np
import torch

from docre.data.feature import Feature


@dataclass
class Batch:
    """A padded batch. M = mentions, E = entities, P = candidate pairs, over the whole batch.

    Attributes:
        input_ids: [B, L] token ids, right-padded.
        attention_mask: [B, L] 1 for real tokens.
        mention_doc: [M] document of each mention.
        mention_pos: [M] position of each mention's opening marker in its document.
        mention_entity: [M] entity (batch numbering) of each mention.
        entity_mentions: [E, max_mentions] mention indices of each entity, padded with M.
        hts: [P, 2] (head, tail) entity indices, batch numbering; documents in order.
        pairs_per_doc: number of pairs of each document (pairs are grouped by document).
        labels: [P, C] multi-hot float targets, column 0 = NA; None for unlabelled data.
        entities_per_doc, mentions_per_doc: counts per document (entities and mentions are numbered
            document by document), kept on the host so the model never asks the device for them.
        lengths: tokens of each document (likewise).
        token_sentence: [B, L] sentence of each token (the features' `sent_pos`), S for special
            and padding tokens, S = the most sentences of a document in the batch.
        sentences_per_doc: sentences of each document (host side, as the counts above).
        evidence: [P, S] per pair, how many of its gold facts name each sentence as evidence
            (DREEAM's evidence target); None for unlabelled data.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mention_doc: torch.Tensor
    mention_pos: torch.Tensor
    mention_entity: torch.Tensor
    entity_mentions: torch.Tensor
    hts: torch.Tensor
    pairs_per_doc: list[int]
    labels: torch.Tensor | None
    entities_per_doc: list[int]
    mentions_per_doc: list[int]
    lengths: list[int]
    token_sentence: torch.Tensor
    sentences_per_doc: list[int]
    evidence: torch.Tensor | None

    def to(self, device: torch.device) -> "Batch":
        """The tensors on `device`; to a GPU through pinned memory, so the copies do not make the
        host wait."""
        cuda = torch.device(device).type == "cuda"

        def move(value):
            if not isinstance(value, torch.Tensor):
                return value
            return (value.pin_memory() if cuda else value).to(device, non_blocking=True)

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def collate(features: list[Feature], num_classes: int, pad_id: int) -> Batch:
    """Pad and index a list of features. Labels are built only if every feature has them."""
    length = max(len(f.input_ids) for f in features)
    input_ids = np.full((len(features), length), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(features), length), dtype=np.int64)
    mention_doc, mention_pos, mention_entity, entity_sizes, hts = [], [], [], [], []
    entity_offset = 0
    for doc, feature in enumerate(features):
        input_ids[doc, : len(feature.input_ids)] = feature.input_ids
        attention_mask[doc, : len(feature.input_ids)] = 1
        for entity, positions in enumerate(feature.entity_pos):
            mention_doc += [doc] * len(positions)
            mention_pos += positions
            mention_entity += [entity_offset + entity] * len(positions)
            entity_sizes.append(len(positions))
        hts.append(feature.hts + entity_offset)
        entity_offset += len(feature.entity_pos)
    num_mentions = len(mention_pos)
    # [E, max_mentions]: the mention indices of each entity, padded with M (one past the last)
    entity_mentions = np.full((len(entity_sizes), max(entity_sizes, default=0) or 1), num_mentions, dtype=np.int64)
    ends = np.cumsum(entity_sizes)
    for entity, (size, end) in enumerate(zip(entity_sizes, ends)):
        entity_mentions[entity, :size] = np.arange(end - size, end)
    pairs_per_doc = [len(f.hts) for f in features]
    labelled = all(f.labels is not None for f in features)
    labels = stack_labels(features, num_classes) if labelled else None
    token_sentence, num_sents = sentence_index(features, length)
    return Batch(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(attention_mask),
        mention_doc=torch.tensor(mention_doc, dtype=torch.long),
        mention_pos=torch.tensor(mention_pos, dtype=torch.long),
        mention_entity=torch.tensor(mention_entity, dtype=torch.long),
        entity_mentions=torch.from_numpy(entity_mentions),
        hts=torch.from_numpy(np.concatenate(hts).reshape(-1, 2).astype(np.int64)),
        pairs_per_doc=pairs_per_doc,
        labels=labels,
        entities_per_doc=[len(f.entity_pos) for f in features],
        mentions_per_doc=[sum(len(positions) for positions in f.entity_pos) for f in features],
        lengths=[len(f.input_ids) for f in features],
        token_sentence=torch.from_numpy(token_sentence),
        sentences_per_doc=[len(f.sent_pos) if f.sent_pos is not None else 0 for f in features],
        evidence=stack_evidence(features, num_sents) if labelled else None,
    )


def sentence_index(features: list[Feature], length: int) -> tuple[np.ndarray, int]:
    """[B, length] sentence of each token, S (the most sentences of a feature) where none; and S."""
    num_sents = max((len(f.sent_pos) for f in features if f.sent_pos is not None), default=0)
    index = np.full((len(features), length), num_sents, dtype=np.int64)
    for doc, feature in enumerate(features):
        for sentence, (start, end) in enumerate(feature.sent_pos if feature.sent_pos is not None else ()):
            index[doc, start:end] = sentence
    return index, num_sents


def stack_evidence(features: list[Feature], num_sents: int) -> torch.Tensor:
    """[P_total, num_sents] per pair, the number of its gold facts that name each sentence as
    evidence (the union over a fact's repeated labels; DREEAM counts per relation of a pair)."""
    counts = np.zeros((sum(len(f.hts) for f in features), num_sents), dtype=np.float32)
    start = 0
    for feature in features:
        for (pair, _), sentences in zip(feature.labels, feature.evidence or ()):
            counts[start + pair, sentences] += 1
        start += len(feature.hts)
    return torch.from_numpy(counts)


def stacked_facts(features: list[Feature]) -> np.ndarray:
    """[F, 2] int32 (pair row, class) of every gold fact, pair rows counted over the features in
    order (as in the stacked logits); features without labels have none."""
    starts = np.cumsum([0] + [len(f.hts) for f in features[:-1]])
    facts = [f.labels + [start, 0] for f, start in zip(features, starts) if f.labels is not None]
    return np.concatenate(facts).reshape(-1, 2).astype(np.int32) if facts else np.zeros((0, 2), dtype=np.int32)


def facts_to_labels(facts: torch.Tensor, num_pairs: int, num_classes: int) -> torch.Tensor:
    """[P, C] multi-hot labels from [F, 2] (pair row, class) facts; column 0 (NA) set exactly for
    the pairs without a fact."""
    labels = torch.zeros(num_pairs, num_classes)
    labels[facts[:, 0].long(), facts[:, 1].long()] = 1.0
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
    return labels


def stack_labels(features: list[Feature], num_classes: int) -> torch.Tensor:
    """[P_total, C] multi-hot labels of the features' pairs in order; column 0 = NA. Features
    without labels contribute NA rows."""
    return facts_to_labels(torch.from_numpy(stacked_facts(features)), sum(len(f.hts) for f in features), num_classes)


def encoded_tokens(part: list[Feature], window: int) -> int:
    """Tokens of a batch's encoder input: its documents padded to the longest, or, when that
    exceeds the encoder `window`, every document's windows padded to the window
    (models/long_input.py)."""
    longest = max(len(f.input_ids) for f in part)
    if longest <= window:
        return len(part) * longest
    content = window - 2  # windows keep about window - 2 content tokens; an upper bound is enough
    return window * sum(max(1, -(-(len(f.input_ids) - 2) // content)) for f in part)


def split_by_tokens(features: list[Feature], max_tokens: int, window: int) -> list[list[Feature]]:
    """Split a batch into parts whose encoder input has at most `max_tokens` tokens (see
    `encoded_tokens`), longest documents first; a document above the budget is a part of its own.
    0 = no split."""
    if max_tokens <= 0:
        return [features]
    parts: list[list[Feature]] = []
    for feature in sorted(features, key=lambda f: len(f.input_ids), reverse=True):
        if parts and encoded_tokens(parts[-1] + [feature], window) <= max_tokens:
            parts[-1].append(feature)
        else:
            parts.append([feature])
    return parts
