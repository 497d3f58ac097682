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


#: errno values only a write can meet: an error with one of them is "cannot write", wherever it surfaced.
WRITE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS") if hasattr(errno, name))


def os_error(exc: OSError, path: str | os.PathLike | None = None, action: str | None = None) -> RtkError:
    """One sentence for an operating-system error: ``cannot ACTION PATH: REASON``.

    Args:
        exc: the error.
        path: the path to name (default: the error's own file name).
        action: ``"read"``, ``"write"``…; by default ``"write"`` for the errors only a write
            meets (:data:`WRITE_ERRNOS`: no space, quota, file too large, read-only), else ``"use"``.
    """
    where = path if path is not None else exc.filename
    action = action or ("write" if exc.errno in WRITE_ERRNOS else "use")
    return RtkError(f"cannot {action} {where}: {os_reason(exc)}" if where is not None else f"cannot {action}: {os_reason(exc)}")


def not_regular(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists but is not a regular file (``"a named pipe"``, ``"a character device"``…), else ``None``.

    Reading a named pipe blocks and ``/dev/zero`` never ends, so readers refuse such paths up front.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: the reader's own error says which
    return _special_kind(mode)


def _special_kind(mode: int) -> str | None:
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), None)


def stat_for_reading(path: str | os.PathLike) -> os.stat_result:
    """``os.stat(path)``, every refusal one sentence: the path missing (or a symlink to nothing),
    or the operating system's reason (``cannot read X: permission denied``, a symlink loop…).

    Raises:
        RtkError: as above.
    """
    try:
        return os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise RtkError(f"{path} is a symlink to a missing file" if os.path.islink(path) else f"{path} does not exist") from None
        raise os_error(exc, path, "read") from None


def readable_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a :class:`Path`, once it is known to be a non-empty regular file this process can read.

    Args:
        path: the file a command is about to read.
        what: what it should be, for the message (``"a checkpoint file"``, ``"an ONNX file"``).

    Raises:
        RtkError: missing, a folder, a pipe or device (reading would block or never end), empty,
            or refused by the operating system (``cannot read X: permission denied``, a symlink loop…).
    """
    path = Path(path)
    info = stat_for_reading(path)
    if stat.S_ISDIR(info.st_mode):
        raise RtkError(f"{path} is a folder, not {what}")
    special = _special_kind(info.st_mode)
    if special:
        raise RtkError(f"{path} is {special}, not {what}")
    if info.st_size == 0:
        raise RtkError(f"{path} is empty (0 bytes), not {what}")
    try:  # the permission as the system applies it (access() asks about the real user, not the effective one)
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    return path


def readable_folder(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path`, once it is known to be a folder whose entries this process can list.

    Raises:
        RtkError: missing, not a folder, or refused by the operating system (``cannot read X: permission denied``).
    """
    path = Path(path)
    if not stat.S_ISDIR(stat_for_reading(path).st_mode):
        raise RtkError(f"{path} is not a folder")
    try:
        os.scandir(path).close()
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    return path


def is_utf8_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` is valid UTF-8. A name of other bytes reaches Python as text with surrogate
    escapes, which the runtimes' bindings (ONNX Runtime, OpenVINO) cannot take: they are handed
    the file's contents instead."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
