"""ATGL against a slow reference from ATGL's loss (github.com/xhm-code/ATGL, `losses.py`), its closed
form, and its optimum s_r - s_TH = log(alpha)."""

import math

import pytest
import torch

from docre.losses import build_loss
from tests.losses.helpers import random_case


def reference_atgl(logits: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    total = 0.0
    for s, y in zip(logits, labels):
        log_p = s - torch.logsumexp(s, 0)  # one softmax over all classes
        total = total - log_p[0] - alpha * sum(log_p[r] for r in range(1, len(s)) if y[r] > 0)
    return total / len(logits)


@pytest.mark.parametrize("alpha", [1.0, 7.5, 16.5])
def test_values_and_gradients_match_reference(alpha):
    logits, labels = random_case(seed=int(alpha))
    fast_logits = logits.clone().requires_grad_(True)
    slow_logits = logits.clone().requires_grad_(True)
    fast = build_loss("atgl", alpha=alpha)(fast_logits, labels)
    slow = reference_atgl(slow_logits, labels, alpha)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(fast_logits.grad, slow_logits.grad)


def test_closed_form():
    # L = -alpha * sum_P s_r - s_TH + (alpha |P| + 1) * logsumexp(s)
    logits, labels = random_case(pairs=6, seed=5)
    alpha = 16.5
    positives = labels[:, 1:].sum(1)
    closed = (-alpha * (logits[:, 1:] * labels[:, 1:]).sum(1) - logits[:, 0]
              + (alpha * positives + 1) * torch.logsumexp(logits, 1)).mean()
    torch.testing.assert_close(build_loss("atgl", alpha=alpha)(logits, labels), closed)


def test_optimum_puts_positives_log_alpha_above_threshold():
    alpha = 16.5
    logits = torch.zeros(1, 5, requires_grad=True)
    labels = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0]])
    optimizer = torch.optim.LBFGS([logits], max_iter=500, line_search_fn="strong_wolfe")
    loss_fn = build_loss("atgl", alpha=alpha)

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(logits, labels)
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    s = logits.detach()[0]
    assert s[1] - s[0] == pytest.approx(math.log(alpha), abs=1e-2)
    assert s[2] - s[0] == pytest.approx(math.log(alpha), abs=1e-2)
    assert s[3] < s[0] - 5  # negatives pushed far below the threshold


def test_rejects_nonpositive_alpha():
    from docre.errors import DocreError

    with pytest.raises(DocreError, match="alpha"):
        build_loss("atgl", alpha=0)
