"""VaeDiff-DocRE's own loss (Tran, Hua, Li, COLING 2025), as its official code computes it: github.com/khaitran22/VaeDiff-DocRE
at 5f51f9e, `Stage_1/losses.py` (PMTEMloss, SCLoss), `Stage_1/model.py` and `Stage_3/model.py` (how they are combined).

    L = cls(real pairs) [+ cls(synthetic pairs)] + lambda3 * SCL_v(related real pairs + synthetic pairs)

cls is PEMSCL's PMTEM (`pemscl.pmtem`, its "official" broadcast form by default), or ATGL for the ATGL paper's swap
(`classification: atgl`, which replaces both classification terms and keeps the contrastive one, as the paper's
"ATGL replaces the PEMSCL loss" reads with the contrastive term kept as the recorded flag `contrastive`).

SCL_v, VaeDiff's simpler contrastive term, over the S selected pairs (those whose NA column is not 1), on their
features f (the refined pair cells the classifier reads; synthetic features as the augmenter gave them):
    A = cos(f_i, f_j) / tau
    M_ij = 1 if i != j and pairs i, j share a label column
    lp1_i = Σ_j M_ij (A_ij - log Σ_{k≠i} exp A_ik) / max(Σ_j M_ij, 1)
    SCL_v = -(tau / tau_base) · mean_i lp1_i
No lp2 term (PEMSCL's MLLTRSCL has one), anchors without a partner count as 0 in the mean. Official values for
Re-DocRED: tau 1.0, tau_base 0.5. Fewer than two selected pairs give SCL_v = 0 (NaN in the official code: an empty
sum inside a log, or the mean of nothing).

`synthetic=N` (VaeDiff's stage 3, docre/vaediff.py): the last N rows of logits, labels and features are synthetic
pairs the trainer appended; they get their own classification term, as officially. Stage 3's first epochs train
with the classification term alone (the official warm-up): the stage-3 run sets `contrastive_alone: false`, so a
call without synthetic pairs leaves SCL_v out; stage 1 keeps the default (true).

Differences from the official code: the official stage-1 and stage-3 models also put every document's self pairs
(h = t, logits multiplied by 0, labelled NA) into the PMTEM mean; docre's model scores candidate pairs only
(docs/models.md). PMTEM's -log(p + 1e-30) without float32 rounding near 1 (pemscl.py).
"""

import torch
from torch import Tensor, nn

from docre.errors import DocreError
from docre.losses.atgl import ATGLoss
from docre.losses.common import NEG, threshold_decode
from docre.losses.pemscl import bilinear_cosine, check_settings, pmtem
from docre.models.output import PairFeatures

CLASSIFICATIONS = ("pmtem", "atgl")


def selected_contrastive(cosine: Tensor, labels: Tensor, tau: float, tau_base: float) -> Tensor:
    """SCL_v of the module docstring over pairs already selected.

    Args:
        cosine: [S, S] cosine similarities of the selected pairs' features. labels: [S, C] multi-hot (read only).

    Returns:
        float32 scalar; 0 for fewer than two pairs.
    """
    pairs = cosine.size(0)
    if pairs < 2:
        return cosine.new_zeros((), dtype=torch.float32)
    similarity = cosine.float() / tau  # [S, S]
    others = ~torch.eye(pairs, dtype=torch.bool, device=cosine.device)  # [S, S] k != i
    log_prob = similarity - similarity.masked_fill(~others, NEG).logsumexp(1, keepdim=True)  # [S, S]
    gold = (labels > 0).float()  # [S, C]
    shares = (gold @ gold.t() > 0) & others  # [S, S] M
    lp1 = torch.where(shares, log_prob, torch.zeros_like(log_prob)).sum(1) / shares.sum(1).clamp_min(1)  # [S]
    return -(tau / tau_base) * lp1.mean()


class VaeDiffLoss(nn.Module):
    needs_features = True  # the trainer passes features=PairFeatures(...) to forward
    couples_pairs = True  # the contrastive term compares the batch's related pairs with each other
    takes_synthetic = True  # stage 3 appends synthetic pairs and says how many (synthetic=N)

    def __init__(self, tau: float = 1.0, tau_base: float = 0.5, lambda1: float = 1.0, lambda2: float = 1.0,
                 lambda3: float = 1.0, pmtem_form: str = "official", classification: str = "pmtem",
                 alpha: float | None = None, contrastive: bool = True, contrastive_alone: bool = True,
                 th_offset: float = 0.0):
        """tau, tau_base: SCL_v's temperature and base (official Re-DocRED: 1.0, 0.5). lambda1, lambda2: PMTEM's
        entropy weights; lambda3: SCL_v's weight. pmtem_form: "official" or "per_pair" (pemscl.py).
        classification: "pmtem" (official) or "atgl". alpha: ATGL's, with classification "atgl" only (None: ATGL's
        default 16.5); PMTEM has none, so an alpha beside it is refused, not ignored. contrastive: keep SCL_v at all.
        contrastive_alone: SCL_v also in calls without synthetic pairs (stage 1; false in stage 3).
        th_offset: added to the TH logit when decoding (0 = the official rule)."""
        super().__init__()
        if classification not in CLASSIFICATIONS:
            raise ValueError(f"classification must be one of {', '.join(CLASSIFICATIONS)}; got {classification!r}")
        if alpha is not None and classification != "atgl":
            raise ValueError(f"alpha is ATGL's and applies only with classification: atgl; this loss classifies with "
                             f"{classification!r}, which has none (drop alpha, or set classification: atgl)")
        check_settings(pmtem_form, tau, tau_base)
        self.tau, self.tau_base = float(tau), float(tau_base)
        self.lambda1, self.lambda2, self.lambda3 = float(lambda1), float(lambda2), float(lambda3)
        self.pmtem_form = pmtem_form
        self.atgl = None  # None: PMTEM
        if classification == "atgl":
            self.atgl = ATGLoss() if alpha is None else ATGLoss(alpha)
        self.contrastive, self.contrastive_alone = bool(contrastive), bool(contrastive_alone)
        self.th_offset = float(th_offset)

    def classify(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.atgl is not None:
            return self.atgl(logits, labels)
        return pmtem(logits, labels, self.lambda1, self.lambda2, self.pmtem_form)

    def forward(self, logits: Tensor, labels: Tensor, features: PairFeatures | None = None, synthetic: int = 0) -> Tensor:
        """Args: logits [P, C]; labels [P, C]; features: the same P pairs' representations; synthetic: how many of
        the P rows (the last ones) are synthetic pairs."""
        real = logits.size(0) - synthetic
        loss = self.classify(logits[:real], labels[:real])
        if synthetic:
            loss = loss + self.classify(logits[real:], labels[real:])
        if not self.contrastive or not (synthetic or self.contrastive_alone):
            return loss
        if features is None:
            raise DocreError("the vaediff loss needs the pairs' features for its contrastive term "
                             "(forward(logits, labels, features=PairFeatures(...)) from a model asked for them)")
        selected = labels[:, 0] != 1  # [P] related pairs (synthetic ones are all related)
        if features.vector is not None:  # the similarities of the selected pairs only: S is ~5 % of P
            features = PairFeatures(vector=features.vector[selected])
        else:
            features = PairFeatures(features.head[selected], features.tail[selected], features.block_size)
        cosine = bilinear_cosine(features)  # [S, S]
        return loss + self.lambda3 * selected_contrastive(cosine, labels[selected], self.tau, self.tau_base)

    def decode(self, logits: Tensor, top_k: int) -> Tensor:
        return threshold_decode(logits.float(), top_k, self.th_offset)
