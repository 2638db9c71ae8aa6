"""KD-DocRE's relation model (Tan et al., Findings of ACL 2022, "Document-Level Relation Extraction
with Adaptive Focal Loss and Knowledge Distillation"; official code github.com/tonytan48/KD-DocRE,
`model.py`, with `axial_attention` 0.6.1 by lucidrains for the attention layers).

ATLOP's entity representations (logsumexp mention pooling, localized context pooling, tanh head and
tail extractors, group bilinear) are built for every ordered entity pair of a document, so each
document becomes an n x n map of pair features. The group bilinear features are projected to the
encoder's hidden size and refined by axial attention layers: each cell attends along its row (the
pairs with the same head) and along its column (the pairs with the same tail), so a pair's
representation sees the other pairs sharing an entity with it. A linear classifier reads the
candidate pairs' cells. Returns logits; the model holds no loss (KD-DocRE trains with the adaptive
focal loss, `loss.name=afl`).

Not implemented: knowledge distillation (the teacher's logits on distantly supervised data and the
MSE term towards them) and distant-supervision pre-training; docre has no distant data. Where the
official code pads every document's map to 42 entities (DocRED's maximum) and lets the padding
cells take part in the attention, docre attends over the document's own n entities only (padding
to the batch's largest document is masked out), so a document's logits do not depend on the others.
The official dropout in the axial layers is 0.0, so the layers hold none.

Self pairs: the official `hts` hold every cell of the n x n grid, the diagonal (h = t) labelled NA
and its logits multiplied by 0, so the official loss is a mean over the batch's sum(n^2) rows; docre
gives logits for the sum(n(n-1)) candidate pairs only (`batch.hts`). The official loss is therefore
docre's scaled by sum(n(n-1)) / sum(n^2) (0.9 for 10-entity documents, 0.5 for 2-entity ones; its
gradient likewise) plus a constant: each self pair's all-zero logits add log C under AFL, without
gradient. docre leaves them out: a self pair is no candidate, every loss sees the candidate pairs
only (the model/loss contract), and the difference is a per-batch weight, which AdamW largely
normalises away, not another objective.
"""

import math

import torch
from torch import nn

from docre.data.collate import Batch
from docre.errors import DocreError
from docre.models.atlop import (
    SharedSettings,
    bilinear_chunk,
    encode_batch,
    keep_encoder,
    localized_context,
    map_cells,
    pool_entities,
)
from docre.models.bilinear import group_bilinear
from docre.models.output import PairFeatures


class AxialSelfAttention(nn.Module):
    """Multi-head self-attention along one axis of the pair map, with padded entities masked out."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise DocreError(f"model.backbone: its hidden size {dim} is not divisible by the {num_heads} heads of "
                             f"KD-DocRE's axial attention; choose an encoder whose hidden size is a multiple of {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x [S, T, D] (S sequences of T cells), key_mask [S, T] True for real cells -> [S, T, D]."""
        sequences, length, dim = x.shape
        head_dim = dim // self.num_heads

        def split(t):
            return t.view(sequences, length, self.num_heads, head_dim).transpose(1, 2)  # [S, heads, T, head_dim]

        query, key, value = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.einsum("shid,shjd->shij", query, key) / math.sqrt(head_dim)  # [S, heads, T, T]
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        weights = scores.softmax(-1)
        mixed = torch.einsum("shij,shjd->shid", weights, value)  # [S, heads, T, head_dim]
        return self.output(mixed.transpose(1, 2).reshape(sequences, length, dim))  # [S, T, D]


