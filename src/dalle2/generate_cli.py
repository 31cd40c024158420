"""``dalle2 generate``, ``vary``, ``interpolate``, ``text-diff`` and ``edit``: use a trained pipeline (unCLIP;
``generate`` and prompt ``interpolate`` also work with a GAN pipeline).

Only argparse is imported at module level (``dalle2 --help`` stays fast); torch and the pipeline are imported
inside the handlers. Conventions shared by every command:

* ``--model`` names the pipeline folder; :func:`resolve_model` is the one place that turns the option into
  a folder (a later version adds named / bundled models there).
* ``-o``: a name ending in ``.png`` is a file; anything else (an existing folder, a name ending in ``/``, a
  name without an extension) is a folder, and the command's default file name is written inside it. Missing
  parent folders are created. Every PNG is written atomically (temporary file + rename).
* Bad input (missing model or image, unreadable image, wrong mask size, empty prompt, a prompt or prompts file
  that is not UTF-8 text, out-of-range counts) ends in one ``dalle2: error: ...`` line and exit status 2;
  argparse reports malformed options the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dalle2.cli_options import HelpFormatter, float_range, int_range
from dalle2.config import SAMPLERS
from dalle2.errors import Dalle2Error

MAX_STEPS = 1000  # sampling steps, as UnclipPipeline accepts
MAX_SEED = 2**63 - 1
MAX_GRID_PROMPTS = 16  # more prompts than this imply --separate
ROW_MAX = 8  # up to this many tiles in one row; more go into a square-ish grid
PAD = 2  # grid padding (as dalle2.grid.image_grid)
CAPTION_BAND = 18  # height of the prompt line above each row of a multi-prompt grid
MIN_CAPTION_WIDTH = 240

AddCommand = Callable[[Any, str, str, Callable[[argparse.Namespace], None]], argparse.ArgumentParser]


class GenerateError(Dalle2Error):
    """Bad input to one of these commands; ``dalle2.cli.main`` prints it in one line and exits 2."""


# ---------------------------------------------------------------------------------------- option types


guidance_scale = float_range(0, note="1 = no guidance")  # a classifier-free guidance scale
_unit_interval = float_range(0, 1, low_open=True)


def truncation_value(text: str) -> float:
    """A GAN truncation threshold: a number in (0, 10] (noise components beyond it are redrawn)."""
    from dalle2.gan_pipeline import MAX_TRUNCATION

    return float_range(0, MAX_TRUNCATION, low_open=True)(text)


sampling_steps = int_range(1, MAX_STEPS)
seed_value = int_range(0, MAX_SEED)


# ------------------------------------------------------------------------------------- model and files
def resolve_model(name_or_path: str | Path | None) -> Path:
    """:func:`dalle2.pipeline.resolve_model`, its errors as this command's (one line, exit 2)."""
    from dalle2.pipeline import PipelineError
    from dalle2.pipeline import resolve_model as resolve

    try:
        return resolve(name_or_path)
    except PipelineError as error:
        raise GenerateError(str(error)) from None


def open_pipeline(model: str | Path | None, feature: str | None = None) -> Any:
    """``dalle2.load`` the ``--model`` folder; with ``feature`` (e.g. "vary"), check the pipeline has it."""
    import dalle2

    pipe = dalle2.load(resolve_model(model))
    if feature is not None and not callable(getattr(pipe, feature, None)):
        kind = getattr(pipe, "kind", type(pipe).__name__)
        raise GenerateError(f"{model} is a {kind!r} pipeline, which has no {feature}; use an unCLIP pipeline")
    return pipe


def _is_folder(output: str) -> bool:
    path = Path(output)
    return path.is_dir() or output.endswith(("/", os.sep)) or not path.suffix


def grid_path(output: str, default_name: str) -> Path:
    """Where a grid goes: ``-o`` itself (``.png``), or ``default_name`` inside the folder ``-o`` names."""
    path = Path(output).expanduser()
    if _is_folder(output):
        path = path / default_name
    elif path.suffix.lower() != ".png":
        raise GenerateError(f"-o {output}: only PNG is written; give a name ending in .png, or a folder")
    return _writable(path)


