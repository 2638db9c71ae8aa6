"""SAT and MeanSAT against slow per-pair references written from the HingeABL repository's
`losses.py` (github.com/Jize-W/HingeABL)."""

import math

import pytest
import torch

from docre.losses import build_loss
from tests.losses.helpers import assert_matches_reference, split_classes


def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


def reference_sat(logits: torch.Tensor, labels: torch.Tensor, mean: bool = False) -> torch.Tensor:
    total = 0.0
    for s, y in zip(logits, labels):
        positives, negatives = split_classes(y)
        positive_part = sum((-torch.log(sigmoid(s[r] - s[0])) for r in positives), torch.zeros((), dtype=s.dtype))
        negative_part = sum((-torch.log(sigmoid(s[0] - s[r])) for r in negatives), torch.zeros((), dtype=s.dtype))
        if mean:
            positive_part = positive_part / len(positives) if positives else positive_part
            negative_part = negative_part / len(negatives) if negatives else negative_part
        total = total + positive_part + negative_part
    return total / len(logits)


def test_sat_matches_reference():
    assert_matches_reference(build_loss("sat"), reference_sat)


def test_meansat_matches_reference():
    assert_matches_reference(build_loss("meansat"), lambda s, y: reference_sat(s, y, mean=True))


def test_hand_worked_values():
    # TH = 0; r1 positive at ln 3 (sigmoid 3/4); r2, r3 negative at 0 and -ln 3 (sigmoid(-d) = 1/2, 3/4)
    logits = torch.tensor([[0.0, math.log(3.0), 0.0, -math.log(3.0)]])
    labels = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    positive, negatives = -math.log(0.75), -math.log(0.5) - math.log(0.75)
    assert build_loss("sat")(logits, labels).item() == pytest.approx(positive + negatives, rel=1e-6)
    assert build_loss("meansat")(logits, labels).item() == pytest.approx(positive + negatives / 2, rel=1e-6)


def test_meansat_na_pair_has_no_positive_part():
    logits = torch.tensor([[1.0, 0.0, 2.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(1.0)))) / 2
    assert build_loss("meansat")(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_sat_is_finite_far_from_the_threshold():
    logits = torch.tensor([[0.0, -500.0, 500.0]], requires_grad=True)
    loss = build_loss("sat")(logits, torch.tensor([[0.0, 1.0, 0.0]]))
    loss.backward()
    assert loss.item() == pytest.approx(1000.0) and torch.isfinite(logits.grad).all()
