"""Saved pipeline folders and ``dalle2.load``: one entry point for every model family.

A pipeline folder holds ``model_index.json`` (``{"format": "dalle2", "format_version": 1, "kind": ...}``)
and one sub-folder per component. Each model family registers a loader for its ``kind``; ``load``
reads the index, checks the format version and hands the folder to that loader. Every pipeline is
called the same way: ``pipe(prompts, n=1, seed=0) -> list[PIL.Image]``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from dalle2.errors import Dalle2Error
from dalle2.folder_format import INDEX_FORMAT, INDEX_FORMAT_VERSION, FolderError, read_model_index

FORMAT = INDEX_FORMAT  # model_index.json's format and version: dalle2.folder_format owns them
FORMAT_VERSION = INDEX_FORMAT_VERSION


class PipelineError(Dalle2Error):
    """A pipeline folder is missing, malformed, of another format version, or of an unknown kind."""


class Pipeline(Protocol):
    resolution: int  # output image size in pixels

    def __call__(self, prompts: str | list[str], n: int = 1, seed: int = 0) -> list[Image.Image]:
        """``n`` images per prompt, prompt-major, reproducible from ``seed``."""
        ...

    def settings(self) -> dict[str, Any]:
        """Sampler settings and versions, recorded in every evaluation report."""
        ...


LOADERS: dict[str, Callable[[Path, dict[str, Any]], Pipeline]] = {}


def register(kind: str, loader: Callable[[Path, dict[str, Any]], Pipeline]) -> None:
    """Make ``load`` open folders whose ``model_index.json`` says ``"kind": kind``."""
    LOADERS[kind] = loader


def read_index(path: str | Path) -> dict[str, Any]:
    """``path/model_index.json`` with its format checked (:func:`dalle2.folder_format.read_model_index`);
    any problem is a PipelineError naming the file."""
    try:
        return read_model_index(path)
    except FolderError as error:
        raise PipelineError(str(error)) from None


# model families that ship with dalle2: imported (and so registered) when first needed
BUILTIN_KINDS = {"unclip": "dalle2.unclip_pipeline", "gan": "dalle2.gan_pipeline"}


#: Models shipped inside the package (``src/dalle2/assets/models/``), by the name ``--model`` accepts.
BUNDLED = {"unclip": "unclip-shapes", "gan": "gan-shapes"}
DEFAULT_BUNDLED = "unclip"


def bundled_path(name: str = DEFAULT_BUNDLED) -> Path:
    """The folder of the bundled model ``name`` ("unclip" or "gan"); a PipelineError if not installed."""
    if name not in BUNDLED:
        raise PipelineError(f"no bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    folder = Path(__file__).parent / "assets" / "models" / BUNDLED[name]
    if not (folder / "model_index.json").is_file():
        raise PipelineError(f"the bundled {name!r} model is not in this install ({folder} is missing)")
    return folder


def resolve_model(name_or_path: str | Path | None) -> Path:
    """The pipeline folder a model argument names: a folder, or a bundled model's name ("unclip", "gan")
    when no folder of that name exists; ``None`` means the bundled unCLIP model. A PipelineError says why
    not (empty, missing, a file, or the bundle not installed)."""
    if name_or_path is not None and not str(name_or_path).strip():
        raise PipelineError("empty --model: pass a pipeline folder written by `dalle2 train`, or unclip / gan")
    path = Path(name_or_path).expanduser() if name_or_path is not None else None
    if path is None or (str(name_or_path) in BUNDLED and not path.exists()):
        try:
            return bundled_path(DEFAULT_BUNDLED if name_or_path is None else str(name_or_path))
        except PipelineError as error:
            raise PipelineError(
                f"no model given and {error}: pass --model DIR, a pipeline folder written by `dalle2 train`"
            ) from None
    if not path.exists():
        raise PipelineError(f"model folder not found: {path}")
    if not path.is_dir():
        raise PipelineError(f"--model must be a pipeline folder, but {path} is a file")
    return path


def load(path: str | Path | None = None) -> Pipeline:
    """Open a saved pipeline folder of any registered kind; ``None`` (or "unclip" / "gan", when no folder
    of that name exists) opens a model bundled with the package."""
    path = resolve_model(path)
    index = read_index(path)
    kind = index.get("kind")
    if kind not in LOADERS and kind in BUILTIN_KINDS:
        import importlib

        importlib.import_module(BUILTIN_KINDS[kind])  # registers the family's loader
    if kind not in LOADERS:
        known = ", ".join(sorted(LOADERS)) or "none registered"
        raise PipelineError(f"{path}: unknown model kind {kind!r} (known kinds: {known})")
    return LOADERS[kind](Path(path), index)
