"""Training: one `train(cfg)` that reads top to bottom as setup -> fit -> final evaluation.

The same loop runs every dataset, loss and backbone, on CPU, one GPU or several (torchrun). What a
run writes, and how its state on disk is judged, is docre/run_dir.py; the logits and their decoding
are docre/inference.py, shared with evaluate.py and the Predictor.
"""

import contextlib
import importlib
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from docre import distributed
from docre import run_dir as runs
from docre.checkpoint import (
    load_matching_weights,
    load_training_state,
    load_weights,
    rng_state,
    save_training_state,
    save_weights,
)
from docre.config import Config, TrainConfig, save_config, to_dict
from docre.data import FIXED_RELATIONS, Split, load_rel2id, load_rel_names, load_split, read_split
from docre.data.collate import collate, split_by_tokens, stack_labels
from docre.data.feature import Feature
from docre.errors import DocreError
from docre.inference import decode_predictions, has_labels, predict, save_logits
from docre.losses import build_loss, couples_pairs, output_size, takes_synthetic, training_statistics, wants_features
from docre.losses.common import tune_threshold_offset
from docre.losses.evidence import evidence_kl
from docre.metrics import breakdown, score
from docre.models import build_model_from_config, check_backbone, load_tokenizer, pairs_attend_across_batch
from docre.models.output import EvidenceOutput, logits_of
from docre.utils import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    autocast,
    estimate_remaining,
    format_duration,
    freeze_loaded_data,
    hide_progress,
    hold_lock,
    logger,
    peak_rss_mb,
    plural,
    release_free_memory,
    resolve_device,
    resolve_precision,
    set_seed,
    setup_logging,
    write_environment,
)


class Interrupted(DocreError):
    """Training stopped by SIGINT/SIGTERM; the CLI exits with 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


@dataclass
class TrainState:
    """The counters of a run: saved with every checkpoint (state.json "counters"), restored on resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed
    epoch_step: int = 0  # steps done in the current epoch
    best_f1: float | None = None  # best dev F1 so far, and the step it was reached at
    best_step: int | None = None
    nonfinite_in_row: int = 0  # consecutive skipped steps (non-finite loss or gradient)
    skipped_steps: int = 0
    train_seconds: float = 0.0  # time in optimizer steps, over every process of a resumed run
    wall_seconds: float = 0.0  # wall time up to the last checkpoint, over every process of a resumed run
    # the loss sum and step count of the metrics.jsonl row being accumulated, so that a resumed run
    # writes exactly the rows an uninterrupted one does
    window_loss: float = 0.0
    window_steps: int = 0
    precision: str = ""  # the precision the run trains in (fp32, bf16, fp16), kept across a resume
    dev_pending: bool = False  # stopped before or during this step's dev evaluation: the resumed run evaluates first

    @classmethod
    def from_counters(cls, counters: dict) -> "TrainState":
        counters = dict(counters)
        if "window" in counters:  # checkpoints of docre 0.1 kept the window as one pair
            counters["window_loss"], counters["window_steps"] = counters.pop("window")
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in counters.items() if key in known})


@dataclass
class Run:
    """Everything train() builds before its first step."""

    cfg: Config
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    pad_id: int
    rel2id: dict[str, int]
    rel_names: dict[str, str]
    train_split: Split
    dev_split: Split | None
    test_split: Split | None
    ign_docs: list[dict]  # the documents whose facts Ign F1 ignores
    model: nn.Module  # the model itself: saved, evaluated
    step_model: nn.Module  # what a training step runs: `model`, wrapped in DDP under torchrun
    loss_fn: nn.Module
    loss_kwargs: dict  # what every build of the run's loss takes: loss.* and its training statistics
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    total_steps: int
    trackers: "Trackers"  # W&B / TensorBoard as the config asks (rank 0 only; empty elsewhere)
    started: float  # time.perf_counter() at the start of this process
    wall_before: float  # wall seconds of the earlier processes of a resumed run
    # (step, [loss, grad norm, finite]) of the steps whose numbers are still on the device (see _settle)
    pending: list = field(default_factory=list)
    augmenter: Any = None  # VaeDiff-DocRE's stage 3: the stage-2 augmenter that makes synthetic pairs (augmenter.py)


@dataclass
class Trackers:
    """The experiment trackers of a run (log.wandb, log.tensorboard): they get the rows metrics.jsonl
    gets, at the same steps, and the final scores. Empty (no tracker) unless the config asks."""

    wandb_run: Any = None
    tensorboard: Any = None  # a torch.utils.tensorboard SummaryWriter

    def log(self, values: dict, step: int) -> None:
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)
        if self.tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):  # None (no finite step in the window) has no point to draw
                    self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()  # written now: a crash loses no row that metrics.jsonl has

    def finish(self, final: dict, step: int) -> None:
        """The final scores, then close: W&B's summary gets them all (the best dev, not the last); TensorBoard
        gets the test scores as points at the last step (the best dev scores already are points)."""
        if self.wandb_run is not None:
            self.wandb_run.summary.update(final)
        if self.tensorboard is not None:
            self.log({key: value for key, value in final.items() if not key.startswith("dev/")}, step)
        self.__exit__(None, None, None)

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        """Close what is open; after an error or interruption W&B marks the run failed (a resume continues it)."""
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if exc_type else 0)
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.wandb_run = self.tensorboard = None


@dataclass
class Evaluation:
    scores: dict  # official scores ({} for an unlabelled split)
    predictions: list[dict]  # leaderboard rows
    logits: list[torch.Tensor]  # per document [P_i, C]
    decode: dict  # decision parameters tuned on this split ({} unless asked and the loss has any)


def train(cfg: Config) -> dict:
    """Train a model, keep the best dev checkpoint, score dev and test with it.

    Returns:
        The final results (also in <run dir>/results.json): dev and test scores of the best
        checkpoint, step counts, seconds per step, peak memory.
    """
    started = time.perf_counter()
    # held: the run directory's lock, released when train() ends, so a later train() of this process may take it
    with contextlib.ExitStack() as held:
        processes, run_dir, checkpoint, init_weights = start(cfg, held)
        try:
            run, state = setup(cfg, processes, run_dir, checkpoint, init_weights, started)
            with run.trackers:  # closed however train() ends, so that a later run in this process starts its own
                with StopSignals(run.run_dir, state) as stop:
                    fit(run, state, stop)
                return final_evaluation(run, state)
        except Interrupted:
            raise  # stopped, not failed: its checkpoint resumes it
        except Exception as error:  # bad data or settings, a crash: summaries show the run as failed, not as running
            if processes[0] == 0:
                runs.record_failure(run_dir, error)
            raise


