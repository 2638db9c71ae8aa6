"""Encode documents of any length, keeping attention only where the head needs it (ATLOP's
`process_long_input`, github.com/wzhouad/ATLOP, `long_seq.py`).

Windows. ATLOP encodes a document whose n content tokens exceed the window's w content tokens as
two windows, content[0:w] and content[n-w:n]: hidden states are averaged where windows overlap,
attention rows of the windows are summed and renormalised over keys. We generalise this to
k = ceil(n / w) windows with starts spread evenly over [0, n - w]; for w < n <= 2w that is exactly
ATLOP's pair. The first window keeps the start token(s), the last the end token(s). If every
document of the batch fits the window, the batch is encoded as it is.

Attention. Localized context pooling needs the attention probabilities of the pooled layers,
and only at the rows of mention markers. Every layer runs SDPA (or, in training with dropout,
docre's memory-lean attention); the pooled layers also compute the probabilities of the marker
rows alone ([M, H, L], models/attention.py) and a forward hook keeps them. Whole [H, L, L] maps
of the document are never kept.
"""

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from docre.models.attention import encoder_attention

ATTENTION_NAME = "docre"  # our attention function's name in transformers' AttentionInterface

# Position ids of these families start after the padding index, so fewer positions are usable.
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2, "bertweet": 2}


def encoder_window(config) -> int:
    """Tokens one encoder pass can take (512 for BERT and RoBERTa)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not limit:
        raise ValueError(f"cannot tell the window size of {config.model_type}; set model.window")
    return limit - POSITION_OFFSET.get(config.model_type, 0)


class AttentionTap:
    """Routes the encoder's attention through docre's function and keeps the pooled layers' rows.

    Finds the self-attention modules through `_can_record_outputs["attentions"]` (the class that
    transformers itself records attentions from) and gives them a copy of the config naming
    `models.attention.encoder_attention`, registered with transformers' AttentionInterface. The
    pooled modules get the rows to compute (`docre_rows`) before each pass and return them as their
    attention weights; a forward hook keeps them. The model keeps its eager config, so masks stay
    additive floats.
    """

    def __init__(self, encoder: nn.Module, num_pooled: int):
        from transformers import AttentionInterface

        recorded = getattr(encoder, "_can_record_outputs", None) or {}
        target = recorded.get("attentions")
        target = getattr(target, "target_class", target)
        modules = [m for m in encoder.modules() if isinstance(target, type) and isinstance(m, target)]
        if not modules:
            raise ValueError(f"cannot find the attention modules of {type(encoder).__name__}")
        AttentionInterface.register(ATTENTION_NAME, encoder_attention)
        routed = copy.copy(encoder.config)
        routed._attn_implementation = ATTENTION_NAME
        for module in modules:
            module.config = routed
        self.pooled = modules[-num_pooled:]
        self.capturing = False
        self.kept: list[torch.Tensor] = []
        for module in self.pooled:
            module.docre_rows = None
            module.register_forward_hook(self._keep)

    def set_rows(self, rows: tuple) -> None:
        """(sequence [K], position [K], groups or None) of the rows the next passes compute (see
        `attention.probability_rows`). They stay set, because gradient-checkpoint recomputation in
        backward must repeat the forward exactly."""
        for module in self.pooled:
            module.docre_rows = rows

    def _keep(self, module, inputs, outputs) -> None:
        # recomputation under gradient checkpointing also runs this hook; only our own forward keeps
        if self.capturing:
            self.kept.append(outputs[1])  # [K, H, L]


@dataclass
class Window:
    doc: int
    start: int  # first document position copied into the window
    length: int  # document positions copied
    whole: bool  # the window is the whole document, special tokens included
    keep_start: bool  # the window's start tokens stand for the document's (first window)
    keep_end: bool  # the window's end tokens stand for the document's (last window)


def plan_windows(lengths: list[int], window: int, num_start: int, num_end: int) -> list[Window]:
    """Windows covering each document; `lengths` count special tokens, and `window` too."""
    plan = []
    content_width = window - num_start - num_end
    for doc, total in enumerate(lengths):
        if total <= window:
            plan.append(Window(doc, 0, total, True, True, True))
            continue
        content = total - num_start - num_end
        count = math.ceil(content / content_width)
        for i in range(count):
            offset = round(i * (content - content_width) / (count - 1))
            plan.append(Window(doc, num_start + offset, content_width, False, i == 0, i == count - 1))
    return plan


def encode(
    encoder: nn.Module,
    tap: AttentionTap,
    layer_pooling: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    query_doc: torch.Tensor,
    query_pos: torch.Tensor,
    window: int,
    start_ids: list[int],
    end_ids: list[int],
    queries_per_doc: list[int] | None = None,
    lengths: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a batch; return hidden states and the attention rows of the query positions.

    Args:
        input_ids, attention_mask: [B, L] documents with their special tokens, right-padded.
        query_doc, query_pos: [Q] document and position of each query (mention marker).
        queries_per_doc: the number of queries of each document, when the queries come sorted by
            document (known on the host: the device need not be asked).
        lengths: the tokens of each document (known on the host: likewise).

    Returns:
        hidden: [B, L, D] pooled hidden states.
        query_attention: [Q, H, L] pooled attention rows of the queries.
    """
    batch, length = input_ids.shape
    if length <= window:
        groups = None
        if queries_per_doc is not None:
            starts = [sum(queries_per_doc[:b]) for b in range(len(queries_per_doc))]
            groups = [(b, start, count) for b, (start, count) in enumerate(zip(starts, queries_per_doc)) if count]
        padded = lengths is None or min(lengths) < length
        return _run(encoder, tap, layer_pooling, input_ids, attention_mask, (query_doc, query_pos, groups), padded)

    if lengths is None:
        lengths = attention_mask.sum(1).tolist()
    plan = plan_windows(lengths, window, len(start_ids), len(end_ids))
    win_ids, win_mask, win_dest = _window_tensors(plan, input_ids, lengths, window, start_ids, end_ids)
    width = win_ids.size(1)
    # every (query, window) pair where the window keeps the query's position
    query_flat = query_doc * length + query_pos  # [Q]
    hit_query, hit_slot = (win_dest.view(1, -1) == query_flat.view(-1, 1)).nonzero(as_tuple=True)  # [K]
    hit_window, hit_row = hit_slot // width, hit_slot % width
    # [N, W, D], [K, H, W]
    hidden_w, rows = _run(encoder, tap, layer_pooling, win_ids, win_mask, (hit_window, hit_row, None), True)

    # hidden: average over the windows that keep each position
    keep = win_dest >= 0  # [N, W]
    flat_dest = win_dest[keep]  # [kept] doc * L + pos
    hidden = hidden_w.new_zeros(batch * length, hidden_w.size(-1)).index_add_(0, flat_dest, hidden_w[keep])
    count = hidden_w.new_zeros(batch * length).index_add_(0, flat_dest, hidden_w.new_ones(flat_dest.numel()))
    hidden = (hidden / count.clamp(min=1).unsqueeze(1)).view(batch, length, -1)

    # attention rows: move each window's keys to document positions, sum over windows, renormalise
    key_dest = win_dest[hit_window]  # [K, W]
    key_pos = torch.where(key_dest >= 0, key_dest % length, length)  # dropped keys -> a spare column
    heads = rows.size(1)
    summed = rows.new_zeros(len(hit_query), heads, length + 1)
    summed.scatter_add_(2, key_pos.unsqueeze(1).expand(-1, heads, -1), rows)  # [K, H, L + 1]
    attention = rows.new_zeros(len(query_flat), heads, length + 1).index_add_(0, hit_query, summed)[:, :, :length]
    attention = attention / (attention.sum(-1, keepdim=True) + 1e-10)  # [Q, H, L]
    return hidden, attention


