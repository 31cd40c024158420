"""Typed configuration: one dataclass per shared section, YAML and CLI overrides, and the one resolver
every training stage uses (:func:`resolve_stage`).

Precedence, lowest to highest: preset defaults (all of them in :mod:`dalle2.presets`) < YAML file <
``--set section.key=value`` < dedicated options (``--max-steps``, ``--data``...).
The resolved config is printed at the start of every run and saved beside every output.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from dalle2.coerce import ConfigError, check_fields, coerce_field, convert, unknown_key, unknown_section
from dalle2.presets import BASE, SAMPLERS, STAGE_PRESETS, STAGES

__all__ = ["SAMPLERS", "ConfigError", "check_fields", "load_config", "resolve_stage"]  # the first three re-exported


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false are booleans, so ``train.mixed_precision=no`` stays the string "no"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list(_first)
    )


def load_yaml(text: str) -> Any:
    """Parse config YAML (a file or one ``--set`` value) with YAML 1.2 booleans."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class DataConfig:
    dataset: str = "shapes"  # dataset spec, see dalle2.data
    resolution: int = 32  # base (decoder) resolution
    output_resolution: int = 64  # after the upsampler
    num_workers: int = 0  # DataLoader worker processes
    # training-split size for CLIP, decoder, upsampler and GAN (the prior has prior.pool_size): shapes renders
    # this many distinct scenes (default 50,000), a file dataset is capped at it. Long GPU runs set it high:
    # at 2,400 images/s a 50,000-scene epoch ends every 20 s, and the DataLoader workers restart at each
    train_length: int | None = None
    seed: int = 0


@dataclass
class TextConfig:
    vocab_size: int = 1000  # BPE vocabulary, special tokens included
    max_length: int = 32  # tokens per caption after padding / truncation, BOS and EOS included
    pretrained_encoder: str | None = None  # e.g. a local all-MiniLM-L6-v2 folder (optional)


@dataclass
class TrainConfig:
    batch_size: int = 64
    learning_rate: float = 3e-4
    max_steps: int = 3000
    schedule_steps: int | None = None  # length of the LR schedule; None = max_steps (set it to stop early and resume)
    max_minutes: float | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 1  # newest checkpoints kept on disk; 0 = keep every one (for quality-vs-time curves)
    mixed_precision: str = "no"  # "no" | "bf16"
    seed: int = 0


@dataclass
class Config:
    preset: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from dalle2.folder_format import write_text_atomic

        write_text_atomic(path, self.to_yaml())


#: the shared sections per preset (overrides on the dataclass defaults); see :mod:`dalle2.presets`
PRESETS: dict[str, dict[str, dict[str, Any]]] = BASE


