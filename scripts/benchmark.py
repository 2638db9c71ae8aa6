"""Speed and memory of docre against the floor set by its encoder (the figures of
docs/performance.md).

    python scripts/benchmark.py [--encoder minilm|bert-base] [--model atlop|...] [--threads 2] [--quick] [--json]
    python scripts/benchmark.py --attention-paths [--encoder bert-base]   # fast vs general attention path
    python scripts/benchmark.py --loss NAME [--quick]   # a training step with loss NAME against ATL's
    python scripts/benchmark.py --model NAME --against-atlop [--quick]   # model NAME's step and memory against ATLOP's

Measured in one process, side by side, on batches of 4 Re-DocRED documents from the training
sampler: a full training step of the model (forward, loss, backward, optimizer step) against the
same encoder's own forward+backward with its fastest attention (SDPA), and inference per document
against the encoder's forward; the model is ATLOP unless `--model` names another entry of
docre.models.MODELS (the training run and the long document then use it too). Each figure is the
median over repetitions after a warm-up; the ratios are medians of per-repetition ratios, so slow
moments of the machine hit both sides. Peak memory comes from a real `train.py` run and the 4,096-word-piece document from a
separate process (each its own whole peak). `--json` prints one JSON
object as the last line. "bert-base" is a randomly initialised BertConfig() model (no download)
with the MiniLM tokenizer (same vocabulary). `--loss NAME` measures only the training step with
loss NAME against the same step with ATL (each with the model and loss keywords of its
Re-DocRED-mini config, the loss's training statistics computed from that training split, both with
the token budget of the loss's config), alternating on the same batches; its ratio is the median of
the per-batch paired ratios (a burst of another job spoils a few pairs, not the figure), in wall
time and in the process's CPU time (which waiting for a core does not inflate). `--model NAME
--against-atlop` measures, the same way, only a training step of model NAME against ATLOP's on the
same batches, each side's peak memory in a step (its training state plus what the step adds, the
resident high-water mark reset before it), and where NAME's step goes (model_step_ratio). Results and
how to read them: docs/performance.md.
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from docre.allocator import use_huge_pages
from docre.errors import run_cli

ROOT = Path(__file__).resolve().parent.parent

DEV = "dev_revised.json.gz"
DATA_DIR = str(ROOT / "data" / "redocred")


def main() -> int:
    use_huge_pages()  # first: torch reads the allocator setting once, at import (docre/allocator.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", choices=("minilm", "bert-base"), default="minilm")
    from docre.losses import LOSSES  # after use_huge_pages: it imports torch
    from docre.models import MODELS

    parser.add_argument("--model", choices=tuple(MODELS), default="atlop",
                        help="the model of docre.models.MODELS whose step, inference and memory are measured")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where the step and inference ratios run")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="autocast precision of the step and inference ratios (fp16 needs CUDA)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller samples, no memory-switch or long-document figures: under a minute")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    parser.add_argument("--attention-paths", action="store_true",
                        help="only the training step's ratio on docre's fast attention path and on the general path "
                             "(the encoder's own attention, taken by encoders docre cannot route), side by side")
    parser.add_argument("--loss", choices=tuple(LOSSES),
                        help="only a training step with this loss against the same step with ATL, side by side")
    parser.add_argument("--against-atlop", action="store_true",
                        help="only a training step of --model against ATLOP's, side by side, its peak memory, and "
                             "where the model's step goes")
    parser.add_argument("--part", choices=("long-doc",), help=argparse.SUPPRESS)  # internal: run in a subprocess
    parser.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from docre.utils import setup_logging

    setup_logging()
    if args.part == "long-doc":
        print(json.dumps(long_document_step(args.encoder, args.gradient_checkpointing, args.model)))
        return 0

    from docre.utils import resolve_device, resolve_precision

    device = resolve_device(args.device, option="--device")
    dtype = resolve_precision(args.precision, device)
    figures = {"encoder": args.encoder, "model": args.model, "threads": args.threads, "quick": args.quick, "device": str(device),
               "precision": args.precision} | machine_record()
    if args.attention_paths:
        with tempfile.TemporaryDirectory() as scratch:
            backbone = backbone_folder(args.encoder, Path(scratch))
            figures |= attention_paths(backbone, batches=2 if args.quick else 5, reps=1 if args.quick else 3,
                                       device=device, dtype=dtype, name=args.model)
        report_attention_paths(figures)
        if args.json:
            print(json.dumps(figures))
        return 0
    if args.loss:
        with tempfile.TemporaryDirectory() as scratch:
            backbone = backbone_folder(args.encoder, Path(scratch))
            figures |= loss_step_ratio(backbone, args.loss, batches=2 if args.quick else 3, reps=2 if args.quick else 3,
                                       device=device, dtype=dtype, name=args.model)
        report_loss(figures)
        if args.json:
            print(json.dumps(figures))
        return 0
    if args.against_atlop:
        with tempfile.TemporaryDirectory() as scratch:
            backbone = backbone_folder(args.encoder, Path(scratch))
            figures |= model_step_ratio(backbone, args.model, batches=2 if args.quick else 3, reps=2 if args.quick else 3,
                                        device=device, dtype=dtype)
        report_model(figures)
        if args.json:
            print(json.dumps(figures))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        backbone = backbone_folder(args.encoder, Path(scratch))
        figures |= preprocessing(Path(scratch) / "cache")
        figures |= step_ratios(backbone, batches=1 if args.quick else 5, reps=1 if args.quick else 6, device=device, dtype=dtype,
                               name=args.model)
        figures |= inference_ratio(backbone, docs=16 if args.quick else 100, reps=1 if args.quick else 4, device=device,
                                   dtype=dtype, name=args.model)
        if device.type == "cuda":  # the rest measures CPU memory (resident set size)
            figures["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            figures |= training_run_memory(backbone, Path(scratch), steps=2 if args.quick else 10, quick=args.quick,
                                           name=args.model)
        if not args.quick and device.type == "cpu":  # the memory switches' costs and the long document: a few minutes more
            figures |= memory_options(backbone, reps=2, name=args.model)
            for checkpointing in (False, True):
                long = run_part(["--part", "long-doc", "--encoder", args.encoder, "--model", args.model,
                                 "--threads", str(args.threads)]
                                + (["--gradient-checkpointing"] if checkpointing else []))
                prefix = "long_doc_checkpointing" if checkpointing else "long_doc"
                figures |= {f"{prefix}_{k}": v for k, v in long.items()}
    report(figures)
    if args.json:
        print(json.dumps(figures))
    return 0


# ---------------------------------------------------------------------------------------------- setup
def machine_record() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as lines:
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform()}


def backbone_folder(encoder: str, scratch: Path) -> str:
    """The embedded MiniLM folder, or a random BERT-base (BertConfig()) saved with MiniLM's tokenizer."""
    from docre.models import load_tokenizer, resolve_backbone

    if encoder == "minilm":
        return resolve_backbone("minilm")
    import torch
    from transformers import BertConfig, BertModel

    folder = scratch / "bert-base-random"
    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    return str(folder)


