"""Atomic file writes: a killed run never leaves half a file (used for every output and
checkpoint file)."""

from __future__ import annotations

import os
from pathlib import Path

from fedlease.errors import OutputError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` as a whole or not at all: temp file in the same folder, fsync, rename.
    The temp file is created like any new file (mode 0666 less the umask; ``tempfile`` would
    make it 0600 and the results unreadable to the user's colleagues)."""
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None


def atomic_write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
