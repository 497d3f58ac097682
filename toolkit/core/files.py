"""The user's files as rtk reads them: what a path is, and operating-system errors in one sentence.

A reader checks a path with :func:`readable_file` before opening it (a pipe would block, a device
never end); an operating-system error about the user's files (:data:`USER_ERRNOS`) becomes one
sentence naming the path (:func:`os_error`). Writing is :mod:`toolkit.core.outputs`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from toolkit.core.errors import RtkError

#: errno values that say something about the user's files or system, not about a bug in rtk.
USER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOSPC", "EDQUOT", "EFBIG", "ENAMETOOLONG", "EROFS", "EACCES", "EPERM", "ENOENT", "ENOTDIR",
        "EISDIR", "ELOOP", "EEXIST", "EBUSY", "ETXTBSY", "EIO", "ENXIO", "ENODEV", "EXDEV", "EMLINK",
    )
    if hasattr(errno, name)
)


def os_reason(exc: OSError) -> str:
    """The operating system's reason for ``exc``, as the middle of a sentence ("no space left on device")."""
    text = exc.strerror or (os.strerror(exc.errno) if exc.errno else "") or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def os_error(exc: OSError, path: str | os.PathLike | None = None, action: str = "write") -> RtkError:
    """One sentence for an operating-system error: ``cannot ACTION PATH: REASON``."""
    where = path if path is not None else exc.filename
    return RtkError(f"cannot {action} {where}: {os_reason(exc)}" if where is not None else f"cannot {action}: {os_reason(exc)}")


def not_regular(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists but is not a regular file (``"a named pipe"``, ``"a character device"``…), else ``None``.

    Reading a named pipe blocks and ``/dev/zero`` never ends, so readers refuse such paths up front.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: the reader's own error says which
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), None)


def readable_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a :class:`Path`, once it is known to be a non-empty regular file.

    Args:
        path: the file a command is about to read.
        what: what it should be, for the message (``"a checkpoint file"``, ``"an ONNX file"``).

    Raises:
        RtkError: missing, a folder, a pipe or device (reading would block or never end), or empty.
    """
    path = Path(path)
    if not path.exists():
        raise RtkError(f"{path} does not exist")
    if path.is_dir():
        raise RtkError(f"{path} is a folder, not {what}")
    if not_regular(path):
        raise RtkError(f"{path} is {not_regular(path)}, not {what}")
    if path.stat().st_size == 0:
        raise RtkError(f"{path} is empty (0 bytes), not {what}")
    return path
