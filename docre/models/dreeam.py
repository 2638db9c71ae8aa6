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
from docre.models.atlop import bilinear_chunk, encode_batch, pair_attentions, pool_entities
from docre.models.bilinear import group_bilinear
from docre.models.long_input import attention_tap
from docre.models.output import EvidenceOutput

EPSILON = 1e-30  # the official normalisation of the pair attention


class DREEAM(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        start_ids: list[int],
        end_ids: list[int],
        window: int,
        layer_pooling: str = "mean_last_3",
        emb_size: int = 768,
        block_size: int = 64,
        pair_chunk_size: int = 0,
        general_attention: bool = False,
    ):
        """Args as ATLOP's (the official DREEAM uses the mean of the last 3 layers)."""
        super().__init__()
        self.encoder = encoder
        hidden_size = encoder.config.hidden_size
        self.head_extractor = nn.Linear(2 * hidden_size, emb_size)
        self.tail_extractor = nn.Linear(2 * hidden_size, emb_size)
        self.bilinear = nn.Linear(emb_size * block_size, num_classes)
        self.tap = attention_tap(encoder, 1 if layer_pooling == "last" else 3, general_attention)
        self.layer_pooling = layer_pooling
        self.start_ids, self.end_ids, self.window = list(start_ids), list(end_ids), window
        self.emb_size, self.block_size, self.pair_chunk_size = emb_size, block_size, pair_chunk_size

    def forward(self, batch: Batch) -> EvidenceOutput:
        """Logits [P, C] of the batch's candidate pairs and their evidence distributions [P, S]."""
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
        context = torch.cat(contexts)  # [P, D]
        head_rep = torch.tanh(self.head_extractor(torch.cat([entity_emb[heads], context], dim=1)))  # [P, emb]
        tail_rep = torch.tanh(self.tail_extractor(torch.cat([entity_emb[tails], context], dim=1)))  # [P, emb]
        chunk = bilinear_chunk(head_rep.device, self.emb_size, self.block_size, self.pair_chunk_size)
        logits = group_bilinear(head_rep, tail_rep, self.bilinear.weight, self.bilinear.bias, self.block_size, chunk)
        return EvidenceOutput(logits, torch.cat(evidence).float())  # [P, C], [P, S]
