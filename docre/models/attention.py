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

    @staticmethod
    def forward(ctx, query, key, value, mask, keep, scale: float, keep_probability: float):
        # mask: additive [B, 1, Lq, Lk], or an empty tensor for none (save_for_backward takes tensors)
        kept = torch.softmax(_scores(query * scale, key, mask), dim=-1).mul_(keep)  # [B, H, Lq, Lk]
        ctx.save_for_backward(query, key, value, mask, keep)
        ctx.scale, ctx.keep_probability = scale, keep_probability
        ctx.set_materialize_grads(False)  # an unused `kept` gets None in backward, not a zero [B, H, L, L]
        output = (kept @ value).div_(keep_probability)  # [B, H, Lq, d]
        return output, kept

    @staticmethod
    def backward(ctx, grad_output, grad_kept):
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
        keep = torch.rand(batch, heads, length, key.size(2), device=query.device) >= dropout  # [B, H, Lq, Lk] bool
    empty = query.new_zeros(0)  # a tensor placeholder keeps save_for_backward simple when there is no mask
    keep_probability = 1.0 - dropout
    output, kept = _DropoutAttention.apply(query, key, value, empty if mask is None else mask, keep, scale,
                                           keep_probability)
    picked = None if rows is None else kept[rows[0], :, rows[1]] / keep_probability  # [K, H, Lk]
    return output.transpose(1, 2).contiguous(), picked


def encoder_attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """A transformers attention function (AttentionInterface) for docre's encoders.

    Training with dropout: the memory-lean function above for every layer. Otherwise SDPA, the
    fastest path. Layers the model pools (`module.docre_rows` is set: (sequence [K], position [K]))
    return as their attention weights only those rows of the probabilities, [K, H, Lk].
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = getattr(module, "docre_rows", None)
    scale = scaling if scaling is not None else query.size(-1) ** -0.5
    mask = attention_mask[..., : key.size(2)] if attention_mask is not None else None
    if module.training and dropout > 0:
        return dropout_attention(query, key, value, mask, scale, dropout, rows)
    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scale, dropout=0.0, **kwargs)
    return output, None if rows is None else probability_rows(query, key, mask, scale, *rows)


def probability_rows(query, key, mask, scale: float, sequence: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale + mask) at rows (sequence[k], position[k]) only: [K, H, Lk].

    One product per sequence of the batch between its requested query rows and all its keys.
    """
    pieces, picked_all = [], []
    for b in sequence.unique().tolist():
        picked = (sequence == b).nonzero(as_tuple=True)[0]  # [k]
        row_mask = None if mask is None else mask[b][:, position[picked]]  # [1, k, Lk]
        scores = _scores(query[b][:, position[picked]] * scale, key[b], row_mask)  # [H, k, Lk]
        pieces.append(torch.softmax(scores, dim=-1).transpose(0, 1))  # [k, H, Lk]
        picked_all.append(picked)
    if not pieces:
        return query.new_zeros(0, query.size(1), key.size(2))
    return torch.cat(pieces)[torch.argsort(torch.cat(picked_all))]  # back to the requested order
