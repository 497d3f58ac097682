"""Files a user owns: never overwritten by mistake, never left half-written.

Every artefact, report and plot rtk writes goes through :func:`staged`: the data lands in a
temporary file in the destination folder and is renamed onto the destination only once it is
complete. The file gets the permissions a plain ``open()`` would give it (0666 less the umask),
not ``mkstemp``'s private 0600. An operating-system error on the way (disk full, name too long,
read-only file system, no permission) becomes one sentence naming the path, and the temporary
file is removed.

Before any work, a command passes its outputs and inputs to :func:`check_outputs`, which
refuses an output that is one of the inputs (or an image in a folder being read) or whose
suffix names another format than the one written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

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


@dataclass(frozen=True)
class Output:
    """A file a command is about to write, as :func:`check_outputs` checks it.

    Attributes:
        path: where it goes.
        flag: the option that named it (``--output``), for the message.
        suffixes: the suffixes (lower case, with the dot) its format may carry; ``""`` allows
            none; empty: any suffix.
        format: what is written, e.g. ``"ONNX"``, for the message.
    """

    path: Path
    flag: str = "--output"
    suffixes: tuple[str, ...] = ()
    format: str = ""


def check_outputs(outputs: Iterable[Output | None], inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse, before any work is done, outputs that would destroy an input or lie about their format.

    An output is refused when it is one of the inputs (compared after following symlinks, and
    as the same file on disk where both exist, so hard links count), when it is an image file
    inside an input folder (a folder of images being read), or when its suffix is not one of
    its format's.

    Args:
        outputs: the files to be written (``None`` entries are skipped).
        inputs: the files and folders the command reads (``None`` entries are skipped).

    Raises:
        RtkError: naming the output, the option and the input it would overwrite.
    """
    from toolkit.core.images import is_image_path

    sources = [Path(p) for p in inputs if p is not None and str(p) not in ("", "-")]
    for out in outputs:
        if out is None:
            continue
        path = Path(out.path)
        _check_name_length(path)
        suffix = path.suffix.lower()
        if out.suffixes and suffix not in out.suffixes and not _is_special(path):
            allowed = " or ".join(s or "no suffix" for s in out.suffixes)
            raise RtkError(
                f"refusing {out.flag} {path}: it would hold {out.format or 'another format'}, whose files end in {allowed}, "
                f"not {suffix or 'no suffix'}"
            )
        for source in sources:
            if _same_file(path, source):
                raise RtkError(f"refusing {out.flag} {path}: it is the input {source}, which would be overwritten")
            if is_image_path(path) and _is_folder(source) and is_inside(path, source):
                raise RtkError(f"refusing {out.flag} {path}: it lies in the image folder {source}, which is being read")


def _check_name_length(path: Path) -> None:
    """A name longer than its file system allows fails now, not after the work at the final rename."""
    folder = path.parent
    while not _is_folder(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return
    too_long = next((part for part in path.parts if len(os.fsencode(part)) > limit), None)
    if too_long is not None:
        raise os_error(OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)), path)


def _is_special(path: Path) -> bool:
    # /dev/stdout, /dev/null or a named pipe: written through, whatever their name says.
    return not_regular(path) is not None


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:  # a name too long to resolve: compare it as written
        return Path(os.path.abspath(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass  # one of them does not exist (yet): compare the resolved names
    return _resolve(a) == _resolve(b)


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` lies somewhere below ``folder``, after following symlinks."""
    return _resolve(Path(folder)) in _resolve(Path(path)).parents


@contextlib.contextmanager
def staged(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside ``path``, renamed onto it when the block succeeds, removed when it fails.

    Raises:
        RtkError: ``path`` is a folder or a device, its folder cannot be created or written, or the
            operating system refuses the write (no space left, name too long, read-only…).
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise RtkError(f"cannot write {path}: it is a folder")
        if not_regular(path):  # renaming onto /dev/null or a pipe would replace it with a plain file
            raise RtkError(f"cannot write {path}: it is {not_regular(path)}, not a file")
        path.parent.mkdir(parents=True, exist_ok=True)
        # The name is cut so that a destination name near the 255-byte limit still gets a temporary one.
        fd, name = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise os_error(exc, path) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        # Disk full, quota, read-only… while the file was being written: name the destination,
        # not the temporary file, which is removed below.
        raise os_error(exc, path) from None
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
