"""SSR-PU, the positive-unlabeled ranking loss of Wang Ye et al., EMNLP 2022, "A Unified
Positive-Unlabeled Learning Framework for Document-Level Relation Extraction with Different Levels of
Labeling" (official code github.com/www-Ye/SSR-PU, `model.py` with `isrank=1`, `m_tag='S-PU'`;
priors from `prepro.read_docred`). Spec: MODELS_LOSSES.md §1 (§2.2 for TTM-RE's variant).

Every relation r = 1..C-1 is its own binary PU problem on the margins d_r = s_r - s_TH of the batch:
    sq(x, y)  = factor * mean_i (y * x_i - margin)^2         (0 over an empty set)
    pi_l = prior_r + epsilon,   pi_o = e * pi_l,   pi_u = (pi_o - pi_l) / (1 - pi_l),   w = sqrt((1 - pi_o) / pi_o)
    R-   = (1 - pi_o) / (1 - pi_u) * sq(d_r[Unl_r], -1)  -  pi_u (1 - pi_o) / (1 - pi_u) * sq(d_r[Pos_r], -1)
    R+   = pi_o * w * sq(d_r[Pos_r], +1)
    risk_r = R- + R+,   or -gamma * R- when R- < beta        (the nnPU correction; R+ is dropped)
    loss = sum_r risk_r
Pos_r = the pairs labelled r, Unl_r = every other pair (NA pairs and pairs of other relations). Each
risk_r is a mean over its own pairs, and the risks are summed over relations, as the official code does;
so the loss is neither a per-pair mean nor additive over halves of a batch. With e = 1 (fully
supervised) pi_u = 0 and R- >= 0, so the nnPU branch only matters for e > 1 (incomplete labels:
the official scripts use e = 3, and e = 12 for "extremely unlabeled").

Defaults = the official fully supervised Re-DocRED scripts (`run_*_rank_full.sh`): margin 0.25,
factor 1/4 (the 0.25 inside `square_loss`), e 1, beta 0, gamma 1. TTM-RE's copy of the loss
(chufangao/TTM-RE `model2.py`) drops the 1/4 and uses margin 1: `loss.factor=1 loss.margin=1`.

Priors: prior_r = (#label entries of relation r) / (#candidate pairs) over the training split
(`training_statistics`); the loss gets them as a constructor argument, so a run directory rebuilds the
identical loss without the training file.

Decode (the official `evaluate`): r is predicted iff d_r > 0 (strict), with no top-k cap; column 0
(NA) iff nothing is predicted.

Deviations from the SSR-PU code:
* epsilon (default 1e-9) is added to every prior, as TTM-RE does: SSR-PU has none, so a relation absent
  from the training split (Re-DocRED-mini has some) gives w = inf and a NaN loss. For a relation seen in
  training this moves its prior by epsilon / prior relative: about 1e-3 for a relation seen once in
  Re-DocRED's ~1.2M training pairs, under 1e-5 from ~100 facts up. epsilon = 0 reproduces SSR-PU
  exactly and is refused when some prior is 0.
* `training_statistics` counts distinct (pair, relation) facts, where `prepro.py` counts label entries,
  repeated ones included. Re-DocRED has no repeated labels (checked on dev/test; Re-DocRED-mini is cut
  from dev), so its priors are identical; on the original DocRED the few repeats raise a prior by a
  fraction of its value.
* Priors e * (prior + epsilon) >= 1 are refused at construction (the official code divides by 0 or
  takes the root of a negative number there).
"""

import math

import torch
from torch import nn

from docre.errors import DocreError
from docre.losses.common import positive_mask, relations_to_multi_hot
from docre.utils import logger, plural


