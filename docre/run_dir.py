"""The run directory: its layout, its state, the saved-vs-requested config check, and loading a
trained run from it. Every command that reads or writes runs goes through here.

A run directory (`output_dir/run_name`) holds:

    config.yaml              the resolved config; what evaluate/predict/export rebuild the run from
    environment.json         library versions, device, git commit (earlier processes of a resumed run under "earlier")
    rel2id.json              relation id -> class index
    train.log, metrics.jsonl the log, and one JSON row per logged step and dev evaluation
    best.safetensors         weights of the best dev checkpoint (the final weights when there is no dev split)
    best.json                that checkpoint's dev scores
    decode.json              decision parameters tuned on dev with those weights (e.g. BCE's threshold)
    loss_statistics.json     what the loss took from the training split (SSR-PU's priors, AMTL's label spaces)
    dev_predictions.json, test_predictions.json          leaderboard rows
    dev_logits.safetensors, test_logits.safetensors      fp16 logits (eval.save_logits)
    curves.png               the learning curve: dev F1 and training loss against the epoch
    results.json             final scores; written last, so its presence means the run finished
    failed.json              {"error": one line}: why the run's last process ended in an error (bad data or
                             settings, a crash; not Ctrl-C or a stop signal, after which it is resumable);
                             removed when the run starts again or resumes. A process killed outright
                             (SIGKILL, out of host memory) cannot write it: such a run looks unfinished.
    last/                    the resume checkpoint (removed when the run finishes)
    alpha_sweep/, alpha_sweep.json, alpha_sweep.png      loss.alpha=auto (docre/sweep.py)
    stage1/, stage2/, stage3/                            model.name=vaediff (docre/vaediff.py)

An exported model folder (scripts/export.py) holds config.yaml, model.safetensors, encoder/,
rel2id.json and decode.json, and loads like a run.
"""

import contextlib
import fnmatch
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from docre import distributed
from docre.augmenter import AUGMENTER_WEIGHTS  # stage 2 of VaeDiff-DocRE is finished once it is written
from docre.checkpoint import find_training_state
from docre.config import Config, load_config, to_dict
from docre.errors import DocreError
from docre.utils import LOCK, atomic_write_text

CONFIG = "config.yaml"
RESULTS = "results.json"
DECODE = "decode.json"
LOSS_STATISTICS = "loss_statistics.json"
BEST_WEIGHTS = "best.safetensors"
BEST_SCORES = "best.json"
LAST = "last"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
REL2ID = "rel2id.json"
FAILED = "failed.json"
EXPORTED_WEIGHTS = "model.safetensors"
EXPORTED_ENCODER = "encoder"

# What a start writes before its first checkpoint. A run directory holding nothing else (apart from
# the temporary files of killed writes) saved nothing worth keeping: a failed start (bad data, a
# missing backbone, out of memory at step 1) must not block the next attempt under the same name.
START_FILES = {CONFIG, "environment.json", REL2ID, LOSS_STATISTICS, "train.log", METRICS, "last.tmp", FAILED, LOCK}
# Settings that may differ between a run on disk and the same run requested again without changing
# what is trained: how it was started, the CPU threads (seeds may run side by side), and the folder
# that holds it (a runs folder copied to another machine or mounted elsewhere holds the same runs).
START_KEYS = {"train.resume", "train.overwrite", "train.num_threads", "output_dir"}
# Settings a resumed run may change without a warning: where and how fast it runs, not what it learns.
RESUME_KEYS = START_KEYS | {"train.device", "data.cache_dir", "eval.batch_size"}


def path_of(cfg: Config) -> Path:
    """The run directory a config trains into: train.resume's, else output_dir/run_name."""
    return Path(cfg.train.resume) if cfg.train.resume else Path(cfg.output_dir) / cfg.run_name


# ---------------------------------------------------------------------------------------------- state
@dataclass
class RunState:
    """Where a run directory stands: finished (results.json), resumable (a complete last/ checkpoint),
    stale (files but no checkpoint: it stopped before its first save and starts again), or missing."""

    kind: str
    detail: str = ""  # e.g. "checkpoint at step 120"
    checkpoint: Path | None = None


