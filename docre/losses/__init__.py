"""Relation losses behind one table. Each one is an `nn.Module` with `forward(logits, labels)`
(float32, inputs untouched) and `decode(logits, top_k)`; see `common.RelationLoss`.
Optional methods: `tune_decode(logits, labels, top_k) -> dict` (decision parameters fitted on dev;
the trainer calls it at every dev evaluation) and `decision_threshold(logits) -> [P]` (the logit a
relation must exceed, for losses without a TH class; the diagnostics use it).
Formulas, decode rules, defaults and sources: docs/losses.md.

What a loss may ask for beyond (logits, labels), read in this file and nowhere else:
* statistics of the training split (`FROM_TRAINING`): constructor keywords the trainer computes once
  from the training labels (`training_statistics`), saves in RUN_DIR/loss_statistics.json and passes
  to every later build of the loss (evaluate, predict, export, a resumed run: `run_dir.loss_kwargs`),
  so those never need the training file. A value given in the config is used as given.
* the model's pair features: a loss class with `needs_features = True` is called as
  `loss(logits, labels, features=PairFeatures)` (`models.output.PairFeatures`, the group bilinear's
  head and tail inputs); the model computes them only then (`wants_features`).
* a label space of its own: a loss with a `num_outputs` attribute makes the model output that many
  logits per pair; its `decode` and `relation_scores` map them back to the C relation columns, so
  predictions, metrics and files never see its layout (`output_size`, `relation_margins`).
* synthetic pairs: a loss with `takes_synthetic = True` is called with `synthetic=N` where the trainer appended N
  synthetic pairs to the batch (VaeDiff-DocRE's stage 3, `train_vaediff`: the last N rows of logits, labels and
  features); `takes_synthetic` says whether a loss can take them.
A loss that is not a mean over pairs (`couples_pairs = True`: SSR-PU, PEMSCL) is the official loss
only over whole batches: the trainer warns where it splits them (train.max_batch_tokens, processes).

Adding a loss: one file here, one line in `LOSSES`, one test file (the contract tests pick it up).
"""

import inspect
from typing import Any

import torch
from torch import nn

from docre.errors import DocreError, did_you_mean
from docre.losses import amtl, ssr_pu
from docre.losses.afl import AdaptiveFocalLoss
from docre.losses.aml import AdaptiveMarginLoss
from docre.losses.amtl import AMTLLoss
from docre.losses.atgl import ATGLoss
from docre.losses.atl import ATLoss
from docre.losses.balanced_softmax import BalancedSoftmaxLoss
from docre.losses.bce import BCELoss
from docre.losses.hingeabl import HingeABLoss
from docre.losses.meansat import MeanSATLoss
from docre.losses.ncrl import NoneClassRankingLoss
from docre.losses.pemscl import PEMSCLLoss
from docre.losses.sat import SATLoss
from docre.losses.ssr_pu import SSRPULoss
from docre.losses.vaediff import VaeDiffLoss

LOSSES = {
    "atl": ATLoss,  # ATLOP's adaptive thresholding
    "atgl": ATGLoss,  # adaptive-threshold global loss (alpha)
    "afl": AdaptiveFocalLoss,  # KD-DocRE's adaptive focal loss (gamma)
    "bce": BCELoss,  # binary cross-entropy, global threshold tuned on dev (threshold)
    "balanced_softmax": BalancedSoftmaxLoss,  # DocuNet, fixed threshold 0 (topk_includes_na: its official top-k)
    "sat": SATLoss,  # sigmoid against TH (HingeABL repository)
    "meansat": MeanSATLoss,  # SAT with each side averaged
    "hingeabl": HingeABLoss,  # hinge-weighted SAT (margin)
    "aml": AdaptiveMarginLoss,  # SagDRE's margin loss
    "ncrl": NoneClassRankingLoss,  # none-class ranking loss with NA regulariser (shift)
    "ssr_pu": SSRPULoss,  # TTM-RE's positive-unlabeled risk ranked against TH (margin, factor, e); priors from training
    "pemscl": PEMSCLLoss,  # VaeDiff-DocRE's PMTEM + supervised contrastive term on pair features (tau, tau_base)
    "amtl": AMTLLoss,  # multi-threshold loss over four label spaces by training frequency (spaces, lam)
    "vaediff": VaeDiffLoss,  # VaeDiff-DocRE's PMTEM (or ATGL) + contrastive term over related and synthetic pairs
}

