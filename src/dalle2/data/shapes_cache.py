"""An opt-in on-disk cache of rendered ``shapes`` images, for trainers faster than the renderer.

Rendering a supersampled scene costs about 2.5 ms (32x32, one core of this project's CPU), which is
nothing beside a CPU training step but starves a GPU: the `cpu` preset's decoder on an H200 wants
thousands of images a second. With ``DALLE2_SHAPES_CACHE=DIR`` set, a :class:`ShapesDataset` renders its
whole split once, in parallel, into ``DIR/shapes-<split>-r<res>-s<seed>-n<length>.npy`` (uint8, written
atomically) and then reads images from that memory-mapped file, shared by every DataLoader worker.
Captions and ground truth are still drawn from the seed (cheap), so items are identical with or without
the cache; a cache whose first images differ from a fresh render (the renderer changed) is rebuilt.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dalle2.data.shapes import ShapesDataset

__all__ = ["CACHE_ENV", "cache_path", "cached_renders"]

CACHE_ENV = "DALLE2_SHAPES_CACHE"
_CHECKED = 2  # images re-rendered on load to detect a stale cache


def cache_path(dataset: ShapesDataset, folder: str | Path) -> Path:
    """Where ``dataset``'s renders are cached under ``folder``."""
    d = dataset
    return Path(folder) / f"shapes-{d.split}-r{d.resolution}-s{d.seed}-n{d.length}.npy"


def _render_range(args: tuple[str, int, int, int, int, int]) -> np.ndarray:
    from dalle2.data.shapes import ShapesDataset, render

    split, resolution, seed, length, start, stop = args
    dataset = ShapesDataset(split, resolution, seed, length, cache=False)
    return np.stack([np.asarray(render(dataset.scene(i)[0], resolution).convert("RGB")) for i in range(start, stop)])


def _render_all(dataset: ShapesDataset, workers: int) -> np.ndarray:
    d, chunk = dataset, 500
    jobs = [(d.split, d.resolution, d.seed, d.length, i, min(i + chunk, d.length)) for i in range(0, d.length, chunk)]
    if workers <= 1 or len(jobs) == 1:
        parts = [_render_range(job) for job in jobs]
    else:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            parts = pool.map(_render_range, jobs)
    return np.concatenate(parts)


def cached_renders(dataset: ShapesDataset, folder: str | Path, workers: int | None = None) -> np.ndarray:
    """``(length, R, R, 3)`` uint8 renders of ``dataset``, memory-mapped from the cache (built if missing)."""
    path = cache_path(dataset, folder)
    expected = (dataset.length, dataset.resolution, dataset.resolution, 3)
    if dataset.length == 0:
        return np.zeros(expected, np.uint8)
    if path.is_file():
        try:
            images = np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            images = None
        if images is not None and images.shape == expected and images.dtype == np.uint8:
            checked = min(_CHECKED, dataset.length)
            fresh = _render_range((dataset.split, dataset.resolution, dataset.seed, dataset.length, 0, checked))
            if np.array_equal(images[: len(fresh)], fresh):
                return images
    path.parent.mkdir(parents=True, exist_ok=True)
    images_now = _render_all(dataset, workers or os.cpu_count() or 1)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, images_now)
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")
