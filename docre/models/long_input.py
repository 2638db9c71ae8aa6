"""Encode documents of any length, keeping attention only where the head needs it (ATLOP's
`process_long_input`, github.com/wzhouad/ATLOP, `long_seq.py`).

Windows. ATLOP encodes a document whose n content tokens exceed the window's w content tokens as
two windows, content[0:w] and content[n-w:n]: hidden states are averaged where windows overlap,
attention rows of the windows are summed and renormalised over keys. We generalise this to
k = ceil(n / w) windows with starts spread evenly over [0, n - w]; for w < n <= 2w that is exactly
ATLOP's pair. The first window keeps the start token(s), the last the end token(s). If every
document of the batch fits the window, the batch is encoded as it is.

Attention. Localized context pooling needs the attention probabilities of the pooled layers,
and only at the rows of mention markers. Two paths give them, chosen once when the model is built
(`attention_tap`):

* The fast path (`AttentionTap`), for encoders whose attention goes through transformers'
  AttentionInterface (BERT, RoBERTa, XLM-RoBERTa, ELECTRA, ALBERT, DistilBERT, ModernBERT...):
  every layer runs SDPA (or, in training with dropout, docre's memory-lean attention); the pooled
  layers also compute the probabilities of the marker rows alone ([M, H, L], models/attention.py)
  and a forward hook keeps them. Whole [H, L, L] maps of the document are never kept.
* The general path (`GeneralTap`), for every other encoder that can return its attention
  (DeBERTa, DeBERTa-v2/v3, MPNet, Longformer, BigBird...): the encoder runs its own attention, the
  pooled layers alone are asked for their probabilities (what ATLOP's code reads with
  `output_attentions`), and a hook gathers the marker rows from each layer's map as it is made, so
  the maps of other layers are never returned. Two families return maps in their own layouts:
  - Longformer's sliding-window attention returns, per query i, its 2w + 1 local weights (keys
    i - w .. i + w); they are moved back to token positions (exact: docre sets no global
    attention, so every token attends locally and nothing else has weight).
  - BigBird's block-sparse attention returns, in transformers 5, its probabilities already placed
    at token positions ([N, H, L, L], zero where a block was not attended), so the rows are read
    as they are: the pooled layers keep block-sparse attention, and the pooling sees the attention
    the layer really applied. Only an input too short for block-sparse runs full attention
    (transformers' rule); docre sets the type before each pass, because transformers, switching
    by itself, would keep full attention for every later input, long documents included.
  Both read a document in one window of their position limit (4,096 tokens for longformer-base
  and bigbird-roberta-base; `encoder_window`), where 512-token encoders need several.
  An encoder none of whose pooled layers returns a map (FNet, which mixes tokens by Fourier
  transform) is refused when the model is built.
"""

import copy
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from docre.errors import DocreError
from docre.models.attention import encoder_attention

ATTENTION_NAME = "docre"  # our attention function's name in transformers' AttentionInterface

# Position ids of these families start after the padding index, so fewer positions are usable.
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2, "bertweet": 2, "mpnet": 2}


def encoder_window(config) -> int:
    """Tokens one encoder pass can take (512 for BERT and RoBERTa)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not limit:
        raise DocreError(f"model.backbone: cannot tell how many tokens {config.model_type} takes (its config has no "
                         "max_position_embeddings); set model.window")
    return limit - POSITION_OFFSET.get(config.model_type, 0)


class Tap(Protocol):
    """One encoder pass that also returns the pooled layers' attention rows (`AttentionTap`, `GeneralTap`)."""

    def run(self, encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: tuple,
            padded: bool) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]: ...


def attention_tap(encoder: nn.Module, num_pooled: int, general: bool = False) -> Tap:
    """The fast path where docre can route the encoder's attention, else the general path (see the
    module docstring); `general` takes the general path for any encoder (comparisons, tests)."""
    classes = _recorded_classes(encoder)
    routable = getattr(encoder, "_supports_attention_backend", False) and any(
        isinstance(m, classes) for m in encoder.modules())
    if routable and not general:
        return AttentionTap(encoder, num_pooled)
    return GeneralTap(encoder, num_pooled)


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

        classes = _recorded_classes(encoder)
        modules = [m for m in encoder.modules() if isinstance(m, classes)]
        if not modules:
            raise ValueError(f"cannot find the attention modules of {type(encoder).__name__}")
        AttentionInterface.register(ATTENTION_NAME, encoder_attention)
        routed = copy.copy(encoder.config)
        routed._attn_implementation = ATTENTION_NAME
        for module in modules:
            module.config = routed
        self.pooled = modules[-num_pooled:]
        # encoders with sliding-window layers (ModernBERT) build a mask per layer type: a ready-made
        # [B, 1, L, L] mask would be taken as it is by every layer, local ones included
        self.own_masks = "sliding_attention" in (getattr(encoder.config, "layer_types", None) or [])
        self.capturing = False
        self.kept: list[torch.Tensor] = []
        for module in self.pooled:
            module.docre_rows = None
            module.register_forward_hook(self._keep)

    def run(self, encoder, input_ids, attention_mask, rows: tuple, padded: bool):
        """One pass: hidden states of every layer ([N, L, D] each) and the rows (sequence [K],
        position [K], groups or None) of each pooled layer's probabilities ([K, H, L] each). Without
        padding (`padded` false) no mask is given, as transformers itself drops an all-ones mask."""
        self.set_rows(rows)
        self.kept, self.capturing = [], True
        try:
            mask = attention_mask if self.own_masks else additive_mask(attention_mask) if padded else None
            output = encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
        finally:
            self.capturing = False
        kept, self.kept = self.kept, []
        return output.hidden_states, kept

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


