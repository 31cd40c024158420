"""What every training stage shares: options and the config resolved from them (by
:func:`dalle2.config.resolve_stage`), logging, the frozen CLIP, trackers and the train summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def stage_options(args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A stage's options from an argparse namespace, a dict or keyword arguments (keywords win)."""
    import argparse

    opts = dict(vars(args) if isinstance(args, argparse.Namespace) else (args or {}))
    opts.update(kwargs)
    return opts


def open_train_split(config: Any, resolution: int) -> Any:
    """The training split of ``config.data.dataset`` at ``resolution``: its seed and, where set, its size
    (``data.train_length``)."""
    from dalle2.data import open_dataset

    return open_dataset(
        config.data.dataset,
        split="train",
        resolution=resolution,
        seed=config.data.seed,
        length=config.data.train_length,
    )


def resolve_options(stage: str, opts: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """:func:`dalle2.config.resolve_stage` for a stage's options: ``preset`` (default "cpu"), ``config``
    (YAML), ``overrides`` (or ``set``: ``section.key=value`` strings) and the dedicated options
    (:data:`dalle2.config.STAGE_OPTIONS`; one of another stage's section, such as ``text_encoder`` outside
    the CLIP stage, does nothing). Returns (Config, the stage's section, its stage keys)."""
    from dalle2.config import STAGE_OPTIONS, resolve_stage

    sets = list(opts.get("overrides") or opts.get("set") or [])
    options = {key: opts.get(key) for key in STAGE_OPTIONS}
    return resolve_stage(stage, opts.get("preset") or "cpu", opts.get("config"), sets, options)


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
        "samples_per_step": result.samples_per_step,
        "device": result.device,
    }