# The parts of a run made of runs: an alpha sweep's values (docre.sweep) and VaeDiff-DocRE's stages (docre.vaediff),
# each a folder of its own with its own checkpoint. The parent keeps no checkpoint: it goes on from its parts'.
PARTS = ("alpha_sweep/alpha=*", "stage1", "stage2", "stage3")


def state_of(run_dir: Path) -> RunState:
    run_dir = Path(run_dir)
    if (run_dir / RESULTS).is_file():
        return RunState("finished")
    checkpoint = find_training_state(run_dir / LAST)
    if checkpoint is not None:
        return RunState("resumable", checkpoint_detail(checkpoint), checkpoint)
    kept = kept_parts(run_dir)
    if kept:  # resumed part by part: `--resume RUN_DIR` runs the parent again, which skips or resumes each part
        return RunState("resumable", "kept: " + ", ".join(kept))
    if run_dir.is_dir() and holds_files(run_dir):
        return RunState("stale", "no checkpoint: starts again")
    return RunState("missing")


def kept_parts(run_dir: Path, prefix: str = "") -> list[str]:
    """What the parts of a run made of runs have kept, e.g. ['alpha=4.125/stage1 finished',
    'alpha=4.125/stage2 checkpoint after epoch 63']; [] for a plain run, or one whose parts kept nothing."""
    kept = []
    for pattern in PARTS:
        for part in sorted(path for path in run_dir.glob(pattern) if path.is_dir()):
            name = prefix + part.name
            checkpoint = find_training_state(part / LAST)
            if (part / RESULTS).is_file() or (part / AUGMENTER_WEIGHTS).is_file():
                kept.append(f"{name} finished")
            elif checkpoint is not None:
                kept.append(f"{name} {checkpoint_detail(checkpoint)}")
            else:
                kept += kept_parts(part, name + "/")
    return kept


def only_start_files(run_dir: Path) -> bool:
    """Whether every file under the directory, its parts' included, is one that a start writes (START_FILES): a
    run that failed before it kept anything."""
    run_dir = Path(run_dir)

    def kept(path: Path) -> bool:  # a staged checkpoint (last.tmp/) or a killed write's temporary file keeps nothing
        temporary = "last.tmp" in path.relative_to(run_dir).parts or (path.name.startswith(".") and path.name.endswith(".tmp"))
        return not (path.is_dir() or temporary or path.name in START_FILES)

    return not any(kept(path) for path in run_dir.rglob("*"))


def holds_files(run_dir: Path) -> bool:
    """Whether the directory holds anything but the lock of a process that trains (or trained) there."""
    return any(path.name != LOCK for path in run_dir.iterdir())


def empty(run_dir: Path) -> None:
    """Delete everything in the directory but the lock, which the process emptying it holds."""
    for path in run_dir.iterdir():
        if path.name != LOCK:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def checkpoint_counters(checkpoint: Path) -> dict:
    """The counters a complete checkpoint was saved with (a training run's "step", VaeDiff-DocRE's stage 2's
    "epoch"), or {} where its state.json does not say (damaged, or not the JSON object docre writes): the
    weights are still there to resume from."""
    try:
        counters = read_json(checkpoint / "state.json")["counters"]
    except (OSError, DocreError, KeyError, TypeError):
        return {}
    return counters if isinstance(counters, dict) else {}


def checkpoint_detail(checkpoint: Path) -> str:
    """'checkpoint at step 120', 'checkpoint after epoch 63' (VaeDiff-DocRE's stage 2), or 'checkpoint present'."""
    counters = checkpoint_counters(checkpoint)
    if "step" in counters:
        return f"checkpoint at step {counters['step']}"
    return f"checkpoint after epoch {counters['epoch']}" if "epoch" in counters else "checkpoint present"


def config_differences(saved: Config, intended: Config, ignored: set[str] = START_KEYS) -> list[str]:
    """`key: saved -> intended` for every setting that differs, `ignored` keys and log.* left out;
    the loss mapping compares as one value (its keywords belong together)."""
    a, b = _flatten(to_dict(saved)), _flatten(to_dict(intended))
    keys = sorted(key for key in a.keys() | b.keys() if key not in ignored and not key.startswith("log."))
    return [f"{key}: {a.get(key)!r} -> {b.get(key)!r}" for key in keys if a.get(key) != b.get(key)]


