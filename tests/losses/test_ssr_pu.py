"""SSR-PU against a slow per-relation, per-pair reference written from the official code's equations
(github.com/www-Ye/SSR-PU, `model.py`, S-PU with `isrank=1`): values and autograd gradients on
97-class random cases and edge batches, the nnPU branch by hand, the decode rule (strict d_r > 0,
no top-k cap), the training-split priors, and the contract (inputs untouched, float32 loss)."""

import json
import logging
import math

import pytest
import torch

from docre.errors import DocreError
from docre.losses.ssr_pu import SSRPULoss, training_statistics

CLASSES = 97


def reference_ssr_pu(logits, labels, priors, margin=0.25, factor=0.25, e=1.0, beta=0.0, gamma=1.0, epsilon=1e-9,
                     fired=None):
    """The S-PU risk relation by relation and pair by pair; appends to `fired` the relations whose nnPU branch fires."""
    total = torch.zeros((), dtype=logits.dtype)
    for r in range(1, logits.size(1)):
        positive, unlabeled = [], []
        for s, y in zip(logits, labels):
            (positive if y[r] == 1 else unlabeled).append(s[r] - s[0])

        def square(values, sign):
            if not values:
                return torch.zeros((), dtype=logits.dtype)
            return factor * sum((sign * x - margin) ** 2 for x in values) / len(values)

        pi_l = priors[r - 1] + epsilon
        pi_o = e * pi_l
        pi_u = (pi_o - pi_l) / (1 - pi_l)
        weight = math.sqrt((1 - pi_o) / pi_o)
        risk_negative = (1 - pi_o) / (1 - pi_u) * square(unlabeled, -1) - (pi_u - pi_u * pi_o) / (1 - pi_u) * square(
            positive, -1)
        risk_positive = pi_o * square(positive, 1) * weight
        risk = risk_negative + risk_positive
        if risk_negative < beta:
            risk = -gamma * risk_negative
            if fired is not None:
                fired.append(r)
        total = total + risk
    return total


