"""Weights and resume state in plain formats: safetensors for tensors, JSON for everything else.

No pickle anywhere: `torch.save` is never used, so nothing docre writes can run code when read.
A resume checkpoint is a directory (`last/`) written completely under a temporary name and then
swapped in by renames, so a kill at any moment leaves a complete checkpoint (`last/`, or
`last.old/` between the two renames); tests/test_atomic.py crashes a save at every step.
"""

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from docre.errors import DocreError
from docre.utils import atomic_save_safetensors, atomic_write_json


def check_finite(model: nn.Module) -> None:
    """Refuse to save weights containing NaN or inf."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise DocreError(f"refusing to save non-finite weights ({name}); the previous checkpoint is kept")


def save_weights(model: nn.Module, path: Path) -> None:
    check_finite(model)
    atomic_save_safetensors(model.state_dict(), path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise DocreError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise DocreError(f"{path}: cannot read weights ({error})") from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load every tensor of the model from `path`; one line if they do not fit."""
    weights = read_weights(path)
    _check_shapes(weights, model.state_dict(), path)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise DocreError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def _check_shapes(source: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path, hint: str = "") -> None:
    """A tensor both have in different shapes is one line naming it (torch's own error is a traceback)."""
    for name, tensor in own.items():
        if name in source and source[name].shape != tensor.shape:
            raise DocreError(f"{path}: {name} is {list(source[name].shape)} there and {list(tensor.shape)} in this model{hint}")


def load_matching_weights(model: nn.Module, path: Path, hint: str = "") -> tuple[list[str], list[str], list[str]]:
    """Copy into `model` every tensor of `path` whose name the model has (train.init_from), and
    return the names (loaded, kept fresh: the model's that `path` lacks, unused: `path`'s that the
    model lacks), in state-dict order.

    Raises:
        DocreError: a tensor that both have in different shapes, naming it and both shapes; `hint`
            (e.g. which settings differ) is appended. Nothing is copied then.
    """
    source, own = read_weights(path), model.state_dict()
    _check_shapes(source, own, path, hint)
    loaded = [name for name in own if name in source]
    model.load_state_dict({name: source[name] for name in loaded}, strict=False)
    return loaded, [name for name in own if name not in source], [name for name in source if name not in own]


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's torch random states: the CPU generator's and, on CUDA, its own device's."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_training_state(directory: Path, model, optimizer, scheduler, scaler, state: dict,
                        rng: list[dict[str, torch.Tensor]] | None = None) -> None:
    """Write model, optimizer, scheduler, grad scaler, RNG states and counters to `directory`.

    Args:
        rng: every process's `rng_state`, in rank order (gathered by the trainer, since only rank 0
            writes); default: this process's CPU generator alone.
    """
    check_finite(model)
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tensors, optimizer_json = _split_optimizer_state(optimizer.state_dict())
    for rank, states in enumerate(rng if rng is not None else [rng_state(torch.device("cpu"))]):
        for name, value in states.items():
            tensors[f"rng.{name}.rank{rank}"] = value  # e.g. rng.cuda.rank3: rank 3's own GPU
    atomic_save_safetensors(model.state_dict(), staging / "model.safetensors")
    atomic_save_safetensors(tensors, staging / "optimizer.safetensors")
    numpy_state = np.random.get_state()
    atomic_write_json(staging / "state.json", {
        "counters": state,
        "optimizer": optimizer_json,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng_python": random.getstate(),
        "rng_numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    })
    # swap: directory -> .old, staging -> directory, drop .old; each rename is atomic. Without a
    # `directory` (a kill fell between the renames of the previous save), .old is the only complete
    # checkpoint: it is kept until the new one is in place.
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(directory, old)
    os.rename(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "state.json")


def find_training_state(directory: Path) -> Path | None:
    """`directory`, or its `.old` twin if a kill fell between the two renames of a save; None if
    neither holds a complete checkpoint."""
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if all((candidate / name).is_file() for name in CHECKPOINT_FILES):
            return candidate
    return None


def load_training_state(directory: Path, model, optimizer, scheduler, scaler, rank: int = 0,
                        device: torch.device | None = None) -> dict:
    """Restore everything `save_training_state` wrote; return the counters. Each process restores
    its own rank's random states (the CUDA one onto its own `device`); a rank the checkpoint has
    no states for (resumed on more processes) takes rank 0's."""
    from safetensors.torch import load_file

    load_weights(model, directory / "model.safetensors")
    try:
        saved = json.loads((directory / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(directory / "optimizer.safetensors"))
        optimizer.load_state_dict(_join_optimizer_state(tensors, saved["optimizer"]))
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
    except Exception as error:  # damaged files, or an optimizer built from a different config
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DocreError(f"{directory}: cannot restore the training state ({first})") from None
    own = _rank_rng(tensors, rank) or _rank_rng(tensors, 0)
    torch.set_rng_state(own["torch"])
    if "cuda" in own and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(own["cuda"], device)
    version, internal, gauss = saved["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = saved["rng_numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    return saved["counters"]


def _rank_rng(tensors: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """{"torch": ..., "cuda": ...} of one rank; checkpoints of docre 0.1 kept rank 0's CPU state as
    rng.torch and every visible GPU's as rng.cuda.<index>."""
    own = {name.split(".")[1]: value for name, value in tensors.items()
           if name.startswith("rng.") and name.endswith(f".rank{rank}")}
    if not own and rank == 0 and "rng.torch" in tensors:
        own = {"torch": tensors["rng.torch"]} | ({"cuda": tensors["rng.cuda.0"]} if "rng.cuda.0" in tensors else {})
    return own


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state -> (tensors for safetensors, the JSON-able rest)."""
    tensors, scalars = {}, {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], saved: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    for name, value in saved["scalars"].items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": saved["param_groups"]}
