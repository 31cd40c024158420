"""Command-line registration of ``dalle2 train all`` (argparse only, so ``dalle2 --help`` stays fast)."""

from __future__ import annotations

import argparse
from typing import Any

from dalle2.cli_options import add_config_options, positive_float

DESCRIPTION = """\
Train a whole unCLIP pipeline folder, in order: tokenizer (if missing), CLIP, prior, upsampler,
decoder, then `dalle2 eval OUT --data DATA --quick --out OUT/eval` (datasets with evaluator
networks: shapes, fashion-mnist; others skip it).

--minutes M fills a wall-clock budget for the training (the eval after it is not counted): the
other stages train their steps, then the decoder's training speed is measured here (about a
minute) and its train.max_steps set so that it ends within what is left. The `cpu` preset's
decoder steps are sized for an hour on a slow laptop; `--minutes 60` gives a faster machine's hour
to the decoder, which is what more training time improves most.

Every stage gets --data, --preset, --config, --set and --max-minutes. One --config YAML may hold
the sections of several stages (clip:, prior:, decoder:, upsampler:) beside the shared train: and
data:; each stage reads its own. --steps-scale F multiplies each stage's train.max_steps.

--resume skips finished stages (OUT/<stage>/ holding model.safetensors and report.json) and resumes
unfinished ones from their checkpoints under OUT/training/<stage>. Without it, a folder that already
holds a stage is refused.

At the end, each stage's time and headline number are printed and written to OUT/train_all.json."""


def register(train_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``all`` to the ``dalle2 train`` sub-commands (sets ``func`` to :func:`run`)."""
    p = train_subparsers.add_parser(
        "all",
        help="train every unCLIP stage in order (resumable), then a quick eval",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="dataset spec (default: the config's data.dataset, shapes)")
    p.add_argument("--out", required=True, help="pipeline folder to fill (a new one, or an unfinished one + --resume)")
    add_config_options(p, example="train.batch_size=32 or decoder.net.width=128")
    p.add_argument(
        "--resume", action="store_true", help="skip finished stages, resume unfinished ones from their checkpoints"
    )
    p.add_argument(
        "--steps-scale",
        type=positive_float,
        default=1.0,
        metavar="F",
        help="multiply every stage's train.max_steps by F (e.g. 0.1 for a quick run; default: %(default)s)",
    )
    p.add_argument(
        "--minutes",
        type=positive_float,
        metavar="M",
        help="a budget for all the training: the decoder's steps are sized, from its speed measured here, to end "
        "within M minutes of the start (replaces its train.max_steps; the eval is not counted)",
    )
    p.add_argument("--max-minutes", type=positive_float, help="stop each stage's training after this many minutes")
    p.add_argument("--skip-eval", action="store_true", help="do not run the quick eval at the end")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> None:
    """The ``dalle2 train all`` handler."""
    from dalle2.train_all import train_all

    train_all(args)
