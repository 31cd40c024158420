"""The server's settings (``dalle2 serve`` options), in one dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MAX_IMAGE_BYTES = 4 * 1024 * 1024  # uploads must be smaller than this ("less than 4 MB")
MAX_JSON_BYTES = 1024 * 1024  # a generation request is a few hundred bytes
MAX_BODY_BYTES = 2 * MAX_IMAGE_BYTES + 1024 * 1024  # image + mask + form fields
MAX_IMAGE_SIDE = 4096  # larger uploads are refused before they are decoded (decompression bombs)


@dataclass
class ServeOptions:
    """``default_size``: "WxH", or None for each model's native output size.
    ``max_batch``: the most images one model call makes (a request is never split; 1 = no batching).
    ``max_wait_ms``: how long the first request of a batch waits for others to join it.
    ``queue_size``: requests waiting per model before new ones are refused with 429.
    ``timeout_s``: per request, from arrival to the finished images (503 after that).
    ``file_ttl_s``: how long ``response_format=url`` files are served.
    ``out``: folder for those files (None: a temporary folder, removed when the server stops).
    ``api_key``: when set, required as ``Authorization: Bearer KEY`` (see ``dalle2.serve.app``)."""

    default_size: str | None = None
    max_batch: int = 16
    max_wait_ms: float = 20.0
    queue_size: int = 64
    timeout_s: float = 120.0
    file_ttl_s: float = 3600.0
    out: Path | None = None
    api_key: str | None = None
