"""Command-line registration of ``dalle2 train gan`` (argparse only, so ``dalle2 --help`` stays fast)."""

from __future__ import annotations

import argparse
from typing import Any

from dalle2.cli_options import add_config_options, add_run_options

DESCRIPTION = """\
Train a text-conditional GAN into its own pipeline folder (kind "gan"): a generator G(z, s) and a
matching-aware discriminator D(x, s), s the frozen CLIP sentence embedding of the caption. One step, no
diffusion: sampling is fast. Needs OUT/clip: copied (with OUT/tokenizer) from --clip-from DIR if given,
else trained first by the CLIP stage.

Presets: tiny (tests), cpu (DF-GAN recipe: deep-fusion generator, hinge loss, mismatched captions,
MA-GP, DiffAugment, EMA of G, mode seeking 0.1; sized for one CPU core), gpu, article (the founding article's recipe:
dense generator 128-256-512-1024 with BatchNorm, four strided 3x3 convolutions in D, BCE with the
non-saturating generator loss, Adam 2e-4 / beta1 0.5, batch 64, 28x28; the text fed to G and D).
Every choice is a gan.* key (--set gan.loss=bce, gan.mismatch=false, gan.ma_gp=0, gan.diffaugment=false,
gan.spectral_norm=true, gan.optimizer=sgd, gan.l2=1e-4, ...), so each one can be measured.

Writes OUT/gan/ (EMA generator + report.json), OUT/model_index.json, checkpoints and TensorBoard logs
under OUT/training/gan (losses, D accuracy, MA-GP, collapse monitors), preview grids in
OUT/training/gan/samples. Discriminator collapse and mode collapse are detected and logged as warnings."""

EXAMPLES = """\
examples:
  dalle2 train gan --data shapes --out runs/gan-shapes --clip-from runs/shapes
  dalle2 train gan --data fashion-mnist --out runs/gan-article --preset article --max-minutes 30
  dalle2 generate "a red circle" --model runs/gan-shapes -n 8 -o gan.png"""


def register(train_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``gan`` to the ``dalle2 train`` sub-commands (sets ``func`` to :func:`run`)."""
    p = train_subparsers.add_parser(
        "gan",
        help="train a text-conditional GAN (DF-GAN recipe, or the article's)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="dataset spec (default: the config's data.dataset, shapes)")
    p.add_argument("--out", required=True, help="GAN pipeline folder; writes OUT/gan/ and OUT/model_index.json")
    add_config_options(p, example="gan.loss=bce or train.max_steps=100", presets="tiny, cpu, gpu, article")
    p.add_argument("--clip-from", metavar="DIR", help="pipeline folder whose clip/ and tokenizer/ to copy into OUT")
    add_run_options(p, "gan")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> None:
    from dalle2.stages.gan_stage import train_gan

    train_gan(args)
