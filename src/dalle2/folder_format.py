"""The saved-folder format, in one place: every pipeline folder, component and ``model_index.json``.

A pipeline folder holds ``model_index.json`` (``{"format": "dalle2", "format_version": 1, "kind": ...,
"components": {name: {"folder": ..., ...}}}``) and one sub-folder per component. A component folder holds
``config.json`` and ``model.safetensors`` (plus component-specific files such as the prior's
``embedding_stats.safetensors``). ``config.json`` starts with one header::

    {"format": "dalle2-component", "format_version": 1, "class": "ImageDiffusion", ...the model's config}

Folders written before this header existed carry one of three older ones, and still load:
``{"format_version": 1, "class": ...}`` (decoder, upsampler, prior), ``{"model": "clip" |
"gan-generator", "config_version": 1}`` (CLIP, GAN generator) and ``{"format": "dalle2-evaluator",
"format_version": 1, "architecture": ...}`` (evaluator networks).

Every write goes to a temporary file in the destination's folder, is flushed to disk and renamed into
place (``os.replace``), so a crash leaves the previous file, never a partial one; whole folders are built
under a temporary sibling name and renamed. Weights are safetensors only, never pickle. Problems are a
:class:`FolderError` (a ``ValueError``) whose one-line message names the file and the problem.

This module sits below ``dalle2.models``: it imports nothing else from dalle2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dalle2.errors import Dalle2Error

if TYPE_CHECKING:  # torch is imported when weights are read or written: `import dalle2` stays light
    import torch
    from torch import nn

__all__ = [
    "COMPONENT_FORMAT",
    "COMPONENT_FORMAT_VERSION",
    "CONFIG_FILE",
    "INDEX_FILE",
    "INDEX_FORMAT",
    "INDEX_FORMAT_VERSION",
    "WEIGHTS_FILE",
    "FolderError",
    "MissingFileError",
    "copy_folder_atomic",
    "load_component_config",
    "load_tensors",
    "load_weights",
    "read_component_config",
    "read_json",
    "read_model_index",
    "save_component",
    "update_model_index",
    "write_folder_atomic",
    "write_json_atomic",
    "write_model_index",
    "write_tensors_atomic",
    "write_text_atomic",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model_index.json"

COMPONENT_FORMAT = "dalle2-component"
COMPONENT_FORMAT_VERSION = 1
INDEX_FORMAT = "dalle2"
INDEX_FORMAT_VERSION = 1

#: header keys of the current and the older schemes, removed from the config a loader gets
HEADER_KEYS = ("format", "format_version", "class")
#: the older ``{"model": NAME, "config_version": 1}`` header: NAME -> the class it saved
LEGACY_MODEL_CLASSES = {"clip": "ClipModel", "gan-generator": "Generator"}
#: the older evaluator header ``{"format": "dalle2-evaluator", "format_version": 1, "architecture": CLASS}``
LEGACY_EVALUATOR_FORMAT = "dalle2-evaluator"


class FolderError(Dalle2Error):
    """A saved folder, component or ``model_index.json`` is missing, malformed or of another format version."""


class MissingFileError(FolderError, FileNotFoundError):
    """A file a saved folder needs is not there (also a ``FileNotFoundError``)."""


# -- atomic writes ------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    """Flush a file or folder to disk; folders cannot be opened for that on every OS, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def _file_mode() -> int:
    """What ``open`` would give a new file: 0o666 less the umask (mkstemp's own 0o600 would hide shipped files)."""
    return 0o666 & ~_umask()


def _dir_mode() -> int:
    """What ``mkdir`` would give a new folder (mkdtemp's own 0o700 would hide shipped folders)."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def _atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends normally, rename it onto ``path``.

    On any error the temporary file is removed and ``path`` keeps its previous contents (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        _fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    with _atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (with a final newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in tensors.items()}


def write_tensors_atomic(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` as a safetensors file at ``path`` atomically."""
    from safetensors.torch import save_file

    with _atomic_path(path) as tmp:
        save_file(_contiguous(tensors), str(tmp), metadata={"format": "pt", **(metadata or {})})
    return Path(path)


def write_module_atomic(path: str | Path, module: nn.Module, metadata: dict[str, str] | None = None) -> Path:
    """Write ``module``'s weights as a safetensors file at ``path`` atomically (shared tensors stored once)."""
    from safetensors.torch import save_model

    with _atomic_path(path) as tmp:
        save_model(module, str(tmp), metadata={"format": "pt", **(metadata or {})})
    return Path(path)


