"""VaeDiff-DocRE (Tran, Hua, Li, COLING 2025) in one command: `train.py` with `model.name: vaediff` runs its three
stages (official code github.com/khaitran22/VaeDiff-DocRE at 5f51f9e: three separate code trees, `Stage_1..3/`).

    RUN_DIR/stage1/   stage 1: KD-DocRE's model with the run's loss (VaeDiff's own: `loss.name: vaediff`), a normal run
    RUN_DIR/stage2/   stage 2: features.safetensors, the frozen stage-1 model's cells of every related training pair
                      (computed once), and the augmenter (VAE + latent diffusion prior) trained on them
                      (augmenter.safetensors, augmenter.json, augmenter_fit.json; last/ while it trains)
    RUN_DIR/stage3/   stage 3: a fresh model (or the stage-1 weights: vaediff.stage3_from_stage1) trained again, with
                      the augmenter's synthetic pairs from epoch vaediff.augment_from_epoch on
    RUN_DIR/          the stage-3 run's weights, scores and predictions, so that evaluate.py, predict and export work
                      on RUN_DIR as on any run; config.yaml is the command's own config; train.log the stages'
                      progress and stage 2's lines (stages 1 and 3 log to their own train.log)

Running the same command again (or `--resume RUN_DIR`, or scripts/reproduce.py) skips the finished stages and
resumes the interrupted one from its last checkpoint, by the rule every grid follows (`run_dir.plan`); stage 2 resumes
at its last finished epoch. SIGINT/SIGTERM stop any stage as they stop train(): stage 2 before its next batch (a second
one at once), with an `Interrupted` error naming the resume command. The stages run on one process. docs/models.md
lists the official code's bugs fixed here.
"""

import copy
import json
import os
import signal
import time
from pathlib import Path

import torch

from docre import run_dir as runs
from docre.augmenter import (
    AUGMENTER_FIT,
    AUGMENTER_WEIGHTS,
    Augmenter,
    AugmenterSettings,
    fit_augmenter,
    require_diffusers,
)
from docre.checkpoint import find_training_state
from docre.config import Config
from docre.errors import DocreError
from docre.sweep import adopt_files, prepare_parent, resumed_keys
from docre.utils import atomic_write_json, hold_lock, logger, resolve_device, setup_logging

STAGES = ("stage1", "stage2", "stage3")
FEATURES = "features.safetensors"


