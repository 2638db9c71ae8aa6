"""ATLOP (Zhou et al., AAAI 2021): marker embeddings, logsumexp pooling, localized context pooling,
group bilinear classifier (official code github.com/wzhouad/ATLOP, `model.py`). Returns logits; the
model knows no loss.

Everything after the encoder is vectorised over the whole batch: mentions, entities and pairs are
gathered and scattered with the index tensors of `Batch`, and the only Python loops run over the
documents of the batch (for the per-document context product) and over pair chunks.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from docre.data.collate import Batch
from docre.models.bilinear import group_bilinear
from docre.models.long_input import attention_tap, encode
from docre.models.output import PairFeatures

# Default chunk of the group bilinear: about 64 MB of fp32 features (341 pairs at ATLOP's sizes) on
# CPU, which bounds the head's temporaries whatever the number of pairs and costs about 5% of its
# time there against one chunk (docs/performance.md); 1 GB on a GPU, where larger products run faster.
CHUNK_BYTES = 64 * 2**20
GPU_CHUNK_BYTES = 2**30


@dataclass
class SharedSettings:
    """What every model of `MODELS` is built with besides its encoder and class count: the encoder
    side `encode_batch` reads and the group bilinear's sizes. `build_model` fills it from the config
    once, so that the models' constructors do not each repeat the same eight arguments."""

    # the tokenizer's special tokens before and after a sequence ([CLS] / [SEP], <s> / </s>), which every window
    # of a long document gets (data.feature.probe_tokenizer)
    start_ids: list[int]
    end_ids: list[int]
    window: int  # encoder tokens per window; longer documents are encoded in overlapping windows
    layer_pooling: str = "mean_last_3"  # "last" or the mean of the last three layers
    emb_size: int = 768  # the head/tail extractors' width
    block_size: int = 64  # the group bilinear's block
    pair_chunk_size: int = 0  # pairs per group-bilinear chunk (0: by memory, bilinear_chunk)
    general_attention: bool = False  # the encoder's own attention even where docre's fast path exists


class ATLOP(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        shared: SharedSettings,
    ):
        super().__init__()
        keep_encoder(self, encoder, shared)
        emb_size, block_size = shared.emb_size, shared.block_size
        hidden_size = encoder.config.hidden_size
        self.head_extractor = nn.Linear(2 * hidden_size, emb_size)
        self.tail_extractor = nn.Linear(2 * hidden_size, emb_size)
        self.bilinear = nn.Linear(emb_size * block_size, num_classes)
        self.num_outputs = num_classes  # logits per pair (inference sizes the empty ones of pairless documents by it)

    def forward(self, batch: Batch, features: bool = False) -> torch.Tensor | tuple[torch.Tensor, PairFeatures]:
        """Logits [P, num_classes] for the batch's candidate pairs (class 0 = NA/threshold); with
        `features`, also the pairs' group-bilinear factors (models/output.py)."""
        hidden, mention_attention = encode_batch(self, batch)  # [B, L, D], [M, H, L]
        entity_emb, entity_attention = pool_entities(hidden, mention_attention, batch)  # [E, D], [E, H, L]
        heads, tails = batch.hts[:, 0], batch.hts[:, 1]  # [P]
        context = localized_context(hidden, entity_attention, heads, tails, batch.pairs_per_doc, batch.entities_per_doc)  # [P, D]
        return classify_pairs(self, entity_emb[heads], entity_emb[tails], context, features)


def keep_encoder(model: nn.Module, encoder: nn.Module, shared: SharedSettings) -> None:
    """Set what every model of `MODELS` holds on `model`: the encoder (registered first, so its
    parameters come first, as checkpoints of the optimizer state expect), the attention tap it encodes
    through (docre's fast path where the encoder allows it, else the encoder's own: long_input.py), the
    layer pooling, window and special tokens `encode_batch` reads, and the group bilinear's sizes."""
    model.encoder = encoder
    model.tap = attention_tap(encoder, 1 if shared.layer_pooling == "last" else 3, shared.general_attention)
    model.layer_pooling = shared.layer_pooling
    model.start_ids, model.end_ids, model.window = list(shared.start_ids), list(shared.end_ids), shared.window
    model.emb_size, model.block_size, model.pair_chunk_size = shared.emb_size, shared.block_size, shared.pair_chunk_size


def classify_pairs(model: nn.Module, head_emb: torch.Tensor, tail_emb: torch.Tensor, context: torch.Tensor,
                   features: bool = False) -> torch.Tensor | tuple[torch.Tensor, PairFeatures]:
    """ATLOP's classifier: tanh head and tail extractors over [entity; context] [P, 2D], then the
    group bilinear (per block of `block_size`, the outer product of head and tail blocks, one linear
    layer over all blocks' features), computed chunk by chunk. Returns logits [P, C], with `features`
    also the group bilinear's factors (a loss's pair features)."""
    head_rep = torch.tanh(model.head_extractor(torch.cat([head_emb, context], dim=1)))  # [P, emb]
    tail_rep = torch.tanh(model.tail_extractor(torch.cat([tail_emb, context], dim=1)))  # [P, emb]
    chunk = bilinear_chunk(head_rep.device, model.emb_size, model.block_size, model.pair_chunk_size)
    logits = group_bilinear(head_rep, tail_rep, model.bilinear.weight, model.bilinear.bias, model.block_size, chunk)
    return (logits, PairFeatures(head_rep, tail_rep, model.block_size)) if features else logits


