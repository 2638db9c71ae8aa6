"""AMTL, the adaptive multi-threshold loss (Xu, Zhang, Cheng, Findings of ACL 2025, pp. 20996-21007;
official code github.com/xhm-code/AMTL @ 656f23b, `losses.py`: `get_at_loss_by_MT`, `get_label_by_MT`).

Layout. The relations are split into K label spaces, most frequent first. The model outputs one
slice per space: the space's own NA slot, then its relations; the slices are concatenated, so there
are 1 + sum(sizes) + (K - 1) outputs. Re-DocRED (the published partition, data/amtl/): K = 4 spaces
of 10, 20, 46 and 20 relations, NA slots at 0, 11, 32, 79, 100 outputs. docre's labels and
predictions stay in relation-id order ([P, C], column 0 = NA); this module maps both ways, so
nothing outside it sees the slice columns.

Loss. With a_k the NA slot of space k, every space's NA logit is replaced by the same threshold
    t = (s_{a_1} + ... + s_{a_K}) / lam        (lam = 3.5 in the official scripts; summed, not averaged)
and ATL runs inside each slice:
    L_k = sum_{r in P_k} -log softmax_{P_k + t}(r)  -  log softmax_{N_k + t}(t),
P_k / N_k the gold / other relations of space k (P_k empty: first term 0). loss = mean of L_k over
the [K, P] matrix. An NA slot is never a positive (the official code zeroes the slot's label in
every slice), so a space without a gold relation, and every space of an NA pair, gives only the
second term: t against the space's relations.

Decode (`get_label_by_MT`). In each slice, r is predicted iff s_r > the slice's *raw* NA logit (not
t) and s_r >= the slice's top_k-th largest raw value, the NA slot included (the shared
`threshold_decode` rule applied per slice); union over the spaces; column 0 iff none. `top_k` is
this per-space k: docre's eval.top_k = 4 is the official setting (--num_labels 4), so a pair can get
up to K * top_k relations (16 on Re-DocRED). A top_k at least a slice's width leaves it uncapped.
`relation_scores` gives s_r minus its slice's raw NA logit: > 0 exactly where decode predicts r
before the cap.

Partition. The official repository publishes the Re-DocRED partition only
(`meta/redocred_rel2id_4_Na.json`, shipped here as data/amtl/redocred_spaces.json) and no code
that derives it; its training file is not available here. What we infer: within each space the
relations follow training frequency (inverse relations with equal counts, P710/P1344, P156/P155,
P355/P749, P1376/P36, P1366/P1365, sit side by side), and, with the Re-DocRED dev + test labels
standing in for the training counts, the published cuts (after 10, 30 and 76 relations) fall where
the cumulative share of relation facts, relations sorted by frequency, first reaches 60 %, 80 % and
98 % (stand-in shares there: 0.61, 0.80-0.81, 0.98). `training_statistics` applies that rule:
relations sorted by training count (ties by column), space k ends at the first relation where the
cumulative share reaches SPACE_SHARES[k], each space keeping at least one relation. On
Re-DocRED-mini's training split it gives 10/20/46/20. Shares rather than count thresholds, because
counts do not carry over between training sets of different sizes. A relation absent from training
has count 0 and sorts last, into the tail space, beside the rarest relations (where AMTL puts its
own one-example relations).

Deviations: labels are docre's 0/1 multi-hot, so a repeated triple counts once (the official
scatter-add makes it 2, which its masks turn into a +1e30 shift of that logit); everything runs in
float32 (under autocast the official code sums the NA logits in fp16); t is computed once, not once
per slice (the same sum; float rounding only).
"""

import json
from itertools import pairwise

import torch
from torch import nn

from docre.errors import DocreError
from docre.losses.common import NEG, relations_to_multi_hot, threshold_decode

# Cumulative shares of the training facts at which spaces 1, 2 and 3 end (inferred, see above); K = 4.
SPACE_SHARES_PERCENT = (60, 80, 98)
PUBLISHED_SPACES = {"redocred": "data/amtl/redocred_spaces.json"}  # under the project root


