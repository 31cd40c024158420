"""Command-line registration of ``dalle2 train decoder`` and ``dalle2 train upsampler`` (no heavy imports)."""

from __future__ import annotations

import argparse
from typing import Any

from dalle2.cli_options import add_config_options, add_run_options

DESCRIPTIONS = {
    "decoder": (
        "train the diffusion decoder (CLIP image embedding -> image)",
        "Train the unCLIP decoder of a pipeline folder at the base resolution. Needs OUT/clip (from `dalle2 "
        "train clip`): the frozen CLIP encodes every batch (image embedding z_i + caption tokens). Writes "
        "OUT/decoder/ (EMA weights) and a report: how close CLIP(decoded image) is to the z_i it came from.",
    ),
    "upsampler": (
        "train the diffusion upsampler (base -> output resolution)",
        "Train the unCLIP upsampler of a pipeline folder: a convolution-only diffusion UNet from "
        "data.resolution to data.output_resolution, on crops, conditioned on the blurred and noised "
        "low-resolution image. Needs no CLIP. Writes OUT/upsampler/ and a report (PSNR against bicubic).",
    ),
}


def register(train_subparsers: Any) -> None:
    """Add ``decoder`` and ``upsampler`` to the ``dalle2 train`` sub-commands."""
    for stage, (short, long) in DESCRIPTIONS.items():
        p = train_subparsers.add_parser(
            stage, help=short, description=long, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("--data", help="dataset spec (default: the config's data.dataset, shapes)")
        p.add_argument("--out", required=True, help=f"pipeline folder; writes OUT/{stage}/ and model_index.json")
        add_config_options(p, example=f"train.max_steps=100 or {stage}.net.width=128")
        add_run_options(p, stage)
        p.add_argument(
            "--init-from",
            metavar="DIR",
            help=f"start from the {stage} weights of pipeline folder DIR (e.g. an exported one) with a new "
            "optimizer and schedule; recorded in the report and provenance",
        )
        p.add_argument(
            "--init-grow",
            action="store_true",
            help="with --init-from: the network may be larger than the saved one (e.g. attention at another "
            "level set with --set); every saved weight is loaded, the new blocks keep their initialisation",
        )
        p.set_defaults(func=run, stage=stage)


def run(args: argparse.Namespace) -> None:
    from dalle2.stages.image_stage import train_decoder, train_upsampler

    (train_decoder if args.stage == "decoder" else train_upsampler)(args)
