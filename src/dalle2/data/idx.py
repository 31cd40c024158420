"""Fashion-MNIST and MNIST from their IDX files, as captioned RGB samples.

The IDX format (LeCun et al.): two zero bytes, a dtype code byte, a byte with the number of dimensions,
one big-endian uint32 per dimension, then the data in big-endian order. Files may be gzipped.

Images are 28x28 grayscale; they are padded with a 2-pixel black border to 32x32 (the resolution the
small models are built for) and, for other resolutions, resized from that 32x32 with antialiased
bicubic filtering. The three RGB channels are identical. Captions come from a few templates, chosen
deterministically per sample index, so that the same index always has the same caption.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dalle2.data.base import DatasetError, Sample, sample_index

__all__ = [
    "FASHION_CLASSES",
    "MNIST_CLASSES",
    "MNIST_DIGITS",
    "IDX_FILES",
    "DEFAULT_ROOTS",
    "IdxDataset",
    "class_prompt",
    "classes_for",
    "read_idx",
    "templates_for",
]

FASHION_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
MNIST_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MNIST_DIGITS = [str(i) for i in range(10)]

# Placeholders: {a} the article for the class name ("a"/"an"), {c} the class name, {d} the digit (MNIST).
FASHION_TEMPLATES = [
    "a photo of {a} {c}",
    "{a} {c}, black and white",
    "a black and white photo of {a} {c}",
    "a picture of {a} {c}",
    "a grayscale image of {a} {c}",
    "a small photo of {a} {c}",
]
MNIST_TEMPLATES = [
    "a handwritten digit {c}",
    "the number {d} written by hand",
    "a black and white image of the digit {d}",
    "a handwritten {c}",
    "the digit {c}, handwritten",
    "a picture of the number {d}",
]

DEFAULT_ROOTS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}

# split -> (images file, labels file), without the optional ".gz"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_PRETTY = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key in ("fashion-mnist", "fashionmnist"):
        return "fashion-mnist"
    if key == "mnist":
        return "mnist"
    raise DatasetError(f"unknown IDX dataset {name!r}; choose fashion-mnist or mnist")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a native-endian numpy array of its dtype and shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"IDX file not found: {path}") from None
    except OSError as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}") from e
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{path}: corrupt or truncated gzip data ({e})") from e
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw)} bytes, the header alone needs 4)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DatasetError(
            f"{path}: not an IDX file (bad magic number 0x{raw[:4].hex()}; expected 0x0000 then a dtype code "
            "08/09/0B/0C/0D/0E and the number of dimensions)"
        )
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({ndim} dimensions need {header} bytes, got {len(raw)})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual < expected:
        raise DatasetError(
            f"{path}: truncated IDX file (shape {shape} of {dtype.name} needs {expected} data bytes, got {actual})"
        )
    if actual > expected:
        raise DatasetError(f"{path}: IDX file has {actual - expected} unexpected trailing bytes after shape {shape}")
    array = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def classes_for(name: str) -> list[str]:
    """Class names of ``fashion-mnist`` or ``mnist``, indexed by label."""
    return list(FASHION_CLASSES if _canonical(name) == "fashion-mnist" else MNIST_CLASSES)


def templates_for(name: str) -> list[str]:
    """Caption templates of a dataset (placeholders {a} article, {c} class name, {d} digit)."""
    return list(FASHION_TEMPLATES if _canonical(name) == "fashion-mnist" else MNIST_TEMPLATES)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def class_prompt(name: str, label: int, template_index: int = 0) -> str:
    """The caption of class ``label`` with template ``template_index`` (0: the canonical caption)."""
    classes, templates = classes_for(name), templates_for(name)
    if not 0 <= int(label) < len(classes):
        raise DatasetError(f"label {label} out of range for {name} (0..{len(classes) - 1})")
    c = classes[int(label)]
    template = templates[int(template_index) % len(templates)]
    return template.format(a=_article(c), c=c, d=int(label))


def _template_for_index(index: int, n: int) -> int:
    """A deterministic, well-mixed template choice for a sample index (not periodic in the index)."""
    return zlib.crc32(int(index).to_bytes(8, "little")) % n


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _how_to_get(name: str) -> str:
    files = ", ".join(f"{stem}.gz" for pair in IDX_FILES.values() for stem in pair)
    apt = "install it with `sudo apt install dataset-fashion-mnist`, or " if name == "fashion-mnist" else ""
    return f"{apt}download the four IDX files ({files}) into DIR and pass --data {name}:DIR"


class IdxDataset(Dataset):
    """Fashion-MNIST or MNIST as ``{"image": (3, R, R) in [-1, 1], "caption": str, "meta": {...}}``.

    ``meta`` is ``{"label": int, "class_name": str, "index": int}``. The whole split is held in memory
    as uint8 (47 MB for the 60000 training images); each item is converted on access.
    """

    def __init__(
        self,
        name: str,
        root: str | os.PathLike | None = None,
        split: str = "train",
        resolution: int = 32,
        length: int | None = None,
    ) -> None:
        self.name = _canonical(name)
        if split not in IDX_FILES:
            raise DatasetError(f"{self.name} has splits {', '.join(IDX_FILES)}, not {split!r}")
        if int(resolution) < 1:
            raise DatasetError(f"resolution must be positive, got {resolution}")
        self.split = split
        self.resolution = int(resolution)
        self.root = Path(root if root else DEFAULT_ROOTS[self.name]).expanduser()
        self.classes = classes_for(self.name)
        self.num_classes = len(self.classes)
        self.templates = templates_for(self.name)
        pretty = _PRETTY[self.name]

        if not self.root.is_dir():
            raise DatasetError(f"{pretty} directory {self.root} does not exist; {_how_to_get(self.name)}")
        paths = []
        for stem in IDX_FILES[split]:
            found = _find(self.root, stem)
            if found is None:
                raise DatasetError(
                    f"{pretty} file missing: neither {self.root / stem} nor {self.root / stem}.gz exists; "
                    f"{_how_to_get(self.name)}"
                )
            paths.append(found)
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetError(
                f"{paths[0]}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1:
            raise DatasetError(f"{paths[1]}: expected labels of shape (N,), got {labels.shape}")
        if len(images) != len(labels):
            raise DatasetError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DatasetError(f"{paths[1]}: labels must be in 0..{self.num_classes - 1}")
        if length is not None:
            if int(length) < 0:
                raise DatasetError(f"length must be non-negative, got {length}")
            images, labels = images[: int(length)], labels[: int(length)]
        self.images = np.ascontiguousarray(images)  # (N, H, W) uint8
        self.labels = labels.astype(np.int64)
        self.paths = paths
        self.files = paths  # alias

    def __len__(self) -> int:
        return len(self.labels)

    def _padded(self, index: int) -> np.ndarray:
        image = self.images[index]
        h, w = image.shape
        if (h, w) == (28, 28):
            return np.pad(image, 2)  # 2-pixel black border -> 32x32
        return image

    def image_uint8(self, index: int) -> np.ndarray:
        """The (R, R) uint8 grayscale image at ``resolution`` (before the move to RGB and [-1, 1])."""
        image = self._padded(index)
        if image.shape != (self.resolution, self.resolution):
            pil = Image.fromarray(image)
            image = np.asarray(pil.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC))
        return image

    def caption(self, index: int) -> str:
        template = _template_for_index(index, len(self.templates))
        return class_prompt(self.name, int(self.labels[index]), template)

    def __getitem__(self, index: int) -> Sample:
        index = sample_index(index, len(self), f"{self.name} {self.split} ({len(self)} samples)")
        gray = torch.from_numpy(self.image_uint8(index).astype(np.float32)).div_(127.5).sub_(1.0)
        label = int(self.labels[index])
        return {
            "image": gray.unsqueeze(0).repeat(3, 1, 1),
            "caption": self.caption(index),
            "meta": {"label": label, "class_name": self.classes[label], "index": int(index)},
        }

    def __repr__(self) -> str:
        return f"IdxDataset({self.name!r}, root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
