"""Command-line registration of ``dalle2 train clip``, kept free of heavy imports so ``dalle2 --help`` is fast."""

from __future__ import annotations

import argparse
from typing import Any

from dalle2.cli_options import add_config_options, add_run_options

TEXT_ENCODER_CHOICES = ("clip", "minilm")  # == dalle2.models.clip.TEXT_ENCODERS (a test keeps them equal)


def register(train_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``clip`` to the ``dalle2 train`` sub-commands (sets ``func`` to :func:`run`)."""
    p = train_subparsers.add_parser(
        "clip",
        help="train the CLIP towers (or import a pretrained CLIP)",
        description="Train the CLIP text and image towers into a pipeline folder, or import a pretrained CLIP.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="dataset spec (default: the config's data.dataset, shapes)")
    p.add_argument("--out", required=True, help="pipeline folder; writes OUT/clip/ and OUT/model_index.json")
    add_config_options(p, example="train.max_steps=100 or clip.embed_dim=64")
    add_run_options(p, "clip")
    p.add_argument("--clip", metavar="PATH", help="import a pretrained transformers CLIP folder (frozen) instead")
    p.add_argument("--text-encoder", choices=TEXT_ENCODER_CHOICES, help="clip (trained, default) or minilm (frozen)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> None:
    """The ``dalle2 train clip`` handler."""
    from dalle2.stages.clip_stage import train_clip

    train_clip(args)


add_clip_command = register