def random_case(seed: int, pairs: int, positive_rate: float = 0.05, classes: int = CLASSES):
    """Logits, multi-hot labels (a fraction `positive_rate` of pairs carries 1-3 relations, frequent
    relations first, so some relations have several positives and most have none) and priors with zeros."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(pairs, classes, generator=generator) * 3
    labels = torch.zeros(pairs, classes)
    frequency = 1.0 / torch.arange(1, classes, dtype=torch.float64)  # Zipf-like, as DocRED's relations
    for p in range(pairs):
        if torch.rand((), generator=generator) < positive_rate:
            count = int(torch.randint(1, 4, (), generator=generator))
            labels[p, torch.multinomial(frequency, count, generator=generator) + 1] = 1.0
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
    priors = torch.rand(classes - 1, generator=generator, dtype=torch.float64) * 0.04
    priors[torch.rand(classes - 1, generator=generator) < 0.1] = 0.0
    return logits, labels, priors.tolist()


def assert_parity(logits, labels, priors, **options) -> list[int]:
    """Value within 1e-5 relative and gradient of SSRPULoss equal the float64 reference; returns the fired relations."""
    fast_logits = logits.clone().requires_grad_(True)
    slow_logits = logits.double().requires_grad_(True)
    fast = SSRPULoss(priors, **options)(fast_logits, labels)
    fired = []
    slow = reference_ssr_pu(slow_logits, labels, priors, fired=fired, **options)
    fast.backward()
    slow.backward()
    assert fast.dtype == torch.float32 and fast.dim() == 0
    torch.testing.assert_close(fast.double(), slow, rtol=1e-5, atol=1e-7)
    scale = slow_logits.grad.abs().max().item()
    torch.testing.assert_close(fast_logits.grad.double(), slow_logits.grad, rtol=1e-4, atol=1e-6 * scale)
    return fired


@pytest.mark.parametrize("seed, pairs, positive_rate", [(0, 20, 0.05), (1, 37, 0.05), (2, 60, 0.05), (3, 45, 0.3)])
def test_matches_reference_official_defaults(seed, pairs, positive_rate):
    logits, labels, priors = random_case(seed, pairs, positive_rate)
    assert assert_parity(logits, labels, priors) == []  # e = 1: pi_u = 0, R- >= 0, the nnPU branch never fires


@pytest.mark.parametrize("seed", [4, 5])
def test_matches_reference_ttm_re_variant(seed):
    logits, labels, priors = random_case(seed, 30, 0.2)
    assert_parity(logits, labels, priors, factor=1.0, margin=1.0)


@pytest.mark.parametrize("e", [3.0, 12.0])
def test_matches_reference_incomplete_labels(e):
    logits, labels, priors = random_case(6, 50, 0.3)
    # positives far above TH make sq(Pos, -1) big, so R- < 0 for some relations and not others
    logits[:, 1:] += 20.0 * labels[:, 1:]
    fired = assert_parity(logits, labels, priors, e=e)
    relations_with_positives = int((labels[:, 1:].sum(0) > 0).sum())
    assert 0 < len(fired) < CLASSES - 1 and len(fired) <= relations_with_positives


def test_matches_reference_with_beta_and_gamma():
    logits, labels, priors = random_case(7, 40, 0.3)
    # small logits keep R- near beta = 0.5: about two thirds of the relations fall below it
    fired = assert_parity(logits * 0.3, labels, priors, e=3.0, beta=0.5, gamma=0.5)
    assert 0 < len(fired) < CLASSES - 1


def test_matches_reference_na_only_batch():
    logits, labels, priors = random_case(8, 25)
    labels = torch.zeros_like(labels)
    labels[:, 0] = 1.0
    assert_parity(logits, labels, priors)
    assert_parity(logits, labels, priors, e=3.0)


@pytest.mark.parametrize("relations", [[], [5], [1, 2, 40]])
def test_matches_reference_single_pair(relations):
    logits, _, priors = random_case(9, 1)
    labels = torch.zeros(1, CLASSES)
    labels[0, relations or [0]] = 1.0
    assert_parity(logits, labels, priors)
    assert_parity(logits, labels, priors, e=3.0)


def test_matches_reference_zero_priors_epsilon_path():
    logits, labels, priors = random_case(10, 30, 0.3)
    priors = [0.0] * len(priors)  # every relation absent from "training", some still labelled in the batch
    assert labels[:, 1:].sum() > 0
    assert_parity(logits, labels, priors)
    assert_parity(logits, labels, priors, epsilon=1e-6, e=3.0)


# ------------------------------------------------------------------------------ the nnPU branch
def test_nnpu_branch_fires_hand_checked():
    # prior 1/4, e = 3: pi_o = 3/4, pi_u = 2/3, so R- = 3/4 sq(Unl, -1) - 1/2 sq(Pos, -1), R+ weight sqrt(3)/4.
    # Pair 0 labelled, d = 1: sq(Pos, -1) = 1/4 (1 + 1/4)^2 = 25/64. Pair 1 unlabeled at d = -m: sq(Unl, -1) = 0.
    # R- = -25/128 < beta = 0, so the risk is -gamma R- = 25/128 and R+ is dropped.
    logits = torch.tensor([[0.0, 1.0], [0.0, -0.25]], requires_grad=True)
    labels = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = SSRPULoss([0.25], e=3.0, epsilon=0.0)(logits, labels)
    assert loss.item() == pytest.approx(25 / 128, rel=1e-6)
    loss.backward()
    # d(25/128 risk)/d d_0 = 1/2 * 1/4 * 2 (d_0 + m) = 5/16; the unlabeled pair sits at its optimum
    torch.testing.assert_close(logits.grad, torch.tensor([[-5 / 16, 5 / 16], [0.0, 0.0]]))
    # with beta below R- the branch does not fire: R- + R+, R+ = sqrt(3)/4 * 1/4 (1 - 1/4)^2
    no_correction = SSRPULoss([0.25], e=3.0, beta=-1.0, epsilon=0.0)(logits, labels)
    assert no_correction.item() == pytest.approx(-25 / 128 + math.sqrt(3) / 4 * 9 / 64, rel=1e-6)


def test_nnpu_branch_does_not_fire_hand_checked():
    # as above, but the unlabeled pair at d = 7/4: sq(Unl, -1) = 1/4 (7/4 + 1/4)^2 = 1,
    # R- = 3/4 - 25/128 = 71/128 >= 0, risk = R- + R+ = 71/128 + sqrt(3)/4 * 9/64
    logits = torch.tensor([[0.0, 1.0], [0.0, 1.75]])
    labels = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = SSRPULoss([0.25], e=3.0, epsilon=0.0)(logits, labels)
    assert loss.item() == pytest.approx(71 / 128 + math.sqrt(3) / 4 * 9 / 64, rel=1e-6)


def test_fully_supervised_hand_checked():
    # e = 1, prior 1/4: R- = 3/4 * 1/4 mean_Unl (d + 1/4)^2, R+ = sqrt(3/16) * 1/4 mean_Pos (d - 1/4)^2
    logits = torch.tensor([[0.0, 1.25], [0.0, 0.75], [2.0, 1.0]])  # d = 5/4, 3/4, -1
    labels = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    expected = 3 / 4 * 1 / 4 * (1.0 + 0.5625) / 2 + math.sqrt(3) / 4 * 1 / 4 * 1.0
    assert SSRPULoss([0.25], epsilon=0.0)(logits, labels).item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------- decode
def test_decode_strict_and_without_top_k_cap():
    logits = torch.tensor([
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, -1.0],  # six above TH, one equal (not predicted)
        [1.0, 0.5, 1.0, -3.0, 0.0, 0.9, 0.0, 0.0, 0.0],  # none above TH: NA
        [-2.0, -1.0, -3.0, -3.0, -3.0, -3.0, -3.0, -3.0, -3.0],  # one
    ])
    loss = SSRPULoss([0.01] * 8)
    expected = torch.tensor([
        [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    for top_k in (1, 4, 100):
        decoded = loss.decode(logits, top_k)
        assert decoded.dtype == torch.float32 and torch.equal(decoded, expected)


def test_decode_half_precision_logits():
    logits = torch.tensor([[0.0, 0.5, -0.5]]).bfloat16()
    assert torch.equal(SSRPULoss([0.1, 0.1]).decode(logits, 4), torch.tensor([[0.0, 1.0, 0.0]]))


# ----------------------------------------------------------------------------------- contract
def test_inputs_unchanged():
    logits, labels, priors = random_case(11, 30, 0.3)
    logits.requires_grad_(True)
    logits_before, labels_before = logits.detach().clone(), labels.clone()
    loss_fn = SSRPULoss(priors, e=3.0)
    loss_fn(logits, labels).backward()
    loss_fn.decode(logits.detach(), 4)
    assert torch.equal(logits.detach(), logits_before) and torch.equal(labels, labels_before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_give_float32_loss(dtype):
    logits, labels, priors = random_case(12, 20, 0.3)
    logits = logits.to(dtype)
    loss = SSRPULoss(priors)(logits, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, SSRPULoss(priors)(logits.float(), labels))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert SSRPULoss(priors)(logits, labels).dtype == torch.float32


def test_finite_at_extreme_logits():
    logits, labels, priors = random_case(13, 20, 0.3)
    logits = (logits * 1e4).requires_grad_(True)
    loss = SSRPULoss(priors, e=3.0)(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_without_priors_forward_and_decode_refuse():
    loss_fn = SSRPULoss()
    logits, labels = torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with pytest.raises(DocreError, match="loss 'ssr_pu' needs class priors from the training split"):
        loss_fn(logits, labels)
    with pytest.raises(DocreError, match="loss 'ssr_pu' needs class priors from the training split"):
        loss_fn.decode(logits, 4)


def test_bad_priors_refused():
    with pytest.raises(DocreError, match="2 priors for 3 relation classes"):
        SSRPULoss([0.1, 0.1])(torch.zeros(1, 4), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(DocreError, match=">= 1 for relation column 2"):
        SSRPULoss([0.01, 0.2], e=5.0)
    with pytest.raises(DocreError, match="prior 0 and epsilon = 0"):
        SSRPULoss([0.01, 0.0], epsilon=0.0)
    with pytest.raises(DocreError, match=r"in \[0, 1\)"):
        SSRPULoss([0.01, -0.1])
    with pytest.raises(DocreError, match="loss 'ssr_pu': e must be > 0, got 0"):
        SSRPULoss([0.1], e=0)
    with pytest.raises(DocreError, match="loss 'ssr_pu': epsilon must be >= 0, got -1"):
        SSRPULoss([0.1], epsilon=-1)


# ---------------------------------------------------------------------------------- the priors
TINY_LABELS = torch.tensor([
    [0.0, 1.0, 1.0, 0.0],  # relations 1 and 2 on one pair
    [0.0, 1.0, 0.0, 0.0],
    [1.0, 0.0, 0.0, 0.0],
    [1.0, 0.0, 0.0, 0.0],
    [1.0, 0.0, 0.0, 0.0],
    [1.0, 0.0, 0.0, 0.0],
])  # 6 candidate pairs; relation 3 never occurs


def test_training_statistics_hand_computed(docre_warnings):
    statistics = training_statistics(TINY_LABELS, names=["Na", "P1", "P2", "P3"])
    assert statistics == {"priors": [2 / 6, 1 / 6, 0.0]}
    assert json.loads(json.dumps(statistics)) == statistics
    warnings = [record for record in docre_warnings.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].getMessage() == ("ssr_pu: 1 relation never occurs in the training split "
                                                                "(prior 0, kept finite by the loss's epsilon; it is "
                                                                "only ever negative): P3")
    # the priors build a working loss
    loss = SSRPULoss(**statistics)(torch.randn(6, 4), TINY_LABELS)
    assert torch.isfinite(loss)


def test_training_statistics_without_names_gives_columns(docre_warnings):
    labels = torch.cat([TINY_LABELS, torch.zeros(6, 2)], dim=1)  # columns 3, 4, 5 absent
    assert training_statistics(labels)["priors"] == [2 / 6, 1 / 6, 0.0, 0.0, 0.0]
    assert docre_warnings.text.count("never occur") == 1  # "3 relation columns never occur ... they are"
    assert "3 relation columns never occur" in docre_warnings.text and docre_warnings.text.rstrip().endswith(": 3, 4, 5")


def test_training_statistics_silent_when_every_relation_occurs(docre_warnings):
    labels = TINY_LABELS.clone()
    labels[2] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert training_statistics(labels)["priors"] == [2 / 6, 1 / 6, 1 / 6]
    assert docre_warnings.records == []


def test_training_statistics_refuses_empty_split_and_wrong_names():
    with pytest.raises(DocreError, match="no candidate pairs"):
        training_statistics(torch.zeros(0, 4))
    with pytest.raises(DocreError, match="3 relation names for 4 label columns"):
        training_statistics(TINY_LABELS, names=["Na", "P1", "P2"])