def train_vaediff(cfg: Config) -> dict:
    """The three stages (module docstring). Returns the stage-3 run's results with run_dir = RUN_DIR."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DocreError("model.name=vaediff trains on one process (its stage 2 is not distributed); run it without torchrun")
    require_diffusers()  # now, not after stage 1 has trained
    _check_loss(cfg)
    run_dir = runs.path_of(cfg)
    with hold_lock(run_dir):  # the whole run's; stages 1 and 3 (each a train()) take their own as well
        prepare_parent(run_dir, cfg, 0, kind="VaeDiff-DocRE run")
        return _run_stages(cfg, run_dir)


def _check_loss(cfg: Config) -> None:
    """Refuse a loss that takes no synthetic pairs: stage 3 would train without the augmenter (stage 2 wasted)."""
    from docre.losses import LOSSES, takes_synthetic
    from docre.losses.vaediff import CLASSIFICATIONS

    name = cfg.loss["name"]
    if takes_synthetic(LOSSES[name]):  # the class attribute the trainer reads on the built loss
        return
    swap = f"loss={{name: vaediff, classification: {name}}}" if name in CLASSIFICATIONS else "loss={name: vaediff}"
    raise DocreError(f"model.name=vaediff: loss {name} takes no synthetic pairs, so stage 3 would train without the "
                     f"augmenter; use {swap}, or model.name=kd_docre (the same model without the augmenter)")


def _run_stages(cfg: Config, run_dir: Path) -> dict:
    from docre.trainer import process_settings, train

    stage1_dir, stage2_dir, stage3_dir = (run_dir / stage for stage in STAGES)
    # the process-wide settings train() makes, made for stage 2 too: run after a finished stage 1 (a resume), no
    # train() has made them, and the augmenter's sums depend on them (a resume must give the uninterrupted run's weights)
    process_settings(cfg.train, resolve_device(cfg.train.device))
    log = run_dir / "train.log"  # the stages' progress and stage 2's lines (stages 1 and 3: their own train.log)
    setup_logging(log)

    _run_stage(train, _stage_config(cfg, stage1_dir), "stage 1 (the backbone model)", resumed_keys(cfg))

    setup_logging(log)  # back from stage 1's own log
    if not (stage2_dir / AUGMENTER_WEIGHTS).is_file():
        _run_stage2(cfg, run_dir)
    else:
        logger.info("stage 2 (the augmenter): finished earlier (%s), skipped", stage2_dir)

    stage3 = _stage_config(cfg, stage3_dir)
    stage3.vaediff.augmenter = str(stage2_dir)
    if cfg.loss["name"] == "vaediff":  # the official stage 3 trains its first epochs without the contrastive term
        stage3.loss = {**stage3.loss, "contrastive_alone": False}
    if cfg.vaediff.stage3_from_stage1:
        stage3.train.init_from = str(stage1_dir)
    results = _run_stage(train, stage3, "stage 3 (training with synthetic pairs)", resumed_keys(cfg))

    # the whole run's time: the two training stages' and the augmenter's, each over all its processes
    fit_path = stage2_dir / AUGMENTER_FIT  # absent where stage 2 ran under docre before it was written
    fit = json.loads(fit_path.read_text(encoding="utf-8")) if fit_path.is_file() else {}
    seconds = {"stage1": runs.read_results(stage1_dir).get("wall_seconds"), "stage3": results.get("wall_seconds"),
               "stage2": fit.get("seconds", 0.0) + cache_seconds(stage2_dir / FEATURES)}
    results = {**results, "run_dir": str(run_dir), "stages": {stage: str(run_dir / stage) for stage in STAGES},
               "stage_seconds": seconds, "wall_seconds": sum(v or 0.0 for v in seconds.values())}
    adopt_files(run_dir, stage3_dir)
    atomic_write_json(run_dir / runs.DECODE, runs.read_decode(stage3_dir))
    atomic_write_json(run_dir / runs.RESULTS, results)  # last: its presence marks the whole run finished
    return results


def _run_stage2(cfg: Config, run_dir: Path) -> None:
    """The feature cache and the augmenter's fit (or its resume), stopped by SIGINT/SIGTERM as train() is: the first
    before the next batch, a second at once (the trainer's handler, whose Interrupted names stage 2's checkpoint)."""
    from docre.trainer import CutShort, StopSignals, TrainState

    stage1_dir, stage2_dir = run_dir / "stage1", run_dir / "stage2"
    with StopSignals(stage2_dir, TrainState()) as stop:
        device = resolve_device(cfg.train.device)
        stop.activity = "the feature cache of stage 2"
        try:
            with stop.cut_short():  # a forward pass over the training split, written at its end alone: cut at once
                features, labels, docs = cached_features(stage1_dir, stage2_dir / FEATURES, device)
        except CutShort:
            raise _stopped_in_stage2(stop.signal, run_dir) from None
        stop.activity = "the current batch of stage 2 (the augmenter)"
        settings = AugmenterSettings(features.size(1), labels.size(1), cfg.vaediff.latent_size,
                                     cfg.vaediff.denoiser_width, cfg.vaediff.denoiser_depth,
                                     max(cfg.vaediff.denoiser_width // 64, 1), diffusion_steps=cfg.vaediff.diffusion_steps)
        logger.info("stage 2 (the augmenter): %d related training pairs of %d documents, %d epochs in %s",
                    features.size(0), len(torch.unique(docs)), cfg.vaediff.augmenter_epochs, stage2_dir)
        torch.manual_seed(cfg.seed)  # its initial weights must not depend on what this process ran before
        fit_augmenter(Augmenter(settings).to(device), features.to(device), labels.to(device), docs, stage2_dir,
                      cfg.vaediff, cfg.seed, stop=lambda: stop.signal is not None)
    if stop.signal is not None:  # stopped before a batch, or stage 2 finished first: stage 3 does not start either way
        raise _stopped_in_stage2(stop.signal, run_dir)


def _stopped_in_stage2(signum: int, run_dir: Path) -> Exception:
    """docre.trainer.Interrupted for a stop request in stage 2: what it kept, and the command that resumes the run."""
    from docre.trainer import Interrupted

    stage2_dir = run_dir / "stage2"
    saved = find_training_state(stage2_dir / "last")
    name, stage = signal.Signals(signum).name, "stage 2 (the augmenter)"
    if (stage2_dir / AUGMENTER_WEIGHTS).is_file():
        kept = f"interrupted by {name} in {stage} after its last epoch; the augmenter is saved in {stage2_dir}"
    elif saved:
        epoch = runs.checkpoint_counters(saved).get("epoch")  # None: a damaged state.json
        kept = f"interrupted by {name} in {stage}{'' if epoch is None else f' after epoch {epoch}'}; checkpoint saved in {saved}"
    else:
        kept = f"interrupted by {name} in {stage} before its first epoch ended; no checkpoint yet"
    return Interrupted(f"{kept}. Resume with: {runs.resume_command(run_dir)}", signum)


def _stage_config(cfg: Config, stage_dir: Path) -> Config:
    """The config of one training stage: the command's, run in `stage_dir` (`run_dir.plan` then decides whether it
    is skipped, resumed, started again or started)."""
    stage = copy.deepcopy(cfg)
    stage.output_dir, stage.run_name = str(stage_dir.parent), stage_dir.name
    stage.train.resume, stage.train.overwrite = "", False
    stage.vaediff.augmenter = ""
    return stage


def _run_stage(train, stage_cfg: Config, what: str, ignored: set[str]) -> dict:
    stage_dir = runs.path_of(stage_cfg)
    action, stage_cfg = runs.plan(stage_dir, stage_cfg, ignored)
    if action == "skip":
        logger.info("%s: finished earlier (%s), skipped", what, stage_dir)
        return runs.read_results(stage_dir)
    logger.info("%s: %s in %s", what, action, stage_dir)
    return train(stage_cfg)


def cache_seconds(path: Path) -> float:
    """How long computing the feature cache `path` took (its metadata; 0 if it does not say)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as cache:
        return float((cache.metadata() or {}).get("seconds", 0.0))


