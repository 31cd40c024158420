"""What every pipeline family shares: prompt and count checks, the component check of a folder, seeding,
stage timings, and slerp between embeddings."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dalle2.pipeline import PipelineError

__all__ = ["MAX_PROMPT_CHARS", "PipelineBase", "check_components", "check_count", "check_prompts", "slerp"]

MAX_PROMPT_CHARS = 1000


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between (rows of) a and b; returns unit vectors."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    omega = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b
    return F.normalize(out, dim=-1)


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """The prompts as a list; a PipelineError for none, an empty one or one over the length limit."""
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise PipelineError("no prompts given")
    for p in items:
        if not isinstance(p, str) or not p.strip():
            raise PipelineError("empty prompt: give a description such as 'a red circle above a blue square'")
        if len(p) > MAX_PROMPT_CHARS:
            raise PipelineError(f"prompt of {len(p)} characters; the limit is {MAX_PROMPT_CHARS}")
    return items


def check_count(name: str, value: int, low: int, high: int) -> None:
    """A PipelineError unless ``value`` is an integer (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PipelineError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def component_path(folder: Path, index: Mapping[str, Any], name: str) -> Path:
    """Where component ``name`` lives: ``model_index.json``'s ``components[name].folder`` (default: the
    name), a relative path inside ``folder``; a PipelineError for one that would leave it."""
    entry = index.get("components", {}).get(name) or {}
    sub = entry.get("folder", name) if isinstance(entry, Mapping) else name
    if not isinstance(sub, str) or not sub or Path(sub).is_absolute() or ".." in Path(sub).parts:
        raise PipelineError(f"{folder / 'model_index.json'}: component {name!r} has folder {sub!r}, not a subfolder")
    return folder / sub


def check_components(
    folder: Path, index: Mapping[str, Any], required: Sequence[str], family: str, train: str
) -> Mapping[str, Any]:
    """The ``components`` of a pipeline folder's index; a PipelineError naming those of ``required`` that
    the index or the folder lacks, with ``train``, the command that makes them (``{step}``: the first
    missing component, ``{folder}``: the folder)."""
    components = index.get("components", {})
    missing = [c for c in required if c not in components or not component_path(folder, index, c).is_dir()]
    if missing:
        raise PipelineError(
            f"{folder}: the {family} pipeline is missing {', '.join(missing)}; train it with "
            + train.format(step=missing[0], folder=folder)
        )
    return components


class PipelineBase:
    """A pipeline's folder and index, device (CPU until ``to``), seeding and stage timings."""

    def __init__(self, folder: Path, index: dict[str, Any]) -> None:
        self.folder, self.index = Path(folder), index
        self.device = torch.device("cpu")
        self.timings: dict[str, float] = {}

    def _generator(self, seed: int) -> torch.Generator:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise PipelineError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
        return torch.Generator().manual_seed(seed)

    def _tick(self, stage: str, start: float) -> None:
        """Add the seconds since ``start`` (``time.monotonic()``) to ``timings[stage]``."""
        self.timings[stage] = self.timings.get(stage, 0.0) + time.monotonic() - start