def _run(encoder, tap: AttentionTap, layer_pooling: str, input_ids, attention_mask, rows, padded: bool):
    """One encoder pass: pooled hidden states [N, L, D] and the pooled attention rows `rows`
    (sequence, position, groups) of the pooled layers, [K, H, L]. Without padding (`padded` false)
    no mask is given, as transformers itself drops an all-ones mask."""
    tap.set_rows(rows)
    tap.kept, tap.capturing = [], True
    try:
        mask = additive_mask(attention_mask) if padded else None
        output = encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
    finally:
        tap.capturing = False
    kept, tap.kept = tap.kept, []
    if layer_pooling == "last":
        return output.hidden_states[-1], kept[-1]
    return torch.stack(output.hidden_states[-3:]).mean(0), torch.stack(kept[-3:]).mean(0)


def additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] 1/0 mask -> the [B, 1, L, L] additive float32 mask transformers builds for eager
    attention (0 for real keys, float32's lowest value for padding), as an expanded view. Given
    ready-made, it spares transformers' own mask building, which asks the device whether the batch
    has padding at all (a wait for the GPU in every forward)."""
    batch, length = attention_mask.shape
    lowest = torch.finfo(torch.float32).min
    keys = torch.zeros(batch, length, device=attention_mask.device).masked_fill_(attention_mask == 0, lowest)  # [B, L]
    return keys[:, None, None, :].expand(batch, 1, length, length)


def _window_tensors(plan, input_ids, lengths, window, start_ids, end_ids):
    """Token ids [N, W], mask [N, W] and destination (doc * L + pos, or -1) [N, W] per window."""
    length = input_ids.size(1)
    device = input_ids.device
    width = max(w.length if w.whole else w.length + len(start_ids) + len(end_ids) for w in plan)
    ids = input_ids.new_zeros(len(plan), width)
    mask = torch.zeros_like(ids)
    dest = torch.full_like(ids, -1)
    starts = torch.tensor(start_ids, device=device, dtype=ids.dtype)
    ends = torch.tensor(end_ids, device=device, dtype=ids.dtype)
    for n, w in enumerate(plan):
        base = w.doc * length
        if w.whole:
            ids[n, : w.length] = input_ids[w.doc, : w.length]
            mask[n, : w.length] = 1
            dest[n, : w.length] = torch.arange(base, base + w.length, device=device)
            continue
        ns, total = len(start_ids), w.length + len(start_ids) + len(end_ids)
        ids[n, :ns] = starts
        ids[n, ns : ns + w.length] = input_ids[w.doc, w.start : w.start + w.length]
        ids[n, ns + w.length : total] = ends
        mask[n, :total] = 1
        dest[n, ns : ns + w.length] = torch.arange(base + w.start, base + w.start + w.length, device=device)
        if w.keep_start:
            dest[n, :ns] = torch.arange(base, base + ns, device=device)
        if w.keep_end:
            doc_end = lengths[w.doc]
            dest[n, ns + w.length : total] = torch.arange(base + doc_end - len(end_ids), base + doc_end, device=device)
    return ids, mask, dest
