"""ATGL, the adaptive-threshold global loss (Xu et al., ACL 2026;
official code github.com/xhm-code/ATGL, `losses.py`).

One softmax over all C classes with a weighted negative log-likelihood: weight 1 on TH for every
pair, alpha on each positive relation, 0 on negatives:
    L = -alpha * sum_{r in P} log p_r - log p_TH,   p = softmax(s) over all classes.
For an NA pair this is plain cross-entropy towards TH; for a pair with relations its optimum has
s_r - s_TH = log(alpha) for positives and negatives pushed down (paper Appendix A). Mean over pairs.
Decode: the shared threshold rule.
"""

import torch
from torch import nn

from docre.losses.common import threshold_decode


class ATGLoss(nn.Module):
    def __init__(self, alpha: float = 16.5, th_offset: float = 0.0):
        """alpha: weight of each positive relation (the official code's p_weight; paper values:
        CDR 7.5, DWIE 6.0, Re-DocRED 16.5, DocGNRE 20.0)."""
        super().__init__()
        self.th_offset = float(th_offset)  # decode: added to the TH logit (0 = the official rule)
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = float(alpha)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = labels.float() * self.alpha  # [P, C]; a new tensor, the labels stay as they are
        weights[:, 0] = 1.0  # TH weighs 1 for every pair, NA or not
        return -(weights * torch.log_softmax(logits.float(), dim=1)).sum(1).mean()

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        return threshold_decode(logits.float(), top_k, self.th_offset)
