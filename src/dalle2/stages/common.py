"""What every training stage shares: merging its config sources into one set of overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def merge_overrides(
    train_defaults: dict[str, Any],
    config_path: str | None,
    sets: list[str],
    section: str,
    ignore: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stage's train defaults < YAML file < ``--set``; returns (overrides for ``load_config``, ``section``).

    ``section`` (e.g. ``clip``) is the stage's own config section, taken out of the overrides; sections in
    ``ignore`` (another stage's, in a shared YAML) are dropped.
    """
    from dalle2.config import ConfigError, load_yaml, parse_overrides

    overrides: dict[str, Any] = {"train": dict(train_defaults)}
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = load_yaml(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
        for name, values in loaded.items():
            if isinstance(values, dict):
                overrides.setdefault(name, {}).update(values)
            else:
                overrides[name] = values
    for name, values in parse_overrides(list(sets)).items():
        overrides.setdefault(name, {}).update(values)
    own = overrides.pop(section, {})
    if not isinstance(own, dict):
        raise ConfigError(f"section {section!r} must be a mapping")
    for name in ignore:
        overrides.pop(name, None)
    overrides.pop("preset", None)
    return overrides, own


def stage_options(args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A stage's options from an argparse namespace, a dict or keyword arguments (keywords win)."""
    import argparse

    opts = dict(vars(args) if isinstance(args, argparse.Namespace) else (args or {}))
    opts.update(kwargs)
    return opts


def printer(quiet: bool):
    """``log(message)`` that prints at once, or nothing when ``quiet``."""

    def log(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    return log


def load_frozen_clip(out: Path, stage: str, error: type[Exception]) -> Any:
    """``OUT/clip`` loaded frozen, in eval mode; ``error`` (the stage's) says how to train it if missing."""
    from dalle2.models.clip import ClipModel

    folder = out / "clip"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise error(
            f"{folder}: no trained CLIP in this pipeline folder; the {stage} needs one: "
            f"run `dalle2 train clip --out {out}` first"
        )
    return ClipModel.load(folder).requires_grad_(False).eval()


def default_trackers(opts: dict[str, Any]) -> Any:
    """The stage's ``log_with``: TensorBoard by default, silently none if tensorboard is not installed."""
    log_with = opts.get("log_with", ("tensorboard",))
    if log_with == ("tensorboard",):
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
    return log_with


def train_summary(result: Any) -> dict[str, Any]:
    """The report fields of a :class:`~dalle2.training.trainer.TrainResult` (rounded, JSON-ready)."""
    return {
        "step": result.step,
        "steps_this_run": result.steps_this_run,
        "wall_seconds": round(result.wall_seconds, 3),
        "total_wall_seconds": round(result.total_wall_seconds or result.wall_seconds, 3),
        "samples_per_second": round(result.samples_per_second, 1),
        "final_loss": result.final_loss,
        "stop_reason": result.stop_reason,
    }
