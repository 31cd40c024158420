"""The ``dalle2`` command line: one subcommand per job, each with --help, defaults shown, clear errors."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dalle2 import __version__
from dalle2.cli_options import HelpFormatter, add_config_options, positive_int
from dalle2.errors import Dalle2Error

EXIT_USAGE = 2


class CLIError(Dalle2Error):
    """An error to report in one line, without a traceback."""


class _CommandListFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps each command's help on its own line: argparse measures sub-commands 2 columns short."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += 2


def _resolution(text: str) -> int:
    value = positive_int(text)
    if not 8 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be between 8 and 1024 pixels, got {value}")
    return value


def _resolve_config(args: argparse.Namespace, **cli_values: object):
    """Preset < YAML < --set < dedicated CLI options (e.g. --data)."""
    from dalle2.config import load_config, parse_overrides

    overrides = parse_overrides(args.overrides)
    for dotted, value in cli_values.items():
        if value is not None:
            section, _, key = dotted.partition("__")
            overrides.setdefault(section, {})[key] = value
    return load_config(args.preset, args.config, overrides)


# ---------------------------------------------------------------------------------------------- data
def cmd_data_preview(args: argparse.Namespace) -> None:
    from dalle2.data import open_dataset
    from dalle2.data.inspect import preview

    dataset = open_dataset(args.data, split=args.split, resolution=args.resolution, seed=args.seed)
    path = preview(dataset, args.n, args.output, cell=args.cell)
    print(f"wrote {path} ({args.n} samples of {args.data}, split {args.split}, {args.resolution}x{args.resolution})")


def cmd_data_stats(args: argparse.Namespace) -> None:
    from dalle2.data import open_dataset
    from dalle2.data.inspect import format_stats, stats

    dataset = open_dataset(args.data, split=args.split, resolution=args.resolution, seed=args.seed)
    result = stats(dataset, limit=args.limit)
    print(json.dumps(result, indent=2) if args.json else format_stats(result))


def cmd_export(args: argparse.Namespace) -> None:
    from dalle2.export import export_pipeline, folder_megabytes

    index = export_pipeline(args.model, args.out, half=args.half, note=args.note, overwrite=args.overwrite)
    kinds = ", ".join(index.get("components", {}))
    print(f"wrote {args.out} ({index.get('kind')} pipeline: {kinds}; {folder_megabytes(args.out):.1f} MB)")


# --------------------------------------------------------------------------------------------- train
def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from dalle2.data import open_dataset
    from dalle2.data.inspect import iter_captions
    from dalle2.text import Tokenizer

    config = _resolve_config(args, data__dataset=args.data)
    print(config.to_yaml(), end="")
    dataset = open_dataset(config.data.dataset, split="train", resolution=config.data.resolution, seed=config.data.seed)
    captions = iter_captions(dataset, limit=args.limit, desc="captions")
    tokenizer = Tokenizer.train(captions, vocab_size=config.text.vocab_size, max_length=config.text.max_length)
    out = Path(args.out) / "tokenizer"
    path = tokenizer.save(out)
    config.save(out / "config.yaml")
    print(f"wrote {path} (vocabulary {tokenizer.vocab_size}, max length {tokenizer.max_length})")


def cmd_train_evaluators(args: argparse.Namespace) -> None:
    from dalle2.eval import train_evaluators as T

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    which = ["shapes-attr", "fashion-mnist", "clip-shapes"] if args.which == "all" else [args.which]
    for name in which:
        print(f"training evaluator {name} ...", flush=True)
        epochs = {"epochs": args.epochs} if args.epochs else {}
        seed = {"seed": args.seed} if args.seed is not None else {}  # each evaluator has its own default seed
        if name == "shapes-attr":
            info = T.train_shape_classifier(args.out, **seed, **epochs)
        elif name in ("fashion-mnist", "mnist"):
            info = T.train_class_dataset(name, args.out, root=args.root, **seed, **epochs)
        else:
            from dalle2.eval.clip_evaluator import train_eval_clip

            info = train_eval_clip("shapes", args.out, **seed)
        print(json.dumps(info, indent=2))


# ---------------------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> None:
    from dalle2.eval import evaluate as E

    if args.images or args.prompts:
        if not (args.images and args.prompts) or args.model:
            raise CLIError("score existing images with both --images DIR and --prompts FILE (and no MODEL_DIR)")
        report = E.evaluate_images(args.images, args.prompts, args.out)
    else:
        if not args.model:
            raise CLIError("give a MODEL_DIR to sample, or --images DIR --prompts FILE to score existing images")
        E.evaluators_available(args.data, args.features)
        report = E.evaluate_model(
            args.model,
            args.data,
            args.out,
            quick=args.quick,
            seed=args.seed,
            batch_size=args.batch_size,
            features=args.features,
            clip=args.clip,
            progress=args.progress,
            sample_kwargs={
                k: v
                for k, v in (
                    ("steps", args.steps),
                    ("sampler", args.sampler),
                    ("guidance", args.guidance),
                    ("truncation", args.truncation),
                )
                if v is not None
            },
        )
    print(E.markdown(report))
    print(f"wrote {Path(args.out) / 'eval.json'}, eval.md and sample grids")


def cmd_eval_prompts(args: argparse.Namespace) -> None:
    from dalle2.eval import evaluate as E
    from dalle2.eval.prompts import write_jsonl
    from dalle2.grid import save_image_atomic

    records = E.benchmark(args.data, args.quick, args.images_per_prompt, features=args.features, clip=args.clip)
    path = write_jsonl(records, args.output)
    print(f"wrote {path}: {len(records)} images to make ({len({r['id'] for r in records})} prompts)")
    if args.render_real:
        out = Path(args.render_real)
        out.mkdir(parents=True, exist_ok=True)
        for record, image in zip(records, E.real_images(records, args.resolution, args.seed), strict=True):
            save_image_atomic(image, out / record["file_name"])
        print(f"wrote {len(records)} real {args.resolution}x{args.resolution} images for these prompts to {out}")


def cmd_config(args: argparse.Namespace) -> None:
    print(config_report(args.preset, args.config, args.overrides), end="")


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_report(preset: str, config_path: str | None, sets: list[str]) -> str:
    """YAML of every section training uses for ``preset``, each resolved by the stage's own resolver
    (:func:`dalle2.config.resolve_stage`): the shared ``data`` and ``text``, each stage's ``train`` and
    each stage's own section (model keys and stage keys together, as the stage prints it)."""
    from dataclasses import MISSING, fields

    import yaml

    from dalle2.config import PRIOR_FROM_CLIP, ConfigError, resolve_stage
    from dalle2.models.decoder import DiffusionConfig
    from dalle2.presets import STAGE_PRESETS, STAGES
    from dalle2.stages.gan_stage import resolve as resolve_gan

    stages = [stage for stage in STAGES if preset in STAGE_PRESETS[stage]]
    if not stages:
        resolve_stage("clip", preset)  # the shared "unknown preset" error
    resolved = {}
    for stage in stages:
        if stage == "gan":  # the GAN stage also builds its networks once to check the keys
            config, section = resolve_gan({"preset": preset, "config": config_path, "overrides": sets})
            keys: dict = {}
        else:
            config, section, keys = resolve_stage(stage, preset, config_path, sets)
        if stage == "prior":
            section = {k: v for k, v in section.items() if k not in PRIOR_FROM_CLIP}
        elif stage in ("decoder", "upsampler"):
            defaults = {
                f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
                for f in fields(DiffusionConfig)
                if f.name != "role"
            }
            section = {**defaults, **section}
        resolved[stage] = (config.to_dict(), {**section, **keys})
    report: dict = {"preset": preset}
    for shared in ("data", "text"):
        values = {stage: config[shared] for stage, (config, _) in resolved.items()}
        first = next(iter(values.values()))
        report[shared] = first if all(v == first for v in values.values()) else values
    report["train"] = {stage: config["train"] for stage, (config, _) in resolved.items()}
    report.update({stage: section for stage, (_, section) in resolved.items()})
    if not report["train"]:
        raise ConfigError(f"preset {preset!r}: no stage uses it")
    header = (
        f"# every section `dalle2 train STAGE --preset {preset}` uses, resolved as that stage resolves it\n"
        "# (preset < --config < --set; a stage's --max-steps, --data... win over these). Sizes taken from the\n"
        "# CLIP and the data (prior embed_dim, text_width, max_text_len; the networks' image and embedding\n"
        "# sizes) are filled in when the stage runs.\n"
    )
    return header + yaml.safe_dump(_plain(report), sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dalle2",
        description="DALL·E 2 (unCLIP) and a text-conditional GAN that train from scratch on a laptop CPU.",
        formatter_class=_CommandListFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dalle2 {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def add(group, name: str, help_: str, func: Callable[[argparse.Namespace], None]) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        sub.set_defaults(func=func)
        return sub

    # data
    data = commands.add_parser(
        "data", help="look at a dataset: preview grid, statistics", description="Look at a dataset."
    )
    data_commands = data.add_subparsers(title="commands", metavar="COMMAND")
    data.set_defaults(func=lambda _args: data.print_help())
    data_help = "dataset: shapes, fashion-mnist[:DIR], mnist[:DIR], folder:PATH, webdataset:PATTERN"

    p = add(data_commands, "preview", "write a PNG grid of samples with their captions", cmd_data_preview)
    p.add_argument("data", help=data_help)
    p.add_argument("-n", type=positive_int, default=64, help="number of samples")
    p.add_argument("-o", "--output", default="grid.png", help="PNG file to write")
    p.add_argument("--split", default="train", help="train, test (shapes also: heldout)")
    p.add_argument("--resolution", type=_resolution, default=32, help="image size in pixels")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (procedural datasets)")
    p.add_argument("--cell", type=positive_int, default=96, help="displayed size of each image in the grid")

    p = add(data_commands, "stats", "print size, resolution, caption lengths and vocabulary", cmd_data_stats)
    p.add_argument("data", help=data_help)
    p.add_argument("--split", default="train", help="train, test (shapes also: heldout)")
    p.add_argument("--resolution", type=_resolution, default=32, help="image size in pixels")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (procedural datasets)")
    p.add_argument("--limit", type=positive_int, default=20_000, help="read at most this many samples")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    # train
    train = commands.add_parser(
        "train",
        help="train a stage: tokenizer, clip, prior, decoder, upsampler, gan, all (every unCLIP stage), evaluators",
        description="Train a stage.",
        formatter_class=_CommandListFormatter,
    )
    train_commands = train.add_subparsers(title="stages", metavar="STAGE")
    train.set_defaults(func=lambda _args: train.print_help())
    p = add(train_commands, "tokenizer", "train the BPE tokenizer on a dataset's captions", cmd_train_tokenizer)
    p.add_argument("--data", help=data_help + " (default: the preset's)")
    p.add_argument("--out", required=True, help="pipeline folder; writes OUT/tokenizer/tokenizer.json")
    p.add_argument("--limit", type=positive_int, default=50_000, help="captions to read")
    add_config_options(p)

    p = add(
        train_commands,
        "evaluators",
        "train the frozen evaluator networks dalle2 eval uses",
        cmd_train_evaluators,
    )
    p.add_argument(
        "--which",
        default="all",
        choices=["all", "shapes-attr", "fashion-mnist", "mnist", "clip-shapes"],
    )
    p.add_argument(
        "--out",
        default="evaluators",
        help="folder to write NAME-v1/ into (the package ships src/dalle2/assets/evaluators)",
    )
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the shipped evaluator's)")
    p.add_argument("--epochs", type=positive_int, default=None, help="override the default epochs")
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (1 is faster on a busy machine)"
    )
    p.add_argument("--root", default=None, help="IDX folder for fashion-mnist / mnist (default: the Debian path)")

    from dalle2.stages.clip_cli import register as register_clip

    register_clip(train_commands)
    from dalle2.stages.prior_cli import register as register_prior

    register_prior(train_commands)
    from dalle2.stages.image_cli import register as register_image

    register_image(train_commands)
    from dalle2.stages.gan_cli import register as register_gan

    register_gan(train_commands)
    from dalle2.train_all_cli import register as register_all

    register_all(train_commands)

    from dalle2.generate_cli import register as register_generate

    register_generate(commands, add)
    from dalle2.serve_cli import register as register_serve

    register_serve(commands, add)

    # eval
    from dalle2.config import SAMPLERS
    from dalle2.generate_cli import guidance_scale, sampling_steps, truncation_value

    p = add(commands, "eval", "score a model, or any program's images, on a benchmark", cmd_eval)
    p.add_argument("model", nargs="?", help="pipeline folder to sample (omit with --images)")
    p.add_argument("--data", default="shapes", help="benchmark: shapes, fashion-mnist, mnist, folder:PATH")
    p.add_argument("--out", default="eval", help="folder for eval.json, eval.md and sample grids")
    p.add_argument(
        "--quick", action="store_true", help="small version (CI, progress checks); default is the reporting size"
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=positive_int, default=64, help="prompts per sampling call")
    p.add_argument("--images", metavar="DIR", help="score the images in DIR instead of sampling a model")
    p.add_argument("--prompts", metavar="FILE", help="prompts.jsonl for --images (from `dalle2 eval-prompts`)")
    p.add_argument("--features", metavar="EVALUATOR", help="feature network for FD/KID/PR (needed for folder:PATH)")
    p.add_argument("--clip", metavar="EVALUATOR", help="evaluation CLIP for CLIP score (default: the dataset's)")
    p.add_argument("--steps", type=sampling_steps, help="unCLIP: decoder sampling steps (default: the model's)")
    p.add_argument("--sampler", choices=SAMPLERS, help="unCLIP: decoder sampler")
    p.add_argument("--guidance", type=guidance_scale, metavar="G", help="unCLIP: decoder guidance scale, 1 = none")
    p.add_argument("--truncation", type=truncation_value, metavar="T", help="GAN: truncation threshold (default: off)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    p = add(commands, "eval-prompts", "write the benchmark prompts (and real images for them)", cmd_eval_prompts)
    p.add_argument("--data", default="shapes", help="benchmark: shapes, fashion-mnist, mnist, folder:PATH")
    p.add_argument("-o", "--output", default="prompts.jsonl", help="JSON-lines file: prompt, requirement, file_name")
    p.add_argument("--quick", action="store_true", help="the small prompt set")
    p.add_argument("--images-per-prompt", type=positive_int, default=None, help="override images per prompt")
    p.add_argument("--render-real", metavar="DIR", help="also write real images for every prompt into DIR")
    p.add_argument("--resolution", type=_resolution, default=64, help="size of the real images")
    p.add_argument("--seed", type=int, default=1, help="seed of the real images")
    p.add_argument("--features", metavar="EVALUATOR", help="feature network for FD/KID/PR (needed for folder:PATH)")
    p.add_argument("--clip", metavar="EVALUATOR", help="evaluation CLIP for CLIP score (default: the dataset's)")

    # export
    p = add(commands, "export", "copy a trained pipeline into a small folder to ship (float16 weights)", cmd_export)
    p.add_argument("model", metavar="MODEL_DIR", help="pipeline folder written by `dalle2 train`")
    p.add_argument("out", metavar="OUT_DIR", help="the exported folder (must not exist unless --overwrite)")
    p.add_argument("--no-half", dest="half", action="store_false", help="keep the weights' trained dtype")
    p.add_argument("--note", help="recorded in model_index.json provenance (e.g. the training command and seed)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")

    # config
    p = add(commands, "config", "print every stage's resolved configuration (preset < YAML < --set)", cmd_config)
    add_config_options(p, example="decoder.guidance_scale=2", presets="tiny, cpu, gpu (article: the GAN's)")
    return parser


def os_error_line(error: OSError) -> str:
    """One line for an OS error on a path the user gave: the path, what is wrong, and a hint where one helps."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename is None:
        return reason
    path = os.fsdecode(error.filename)
    path = path.encode("utf-8", "backslashreplace").decode("utf-8")  # an undecodable name stays printable
    if error.filename2 is not None:
        path += f" -> {os.fsdecode(error.filename2)}".encode("utf-8", "backslashreplace").decode("utf-8")
    hints = {
        FileExistsError: "a file is in the way where a folder is needed",
        NotADirectoryError: "part of the path is a file, not a folder",
        IsADirectoryError: "it is a folder; give a file name",
        PermissionError: "no permission; choose another location",
    }
    hint = next((text for kind, text in hints.items() if isinstance(error, kind)), None)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "the disk is full; free some space or choose another location"
    elif error.errno == errno.EROFS:
        hint = "a read-only file system; choose another location"
    return f"cannot use {path}: {reason}" + (f" ({hint})" if hint else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and usage errors exit here, before torch is imported
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        args.func(args)
    except Dalle2Error as error:  # a problem with what the user gave; any other exception is a bug: a traceback
        print(f"dalle2: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # a path the user gave: missing, a file where a folder belongs, no permission, full
        print(f"dalle2: error: {os_error_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dalle2: interrupted", file=sys.stderr)
        return 130
    return 0
