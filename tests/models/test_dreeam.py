"""DREEAM: the vectorised forward (logits and per-pair evidence distributions) equals a slow reference
written from the official code's equations (github.com/YoumiMa/dreeam, `model.py`: `get_hrt` with
its 1e-30 normalisation, `forward_rel`, `forward_evi`: the pair attention summed over each
sentence's tokens), on documents that fit the tiny encoder's window and on ones that need several;
the evidence KL against hand-worked values and the official `KLDivLoss(batchmean)` form; the
trainer's relation + weighted evidence loss, exact however a batch is split; decoding evidence."""

import math

import pytest
import torch

from docre.config import TrainConfig
from docre.data.collate import collate, split_by_tokens
from docre.data.feature import Feature
from docre.inference import decode_predictions, predict
from docre.losses import build_loss
from docre.losses.evidence import evidence_kl
from docre.models.output import EvidenceOutput
from docre.trainer import _optimizer_step, build_optimizer, linear_warmup_decay
from tests.models.test_atlop import eager_encoder, features_for, make_model, reference_encode, reference_entities  # noqa: F401

NUM_CLASSES = 97


def reference_output(model, encoder, features):
    """Slow DREEAM, one document and one pair at a time: logits [P, C] and evidence rows [P, S]."""
    logits, evidence = [], []
    width = max(len(f.sent_pos) for f in features)
    for feature in features:
        hidden, attention = reference_encode(encoder, feature.input_ids.tolist(), model.window,
                                             model.start_ids, model.end_ids, "mean_last_3")
        embeddings, attentions = reference_entities(hidden, attention, feature.entity_pos)
        for head, tail in feature.hts.tolist():
            pair_attention = (attentions[head] * attentions[tail]).mean(0)
            pair_attention = pair_attention / (pair_attention.sum() + 1e-30)
            context = pair_attention @ hidden
            zh = torch.tanh(model.head_extractor(torch.cat([embeddings[head], context])))
            zt = torch.tanh(model.tail_extractor(torch.cat([embeddings[tail], context])))
            blocks = model.emb_size // model.block_size
            outer = torch.stack([torch.outer(zh.view(blocks, -1)[k], zt.view(blocks, -1)[k]) for k in range(blocks)])
            logits.append(model.bilinear(outer.flatten()))
            row = [pair_attention[start:end].sum() for start, end in feature.sent_pos.tolist()]
            evidence.append(torch.stack(row + [torch.tensor(0.0)] * (width - len(row))))
    return torch.stack(logits), torch.stack(evidence)


def dreeam(backbone, tokenizer, **options):
    return make_model(backbone, tokenizer, name="dreeam", emb_size=32, block_size=8, **options)


@pytest.mark.parametrize("max_seq_length", [60, 1024], ids=["fits-window", "many-windows"])
def test_forward_equals_slow_reference(tiny_backbone, tiny_tokenizer, rel2id, eager_encoder, max_seq_length):  # noqa: F811
    model = dreeam(tiny_backbone, tiny_tokenizer)
    features = features_for(tiny_tokenizer, rel2id, max_seq_length)
    if max_seq_length == 1024:
        assert max(len(f.input_ids) for f in features) > model.window
    assert len({len(f.sent_pos) for f in features}) > 1  # the batch pads some documents' sentences
    with torch.no_grad():
        fast = model(collate(features, NUM_CLASSES, 0))
        slow_logits, slow_evidence = reference_output(model, eager_encoder, features)
    assert isinstance(fast, EvidenceOutput)
    torch.testing.assert_close(fast.logits, slow_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.evidence, slow_evidence, atol=1e-5, rtol=1e-5)
    # rows sum to at most 1 (special tokens hold the rest); within one window, 0 only for pairs with an
    # entity cut away entirely (across windows, two entities' attention rows may not overlap at all)
    assert fast.evidence.sum(1).max() <= 1 + 1e-5
    if max_seq_length == 60:
        kept = torch.tensor([bool(f.entity_pos[h] and f.entity_pos[t]) for f in features for h, t in f.hts.tolist()])
        assert fast.evidence.sum(1)[kept].min() > 0.5 and (fast.evidence[~kept] == 0).all() and not kept.all()


def test_batch_carries_sentences_and_evidence_counts(tiny_tokenizer, rel2id):
    features = features_for(tiny_tokenizer, rel2id)
    batch = collate(features, NUM_CLASSES, 0)
    assert batch.sentences_per_doc == [2, 3, 1]
    for doc, feature in enumerate(features):
        for sentence, (start, end) in enumerate(feature.sent_pos.tolist()):
            assert (batch.token_sentence[doc, start:end] == sentence).all()
        assert batch.token_sentence[doc, 0] == 3 and batch.token_sentence[doc, len(feature.input_ids) - 1] == 3
    # document 1: pair rows of facts with evidence [0], [0], [1], [1, 2], [1, 2] (per fact, in label order)
    start = len(features[0].hts)
    expected = torch.zeros(len(features[1].hts), 3)
    for (pair, _), sentences in zip(features[1].labels.tolist(), features[1].evidence):
        for s in sentences:
            expected[pair, s] += 1
    torch.testing.assert_close(batch.evidence[start : start + len(features[1].hts)], expected)
    assert expected.max() >= 1 and batch.evidence.shape == (sum(len(f.hts) for f in features), 3)


