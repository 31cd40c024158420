"""Any directory of captioned images.

Captions come from ``metadata.jsonl`` (the Hugging Face ImageFolder convention: one JSON object per line
with ``file_name``, relative to the folder and possibly in a subfolder, and ``text``) or, when there is
no ``metadata.jsonl``, from a sidecar ``.txt`` file next to each image with the same stem
(``cat.png`` + ``cat.txt``).

Every image is opened and fully decoded once, at construction: unreadable, truncated or non-image files,
metadata lines that are malformed, not UTF-8, hold a caption that is not valid text (a lone surrogate, see
``dalle2.text_input``) or point to missing files, and images without a caption are skipped with one warning
line each naming the file or ``metadata.jsonl`` line (logger ``dalle2.data.folder``) and a count at the end,
so ``__getitem__`` never meets a bad file and no bad caption reaches the tokenizer.
The decoded, resized images are kept in memory (uint8) when they fit in ``cache_bytes``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from dalle2.data.base import DatasetError, Sample, check_size, resize_center_crop, sample_index
from dalle2.text_input import TextError, check_text

__all__ = ["IMAGE_EXTENSIONS", "FolderDataset", "load_image", "to_rgb"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
METADATA_FILE = "metadata.jsonl"

logger = logging.getLogger(__name__)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency over white, 16-bit grayscale scaled down, EXIF rotation applied."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        array = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        image = Image.fromarray(array)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """Open, fully decode and resize/centre-crop one image -> (R, R, 3) uint8.

    Raises ``OSError``/``ValueError``/``Image.DecompressionBombError`` (and friends) for a bad file; a
    decompression-bomb warning is raised as an error too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.verify()  # structural checks (chunk CRCs, ...) without decoding
        with Image.open(path) as image:
            image.load()  # full decode: catches truncated data that verify() lets through
            rgb = to_rgb(image)
    return np.asarray(resize_center_crop(rgb, resolution), dtype=np.uint8)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a readable image"
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"too large, possible decompression bomb ({exc})"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class FolderDataset(Dataset):
    """A directory of images with captions, as ``{"image", "caption", "meta": {"file_name"}}`` samples.

    Attributes: ``name`` ("folder"), ``resolution``, ``root``, ``mode`` ("metadata.jsonl" or "sidecar
    .txt"), ``files`` (relative names of the kept images), ``captions``, ``skipped`` (list of
    ``(file, reason)``) and ``num_examined``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int = 32,
        length: int | None = None,
        *,
        cache_bytes: int = 1 << 30,
    ) -> None:
        self.name = "folder"
        self.resolution = check_size(resolution, length)
        self.root = Path(path).expanduser()
        if not self.root.exists():
            raise DatasetError(f"image folder {self.root} does not exist")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root} is not a directory (folder datasets need a directory of images)")
        self.skipped: list[tuple[str, str]] = []
        self._pre_skipped = 0  # entries skipped before decoding (bad metadata lines, missing captions)

        metadata = self.root / METADATA_FILE
        if metadata.is_file():
            self.mode = METADATA_FILE
            candidates = self._from_metadata(metadata)
        else:
            self.mode = "sidecar .txt"
            candidates = self._from_sidecars()

        # Decode every candidate once (stopping once ``length`` good ones are found).
        limit = None if length is None else int(length)
        files: list[str] = []
        captions: list[str] = []
        arrays: list[np.ndarray] = []
        examined = 0
        for rel, caption in candidates:
            if limit is not None and len(files) >= limit:
                break
            examined += 1
            try:
                array = load_image(self.root / rel, self.resolution)
            except Exception as exc:  # any bad file is skipped
                self._skip(rel, _reason(exc))
                continue
            files.append(rel)
            captions.append(caption)
            arrays.append(array)
        self.num_examined = examined + self._pre_skipped
        if self.skipped:
            logger.warning("%s: skipped %d of %d files", self.root, len(self.skipped), self.num_examined)
        if not files:
            raise DatasetError(
                f"{self.root}: no usable captioned images ({len(self.skipped)} skipped; see the warnings above)"
            )
        self.files = files
        self.captions = captions
        per_image = self.resolution * self.resolution * 3
        if per_image * len(files) <= cache_bytes:
            self._cache: np.ndarray | None = np.stack(arrays)  # (N, R, R, 3) uint8, shared across workers
        else:
            self._cache = None

    # -- discovery -----------------------------------------------------------------------------------

    def _skip(self, file: str, reason: str) -> None:
        """Record a skipped file and log ONE line naming it and the reason."""
        self.skipped.append((file, reason))
        line = f"{self.root}: skipping {file}: {reason}"
        logger.warning("%s", line.replace("\r", " ").replace("\n", " "))

    def _from_metadata(self, metadata: Path) -> list[tuple[str, str]]:
        """Read ``metadata.jsonl`` -> [(relative file name, caption)], skipping bad lines."""
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        try:
            data = metadata.read_bytes()
        except OSError as e:
            raise DatasetError(f"cannot read {metadata}: {e.strerror or e}") from e
        root = self.root.resolve()
        # split the bytes, not the text: only \n and \r end a JSON line (U+2028 or U+0085 in a caption do not)
        for number, raw in enumerate(data.splitlines(), start=1):
            where = f"{METADATA_FILE} line {number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:  # this line only: the others are still read
                self._skip_line(where, f"not UTF-8 text (byte 0x{raw[e.start]:02X} at byte {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                self._skip_line(where, f"malformed JSON ({e.msg})")
                continue
            if not isinstance(entry, dict):
                self._skip_line(where, "not a JSON object")
                continue
            name = entry.get("file_name")
            text = entry.get("text", entry.get("caption"))
            if not isinstance(name, str) or not name:
                self._skip_line(where, "no 'file_name'")
                continue
            if not isinstance(text, str) or not text.strip():
                self._skip_line(where, f"{name}: no 'text' caption")
                continue
            try:
                check_text(text, "its caption")
            except TextError as e:
                self._skip_line(where, f"{name}: {e}")
                continue
            rel = Path(name).as_posix()
            target = (self.root / rel).resolve()
            if root != target and root not in target.parents:
                self._skip_line(where, f"{name}: outside the folder")
                continue
            if not target.is_file():
                self._skip_line(where, f"{name}: file not found")
                continue
            if rel in seen:
                self._skip_line(where, f"{name}: listed twice")
                continue
            seen.add(rel)
            out.append((rel, text.strip()))
        if not out and not self.skipped:
            raise DatasetError(f"{metadata} lists no images (expected lines like {{'file_name': ..., 'text': ...}})")
        return out

    def _skip_line(self, where: str, reason: str) -> None:
        self._pre_skipped += 1
        self._skip(where, reason)

    def _from_sidecars(self) -> list[tuple[str, str]]:
        """Find images recursively and their same-stem ``.txt`` captions."""
        images = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in filenames:
                if not filename.startswith(".") and Path(filename).suffix.lower() in IMAGE_EXTENSIONS:
                    images.append(Path(dirpath, filename).relative_to(self.root).as_posix())
        images.sort()
        if not images:
            raise DatasetError(
                f"{self.root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files, recursively)"
            )
        out: list[tuple[str, str]] = []
        uncaptioned = []
        for rel in images:
            sidecar = (self.root / rel).with_suffix(".txt")
            if not sidecar.is_file():
                uncaptioned.append(rel)
                continue
            try:
                caption = sidecar.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                self._skip_line(rel, f"caption file {sidecar.name} unreadable ({type(e).__name__})")
                continue
            if not caption:
                self._skip_line(rel, f"caption file {sidecar.name} is empty")
                continue
            out.append((rel, caption))
        if not out and not self.skipped:
            raise DatasetError(
                f"{self.root}: found {len(images)} images but no captions; add a {METADATA_FILE} "
                "(one JSON object per line with 'file_name' and 'text') or a .txt caption file next to each "
                "image with the same name (cat.png + cat.txt)"
            )
        for rel in uncaptioned:
            self._skip_line(rel, f"no caption ({Path(rel).with_suffix('.txt').name} not found)")
        return out

    # -- access --------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.files)

    def image_uint8(self, index: int) -> np.ndarray:
        """The (R, R, 3) uint8 image at ``index``."""
        if self._cache is not None:
            return self._cache[index]
        try:
            return load_image(self.root / self.files[index], self.resolution)
        except Exception as exc:
            raise DatasetError(
                f"{self.root / self.files[index]} could be read when the dataset was opened but not now "
                f"({_reason(exc)}); was the folder changed?"
            ) from exc

    def __getitem__(self, index: int) -> Sample:
        index = sample_index(index, len(self), f"a folder of {len(self)} images")
        array = self.image_uint8(index)
        image = torch.from_numpy(np.ascontiguousarray(array).astype(np.float32)).permute(2, 0, 1)
        return {
            "image": image.div(127.5).sub(1.0).contiguous(),
            "caption": self.captions[index],
            "meta": {"file_name": self.files[index]},
        }

    def __repr__(self) -> str:
        return f"FolderDataset({str(self.root)!r}, n={len(self)}, skipped={len(self.skipped)}, mode={self.mode!r})"
