"""DREEAM (Ma et al., EACL 2023, "DREEAM: Guiding Attention with Evidence for Improving
Document-Level Relation Extraction"; official code github.com/YoumiMa/dreeam, `model.py`).

ATLOP's model with evidence retrieval read off its own attention: a pair's localized-context
attention (the head's and the tail's attention product, averaged over heads, normalised to sum 1)
summed over each sentence's tokens is a distribution over the document's sentences. Training pulls
it towards the pair's gold evidence with a KL term (`docre.losses.evidence.evidence_kl`, weighted by
`model.evidence_weight`), so the context the classifier reads concentrates on the evidence; a
sentence whose share exceeds `model.evidence_threshold` (0.2) is predicted as evidence of every
relation predicted for the pair. The parameters are ATLOP's (same names: an ATLOP checkpoint loads).

As in the official code, the pair attention is normalised with 1e-30 (ATLOP: 1e-5). Implemented: the
teacher model trained on human-annotated evidence. Not implemented: the student stage trained on
distantly supervised data with the teacher's token attention (docre has no distant data).
"""

import torch
from torch import nn

from docre.data.collate import Batch
from docre.models.atlop import SharedSettings, classify_pairs, encode_batch, keep_encoder, pair_attentions, pool_entities
from docre.models.output import EvidenceOutput, PairFeatures

EPSILON = 1e-30  # the official normalisation of the pair attention


class DREEAM(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        shared: SharedSettings,
    ):
        """Args as ATLOP's (the official DREEAM uses the mean of the last 3 layers)."""
        super().__init__()
        keep_encoder(self, encoder, shared)
        emb_size, block_size = shared.emb_size, shared.block_size
        hidden_size = encoder.config.hidden_size
        self.head_extractor = nn.Linear(2 * hidden_size, emb_size)
        self.tail_extractor = nn.Linear(2 * hidden_size, emb_size)
        self.bilinear = nn.Linear(emb_size * block_size, num_classes)
        self.num_outputs = num_classes

    def forward(self, batch: Batch, features: bool = False) -> EvidenceOutput | tuple[EvidenceOutput, PairFeatures]:
        """Logits [P, C] of the batch's candidate pairs and their evidence distributions [P, S]; with
        `features`, also the pairs' group-bilinear factors."""
        hidden, mention_attention = encode_batch(self, batch)  # [B, L, D], [M, H, L]
        entity_emb, entity_attention = pool_entities(hidden, mention_attention, batch)  # [E, D], [E, H, L]
        heads, tails = batch.hts[:, 0], batch.hts[:, 1]  # [P]
        num_sents = max(batch.sentences_per_doc, default=0)
        # one-hot sentence of every token, the "no sentence" column (index S) dropped: [B, L, S]
        sentences = nn.functional.one_hot(batch.token_sentence, num_sents + 1)[..., :num_sents]
        contexts, evidence = [], []
        for doc, attention in pair_attentions(entity_attention, heads, tails, batch.pairs_per_doc,
                                              batch.entities_per_doc, EPSILON):  # [P_doc, L]
            contexts.append(attention @ hidden[doc])  # [P_doc, D]
            evidence.append(attention @ sentences[doc].to(attention.dtype))  # [P_doc, S]
        classified = classify_pairs(self, entity_emb[heads], entity_emb[tails], torch.cat(contexts), features)
        logits, pair_features = classified if features else (classified, None)  # [P, C]
        output = EvidenceOutput(logits, torch.cat(evidence).float())  # [P, C], [P, S]
        return (output, pair_features) if features else output
