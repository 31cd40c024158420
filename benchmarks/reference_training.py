"""Decoder training throughput: ours against DALLE2-pytorch's ``Decoder`` / ``Unet`` at equal size.

    python benchmarks/reference_training.py [--steps 20] [--rounds 3] [--threads 2]

DALLE2-pytorch (PyPI ``dalle2-pytorch``) is never a dalle2 dependency: this script installs it into its own
virtual environment (``benchmarks/.venv-dalle2-pytorch``, created with ``--system-site-packages`` so that it
uses the same CPU torch, with ``--no-deps`` for the packages its import needs). ``torchvision`` has no wheel
that matches the CPU torch 2.13 (the PyPI one fails with "operator torchvision::nms does not exist"), so
that venv gets a stand-in ``torchvision`` package that raises on any use; DALLE2-pytorch's
``Decoder`` / ``Unet`` never call it (only its VQGAN loss and image-saving helpers do).

Both decoders get the same job: 32x32 RGB, batch 32, a 128-d image embedding and a 16-token caption,
the paper's dropout of both, L2 loss, Adam at lr 1e-4. DALLE2-pytorch's ``Unet`` reads the caption as
token encodings of width 128 (from a text encoder outside it); ours, as the `cpu` preset has it, reads
token ids through its own 2-layer caption encoder, trained with it, whose cost is counted in ours. Ours is
the `cpu` preset's decoder (v prediction, Min-SNR weighting, channels-last); DALLE2-pytorch's ``Unet``
gets the ``dim`` that brings its parameter count closest to ours (``dim_mults`` (1, 2, 4), one resnet block
per level, conditioned on image embeddings and text encodings, learned variance off). Each round runs
``--steps`` timed steps of ours, then of theirs, each in a fresh process (after 3 warm-up steps); samples/s
are reported per round and as the median.

Ours also gets its FLOP count per training step (``torch.utils.flop_counter``) and so its achieved FLOP/s,
against this CPU's measured matmul peak in bf16 and in fp32 (a 1024x1024 matmul, best of 5).
Writes benchmarks/results/reference_training.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv-dalle2-pytorch"
PACKAGES = [
    "dalle2-pytorch==1.15.6", "x-clip", "coca-pytorch", "ema-pytorch", "rotary-embedding-torch", "resize-right",
    "kornia", "kornia-rs", "vector-quantize-pytorch", "pytorch-warmup", "embedding-reader", "open-clip-torch",
    "clip-anytorch", "einops", "ftfy", "einx", "frozendict", "loguru", "torch-einops-utils",
]  # fmt: skip
STUB = '''"""Stand-in torchvision for the DALLE2-pytorch benchmark venv (see benchmarks/reference_training.py)."""
def __getattr__(name):
    def unavailable(*args, **kwargs):
        raise RuntimeError(f"torchvision stand-in: {__name__}.{name} is not available")
    return unavailable
'''
BATCH, SIZE, EMBED, TOKENS, WIDTH, LR = 32, 32, 128, 16, 128, 1e-4
VOCAB = 421  # the bundled tokenizer's; our decoder reads token ids through its own caption encoder


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        venv.create(VENV, system_site_packages=True, with_pip=True)
    check = subprocess.run([str(python), "-c", "import dalle2_pytorch"], capture_output=True, text=True)
    if check.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *PACKAGES], check=True)
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        stub = Path(site) / "torchvision"
        stub.mkdir(exist_ok=True)
        (stub / "__init__.py").write_text(STUB + "from . import transforms, models, utils, datasets  # noqa\n")
        for name in ("transforms", "models", "utils", "datasets"):
            (stub / f"{name}.py").write_text(STUB)
        subprocess.run([str(python), "-c", "import dalle2_pytorch"], check=True)
    return python


def _batch(generator):
    import torch

    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=generator) * 2 - 1
    embeds = torch.nn.functional.normalize(torch.randn(BATCH, EMBED, generator=generator), dim=-1)
    tokens = torch.randn(BATCH, TOKENS, WIDTH, generator=generator)
    ids = torch.randint(1, VOCAB, (BATCH, TOKENS), generator=generator)
    return images, embeds, tokens, ids


def ours_model():
    from dalle2.models.decoder import DiffusionConfig, ImageDiffusion
    from dalle2.presets import STAGE_PRESETS

    spec = STAGE_PRESETS["decoder"]["cpu"]["model"]
    net = {**spec["net"], "image_size": SIZE, "embed_dim": EMBED, "context_dim": WIDTH}
    if net.get("caption_layers"):
        net.update(caption_vocab=VOCAB, caption_length=TOKENS)
    return ImageDiffusion(DiffusionConfig(**{**spec, "net": net, "role": "decoder"}))


def theirs_model(target: int):
    from dalle2_pytorch import Decoder, Unet

    def build(dim: int):
        unet = Unet(
            # cond_dim != image_embed_dim: with equal sizes DALLE2-pytorch skips its image-to-tokens projection
            dim=dim, image_embed_dim=EMBED, text_embed_dim=WIDTH, cond_dim=64, channels=3, dim_mults=(1, 2, 4),
            cond_on_text_encodings=True, cond_on_image_embeds=True, num_resnet_blocks=1, max_text_len=TOKENS,
        )  # fmt: skip
        return Decoder(
            unet=unet, image_size=SIZE, timesteps=1000, image_cond_drop_prob=0.1, text_cond_drop_prob=0.5,
            learned_variance=False,
        )  # fmt: skip

    counts = {}
    for dim in (16, 24, 32, 40, 48, 64):
        counts[dim] = sum(p.numel() for p in build(dim).parameters())
    best = min(counts, key=lambda d: abs(counts[d] - target))
    return build(best), best


def worker(which: str, steps: int, threads: int, target: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    extra = {}
    if which == "ours":
        model = ours_model()

        def loss_fn(images, embeds, tokens, ids):
            caption = ids if model.reads_token_ids else tokens  # its own caption encoder reads ids
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
            return model.loss(model, images, image_embed=embeds, text_tokens=caption, text_mask=mask)
    else:
        model, dim = theirs_model(target)
        extra["unet_dim"] = dim

        def loss_fn(images, embeds, tokens, ids):
            return model(images, image_embed=embeds, text_encodings=tokens)

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=LR)
    batches = [_batch(g) for _ in range(4)]

    def step(i: int) -> None:
        loss = loss_fn(*batches[i % len(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(3):
        step(i)
    if which == "ours":
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step(0)
        extra["flops_per_step"] = counter.get_total_flops()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    seconds = time.perf_counter() - start
    return {"samples_per_second": BATCH * steps / seconds, "parameters": sum(p.numel() for p in params), **extra}


def matmul_peak(dtype_name: str, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(1024, 1024).to(dtype), torch.randn(1024, 1024).to(dtype)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4 if dtype_name == "float32" else 1):
            a @ b
        best = min(best, (time.perf_counter() - start) / (4 if dtype_name == "float32" else 1))
    return 2 * 1024**3 / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=("ours", "dalle2-pytorch"), help=argparse.SUPPRESS)
    parser.add_argument("--target", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "results"), help="results folder")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.threads, args.target)))
        return 0

    import torch

    theirs_python = ensure_venv()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    target = sum(p.numel() for p in ours_model().parameters())

    def run(which: str) -> dict:
        python = sys.executable if which == "ours" else str(theirs_python)
        argv_ = [python, __file__, "--worker", which, "--steps", str(args.steps), "--threads", str(args.threads),
                 "--target", str(target)]  # fmt: skip
        out = subprocess.run(argv_, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"{which} worker failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    rounds: dict[str, list[dict]] = {"ours": [], "dalle2-pytorch": []}
    for r in range(args.rounds):
        for which in rounds:
            rounds[which].append(run(which))
            print(f"round {r + 1} {which}: {rounds[which][-1]['samples_per_second']:.1f} samples/s", flush=True)
    median = {k: statistics.median(x["samples_per_second"] for x in v) for k, v in rounds.items()}
    flops = rounds["ours"][0]["flops_per_step"]
    achieved = flops * median["ours"] / BATCH
    peaks = {d: matmul_peak(d, args.threads) for d in ("bfloat16", "float32")}
    result = {
        "command": "python benchmarks/reference_training.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "batch": BATCH, "resolution": SIZE, "threads": args.threads, "torch": torch.__version__,
        "samples_per_second": {k: [round(x["samples_per_second"], 2) for x in v] for k, v in rounds.items()},
        "median_samples_per_second": {k: round(v, 2) for k, v in median.items()},
        "speedup": round(median["ours"] / median["dalle2-pytorch"], 2),
        "parameters": {k: v[0]["parameters"] for k, v in rounds.items()},
        "dalle2_pytorch_unet_dim": rounds["dalle2-pytorch"][0]["unet_dim"],
        "ours_flops_per_step": flops,
        "ours_achieved_gflops": round(achieved / 1e9, 2),
        "matmul_peak_gflops": {k: round(v / 1e9, 2) for k, v in peaks.items()},
        "ours_fraction_of_peak": {k: round(achieved / v, 4) for k, v in peaks.items()},
    }  # fmt: skip
    stem = Path(args.out) / "reference_training"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["median_samples_per_second"]
    stem.with_suffix(".md").write_text(
        f"# Decoder training throughput: dalle2 vs DALLE2-pytorch\n\nCommand: `{result['command']}`\n\n"
        f"32x32, batch {BATCH}, {args.threads} threads, {args.rounds} alternating rounds of {args.steps} steps "
        "(fresh process each, 3 warm-up steps).\n\n"
        "| implementation | parameters | samples/s per round | median |\n|---|---:|---|---:|\n"
        + "\n".join(
            f"| {k} | {result['parameters'][k] / 1e6:.2f}M | {', '.join(map(str, result['samples_per_second'][k]))} "
            f"| {m[k]} |"
            for k in rounds
        )
        + f"\n\nSpeed-up: **{result['speedup']}x** (DALLE2-pytorch Unet dim {result['dalle2_pytorch_unet_dim']}). "
        f"Ours: {flops / 1e9:.2f} GFLOP per step, {result['ours_achieved_gflops']} GFLOP/s achieved; this CPU's "
        f"1024² matmul peak: {result['matmul_peak_gflops']['bfloat16']} GFLOP/s in bf16, "
        f"{result['matmul_peak_gflops']['float32']} in fp32 (fractions "
        f"{result['ours_fraction_of_peak']['bfloat16']} and {result['ours_fraction_of_peak']['float32']}).\n"
    )
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
