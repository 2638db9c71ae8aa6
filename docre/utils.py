"""Small shared helpers: atomic file writes, seeding, devices and precision, logging, run records."""

import contextlib
import gc
import json
import logging
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("docre")


# ----------------------------------------------------------------------------- atomic files
@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success flush, fsync and rename it over `path`.

    A crash or kill at any moment leaves either the previous file or the complete new one,
    never a half-written file (rename within one directory is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _new_file_mode())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """`safetensors.torch.save_file`, through a temporary file and a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, _new_file_mode())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _new_file_mode() -> int:
    """The mode `open()` gives a new file (0o666 less the umask); mkstemp's own 0o600 would hide
    run outputs and caches from the other users of a shared machine."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one JSON line and flush it to disk (a torn last line is the worst a kill can do)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a corpus is parsed (restored afterwards).

    Parsing a JSON corpus allocates about a million small acyclic objects; left to the collector,
    they trigger repeated full collections while they are being built. Long-lived data can then be
    moved out of the collector's sight with `freeze_loaded_data()`, which only a caller that keeps
    the data for a long time (training) should do."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def freeze_loaded_data() -> None:
    """Move every object alive now to the collector's permanent generation (`gc.freeze()`).

    Training holds its parsed splits for the whole run, and every full collection would walk them
    again: one pass over six copies of the 500 Re-DocRED dev documents took 0.85 s. Reference
    counting still frees frozen objects when they are dropped (only reference cycles among them
    would stay, and documents and features have none). A process-wide effect, so train() calls it
    once, explicitly, after loading its data; loading a split never does."""
    gc.freeze()


# ----------------------------------------------------------------------------- seeds, devices
def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """"auto" (CUDA if available), "cpu", "cuda", "cuda:N" as a torch device; `option` is how the
    user gave it (a config key, a command's flag or a Python argument's name), for the one-line error."""
    from docre.errors import DocreError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # written back as the user wrote it: --device cuda (a flag), train.device=cuda (a config key),
    # device='cuda' (a Python argument)
    value = name if "." in option else repr(name)
    shown = f"{option} {name}" if option.startswith("-") else f"{option}={value}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DocreError(f"{shown}: not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DocreError(f"{shown}, but CUDA is not available here (use cpu or auto)")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """auto = bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    if dtype == torch.float16 and device.type != "cuda":
        from docre.errors import DocreError

        raise DocreError("train.precision=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return dtype


def inference_precision(name: str, device: torch.device) -> torch.dtype:
    """The precision a trained model predicts in: the training precision on CUDA, float32 elsewhere
    (a run trained in fp16 or bf16 on a GPU is then evaluated and used on a CPU like any other)."""
    return resolve_precision(name, device) if device.type == "cuda" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for bf16/fp16; a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc malloc_trim; elsewhere nothing).

    Blocks below glibc's mmap threshold (up to 32 MB) live in the heap, laid out for training's
    block sizes; evaluation allocates other sizes, so without a trim between the phases its blocks
    come on top of the training heap and the peak is the sum of both phases, not the larger one.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux: VmHWM of /proc/self/status. getrusage's ru_maxrss is not used there because it survives
    exec: a command started from a large process (a benchmark, a notebook) would report its
    parent's resident memory at the fork as its own peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def reset_peak_rss() -> bool:
    """Lower this process's peak resident memory (VmHWM, what `peak_rss_mb` reads) to its current
    resident memory, so that the peak of one phase of a process can be read (Linux 4.0+: "5" into
    /proc/self/clear_refs). Returns False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------- progress
# Values of CI / DOCRE_PROGRESS that mean "no" (CI=false is sometimes set on purpose).
_NO = ("", "0", "false", "no", "off")


