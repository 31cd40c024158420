"""Where two-object scenes lose their colours: the prior's z_i, the decoder, or the sampler.

    python benchmarks/colour_binding.py [MODEL_DIR] [--guidance 3] [--sampler ddim] [--steps 25]
        [--guidance-drops image,text] [--threads 2] [--no-probe]

MODEL_DIR: an unCLIP pipeline folder (default: the bundled ``unclip``). Two measurements:

1. **Generation.** The quick benchmark's ``two_objects``, ``color_attribution`` and ``relation`` prompts
   (both splits, 2 images each, 48 a task), decoded from the prior's z_i and from an *oracle* z_i, the CLIP
   image embedding of a real ``shapes`` render that meets the prompt's requirement. Scored with the
   benchmark's scorer, plus the share of images with two or more detected objects whose objects all have
   one colour. If the oracle fixes colour attribution, the prior (or CLIP's text side) is the limit; if
   not, the decoder is.
2. **x0 probe.** 64 two-colour relation scenes (real 32×32 renders), noised to step t; the decoder's x0
   prediction from the true z_i and caption (and with either dropped), and each object's mean predicted
   colour (over its true pixels) against its true colour: both right, and both the same.

Writes ``benchmarks/results/colour_binding.{json,md}`` (``--tag`` names another pair).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("two_objects", "color_attribution", "relation")
PROBE_STEPS = (300, 500, 700, 850, 950)


def generation(pipe, scorer, guidance: float | None, sampler: str | None, steps: int | None) -> dict:
    from dalle2.eval.prompts import render_real, shapes_prompts

    specs = [s for s in shapes_prompts(quick=True) if s["task"] in TASKS]
    rows = [s for s in specs for _ in range(2)]
    prompts = [s["prompt"] for s in rows]
    rng = np.random.default_rng(0)
    reals = [render_real(s, 64, rng) for s in rows]
    out: dict = {}
    with torch.no_grad():
        z_t, hidden, mask = pipe.encode_text(prompts)
        z_prior = pipe.prior.sample(z_t, hidden, mask, generator=torch.Generator().manual_seed(0))
        z_real = pipe.encode_images(reals)
        caption = pipe.decoder_caption(prompts, hidden, mask)
        out["cos_prior_oracle"] = torch.nn.functional.cosine_similarity(z_prior, z_real).mean().item()
        for name, z in (("prior", z_prior), ("oracle", z_real)):
            start = time.monotonic()
            g = torch.Generator().manual_seed(1)
            # the pipeline's own decode and upsample steps, fed a chosen z_i (no public call takes an oracle z_i)
            x = pipe._decode(z, g, caption, guidance=guidance, sampler=sampler, steps=steps)
            images = pipe.to_pil(pipe._upsample(x, g))
            analyses = scorer.analyze_many(images)
            ok = [scorer.check(s, a) for s, a in zip(rows, analyses, strict=True)]
            multi = [a for a in analyses if len(a.objects) >= 2]
            one_colour = [len({o.color for o in a.objects}) == 1 for a in multi]
            out[name] = {
                **{t: float(np.mean([o for o, s in zip(ok, rows, strict=True) if s["task"] == t])) for t in TASKS},
                "one_colour_share": float(np.mean(one_colour)) if one_colour else None,
                "images_with_two_or_more": len(multi),
                "seconds": round(time.monotonic() - start, 1),
            }
            print(name, json.dumps(out[name]), flush=True)
    out["images_per_task"] = 48
    return out


def probe(pipe) -> dict:
    from dalle2 import diffusion
    from dalle2.data import shapes as S
    from dalle2.data.base import pil_to_tensor

    rng = np.random.default_rng(0)
    scenes = []
    while len(scenes) < 64:
        scene = S.scene_from_spec("relation", rng)
        if scene.objects[0].color != scene.objects[1].color:
            scenes.append(scene)
    captions = [S.caption_scene(s, rng) for s in scenes]
    images = [S.render(s, 32) for s in scenes]
    x0 = torch.stack([pil_to_tensor(im) for im in images])
    masks = [
        [torch.from_numpy(np.abs(np.asarray(im, dtype=float) - S.COLORS[o.color]).sum(-1) < 30) for o in s.objects]
        for im, s in zip(images, scenes, strict=True)
    ]
    names = list(S.COLORS)
    palette = torch.tensor([S.COLORS[n] for n in names], dtype=torch.float) / 127.5 - 1
    dec = pipe.decoder
    out: dict = {}
    with torch.no_grad():
        z = pipe.encode_images(images)
        _, hidden, mask = pipe.encode_text(captions)
        tokens, token_mask = pipe.decoder_caption(captions, hidden, mask)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        drop = torch.ones(64, dtype=torch.bool)
        for cond, extra in (
            ("z_i + caption", {}),
            ("z_i only", {"drop_text": drop}),
            ("caption only", {"drop_image": drop}),
        ):
            out[cond] = {}
            for step in PROBE_STEPS:
                t = torch.full((64,), step)
                x_t, alpha, sigma = dec.objective.noised(x0, t, noise)
                raw = dec(x_t, t, image_embed=z, text_tokens=tokens, text_mask=token_mask, **extra)
                x0_hat, _ = diffusion.to_x0_eps(raw, x_t, alpha, sigma, dec.config.prediction)
                both = same = 0
                for i, scene in enumerate(scenes):
                    got = [names[int(((palette - x0_hat[i][:, m].mean(1)) ** 2).sum(1).argmin())] for m in masks[i]]
                    both += all(g == o.color for g, o in zip(got, scene.objects, strict=True))
                    same += got[0] == got[1]
                out[cond][str(step)] = {"both_right": both / 64, "same_colour": same / 64}
            print(cond, json.dumps(out[cond]), flush=True)
    return out


def markdown(report: dict) -> str:
    lines = [f"# Colour binding: {report['model']}", "", f"Settings: {json.dumps(report['settings'])}", ""]
    gen = report["generation"]
    lines += [
        f"cos(prior z_i, oracle z_i) = {gen['cos_prior_oracle']:.3f}; 48 images a task",
        "",
        "| z_i | two objects | colour attribution | relation | one colour among 2+ objects |",
        "|---|---|---|---|---|",
    ]
    for name in ("prior", "oracle"):
        r = gen[name]
        share = (
            "" if r["one_colour_share"] is None else f"{r['one_colour_share']:.2f} of {r['images_with_two_or_more']}"
        )
        lines.append(
            f"| {name} | {r['two_objects']:.3f} | {r['color_attribution']:.3f} | {r['relation']:.3f} | {share} |"
        )
    if report.get("probe"):
        lines += ["", "x0 probe: both objects' colours right / both predicted the same colour, by noise step t", ""]
        lines += ["| condition | " + " | ".join(f"t={s}" for s in PROBE_STEPS) + " |", "|---" * 6 + "|"]
        for cond, row in report["probe"].items():
            cells = [f"{row[str(s)]['both_right']:.2f} / {row[str(s)]['same_colour']:.2f}" for s in PROBE_STEPS]
            lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="unclip", help="unCLIP pipeline folder (default: bundled)")
    parser.add_argument("--guidance", type=float, default=None, help="decoder guidance (default: the model's)")
    parser.add_argument("--guidance-drops", default=None, help="what guidance drops: image,text (default: model's)")
    parser.add_argument("--sampler", default=None, help="decoder sampler (default: the model's)")
    parser.add_argument("--steps", type=int, default=None, help="decoder steps (default: the model's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-probe", action="store_true", help="skip the x0 probe")
    parser.add_argument("--tag", default="colour_binding", help="results file name (default: colour_binding)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dalle2 import load
    from dalle2.eval.scorer import ShapesScorer

    pipe = load(args.model)
    if args.guidance_drops:
        pipe.decoder.config.guidance_drops = tuple(args.guidance_drops.split(","))
    settings = {
        "guidance": args.guidance if args.guidance is not None else pipe.decoder.config.guidance_scale,
        "guidance_drops": list(pipe.decoder.config.guidance_drops),
        "sampler": args.sampler or pipe.decoder.config.sampler,
        "steps": args.steps or pipe.decoder.config.sample_steps,
    }
    report = {
        "model": str(args.model),
        "settings": settings,
        "generation": generation(pipe, ShapesScorer.load(), args.guidance, args.sampler, args.steps),
        "probe": None if args.no_probe else probe(pipe),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{args.tag}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