def encode_batch(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder pass of a model built on ATLOP's pieces (its encoder, tap, layer pooling,
    window and special tokens): hidden states [B, L, D] and mention-marker attention rows [M, H, L]."""
    return encode(
        model.encoder, model.tap, model.layer_pooling, batch.input_ids, batch.attention_mask,
        batch.mention_doc, batch.mention_pos, model.window, model.start_ids, model.end_ids, batch.mentions_per_doc,
        batch.lengths,
    )


def pool_entities(hidden: torch.Tensor, mention_attention: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Entity embedding = logsumexp over its mentions' marker states (a smooth max); entity
    attention = mean of its mentions' attention rows. An entity whose mentions were all cut
    by max_seq_length gets zeros, as in ATLOP."""
    mention_emb = hidden[batch.mention_doc, batch.mention_pos]  # [M, D]
    num_mentions = mention_emb.size(0)
    padded = torch.cat([mention_emb, mention_emb.new_zeros(1, mention_emb.size(1))])  # [M + 1, D]; row M pads
    index = batch.entity_mentions  # [E, max_mentions]
    valid = index < num_mentions  # [E, max_mentions]
    empty = ~valid.any(1)  # [E]
    # empty entities pool their (zero) padding rows, so logsumexp stays finite; zeroed below
    scores = padded[index].masked_fill(~(valid | empty[:, None]).unsqueeze(-1), float("-inf"))
    entity_emb = torch.logsumexp(scores, dim=1).masked_fill(empty[:, None], 0.0)  # [E, D]

    heads, length = mention_attention.shape[1:]
    summed = mention_attention.new_zeros(index.size(0), heads, length)
    summed.index_add_(0, batch.mention_entity, mention_attention)  # [E, H, L]
    entity_attention = summed / valid.sum(1).clamp(min=1).to(summed.dtype)[:, None, None]
    return entity_emb, entity_attention


def map_cells(entities_per_doc: list[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Every cell (i, j) of every document's n x n entity map, self pairs included, document by
    document and row by row (the maps of DocuNet and KD-DocRE): (document, row i, column j, head, tail),
    each [Q] on `device`, Q = sum of n^2, head and tail in batch numbering. Built from the host counts:
    the model never asks the device for a size."""
    counts = torch.tensor(entities_per_doc)  # [B]
    firsts = torch.cumsum(counts, 0) - counts  # [B]: batch index of each document's entity 0
    cell_doc = torch.repeat_interleave(torch.arange(len(counts)), counts * counts)  # [Q]
    cell_head = torch.cat([torch.arange(n).repeat_interleave(n) for n in entities_per_doc])  # [Q] row i
    cell_tail = torch.cat([torch.arange(n).repeat(n) for n in entities_per_doc])  # [Q] column j
    heads, tails = firsts[cell_doc] + cell_head, firsts[cell_doc] + cell_tail  # [Q]
    return tuple(t.to(device, non_blocking=True) for t in (cell_doc, cell_head, cell_tail, heads, tails))


def localized_context(hidden: torch.Tensor, entity_attention: torch.Tensor, heads: torch.Tensor, tails: torch.Tensor,
                      pairs_per_doc: list[int], entities_per_doc: list[int], epsilon: float = 1e-5) -> torch.Tensor:
    """Localized context pooling: weight tokens by how much both entities attend to them.

    Args as `pair_attentions`. Returns:
        [P, D] context embedding of each pair.
    """
    return torch.cat([attention @ hidden[doc] for doc, attention in
                      pair_attentions(entity_attention, heads, tails, pairs_per_doc, entities_per_doc, epsilon)])


def pair_attentions(entity_attention: torch.Tensor, heads: torch.Tensor, tails: torch.Tensor, pairs_per_doc: list[int],
                    entities_per_doc: list[int], epsilon: float = 1e-5) -> Iterator[tuple[int, torch.Tensor]]:
    """Per document, its pairs' localized-context attention over its tokens: the product of the
    head's and the tail's attention, averaged over heads and normalised to sum 1.

    Per document, one batched product gives the head-summed attention products of all n x n
    entity pairs ([L, n, n]); the candidate pairs are gathered from it. This never builds the
    [P, H, L] products of the pairs (10x more memory at DocRED sizes) and costs the same FLOPs.
    A document's entities are numbered first..last-1 in the batch (counted on the host).

    Args:
        entity_attention: [E, H, L] attention rows of the batch's entities.
        heads, tails: [P] entity indices (batch numbering) of the pairs, grouped by document.
        epsilon: added to each pair's attention mass before normalising (1e-5 in ATLOP).

    Yields:
        (document, [P_doc, L] attention of the document's pairs), documents in order.
    """
    num_heads = entity_attention.size(1)
    pair_start, first = 0, 0
    for doc, (num_pairs, num_entities) in enumerate(zip(pairs_per_doc, entities_per_doc)):
        doc_heads, doc_tails = heads[pair_start : pair_start + num_pairs], tails[pair_start : pair_start + num_pairs]
        last = first + num_entities
        # contiguous: CPU bmm copies every matrix of a strided batch one by one (~40x slower here)
        attention = entity_attention[first:last].permute(2, 0, 1).contiguous()  # [L, n, H]
        products = torch.bmm(attention, attention.transpose(1, 2))  # [L, n, n]: sum over heads of a_i * a_j
        pair_attention = products[:, doc_heads - first, doc_tails - first].t() / num_heads  # [P_doc, L]
        yield doc, pair_attention / (pair_attention.sum(1, keepdim=True) + epsilon)
        pair_start, first = pair_start + num_pairs, last


def bilinear_chunk(device: torch.device, emb_size: int, block_size: int, pair_chunk_size: int = 0) -> int:
    """Pairs per chunk of a group bilinear product: `pair_chunk_size`, or the device's default budget."""
    budget = CHUNK_BYTES if device.type == "cpu" else GPU_CHUNK_BYTES
    return pair_chunk_size or max(1, budget // (4 * emb_size * block_size))
