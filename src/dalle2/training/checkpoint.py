"""Resumable training checkpoints and component weight folders, written atomically.

A checkpoint is a folder ``checkpoints/step_00000120/``::

    model.safetensors   trained weights            ema.safetensors   EMA weights (fp32)
    optimizer.pt        optimizer state (tensors, numbers, strings only: read with weights_only=True)
    rng.safetensors     torch CPU / CUDA generator states of every process
    config.yaml         the resolved run configuration
    state.json          step, data position, LR scheduler, Python/NumPy RNG states; written last

The folder is filled under a temporary name in the same directory and renamed into place, so a
``step_*`` folder either is complete or does not exist; a crash mid-save leaves the previous
checkpoint untouched (and a ``.step_*.tmp-*`` folder that the next save clears away).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from dalle2 import folder_format
from dalle2.training.errors import TrainingError

FORMAT = "dalle2-train-state"
FORMAT_VERSION = 1
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# -- random number generator states ---------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (e.g. sampling for a preview grid) without disturbing the training random streams."""
    states = capture_rng()
    try:
        yield
    finally:
        restore_rng(states)


def _rng_to_files(per_process: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: list[dict[str, Any]] = []
    for rank, states in enumerate(per_process):
        tensors[f"torch.{rank}"] = states["torch"].clone()
        for device, state in enumerate(states["cuda"]):
            tensors[f"cuda.{rank}.{device}"] = state.clone()
        version, internal, gauss = states["python"]
        name, keys, pos, has_gauss, cached = states["numpy"]
        plain.append(
            {
                "python": [version, list(internal), gauss],
                "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
                "cuda_devices": len(states["cuda"]),
            }
        )
    return tensors, plain


def _rng_from_files(tensors: dict[str, torch.Tensor], plain: list[dict[str, Any]], rank: int) -> dict[str, Any]:
    entry = plain[rank]
    version, internal, gauss = entry["python"]
    name, keys, pos, has_gauss, cached = entry["numpy"]
    return {
        "python": (version, tuple(internal), gauss),
        "numpy": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
        "torch": tensors[f"torch.{rank}"],
        "cuda": [tensors[f"cuda.{rank}.{d}"] for d in range(entry["cuda_devices"])],
    }


# -- files --------------------------------------------------------------------------------------------


def save_optimizer_state(state: dict[str, Any], path: Path) -> None:
    torch.save(state, path)


write_folder_atomic = folder_format.write_folder_atomic  # a step_* folder is complete or absent


# -- checkpoints --------------------------------------------------------------------------------------


def step_of(path: Path) -> int | None:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: step_of(p) or 0)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(
    root: str | Path,
    *,
    step: int,
    model: nn.Module,
    ema_model: nn.Module,
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    run_config: dict[str, Any],
    keep: int = 1,
) -> Path:
    """Write ``root/step_{step:08d}`` atomically, then delete all but the newest ``keep`` checkpoints."""
    root = Path(root)
    rng_tensors, rng_plain = _rng_to_files(rng_states)

    def fill(folder: Path) -> None:
        save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
        save_model(ema_model, str(folder / "ema.safetensors"), metadata={"format": "pt"})
        save_optimizer_state(optimizer_state, folder / "optimizer.pt")
        save_file(rng_tensors, str(folder / "rng.safetensors"))
        (folder / "config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, **state, "rng": rng_plain}
        (folder / STATE_FILE).write_text(json.dumps(full, indent=2))  # last: marks the folder complete

    path = write_folder_atomic(root / f"step_{step:08d}", fill)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step_*"):  # temporary folders left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    return path


def read_state(path: str | Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint folder, with its format checked."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TrainingError(
            f"checkpoint {path} is unreadable ({error}); delete it to resume from an older one"
        ) from None
    if state.get("format") != FORMAT:
        raise TrainingError(f"{path} is not a dalle2 training checkpoint (format {state.get('format')!r})")
    if state.get("format_version") != FORMAT_VERSION:
        raise TrainingError(
            f"{path}: training checkpoint format version {state.get('format_version')!r}; this dalle2 resumes "
            f"version {FORMAT_VERSION} only (finish the run with the dalle2 that started it, or start afresh)"
        )
    return state


def load_weights(model: nn.Module, file: str | Path, device: torch.device | str = "cpu") -> None:
    """Load a safetensors file into ``model`` strictly; any failure is a TrainingError naming the file."""
    device = torch.device(device)
    try:
        load_model(model, str(file), strict=True, device="cpu" if device.type == "cpu" else str(device))
    except Exception as error:  # missing file, corrupt file, other keys or shapes
        raise TrainingError(
            f"cannot load {file} into this model (was it saved by another model or config?): {error}"
        ) from None


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    ema_model: nn.Module,
    rank: int,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Load weights into ``model`` and ``ema_model``; return (state, optimizer state, this rank's RNG states)."""
    path = Path(path)
    state = read_state(path)
    load_weights(model, path / "model.safetensors", device)
    load_weights(ema_model, path / "ema.safetensors", device)
    optimizer_file, rng_file = path / "optimizer.pt", path / "rng.safetensors"
    try:  # weights_only: a pickle placed here is refused, never run
        optimizer_state = torch.load(optimizer_file, map_location="cpu", weights_only=True)
        if not isinstance(optimizer_state, dict):
            raise TypeError(f"holds a {type(optimizer_state).__name__}, not an optimizer state")
    except Exception as error:  # missing, truncated, not a torch file, or a pickle with other objects
        raise unreadable_file(optimizer_file, path, error) from None
    try:
        rng_plain = state["rng"]
        rng_tensors = load_file(str(rng_file))
        rng = _rng_from_files(rng_tensors, rng_plain, rank % len(rng_plain))
    except Exception as error:
        raise unreadable_file(rng_file, path, error) from None
    return state, optimizer_state, rng


def unreadable_file(file: Path, checkpoint: Path, error: BaseException) -> TrainingError:
    """The one-line error for a checkpoint file that cannot be read, with the two ways out. Never torch's own
    advice: for a file refused by ``weights_only=True`` that would be to load it with ``weights_only=False``,
    which runs whatever code the file holds."""
    text = str(error).strip()
    first = text.splitlines()[0].split(". ")[0].strip().rstrip(".") if text else ""
    if "Unsupported global" in text:  # a pickle of other objects than tensors, numbers and strings
        first = "it holds Python objects, which are not loaded"
    elif "weights_only" in first or "weights only" in first.lower():
        first = "not a torch file, or a damaged one"
    reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return TrainingError(
        f"checkpoint file {file} is unreadable ({reason}); start afresh without --resume, or delete "
        f"{checkpoint} to resume from an older checkpoint"
    )


# -- component folders (what inference loads) ------------------------------------------------------


def save_component(model: nn.Module, folder: str | Path, config: dict[str, Any]) -> Path:
    """Write ``folder/model.safetensors`` + ``folder/config.json`` (:func:`dalle2.folder_format.save_component`,
    with the model's class name in the header)."""
    return folder_format.save_component(folder, model, config, type(model).__name__)
