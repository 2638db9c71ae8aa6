"""NCRL against slow per-pair references written from the formula of the official code
(yangzhou12/NCRL, `ncrl_loss.py` and `DocRED/losses.py`: margin shift, clamps, and the NA margin
regulariser passed through the same shifted cross-entropy), and its edge cases."""

import math

import pytest
import torch

from docre.errors import DocreError
from docre.losses import build_loss
from tests.losses.helpers import assert_matches_reference, random_case, split_classes

EPS = 1e-8  # the official code clamps every probability inside a log at this value


def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


def positive_ce(margin):
    """-log p with p = sigmoid(margin), target 1."""
    return -torch.log(torch.clamp(sigmoid(margin), min=EPS))


def shifted_negative_ce(margin, shift: float):
    """-log min(1 - p + shift, 1) with p = sigmoid(margin), target 0 (margin shifting)."""
    return -torch.log(torch.clamp(torch.clamp(1 - sigmoid(margin) + shift, max=1.0), min=EPS))


def reference_ncrl(logits: torch.Tensor, labels: torch.Tensor, shift: float) -> torch.Tensor:
    """Loop over pairs and classes: sum_r CE(s_r - s_0, y_r) + CE(s_0 - mean_{r>=1} s_r, y_0), both
    with the shifted negative term, summed over classes and averaged over pairs."""
    total = 0.0
    for s, y in zip(logits, labels):
        positives, negatives = split_classes(y)
        for r in positives:
            total = total + positive_ce(s[r] - s[0])
        for r in negatives:
            total = total + shifted_negative_ce(s[r] - s[0], shift)
        na_margin = s[0] - s[1:].mean()
        # y_0 = 1 for an NA pair; otherwise the NA margin is a negative, shifted like the relations' negatives
        total = total + (shifted_negative_ce(na_margin, shift) if positives else positive_ce(na_margin))
    return total / len(logits)


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.3])
def test_values_and_gradients_match_reference(shift):
    assert_matches_reference(build_loss("ncrl", shift=shift), lambda s, y: reference_ncrl(s, y, shift))


def all_na(pairs: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits, _ = random_case(pairs, classes, seed)
    labels = torch.zeros(pairs, classes)
    labels[:, 0] = 1.0
    return logits, labels


def cases_97():
    """Random cases of 97 classes (the DocRED label set): several pairs mixing NA pairs and pairs
    with one or two relations, at logit scales where the NA margin sits inside and beyond the shift's
    clip, and batches made of NA pairs only."""
    for seed in range(4):
        for scale in (1.0, 4.0):
            logits, labels = random_case(pairs=9, classes=97, seed=seed)
            yield f"mixed-s{seed}-x{scale}", logits * scale, labels
        yield f"na-only-s{seed}", *all_na(5, 97, seed)
    logits, labels = random_case(pairs=1, classes=97, seed=11)
    yield "one-na-pair", logits, labels
    logits, labels = random_case(pairs=2, classes=97, seed=12)
    yield "one-pair-with-relation", logits[1:], labels[1:]


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.3])
def test_matches_reference_on_97_classes(shift):
    loss_fn = build_loss("ncrl", shift=shift)
    for name, logits, labels in cases_97():
        fast_logits = logits.clone().requires_grad_(True)
        slow_logits = logits.double().requires_grad_(True)
        logits_before, labels_before = logits.clone(), labels.clone()
        fast = loss_fn(fast_logits, labels)
        slow = reference_ncrl(slow_logits, labels, shift)
        assert fast.dtype == torch.float32, name
        # 1e-5 relative and absolute: a 97-class pair sums ~100 float32 terms (losses up to ~600)
        torch.testing.assert_close(fast.double(), slow, rtol=1e-5, atol=1e-5, msg=lambda m, case=name: f"{case}: {m}")
        fast.backward()
        slow.backward()
        torch.testing.assert_close(fast_logits.grad.double(), slow_logits.grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, case=name: f"{case}: {m}")
        assert torch.equal(fast_logits.detach(), logits_before) and torch.equal(labels, labels_before), name


def test_na_margin_of_a_pair_with_relations_is_shifted():
    # one pair of 97 classes: s_0 = 3, relation 1 gold at 0, the other 95 relations at -8
    logits = torch.full((1, 97), -8.0)
    logits[0, 0], logits[0, 1] = 3.0, 0.0
    labels = torch.zeros(1, 97)
    labels[0, 1] = 1.0
    gap = 3.0 - (0.0 - 8.0 * 95) / 96  # s_0 - mean_{r>=1} s_r
    q = 1 / (1 + math.exp(-gap))
    relation_part = -math.log(1 / (1 + math.exp(3.0))) + 95 * -math.log(min(1 - 1 / (1 + math.exp(11.0)) + 0.05, 1.0))
    expected = relation_part - math.log(min(1 - q + 0.05, 1.0))
    assert build_loss("ncrl", shift=0.05)(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_hand_worked_pair_with_relation():
    # s_0 = 0, positive r1 = ln 3 (p = 3/4), negative r2 = 0 (1 - p = 1/2, + 0.05);
    # NA margin -ln(3)/2 with target 0: 1 - q + 0.05, q = sigmoid(-ln(3)/2)
    logits = torch.tensor([[0.0, math.log(3.0), 0.0]])
    q = 1 / (1 + math.exp(math.log(3.0) / 2))
    expected = -math.log(0.75) - math.log(0.55) - math.log(1 - q + 0.05)
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


def test_shift_silences_an_easy_na_margin_of_a_pair_with_relations():
    # s_0 far below the relations: q = sigmoid(s_0 - mean s_r) <= shift, so the regulariser is 0
    logits = torch.tensor([[-4.0, 5.0, 0.0]], requires_grad=True)  # gap -6.5: q = 0.0015
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    loss = build_loss("ncrl", shift=0.05)(logits, labels)
    relation_part = -math.log(1 / (1 + math.exp(-9.0))) - math.log(min(1 - 1 / (1 + math.exp(-4.0)) + 0.05, 1.0))
    assert loss.item() == pytest.approx(relation_part, rel=1e-5)


def test_regulariser_pushes_the_none_class_of_na_pairs_up():
    logits = torch.zeros(1, 4, requires_grad=True)
    build_loss("ncrl")(logits, torch.tensor([[1.0, 0.0, 0.0, 0.0]])).backward()
    assert logits.grad[0, 0] < 0  # gradient descent raises s_0 for an NA pair


def test_rejects_bad_shift():
    with pytest.raises(DocreError, match="shift"):
        build_loss("ncrl", shift=1.0)
