"""Relation losses behind one table. Each one is an `nn.Module` with `forward(logits, labels)`
(mean over pairs, float32, inputs untouched) and `decode(logits, top_k)`; see `common.RelationLoss`.

Adding a loss: one file here, one line in `LOSSES`, one test file (the contract tests pick it up).
"""

from torch import nn

from docre.errors import DocreError
from docre.losses.atgl import ATGLoss
from docre.losses.atl import ATLoss

LOSSES = {
    "atl": ATLoss,
    "atgl": ATGLoss,
}


def build_loss(name: str, **kwargs) -> nn.Module:
    """Build a registered loss from its name and keyword arguments."""
    if name not in LOSSES:
        raise DocreError(f"unknown loss {name!r}; available: {', '.join(LOSSES)}")
    try:
        return LOSSES[name](**kwargs)
    except (TypeError, ValueError) as error:
        raise DocreError(f"loss {name!r}: {error}") from None