def timed(function) -> float:
    """Seconds `function()` takes, its GPU work included (CUDA runs asynchronously)."""
    import torch

    synchronize = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    synchronize()
    started = time.perf_counter()
    function()
    synchronize()
    return time.perf_counter() - started


def timed_with_cpu(function) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds, all its threads) of `function()`. On a machine
    shared with other jobs, waiting for a core inflates the first and not the second; with one
    thread (--threads 1) the second is the work done, free of the threads' spin-waiting too."""
    started = time.process_time()
    wall = timed(function)
    return wall, time.process_time() - started


def median_of(samples: list[float]) -> float:
    return statistics.median(samples)


# ---------------------------------------------------------------------------------------------- figures
def preprocessing(cache: Path) -> dict:
    """Read, validate and featurise the 500 Re-DocRED dev documents: empty cache, then cached."""
    from docre.data import load_rel2id, load_split
    from docre.models import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    rel2id = load_rel2id("docred", str(ROOT / "data/docred/rel2id.json"))
    kept = []  # keep results alive: freeing a million objects inside the next timing is not preprocessing

    def load():
        kept.append(load_split("dev", "docred", DEV, DATA_DIR, tokenizer, rel2id, "*", 1024, str(cache)))

    cold = timed(load)
    cached = median_of([timed(load) for _ in range(3)])
    return {"prep_cold_s_per_500": cold, "prep_cached_s_per_500": cached}


def build(backbone: str, name: str = "atlop", **options):
    """(the model `name` of MODELS, SDPA-only encoder with the same weights, loss, tokenizer, rel2id)."""
    from transformers import AutoModel

    from docre.data import load_rel2id
    from docre.data.feature import probe_tokenizer
    from docre.losses import build_loss
    from docre.models import build_model, load_tokenizer

    tokenizer = load_tokenizer(backbone)
    rel2id = load_rel2id("docred", str(ROOT / "data/docred/rel2id.json"))
    info = probe_tokenizer(tokenizer, "*")
    model = build_model(backbone, len(rel2id), info.start_ids, info.end_ids, name=name, **options)
    encoder = AutoModel.from_pretrained(backbone, attn_implementation="sdpa", use_safetensors=True)
    return model, encoder, build_loss("atgl", alpha=16.5), tokenizer, rel2id


def training_split(tokenizer, rel2id):
    """Re-DocRED-mini's training split (the first 400 Re-DocRED dev documents)."""
    from docre.data import load_split

    return load_split("train", "docred", f"{DEV}[:400]", DATA_DIR, tokenizer, rel2id, "*", 1024)


