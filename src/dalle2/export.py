"""``dalle2 export``: copy a trained pipeline folder into a small, self-contained one to ship or share.

What is kept: ``model_index.json``, ``tokenizer/`` and, for every component, its ``config.json``, its
weights and its ``report.json``; training checkpoints, logs and eval outputs are left behind. With
``half`` (the default) floating-point weights are stored as float16, which halves the size; loading casts
them back to float32 (``load_state_dict`` copies into the model's own dtype), so only the weights'
rounding changes. ``model_index.json`` gains a ``provenance`` entry: where the folder came from, the
command and seed that made it (from ``--note``), each stage's training steps and minutes (from its report).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from dalle2.errors import Dalle2Error
from dalle2.folder_format import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    FolderError,
    component_header,
    load_tensors,
    read_component_config,
    write_folder_atomic,
    write_json_atomic,
    write_model_index,
    write_tensors_atomic,
)

__all__ = ["ExportError", "export_pipeline"]

KEEP_SUFFIXES = (".json", ".yaml", ".txt", ".safetensors")


class ExportError(Dalle2Error):
    """The folder cannot be exported; the message says why."""


def _stage_record(report: dict[str, Any]) -> dict[str, Any]:
    train = report.get("train") or {}
    record = {"steps": train.get("step"), "final_loss": train.get("final_loss")}
    seconds = train.get("total_wall_seconds") or train.get("wall_seconds")
    if seconds is not None:
        record["training_minutes_last_run" if "total_wall_seconds" not in train else "training_minutes"] = round(
            float(seconds) / 60, 1
        )
    if report.get("init_from"):  # a warm-started run: what it started from and the totals of every run
        record["init_from"] = report["init_from"]
        record["lineage"] = report.get("lineage")
    return {k: v for k, v in record.items() if v is not None}


def _copy_weights(source: Path, dest: Path, half: bool) -> None:
    try:
        tensors = load_tensors(source)
    except FolderError as error:
        raise ExportError(str(error)) from None
    if half:
        tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ExportError(f"{source}: {name} does not fit in float16; export with --no-half")
    write_tensors_atomic(dest, tensors)


def export_pipeline(
    source: str | Path, dest: str | Path, *, half: bool = True, note: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Write the exported copy of pipeline folder ``source`` to ``dest``; returns its ``model_index.json``."""
    from dalle2.pipeline import PipelineError, read_index

    source, dest = Path(source), Path(dest)
    try:
        index = read_index(source)  # the same checks as loading: folder, index file, JSON, format version
    except PipelineError as error:
        raise ExportError(str(error)) from None
    if dest.exists() and not overwrite:
        raise ExportError(f"{dest} already exists; pass --overwrite to replace it")
    if dest.resolve() == source.resolve():
        raise ExportError("the export folder must differ from the source folder")

    components = index.get("components") or {}
    stages: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        nonlocal index
        for name, entry in components.items():
            folder = source / entry.get("folder", name)
            if not folder.is_dir():
                raise ExportError(f"{source}: component {name!r} has no folder {folder.name}/")
            (tmp / folder.name).mkdir(parents=True, exist_ok=True)
            for item in sorted(folder.iterdir()):
                if not item.is_file() or not item.name.endswith(KEEP_SUFFIXES):
                    continue
                if item.suffix == ".safetensors":
                    _copy_weights(item, tmp / folder.name / item.name, half)
                elif item.name == CONFIG_FILE and (folder / WEIGHTS_FILE).is_file():
                    # any older header becomes the current one: what ships is in today's format
                    cls_name, config = read_component_config(folder)
                    write_json_atomic(tmp / folder.name / item.name, {**component_header(cls_name), **config})
                else:
                    shutil.copy2(item, tmp / folder.name / item.name)
            report = folder / "report.json"
            if report.is_file():
                try:
                    stages[name] = _stage_record(json.loads(report.read_text()))
                except json.JSONDecodeError:
                    pass
        provenance = {
            "exported_from": source.resolve().name,  # never a path of this machine
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "weights_dtype": "float16" if half else "as trained",
            "stages": stages,
        }
        if note:
            provenance["note"] = note
        index = {**index, "provenance": provenance}
        write_model_index(tmp, index)

    write_folder_atomic(dest, fill)  # built under a temporary name beside dest, then renamed into place
    return index


def folder_megabytes(folder: str | Path) -> float:
    """Total size of the files under ``folder`` in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
