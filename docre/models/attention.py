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
    """out = dropout(softmax(q k^T * scale + mask)) v; saves q, k, v, mask and the keep-mask."""

    @staticmethod
    def forward(ctx, query, key, value, mask, keep, scale: float, keep_probability: float, return_probs: bool):
        # mask: additive [B, 1, Lq, Lk], or an empty tensor for none (save_for_backward takes tensors)
        probs = torch.softmax(_scores(query, key, mask, scale), dim=-1)  # [B, H, Lq, Lk]
        dropped = probs * keep / keep_probability
        ctx.save_for_backward(query, key, value, mask, keep)
        ctx.scale, ctx.keep_probability = scale, keep_probability
        output = dropped @ value  # [B, H, Lq, d]
        return (output, dropped) if return_probs else (output, None)

    @staticmethod
    def backward(ctx, grad_output, grad_dropped):
        query, key, value, mask, keep = ctx.saved_tensors
        probs = torch.softmax(_scores(query, key, mask, ctx.scale), dim=-1)  # recomputed
        dropped = probs * keep / ctx.keep_probability
        grad_value = dropped.transpose(-1, -2) @ grad_output
        grad_dropped_total = grad_output @ value.transpose(-1, -2)
        if grad_dropped is not None:
            grad_dropped_total = grad_dropped_total + grad_dropped
        grad_probs = grad_dropped_total * keep / ctx.keep_probability
        grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True))  # softmax backward
        grad_query = (grad_scores @ key) * ctx.scale
        grad_key = (grad_scores.transpose(-1, -2) @ query) * ctx.scale
        return grad_query, grad_key, grad_value, None, None, None, None, None


def _scores(query, key, mask, scale: float) -> torch.Tensor:
    scores = (query @ key.transpose(-1, -2)) * scale  # [B, H, Lq, Lk]
    return scores if mask is None or mask.numel() == 0 else scores + mask


def dropout_attention(query, key, value, mask, scale: float, dropout: float, return_probs: bool,
                      keep: torch.Tensor | None = None):
    """Attention with dropout on the probabilities; returns (output [B, Lq, H, d], probs or None).

    Args:
        query, key, value: [B, H, L, d]. mask: additive [B, 1, Lq, Lk] or None.
        keep: the dropout keep-mask to use (tests); drawn from the global RNG otherwise.
    """
    batch, heads, length, _ = query.shape
    if keep is None:
        keep = torch.rand(batch, heads, length, key.size(2), device=query.device) >= dropout  # [B, H, Lq, Lk] bool
    empty = query.new_zeros(0)  # a tensor placeholder keeps save_for_backward simple when there is no mask
    output, probs = _DropoutAttention.apply(query, key, value, empty if mask is None else mask, keep, scale,
                                            1.0 - dropout, return_probs)
    return output.transpose(1, 2).contiguous(), probs


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
        output, probs = dropout_attention(query, key, value, mask, scale, dropout, return_probs=rows is not None)
        return output, None if rows is None else probs[rows[0], :, rows[1]]  # [K, H, Lk]
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
        scores = _scores(query[b][:, position[picked]], key[b], row_mask, scale)  # [H, k, Lk]
        pieces.append(torch.softmax(scores, dim=-1).transpose(0, 1))  # [k, H, Lk]
        picked_all.append(picked)
    if not pieces:
        return query.new_zeros(0, query.size(1), key.size(2))
    return torch.cat(pieces)[torch.argsort(torch.cat(picked_all))]  # back to the requested order
