"""Only the project's own errors become ``dalle2: error: ...`` lines (issue 22 item 5).

Every error class dalle2 defines subclasses :class:`dalle2.errors.Dalle2Error` (a ``ValueError``); ``main()``
prints such an error (and an ``OSError`` on a user's path) in one line with exit status 2, and lets any other
exception, a plain ``ValueError`` included, keep its traceback: that is a bug, not a usage error. The config
type rules live in one place, :mod:`dalle2.coerce`.
"""

from __future__ import annotations

import ast
import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import dalle2
from dalle2 import cli
from dalle2.coerce import NO_FIT, coerce, convert, element_fits, kind_name
from dalle2.data.shapes import scene_from_spec
from dalle2.diffusion import make_timesteps
from dalle2.errors import Dalle2Error, InvalidConfigError
from dalle2.models.decoder import DiffusionConfig
from dalle2.models.prior import PriorConfig
from dalle2.models.unet import UNetConfig
from dalle2.training.ema import EMA

SRC = Path(dalle2.__file__).parent
FIXTURE = Path(__file__).parent / "fixtures" / "unclip-tiny"

#: exceptions that never reach the CLI: the server answers them with an HTTP status (see serve/errors.py)
NOT_USER_ERRORS = {
    ("dalle2.serve.errors", "ApiError"): "an OpenAI-style error body with an HTTP status",
    ("dalle2.serve.files", "FileStoreError"): "a 507 / 500 answer of the url file store",
}


def _exception_classes() -> list[tuple[str, str]]:
    """(module, class) for every class in src/dalle2 whose name ends in Error or Exception, found by reading the
    source (not by importing), so a class no test imports is not missed."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Exception")):
                found.append((module, node.name))
    return found


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


# ------------------------------------------------------------------------------------------ the class tree
def test_every_project_error_class_is_a_dalle2_error():
    classes = _exception_classes()
    assert len(classes) >= 20, classes  # the scan found the error classes (ConfigError, ClipError, ...)
    project = set()
    for module, name in classes:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, BaseException), f"{module}.{name} is not an exception"
        if (module, name) in NOT_USER_ERRORS:
            assert not issubclass(cls, Dalle2Error), f"{module}.{name}: an HTTP error, not a usage error"
            continue
        assert issubclass(cls, Dalle2Error), f"{module}.{name} must subclass dalle2.errors.Dalle2Error"
        assert issubclass(cls, ValueError)  # old `except ValueError` / pytest.raises(ValueError) keep working
        project.add(cls)
    # the other way round: every Dalle2Error subclass in dalle2 is one the scan found
    defined = {Dalle2Error} | {c for c in _subclasses(Dalle2Error) if c.__module__.startswith("dalle2.")}
    assert defined == project, defined ^ project


def test_runtime_errors_stay_runtime_errors():
    from dalle2.eval.networks import EvaluatorError
    from dalle2.training import TrainingError

    for cls in (TrainingError, EvaluatorError):
        assert issubclass(cls, Dalle2Error) and issubclass(cls, RuntimeError)


def test_config_errors_are_invalid_config_errors():
    from dalle2.config import ConfigError
    from dalle2.models.gan import GanConfigError

    assert issubclass(ConfigError, InvalidConfigError) and issubclass(GanConfigError, InvalidConfigError)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DiffusionConfig(guidance_scale=-1), "guidance_scale and eta must be >= 0"),
        (lambda: PriorConfig(num_candidates=0), "num_candidates must be >= 1"),
        (lambda: UNetConfig(channels=[12]), "channels must be multiples of 8"),
        (lambda: EMA(torch.nn.Linear(1, 1), decay=1.5), r"EMA decay must be in \[0, 1\)"),
        (lambda: make_timesteps(2000, 1000), r"num_steps must be in \[1, 1000\]"),
        (lambda: scene_from_spec("single", count=3), "a single scene has count 1"),
    ],
)
def test_config_and_spec_checks_raise_project_errors(build, message):
    with pytest.raises(Dalle2Error, match=message):
        build()


# ------------------------------------------------------------------------------------------------- main()
def test_main_prints_a_project_error_in_one_line(tmp_path, capsys):
    """A bad ``--set`` that used to raise a plain ValueError (the EMA's decay check) is one line, exit 2."""
    out = tmp_path / "pipe"
    shutil.copytree(FIXTURE, out)
    code = cli.main(["train", "decoder", "--out", str(out), "--preset", "tiny", "--set", "decoder.ema_decay=1.5"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("dalle2: error:")]
    assert errors == ["dalle2: error: EMA decay must be in [0, 1), got 1.5"], err


def test_main_prints_a_project_error_from_a_command(monkeypatch, capsys):
    def fail(args):
        raise InvalidConfigError("decoder.sample_steps must be in [1, 1000], got 0")

    monkeypatch.setattr(cli, "cmd_config", fail)
    assert cli.main(["config"]) == 2
    assert capsys.readouterr().err == "dalle2: error: decoder.sample_steps must be in [1, 1000], got 0\n"


@pytest.mark.parametrize("bug", [ValueError("boom"), KeyError("boom"), RuntimeError("boom"), TypeError("boom")])
def test_main_lets_a_bug_keep_its_traceback(monkeypatch, capsys, bug):
    """A plain ValueError (numpy, torch or our own code) is a bug: main re-raises it instead of a neat line."""

    def fail(args):
        raise bug

    monkeypatch.setattr(cli, "cmd_config", fail)
    with pytest.raises(type(bug), match="boom"):
        cli.main(["config"])
    assert "dalle2: error" not in capsys.readouterr().err


def test_main_keeps_os_errors_and_interrupts(monkeypatch, capsys, tmp_path):
    def missing(args):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "nope"))

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_config", missing)
    assert cli.main(["config"]) == 2
    assert capsys.readouterr().err.startswith(f"dalle2: error: cannot use {tmp_path / 'nope'}: ")
    monkeypatch.setattr(cli, "cmd_config", interrupted)
    assert cli.main(["config"]) == 130
    assert capsys.readouterr().err == "dalle2: interrupted\n"


