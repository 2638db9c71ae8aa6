"""KD-DocRE model: the vectorised forward equals a slow reference written from the official code's
equations (github.com/tonytan48/KD-DocRE, `model.py`: `get_hrt`, `AxialTransformer_by_entity` and
the forward; `axial_attention` 0.6.1's `AxialAttention`: one self-attention per axis, outputs
summed), with loops over documents, entity pairs, rows/columns and attention heads; on the fixture
documents, one longer than the tiny encoder's window. Also: gradients reach the encoder and the
axial layers, and a training step with the adaptive focal loss is finite."""


import pytest
import torch

from docre.data.collate import collate
from tests.models.test_atlop import (  # noqa: F401
    changed_by_one_step,
    eager_encoder,
    features_for,
    make_model,
    reference_encode,
    reference_entities,
)

NUM_CLASSES = 97


def reference_attention(attention, cells: torch.Tensor) -> torch.Tensor:
    """axial_attention's SelfAttention over one sequence of cells [T, D], head by head."""
    heads, dim = attention.num_heads, cells.size(1)
    head_dim = dim // heads
    q, k, v = cells @ attention.query.weight.t(), cells @ attention.key.weight.t(), cells @ attention.value.weight.t()
    outputs = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        weights = torch.softmax(q[:, part] @ k[:, part].t() * head_dim**-0.5, dim=-1)
        outputs.append(weights @ v[:, part])
    return attention.output(torch.cat(outputs, dim=1))


def reference_logits(model, encoder, features, pooling="mean_last_3"):
    """Slow KD-DocRE head, one document at a time, its n x n map unpadded."""
    rows = []
    for feature in features:
        hidden, attention = reference_encode(encoder, feature.input_ids.tolist(), model.window,
                                             model.start_ids, model.end_ids, pooling)
        embeddings, attentions = reference_entities(hidden, attention, feature.entity_pos)
        n = len(embeddings)
        blocks = model.emb_size // model.block_size
        pair_map = torch.zeros(n, n, hidden.size(1))
        for i in range(n):
            for j in range(n):
                # get_hrt: ReLU of the head-summed attention product, normalised with 1e-10
                pair_attention = torch.relu((attentions[i] * attentions[j]).sum(0))
                pair_attention = pair_attention / (pair_attention.sum() + 1e-10)
                context = pair_attention @ hidden
                zh = torch.tanh(model.head_extractor(torch.cat([embeddings[i], context])))
                zt = torch.tanh(model.tail_extractor(torch.cat([embeddings[j], context])))
                outer = torch.stack([torch.outer(zh.view(blocks, -1)[k], zt.view(blocks, -1)[k]) for k in range(blocks)])
                pair_map[i, j] = model.projection(outer.flatten())
        x = pair_map
        for layer in model.axial_layers:
            # AxialAttention (sum_axial_out): attention along dim 1 (heads, fixed tail) + along dim 2
            along_heads = torch.stack([reference_attention(layer.along_heads, x[:, j]) for j in range(n)], dim=1)
            along_tails = torch.stack([reference_attention(layer.along_tails, x[i]) for i in range(n)], dim=0)
            x = x + (along_heads + along_tails)
            x = layer.norm(layer.linear(x))  # dropout 0.0
        x = x + pair_map
        for head, tail in feature.hts.tolist():
            rows.append(model.classifier(x[head, tail]))
    return torch.stack(rows)


def kd_model(backbone, tokenizer, **options):
    return make_model(backbone, tokenizer, name="kd_docre", emb_size=32, block_size=8, **options)


@pytest.mark.parametrize("max_seq_length", [60, 1024], ids=["fits-window", "many-windows"])
def test_forward_equals_slow_reference(tiny_backbone, tiny_tokenizer, rel2id, eager_encoder, max_seq_length):  # noqa: F811
    model = kd_model(tiny_backbone, tiny_tokenizer)
    features = features_for(tiny_tokenizer, rel2id, max_seq_length)
    if max_seq_length == 1024:
        assert max(len(f.input_ids) for f in features) > model.window
    assert len({len(f.entity_pos) for f in features}) > 1  # the batch pads some documents' maps
    with torch.no_grad():
        fast = model(collate(features, NUM_CLASSES, 0))
        slow = reference_logits(model, eager_encoder, features)
    assert fast.shape == (sum(len(f.hts) for f in features), NUM_CLASSES)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_gradients_reach_encoder_and_axial_layers(tiny_backbone, tiny_tokenizer, rel2id):
    model = kd_model(tiny_backbone, tiny_tokenizer).train()
    batch = collate(features_for(tiny_tokenizer, rel2id), NUM_CLASSES, 0)
    model(batch).logsumexp(1).sum().backward()
    for name, parameter in model.named_parameters():
        if not name.startswith("encoder."):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    last_layer = [p for n, p in model.named_parameters() if n.startswith("encoder.encoder.layer.2.attention")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last_layer)


def test_training_step_with_adaptive_focal_loss_is_finite(tiny_backbone, tiny_tokenizer, rel2id):
    changed = changed_by_one_step(kd_model(tiny_backbone, tiny_tokenizer), "afl", features_for(tiny_tokenizer, rel2id))
    assert any(n.startswith("axial_layers.") for n in changed) and any(n.startswith("encoder.") for n in changed)


def test_a_hidden_size_the_axial_heads_do_not_divide_is_one_line():
    from docre.errors import DocreError
    from docre.models.kd_docre import AxialSelfAttention

    with pytest.raises(DocreError, match="its hidden size 30 is not divisible by the 8 heads of KD-DocRE's axial attention"):
        AxialSelfAttention(30, 8)
