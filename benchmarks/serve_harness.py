"""Shared by the serve benchmarks: the tiny test model, a ``dalle2 serve`` subprocess, raw HTTP requests.

The server runs as its own process (``python -m dalle2 serve``), so the load generator does not share its
GIL; it inherits this process's CPU affinity and environment (run the benchmarks under ``taskset`` /
``OMP_NUM_THREADS`` as you want the server to run).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(folder: Path) -> Path:
    """The tests' tiny unCLIP pipeline (16x16 decoder, 32x32 upsampler), trained into ``folder`` (~10 s)."""
    from dalle2.stages.image_stage import train_decoder, train_upsampler

    if (folder / "upsampler").is_dir():
        return folder
    shutil.copytree(ROOT / "tests" / "fixtures" / "unclip-tiny", folder, dirs_exist_ok=True)
    opts = {"out": str(folder), "preset": "tiny", "data": "shapes", "log_with": None, "progress": False, "quiet": True}
    train_decoder(**opts, overrides=["train.learning_rate=0.03"])
    train_upsampler(**opts)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``with Server([model], "--max-batch", "1") as server:`` a ``dalle2 serve`` process on a free port."""

    def __init__(self, models: list[str | Path], *options: str) -> None:
        self.port = free_port()
        self.args = [sys.executable, "-m", "dalle2", "serve", *map(str, models), "--port", str(self.port),
                     "--log-level", "warning", *options]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        self.log = tempfile.TemporaryFile()  # the server's output (one JSON line per request); closed in __exit__
        self.process = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError("the server exited:\n" + self.log.read()[-3000:].decode(errors="replace"))
            try:
                if request(self.port, "GET", "/healthz", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not start within 180 s")

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 120,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body or bytes). Pass ``connection`` to reuse a keep-alive connection."""
    own = connection is None
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        try:
            parsed: Any = json.loads(data)
        except ValueError:
            parsed = data
        return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
    finally:
        if own:
            conn.close()


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]  # fmt: skip
    for name, filename, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        parts.append((head + "Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def metric_sum(text: str, name: str) -> float:
    """Sum of a metric's samples over all labels in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def machine() -> dict[str, Any]:
    import platform

    import torch

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus_allowed": affinity,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count()}  # fmt: skip
