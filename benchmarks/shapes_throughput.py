"""Throughput of the ``shapes`` dataset: images/s through ``ShapesDataset.__getitem__`` (one process).

    python benchmarks/shapes_throughput.py [--samples 2000] [--resolutions 32 64] [--repeats 3]

Writes ``benchmarks/results/shapes_throughput.json`` and ``.md``. Each measurement renders
``--samples`` distinct samples (scene sampling + caption + supersampled rendering + tensor
conversion + metadata) after a short warm-up; the best of ``--repeats`` runs is reported (the
median too), since other processes on a shared machine only ever slow a run down.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from dalle2.data.shapes import ShapesDataset, render

RESULTS = Path(__file__).resolve().parent / "results"


def measure(resolution: int, samples: int, repeats: int) -> dict:
    ds = ShapesDataset(split="train", resolution=resolution, seed=0, length=samples + 200)
    for i in range(samples, samples + 200):  # warm-up (caches, allocator)
        ds[i]
    rates, render_rates = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(samples):
            ds[i]
        rates.append(samples / (time.perf_counter() - start))
    scenes = [ds.scene(i)[0] for i in range(samples)]
    for _ in range(repeats):
        start = time.perf_counter()
        for scene in scenes:
            render(scene, resolution)
        render_rates.append(samples / (time.perf_counter() - start))
    return {
        "resolution": resolution,
        "samples": samples,
        "repeats": repeats,
        "images_per_s_best": round(max(rates), 1),
        "images_per_s_median": round(statistics.median(rates), 1),
        "render_only_images_per_s_best": round(max(render_rates), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # a data-loader worker is one process, one thread
    command = "python benchmarks/shapes_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = [measure(r, args.samples, args.repeats) for r in args.resolutions]
    result = {
        "benchmark": "shapes dataset throughput (ShapesDataset.__getitem__, single process, 1 torch thread)",
        "command": command.strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shapes_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# shapes dataset throughput",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Single process, 1 torch thread, Python {result['python']}, torch {result['torch']}, "
        f"{result['machine']}. Full `__getitem__` = scene sampling + caption + 4x-supersampled PIL "
        "rendering + tensor conversion + metadata; best (median) of the repeats.",
        "",
        "| resolution | samples | images/s (best) | images/s (median) | render only, images/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['resolution']} | {r['samples']} | {r['images_per_s_best']:.0f} | "
            f"{r['images_per_s_median']:.0f} | {r['render_only_images_per_s_best']:.0f} |"
        )
    (args.out / "shapes_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
