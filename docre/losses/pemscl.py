"""PEMSCL (Guo, Kok, Bing, EACL 2023, "Towards Integration of Discriminability and Robustness for
Document-Level Relation Extraction"), as its official code computes it: github.com/guojiapub/PEMSCL
at fffe504, `codes/losses.py` (PMTEMloss, MLLTRSCLloss), `codes/model.py` (how they are combined).

Per pair i: logits s [C] (column 0 = TH), d_r = s_r - s_0, P_i its gold relations, N_i its other
relation classes (r >= 1), and the two entries of the two-way softmax of (s_0, s_r):
    q_r = sigmoid(d_r),   q̄_r = sigmoid(-d_r)
q̄ is never computed as 1 - q: that rounds to 0 above d ≈ 17 in float32 (37 in float64) and turns a
wrong negative's -log(q̄ + 1e-30) into 69.1 whatever its margin.

PMTEM (pairwise moving threshold with entropy minimisation), ε = 1e-30 as in the code:
    L1_i = Σ_{r∈P_i} -log(q_r + ε)            L2_i = Σ_{r∈N_i} -log(q̄_r + ε)
    H_r  = -[q_r log(q_r + ε) + q̄_r log(q̄_r + ε)]
    S3_i = Σ_{r∈P_i} H_r    S4_i = Σ_{r∈N_i} H_r    n⁺_i = max(|P_i|, 1)    n⁻_i = max(|N_i|, 1)
  "official": the code divides the [N] entropy sums by [N, 1] counts, so both entropy terms become
  [N, N] matrices and `.mean()` runs over all N² cells, which factorises into
    L_pmtem = mean_i (L1_i + L2_i) + λ1 · mean_j S3_j · mean_i 1/n⁺_i + λ2 · mean_j S4_j · mean_i 1/n⁻_i
  "per_pair" (the paper's reading):
    L_pmtem = mean_i (L1_i + L2_i + λ1 S3_i / n⁺_i + λ2 S4_i / n⁻_i)
  The two agree when every pair has the same number of gold relations (e.g. NA-only batches).

MLLTRSCL (multi-label supervised contrastive) over the N pairs of the call, on f_i = bl_i / max(|bl_i|, 1e-12),
bl_i the group bilinear's input vector (concat over blocks b of vec(outer(head_ib, tail_ib))):
    A = f fᵀ / τ,   A_ik -= max_k A_ik        (max over the whole row, diagonal included, detached)
    M_ij = 1 if i ≠ j and y_i, y_j share a label column (all C columns: NA pairs are each other's positives)
    m_i  = 1 if pair i is not NA (y_i0 ≠ 1)
    lse_i = log Σ_{k≠i} exp(A_ik)
    lp1_i = Σ_j M_ij (A_ij - lse_i) / max(Σ_j M_ij, 1)
    lp2_i = -lse_i if Σ_j M_ij = 0 else 0     (depends on the max shift; it is what the code computes)
  "official": the code adds lp1 [N] to lp2 [N, 1] and masks by m over the columns ([N, N], mean over N²):
    L_scl = -(τ/τ_base) · [ mean_j m_j lp1_j + mean_i lp2_i · mean_j m_j ]
  "per_anchor" (the intended reading):
    L_scl = -(τ/τ_base) · mean_i m_i (lp1_i + lp2_i)

Total: L = L_pmtem + λ3 · L_scl.

Defaults: τ = 2.0, τ_base = 1.0, λ1 = λ2 = λ3 = 1: the official argparse defaults, also its DocRED
script. Its Re-DocRED script uses τ = 0.2, τ_base = 2.0 (scale τ/τ_base = 0.1); pass those for
Re-DocRED. Decode: ATLOP's get_label (the official PMTEMloss.get_label), top-4 in both scripts;
th_offset as in the other threshold-class losses (0 = the official rule).

Where this differs from running the official code, and why:
- A call with one pair (or none): the official contrastive term is NaN there (the sum over k ≠ i is
  empty, log 0); here L_scl = 0 for that call and PMTEM is unchanged.
- Labels are never modified. The official PMTEMloss zeroes labels[:, 0] in place; in its apex O1 run
  the contrastive term received another (float16) copy of the labels, so it saw the NA column
  intact. That is the behaviour here (a float32 run of the official code would have zeroed the NA
  column first and changed both m and M).
- float32 throughout (logits and features are cast; autocast is off for the similarity products):
  the official PMTEM casts its logits; its similarity product ran in float16 under apex O1.
- bl ([N, emb·block], 65,536 values a pair at PEMSCL's emb 1024) is never built:
  <bl_i, bl_j> = Σ_b <head_ib, head_jb> <tail_ib, tail_jb> (see `bilinear_cosine`).
- -log(p + ε) is evaluated as -logaddexp(log p, log ε) and lse_i by logsumexp: the same functions,
  but without float32 rounding of p near 1 (log sigmoid(10) keeps about 3 digits once sigmoid(10)
  is rounded) and finite where exp would underflow (very small τ).
- The contrastive term couples all pairs of one call (officially: the 4 documents of a batch);
  a batch split into several calls contrasts each part's pairs only, and the loss is not a mean
  over pairs (the halves of a batch do not average to the whole).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from docre.errors import DocreError
from docre.losses.common import NEG, positive_mask, threshold_decode
from docre.models.output import PairFeatures  # what a model returns on request: its pair representations

PMTEM_FORMS = ("official", "per_pair")
SCL_FORMS = ("official", "per_anchor")
LOG_EPS = math.log(1e-30)  # the official code adds 1e-30 inside every log


def bilinear_cosine(features: PairFeatures) -> Tensor:
    """Cosine similarity of the pairs' group-bilinear vectors, never building them.

    bl_p = concat over blocks b of vec(outer(head_pb, tail_pb)) is ATLOP's classifier input (the same
    order as docre.models.bilinear and the official `b1.unsqueeze(3) * b2.unsqueeze(2)`; a Gram
    matrix does not depend on the order anyway). <bl_i, bl_j> = Σ_b <head_ib, head_jb> <tail_ib, tail_jb>
    costs O(K P² + P emb) instead of O(P² emb block). Norms are clamped at 1e-12 as F.normalize does.

    Args:
        features: head and tail [P, emb]; computed in float32 (float64 stays float64), autocast off.

    Returns:
        [P, P] cosine similarities.
    """
    if features.vector is not None:  # a model whose pairs are classified from a plain vector (KD-DocRE)
        with torch.autocast(features.vector.device.type, enabled=False):
            unit = F.normalize(features.vector.to(torch.promote_types(features.vector.dtype, torch.float32)), dim=1)
            return unit @ unit.t()  # [P, P]
    head, tail, block = features.head, features.tail, features.block_size
    if head.shape != tail.shape or head.dim() != 2 or head.size(1) % block:
        raise ValueError(f"pair features: head {tuple(head.shape)} and tail {tuple(tail.shape)} must be the same "
                         f"[pairs, emb] with emb a multiple of block_size {block}")
    pairs, emb = head.shape
    dtype = torch.promote_types(head.dtype, torch.float32)
    with torch.autocast(head.device.type, enabled=False):  # the products decide the loss: keep them float32
        heads = head.to(dtype).reshape(pairs, emb // block, block).transpose(0, 1)  # [K, P, b]
        tails = tail.to(dtype).reshape(pairs, emb // block, block).transpose(0, 1)  # [K, P, b]
        # [K, P, P] per-block Gram matrices; autograd keeps both (2 K P² floats, ~290 MB at K 16, P 1500)
        gram = (torch.bmm(heads, heads.transpose(1, 2)) * torch.bmm(tails, tails.transpose(1, 2))).sum(0)  # [P, P]
        squared_norms = (heads.pow(2).sum(2) * tails.pow(2).sum(2)).sum(0)  # [P]
        norms = squared_norms.clamp_min(1e-24).sqrt()  # [P] max(|bl|, 1e-12); clamped before sqrt: finite grad at 0
        return gram / norms[:, None] / norms[None, :]


def check_settings(pmtem_form: str, tau: float, tau_base: float) -> None:
    """The checks every loss built on PMTEM and a contrastive temperature makes (PEMSCL, VaeDiff-DocRE's)."""
    if pmtem_form not in PMTEM_FORMS:
        raise ValueError(f"pmtem_form must be one of {', '.join(PMTEM_FORMS)}; got {pmtem_form!r}")
    if tau <= 0 or tau_base <= 0:
        raise ValueError(f"tau and tau_base must be positive; got tau={tau}, tau_base={tau_base}")


def _log_plus_eps(log_p: Tensor) -> Tensor:
    """log(p + 1e-30) from log p: the official value without rounding p to float32 first."""
    return torch.logaddexp(log_p, torch.full_like(log_p, LOG_EPS))


def pmtem(logits: Tensor, labels: Tensor, lambda1: float = 1.0, lambda2: float = 1.0, form: str = "official") -> Tensor:
    """PMTEM of the module docstring.

    Args:
        logits: [P, C], column 0 = TH. labels: [P, C] multi-hot (read only).
        form: "official" ([N, N] broadcast of the entropy terms) or "per_pair".

    Returns:
        float32 scalar.
    """
    logits = logits.float()
    positives = positive_mask(labels)  # [P, C-1]
    margins = logits[:, 1:] - logits[:, :1]  # [P, C-1] d_r
    log_q = _log_plus_eps(F.logsigmoid(margins))  # [P, C-1] log(q + ε)
    log_q_bar = _log_plus_eps(F.logsigmoid(-margins))  # [P, C-1] log(q̄ + ε)
    entropy = -(torch.sigmoid(margins) * log_q + torch.sigmoid(-margins) * log_q_bar)  # [P, C-1] H_r
    zero = torch.zeros_like(entropy)
    sat = torch.where(positives, -log_q, -log_q_bar).sum(1)  # [P] L1 + L2
    positive_entropy = torch.where(positives, entropy, zero).sum(1)  # [P] S3
    negative_entropy = torch.where(positives, zero, entropy).sum(1)  # [P] S4
    num_positive = positives.sum(1).clamp_min(1).float()  # [P] n⁺
    num_negative = (~positives).sum(1).clamp_min(1).float()  # [P] n⁻
    if form == "official":
        # mean over the [P, P] cells S3_j / n⁺_i: the mean of S3 times the mean of 1/n⁺
        return (sat.mean() + lambda1 * positive_entropy.mean() * num_positive.reciprocal().mean()
                + lambda2 * negative_entropy.mean() * num_negative.reciprocal().mean())
    return (sat + lambda1 * positive_entropy / num_positive + lambda2 * negative_entropy / num_negative).mean()


def supervised_contrastive(cosine: Tensor, labels: Tensor, tau: float = 2.0, tau_base: float = 1.0,
                           form: str = "official") -> Tensor:
    """MLLTRSCL of the module docstring.

    Args:
        cosine: [P, P] cosine similarities of the pairs' features (`bilinear_cosine`).
        labels: [P, C] multi-hot, NA column intact (read only).
        form: "official" (expanded [N, N] broadcast) or "per_anchor".

    Returns:
        float32 scalar; 0 for fewer than two pairs (nothing to contrast; NaN in the official code).
    """
    pairs = cosine.size(0)
    if pairs < 2:
        return cosine.new_zeros((), dtype=torch.float32)
    similarity = cosine.float() / tau  # [P, P] A
    # the official shift by the row max (the diagonal, 1/τ, for non-zero features) is detached; it
    # cancels in lp1 but stays in lp2
    shifted = similarity - similarity.max(1, keepdim=True).values.detach()  # [P, P]
    others = ~torch.eye(pairs, dtype=torch.bool, device=cosine.device)  # [P, P] k ≠ i
    log_denominator = shifted.masked_fill(~others, NEG).logsumexp(1)  # [P] lse_i
    gold = (labels > 0).float()  # [P, C] every column, NA included
    shares = (gold @ gold.t() > 0) & others  # [P, P] M
    num_shared = shares.sum(1)  # [P]
    log_prob = shifted - log_denominator[:, None]  # [P, P]
    lp1 = torch.where(shares, log_prob, torch.zeros_like(log_prob)).sum(1) / num_shared.clamp_min(1)  # [P]
    lp2 = torch.where(num_shared == 0, -log_denominator, torch.zeros_like(log_denominator))  # [P]
    related = (labels[:, 0] != 1).float()  # [P] m
    scale = -tau / tau_base
    if form == "official":
        # mean over the [P, P] cells (lp1_j + lp2_i) m_j
        return scale * ((related * lp1).mean() + lp2.mean() * related.mean())
    return scale * (related * (lp1 + lp2)).mean()


class PEMSCLLoss(nn.Module):
    needs_features = True  # the trainer passes features=PairFeatures(...) to forward
    couples_pairs = True  # the contrastive term compares every pair of the batch with every other

    def __init__(self, tau: float = 2.0, tau_base: float = 1.0, lambda1: float = 1.0, lambda2: float = 1.0,
                 lambda3: float = 1.0, pmtem_form: str = "official", scl_form: str = "official", th_offset: float = 0.0):
        """tau, tau_base: contrastive temperature and its base (Re-DocRED script: 0.2, 2.0). lambda1,
        lambda2: weights of the positives' and negatives' entropy; lambda3: of the contrastive term.
        pmtem_form: "official" or "per_pair"; scl_form: "official" or "per_anchor" (module docstring).
        th_offset: added to the TH logit when decoding (0 = the official rule)."""
        super().__init__()
        check_settings(pmtem_form, tau, tau_base)
        if scl_form not in SCL_FORMS:
            raise ValueError(f"scl_form must be one of {', '.join(SCL_FORMS)}; got {scl_form!r}")
        self.tau, self.tau_base = float(tau), float(tau_base)
        self.lambda1, self.lambda2, self.lambda3 = float(lambda1), float(lambda2), float(lambda3)
        self.pmtem_form, self.scl_form = pmtem_form, scl_form
        self.th_offset = float(th_offset)

    def forward(self, logits: Tensor, labels: Tensor, features: PairFeatures | None = None) -> Tensor:
        """Args: logits [P, C]; labels [P, C]; features: the same P pairs' head/tail representations."""
        if features is None:
            raise DocreError("the pemscl loss needs the pairs' features for its contrastive term "
                             "(forward(logits, labels, features=PairFeatures(...)) from a model asked for them)")
        if features.head.size(0) != logits.size(0):
            raise ValueError(f"pair features for {features.head.size(0)} pairs, logits for {logits.size(0)}")
        loss = pmtem(logits, labels, self.lambda1, self.lambda2, self.pmtem_form)
        cosine = bilinear_cosine(features).float()  # [P, P]
        return loss + self.lambda3 * supervised_contrastive(cosine, labels, self.tau, self.tau_base, self.scl_form)

    def decode(self, logits: Tensor, top_k: int) -> Tensor:
        return threshold_decode(logits.float(), top_k, self.th_offset)
