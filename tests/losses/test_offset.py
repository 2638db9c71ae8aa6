"""The dev-tuned TH offset: exact against brute force, hand-worked, and applied by threshold_decode."""

import itertools

import pytest
import torch

from docre.losses.common import threshold_decode, tune_threshold_offset


def f1_of(logits, labels, top_k, offset):
    predicted = threshold_decode(logits, top_k, offset)[:, 1:] > 0
    gold = labels[:, 1:] > 0
    tp, p, g = int((predicted & gold).sum()), int(predicted.sum()), int(gold.sum())
    return 2 * tp / (p + g) if p + g else 0.0


def test_hand_worked_case():
    # pair 0: margins r1 +2, r2 -1 (gold r2); pair 1: margin r1 +0.5 (not gold); top_k large
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 1.5, -5.0]])
    labels = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    # offset 0 predicts r1 twice: F1 0. Keeping the three candidates (offset < -1): TP 1, 3 predicted,
    # 1 gold: F1 0.5; all four (pair 1 r2 at -6 too): F1 0.4
    offset = tune_threshold_offset(logits, labels, top_k=3)
    assert offset == pytest.approx(-3.5)  # pair 1 r2 (margin -6) is a candidate too: the cut lies between -1 and -6
    assert f1_of(logits, labels, 3, offset) == pytest.approx(0.5)
    assert threshold_decode(logits, 3, offset)[0].tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_and_never_loses_to_zero(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 6, generator=generator).round(decimals=1)  # ties included
    labels = (torch.rand(40, 6, generator=generator) < 0.25).float()
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
    for top_k in (1, 2, 6):
        offset = tune_threshold_offset(logits, labels, top_k)
        margins = (logits[:, 1:] - logits[:, :1]).flatten().unique()
        candidates = [0.0] + [float(m) for m in margins - 1e-3] + [float(m) + 1e-3 for m in margins]
        best = max(f1_of(logits, labels, top_k, o) for o in candidates)
        assert f1_of(logits, labels, top_k, offset) == pytest.approx(best)
        assert f1_of(logits, labels, top_k, offset) >= f1_of(logits, labels, top_k, 0.0)


def test_no_gold_keeps_the_official_rule():
    assert tune_threshold_offset(torch.randn(5, 4), torch.eye(4)[[0] * 5], top_k=2) == 0.0


def test_inputs_untouched():
    logits, labels = torch.randn(8, 5), (torch.rand(8, 5) < 0.3).float()
    before = (logits.clone(), labels.clone())
    tune_threshold_offset(logits, labels, 2)
    assert all(torch.equal(a, b) for a, b in itertools.zip_longest((logits, labels), before))
