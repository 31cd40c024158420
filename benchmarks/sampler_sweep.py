"""Decoder sampler x steps sweep of a trained unCLIP pipeline: faithfulness, FD and images/s per setting.

    python benchmarks/sampler_sweep.py MODEL_DIR [--data shapes] [--settings ddim:10,ddim:25,...]

Runs the quick benchmark (``dalle2 eval --quick``) once per setting with the same seed and writes
``benchmarks/results/sampler_sweep.{json,md}``. The prior and upsampler keep their own defaults.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

DEFAULT = "ddim:10,ddim:25,ddim:50,dpmpp_2m:10,dpmpp_2m:25,ddpm:25,ddpm:50"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--settings", default=DEFAULT, help="comma-separated sampler:steps")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    import torch

    from dalle2.eval.evaluate import evaluate_model
    from dalle2.pipeline import load

    pipe = load(args.model)
    rows = []
    for item in args.settings.split(","):
        sampler, _, steps = item.partition(":")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            report = evaluate_model(
                args.model, args.data, tmp, quick=True, pipeline=pipe,
                sample_kwargs={"sampler": sampler, "steps": int(steps)},
            )  # fmt: skip
        faith = report.get("faithfulness", {})
        fid = report.get("fidelity", {})
        rows.append(
            {
                "sampler": sampler,
                "steps": int(steps),
                "faithfulness_seen": faith.get("train", {}).get("overall"),
                "faithfulness_heldout": faith.get("heldout", {}).get("overall"),
                "class_accuracy": report.get("class_accuracy", {}).get("accuracy"),
                "fd": fid.get("fd"),
                "fd_floor": fid.get("fd_floor"),
                "images_per_second": round(report["sampling"]["images_per_second"], 2),
                "wall_seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "data": args.data, "quick": True, "settings": pipe.settings(), "rows": rows}
    (out / "sampler_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Decoder sampler sweep (quick benchmark)",
        "",
        f"Command: `python benchmarks/sampler_sweep.py {args.model} --data {args.data} --settings {args.settings}` "
        f"({torch.get_num_threads()} torch threads)",
        "",
        "| sampler | steps | faithfulness seen | held-out | class acc. | FD | FD floor | images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {r['faithfulness_seen']} | {r['faithfulness_heldout']} | "
            f"{r['class_accuracy']} | "
            f"{r['fd']} | {r['fd_floor']} | {r['images_per_second']} |"
        )
    (out / "sampler_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
