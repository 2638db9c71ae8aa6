"""Balanced softmax against a slow per-pair reference written from the HingeABL repository's
`losses.py` (github.com/Jize-W/HingeABL), hand-worked values, and the default decode (s_r > 0,
top-k over the relation classes); with topk_includes_na, DocuNet's official decode (top-k over all
classes, class 0 included), by hand and against a slow loop; the DocuNet configs decode that way."""

import math

import pytest
import torch

from docre.config import load_config
from docre.errors import DocreError
from docre.losses import build_loss
from tests.conftest import ROOT
from tests.losses.helpers import assert_matches_reference, random_case


def reference_balanced_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for s, y in zip(logits, labels):
        y = y.clone()
        y[0] = float(y[1:].sum() == 0)  # class 0 is the target of NA pairs
        negatives = sum((torch.exp(s[j]) for j in range(len(s)) if y[j] == 0), torch.zeros((), dtype=s.dtype))
        targets = sum((torch.exp(-s[i]) for i in range(len(s)) if y[i] > 0), torch.zeros((), dtype=s.dtype))
        total = total + torch.log(1 + negatives) + torch.log(1 + targets)
    return total / len(logits)


def test_values_and_gradients_match_reference():
    assert_matches_reference(build_loss("balanced_softmax"), reference_balanced_softmax)


def test_hand_worked_values():
    loss_fn = build_loss("balanced_softmax")
    # NA pair (s_0 = 1, relations 0, 0): log(1 + 1 + 1) + log(1 + e^-1)
    na = loss_fn(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    assert na.item() == pytest.approx(math.log(3) + math.log(1 + math.exp(-1)), rel=1e-6)
    # relation r1 (s = 2), class 0 is a negative (s_0 = 1): log(1 + e^1 + e^0) + log(1 + e^-2)
    pair = loss_fn(torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert pair.item() == pytest.approx(math.log(2 + math.e) + math.log(1 + math.exp(-2)), rel=1e-6)


def test_decode_uses_zero_as_threshold():
    decode = build_loss("balanced_softmax").decode
    # class 0 is neither threshold nor ranked: a large s_0 does not hide relations above 0
    assert decode(torch.tensor([[5.0, 1.0, -1.0, 2.0]]), 4)[0].tolist() == [0, 1, 0, 1]
    assert decode(torch.tensor([[5.0, 1.0, -1.0, 2.0]]), 1)[0].tolist() == [0, 0, 0, 1]
    assert decode(torch.tensor([[-5.0, -1.0, -2.0, -0.0]]), 4)[0].tolist() == [1, 0, 0, 0]  # strict > 0
    assert decode(torch.tensor([[-5.0, 3.0, 2.0, 1.0]]), 2)[0].tolist() == [0, 1, 1, 0]


def reference_docunet_decode(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """DocuNet's `balanced_loss.get_label` (github.com/zjunlp/DocuNet, losses.py), pair by pair: r is
    predicted iff s_r > 0 and s_r >= the k-th largest of the pair's C logits (class 0 among them);
    column 0 is set iff nothing is. A cap of C or more classes caps nothing."""
    output = torch.zeros_like(logits)
    for p, row in enumerate(logits.tolist()):
        kth = sorted(row, reverse=True)[top_k - 1] if top_k < len(row) else -math.inf
        for r in range(1, len(row)):
            output[p, r] = float(row[r] > 0 and row[r] >= kth)
        output[p, 0] = float(output[p, 1:].sum() == 0)
    return output


def test_docunet_decode_by_hand():
    decode = build_loss("balanced_softmax", topk_includes_na=True).decode
    # s_0 = 5 takes one of the top 2 places: only relation 3 (2.0) is left, though relation 1 (1.0) is above 0
    assert decode(torch.tensor([[5.0, 1.0, -1.0, 2.0]]), 2)[0].tolist() == [0, 0, 0, 1]
    # top 1 is s_0 itself: nothing comes out (the relation-only ranking keeps relation 3)
    assert decode(torch.tensor([[5.0, 1.0, -1.0, 2.0]]), 1)[0].tolist() == [1, 0, 0, 0]
    assert build_loss("balanced_softmax").decode(torch.tensor([[5.0, 1.0, -1.0, 2.0]]), 1)[0].tolist() == [0, 0, 0, 1]
    # s_0 below the top k: the same as ranking the relations only
    assert decode(torch.tensor([[-5.0, 3.0, 2.0, 1.0]]), 2)[0].tolist() == [0, 1, 1, 0]
    # a relation below s_0 but above 0 and in the top k is kept: s_0 is ranked, not a threshold
    assert decode(torch.tensor([[1.0, -0.5, 0.5, -2.0]]), 2)[0].tolist() == [0, 0, 1, 0]
    # ties with the k-th value pass (>=), as in the official code: s_0 = s_1 = 2 share the 2nd place
    assert decode(torch.tensor([[2.0, 2.0, 1.0, 3.0]]), 2)[0].tolist() == [0, 1, 0, 1]
    # a cap of C classes or more caps nothing
    assert decode(torch.tensor([[5.0, 1.0, -1.0, 2.0]]), 4)[0].tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("seed", range(3))
def test_docunet_decode_matches_a_slow_reference(seed):
    decode = build_loss("balanced_softmax", topk_includes_na=True).decode
    logits, _ = random_case(pairs=40, classes=7, seed=seed)
    for case in (logits, logits.round()):  # rounded: many ties, s_0 among them
        for top_k in range(1, 9):
            assert torch.equal(decode(case, top_k), reference_docunet_decode(case, top_k)), top_k


def test_the_docunet_balanced_softmax_configs_decode_as_the_official_code():
    paths = sorted(ROOT.glob("configs/*/*docunet*bsl*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        assert load_config(path).loss == {"name": "balanced_softmax", "topk_includes_na": True}, path


def test_topk_includes_na_must_be_a_boolean():
    with pytest.raises(DocreError, match="topk_includes_na must be true or false"):
        build_loss("balanced_softmax", topk_includes_na="yes")