def training_batches(tokenizer, rel2id, count: int, split=None):
    """`count` batches of 4 documents spread over an epoch of Re-DocRED-mini's training sampler."""
    from docre.trainer import epoch_batches

    split = split or training_split(tokenizer, rel2id)
    batches = epoch_batches([len(f.input_ids) for f in split.features], 4, seed=66, epoch=0, bucketing=True)
    chosen = [batches[i * len(batches) // count] for i in range(count)]
    return [[split.features[i] for i in batch] for batch in chosen]


def encoder_inputs(batch, model):
    """What the encoder itself sees for a batch: the padded documents, or their windows when
    the batch is longer than the encoder window (models/long_input.py)."""
    from docre.models.long_input import _window_tensors, plan_windows

    if batch.input_ids.size(1) <= model.window:
        return batch.input_ids, batch.attention_mask
    lengths = batch.attention_mask.sum(1).tolist()
    plan = plan_windows(lengths, model.window, len(model.start_ids), len(model.end_ids))
    ids, mask, _ = _window_tensors(plan, batch.input_ids, lengths, model.window, model.start_ids, model.end_ids)
    return ids, mask


def step_ratios(backbone: str, batches: int, reps: int, device=None, dtype=None, name: str = "atlop", **options) -> dict:
    """A training step as train() runs it (collate, forward, loss, backward, clipping, AdamW step,
    with the MiniLM config's max_batch_tokens) vs the encoder's forward+backward on the same
    documents (their windows where they are longer than the encoder window). `name` (the model) and
    `options` go to build_model."""
    import torch

    from docre.config import TrainConfig, load_config
    from docre.data.collate import collate
    from docre.trainer import _optimizer_step, build_optimizer, linear_warmup_decay
    from docre.utils import autocast

    device, dtype = device or torch.device("cpu"), dtype or torch.float32
    # the CPU config's token budget on CPU; none on a GPU (its memory holds a whole batch)
    budget = load_config(ROOT / "configs/redocred_mini/minilm_atgl.yaml").train.max_batch_tokens if device.type == "cpu" else 0
    model, encoder, loss_fn, tokenizer, rel2id = build(backbone, name, **options)
    model, encoder = model.to(device), encoder.to(device).train()
    optimizer = build_optimizer(model, TrainConfig())
    scheduler = linear_warmup_decay(optimizer, 0, 10**6)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    data = training_batches(tokenizer, rel2id, batches)
    inputs = [tuple(t.to(device) for t in encoder_inputs(collate(features, len(rel2id), tokenizer.pad_token_id), model))
              for features in data]

    def train_step(features):
        _optimizer_step(model, loss_fn, optimizer, scheduler, scaler, [features], len(rel2id), tokenizer.pad_token_id,
                        device, dtype, 1.0, budget, model.window)

    def encoder_step(ids, mask):
        with autocast(device, dtype):
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden.float().sum().backward()
        encoder.zero_grad(set_to_none=True)

    ours, theirs = [], []
    for rep in range(reps + 1):  # the first repetition warms up
        # alternate per batch, so a change of the machine's speed hits both sides alike
        pairs = [(timed(lambda features=features: train_step(features)), timed(lambda inp=inp: encoder_step(*inp)))
                 for features, inp in zip(data, inputs)]
        if rep:
            ours.append(sum(o for o, _ in pairs) / len(data))
            theirs.append(sum(t for _, t in pairs) / len(data))
    return {
        "train_step_s": median_of(ours),
        "encoder_train_s": median_of(theirs),
        "train_ratio": median_of([a / b for a, b in zip(ours, theirs)]),
        "pairs_per_batch": sum(len(f.hts) for features in data for f in features) / len(data),
        "tokens_per_batch": sum(int(mask.sum()) for _, mask in inputs) / len(data),
        "max_batch_tokens": budget,
    }


def paired_steps(train_step, base: str, other: str, data: list, reps: int) -> dict:
    """`train_step(side, features)` of the sides `base` and `other` back to back on every batch, which side
    goes first swapped every repetition (the first repetition warms up). Returns the sides' step seconds,
    wall and CPU (medians over repetitions of the mean per batch), and the `other` / `base` ratios: the
    median of the per-batch paired ratios (a burst of another job on the machine spoils a few pairs, not
    the figure) and their quartiles, in wall time and in the process's CPU time, and the ratio of the mean
    steps per repetition and its median."""
    steps, cpu = {base: [], other: []}, {base: [], other: []}  # per repetition, mean wall / CPU seconds per batch
    paired, paired_cpu = [], []  # per (repetition, batch): other step / base step on the same documents
    for rep in range(reps + 1):
        order = (base, other) if rep % 2 == 0 else (other, base)  # neither side always runs first
        elapsed = {base: [], other: []}  # (wall, CPU) seconds per batch
        for features in data:  # per batch, both sides: a change of the machine's speed hits both alike
            for side in order:
                elapsed[side].append(timed_with_cpu(lambda side=side, features=features: train_step(side, features)))
        if rep:
            for side in steps:
                steps[side].append(sum(wall for wall, _ in elapsed[side]) / len(data))
                cpu[side].append(sum(seconds for _, seconds in elapsed[side]) / len(data))
            paired += [a[0] / b[0] for a, b in zip(elapsed[other], elapsed[base])]
            paired_cpu += [a[1] / b[1] for a, b in zip(elapsed[other], elapsed[base])]
    return {
        f"{other}_step_s": median_of(steps[other]), f"{base}_step_s": median_of(steps[base]),
        f"{other}_step_cpu_s": median_of(cpu[other]), f"{base}_step_cpu_s": median_of(cpu[base]),
        f"{other}_step_ratio": median_of(paired), f"{other}_step_ratio_quartiles": quartiles(paired),
        f"{other}_step_ratios_per_rep": [a / b for a, b in zip(steps[other], steps[base])],
        # batches that differ in kind (VaeDiff's synthetic pairs follow their related pairs) spread the paired ratios
        # apart: then the ratio of the mean steps is what an epoch costs
        f"{other}_mean_step_ratio": median_of([a / b for a, b in zip(steps[other], steps[base])]),
        f"{other}_step_cpu_ratio": median_of(paired_cpu), f"{other}_step_cpu_ratio_quartiles": quartiles(paired_cpu),
    }


def quartiles(samples: list[float]) -> list[float]:
    return statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3


def loss_step_ratio(backbone: str, loss: str, batches: int, reps: int, device=None, dtype=None, name: str = "atlop") -> dict:
    """A training step with loss `loss` against the same step with ATL, as train() runs them
    (collate, forward, loss, backward, clipping, AdamW step). Each side is built from its
    Re-DocRED-mini config (configs/redocred_mini/minilm_<loss>.yaml, else minilm_atl.yaml with the
    loss swapped): its loss keywords, the loss's training statistics from that training split
    (SSR-PU's priors, AMTL's label spaces, as the trainer computes them) and a model with as many
    outputs as the loss asks for (AMTL: 100). Both sides run with the token budget of the loss's
    config on CPU (none on a GPU), so they see the same parts. The sides alternate per batch
    and swap order every repetition; also the loss alone (forward + backward on one batch's fixed
    logits and, for a loss that asks, pair features)."""
    import torch

    from docre.config import TrainConfig, load_config
    from docre.data import load_rel2id
    from docre.data.collate import collate, stack_labels
    from docre.losses import build_loss, output_size, training_statistics, wants_features
    from docre.models import build_model_from_config, load_tokenizer
    from docre.models.output import PairFeatures, logits_of
    from docre.trainer import _optimizer_step, build_optimizer, linear_warmup_decay

    device, dtype = device or torch.device("cpu"), dtype or torch.float32
    tokenizer = load_tokenizer(backbone)

    def config_of(loss_name: str):
        own = ROOT / f"configs/redocred_mini/minilm_{loss_name}.yaml"
        path, swap = (own, []) if own.is_file() else (ROOT / "configs/redocred_mini/minilm_atl.yaml", [f"loss.name={loss_name}"])
        stage3 = ["vaediff.augment_from_epoch=0"] if name == "vaediff" else []  # its step with synthetic pairs
        return path, load_config(path, [*swap, f"model.backbone={backbone}", f"model.name={name}", *stage3])

    loss_path, loss_cfg = config_of(loss)
    _, atl_cfg = config_of("atl")
    rel2id = load_rel2id("docred", str(ROOT / "data/docred/rel2id.json"))
    rel_ids = sorted(rel2id, key=rel2id.get)  # in column order
    split = training_split(tokenizer, rel2id)
    train_labels = stack_labels(split.features, len(rel2id))  # [P_total, C], every candidate pair of the split
    budget = loss_cfg.train.max_batch_tokens if device.type == "cpu" else 0
    data = training_batches(tokenizer, rel2id, batches, split)

    sides = {}
    for side, cfg in (("atl", atl_cfg), ("loss", loss_cfg)):
        loss_fn = build_loss(**{**cfg.loss, **training_statistics(cfg.loss, train_labels, rel_ids)})
        torch.manual_seed(cfg.seed)
        model = build_model_from_config(cfg.model, tokenizer, output_size(loss_fn, len(rel2id))).to(device)
        optimizer = build_optimizer(model, TrainConfig())
        sides[side] = (model, loss_fn, optimizer, linear_warmup_decay(optimizer, 0, 10**6),
                       torch.amp.GradScaler(device.type, enabled=dtype == torch.float16))

    def train_step(side, features):
        model, loss_fn, optimizer, scheduler, scaler = sides[side]
        _optimizer_step(model, loss_fn, optimizer, scheduler, scaler, [features], len(rel2id), tokenizer.pad_token_id,
                        device, dtype, 1.0, budget, model.window)

    paired = paired_steps(train_step, "atl", "loss", data, reps)

    def loss_alone(side) -> float:
        """Median seconds of the loss's forward + backward on the first batch's fixed model output."""
        model, loss_fn, *_ = sides[side]
        batch = collate(data[0], len(rel2id), tokenizer.pad_token_id).to(device)
        model.eval()
        with torch.no_grad():
            output = model(batch, features=True) if wants_features(loss_fn) else (model(batch), None)
        model.train()
        logits, features = logits_of(output[0]).float(), output[1]
        extra = {}
        if features is not None:
            def leaf(x):
                return None if x is None else x.detach().requires_grad_()
            extra["features"] = PairFeatures(leaf(features.head), leaf(features.tail), features.block_size, leaf(features.vector))
        logits.requires_grad_()
        return median_of([timed(lambda: loss_fn(logits, batch.labels, **extra).backward()) for _ in range(11)][1:])

    return paired | {
        "loss": loss, "loss_config": str(loss_path.relative_to(ROOT)),
        "loss_keywords": {k: v for k, v in loss_cfg.loss.items() if k != "name"},
        "loss_outputs": output_size(sides["loss"][1], len(rel2id)),
        "loss_alone_s": loss_alone("loss"), "atl_alone_s": loss_alone("atl"),
        "pairs_per_batch": sum(len(f.hts) for features in data for f in features) / len(data),
        "max_batch_tokens": budget, "batches": len(data), "reps": reps,
    }


# The module that sets a model's floor beyond ATLOP's head (--against-atlop's breakdown of the step): model -> (what
# it is, the module). A ModuleList runs its layers in sequence. Other models: encoder and rest only.
OWN_MODULES = {
    "ttm_re": ("memory module", lambda model: model.memory),  # the token-memory transformer over the pairs
    "kd_docre": ("axial attention", lambda model: model.axial_layers),  # over every cell of the n x n pair map
    "vaediff": ("axial attention", lambda model: model.axial_layers),
}


def model_step_ratio(backbone: str, name: str, batches: int, reps: int, device=None, dtype=None) -> dict:
    """A training step of model `name` against ATLOP's, as train() runs them (collate, forward, loss,
    backward, clipping, AdamW step), alternating on the same batches (`paired_steps`), both with ATGL
    (alpha 16.5) and whole batches (no token budget: TTM-RE's official layout needs them, and VaeDiff's
    contrastive term couples a batch's pairs). vaediff's step is its stage 3: the vaediff loss (its
    classification term ATGL, as on the ATLOP side, and its contrastive term) over the real pairs and
    the synthetic ones, 2 per related pair (label column 0 not 1), sampled by an augmenter of the official
    sizes with random weights. Also each side's peak memory in a step (its training state plus what a
    step adds at its peak, `step_peak_mb`), and where the named model's step goes: the encoder's forward
    and backward (the same encoder as ATLOP's), its own module (OWN_MODULES, on the inputs it gets in the
    batch's forward), the sampling, and the rest; for vaediff one stage-2 epoch (`stage2_epoch`)."""
    import torch

    from docre.config import TrainConfig, VaeDiffConfig
    from docre.data.collate import collate
    from docre.losses import build_loss
    from docre.models.atlop import encode_batch
    from docre.trainer import _optimizer_step, _synthetic_pairs, build_optimizer, linear_warmup_decay

    device, dtype = device or torch.device("cpu"), dtype or torch.float32
    sides, held, augment = {}, {"atlop": [], "model": []}, None  # held: modules a side keeps beside its model
    for side, model_name in (("atlop", "atlop"), ("model", name)):
        torch.manual_seed(66)
        model, _, loss_fn, tokenizer, rel2id = build(backbone, model_name)
        model = model.to(device)
        optimizer = build_optimizer(model, TrainConfig())
        sides[side] = (model, loss_fn, optimizer, linear_warmup_decay(optimizer, 0, 10**6),
                       torch.amp.GradScaler(device.type, enabled=dtype == torch.float16))
    model = sides["model"][0]
    if name == "vaediff":
        from docre.augmenter import Augmenter, AugmenterSettings

        stage3 = VaeDiffConfig()  # copies 2, guidance 0.1: the official stage 3
        augmenter = Augmenter(AugmenterSettings(model.encoder.config.hidden_size, len(rel2id))).to(device).eval()
        held["model"].append(augmenter)
        augment = partial(_synthetic_pairs, augmenter, stage3.copies, stage3.guidance)
        loss_fn = build_loss("vaediff", classification="atgl", alpha=16.5, contrastive_alone=False)
        sides["model"] = (model, loss_fn, *sides["model"][2:])
    split = training_split(tokenizer, rel2id)
    data = training_batches(tokenizer, rel2id, batches, split)

    def train_step(side, features):
        model, loss_fn, optimizer, scheduler, scaler = sides[side]
        _optimizer_step(model, loss_fn, optimizer, scheduler, scaler, [features], len(rel2id), tokenizer.pad_token_id,
                        device, dtype, 1.0, 0, model.window, augment=augment if side == "model" else None)

    figures = paired_steps(train_step, "atlop", "model", data, reps)
    for side in sides:  # memory after the timing: AdamW's moments exist from the first step on
        added = [step_peak_mb(lambda side=side, features=features: train_step(side, features), device) for features in data]
        figures |= {f"{side}_state_mb": state_mb(sides[side][2], *held[side]),
                    f"{side}_step_added_mb": None if None in added else max(added)}
    if figures["model_step_added_mb"] is not None:
        figures["model_peak_ratio"] = ((figures["model_state_mb"] + figures["model_step_added_mb"])
                                       / (figures["atlop_state_mb"] + figures["atlop_step_added_mb"]))
        figures["model_step_added_ratio"] = figures["model_step_added_mb"] / figures["atlop_step_added_mb"]

    # where the named model's step goes, per batch (medians over repetitions), then the mean over the batches
    batches_on_device = [collate(features, len(rel2id), tokenizer.pad_token_id).to(device) for features in data]
    parts = {"encoder": [median_times(backward_of(lambda b=b: encode_batch(model, b), device, dtype), reps)
                         for b in batches_on_device]}
    if name in OWN_MODULES:
        label, module_of = OWN_MODULES[name]
        module = module_of(model)
        parts[label] = []
        for b in batches_on_device:
            inputs = module_inputs(model, b, module, device, dtype)
            parts[label].append(median_times(backward_of(lambda inputs=inputs: run_module(module, inputs), device, dtype), reps))
    if augment is not None:
        parts["sampling"] = [median_times(lambda b=b: augment(b.labels), reps) for b in batches_on_device]
    figures["parts_s"] = {part: sum(wall for wall, _ in times) / len(times) for part, times in parts.items()}
    figures["parts_cpu_s"] = {part: sum(cpu for _, cpu in times) / len(times) for part, times in parts.items()}
    for clock in ("", "_cpu"):
        figures[f"model_rest{clock}_s"] = figures[f"model_step{clock}_s"] - sum(figures[f"parts{clock}_s"].values())
        figures[f"atlop_rest{clock}_s"] = figures[f"atlop_step{clock}_s"] - figures[f"parts{clock}_s"]["encoder"]  # same encoder
    related = sum(int((b.labels[:, 0] != 1).sum()) for b in batches_on_device) / len(data)
    if name == "vaediff":
        figures |= stage2_epoch(split, len(rel2id), model.encoder.config.hidden_size, device, reps)
        figures["synthetic_per_batch"] = stage3.copies * related
    return figures | {
        "pairs_per_batch": sum(b.labels.size(0) for b in batches_on_device) / len(data), "related_per_batch": related,
        "tokens_per_batch": sum(int(b.attention_mask.sum()) for b in batches_on_device) / len(data),
        "batches": len(data), "reps": reps,
    }


def median_times(function, reps: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `function()` over `reps` calls after a warm-up call."""
    samples = [timed_with_cpu(function) for _ in range(reps + 1)][1:]
    return median_of([wall for wall, _ in samples]), median_of([cpu for _, cpu in samples])


def backward_of(forward, device, dtype):
    """A function that runs `forward()` (tensors) under the step's autocast and backward from their sum."""
    from docre.utils import autocast

    def run():
        with autocast(device, dtype):
            outputs = forward()
        sum(output.float().sum() for output in outputs).backward()

    return run


def module_inputs(model, batch, module, device, dtype) -> tuple:
    """The inputs `module` (a ModuleList: its first layer) gets in the model's forward on `batch`, as
    leaves that take gradients (the floating-point ones)."""
    import torch

    from docre.utils import autocast

    captured = []
    first = module[0] if isinstance(module, torch.nn.ModuleList) else module
    hook = first.register_forward_pre_hook(lambda _, inputs: captured.append(inputs))
    with torch.no_grad(), autocast(device, dtype):
        model(batch)
    hook.remove()
    return tuple(x.detach().requires_grad_(x.is_floating_point()) for x in captured[0])


def run_module(module, inputs: tuple) -> tuple:
    """`module(*inputs)` as a tuple of tensors; a ModuleList's layers in sequence, each with the same extra
    inputs (KD-DocRE's axial layers: the pair map, then the entity mask)."""
    import torch

    if not isinstance(module, torch.nn.ModuleList):
        outputs = module(*inputs)
        return outputs if isinstance(outputs, tuple) else (outputs,)
    x = inputs[0]
    for layer in module:
        x = layer(x, *inputs[1:])
    return (x,)


def state_mb(optimizer, *modules) -> float:
    """MiB of a training side's state: the optimizer's parameters, their gradients and its state (AdamW's
    moments), plus the weights of `modules` (VaeDiff's augmenter)."""
    import torch

    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    tensors = [*parameters, *(p.grad for p in parameters if p.grad is not None),
               *(t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)),
               *(p for module in modules for p in module.parameters())]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def step_peak_mb(function, device) -> float | None:
    """MiB that `function()` adds at its peak to what the process holds before it: on CUDA the allocator's
    peak; on CPU the resident memory's, with the heap's free pages handed back first and the high-water
    mark reset (docre.utils.reset_peak_rss); None where the mark cannot be reset."""
    import torch

    from docre.utils import peak_rss_mb, release_free_memory, reset_peak_rss

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        function()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    release_free_memory()
    if not reset_peak_rss():
        function()
        return None
    before = peak_rss_mb()
    function()
    return peak_rss_mb() - before


def stage2_epoch(split, num_classes: int, hidden_size: int, device, reps: int) -> dict:
    """Seconds of one stage-2 epoch after the warm-up (the VAE's and the prior's updates, the EMA, the epoch's
    checkpoint; `augmenter.fit_augmenter`) over as many related pairs as the training split has, with random
    features in place of the stage-1 model's (the cost does not depend on their values)."""
    import torch

    from docre.augmenter import Augmenter, AugmenterSettings, fit_augmenter
    from docre.config import VaeDiffConfig
    from docre.data.collate import stack_labels

    labels = stack_labels(split.features, num_classes)  # [P_total, C]
    pairs = torch.tensor([len(f.hts) for f in split.features])  # [D]
    docs = torch.repeat_interleave(torch.arange(len(split.features)), pairs)  # [P_total]: each pair's document
    related = labels[:, 0] != 1  # [P_total]
    torch.manual_seed(0)
    features = torch.randn(int(related.sum()), hidden_size, device=device)  # [N, H]
    augmenter = Augmenter(AugmenterSettings(hidden_size, num_classes)).to(device)
    one_epoch = VaeDiffConfig(augmenter_epochs=1, augmenter_warmup_epochs=0)

    def epoch():
        with tempfile.TemporaryDirectory() as out:
            fit_augmenter(augmenter, features, labels[related].to(device), docs[related], out, one_epoch, 66)

    wall, _ = median_times(epoch, max(reps - 1, 1))
    return {"stage2_epoch_s": wall, "stage2_pairs": int(related.sum()), "stage2_epochs": VaeDiffConfig().augmenter_epochs}


def attention_paths(backbone: str, batches: int, reps: int, device=None, dtype=None, name: str = "atlop") -> dict:
    """`step_ratios` on docre's fast attention path, then on the general path forced on the same
    encoder (models/long_input.py: every layer runs the encoder's own eager attention, the pooled
    layers return their whole maps); each against the same SDPA encoder's forward+backward."""
    fast = step_ratios(backbone, batches, reps, device, dtype, name)
    general = step_ratios(backbone, batches, reps, device, dtype, name, general_attention=True)
    return {f"fast_{k}": v for k, v in fast.items()} | {f"general_{k}": v for k, v in general.items()}


def inference_ratio(backbone: str, docs: int, reps: int, device=None, dtype=None, name: str = "atlop") -> dict:
    """Prediction per document (eval batches of 8, as evaluation runs) vs the encoder's forward."""
    import torch

    from docre.data import load_split
    from docre.data.collate import collate
    from docre.inference import predict_logits
    from docre.utils import autocast

    device, dtype = device or torch.device("cpu"), dtype or torch.float32
    model, encoder, _, tokenizer, rel2id = build(backbone, name)
    model, encoder = model.to(device), encoder.to(device).eval()
    split = load_split("dev", "docred", f"{DEV}[400:{400 + docs}]", DATA_DIR, tokenizer, rel2id, "*", 1024)
    features = split.features
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))  # the batching predict_logits uses
    batches = [tuple(t.to(device) for t in encoder_inputs(
        collate([features[i] for i in order[s : s + 8]], len(rel2id), tokenizer.pad_token_id), model))
        for s in range(0, len(order), 8)]

    @torch.no_grad()
    def encoder_only():
        for ids, mask in batches:
            with autocast(device, dtype):
                encoder(input_ids=ids, attention_mask=mask)

    def ours_run():  # the whole set in one call, as evaluation runs it (no token cap: the CPU's is for memory)
        predict_logits(model, features, len(rel2id), tokenizer.pad_token_id, 8, device, dtype, show=False)

    ours, theirs = [], []
    for rep in range(reps + 1):
        # which side goes first alternates, so a drift of the machine's speed does not favour one
        if rep % 2:
            o, t = timed(ours_run), timed(encoder_only)
        else:
            t, o = timed(encoder_only), timed(ours_run)
        if rep:
            ours.append(o / len(features))
            theirs.append(t / len(features))
    return {"infer_doc_s": median_of(ours), "encoder_infer_doc_s": median_of(theirs),
            "infer_ratio": median_of([a / b for a, b in zip(ours, theirs)])}


