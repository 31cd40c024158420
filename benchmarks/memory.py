"""Peak memory (maximum resident set size) of `dalle2 generate` and of `dalle2 train` at the `cpu` preset.

    python benchmarks/memory.py [--train-steps 30]

Each command runs as its own child process; its peak RSS comes from the kernel (``getrusage`` of the
waited-for child, ``ru_maxrss``). The training stages run a few steps of the `cpu` preset (memory reaches
its steady state in the first steps: the same batch shapes repeat) in a temporary pipeline folder, in
order, since each needs the previous one. Writes benchmarks/results/memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def peak_rss_mb(argv: list[str]) -> tuple[float, float]:
    """Run ``argv``; return (its peak RSS in MB, wall seconds). Raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr.read() if proc.stderr else ''}")
    return usage.ru_maxrss / 1024, seconds  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=30, help="steps per training stage")
    parser.add_argument("--out", default=str(ROOT / "results"), help="results folder (writes memory.json and .md)")
    args = parser.parse_args(argv)
    dalle2 = [sys.executable, "-m", "dalle2"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = str(Path(tmp) / "run")
        jobs = [
            (
                "generate, bundled unCLIP, 1 prompt x 8, 64x64",
                [*dalle2, "generate", "a red circle", "-n", "8", "-o", str(Path(tmp) / "g.png")],
            ),
            (
                "generate, bundled unCLIP, 8 prompts x 8 (batch 64)",
                [*dalle2, "generate", *(["a red circle"] * 8), "-n", "8", "-o", str(Path(tmp) / "g64.png")],
            ),
            (
                "generate, bundled GAN, 1 prompt x 8",
                [*dalle2, "generate", "a red circle", "--model", "gan", "-n", "8", "-o", str(Path(tmp) / "gan.png")],
            ),
        ]
        for stage in ("clip", "prior", "decoder", "upsampler"):
            jobs.append(
                (f"train {stage}, cpu preset, {args.train_steps} steps",
                 [*dalle2, "train", stage, "--data", "shapes", "--preset", "cpu", "--out", run, "--max-steps",
                  str(args.train_steps), "--no-progress"])
            )  # fmt: skip
        jobs.append(
            (f"train gan, cpu preset, {args.train_steps} steps",
             [*dalle2, "train", "gan", "--data", "shapes", "--out", str(Path(tmp) / "gan"), "--clip-from", run,
              "--max-steps", str(args.train_steps), "--no-progress"])
        )  # fmt: skip
        for name, command in jobs:
            mb, seconds = peak_rss_mb(command)
            rows.append({"job": name, "peak_rss_mb": round(mb, 1), "seconds": round(seconds, 1)})
            print(rows[-1], flush=True)
    result = {
        "command": "python benchmarks/memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "rows": rows,
        "max_rss_self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    stem = Path(args.out) / "memory"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n".join(f"| {r['job']} | {r['peak_rss_mb']:,.0f} | {r['seconds']} |" for r in rows)
    stem.with_suffix(".md").write_text(
        f"# Peak memory\n\nCommand: `{result['command']}`\n\nPeak resident set size of each command, run as its "
        "own process (kernel `ru_maxrss`), including the Python interpreter, torch and the imported libraries.\n\n"
        f"| job | peak RSS (MB) | seconds |\n|---|---:|---:|\n{table}\n"
    )
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
