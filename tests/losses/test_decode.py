"""The shared threshold decode (ATLOP's get_label) on hand-worked rows: strict > TH, >= k-th value
(ties included), TH inside the top k, NA when nothing passes, and the TH offset."""

import torch

from docre.losses.common import threshold_decode


def decode(row, top_k, offset=0.0):
    return threshold_decode(torch.tensor([row]), top_k, offset)[0].tolist()


def test_above_threshold_and_in_top_k():
    # TH = 1.0; classes 1 (2.0) and 3 (3.0) are above it; class 4 equals TH and is not (strict >)
    assert decode([1.0, 2.0, 0.5, 3.0, 1.0], top_k=2) == [0, 1, 0, 1, 0]


def test_top_k_counts_the_threshold_itself():
    # three classes above TH (2.8); with k = 3 they fill the top 3, with k = 2 only the best two pass
    assert decode([2.8, 3.0, 2.9, 2.85, 0.0], top_k=3) == [0, 1, 1, 1, 0]
    assert decode([2.8, 3.0, 2.9, 2.85, 0.0], top_k=2) == [0, 1, 1, 0, 0]
    # TH inside the top 3 takes one of the places: at most k - 1 relations come out
    assert decode([2.8, 3.0, 2.9, 2.7, 2.75], top_k=3) == [0, 1, 1, 0, 0]


def test_ties_at_the_kth_value_all_pass():
    assert decode([0.0, 1.0, 1.0, 1.0, -1.0], top_k=2) == [0, 1, 1, 1, 0]


def test_nothing_above_threshold_is_na():
    assert decode([5.0, 1.0, 2.0, 3.0, 4.0], top_k=4) == [1, 0, 0, 0, 0]


def test_top_k_one_keeps_the_best_only():
    assert decode([0.0, 3.0, 2.0, 1.0], top_k=1) == [0, 1, 0, 0]


def test_offset_moves_the_threshold():
    row = [1.0, 1.5, 0.8, 3.0]
    assert decode(row, top_k=4) == [0, 1, 0, 1]
    assert decode(row, top_k=4, offset=1.0) == [0, 0, 0, 1]
    assert decode(row, top_k=4, offset=-0.5) == [0, 1, 1, 1]
    assert decode([1.0, 0.0, 0.0], top_k=4, offset=2.0) == [1, 0, 0]
