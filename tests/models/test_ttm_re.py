"""TTM-RE model: the vectorised forward equals a slow reference written from the official code's
equations (github.com/chufangao/TTM-RE, `model2.py` model_type `ttmre` and `ttm.py`: the head extractor
on both entities, the token learner over [memory; pair tokens] computed pair by pair, and the official
`nn.TransformerEncoder` built sequence-first and fed [pairs, 2, emb] chunk by chunk, as the official
code does), in both layouts, on documents that fit the tiny encoder's window and on one that needs
several, with groups that cross document boundaries. Also: the official layout depends on the batch
and the per-pair one does not, gradients reach the encoder, the memory and the bilinear, the memory
module trains at the rate `train.module_lr` gives it, and the options are checked."""

import re

import pytest
import torch
from torch import nn

from docre.config import TrainConfig, load_config
from docre.data.collate import collate
from docre.data.feature import probe_tokenizer
from docre.errors import DocreError
from docre.models import build_model, load_encoder
from docre.models.atlop import SharedSettings
from docre.models.long_input import encoder_window
from docre.models.ttm_re import TTMRE
from docre.trainer import build_optimizer
from tests.models.test_atlop import (  # noqa: F401
    changed_by_one_step,
    eager_encoder,
    features_for,
    reference_encode,
    reference_entities,
)

NUM_CLASSES = 97


def ttm_model(backbone, tokenizer, pooling="last", **options):
    """TTM-RE on the tiny encoder (emb 32 = 4 blocks of 8, so the official 8 heads of width 4)."""
    info = probe_tokenizer(tokenizer, "*")
    torch.manual_seed(0)
    encoder = load_encoder(backbone)
    shared = SharedSettings(info.start_ids, info.end_ids, encoder_window(encoder.config), pooling, emb_size=32, block_size=8)
    return TTMRE(encoder, NUM_CLASSES, shared, **options).eval()


def reference_extractor_outputs(model, encoder, features, pooling="last"):
    """z_h, z_t [P, emb] of the batch's pairs (documents concatenated, pairs in hts order): ATLOP's
    get_hrt, then the head extractor on both entities (model2.py, model_type ttmre)."""
    heads, tails = [], []
    for feature in features:
        hidden, attention = reference_encode(encoder, feature.input_ids.tolist(), model.window,
                                             model.start_ids, model.end_ids, pooling)
        embeddings, attentions = reference_entities(hidden, attention, feature.entity_pos)
        for head, tail in feature.hts.tolist():
            pair_attention = (attentions[head] * attentions[tail]).mean(0)
            context = pair_attention / (pair_attention.sum() + 1e-5) @ hidden
            heads.append(torch.tanh(model.head_extractor(torch.cat([embeddings[head], context]))))
            tails.append(torch.tanh(model.head_extractor(torch.cat([embeddings[tail], context]))))
    return torch.stack(heads), torch.stack(tails)


def reference_token_learner(memory, pair_tokens: torch.Tensor) -> torch.Tensor:
    """ttm.py's TokenLearnerModuleV11 on one pair: [2, emb] -> [2, emb] read tokens."""
    tokens = torch.cat([memory.tokens, pair_tokens])  # [M + 2, emb]: memory first, as the official cat
    normed = nn.functional.layer_norm(tokens, tokens.shape[-1:], memory.norm.weight, memory.norm.bias, memory.norm.eps)
    scores = memory.score_out(nn.functional.gelu(memory.score_hidden(normed)))  # [M + 2, 2]
    weights = torch.softmax(scores.t(), dim=-1)  # [2, M + 2]: per read token, over all tokens
    return weights @ tokens  # the raw tokens, not the normalised ones


def official_transformer(memory) -> nn.TransformerEncoder:
    """The official vit_encoder (PyTorch defaults: sequence-first, post-LN, ReLU) with the model's weights."""
    layer = memory.transformer.layers[0]
    dim, heads = layer.self_attn.embed_dim, layer.self_attn.num_heads
    official = nn.TransformerEncoder(nn.TransformerEncoderLayer(d_model=dim, nhead=heads, dim_feedforward=dim,
                                                                dropout=0.0),
                                     num_layers=len(memory.transformer.layers), enable_nested_tensor=False)
    official.load_state_dict(memory.transformer.state_dict())
    return official.eval()


