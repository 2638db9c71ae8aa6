"""`loss.alpha=auto` for ATGL: train once per alpha of a small grid, keep the best dev F1.

The ATGL paper picks alpha by the size of the label space and then tries {0.5, 1, 2} x alpha on dev;
this does it for the user. Layout of RUN_DIR (= output_dir/run_name):

    alpha_sweep/alpha=<v>/   one normal run per value (resume, skip and evaluate work on each)
    alpha_sweep.json         every value's dev/test scores and the chosen alpha
    alpha_sweep.png          dev/test F1, P and R against alpha
    config.yaml              the sweep's own config (loss.alpha: auto), so --resume RUN_DIR resumes it
    best.safetensors, rel2id.json, decode.json, best.json, results.json, *_predictions.json
                             the chosen run's, so evaluate.py RUN_DIR and load_trained work on RUN_DIR:
                             decode.json carries the chosen alpha, which overrides "auto" when the
                             loss is rebuilt (load_trained merges decode.json into the loss keywords).

Running the same command again skips finished values and resumes an interrupted one, by the rule every
grid of runs follows (`run_dir.plan`). A finished sweep is not redone unless train.overwrite=true; an
unfinished sweep of the same config is always continued (its runs are resume-safe), also under
train.overwrite=true, which is how scripts/reproduce.py restarts runs that have no checkpoint of their own.
"""

import contextlib
import copy
import os
import shutil
from pathlib import Path

from docre import distributed
from docre import run_dir as runs
from docre.config import Config, load_config, save_config
from docre.errors import DocreError
from docre.utils import atomic_write_json, hold_lock, logger, resolve_device, runs_left_note

# The ATGL paper's alpha per dataset (data.dataset, or the data folder's name for DocRED-format sets).
PAPER_ALPHA = {"docred": 16.5, "redocred": 16.5, "cdr": 7.5, "dwie": 6.0, "docgnre": 20.0}
SWEEP_DIR = "alpha_sweep"
# The chosen run's files that make RUN_DIR usable as a run of its own.
ADOPTED = (runs.BEST_WEIGHTS, runs.REL2ID, runs.BEST_SCORES, "dev_predictions.json", "test_predictions.json",
           "dev_logits.safetensors", "test_logits.safetensors", runs.METRICS)  # metrics: the learning curve plots read
# The folder is a sweep's identity: a moved or copied sweep continues where it is.


def is_auto(cfg: Config) -> bool:
    return cfg.loss.get("alpha") == "auto"


def chosen_alpha(run_dir: Path) -> float | None:
    """The alpha a finished sweep in `run_dir` chose (its results.json, written by tune_alpha), else None."""
    results = runs.read_results(run_dir)
    return None if results is None else results.get("alpha")


def run(cfg: Config) -> dict:
    """train(cfg), or the alpha sweep when loss.alpha is auto (what train.py calls)."""
    if cfg.train.resume:  # --resume RUN, CONFIG train.resume=RUN, or a Python caller's cfg
        part, whole = Path(cfg.train.resume), runs.outermost_run(Path(cfg.train.resume))
        if whole != part:  # resumed alone, a part would train a second whole run inside itself
            raise DocreError(f"{cfg.train.resume}: a part of the run {whole} (an alpha sweep's value or a VaeDiff-DocRE "
                             f"stage), which resumes it: {runs.resume_command(whole)}")
    return tune_alpha(cfg) if is_auto(cfg) else train_one(cfg)


def train_one(cfg: Config) -> dict:
    """One run: trainer.train(cfg), or VaeDiff-DocRE's three stages for model.name=vaediff (docre/vaediff.py)."""
    if cfg.model.name == "vaediff":
        from docre.vaediff import train_vaediff

        return train_vaediff(cfg)
    from docre.trainer import train

    return train(cfg)


def alpha_values(cfg: Config) -> list[float]:
    """The grid: sweep.alpha_grid x sweep.alpha_base (else the dataset's paper alpha), ascending."""
    base = cfg.sweep.alpha_base or PAPER_ALPHA.get(cfg.data.dataset) or PAPER_ALPHA.get(Path(cfg.data.dir).name)
    if base is None:
        raise DocreError(f"loss.alpha=auto: no paper alpha for data.dataset={cfg.data.dataset!r} (known: "
                         f"{', '.join(PAPER_ALPHA)}); set sweep.alpha_base")
    return sorted({round(base * multiple, 6) for multiple in cfg.sweep.alpha_grid})