def check_same_config(run_dir: Path, cfg: Config, ignored: set[str] = START_KEYS) -> None:
    """Refuse a run directory that holds a run of another config (it would otherwise be counted, or
    resumed, as this one). A directory without config.yaml passes: it has nothing to compare."""
    saved_path = Path(run_dir) / CONFIG
    if not saved_path.is_file():
        return
    try:
        saved = load_config(saved_path)
    except DocreError as error:
        raise DocreError(f"{run_dir}: its config.yaml does not load ({error}); move the run away") from None
    differences = config_differences(saved, cfg, ignored)
    if differences:
        shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
        raise DocreError(f"{run_dir}: holds a run of another config ({shown}); use another output folder or move that run away")


# What a grid of runs does with a run in each state.
ACTIONS = {"finished": "skip", "resumable": "resume", "stale": "start again", "missing": "start"}


def plan(run_dir: Path, cfg: Config, ignored: set[str] = START_KEYS) -> tuple[str, Config]:
    """What a grid does with one of its runs, and the config to train it with: "skip" (finished),
    "resume" (from its checkpoint), "start again" (stopped before its first checkpoint) or "start".
    A finished or resumable run of another config is an error, never silently reused.

    The one skip / resume / start-again rule of the alpha sweep (in-process) and of docre.grid
    (scripts/reproduce.py, scripts/compare_losses.py), which passes the same decision to a training
    process as `--resume RUN_DIR` or `train.overwrite=true`.
    """
    import copy

    state = state_of(run_dir)
    if state.kind in ("finished", "resumable"):
        check_same_config(run_dir, cfg, ignored)
    cfg = copy.deepcopy(cfg)
    cfg.train.resume, cfg.train.overwrite = "", False
    if state.kind == "resumable":
        cfg.train.resume = str(run_dir)
    elif state.kind == "stale":
        cfg.train.overwrite = True
    return ACTIONS[state.kind], cfg


def prepare(run_dir: Path, cfg: Config, rank: int) -> Path | None:
    """Create the run directory for train(cfg); return the checkpoint to resume from, if resuming.

    Raises:
        DocreError: resuming a finished run or one without a checkpoint; starting over a finished or
            unfinished run, or a non-empty folder, without train.overwrite.
    """
    if cfg.train.resume:
        state = state_of(run_dir)
        if state.kind == "finished":
            raise DocreError(f"{run_dir}: this run already finished ({RESULTS}); there is nothing to resume")
        if state.checkpoint is None:
            raise DocreError(f"{run_dir}: no checkpoint to resume from (no complete {LAST}/ directory)")
        if rank == 0:
            (run_dir / FAILED).unlink(missing_ok=True)  # this process may fail again, or finish
        return state.checkpoint
    if run_dir.exists() and holds_files(run_dir):
        leftovers = [p.name for p in run_dir.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))]
        if cfg.train.overwrite or set(leftovers) <= START_FILES:
            if rank == 0:
                empty(run_dir)
        elif (run_dir / RESULTS).exists():
            raise DocreError(f"{run_dir}: this run already finished; choose another run_name or set train.overwrite=true")
        elif find_training_state(run_dir / LAST) is not None:
            raise DocreError(f"{run_dir}: holds an unfinished run; resume it with {resume_command(run_dir)}, "
                             "or set train.overwrite=true")
        else:
            raise DocreError(f"{run_dir}: directory is not empty; choose another run_name or set train.overwrite=true")
    distributed.barrier()
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def last_checkpoint_message(run_dir: Path, resume_hint: bool = True) -> str:
    """Where the last complete checkpoint is (and how to resume from it), for stop messages; for a part of a run made
    of runs without one yet, what the run's other parts kept."""
    state = find_training_state(run_dir / LAST)
    hint = f" Resume with: {resume_command(run_dir)}" if resume_hint else ""
    if state is None:
        whole = outermost_run(run_dir)
        kept = kept_parts(whole) if whole != run_dir else []
        return f"No checkpoint of this part yet; the run {whole} kept: {', '.join(kept)}.{hint}" if kept else \
            "No checkpoint was saved yet."
    counters = checkpoint_counters(state)
    when = (f" (step {counters['step']})" if "step" in counters
            else f" (after epoch {counters['epoch']})" if "epoch" in counters else "")
    return f"The last checkpoint{when} is in {state}.{hint}"


