"""Balanced softmax, DocuNet's multi-label categorical cross-entropy (Zhang et al.,
IJCAI 2021), as the HingeABL repository implements it (github.com/Jize-W/HingeABL, `losses.py`).

Class 0 takes part as an ordinary class: it is the target of NA pairs and a negative otherwise.
With T the target classes of a pair (its relations, or {0} for an NA pair) and N the rest:
    L = log(1 + sum_{j in N} e^{s_j}) + log(1 + sum_{i in T} e^{-s_i}),   mean over pairs.
The fixed score 0 separates targets from the rest, so decode predicts relation r iff s_r > 0,
capped at the top_k largest relation logits (class 0 is not ranked: it is no threshold here).

`topk_includes_na=True` decodes as DocuNet's official `get_label` (github.com/zjunlp/DocuNet,
`losses.py`, `balanced_loss`; the HingeABL repository's `get_label` ranks the same way): the cap is
the k-th largest of all C logits, class 0 included, so a pair whose class-0 logit is among its top k
keeps at most k-1 relations. A relation still needs s_r > 0 only, not s_r > s_0. The DocuNet
balanced-softmax configs set it; the default keeps docre's older rule, so earlier runs decode as before.
"""

import torch
from torch import nn

from docre.losses.common import NEG, positive_mask, relation_top_k, relations_to_multi_hot


class BalancedSoftmaxLoss(nn.Module):
    def __init__(self, topk_includes_na: bool = False):
        """topk_includes_na: rank class 0 with the relations for decode's top-k cap (DocuNet's official
        decode); False ranks the relation classes only."""
        super().__init__()
        if not isinstance(topk_includes_na, bool):
            raise ValueError(f"topk_includes_na must be true or false, got {topk_includes_na!r}")
        self.topk_includes_na = topk_includes_na

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
        if self.topk_includes_na and top_k < logits.size(1):
            kth = logits.topk(top_k, dim=1).values[:, -1:]  # [P, 1] the k-th largest of all C logits, s_0 included
            ranked = logits[:, 1:] >= kth  # [P, C-1]
        else:
            ranked = relation_top_k(logits, top_k)  # [P, C-1]
        return relations_to_multi_hot((logits[:, 1:] > 0) & ranked, logits.dtype)

    def decision_threshold(self, logits: torch.Tensor) -> torch.Tensor:
        """[P] the logit each relation must exceed: 0 for every pair (used by the diagnostics)."""
        return torch.zeros(logits.size(0), dtype=torch.float32, device=logits.device)
