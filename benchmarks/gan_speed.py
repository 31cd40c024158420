"""Speed of the text-conditional GAN at a preset: generator images/s (sampling) and training samples/s.

    OMP_NUM_THREADS=1 python benchmarks/gan_speed.py [--preset cpu] [--batch 64] [--repeats 5] [--data shapes]

Networks as ``dalle2 train gan --preset P`` builds them (a 128-wide CLIP embedding stands in for the CLIP;
its text tower is not timed). Sampling: G(z, s) on batches of ``--batch`` in eval mode, no grad. Training:
one discriminator step then one generator step (the stage's objective, Adam), on random images; with
``gan.ma_gp_every`` N the mean over N consecutive steps, so the lazy penalty is counted at its rate.
Best (and median) of ``--repeats`` runs, since other processes only ever slow a run down. Writes
``OUT/gan_speed.json`` and ``.md`` (default ``benchmarks/results``).
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
import torch.nn.functional as F

from dalle2.models.gan import Discriminator, Generator
from dalle2.models.gan_objective import GanObjective, ObjectiveConfig
from dalle2.stages.gan_stage import OBJECTIVE_KEYS, network_config, resolve

RESULTS = Path(__file__).resolve().parent / "results"
EMBED_DIM = 128


def build(preset: str, data: str) -> tuple[GanObjective, dict]:
    config, keys = resolve({"preset": preset, "data": data})
    net = network_config(keys, config, EMBED_DIM)
    torch.manual_seed(0)
    objective = GanObjective(
        Generator(net), Discriminator(net), ObjectiveConfig(**{k: keys[k] for k in OBJECTIVE_KEYS})
    )
    return objective, keys


def sampling_rate(objective: GanObjective, batch: int, batches: int) -> float:
    g = objective.generator.eval()
    z, s = torch.randn(batch, g.z_dim), F.normalize(torch.randn(batch, EMBED_DIM), dim=1)
    with torch.no_grad():
        g(z, s)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            g(z, s)
    g.train()
    return batches * batch / (time.perf_counter() - start)


def training_rate(objective: GanObjective, keys: dict, batch: int, lr: float) -> float:
    c = objective.generator.config
    optimizers = {
        "d": torch.optim.Adam(
            objective.discriminator.parameters(), lr * keys["d_lr_scale"], (keys["beta1"], keys["beta2"])
        ),
        "g": torch.optim.Adam(objective.generator.parameters(), lr, (keys["beta1"], keys["beta2"])),
    }
    images = torch.rand(batch, c.channels, c.image_size, c.image_size) * 2 - 1
    s = F.normalize(torch.randn(batch, EMBED_DIM), dim=1)

    def step() -> None:
        for phase, key in (("discriminator", "d"), ("generator", "g")):
            objective(phase, images, s)["loss"].backward()
            optimizers[key].step()
            objective.zero_grad(set_to_none=True)

    step()  # warm-up
    steps = max(2, keys["ma_gp_every"])
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="tiny, cpu, gpu, article")
    parser.add_argument("--data", default="shapes", help="dataset name (decides the image channels)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10, help="sampling batches per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    objective, keys = build(args.preset, args.data)
    c = objective.generator.config
    lr = 2e-4
    sampling = [sampling_rate(objective, args.batch, args.batches) for _ in range(args.repeats)]
    training = [training_rate(objective, keys, args.batch, lr) for _ in range(args.repeats)]
    result = {
        "preset": args.preset,
        "data": args.data,
        "arch": c.arch,
        "image": f"{c.image_size}x{c.image_size}x{c.channels}",
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "generator_parameters": sum(p.numel() for p in objective.generator.parameters()),
        "discriminator_parameters": sum(p.numel() for p in objective.discriminator.parameters()),
        "sampling_images_per_s_best": round(max(sampling), 1),
        "sampling_images_per_s_median": round(statistics.median(sampling), 1),
        "training_samples_per_s_best": round(max(training), 1),
        "training_samples_per_s_median": round(statistics.median(training), 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gan_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# GAN speed",
        "",
        f"Command: `python benchmarks/gan_speed.py --preset {args.preset} --data {args.data} --batch {args.batch}`",
        "",
        f"{result['threads']} torch thread(s), Python {result['python']}, torch {result['torch']}, "
        f"{platform.machine()}.",
        "",
        "| preset | arch | image | G params | D params | sampling images/s (best / median) "
        "| training samples/s (best / median) |",
        "|---|---|---|---:|---:|---:|---:|",
        f"| {args.preset} | {c.arch} | {result['image']} | {result['generator_parameters']:,} "
        f"| {result['discriminator_parameters']:,} | {result['sampling_images_per_s_best']} / "
        f"{result['sampling_images_per_s_median']} | {result['training_samples_per_s_best']} / "
        f"{result['training_samples_per_s_median']} |",
    ]
    (args.out / "gan_speed.md").write_text("\n".join(md) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