def resume_command(run_dir: Path) -> str:
    """The command that resumes `run_dir`, spelt as this process was started: `python train.py` (the
    script as typed), `python -m docre.cli.train` (how docre.grid starts runs), else `docre-train`."""
    script = sys.argv[0] if sys.argv else ""
    if Path(script).name != "train.py":
        command = "docre-train"
    elif Path(script).resolve() == Path(__file__).resolve().parent / "cli" / "train.py":
        command = "python -m docre.cli.train"
    else:
        command = f"python {script}"
    return f"{command} --resume {outermost_run(run_dir)}"


def init_source(run_dir: Path, init_from: str) -> Path:
    """train.init_from as a local path, refused where it lies in `run_dir` itself: starting over (train.overwrite)
    would delete the weights before they are read."""
    source = Path(init_from).expanduser().resolve()
    if Path(run_dir).resolve() in (source, *source.parents):
        raise DocreError(f"train.init_from={init_from}: this run's own directory; start from another run's weights, "
                         f"or continue this run with {resume_command(run_dir)}")
    return source


def outermost_run(run_dir: Path) -> Path:
    """The run that `run_dir` is a part of (PARTS: an alpha sweep's value, a VaeDiff-DocRE stage), up to the one
    that is part of none; `run_dir` itself for a run of its own. A part resumed on its own would start a second run
    inside it: its parent is what resumes it."""
    run_dir = Path(run_dir)
    while True:
        parent = next((above for above in run_dir.parents[:2] if (above / CONFIG).is_file()
                       and any(fnmatch.fnmatch(run_dir.relative_to(above).as_posix(), part) for part in PARTS)), None)
        if parent is None:
            return run_dir
        run_dir = parent


def changed_settings(run_dir: Path, cfg: Config) -> list[str]:
    """Settings of `cfg` that differ from the run's config.yaml, for the warning on resume: the
    continuation is then no exact replay (the learning rates and schedule still come from the
    checkpoint). Empty if config.yaml is missing or does not load."""
    try:
        saved = load_config(Path(run_dir) / CONFIG)
    except DocreError:
        return []
    return config_differences(saved, cfg, RESUME_KEYS)


def truncate_metrics(run_dir: Path, step: int, drop_dev_at_step: bool = False) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be logged again), and with
    `drop_dev_at_step` its step's dev row (a checkpoint saved before that evaluation: it runs again)."""
    path = run_dir / METRICS
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if row.get("step", 0) < step or (row.get("step", 0) == step and not (drop_dev_at_step and row.get("type") == "eval")):
                kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------------------------------- reading
def record_failure(run_dir: Path, error: Exception) -> None:
    """Write `error` as failed.json in `run_dir` (see the module docstring): its message's first line,
    prefixed by its type where it is no DocreError (a crash). Never raises: the error itself matters more."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    if not isinstance(error, DocreError):
        line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    with contextlib.suppress(OSError):
        atomic_write_text(Path(run_dir) / FAILED, json.dumps({"error": line}) + "\n")


def read_failure(run_dir: Path) -> str | None:
    """The error that ended an unfinished run's last process (failed.json), or None: finished, still
    running, stopped by a signal, or killed before it could say."""
    path = Path(run_dir) / FAILED
    if (Path(run_dir) / RESULTS).is_file() or not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return "failed (failed.json is unreadable)"


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as error:
        raise DocreError(f"{path}: not valid JSON ({error})") from None


def read_results(run_dir: Path) -> dict | None:
    """The run's results.json, or None while it is not finished."""
    path = Path(run_dir) / RESULTS
    return read_json(path) if path.is_file() else None


def read_decode(run_dir: Path) -> dict:
    """Decision parameters tuned on dev (decode.json); {} when the loss has none."""
    path = Path(run_dir) / DECODE
    return read_json(path) if path.is_file() else {}


def is_export(path: Path) -> bool:
    """Whether `path` is a folder from scripts/export.py (its config, weights and encoder/)."""
    return (path / CONFIG).is_file() and (path / EXPORTED_ENCODER).is_dir() and (path / EXPORTED_WEIGHTS).is_file()


