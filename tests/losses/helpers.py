"""Random logits and multi-hot labels for loss tests (some NA pairs, some with several relations)."""

import torch


def random_case(pairs: int = 12, classes: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(pairs, classes, generator=generator) * 3
    labels = torch.zeros(pairs, classes)
    for p in range(pairs):
        count = p % 3  # 0 (NA), 1 or 2 relations
        chosen = torch.randperm(classes - 1, generator=generator)[:count] + 1
        labels[p, chosen] = 1.0
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
    return logits, labels


def assert_matches_reference(loss_fn, reference, seeds=range(3), pairs: int = 12, classes: int = 7) -> None:
    """The loss's value and gradient equal a slow reference evaluated in float64 on random cases."""
    for seed in seeds:
        logits, labels = random_case(pairs, classes, seed)
        fast_logits = logits.clone().requires_grad_(True)
        slow_logits = logits.double().requires_grad_(True)
        fast = loss_fn(fast_logits, labels)
        slow = reference(slow_logits, labels)
        fast.backward()
        slow.backward()
        torch.testing.assert_close(fast.double(), slow, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast_logits.grad.double(), slow_logits.grad, rtol=1e-4, atol=1e-6)


def split_classes(y: torch.Tensor) -> tuple[list[int], list[int]]:
    """Gold relations P and the other relation classes N of one pair (class 0 is neither)."""
    positives = [r for r in range(1, len(y)) if y[r] > 0]
    negatives = [r for r in range(1, len(y)) if y[r] == 0]
    return positives, negatives
