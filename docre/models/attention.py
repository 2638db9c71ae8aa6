"""Encoder attention that keeps one byte per attention weight in training, not three floats.

In training, BERT-style attention on CPU (eager, or SDPA, which has no fused kernel with dropout
there) keeps the softmax output, the dropout mask and the dropped probabilities of every layer for
the backward pass: about 9 bytes per query-key pair and head, by far the largest activations of a
DocRE step (a two-window 512-token document: ~100 MB per layer). This function keeps the inputs
and a boolean keep-mask, and recomputes the softmax in backward (one extra q.k product per layer).
The arithmetic, including where dropout applies, is that of transformers' eager attention.

Layers whose attention the model pools (localized context pooling) also return the probability
rows the model asks for (`module.docre_rows`, the mention markers), and gradients flow back through
them. Outside dropout training those rows are computed on their own (a few dozen queries instead of
the whole [L, L] map) and the layer's output comes from SDPA like every other layer's.
"""

import torch


class _DropoutAttention(torch.autograd.Function):
    """out = (softmax(q k^T * scale + mask) * keep) v / keep_probability; also returns the kept
    probabilities before the 1 / keep_probability scaling. Saves q, k, v, mask and the keep-mask.

    The [B, H, L, L] tensors are the expensive ones here (each elementwise pass over them costs
    about as much as a layer's q.k product), so the scale is applied to q, 1 / keep_probability to
    the [B, H, L, d] side of each product, and the rest works in place.
    """

    # Autocast: backward runs under the autocast state forward ran under (what torch.amp.custom_bwd
    # does for one device type; here for the inputs' device, CPU included). Without it, under CUDA
    # autocast the forward's softmax runs in float32 and the backward would recompute it in bf16, so
    # the gradient would not be the forward's; under CPU autocast the products would mix dtypes.
    @staticmethod
    def forward(ctx, query, key, value, mask, keep, scale: float, keep_probability: float):
        # mask: additive [B, 1, Lq, Lk], or an empty tensor for none (save_for_backward takes tensors)
        device = query.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        kept = torch.softmax(_scores(query * scale, key, mask), dim=-1).mul_(keep)  # [B, H, Lq, Lk]
        ctx.save_for_backward(query, key, value, mask, keep)
        ctx.scale, ctx.keep_probability = scale, keep_probability
        ctx.set_materialize_grads(False)  # an unused `kept` gets None in backward, not a zero [B, H, L, L]
        output = (kept @ value).div_(keep_probability)  # [B, H, Lq, d]
        return output, kept

    @staticmethod
    def backward(ctx, grad_output, grad_kept):
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _DropoutAttention._backward(ctx, grad_output, grad_kept)

    @staticmethod
    def _backward(ctx, grad_output, grad_kept):
        query, key, value, mask, keep = ctx.saved_tensors
        probs = torch.softmax(_scores(query * ctx.scale, key, mask), dim=-1)  # recomputed
        grad_output = grad_output / ctx.keep_probability  # [B, H, Lq, d]
        grad_value = (probs * keep).transpose(-1, -2) @ grad_output
        grad_probs = grad_output @ value.transpose(-1, -2)  # [B, H, Lq, Lk]
        if grad_kept is not None:
            grad_probs.add_(grad_kept)
        grad_probs.mul_(keep)
        # softmax backward: probs * (g - sum(g * probs)), in place on grad_probs
        grad_scores = grad_probs.sub_((grad_probs * probs).sum(-1, keepdim=True)).mul_(probs)
        grad_query = (grad_scores @ key).mul_(ctx.scale)
        grad_key = (grad_scores.transpose(-1, -2) @ query).mul_(ctx.scale)
        return grad_query, grad_key, grad_value, None, None, None, None


def _scores(query, key, mask) -> torch.Tensor:
    scores = query @ key.transpose(-1, -2)  # [B, H, Lq, Lk]
    return scores if mask is None or mask.numel() == 0 else scores.add_(mask)


