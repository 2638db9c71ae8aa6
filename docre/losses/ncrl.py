"""NCRL, the none-class ranking loss (Zhou & Lee, 2022; REFERENCE §2.5).

Margins to the none class m_r = s_r - s_0 go through a sigmoid, p_r = sigmoid(m_r). Per pair:
    relations     sum_{r in P} -log p_r + sum_{r in N} -log min(1 - p_r + shift, 1)
    regulariser   -[y_0 log q + (1 - y_0) log(1 - q)],   q = sigmoid(s_0 - mean_{r >= 1} s_r)
y_0 = 1 for NA pairs. Every probability inside a log is clamped at 1e-8, as in the reference. The
shift ("margin shifting") lowers the loss of every negative and zeroes it once p_r <= shift, so
easy negatives stop pulling. Mean over pairs. Decode: the shared threshold rule.
"""

import torch
from torch import nn

from docre.losses.common import positive_mask, threshold_decode

CLAMP = 1e-8


class NoneClassRankingLoss(nn.Module):
    def __init__(self, shift: float = 0.05, th_offset: float = 0.0):
        """shift: margin shift on the negatives' probabilities (the DocRED code's clip = 0.05; the
        standalone loss file defaults to 0)."""
        super().__init__()
        self.th_offset = float(th_offset)  # decode: added to the TH logit (0 = the official rule)
        if not 0 <= shift < 1:
            raise ValueError(f"shift must be in [0, 1), got {shift}")
        self.shift = float(shift)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        positives = positive_mask(labels)  # [P, C-1]
        margins = logits[:, 1:] - logits[:, :1]  # [P, C-1]
        # 1 - sigmoid(m) is computed as sigmoid(-m): the same value without float32 cancellation near p = 1
        positive_term = -torch.log(torch.sigmoid(margins).clamp_min(CLAMP))
        negative_term = -torch.log((torch.sigmoid(-margins) + self.shift).clamp(CLAMP, 1.0))
        relation_part = torch.where(positives, positive_term, negative_term).sum(1)  # [P]
        is_na = (~positives.any(1)).float()  # [P] y_0
        gap = logits[:, 0] - logits[:, 1:].mean(1)  # [P] q = sigmoid(gap), 1 - q = sigmoid(-gap)
        regulariser = -(is_na * torch.log(torch.sigmoid(gap).clamp_min(CLAMP))
                        + (1.0 - is_na) * torch.log(torch.sigmoid(-gap).clamp_min(CLAMP)))
        return (relation_part + regulariser).mean()

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        return threshold_decode(logits.float(), top_k, self.th_offset)
