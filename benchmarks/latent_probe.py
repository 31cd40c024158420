"""Would diffusion in a learned latent space beat the pixel decoder at this budget? A timed probe.

    python benchmarks/latent_probe.py MODEL_DIR [--ae-minutes 10] [--decoder-minutes 12] [--foreground-weight 20]

1. Trains a small convolutional autoencoder (32x32x3 -> 8x8x8, about 0.45M parameters) on ``shapes`` renders
   for ``--ae-minutes``, with the pixels off each image's median colour weighted ``1 + --foreground-weight``
   in its L1 + L2 loss (0 for the plain loss); reports PSNR and how often the ``shapes`` scorer reads the
   same objects (shape, colour, cell) in the reconstruction as in the original, both upscaled to 64x64.
2. Trains a latent decoder, our ``DiffusionTransformer`` on the 8x8 latent grid (patch 1), conditioned like
   the pixel decoder (CLIP z_i + the caption's tokens from MODEL_DIR's frozen CLIP), for
   ``--decoder-minutes`` on a pool of pre-encoded pairs.
3. Generates the quick prompt set through MODEL_DIR's prior, the latent decoder, the autoencoder's decoder
   and MODEL_DIR's upsampler, and scores it with ``dalle2 eval --images``.

Writes ``benchmarks/results/latent_probe.md`` (one line appended per run) and, under ``--work``, the
weights, the generated images and the eval report. A probe, not a pipeline component.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def build_autoencoder(latent_channels: int = 8, widths: tuple[int, int, int] = (32, 64, 96)):
    from torch import nn

    a, b, c = widths
    act = nn.SiLU

    class Autoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Sequential(
                nn.Conv2d(3, a, 3, 1, 1), act(), nn.Conv2d(a, b, 4, 2, 1), act(), nn.Conv2d(b, b, 3, 1, 1), act(),
                nn.Conv2d(b, c, 4, 2, 1), act(), nn.Conv2d(c, c, 3, 1, 1), act(), nn.Conv2d(c, latent_channels, 1),
            )  # fmt: skip
            self.dec = nn.Sequential(
                nn.Conv2d(latent_channels, c, 3, 1, 1), act(), nn.Conv2d(c, c, 3, 1, 1), act(),
                nn.Upsample(scale_factor=2), nn.Conv2d(c, b, 3, 1, 1), act(), nn.Conv2d(b, b, 3, 1, 1), act(),
                nn.Upsample(scale_factor=2), nn.Conv2d(b, a, 3, 1, 1), act(), nn.Conv2d(a, 3, 3, 1, 1),
            )  # fmt: skip

    return Autoencoder()


def render_pool(n: int, split: str = "train", resolution: int = 32):
    import torch

    from dalle2.data import open_dataset

    ds = open_dataset("shapes", split=split, resolution=resolution, seed=0)
    samples = [ds[i] for i in range(n)]
    return torch.stack([s["image"] for s in samples]), [s["caption"] for s in samples]


def train_autoencoder(minutes: float, foreground_weight: float, log) -> tuple:
    import torch

    from dalle2.diffusion import foreground_mask

    images, _ = render_pool(20000)
    ae = build_autoencoder().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(ae.parameters(), 2e-3, weight_decay=0.0)
    step, start, total = 0, time.monotonic(), minutes * 60
    while (elapsed := time.monotonic() - start) < total:
        x = images[torch.randint(0, len(images), (64,))].contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:  # warm-up, then linear decay to 10% over the time budget
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * max(0.0, 1 - elapsed / total))
        z = ae.enc(x)
        y = ae.dec(z + 0.1 * torch.randn_like(z) * z.detach().std())  # robust to imperfect latents
        w = 1 + foreground_weight * foreground_mask(x)
        loss = (w * ((y - x).abs() + (y - x).pow(2))).mean() / w.mean() + 1e-4 * z.pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        step += 1
        if step % 200 == 0:
            log(f"autoencoder step {step}: loss {loss.item():.4f}, {step * 64 / elapsed:.0f} images/s")
    ae.eval()
    with torch.no_grad():
        latents = ae.enc(images[:4096])
    return ae, latents.mean((0, 2, 3)), latents.std((0, 2, 3)), step


def autoencoder_quality(ae) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from dalle2.data.base import tensor_to_pil
    from dalle2.eval.scorer import ShapesScorer

    test, _ = render_pool(256, split="test")
    with torch.no_grad():
        recon = ae.dec(ae.enc(test)).clamp(-1, 1)
    mse = (recon - test).pow(2).mean((1, 2, 3))
    scorer = ShapesScorer.load()

    def objects(batch):
        pils = [tensor_to_pil(x).resize((64, 64), Image.BICUBIC) for x in batch]
        return [sorted((o.shape, o.color, o.cell) for o in a.objects) for a in scorer.analyze_many(pils)]

    same = np.mean([a == b for a, b in zip(objects(test), objects(recon), strict=True)])
    return {"psnr_db": round((10 * torch.log10(4 / mse)).mean().item(), 2), "same_objects": round(float(same), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="unCLIP pipeline folder on shapes (its CLIP, prior and upsampler are used)")
    parser.add_argument("--ae-minutes", type=float, default=10.0)
    parser.add_argument("--decoder-minutes", type=float, default=12.0)
    parser.add_argument("--foreground-weight", type=float, default=20.0, help="autoencoder loss; 0: plain")
    parser.add_argument("--width", type=int, default=128, help="latent Transformer width")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pool", type=int, default=40000, help="pre-encoded training pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="latent-probe", help="folder for weights, images and the eval")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.ae_minutes <= 0 or args.decoder_minutes <= 0:
        parser.error("--ae-minutes and --decoder-minutes must be > 0")

    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    import dalle2
    from dalle2.eval.prompts import read_jsonl
    from dalle2.models.decoder import DiffusionConfig, ImageDiffusion
    from dalle2.training.ema import EMA

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = tqdm.write
    pipe = dalle2.load(args.model)

    ae, mean, std, ae_steps = train_autoencoder(args.ae_minutes, args.foreground_weight, log)
    quality = autoencoder_quality(ae)
    log(f"autoencoder: {ae_steps} steps, {quality}")

    def to_latent(x):
        return (ae.enc(x) - mean[:, None, None]) / std[:, None, None]

    images, captions = render_pool(args.pool)
    latents, embeds, tokens, masks = [], [], [], []
    with torch.no_grad():
        for i in tqdm(range(0, args.pool, 500), desc="encoding pairs"):
            _, hidden, mask = pipe.encode_text(captions[i : i + 500])
            embeds.append(pipe.clip.encode_image(images[i : i + 500]))
            tokens.append(hidden)
            masks.append(mask)
            latents.append(to_latent(images[i : i + 500]))
    length = max(t.shape[1] for t in tokens)
    z = torch.cat(latents)
    z_i = torch.cat(embeds)
    text = torch.cat([F.pad(t, (0, 0, 0, length - t.shape[1])) for t in tokens])
    text_mask = torch.cat([F.pad(m, (0, length - m.shape[1]), value=False) for m in masks])

    channels = z.shape[1]
    net = {
        "image_size": z.shape[-1], "in_channels": channels, "out_channels": channels, "patch_size": 1,
        "width": args.width, "depth": args.depth, "heads": max(1, args.width // 64),
        "embed_dim": z_i.shape[1], "context_dim": text.shape[2],
    }  # fmt: skip
    decoder = ImageDiffusion(DiffusionConfig(role="decoder", arch="transformer", net=net, min_snr_gamma=5.0))
    n_params = sum(p.numel() for p in decoder.parameters())
    ema = EMA(decoder, decay=0.999)  # the trainer's EMA (warmup min(decay, (1 + t) / (10 + t)))
    opt = torch.optim.AdamW(decoder.parameters(), args.lr, weight_decay=0.0)
    step, start, total = 0, time.monotonic(), args.decoder_minutes * 60
    while (elapsed := time.monotonic() - start) < total:
        idx = torch.randint(0, args.pool, (64,))
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * (1 - elapsed / total))
        loss = decoder.loss(decoder, z[idx], image_embed=z_i[idx], text_tokens=text[idx], text_mask=text_mask[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        step += 1
        ema.update(decoder)
        if step % 200 == 0:
            log(f"latent decoder step {step}: loss {loss.item():.4f}, {step * 64 / elapsed:.0f} samples/s")

    prompts = work / "prompts.jsonl"
    subprocess.run([sys.executable, "-m", "dalle2", "eval-prompts", "--data", "shapes", "--quick", "-o", str(prompts)],
                   check=True)  # fmt: skip
    records = read_jsonl(prompts)
    folder = work / "images"
    folder.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in tqdm(range(0, len(records), 64), desc="generating"):
            chunk = records[i : i + 64]
            z_t, hidden, mask = pipe.encode_text([r["prompt"] for r in chunk])
            embed = pipe.prior.sample(z_t, hidden, mask, generator=g)
            noise = torch.randn(len(chunk), channels, *z.shape[-2:], generator=g)
            lat = ema.model.sample(noise, image_embed=embed, text_tokens=hidden, text_mask=mask, generator=g)
            x = ae.dec(lat * std[:, None, None] + mean[:, None, None]).clamp(-1, 1)
            for r, im in zip(chunk, pipe.to_pil(pipe._upsample(x, g)), strict=True):
                im.save(folder / r["file_name"])
    ev = work / "eval"
    subprocess.run([sys.executable, "-m", "dalle2", "eval", "--images", str(folder), "--prompts", str(prompts),
                    "--data", "shapes", "--out", str(ev)], check=True)  # fmt: skip
    report = json.loads((ev / "eval.json").read_text())
    result = {
        "model": args.model, "ae_minutes": args.ae_minutes, "ae_steps": ae_steps, "ae": quality,
        "foreground_weight": args.foreground_weight, "decoder_minutes": args.decoder_minutes,
        "decoder_steps": step, "decoder_parameters": n_params, "eval": str(ev / "eval.md"),
        "faithfulness_seen": report["faithfulness"]["train"]["overall"],
        "faithfulness_heldout": report["faithfulness"]["heldout"]["overall"], "fd": report["fidelity"]["fd"],
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "latent_probe.md").open("a") as f:
        f.write(f"- {time.strftime('%Y-%m-%d')}: `{' '.join(sys.argv)}` -> {json.dumps(result)}\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
