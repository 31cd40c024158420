"""Captioned images streamed from WebDataset tar shards.

A shard is a tar file of samples; the files of one sample share a key (``000001.png`` +
``000001.txt``). Shards are given by a brace pattern (``shards/{000..009}.tar``), a glob
(``shards/*.tar``), a directory (all its ``*.tar``), several of these joined by ``::``, or remote URLs
that the ``webdataset`` package can open (``https://...``, ``pipe:...``).

Streaming is split so that every sample is seen once per epoch across all DDP ranks and DataLoader
workers: by shard when there are at least as many shards as consumers (ranks x workers), otherwise by
sample (every consumer reads every shard and keeps every n-th sample).
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import logging
import os
import random
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from dalle2.data.base import DatasetError, Sample, check_size, pil_to_tensor, resize_center_crop, tensor_to_pil
from dalle2.data.folder import to_rgb
from dalle2.text_input import TextError, check_text

__all__ = ["ShardDataset", "expand_shards", "write_shards"]

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "ppm", "tif", "tiff", "img", "image")
CAPTION_KEYS = ("txt", "text", "caption")
_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, pipe:, s3:, gs:, ... (not "C:" paths)

logger = logging.getLogger(__name__)


def _is_remote(url: str) -> bool:
    return bool(_REMOTE.match(url)) and not url.startswith("file:") and not re.match(r"^[a-zA-Z]:[\\/]", url)


def expand_shards(pattern: str | os.PathLike | list[str]) -> list[str]:
    """Expand a shard spec (brace pattern, glob, directory, ``::``-joined, or a list) into shard URLs.

    Local shards must exist; raises ``DatasetError`` naming what is missing or matched nothing.
    """
    if isinstance(pattern, list | tuple):
        parts = [str(p) for p in pattern]
    else:
        parts = wds.shardlists.expand_urls(str(pattern))  # "::" lists, ${ENV} and {000..009} braces
    if not parts:
        raise DatasetError(f"shard pattern {pattern!r} is empty")
    urls: list[str] = []
    missing: list[str] = []
    for part in parts:
        if _is_remote(part):
            urls.append(part)
            continue
        local = part[len("file:") :] if part.startswith("file:") else part
        local = os.path.expanduser(local)
        if os.path.isdir(local):
            found = sorted(glob.glob(os.path.join(glob.escape(local), "*.tar")))
            if not found:
                raise DatasetError(f"directory {local} contains no .tar shards")
            urls.extend(found)
        elif glob.has_magic(local):
            found = sorted(p for p in glob.glob(local) if os.path.isfile(p))
            if not found:
                raise DatasetError(f"shard pattern {local!r} matches no files")
            urls.extend(found)
        elif os.path.isfile(local):
            urls.append(local)
        else:
            missing.append(local)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"{len(missing)} of {len(parts)} shards of {str(pattern)!r} not found: {shown}")
    return urls


def _warn(message: str) -> None:
    """One warning line (logger ``dalle2.data.webdataset``)."""
    logger.warning("%s", message.replace("\r", " ").replace("\n", " "))


def _warn_and_continue(exn: BaseException) -> bool:
    """Like ``wds.warn_and_continue`` (one warning line, keep going) but without its 0.5 s sleep."""
    text = " ".join(str(a) for a in exn.args if isinstance(a, str)) or type(exn).__name__
    _warn(f"skipping unreadable shard data: {type(exn).__name__}: {text}")
    return True


def _decode_image(data: bytes, resolution: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = to_rgb(image)
    return pil_to_tensor(resize_center_crop(rgb, resolution))


def _caption(raw: dict[str, Any]) -> str | None:
    for key in CAPTION_KEYS:
        if key in raw:
            return bytes(raw[key]).decode("utf-8").strip()
    if "json" in raw:
        meta = json.loads(bytes(raw["json"]).decode("utf-8"))
        if isinstance(meta, dict):
            for key in ("caption", "text"):
                if isinstance(meta.get(key), str):  # JSON escapes can spell lone surrogates: check the text
                    return check_text(meta[key], f"its .json {key!r}").strip()
    return None


def worker_info() -> tuple[int, int]:
    """(consumer index, number of consumers) across DDP ranks x DataLoader workers."""
    rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
    return rank * num_workers + worker, world_size * num_workers


class ShardDataset(IterableDataset):
    """Stream ``{"image", "caption", "meta": {"key", "shard"}}`` samples from (image, txt) tar shards.

    ``length`` caps the number of samples yielded per epoch across all consumers (each of the ``n``
    consumers yields at most its share, ``length // n`` or one more). ``shuffle`` > 0 shuffles the shard
    order (per epoch, see ``set_epoch``) and samples within a buffer of that size; 0 keeps file order.
    Corrupt samples and unreadable shard data are skipped with one warning line each (logging).
    """

    def __init__(
        self,
        pattern: str | os.PathLike | list[str],
        resolution: int = 32,
        length: int | None = None,
        *,
        shuffle: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.name = "webdataset"
        self.resolution = check_size(resolution, length)
        self.pattern = pattern
        self.urls = expand_shards(pattern)
        self.length = None if length is None else int(length)
        self.shuffle = int(shuffle)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of an epoch (call before each epoch; no effect when shuffle=0)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("a streamed ShardDataset has no length unless one is given (length=N)")
        return self.length

    def _raw_samples(self, urls: list[str]) -> Iterator[dict[str, Any]]:
        # The library's streaming reader: open each url (gopen), expand the tar, group files by key.
        source = iter([{"url": url} for url in urls])
        yield from wds.tarfile_samples(source, handler=_warn_and_continue)

    def _decode(self, raw: dict[str, Any]) -> Sample | None:
        key, url = raw.get("__key__", "?"), raw.get("__url__", "?")
        image_key = next((k for k in IMAGE_KEYS if k in raw), None)
        if image_key is None:
            _warn(f"skipping sample {key} in {url}: no image (found {', '.join(sorted(raw))})")
            return None
        try:
            caption = _caption(raw)
        except TextError as e:
            _warn(f"skipping sample {key} in {url}: {e}")
            return None
        except (UnicodeDecodeError, ValueError) as e:
            _warn(f"skipping sample {key} in {url}: unreadable caption ({type(e).__name__})")
            return None
        if not caption:
            _warn(f"skipping sample {key} in {url}: no caption (.txt)")
            return None
        try:
            image = _decode_image(raw[image_key], self.resolution)
        except Exception as e:  # any undecodable image is skipped
            reason = str(e).splitlines()[0] if str(e) else ""
            _warn(f"skipping sample {key} in {url}: bad {image_key} image ({type(e).__name__}: {reason})")
            return None
        return {"image": image, "caption": caption, "meta": {"key": key, "shard": url}}

    def __iter__(self) -> Iterator[Sample]:
        consumer, consumers = worker_info()
        urls = list(self.urls)
        if self.shuffle > 0:  # the same shard order on every consumer, so the split stays disjoint
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(urls)
        if len(urls) >= consumers:
            mine, stride = urls[consumer::consumers], None
        else:
            mine, stride = urls, (consumer, consumers)
        raw = self._raw_samples(mine)
        if stride is not None:
            raw = itertools.islice(raw, stride[0], None, stride[1])
        samples: Iterator[Sample] = (s for s in map(self._decode, raw) if s is not None)
        if self.shuffle > 1:
            rng = random.Random((self.seed * 1_000_003 + self.epoch) * 65_537 + consumer)
            samples = _buffer_shuffle(samples, self.shuffle, rng)
        if self.length is not None:
            share = self.length // consumers + (1 if consumer < self.length % consumers else 0)
            samples = itertools.islice(samples, share)
        yield from samples

    def __repr__(self) -> str:
        return f"ShardDataset({str(self.pattern)!r}, shards={len(self.urls)}, resolution={self.resolution})"


def _buffer_shuffle(samples: Iterator[Sample], size: int, rng: random.Random) -> Iterator[Sample]:
    buffer: list[Sample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


# -- writing ---------------------------------------------------------------------------------------


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _encode_image(image: Any, image_format: str) -> tuple[str, bytes]:
    """(extension, encoded bytes) for a PIL image, a tensor in [-1, 1] (or uint8), an array or bytes."""
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        return _sniff(data) or image_format, data
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8:
            image = image.float().div(127.5).sub(1.0)
        if image.ndim == 2:
            image = image.unsqueeze(0)
        image = tensor_to_pil(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"cannot write an image of type {type(image).__name__}")
    if image.mode not in ("RGB", "L", "RGBA", "LA") or (image_format == "jpg" and image.mode != "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format={"jpg": "JPEG"}.get(image_format, image_format.upper()))
    return image_format, buffer.getvalue()


def _output_pattern(out: str | os.PathLike) -> str:
    out = str(out)
    if "%" in out:
        pattern = out
        parent = os.path.dirname(out)
    elif out.endswith(".tar"):
        raise DatasetError(f"write_shards needs a directory or a printf pattern such as shards/%06d.tar, not {out!r}")
    else:
        parent = out
        pattern = os.path.join(out, "%06d.tar")
    try:
        pattern % 0
    except (TypeError, ValueError) as e:
        raise DatasetError(f"bad shard pattern {out!r}: {e} (use one %d, e.g. shards/%06d.tar)") from e
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    return pattern


def write_shards(
    samples: Iterable[Any],
    out: str | os.PathLike,
    per_shard: int = 1000,
    *,
    image_format: str = "png",
    start_shard: int = 0,
) -> list[str]:
    """Write (image, caption) pairs into tar shards; returns the shard paths written.

    ``samples`` yields ``(image, caption)`` tuples or dicts with ``image`` and ``caption`` (so any
    dataset of this package can be converted: ``write_shards(FolderDataset(path), "shards/")``).
    An image is a PIL image, a (3, H, W) / (1, H, W) / (H, W) tensor in [-1, 1] (or uint8), a uint8
    array, or already-encoded bytes (stored as they are). ``out`` is a directory (shards named
    ``000000.tar``, ...) or a printf pattern like ``shards/train-%04d.tar``. Read them back with
    ``ShardDataset("shards/{000000..000009}.tar")`` or ``ShardDataset("shards/")``.
    """
    if per_shard < 1:
        raise DatasetError(f"per_shard must be at least 1, got {per_shard}")
    image_format = image_format.lower().lstrip(".")
    image_format = "jpg" if image_format == "jpeg" else image_format
    pattern = _output_pattern(out)
    paths: list[str] = []
    writer: wds.TarWriter | None = None
    count = 0
    try:
        for index, sample in enumerate(samples):
            if isinstance(sample, dict):
                image, caption = sample["image"], sample["caption"]
            else:
                image, caption = sample
            if writer is None or count >= per_shard:
                if writer is not None:
                    writer.close()
                paths.append(pattern % (start_shard + len(paths)))
                writer = wds.TarWriter(paths[-1], mtime=0.0)
                count = 0
            ext, data = _encode_image(image, image_format)
            writer.write({"__key__": f"{index:09d}", ext: data, "txt": str(caption)})
            count += 1
    finally:
        if writer is not None:
            writer.close()
    return paths
