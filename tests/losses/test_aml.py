"""AML against a slow per-pair reference written from the HingeABL repository's `losses.py`
(github.com/Jize-W/HingeABL), and its zero region."""

import pytest
import torch

from docre.losses import build_loss
from tests.losses.helpers import assert_matches_reference, split_classes


def reference_aml(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for s, y in zip(logits, labels):
        positives, negatives = split_classes(y)
        for r in positives:
            total = total + torch.clamp(1 - (s[r] - s[0]), min=0)
        for r in negatives:
            total = total + torch.clamp(1 + (s[r] - s[0]), min=0)
    return total / len(logits)


def test_values_and_gradients_match_reference():
    assert_matches_reference(build_loss("aml"), reference_aml)


def test_hand_worked_value():
    # TH = 1: positive at 1.5 (d = 0.5 -> 0.5), negatives at 0.5 (d = -0.5 -> 0.5) and -3 (d = -4 -> 0)
    logits = torch.tensor([[1.0, 1.5, 0.5, -3.0]])
    labels = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert build_loss("aml")(logits, labels).item() == pytest.approx(1.0)


def test_zero_loss_and_gradient_once_margins_hold():
    logits = torch.tensor([[0.0, 1.5, -1.0, -2.0], [0.0, -1.0, -1.5, -4.0]], requires_grad=True)
    labels = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    loss = build_loss("aml")(logits, labels)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().sum() == 0
