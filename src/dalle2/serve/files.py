"""The store behind ``response_format=url``: PNG files the server wrote, served until they expire.

Names are made here (128 random bits, ``uuid4().hex + ".png"``), so a URL is unguessable and a lookup only
ever accepts that exact shape: no other name, no separators, nothing outside the folder. Files older than
the time to live are refused and deleted; :meth:`FileStore.cleanup` (run periodically by the app) removes the
rest. Only files with such names are ever deleted, so a folder shared with anything else is safe.
A write that fails (a full disk, a folder made read-only) leaves nothing behind and raises
:class:`FileStoreError`, which the app answers with 507 ``insufficient_storage`` (disk full) or a 500 naming
the cause.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

NAME = re.compile(r"[0-9a-f]{32}\.png")
FULL = {errno.ENOSPC, errno.EDQUOT}


class FileStoreError(Exception):
    """A PNG could not be stored; ``full`` when the disk (or quota) is full, ``reason`` the OS's words."""

    def __init__(self, error: OSError) -> None:
        self.full = error.errno in FULL
        self.reason = error.strerror or type(error).__name__
        super().__init__(f"cannot store an image file: {self.reason}")


class FileStore:
    """PNG files in ``folder`` (None: a new temporary folder, removed by :meth:`close`)."""

    def __init__(self, folder: str | Path | None, ttl_s: float) -> None:
        self.temporary = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="dalle2-serve-")) if folder is None else Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ttl_s = float(ttl_s)

    def save(self, png: bytes) -> str:
        """Write one PNG atomically; returns its name. On any failure the temporary file is removed and
        :class:`FileStoreError` raised."""
        name = f"{uuid.uuid4().hex}.png"
        tmp = self.folder / f".{name}.tmp"
        try:
            tmp.write_bytes(png)
            os.replace(tmp, self.folder / name)
        except OSError as error:
            _unlink(tmp)
            raise FileStoreError(error) from error
        except BaseException:
            _unlink(tmp)
            raise
        return name

    def remove(self, name: str) -> None:
        """Delete a file this store made (nothing happens for other names or a missing file)."""
        if NAME.fullmatch(name):
            _unlink(self.folder / name)

    def path(self, name: str) -> Path | None:
        """The file for a name this store made and that has not expired; None otherwise."""
        if not NAME.fullmatch(name):
            return None
        path = self.folder / name
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        if age > self.ttl_s:
            path.unlink(missing_ok=True)
            return None
        return path

    def cleanup(self, now: float | None = None) -> int:
        """Delete expired files (and stale temporary ones); returns how many."""
        now = time.time() if now is None else now
        removed = 0
        for entry in os.scandir(self.folder):
            name = entry.name
            if not (NAME.fullmatch(name) or (name.startswith(".") and NAME.fullmatch(name[1:-4] or ""))):
                continue
            try:
                if now - entry.stat().st_mtime > self.ttl_s:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
        return removed

    def close(self) -> None:
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
