"""Training-loop pieces: the epoch sampler, the learning-rate schedule and groups (train.module_lr, and
every shipped config's module names), and splitting a batch by tokens (the same gradient as the whole
batch, less memory)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from docre.config import TrainConfig
from docre.data.collate import split_by_tokens
from docre.data.feature import featurize, probe_tokenizer
from docre.errors import DocreError
from docre.losses import build_loss
from docre.models import build_model
from docre.trainer import _optimizer_step, build_optimizer, epoch_batches, linear_warmup_decay, train
from tests.conftest import FIXTURES


def test_epoch_batches_are_a_deterministic_permutation():
    lengths = list(np.random.default_rng(0).integers(50, 600, size=103))
    for bucketing in (False, True):
        first = epoch_batches(lengths, 4, seed=66, epoch=2, bucketing=bucketing)
        assert first == epoch_batches(lengths, 4, seed=66, epoch=2, bucketing=bucketing)
        assert first != epoch_batches(lengths, 4, seed=66, epoch=3, bucketing=bucketing)
        flat = [i for batch in first for i in batch]
        assert len(first) == 103 // 4 and all(len(b) == 4 for b in first)  # the incomplete batch is dropped
        assert len(set(flat)) == len(flat) and set(flat) <= set(range(103))


def test_bucketing_reduces_padding():
    lengths = list(np.random.default_rng(1).integers(50, 600, size=400))
    padded = lambda batches: sum(len(b) * max(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert padded(epoch_batches(lengths, 4, 66, 0, True)) < 0.85 * padded(epoch_batches(lengths, 4, 66, 0, False))


def test_linear_warmup_then_decay():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = linear_warmup_decay(optimizer, warmup_steps=2, total_steps=6)
    rates = []
    for _ in range(7):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0])


def test_split_by_tokens_respects_the_budget():
    class F:
        def __init__(self, n):
            self.input_ids = [0] * n

    features = [F(n) for n in (100, 300, 250, 90, 400)]
    parts = split_by_tokens(features, 600, window=512)
    assert sorted(len(f.input_ids) for p in parts for f in p) == [90, 100, 250, 300, 400]
    for part in parts:
        assert len(part) == 1 or len(part) * max(len(f.input_ids) for f in part) <= 600
    assert split_by_tokens(features, 0, window=512) == [features]


def test_split_by_tokens_counts_windows_of_long_documents():
    class F:
        def __init__(self, n):
            self.input_ids = [0] * n

    # a 600-token document is encoded as two 512-token windows (1024 tokens), so two such documents
    # (2048) exceed a 1500 budget although their 1150 raw tokens would fit; 550 + 100 needs 3 windows
    parts = split_by_tokens([F(600), F(550), F(100)], 1500, window=512)
    assert [[len(f.input_ids) for f in p] for p in parts] == [[600], [550], [100]]
    assert [[len(f.input_ids) for f in p] for p in split_by_tokens([F(600), F(100)], 2048, window=512)] == [[600, 100]]


def test_split_batch_gives_the_same_step(tiny_backbone, tiny_tokenizer, rel2id):
    docs = json.loads((FIXTURES / "docred_tiny.json").read_text())
    features, _ = featurize(docs, tiny_tokenizer, rel2id, "*", 0)
    info = probe_tokenizer(tiny_tokenizer, "*")
    weights = []
    for budget in (0, 40):
        torch.manual_seed(0)
        model = build_model(tiny_backbone, 97, info.start_ids, info.end_ids, emb_size=64, block_size=16)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.encoder.config.attention_probs_dropout_prob = 0.0
        optimizer = build_optimizer(model, TrainConfig(encoder_lr=1e-3, head_lr=1e-3))
        schedule = linear_warmup_decay(optimizer, 0, 10)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        assert budget == 0 or len(split_by_tokens(features, budget, window=64)) == 3
        loss, _, finite = _optimizer_step(model, build_loss("atgl"), optimizer, schedule, scaler, [features], 97, 0,
                                          torch.device("cpu"), torch.float32, 1.0, budget, model.window)
        assert finite
        weights.append((float(loss), {n: p.detach().clone() for n, p in model.named_parameters()}))
    (loss_whole, whole), (loss_split, split) = weights
    assert loss_split == pytest.approx(loss_whole, rel=1e-5)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=1e-6, rtol=1e-5, msg=name)


def test_prediction_batches_under_a_token_cap_give_the_same_logits(tiny_backbone, tiny_tokenizer, rel2id, monkeypatch):
    import docre.inference as inference
    from docre.data.collate import collate, encoded_tokens

    docs = json.loads((FIXTURES / "docred_tiny.json").read_text())
    features, _ = featurize(docs, tiny_tokenizer, rel2id, "*", 0)
    info = probe_tokenizer(tiny_tokenizer, "*")
    torch.manual_seed(0)
    model = build_model(tiny_backbone, 97, info.start_ids, info.end_ids, emb_size=64, block_size=16)
    seen = []
    monkeypatch.setattr(inference, "collate", lambda part, *a: seen.append(part) or collate(part, *a))
    whole = inference.predict_logits(model, features, 97, 0, 8, torch.device("cpu"), torch.float32, show=False)
    assert len(seen) == 1
    cap = 40
    capped = inference.predict_logits(model, features, 97, 0, 8, torch.device("cpu"), torch.float32, show=False, max_tokens=cap)
    parts = seen[1:]
    assert len(parts) > 1 and sorted(id(f) for part in parts for f in part) == sorted(id(f) for f in features)
    assert all(len(part) == 1 or encoded_tokens(part, model.window) <= cap for part in parts)
    for a, b in zip(whole, capped):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_module_lr_gives_named_modules_their_own_rate():
    model = torch.nn.Module()
    model.encoder = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model.unet = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model.unet_out = torch.nn.Linear(2, 2)  # "unet" is a whole name, not a string prefix: not matched by it
    model.bilinear = torch.nn.Linear(2, 2)

    def rates(**module_lr) -> dict[str, float]:
        optimizer = build_optimizer(model, TrainConfig(encoder_lr=1.0, head_lr=2.0, module_lr=module_lr))
        rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        assert len(rate) == len(list(model.parameters()))  # every parameter in exactly one group
        return {name: rate[id(p)] for name, p in model.named_parameters()}

    default = rates()
    assert {n.split(".")[0]: r for n, r in default.items()} == {"encoder": 1.0, "unet": 2.0, "unet_out": 2.0, "bilinear": 2.0}
    named = rates(unet=3.0, **{"unet.1": 4.0, "encoder.0": 5.0})  # the longest matching prefix wins
    assert named == {"encoder.0.weight": 5.0, "encoder.0.bias": 5.0, "encoder.1.weight": 1.0, "encoder.1.bias": 1.0,
                     "unet.0.weight": 3.0, "unet.0.bias": 3.0, "unet.1.weight": 4.0, "unet.1.bias": 4.0,
                     "unet_out.weight": 2.0, "unet_out.bias": 2.0, "bilinear.weight": 2.0, "bilinear.bias": 2.0}
    for typo in ("une", "unet.2", "axial_layers"):
        with pytest.raises(DocreError, match=rf"train.module_lr: '{re.escape(typo)}' names no module of this model "
                                             r"\(its modules: encoder, unet, unet_out, bilinear\)"):
            rates(**{typo: 1e-3})


CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
MODULE_LR_CONFIGS = sorted(p for p in CONFIGS_DIR.rglob("*.yaml") if "module_lr:" in p.read_text())


@pytest.mark.parametrize("path", MODULE_LR_CONFIGS, ids=[str(p.relative_to(CONFIGS_DIR)) for p in MODULE_LR_CONFIGS])
def test_shipped_module_lr_names_modules_of_its_model(path, typed_backbone, typed_tokenizer):
    from docre.config import load_config
    from docre.models import build_model_from_config

    # the tiny BERT with [unused0..99]: some configs mark mentions with DocuNet's typed markers
    cfg = load_config(path, [f"model.backbone={typed_backbone}"])
    model = build_model_from_config(cfg.model, typed_tokenizer, 97)
    optimizer = build_optimizer(model, cfg.train)  # raises on a prefix that names no module
    for group, (prefix, lr) in zip(optimizer.param_groups[2:], cfg.train.module_lr.items()):
        assert group["lr"] == lr and group["params"], prefix


def test_a_batch_larger_than_the_training_split_is_refused(tiny_backbone, tmp_path):
    from docre.config import load_config

    # the smoke fixture has 3 training documents: a batch of 4 makes no optimizer step at all
    cfg = load_config(CONFIGS_DIR / "smoke.yaml", [f"model.backbone={tiny_backbone}", f"output_dir={tmp_path}",
                                                   "train.batch_size=4"])
    with pytest.raises(DocreError, match=r"^docred_tiny\.json: 3 training documents make no full step of batch_size 4 "
                                         r"x grad_accum 1 x 1 process$"):
        train(cfg)



def test_a_run_without_a_dev_split_says_it_keeps_its_last_weights(tiny_backbone, tmp_path, capsys):
    from tests.cli import run_main

    overrides = [f"model.backbone={tiny_backbone}", f"output_dir={tmp_path}", "run_name=r", "data.dev_file=",
                 "train.max_steps=2", "train.num_threads=1"]
    assert run_main("train", ["configs/smoke.yaml", *overrides]) == 0
    assert f"\nr: no dev split, the weights after step 2 ({tmp_path / 'r'})\n" in capsys.readouterr().out  # was "step None"
