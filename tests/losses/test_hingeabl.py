"""HingeABL against a slow per-pair reference written from the HingeABL repository's `losses.py`
(github.com/Jize-W/HingeABL; weights not detached), and its edge cases: weights that are detached
give other gradients; a side past the margin."""

import math

import pytest
import torch

from docre.errors import DocreError
from docre.losses import build_loss
from tests.losses.helpers import assert_matches_reference, random_case, split_classes


def reference_hingeabl(logits: torch.Tensor, labels: torch.Tensor, margin: float, detach: bool = False) -> torch.Tensor:
    total = 0.0
    for s, y in zip(logits, labels):
        positives, negatives = split_classes(y)
        d = {r: s[r] - s[0] for r in range(1, len(s))}
        for side, hinge, term in (
            (positives, lambda r, d=d: torch.clamp(margin - d[r], min=0), lambda r, d=d: -torch.log(1 / (1 + torch.exp(-d[r])))),
            (negatives, lambda r, d=d: torch.clamp(margin + d[r], min=0), lambda r, d=d: -torch.log(1 / (1 + torch.exp(d[r])))),
        ):
            norm = sum(hinge(r) for r in side)
            for r in side:
                if norm > 0:
                    weight = hinge(r) / norm
                    total = total + (weight.detach() if detach else weight) * term(r)
    return total / len(logits)


@pytest.mark.parametrize("margin", [5.0, 1.0])
def test_values_and_gradients_match_reference(margin):
    assert_matches_reference(build_loss("hingeabl", margin=margin), lambda s, y: reference_hingeabl(s, y, margin))


def test_weights_are_not_detached():
    logits, labels = random_case(seed=7)
    fast_logits = logits.clone().requires_grad_(True)
    detached_logits = logits.double().requires_grad_(True)
    build_loss("hingeabl")(fast_logits, labels).backward()
    reference_hingeabl(detached_logits, labels, 5.0, detach=True).backward()
    assert (fast_logits.grad.double() - detached_logits.grad).abs().max() > 1e-3


def test_hand_worked_single_relations():
    # one positive (d = 1) and one negative (d = -1): each side's weight is 1, so the loss is SAT's
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    expected = 2 * math.log(1 + math.exp(-1.0))
    assert build_loss("hingeabl")(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_side_beyond_the_margin_contributes_nothing():
    # positives at d = 6 and 7 > margin 5: their hinge sum is 0, only the negative side remains
    logits = torch.tensor([[0.0, 6.0, 7.0, -1.0]], requires_grad=True)
    labels = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    loss = build_loss("hingeabl")(logits, labels)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)), rel=1e-6)
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 1:3].abs().sum() == 0


def test_rejects_negative_margin():
    with pytest.raises(DocreError, match="margin"):
        build_loss("hingeabl", margin=-1.0)
