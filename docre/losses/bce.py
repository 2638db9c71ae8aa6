"""BCE, independent binary cross-entropy per relation with one global decision threshold
(the DocRED baselines, Yao et al., ACL 2019, github.com/thunlp/DocRED; none of the ATLOP-family
repositories ships a BCE loss, so the reduction below is our choice).

    L = sum_{r=1}^{C-1} -[y_r log sigmoid(s_r) + (1 - y_r) log(1 - sigmoid(s_r))],   mean over pairs.
Reduction: summed over the relation classes, averaged over pairs (so the scale matches the other
losses, which are per-pair sums). Class 0 is not used: it gets no loss and no gradient.

Decode: relation r iff sigmoid(s_r) > threshold and s_r is among the pair's top_k relation logits.
The threshold is a constructor argument (default 0.5); `tune_decode` replaces it by the value that
maximises F1 on a labelled split (the trainer calls it at every dev evaluation and stores the result
in decode.json, which test scoring and `load_trained` reuse).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from docre.losses.common import positive_mask, relation_top_k, relations_to_multi_hot


class BCELoss(nn.Module):
    def __init__(self, threshold: float = 0.5):
        """threshold: global probability a relation must exceed to be predicted, in [0, 1]."""
        super().__init__()
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = positive_mask(labels).float()  # [P, C-1]; a label value of 2 (repeated annotation) counts as 1
        return F.binary_cross_entropy_with_logits(logits[:, 1:].float(), targets, reduction="none").sum(1).mean()

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        logits = logits.float()
        passed = torch.sigmoid(logits[:, 1:]) > self.threshold  # float32 probabilities, as in tune_decode
        return relations_to_multi_hot(passed & relation_top_k(logits, top_k), logits.dtype)

    def decision_threshold(self, logits: torch.Tensor) -> torch.Tensor:
        """[P] the logit each relation must exceed, logit(threshold), for every pair (diagnostics)."""
        theta = self.threshold
        value = -math.inf if theta == 0 else math.inf if theta == 1 else math.log(theta) - math.log1p(-theta)
        return torch.full((logits.size(0),), value, dtype=torch.float32, device=logits.device)

    @torch.no_grad()
    def tune_decode(self, logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> dict[str, float]:
        """Set the threshold to the one that maximises F1 over the facts of (logits, labels).

        Exact, not a grid: among the top_k candidates of every pair, sorted by probability, each
        cut between two distinct probabilities is one possible decision, and F1 = 2 TP / (predicted
        + gold) is evaluated for all of them at once. The threshold returned lies in the middle of
        the best cut's gap (the float32 midpoint of the lowest probability kept and the highest one
        dropped, 0 below the last one), so decode's strict > reproduces exactly the chosen
        predictions. Gold facts outside a pair's top_k count as misses, as they do in decode. Ties
        in F1 go to the cut with fewer predictions; if no cut gives F1 > 0 the threshold is unchanged.

        Args:
            logits: [P, C] the split's logits. labels: [P, C] multi-hot gold. top_k: decode's cap.

        Returns:
            {"threshold": theta}, also stored in `self.threshold`.
        """
        logits = logits.float()
        gold = positive_mask(labels.to(logits.device))  # [P, C-1]
        candidates = relation_top_k(logits, top_k) & (torch.sigmoid(logits[:, 1:]) > 0)  # p = 0 can never pass p > theta >= 0
        probabilities = torch.sigmoid(logits[:, 1:])[candidates]  # [K]
        hits = gold[candidates]  # [K]
        order = torch.argsort(probabilities, descending=True, stable=True)
        probabilities, hits = probabilities[order], hits[order]
        true_positives = hits.double().cumsum(0)  # [K] predicting the first i+1 candidates
        predicted = torch.arange(1, len(probabilities) + 1, dtype=torch.float64, device=logits.device)
        f1 = 2 * true_positives / (predicted + gold.sum().double())
        # a cut after position i is only possible where the next probability is strictly lower
        below = torch.cat([probabilities[1:], probabilities.new_zeros(1)])  # [K] highest probability dropped
        f1 = torch.where(probabilities > below, f1, torch.zeros_like(f1))
        # the threshold of each cut: the midpoint, rounded to float32 (what decode compares in); where
        # the two are adjacent floats the midpoint may round up onto the kept one, then take the lower
        middle = ((probabilities.double() + below.double()) / 2).float()
        thresholds = torch.where(probabilities > middle, middle, below)
        if len(f1) and f1.max() > 0:
            best = int(torch.argmax(f1))  # the first maximum: the fewest predictions
            self.threshold = float(thresholds[best])
        return {"threshold": self.threshold}