class AMTLLoss(nn.Module):
    top_k_per = "label space of an entity pair"  # decode's top_k is per space, so a pair may get more (model cards)

    def __init__(self, spaces: list[list[int]] | None = None, lam: float = 3.5):
        """spaces: for each label space, the docre class indices (1..C-1) of its relations in AMTL's
        order, together each relation exactly once (`training_statistics` computes them; None: the
        loss cannot run until built with them). lam: the divisor of the summed NA logits."""
        super().__init__()
        if not lam > 0:
            raise ValueError(f"lam must be positive, got {lam}")
        self.lam = float(lam)
        self.spaces = None if spaces is None else [[int(c) for c in space] for space in spaces]
        self.num_outputs = None  # what the model's classifier must output
        self.na_slots = []  # output column of each space's NA slot
        self.slices = []  # (start, end) output columns of each space, NA slot first
        if self.spaces is None:
            return
        flat = [c for space in self.spaces for c in space]
        if not self.spaces or not all(self.spaces) or sorted(flat) != list(range(1, len(flat) + 1)):
            raise ValueError("spaces must be non-empty lists that hold each relation class 1..C-1 exactly once")
        output_column = [0] * (len(flat) + 1)  # docre column -> output column; NA (0) -> slot 0
        na_slot_of = [0] * (len(flat) + 1)  # docre column -> its space's NA slot
        start = 0
        for space in self.spaces:
            self.na_slots.append(start)
            for offset, column in enumerate(space, 1):
                output_column[column] = start + offset
                na_slot_of[column] = start
            self.slices.append((start, start + 1 + len(space)))
            start += 1 + len(space)
        self.num_outputs = start
        # index tensors follow the module across devices and stay out of its state_dict
        self.register_buffer("output_column", torch.tensor(output_column), persistent=False)  # [C]
        self.register_buffer("na_slot_of", torch.tensor(na_slot_of), persistent=False)  # [C]

    def _check(self, logits: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if self.spaces is None:
            raise DocreError("loss 'amtl' needs its label spaces (training_statistics of the training split, "
                             "or the published Re-DocRED partition); it was built without them")
        if logits.dim() != 2 or logits.size(1) != self.num_outputs:
            raise DocreError(f"loss 'amtl': logits of shape {list(logits.shape)}, its layout needs "
                             f"[pairs, {self.num_outputs}] (the classifier must output num_outputs columns)")
        if labels is not None and labels.shape != (logits.size(0), len(self.output_column)):
            raise DocreError(f"loss 'amtl': labels of shape {list(labels.shape)}, expected "
                             f"[{logits.size(0)}, {len(self.output_column)}] (one column per relation, 0 = NA)")

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits [P, num_outputs] in the slice layout, labels [P, C] docre multi-hot -> scalar float32."""
        self._check(logits, labels)
        logits = logits.float()
        column = self.output_column.to(logits.device)
        gold = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)  # [P, O], False at NA slots
        gold[:, column[1:]] = labels[:, 1:].to(logits.device) > 0
        threshold = logits[:, self.na_slots].sum(1, keepdim=True) / self.lam  # [P, 1], the same t for every space
        losses = []
        for start, end in self.slices:
            block = torch.cat([threshold, logits[:, start + 1 : end]], dim=1)  # [P, W], t in place of the NA logit
            positives = gold[:, start:end]  # [P, W], column 0 False
            keep_positive = positives.clone()
            keep_positive[:, 0] = True  # positives and t
            keep_negative = ~positives  # t and the space's negatives
            log_p = torch.log_softmax(block.masked_fill(~keep_positive, NEG), dim=1)  # [P, W]
            positive_part = -(log_p * positives).sum(1)  # [P]
            negative_part = -torch.log_softmax(block.masked_fill(~keep_negative, NEG), dim=1)[:, 0]  # [P]
            losses.append(positive_part + negative_part)
        return torch.stack(losses).mean()  # mean over the [K, P] matrix, as in the official code

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        """logits [P, num_outputs] -> [P, C] multi-hot in docre's columns, column 0 iff none.
        top_k: most relations per space (the NA slot counts in the ranking)."""
        self._check(logits)
        logits = logits.float()
        predicted = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)  # [P, O]
        for start, end in self.slices:  # column 0 of threshold_decode's answer (none in this space) is dropped
            predicted[:, start + 1 : end] = threshold_decode(logits[:, start:end], top_k)[:, 1:] > 0
        return relations_to_multi_hot(predicted[:, self.output_column[1:].to(logits.device)], logits.dtype)

    def relation_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """[P, C] per docre relation column: s_r minus its space's raw NA logit (> 0 exactly where decode
        predicts r before the top-k cap); column 0 = 0."""
        self._check(logits)
        logits = logits.float()
        scores = torch.zeros(logits.size(0), len(self.output_column), device=logits.device)  # [P, C]
        column, na_slot = self.output_column.to(logits.device), self.na_slot_of.to(logits.device)
        scores[:, 1:] = logits[:, column[1:]] - logits[:, na_slot[1:]]
        return scores


def training_statistics(labels: torch.Tensor, rel_ids: list[str] | None = None,
                        dataset_spaces: str | None = None) -> dict:
    """The label spaces of AMTLLoss, JSON-able: {"spaces": [[class index, ...], ...]}.

    Args:
        labels: [P_total, C] multi-hot labels of the training split, column 0 = NA.
        rel_ids: the run's relation ids in column order (rel_ids[0] = the NA entry); needed only
            with dataset_spaces.
        dataset_spaces: None = derive the spaces from the training counts (the rule in the module
            docstring); "redocred" = the published Re-DocRED partition, mapped through rel_ids.
    """
    if dataset_spaces is not None:
        return {"spaces": _published_spaces(dataset_spaces, rel_ids, labels.size(1))}
    counts = (labels[:, 1:] > 0).sum(0).tolist()  # [C-1] training pairs holding each relation
    num_relations, total = len(counts), sum(counts)
    if num_relations < len(SPACE_SHARES_PERCENT) + 1 or total == 0:
        raise DocreError(f"loss 'amtl': cannot split {num_relations} relations with {total} training facts "
                         f"into {len(SPACE_SHARES_PERCENT) + 1} label spaces")
    order = sorted(range(1, num_relations + 1), key=lambda c: (-counts[c - 1], c))  # most frequent first
    cumulative = torch.tensor([counts[c - 1] for c in order]).cumsum(0)  # [C-1] integer, so shares are exact
    ends = []
    for k, percent in enumerate(SPACE_SHARES_PERCENT):
        end = int((cumulative * 100 < percent * total).sum()) + 1  # the first relation reaching the share
        lowest = (ends[-1] if ends else 0) + 1
        highest = num_relations - (len(SPACE_SHARES_PERCENT) - k)  # one relation left for each later space
        ends.append(min(max(end, lowest), highest))
    bounds = [0, *ends, num_relations]
    return {"spaces": [order[a:b] for a, b in pairwise(bounds)]}


def _published_spaces(name: str, rel_ids: list[str] | None, num_classes: int) -> list[list[int]]:
    """A published partition (relation ids) as docre class indices through the run's rel_ids."""
    from docre.config import PROJECT_ROOT

    if name not in PUBLISHED_SPACES:
        raise DocreError(f"loss 'amtl': no published label spaces for {name!r}; available: {', '.join(PUBLISHED_SPACES)}")
    if rel_ids is None or len(rel_ids) != num_classes:
        raise DocreError(f"loss 'amtl': the {name} label spaces need the run's {num_classes} relation ids in column order")
    spaces = json.loads((PROJECT_ROOT / PUBLISHED_SPACES[name]).read_text())["spaces"]
    column = {rel: c for c, rel in enumerate(rel_ids) if c > 0}
    published = {rel for space in spaces for rel in space}
    missing = [rel for rel in published if rel not in column] + [rel for rel in column if rel not in published]
    if missing:
        raise DocreError(f"loss 'amtl': the {name} label spaces and the run's relations differ "
                         f"({', '.join(sorted(missing))}); derive the spaces from the training split instead")
    return [[column[rel] for rel in space] for space in spaces]