def tune_alpha(cfg: Config) -> dict:
    """Train every alpha of the grid in RUN_DIR/alpha_sweep/, pick the best dev F1 (the smaller alpha
    on a tie), record the sweep and adopt the chosen run's results as RUN_DIR's.

    Returns:
        The chosen run's results with run_dir = RUN_DIR, plus "alpha" and "alpha_sweep" (every value).
    """
    values = alpha_values(cfg)  # fails before anything is trained on an unknown dataset
    if not cfg.data.dev_file:
        raise DocreError("loss.alpha=auto needs a dev split to choose alpha (data.dev_file is empty)")
    run_dir = runs.path_of(cfg)
    # under torchrun: one process group for every run of the sweep; rank 0 alone writes the sweep's files
    rank = distributed.init_distributed(resolve_device(cfg.train.device))[0]
    # rank 0 holds the sweep's lock throughout (each value's run takes its own as well)
    with hold_lock(run_dir) if rank == 0 else contextlib.nullcontext():
        prepare_parent(run_dir, cfg, rank)
        rows = _train_values(cfg, run_dir, values)
        chosen = choose(rows)
        logger.info("alpha sweep: dev F1 %s; chosen alpha %g",
                    ", ".join(f"{row['alpha']:g}: {row['dev']['f1']:.4f}" for row in rows), chosen["alpha"])
        chosen_dir = Path(chosen["run_dir"])
        # the sweep's cost is every value's run (tables and grid estimates read it), not the chosen one's alone
        wall = sum(row["wall_seconds"] or 0.0 for row in rows)
        results = runs.read_results(chosen_dir) | {"run_dir": str(run_dir), "alpha": chosen["alpha"], "alpha_sweep": rows,
                                                   "wall_seconds": wall}
        if rank == 0:
            _adopt(run_dir, chosen_dir, cfg, chosen["alpha"], rows, results)
        distributed.barrier()
    return results


def choose(rows: list[dict]) -> dict:
    """The row of the best dev F1 (test scores and Ign F1 play no part); the smaller alpha on a tie."""
    return min(rows, key=lambda row: (-row["dev"]["f1"], row["alpha"]))


def _train_values(cfg: Config, run_dir: Path, values: list[float]) -> list[dict]:
    """Train (or skip, or resume) the run of every alpha; one row per value: alpha, run_dir, dev and test
    scores, wall seconds."""
    rows = []
    durations = []  # wall seconds of the finished values' runs (earlier ones too): the same config but alpha
    for index, alpha in enumerate(values):
        sub_dir = _value_dir(run_dir, alpha)
        action, sub_cfg = runs.plan(sub_dir, _sub_config(cfg, alpha, sub_dir), resumed_keys(cfg))
        if action == "skip":
            logger.info("alpha %g: finished earlier (%s), skipped", alpha, sub_dir)
            results = runs.read_results(sub_dir)
        else:
            left = sum(1 for value in values[index:] if runs.read_results(_value_dir(run_dir, value)) is None)
            logger.info("alpha %g (%d of %d): %s in %s (%s)", alpha, index + 1, len(values), action, sub_dir,
                        runs_left_note(durations, left))
            results = train_one(sub_cfg)
        if results.get("wall_seconds"):
            durations.append(results["wall_seconds"])
        rows.append({"alpha": alpha, "run_dir": str(sub_dir), "dev": results.get("dev", {}), "test": results.get("test", {}),
                     "wall_seconds": results.get("wall_seconds")})
    return rows


def _adopt(run_dir: Path, chosen_dir: Path, cfg: Config, alpha: float, rows: list[dict], results: dict) -> None:
    """Make RUN_DIR a run of its own: the chosen run's files, the sweep's record and plot, results.json."""
    adopt_files(run_dir, chosen_dir)
    atomic_write_json(run_dir / runs.DECODE, {**runs.read_decode(chosen_dir), "alpha": alpha})
    sweep = {"chosen_alpha": alpha, "chosen_run": str(chosen_dir), "dataset": cfg.data.dataset,
             "alpha_base": cfg.sweep.alpha_base or None, "alpha_grid": cfg.sweep.alpha_grid, "runs": rows}
    atomic_write_json(run_dir / "alpha_sweep.json", sweep)
    from docre.plots import plot_alpha_sweep

    plot_alpha_sweep([run_dir], run_dir / "alpha_sweep.png", cfg.run_name)
    atomic_write_json(run_dir / runs.RESULTS, results)  # last: its presence marks the sweep finished