def memory_options(backbone: str, reps: int, name: str = "atlop") -> dict:
    """Time cost of the memory switches (gradient checkpointing, small pair chunks), as step ratios."""
    import torch

    from docre.data.collate import collate
    from docre.models.output import logits_of

    results = {}
    switches = (("default", {}), ("checkpointing", {"gradient_checkpointing": True}), ("pair_chunk_32", {"pair_chunk_size": 32}))
    for switch, options in switches:
        model, _, loss_fn, tokenizer, rel2id = build(backbone, name, **options)
        model.train()
        data = [collate(f, len(rel2id), tokenizer.pad_token_id) for f in training_batches(tokenizer, rel2id, 2)]
        torch.manual_seed(0)
        times = []
        for rep in range(reps + 1):
            elapsed = sum(timed(lambda b=b, model=model, loss_fn=loss_fn: loss_fn(logits_of(model(b)), b.labels).backward())
                          for b in data)
            if rep:
                times.append(elapsed / len(data))
        results[switch] = median_of(times)
    return {"checkpointing_step_ratio": results["checkpointing"] / results["default"],
            "pair_chunk_32_step_ratio": results["pair_chunk_32"] / results["default"]}


def training_run_memory(backbone: str, scratch: Path, steps: int, quick: bool, name: str = "atlop") -> dict:
    """Peak resident memory of a real `train.py` run (training steps plus a dev evaluation)."""
    dev = f"{DEV}[400:420]" if quick else f"{DEV}[400:]"
    config, stages = "minilm_atgl.yaml", []
    if name == "vaediff":  # its three stages with its own loss: stage 2 cut to 2 epochs, stage 3 augmented throughout
        config = "minilm_vaediff_pemscl.yaml"
        stages = ["vaediff.augmenter_epochs=2", "vaediff.augmenter_warmup_epochs=1", "vaediff.augment_from_epoch=0"]
    command = [sys.executable, str(ROOT / "train.py"), str(ROOT / "configs/redocred_mini" / config), *stages,
               f"model.backbone={backbone}", f"model.name={name}", f"train.max_steps={steps}", f"data.dev_file={dev}",
               "data.test_file=",
               f"output_dir={scratch / 'runs'}", "run_name=benchmark", "train.overwrite=true", "train.num_threads=2",
               f"data.cache_dir={scratch / 'cache'}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"train.py failed: {result.stderr[-2000:]}")
    results = json.loads((scratch / "runs" / "benchmark" / "results.json").read_text())
    return {"peak_rss_mb": results["peak_rss_mb"], "run_seconds_per_step": results["seconds_per_step"], "run_steps": steps}


def long_document_step(encoder: str, gradient_checkpointing: bool, name: str = "atlop") -> dict:
    """One training step on a single document of at least 4,096 word-pieces (no truncation): a
    Re-DocRED document repeated, its entities' mentions repeated with it."""
    import torch

    from docre.data.collate import collate
    from docre.data.docred import parse_json_list, read_bytes
    from docre.data.feature import featurize
    from docre.models.output import logits_of
    from docre.utils import peak_rss_mb

    with tempfile.TemporaryDirectory() as scratch:
        backbone = backbone_folder(encoder, Path(scratch))
        model, _, loss_fn, tokenizer, rel2id = build(backbone, name, gradient_checkpointing=gradient_checkpointing)
        base = parse_json_list(Path(DATA_DIR) / DEV, read_bytes(Path(DATA_DIR) / DEV))[0]
        doc = {"title": "long", "sents": [], "vertexSet": [[] for _ in base["vertexSet"]], "labels": base["labels"]}
        while True:
            shift = len(doc["sents"])
            doc["sents"] += base["sents"]
            for entity, mentions in zip(doc["vertexSet"], base["vertexSet"]):
                entity += [dict(m, sent_id=m["sent_id"] + shift) for m in mentions]
            feature = featurize([doc], tokenizer, rel2id, "*", 0)[0][0]
            if len(feature.input_ids) >= 4096:
                break
        batch = collate([feature], len(rel2id), tokenizer.pad_token_id)
        model.train()
        before = peak_rss_mb()
        times = []
        for _ in range(2):
            times.append(timed(lambda: loss_fn(logits_of(model(batch)), batch.labels).backward()))
        return {"tokens": len(feature.input_ids), "pairs": len(feature.hts), "step_s": times[-1],
                "finite": bool(all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)),
                "peak_rss_mb": peak_rss_mb(), "peak_rss_before_mb": before}


