"""Training, evaluation and prediction: one `train(cfg)` that reads top to bottom.

The same loop runs every dataset, loss and backbone, on CPU, one GPU or several (torchrun).
Evaluation and prediction are separate functions so that `evaluate.py` and the predictor reuse
them without training.
"""

import contextlib
import math
import shutil
import signal
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from docre import distributed
from docre.checkpoint import find_training_state, load_training_state, load_weights, save_training_state, save_weights
from docre.config import Config, TrainConfig, save_config, to_dict
from docre.data import FIXED_RELATIONS, Split, load_rel2id, load_rel_names, load_split, read_split
from docre.data.collate import collate, encoded_tokens, split_by_tokens, stack_labels
from docre.data.feature import Feature, probe_tokenizer
from docre.errors import DocreError
from docre.losses import build_loss
from docre.losses.common import tune_threshold_offset
from docre.metrics import breakdown, score
from docre.models import build_model, load_tokenizer
from docre.utils import (
    append_jsonl,
    atomic_save_safetensors,
    atomic_write_json,
    autocast,
    logger,
    peak_rss_mb,
    resolve_device,
    resolve_precision,
    set_seed,
    setup_logging,
    release_free_memory,
    write_environment,
)


class Interrupted(DocreError):
    """Training stopped by SIGINT/SIGTERM; the CLI exits with 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


def train(cfg: Config) -> dict:
    """Train a model, keep the best dev checkpoint, score dev and test with it.

    Returns:
        The final results (also in <run dir>/results.json): dev and test scores of the best
        checkpoint, step counts, seconds per step, peak memory.
    """
    # ---- processes, device, run directory -----------------------------------------------
    wall_start = time.perf_counter()
    rank, world, device = distributed.init_distributed(resolve_device(cfg.train.device))
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    dtype = resolve_precision(cfg.train.precision, device)
    run_dir = Path(cfg.train.resume) if cfg.train.resume else Path(cfg.output_dir) / cfg.run_name
    resume_state = _prepare_run_dir(run_dir, cfg, rank)
    setup_logging(run_dir / "train.log", rank)
    if resume_state is not None and rank == 0:
        _warn_changed_settings(run_dir, cfg)  # before config.yaml is rewritten below
    set_seed(cfg.seed)
    if rank == 0:
        save_config(cfg, run_dir / "config.yaml")
        write_environment(run_dir / "environment.json", {"device": str(device), "world_size": world},
                          resumed=resume_state is not None)

    # ---- data ------------------------------------------------------------------------------
    data = cfg.data
    tokenizer = load_tokenizer(cfg.model.backbone, cfg.model.revision, cfg.model.trust_remote_code)
    needs_train_relations = not data.rel2id and data.dataset not in FIXED_RELATIONS
    rel2id = load_rel2id(data.dataset, data.rel2id, read_split(data.dataset, data.train_file, data.dir, None, True)[2] if needs_train_relations else None)
    featurise = partial(
        load_split, dataset=data.dataset, data_dir=data.dir, tokenizer=tokenizer, rel2id=rel2id,
        marker=cfg.model.marker, max_seq_length=cfg.model.max_seq_length, cache_dir=data.cache_dir,
    )
    train_split = featurise("train", spec=data.train_file, require_labels=True)
    pairless = sum(len(f.hts) == 0 for f in train_split.features)
    if pairless:  # nothing to learn from, and a batch of only such documents has no pairs at all
        logger.warning("train: %d documents with no candidate pair (fewer than two entities) are left out of training", pairless)
        train_split.features = [f for f in train_split.features if len(f.hts)]
    dev_split = featurise("dev", spec=data.dev_file) if data.dev_file else None
    test_split = featurise("test", spec=data.test_file) if data.test_file else None
    ign_docs = read_split(data.dataset, data.ign_train_file, data.dir, None)[2] if data.ign_train_file else train_split.docs
    rel_names = load_rel_names(data.rel_info)  # read now: a bad file fails before training, not after
    if rank == 0:
        atomic_write_json(run_dir / "rel2id.json", rel2id)

    # ---- model, loss, optimizer -----------------------------------------------------------
    info = probe_tokenizer(tokenizer, cfg.model.marker)
    model = build_model(
        cfg.model.backbone, len(rel2id), info.start_ids, info.end_ids, cfg.model.layer_pooling,
        cfg.model.emb_size, cfg.model.block_size, cfg.model.window, cfg.model.pair_chunk_size,
        cfg.model.gradient_checkpointing, cfg.model.revision, cfg.model.trust_remote_code,
    ).to(device)
    loss_fn = build_loss(**cfg.loss)
    optimizer = build_optimizer(model, cfg.train)
    micro_batches_per_epoch = len(train_split.features) // (cfg.train.batch_size * world)
    steps_per_epoch = micro_batches_per_epoch // cfg.train.grad_accum
    if steps_per_epoch == 0:
        raise DocreError(
            f"{data.train_file}: {len(train_split.features)} training documents make no full step of "
            f"batch_size {cfg.train.batch_size} x grad_accum {cfg.train.grad_accum} x {world} processes"
        )
    total_steps = cfg.train.max_steps or steps_per_epoch * cfg.train.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = linear_warmup_decay(optimizer, int(cfg.train.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    counters = {"step": 0, "epoch": 0, "epoch_step": 0, "best_f1": None, "best_step": None,
                "nonfinite_in_row": 0, "skipped_steps": 0, "train_seconds": 0.0, "wall_seconds": 0.0}
    if resume_state is not None:
        counters = load_training_state(resume_state, model, optimizer, scheduler, scaler)
        _truncate_metrics(run_dir / "metrics.jsonl", counters["step"])
        logger.info("resumed from %s at step %d (epoch %d)", resume_state, counters["step"], counters["epoch"])
    wall_before = counters.get("wall_seconds", 0.0)  # wall time of the earlier processes of a resumed run
    raw_model = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    wandb_run = _start_wandb(cfg, run_dir) if rank == 0 and cfg.log.wandb else None
    logger.info(
        "%d train documents, %d optimizer steps (%d per epoch), effective batch %d documents "
        "(%d per process x %d processes x %d accumulation), %s, %s",
        len(train_split.features), total_steps, steps_per_epoch, cfg.train.batch_size * world * cfg.train.grad_accum,
        cfg.train.batch_size, world, cfg.train.grad_accum, device, str(dtype).replace("torch.", ""),
    )

    def evaluate_split(split: Split, tune: bool = False) -> tuple[dict, list[dict], list[torch.Tensor], dict]:
        """Logits of every document (sharded over processes), decoded and scored. With `tune`, a
        loss that has decision parameters (e.g. BCE's global threshold) first fits them to this
        split; they are returned as the last item."""
        mine = list(range(rank, len(split.features), world))
        logits = predict_logits(raw_model, [split.features[i] for i in mine], len(rel2id), tokenizer.pad_token_id or 0,
                                cfg.eval.batch_size, device, dtype, desc=split.name, show=rank == 0,
                                max_tokens=cfg.eval.max_batch_tokens)
        ordered: list = [None] * len(split.features)
        for indices, part in zip(distributed.gather(mine), distributed.gather(logits)):
            for i, doc_logits in zip(indices, part):
                ordered[i] = doc_logits
        decode_params = {}
        if tune and hasattr(loss_fn, "tune_decode"):
            decode_params = loss_fn.tune_decode(torch.cat(ordered), stack_labels(split.features, len(rel2id)), cfg.eval.top_k)
        if tune and cfg.eval.tune_threshold_offset:  # the decode-side correction (docs/losses.md)
            loss_fn.th_offset = tune_threshold_offset(torch.cat(ordered), stack_labels(split.features, len(rel2id)), cfg.eval.top_k)
            decode_params = {"th_offset": loss_fn.th_offset}
        predictions = decode_predictions(split.features, ordered, loss_fn, cfg.eval.top_k, rel2id)
        scores = score(data.dataset, predictions, split.docs, ign_docs) if has_labels(split) else {}
        return scores, predictions, ordered, decode_params

    def evaluate_dev() -> None:
        scores, predictions, logits, decode_params = evaluate_split(dev_split, tune=True)
        row = {"type": "eval", "split": "dev", "step": counters["step"], "epoch": counters["epoch"], **scores, **decode_params}
        improved = counters["best_f1"] is None or scores["f1"] > counters["best_f1"]
        if improved:
            counters["best_f1"], counters["best_step"] = scores["f1"], counters["step"]
        if rank == 0:
            append_jsonl(run_dir / "metrics.jsonl", row)
            logger.info("dev step %d: %s%s", counters["step"], _short(scores), " (best)" if improved else "")
            if wandb_run is not None:
                wandb_run.log({f"dev/{k}": v for k, v in scores.items()}, step=counters["step"])
            if improved:
                save_weights(raw_model, run_dir / "best.safetensors")
                atomic_write_json(run_dir / "best.json", row)
                atomic_write_json(run_dir / "decode.json", decode_params)
                atomic_write_json(run_dir / "dev_predictions.json", predictions, indent=None)
                if cfg.eval.save_logits:
                    save_logits(run_dir / "dev_logits.safetensors", dev_split.features, logits)

    # ---- training loop -----------------------------------------------------------------------
    lengths = [len(f.input_ids) for f in train_split.features]
    eval_every = cfg.train.eval_every
    # the loss average of the current metrics.jsonl window travels with the checkpoint (exact rows after a resume)
    window_loss, window_steps = counters.pop("window", (0.0, 0))
    window_start = time.perf_counter()
    with _StopSignals(run_dir, counters) as stop:
        for epoch in range(counters["epoch"], epochs):
            batches = epoch_batches(lengths, cfg.train.batch_size * world, cfg.seed, epoch, cfg.train.length_bucketing)
            batches = batches[: steps_per_epoch * cfg.train.grad_accum]
            progress = tqdm(total=steps_per_epoch, initial=counters["epoch_step"], desc=f"epoch {epoch + 1}/{epochs}",
                            disable=rank != 0 or None, leave=False)
            for epoch_step in range(counters["epoch_step"], steps_per_epoch):
                started = time.perf_counter()
                group = batches[epoch_step * cfg.train.grad_accum : (epoch_step + 1) * cfg.train.grad_accum]
                micro = [[train_split.features[i] for i in batch[rank * cfg.train.batch_size : (rank + 1) * cfg.train.batch_size]] for batch in group]
                loss, grad_norm, finite = _optimizer_step(model, loss_fn, optimizer, scheduler, scaler, micro, len(rel2id),
                                                          tokenizer.pad_token_id or 0, device, dtype, cfg.train.max_grad_norm,
                                                          cfg.train.max_batch_tokens, raw_model.window)
                counters["step"] += 1
                counters["epoch_step"] = epoch_step + 1
                counters["train_seconds"] += time.perf_counter() - started
                counters["nonfinite_in_row"] = 0 if finite else counters["nonfinite_in_row"] + 1
                counters["skipped_steps"] += not finite
                if not finite:
                    logger.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", counters["step"], counters["nonfinite_in_row"])
                    if counters["nonfinite_in_row"] >= cfg.train.max_nonfinite_steps:
                        raise DocreError(
                            f"stopped at step {counters['step']}: {counters['nonfinite_in_row']} non-finite losses or gradients "
                            f"in a row (train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); lower the learning rate, "
                            f"use fp32 or bf16, or check the data. {_last_checkpoint(run_dir, resume_hint=False)}"
                        )
                else:
                    window_loss, window_steps = window_loss + loss, window_steps + 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}")
                if counters["step"] % cfg.train.log_every == 0 and rank == 0:
                    row = {"type": "train", "step": counters["step"], "epoch": epoch + counters["epoch_step"] / steps_per_epoch,
                           "loss": window_loss / window_steps if window_steps else None,  # None: every step skipped
                           "grad_norm": grad_norm if math.isfinite(grad_norm) else None,  # NaN/inf are not JSON
                           "lr_encoder": scheduler.get_last_lr()[0], "lr_head": scheduler.get_last_lr()[-1],
                           "seconds_per_step": (time.perf_counter() - window_start) / cfg.train.log_every,
                           "skipped_steps": counters["skipped_steps"]}
                    append_jsonl(run_dir / "metrics.jsonl", row)
                    if wandb_run is not None:
                        wandb_run.log({f"train/{k}": v for k, v in row.items() if k != "type"}, step=counters["step"])
                    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
                if counters["step"] % 10 == 0 and device.type == "cpu":
                    release_free_memory()  # bounds the heap's growth from batches of varying shapes
                last_step = counters["step"] >= total_steps
                end_of_epoch = epoch_step + 1 == steps_per_epoch
                if end_of_epoch:
                    counters["epoch"], counters["epoch_step"] = epoch + 1, 0
                if dev_split is not None and ((eval_every and counters["step"] % eval_every == 0)
                                              or (not eval_every and end_of_epoch) or last_step):
                    evaluate_dev()
                    window_start = time.perf_counter()
                interrupted = distributed.sum_across(stop.signal is not None, device) > 0
                save_due = cfg.train.save_every and counters["step"] % cfg.train.save_every == 0
                if rank == 0 and (interrupted or save_due or end_of_epoch or last_step):
                    counters["wall_seconds"] = wall_before + time.perf_counter() - wall_start
                    save_training_state(run_dir / "last", raw_model, optimizer, scheduler, scaler,
                                        counters | {"window": [window_loss, window_steps]})
                distributed.barrier()
                if interrupted:
                    progress.close()
                    name = signal.Signals(stop.signal or signal.SIGTERM).name  # other ranks: SIGTERM sent to rank 0
                    raise Interrupted(
                        f"interrupted by {name} after step {counters['step']}; checkpoint saved in {run_dir / 'last'}. "
                        f"Resume with: python train.py --resume {run_dir}", stop.signal or signal.SIGTERM
                    )
                if last_step:
                    break
            progress.close()
            if counters["step"] >= total_steps:
                break

    # ---- final scores with the best dev checkpoint -------------------------------------------
    if dev_split is None and rank == 0:
        save_weights(raw_model, run_dir / "best.safetensors")  # no model selection: the final weights
    distributed.barrier()
    load_weights(raw_model, run_dir / "best.safetensors")
    results = {"run_dir": str(run_dir), "best_step": counters["best_step"], "steps": counters["step"]}
    if dev_split is not None:
        best = _read_json(run_dir / "best.json")
        results["dev"] = {k: v for k, v in best.items() if k not in ("type", "split", "step", "epoch")}
        if has_labels(dev_split):  # intra/inter, frequent/long-tail, per relation (docs/metrics.md)
            dev_predictions = _read_json(run_dir / "dev_predictions.json")
            results.setdefault("breakdown", {})["dev"] = breakdown(data.dataset, dev_predictions, dev_split.docs, train_split.docs, rel_names)
        decode_params = _read_json(run_dir / "decode.json")
        if decode_params:  # the decision parameters tuned on dev with the best weights
            loss_fn = build_loss(**{**cfg.loss, **decode_params})
            results["decode"] = decode_params
    if test_split is not None:
        scores, predictions, logits, _ = evaluate_split(test_split)
        if rank == 0:
            atomic_write_json(run_dir / "test_predictions.json", predictions, indent=None)
            if cfg.eval.save_logits:
                save_logits(run_dir / "test_logits.safetensors", test_split.features, logits)
        if scores:
            results["test"] = scores
            results.setdefault("breakdown", {})["test"] = breakdown(data.dataset, predictions, test_split.docs, train_split.docs, rel_names)
        else:
            logger.info("test split has no labels: %s is the leaderboard file", run_dir / "test_predictions.json")
    results |= {
        "train_seconds": counters["train_seconds"],
        "seconds_per_step": counters["train_seconds"] / max(counters["step"], 1),
        "skipped_steps": counters["skipped_steps"],
        "wall_seconds": wall_before + time.perf_counter() - wall_start,  # start-up, training, evaluation
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    if rank == 0:
        atomic_write_json(run_dir / "results.json", results)
        shutil.rmtree(run_dir / "last", ignore_errors=True)  # finished: the resume state has done its job
        if wandb_run is not None:
            wandb_run.summary.update({f"{s}/{k}": v for s in ("dev", "test") for k, v in results.get(s, {}).items()})
            wandb_run.finish()
    distributed.shutdown()
    return results


# ---------------------------------------------------------------------------------------------- steps
def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two learning rates: the encoder's and the new layers' (ATLOP)."""
    encoder = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
    head = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": encoder, "lr": cfg.encoder_lr}, {"params": head, "lr": cfg.head_lr}]
    # fused: one kernel over all tensors; on CPU the default loop over parameters cost about
    # 0.3 s a step for MiniLM's 28.5 M parameters, the fused kernel about 0.1 s (docs/performance.md)
    fused = all(p.device.type in ("cpu", "cuda") for p in encoder + head)
    return torch.optim.AdamW(groups, eps=cfg.adam_eps, weight_decay=cfg.weight_decay, fused=fused)


def linear_warmup_decay(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over `warmup_steps`, then linear decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, bucketing: bool) -> list[list[int]]:
    """The epoch's batches of document indices, a pure function of (seed, epoch), so a resumed run
    sees the same order. Incomplete batches are dropped (as in ATLOP). With bucketing, documents
    are sorted by length within windows of 50 batches and the batches shuffled, which removes most
    padding and keeps the epoch random."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if bucketing:
        span = 50 * batch_size
        order = np.concatenate([sorted(order[i : i + span], key=lambda d: lengths[d]) for i in range(0, len(order), span)])
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order) - batch_size + 1, batch_size)]
    if bucketing:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _optimizer_step(model, loss_fn, optimizer, scheduler, scaler, micro_batches: list[list[Feature]], num_classes: int,
                    pad_id: int, device, dtype, max_grad_norm: float, max_batch_tokens: int = 0,
                    window: int = 512) -> tuple[float, float, bool]:
    """One optimizer step over accumulated micro-batches; returns (loss, grad norm, finite).

    Every part's loss is weighted by its share of its micro-batch's pairs over all processes, so the
    gradient equals the single-process mean over all pairs however the documents are split: over
    processes (DDP) or into parts of at most `max_batch_tokens` (memory). A non-finite loss or
    gradient skips the update (fp16: the grad scaler's own skip).
    """
    model.train()
    world = distributed.world_size()
    total_loss, loss_finite = 0.0, True
    for index, features in enumerate(micro_batches):
        parts = split_by_tokens(features, max_batch_tokens, window)
        global_pairs = distributed.sum_across(sum(len(f.hts) for f in features), device)
        for part_index, part in enumerate(parts):
            batch = collate(part, num_classes, pad_id).to(device)
            pairs = batch.labels.size(0)
            last = index == len(micro_batches) - 1 and part_index == len(parts) - 1
            sync = contextlib.nullcontext() if last or world == 1 else model.no_sync()
            with sync:
                with autocast(device, dtype):
                    logits = model(batch)
                loss = loss_fn(logits, batch.labels)
                weight = pairs * world / global_pairs / len(micro_batches)
                scaler.scale(loss * weight).backward()
            loss_finite &= bool(torch.isfinite(loss))
            total_loss += loss.item() * pairs / global_pairs / len(micro_batches)
    total_loss = distributed.sum_across(total_loss, device)
    loss_finite = distributed.sum_across(not loss_finite, device) == 0
    scaler.unscale_(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm if max_grad_norm > 0 else float("inf")))
    finite = loss_finite and (math.isfinite(grad_norm) or scaler.is_enabled())
    if finite:
        scaler.step(optimizer)  # with fp16 the scaler itself skips steps with inf gradients
    scaler.update()
    scheduler.step()
    # zeroed in place, not freed: gradients allocated afresh every step, between the activations,
    # fragment the CPU heap (see release_free_memory); the update is the same either way
    optimizer.zero_grad(set_to_none=False)
    return total_loss, grad_norm, finite


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_logits(model, features: list[Feature], num_classes: int, pad_id: int, batch_size: int,
                   device, dtype, desc: str = "predict", show: bool = True, max_tokens: int = 0) -> list[torch.Tensor]:
    """Logits [P_i, C] (float32, CPU) for each document, in the order given. Documents are batched
    by length (less padding), at most `batch_size` per batch and, with `max_tokens`, at most that
    many encoder tokens (a longer document alone); the result does not depend on the batching."""
    model.eval()
    release_free_memory()  # the training heap's free blocks (see release_free_memory)
    # documents without candidate pairs (fewer than two entities) have empty logits and skip the model
    order = sorted((i for i in range(len(features)) if len(features[i].hts)), key=lambda i: len(features[i].input_ids))
    logits: list = [torch.zeros(0, num_classes) for _ in features]
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (
                max_tokens <= 0 or encoded_tokens([features[j] for j in batches[-1] + [i]], model.window) <= max_tokens):
            batches[-1].append(i)
        else:
            batches.append([i])
    for indices in tqdm(batches, desc=desc, disable=not show or None, leave=False):
        batch = collate([features[i] for i in indices], num_classes, pad_id).to(device)
        with autocast(device, dtype):
            output = model(batch).float().cpu()
        for i, doc_logits in zip(indices, output.split(batch.pairs_per_doc)):
            logits[i] = doc_logits
    release_free_memory()  # and evaluation's, before training goes on
    return logits


def decode_predictions(features: list[Feature], logits: list[torch.Tensor], loss_fn, top_k: int,
                       rel2id: dict[str, int]) -> list[dict]:
    """Leaderboard rows {"title", "h_idx", "t_idx", "r", "evidence"} from per-document logits, with
    the loss's own decision rule."""
    id2rel = {i: r for r, i in rel2id.items()}
    if not features:
        return []
    decoded = loss_fn.decode(torch.cat(logits), top_k)  # [P_total, C]
    rows = []
    for feature, doc_decoded in zip(features, decoded.split([len(f.hts) for f in features])):
        pair_index, relation = doc_decoded[:, 1:].nonzero(as_tuple=True)
        for p, r in zip(pair_index.tolist(), relation.tolist()):
            head, tail = feature.hts[p]
            rows.append({"title": feature.title, "h_idx": int(head), "t_idx": int(tail), "r": id2rel[r + 1], "evidence": []})
    return rows


def has_labels(split: Split) -> bool:
    return all("labels" in doc for doc in split.docs)


def save_logits(path: Path, features: list[Feature], logits: list[torch.Tensor]) -> None:
    """Logits (fp16) with the facts and pair counts needed to analyse them without the data."""
    starts = np.cumsum([0] + [len(f.hts) for f in features[:-1]])
    facts = [f.labels + [start, 0] for f, start in zip(features, starts) if f.labels is not None]
    atomic_save_safetensors({
        "logits": torch.cat(logits).half() if logits else torch.zeros(0),
        "pairs_per_doc": torch.tensor([len(f.hts) for f in features], dtype=torch.int32),
        "facts": torch.from_numpy(np.concatenate(facts).reshape(-1, 2).astype(np.int32)) if facts else torch.zeros(0, 2, dtype=torch.int32),
    }, path)


def load_trained(run_dir: Path, device: torch.device, overrides: list[str] = ()):
    """Rebuild config, tokenizer, model (best weights), loss and relation map from a run directory,
    or from a model folder written by scripts/export.py (its own encoder/ and model.safetensors).

    Returns:
        (cfg, tokenizer, model, loss_fn, rel2id); the model is in eval mode on `device`.
    """
    from docre.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DocreError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    weights = run_dir / "best.safetensors"
    if (run_dir / "encoder").is_dir() and (run_dir / "model.safetensors").is_file():  # exported: no original backbone needed
        cfg.model.backbone, cfg.model.revision, weights = str(run_dir / "encoder"), "", run_dir / "model.safetensors"
    rel2id = _read_json(run_dir / "rel2id.json")
    tokenizer = load_tokenizer(cfg.model.backbone, cfg.model.revision, cfg.model.trust_remote_code)
    info = probe_tokenizer(tokenizer, cfg.model.marker)
    model = build_model(
        cfg.model.backbone, len(rel2id), info.start_ids, info.end_ids, cfg.model.layer_pooling,
        cfg.model.emb_size, cfg.model.block_size, cfg.model.window, cfg.model.pair_chunk_size,
        revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code, pretrained=False,
    )
    load_weights(model, weights)
    decode_file = run_dir / "decode.json"
    decode_params = _read_json(decode_file) if decode_file.is_file() else {}  # tuned on dev (e.g. BCE's threshold)
    return cfg, tokenizer, model.to(device).eval(), build_loss(**{**cfg.loss, **decode_params}), rel2id


# ---------------------------------------------------------------------------------------------- helpers
# What a start writes before its first checkpoint. A run directory holding nothing else (apart from
# the temporary files of killed writes) saved nothing worth keeping: a failed start (bad data, a
# missing backbone, out of memory at step 1) must not block the next attempt under the same name.
START_FILES = {"config.yaml", "environment.json", "rel2id.json", "train.log", "metrics.jsonl", "last.tmp"}


def _prepare_run_dir(run_dir: Path, cfg: Config, rank: int) -> Path | None:
    """Create the run directory; return the checkpoint to resume from, if resuming."""
    if cfg.train.resume:
        if (run_dir / "results.json").exists():
            raise DocreError(f"{run_dir}: this run already finished (results.json); there is nothing to resume")
        state = find_training_state(run_dir / "last")
        if state is None:
            raise DocreError(f"{run_dir}: no checkpoint to resume from (no complete last/ directory)")
        return state
    if run_dir.exists() and any(run_dir.iterdir()):
        leftovers = [p.name for p in run_dir.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))]
        if cfg.train.overwrite or set(leftovers) <= START_FILES:
            if rank == 0:
                shutil.rmtree(run_dir)
        elif (run_dir / "results.json").exists():
            raise DocreError(f"{run_dir}: this run already finished; choose another run_name or set train.overwrite=true")
        elif find_training_state(run_dir / "last") is not None:
            raise DocreError(f"{run_dir}: holds an unfinished run; resume it with python train.py --resume {run_dir}, "
                             "or set train.overwrite=true")
        else:
            raise DocreError(f"{run_dir}: directory is not empty; choose another run_name or set train.overwrite=true")
    distributed.barrier()
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def _last_checkpoint(run_dir: Path, resume_hint: bool = True) -> str:
    """Where the last complete checkpoint is (and how to resume from it), for stop messages."""
    state = find_training_state(run_dir / "last")
    if state is None:
        return "No checkpoint was saved yet."
    step = _read_json(state / "state.json")["counters"]["step"]
    hint = f" Resume with: python train.py --resume {run_dir}" if resume_hint else ""
    return f"The last checkpoint (step {step}) is in {state}.{hint}"