@torch.no_grad()
def cached_features(stage1_dir: Path, path: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cells [N, H], labels [N, C], document index [N]) of every related training pair under the best stage-1
    model, computed once and kept in `path` (the official stage 2 recomputes them in each of its 100 epochs)."""
    from safetensors.torch import load_file

    from docre.data import load_split
    from docre.data.collate import collate
    from docre.utils import atomic_save_safetensors

    if path.is_file():
        saved = load_file(str(path))
        return saved["features"], saved["labels"], saved["docs"]
    started = time.perf_counter()
    cfg, tokenizer, model, _, rel2id = runs.load_trained(stage1_dir, device)
    data = cfg.data  # the training split alone, with the stage-1 run's relation map
    train_split = load_split("train", data.dataset, data.train_file, data.dir, tokenizer, rel2id, cfg.model.marker,
                             cfg.model.max_seq_length, data.cache_dir, require_labels=True)
    cells, labels, docs = [], [], []
    batch_size = cfg.eval.batch_size
    for start in range(0, len(train_split.features), batch_size):
        part = train_split.features[start : start + batch_size]
        batch = collate(part, len(rel2id), tokenizer.pad_token_id or 0).to(device)
        _, pair_features = model(batch, features=True)
        related = batch.labels[:, 0] != 1  # [P]
        doc_of_pair = torch.repeat_interleave(torch.arange(start, start + len(part)), torch.tensor(batch.pairs_per_doc))
        cells.append(pair_features.vector[related].float().cpu())
        labels.append(batch.labels[related].float().cpu())
        docs.append(doc_of_pair[related.cpu()])
    saved = {"features": torch.cat(cells), "labels": torch.cat(labels), "docs": torch.cat(docs)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(saved, path, metadata={"seconds": str(time.perf_counter() - started)})
    return saved["features"], saved["labels"], saved["docs"]
