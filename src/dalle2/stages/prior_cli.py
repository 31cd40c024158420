"""Command-line registration of ``dalle2 train prior``, kept free of heavy imports so ``dalle2 --help`` is fast."""

from __future__ import annotations

import argparse
from typing import Any

from dalle2.cli_options import add_config_options, add_run_options


def register(train_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``prior`` to the ``dalle2 train`` sub-commands (sets ``func`` to :func:`run`)."""
    p = train_subparsers.add_parser(
        "prior",
        help="train the diffusion prior on a trained CLIP",
        description=(
            "Train the unCLIP diffusion prior of a pipeline folder. Needs OUT/clip (from `dalle2 train clip`): "
            "the frozen CLIP encodes a pool of training pairs once, then the prior is trained on them."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="dataset spec (default: the config's data.dataset, shapes)")
    p.add_argument("--out", required=True, help="pipeline folder holding clip/; writes OUT/prior/ and model_index.json")
    add_config_options(p, example="train.max_steps=100 or prior.pool_size=5000")
    add_run_options(p, "prior")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> None:
    """The ``dalle2 train prior`` handler."""
    from dalle2.stages.prior_stage import train_prior

    train_prior(args)


add_prior_command = register