# ---------------------------------------------------------------------------------------------- setup
def start(cfg: Config, held: contextlib.ExitStack) -> tuple[tuple[int, int, torch.device], Path, Path | None, Path | None]:
    """The checks that need no data, the processes (rank, world size, device), and the run directory,
    which is this run's from here on (rank 0 holds its lock in `held`): ((rank, world, device), run_dir,
    the checkpoint to resume from, the weights file train.init_from names)."""
    _require_trackers(cfg)  # a missing package fails now, not after the data and the model are loaded
    check_backbone(cfg.model.backbone, cfg.model.revision)  # a misspelt one too, in a second, before the data
    # a resumed run's weights are in its checkpoint: init_from was applied at its start and is not again
    # (nor checked: its source may have moved since)
    init_weights = init_from_weights(cfg) if cfg.train.init_from and not cfg.train.resume else None
    rank, world, device = distributed.init_distributed(resolve_device(cfg.train.device))
    process_settings(cfg.train, device)
    run_dir = runs.path_of(cfg)
    if rank == 0:  # before prepare, which may empty the directory
        held.enter_context(hold_lock(run_dir))
    return (rank, world, device), run_dir, runs.prepare(run_dir, cfg, rank), init_weights


def process_settings(train_cfg: TrainConfig, device: torch.device) -> None:
    """The process-wide settings a run's numbers depend on: the CPU thread count and, on CUDA, whether fp32
    products (and fp32 runs) use TF32."""
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = train_cfg.tf32


