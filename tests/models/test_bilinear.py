"""The group bilinear function equals ATLOP's plain autograd formula, values and all four
gradients, whatever the chunking (including a last chunk shorter than the others)."""

import pytest
import torch

from docre.models.bilinear import group_bilinear


def reference(head, tail, weight, bias, block):
    pairs = head.size(0)
    outer = head.view(pairs, -1, block, 1) * tail.view(pairs, -1, 1, block)  # [P, k, b, b]
    return outer.reshape(pairs, -1) @ weight.t() + bias


@pytest.mark.parametrize("chunk", [0, 1, 3, 7, 50])
def test_matches_plain_autograd(chunk):
    generator = torch.Generator().manual_seed(0)
    pairs, blocks, block, classes = 7, 3, 4, 5
    inputs = [torch.randn(pairs, blocks * block, generator=generator, dtype=torch.float64) for _ in range(2)]
    inputs += [torch.randn(classes, blocks * block * block, generator=generator, dtype=torch.float64),
               torch.randn(classes, generator=generator, dtype=torch.float64)]
    weight_out = torch.randn(pairs, classes, generator=generator, dtype=torch.float64)
    results = []
    for fast in (True, False):
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        logits = group_bilinear(*leaves, block, chunk) if fast else reference(*leaves, block)
        (logits * weight_out).sum().backward()
        results.append([logits.detach()] + [x.grad for x in leaves])
    for fast, slow in zip(*results):
        torch.testing.assert_close(fast, slow)
