"""ATLOP model: the vectorised forward equals a slow reference written from ATLOP's code
(github.com/wzhouad/ATLOP, `model.py` and `long_seq.py`: windows with full attention maps, loops
over entities and pairs), on documents that fit the encoder window
and on documents that need ATLOP's two windows or more; shapes, gradients, long documents,
gradient checkpointing and pair chunking."""

import json

import pytest
import torch

from docre.data.collate import collate
from docre.data.feature import featurize, probe_tokenizer
from docre.models import build_model
from docre.models.long_input import plan_windows
from tests.conftest import FIXTURES


def make_model(backbone, tokenizer, **options):
    info = probe_tokenizer(tokenizer, "*")
    torch.manual_seed(0)
    return build_model(backbone, 97, info.start_ids, info.end_ids, **options).eval()


def features_for(tokenizer, rel2id, max_seq_length=1024, docs=None):
    docs = docs or json.loads((FIXTURES / "docred_tiny.json").read_text())
    return featurize(docs, tokenizer, rel2id, "*", max_seq_length)[0]


def changed_by_one_step(model, loss_name: str, features) -> list[str]:
    """One optimizer step of the trainer on `features` with loss `loss_name`: asserts a finite loss and
    gradient norm; returns the names of the parameters the step changed."""
    import math

    from docre.config import TrainConfig
    from docre.losses import build_loss
    from docre.trainer import _optimizer_step, build_optimizer, linear_warmup_decay

    model.train()
    optimizer = build_optimizer(model, TrainConfig(encoder_lr=1e-4, head_lr=1e-3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, grad_norm, finite = _optimizer_step(
        model, build_loss(loss_name), optimizer, linear_warmup_decay(optimizer, 0, 10),
        torch.amp.GradScaler("cpu", enabled=False), [features], 97, 0, torch.device("cpu"),
        torch.float32, 1.0, 0, model.window,
    )
    assert bool(finite) and math.isfinite(float(loss)) and math.isfinite(float(grad_norm))
    return [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]


def reference_encode(encoder, ids: list[int], window: int, start: list[int], end: list[int], pooling: str):
    """One document, encoded alone: whole if it fits, else k windows evenly spread, with hidden
    states averaged and full attention maps summed then row-normalised (ATLOP's process_long_input)."""

    def run(tokens):
        out = encoder(input_ids=torch.tensor([tokens]), output_hidden_states=True, output_attentions=True)
        layers = 1 if pooling == "last" else 3
        hidden = torch.stack(out.hidden_states[-layers:]).mean(0)[0]
        attention = torch.stack(out.attentions[-layers:]).mean(0)[0]
        return hidden, attention  # [W, D], [H, W, W]

    if len(ids) <= window:
        return run(ids)
    ns, ne = len(start), len(end)
    content, width = len(ids) - ns - ne, window - ns - ne
    count = -(-content // width)
    length = len(ids)
    hidden_sum, seen = torch.zeros(length, encoder.config.hidden_size), torch.zeros(length)
    attention_sum = torch.zeros(encoder.config.num_attention_heads, length, length)
    for i in range(count):
        offset = round(i * (content - width) / (count - 1))
        tokens = start + ids[ns + offset : ns + offset + width] + end
        hidden, attention = run(tokens)
        kept = {ns + j: ns + offset + j for j in range(width)}  # window position -> document position
        if i == 0:
            kept |= {j: j for j in range(ns)}
        if i == count - 1:
            kept |= {ns + width + j: length - ne + j for j in range(ne)}
        for wq, dq in kept.items():
            hidden_sum[dq] += hidden[wq]
            seen[dq] += 1
            for wk, dk in kept.items():
                attention_sum[:, dq, dk] += attention[:, wq, wk]
    return hidden_sum / seen[:, None], attention_sum / (attention_sum.sum(-1, keepdim=True) + 1e-10)


def reference_entities(hidden, attention, entity_pos) -> tuple[list, list]:
    """Per entity, the logsumexp of its mention markers' hidden states and the mean of their
    attention rows (zeros for an entity whose mentions were all cut), one by one."""
    embeddings, attentions = [], []
    for positions in entity_pos:
        if positions:
            embeddings.append(torch.logsumexp(torch.stack([hidden[p] for p in positions]), dim=0))
            attentions.append(torch.stack([attention[:, p] for p in positions]).mean(0))
        else:
            embeddings.append(torch.zeros(hidden.size(1)))
            attentions.append(torch.zeros(attention.size(0), hidden.size(0)))
    return embeddings, attentions


def reference_logits(model, reference_encoder, features, pooling="mean_last_3"):
    """Slow ATLOP head: loops over documents, entities and pairs."""
    rows = []
    for feature in features:
        hidden, attention = reference_encode(reference_encoder, feature.input_ids.tolist(), model.window,
                                             model.start_ids, model.end_ids, pooling)
        embeddings, attentions = reference_entities(hidden, attention, feature.entity_pos)
        for head, tail in feature.hts.tolist():
            pair_attention = (attentions[head] * attentions[tail]).mean(0)
            pair_attention = pair_attention / (pair_attention.sum() + 1e-5)
            context = pair_attention @ hidden
            zh = torch.tanh(model.head_extractor(torch.cat([embeddings[head], context])))
            zt = torch.tanh(model.tail_extractor(torch.cat([embeddings[tail], context])))
            blocks = model.emb_size // model.block_size
            outer = torch.stack([torch.outer(zh.view(blocks, -1)[k], zt.view(blocks, -1)[k]) for k in range(blocks)])
            rows.append(model.bilinear(outer.flatten()))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def eager_encoder(tiny_backbone):
    from transformers import AutoModel

    return AutoModel.from_pretrained(tiny_backbone, attn_implementation="eager").eval()


@pytest.mark.parametrize("max_seq_length", [60, 100, 1024], ids=["fits-window", "two-windows", "many-windows"])
@pytest.mark.parametrize("pooling", ["mean_last_3", "last"])
def test_fast_forward_equals_slow_reference(tiny_backbone, tiny_tokenizer, rel2id, eager_encoder, max_seq_length, pooling):
    model = make_model(tiny_backbone, tiny_tokenizer, layer_pooling=pooling)
    features = features_for(tiny_tokenizer, rel2id, max_seq_length)
    lengths = [len(f.input_ids) for f in features]
    if max_seq_length == 100:
        assert max(lengths) > model.window and all(n - 2 <= 2 * (model.window - 2) for n in lengths)
    if max_seq_length == 1024:
        assert len(plan_windows(lengths, model.window, 1, 1)) >= len(features) + 2  # one document in 3+ windows
    with torch.no_grad():
        fast = model(collate(features, 97, 0))
        slow = reference_logits(model, eager_encoder, features, pooling)
    assert fast.shape == (sum(len(f.hts) for f in features), 97)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


def test_document_in_a_windowed_batch_equals_it_alone(tiny_backbone, tiny_tokenizer, rel2id):
    model = make_model(tiny_backbone, tiny_tokenizer)
    features = features_for(tiny_tokenizer, rel2id)
    short = [f for f in features if len(f.input_ids) <= model.window]
    assert short and max(len(f.input_ids) for f in features) > model.window
    with torch.no_grad():
        together = model(collate(features, 97, 0)).split([len(f.hts) for f in features])
        for feature, logits in zip(features, together):
            if len(feature.input_ids) <= model.window:
                torch.testing.assert_close(logits, model(collate([feature], 97, 0)), atol=1e-5, rtol=1e-5)


def test_long_document_ten_windows_is_finite_with_gradients(tiny_backbone, tiny_tokenizer, rel2id):
    model = make_model(tiny_backbone, tiny_tokenizer).train()
    words = ["alpha", "works", "for", "beta", "in", "the", "city", "of", "gamma", "."] * 64
    doc = {"title": "long", "sents": [words], "labels": [{"h": 0, "t": 1, "r": "P108"}],
           "vertexSet": [[{"name": "alpha", "sent_id": 0, "pos": [i, i + 1]} for i in range(0, 640, 50)],
                         [{"name": "beta", "sent_id": 0, "pos": [i + 3, i + 4]} for i in range(20, 640, 70)],
                         [{"name": "gamma", "sent_id": 0, "pos": [631, 632]}]]}
    feature = features_for(tiny_tokenizer, rel2id, max_seq_length=0, docs=[doc])[0]
    assert len(feature.input_ids) >= 10 * model.window
    batch = collate([feature], 97, 0)
    logits = model(batch)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_gradients_reach_encoder_and_head(tiny_backbone, tiny_tokenizer, rel2id):
    model = make_model(tiny_backbone, tiny_tokenizer).train()
    batch = collate(features_for(tiny_tokenizer, rel2id), 97, 0)
    model(batch).logsumexp(1).sum().backward()
    for name in ("bilinear.weight", "head_extractor.weight", "tail_extractor.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    last_layer = [p for n, p in model.named_parameters() if n.startswith("encoder.encoder.layer.2.attention")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last_layer)


@pytest.mark.parametrize("options", [{"gradient_checkpointing": True}, {"pair_chunk_size": 7}], ids=["grad-ckpt", "pair-chunks"])
def test_memory_options_change_nothing(tiny_backbone, tiny_tokenizer, rel2id, options):
    batch = collate(features_for(tiny_tokenizer, rel2id), 97, 0)
    results = []
    for extra in ({}, options):
        model = make_model(tiny_backbone, tiny_tokenizer, **extra).train()
        for module in model.modules():  # dropout off so both runs compute the same function
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.encoder.config.attention_probs_dropout_prob = 0.0
        logits = model(batch)
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (other, other_grads) = results
    torch.testing.assert_close(other, plain, atol=1e-5, rtol=1e-5)
    assert plain_grads.keys() == other_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(other_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_entity_without_surviving_mentions_is_zero_and_finite(tiny_backbone, tiny_tokenizer, rel2id):
    model = make_model(tiny_backbone, tiny_tokenizer)
    features = features_for(tiny_tokenizer, rel2id, max_seq_length=30)
    assert any(not positions for f in features for positions in f.entity_pos)
    with torch.no_grad():
        fast = model(collate(features, 97, 0))
    assert torch.isfinite(fast).all()
