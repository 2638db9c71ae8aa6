"""Balanced softmax, DocuNet's multi-label categorical cross-entropy (Zhang et al.,
IJCAI 2021), as the HingeABL repository implements it (github.com/Jize-W/HingeABL, `losses.py`).

Class 0 takes part as an ordinary class: it is the target of NA pairs and a negative otherwise.
With T the target classes of a pair (its relations, or {0} for an NA pair) and N the rest:
    L = log(1 + sum_{j in N} e^{s_j}) + log(1 + sum_{i in T} e^{-s_i}),   mean over pairs.
The fixed score 0 separates targets from the rest, so decode predicts relation r iff s_r > 0,
capped at the top_k largest relation logits (class 0 is not ranked: it is no threshold here).
"""

import torch
from torch import nn

from docre.losses.common import NEG, positive_mask, relation_top_k, relations_to_multi_hot


class BalancedSoftmaxLoss(nn.Module):
    def __init__(self):
        """No hyperparameters; the explicit signature makes config checks reject stray keywords."""
        super().__init__()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        positives = positive_mask(labels)  # [P, C-1]
        targets = torch.cat([~positives.any(1, keepdim=True), positives], dim=1)  # [P, C]; NA pairs target class 0
        # log(1 + sum e^x) = logaddexp(0, logsumexp(x)); an empty side is all NEG and gives log 1 = 0
        zero = torch.zeros((), device=logits.device)
        negative_part = torch.logaddexp(zero, torch.logsumexp(logits.masked_fill(targets, NEG), dim=1))  # [P]
        positive_part = torch.logaddexp(zero, torch.logsumexp((-logits).masked_fill(~targets, NEG), dim=1))  # [P]
        return (negative_part + positive_part).mean()

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        logits = logits.float()
        return relations_to_multi_hot((logits[:, 1:] > 0) & relation_top_k(logits, top_k), logits.dtype)

    def decision_threshold(self, logits: torch.Tensor) -> torch.Tensor:
        """[P] the logit each relation must exceed: 0 for every pair (used by the diagnostics)."""
        return torch.zeros(logits.size(0), dtype=torch.float32, device=logits.device)
