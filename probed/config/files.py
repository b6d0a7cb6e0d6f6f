"""Files a config points at: opened without blocking, bounded, and only if they are regular files.

A path in a config can name a FIFO (opening it for reading blocks until a writer comes, hanging
`probed check`), a device (/dev/zero reads forever) or a file far larger than any token. Every
file the config reads goes through here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

import structlog

MAX_SECRET_BYTES: Final = 64 * 1024
_warned: set[str] = set()


class FileRefused(Exception):
    """The file is not one a config may read; the message says why, for an SRE."""


def _refusal(path: Path, mode: int) -> Exception | None:
    if stat.S_ISDIR(mode):
        return IsADirectoryError(21, "Is a directory")
    if not stat.S_ISREG(mode):
        return FileRefused(f"{path} is not a regular file (a FIFO, device or socket)")
    return None


def _open_regular(path: Path) -> int:
    """A descriptor of `path` if it is a regular file, else FileRefused or OSError."""
    # O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    refusal = _refusal(path, os.fstat(fd).st_mode)
    if refusal is not None:
        os.close(fd)
        raise refusal
    return fd


def check_regular(path: Path) -> None:
    """Raise (FileRefused or OSError) unless `path` is a readable regular file."""
    os.close(_open_regular(path))


def read_secret(path: Path, limit: int = MAX_SECRET_BYTES) -> bytes:
    """A secret file's bytes, read with a bound; warns once if others may read it."""
    fd = _open_regular(path)
    try:
        mode = os.fstat(fd).st_mode
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileRefused(f"{path} is larger than {limit // 1024} KiB; it cannot be a token")
    if mode & (stat.S_IRGRP | stat.S_IROTH) and str(path) not in _warned:
        _warned.add(str(path))
        structlog.get_logger().warning(
            "secret file is readable by group or others; chmod 600 it",
            component="config",
            path=str(path),
            mode=oct(stat.S_IMODE(mode)),
        )
    return data