def write_folder_atomic(dest: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create folder ``dest`` by filling a temporary sibling with ``fill(tmp)`` and renaming it.

    An existing ``dest`` is replaced; at every moment either the old or the new folder is under the name,
    never a partial one. If ``fill`` raises, the temporary folder is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        fill(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_path(file)
        os.chmod(tmp, _dir_mode())
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_path(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def copy_folder_atomic(source: str | Path, dest: str | Path, ignore: Callable[..., Any] | None = None) -> Path:
    """Copy folder ``source`` to ``dest`` (replacing it) so that ``dest`` is never a partial copy."""
    source = Path(source)

    def fill(tmp: Path) -> None:
        shutil.copytree(source, tmp, ignore=ignore, dirs_exist_ok=True)

    return write_folder_atomic(dest, fill)


# -- reading ------------------------------------------------------------------------------------------


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parsed JSON of ``path``; a MissingFileError / FolderError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FolderError(f"{path}: not valid JSON ({error.msg})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FolderError(f"{path}: cannot be read ({error})") from None


def load_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (``path``, or ``path/model.safetensors`` for a folder); never pickle."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: file not found")
    try:
        return load_file(str(path), device=device)
    except Exception as error:  # safetensors' own error type for corrupt files
        raise FolderError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_weights(module: nn.Module, path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Load ``path`` (a safetensors file, or a component folder's ``model.safetensors``) into ``module``
    strictly. Missing file, corrupt file or tensors of other names or shapes: a FolderError naming the file."""
    import torch
    from safetensors.torch import load_model

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: file not found")
    device = torch.device(device)
    try:
        missing, unexpected = load_model(
            module, str(path), strict=False, device="cpu" if device.type == "cpu" else str(device)
        )
    except RuntimeError as error:
        text = str(error)
        if "size mismatch" not in text and "Error(s) in loading" not in text:
            raise FolderError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise FolderError(
            f"{path} does not match {CONFIG_FILE} ({detail} ...); was it saved with another config?"
        ) from None
    except Exception as error:  # safetensors' own error type for corrupt files
        raise FolderError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None
    if missing or unexpected:
        parts = ([f"Missing key(s) {sorted(missing)[:5]}"] if missing else []) + (
            [f"Unexpected key(s) {sorted(unexpected)[:5]}"] if unexpected else []
        )
        raise FolderError(
            f"{path} does not match {CONFIG_FILE} ({'; '.join(parts)}); was it saved with another config?"
        )
    return module


# -- components ---------------------------------------------------------------------------------------


def component_header(cls_name: str) -> dict[str, Any]:
    return {"format": COMPONENT_FORMAT, "format_version": COMPONENT_FORMAT_VERSION, "class": cls_name}


def save_component(
    folder: str | Path,
    module_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    cls_name: str | None = None,
) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` (the header, then ``config``).

    ``cls_name`` defaults to the module's class name. Each file is written atomically, the weights first;
    other files in ``folder`` are left alone.
    """
    from torch import nn

    folder = Path(folder)
    if cls_name is None:
        if not isinstance(module_or_state_dict, nn.Module):
            raise TypeError("save_component: pass cls_name with a state dict")
        cls_name = type(module_or_state_dict).__name__
    clash = sorted(set(config) & {"format", "format_version", "class"})
    if clash:
        raise ValueError(f"save_component: config keys {clash} are the header's")
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(module_or_state_dict, nn.Module):
        write_module_atomic(folder / WEIGHTS_FILE, module_or_state_dict)
    else:
        write_tensors_atomic(folder / WEIGHTS_FILE, module_or_state_dict)
    write_json_atomic(folder / CONFIG_FILE, {**component_header(cls_name), **config})
    return folder


def _check_version(config_file: Path, version: Any) -> None:
    if version == COMPONENT_FORMAT_VERSION:
        return
    if isinstance(version, int) and not isinstance(version, bool) and version > COMPONENT_FORMAT_VERSION:
        raise FolderError(
            f"{config_file}: format version {version}; this dalle2 reads version {COMPONENT_FORMAT_VERSION} "
            "(upgrade dalle2, or retrain the component with this version)"
        )
    raise FolderError(f"{config_file}: unknown format version {version!r} (this dalle2 reads version 1)")


def read_component_config(folder: str | Path) -> tuple[str, dict[str, Any]]:
    """``(class name, config without its header)`` of a component folder's ``config.json``, any header scheme."""
    config_file = Path(folder) / CONFIG_FILE
    data = read_json(config_file, "component config")
    if not isinstance(data, dict):
        raise FolderError(f"{config_file}: not a component config (a JSON {type(data).__name__}, not an object)")
    data = dict(data)
    if data.get("format") == LEGACY_EVALUATOR_FORMAT:  # evaluator networks written before the common header
        data.pop("format")
        _check_version(config_file, data.pop("format_version", None))
        cls_name = data.pop("architecture", None)
    elif "format" in data:
        fmt = data.pop("format")
        if fmt != COMPONENT_FORMAT:
            raise FolderError(f"{config_file}: format {fmt!r} is not {COMPONENT_FORMAT!r}")
        _check_version(config_file, data.pop("format_version", None))
        cls_name = data.pop("class", None)
    elif "format_version" in data or "class" in data:  # decoder / upsampler / prior before the common header
        _check_version(config_file, data.pop("format_version", None))
        cls_name = data.pop("class", None)
    elif "model" in data and "config_version" in data:  # CLIP / GAN generator before the common header
        model = data.pop("model")
        _check_version(config_file, data.pop("config_version"))
        cls_name = LEGACY_MODEL_CLASSES.get(model, model)
    else:
        raise FolderError(f"{config_file}: no component header (format, format_version, class)")
    if not isinstance(cls_name, str) or not cls_name:
        raise FolderError(f"{config_file}: the header names no class")
    return cls_name, data


def load_component_config(
    folder: str | Path, expected_class: str | tuple[str, ...] | None, *, require: tuple[str, ...] = (WEIGHTS_FILE,)
) -> dict[str, Any]:
    """The config of component ``folder`` (header removed), checked to be of ``expected_class``.

    ``require``: the files besides ``config.json`` that must be there (a MissingFileError names the first
    one that is not). A wrong class, corrupt JSON or a newer format version is a FolderError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: component folder not found")
    for name in (CONFIG_FILE, *require):
        if not (folder / name).is_file():
            raise MissingFileError(f"{folder / name}: file not found (an incomplete component folder; train it first)")
    cls_name, config = read_component_config(folder)
    expected = (expected_class,) if isinstance(expected_class, str) else expected_class
    if expected is not None and cls_name not in expected:
        raise FolderError(
            f"{folder / CONFIG_FILE}: holds a {cls_name}, not a {' or '.join(expected)} (another component's folder?)"
        )
    return config


# -- model_index.json ---------------------------------------------------------------------------------


def _check_index(index: Any, index_file: Path) -> dict[str, Any]:
    if not isinstance(index, dict):
        raise FolderError(f"{index_file}: not a model index (a JSON {type(index).__name__}, not an object)")
    if index.get("format") != INDEX_FORMAT:
        raise FolderError(f"{index_file}: format {index.get('format')!r} is not {INDEX_FORMAT!r}")
    version = index.get("format_version")
    if version != INDEX_FORMAT_VERSION:
        raise FolderError(
            f"{index_file}: format version {version!r}; this dalle2 reads version {INDEX_FORMAT_VERSION} "
            "(upgrade dalle2, or retrain the model with this version)"
        )
    return index


def read_model_index(folder: str | Path) -> dict[str, Any]:
    """``folder/model_index.json``, with its format and format version checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"model folder not found: {folder}")
    index_file = folder / INDEX_FILE
    if not index_file.is_file():
        raise MissingFileError(f"{folder} is not a dalle2 pipeline folder (no {INDEX_FILE})")
    return _check_index(read_json(index_file, "model index"), index_file)


def write_model_index(folder: str | Path, index: Mapping[str, Any]) -> Path:
    """Write ``folder/model_index.json`` atomically; ``format`` and ``format_version`` are set first."""
    header = {"format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION}
    full = {**header, **{k: v for k, v in index.items() if k not in header}}
    return write_json_atomic(Path(folder) / INDEX_FILE, full)


def update_model_index(
    folder: str | Path,
    component: str | None,
    entry: Any = None,
    *,
    kind: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    **top_level: Any,
) -> dict[str, Any]:
    """Merge ``components[component] = entry`` into ``folder/model_index.json`` (created if absent), keeping
    the other components; returns the index written.

    ``kind``: the pipeline kind this folder must be (set if the index is new; a FolderError if it has
    another); ``defaults``: top-level keys set only where missing; ``top_level``: keys set (replaced).
    An existing index that is corrupt or of another format version is a FolderError, never overwritten.
    """
    folder = Path(folder)
    index_file = folder / INDEX_FILE
    index: dict[str, Any] = {}
    if index_file.is_file():
        index = dict(_check_index(read_json(index_file, "model index"), index_file))
    if kind is not None:
        if index.get("kind", kind) != kind:
            raise FolderError(f"{index_file}: kind {index.get('kind')!r}; this writes into {kind!r} folders")
        index["kind"] = kind
    for key, value in (defaults or {}).items():
        index.setdefault(key, value)
    index.update(top_level)
    if component is not None:
        components = dict(index.get("components") or {})
        components[component] = entry
        index["components"] = components
    write_model_index(folder, index)
    return index
