"""TTM-RE (Gao, Wang, Sun, ACL 2024, "TTM-RE: Memory-Augmented Document-Level Relation Extraction";
official code github.com/chufangao/TTM-RE, `model2.py` (model_type `ttmre`) and `ttm.py`).

ATLOP's encoder side (marker embeddings, logsumexp mention pooling, localized context pooling) gives
each pair its head and tail entity embeddings and context. One tanh extractor, shared by head and tail,
maps them to z_h = tanh(W [e_h; c]) and z_t = tanh(W [e_t; c]) (the official model keeps a tail
extractor it never uses; this one has none). A Token Turing Machine read step then refines the two:
a learned memory of 200 tokens and the pair's 2 tokens are summarised into 2 read tokens by a token
learner (per read token, a softmax over the 202 tokens of an MLP's scores on the LayerNorm'd tokens,
applied to the un-normalised tokens), and a 4-layer transformer (post-LN, ReLU, 8 heads, width and
feed-forward width emb_size, no dropout) processes them. Its outputs h2, t2 are averaged with the
extractor outputs, b1 = (z_h + h2) / 2 and b2 = (z_t + t2) / 2, which feed ATLOP's group bilinear.
Returns logits; the model holds no loss (TTM-RE trains with the SSR-PU loss, `loss.name=ssr_pu` with
factor 1, margin 1, e 1).

Layouts (`layout`, `model.ttm_layout` in a config):
* "official" (default): the official transformer is sequence-first (`batch_first=False`) but is fed
  [pairs, 2, emb], so it reads the pairs as the sequence and the 2 slots as the batch: each pair's head
  token attends to the head tokens of the other pairs of its group, its tail token to their tail
  tokens. The groups are consecutive runs of `pairs_per_group` (256) pairs of the whole batch, all
  documents concatenated. A pair's logits therefore depend on the other documents of its batch and on
  where the group boundaries fall, in training and at prediction alike.
* "per_pair" (a labelled variant, not the official model): each pair's two tokens attend to each
  other only, so a document's logits are its own. Same parameters: a checkpoint runs under either.

What differs from the official code:
* Pair order: docre's is `batch.hts` order (documents concatenated, each document's pairs row-major),
  which never depends on labels. The official code puts each document's labelled pairs first, at test
  time too, so its official-layout predictions depend on the gold labels through the grouping.
* The memory write step (`TokenAddEraseWrite`) is left out: the official code computes it and discards
  its output (one step), so it changes no logit and its parameters receive no gradient.
* The token learner's scores and weighted sums are split into the memory part, computed once per
  batch, and the pairs' part (the same arithmetic): the official code builds [pairs, 202, emb] tensors
  (the concatenation, its LayerNorm, the MLP's hidden layer before and after GELU; 0.6 GB each per
  1,000 pairs at emb 768, all kept for the backward pass); here none is larger than [pairs, 2, emb]
  besides the [pairs, 2, 202] weights.

Parameter groups: the official script gives only parameters whose names contain "extractor" or
"bilinear" the head learning rate; the memory module (`memory.*` here) trains at the encoder's rate,
which the configs state with `train.module_lr: {memory: <encoder_lr>}`.
"""

import torch
from torch import nn

from docre.data.collate import Batch
from docre.errors import DocreError
from docre.models.atlop import SharedSettings, bilinear_chunk, encode_batch, keep_encoder, localized_context, pool_entities
from docre.models.bilinear import group_bilinear
from docre.models.output import PairFeatures

LAYOUTS = ("official", "per_pair")
READ_TOKENS = 2  # the pair's head and tail: the official process_size
MEMORY_HEADS = 8  # the official transformer's heads (not a config key: model.emb_size must be divisible by it)


