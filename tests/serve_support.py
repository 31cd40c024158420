"""Helpers for the server tests: a uvicorn server in a background thread, fake pipelines, PNG bytes."""

from __future__ import annotations

import io
import socket
import threading
import time
from typing import Any

from PIL import Image


class ServerThread:
    """``with ServerThread(app) as base_url:`` serves ``app`` on a free loopback port until the block ends."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def solid(color: tuple[int, int, int], size: int) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def prompt_color(prompt: str) -> tuple[int, int, int]:
    """A colour that identifies a prompt (fake pipelines draw it)."""
    h = sum(ord(c) * (i + 1) for i, c in enumerate(prompt))
    return (h % 251, (h // 251) % 251, (h // 63001) % 251)


class FakePipe:
    """A text-to-image pipeline that draws each prompt's colour, records its calls, and can be slow.
    ``kind="gan"`` (the default) has no ``vary``/``edit``, like the GAN pipeline."""

    kind = "gan"

    def __init__(self, resolution: int = 8, delay_s: float = 0.0) -> None:
        self.resolution = resolution
        self.delay_s = delay_s
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, prompts: str | list[str], n: int = 1, seed: int = 0) -> list[Image.Image]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        with self.lock:
            self.calls.append({"prompts": prompts, "n": n, "seed": seed})
        if self.delay_s:
            time.sleep(self.delay_s)
        return [solid(prompt_color(p), self.resolution) for p in prompts for _ in range(n)]

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "resolution": self.resolution}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def open_png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), data[:16]
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()
