"""Look at a dataset before training on it: a captioned preview grid and summary statistics."""

from __future__ import annotations

import itertools
import re
import statistics
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, IterableDataset
from tqdm import tqdm

from dalle2.data.base import DatasetError, Sample, tensor_to_pil
from dalle2.grid import captioned_grid, save_image_atomic

WORD = re.compile(r"[a-z0-9\-']+")
CATEGORICAL_META = ("kind", "class_name", "background", "count")


def iter_samples(dataset: Dataset | IterableDataset, limit: int | None = None) -> Iterator[Sample]:
    """The first ``limit`` samples of a map-style or streamed dataset, in order."""
    if isinstance(dataset, IterableDataset):
        yield from itertools.islice(iter(dataset), limit)
    else:
        n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
        for i in range(n):
            yield dataset[i]


def preview(dataset: Dataset | IterableDataset, n: int, out: str | Path, cell: int = 96) -> Path:
    """Write a PNG grid of the first ``n`` samples with a numbered caption sheet."""
    if n < 1:
        raise DatasetError(f"-n must be at least 1, got {n}")
    samples = list(tqdm(iter_samples(dataset, n), total=n, desc="preview", unit="img", leave=False))
    if not samples:
        raise DatasetError("the dataset yielded no samples")
    images = [tensor_to_pil(s["image"]) for s in samples]
    grid = captioned_grid(images, [s["caption"] for s in samples], cell=cell)
    return save_image_atomic(grid, out)


def stats(dataset: Dataset | IterableDataset, limit: int | None = 20_000) -> dict[str, Any]:
    """Size, resolution, caption length distribution, vocabulary, and counts of categorical metadata."""
    streamed = isinstance(dataset, IterableDataset)
    size = None if streamed else len(dataset)  # type: ignore[arg-type]
    total = limit if size is None else (size if limit is None else min(limit, size))
    lengths: list[int] = []
    vocab: Counter[str] = Counter()
    captions: set[str] = set()
    shapes: Counter[tuple[int, ...]] = Counter()
    meta_counts: dict[str, Counter[str]] = {}
    for sample in tqdm(iter_samples(dataset, limit), total=total, desc="stats", unit="sample", leave=False):
        caption = sample["caption"]
        words = WORD.findall(caption.lower())
        lengths.append(len(words))
        vocab.update(words)
        captions.add(caption)
        shapes[tuple(sample["image"].shape)] += 1
        for key in CATEGORICAL_META:
            if key in sample["meta"]:
                meta_counts.setdefault(key, Counter())[str(sample["meta"][key])] += 1
    if not lengths:
        raise DatasetError("the dataset yielded no samples")
    examined = len(lengths)
    histogram = Counter(lengths)
    return {
        "name": getattr(dataset, "name", type(dataset).__name__),
        "size": size if size is not None else f"streamed ({examined} read)",
        "examined": examined,
        "image_shapes": {"x".join(map(str, k)): v for k, v in shapes.items()},
        "caption_words": {
            "min": min(lengths),
            "median": statistics.median(lengths),
            "mean": round(statistics.fmean(lengths), 2),
            "max": max(lengths),
            "histogram": dict(sorted(histogram.items())),
        },
        "vocabulary_size": len(vocab),
        "distinct_captions": len(captions),
        "top_words": vocab.most_common(15),
        "metadata": {k: dict(v.most_common()) for k, v in meta_counts.items()},
    }


def format_stats(result: dict[str, Any]) -> str:
    """Human-readable report of :func:`stats`."""
    cw = result["caption_words"]
    peak = max(cw["histogram"].values())
    lines = [
        f"dataset:            {result['name']}",
        f"size:               {result['size']} samples (statistics over {result['examined']})",
        f"image shape:        {', '.join(f'{k} ({v})' for k, v in result['image_shapes'].items())}",
        f"caption words:      min {cw['min']}, median {cw['median']}, mean {cw['mean']}, max {cw['max']}",
        f"vocabulary:         {result['vocabulary_size']} distinct words",
        f"distinct captions:  {result['distinct_captions']}",
        "caption length histogram (words: samples):",
    ]
    for length, count in cw["histogram"].items():
        lines.append(f"  {length:3d}: {count:7d} {'#' * max(1, round(40 * count / peak))}")
    lines.append("top words: " + ", ".join(f"{w} ({c})" for w, c in result["top_words"]))
    for key, counts in result["metadata"].items():
        lines.append(f"{key}: " + ", ".join(f"{k} ({v})" for k, v in list(counts.items())[:12]))
    return "\n".join(lines)


def iter_captions(
    dataset: Dataset | IterableDataset, limit: int | None = None, desc: str | None = None
) -> Iterator[str]:
    """Captions of the first ``limit`` samples; uses a dataset's fast ``caption(index)`` when it has one."""
    caption = getattr(dataset, "caption", None)
    if callable(caption) and not isinstance(dataset, IterableDataset):
        n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
        yield from (caption(i) for i in tqdm(range(n), desc=desc, unit="caption", leave=False, disable=desc is None))
        return
    for sample in tqdm(
        iter_samples(dataset, limit), total=limit, desc=desc, unit="caption", leave=False, disable=desc is None
    ):
        yield sample["caption"]