def dropout_attention(query, key, value, mask, scale: float, dropout: float,
                      rows: tuple[torch.Tensor, torch.Tensor] | None = None, keep: torch.Tensor | None = None):
    """Attention with dropout on the probabilities: (output [B, Lq, H, d], probability rows or None).

    Args:
        query, key, value: [B, H, L, d]. mask: additive [B, 1, Lq, Lk] or None.
        rows: (sequence [K], position [K]) of the dropped-out probability rows to return, [K, H, Lk].
        keep: the dropout keep-mask to use (tests); drawn from the global RNG otherwise.
    """
    batch, heads, length, _ = query.shape
    if keep is None:
        # half the bytes of float32 draws on a GPU in half precision; float32 elsewhere (the CPU stream stays as it was)
        half = query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)
        draws = torch.rand(batch, heads, length, key.size(2), device=query.device, dtype=query.dtype if half else None)
        keep = draws >= dropout  # [B, H, Lq, Lk] bool
    empty = query.new_zeros(0)  # a tensor placeholder keeps save_for_backward simple when there is no mask
    keep_probability = 1.0 - dropout
    output, kept = _DropoutAttention.apply(query, key, value, empty if mask is None else mask, keep, scale,
                                           keep_probability)
    picked = None if rows is None else kept[rows[0], :, rows[1]] / keep_probability  # [K, H, Lk]
    return output.transpose(1, 2).contiguous(), picked


def encoder_attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """A transformers attention function (AttentionInterface) for docre's encoders.

    Training with dropout: on CPU the memory-lean function above for every layer (SDPA has no fused
    kernel with dropout there, measured in docs/performance.md); on a GPU SDPA's fused kernels for
    every layer but the pooled ones, which need their dropped-out probability rows. Otherwise SDPA,
    the fastest path. Layers the model pools (`module.docre_rows` is set: (sequence [K], position [K]))
    return as their attention weights only those rows of the probabilities, [K, H, Lk].
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = getattr(module, "docre_rows", None)  # (sequence [K], position [K], groups or None)
    scale = scaling if scaling is not None else query.size(-1) ** -0.5
    mask = attention_mask[..., : key.size(2)] if attention_mask is not None else None
    dropout = dropout if module.training else 0.0
    if dropout > 0 and (rows is not None or query.device.type == "cpu"):
        return dropout_attention(query, key, value, mask, scale, dropout, None if rows is None else rows[:2])
    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scale, dropout=dropout, **kwargs)
    return output, None if rows is None else probability_rows(query, key, mask, scale, *rows)


def probability_rows(query, key, mask, scale: float, sequence: torch.Tensor, position: torch.Tensor,
                     groups: list[tuple[int, int, int]] | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) at rows (sequence[k], position[k]) only: [K, H, Lk].

    One product per sequence of the batch between its requested query rows and all its keys.
    `groups` (sequence, first row, rows), known on the host when the rows come sorted by sequence,
    saves finding them on the device (a wait on a GPU).
    """
    if groups is None:  # rows in any order: find each sequence's rows
        found = [(b, (sequence == b).nonzero(as_tuple=True)[0]) for b in sequence.unique().tolist()]  # [k] each
    else:
        found = [(b, slice(start, start + count)) for b, start, count in groups]
    pieces = []
    for b, picked in found:
        row_mask = None if mask is None else mask[b][:, position[picked]]  # [1, k, Lk]
        scores = _scores(query[b][:, position[picked]] * scale, key[b], row_mask)  # [H, k, Lk]
        pieces.append(torch.softmax(scores, dim=-1).transpose(0, 1))  # [k, H, Lk]
    if not pieces:
        return query.new_zeros(0, query.size(1), key.size(2))
    if groups is not None:
        return torch.cat(pieces)  # already in the requested order
    return torch.cat(pieces)[torch.argsort(torch.cat([picked for _, picked in found]))]  # back to the requested order
