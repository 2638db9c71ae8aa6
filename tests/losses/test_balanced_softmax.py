"""Balanced softmax against a slow per-pair reference written from the HingeABL repository's
`losses.py` (github.com/Jize-W/HingeABL), hand-worked values, and its fixed-threshold decode (s_r > 0,
top-k over the relation classes)."""

import math

import pytest
import torch

from docre.losses import build_loss
from tests.losses.helpers import assert_matches_reference


def reference_balanced_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for s, y in zip(logits, labels):
        y = y.clone()
        y[0] = float(y[1:].sum() == 0)  # class 0 is the target of NA pairs
        negatives = sum((torch.exp(s[j]) for j in range(len(s)) if y[j] == 0), torch.zeros((), dtype=s.dtype))
        targets = sum((torch.exp(-s[i]) for i in range(len(s)) if y[i] > 0), torch.zeros((), dtype=s.dtype))
        total = total + torch.log(1 + negatives) + torch.log(1 + targets)
    return total / len(logits)


def test_values_and_gradients_match_reference():
    assert_matches_reference(build_loss("balanced_softmax"), reference_balanced_softmax)


def test_hand_worked_values():
    loss_fn = build_loss("balanced_softmax")
    # NA pair (s_0 = 1, relations 0, 0): log(1 + 1 + 1) + log(1 + e^-1)
    na = loss_fn(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    assert na.item() == pytest.approx(math.log(3) + math.log(1 + math.exp(-1)), rel=1e-6)
    # relation r1 (s = 2), class 0 is a negative (s_0 = 1): log(1 + e^1 + e^0) + log(1 + e^-2)
    pair = loss_fn(torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert pair.item() == pytest.approx(math.log(2 + math.e) + math.log(1 + math.exp(-2)), rel=1e-6)


def test_decode_uses_zero_as_threshold():
    decode = build_loss("balanced_softmax").decode
    # class 0 is neither threshold nor ranked: a large s_0 does not hide relations above 0
    assert decode(torch.tensor([[5.0, 1.0, -1.0, 2.0]]), 4)[0].tolist() == [0, 1, 0, 1]
    assert decode(torch.tensor([[5.0, 1.0, -1.0, 2.0]]), 1)[0].tolist() == [0, 0, 0, 1]
    assert decode(torch.tensor([[-5.0, -1.0, -2.0, -0.0]]), 4)[0].tolist() == [1, 0, 0, 0]  # strict > 0
    assert decode(torch.tensor([[-5.0, 3.0, 2.0, 1.0]]), 2)[0].tolist() == [0, 1, 1, 0]
