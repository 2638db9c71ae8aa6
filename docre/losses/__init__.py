"""Relation losses behind one table. Each one is an `nn.Module` with `forward(logits, labels)`
(mean over pairs, float32, inputs untouched) and `decode(logits, top_k)`; see `common.RelationLoss`.
Optional methods: `tune_decode(logits, labels, top_k) -> dict` (decision parameters fitted on dev;
the trainer calls it at every dev evaluation) and `decision_threshold(logits) -> [P]` (the logit a
relation must exceed, for losses without a TH class; the diagnostics use it).
Formulas, decode rules, defaults and sources: docs/losses.md.

Adding a loss: one file here, one line in `LOSSES`, one test file (the contract tests pick it up).
"""

import inspect
from typing import Any

from torch import nn

from docre.errors import DocreError, did_you_mean
from docre.losses.afl import AdaptiveFocalLoss
from docre.losses.aml import AdaptiveMarginLoss
from docre.losses.atgl import ATGLoss
from docre.losses.atl import ATLoss
from docre.losses.balanced_softmax import BalancedSoftmaxLoss
from docre.losses.bce import BCELoss
from docre.losses.hingeabl import HingeABLoss
from docre.losses.meansat import MeanSATLoss
from docre.losses.ncrl import NoneClassRankingLoss
from docre.losses.sat import SATLoss

LOSSES = {
    "atl": ATLoss,  # ATLOP's adaptive thresholding
    "atgl": ATGLoss,  # adaptive-threshold global loss (alpha)
    "afl": AdaptiveFocalLoss,  # KD-DocRE's adaptive focal loss (gamma)
    "bce": BCELoss,  # binary cross-entropy, global threshold tuned on dev (threshold)
    "balanced_softmax": BalancedSoftmaxLoss,  # DocuNet, fixed threshold 0
    "sat": SATLoss,  # sigmoid against TH (HingeABL repository)
    "meansat": MeanSATLoss,  # SAT with each side averaged
    "hingeabl": HingeABLoss,  # hinge-weighted SAT (margin)
    "aml": AdaptiveMarginLoss,  # SagDRE's margin loss
    "ncrl": NoneClassRankingLoss,  # none-class ranking loss with NA regulariser (shift)
}


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