def _one_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dalle2: error: ") and err.count("\n") == 1, err
    return err


def test_user_files_that_used_to_fail_with_a_plain_value_error_are_one_line(tmp_path, capsys):
    """Before, main() caught every ValueError (UnicodeDecodeError, the metrics' input checks); these are now
    project errors raised where the file or the count is checked."""
    config = tmp_path / "c.yaml"
    config.write_bytes(b"train:\n  batch_size: 3\n\xff")
    assert "c.yaml: not UTF-8 text (byte 24)" in _one_line(capsys, cli.main(["config", "--config", str(config)]))

    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(b"\xff\xfe")
    code = cli.main(["eval", "--images", str(tmp_path), "--prompts", str(prompts)])
    assert "p.jsonl: not UTF-8 text (byte 1)" in _one_line(capsys, code)

    records = [{"prompt": "a red circle", "dataset": "shapes", "task": "single", "file_name": f"{i}.png"}
               for i in range(2)]  # fmt: skip
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    for r in records:
        Image.new("RGB", (32, 32)).save(tmp_path / r["file_name"])
    code = cli.main(["eval", "--images", str(tmp_path), "--prompts", str(prompts)])
    assert "need at least 4 images to evaluate" in _one_line(capsys, code)


def test_serve_default_size_is_still_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--default-size", "256x128"])
    assert info.value.code == 2
    assert "size must be a square WIDTHxHEIGHT such as 256x256, got '256x128'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ coercion rules
@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (True, bool, True),
        (1, bool, NO_FIT),  # 1 and 0 are numbers, not booleans
        ("true", bool, NO_FIT),
        (3, int, 3),
        (True, int, NO_FIT),
        (3.0, int, NO_FIT),
        (3, float, 3.0),
        (2.5, float, 2.5),
        ("1e-3", float, 1e-3),  # YAML 1.1 reads 1e-3 (no dot) as a string
        ("fast", float, NO_FIT),
        (False, float, NO_FIT),
        ("a", str, "a"),
        (1, str, NO_FIT),
        (None, type(None), None),
        (0, type(None), NO_FIT),
        ([16, 32], list[int], [16, 32]),
        ((16, 32), list[int], [16, 32]),  # a tuple is a list
        ([16, True], list[int], NO_FIT),
        ([16, 2.0], list[int], NO_FIT),
        ("16", list[int], NO_FIT),
    ],
)
def test_convert_rules(value, kind, expected):
    result = convert(value, kind)
    assert result is NO_FIT if expected is NO_FIT else (result == expected and type(result) is type(expected))


def test_coerce_tries_each_kind_and_names_them_all():
    assert coerce(None, int | None, "train.schedule_steps") is None
    assert coerce(5, float | None, "train.max_minutes") == 5.0
    with pytest.raises(InvalidConfigError, match=r"^train.max_minutes must be float or null, got 'soon'$"):
        coerce("soon", float | None, "train.max_minutes")
    with pytest.raises(InvalidConfigError, match=r"^x must be true or false, got 1$"):
        coerce(1, bool, "x")
    assert [kind_name(k) for k in (bool, int, float, str, type(None), list[int])] == [
        "true or false", "int", "float", "str", "null", "list of int",
    ]  # fmt: skip


def test_coerce_raises_the_callers_error_and_names():
    from dalle2.models.clip import ClipError

    with pytest.raises(ClipError, match=r"^clip.hard_negatives must be bool, got 1$"):
        coerce(1, (bool,), "clip.hard_negatives", ClipError, "bool")


def test_config_and_clip_share_the_rules():
    """The shared sections and the clip section accept and refuse the same values (each names its own error)."""
    from dalle2.config import ConfigError, load_config
    from dalle2.models.clip import ClipError, clip_preset

    assert load_config("tiny", overrides=["train.learning_rate=1e-3"]).train.learning_rate == 1e-3
    assert clip_preset("tiny", {"init_temperature": "1e-2"}).init_temperature == 1e-2  # the same string rule
    assert clip_preset("tiny", {"conv_widths": (8, 16)}).conv_widths == [8, 16]
    with pytest.raises(ConfigError, match="train.batch_size must be int, got 2.5"):
        load_config("tiny", overrides=["train.batch_size=2.5"])
    with pytest.raises(ClipError, match=r"^clip.embed_dim must be int, got 2.5$"):
        clip_preset("tiny", {"embed_dim": 2.5})
    with pytest.raises(ConfigError, match="train.batch_size may not be null"):
        load_config("tiny", overrides=["train.batch_size="])
    with pytest.raises(ClipError, match=r"^clip.embed_dim must be int, got None$"):
        clip_preset("tiny", {"embed_dim": None})


@pytest.mark.parametrize(
    ("value", "kind", "fits"),
    [(1, bool, True), (2, bool, False), (True, bool, True), (True, int, False), (3, float, True), ("a", str, True)],
)
def test_list_element_rules(value, kind, fits):
    assert element_fits(value, kind) is fits
