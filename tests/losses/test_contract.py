"""Every loss in LOSSES keeps the contract: finite scalar, gradient, inputs untouched, float32
under autocast, decode shape (the relation columns, whatever the loss's own label space), column 0
set iff nothing predicted, at most top_k relations (per label space for AMTL; SSR-PU has no cap);
and stays finite at extreme logit scales and on degenerate label rows (all NA, no negatives); and
every threshold-class loss decodes with ATLOP's rule (TH offset 0) unless an offset is tuned. Each
loss is built as the trainer builds it: with what it takes from a training split (SSR-PU's priors,
AMTL's label spaces) and called with pair features where it asks for them (PEMSCL)."""

import inspect

import pytest
import torch

from docre.config import check_loss_kwargs
from docre.errors import DocreError
from docre.losses import LOSSES, build_loss, couples_pairs, output_size, training_statistics, wants_features
from docre.losses.common import threshold_decode
from docre.models.output import PairFeatures
from tests.losses.helpers import random_case

# most relations decode gives a pair, where it is not top_k: SSR-PU predicts every d_r > 0 (no cap),
# AMTL caps each of its four label spaces at top_k
CAP = {"ssr_pu": lambda top_k, classes: classes - 1, "amtl": lambda top_k, classes: 4 * top_k}


def built(name: str, classes: int = 7):
    """Loss `name` for `classes` classes, with its training statistics from a random training split."""
    _, train_labels = random_case(pairs=90, classes=classes, seed=99)
    return build_loss(name, **training_statistics({"name": name}, train_labels, [f"P{c}" for c in range(classes)]))


def case(loss_fn, pairs: int = 12, classes: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits in the loss's own label space (as many columns as its model outputs) and labels [P, C]."""
    logits, labels = random_case(pairs, classes, seed)
    width = output_size(loss_fn, classes)
    if width > classes:
        more = torch.randn(pairs, width - classes, generator=torch.Generator().manual_seed(seed)) * 3
        logits = torch.cat([logits, more], dim=1)
    return logits, labels


def call(loss_fn, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """loss(logits, labels), with random pair features for a loss that asks for them."""
    if not wants_features(loss_fn):
        return loss_fn(logits, labels)
    generator = torch.Generator().manual_seed(len(logits))
    head, tail = (torch.randn(len(logits), 8, generator=generator).tanh() for _ in range(2))
    return loss_fn(logits, labels, features=PairFeatures(head, tail, 4))


@pytest.fixture(params=sorted(LOSSES))
def name(request):
    return request.param


def test_scalar_finite_with_gradient_and_inputs_untouched(name):
    loss_fn = built(name)
    logits, labels = case(loss_fn)
    logits.requires_grad_(True)
    logits_before, labels_before = logits.detach().clone(), labels.clone()
    loss = call(loss_fn, logits, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.equal(logits.detach(), logits_before) and torch.equal(labels, labels_before)


def test_float32_under_bf16_autocast(name):
    loss_fn = built(name)
    logits, labels = case(loss_fn)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = call(loss_fn, logits.bfloat16(), labels)
    assert loss.dtype == torch.float32


def test_mean_over_pairs(name):
    loss_fn = built(name)
    logits, labels = case(loss_fn, pairs=10)
    whole = call(loss_fn, logits, labels)
    halves = (call(loss_fn, logits[:5], labels[:5]) + call(loss_fn, logits[5:], labels[5:])) / 2
    if couples_pairs(loss_fn):  # declared (the trainer warns where it splits batches), and true
        assert not torch.allclose(whole, halves)
    else:
        torch.testing.assert_close(whole, halves)


@pytest.mark.parametrize("top_k", [1, 2, 4, 100])
def test_decode_contract(name, top_k):
    loss_fn = built(name, classes=9)
    logits, labels = case(loss_fn, pairs=200, classes=9, seed=3)
    before = logits.clone()
    decoded = loss_fn.decode(logits, top_k)
    assert decoded.shape == labels.shape and torch.equal(logits, before)  # the relation columns
    relations = decoded[:, 1:].sum(1)
    assert torch.equal(decoded[:, 0], (relations == 0).float())
    assert (relations <= CAP.get(name, lambda k, c: k)(top_k, 9)).all()
    assert set(decoded.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("scale", [1e-3, 50.0, 1e4])
def test_finite_loss_and_gradient_at_extreme_scales(name, scale):
    loss_fn = built(name)
    logits, labels = case(loss_fn, seed=6)
    logits = (logits * scale).requires_grad_(True)
    loss = call(loss_fn, logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_degenerate_label_rows(name):
    # an all-NA batch, and a pair whose every relation is gold (no negatives at all)
    loss_fn = built(name, classes=6)
    logits, _ = case(loss_fn, pairs=4, classes=6, seed=8)
    all_na = torch.zeros(4, 6)
    all_na[:, 0] = 1.0
    every_relation = torch.ones(4, 6)
    every_relation[:, 0] = 0.0
    for labels in (all_na, every_relation):
        x = logits.clone().requires_grad_(True)
        loss = call(loss_fn, x, labels)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_config_check_rejects_a_stray_keyword(name):
    # each constructor has an explicit signature (no nn.Module *args/**kwargs), so a typo in a
    # config fails in load_config, before any model is loaded
    with pytest.raises(DocreError, match="unexpected keyword argument 'bogus'"):
        check_loss_kwargs(name, {"bogus": 1})


# the losses that decode against the TH class: those taking a th_offset (docre/config.py's rule)
THRESHOLD_LOSSES = sorted(name for name, cls in LOSSES.items() if "th_offset" in inspect.signature(cls).parameters)


@pytest.mark.parametrize("name", THRESHOLD_LOSSES)
@pytest.mark.parametrize("top_k", [1, 4, 100])
def test_threshold_losses_decode_with_offset_zero_by_default(name, top_k):
    # what every run decodes with when no offset is tuned (eval.tune_threshold_offset=false)
    logits, _ = random_case(pairs=200, classes=9, seed=3)
    official = threshold_decode(logits, top_k, 0.0)
    assert not torch.equal(threshold_decode(logits, top_k, 1.0), official)  # this case tells the offsets apart
    assert torch.equal(build_loss(name).decode(logits, top_k), official)
