"""Files a user owns: never overwritten by mistake, never left half-written.

Every artefact, report and plot rtk writes goes through :func:`staged` (a folder of files through
:func:`staged_folder`): the data lands in a temporary file in the destination folder and is
renamed onto the destination only once it is complete. The file gets the permissions a plain
``open()`` would give it (0666 less the umask), not ``mkstemp``'s private 0600. An
operating-system error on the way (disk full, name too long, read-only file system, no
permission) becomes one sentence naming the path, and the temporary file is removed.

Before any work, every command that writes passes its outputs and inputs to
:func:`check_outputs`, the one guard: it refuses an output that is one of the inputs, or an image
in a folder being read (both compared after following symlinks, the output's too, and hard
links), an artefact at that path that rtk did not write (an ONNX file without rtk's metadata, an
engine without its sidecar), and a suffix that names another format than the one written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from toolkit.core.errors import RtkError
from toolkit.core.files import USER_ERRNOS, not_regular, os_error
from toolkit.core.images import is_image_path


@dataclass(frozen=True)
class Output:
    """A file a command is about to write, as :func:`check_outputs` checks it.

    Attributes:
        path: where it goes.
        flag: the option that named it (``--output``), for the message.
        suffixes: the suffixes (lower case, with the dot) its format may carry; ``""`` allows
            none; empty: any suffix.
        format: what is written, e.g. ``"ONNX"``, for the message.
        written_by_rtk: for an artefact rtk can recognise as its own, whether an existing file at
            ``path`` is one (an ONNX file carries rtk's metadata, an engine its sidecar); a file
            that is not is never replaced. ``None``: any file there may be replaced (a report).
    """

    path: Path
    flag: str = "--output"
    suffixes: tuple[str, ...] = ()
    format: str = ""
    written_by_rtk: Callable[[Path], bool] | None = None


def check_outputs(outputs: Iterable[Output | None], inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse, before any work is done, outputs that would destroy an input or a file rtk did not
    write, or lie about their format.

    An output is refused when it is one of the inputs (compared after following symlinks, and
    as the same file on disk where both exist, so hard links count); when it, or the file it
    links to, is an image inside an input folder (a folder of images being read); when it is an
    existing artefact rtk did not write (:attr:`Output.written_by_rtk`); or when its suffix is not
    one of its format's.

    Args:
        outputs: the files to be written (``None`` entries are skipped).
        inputs: the files and folders the command reads (``None`` entries are skipped).

    Raises:
        RtkError: naming the output, the option and the input or file it would overwrite.
    """
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
        # A symlink is checked as the file it points to too: `-o out.jsonl` linking to an image read.
        target = _resolve(path)
        for source in sources:
            if _same_file(path, source):
                raise RtkError(f"refusing {out.flag} {path}: it is the input {source}, which would be overwritten")
            if (is_image_path(path) or is_image_path(target)) and _is_folder(source) and is_inside(path, source):
                where = f"links to {target}, in" if path.is_symlink() else "lies in"
                raise RtkError(f"refusing {out.flag} {path}: it {where} the image folder {source}, which is being read")
        if out.written_by_rtk is not None and _is_file(path) and not out.written_by_rtk(path):
            raise RtkError(
                f"refusing {out.flag} {path}: it exists and was not written by rtk, so it is not overwritten; "
                f"move it away or choose another {out.flag}"
            )


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def check_output_folder(folder: str | os.PathLike, flag: str) -> Path:
    """A folder a command will write several files into: it may not exist yet, but it must be able to.

    Raises:
        RtkError: it is a file, lies below a file, or its nearest existing folder cannot be written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RtkError(f"{flag} {folder} is a file; give a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RtkError(f"{flag} {folder} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RtkError(f"{flag} {folder} cannot be written: no permission to write in {existing}")
    return folder


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
        raise os_error(OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)), path, "write")


def _is_special(path: Path) -> bool:
    # /dev/stdout, /dev/null or a named pipe: written through, whatever their name says.
    return not_regular(path) is not None


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a name too long to resolve, a symlink loop: compare it as written
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
        raise os_error(exc, path, "write") from None
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
        raise os_error(exc, path, "write") from None
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


def json_ready(value: Any) -> Any:
    """``value`` with every float that is not finite, at any depth, replaced by ``None``.

    JSON has no NaN or infinity (Python's ``json`` writes them as the invalid ``NaN``); a metric
    that is not finite (the error of an engine that computed NaN) is written as ``null``, and the
    report says why beside it.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def json_text(value: Any, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as valid JSON text (:func:`json_ready`), ending in a newline when indented.

    ``default`` turns what JSON cannot hold (a path, say) into what it can, as for :func:`json.dumps`.
    """
    text = json.dumps(json_ready(value), indent=indent, allow_nan=False, default=default)
    return text + "\n" if indent is not None else text


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a report or result text where the user pointed it: atomically (:func:`write_atomic`) to
    a file, straight through to a device or pipe (``/dev/stdout``, ``/dev/null``, a named pipe),
    which renaming over would replace with a plain file.

    Raises:
        RtkError: ``path`` is a folder, or the operating system refuses the write.
    """
    path = Path(path)
    if path.is_dir():
        raise RtkError(f"{path} is a folder; give a file name for the output")
    if not (path.exists() and not path.is_file()):
        return write_atomic(path, text)
    try:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    except OSError as exc:  # /dev/full: no space left on device
        raise os_error(exc, path, "write") from None
    return path


@contextlib.contextmanager
def staged_folder(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new hidden folder inside ``parent`` for files that must appear together, removed on exit.

    The caller fills it and renames what it holds (or the folder itself) into place; whatever is
    left when the block ends, whether it succeeded or not, is deleted. Like :func:`staged`, it is
    made readable as a plain ``mkdir`` would make it (``mkdtemp`` makes it private), so a server
    running as another user can load what is renamed out of it.

    Raises:
        RtkError: the folder cannot be made, or the operating system refuses a write in the block.
    """
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{prefix[:64]}.", suffix=".tmp", dir=parent))
        os.chmod(folder, 0o777 & ~_umask())
    except OSError as exc:
        raise os_error(exc, parent, "write") from None
    try:
        yield folder
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        raise os_error(exc, parent, "write") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file below ``folder`` to disk, before it is renamed into place."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