class GeneralTap:
    """The encoder runs its own attention; the rows are gathered from the pooled layers' maps.

    Each pooled layer's map is output[1] of one module: the layer itself where it takes
    `output_attentions` (DeBERTa, MPNet, Longformer: a pre-hook asks the pooled layers alone, so the
    other layers return none and the encoder is called without it), else the layer's child that
    holds the module transformers records attentions from (BigBird's `attention`, which outlives
    BigBird's swaps of its attention module). A forward hook takes the requested rows from the map
    as soon as the layer has made it: in inference the map is freed with the layer's other
    temporaries (the fast path's memory apart from that one map); in training autograd keeps each
    layer's probabilities for backward anyway.
    """

    def __init__(self, encoder: nn.Module, num_pooled: int):
        layers = _encoder_layers(encoder)
        classes = _recorded_classes(encoder)
        if layers is not None:
            pooled = list(layers[-num_pooled:])
            sources = [_attention_source(layer, classes) for layer in pooled]
        else:  # one layer shared across depth (ALBERT): its attention module, whose every call is kept
            pooled = [m for m in encoder.modules() if isinstance(m, classes)][-num_pooled:]
            sources = [(module, False) for module in pooled]
        if not sources or None in sources:
            raise _no_attention(encoder)
        self.needed = min(num_pooled, getattr(encoder.config, "num_hidden_layers", None) or len(sources))  # maps per pass
        # Longformer-style sliding-window maps: source module -> one-sided window w
        self.local_window = {module: _local_window(layer) for (module, _), layer in zip(sources, pooled)}
        self.rows, self.length, self.capturing = None, 0, False
        self.kept: list[torch.Tensor] = []
        for module, asks in sources:
            if asks:
                module.register_forward_pre_hook(_ask_for_attention, with_kwargs=True)
            module.register_forward_hook(self._keep)
        self._check(encoder)

    def run(self, encoder, input_ids, attention_mask, rows: tuple, padded: bool):
        """One pass, as `AttentionTap.run`; each family builds its own mask from the 1/0 one."""
        _set_attention_type(encoder, input_ids.size(1))
        self.rows, self.length = rows, input_ids.size(1)
        self.kept, self.capturing = [], True
        try:
            output = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        finally:
            self.capturing = False
        kept, self.kept = self.kept, []
        if len(kept) < self.needed:
            raise _no_attention(encoder)
        # BigBird's block-sparse pass pads to whole blocks, and its layers' hidden states keep the padding
        return tuple(h[:, : self.length] for h in output.hidden_states), kept

    def _keep(self, module, inputs, outputs) -> None:
        # Recomputation under gradient checkpointing runs this hook again where the source sits inside
        # the checkpointed layer (BigBird): it repeats the gathering (the recomputed graph must save what
        # the forward saved; the rows stay set until the next pass), and only our own forward keeps.
        maps = outputs[1] if isinstance(outputs, tuple) and len(outputs) > 1 else None
        if self.rows is None or not torch.is_tensor(maps) or maps.dim() != 4:
            return  # a missing map is reported by `run`
        sequence, position = self.rows[:2]
        window = self.local_window[module]
        if window is None:
            rows = maps[sequence, :, position, : self.length]  # [N, H, L, L] -> [K, H, L]
        else:  # [N, L, H, 2w + 1] -> [K, H, L]
            rows = local_to_positions(maps[sequence, position], position, window, self.length)
        if self.capturing:
            self.kept.append(rows)

    def _check(self, encoder: nn.Module) -> None:
        """Run eight tokens through once, so that an encoder whose pooled layers return no map is
        refused at build time, not at its first batch. Eval mode, no gradients, no RNG drawn."""
        device = next(encoder.parameters()).device
        ids = (torch.arange(8, device=device) % (getattr(encoder.config, "vocab_size", 0) or 1)).unsqueeze(0)  # [1, 8]
        first = torch.zeros(1, dtype=torch.long, device=device)
        training = encoder.training
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                _, kept = self.run(encoder.eval(), ids, torch.ones_like(ids), (first, first, None), False)
        finally:
            encoder.train(training)
        if any(rows.shape != (1, rows.size(1), 8) for rows in kept):
            raise _no_attention(encoder)