class TokenMemory(nn.Module):
    """The read step of a Token Turing Machine over each pair's 2 tokens: a learned memory, a token
    learner that reads 2 tokens from [memory; pair tokens], a transformer over the read tokens."""

    def __init__(self, dim: int, memory_tokens: int, layers: int, heads: int, layout: str, pairs_per_group: int):
        super().__init__()
        self.layout, self.pairs_per_group = layout, pairs_per_group
        self.tokens = nn.Parameter(torch.empty(memory_tokens, dim))  # [M, emb]
        # the token learner's MLP: emb -> emb -> one score per read token (the official widths: mlp_dim = emb)
        self.norm = nn.LayerNorm(dim)
        self.score_hidden = nn.Linear(dim, dim)
        self.score_out = nn.Linear(dim, READ_TOKENS)
        # the official initialisation (ttm.py): xavier-uniform memory and MLP weights, biases N(0, 1e-6)
        nn.init.xavier_uniform_(self.tokens)
        for linear in (self.score_hidden, self.score_out):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)
        # batch_first: both layouts are a choice of which axis is the sequence (forward); one set of
        # weights serves both. nn.TransformerEncoder copies the layer, so all layers start equal, as
        # in the official code. enable_nested_tensor is for padding masks, which this never has.
        layer = nn.TransformerEncoderLayer(d_model=dim, nhead=heads, dim_feedforward=dim, dropout=0.0, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)

    def scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """[..., emb] -> [..., 2]: the token learner's score of each token for each read token."""
        return self.score_out(nn.functional.gelu(self.score_hidden(self.norm(tokens))))

    def read(self, pair_tokens: torch.Tensor) -> torch.Tensor:
        """Token learner: [P, 2, emb] pair tokens -> [P, 2, emb] read tokens, each a softmax-weighted sum
        over the 202 tokens [memory; pair tokens] (weights from the normalised tokens, sums of the raw ones).

        The memory is the same for every pair and LayerNorm and the MLP act token by token, so the
        memory's scores are computed once ([M, 2]) and only the pair's own 2 tokens per pair."""
        pairs = pair_tokens.size(0)
        memory_scores = self.scores(self.tokens).t().expand(pairs, -1, -1)  # [P, 2 read, M]
        own_scores = self.scores(pair_tokens).transpose(1, 2)  # [P, 2 read, 2 own]
        weights = torch.cat([memory_scores, own_scores], dim=2).softmax(dim=2)  # [P, 2, M + 2]
        memory_size = self.tokens.size(0)
        from_memory = weights[:, :, :memory_size] @ self.tokens  # [P, 2, emb]
        return from_memory + torch.bmm(weights[:, :, memory_size:], pair_tokens)  # [P, 2, emb]

    def forward(self, head: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[P, emb] extractor outputs z_h, z_t (the batch's pairs in order) -> the transformer's [P, emb] h2, t2."""
        read = self.read(torch.stack([head, tail], dim=1))  # [P, 2, emb]
        if self.layout == "per_pair" or not read.size(0):
            out = self.transformer(read)  # sequences of 2: each pair's tokens attend to each other
        else:
            out = torch.cat([self.across_pairs(group) for group in self.groups(read)])  # [P, 2, emb]
        return out[:, 0], out[:, 1]

    def groups(self, read: torch.Tensor) -> list[torch.Tensor]:
        """The official layout's groups: [n * G, 2, emb] for the n full groups of G consecutive pairs
        (one transformer call for all), and the last, shorter one."""
        size = self.pairs_per_group
        full = read.size(0) // size * size
        return [part for part in (read[:full], read[full:]) if part.size(0)]

    def across_pairs(self, read: torch.Tensor) -> torch.Tensor:
        """The official layout on [n * G, 2, emb] (n groups of G pairs, or one shorter group): the group's
        pairs are the sequence, head slot and tail slot attend separately -> [n * G, 2, emb]."""
        size = min(self.pairs_per_group, read.size(0))
        groups, dim = read.size(0) // size, read.size(2)
        # [n, G, 2, emb] -> [n, 2, G, emb] -> [n * 2, G, emb]: sequences of G pairs, one per group and slot
        sequences = read.view(groups, size, READ_TOKENS, dim).transpose(1, 2).reshape(groups * READ_TOKENS, size, dim)
        out = self.transformer(sequences)  # [n * 2, G, emb]
        return out.view(groups, READ_TOKENS, size, dim).transpose(1, 2).reshape(groups * size, READ_TOKENS, dim)


class TTMRE(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        shared: SharedSettings,
        memory_tokens: int = 200,
        memory_layers: int = 4,
        memory_heads: int = MEMORY_HEADS,
        layout: str = "official",
        pairs_per_group: int = 256,
    ):
        """Args as ATLOP's (the official TTM-RE reads the last layer: `layer_pooling="last"`), and:
            memory_tokens: learned memory tokens (official 200).
            memory_layers, memory_heads: the transformer over the read tokens (official 4 layers, as
                the released script's --num_layers, and 8 heads; emb_size must be divisible by the heads).
            layout: "official" (attention across the pairs of a batch) or "per_pair" (module docstring).
            pairs_per_group: consecutive pairs of a batch that attend to each other in the official
                layout (the official 256).
        """
        super().__init__()
        if layout not in LAYOUTS:
            raise DocreError(f"TTM-RE: layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        if shared.emb_size % memory_heads:
            raise DocreError(f"TTM-RE: model.emb_size={shared.emb_size} is not divisible by its {memory_heads} memory heads")
        if min(memory_tokens, memory_layers, pairs_per_group) < 1:
            raise DocreError("TTM-RE: memory_tokens, memory_layers and pairs_per_group must be at least 1")
        keep_encoder(self, encoder, shared)
        emb_size, block_size = shared.emb_size, shared.block_size
        self.head_extractor = nn.Linear(2 * encoder.config.hidden_size, emb_size)  # used for heads and tails
        self.memory = TokenMemory(emb_size, memory_tokens, memory_layers, memory_heads, layout, pairs_per_group)
        self.bilinear = nn.Linear(emb_size * block_size, num_classes)
        self.num_outputs = num_classes

    @property
    def pairs_attend_across_batch(self) -> bool:
        """True in the official layout: a pair's logits depend on the other pairs of its batch (inference.predict)."""
        return self.memory.layout == "official"

    def forward(self, batch: Batch, features: bool = False) -> torch.Tensor | tuple[torch.Tensor, PairFeatures]:
        """Logits [P, num_classes] for the batch's candidate pairs (class 0 = NA/threshold); with
        `features`, also the group bilinear's factors b1, b2."""
        hidden, mention_attention = encode_batch(self, batch)  # [B, L, D], [M, H, L]
        entity_emb, entity_attention = pool_entities(hidden, mention_attention, batch)  # [E, D], [E, H, L]
        heads, tails = batch.hts[:, 0], batch.hts[:, 1]  # [P]
        context = localized_context(hidden, entity_attention, heads, tails, batch.pairs_per_doc, batch.entities_per_doc)  # [P, D]
        z_head = torch.tanh(self.head_extractor(torch.cat([entity_emb[heads], context], dim=1)))  # [P, emb]
        z_tail = torch.tanh(self.head_extractor(torch.cat([entity_emb[tails], context], dim=1)))  # [P, emb]
        h2, t2 = self.memory(z_head, z_tail)  # [P, emb] each
        b1, b2 = (z_head + h2) / 2, (z_tail + t2) / 2  # [P, emb]
        chunk = bilinear_chunk(b1.device, self.emb_size, self.block_size, self.pair_chunk_size)
        logits = group_bilinear(b1, b2, self.bilinear.weight, self.bilinear.bias, self.block_size, chunk)  # [P, C]
        return (logits, PairFeatures(b1, b2, self.block_size)) if features else logits
