"""HingeABL, the hinge-weighted adaptive balanced loss (official code
github.com/Jize-W/HingeABL, `losses.py`).

SAT's terms re-weighted by how far each relation is from a margin m on its side of the threshold,
with d_r = s_r - s_TH:
    w+_r = [m - d_r]_+ / sum_{r' in P} [m - d_r']_+        (r in P)
    w-_r = [m + d_r]_+ / sum_{r' in N} [m + d_r']_+        (r in N)
    L = sum_{r in P} w+_r (-log sigmoid(d_r)) + sum_{r in N} w-_r (-log sigmoid(-d_r)),  mean over pairs.
Each side is a weighted average, so positives and negatives weigh the same per pair. The weights are
NOT detached: gradients flow through them, as in the HingeABL code. A side whose hinge values are
all 0 (every relation already beyond the margin) contributes 0: its denominator is clamped at 1e-12,
which changes nothing elsewhere. Decode: the shared threshold rule.
"""

import torch
import torch.nn.functional as F
from torch import nn

from docre.losses.common import positive_mask, threshold_decode

# Smallest hinge sum divided by; sums of 0 mean the side has nothing left to learn.
TINY = 1e-12


class HingeABLoss(nn.Module):
    def __init__(self, margin: float = 5.0, th_offset: float = 0.0):
        """margin: the hinge margin m around the threshold (the HingeABL code's --margin, default 5)."""
        super().__init__()
        self.th_offset = float(th_offset)  # decode: added to the TH logit (0 = the official rule)
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        positives = positive_mask(labels).float()  # [P, C-1]
        negatives = 1.0 - positives
        margins = logits[:, 1:] - logits[:, :1]  # [P, C-1]
        hinge_positive = F.relu(self.margin - margins) * positives  # [P, C-1]
        hinge_negative = F.relu(self.margin + margins) * negatives
        weight_positive = hinge_positive / hinge_positive.sum(1, keepdim=True).clamp_min(TINY)
        weight_negative = hinge_negative / hinge_negative.sum(1, keepdim=True).clamp_min(TINY)
        loss = weight_positive * F.softplus(-margins) + weight_negative * F.softplus(margins)
        return loss.sum(1).mean()

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        return threshold_decode(logits.float(), top_k, self.th_offset)
