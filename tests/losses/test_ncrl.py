"""NCRL against a slow per-pair reference written from REFERENCE §2.5 (margin shift, clamps, NA
regulariser), and its edge cases."""

import math

import pytest
import torch

from docre.errors import DocreError
from docre.losses import build_loss
from tests.losses.helpers import assert_matches_reference, split_classes


def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


def reference_ncrl(logits: torch.Tensor, labels: torch.Tensor, shift: float) -> torch.Tensor:
    total = 0.0
    for s, y in zip(logits, labels):
        positives, negatives = split_classes(y)
        for r in positives:
            total = total - torch.log(torch.clamp(sigmoid(s[r] - s[0]), min=1e-8))
        for r in negatives:
            shifted = torch.clamp(1 - sigmoid(s[r] - s[0]) + shift, max=1.0)
            total = total - torch.log(torch.clamp(shifted, min=1e-8))
        q = sigmoid(s[0] - s[1:].mean())
        total = total - (torch.log(torch.clamp(q, min=1e-8)) if not positives else torch.log(torch.clamp(1 - q, min=1e-8)))
    return total / len(logits)


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.3])
def test_values_and_gradients_match_reference(shift):
    assert_matches_reference(build_loss("ncrl", shift=shift), lambda s, y: reference_ncrl(s, y, shift))


def test_hand_worked_pair_with_relation():
    # s_0 = 0, positive r1 = ln 3 (p = 3/4), negative r2 = 0 (1 - p = 1/2, + 0.05); q = sigmoid(-ln(3)/2)
    logits = torch.tensor([[0.0, math.log(3.0), 0.0]])
    q = 1 / (1 + math.exp(math.log(3.0) / 2))
    expected = -math.log(0.75) - math.log(0.55) - math.log(1 - q)
    assert build_loss("ncrl")(logits, torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx(expected, rel=1e-6)


def test_shift_silences_easy_negatives():
    # negatives with sigmoid(m) <= shift cost nothing and get no gradient; with shift 0 they do
    logits = torch.tensor([[2.0, -1.0, -3.0]], requires_grad=True)  # m = -3, -5: sigmoid 0.047, 0.0067
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    regulariser = -math.log(1 / (1 + math.exp(-(2.0 - (-2.0)))))
    loss = build_loss("ncrl", shift=0.05)(logits, labels)
    assert loss.item() == pytest.approx(regulariser, rel=1e-5)
    loss.backward()
    grad_from_regulariser = logits.grad.clone()
    logits.grad = None
    assert build_loss("ncrl", shift=0.0)(logits, labels).item() > regulariser + 0.04
    q = 1 / (1 + math.exp(-4.0))  # d(-log q)/d s_0 = -(1 - q); the relation terms add nothing
    assert grad_from_regulariser[0, 0].item() == pytest.approx(-(1 - q), rel=1e-5)


def test_regulariser_pushes_the_none_class_of_na_pairs_up():
    logits = torch.zeros(1, 4, requires_grad=True)
    build_loss("ncrl")(logits, torch.tensor([[1.0, 0.0, 0.0, 0.0]])).backward()
    assert logits.grad[0, 0] < 0  # gradient descent raises s_0 for an NA pair


def test_rejects_bad_shift():
    with pytest.raises(DocreError, match="shift"):
        build_loss("ncrl", shift=1.0)
