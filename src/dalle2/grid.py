"""Image grids with numbered cells and a caption sheet under them (dataset previews, samples, eval)."""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def image_grid(
    images: Sequence[Image.Image], ncols: int | None = None, cell: int | None = None, pad: int = 2
) -> Image.Image:
    """Tile images in a grid (row-major); ``cell`` upsizes each image with nearest-neighbour (pixels stay honest)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    ncols = ncols or math.ceil(math.sqrt(len(images)))
    nrows = math.ceil(len(images) / ncols)
    size = cell or max(im.width for im in images)
    grid = Image.new("RGB", (ncols * (size + pad) + pad, nrows * (size + pad) + pad), BACKGROUND)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        grid.paste(
            im.convert("RGB").resize((size, size), Image.Resampling.NEAREST),
            (pad + c * (size + pad), pad + r * (size + pad)),
        )
    return grid


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines, tabs) as one space: PIL measures one line only."""
    return " ".join(text.split())


def captioned_grid(
    images: Sequence[Image.Image],
    captions: Sequence[str],
    ncols: int | None = None,
    cell: int = 96,
    marks: Sequence[str] | None = None,
) -> Image.Image:
    """A grid whose cells carry their number, with a sheet of numbered captions underneath.

    ``marks`` (optional, one per image) are short tags drawn after the number, e.g. "FAIL".
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    ncols = ncols or min(8, math.ceil(math.sqrt(len(images))))
    pad = 2
    grid = image_grid(images, ncols=ncols, cell=cell, pad=pad)
    label_font, text_font = _font(11), _font(12)
    draw = ImageDraw.Draw(grid)
    for i in range(len(images)):
        r, c = divmod(i, ncols)
        x, y = pad + c * (cell + pad), pad + r * (cell + pad)
        label = f"{i + 1}" + (f" {marks[i]}" if marks and marks[i] else "")
        box = draw.textbbox((x + 2, y + 1), label, font=label_font)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(255, 255, 255))
        draw.text((x + 2, y + 1), label, fill=(200, 0, 0) if marks and marks[i] else INK, font=label_font)

    # Caption sheet: numbered lines in as many columns as fit the grid's width.
    lines = [f"{i + 1}. {one_line(caption)}" for i, caption in enumerate(captions)]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = 16
    col_w = min(max(measure.textlength(line, font=text_font) for line in lines) + 16, max(grid.width, 300))
    ncol_text = max(1, int(max(grid.width, col_w) // col_w))
    rows = math.ceil(len(lines) / ncol_text)
    width = max(grid.width, int(col_w * ncol_text))
    sheet = Image.new("RGB", (width, grid.height + rows * line_h + 10), BACKGROUND)
    sheet.paste(grid, (0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(lines):
        col, row = divmod(i, rows)
        text = line
        while measure.textlength(text, font=text_font) > col_w - 8 and len(text) > 4:
            text = text[:-2]
        if text != line:
            text = text[:-1] + "…"
        draw.text((6 + col * col_w, grid.height + 5 + row * line_h), text, fill=INK, font=text_font)
    return sheet


def _create_temporary(folder: Path, suffix: str) -> tuple[int, Path]:
    """A new file in ``folder`` with a random name, created with mode 0666 less the process umask (the mode
    any other written file gets: 0644 normally; ``tempfile.mkstemp`` would make it 0600)."""
    while True:
        tmp = folder / f".{secrets.token_hex(8)}{suffix}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def save_image_atomic(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG through a temporary file and rename, so a crash never leaves half a file. The file gets
    the process umask's permissions, like every other file the command writes."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path.parent, ".tmp.png")
    os.close(fd)
    try:
        image.save(tmp, format="PNG")  # rewrites the file in place: its mode stays
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
