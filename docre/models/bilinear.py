"""The group bilinear classifier of ATLOP as one autograd function that keeps memory flat.

logits[p, c] = bias[c] + sum_{k,i,j} head[p, k, i] * tail[p, k, j] * weight[c, k, i, j]

The [pairs, blocks * block * block] outer-product features (49,152 per pair at ATLOP's sizes) are
the largest tensor of the whole model. Plain autograd keeps them for the backward pass and builds
two more tensors of that size for the gradients of the two factors. Here the features are built
per chunk of pairs, never saved (recomputed in backward: one cheap outer product), and the factor
gradients are batched matrix products, so no temporary is larger than one chunk's features.
The arithmetic is the same as ATLOP's; only the order of the work changes.

Precision: the logits are computed in float32 whatever the autocast dtype. They decide which
relations are predicted (a threshold compares two logits), and bf16 logits would meet exact ties and
shift decisions; the product is small next to the encoder. The weight gradient, a sum over all
pairs, is accumulated in float32 too.
"""

import torch


def _outer(head: torch.Tensor, tail: torch.Tensor, block: int, out: torch.Tensor) -> torch.Tensor:
    """[n, k*b] x [n, k*b] -> per-block outer products [n, k*b*b], written into out[:n]."""
    pairs = head.size(0)
    features = out[:pairs]
    torch.mul(head.reshape(-1, block, 1), tail.reshape(-1, 1, block), out=features.view(-1, block, block))  # [n*k, b, b]
    return features


class _GroupBilinear(torch.autograd.Function):
    # Every chunk's [n, k*b*b] temporaries go into buffers allocated once per call: a fresh tensor
    # of that size per chunk is mapped and page-faulted in anew (64 MB; the outer product took 8x
    # longer into a fresh tensor than into a reused one on the 2-core machine, docs/performance.md).
    # custom_fwd(cast_inputs=float32): under CUDA autocast the function runs with autocast off on
    # float32 inputs; on other devices the casts below do the same.

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, head, tail, weight, bias, block: int, chunk: int):
        dtype = torch.promote_types(head.dtype, torch.float32)  # float32 logits under any autocast (float64 stays)
        head, tail = head.to(dtype), tail.to(dtype)  # [P, emb]
        weight_c, bias_c = weight.to(dtype), bias.to(dtype)
        features = head.new_empty(min(chunk, head.size(0)), weight.size(1))  # [chunk, k*b*b]
        with torch.autocast(head.device.type, enabled=False):
            logits = torch.cat([
                torch.addmm(bias_c, _outer(h, t, block, features), weight_c.t())  # [n, C]
                for h, t in zip(head.split(chunk), tail.split(chunk))
            ])
        ctx.save_for_backward(head, tail, weight)
        ctx.block, ctx.chunk, ctx.bias_dtype = block, chunk, bias.dtype
        return logits

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_logits):
        head, tail, weight = ctx.saved_tensors
        block, chunk = ctx.block, ctx.chunk
        grad_logits = grad_logits.to(head.dtype)
        weight_c = weight.to(head.dtype)
        grad_weight = torch.zeros_like(weight_c)
        features = head.new_empty(min(chunk, head.size(0)), weight.size(1))  # [chunk, k*b*b]
        grad_features = torch.empty_like(features)
        grad_head, grad_tail = [], []
        for h, t, g in zip(head.split(chunk), tail.split(chunk), grad_logits.split(chunk)):
            grad_weight.addmm_(g.t(), _outer(h, t, block, features))  # [C, k*b*b]
            gf = torch.mm(g, weight_c, out=grad_features[: g.size(0)]).view(-1, block, block)  # [n*k, b, b]
            grad_head.append(torch.bmm(gf, t.reshape(-1, block, 1)).view(h.shape))  # sum over j
            grad_tail.append(torch.bmm(gf.transpose(1, 2), h.reshape(-1, block, 1)).view(t.shape))  # sum over i
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
