"""Uploaded PNG files: size cap, magic bytes, dimensions read from the header before decoding, safe decoding.

The PNG header (IHDR) is read by hand first, so an image that declares huge dimensions (a decompression bomb)
or is not square is refused without Pillow allocating anything: the cap, MAX_IMAGE_SIDE squared (16.8 M
pixels), is far below the 89 M pixels where Pillow's own bomb check starts. That check is still caught
(``DecompressionBombError``, and the warning where a caller's filters make it an error; the filters are not
changed here, as ``warnings.catch_warnings`` is not thread-safe and uploads are decoded in worker threads).
Pillow must then see the dimensions the header declared, and any decoding failure (truncated or corrupt
file) is a 400.
"""

from __future__ import annotations

import io
import struct

from PIL import Image

from dalle2.serve.errors import bad_request
from dalle2.serve.options import MAX_IMAGE_BYTES, MAX_IMAGE_SIDE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOT_PNG = "Uploaded image must be a PNG and less than 4 MB."
NOT_SQUARE = "Uploaded image must be square: its width and height must be equal."


def _label(param: str) -> str:
    return "image" if param == "image" else "mask"


def png_dimensions(data: bytes, param: str = "image") -> tuple[int, int]:
    """(width, height) from the IHDR chunk; 400 if ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        raise bad_request(NOT_PNG if param == "image" else f"Uploaded {param} must be a PNG and less than 4 MB.",
                          param, "invalid_image_format")  # fmt: skip
    return struct.unpack(">II", data[16:24])


def read_png(data: bytes, param: str = "image") -> Image.Image:
    """A checked, decoded upload: PNG, smaller than 4 MB, square, at most MAX_IMAGE_SIDE pixels a side."""
    label = _label(param)
    if len(data) >= MAX_IMAGE_BYTES:
        raise bad_request(f"Uploaded {label} must be a PNG and less than 4 MB.", param, "invalid_image_format")
    width, height = png_dimensions(data, param)
    if width == 0 or height == 0 or width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise bad_request(
            f"Invalid {label}: {width}x{height} pixels; the largest accepted is {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}.",
            param,
            "image_too_large",
        )
    if width != height:
        raise bad_request(NOT_SQUARE.replace("image", label, 1), param, "invalid_image_size")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.size != (width, height):
                raise ValueError(f"the header says {width}x{height}, the decoder {image.size[0]}x{image.size[1]}")
            image.load()
            return image.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise bad_request(f"Invalid {label}: the PNG is too large to decode.", param, "image_too_large") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as error:
        raise bad_request(
            f"Invalid {label}: the PNG file could not be decoded ({error}).", param, "invalid_image"
        ) from None


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def transparent_pixels(image: Image.Image) -> int:
    """How many pixels are fully transparent (alpha 0)."""
    if not has_alpha(image):
        return 0
    alpha = image.convert("RGBA").getchannel("A")
    return alpha.histogram()[0]
