"""What every loss provides, and the decode rule shared by the threshold-class losses."""

from typing import Protocol

import torch

# Masking value for excluded logits: far below any real logit, still finite in float32.
NEG = -1e30


class RelationLoss(Protocol):
    """A loss over pair logits [P, C] (class 0 = NA / threshold) and multi-hot labels [P, C].

    forward(logits, labels) returns the mean over pairs, computed in float32, and never modifies
    its inputs. decode(logits, top_k) returns [P, C] multi-hot predictions with column 0 set
    exactly when no relation is predicted.
    """

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor: ...


def threshold_decode(logits: torch.Tensor, top_k: int, offset: float = 0.0) -> torch.Tensor:
    """ATLOP's `get_label`: predict r iff s_r > s_TH and s_r >= the k-th largest logit of the pair.

    The top-k ranking includes the TH logit itself, so at most k relations come out, fewer when TH
    is among the top k. Strict `>` against TH, `>=` against the k-th value, as in the official code.

    Args:
        logits: [P, C], column 0 = TH.
        top_k: most relations per pair; values >= C disable the cap.
        offset: added to the TH logit before comparing (0 = the official rule).

    Returns:
        [P, C] float multi-hot, column 0 = 1 where nothing is predicted.
    """
    threshold = logits[:, :1] + offset  # [P, 1]
    predicted = logits > threshold  # [P, C]; column 0 is never above itself + 0
    if offset < 0:
        predicted[:, 0] = False
    if top_k < logits.size(1):
        kth = logits.topk(top_k, dim=1).values[:, -1:]  # [P, 1]
        predicted &= logits >= kth
    output = predicted.to(logits.dtype)
    output[:, 0] = (output[:, 1:].sum(1) == 0).to(logits.dtype)
    return output


def relation_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """[P, C-1] True where relation class r+1 ranks among the pair's `top_k` largest relation logits.

    For the losses without a threshold class (BCE, balanced softmax) the cap ranks the relation
    classes only (class 0 is no threshold there). As in `threshold_decode`, a logit equal to the
    k-th value passes (`>=`), so exact ties may let more than k through.
    """
    relations = logits[:, 1:]  # [P, C-1]
    if top_k >= relations.size(1):
        return torch.ones_like(relations, dtype=torch.bool)
    kth = relations.topk(top_k, dim=1).values[:, -1:]  # [P, 1]
    return relations >= kth


def relations_to_multi_hot(predicted: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[P, C-1] bool predictions of the relation classes -> [P, C] multi-hot, column 0 = nothing predicted."""
    output = torch.zeros(predicted.size(0), predicted.size(1) + 1, dtype=dtype, device=predicted.device)
    output[:, 1:] = predicted.to(dtype)
    output[:, 0] = (~predicted.any(1)).to(dtype)
    return output


def positive_mask(labels: torch.Tensor) -> torch.Tensor:
    """[P, C-1] True for the gold relations of each pair (column 0, NA, is not a relation)."""
    return labels[:, 1:] > 0


@torch.no_grad()
def tune_threshold_offset(logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> float:
    """The TH offset o that maximises F1 of `threshold_decode(logits, top_k, o)` over the facts of
    (logits, labels): a dev-tuned decode-side correction for any threshold-class loss.

    Exact, not a grid: the top-k cap does not depend on o (the ranking uses the raw logits, TH
    included), so the candidates are the relations inside each pair's top k, and o predicts exactly
    those whose margin s_r - s_TH exceeds it. Sorted by margin, every cut between two distinct
    margins is one decision, and F1 = 2 TP / (predicted + gold) is evaluated for all cuts at once;
    gold facts outside the top k count as misses. The offset returned lies in the middle of the best
    cut's gap (one unit below the last margin when every candidate is kept); margins closer than
    float32 rounding can separate count as tied; ties in F1 go to the
    cut with fewer predictions, and 0 comes back when no cut gives F1 > 0.

    Args:
        logits: [P, C], column 0 = TH. labels: [P, C] multi-hot. top_k: as in `threshold_decode`.
    """
    # on the CPU, whatever device the logits come from: a sort and a cumulative sum, and exact in float64
    logits, labels = logits.detach().double().cpu(), labels.detach().cpu()
    in_top_k = torch.ones_like(logits, dtype=torch.bool)
    if top_k < logits.size(1):
        in_top_k = logits >= logits.topk(top_k, dim=1).values[:, -1:]  # [P, C]
    in_top_k[:, 0] = False
    gold = labels > 0
    gold[:, 0] = False
    margins = (logits - logits[:, :1])[in_top_k]  # [N] candidate margins
    hits = gold[in_top_k]  # [N]
    num_gold = int(gold.sum())
    if num_gold == 0 or len(margins) == 0:
        return 0.0
    margins, order = margins.sort(descending=True)
    true_positives = hits[order].double().cumsum(0)  # [N] after keeping the first i + 1
    kept = torch.arange(1, len(margins) + 1, dtype=torch.float64)
    f1 = 2 * true_positives / (kept + num_gold)
    # a cut after i must separate margin i from i + 1 by more than decode's float32 rounding of
    # s_TH + o can blur (margins closer than that are treated as tied)
    distinct = torch.ones_like(f1, dtype=torch.bool)
    distinct[:-1] = margins[:-1] - margins[1:] > 1e-5 * margins[:-1].abs().clamp_min(1.0)
    f1 = torch.where(distinct, f1, torch.full_like(f1, -1.0))
    best = int(torch.argmax(f1))  # the first maximum: the fewest predictions among ties
    if f1[best] <= 0:
        return 0.0
    if best == len(margins) - 1:
        return float(margins[best]) - 1.0
    return float((margins[best] + margins[best + 1]) / 2)