def _warn_changed_settings(run_dir: Path, cfg: Config) -> None:
    """Say which settings differ from the run's config.yaml: the continuation is then no exact
    replay (and the optimizer's learning rates and schedule still come from the checkpoint)."""
    from docre.config import load_config

    try:
        saved = to_dict(load_config(run_dir / "config.yaml"))
    except DocreError:
        return
    ignored = {"train.resume", "train.overwrite", "train.device", "train.num_threads", "data.cache_dir", "eval.batch_size"}
    changed = [f"{key} {saved_value!r} -> {value!r}" for key, value, saved_value in _flat_pairs(to_dict(cfg), saved)
               if key not in ignored and not key.startswith("log.") and value != saved_value]
    if changed:
        logger.warning("resuming with settings that differ from %s: %s", run_dir / "config.yaml", ", ".join(changed))


def _flat_pairs(new: dict, old: dict, prefix: str = ""):
    for key in sorted(new.keys() | old.keys()):
        a, b = new.get(key), old.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _flat_pairs(a, b, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", a, b


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be logged again)."""
    import json

    if not path.exists():
        return
    from docre.utils import atomic_write_text

    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _short(scores: dict) -> str:
    return " ".join(f"{k}={v * 100:.2f}" for k, v in scores.items() if k in ("precision", "recall", "f1", "ign_f1"))


def _start_wandb(cfg: Config, run_dir: Path):
    """Weights & Biases, only when the config asks; WANDB_MODE=offline/disabled is honoured."""
    try:
        import wandb
    except ImportError:
        raise DocreError("log.wandb=true needs the wandb package: pip install wandb") from None
    return wandb.init(project=cfg.log.wandb_project, name=cfg.run_name, config=to_dict(cfg), dir=str(run_dir))


class _StopSignals:
    """Turn SIGINT/SIGTERM into a request to stop after the current step; a second one stops at once
    (an `Interrupted` error naming the last checkpoint); a third one gets the default action."""

    def __init__(self, run_dir: Path, counters: dict):
        self.signal: int | None = None
        self.forced: int | None = None
        self._previous: dict = {}
        self._run_dir, self._counters = run_dir, counters

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            self.forced = signum
            raise KeyboardInterrupt
        self.signal = signum
        logger.warning("received %s: stopping after this step (send again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self.forced is not None and exc_type is KeyboardInterrupt:
            raise Interrupted(
                f"stopped at once by a second {signal.Signals(self.forced).name} during step {self._counters['step'] + 1}. "
                f"{_last_checkpoint(self._run_dir)}", self.forced
            ) from None
