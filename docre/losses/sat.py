"""SAT, the sigmoid adaptive-threshold loss of the HingeABL repository
(official code github.com/Jize-W/HingeABL, `losses.py`).

Every relation is a binary decision against the threshold class: with d_r = s_r - s_TH,
    L = sum_{r in P} -log sigmoid(d_r) + sum_{r in N} -log sigmoid(-d_r),   mean over pairs.
-log sigmoid(x) is computed as softplus(-x) (the HingeABL code adds 1e-30 inside the log instead;
the two differ only where sigmoid(x) < 1e-30, i.e. |d_r| > 69). Decode: the shared threshold rule.
"""

import torch
import torch.nn.functional as F
from torch import nn

from docre.losses.common import positive_mask, threshold_decode


class SATLoss(nn.Module):
    def __init__(self, th_offset: float = 0.0):
        """th_offset: added to the TH logit when decoding (0 = the official rule; tuned on dev with
        eval.tune_threshold_offset). The explicit signature makes config checks reject stray keywords."""
        super().__init__()
        self.th_offset = float(th_offset)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        positives = positive_mask(labels)  # [P, C-1]
        margins = logits[:, 1:] - logits[:, :1]  # [P, C-1]
        return torch.where(positives, F.softplus(-margins), F.softplus(margins)).sum(1).mean()

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        return threshold_decode(logits.float(), top_k, self.th_offset)