def reference_logits(model, encoder, features, layout, group):
    """Slow TTM-RE head: extractor outputs, then per chunk of `group` consecutive pairs of the batch
    (model2.py's step) the token learner pair by pair and the transformer; averaged, group bilinear."""
    zh, zt = reference_extractor_outputs(model, encoder, features)
    vit = official_transformer(model.memory)
    h2, t2 = [], []
    for start in range(0, zh.size(0), group):
        x = torch.stack([zh[start : start + group], zt[start : start + group]], dim=1)  # [B, 2, emb]
        read = torch.stack([reference_token_learner(model.memory, pair) for pair in x])  # [B, 2, emb]
        # official: read as [sequence = B pairs, batch = 2 slots, emb], as the official code feeds it;
        # per_pair: each pair alone, its 2 tokens the sequence
        out = vit(read) if layout == "official" else torch.stack([vit(pair.unsqueeze(1)).squeeze(1) for pair in read])
        h2.append(out[:, 0])
        t2.append(out[:, 1])
    b1, b2 = (torch.cat(h2) / 2 + zh / 2), (torch.cat(t2) / 2 + zt / 2)
    rows = []
    blocks = model.emb_size // model.block_size
    for h, t in zip(b1, b2):
        outer = torch.stack([torch.outer(h.view(blocks, -1)[k], t.view(blocks, -1)[k]) for k in range(blocks)])
        rows.append(model.bilinear(outer.flatten()))
    return torch.stack(rows)


@pytest.mark.parametrize("max_seq_length", [60, 1024], ids=["fits-window", "many-windows"])
@pytest.mark.parametrize("layout", ["official", "per_pair"])
def test_forward_equals_slow_reference(tiny_backbone, tiny_tokenizer, rel2id, eager_encoder, layout,  # noqa: F811
                                       max_seq_length):
    # 5 pairs per group: the 38 pairs of the fixture batch make 7 full groups and one of 3, and
    # groups cross document boundaries (6, 30 and 2 pairs)
    model = ttm_model(tiny_backbone, tiny_tokenizer, memory_tokens=6, layout=layout, pairs_per_group=5)
    features = features_for(tiny_tokenizer, rel2id, max_seq_length)
    if max_seq_length == 1024:
        assert max(len(f.input_ids) for f in features) > model.window
    pairs = sum(len(f.hts) for f in features)
    assert pairs % 5 and len(features[0].hts) % 5
    with torch.no_grad():
        fast = model(collate(features, NUM_CLASSES, 0))
        slow = reference_logits(model, eager_encoder, features, layout, group=5)
    assert fast.shape == (pairs, NUM_CLASSES)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_official_sizes_and_a_batch_across_the_256_pair_boundary(tiny_backbone, tiny_tokenizer, rel2id,
                                                                 eager_encoder):  # noqa: F811
    # the defaults are the official sizes: 200 memory tokens, 4 post-LN ReLU layers of 8 heads, feed-forward
    # width = emb, no dropout, groups of 256 pairs; the official initialisation
    model = ttm_model(tiny_backbone, tiny_tokenizer)
    memory = model.memory
    assert memory.tokens.shape == (200, 32) and memory.pairs_per_group == 256 and memory.layout == "official"
    assert len(memory.transformer.layers) == 4
    for layer in memory.transformer.layers:
        assert layer.self_attn.num_heads == 8 and layer.linear1.out_features == 32 and not layer.norm_first
        assert layer.activation_relu_or_gelu == 1 and layer.dropout.p == 0.0
    assert memory.score_hidden.weight.shape == (32, 32) and memory.score_out.weight.shape == (2, 32)
    assert memory.score_hidden.bias.abs().max() < 1e-4 and memory.score_out.bias.abs().max() < 1e-4
    assert not hasattr(model, "tail_extractor")
    # 8 copies of the fixture batch: 304 pairs, a full group of 256 and one of 48
    features = features_for(tiny_tokenizer, rel2id, 60) * 8
    assert sum(len(f.hts) for f in features) == 304
    with torch.no_grad():
        fast = model(collate(features, NUM_CLASSES, 0))
        slow = reference_logits(model, eager_encoder, features, "official", group=256)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    # the 2nd copy of the first document lies in the first group and the 8th in the second: the official
    # layout gives the same document different logits
    first = len(features[0].hts)
    offsets = torch.cumsum(torch.tensor([0] + [len(f.hts) for f in features]), 0)
    assert offsets[3] + first <= 256 < offsets[21]
    assert (fast[offsets[3] : offsets[3] + first] - fast[offsets[21] : offsets[21] + first]).abs().max() > 1e-4


def test_official_layout_depends_on_the_batch_and_per_pair_does_not(tiny_backbone, tiny_tokenizer, rel2id):
    features = features_for(tiny_tokenizer, rel2id)
    together, alone = {}, {}
    for layout in ("official", "per_pair"):
        model = ttm_model(tiny_backbone, tiny_tokenizer, memory_tokens=6, layout=layout)
        with torch.no_grad():
            together[layout] = model(collate(features, NUM_CLASSES, 0))[len(features[0].hts) :]
            alone[layout] = model(collate(features[1:2], NUM_CLASSES, 0))
        assert together[layout].size(0) > alone[layout].size(0)  # the second document, then the third
        together[layout] = together[layout][: alone[layout].size(0)]
    torch.testing.assert_close(together["per_pair"], alone["per_pair"], atol=1e-5, rtol=1e-5)
    assert (together["official"] - alone["official"]).abs().max() > 1e-3
    # and on where the groups fall
    batch = collate(features, NUM_CLASSES, 0)
    logits = {}
    for layout in ("official", "per_pair"):
        for group in (5, 256):
            with torch.no_grad():
                logits[layout, group] = ttm_model(tiny_backbone, tiny_tokenizer, memory_tokens=6, layout=layout,
                                                  pairs_per_group=group)(batch)
    torch.testing.assert_close(logits["per_pair", 5], logits["per_pair", 256], atol=1e-5, rtol=1e-5)
    assert (logits["official", 5] - logits["official", 256]).abs().max() > 1e-3