class AxialLayer(nn.Module):
    """One KD-DocRE axial layer: x + (attention along heads + attention along tails), then a linear
    layer and LayerNorm (the official order: no activation, no residual around the linear layer)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.along_heads = AxialSelfAttention(dim, num_heads)  # cell (i, j) attends to (k, j): same tail
        self.along_tails = AxialSelfAttention(dim, num_heads)  # cell (i, j) attends to (i, k): same head
        self.linear = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, pair_map: torch.Tensor, entity_mask: torch.Tensor) -> torch.Tensor:
        """pair_map [B, N, N, D] (cell (i, j) = pair head i, tail j), entity_mask [B, N] -> [B, N, N, D]."""
        batch, size, _, dim = pair_map.shape
        key_mask = entity_mask[:, None, :].expand(batch, size, size).reshape(batch * size, size)  # [B*N, N]
        rows = self.along_tails(pair_map.reshape(batch * size, size, dim), key_mask)  # [B*N, N, D]
        columns = pair_map.transpose(1, 2).reshape(batch * size, size, dim)  # [B*N(tail), N(head), D]
        columns = self.along_heads(columns, key_mask).view(batch, size, size, dim).transpose(1, 2)  # [B, N, N, D]
        pair_map = pair_map + rows.view(batch, size, size, dim) + columns
        return self.norm(self.linear(pair_map))


class KDDocRE(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        shared: SharedSettings,
        num_axial_layers: int = 6,
        axial_heads: int = 8,
    ):
        """Args as ATLOP's; `num_axial_layers` and `axial_heads` are the official values (6, 8)."""
        super().__init__()
        keep_encoder(self, encoder, shared)
        emb_size, block_size = shared.emb_size, shared.block_size
        hidden_size = encoder.config.hidden_size
        self.head_extractor = nn.Linear(2 * hidden_size, emb_size)
        self.tail_extractor = nn.Linear(2 * hidden_size, emb_size)
        # the group bilinear features projected to the hidden size (no bias, as in the official code)
        self.projection = nn.Linear(emb_size * block_size, hidden_size, bias=False)
        self.axial_layers = nn.ModuleList(AxialLayer(hidden_size, axial_heads) for _ in range(num_axial_layers))
        self.classifier = nn.Linear(hidden_size, num_classes)
        self.num_outputs = num_classes

    def forward(self, batch: Batch, features: bool = False,
                synthetic: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, PairFeatures]:
        """Logits [P, num_classes] for the batch's candidate pairs (class 0 = NA/threshold); with
        `features`, also the refined pair cells the classifier reads ([P, D], a plain vector).
        `synthetic` [S, D]: cells made by VaeDiff-DocRE's augmenter (its stage 3), classified after the real
        pairs: logits [P + S, C] and, with `features`, cells [P + S, D]."""
        hidden, mention_attention = encode_batch(self, batch)  # [B, L, D], [M, H, L]
        entity_emb, entity_attention = pool_entities(hidden, mention_attention, batch)  # [E, D], [E, H, L]

        # every cell (i, j) of every document's n x n map, self pairs included (they take part in the
        # attention as in the official code; no candidate pair reads them)
        device = hidden.device
        cell_doc, cell_head, cell_tail, heads, tails = map_cells(batch.entities_per_doc, device)  # [Q] each
        counts = torch.tensor(batch.entities_per_doc).to(device, non_blocking=True)  # [B]
        firsts = torch.cumsum(counts, 0) - counts  # [B]: batch index of each document's entity 0

        context = localized_context(
            hidden, entity_attention, heads, tails, [n * n for n in batch.entities_per_doc], batch.entities_per_doc,
            # official: sum over heads / (sum + 1e-10), i.e. the mean over heads / (mean + 1e-10 / heads)
            epsilon=1e-10 / entity_attention.size(1),
        )  # [Q, D]
        head_rep = torch.tanh(self.head_extractor(torch.cat([entity_emb[heads], context], dim=1)))  # [Q, emb]
        tail_rep = torch.tanh(self.tail_extractor(torch.cat([entity_emb[tails], context], dim=1)))  # [Q, emb]
        chunk = bilinear_chunk(device, self.emb_size, self.block_size, self.pair_chunk_size)
        cell_features = group_bilinear(head_rep, tail_rep, self.projection.weight,
                                       self.projection.weight.new_zeros(self.projection.out_features),
                                       self.block_size, chunk)  # [Q, D]

        # the maps of the batch padded to its largest document; padded entities are masked as keys
        size = max(batch.entities_per_doc)
        pair_map = cell_features.new_zeros(len(counts), size, size, cell_features.size(1))  # [B, N, N, D]
        pair_map = pair_map.index_put((cell_doc, cell_head, cell_tail), cell_features)
        entity_mask = torch.arange(size, device=device)[None, :] < counts[:, None]  # [B, N]
        refined = pair_map
        for layer in self.axial_layers:
            refined = layer(refined, entity_mask)
        refined = refined + pair_map  # the official residual around the whole axial stack

        pair_doc = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(batch.pairs_per_doc))  # [P]
        pair_doc = pair_doc.to(device, non_blocking=True)
        pair_cells = refined[pair_doc, batch.hts[:, 0] - firsts[pair_doc], batch.hts[:, 1] - firsts[pair_doc]]  # [P, D]
        if synthetic is not None:
            pair_cells = torch.cat([pair_cells, synthetic.to(pair_cells.dtype)])  # [P + S, D]
        # float32 logits under any autocast, as ATLOP's group bilinear gives: a threshold compares two logits
        weight, bias = self.classifier.weight.float(), self.classifier.bias.float()
        with torch.autocast(device.type, enabled=False):
            logits = nn.functional.linear(pair_cells.float(), weight, bias)  # [P, C]
        return (logits, PairFeatures(vector=pair_cells)) if features else logits
