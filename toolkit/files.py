"""Atomic file writes: a reader never sees half a file, and a failed write leaves the old one.

Every artefact, report and plot rtk writes goes through :func:`staged`: the data lands in a
temporary file in the destination folder and is renamed onto the destination only once it is
complete. The file gets the permissions a plain ``open()`` would give it (0666 less the umask),
not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from toolkit.errors import RtkError


@contextlib.contextmanager
def staged(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside ``path``, renamed onto it when the block succeeds, removed when it fails.

    Raises:
        RtkError: ``path`` is a folder, or its folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise RtkError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RtkError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | memoryview | str) -> Path:
    """Write ``data`` (bytes-like, or ``str`` as UTF-8) to ``path`` atomically, flushed to disk; returns the path."""
    with staged(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
