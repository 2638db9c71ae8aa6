"""The memory-lean dropout attention equals plain autograd attention given the same dropout mask:
outputs, returned probabilities, and gradients (including gradients through the probabilities).
The marker-row probabilities equal those rows of the full softmax, values and gradients."""

import pytest
import torch

from docre.models.attention import dropout_attention, probability_rows


def reference(query, key, value, mask, keep, scale, dropout):
    scores = query @ key.transpose(-1, -2) * scale + mask
    dropped = torch.softmax(scores, dim=-1) * keep / (1 - dropout)
    return (dropped @ value).transpose(1, 2), dropped


@pytest.mark.parametrize("with_mask", [True, False])
def test_matches_autograd_reference(with_mask):
    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, 7, 5)
    inputs = [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(3)]
    mask = torch.zeros(2, 1, 7, 7, dtype=torch.float64)
    if with_mask:
        mask[1, :, :, 5:] = torch.finfo(torch.float64).min  # padding keys of the second sequence
    keep = torch.rand(2, 3, 7, 7, generator=generator) >= 0.3
    weight_out = torch.randn(2, 7, 3, 5, generator=generator, dtype=torch.float64)
    rows = (torch.tensor([1, 0, 1, 1]), torch.tensor([6, 2, 0, 6]))  # out of order, one repeated
    weight_probs = torch.randn(4, 3, 7, generator=generator, dtype=torch.float64)
    results = []
    for fast in (True, False):
        q, k, v = (x.clone().requires_grad_(True) for x in inputs)
        if fast:
            out, probs = dropout_attention(q, k, v, mask if with_mask else None, 0.4, 0.3, rows, keep=keep)  # [K, H, Lk]
        else:
            out, probs = reference(q, k, v, mask, keep, 0.4, 0.3)
            probs = probs[rows[0], :, rows[1]]
        ((out * weight_out).sum() + (probs * weight_probs).sum()).backward()
        results.append((out.detach(), probs.detach(), q.grad, k.grad, v.grad))
    for fast, slow in zip(*results):
        torch.testing.assert_close(fast, slow)


def test_without_probabilities_matches_the_reference():
    # no rows asked: the kept probabilities get no gradient (None in backward, not a zero tensor)
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(2, 2, 6, 4, generator=generator, dtype=torch.float64) for _ in range(3)]
    keep = torch.rand(2, 2, 6, 6, generator=generator) >= 0.1
    weight = torch.randn(2, 6, 2, 4, generator=generator, dtype=torch.float64)
    results = []
    for fast in (True, False):
        q, k, v = (x.clone().requires_grad_(True) for x in inputs)
        if fast:
            out, probs = dropout_attention(q, k, v, None, 0.5, 0.1, keep=keep)
            assert probs is None
        else:
            out = reference(q, k, v, torch.zeros(()), keep, 0.5, 0.1)[0]
        (out * weight).sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad))
    for fast, slow in zip(*results):
        torch.testing.assert_close(fast, slow)


def test_random_keep_mask_drops_about_the_dropout_rate():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 4, requires_grad=True) for _ in range(3))
    every_row = (torch.zeros(64, dtype=torch.long), torch.arange(64))
    out, probs = dropout_attention(q, k, v, None, 0.5, 0.25, every_row)  # [64, 2, 64]
    assert out.shape == (1, 64, 2, 4)
    assert abs((probs == 0).float().mean().item() - 0.25) < 0.02  # 8,192 draws
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_probability_rows_equal_rows_of_the_full_softmax():
    generator = torch.Generator().manual_seed(1)
    query, key = (torch.randn(3, 2, 6, 4, generator=generator, dtype=torch.float64) for _ in range(2))
    mask = torch.zeros(3, 1, 6, 6, dtype=torch.float64)
    mask[2, :, :, 4:] = torch.finfo(torch.float64).min  # padding keys of the third sequence
    # rows out of order, repeated, and sequence 1 never asked for
    sequence, position = torch.tensor([2, 0, 2, 0, 2]), torch.tensor([3, 5, 0, 5, 1])
    weight = torch.randn(5, 2, 6, generator=generator, dtype=torch.float64)
    results = []
    for fast in (True, False):
        q, k = query.clone().requires_grad_(True), key.clone().requires_grad_(True)
        if fast:
            rows = probability_rows(q, k, mask, 0.5, sequence, position)
        else:
            rows = torch.softmax(q @ k.transpose(-1, -2) * 0.5 + mask, dim=-1)[sequence, :, position]
        (rows * weight).sum().backward()
        results.append((rows.detach(), q.grad, k.grad))
    assert results[0][0].shape == (5, 2, 6) and results[0][0][0, :, 4:].abs().max() == 0
    for fast, slow in zip(*results):
        torch.testing.assert_close(fast, slow)
    assert probability_rows(query, key, None, 0.5, sequence[:0], position[:0]).shape == (0, 2, 6)