class SSRPULoss(nn.Module):
    couples_pairs = True  # a sum over relations of means over each relation's pairs in the batch, not a mean over pairs
    caps_top_k = False  # decode: r iff s_r > s_TH, however many (the official rule)

    def __init__(
        self,
        priors: list[float] | None = None,
        margin: float = 0.25,
        factor: float = 0.25,
        e: float = 1.0,
        beta: float = 0.0,
        gamma: float = 1.0,
        epsilon: float = 1e-9,
    ):
        """
        Args:
            priors: pi_l per relation class 1..C-1 (length C-1), from `training_statistics` on the
                training split. None only builds the loss for inspection: forward and decode refuse it.
            margin: m in sq(x, y) = factor * (y x - m)^2.
            factor: the constant in front of the squares (1/4 in SSR-PU, 1 in TTM-RE).
            e: pi_o = e * pi_l, the estimated true prior as a multiple of the labelled one (1 = fully supervised).
            beta, gamma: the nnPU correction, risk_r = -gamma * R- when R- < beta.
            epsilon: added to every prior so that a relation absent from training stays finite.
        """
        super().__init__()
        self.margin, self.factor, self.e = float(margin), float(factor), float(e)
        self.beta, self.gamma, self.epsilon = float(beta), float(gamma), float(epsilon)
        self.priors = None if priors is None else [float(p) for p in priors]
        self.weights = None if self.priors is None else self._risk_weights(self.priors)  # [3, C-1]

    def _risk_weights(self, priors: list[float]) -> torch.Tensor:
        """[3, C-1] float64: per relation, the weights of sq(Unl, -1) and sq(Pos, -1) in R-, and of sq(Pos, +1) in R+."""
        if self.e <= 0:
            raise DocreError(f"loss 'ssr_pu': e must be > 0, got {self.e}")
        if self.epsilon < 0:
            raise DocreError(f"loss 'ssr_pu': epsilon must be >= 0, got {self.epsilon}")
        rows = []
        for r, prior in enumerate(priors, start=1):
            if not 0.0 <= prior < 1.0:
                raise DocreError(f"loss 'ssr_pu': the prior of relation column {r} is {prior}; priors are fractions in [0, 1)")
            labelled = prior + self.epsilon  # pi_l
            estimated = self.e * labelled  # pi_o
            if labelled == 0:
                raise DocreError(f"loss 'ssr_pu': relation column {r} has prior 0 and epsilon = 0, so its weight "
                                 "sqrt((1 - pi_o) / pi_o) is infinite; give epsilon > 0 (default 1e-9)")
            if estimated >= 1:
                raise DocreError(f"loss 'ssr_pu': e * (prior + epsilon) = {estimated:.4g} >= 1 for relation column {r}; "
                                 "the estimated prior pi_o must stay below 1 (lower e)")
            unlabeled = (estimated - labelled) / (1 - labelled)  # pi_u
            rows.append([
                (1 - estimated) / (1 - unlabeled),
                unlabeled * (1 - estimated) / (1 - unlabeled),
                estimated * math.sqrt((1 - estimated) / estimated),
            ])
        return torch.tensor(rows, dtype=torch.float64).reshape(len(priors), 3).T.contiguous()

    def _checked_weights(self, logits: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            raise DocreError("loss 'ssr_pu' needs class priors from the training split (SSRPULoss(priors=...), "
                             "see docre.losses.ssr_pu.training_statistics); it was built without them")
        if self.weights.size(1) != logits.size(1) - 1:
            raise DocreError(f"loss 'ssr_pu': {self.weights.size(1)} priors for {logits.size(1) - 1} relation "
                             "classes; the priors come from a training split with another relation set")
        return self.weights.to(logits.device, torch.float32)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The S-PU risk summed over relations (module docstring).

        Args:
            logits: [P, C], column 0 = TH. labels: [P, C] multi-hot, column 0 = NA.

        Returns:
            float32 scalar.
        """
        unlabeled_weight, positive_negative_weight, positive_weight = self._checked_weights(logits)  # [C-1] each
        logits = logits.float()
        positives = positive_mask(labels)  # [P, C-1]
        margins = logits[:, 1:] - logits[:, :1]  # [P, C-1] d_r

        def mean_square(mask: torch.Tensor, sign: float) -> torch.Tensor:
            """[C-1] factor * mean over the pairs of `mask` of (sign * d_r - margin)^2, 0 where none."""
            squares = (sign * margins - self.margin) ** 2  # [P, C-1]
            total = torch.where(mask, squares, torch.zeros_like(squares)).sum(0)  # where, not *: no inf * 0
            return self.factor * total / mask.sum(0).clamp_min(1)

        risk_negative = unlabeled_weight * mean_square(~positives, -1.0) - positive_negative_weight * mean_square(
            positives, -1.0
        )  # [C-1] R-
        risk_positive = positive_weight * mean_square(positives, 1.0)  # [C-1] R+
        # nnPU: an empirical negative risk below beta means the model overfits the unlabeled pairs;
        # the official code then trains on -gamma * R- alone for that relation
        risk = torch.where(risk_negative < self.beta, -self.gamma * risk_negative, risk_negative + risk_positive)
        return risk.sum()

    def decode(self, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        """r iff s_r > s_TH (strict), as the official `evaluate`; `top_k` is ignored (SSR-PU has no
        top-k cap, so a pair may get more than top_k relations).

        Returns:
            [P, C] float32 multi-hot, column 0 = nothing predicted.
        """
        self._checked_weights(logits)
        logits = logits.float()
        return relations_to_multi_hot(logits[:, 1:] > logits[:, :1], torch.float32)


def training_statistics(labels: torch.Tensor, names: list[str] | None = None) -> dict:
    """SSR-PU's class priors from the training split: prior_r = (#pairs labelled r) / (#candidate pairs),
    the official `prepro.read_docred` ratio (it counts repeated label entries; a multi-hot matrix
    cannot, see the module docstring). Warns once, naming the relations that never occur.

    Args:
        labels: [P_total, C] multi-hot over ALL candidate pairs of the training split (every ordered
            h != t pair, or the dataset's listed candidates), column 0 = NA.
        names: optional relation name per label column (length C, names[0] = NA) for the warning;
            without it the warning gives column indices.

    Returns:
        {"priors": [float] * (C-1)}, JSON-able, the `priors` argument of `SSRPULoss`.
    """
    if labels.dim() != 2 or labels.size(0) == 0:
        raise DocreError(f"loss 'ssr_pu': the training split gives no candidate pairs (labels of shape "
                         f"{list(labels.shape)}), so there are no class priors")
    if names is not None and len(names) != labels.size(1):
        raise DocreError(f"loss 'ssr_pu': {len(names)} relation names for {labels.size(1)} label columns")
    counts = positive_mask(labels).sum(0, dtype=torch.float64)  # [C-1]
    priors = (counts / labels.size(0)).tolist()
    absent = [r for r, count in enumerate(counts.tolist(), start=1) if count == 0]
    if absent:
        shown = [names[r] for r in absent] if names is not None else [str(r) for r in absent]
        what = plural(len(absent), "relation" if names is not None else "relation column")
        verb, they = ("occurs", "it is") if len(absent) == 1 else ("occur", "they are")
        logger.warning("ssr_pu: %s never %s in the training split (prior 0, kept finite by the loss's epsilon; "
                       "%s only ever negative): %s", what, verb, they, ", ".join(shown))
    return {"priors": priors}
