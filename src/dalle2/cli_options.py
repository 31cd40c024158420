"""Command-line options shared by every command that runs a configured job (argparse only: imports nothing heavy)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks; shows a default only where it says something.

    Not for flags (``--quick``, ``--no-progress``), unset values (``None``: "the model's"), empty lists, or an
    option whose help already names its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_ = action.help or ""
        if action.nargs == 0 or action.default in (None, []) or "default" in help_:
            return action.help
        return super()._get_help_string(action)


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}" if high is None else f"integer from {low} to {high}"
    return parse


#: an argparse ``type``: a whole number, at least 1
positive_int = int_range(1)


def float_range(
    low: float, high: float | None = None, *, low_open: bool = False, unit: str = "a number", note: str = ""
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number from ``low`` (excluded with ``low_open``) to ``high`` (included;
    no upper bound when None). ``unit`` names what is expected in the error ("a number of seconds"); ``note``
    is added to the range error, e.g. "1 = no guidance"."""
    bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
    if high is not None:
        bound += f" and at most {high:g}"
    extra = f" ({note})" if note else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unit}, got {text!r}") from None
        inside = math.isfinite(value) and (value > low if low_open else value >= low)
        if not inside or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {bound}{extra}, got {text}")
        return value

    parse.__name__ = unit
    return parse


positive_float = float_range(0, low_open=True)


def add_config_options(
    parser: argparse.ArgumentParser, example: str = "train.batch_size=32", presets: str = "tiny, cpu, gpu"
) -> None:
    """--preset, --config and --set: precedence preset < YAML < --set."""
    parser.add_argument("--preset", default="cpu", help=f"named preset: {presets} (default: %(default)s)")
    parser.add_argument("--config", metavar="YAML", help="YAML file overriding the preset")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override one config value, e.g. {example} (repeatable; wins over --config and --preset)",
    )


def add_run_options(parser: argparse.ArgumentParser, stage: str) -> None:
    """--resume, --max-steps, --max-minutes and --no-progress of a training stage."""
    parser.add_argument("--resume", action="store_true", help=f"continue from OUT/training/{stage}/checkpoints")
    parser.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps in total")
    parser.add_argument("--max-minutes", type=positive_float, help="stop after this many minutes of this run")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
