"""DocuNet model: the vectorised forward equals a slow reference written from the official code's
equations (github.com/zjunlp/DocuNet, `model_balanceloss.py`: `get_hrt`, which pads a document's
entity attentions to 42 with copies of its last entity's, `get_channel_map`, the forward; and
`attn_unet.py`'s AttentionUNet, here in functional calls on the model's weights with BatchNorm in eval
mode), one document at a time, on the fixture documents (one longer than the tiny encoder's window)
and beside a document of more than 42 entities. Also: the official sizes are the defaults, gradients
reach the encoder and the U-Net, a training step with balanced softmax is finite, and a document's
eval logits do not depend on its batch-mates."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from docre.data.collate import collate
from docre.data.feature import probe_tokenizer
from docre.models import load_encoder
from docre.models.atlop import SharedSettings
from docre.models.docunet import DocuNet
from docre.models.long_input import encoder_window
from tests.models.test_atlop import (  # noqa: F401
    changed_by_one_step,
    eager_encoder,
    features_for,
    make_model,
    reference_encode,
    reference_entities,
)

NUM_CLASSES = 97


def docunet_model(backbone, tokenizer):
    """DocuNet on the tiny encoder with a small U-Net (same blocks, fewer channels, so the tests run
    in seconds) whose BatchNorm statistics and affine parameters are random, so that BatchNorm in
    eval mode is no identity."""
    info = probe_tokenizer(tokenizer, "*")
    torch.manual_seed(0)
    encoder = load_encoder(backbone)
    shared = SharedSettings(info.start_ids, info.end_ids, encoder_window(encoder.config), emb_size=32, block_size=8)
    model = DocuNet(encoder, NUM_CLASSES, shared, unet_down_channels=8, unet_out_channels=12)
    with torch.no_grad():
        for module in model.unet.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.5)
    return model.eval()


def many_entities_document(num_entities=45):
    """A document with more entities than the official 42, one mention each."""
    words = ["alpha", "works", "for", "beta", "in", "the", "city", "of"] * 12
    return {"title": "crowded", "sents": [words], "labels": [{"h": 0, "t": 1, "r": "P108"}],
            "vertexSet": [[{"name": words[2 * i], "sent_id": 0, "pos": [2 * i, 2 * i + 1]}] for i in range(num_entities)]}


def reference_double_conv(block, x):
    """attn_unet's DoubleConv: (3x3 conv, BatchNorm, ReLU) twice; BatchNorm with running statistics."""
    for conv, norm in ((block[0], block[1]), (block[3], block[4])):
        x = F.conv2d(x, conv.weight, conv.bias, padding=1)
        x = F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False, eps=norm.eps)
        x = torch.relu(x)
    return x


def reference_up(block, x1, x2):
    """attn_unet's UpLayer: up-sample x1, pad it to x2's size, concatenate [x2, x1], DoubleConv."""
    x1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)(x1)
    diff_y, diff_x = x2.size(2) - x1.size(2), x2.size(3) - x1.size(3)
    x1 = F.pad(x1, (diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2))
    return reference_double_conv(block, torch.cat([x2, x1], dim=1))


def reference_unet(unet, x):
    """attn_unet's AttentionUNet forward on [1, in, S, S] -> [S, S, out]."""
    x1 = reference_double_conv(unet.inc, x)
    x2 = reference_double_conv(unet.down1, nn.MaxPool2d(kernel_size=2)(x1))
    x3 = reference_double_conv(unet.down2, nn.MaxPool2d(kernel_size=2)(x2))
    x = reference_up(unet.up1, x3, x2)
    x = reference_up(unet.up2, x, x1)
    return F.conv2d(x, unet.out.weight, unet.out.bias).permute(0, 2, 3, 1)[0]


