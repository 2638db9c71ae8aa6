"""ATL against a slow per-pair reference written from ATLOP's `losses.py` (github.com/wzhouad/ATLOP;
values and gradients)."""

import torch

from docre.losses import build_loss
from tests.losses.helpers import random_case


def reference_atl(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for s, y in zip(logits, labels):
        positives = [r for r in range(1, len(s)) if y[r] > 0]
        negatives = [r for r in range(1, len(s)) if y[r] == 0]
        for r in positives:  # softmax over all positives plus TH together
            total = total - (s[r] - torch.logsumexp(s[positives + [0]], 0))
        total = total - (s[0] - torch.logsumexp(s[negatives + [0]], 0))  # TH against the negatives
    return total / len(logits)


def test_values_and_gradients_match_reference():
    for seed in range(3):
        logits, labels = random_case(seed=seed)
        fast_logits = logits.clone().requires_grad_(True)
        slow_logits = logits.clone().requires_grad_(True)
        fast = build_loss("atl")(fast_logits, labels)
        slow = reference_atl(slow_logits, labels)
        fast.backward()
        slow.backward()
        torch.testing.assert_close(fast, slow)
        torch.testing.assert_close(fast_logits.grad, slow_logits.grad)


def test_hand_worked_na_pair():
    # NA pair, logits (TH=2, 0, 0): loss = -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2)
    loss = build_loss("atl")(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(loss, torch.log(1 + 2 * torch.exp(torch.tensor(-2.0))))
