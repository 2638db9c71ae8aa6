"""MeanSAT (the HingeABL repository, github.com/Jize-W/HingeABL, `losses.py`): SAT with each side
averaged instead of summed.

With d_r = s_r - s_TH:
    L = (1/|P|) sum_{r in P} -log sigmoid(d_r) + (1/|N|) sum_{r in N} -log sigmoid(-d_r),
N = the C-1 - |P| relation classes that are not gold; an empty side contributes 0 (NA pairs have
no positive part). Mean over pairs. Decode: the shared threshold rule.
"""

import torch
import torch.nn.functional as F
from torch import nn

from docre.losses.common import positive_mask, threshold_decode


class MeanSATLoss(nn.Module):
    def __init__(self, th_offset: float = 0.0):
        """th_offset: added to the TH logit when decoding (0 = the official rule; tuned on dev with
        eval.tune_threshold_offset). The explicit signature makes config checks reject stray keywords."""
        super().__init__()
        self.th_offset = float(th_offset)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        positives = positive_mask(labels).float()  # [P, C-1]
        negatives = 1.0 - positives
        margins = logits[:, 1:] - logits[:, :1]  # [P, C-1]
        positive_part = (F.softplus(-margins) * positives).sum(1) / positives.sum(1).clamp_min(1.0)
        negative_part = (F.softplus(margins) * negatives).sum(1) / negatives.sum(1).clamp_min(1.0)
        return (positive_part + negative_part).mean()

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        return threshold_decode(logits.float(), top_k, self.th_offset)
