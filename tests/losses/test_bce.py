"""BCE against a slow per-pair reference (sum over relation classes, mean over pairs), its decode
(sigmoid > threshold, top-k over the relations), and `tune_decode` against a brute-force search."""

import math

import pytest
import torch

from docre.errors import DocreError
from docre.losses import build_loss
from tests.losses.helpers import assert_matches_reference, random_case


def reference_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for s, y in zip(logits, labels):
        for r in range(1, len(s)):  # class 0 takes no part
            p = 1 / (1 + torch.exp(-s[r]))
            total = total - (torch.log(p) if y[r] > 0 else torch.log(1 - p))
    return total / len(logits)


def test_values_and_gradients_match_reference():
    assert_matches_reference(build_loss("bce"), reference_bce)


def test_class_zero_takes_no_part():
    logits, labels = random_case(seed=2)
    logits.requires_grad_(True)
    loss = build_loss("bce")(logits, labels)
    loss.backward()
    assert logits.grad[:, 0].abs().sum() == 0
    other = logits.detach().clone()
    other[:, 0] = 100.0
    torch.testing.assert_close(build_loss("bce")(other, labels), loss.detach())


def test_decode_threshold_and_cap():
    # probabilities of r1..r4: 0.88, 0.27, 0.62, 0.95; class 0 (9.0) is not ranked
    row = torch.tensor([[9.0, 2.0, -1.0, 0.5, 3.0]])
    assert build_loss("bce").decode(row, 4)[0].tolist() == [0, 1, 0, 1, 1]
    assert build_loss("bce").decode(row, 2)[0].tolist() == [0, 1, 0, 0, 1]
    assert build_loss("bce", threshold=0.9).decode(row, 4)[0].tolist() == [0, 0, 0, 0, 1]
    assert build_loss("bce", threshold=0.99).decode(row, 4)[0].tolist() == [1, 0, 0, 0, 0]


def f1_of(decoded: torch.Tensor, labels: torch.Tensor) -> float:
    predicted, gold = decoded[:, 1:] > 0, labels[:, 1:] > 0
    correct = (predicted & gold).sum().item()
    total = predicted.sum().item() + gold.sum().item()
    return 2 * correct / total if total else 0.0