def run_part(arguments: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"benchmark part failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(figures: dict) -> None:
    lines = [
        f"docre benchmark: model {figures['model']}, encoder {figures['encoder']}, {figures['device']} {figures['precision']}, "
        f"{figures['threads']} threads, "
        f"{figures['cpu']} ({figures['cores']} cores), "
        f"torch {figures['torch']}, transformers {figures['transformers']}",
        f"training step      {figures['train_step_s']:.3f} s   encoder fwd+bwd {figures['encoder_train_s']:.3f} s   "
        f"ratio {figures['train_ratio']:.2f}   "
        f"({figures['pairs_per_batch']:.0f} pairs, {figures['tokens_per_batch']:.0f} tokens per batch)",
        f"inference per doc  {figures['infer_doc_s']:.4f} s  encoder forward {figures['encoder_infer_doc_s']:.4f} s  "
        f"ratio {figures['infer_ratio']:.2f}",
        f"preprocessing 500 docs: cold {figures['prep_cold_s_per_500']:.2f} s, cached {figures['prep_cached_s_per_500']:.2f} s",
    ]
    if "peak_rss_mb" in figures:
        lines.append(f"peak memory of a training run {figures['peak_rss_mb']:.0f} MiB "
                     f"({figures['run_steps']} steps + dev evaluation)")
    if "peak_gpu_mb" in figures:
        lines.append(f"peak GPU memory {figures['peak_gpu_mb']:.0f} MiB")
    if "checkpointing_step_ratio" in figures:
        lines.append(f"gradient checkpointing costs x{figures['checkpointing_step_ratio']:.2f} per step, "
                     f"pair chunks of 32 x{figures['pair_chunk_32_step_ratio']:.2f}")
    if "long_doc_tokens" in figures:
        for prefix, label in (("long_doc", "plain"), ("long_doc_checkpointing", "gradient checkpointing")):
            lines.append(f"{figures[prefix + '_tokens']}-token document ({figures[prefix + '_pairs']} pairs), {label}: "
                         f"step {figures[prefix + '_step_s']:.2f} s, peak {figures[prefix + '_peak_rss_mb']:.0f} MiB, "
                         f"finite gradients {figures[prefix + '_finite']}")
    print("\n".join(lines))


def report_attention_paths(figures: dict) -> None:
    print(f"docre benchmark: model {figures['model']}, encoder {figures['encoder']}, {figures['device']} "
          f"{figures['precision']}, {figures['threads']} threads, {figures['cpu']} ({figures['cores']} cores)")
    for path in ("fast", "general"):
        print(f"{path:8} path: training step {figures[path + '_train_step_s']:.3f} s   encoder fwd+bwd "
              f"{figures[path + '_encoder_train_s']:.3f} s   ratio {figures[path + '_train_ratio']:.2f}")
    print(f"general / fast: x{figures['general_train_ratio'] / figures['fast_train_ratio']:.2f} per step "
          f"({figures['fast_pairs_per_batch']:.0f} pairs, {figures['fast_tokens_per_batch']:.0f} tokens per batch)")


def report_loss(figures: dict) -> None:
    print(f"docre benchmark: model {figures['model']}, encoder {figures['encoder']}, {figures['device']} "
          f"{figures['precision']}, {figures['threads']} threads, {figures['cpu']} ({figures['cores']} cores), "
          f"torch {figures['torch']}, transformers {figures['transformers']}")
    keywords = ", ".join(f"{k}={v}" for k, v in figures["loss_keywords"].items())
    print(f"loss {figures['loss']}({keywords}) from {figures['loss_config']}, {figures['loss_outputs']} outputs per pair, "
          f"{figures['pairs_per_batch']:.0f} pairs per batch, max_batch_tokens {figures['max_batch_tokens']}, "
          f"{figures['batches']} batches x {figures['reps']} repetitions")
    low, _, high = figures["loss_step_ratio_quartiles"]
    print(f"training step  {figures['loss']} {figures['loss_step_s']:.3f} s   atl {figures['atl_step_s']:.3f} s   "
          f"ratio {figures['loss_step_ratio']:.3f} (median of {figures['batches'] * figures['reps']} paired steps, "
          f"quartiles {low:.3f}-{high:.3f}; per repetition "
          + ", ".join(f"{r:.3f}" for r in figures["loss_step_ratios_per_rep"]) + ")")
    if figures["device"] == "cpu":  # on a GPU the host's CPU time is not the step's work
        low, _, high = figures["loss_step_cpu_ratio_quartiles"]
        print(f"CPU time of the process, same steps: ratio {figures['loss_step_cpu_ratio']:.3f} "
              f"(quartiles {low:.3f}-{high:.3f})")
    print(f"loss alone (forward + backward, one batch)  {figures['loss']} {figures['loss_alone_s'] * 1e3:.1f} ms   "
          f"atl {figures['atl_alone_s'] * 1e3:.1f} ms")


def report_model(figures: dict) -> None:
    print(f"docre benchmark: model {figures['model']} against atlop, encoder {figures['encoder']}, {figures['device']} "
          f"{figures['precision']}, {figures['threads']} threads, {figures['cpu']} ({figures['cores']} cores), "
          f"torch {figures['torch']}, transformers {figures['transformers']}")
    print(f"{figures['pairs_per_batch']:.0f} pairs ({figures['related_per_batch']:.0f} related) and "
          f"{figures['tokens_per_batch']:.0f} tokens per batch"
          + (f", {figures['synthetic_per_batch']:.0f} synthetic pairs" if "synthetic_per_batch" in figures else "")
          + f", whole batches, {figures['batches']} batches x {figures['reps']} repetitions")
    low, _, high = figures["model_step_ratio_quartiles"]
    print(f"training step  {figures['model']} {figures['model_step_s']:.3f} s   atlop {figures['atlop_step_s']:.3f} s   "
          f"ratio {figures['model_step_ratio']:.3f} (median of {figures['batches'] * figures['reps']} paired steps, "
          f"quartiles {low:.3f}-{high:.3f})")
    print(f"ratio of the mean steps {figures['model_mean_step_ratio']:.3f} (median of the repetitions' "
          + ", ".join(f"{r:.3f}" for r in figures["model_step_ratios_per_rep"]) + ")")
    if figures["device"] == "cpu":  # on a GPU the host's CPU time is not the step's work
        low, _, high = figures["model_step_cpu_ratio_quartiles"]
        print(f"CPU time of the process, same steps: ratio {figures['model_step_cpu_ratio']:.3f} "
              f"(quartiles {low:.3f}-{high:.3f})")
    if "model_peak_ratio" in figures:
        print(f"peak memory in a step  {figures['model']} {figures['model_state_mb']:.0f} + "
              f"{figures['model_step_added_mb']:.0f} MiB   atlop {figures['atlop_state_mb']:.0f} + "
              f"{figures['atlop_step_added_mb']:.0f} MiB (training state + what the largest step adds)   "
              f"ratio {figures['model_peak_ratio']:.2f} (step alone {figures['model_step_added_ratio']:.2f})")
    for clock, label in (("", "wall"), ("_cpu", "CPU")):
        parts = ", ".join(f"{part} {seconds:.3f}" for part, seconds in figures[f"parts{clock}_s"].items())
        print(f"{label:4} s: {figures['model']} step {figures[f'model_step{clock}_s']:.3f} = {parts}, rest "
              f"{figures[f'model_rest{clock}_s']:.3f}; atlop step {figures[f'atlop_step{clock}_s']:.3f} = encoder, rest "
              f"{figures[f'atlop_rest{clock}_s']:.3f}")
    if "stage2_epoch_s" in figures:
        print(f"stage 2: one epoch after the warm-up {figures['stage2_epoch_s']:.2f} s over {figures['stage2_pairs']} "
              f"related pairs ({figures['stage2_epochs']} epochs in a run)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
