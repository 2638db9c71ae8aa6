"""AFL, the adaptive focal loss of KD-DocRE (Tan et al., 2022;
official code github.com/tonytan48/KD-DocRE, `losses.py`).

Per pair, with d_r = s_r - s_TH and p_r = sigmoid(d_r) (a two-way softmax between r and TH):
    positive part  sum_{r in P} -(1 + (1 - p_r)^gamma) * log p_r
    negative part  -log softmax(s_TH, s_N)_TH        (ATL's: TH against all negatives at once)
Mean over pairs of their sum. The "1 +" keeps a plain log-loss under the focal term (deliberate in
KD-DocRE: it helps recall, github.com/tonytan48/KD-DocRE/issues/16). Decode: the shared threshold rule.
"""

import torch
import torch.nn.functional as F
from torch import nn

from docre.losses.common import NEG, positive_mask, threshold_decode


class AdaptiveFocalLoss(nn.Module):
    def __init__(self, gamma: float = 1.0, th_offset: float = 0.0):
        """gamma: focusing exponent on positives (KD-DocRE's gamma_pos; 1.0 in its scripts)."""
        super().__init__()
        self.th_offset = float(th_offset)  # decode: added to the TH logit (0 = the official rule)
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        positives = positive_mask(labels)  # [P, C-1]
        margins = logits[:, 1:] - logits[:, :1]  # [P, C-1] d_r = s_r - s_TH
        log_p = F.logsigmoid(margins)  # log p_r
        # (1 - p_r)^gamma = exp(gamma * log sigmoid(-d_r)): finite gradient for every gamma >= 0
        focal = 1.0 + torch.exp(self.gamma * F.logsigmoid(-margins))
        positive_part = -(focal * log_p * positives).sum(1)  # [P]
        without_positives = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(positives, NEG)], dim=1)  # [P, C]
        negative_part = -torch.log_softmax(without_positives, dim=1)[:, 0]  # [P]
        return (positive_part + negative_part).mean()

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        return threshold_decode(logits.float(), top_k, self.th_offset)