@pytest.mark.parametrize("layout", ["official", "per_pair"])
def test_gradients_reach_encoder_memory_and_bilinear(tiny_backbone, tiny_tokenizer, rel2id, layout):
    model = ttm_model(tiny_backbone, tiny_tokenizer, memory_tokens=6, layout=layout, pairs_per_group=5).train()
    batch = collate(features_for(tiny_tokenizer, rel2id), NUM_CLASSES, 0)
    model(batch).logsumexp(1).sum().backward()
    for name, parameter in model.named_parameters():
        if name == "memory.score_out.bias":
            # a bias shifts a read token's scores of all M + 2 tokens alike, which its softmax ignores:
            # no gradient in the official model either (zero up to rounding)
            assert parameter.grad is None or parameter.grad.abs().max() < 1e-6
        elif not name.startswith("encoder."):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    last_layer = [p for n, p in model.named_parameters() if n.startswith("encoder.encoder.layer.2.attention")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last_layer)


def test_the_memory_trains_at_the_rate_module_lr_gives_it(tiny_backbone, tiny_tokenizer, rel2id):
    # the official script: only names with "extractor" or "bilinear" get the head rate; the configs put
    # the memory module at the encoder's with train.module_lr: {memory: <encoder_lr>}
    model = ttm_model(tiny_backbone, tiny_tokenizer, memory_tokens=6)
    optimizer = build_optimizer(model, TrainConfig(encoder_lr=3e-5, head_lr=1e-5, module_lr={"memory": 3e-5}))
    encoder_group, head_group, memory_group = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("encoder.") for p in encoder_group["params"])
    assert {names[id(p)].split(".")[0] for p in head_group["params"]} == {"head_extractor", "bilinear"}
    assert {id(p) for p in memory_group["params"]} == {id(p) for p in model.memory.parameters()}
    assert (encoder_group["lr"], head_group["lr"], memory_group["lr"]) == (3e-5, 1e-5, 3e-5)
    changed = changed_by_one_step(model, "atl", features_for(tiny_tokenizer, rel2id))
    assert any(n.startswith("memory.transformer.") for n in changed) and "memory.tokens" in changed
    assert any(n.startswith("encoder.") for n in changed) and "bilinear.weight" in changed


def test_the_layout_is_a_checked_config_key(tiny_backbone, tiny_tokenizer):
    cfg = load_config(None, [f"model.backbone={tiny_backbone}", "model.name=ttm_re", "model.ttm_layout=per_pair",
                             "model.emb_size=32", "model.block_size=8"])
    assert cfg.model.ttm_layout == "per_pair"
    with pytest.raises(DocreError, match=re.escape("model.ttm_layout='per-pair' is not one of official, per_pair")):
        load_config(None, ["model.name=ttm_re", "model.ttm_layout=per-pair"])
    from docre.models import build_model_from_config

    assert build_model_from_config(cfg.model, tiny_tokenizer, 5, pretrained=False).memory.layout == "per_pair"
    info = probe_tokenizer(tiny_tokenizer, "*")
    default = build_model(tiny_backbone, 5, info.start_ids, info.end_ids, emb_size=32, block_size=8, name="ttm_re")
    assert default.memory.layout == "official"


def test_bad_options_fail_in_one_line(tiny_backbone, tiny_tokenizer):
    with pytest.raises(DocreError, match="layout 'rows' is not one of official, per_pair"):
        ttm_model(tiny_backbone, tiny_tokenizer, layout="rows")
    with pytest.raises(DocreError, match=re.escape("model.emb_size=32 is not divisible by its 6 memory heads")):
        ttm_model(tiny_backbone, tiny_tokenizer, memory_heads=6)


def test_an_empty_memory_is_refused(tiny_backbone, tiny_tokenizer):
    for option in ("memory_tokens", "memory_layers", "pairs_per_group"):
        with pytest.raises(DocreError, match="memory_tokens, memory_layers and pairs_per_group must be at least 1"):
            ttm_model(tiny_backbone, tiny_tokenizer, **{option: 0})


def test_an_emb_size_the_memory_heads_do_not_divide_fails_when_the_config_loads():
    # not minutes later when the model is built (emb 36 = 3 blocks of 12, which the 8 heads do not divide)
    overrides = ["model.name=ttm_re", "model.emb_size=36", "model.block_size=12"]
    with pytest.raises(DocreError, match=re.escape("override 'model.emb_size=36': model.emb_size=36 must be divisible "
                                                   "by TTM-RE's 8 memory heads")):
        load_config(None, overrides)
    assert load_config(None, [*overrides[1:]]).model.emb_size == 36  # ATLOP has no memory heads
