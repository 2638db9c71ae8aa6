"""Check docre on a CUDA GPU (or, with --device cpu, the same checks on a tiny model): exits 1 on any failure.

    python scripts/gpu_check.py [--device cuda|cpu] [--json] [--backbone minilm|FOLDER] [--skip-speed]

One process, each check timed and every figure in the JSON line (--json). Weights are random: the
encoder's config and tokenizer (MiniLM's by default, a BERT-base-sized config with the same
tokenizer for the speed figures), so nothing has to be downloaded or carried; numbers that need
trained weights (F1) come from CPU runs. With --device cpu the encoder is a tiny random BERT and
the checks take about a minute on 2 cores (it runs in the test suite).

Checks:
  kernels     docre's dropout attention and group bilinear on the device against plain autograd
              (values and gradients; fp32 and bf16 autocast)
  parity      the model on CPU fp32 vs the device in fp32 (close logits) and bf16 (decodes agree on
              >= 99% of pairs), 16 Re-DocRED documents plus one of >= 1,500 word-pieces
  training    20 steps each in fp32, bf16 and fp16 (CUDA): finite, falling loss, few skipped fp16
              steps; no host synchronisation inside a step (torch.cuda.set_sync_debug_mode)
  pipeline    train.py end to end on the device, evaluate.py on the device and on the CPU, the
              Predictor on the device, SIGTERM and --resume
  speed       train step / encoder fwd+bwd and inference / encoder fwd in bf16, MiniLM- and
              BERT-base-sized (target <= 1.25 for BERT-base), steps/s, documents/s, peak GPU
              memory, one 4,096-word-piece document
Not checkable on one GPU (said in the output): NCCL across processes (torchrun on several GPUs).
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "data" / "redocred" / "dev_revised.json.gz"
REL2ID = ROOT / "data" / "docred" / "rel2id.json"
BERT_BASE_TARGET = 1.25
HEAD = {}  # build_model's head sizes: ATLOP's on a GPU; small with the tiny CPU encoder (set in main)
DOCS = 16  # documents of the speed figures (fewer on CPU)


def main() -> int:
    from docre.allocator import use_huge_pages

    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--json", action="store_true", help="print every figure as one JSON line at the end")
    parser.add_argument("--backbone", default="minilm", help="encoder whose config and tokenizer are used (random weights)")
    parser.add_argument("--skip-speed", action="store_true", help="leave out the speed figures")
    args = parser.parse_args()

    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from docre.utils import resolve_device, setup_logging

    setup_logging()
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    global DOCS
    if not on_gpu:
        HEAD.update(emb_size=64, block_size=16)
        DOCS = 8
    report = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if on_gpu else None,
              "torch": torch.__version__, "checks": {}, "failures": [],
              "not_checked": ["NCCL collectives across processes (torchrun with several GPUs): one GPU here"]}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        backbone = random_backbone(args.backbone, scratch / "encoder", tiny=not on_gpu)
        checks = [("kernels", lambda: kernels(device)), ("parity", lambda: parity(backbone, device)),
                  ("training", lambda: training(backbone, device)), ("pipeline", lambda: pipeline(backbone, device, scratch))]
        if not args.skip_speed:
            checks.append(("speed", lambda: speed(args.backbone, device, scratch)))
        for name, check in checks:
            started = time.perf_counter()
            try:
                figures, failures = check()
            except Exception as error:  # a crash is a failure of that check; the others still run
                traceback.print_exc()
                figures, failures = {}, [f"{type(error).__name__}: {error}"]
            report["checks"][name] = figures | {"seconds": round(time.perf_counter() - started, 2)}
            report["failures"] += [f"{name}: {failure}" for failure in failures]
            print(f"{name}: {'ok' if not failures else 'FAILED: ' + '; '.join(failures)} "
                  f"({report['checks'][name]['seconds']} s)", flush=True)
    print("not checked here: " + "; ".join(report["not_checked"]))
    if args.json:
        print(json.dumps(report))
    return 1 if report["failures"] else 0


# ---------------------------------------------------------------------------------------------- set-up
def random_backbone(name: str, folder: Path, tiny: bool, size: str = "config") -> str:
    """A folder with the tokenizer of `name` and randomly initialised weights: its own config,
    a BERT-base-sized config (size="bert-base"), or a tiny 2-layer BERT (tiny, for CPU checks)."""
    import torch
    from transformers import AutoConfig, AutoModel, BertConfig

    from docre.models import load_tokenizer, resolve_backbone

    tokenizer = load_tokenizer(name)
    if tiny:
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128)
    elif size == "bert-base":
        config = BertConfig(vocab_size=len(tokenizer))
    else:
        config = AutoConfig.from_pretrained(resolve_backbone(name))
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def load_docs(count: int, long_words: int = 0) -> list[dict]:
    """`count` Re-DocRED dev documents, and with `long_words` one more of about that many words (a
    document repeated, its entities' mentions with it: a long document with a document's entities)."""
    from docre.data.docred import parse_json_list, read_bytes

    docs = parse_json_list(DEV, read_bytes(DEV))
    chosen = docs[400 : 400 + count]
    if long_words:
        chosen.append(repeated(docs[0], long_words))
    return chosen


def repeated(base: dict, words: int) -> dict:
    doc = {"title": "long document", "sents": [], "vertexSet": [[] for _ in base["vertexSet"]], "labels": base["labels"]}
    while sum(len(sent) for sent in doc["sents"]) < words:
        shift = len(doc["sents"])
        doc["sents"] += base["sents"]
        for entity, mentions in zip(doc["vertexSet"], base["vertexSet"]):
            entity += [dict(m, sent_id=m["sent_id"] + shift) for m in mentions]
    return doc


def features_of(docs: list[dict], backbone: str, max_length: int = 0):
    from docre.data import load_rel2id
    from docre.data.feature import featurize
    from docre.models import load_tokenizer

    tokenizer = load_tokenizer(backbone)
    rel2id = load_rel2id("docred", str(REL2ID))
    return featurize(docs, tokenizer, rel2id, "*", max_length)[0], tokenizer, rel2id


def build(backbone: str, tokenizer, num_classes: int, device, dropout: bool = True):
    import torch

    from docre.data.feature import probe_tokenizer
    from docre.models import build_model

    info = probe_tokenizer(tokenizer, "*")
    torch.manual_seed(0)
    model = build_model(backbone, num_classes, info.start_ids, info.end_ids, **HEAD)
    if not dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.encoder.config.attention_probs_dropout_prob = 0.0
    return model.to(device)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_relative(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ---------------------------------------------------------------------------------------------- checks
def kernels(device) -> tuple[dict, list[str]]:
    """Dropout attention and group bilinear vs plain autograd, fp32 and bf16 autocast."""
    import torch

    from docre.models.attention import dropout_attention
    from docre.models.bilinear import group_bilinear
    from docre.utils import autocast

    figures, failures = {}, []
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 96, 32, generator=generator).to(device).requires_grad_() for _ in range(3))
    mask = torch.zeros(2, 1, 96, 96, device=device)
    mask[1, :, :, 80:] = torch.finfo(torch.float32).min
    keep = (torch.rand(2, 4, 96, 96, generator=generator) >= 0.1).to(device)
    rows = (torch.tensor([0, 1, 1], device=device), torch.tensor([3, 5, 60], device=device))
    head, tail = (torch.randn(700, 64 * 12, generator=generator).to(device).requires_grad_() for _ in range(2))
    weight = (torch.randn(97, 64 * 12 * 12, generator=generator) * 0.01).to(device).requires_grad_()
    bias = torch.randn(97, generator=generator).to(device).requires_grad_()
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        label = str(dtype).replace("torch.", "")
        for name, ours, reference, inputs in (
            ("attention", lambda: dropout_attention(q, k, v, mask, 32**-0.5, 0.1, rows, keep),
             lambda: _reference_attention(q, k, v, mask, keep, rows), (q, k, v)),
            ("bilinear", lambda: (group_bilinear(head, tail, weight, bias, 12, chunk=256), None),
             lambda: (_reference_bilinear(head, tail, weight, bias, 12), None), (head, tail, weight, bias)),
        ):
            results = []
            for function in (ours, reference):
                with autocast(device, dtype):
                    output, picked = function()
                total = output.float().square().sum() + (picked.float().sum() if picked is not None else 0)
                gradients = torch.autograd.grad(total, inputs)
                results.append([output.float(), *(g.float() for g in gradients)])
            error = max(max_relative(a, b) for a, b in zip(*results))
            figures[f"{name}_{label}_max_relative_error"] = error
            if not error <= tolerance:
                failures.append(f"{name} {label}: max relative error {error:.2e} > {tolerance:.0e}")
        with autocast(device, dtype):
            logits_dtype = group_bilinear(head, tail, weight, bias, 12).dtype
        figures[f"bilinear_{label}_logits_dtype"] = str(logits_dtype).replace("torch.", "")
        if logits_dtype != torch.float32:
            failures.append(f"bilinear under {label} autocast gives {logits_dtype} logits, not float32")
    return figures, failures


def _reference_attention(q, k, v, mask, keep, rows):
    import torch

    probs = torch.softmax((q @ k.transpose(-1, -2)) * 32**-0.5 + mask, dim=-1)
    dropped = probs * keep / 0.9
    return (dropped @ v).transpose(1, 2), dropped[rows[0], :, rows[1]]


def _reference_bilinear(head, tail, weight, bias, block):
    """ATLOP's formula, in float32 (as docre computes its logits under any autocast)."""
    import torch

    with torch.autocast(head.device.type, enabled=False):
        b1, b2 = head.float().view(-1, head.size(1) // block, block), tail.float().view(-1, tail.size(1) // block, block)
        features = (b1.unsqueeze(3) * b2.unsqueeze(2)).view(-1, head.size(1) * block)
        return features @ weight.float().t() + bias.float()


def parity(backbone: str, device) -> tuple[dict, list[str]]:
    """Logits on CPU fp32 vs the device in fp32 and bf16 (random weights, eval mode)."""
    import torch

    from docre.inference import predict_logits
    from docre.losses import build_loss

    features, tokenizer, rel2id = features_of(load_docs(16, long_words=1400), backbone)
    longest = max(len(f.input_ids) for f in features)
    model = build(backbone, tokenizer, len(rel2id), "cpu")
    reference = torch.cat(predict_logits(model, features, len(rel2id), tokenizer.pad_token_id, 4, torch.device("cpu"),
                                         torch.float32, show=False))
    model.to(device)
    decode = build_loss("atgl").decode
    expected = decode(reference, 4)
    figures, failures = {"documents": len(features), "longest_wordpieces": longest, "pairs": len(reference)}, []
    if longest < 1500:
        failures.append(f"the long document has {longest} word-pieces, fewer than 1,500")
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        logits = torch.cat(predict_logits(model, features, len(rel2id), tokenizer.pad_token_id, 4, device, dtype, show=False))
        agreement = float((decode(logits, 4) == expected).all(1).float().mean())
        figures[f"{label}_max_relative_error"] = max_relative(logits, reference)
        figures[f"{label}_decode_agreement"] = agreement
    if figures["fp32_max_relative_error"] > 1e-3:
        failures.append(f"fp32 logits differ from the CPU's by {figures['fp32_max_relative_error']:.2e} (relative)")
    # CPU autocast keeps more operations in bf16 than CUDA's (softmax, normalisation), and a tiny random
    # model's relation logits lie within bf16 rounding of each other: a looser bound for --device cpu
    least = 0.99 if device.type == "cuda" else 0.95
    if figures["bf16_decode_agreement"] < least:
        failures.append(f"bf16 decodes agree with fp32 CPU on {figures['bf16_decode_agreement']:.1%} of pairs (< {least:.0%})")
    return figures, failures


def training(backbone: str, device) -> tuple[dict, list[str]]:
    """20 optimizer steps on one batch per precision: finite, falling loss, no host sync in a step."""
    import torch

    from docre.config import TrainConfig
    from docre.losses import build_loss
    from docre.trainer import _optimizer_step, build_optimizer, linear_warmup_decay

    features, tokenizer, rel2id = features_of(load_docs(4), backbone)
    figures, failures = {}, []
    precisions = [(torch.float32, "fp32"), (torch.bfloat16, "bf16")]
    if device.type == "cuda":
        precisions.append((torch.float16, "fp16"))
    for dtype, label in precisions:
        model = build(backbone, tokenizer, len(rel2id), device)
        optimizer = build_optimizer(model, TrainConfig(encoder_lr=5e-5, head_lr=1e-3))
        scheduler = linear_warmup_decay(optimizer, 0, 10**6)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        loss_fn = build_loss("atgl")
        losses, finite, syncs = [], [], 0
        for step in range(20):
            watched = device.type == "cuda" and step >= 2  # after warm-up (allocations, kernel choice)
            with _sync_counter(watched) as counted:
                loss, _, ok = _optimizer_step(model, loss_fn, optimizer, scheduler, scaler, [features], len(rel2id),
                                              tokenizer.pad_token_id, device, dtype, 1.0, 0, model.window)
            syncs += counted()
            losses.append(float(loss))
            finite.append(bool(ok))
        skipped = finite.count(False)
        figures[label] = {"first_loss": losses[0], "last_loss": losses[-1], "skipped_steps": skipped,
                          "host_syncs_in_steps": syncs if device.type == "cuda" else None}
        if not all(math.isfinite(x) for x, ok in zip(losses, finite) if ok):
            failures.append(f"{label}: non-finite loss")
        if not losses[-1] < 0.9 * losses[0]:
            failures.append(f"{label}: loss did not fall ({losses[0]:.3f} -> {losses[-1]:.3f})")
        if skipped > (5 if dtype == torch.float16 else 0):
            failures.append(f"{label}: {skipped} of 20 steps skipped")
        if syncs:
            failures.append(f"{label}: {syncs} host synchronisations in steps 3-20")
    return figures, failures


class _sync_counter:
    """Counts the CUDA host synchronisations inside the block (set_sync_debug_mode warnings)."""

    def __init__(self, active: bool):
        self.active, self.count = active, 0

    def __enter__(self):
        import warnings

        import torch

        if self.active:
            self._catch = warnings.catch_warnings(record=True)
            self._seen = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return lambda: self.count

    def __exit__(self, *exc):
        import torch

        if self.active:
            torch.cuda.set_sync_debug_mode(0)
            self._catch.__exit__(*exc)
            self.count = sum("synchroniz" in str(w.message) for w in self._seen)


def pipeline(backbone: str, device, scratch: Path) -> tuple[dict, list[str]]:
    """train.py, evaluate.py (device and CPU), the Predictor, SIGTERM + --resume, as subprocesses."""
    import torch

    from docre import Predictor

    out, figures, failures = scratch / "runs", {}, []
    config = "configs/quickstart.yaml" if device.type == "cuda" else "configs/smoke.yaml"
    common = [config, f"model.backbone={backbone}", f"train.device={device}", f"output_dir={out}"]
    common += [f"model.{key}={value}" for key, value in HEAD.items()]
    if device.type == "cpu":
        common += ["train.epochs=40"]  # 40 tiny steps: a SIGTERM lands long before the end
    started = time.perf_counter()
    result = _command(["train.py", *common, "run_name=whole"])
    figures["train_seconds"] = round(time.perf_counter() - started, 1)
    if result.returncode != 0:
        return figures, [f"train.py failed: {result.stderr.strip().splitlines()[-1:]}"]
    trained = json.loads((out / "whole" / "results.json").read_text())
    figures["train_dev_f1"] = trained["dev"]["f1"]
    for where in (str(device), "cpu"):
        scored = _command(["evaluate.py", str(out / "whole"), "--device", where, "--json"])
        if scored.returncode != 0:
            failures.append(f"evaluate.py --device {where} failed")
            continue
        figures[f"evaluate_{where}_f1"] = json.loads(scored.stdout.strip().splitlines()[-1])["f1"]
    if figures.get(f"evaluate_{device}_f1") != trained["dev"]["f1"]:
        failures.append(f"evaluate.py on {device} does not reproduce the dev F1 of training")
    predictor = Predictor.from_pretrained(out / "whole", device=str(device))
    triples = predictor.predict(load_docs(2))
    figures["predictor_documents"] = len(triples)
    figures["predictor_device"] = str(next(predictor.model.parameters()).device)

    # SIGTERM once the first checkpoint exists, then --resume: finishes with every step done
    runner = subprocess.Popen([sys.executable, "train.py", *common, "run_name=stopped", "train.save_every=1"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "stopped" / "last" / "state.json").is_file() and runner.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.send_signal(signal.SIGTERM)
    runner.communicate(timeout=300)
    figures["sigterm_exit_status"] = runner.returncode
    resumed = _command(["train.py", "--resume", str(out / "stopped")])
    finished = json.loads((out / "stopped" / "results.json").read_text()) if resumed.returncode == 0 else {}
    figures["resumed_steps"] = finished.get("steps")
    if runner.returncode != 128 + signal.SIGTERM:
        failures.append(f"SIGTERM: exit status {runner.returncode}, expected {128 + signal.SIGTERM}")
    if finished.get("steps") != trained["steps"]:
        failures.append(f"resumed run did {finished.get('steps')} steps, the whole run {trained['steps']}")
    if device.type == "cuda":
        figures["peak_gpu_mb_predictor"] = torch.cuda.max_memory_allocated(device) / 2**20
    return figures, failures


def _command(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def speed(name: str, device, scratch: Path) -> tuple[dict, list[str]]:
    """Step and inference ratios to the bare encoder in bf16 (fp32 on CPU), MiniLM- and BERT-base-sized."""
    import torch

    figures, failures = {}, []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = ("config", "bert-base") if device.type == "cuda" else ("tiny",)
    for size in sizes:
        backbone = random_backbone(name, scratch / f"speed-{size}", tiny=size == "tiny", size=size)
        figures[size] = _ratios(backbone, device, dtype)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "bert-base" in figures and figures["bert-base"]["train_ratio"] > BERT_BASE_TARGET:
        failures.append(f"BERT-base train step / encoder = {figures['bert-base']['train_ratio']:.2f} > {BERT_BASE_TARGET}")
    return figures, failures


def _ratios(backbone: str, device, dtype) -> dict:
    import torch
    from transformers import AutoModel

    from docre.config import TrainConfig
    from docre.data.collate import collate
    from docre.inference import predict_logits
    from docre.losses import build_loss
    from docre.trainer import _optimizer_step, build_optimizer, linear_warmup_decay
    from docre.utils import autocast

    features, tokenizer, rel2id = features_of(load_docs(DOCS), backbone)
    model = build(backbone, tokenizer, len(rel2id), device)
    encoder = AutoModel.from_pretrained(backbone, attn_implementation="sdpa", use_safetensors=True).to(device)
    optimizer = build_optimizer(model, TrainConfig())
    scheduler, loss_fn = linear_warmup_decay(optimizer, 0, 10**6), build_loss("atgl")
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    batches = [features[i : i + 4] for i in range(0, len(features), 4)]
    window = model.window

    def ours_step(batch):
        _optimizer_step(model, loss_fn, optimizer, scheduler, scaler, [batch], len(rel2id), tokenizer.pad_token_id,
                        device, dtype, 1.0, 0, window)

    def encoder_step(batch):
        inputs = collate(batch, len(rel2id), tokenizer.pad_token_id).to(device)
        with autocast(device, dtype):
            hidden = encoder(input_ids=inputs.input_ids[:, :window], attention_mask=inputs.attention_mask[:, :window])
        hidden.last_hidden_state.float().sum().backward()
        encoder.zero_grad(set_to_none=True)

    def timed(function, *args) -> float:
        synchronize(device)
        started = time.perf_counter()
        function(*args)
        synchronize(device)
        return time.perf_counter() - started

    encoder.train()
    for batch in batches[:2]:  # warm-up
        ours_step(batch), encoder_step(batch)
    step_s = sum(timed(ours_step, b) for b in batches) / len(batches)
    encoder_s = sum(timed(encoder_step, b) for b in batches) / len(batches)
    encoder.eval()

    @torch.no_grad()
    def encoder_forward():
        for batch in batches:
            inputs = collate(batch, len(rel2id), tokenizer.pad_token_id).to(device)
            with autocast(device, dtype):
                encoder(input_ids=inputs.input_ids[:, :window], attention_mask=inputs.attention_mask[:, :window])

    infer_s = timed(lambda: predict_logits(model, features, len(rel2id), tokenizer.pad_token_id, 4, device, dtype, show=False))
    encoder_infer_s = timed(encoder_forward)
    figures = {"train_step_s": step_s, "encoder_train_s": encoder_s, "train_ratio": step_s / encoder_s,
               "steps_per_s": 1 / step_s, "infer_ratio": infer_s / encoder_infer_s,
               "documents_per_s": len(features) / infer_s}
    long_doc = features_of([repeated(load_docs(1)[0], 4000)], backbone, max_length=4096)[0]
    figures["long_doc_wordpieces"] = len(long_doc[0].input_ids)
    figures["long_doc_step_s"] = timed(ours_step, long_doc)
    if device.type == "cuda":
        figures["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    return figures


if __name__ == "__main__":
    from docre.errors import run_cli

    run_cli(main)
