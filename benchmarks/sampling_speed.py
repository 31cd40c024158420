"""Text-to-image sampling speed of a pipeline at its default settings, with each stage's share of the time.

    python benchmarks/sampling_speed.py MODEL_DIR [-n 64] [--batch-size 64] [--threads T]

Generates ``n`` images for the shapes benchmark prompts (after one warm-up call), and writes
``benchmarks/results/sampling_speed.{json,md}``: images/s end to end, and seconds per stage (CLIP text
encoding, prior, decoder, upsampler) for unCLIP pipelines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="sampling_speed")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from dalle2.eval.prompts import shapes_prompts
    from dalle2.pipeline import load

    pipe = load(args.model)
    prompts = [r["prompt"] for r in shapes_prompts(quick=True)]
    prompts = (prompts * (args.n // len(prompts) + 1))[: args.n]
    pipe(prompts[:2], n=1, seed=0)  # warm-up
    if hasattr(pipe, "timings"):
        pipe.timings.clear()
    start = time.perf_counter()
    for i in range(0, len(prompts), args.batch_size):
        pipe(prompts[i : i + args.batch_size], n=1, seed=i)
    seconds = time.perf_counter() - start
    timings = dict(getattr(pipe, "timings", {}))
    result = {
        "model": args.model,
        "images": len(prompts),
        "resolution": pipe.resolution,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 2),
        "images_per_second": round(len(prompts) / seconds, 3),
        "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
        "stage_share": {k: round(v / seconds, 3) for k, v in timings.items()},
        "settings": pipe.settings(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in result["stage_share"].items())
    md = [
        f"# Sampling speed: {args.model}",
        "",
        f"Command: `python benchmarks/sampling_speed.py {args.model} -n {args.n} --batch-size {args.batch_size}`",
        "",
        f"{result['images']} images at {result['resolution']}x{result['resolution']}, batch {args.batch_size}, "
        f"{result['threads']} threads: **{result['images_per_second']} images/s** ({seconds:.1f} s). "
        f"Share of time: {shares}.",
        "",
        f"Settings: `{json.dumps(result['settings'])}`",
    ]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