def test_evidence_kl_hand_worked_and_official_form():
    distribution = torch.tensor([[0.5, 0.3, 0.0], [0.2, 0.2, 0.4], [0.1, 0.1, 0.1]])
    counts = torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    kl = evidence_kl(distribution, counts)
    assert kl[0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert kl[1].item() == pytest.approx(2 / 3 * math.log((2 / 3) / 0.2) + 1 / 3 * math.log((1 / 3) / 0.2), abs=1e-6)
    assert kl[2].item() == pytest.approx(0.0, abs=1e-20)  # a related pair without gold evidence: ~0, still counted
    # the official form: KLDivLoss(batchmean) of log(distribution with 0 -> 1e-30) against the normalised labels
    target = counts / (counts.sum(-1, keepdim=True) + 1e-30)
    target[target == 0] = 1e-30
    predicted = distribution.clone()
    predicted[predicted == 0] = 1e-30
    official = torch.nn.KLDivLoss(reduction="batchmean")(predicted.log(), target)
    assert kl.mean().item() == pytest.approx(official.item(), rel=1e-6)


def _step(model, features, loss_fn, weight, max_tokens):
    optimizer = build_optimizer(model, TrainConfig(encoder_lr=0.0, head_lr=0.0))
    loss, _, finite = _optimizer_step(
        model, loss_fn, optimizer, linear_warmup_decay(optimizer, 0, 10), torch.amp.GradScaler("cpu", enabled=False),
        [features], NUM_CLASSES, 0, torch.device("cpu"), torch.float32, 0.0, max_tokens, model.window,
        evidence_weight=weight,
    )
    assert bool(finite)
    return float(loss), model.bilinear.weight.grad.clone()


def test_training_loss_adds_weighted_evidence_kl_exactly_when_split(tiny_backbone, tiny_tokenizer, rel2id):
    model = dreeam(tiny_backbone, tiny_tokenizer)
    features = features_for(tiny_tokenizer, rel2id)
    loss_fn = build_loss("atl")
    for module in model.modules():  # the step runs in train mode: no dropout, so that it is deterministic
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with torch.no_grad():
        batch = collate(features, NUM_CLASSES, 0)
        output = model(batch)
        related = batch.labels[:, 0] == 0
        expected = loss_fn(output.logits, batch.labels) + 0.1 * evidence_kl(output.evidence, batch.evidence)[related].mean()
    whole, whole_grad = _step(model, features, loss_fn, 0.1, 0)
    assert whole == pytest.approx(float(expected), rel=1e-5)
    without, _ = _step(model, features, loss_fn, 0.0, 0)
    assert whole > without  # the term is there and positive
    assert len(split_by_tokens(features, 80, model.window)) > 1
    split, split_grad = _step(model, features, loss_fn, 0.1, 80)  # the batch in parts
    assert split == pytest.approx(whole, rel=1e-5)
    torch.testing.assert_close(split_grad, whole_grad, atol=1e-6, rtol=1e-4)


def test_predict_and_decode_give_evidence_above_threshold(tiny_backbone, tiny_tokenizer, rel2id):
    model = dreeam(tiny_backbone, tiny_tokenizer)
    features = features_for(tiny_tokenizer, rel2id)
    logits, evidence = predict(model, features, NUM_CLASSES, 0, 2, torch.device("cpu"), torch.float32, show=False)
    assert [e.shape for e in evidence] == [(len(f.hts), len(f.sent_pos)) for f in features]
    # any decision: make every pair predict relation 1
    forced = [torch.cat([torch.zeros(len(x), 1), torch.full((len(x), 1), 5.0), torch.full((len(x), NUM_CLASSES - 2), -5.0)], 1)
              for x in logits]
    rows = decode_predictions(features, forced, build_loss("atl"), 4, rel2id, evidence, 0.3)
    assert len(rows) == sum(len(f.hts) for f in features)
    for row in rows:
        doc = next(i for i, f in enumerate(features) if f.title == row["title"])
        pair = [tuple(p) for p in features[doc].hts.tolist()].index((row["h_idx"], row["t_idx"]))
        assert row["evidence"] == [s for s in range(len(features[doc].sent_pos)) if evidence[doc][pair, s] > 0.3]
    assert any(row["evidence"] for row in rows) and any(not row["evidence"] for row in rows)
    # a model without evidence gives None, and empty evidence lists
    atlop = make_model(tiny_backbone, tiny_tokenizer, emb_size=32, block_size=8)
    assert predict(atlop, features, NUM_CLASSES, 0, 2, torch.device("cpu"), torch.float32, show=False)[1] is None


def test_hand_built_feature_without_sentences_still_runs(tiny_backbone, tiny_tokenizer, rel2id):
    feature = features_for(tiny_tokenizer, rel2id)[0]
    bare = Feature(feature.title, feature.input_ids, feature.entity_pos, feature.hts, None)
    with torch.no_grad():
        output = dreeam(tiny_backbone, tiny_tokenizer)(collate([bare], NUM_CLASSES, 0))
    assert output.evidence.shape == (len(feature.hts), 0) and output.logits.shape == (len(feature.hts), NUM_CLASSES)
