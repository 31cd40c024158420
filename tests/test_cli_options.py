"""One range helper for every float option, one sampler list, unambiguous option names (issue 22 item 5)."""

from __future__ import annotations

import argparse
import re

import pytest

from dalle2.cli import build_parser, main
from dalle2.cli_options import float_range


def usage_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err


def test_float_range_bounds_and_messages():
    unit = float_range(0, 1, low_open=True)
    assert unit("1") == 1.0 and unit("0.25") == 0.25
    for bad, message in (
        ("0", "must be greater than 0 and at most 1, got 0"),
        ("1.5", "got 1.5"),
        ("nan", "got nan"),
        ("x", "expected a number, got 'x'"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            unit(bad)
    seconds = float_range(0, unit="a number of seconds", note="0 = none")
    assert seconds("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be at least 0 \(0 = none\), got -1"):
        seconds("-1")
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number of seconds"):
        seconds("soon")
    with pytest.raises(argparse.ArgumentTypeError, match="got inf"):
        float_range(0)("inf")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "m", "--guidance", "-1"], "argument --guidance: must be at least 0 (1 = no guidance), got -1"),
        (["eval", "m", "--guidance", "nan"], "argument --guidance"),
        (["eval", "m", "--steps", "0"], "argument --steps: must be from 1 to"),
        (["eval", "m", "--sampler", "euler"], "invalid choice: 'euler'"),
        (["serve", "--timeout-s", "0"], "argument --timeout-s: must be greater than 0, got 0"),
        (["serve", "--max-wait-ms", "-5"], "argument --max-wait-ms: must be at least 0, got -5"),
        (["train", "all", "--out", "x", "--max-minutes", "0"], "argument --max-minutes: must be greater than 0"),
        (["interpolate", "a.png", "b.png", "--frames", "1"], "argument --frames: must be from 2 to 64, got 1"),
        (["text-diff", "a.png", "--from", "a", "--to", "b", "--max-theta", "2"], "at most 1, got 2"),
    ],
)
def test_every_range_is_checked_before_anything_runs(capsys, argv, message):
    assert message in usage_error(capsys, *argv)


def test_frames_is_the_frame_count_and_steps_its_old_name():
    parser = build_parser()
    args = parser.parse_args(["interpolate", "a.png", "b.png", "--frames", "5", "--sample-steps", "3"])
    assert args.frames == 5 and args.sample_steps == 3
    assert parser.parse_args(["interpolate", "a.png", "b.png", "--steps", "4"]).frames == 4  # old scripts keep working
    assert parser.parse_args(["text-diff", "a.png", "--from", "a", "--to", "b"]).frames == 6


def test_one_sampler_list():
    from dalle2 import diffusion
    from dalle2.config import SAMPLERS

    assert diffusion.SAMPLERS is SAMPLERS
    parser = build_parser()
    for sampler in SAMPLERS:
        assert parser.parse_args(["eval", "m", "--sampler", sampler]).sampler == sampler
        assert parser.parse_args(["generate", "p", "--sampler", sampler]).sampler == sampler


def test_top_level_help_names_every_training_stage(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    entry = " ".join(re.search(r"\n    train (.*?)(?=\n    \S)", text, re.S).group(1).split())  # lines joined
    for stage in ("tokenizer", "clip", "prior", "decoder", "upsampler", "gan", "all", "evaluators"):
        assert stage in entry, stage