def model_kind(path: Path) -> str:
    """"run" (a training run directory) or "export" (a folder from scripts/export.py); else DocreError."""
    path = Path(path)
    if not path.is_dir():
        raise DocreError(f"{path}: model directory not found (no run directory or exported model folder there)")
    if is_export(path):
        return "export"
    if (path / CONFIG).is_file() and (path / BEST_WEIGHTS).is_file():
        return "run"
    raise DocreError(
        f"{path}: neither a run directory ({CONFIG}, {BEST_WEIGHTS}) nor an exported model folder "
        f"({CONFIG}, {EXPORTED_WEIGHTS}, {EXPORTED_ENCODER}/)"
    )


def model_fingerprint(path: Path) -> dict[str, str]:
    """What decides a trained model's predictions, to tell two models apart: the sha256 of each file
    `load_trained` and the Predictor read (weights, config.yaml, rel2id.json, and where present
    decode.json, loss_statistics.json, rel_info.json and an export's encoder/ files), keyed by its path in the folder, and
    the docre version (whose code decodes them). A retrained run under the same name differs in
    its weights; a re-tuned decode in decode.json."""
    from docre import __version__

    path = Path(path)
    kind = model_kind(path)
    names = [CONFIG, REL2ID, DECODE, LOSS_STATISTICS, "rel_info.json", EXPORTED_WEIGHTS if kind == "export" else BEST_WEIGHTS]
    files = [path / name for name in names if (path / name).is_file()]
    if kind == "export":
        files += sorted(f for f in (path / EXPORTED_ENCODER).rglob("*") if f.is_file())
    return {"docre": __version__} | {f.relative_to(path).as_posix(): _sha256(f) for f in files}


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def load_config_and_loss(run_dir: Path, overrides: list[str] = ()):
    """(cfg, loss with decode.json applied, decode parameters) of a run: what scoring its saved
    logits needs, without the model."""
    from docre.losses import build_loss

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise DocreError(f"{run_dir}: not a run directory (no {CONFIG})")
    cfg = load_config(run_dir / CONFIG, list(overrides))
    decode = read_decode(run_dir)  # tuned on dev; also the chosen alpha of an alpha sweep
    return cfg, build_loss(**{**loss_kwargs(run_dir, cfg), **decode}), decode  # decode may set a loss keyword (alpha)


def loss_kwargs(run_dir: Path, cfg: Config) -> dict:
    """The keywords the run's loss is built with: its config's loss.* and what the loss took from the
    training split at setup (loss_statistics.json), so that no later use needs the training file."""
    path = Path(run_dir) / LOSS_STATISTICS
    return {**cfg.loss, **(read_json(path) if path.is_file() else {})}


def load_trained(run_dir: Path, device: torch.device, overrides: list[str] = ()):
    """Rebuild config, tokenizer, model (best weights), loss (decode.json applied) and relation map
    from a run directory or an exported model folder (its own encoder/ and model.safetensors).

    Returns:
        (cfg, tokenizer, model, loss_fn, rel2id); the model is in eval mode on `device`.
    """
    from docre.checkpoint import load_weights
    from docre.losses import output_size
    from docre.models import build_model_from_config, load_tokenizer

    run_dir = Path(run_dir)
    cfg, loss_fn, _ = load_config_and_loss(run_dir, overrides)
    weights = run_dir / BEST_WEIGHTS
    if (run_dir / EXPORTED_ENCODER).is_dir() and (run_dir / EXPORTED_WEIGHTS).is_file():  # no original backbone needed
        cfg.model.backbone, cfg.model.revision, weights = str(run_dir / EXPORTED_ENCODER), "", run_dir / EXPORTED_WEIGHTS
    rel2id = read_json(run_dir / REL2ID)
    tokenizer = load_tokenizer(cfg.model.backbone, cfg.model.revision, cfg.model.trust_remote_code)
    model = build_model_from_config(cfg.model, tokenizer, output_size(loss_fn, len(rel2id)), pretrained=False)
    load_weights(model, weights)
    return cfg, tokenizer, model.to(device).eval(), loss_fn, rel2id


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "loss":  # the loss mapping compares as one value
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