def reference_logits(model, encoder, features, pooling="mean_last_3"):
    """Slow DocuNet head, one document at a time, its map padded to 42 entities (or, past 42, to its
    count rounded up to a multiple of 4)."""
    rows = []
    for feature in features:
        hidden, attention = reference_encode(encoder, feature.input_ids.tolist(), model.window,
                                             model.start_ids, model.end_ids, pooling)
        embeddings, attentions = reference_entities(hidden, attention, feature.entity_pos)
        n = len(embeddings)
        size = max(42, 4 * math.ceil(n / 4))
        # get_hrt: the padding entities' attention is the last entity's
        padded = torch.stack(attentions + [attentions[-1]] * (size - n))  # [S, H, L]
        # get_channel_map: every (i, j) of the S x S grid, mean over heads, normalised with 1e-5
        index_pair = torch.tensor([(i, j) for i in range(size) for j in range(size)])
        ht_att = (padded[index_pair[:, 0]] * padded[index_pair[:, 1]]).mean(1)  # [S*S, L]
        ht_att = ht_att / (ht_att.sum(1, keepdim=True) + 1e-5)
        feature_map = (ht_att @ hidden).reshape(size, size, -1)
        attn_input = model.projection(feature_map).permute(2, 0, 1)[None]
        attn_map = reference_unet(model.unet, attn_input)
        blocks = model.emb_size // model.block_size
        for head, tail in feature.hts.tolist():
            h_t = attn_map[head, tail]
            zh = torch.tanh(model.head_extractor(torch.cat([embeddings[head], h_t])))
            zt = torch.tanh(model.tail_extractor(torch.cat([embeddings[tail], h_t])))
            outer = torch.stack([torch.outer(zh.view(blocks, -1)[k], zt.view(blocks, -1)[k]) for k in range(blocks)])
            rows.append(model.bilinear(outer.flatten()))
    return torch.stack(rows)


@pytest.mark.parametrize("case", ["fits-window", "many-windows", "over-42-entities"])
def test_forward_equals_slow_reference(tiny_backbone, tiny_tokenizer, rel2id, eager_encoder, case):  # noqa: F811
    model = docunet_model(tiny_backbone, tiny_tokenizer)
    features = features_for(tiny_tokenizer, rel2id, 60 if case == "fits-window" else 1024)
    if case == "many-windows":
        assert max(len(f.input_ids) for f in features) > model.window
    if case == "over-42-entities":
        features = features[:1] + features_for(tiny_tokenizer, rel2id, 0, docs=[many_entities_document()])
        assert len(features[1].entity_pos) == 45
    with torch.no_grad():
        fast = model(collate(features, NUM_CLASSES, 0))
        slow = reference_logits(model, eager_encoder, features)
    assert fast.shape == (sum(len(f.hts) for f in features), NUM_CLASSES)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_registry_builds_the_official_sizes(tiny_backbone, tiny_tokenizer):
    model = make_model(tiny_backbone, tiny_tokenizer, name="docunet", emb_size=32, block_size=8)
    assert isinstance(model, DocuNet) and model.min_map_size == 42
    assert (model.projection.in_features, model.projection.out_features) == (model.encoder.config.hidden_size, 3)
    assert model.unet.inc[0].out_channels == 256 and model.unet.down2[0].out_channels == 512
    assert model.unet.out.out_channels == 256
    assert model.head_extractor.in_features == model.encoder.config.hidden_size + 256


def test_gradients_reach_encoder_and_unet(tiny_backbone, tiny_tokenizer, rel2id):
    model = docunet_model(tiny_backbone, tiny_tokenizer).train()
    batch = collate(features_for(tiny_tokenizer, rel2id), NUM_CLASSES, 0)
    model(batch).logsumexp(1).sum().backward()
    for name, parameter in model.named_parameters():
        if not name.startswith("encoder."):
            assert parameter.grad is not None, name
            # a convolution's bias right before BatchNorm in training mode has no effect (BatchNorm
            # subtracts the batch mean): its gradient is 0 up to rounding, as in the official U-Net
            if name.endswith("weight"):
                assert parameter.grad.abs().sum() > 0, name
    last_layer = [p for n, p in model.named_parameters() if n.startswith("encoder.encoder.layer.2.attention")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last_layer)


def test_training_step_with_balanced_softmax_is_finite(tiny_backbone, tiny_tokenizer, rel2id):
    model = docunet_model(tiny_backbone, tiny_tokenizer)
    changed = changed_by_one_step(model, "balanced_softmax", features_for(tiny_tokenizer, rel2id))
    assert any(n.startswith("unet.") for n in changed) and any(n.startswith("encoder.") for n in changed)


def test_eval_logits_do_not_depend_on_batch_mates(tiny_backbone, tiny_tokenizer, rel2id):
    # beside the fixture documents (maps of 42), one of 45 entities (a map of 48, its own U-Net call)
    model = docunet_model(tiny_backbone, tiny_tokenizer)
    features = features_for(tiny_tokenizer, rel2id) + features_for(tiny_tokenizer, rel2id, 0, docs=[many_entities_document()])
    with torch.no_grad():
        together = model(collate(features, NUM_CLASSES, 0)).split([len(f.hts) for f in features])
        for feature, logits in zip(features, together):
            torch.testing.assert_close(logits, model(collate([feature], NUM_CLASSES, 0)), atol=1e-5, rtol=1e-5)