def separate_paths(output: str, count: int) -> list[Path]:
    """One path per image: ``out.png`` -> ``out-000.png``, ...; a folder ``DIR`` -> ``DIR/000.png``, ..."""
    width = max(3, len(str(count - 1)))
    path = Path(output).expanduser()
    if _is_folder(output):
        paths = [path / f"{i:0{width}d}.png" for i in range(count)]
    elif path.suffix.lower() != ".png":
        raise GenerateError(f"-o {output}: only PNG is written; give a name ending in .png, or a folder")
    else:
        paths = [path.with_name(f"{path.stem}-{i:0{width}d}{path.suffix}") for i in range(count)]
    _writable(paths[0])
    return paths


def _writable(path: Path) -> Path:
    """Fail before sampling if ``path`` cannot be written: a parent that is a file, or a target that is a folder."""
    if path.is_dir():
        raise GenerateError(f"cannot write {path}: it is a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise GenerateError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise GenerateError(f"cannot write {path}: no permission to write in {parent}")
            break
    return path


def _save(image: Any, path: Path) -> None:
    from dalle2.grid import save_image_atomic

    try:
        save_image_atomic(image, path)
    except OSError as error:
        raise GenerateError(f"cannot write {path}: {error.strerror or error}") from None


def _write_jsonl_atomic(records: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:
        raise GenerateError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file: one per line; blank lines and lines starting with ``#`` are skipped."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise GenerateError(f"prompts file not found: {p}")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise GenerateError(
            f"{p} line {line}: not UTF-8 text (byte 0x{data[error.start]:02X}); save the file as UTF-8, "
            "one prompt per line"
        ) from None
    prompts = [line.strip() for line in re.split(r"\r\n|\r|\n", text)]  # not str.splitlines: U+2028 is text
    prompts = [line for line in prompts if line and not line.startswith("#")]
    if not prompts:
        raise GenerateError(f"{p}: no prompts (one per line; blank lines and # comments are skipped)")
    return prompts


def _check_prompt(prompt: str, what: str = "prompt") -> str:
    """``prompt`` if it is usable text; else a one-line error (empty, or not UTF-8: see ``dalle2.text_input``)."""
    from dalle2.text_input import TextError, check_text

    try:
        check_text(prompt, what)
    except TextError as error:
        raise GenerateError(str(error)) from None
    if not prompt.strip():
        raise GenerateError(f"empty {what}: give a description such as 'a red circle above a blue square'")
    return prompt


# ------------------------------------------------------------------------------------------- grids
def grid_columns(count: int) -> int:
    """Up to ``ROW_MAX`` tiles in one row; more in a square-ish grid."""
    return count if count <= ROW_MAX else math.ceil(math.sqrt(count))


def default_cell(resolution: int) -> int:
    """Displayed tile size: the output resolution, scaled by a whole number to at least 64 pixels."""
    return resolution * max(1, math.ceil(64 / resolution))


def rows_grid(images: Sequence[Any], prompts: Sequence[str], n: int, cell: int) -> Any:
    """One row of ``n`` tiles per prompt, the prompt written above its row."""
    from PIL import Image, ImageDraw, ImageFont

    from dalle2.grid import BACKGROUND, INK, image_grid, one_line

    rows = [image_grid(images[i * n : (i + 1) * n], ncols=n, cell=cell, pad=PAD) for i in range(len(prompts))]
    width = max(rows[0].width, MIN_CAPTION_WIDTH)
    sheet = Image.new("RGB", (width, sum(CAPTION_BAND + row.height for row in rows)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    y = 0
    for prompt, row in zip(prompts, rows, strict=True):
        prompt = text = one_line(prompt)  # a prompt may hold newlines or tabs
        while draw.textlength(text, font=font) > width - 8 and len(text) > 4:
            text = text[:-2]
        if text != prompt:
            text = text[:-1] + "…"
        draw.text((PAD + 2, y + 3), text, fill=INK, font=font)
        sheet.paste(row, (0, y + CAPTION_BAND))
        y += CAPTION_BAND + row.height
    return sheet


def _grid(images: Sequence[Any], cell: int, ncols: int | None = None) -> Any:
    from dalle2.grid import image_grid

    return image_grid(list(images), ncols=ncols or grid_columns(len(images)), cell=cell, pad=PAD)


def _as_input_tile(image: Any, resolution: int) -> Any:
    """The input image as the pipeline sees it: centre-cropped square at the output resolution."""
    from dalle2.data.base import resize_center_crop

    return resize_center_crop(image.convert("RGB"), resolution)


def _report(what: str, path: Path | str, count: int, pipe: Any, seed: int, seconds: float) -> None:
    rate = count / seconds if seconds > 0 else float("inf")
    r = pipe.resolution
    print(f"wrote {path}: {what}, {count} images of {r}x{r} (seed {seed}, {seconds:.1f} s, {rate:.2f} images/s)")


# ---------------------------------------------------------------------------------------- handlers
def cmd_generate(args: argparse.Namespace) -> None:
    many = len(args.prompt) > 1
    prompts = [_check_prompt(p, f"prompt {i}" if many else "prompt") for i, p in enumerate(args.prompt, start=1)]
    if args.prompts_file:
        prompts += read_prompts(args.prompts_file)
    if not prompts:
        raise GenerateError('give at least one prompt, e.g. dalle2 generate "a red circle" --model DIR')
    separate = args.separate or len(prompts) > MAX_GRID_PROMPTS
    folder_mode = _is_folder(args.output)
    count = len(prompts) * args.n
    paths = separate_paths(args.output, count) if separate else [grid_path(args.output, "out.png")]

    pipe = open_pipeline(args.model)
    unclip_options = {
        "steps": args.steps,
        "guidance": args.guidance,
        "sampler": args.sampler,
        "prior_steps": args.prior_steps,
        "prior_guidance": args.prior_guidance,
    }
    from tqdm import tqdm

    from dalle2.unclip_pipeline import UnclipPipeline

    start = time.monotonic()
    with tqdm(total=count, unit="img", desc="generate", disable=None if args.progress else True) as bar:
        if args.truncation is not None and getattr(pipe, "kind", None) != "gan":
            raise GenerateError(f"--truncation: only for GAN pipelines, not {args.model or 'the bundled unCLIP'}")
        if isinstance(pipe, UnclipPipeline):
            images = pipe(prompts, args.n, args.seed, **unclip_options, batch_size=args.batch_size, progress=bar)
        else:
            given = [name.replace("_", "-") for name, value in unclip_options.items() if value is not None]
            if given:
                raise GenerateError(f"--{', --'.join(given)}: only for unCLIP pipelines, not {args.model}")
            gan_options = {"truncation": args.truncation} if args.truncation is not None else {}
            images = pipe(prompts, n=args.n, seed=args.seed, **gan_options)
            bar.update(count)
    seconds = time.monotonic() - start
    cell = args.cell or default_cell(pipe.resolution)
    what = f"{len(prompts)} prompt{'s' if len(prompts) > 1 else ''} x {args.n}"
    if separate:
        if not args.separate:
            print(f"note: more than {MAX_GRID_PROMPTS} prompts, so one file per image (as with --separate)")
        records = []
        for k, (image, path) in enumerate(zip(images, paths, strict=True)):
            _save(image, path)
            records.append({"file_name": path.name, "text": prompts[k // args.n], "seed": args.seed, "index": k})
        index = paths[0].parent / ("metadata.jsonl" if folder_mode else f"{Path(args.output).stem}.jsonl")
        _write_jsonl_atomic(records, index)
        _report(what, f"{paths[0]} ... {paths[-1].name} and {index.name}", count, pipe, args.seed, seconds)
    else:
        if len(prompts) == 1:
            grid = _grid(images, cell)
        else:
            grid = rows_grid(images, prompts, args.n, cell)
        _save(grid, paths[0])
        _report(what, paths[0], count, pipe, args.seed, seconds)


def _bar(args: argparse.Namespace, what: str) -> Any:
    """A tqdm bar over the ``-n`` images of ``what`` (off with ``--no-progress`` or when not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=args.n, unit="img", desc=what, disable=None if args.progress else True)


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int_range(1, 4096), default=64, metavar="N", help="images sampled at once")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _open_image(path: str) -> Any:
    from dalle2.unclip_pipeline import open_image

    return open_image(Path(path).expanduser())


def cmd_vary(args: argparse.Namespace) -> None:
    image = _open_image(args.image)
    path = grid_path(args.output, "vary.png")
    pipe = open_pipeline(args.model, "vary")
    start = time.monotonic()
    with _bar(args, "vary") as bar:
        images = pipe.vary(
            image, args.n, args.seed, steps=args.steps, guidance=args.guidance, batch_size=args.batch_size, progress=bar
        )
    seconds = time.monotonic() - start
    tiles = [_as_input_tile(image, pipe.resolution), *images]
    _save(_grid(tiles, args.cell or default_cell(pipe.resolution)), path)
    _report(f"the input, then {args.n} variations", path, len(images), pipe, args.seed, seconds)


INTERPOLATE_MODES = (
    "give two images A B (unCLIP), --prompt TEXT (GAN: noise interpolation) or --from-prompt TEXT "
    "--to-prompt TEXT (GAN: text interpolation)"
)


def cmd_interpolate(args: argparse.Namespace) -> None:
    images_mode = args.a is not None or args.b is not None
    text_mode = args.from_prompt is not None or args.to_prompt is not None
    if images_mode + (args.prompt is not None) + text_mode != 1:
        raise GenerateError(f"interpolate one way at a time: {INTERPOLATE_MODES}")
    if images_mode:
        if args.a is None or args.b is None:
            raise GenerateError(f"only one image given: {INTERPOLATE_MODES}")
        _interpolate_images(args)
        return
    if text_mode and (args.from_prompt is None or args.to_prompt is None):
        raise GenerateError("text interpolation needs both --from-prompt and --to-prompt")
    for text, what in ((args.prompt, "--prompt"), (args.from_prompt, "--from-prompt"), (args.to_prompt, "--to-prompt")):
        if text is not None:
            _check_prompt(text, f"{what} text")
    path = grid_path(args.output, "interp.png")
    pipe = open_pipeline(args.model)
    feature = "interpolate_noise" if args.prompt is not None else "interpolate_text"
    if not callable(getattr(pipe, feature, None)):
        kind = getattr(pipe, "kind", type(pipe).__name__)
        raise GenerateError(
            f"{args.model} is a {kind!r} pipeline: interpolating prompts (--prompt, --from-prompt/--to-prompt) "
            "needs a GAN pipeline; interpolate two images A B instead"
        )
    given = [name for name in ("sample_steps", "guidance") if getattr(args, name) is not None]
    if given:
        raise GenerateError(f"--{', --'.join(g.replace('_', '-') for g in given)}: only for unCLIP pipelines")
    start = time.monotonic()
    if args.prompt is not None:
        images = pipe.interpolate_noise(args.prompt, args.frames, args.seed)
        what = f"{len(images)} steps through the noise of {args.prompt!r}"
    else:
        images = pipe.interpolate_text(args.from_prompt, args.to_prompt, args.frames, args.seed)
        what = f"{len(images)} steps from {args.from_prompt!r} to {args.to_prompt!r}"
    seconds = time.monotonic() - start
    _save(_grid(images, args.cell or default_cell(pipe.resolution), ncols=len(images)), path)
    _report(what, path, len(images), pipe, args.seed, seconds)


def _interpolate_images(args: argparse.Namespace) -> None:
    a, b = _open_image(args.a), _open_image(args.b)
    path = grid_path(args.output, "interp.png")
    pipe = open_pipeline(args.model)
    if not callable(getattr(pipe, "interpolate", None)):
        kind = getattr(pipe, "kind", type(pipe).__name__)
        hint = "; interpolate prompts with --prompt or --from-prompt/--to-prompt" if kind == "gan" else ""
        raise GenerateError(f"{args.model} is a {kind!r} pipeline, which has no image interpolation{hint}")
    start = time.monotonic()
    images = pipe.interpolate(a, b, args.frames, args.seed, sample_steps=args.sample_steps, guidance=args.guidance)
    seconds = time.monotonic() - start
    _save(_grid(images, args.cell or default_cell(pipe.resolution), ncols=len(images)), path)
    _report(f"{len(images)} steps from {args.a} to {args.b}", path, len(images), pipe, args.seed, seconds)


def cmd_text_diff(args: argparse.Namespace) -> None:
    _check_prompt(args.from_text, "--from text")
    _check_prompt(args.to_text, "--to text")
    if args.from_text.strip() == args.to_text.strip():
        raise GenerateError("--from and --to are the same text, so there is no direction to move the image in")
    image = _open_image(args.image)
    path = grid_path(args.output, "diff.png")
    pipe = open_pipeline(args.model, "text_diff")
    start = time.monotonic()
    images = pipe.text_diff(
        image,
        args.from_text,
        args.to_text,
        args.frames,
        args.seed,
        max_theta=args.max_theta,
        sample_steps=args.sample_steps,
        guidance=args.guidance,
    )
    seconds = time.monotonic() - start
    _save(_grid(images, args.cell or default_cell(pipe.resolution), ncols=len(images)), path)
    what = f"{len(images)} steps from {args.from_text!r} towards {args.to_text!r}"
    _report(what, path, len(images), pipe, args.seed, seconds)


def _center_square(image: Any) -> Any:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def cmd_edit(args: argparse.Namespace) -> None:
    _check_prompt(args.prompt)
    image, mask = _open_image(args.image), _open_image(args.mask)
    if image.size != mask.size:
        w, h = mask.size
        raise GenerateError(f"the mask is {w}x{h} but the image is {image.size[0]}x{image.size[1]}; they must match")
    # the pipeline centre-crops the image but resizes the whole mask: crop both alike first
    image, mask = _center_square(image), _center_square(mask)
    path = grid_path(args.output, "edit.png")
    pipe = open_pipeline(args.model, "edit")
    start = time.monotonic()
    with _bar(args, "edit") as bar:
        images = pipe.edit(
            image, mask, args.prompt, args.n, args.seed, steps=args.steps, guidance=args.guidance,
            batch_size=args.batch_size, progress=bar,
        )  # fmt: skip
    seconds = time.monotonic() - start
    tiles = [_as_input_tile(image, pipe.resolution), _mask_tile(mask, pipe.resolution), *images]
    _save(_grid(tiles, args.cell or default_cell(pipe.resolution)), path)
    _report(f"the input, the mask (white = edited), then {args.n} edits", path, len(images), pipe, args.seed, seconds)


def _mask_tile(mask: Any, resolution: int) -> Any:
    """The pixels ``edit`` regenerates at the output resolution (white), computed as the pipeline does."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from dalle2.unclip_pipeline import mask_to_edit_region

    region = torch.from_numpy(mask_to_edit_region(mask))[None, None]
    edited = F.interpolate(region, size=(resolution, resolution), mode="area")[0, 0] > 0
    return Image.fromarray(edited.numpy().astype("uint8") * 255, mode="L").convert("RGB")


# ------------------------------------------------------------------------------------ registration
GENERATE_HELP = """\
Make images from text with a pipeline folder: unCLIP (prompt -> CLIP text embedding -> prior -> decoder ->
upsampler) or GAN (prompt -> CLIP sentence embedding -> generator, one pass).

Writes one PNG grid: n images per prompt, one row per prompt with the prompt written above it (one prompt:
up to 8 images in a row, more in a square grid). With --separate, one PNG per image instead: -o out.png
gives out-000.png, out-001.png, ... (prompt-major) and out.jsonl; -o DIR/ gives DIR/000.png, ... and
DIR/metadata.jsonl (file_name, text, seed per image). More than 16 prompts imply --separate.
The same seed, prompts and settings give the same images."""

GENERATE_EXAMPLES = """\
examples:
  dalle2 generate "a red circle above a blue square" --model runs/shapes -n 8 -o circle.png
  dalle2 generate "a red circle" "a green triangle" --model runs/shapes -n 4 --seed 7 -o two.png
  dalle2 generate --prompts prompts.txt --model runs/shapes -n 1 -o samples/"""


def _add_model_options(p: argparse.ArgumentParser, output: str, output_help: str = "") -> None:
    p.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="pipeline folder (from `dalle2 train`), or a bundled model: unclip, gan (default: the bundled unclip)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=output,
        help=output_help or f"PNG file to write, or a folder to write {output} into (missing folders are created)",
    )
    p.add_argument("--seed", type=seed_value, default=0, help="random seed: the same seed gives the same images")
    p.add_argument(
        "--cell",
        type=int_range(8, 1024),
        metavar="PIXELS",
        help="displayed size of each grid tile (default: the output resolution, scaled up to >= 64)",
    )


def _add_decoder_options(p: argparse.ArgumentParser, name: str = "--steps") -> None:
    p.add_argument(name, type=sampling_steps, metavar="N", help="decoder sampling steps (default: the model's)")
    p.add_argument(
        "--guidance", type=guidance_scale, metavar="G", help="decoder guidance scale, 1 = none (default: the model's)"
    )


def register(commands: Any, add: AddCommand) -> None:
    """Add generate, vary, interpolate, text-diff and edit to the ``dalle2`` sub-commands."""

    def command(name: str, short: str, long: str, func: Callable[[argparse.Namespace], None], epilog: str = ""):
        p = add(commands, name, short, func)
        p.description, p.epilog, p.formatter_class = long, epilog or None, HelpFormatter
        return p

    p = command("generate", "make images from text prompts", GENERATE_HELP, cmd_generate, GENERATE_EXAMPLES)
    p.add_argument("prompt", nargs="*", metavar="PROMPT", help="text prompt(s); quote each one")
    p.add_argument(
        "--prompts",
        dest="prompts_file",
        metavar="FILE",
        help="also read prompts from FILE: one per line; blank lines and lines starting with # are skipped",
    )
    _add_model_options(
        p, "out.png", "PNG file, or a folder (writes out.png there; with --separate: 000.png, ...); see above"
    )
    p.add_argument("-n", type=int_range(1, 10_000), default=8, help="images per prompt")
    _add_decoder_options(p)
    p.add_argument("--sampler", choices=SAMPLERS, help="decoder sampler (default: the model's)")
    p.add_argument(
        "--prior-steps", type=sampling_steps, metavar="N", help="prior sampling steps (default: the model's)"
    )
    p.add_argument("--prior-guidance", type=guidance_scale, metavar="G", help="prior guidance (default: the model's)")
    p.add_argument(
        "--truncation",
        type=truncation_value,
        metavar="T",
        help="GAN only: redraw noise components beyond T (BigGAN's truncation trick; smaller = more typical, "
        "less varied; default: off)",
    )
    p.add_argument("--separate", action="store_true", help="one PNG per image instead of a grid")
    _add_batch_options(p)

    p = command(
        "vary",
        "make variations of an image",
        "Variations of an image: its CLIP image embedding decoded with fresh noise (stochastic DDIM).\n"
        "Writes a grid: the input (centre-cropped, at the output resolution) first, then the variations.",
        cmd_vary,
        "example:\n  dalle2 vary photo.png --model runs/shapes -n 4 -o vary.png",
    )
    p.add_argument("image", help="image file")
    _add_model_options(p, "vary.png")
    p.add_argument("-n", type=int_range(1, 1000), default=4, help="number of variations")
    _add_decoder_options(p)
    _add_batch_options(p)

    p = command(
        "interpolate",
        "blend two images (unCLIP), or walk a GAN's noise or text space",
        "Interpolate, writing one row of --steps images (the start first). One of:\n"
        "  A B                      unCLIP: slerp from image A's CLIP image embedding to B's, every step\n"
        "                           decoded from the same noise (deterministic DDIM)\n"
        "  --prompt TEXT            GAN: one prompt, the noise slerped between two draws from --seed\n"
        "  --from-prompt TEXT --to-prompt TEXT\n"
        "                           GAN: one noise (from --seed), the CLIP sentence embedding slerped\n"
        "                           from the first prompt's to the second's",
        cmd_interpolate,
        "examples:\n  dalle2 interpolate a.png b.png --model runs/shapes --frames 8 -o interp.png\n"
        '  dalle2 interpolate --model runs/gan --prompt "a red circle" --frames 8\n'
        '  dalle2 interpolate --model runs/gan --from-prompt "a red circle" --to-prompt "a blue square"',
    )
    p.add_argument("a", metavar="A", nargs="?", help="first image file (unCLIP)")
    p.add_argument("b", metavar="B", nargs="?", help="second image file (unCLIP)")
    p.add_argument("--prompt", metavar="TEXT", help="GAN: interpolate the noise under this prompt")
    p.add_argument("--from-prompt", metavar="TEXT", help="GAN: interpolate the text from this prompt ...")
    p.add_argument("--to-prompt", metavar="TEXT", help="... to this one")
    _add_model_options(p, "interp.png")
    p.add_argument("--frames", type=int_range(2, 64), default=8, help="number of images along the way, ends included")
    p.add_argument("--steps", dest="frames", type=int_range(2, 64), help=argparse.SUPPRESS)  # the old name of --frames
    _add_decoder_options(p, "--sample-steps")

    p = command(
        "text-diff",
        "change an image along a text direction",
        "Text diffs (DALL·E 2 paper, section 3): rotate the image's CLIP embedding towards the normalised\n"
        "difference of the --to and --from text embeddings, angle 0 to --max-theta, each step decoded from\n"
        "the same noise. Writes one row of --frames images, the unchanged image's decoding first.",
        cmd_text_diff,
        'example:\n  dalle2 text-diff shape.png --from "a red circle" --to "a blue circle" --model runs/shapes',
    )
    p.add_argument("image", help="image file")
    p.add_argument("--from", dest="from_text", required=True, metavar="TEXT", help="text describing the image now")
    p.add_argument("--to", dest="to_text", required=True, metavar="TEXT", help="text describing the change")
    _add_model_options(p, "diff.png")
    p.add_argument("--frames", type=int_range(2, 64), default=6, help="number of images, the unchanged one included")
    p.add_argument("--steps", dest="frames", type=int_range(2, 64), help=argparse.SUPPRESS)  # the old name of --frames
    p.add_argument("--max-theta", type=_unit_interval, default=0.5, help="largest rotation (fraction of 90 degrees)")
    _add_decoder_options(p, "--sample-steps")

    p = command(
        "edit",
        "repaint the masked part of an image from a prompt",
        "Inpainting: regenerate the masked part of IMAGE from PROMPT; every other pixel is kept exactly (at\n"
        "the output resolution; non-square images are centre-cropped first). MASK has IMAGE's size: with an\n"
        "alpha channel, fully transparent pixels are edited (OpenAI's convention); without one, white\n"
        "(luminance >= 128) pixels are edited. Writes a grid: the input, the edited region (white), the edits.",
        cmd_edit,
        'example:\n  dalle2 edit scene.png mask.png "a green triangle" --model runs/shapes -n 4 -o edit.png',
    )
    p.add_argument("image", help="image file")
    p.add_argument("mask", help="mask image file (same size as IMAGE)")
    p.add_argument("prompt", help="what to paint into the masked region")
    _add_model_options(p, "edit.png")
    p.add_argument("-n", type=int_range(1, 1000), default=4, help="number of edits")
    _add_decoder_options(p)
    _add_batch_options(p)
