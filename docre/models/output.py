"""What a model of `MODELS` returns beside the relation logits, when it predicts more than relations.

ATLOP, DocuNet and KD-DocRE return the logits tensor [P, C] alone; DREEAM also returns each pair's
evidence distribution over the document's sentences. Code that needs only the logits (the relation
loss, the benchmark) reads them with `logits_of`, whatever the model. Asked with
`model(batch, features=True)` (only for a loss that needs them, PEMSCL), every model also returns
the representation its pairs are classified from, as `PairFeatures`: `(output, features)`.
"""

from dataclasses import dataclass

import torch


@dataclass
class EvidenceOutput:
    """Attributes:
        logits: [P, C] relation logits of the batch's candidate pairs (class 0 = NA/threshold).
        evidence: [P, S] per pair, the share of its localized-context attention that falls on each
            sentence of its document (S = the batch's most sentences; columns past a document's
            own sentences are 0). Rows sum to at most 1: special tokens belong to no sentence.
    """

    logits: torch.Tensor
    evidence: torch.Tensor


def logits_of(output: torch.Tensor | EvidenceOutput) -> torch.Tensor:
    """The relation logits [P, C] of a model's output."""
    return output.logits if isinstance(output, EvidenceOutput) else output


@dataclass
class PairFeatures:
    """The vector each pair's logits are computed from: ATLOP's group-bilinear vector given by its
    factors, the tanh head and tail representations (bl = concat over blocks b of vec(outer(head_b,
    tail_b)); [P, emb * block] is never built), or a plain vector (KD-DocRE's refined pair cell)."""

    head: torch.Tensor | None = None  # [P, emb] the group bilinear's left input
    tail: torch.Tensor | None = None  # [P, emb] its right input
    block_size: int = 0  # emb = K * block_size
    vector: torch.Tensor | None = None  # [P, D] instead of head/tail, for a model without a group bilinear classifier