def local_to_positions(local: torch.Tensor, position: torch.Tensor, window: int, length: int) -> torch.Tensor:
    """Sliding-window probabilities [K, H, 2w + 1] of queries at `position` [K] (column j is key
    position + j - w, Longformer's layout) -> [K, H, L] over token positions."""
    count, heads, _ = local.shape
    keys = position.unsqueeze(1) + torch.arange(-window, window + 1, device=local.device)  # [K, 2w + 1]
    keys = torch.where((keys >= 0) & (keys < length), keys, length)  # outside the sequence -> a spare column
    placed = local.new_zeros(count, heads, length + 1).scatter_add_(2, keys.unsqueeze(1).expand(-1, heads, -1), local)
    return placed[:, :, :length]


def _recorded_classes(encoder: nn.Module, key: str = "attentions") -> tuple[type, ...]:
    """The module classes transformers records `key` from (`_can_record_outputs`), where declared."""
    specs = (getattr(encoder, "_can_record_outputs", None) or {}).get(key)
    specs = specs if isinstance(specs, list) else [specs]
    return tuple(c for c in (getattr(s, "target_class", s) for s in specs) if isinstance(c, type))


def _encoder_layers(encoder: nn.Module) -> nn.ModuleList | None:
    """The stack of transformer layers: the first module list as long as the config's layer count."""
    count = getattr(encoder.config, "num_hidden_layers", None)
    return next((m for m in encoder.modules() if isinstance(m, nn.ModuleList) and len(m) == count), None)


def _attention_source(layer: nn.Module, classes: tuple[type, ...]) -> tuple[nn.Module, bool] | None:
    """(module whose output[1] is the layer's attention map, whether it must be asked for it), or
    None for a layer without attention."""
    if "output_attentions" in inspect.signature(layer.forward).parameters:
        return layer, True
    return next(((child, False) for child in layer.children() if any(isinstance(m, classes) for m in child.modules())),
                None)


def _local_window(layer: nn.Module) -> int | None:
    """Longformer's one-sided window w, for a layer whose attention is a sliding window; else None."""
    return next((m.one_sided_attn_window_size for m in layer.modules() if hasattr(m, "one_sided_attn_window_size")), None)


def _ask_for_attention(module, args, kwargs):
    """output_attentions=True, in the place the encoder loop passes it: by keyword (DeBERTa, MPNet,
    Longformer; BigBird from transformers 5.4) or by position (BigBird's loop up to 5.3, where a
    keyword beside the positional value is "got multiple values")."""
    index = _parameter_index(type(module), "output_attentions")
    if index is not None and index < len(args):
        return (*args[:index], True, *args[index + 1:]), kwargs
    return args, {**kwargs, "output_attentions": True}


@functools.cache
def _parameter_index(cls: type, name: str) -> int | None:
    """Where `name` sits among the positional arguments of cls.forward (after self), else None."""
    parameters = list(inspect.signature(cls.forward).parameters)[1:]
    return parameters.index(name) if name in parameters else None


def _set_attention_type(encoder: nn.Module, length: int) -> None:
    """BigBird: the configured attention, or full attention for an input too short for
    block-sparse (transformers' own rule). transformers would switch to full attention itself and
    stay there for every later input; the switch builds new attention modules around the same
    weights, whose unused random initialisation must not draw from the training RNG."""
    configured = getattr(encoder.config, "attention_type", None)
    if not hasattr(encoder, "set_attention_type") or configured is None:
        return
    shortest = (5 + 2 * encoder.config.num_random_blocks) * encoder.config.block_size
    wanted = configured if length > shortest else "original_full"
    if encoder.attention_type != wanted:
        with torch.random.fork_rng(devices=[]):
            encoder.set_attention_type(wanted)


def _no_attention(encoder: nn.Module) -> DocreError:
    return DocreError(
        f"model.backbone: {type(encoder).__name__} (model_type {encoder.config.model_type}) returns no attention; "
        "docre's localized context pooling needs token-to-token attention from the encoder"
    )


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
    tap: Tap,
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


def _run(encoder, tap: Tap, layer_pooling: str, input_ids, attention_mask, rows, padded: bool):
    """One encoder pass: pooled hidden states [N, L, D] and the pooled attention rows `rows`
    (sequence, position, groups) of the pooled layers, [K, H, L]."""
    hidden_states, kept = tap.run(encoder, input_ids, attention_mask, rows, padded)
    if layer_pooling == "last":
        return hidden_states[-1], kept[-1]
    return torch.stack(hidden_states[-3:]).mean(0), torch.stack(kept[-3:]).mean(0)


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