def _apply(config: Config, updates: dict[str, Any], source: str) -> None:
    if not isinstance(updates, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(updates).__name__}")
    sections = {f.name: f for f in fields(Config) if dataclasses.is_dataclass(f.default_factory)}  # type: ignore[arg-type]
    for section, values in updates.items():
        if section == "preset":
            continue
        if section not in sections:
            raise unknown_section(section, sections, f"{source}: ")
        target = getattr(config, section)
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        known = typing.get_type_hints(type(target))
        for key, value in values.items():
            if key not in known:
                raise unknown_key(section, key, known, f"{source}: ")
            setattr(target, key, coerce_field(value, known[key], f"{source}: {section}.{key}"))


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``["train.batch_size=32", "data.dataset=mnist"]`` -> nested dict (values parsed as YAML scalars)."""
    nested: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.batch_size=32")
        try:
            value = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: cannot parse value: {error}") from None
        nested.setdefault(section, {})[name] = value
    return nested


def _check_preset(preset: str, presets: Any) -> None:
    if preset not in presets:
        hint = difflib.get_close_matches(preset, presets, n=1)
        raise ConfigError(
            f"unknown preset {preset!r}; choose one of {', '.join(presets)}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )


def _read_yaml(yaml_path: str | Path) -> Any:
    path = Path(yaml_path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start + 1}); save the config as UTF-8") from None


def load_config(
    preset: str = "cpu",
    yaml_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] | dict[str, dict[str, Any]] = (),
) -> Config:
    """Resolve a config: preset, then the YAML file, then CLI overrides (highest precedence)."""
    _check_preset(preset, PRESETS)
    config = Config(preset=preset)
    _apply(config, PRESETS[preset], f"preset {preset!r}")
    if yaml_path is not None:
        _apply(config, _read_yaml(yaml_path), str(Path(yaml_path)))
    if not isinstance(overrides, dict):
        overrides = parse_overrides(overrides)
    _apply(config, overrides, "command line")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Reject absurd values with a message naming the key."""
    checks = [
        (8 <= config.data.resolution <= 1024, "data.resolution must be between 8 and 1024"),
        (config.data.output_resolution >= config.data.resolution, "data.output_resolution must be >= data.resolution"),
        (config.data.num_workers >= 0, "data.num_workers must be >= 0"),
        (config.data.train_length is None or config.data.train_length >= 1, "data.train_length must be >= 1"),
        (config.text.vocab_size >= 300, "text.vocab_size must be >= 300 (the byte alphabet needs 256 + specials)"),
        (4 <= config.text.max_length <= 1024, "text.max_length must be between 4 and 1024"),
        (config.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (0 < config.train.learning_rate < 1, "train.learning_rate must be in (0, 1)"),
        (config.train.max_steps >= 1, "train.max_steps must be >= 1"),
        (
            config.train.schedule_steps is None or config.train.schedule_steps >= 1,
            "train.schedule_steps must be >= 1",
        ),
        (config.train.max_minutes is None or config.train.max_minutes > 0, "train.max_minutes must be > 0"),
        (config.train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
        (config.train.keep_checkpoints >= 0, "train.keep_checkpoints must be >= 0 (0 = keep all)"),
        (config.train.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision must be no, bf16 or fp16"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a saved config (``Config.to_dict``) exactly, without applying a preset."""
    config = Config(preset=str(data.get("preset", "cpu")))
    _apply(config, data, "saved config")
    validate(config)
    return config


# -- the stages' resolver ------------------------------------------------------------------------------

#: dedicated stage options (``--max-steps`` ...) and the key each one sets, above ``--set``
STAGE_OPTIONS = {
    "max_steps": "train.max_steps",
    "max_minutes": "train.max_minutes",
    "data": "data.dataset",
    "text_encoder": "clip.text_encoder",
}
#: prior keys that always come from the CLIP (its joint embedding size, text width and tokenizer length)
PRIOR_FROM_CLIP = ("embed_dim", "text_width", "max_text_len")


def merge_sources(
    stage: str, defaults: dict[str, dict[str, Any]], config_path: str | Path | None, sets: list[str] | tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``defaults`` < YAML file < ``--set``, as (overrides for :func:`load_config`, the ``stage``'s own
    section). The other stages' sections (a shared YAML, e.g. ``train all --config``) are dropped."""
    overrides: dict[str, Any] = {name: dict(values) for name, values in defaults.items()}
    if config_path is not None:
        loaded = _read_yaml(config_path)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{Path(config_path)}: expected a mapping of sections")
        for name, values in loaded.items():
            if isinstance(values, dict):
                overrides.setdefault(name, {}).update(values)
            else:
                overrides[name] = values
    for name, values in parse_overrides(list(sets)).items():
        overrides.setdefault(name, {}).update(values)
    known = [f.name for f in fields(Config) if dataclasses.is_dataclass(f.default_factory)]  # type: ignore[arg-type]
    known += [*STAGES, "preset"]
    for name in overrides:
        if name not in known:
            raise unknown_section(name, known, "command line: ", listed=known[:-1])  # "preset" not listed
    own = overrides.pop(stage, {})
    if not isinstance(own, dict):
        raise ConfigError(f"section {stage!r} must be a mapping")
    for name in STAGES:
        overrides.pop(name, None)
    overrides.pop("preset", None)
    return overrides, own


def resolve_stage(
    stage: str,
    preset: str = "cpu",
    config_path: str | Path | None = None,
    sets: list[str] | tuple[str, ...] = (),
    options: dict[str, Any] | None = None,
) -> tuple[Config, dict[str, Any], dict[str, Any]]:
    """One stage's configuration: its preset (:data:`dalle2.presets.STAGE_PRESETS`) < ``config_path`` YAML
    < ``sets`` (``section.key=value``) < ``options`` (keys of :data:`STAGE_OPTIONS`; None = not given).

    Returns (the shared :class:`Config`, the stage's section, its stage keys): ``clip`` ->
    :class:`~dalle2.models.clip.ClipConfig` as a dict, no stage keys; ``prior`` -> every
    :class:`~dalle2.models.prior.PriorConfig` field (the CLIP's sizes are filled in by the stage) and
    pool_size / eval_samples / ema_decay; ``decoder`` / ``upsampler`` -> the DiffusionConfig keys the
    preset and overrides set (``net`` included, sizes filled in by the stage) and ema_decay /
    eval_samples; ``gan`` -> every key of :data:`dalle2.presets.GAN_DEFAULTS`, no stage keys (the GAN
    stage checks the networks built from them)."""
    if stage not in STAGE_PRESETS:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    presets = STAGE_PRESETS[stage]
    _check_preset(preset, presets)
    spec = presets[preset]
    defaults = {"train": spec["train"], **({"data": spec["data"]} if spec.get("data") else {})}
    overrides, own = merge_sources(stage, defaults, config_path, sets)
    for option, dotted in STAGE_OPTIONS.items():
        value = (options or {}).get(option)
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section == stage:
            own[key] = value
        elif section not in STAGES:
            overrides.setdefault(section, {})[key] = value
    config = load_config(spec.get("base", preset), None, overrides)
    config.preset = preset
    section, keys = _SECTIONS[stage](stage, spec, own)
    return config, section, keys


def _clip_section(stage: str, spec: dict[str, Any], own: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from dalle2.models.clip import clip_config

    return asdict(clip_config(spec["model"], own)), dict(spec["stage"])


def _prior_section(stage: str, spec: dict[str, Any], own: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from dalle2.models.prior import PriorConfig

    keys = dict(spec["stage"])
    model = asdict(PriorConfig(**spec["model"]))
    for key, value in own.items():
        if key in keys:
            default = keys[key]
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if isinstance(value, bool) or not isinstance(value, type(default)):
                raise ConfigError(f"prior.{key} must be {type(default).__name__}, got {value!r}")
            keys[key] = value
        elif key in model:
            if key in PRIOR_FROM_CLIP:
                raise ConfigError(f"prior.{key} is taken from the CLIP (OUT/clip); it cannot be set")
            model[key] = value
        else:
            settable = [*keys, *sorted(set(model) - set(PRIOR_FROM_CLIP))]
            raise ConfigError(f"unknown key prior.{key}; keys: {', '.join(settable)}")
    if keys["pool_size"] < 1 or keys["eval_samples"] < 2:
        raise ConfigError("prior.pool_size must be >= 1 and prior.eval_samples >= 2")
    return model, keys


def _image_section(stage: str, spec: dict[str, Any], own: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    import copy

    from dalle2.models.decoder import DiffusionConfig

    model = copy.deepcopy(spec["model"])
    keys = dict(spec["stage"])
    model_keys = set(DiffusionConfig.__dataclass_fields__)
    if own.get("arch", model["arch"]) != model["arch"]:  # another network: the preset's net keys do not apply
        model["net"] = {}
    for key, value in own.items():
        if key.startswith("net."):
            model["net"][key[4:]] = value
        elif key == "net" and isinstance(value, dict):
            model["net"].update(value)
        elif key in keys:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{stage}.{key} must be a number, got {value!r}")
            keys[key] = type(keys[key])(value)
        elif key in model_keys and key not in ("role", "net"):
            model[key] = value
        else:
            raise ConfigError(
                f"unknown key {stage}.{key}; keys: {', '.join(sorted([*keys, *(model_keys - {'role', 'net'})]))}, "
                "net.<network key>"
            )
    return model, keys


def _gan_section(stage: str, spec: dict[str, Any], own: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    import copy

    from dalle2.presets import GAN_DEFAULTS

    keys = {**copy.deepcopy(GAN_DEFAULTS), **copy.deepcopy(spec["model"])}
    for key, value in own.items():
        if key not in GAN_DEFAULTS:
            raise unknown_key("gan", key, GAN_DEFAULTS)
        keys[key] = _coerce_like(f"gan.{key}", value, GAN_DEFAULTS[key])
    return keys, dict(spec["stage"])


def _coerce_like(where: str, value: Any, default: Any) -> Any:
    """``value`` checked against the type of ``default`` (the rules of :func:`~dalle2.coerce.coerce_field`;
    a list default takes a non-empty list of positive whole numbers)."""
    if isinstance(default, list):
        numbers = convert(value, list[int])
        if not isinstance(numbers, list) or not numbers or min(numbers) < 1:
            raise ConfigError(f"{where} must be a list of positive whole numbers, got {value!r}")
        return numbers
    return coerce_field(value, type(default), where)


_SECTIONS = {
    "clip": _clip_section,
    "prior": _prior_section,
    "decoder": _image_section,
    "upsampler": _image_section,
    "gan": _gan_section,
}
