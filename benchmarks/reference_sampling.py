"""Sampling speed: our unCLIP pipeline against diffusers' unCLIP stack of equal component sizes.

The reference is diffusers' own ``UnCLIPPipeline`` (the Karlo implementation of the paper): CLIP text
encoder, ``PriorTransformer``, ``UnCLIPTextProjModel`` + ``UNet2DConditionModel`` decoder (learned
variance, as in the paper), two ``UNet2DModel`` super-resolution nets, and ``UnCLIPScheduler`` at the
pipeline's default 25 / 25 / 7 steps and guidance 4 / 8. Component sizes follow our pipeline's configs:

* text encoder: our trained CLIP text tower (the same ``transformers`` class: **our trained weights**);
* prior: a ``PriorTransformer`` of our prior's config (the same class: **our trained weights** for the
  transformer; the pipeline around it differs, see below);
* decoder and super-resolution: diffusers UNets with our channel widths, **random weights** (the
  architectures differ from ours, so our weights cannot be loaded).

So the reference images are noise: this benchmark compares speed at equal sizes, not quality. Both run
in one process, alternately, on the same prompts and image count; the best of ``--repeats`` is reported.

    python benchmarks/reference_sampling.py MODEL_DIR [-n 64] [--repeats 3]

Writes benchmarks/results/reference_sampling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
PROMPTS = [
    "a red circle above a blue square",
    "two yellow hearts",
    "a large green circle in the center",
    "three blue squares on a gray background",
]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def reference_pipeline(ours):
    """diffusers' UnCLIPPipeline with components sized like ``ours`` (an UnclipPipeline)."""
    from diffusers import PriorTransformer, UnCLIPPipeline, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import PreTrainedTokenizerFast

    clip, prior, decoder, upsampler = ours.clip, ours.prior, ours.decoder, ours.upsampler
    embed = prior.config.embed_dim
    tok = clip.tokenizer
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok.backend, pad_token="[PAD]")
    tokenizer.model_max_length = tok.max_length
    text_encoder = clip.text  # transformers CLIPTextModelWithProjection: our trained weights

    torch.manual_seed(0)
    ref_prior = PriorTransformer(**{k: v for k, v in prior.net.config.items() if not k.startswith("_")})
    ref_prior.load_state_dict(prior.net.state_dict())  # same class and config: our trained weights
    dec = decoder.net.config
    channels = tuple(dec.channels)
    width = clip.text.config.hidden_size
    text_proj = UnCLIPTextProjModel(
        clip_extra_context_tokens=dec.num_image_tokens,
        clip_embeddings_dim=embed,
        time_embed_dim=4 * channels[0],
        cross_attention_dim=channels[-1],
    )
    if width != embed:
        raise SystemExit(f"UnCLIPTextProjModel needs text width == embedding size ({width} vs {embed})")
    ref_decoder = UNet2DConditionModel(
        sample_size=dec.image_size,
        in_channels=3,
        out_channels=6,  # the paper's learned variance
        down_block_types=tuple("SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in dec.attention),
        up_block_types=tuple(
            "SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(dec.attention)
        ),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=channels,
        layers_per_block=dec.blocks_per_level,
        cross_attention_dim=channels[-1],
        attention_head_dim=dec.head_dim,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
        norm_num_groups=min(32, channels[0]),
    )
    up = upsampler.net.config
    sr = {
        "sample_size": up.image_size,
        "layers_per_block": up.blocks_per_level,
        "down_block_types": ("ResnetDownsampleBlock2D",) * len(up.channels),
        "up_block_types": ("ResnetUpsampleBlock2D",) * len(up.channels),
        "block_out_channels": tuple(up.channels),
        "in_channels": 6,
        "out_channels": 3,
        "norm_num_groups": min(32, up.channels[0]),
    }
    super_res_first, super_res_last = UNet2DModel(**sr), UNet2DModel(**sr)
    pipe = UnCLIPPipeline(
        prior=ref_prior,
        decoder=ref_decoder,
        text_proj=text_proj,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        super_res_first=super_res_first,
        super_res_last=super_res_last,
        prior_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon"),
    )
    pipe.set_progress_bar_config(disable=True)
    sizes = {
        "text_encoder": _count(text_encoder),
        "prior": _count(ref_prior),
        "decoder": _count(ref_decoder) + _count(text_proj),
        "super_res (first + last)": _count(super_res_first) + _count(super_res_last),
    }
    return pipe, sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="our unCLIP pipeline folder (or 'unclip' for the bundled one)")
    parser.add_argument("-n", type=int, default=64, help="images per timed call (prompts x images per prompt)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per implementation (best kept)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--out", default=str(ROOT / "results"), help="results folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import dalle2

    ours = dalle2.load(None if args.model == "unclip" else args.model)
    ref, ref_sizes = reference_pipeline(ours)
    our_sizes = {
        "text_encoder": _count(ours.clip.text),
        "prior": _count(ours.prior),
        "decoder": _count(ours.decoder),
        "upsampler": _count(ours.upsampler),
    }
    per_prompt = max(1, args.n // len(PROMPTS))
    count = per_prompt * len(PROMPTS)

    def run_ours() -> float:
        start = time.perf_counter()
        images = ours(PROMPTS, n=per_prompt, seed=0)
        assert len(images) == count and images[0].size == (64, 64)
        return time.perf_counter() - start

    def run_ref() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            out = ref(
                PROMPTS,
                num_images_per_prompt=per_prompt,
                prior_num_inference_steps=25,
                decoder_num_inference_steps=25,
                super_res_num_inference_steps=7,
                generator=torch.Generator().manual_seed(0),
                output_type="np",
            )
        assert out.images.shape == (count, 64, 64, 3), out.images.shape
        return time.perf_counter() - start

    run_ours(), run_ref()  # warm-up (allocations, lazy imports)
    times: dict[str, list[float]] = {"dalle2": [], "diffusers UnCLIPPipeline": []}
    for _ in range(args.repeats):
        times["dalle2"].append(run_ours())
        times["diffusers UnCLIPPipeline"].append(run_ref())
        print({k: [round(x, 2) for x in v] for k, v in times.items()}, flush=True)
    best = {k: min(v) for k, v in times.items()}
    settings = ours.settings()
    result = {
        "command": "python benchmarks/reference_sampling.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "images_per_call": count,
        "resolution": 64,
        "threads": args.threads,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": torch.get_num_threads()},
        "seconds": times,
        "images_per_second": {k: round(count / v, 3) for k, v in best.items()},
        "speedup": round(best["diffusers UnCLIPPipeline"] / best["dalle2"], 2),
        "parameters": {"dalle2": our_sizes, "diffusers UnCLIPPipeline": ref_sizes},
        "settings": {
            "dalle2": settings,
            "diffusers UnCLIPPipeline": "prior 25, decoder 25, super-res 7 steps (UnCLIPScheduler), guidance 4 / 8",
        },
        "weights": "reference: our trained text encoder and prior transformer; decoder and super-res random",
    }
    stem = Path(args.out) / "reference_sampling"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(
        f"| {k} | {result['images_per_second'][k]} | {min(v):.2f} | "
        f"{', '.join(f'{n} {c / 1e6:.2f}M' for n, c in result['parameters'][k].items())} |"
        for k, v in times.items()
    )
    stem.with_suffix(".md").write_text(
        f"# Sampling: dalle2 vs diffusers' unCLIP stack\n\nCommand: `{result['command']}`\n\n"
        f"{count} images at 64x64 per call ({len(PROMPTS)} prompts x {per_prompt}), {args.threads} threads, "
        f"best of {args.repeats}. {result['weights']}: the reference is timed, not scored.\n\n"
        "| implementation | images/s | seconds per call | parameters |\n|---|---:|---:|---|\n"
        f"{rows}\n\nSpeed-up: **{result['speedup']}x**. dalle2 settings: {json.dumps(settings)}\n"
    )
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
