"""Where an unCLIP pipeline loses faithfulness: the decoder fed the prior's z_i, or the oracle z_i of a real image.

    python benchmarks/decoder_check.py MODEL_DIR [--n 12] [--oracle] [--guidance G] [--drops text] [--upsample]

For the benchmark prompts (``--n`` per task and split), z_i comes from the prior (default) or, with
``--oracle``, from the CLIP image embedding of a real ``shapes`` render that satisfies the prompt; the decoder
draws the base resolution with the caption, and the image is scored at 64x64 (bicubic, or the pipeline's
upsampler with ``--upsample``). The gap between the two runs is what a better prior could win. Appends one
line to ``benchmarks/results/decoder_check.md`` (and ``.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--n", type=int, default=12, help="prompts per task and split")
    parser.add_argument("--oracle", action="store_true", help="z_i of a real image instead of the prior's")
    parser.add_argument("--guidance", type=float, default=None, help="decoder guidance (default: the model's)")
    parser.add_argument("--drops", default=None, help="decoder guidance_drops, e.g. text or image,text")
    parser.add_argument("--upsample", action="store_true", help="the pipeline's upsampler instead of bicubic")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from dalle2.eval import prompts as P
    from dalle2.eval.evaluate import _faithfulness
    from dalle2.pipeline import load

    pipe = load(args.model)
    if args.drops:
        pipe.decoder.config.guidance_drops = tuple(args.drops.split(","))
    records = P.shapes_prompts(num_prompts=args.n)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    images: list[Image.Image] = []
    with torch.no_grad():
        for i in range(0, len(records), 64):
            chunk = records[i : i + 64]
            z_t, hidden, mask = pipe.encode_text([r["prompt"] for r in chunk])
            if args.oracle:
                rng = np.random.default_rng(i)
                z_i = pipe.encode_images([P.render_real(r, pipe.base_resolution, rng) for r in chunk])
            else:
                z_i = pipe.prior.sample(z_t, hidden, mask, generator=g)
            x = pipe._decode(z_i, g, (hidden, mask), guidance=args.guidance)
            if args.upsample:
                x = pipe._upsample(x, g)
            images += [im.resize((64, 64), Image.Resampling.BICUBIC) for im in pipe.to_pil(x)]
    table, passed = _faithfulness(records, images)
    result = {
        "model": args.model,
        "z_i": "oracle" if args.oracle else "prior",
        "guidance": args.guidance if args.guidance is not None else pipe.decoder.config.guidance_scale,
        "guidance_drops": list(pipe.decoder.config.guidance_drops),
        "to_64": "upsampler" if args.upsample else "bicubic",
        "images": len(images),
        "train": round(table["train"]["overall"], 3),
        "heldout": round(table["heldout"]["overall"], 3),
        "per_task": {
            t: round(float(np.mean([p for r, p in zip(records, passed, strict=True) if r["task"] == t])), 3)
            for t in P.TASKS
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "decoder_check.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")
    md = out / "decoder_check.md"
    if not md.exists():
        md.write_text(
            "# Decoder check: prior z_i vs oracle z_i\n\n`python benchmarks/decoder_check.py MODEL [--oracle] ...`\n\n"
            "| model | z_i | guidance (drops) | to 64 | images | faithfulness seen / held-out |\n"
            "|---|---|---|---|---|---|\n"
        )
    with md.open("a") as f:
        f.write(
            f"| {result['model']} | {result['z_i']} | {result['guidance']} ({','.join(result['guidance_drops'])}) "
            f"| {result['to_64']} | {result['images']} | {result['train']:.3f} / {result['heldout']:.3f} |\n"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
