"""The dev-tuned TH offset: exact against brute force, hand-worked, and applied by threshold_decode;
0 when nothing can be gained, margins too close for float32 to separate count as tied, and the
edge cases of no pair, no candidate and a single candidate."""

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


def test_no_cut_with_f1_above_zero_keeps_the_official_rule():
    # each pair's gold relation lies outside its top 1, so every candidate (margins 2 and 3) is wrong
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.5, 4.0]])
    labels = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert tune_threshold_offset(logits, labels, top_k=1) == 0.0


@pytest.mark.parametrize(("high", "low", "offset"), [
    (20 + 1e-6, 20.0, 19.0), (1e-9, 0.0, -1.0),  # tied (within 1e-5, relative above 1): both kept, 1 below the lower
    (20.001, 20.0, 20.0005), (1e-3, 0.0, 5e-4),  # apart: the cut between them keeps the gold one alone
])
def test_margins_closer_than_float32_can_separate_count_as_tied(high, low, offset):
    # one pair, TH 0: the higher margin gold (F1 1 alone, 2/3 with the other), the lower not
    logits = torch.tensor([[0.0, high, low]], dtype=torch.float64)
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    assert tune_threshold_offset(logits, labels, top_k=3) == pytest.approx(offset, abs=1e-12)


def test_no_pair_or_no_candidate_keeps_the_official_rule():
    assert tune_threshold_offset(torch.empty(0, 4), torch.empty(0, 4), top_k=2) == 0.0
    # a gold fact, but TH outranks both relations: top_k=1 leaves no candidate
    assert tune_threshold_offset(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([[0.0, 1.0, 0.0]]), top_k=1) == 0.0


def test_a_single_candidate_is_kept_one_unit_below_its_margin():
    logits = torch.tensor([[0.0, 2.0, -1.0]])  # top_k=2: TH takes one of the two places, r1 is the only candidate
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    offset = tune_threshold_offset(logits, labels, top_k=2)
    assert offset == 1.0 and threshold_decode(logits, 2, offset)[0].tolist() == [0.0, 1.0, 0.0]
