"""ATL, the adaptive-thresholding loss of ATLOP (Zhou et al., AAAI 2021;
official code github.com/wzhouad/ATLOP, `losses.py`).

Per pair: the positive part is a softmax over the positive classes plus TH, with -log p summed
over the positives; the negative part is a softmax over TH plus the negatives, with -log p(TH).
Mean over pairs. Decode: the shared threshold rule.
"""

import torch
from torch import nn

from docre.losses.common import NEG, threshold_decode


class ATLoss(nn.Module):
    def __init__(self, th_offset: float = 0.0):
        """th_offset: added to the TH logit when decoding (0 = the official rule; tuned on dev with
        eval.tune_threshold_offset). The explicit signature makes config checks reject stray keywords."""
        super().__init__()
        self.th_offset = float(th_offset)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        positives = labels.float().clone()  # never touch the caller's labels (ATLOP zeroes column 0 in place)
        positives[:, 0] = 0.0
        threshold = torch.zeros_like(positives)
        threshold[:, 0] = 1.0
        keep_positive = (positives + threshold) > 0  # [P, C] positives and TH
        keep_negative = positives == 0  # [P, C] negatives and TH
        positive_part = -(torch.log_softmax(logits.masked_fill(~keep_positive, NEG), dim=1) * positives).sum(1)
        negative_part = -torch.log_softmax(logits.masked_fill(~keep_negative, NEG), dim=1)[:, 0]
        return (positive_part + negative_part).mean()

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        return threshold_decode(logits.float(), top_k, self.th_offset)