def hide_progress(wanted: bool = True) -> bool | None:
    """tqdm's `disable=` for every docre progress bar: one rule for where bars show.

    True (hidden) when the caller wants none (e.g. a process other than rank 0), with DOCRE_PROGRESS=0
    or under CI (CI set, as CI services do); False (shown, even into a file or pipe) with
    DOCRE_PROGRESS=1, which wins over CI; otherwise None, tqdm's own rule: a bar on a terminal (and in
    a notebook), none when stderr is a file or a pipe, where a redrawn line is only noise. The
    remaining-time estimates that matter in a log (per epoch, per run of a grid) are log lines, not bars.
    """
    if not wanted:
        return True
    forced = os.environ.get("DOCRE_PROGRESS", "").strip().lower()
    if forced:
        return forced in _NO
    if os.environ.get("CI", "").strip().lower() not in _NO:
        return True
    return None


def estimate_remaining(elapsed: float, done: int, left: int) -> float | None:
    """Seconds that `left` more units of work (steps, runs) take at the pace of the `done` ones,
    which took `elapsed` seconds together; None before the first is done."""
    if done <= 0:
        return None
    return elapsed / done * max(left, 0)


def plural(count: int, noun: str, plural_form: str = "") -> str:
    """A count and its noun for messages: "1 document", "2 documents"; `plural_form` where adding "s"
    is wrong (plural(n, "entity", "entities"))."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def format_duration(seconds: float) -> str:
    """'45s', '12m05s', '3h07m': as precise as a remaining-time estimate deserves."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def runs_left_note(durations: list[float], left: int) -> str:
    """The remaining-time estimate of an alpha sweep's runs from the durations of the runs already
    finished, e.g. '2 done, 20m45s each: about 1h02m left for 3' (the mean: a resumed run is short,
    so it is an estimate, not a promise). A grid mixes rows of different pace: grid.grid_left_note."""
    if left <= 0:
        return "none left"
    seconds = estimate_remaining(sum(durations), len(durations), left)
    if seconds is None:
        return f"{left} to go, no estimate before the first finishes"
    each = format_duration(sum(durations) / len(durations))
    return f"{len(durations)} done, {each} each: about {format_duration(seconds)} left for {left}"


# ----------------------------------------------------------------------------- logging, records
def setup_logging(log_file: Path | None = None, rank: int = 0) -> None:
    """INFO to stderr (rank 0 only) and to `log_file`; idempotent across repeated calls.
    Also silences the Hugging Face progress bars for loading and saving weights."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = logging.getLogger("docre")
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if rank == 0:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        root.addHandler(stream)
        if log_file is not None:
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
            file_handler.setFormatter(formatter)
            root.addHandler(file_handler)
    root.propagate = False


def environment_record() -> dict:
    """Library versions, device, threads and git state, written beside every run."""
    import transformers

    project = Path(__file__).resolve().parent.parent
    record = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git_commit": None,
        "git_dirty": None,
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            record["git_commit"] = commit.stdout.strip()
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=project, capture_output=True, text=True, timeout=10,
            )
            record["git_dirty"] = bool(status.stdout.strip())
    return record


def write_environment(path: Path, extra: dict, resumed: bool = False) -> None:
    """Write `environment_record()` plus `extra` to `path`. A resumed run may continue under other
    versions, another commit or another device, so the records of its earlier processes are kept
    under "earlier" (oldest first)."""
    record = environment_record() | extra
    if resumed and path.is_file():
        with contextlib.suppress(ValueError):
            previous = json.loads(path.read_text(encoding="utf-8"))
            record["earlier"] = previous.pop("earlier", []) + [previous]
    atomic_write_json(path, record)


LOCK = ".lock"  # in a run directory: flock-ed by the process training the run (`hold_lock`), with its pid


@contextlib.contextmanager
def hold_lock(run_dir: Path) -> Iterator[None]:
    """Hold RUN_DIR/.lock for the with-block, so that a second process training the same run directory
    (a command started twice, two grids over one output folder) stops before it touches a file, where
    both would otherwise write one run's checkpoints and scores. An flock: the system drops it however
    its process ends, so a crash leaves no stale lock. No lock where the platform has no flock (Windows).

    Raises:
        DocreError: another process holds the lock.
    """
    from docre.errors import DocreError

    try:
        import fcntl
    except ImportError:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            raise DocreError(f"{run_dir}: another process{f' (pid {holder})' if holder else ''} is training this "
                             "run; let it finish, or stop it (it saves a checkpoint) and resume") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield  # closing the file releases the lock