def adopt_files(run_dir: Path, chosen_dir: Path) -> None:
    """The files of the run in `chosen_dir` that make RUN_DIR loadable as that run (`ADOPTED`), linked or copied."""
    for name in ADOPTED:
        if (chosen_dir / name).is_file():
            _link_or_copy(chosen_dir / name, run_dir / name)


def prepare_parent(run_dir: Path, cfg: Config, rank: int, kind: str = "alpha sweep") -> None:
    """Create RUN_DIR with the config of a run made of runs (an alpha sweep, VaeDiff-DocRE's stages); refuse or
    replace a finished or different one; continue an unfinished one of the same config. The rules of
    run_dir.prepare for a plain run: what failed before it kept anything is replaced, what kept work is refused."""
    saved_path = run_dir / runs.CONFIG
    finished = (run_dir / runs.RESULTS).is_file()
    if cfg.train.init_from:  # checked before anything here is emptied: the weights would be gone before they are read
        runs.init_source(run_dir, cfg.train.init_from)
    if cfg.train.resume:
        if finished:
            raise DocreError(f"{run_dir}: this run already finished ({runs.RESULTS}); there is nothing to resume")
        # its parts would refuse other settings after config.yaml took them, and every later resume with it: refused first
        changed = runs.config_differences(load_config(saved_path), cfg, runs.RESUME_KEYS) if saved_path.is_file() else []
        if changed:
            raise DocreError(f"{run_dir}: resumed with other settings than the {kind}'s ({'; '.join(changed[:3])}); its "
                             "runs go on with their own: resume without the overrides that change what it trains")
    replace = False
    if not cfg.train.resume and run_dir.exists() and runs.holds_files(run_dir):
        differences = (runs.config_differences(load_config(saved_path), cfg) if saved_path.is_file()
                       else ["no config.yaml"])
        if differences and (cfg.train.overwrite or runs.only_start_files(run_dir)):
            replace = True
        elif differences:
            raise DocreError(f"{run_dir}: holds a{' finished' if finished else 'n unfinished'} {kind} of another config "
                             f"({'; '.join(differences[:3])}); choose another run_name or set train.overwrite=true")
        elif finished and cfg.train.overwrite:
            replace = True
        elif finished:
            raise DocreError(f"{run_dir}: this {kind} already finished; choose another run_name or set train.overwrite=true")
    distributed.barrier()  # every process has judged the folder before rank 0 empties it or writes to it
    if rank == 0:
        if replace:
            runs.empty(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        saved = copy.deepcopy(cfg)
        saved.train.resume, saved.train.overwrite = "", False
        save_config(saved, saved_path)
    distributed.barrier()


def resumed_keys(cfg: Config) -> set[str]:
    """The settings a part may differ in from the parent's config: where it runs too when the parent is resumed
    (prepare_parent has refused any other change then)."""
    return runs.RESUME_KEYS if cfg.train.resume else runs.START_KEYS


def _value_dir(run_dir: Path, alpha: float) -> Path:
    return run_dir / SWEEP_DIR / f"alpha={alpha:g}"


def _sub_config(cfg: Config, alpha: float, sub_dir: Path) -> Config:
    """The config of one grid value: a normal ATGL run in sub_dir (`run_dir.plan` then decides
    whether it is skipped, resumed, started again or started)."""
    sub = copy.deepcopy(cfg)
    sub.loss = {**cfg.loss, "alpha": alpha}
    sub.output_dir, sub.run_name = str(sub_dir.parent), sub_dir.name
    sub.train.resume, sub.train.overwrite = "", False
    return sub


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link (no second copy of the weights), else copy; replaces target either way."""
    temporary = target.with_name(target.name + ".tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copy2(source, temporary)
    os.replace(temporary, target)
