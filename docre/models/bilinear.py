"""The group bilinear classifier of ATLOP as one autograd function that keeps memory flat.

logits[p, c] = bias[c] + sum_{k,i,j} head[p, k, i] * tail[p, k, j] * weight[c, k, i, j]

The [pairs, blocks * block * block] outer-product features (49,152 per pair at ATLOP's sizes) are
the largest tensor of the whole model. Plain autograd keeps them for the backward pass and builds
two more tensors of that size for the gradients of the two factors. Here the features are built
per chunk of pairs, never saved (recomputed in backward: one cheap outer product), and the factor
gradients are batched matrix products, so no temporary is larger than one chunk's features.
The arithmetic is the same as ATLOP's; only the order of the work changes.
"""

import torch


def _outer(head: torch.Tensor, tail: torch.Tensor, block: int) -> torch.Tensor:
    """[P, k*b] x [P, k*b] -> [P, k*b*b] per-block outer products."""
    pairs = head.size(0)
    return torch.bmm(head.reshape(-1, block, 1), tail.reshape(-1, 1, block)).view(pairs, -1)  # [P*k, b, b] -> [P, k*b*b]


class _GroupBilinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, head, tail, weight, bias, block: int, chunk: int):
        # Under autocast the matrix products run in the autocast dtype, as nn.Linear would.
        dtype = torch.get_autocast_dtype(head.device.type) if torch.is_autocast_enabled(head.device.type) else head.dtype
        head, tail = head.to(dtype), tail.to(dtype)
        weight_c, bias_c = weight.to(dtype), bias.to(dtype)
        logits = torch.cat([
            torch.addmm(bias_c, _outer(h, t, block), weight_c.t())  # [chunk, C]
            for h, t in zip(head.split(chunk), tail.split(chunk))
        ])
        ctx.save_for_backward(head, tail, weight)
        ctx.block, ctx.chunk, ctx.bias_dtype = block, chunk, bias.dtype
        return logits

    @staticmethod
    def backward(ctx, grad_logits):
        head, tail, weight = ctx.saved_tensors
        block, chunk = ctx.block, ctx.chunk
        grad_logits = grad_logits.to(head.dtype)
        weight_c = weight.to(head.dtype)
        grad_weight = torch.zeros_like(weight_c)
        grad_head, grad_tail = [], []
        for h, t, g in zip(head.split(chunk), tail.split(chunk), grad_logits.split(chunk)):
            grad_weight.addmm_(g.t(), _outer(h, t, block))  # [C, k*b*b]
            grad_features = (g @ weight_c).view(-1, block, block)  # [chunk*k, b, b]
            grad_head.append(torch.bmm(grad_features, t.reshape(-1, block, 1)).view(h.shape))  # sum over j
            grad_tail.append(torch.bmm(grad_features.transpose(1, 2), h.reshape(-1, block, 1)).view(t.shape))  # sum over i
        grad_bias = grad_logits.sum(0)
        return (torch.cat(grad_head), torch.cat(grad_tail), grad_weight.to(weight.dtype),
                grad_bias.to(ctx.bias_dtype), None, None)


def group_bilinear(head: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   block: int, chunk: int = 0) -> torch.Tensor:
    """Group bilinear logits [P, C] from head/tail representations [P, emb] (emb = k * block).

    Args:
        weight: [C, k * block * block] and bias [C], the parameters of ATLOP's final nn.Linear.
        chunk: pairs per chunk (bounds the temporary features to chunk x k*block*block); 0 = all.
    """
    chunk = chunk if chunk > 0 else max(head.size(0), 1)
    return _GroupBilinear.apply(head, tail, weight, bias, block, chunk)
