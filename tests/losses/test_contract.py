"""Every loss in LOSSES keeps the contract: finite scalar, gradient, inputs untouched, float32
under autocast, decode shape, column 0 set iff nothing predicted, at most top_k relations; and
stays finite at extreme logit scales and on degenerate label rows (all NA, no negatives); and every
threshold-class loss decodes with ATLOP's rule (TH offset 0) unless an offset is tuned."""

import inspect

import pytest
import torch

from docre.config import check_loss_kwargs
from docre.errors import DocreError
from docre.losses import LOSSES, build_loss
from docre.losses.common import threshold_decode
from tests.losses.helpers import random_case


@pytest.fixture(params=sorted(LOSSES))
def loss_fn(request):
    return build_loss(request.param)


def test_scalar_finite_with_gradient_and_inputs_untouched(loss_fn):
    logits, labels = random_case()
    logits.requires_grad_(True)
    logits_before, labels_before = logits.detach().clone(), labels.clone()
    loss = loss_fn(logits, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.equal(logits.detach(), logits_before) and torch.equal(labels, labels_before)


def test_float32_under_bf16_autocast(loss_fn):
    logits, labels = random_case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(logits.bfloat16(), labels)
    assert loss.dtype == torch.float32


def test_mean_over_pairs(loss_fn):
    logits, labels = random_case(pairs=10)
    whole = loss_fn(logits, labels)
    halves = (loss_fn(logits[:5], labels[:5]) + loss_fn(logits[5:], labels[5:])) / 2
    torch.testing.assert_close(whole, halves)


@pytest.mark.parametrize("top_k", [1, 2, 4, 100])
def test_decode_contract(loss_fn, top_k):
    logits, _ = random_case(pairs=200, classes=9, seed=3)
    before = logits.clone()
    decoded = loss_fn.decode(logits, top_k)
    assert decoded.shape == logits.shape and torch.equal(logits, before)
    relations = decoded[:, 1:].sum(1)
    assert torch.equal(decoded[:, 0], (relations == 0).float())
    assert (relations <= top_k).all()
    assert set(decoded.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("scale", [1e-3, 50.0, 1e4])
def test_finite_loss_and_gradient_at_extreme_scales(loss_fn, scale):
    logits, labels = random_case(seed=6)
    logits = (logits * scale).requires_grad_(True)
    loss = loss_fn(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_degenerate_label_rows(loss_fn):
    # an all-NA batch, and a pair whose every relation is gold (no negatives at all)
    logits, _ = random_case(pairs=4, classes=5, seed=8)
    all_na = torch.zeros(4, 5)
    all_na[:, 0] = 1.0
    every_relation = torch.ones(4, 5)
    every_relation[:, 0] = 0.0
    for labels in (all_na, every_relation):
        x = logits.clone().requires_grad_(True)
        loss = loss_fn(x, labels)
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
