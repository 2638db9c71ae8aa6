"""DREEAM's evidence loss (Ma et al., EACL 2023; github.com/YoumiMa/dreeam, `model.py`): the KL
divergence from a pair's gold evidence, normalised to a distribution over sentences, to the model's
evidence distribution. Not a relation loss (it is not in `LOSSES`): the trainer adds it, weighted by
`model.evidence_weight`, to any relation loss when the model returns evidence (docre.models.output).

The official code averages it over the pairs with at least one relation (`KLDivLoss(batchmean)`
over those rows, pairs whose facts name no evidence included: their target is all "zero"), and
replaces zeros on both sides by 1e-30 before the logarithm, which makes a sentence outside the
gold evidence contribute ~0 whatever the model gives it.
"""

import torch

TINY = 1e-30  # the official stand-in for 0 before a logarithm


def evidence_kl(distribution: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
    """Per pair, KL(gold evidence || predicted distribution).

    Args:
        distribution: [P, S] the model's share of each pair's attention on each sentence.
        evidence: [P, S] per pair, how many of its gold facts name each sentence (Batch.evidence).

    Returns:
        [P] float32 divergence of each pair (the caller averages it over the pairs with a relation).
    """
    distribution, evidence = distribution.float(), evidence.float()
    target = evidence / (evidence.sum(-1, keepdim=True) + TINY)  # [P, S]
    target = torch.where(target == 0, TINY, target)
    predicted = torch.where(distribution == 0, TINY, distribution)
    return (target * (target.log() - predicted.log())).sum(-1)  # [P]