def brute_force_best(logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> tuple[float, int]:
    """Best F1 over every threshold that can matter (each probability, 0 and 1), and the fewest
    predictions that reach it."""
    candidates = sorted(set(torch.sigmoid(logits[:, 1:]).flatten().tolist()) | {0.0, 1.0})
    best_f1, fewest = -1.0, None
    for theta in candidates:  # ascending: later thresholds predict fewer relations
        decoded = build_loss("bce", threshold=theta).decode(logits, top_k)
        f1 = f1_of(decoded, labels)
        if f1 >= best_f1:
            best_f1, fewest = f1, int(decoded[:, 1:].sum())
    return best_f1, fewest


@pytest.mark.parametrize("top_k", [1, 2, 100])
@pytest.mark.parametrize("seed", [0, 1])
def test_tune_decode_finds_the_best_threshold(top_k, seed):
    logits, labels = random_case(pairs=60, classes=6, seed=seed)
    logits = logits + 2 * labels  # informative but imperfect scores
    loss_fn = build_loss("bce")
    result = loss_fn.tune_decode(logits, labels, top_k)
    assert result == {"threshold": loss_fn.threshold}
    best_f1, fewest = brute_force_best(logits, labels, top_k)
    decoded = loss_fn.decode(logits, top_k)
    assert f1_of(decoded, labels) == pytest.approx(best_f1, abs=1e-12)
    assert int(decoded[:, 1:].sum()) == fewest
    # the threshold sits strictly inside the gap between the probabilities kept and dropped
    probabilities = torch.sigmoid(logits[:, 1:])
    kept = probabilities[decoded[:, 1:] > 0]
    assert kept.min() > loss_fn.threshold > 0


@pytest.mark.parametrize("case", ["coarse grid", "saturated"])
def test_tune_decode_with_tied_and_adjacent_probabilities(case):
    # coarse grid: many exact ties, which no threshold can split; saturated: sigmoid(14..17) takes
    # only a few float32 values, neighbours one ulp apart, where a rounded midpoint could land on a
    # kept probability
    logits, labels = random_case(pairs=80, classes=5, seed=3)
    if case == "coarse grid":
        logits = torch.round(logits + 2 * labels)
    else:
        logits = 14 + torch.rand(logits.shape, generator=torch.Generator().manual_seed(0)) * 3 + labels
    loss_fn = build_loss("bce")
    loss_fn.tune_decode(logits, labels, 2)
    best_f1, fewest = brute_force_best(logits, labels, 2)
    decoded = loss_fn.decode(logits, 2)
    assert f1_of(decoded, labels) == pytest.approx(best_f1, abs=1e-12) and int(decoded[:, 1:].sum()) == fewest


def test_tune_decode_between_adjacent_floats():
    # these logits give float32 probabilities one ulp apart whose midpoint rounds up onto the kept
    # one; the threshold must then fall back to the dropped probability to keep the gold pair only
    logits = torch.tensor([[0.0, 0.30000039935112], [0.0, 0.3000001013278961]])
    kept, dropped = torch.sigmoid(logits[:, 1])
    assert torch.nextafter(dropped, torch.tensor(1.0)) == kept
    assert ((kept.double() + dropped.double()) / 2).float() == kept
    labels = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss_fn = build_loss("bce")
    loss_fn.tune_decode(logits, labels, 1)
    assert loss_fn.decode(logits, 1)[:, 1].tolist() == [1.0, 0.0]


def test_tune_decode_hand_worked():
    # one relation, probabilities 0.95 (gold), 0.9, 0.6 (gold), 0.2, 0.1; F1 = 2 TP / (predicted + 2)
    # predicting the top 1..5: 2/3, 2/4, 4/5 (best), 4/6, 4/7; threshold = 0.4, midway between 0.6 and 0.2
    p = torch.tensor([0.95, 0.9, 0.6, 0.2, 0.1])
    logits = torch.cat([torch.zeros(5, 1), torch.log(p / (1 - p)).unsqueeze(1)], dim=1)  # [5, 2]
    labels = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    loss_fn = build_loss("bce")
    theta = loss_fn.tune_decode(logits, labels, 4)["threshold"]
    assert theta == pytest.approx(0.4, abs=1e-6)
    assert loss_fn.decode(logits, 4)[:, 1].tolist() == [1, 1, 1, 0, 0]


def test_tune_decode_without_gold_keeps_the_threshold():
    logits, _ = random_case(seed=1)
    loss_fn = build_loss("bce", threshold=0.3)
    assert loss_fn.tune_decode(logits, torch.zeros_like(logits), 4) == {"threshold": 0.3}


def test_tuned_threshold_survives_json_and_rebuilding():
    import json

    logits, labels = random_case(pairs=60, seed=5)
    tuned = build_loss("bce")
    params = json.loads(json.dumps(tuned.tune_decode(logits, labels, 4)))
    rebuilt = build_loss("bce", **params)
    assert torch.equal(rebuilt.decode(logits, 4), tuned.decode(logits, 4))


def test_decision_threshold_is_the_logit_of_theta():
    assert build_loss("bce", threshold=0.5).decision_threshold(torch.zeros(3, 4)).tolist() == [0.0] * 3
    value = build_loss("bce", threshold=0.2).decision_threshold(torch.zeros(1, 4)).item()
    assert value == pytest.approx(math.log(0.25), rel=1e-6)


def test_rejects_threshold_outside_unit_interval():
    with pytest.raises(DocreError, match="threshold"):
        build_loss("bce", threshold=1.5)
