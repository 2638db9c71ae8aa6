"""DocuNet (Zhang et al., IJCAI 2021, "Document-level Relation Extraction as Semantic Segmentation";
official code github.com/zjunlp/DocuNet, `model_balanceloss.py` with `attn_unet.py`).

Relation extraction as segmentation of an image: a document's entities index the rows and columns of
an n x n map whose cell (i, j) is the localized context of the pair (head i, tail j) (ATLOP's
attention-weighted context, the official "context-based" channels), projected to 3 channels. A U-Net
(two max-pool levels down, two bilinear up-sampling levels back with skip connections) turns the map
into a feature per cell, so a pair's feature sees the pairs around it in the map. ATLOP's entity
embeddings, concatenated with the candidate pair's U-Net feature and passed through tanh head and tail
extractors, feed ATLOP's group bilinear classifier. Returns logits; the model holds no loss (DocuNet
trains with balanced softmax, `loss.name=balanced_softmax`).

Followed from the official code: the epsilon 1e-5 of the context normalisation (mean over heads, as
ATLOP), the U-Net's blocks and sizes (3 input channels, 256 down channels, 256 output channels; the
official class is named AttentionUNet but holds no attention gate, so neither does this one), and the
padding of every map to 42 entities (DocRED's most) with copies of the last entity's attention, that
is, replicate padding of the map (the padding rows and columns repeat the last entity's).
Where the official code cannot take a document of more than 42 entities, docre pads such a document
to its own count rounded up to a multiple of 4 (both poolings then halve it exactly) and runs the
U-Net once per map size of the batch, so in eval mode a document's logits never depend on the other
documents of its batch. In training mode BatchNorm normalises over the documents of one map size
(every document of a DocRED batch: 42). Not implemented: the "similarity-based" channels, an option
of the official code that its scripts do not use; the official model's dropout (0.6) is never applied
in its forward, so the model holds none.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from docre.data.collate import Batch
from docre.models.atlop import (
    SharedSettings,
    bilinear_chunk,
    encode_batch,
    keep_encoder,
    localized_context,
    map_cells,
    pool_entities,
)
from docre.models.bilinear import group_bilinear
from docre.models.output import PairFeatures

MIN_MAP_SIZE = 42  # the official min_height: DocRED's largest document has 42 entities


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 convolution, BatchNorm, ReLU) twice, the U-Net's unit; padding 1 keeps the map's size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(),
    )


def upsample_like(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """x [B, C, h, w] up-sampled 2x (bilinear, corners aligned) and zero-padded to skip's size: pooling
    an odd side dropped its last row or column (42 -> 21 -> 10 -> 20, padded back to 21)."""
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    rows, columns = skip.size(2) - x.size(2), skip.size(3) - x.size(3)
    return F.pad(x, (columns // 2, columns - columns // 2, rows // 2, rows - rows // 2))


class UNet(nn.Module):
    """DocuNet's U-Net over [B, in, S, S] maps: d = `down_channels` at full size, 2d at S/2 and S/4,
    back up through d at S/2 and d/2 at S, then a 1x1 convolution to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, down_channels: int):
        super().__init__()
        self.inc = double_conv(in_channels, down_channels)
        self.down1 = double_conv(down_channels, 2 * down_channels)
        self.down2 = double_conv(2 * down_channels, 2 * down_channels)
        self.up1 = double_conv(4 * down_channels, down_channels)
        self.up2 = double_conv(2 * down_channels, down_channels // 2)
        self.out = nn.Conv2d(down_channels // 2, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in, S, S] -> [B, out, S, S]."""
        x1 = self.inc(x)  # [B, d, S, S]
        x2 = self.down1(F.max_pool2d(x1, 2))  # [B, 2d, S/2, S/2]
        x3 = self.down2(F.max_pool2d(x2, 2))  # [B, 2d, S/4, S/4]
        # skip first, then the up-sampled path, as in the official concatenation
        x = self.up1(torch.cat([x2, upsample_like(x3, x2)], dim=1))  # [B, d, S/2, S/2]
        x = self.up2(torch.cat([x1, upsample_like(x, x1)], dim=1))  # [B, d/2, S, S]
        return self.out(x)  # [B, out, S, S]


def map_size(num_entities: int, min_size: int = MIN_MAP_SIZE) -> int:
    """The side of a document's padded map: `min_size`, or its entity count rounded up to a multiple of 4."""
    return max(min_size, -(-num_entities // 4) * 4)


class DocuNet(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        shared: SharedSettings,
        unet_in_channels: int = 3,
        unet_down_channels: int = 256,
        unet_out_channels: int = 256,
        min_map_size: int = MIN_MAP_SIZE,
    ):
        """Args as ATLOP's; the U-Net sizes and the smallest map side are the official defaults
        (unet_in_dim 3, down_dim 256, unet_out_dim 256, max_height 42)."""
        super().__init__()
        keep_encoder(self, encoder, shared)
        emb_size, block_size = shared.emb_size, shared.block_size
        hidden_size = encoder.config.hidden_size
        self.projection = nn.Linear(hidden_size, unet_in_channels)  # the context map to the U-Net's channels
        self.unet = UNet(unet_in_channels, unet_out_channels, unet_down_channels)
        self.head_extractor = nn.Linear(hidden_size + unet_out_channels, emb_size)
        self.tail_extractor = nn.Linear(hidden_size + unet_out_channels, emb_size)
        self.bilinear = nn.Linear(emb_size * block_size, num_classes)
        self.num_outputs = num_classes
        self.min_map_size = min_map_size

    def forward(self, batch: Batch, features: bool = False) -> torch.Tensor | tuple[torch.Tensor, PairFeatures]:
        """Logits [P, num_classes] for the batch's candidate pairs (class 0 = NA/threshold); with
        `features`, also the pairs' group-bilinear factors."""
        hidden, mention_attention = encode_batch(self, batch)  # [B, L, D], [M, H, L]
        entity_emb, entity_attention = pool_entities(hidden, mention_attention, batch)  # [E, D], [E, H, L]

        # the context of every cell (i, j) of every document's n x n map, self pairs included (they are
        # pixels of the image)
        device = hidden.device
        _, _, _, heads, tails = map_cells(batch.entities_per_doc, device)  # [Q] batch numbering
        # official epsilon: 1e-5 after the mean over heads, ATLOP's normalisation
        context = localized_context(hidden, entity_attention, heads, tails, [n * n for n in batch.entities_per_doc],
                                    batch.entities_per_doc)  # [Q, D]
        pair_features = self._segment(self.projection(context), batch)  # [P, unet_out]

        pair_heads, pair_tails = batch.hts[:, 0], batch.hts[:, 1]  # [P]
        head_rep = torch.tanh(self.head_extractor(torch.cat([entity_emb[pair_heads], pair_features], dim=1)))  # [P, emb]
        tail_rep = torch.tanh(self.tail_extractor(torch.cat([entity_emb[pair_tails], pair_features], dim=1)))  # [P, emb]
        chunk = bilinear_chunk(device, self.emb_size, self.block_size, self.pair_chunk_size)
        logits = group_bilinear(head_rep, tail_rep, self.bilinear.weight, self.bilinear.bias, self.block_size, chunk)  # [P, C]
        return (logits, PairFeatures(head_rep, tail_rep, self.block_size)) if features else logits

    def _segment(self, channels: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The U-Net over every document's channel map, replicate-padded to its map size, one U-Net
        call per size; returns the U-Net features [P, out] of the candidate pairs' cells.

        Args:
            channels: [Q, in] the projected context of every document's n x n cells, document by
                document, row by row.
        """
        counts = batch.entities_per_doc
        sizes = [map_size(n, self.min_map_size) for n in counts]
        cell_starts = np.cumsum([0] + [n * n for n in counts[:-1]])
        map_starts = [0] * len(counts)  # each document's first cell in the concatenated U-Net outputs
        outputs, offset = [], 0
        # documents without a candidate pair (fewer than two entities) have nothing to read: left out
        for size in sorted({s for s, pairs in zip(sizes, batch.pairs_per_doc) if pairs}):
            docs = [b for b in range(len(counts)) if sizes[b] == size and batch.pairs_per_doc[b]]
            grid = torch.arange(size)
            # cell (i, j) of the padded map reads cell (min(i, n-1), min(j, n-1)): the official padding
            # entities are copies of the last one
            index = torch.stack([
                int(cell_starts[b]) + grid.clamp(max=counts[b] - 1)[:, None] * counts[b] + grid.clamp(max=counts[b] - 1)
                for b in docs])  # [G, S, S]
            maps = channels[index.to(channels.device, non_blocking=True)]  # [G, S, S, in]
            features = self.unet(maps.permute(0, 3, 1, 2).contiguous())  # [G, out, S, S]
            outputs.append(features.permute(0, 2, 3, 1).reshape(len(docs) * size * size, -1))  # [G*S*S, out]
            for k, b in enumerate(docs):
                map_starts[b] = offset + k * size * size
            offset += len(docs) * size * size
        if not outputs:  # no document of the batch has a pair
            return channels.new_zeros(0, self.unet.out.out_channels)

        # the pair (h, t) of document b reads row h, column t of its map (entities numbered per document)
        pair_doc = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(batch.pairs_per_doc))  # [P]
        firsts = np.cumsum([0] + counts[:-1])
        per_pair = torch.tensor(np.stack([map_starts, sizes, firsts]))[:, pair_doc].to(channels.device, non_blocking=True)
        start, size, first = per_pair  # [P] each
        cell = start + (batch.hts[:, 0] - first) * size + (batch.hts[:, 1] - first)  # [P]
        return torch.cat(outputs)[cell]  # [P, out]
