"""Decoder network training speed on this CPU: our Transformer and UNet against diffusers' UNet2DConditionModel.

    python benchmarks/decoder_speed.py [--threads 2] [--batch 32] [--repeats 3]

All three at 32x32 with the same conditioning inputs (CLIP image embedding 128-d, 32 caption tokens of
width 128), fp32, AdamW step included; samples/s of full training steps (forward, backward, optimizer),
measured alternately (round-robin, best of ``--repeats``) so machine noise hits all alike. Writes
``benchmarks/results/decoder_speed.{json,md}``. bf16 autocast is measured once for our Transformer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def build(name: str):
    from dalle2.models.transformer import DiffusionTransformer, TransformerConfig
    from dalle2.models.unet import UNet, UNetConfig

    if name == "ours-transformer (arch=transformer)":
        return DiffusionTransformer(
            TransformerConfig(width=192, depth=6, heads=3, patch_size=4, embed_dim=128, context_dim=128)
        )
    if name == "ours-unet (cpu preset)":
        return UNet(UNetConfig(channels=[32, 64, 128], attention=[False, False, True], embed_dim=128, context_dim=128))
    if name == "diffusers UNet2DConditionModel":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(
            sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
            block_out_channels=(32, 64, 128),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=128, attention_head_dim=32, class_embed_type="projection",
            projection_class_embeddings_input_dim=128, norm_num_groups=8,
        )  # fmt: skip
    raise ValueError(name)


def step_fn(name: str, model, batch: int, bf16: bool = False):
    x = torch.randn(batch, 3, 32, 32)
    t = torch.randint(0, 1000, (batch,))
    z = torch.randn(batch, 128)
    tokens = torch.randn(batch, 32, 128)
    mask = torch.ones(batch, 32, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if name.startswith("diffusers"):
                out = model(x, t, encoder_hidden_states=tokens, class_labels=z).sample
            else:
                out = model(x, t, z, tokens, mask)
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = ["ours-transformer (arch=transformer)", "ours-unet (cpu preset)", "diffusers UNet2DConditionModel"]
    models = {n: build(n) for n in names}
    steps = {n: step_fn(n, m, args.batch) for n, m in models.items()}
    for s in steps.values():
        s()  # warm-up
    best: dict[str, float] = {n: 0.0 for n in names}
    for _ in range(args.repeats):
        for n in names:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[n]()
            best[n] = max(best[n], args.batch * args.steps / (time.perf_counter() - start))
    bf16_step = step_fn(names[0], models[names[0]], args.batch, bf16=True)
    bf16_step()
    start = time.perf_counter()
    bf16_step()
    bf16 = args.batch / (time.perf_counter() - start)
    rows = [
        {"model": n, "parameters_m": round(sum(p.numel() for p in models[n].parameters()) / 1e6, 2),
         "samples_per_second": round(best[n], 1)}
        for n in names
    ]  # fmt: skip
    result = {"threads": args.threads, "batch": args.batch, "resolution": 32, "rows": rows,
              "ours_transformer_bf16_autocast_samples_per_second": round(bf16, 2)}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decoder_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Decoder network training speed (32x32, fp32, full training step)",
        "",
        f"Command: `python benchmarks/decoder_speed.py --threads {args.threads} --batch {args.batch}`",
        "",
        "| network | parameters | samples/s |",
        "|---|---|---|",
        *[f"| {r['model']} | {r['parameters_m']}M | {r['samples_per_second']} |" for r in rows],
        "",
        f"Our Transformer under bf16 autocast: {result['ours_transformer_bf16_autocast_samples_per_second']} "
        "samples/s (this CPU's bf16 path is far slower than fp32 here).",
    ]
    (out / "decoder_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
