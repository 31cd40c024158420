"""The one interface every dataset follows.

A sample is a dict ``{"image": Tensor (3, H, W) float32 in [-1, 1], "caption": str, "meta": dict}``.
Images are always RGB (grayscale datasets are replicated to three channels) so that every model,
the evaluator and the server see one format.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from dalle2.errors import Dalle2Error

Sample = dict[str, Any]


class DatasetError(Dalle2Error):
    """A dataset cannot be opened or read; the message says what to do about it."""


def check_size(resolution: int, length: int | None) -> int:
    """``resolution`` as an int; a DatasetError unless it is positive and ``length`` (None: all) is not negative."""
    if int(resolution) < 1:
        raise DatasetError(f"resolution must be positive, got {resolution}")
    if length is not None and int(length) < 0:
        raise DatasetError(f"length must be non-negative, got {length}")
    return int(resolution)


def sample_index(index: int, n: int, what: str) -> int:
    """``index`` into ``n`` samples, negative ones counted from the end; an IndexError ("out of range for
    ``what``") outside."""
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for {what}")
    return index


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> (3, H, W) float32 tensor in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3) in [0, 255]
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, H, W) tensor in [-1, 1] -> PIL RGB image."""
    image = image.detach().float().cpu()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array, mode="RGB")


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to ``resolution`` (antialiased), then centre-crop to a square."""
    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None if scale > 0.5 else 2.0)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def collate(batch: list[Sample]) -> Sample:
    """Stack images, keep captions and metadata as lists (metadata is ragged)."""
    return {
        "image": torch.stack([s["image"] for s in batch]),
        "caption": [s["caption"] for s in batch],
        "meta": [s["meta"] for s in batch],
    }
