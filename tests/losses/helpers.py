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
