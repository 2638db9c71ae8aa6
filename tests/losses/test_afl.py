"""AFL against a slow per-pair reference written from KD-DocRE's loss (github.com/tonytan48/KD-DocRE,
`losses.py`), hand-worked values, gamma."""

import math

import pytest
import torch

from docre.errors import DocreError
from docre.losses import build_loss
from tests.losses.helpers import assert_matches_reference, random_case, split_classes


def reference_afl(logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    total = 0.0
    for s, y in zip(logits, labels):
        positives, negatives = split_classes(y)
        for r in positives:  # two-way softmax between r and TH
            p = torch.exp(s[r]) / (torch.exp(s[r]) + torch.exp(s[0]))
            total = total - (1 + (1 - p) ** gamma) * torch.log(p)
        total = total - (s[0] - torch.logsumexp(s[[0] + negatives], 0))  # ATL's negative part
    return total / len(logits)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 0.5])
def test_values_and_gradients_match_reference(gamma):
    assert_matches_reference(build_loss("afl", gamma=gamma), lambda s, y: reference_afl(s, y, gamma))


def test_hand_worked_pair():
    # TH = 0, positive r1 = ln 3 (p = 3/4), negative r2 = 0: -(1 + 1/4) log(3/4) + log 2
    loss = build_loss("afl")(torch.tensor([[0.0, math.log(3.0), 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(-1.25 * math.log(0.75) + math.log(2.0), rel=1e-6)


def test_na_pairs_equal_atl():
    logits, labels = random_case(seed=4)
    na = labels[:, 0] > 0
    torch.testing.assert_close(build_loss("afl")(logits[na], labels[na]), build_loss("atl")(logits[na], labels[na]))


def test_gamma_zero_doubles_the_log_loss_of_positives():
    # (1 - p)^0 = 1, so each positive costs 2 * -log sigmoid(d): AFL(0) - NA part = 2 * SAT positives
    logits = torch.tensor([[0.5, 2.0, -1.0, 0.3]])
    labels = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    negative = -(logits[0, 0] - torch.logsumexp(logits[0, [0, 3]], 0))
    positives = -2 * torch.nn.functional.logsigmoid(logits[0, 1:3] - logits[0, 0]).sum()
    torch.testing.assert_close(build_loss("afl", gamma=0.0)(logits, labels), positives + negative)


def test_saturated_positive_has_finite_gradient():
    logits = torch.tensor([[0.0, 200.0, -200.0]], requires_grad=True)
    build_loss("afl", gamma=0.5)(logits, torch.tensor([[0.0, 1.0, 0.0]])).backward()
    assert torch.isfinite(logits.grad).all()


def test_rejects_negative_gamma():
    with pytest.raises(DocreError, match="gamma"):
        build_loss("afl", gamma=-1.0)