# loss name -> (its keyword taken from the training split, the function computing it from the training labels)
FROM_TRAINING = {
    "ssr_pu": ("priors", lambda labels, rel_ids, given: ssr_pu.training_statistics(labels, rel_ids)),
    # spaces: null derives them from training counts; a name ("redocred") takes a published partition
    "amtl": ("spaces", lambda labels, rel_ids, given: amtl.training_statistics(labels, rel_ids, given)),
}


def training_statistics(loss: dict, labels: torch.Tensor, rel_ids: list[str]) -> dict:
    """The keywords loss `loss["name"]` takes from the training split ({} for the others, and for a
    list the config gives itself), from the split's labels [P_total, C] over all candidate pairs and
    its relation ids in column order. JSON-able: the trainer saves them in loss_statistics.json."""
    if loss["name"] not in FROM_TRAINING:
        return {}
    keyword, compute = FROM_TRAINING[loss["name"]]
    given = loss.get(keyword)
    if isinstance(given, list):
        return {}
    return {keyword: compute(labels, rel_ids, given)[keyword]}


def wants_features(loss_fn: nn.Module) -> bool:
    """Whether `loss_fn` is called with the model's pair features (`features=`)."""
    return bool(getattr(loss_fn, "needs_features", False))


def takes_synthetic(loss_fn: nn.Module) -> bool:
    """Whether `loss_fn` takes synthetic pairs appended to a batch (`synthetic=N`)."""
    return bool(getattr(loss_fn, "takes_synthetic", False))


def caps_top_k(loss_fn: nn.Module) -> bool:
    """Whether `loss_fn`'s decode keeps at most top_k relations per pair (SSR-PU's official rule has no cap)."""
    return bool(getattr(loss_fn, "caps_top_k", True))


def refuse_top_k(loss_fn: nn.Module, top_k: int | None, option: str, loss_named: str) -> None:
    """Refuse a top_k the user gave (`option`: "--top-k" or "top_k") for a loss whose decode keeps no top-k cap: the
    output would pass for a capped one. `loss_named`: the loss as the message names it, e.g. "ssr_pu of runs/x"."""
    if top_k is not None and not caps_top_k(loss_fn):
        given = f"{option} {top_k}" if option.startswith("-") else f"{option}={top_k}"
        raise DocreError(f"{given}: loss {loss_named} decodes with no top-k cap (its official rule), so {option} would "
                         "change nothing; leave it out")


def couples_pairs(loss_fn: nn.Module) -> bool:
    """Whether `loss_fn` over a batch differs from the mean of its values over parts of the batch."""
    return bool(getattr(loss_fn, "couples_pairs", False))


def output_size(loss_fn: nn.Module, num_classes: int) -> int:
    """Logits per pair the model must output for `loss_fn`: its own label space's size, else C."""
    return getattr(loss_fn, "num_outputs", None) or num_classes


def relation_margins(loss_fn: nn.Module, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [P, C] in the relation columns, thresholds [P]) that the loss's decode compares: the
    logits and the TH logit (or the loss's `decision_threshold`) for one threshold per pair; a loss
    with its own label space gives its `relation_scores` against thresholds 0."""
    if hasattr(loss_fn, "relation_scores"):
        scores = loss_fn.relation_scores(logits).float()
        return scores, torch.zeros(scores.size(0))
    if hasattr(loss_fn, "decision_threshold"):
        return logits.float(), loss_fn.decision_threshold(logits).float()
    return logits.float(), logits[:, 0].float()


def loss_keywords(name: str) -> dict[str, Any]:
    """The keyword arguments of loss `name` with their defaults (`inspect.Parameter.empty`: none):
    its constructor's signature is the schema of the config's loss.* keys."""
    parameters = inspect.signature(LOSSES[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def build_loss(name: str, **kwargs) -> nn.Module:
    """Build a registered loss from its name and keyword arguments."""
    if name not in LOSSES:
        raise DocreError(f"unknown loss {name!r}{did_you_mean(name, LOSSES)}; available: {', '.join(LOSSES)}")
    keywords = loss_keywords(name)
    for key in kwargs:
        if key not in keywords:
            raise DocreError(f"loss {name!r}: got an unexpected keyword argument {key!r}{did_you_mean(key, keywords)}; "
                             f"its keywords: {', '.join(keywords) or 'none'}")
    try:
        return LOSSES[name](**kwargs)
    except (TypeError, ValueError) as error:
        raise DocreError(f"loss {name!r}: {error}") from None
