"""What a GPU would break, shown on the CPU: the suite stays on the CPU, each rank restores its own
random states, half-precision checkpoints train with float32 master weights, a half-precision run
predicts on the CPU, the logits are float32 under autocast, the custom autograd functions follow
autocast into backward, a training step never reads a number back from the device, evaluation
shards pickle only their own logits, and scripts/gpu_check.py passes with --device cpu."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from docre.checkpoint import load_training_state, rng_state, save_training_state
from docre.config import load_config
from tests.conftest import FIXTURES, GPU_TESTS, ROOT


def test_the_suite_runs_on_the_cpu():
    # on a GPU machine, too: CUDA is hidden unless DOCRE_TEST_GPU=1, and the smoke config names the CPU
    assert GPU_TESTS or (os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available())
    assert load_config(ROOT / "configs/smoke.yaml").train.device == "cpu"


def _tiny_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False)


def test_each_rank_restores_its_own_random_state(tmp_path):
    model, optimizer, scheduler, scaler = _tiny_state(tmp_path)
    states = []
    for seed in (1, 2):  # what rank 0 and rank 1 would gather: different generators
        torch.manual_seed(seed)
        states.append(rng_state(torch.device("cpu")))
    # a CUDA state of rank 1's own GPU, as rank 1 saves it: restored only on a CUDA device, never by index
    states[1]["cuda"] = torch.zeros(16, dtype=torch.uint8)
    save_training_state(tmp_path / "last", model, optimizer, scheduler, scaler, {"step": 1}, states)
    for rank, expected in ((0, 1), (1, 2), (3, 1)):  # rank 3 (resumed on more processes) takes rank 0's
        torch.manual_seed(99)
        load_training_state(tmp_path / "last", model, optimizer, scheduler, scaler, rank, torch.device("cpu"))
        drawn = torch.rand(4)
        torch.manual_seed(expected)
        assert torch.equal(drawn, torch.rand(4)), rank


def test_a_checkpoint_of_docre_0_1_still_restores(tmp_path):
    from safetensors.torch import load_file, save_file

    model, optimizer, scheduler, scaler = _tiny_state(tmp_path)
    torch.manual_seed(5)
    save_training_state(tmp_path / "last", model, optimizer, scheduler, scaler, {"step": 1})
    path = tmp_path / "last" / "optimizer.safetensors"
    tensors = load_file(path)
    tensors["rng.torch"] = tensors.pop("rng.torch.rank0")  # the old names
    tensors["rng.cuda.3"] = torch.zeros(16, dtype=torch.uint8)  # a GPU that may not exist at resume
    save_file(tensors, path)
    torch.manual_seed(99)
    load_training_state(tmp_path / "last", model, optimizer, scheduler, scaler, 0, torch.device("cpu"))
    drawn = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.rand(4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_checkpoint_trains_with_float32_master_weights(tmp_path, dtype):
    from transformers import AutoModel

    from docre.data.feature import probe_tokenizer
    from docre.models import build_model, load_tokenizer
    from tests.conftest import build_tiny_backbone

    folder = build_tiny_backbone(tmp_path / "tiny")
    AutoModel.from_pretrained(folder).to(dtype).save_pretrained(folder)  # stored in half precision
    stored = AutoModel.from_pretrained(folder, dtype="auto")
    assert next(stored.parameters()).dtype == dtype  # what transformers would train without docre's dtype
    info = probe_tokenizer(load_tokenizer(folder), "*")
    for pretrained in (True, False):
        model = build_model(folder, 5, info.start_ids, info.end_ids, emb_size=32, block_size=8, pretrained=pretrained)
        assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_bilinear_logits_and_weight_gradient_are_float32_under_autocast():
    import inspect

    from docre.models.bilinear import _GroupBilinear, group_bilinear

    generator = torch.Generator().manual_seed(0)
    head, tail = (torch.randn(50, 4 * 8, generator=generator).bfloat16().requires_grad_() for _ in range(2))
    weight = torch.randn(7, 4 * 8 * 8, generator=generator).requires_grad_()
    bias = torch.randn(7, generator=generator).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = group_bilinear(head, tail, weight, bias, 8, chunk=16)
    assert logits.dtype == torch.float32
    logits.sum().backward()
    assert weight.grad.dtype == torch.float32 and head.grad.dtype == torch.bfloat16
    reference = (head.float().view(50, 4, 8, 1) * tail.float().view(50, 4, 1, 8)).view(50, -1) @ weight.t() + bias
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)  # float32 arithmetic, not bf16's
    # and under CUDA autocast the function runs with float32 inputs and autocast off
    closure = inspect.getclosurevars(_GroupBilinear.forward).nonlocals
    assert closure["device_type"] == "cuda" and closure["cast_inputs"] == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_attention_backward_follows_autocast(dtype):
    # float32 inputs under bf16 autocast (as at a layer whose projections ran outside autocast): the
    # backward must run under the forward's autocast state; it raised a dtype mismatch before
    from docre.models.attention import dropout_attention

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 40, 16, generator=generator).requires_grad_() for _ in range(3))
    keep = torch.rand(2, 4, 40, 40, generator=generator) >= 0.1
    rows = (torch.tensor([0, 1]), torch.tensor([3, 5]))
    results = []
    for ours in (True, False):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            if ours:
                output, picked = dropout_attention(q, k, v, None, 16**-0.5, 0.1, rows, keep)
            else:
                dropped = torch.softmax((q @ k.transpose(-1, -2)) * 16**-0.5, dim=-1) * keep / 0.9
                output, picked = (dropped @ v).transpose(1, 2), dropped[rows[0], :, rows[1]]
        total = output.float().square().sum() + picked.float().sum()
        results.append([output.detach().float(), *torch.autograd.grad(total, (q, k, v))])
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for ours, reference in zip(*results):
        assert float((ours - reference).abs().max() / reference.abs().max()) < tolerance


def test_a_training_step_never_reads_the_device(tiny_backbone, tiny_tokenizer, rel2id, monkeypatch):
    # on the CPU every read is free; on a GPU each one waits for the device. Reading a tensor's value
    # on the host (item, tolist, bool, int, float) is forbidden inside a whole step, forward included.
    from docre.config import TrainConfig
    from docre.data.feature import featurize, probe_tokenizer
    from docre.losses import build_loss
    from docre.models import build_model
    from docre.trainer import _optimizer_step, build_optimizer, linear_warmup_decay

    docs = json.loads((FIXTURES / "docred_tiny.json").read_text())
    features = featurize(docs, tiny_tokenizer, rel2id, "*", 0)[0][:2]
    features = [f for f in features if len(f.input_ids) <= 64]  # one window: the windowed path asks (documented)
    info = probe_tokenizer(tiny_tokenizer, "*")
    model = build_model(tiny_backbone, 97, info.start_ids, info.end_ids, emb_size=64, block_size=16)
    optimizer = build_optimizer(model, TrainConfig())
    scheduler = linear_warmup_decay(optimizer, 0, 10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    reads = []

    def forbidden(name):
        def read(self, *args):
            reads.append((name, "".join(__import__("traceback").format_stack(limit=6)[:-1])))
            return original[name](self, *args)
        return read

    original = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__bool__", "__int__", "__float__")}
    for name in original:
        monkeypatch.setattr(torch.Tensor, name, forbidden(name))
    loss, grad_norm, finite = _optimizer_step(model, build_loss("atgl"), optimizer, scheduler, scaler, [features], 97, 0,
                                              torch.device("cpu"), torch.float32, 1.0, 0, model.window,
                                              [sum(len(f.hts) for f in features)])
    monkeypatch.undo()
    assert reads == []
    assert loss.dim() == 0 and bool(finite) and float(grad_norm) > 0


def test_evaluation_shards_pickle_only_their_own_logits(tiny_backbone, tiny_tokenizer, rel2id):
    from docre.data.feature import featurize, probe_tokenizer
    from docre.inference import predict_logits
    from docre.models import build_model

    docs = json.loads((FIXTURES / "docred_tiny.json").read_text())
    features = featurize(docs, tiny_tokenizer, rel2id, "*", 0)[0]
    info = probe_tokenizer(tiny_tokenizer, "*")
    model = build_model(tiny_backbone, 97, info.start_ids, info.end_ids, emb_size=64, block_size=16)
    logits = predict_logits(model, features, 97, 0, 8, torch.device("cpu"), torch.float32, show=False)
    data = sum(t.numel() * t.element_size() for t in logits)
    assert len(pickle.dumps(logits)) < data + 2000  # views of the batch output pickled the whole batch per document


def test_a_half_precision_run_predicts_on_the_cpu(tmp_path, tiny_backbone):
    from docre import Predictor
    from docre.trainer import train
    from docre.utils import inference_precision

    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={tiny_backbone}", f"output_dir={tmp_path}",
                                                    "run_name=r", "train.epochs=1", "data.test_file="])
    train(cfg)
    config = tmp_path / "r" / "config.yaml"
    config.write_text(config.read_text().replace("precision: auto", "precision: fp16"))  # as trained on a GPU
    predictor = Predictor.from_pretrained(tmp_path / "r", device="cpu")
    assert predictor.dtype == torch.float32
    assert len(predictor.predict(json.loads((FIXTURES / "docred_tiny.json").read_text()))) == 3
    assert inference_precision("fp16", torch.device("cpu")) == torch.float32
    assert inference_precision("auto", torch.device("cpu")) == torch.float32


def test_fp16_training_needs_cuda():
    from docre.errors import DocreError
    from docre.utils import resolve_precision

    # off CUDA, fp16 is refused before any work; bf16, the CPU's half precision, is not
    with pytest.raises(DocreError, match=r"^train\.precision=fp16 needs a CUDA device \(use bf16 or fp32 on CPU\)$"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16


def test_a_resumed_run_keeps_its_precision(tmp_path, caplog):
    from docre.trainer import _resumed_precision

    (tmp_path / "state.json").write_text(json.dumps({"counters": {"step": 3, "precision": "fp32"}}))
    # a CPU run resumed on a GPU, where auto would pick bf16: it continues in fp32
    assert _resumed_precision(tmp_path, torch.bfloat16, torch.device("cuda")) == torch.float32
    (tmp_path / "state.json").write_text(json.dumps({"counters": {"step": 3, "precision": "fp16"}}))
    assert _resumed_precision(tmp_path, torch.float32, torch.device("cpu")) == torch.float32  # fp16 needs CUDA
    (tmp_path / "state.json").write_text(json.dumps({"counters": {"step": 3}}))  # docre 0.1: no record
    assert _resumed_precision(tmp_path, torch.bfloat16, torch.device("cuda")) == torch.bfloat16


@pytest.mark.gpu
def test_a_bf16_training_step_on_cuda(tiny_backbone, tiny_tokenizer, rel2id):
    from docre.config import TrainConfig
    from docre.data.feature import featurize, probe_tokenizer
    from docre.losses import build_loss
    from docre.models import build_model
    from docre.trainer import _optimizer_step, build_optimizer, linear_warmup_decay

    device = torch.device("cuda")
    features = featurize(json.loads((FIXTURES / "docred_tiny.json").read_text()), tiny_tokenizer, rel2id, "*", 0)[0]
    info = probe_tokenizer(tiny_tokenizer, "*")
    model = build_model(tiny_backbone, 97, info.start_ids, info.end_ids, emb_size=64, block_size=16).to(device)
    optimizer = build_optimizer(model, TrainConfig())
    scheduler, scaler = linear_warmup_decay(optimizer, 0, 10), torch.amp.GradScaler("cuda", enabled=False)
    loss, _, finite = _optimizer_step(model, build_loss("atgl"), optimizer, scheduler, scaler, [features], 97, 0,
                                              device, torch.bfloat16, 1.0, 0, model.window)
    assert bool(finite) and torch.isfinite(loss) and loss.device.type == "cuda"


@pytest.mark.slow  # about a minute and a half on 2 cores: the whole check on the tiny model
def test_gpu_check_passes_on_the_cpu():
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == [] and set(report["checks"]) == {"kernels", "parity", "training", "pipeline", "speed"}
    assert report["checks"]["pipeline"]["sigterm_exit_status"] == 143
    assert report["checks"]["parity"]["longest_wordpieces"] >= 1500
    assert any("NCCL" in line for line in report["not_checked"])
    assert Path(ROOT / "scripts/gpu_check.py").is_file()