def setup(cfg: Config, processes: tuple[int, int, torch.device], run_dir: Path, checkpoint: Path | None,
          init_weights: Path | None, started: float) -> tuple[Run, TrainState]:
    """Logging, data, model (from `init_weights` where given), loss, optimizer in the run directory `start`
    prepared; the state of a resumed run."""
    rank, world, device = processes
    setup_logging(run_dir / "train.log", rank)
    dtype = resolve_precision(cfg.train.precision, device)
    if checkpoint is not None and cfg.train.precision == "auto":
        dtype = _resumed_precision(checkpoint, dtype, device)
    changed = runs.changed_settings(run_dir, cfg) if checkpoint is not None else []  # before config.yaml is rewritten
    if changed and rank == 0:
        logger.warning("resuming with settings that differ from %s: %s", run_dir / runs.CONFIG, ", ".join(changed))
    set_seed(cfg.seed)
    if rank == 0 and checkpoint is None:  # a resumed run's records are rewritten once its checkpoint has loaded
        _record_settings(cfg, run_dir, device, world, resumed=False)

    tokenizer = load_tokenizer(cfg.model.backbone, cfg.model.revision, cfg.model.trust_remote_code)
    rel2id, train_split, dev_split, test_split, ign_docs = _load_data(cfg, tokenizer)
    rel_names = load_rel_names(cfg.data.rel_info)  # read now: a bad file fails before training, not after
    freeze_loaded_data()  # the splits live for the whole run: keep the collector from walking them
    if rank == 0 and checkpoint is None:
        atomic_write_json(run_dir / runs.REL2ID, rel2id)

    loss_kwargs = {**cfg.loss, **_loss_statistics(cfg, run_dir, rank, checkpoint, train_split, rel2id)}
    loss_fn = build_loss(**loss_kwargs)
    model = build_model_from_config(cfg.model, tokenizer, output_size(loss_fn, len(rel2id))).to(device)
    if rank == 0:
        _warn_split_batches(cfg, loss_fn, model, world)
    if init_weights is not None:  # before the optimizer is built, so that it starts from them
        init_from(model, init_weights, cfg, rel2id)
    optimizer = build_optimizer(model, cfg.train)
    steps_per_epoch = len(train_split.features) // (cfg.train.batch_size * world) // cfg.train.grad_accum
    if steps_per_epoch == 0:
        raise DocreError(
            f"{cfg.data.train_file}: {plural(len(train_split.features), 'training document')} make no full step of "
            f"batch_size {cfg.train.batch_size} x grad_accum {cfg.train.grad_accum} x {plural(world, 'process', 'processes')}"
        )
    total_steps = cfg.train.max_steps or steps_per_epoch * cfg.train.epochs
    scheduler = linear_warmup_decay(optimizer, int(cfg.train.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if world > 1:  # the same seed on every rank would draw the same dropout masks on every rank
        torch.manual_seed(cfg.seed + rank)
    state = TrainState(precision=PRECISIONS[dtype])
    if checkpoint is not None:
        try:
            counters = load_training_state(checkpoint, model, optimizer, scheduler, scaler, rank, device)
        except DocreError as error:
            if changed:  # the likely cause: an override that changes the model or the optimizer
                raise DocreError(f"{error}; resumed with other settings than the run's ({', '.join(changed[:3])}): "
                                 "resume without the overrides that change the model") from None
            raise
        if rank == 0:  # only now: a resume that fails leaves the run's config.yaml and rel2id.json as they were
            _record_settings(cfg, run_dir, device, world, resumed=True)
            atomic_write_json(run_dir / runs.REL2ID, rel2id)
        state = TrainState.from_counters({**counters, "precision": state.precision})
        runs.truncate_metrics(run_dir, state.step, drop_dev_at_step=state.dev_pending)
        logger.info("resumed from %s at step %d (epoch %d)", checkpoint, state.step, state.epoch)
    step_model = model
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run = Run(cfg, run_dir, rank, world, device, dtype, tokenizer.pad_token_id or 0, rel2id, rel_names, train_split,
              dev_split, test_split, ign_docs, model, step_model, loss_fn, loss_kwargs, optimizer, scheduler, scaler,
              steps_per_epoch, total_steps, _start_trackers(cfg, run_dir, state.step) if rank == 0 else Trackers(),
              started, state.wall_seconds)
    if cfg.model.name == "vaediff" and cfg.vaediff.augmenter:  # VaeDiff-DocRE's stage 3 (docre/vaediff.py)
        from docre.augmenter import load_augmenter

        run.augmenter = load_augmenter(cfg.vaediff.augmenter, device)
        if not takes_synthetic(loss_fn):
            logger.warning("loss %s takes no synthetic pairs: stage 3 trains without the augmenter", cfg.loss["name"])
    logger.info(
        "%s, %s (%d per epoch), effective batch %s (%d per process x %s x %d accumulation), %s, %s",
        plural(len(train_split.features), "train document"), plural(total_steps, "optimizer step"), steps_per_epoch,
        plural(cfg.train.batch_size * world * cfg.train.grad_accum, "document"), cfg.train.batch_size,
        plural(world, "process", "processes"), cfg.train.grad_accum, device, str(dtype).replace("torch.", ""),
    )
    return run, state


PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _warn_split_batches(cfg: Config, loss_fn, model: nn.Module, world: int) -> None:
    """Say where a batch split by train.max_batch_tokens (or over processes) changes what is computed: a loss over
    the batch's pairs together, TTM-RE's official layout (its pairs attend to each other)."""
    if couples_pairs(loss_fn) and (cfg.train.max_batch_tokens or world > 1):
        logger.warning("loss %s is not a mean over pairs, and train.max_batch_tokens=%d / %d processes split "
                       "batches: it is computed within each part, not as the official loss over the whole batch "
                       "(set train.max_batch_tokens=0 and train on one process for that)", cfg.loss["name"],
                       cfg.train.max_batch_tokens, world)
    if pairs_attend_across_batch(model) and cfg.train.max_batch_tokens:
        # each process runs whole batches of its own: only the token split changes the pairs a pair attends to
        logger.warning("model ttm_re's official layout lets the pairs of a batch attend to each other, and "
                       "train.max_batch_tokens=%d splits batches: the pairs of each part attend only to each other, "
                       "not as the official model over the whole batch (set train.max_batch_tokens=0 for that, or "
                       "model.ttm_layout=per_pair)", cfg.train.max_batch_tokens)


def _record_settings(cfg: Config, run_dir: Path, device: torch.device, world: int, resumed: bool) -> None:
    """The run's config.yaml and environment.json (what `evaluate.py`, `--resume` and the summaries read)."""
    save_config(cfg, run_dir / runs.CONFIG)
    write_environment(run_dir / "environment.json", {"device": str(device), "world_size": world}, resumed=resumed)


def init_from_weights(cfg: Config) -> Path:
    """The weights file train.init_from names: a run directory's best.safetensors, an exported model
    folder's model.safetensors, or those of such a folder on the Hugging Face Hub (downloaded into its
    cache as `docre-predict ORG/NAME` does); that weights file itself may be named too. Checked before the
    run directory is touched, so a missing source fails in the first second, and the run's own directory
    is refused (train.overwrite would delete the weights before they are read)."""
    from docre.predict import resolve_model

    name = cfg.train.init_from
    local = runs.init_source(runs.path_of(cfg), name)
    if local.is_file():  # its folder's weights file stands for the folder, whose config.yaml and rel2id.json are read too
        kind = None
        with contextlib.suppress(DocreError):
            kind = runs.model_kind(local.parent)
        if local.name != {"run": runs.BEST_WEIGHTS, "export": runs.EXPORTED_WEIGHTS}.get(kind):
            raise DocreError(f"train.init_from={name}: a file, not the weights of a run directory or exported model "
                             f"folder; name such a folder (a run's {runs.BEST_WEIGHTS} or an export's "
                             f"{runs.EXPORTED_WEIGHTS} may stand for it)")
        return local
    try:
        # only its weights, config.yaml and rel2id.json are read here, but a Hub model whose config runs remote
        # code is still refused unless this run allows remote code itself (its backbone then needs it too);
        # a name that is neither a folder here nor a Hub model is most likely a mistyped path: said first
        folder = resolve_model(name, trust_remote_code=cfg.model.trust_remote_code, local_first=True)
        kind = runs.model_kind(folder)
    except DocreError as error:
        raise DocreError(f"train.init_from: {error}") from None
    return folder / (runs.BEST_WEIGHTS if kind == "run" else runs.EXPORTED_WEIGHTS)


def init_from(model: nn.Module, weights: Path, cfg: Config, rel2id: dict[str, int]) -> None:
    """Copy the tensors of `weights` (from `init_from_weights`) into the fresh `model` by name, and log in one
    line what was loaded, what kept its fresh initialisation and what the source had beyond the model.

    Raises:
        DocreError: the source classifies another relation map (its columns would mean other relations), or
            holds a tensor of this model in another shape (the message names the model settings that differ).
    """
    from docre.config import load_config

    name, folder = cfg.train.init_from, weights.parent
    theirs = runs.read_json(folder / runs.REL2ID) if (folder / runs.REL2ID).is_file() else rel2id
    if theirs != rel2id:
        relation = next(r for r in [*rel2id, *theirs] if rel2id.get(r) != theirs.get(r))
        raise DocreError(f"train.init_from={name}: its relation map ({len(theirs)} relations) is not this run's "
                         f"({len(rel2id)}): {relation} is column {theirs.get(relation, 'none')} there and "
                         f"{rel2id.get(relation, 'none')} here, so its classifier would predict other relations")
    hint = ""
    with contextlib.suppress(DocreError):  # a config.yaml this docre cannot read costs only the hint
        differences = [line for line in runs.config_differences(load_config(folder / runs.CONFIG), cfg)
                       if line.startswith(("model.", "loss:"))]
        hint = f" (source -> this run: {'; '.join(differences[:3])})" if differences else ""
    if weights.name == runs.BEST_WEIGHTS and (state := runs.state_of(folder)).kind != "finished":
        # e.g. a pre-empted first stage of a two-stage recipe; a warning, not a refusal: a user may mean it
        resumable = state.kind == "resumable"
        logger.warning("init_from %s: the run has not finished (no %s%s): its best dev weights so far are used%s",
                       name, runs.RESULTS, f"; {state.detail}" if resumable else "",
                       f"; to hand on its final ones, finish it first with {runs.resume_command(folder)}" if resumable else "")
    try:
        loaded, fresh, unused = load_matching_weights(model, weights, hint)
    except DocreError as error:
        raise DocreError(f"train.init_from: {error}") from None
    logger.info("init_from %s: loaded %d of %s from %s; kept fresh (not in the source): %s; unused from the source: %s",
                name, len(loaded), plural(len(loaded) + len(fresh), "tensor"), weights.name, _abbreviate(fresh),
                _abbreviate(unused))


def _abbreviate(names: list[str], limit: int = 4) -> str:
    """Tensor names for a log line: up to `limit` as they are; more are counted by their first two name
    parts ("encoder.embeddings.* (5)"), or by their first part where that still makes more than `limit`
    groups ("axial_layers.* (84)"); at most `limit` entries are shown."""
    if len(names) <= limit:
        return ", ".join(names) or "none"
    for depth in (2, 1):
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(".".join(name.split(".")[:depth]), []).append(name)
        if len(groups) <= limit:
            break
    shown = [f"{key}.* ({len(members)})" if len(members) > 1 else members[0] for key, members in groups.items()]
    more = len(shown) - limit
    return ", ".join(shown[:limit]) + (f" and {more} more" if more > 0 else "")


def _loss_statistics(cfg: Config, run_dir: Path, rank: int, checkpoint: Path | None, train_split: Split,
                     rel2id: dict[str, int]) -> dict:
    """What the loss takes from the training split (losses.FROM_TRAINING: SSR-PU's priors, AMTL's
    label spaces), computed once and kept in loss_statistics.json, which every later build of the
    loss reads; a resumed run reads it too, so its loss is the one it trained with."""
    path = run_dir / runs.LOSS_STATISTICS
    if checkpoint is not None and path.is_file():
        return runs.read_json(path)
    rel_ids = sorted(rel2id, key=rel2id.get)  # in column order
    statistics = training_statistics(cfg.loss, stack_labels(train_split.features, len(rel2id)), rel_ids)
    if rank == 0:
        if statistics:
            atomic_write_json(path, statistics)
        else:
            path.unlink(missing_ok=True)  # a file left by an earlier start with another loss
    return statistics


def _resumed_precision(checkpoint: Path, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """precision=auto continues a resumed run in the precision it trained in (a CPU run resumed on a
    GPU stays fp32), where the device supports it."""
    saved_name = runs.read_json(checkpoint / "state.json")["counters"].get("precision", "")
    saved = {name: value for value, name in PRECISIONS.items()}.get(saved_name, dtype)
    if saved == torch.float16 and device.type != "cuda":
        logger.warning("the run trained in fp16, which needs CUDA: it continues in fp32 on %s", device)
        return torch.float32
    if saved != dtype:
        logger.warning("precision=auto: continuing in %s, the precision the run trained in", saved_name)
    return saved


def _load_data(cfg: Config, tokenizer) -> tuple[dict[str, int], Split, Split | None, Split | None, list[dict]]:
    """(rel2id, train, dev, test, the documents Ign F1 ignores); dev and test are None when not configured."""
    data = cfg.data
    needs_train_relations = not data.rel2id and data.dataset not in FIXED_RELATIONS
    train_docs = read_split(data.dataset, data.train_file, data.dir, None, True)[2] if needs_train_relations else None
    rel2id = load_rel2id(data.dataset, data.rel2id, train_docs)
    featurise = partial(
        load_split, dataset=data.dataset, data_dir=data.dir, tokenizer=tokenizer, rel2id=rel2id,
        marker=cfg.model.marker, max_seq_length=cfg.model.max_seq_length, cache_dir=data.cache_dir,
    )
    train_split = featurise("train", spec=data.train_file, require_labels=True)
    pairless = sum(len(f.hts) == 0 for f in train_split.features)
    if pairless:  # nothing to learn from, and a batch of only such documents has no pairs at all
        logger.warning("train: %s with no candidate pair (fewer than two entities) left out of training",
                       plural(pairless, "document"))
        train_split.features = [f for f in train_split.features if len(f.hts)]
    dev_split = featurise("dev", spec=data.dev_file) if data.dev_file else None
    test_split = featurise("test", spec=data.test_file) if data.test_file else None
    ign_docs = read_split(data.dataset, data.ign_train_file, data.dir, None)[2] if data.ign_train_file else train_split.docs
    return rel2id, train_split, dev_split, test_split, ign_docs


# ---------------------------------------------------------------------------------------------- fit
def fit(run: Run, state: TrainState, stop: "StopSignals") -> None:
    """Train from `state` to the last step: log, evaluate on dev (keeping the best checkpoint),
    save resume checkpoints, and stop cleanly on a signal (Interrupted)."""
    cfg, train_cfg = run.cfg, run.cfg.train
    epochs = math.ceil(run.total_steps / run.steps_per_epoch)
    lengths = [len(f.input_ids) for f in run.train_split.features]
    window_start = time.perf_counter()
    pace = (time.perf_counter(), state.step)  # the time left is estimated at this process's pace (evaluations included)
    if state.dev_pending and run.dev_split is not None:  # the evaluation a stop request cut short
        _evaluate_dev_or_stop(run, state, stop)
        _checkpoint_or_stop(run, state, stop, True, False)  # saved at once: a second kill must not evaluate it again
    # a run resumed at its last step (stopped there, mid-epoch under train.max_steps) has no step left to train
    for epoch in range(state.epoch, epochs if state.step < run.total_steps else state.epoch):
        batches = epoch_batches(lengths, train_cfg.batch_size * run.world, cfg.seed, epoch, train_cfg.length_bucketing)
        # the bar's own estimate is the epoch's; run_left (set with the loss) is the whole run's
        progress = tqdm(total=run.steps_per_epoch, initial=state.epoch_step, desc=f"epoch {epoch + 1}/{epochs}",
                        disable=hide_progress(run.rank == 0), leave=False)
        for epoch_step in range(state.epoch_step, run.steps_per_epoch):
            _train_step(run, state, batches[epoch_step * train_cfg.grad_accum : (epoch_step + 1) * train_cfg.grad_accum])
            state.epoch_step = epoch_step + 1
            progress.update(1)
            log_due = state.step % train_cfg.log_every == 0
            if log_due or run.device.type == "cpu":  # the host reads the step's numbers (a wait on a GPU)
                loss, grad_norm = _settle(run, state)
                progress.set_postfix(loss=f"{loss:.4f}", run_left=_time_left(run, state, pace))
            if log_due and run.rank == 0:
                _log_train_row(run, state, epoch + state.epoch_step / run.steps_per_epoch, grad_norm, window_start)
                window_start = time.perf_counter()
            if state.step % 10 == 0 and run.device.type == "cpu":
                release_free_memory()  # bounds the heap's growth from batches of varying shapes
            last_step = state.step >= run.total_steps
            end_of_epoch = epoch_step + 1 == run.steps_per_epoch
            if end_of_epoch:
                state.epoch, state.epoch_step = epoch + 1, 0
            eval_every = train_cfg.eval_every
            if run.dev_split is not None and ((eval_every and state.step % eval_every == 0)
                                              or (not eval_every and end_of_epoch) or last_step):
                _settle(run, state)
                _evaluate_dev_or_stop(run, state, stop, progress)
                window_start = time.perf_counter()
            _checkpoint_or_stop(run, state, stop, end_of_epoch or last_step, log_due, progress)
            if end_of_epoch and not last_step:  # after its evaluation and checkpoint, which the pace then includes
                logger.info("epoch %d/%d done, step %d/%d: about %s left", epoch + 1, epochs, state.step, run.total_steps,
                            _time_left(run, state, pace))
            if last_step:
                break
        progress.close()
        if state.step >= run.total_steps:
            break
    _settle(run, state)


def _train_step(run: Run, state: TrainState, group: list[list[int]]) -> None:
    """One optimizer step over the micro-batches `group` (every process's documents; this process
    trains its share of each). Its loss, gradient norm and finiteness stay on the device until
    `_settle` reads them."""
    size, features = run.cfg.train.batch_size, run.train_split.features
    micro = [[features[i] for i in batch[run.rank * size : (run.rank + 1) * size]] for batch in group]
    global_pairs = [sum(len(features[i].hts) for i in batch) for batch in group]
    global_related = [related_pairs([features[i] for i in batch]) for batch in group]
    augment = None
    if run.augmenter is not None and takes_synthetic(run.loss_fn) and state.epoch >= run.cfg.vaediff.augment_from_epoch:
        augment = partial(_synthetic_pairs, run.augmenter, run.cfg.vaediff.copies, run.cfg.vaediff.guidance)
    started = time.perf_counter()
    loss, grad_norm, finite = _optimizer_step(
        run.step_model, run.loss_fn, run.optimizer, run.scheduler, run.scaler, micro, len(run.rel2id), run.pad_id,
        run.device, run.dtype, run.cfg.train.max_grad_norm, run.cfg.train.max_batch_tokens, run.model.window, global_pairs,
        run.cfg.model.evidence_weight, global_related, augment)
    state.step += 1
    state.train_seconds += time.perf_counter() - started  # on a GPU: until the step is queued (see _settle)
    run.pending.append((state.step, torch.stack([loss.float(), grad_norm.float(), finite.float()])))


def _time_left(run: Run, state: TrainState, pace: tuple[float, int]) -> str:
    """The run's remaining time at the pace of the steps this process has done since `pace`
    (time.perf_counter(), step then): evaluations and checkpoints so far are in the pace."""
    since, first_step = pace
    seconds = estimate_remaining(time.perf_counter() - since, state.step - first_step, run.total_steps - state.step)
    return "?" if seconds is None else format_duration(seconds)


def _settle(run: Run, state: TrainState) -> tuple[float, float]:
    """Read the numbers of the steps since the last call (one host wait for all of them), add them
    to the counters and apply the non-finite policy. On CPU this runs after every step; on a GPU at
    logged steps, evaluations and checkpoints, so a run of non-finite steps is caught there.
    Returns the last step's (loss, grad norm)."""
    started = time.perf_counter()
    pending, run.pending = run.pending, []
    values = torch.stack([numbers for _, numbers in pending]).tolist() if pending else []
    state.train_seconds += time.perf_counter() - started  # the wait for queued steps is training time
    for (step, _), (loss, _norm, finite) in zip(pending, values):
        state.nonfinite_in_row = 0 if finite else state.nonfinite_in_row + 1
        state.skipped_steps += not finite
        if finite:
            state.window_loss, state.window_steps = state.window_loss + loss, state.window_steps + 1
            continue
        logger.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", step, state.nonfinite_in_row)
        if state.nonfinite_in_row >= run.cfg.train.max_nonfinite_steps:
            raise DocreError(
                f"stopped at step {step}: "
                f"{plural(state.nonfinite_in_row, 'non-finite loss or gradient', 'non-finite losses or gradients')} in a row "
                f"(train.max_nonfinite_steps={run.cfg.train.max_nonfinite_steps}); lower the learning rate, use fp32 "
                f"or bf16, or check the data. {runs.last_checkpoint_message(run.run_dir, resume_hint=False)}"
            )
    return (values[-1][0], values[-1][1]) if values else (math.nan, math.nan)


def _log_train_row(run: Run, state: TrainState, epoch: float, grad_norm: float, window_start: float) -> None:
    """Append the train row of the steps since the last one to metrics.jsonl (and W&B)."""
    row = {"type": "train", "step": state.step, "epoch": epoch,
           "loss": state.window_loss / state.window_steps if state.window_steps else None,  # None: every step skipped
           "grad_norm": grad_norm if math.isfinite(grad_norm) else None,  # NaN/inf are not JSON
           "lr_encoder": run.scheduler.get_last_lr()[0], "lr_head": run.scheduler.get_last_lr()[1],
           "seconds_per_step": (time.perf_counter() - window_start) / run.cfg.train.log_every,
           "skipped_steps": state.skipped_steps}
    append_jsonl(run.run_dir / runs.METRICS, row)
    run.trackers.log({f"train/{k}": v for k, v in row.items() if k not in ("type", "step")}, state.step)
    state.window_loss, state.window_steps = 0.0, 0


def _evaluate_dev_or_stop(run: Run, state: TrainState, stop: "StopSignals", progress=None) -> None:
    """Score dev and record it (record_dev). On one process a stop request before or during the evaluation stops at
    once (a scheduler's grace period may be shorter than an evaluation): the checkpoint is saved with dev_pending, and
    the resumed run evaluates first. Under torchrun the processes finish the evaluation: they wait on each other in it."""
    stop.activity = f"the dev evaluation after step {state.step}"
    try:
        with stop.cut_short(run.world == 1):
            evaluation = evaluate_split(run, run.dev_split, {}, tune=True)  # reads only: nothing to undo when cut
    except CutShort:
        state.dev_pending = True
        _checkpoint_or_stop(run, state, stop, True, False, progress)  # saves, then raises Interrupted
    record_dev(run, state, evaluation)
    state.dev_pending = False
    stop.activity = ""


def _checkpoint_or_stop(run: Run, state: TrainState, stop: "StopSignals", due: bool, logged: bool, progress=None) -> None:
    """Save the resume checkpoint when due (end of epoch, last step, train.save_every) or asked to
    stop; on a stop request raise Interrupted after saving. Under torchrun the processes agree on a
    stop at checkpoints and logged steps (one collective there, none in other steps)."""
    save_every = run.cfg.train.save_every
    due = due or bool(save_every and state.step % save_every == 0)
    if run.world == 1:
        interrupted = stop.signal is not None
    elif due or logged:
        interrupted = distributed.sum_across(stop.signal is not None, run.device) > 0
    else:
        return
    if not (due or interrupted):
        return
    _settle(run, state)
    rng = distributed.gather({name: value.cpu() for name, value in rng_state(run.device).items()})  # every rank's own
    if run.rank == 0:
        state.wall_seconds = run.wall_before + time.perf_counter() - run.started
        save_training_state(run.run_dir / runs.LAST, run.model, run.optimizer, run.scheduler, run.scaler, asdict(state), rng)
    distributed.barrier()
    if interrupted:
        if progress is not None:
            progress.close()
        name = signal.Signals(stop.signal or signal.SIGTERM).name  # other ranks: SIGTERM sent to rank 0
        when = (f"at the dev evaluation after step {state.step} (the resumed run evaluates first)" if state.dev_pending
                else f"after step {state.step}")
        raise Interrupted(
            f"interrupted by {name} {when}; checkpoint saved in {run.run_dir / runs.LAST}. "
            f"Resume with: {runs.resume_command(run.run_dir)}", stop.signal or signal.SIGTERM
        )


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_split(run: Run, split: Split, decode: dict, tune: bool = False) -> Evaluation:
    """Logits of every document (sharded over processes), decoded with the loss's rule and the
    decision parameters `decode`, and scored. With `tune`, decision parameters are first fitted to
    this split (a loss's own, e.g. BCE's global threshold; with eval.tune_threshold_offset the TH
    offset) and used instead."""
    cfg = run.cfg
    mine = list(range(run.rank, len(split.features), run.world))
    dtype = run.dtype if run.device.type == "cuda" else torch.float32  # as evaluate.py and the Predictor (inference_precision)
    logits, evidence = predict(run.model, [split.features[i] for i in mine], len(run.rel2id), run.pad_id,
                               cfg.eval.batch_size, run.device, dtype, desc=split.name, show=run.rank == 0,
                               max_tokens=cfg.eval.max_batch_tokens)
    ordered: list = [None] * len(split.features)
    ordered_evidence: list | None = None if evidence is None else [None] * len(split.features)
    for indices, part, part_evidence in zip(distributed.gather(mine), distributed.gather(logits), distributed.gather(evidence)):
        for n, i in enumerate(indices):
            ordered[i] = part[n]
            if ordered_evidence is not None:
                ordered_evidence[i] = part_evidence[n]
    if tune:
        decode = {}
        labels = stack_labels(split.features, len(run.rel2id))
        if hasattr(run.loss_fn, "tune_decode"):
            decode = build_loss(**run.loss_kwargs).tune_decode(torch.cat(ordered), labels, cfg.eval.top_k)
        if cfg.eval.tune_threshold_offset:  # the decode-side correction (docs/losses.md)
            decode = {"th_offset": tune_threshold_offset(torch.cat(ordered), labels, cfg.eval.top_k)}
    decoder = build_loss(**{**run.loss_kwargs, **decode})  # the training loss itself is never changed
    predictions = decode_predictions(split.features, ordered, decoder, cfg.eval.top_k, run.rel2id, ordered_evidence,
                                     cfg.model.evidence_threshold)
    scores = score(cfg.data.dataset, predictions, split.docs, run.ign_docs) if has_labels(split) else {}
    return Evaluation(scores, predictions, ordered, decode)


def record_dev(run: Run, state: TrainState, result: Evaluation) -> None:
    """Log a dev evaluation, and keep the checkpoint (weights, decode parameters, predictions) if it is the best."""
    row = {"type": "eval", "split": "dev", "step": state.step, "epoch": state.epoch, **result.scores, **result.decode}
    improved = state.best_f1 is None or result.scores["f1"] > state.best_f1
    if improved:
        state.best_f1, state.best_step = result.scores["f1"], state.step
    if run.rank != 0:
        return
    append_jsonl(run.run_dir / runs.METRICS, row)
    logger.info("dev step %d: %s%s", state.step, _short(result.scores), " (best)" if improved else "")
    run.trackers.log({f"dev/{k}": v for k, v in row.items() if k not in ("type", "split", "step")}, state.step)
    if improved:
        save_weights(run.model, run.run_dir / runs.BEST_WEIGHTS)
        atomic_write_json(run.run_dir / runs.BEST_SCORES, row)
        atomic_write_json(run.run_dir / runs.DECODE, result.decode)
        atomic_write_json(run.run_dir / "dev_predictions.json", result.predictions, indent=None)
        if run.cfg.eval.save_logits:
            save_logits(run.run_dir / "dev_logits.safetensors", run.dev_split.features, result.logits)


def final_evaluation(run: Run, state: TrainState) -> dict:
    """Reload the best dev checkpoint, score test with it, write results.json and close the run."""
    run_dir, dataset = run.run_dir, run.cfg.data.dataset
    if run.dev_split is None and run.rank == 0:
        save_weights(run.model, run_dir / runs.BEST_WEIGHTS)  # no model selection: the final weights
    distributed.barrier()
    load_weights(run.model, run_dir / runs.BEST_WEIGHTS)
    results = {"run_dir": str(run_dir), "best_step": state.best_step, "steps": state.step}
    decode = {}
    if run.dev_split is not None:
        best = runs.read_json(run_dir / runs.BEST_SCORES)
        results["dev"] = {k: v for k, v in best.items() if k not in ("type", "split", "step", "epoch")}
        if has_labels(run.dev_split):  # intra/inter, frequent/long-tail, per relation (docs/metrics.md)
            dev_predictions = runs.read_json(run_dir / "dev_predictions.json")
            results.setdefault("breakdown", {})["dev"] = breakdown(dataset, dev_predictions, run.dev_split.docs,
                                                                   run.train_split.docs, run.rel_names)
        decode = runs.read_decode(run_dir)  # the decision parameters tuned on dev with the best weights
        if decode:
            results["decode"] = decode
    if run.test_split is not None:
        test = evaluate_split(run, run.test_split, decode)
        if run.rank == 0:
            atomic_write_json(run_dir / "test_predictions.json", test.predictions, indent=None)
            if run.cfg.eval.save_logits:
                save_logits(run_dir / "test_logits.safetensors", run.test_split.features, test.logits)
        if test.scores:
            results["test"] = test.scores
            results.setdefault("breakdown", {})["test"] = breakdown(dataset, test.predictions, run.test_split.docs,
                                                                    run.train_split.docs, run.rel_names)
        else:
            logger.info("test split has no labels: %s is the leaderboard file", run_dir / "test_predictions.json")
    results |= {
        "train_seconds": state.train_seconds,
        "seconds_per_step": state.train_seconds / max(state.step, 1),
        "skipped_steps": state.skipped_steps,
        "wall_seconds": run.wall_before + time.perf_counter() - run.started,  # start-up, training, evaluation
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated(run.device) / 2**20 if run.device.type == "cuda" else None,
    }
    if run.rank == 0:
        _plot_curves(run_dir)
        atomic_write_json(run_dir / runs.RESULTS, results)
        shutil.rmtree(run_dir / runs.LAST, ignore_errors=True)  # finished: the resume state has done its job
        run.trackers.finish({f"{s}/{k}": v for s in ("dev", "test") for k, v in results.get(s, {}).items()}, state.step)
    distributed.barrier()  # the process group stays up (an alpha sweep trains again); its owner shuts it down
    return results


def _plot_curves(run_dir: Path) -> None:
    """RUN_DIR/curves.png, the run's learning curve; a plotting failure costs only the picture."""
    from docre.plots import plot_curves

    try:
        plot_curves({run_dir.name: [run_dir]}, run_dir / runs.CURVES, f"{run_dir.name}: dev F1 and training loss")
    except Exception as error:  # a finished run must not fail over its picture
        logger.warning("could not draw %s: %s", run_dir / runs.CURVES, error)


# ---------------------------------------------------------------------------------------------- steps
def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two learning rates, the encoder's and the new layers' (ATLOP), plus one group per
    entry of `train.module_lr` (the official DocuNet and KD-DocRE scripts give some modules their own).

    Raises:
        DocreError: a `train.module_lr` prefix that names no parameter of the model.
    """
    def within(name: str, prefix: str) -> bool:  # the parameter lies in the module the prefix names
        return name == prefix or name.startswith(prefix + ".")

    named = list(model.named_parameters())
    for prefix in cfg.module_lr:
        if not any(within(name, prefix) for name, _ in named):
            modules = ", ".join(name for name, _ in model.named_children())
            raise DocreError(f"train.module_lr: {prefix!r} names no module of this model (its modules: {modules})")
    groups = [{"params": [], "lr": cfg.encoder_lr}, {"params": [], "lr": cfg.head_lr}]
    groups += [{"params": [], "lr": lr} for lr in cfg.module_lr.values()]
    prefixes = list(cfg.module_lr)

    def group_of(name: str) -> int:
        matches = [i for i, prefix in enumerate(prefixes) if within(name, prefix)]
        if matches:
            return 2 + max(matches, key=lambda i: len(prefixes[i]))  # the longest prefix
        return 0 if name.startswith("encoder.") else 1

    for name, parameter in named:
        groups[group_of(name)]["params"].append(parameter)
    # fused: one kernel over all tensors; on CPU the default loop over parameters cost about
    # 0.3 s a step for MiniLM's 28.5 M parameters, the fused kernel about 0.1 s (docs/performance.md)
    fused = all(p.device.type in ("cpu", "cuda") for _, p in named)
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


def related_pairs(features: list[Feature]) -> int:
    """Candidate pairs with at least one relation in `features`."""
    return sum(len(np.unique(f.labels[:, 0])) for f in features if f.labels is not None)


def _optimizer_step(model, loss_fn, optimizer, scheduler, scaler, micro_batches: list[list[Feature]], num_classes: int,
                    pad_id: int, device, dtype, max_grad_norm: float, max_batch_tokens: int = 0, window: int = 512,
                    global_pairs: list[int] | None = None, evidence_weight: float = 0.0,
                    global_related: list[int] | None = None,
                    augment=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step over accumulated micro-batches; returns (loss, grad norm, finite) as 0-d
    tensors on `device`, so that the step itself never waits for the device.

    Every part's loss is weighted by its share of its micro-batch's pairs over all processes, so the
    gradient equals the single-process mean over all pairs however the documents are split: over
    processes (DDP) or into parts of at most `max_batch_tokens` (memory). `global_pairs` are those
    totals per micro-batch (every process knows the whole batch); without them they are summed
    across processes. A non-finite loss or gradient skips the update (fp16: the grad scaler's own skip).
    A model that returns evidence (DREEAM) adds `evidence_weight` x its evidence KL, averaged over the
    micro-batch's pairs with a relation (`global_related`, likewise summed when not given) in the
    same exact way. `augment` (VaeDiff-DocRE's stage 3): labels [P, C] -> (synthetic pairs' cells [S, D], their
    labels [S, C]), appended to each part's pairs for a loss that takes them (`synthetic=S`).
    """
    model.train()
    world = distributed.world_size()
    if global_pairs is None:
        global_pairs = [int(distributed.sum_across(sum(len(f.hts) for f in features), device)) for features in micro_batches]
    if evidence_weight and global_related is None:
        global_related = [int(distributed.sum_across(related_pairs(features), device)) for features in micro_batches]
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    loss_finite = torch.ones((), dtype=torch.bool, device=device)
    for index, (features, pairs_in_batch) in enumerate(zip(micro_batches, global_pairs)):
        parts = split_by_tokens(features, max_batch_tokens, window)
        for part_index, part in enumerate(parts):
            batch = collate(part, num_classes, pad_id).to(device)
            share = batch.labels.size(0) / pairs_in_batch / len(micro_batches)  # of the global mean
            last = index == len(micro_batches) - 1 and part_index == len(parts) - 1
            with contextlib.nullcontext() if last or world == 1 else model.no_sync():
                features, labels = {}, batch.labels
                if augment is not None:  # the augmenter's pairs after the real ones (VaeDiff-DocRE's stage 3), in float32
                    synthetic, synthetic_labels = augment(batch.labels)
                    features["synthetic"] = synthetic.size(0)
                    labels = torch.cat([batch.labels, synthetic_labels.to(batch.labels.dtype)])
                with autocast(device, dtype):
                    if augment is not None:
                        output, features["features"] = model(batch, features=True, synthetic=synthetic)
                    elif wants_features(loss_fn):  # the pair features too (PEMSCL's contrastive term, within this part)
                        output, features["features"] = model(batch, features=True)
                    else:
                        output = model(batch)
                loss = loss_fn(logits_of(output), labels, **features) * share  # its part of the global mean
                if evidence_weight and isinstance(output, EvidenceOutput):  # mean over the micro-batch's related pairs
                    related = batch.labels[:, 0] == 0  # [P]
                    kl = evidence_kl(output.evidence[related], batch.evidence[related]).sum()
                    loss = loss + evidence_weight * kl / max(global_related[index], 1) / len(micro_batches)
                scaler.scale(loss * world).backward()
            loss_finite &= torch.isfinite(loss.detach())
            total_loss += loss.detach().double()
    distributed.all_reduce_sum_(total_loss)
    loss_finite = distributed.all_reduce_min_(loss_finite.to(torch.uint8)).bool()
    scaler.unscale_(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm if max_grad_norm > 0 else float("inf"))
    # fp16: the scaler itself skips a step whose gradients are not finite (a non-finite loss gives such gradients)
    finite = loss_finite if scaler.is_enabled() else loss_finite & torch.isfinite(grad_norm)
    if scaler.is_enabled():
        scaler.step(optimizer)
    else:
        _step_if_finite(optimizer, finite)
    scaler.update()
    scheduler.step()
    # zeroed in place, not freed: gradients allocated afresh every step, between the activations,
    # fragment the CPU heap (see release_free_memory); the update is the same either way
    optimizer.zero_grad(set_to_none=False)
    return total_loss, grad_norm.detach(), finite


def _synthetic_pairs(augmenter, copies: int, guidance: float, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VaeDiff-DocRE's stage-3 augmentation: `copies` synthetic cells per related pair of the batch (labels [P, C]),
    sampled from the augmenter with the pair's labels. Returns (cells [S, D], labels [S, C]); no gradient. The official
    code samples each document's pairs apart; one call for the batch draws from the same distribution."""
    related = labels[labels[:, 0] != 1]  # [R, C]
    wanted = related.repeat(copies, 1)  # [S, C]
    if wanted.size(0) == 0:
        return labels.new_zeros(0, augmenter.settings.hidden_size, dtype=torch.float32), wanted
    return augmenter.sample(wanted, guidance), wanted


def _step_if_finite(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """optimizer.step() unless `finite` (a 0-d bool tensor) is False. The fused AdamW takes the
    decision on the device (its found_inf input, as the grad scaler uses it: no update, the step count
    kept), so no step waits for the device; another optimizer asks the host."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = (~finite).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(finite):
        optimizer.step()


# ---------------------------------------------------------------------------------------------- helpers
def _short(scores: dict) -> str:
    return " ".join(f"{k}={v * 100:.2f}" for k, v in scores.items() if k in ("precision", "recall", "f1", "ign_f1"))


# (log.<flag>, the modules it imports, the package that brings them): trackers are optional installs
TRACKERS = [("wandb", ("wandb",), "wandb"), ("tensorboard", ("tensorboard", "torch.utils.tensorboard"), "tensorboard")]
WANDB_ID = "wandb_id.txt"  # in the run directory: a resumed run continues the same W&B run


def _require_trackers(cfg: Config) -> None:
    """One line naming the package to install when the config asks for a tracker that is not installed."""
    for flag, modules, package in TRACKERS:
        if getattr(cfg.log, flag):
            try:
                for module in modules:
                    importlib.import_module(module)
            except ImportError as error:
                raise DocreError(f"log.{flag}=true needs the {package} package ({error}): pip install {package}, "
                                 f"or set log.{flag}=false") from None


def _start_trackers(cfg: Config, run_dir: Path, step: int) -> Trackers:
    """Start the trackers the config asks for; `step` > 0 continues a resumed run."""
    trackers = Trackers()
    if cfg.log.wandb:
        import wandb

        id_file = run_dir / WANDB_ID
        same_run = {"id": id_file.read_text().strip(), "resume": "allow"} if step and id_file.is_file() else {}
        # its files go to WANDB_DIR where the user set one, else beside the run's own
        directory = None if os.environ.get("WANDB_DIR") else str(run_dir)
        try:
            trackers.wandb_run = wandb.init(project=cfg.log.wandb_project, name=cfg.run_name, config=to_dict(cfg),
                                            dir=directory, **same_run)
        except Exception as error:  # e.g. no API key: one line, not W&B's traceback
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise DocreError(f"log.wandb=true: W&B did not start ({reason}); run `wandb login`, "
                             "or set WANDB_MODE=offline") from None
        atomic_write_text(id_file, trackers.wandb_run.id)
    if cfg.log.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard drops a resumed run's events after its checkpoint, as metrics.jsonl drops its rows
        trackers.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1 if step else None)
        if not step:  # the config as Markdown (indented: a code block), once
            config_text = (run_dir / runs.CONFIG).read_text(encoding="utf-8")
            trackers.tensorboard.add_text("config", "\n".join("    " + line for line in config_text.splitlines()))
    return trackers


class CutShort(BaseException):
    """A stop request inside `StopSignals.cut_short` (a BaseException: no `except Exception` on the way may keep it)."""


class StopSignals:
    """Turn SIGINT/SIGTERM into a request to stop after the current step (within `cut_short`: at once); a second
    one stops at once (an `Interrupted` error naming the last checkpoint); a third one gets the default action."""

    def __init__(self, run_dir: Path, state: TrainState):
        self.signal: int | None = None
        self.forced: int | None = None
        self.activity = ""  # what runs between optimizer steps (set by fit), for the messages; "" = a step
        self._cuttable = False
        self._previous: dict = {}
        self._run_dir, self._state = run_dir, state

    @contextlib.contextmanager
    def cut_short(self, allowed: bool = True):
        """Within: work that changes nothing (an evaluation) is cut short by a stop request, one made earlier
        included, with CutShort."""
        if allowed and self.signal is not None:
            raise CutShort
        self._cuttable = allowed
        try:
            yield
        finally:
            self._cuttable = False

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            self.forced = signum
            raise KeyboardInterrupt
        self.signal = signum
        if self._cuttable:
            logger.warning("received %s: stopping %s now", signal.Signals(signum).name, self.activity)
            self._cuttable = False  # the rest of the way out (saving the checkpoint) is not cut short
            raise CutShort
        logger.warning("received %s: stopping after %s (send again to stop at once)", signal.Signals(signum).name,
                       self.activity or "this step")

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self.forced is not None and exc_type is KeyboardInterrupt:
            raise Interrupted(
                f"stopped at once by a second {signal.Signals(self.forced).name} during "
                f"{self.activity or f'step {self._state.step + 1}'}. "
                f"{runs.last_checkpoint_message(self._run_dir)}", self.forced
            ) from None
