"""NCRL, the none-class ranking loss (Zhou & Lee, "None Class Ranking Loss for Document-Level
Relation Extraction", IJCAI 2022; official code github.com/yangzhou12/NCRL).

One shifted binary cross-entropy, applied to the margins of the relations to the none class and to
the none class's margin to the mean relation logit (the "margin regulariser"):
    CE_shift(m, y) = -[y log sigmoid(m) + (1 - y) log min(1 - sigmoid(m) + shift, 1)]
    per pair       sum_{r >= 1} CE_shift(s_r - s_0, y_r) + CE_shift(s_0 - mean_{r >= 1} s_r, y_0)
y_0 = 1 for NA pairs. So for a pair with relations the regulariser is
-log min(1 - sigmoid(s_0 - mean_r s_r) + shift, 1), shifted like every other negative, as in the
official code (`ncrl_loss.py`, `DocRED/losses.py`); for an NA pair it is -log sigmoid(s_0 - mean_r s_r).
Every probability inside a log is clamped at 1e-8, as in the official code. The shift ("margin
shifting") lowers the loss of every negative and zeroes it once sigmoid(m) <= shift, so easy
negatives stop pulling. Mean over pairs. Decode: the shared threshold rule.
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
        relation_part = self._shifted_ce(margins, positives).sum(1)  # [P]
        is_na = ~positives.any(1)  # [P] y_0
        na_margin = logits[:, 0] - logits[:, 1:].mean(1)  # [P]
        regulariser = self._shifted_ce(na_margin, is_na)  # [P]; shifted too when y_0 = 0
        return (relation_part + regulariser).mean()

    def _shifted_ce(self, margins: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Elementwise -log sigmoid(m) where targets, else -log min(1 - sigmoid(m) + shift, 1)."""
        # 1 - sigmoid(m) is computed as sigmoid(-m): the same value without float32 cancellation near p = 1
        positive_term = -torch.log(torch.sigmoid(margins).clamp_min(CLAMP))
        negative_term = -torch.log((torch.sigmoid(-margins) + self.shift).clamp(CLAMP, 1.0))
        return torch.where(targets, positive_term, negative_term)

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        return threshold_decode(logits.float(), top_k, self.th_offset)
