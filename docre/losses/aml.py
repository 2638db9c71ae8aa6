"""AML, the adaptive margin loss of SagDRE (as in the HingeABL
repository, github.com/Jize-W/HingeABL, `losses.py`).

A hinge of width 1 on each side of the threshold class, with d_r = s_r - s_TH:
    L = sum_{r in P} [1 - d_r]_+ + sum_{r in N} [1 + d_r]_+,   mean over pairs.
Decode: the shared threshold rule.
"""

import torch
import torch.nn.functional as F
from torch import nn

from docre.losses.common import positive_mask, threshold_decode


class AdaptiveMarginLoss(nn.Module):
    def __init__(self, th_offset: float = 0.0):
        """th_offset: added to the TH logit when decoding (0 = the official rule; tuned on dev with
        eval.tune_threshold_offset). The explicit signature makes config checks reject stray keywords."""
        super().__init__()
        self.th_offset = float(th_offset)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        positives = positive_mask(labels)  # [P, C-1]
        margins = logits[:, 1:] - logits[:, :1]  # [P, C-1]
        return torch.where(positives, F.relu(1.0 - margins), F.relu(1.0 + margins)).sum(1).mean()

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        return threshold_decode(logits.float(), top_k, self.th_offset)
