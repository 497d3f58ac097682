"""One checkpoint file read into Python objects, safely, with every failure turned into one sentence.

- safetensors (``.safetensors``, or any file that starts with a safetensors header): read by the
  ``safetensors`` package: a JSON header and raw tensors, nothing to unpickle.
- everything else: ``torch.load(weights_only=True)``, which builds tensors, containers and the
  classes on torch's allowlist, plus the inert :data:`INERT_GLOBALS` (``argparse.Namespace``,
  in which timm's ``train.py`` saves its arguments). A file that names any other global is
  refused, naming it; a whole pickled model gets the advice to save its ``state_dict``.
- TorchScript and torch.export archives: their weights only, by :mod:`toolkit.core.archives`, which
  runs nothing from them.
- ``trust_pickle=True``: plain ``torch.load(weights_only=False)``, which runs whatever code the
  file names; only for files from a source the user trusts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

from toolkit.core.archives import archive_kind, read_archive
from toolkit.core.console import warn
from toolkit.core.errors import RtkError, first_line, first_sentence, require
from toolkit.core.files import USER_ERRNOS, os_error, os_reason, readable_file

#: Classes a weights-only load may build besides torch's own allowlist: plain attribute bags
#: that run no code when unpickled.
INERT_GLOBALS = (argparse.Namespace,)
#: The flag that loads a pickle by running its code, as the CLI spells it.
TRUST_FLAG = "--trust-pickle"
SAFETENSORS_SUFFIX = ".safetensors"
#: Where a safetensors file's string-to-string metadata sits in its header, and in what we return.
SAFETENSORS_METADATA = "__metadata__"


def read_checkpoint_file(path: str | os.PathLike, trust_pickle: bool = False) -> Any:
    """The objects a checkpoint file holds.

    Args:
        path: a torch file (zip or legacy pickle), a safetensors file, a TorchScript or
            torch.export archive.
        trust_pickle: unpickle anything the file names, running its code (a whole pickled model).

    Returns:
        What ``torch.load`` returns; for safetensors, the dict of tensors, with the header's
        metadata (if any) under :data:`SAFETENSORS_METADATA`, as the file itself lays it out; for
        an archive, its weights with the archive's kind under :data:`toolkit.core.archives.CONTAINER_KEY`.

    Raises:
        RtkError: missing, empty, truncated or foreign file; pickled code without ``trust_pickle``.
    """
    path = _existing_file(path)
    if path.name.lower().endswith(SAFETENSORS_SUFFIX) or _has_safetensors_header(path):
        return read_safetensors(path)
    kind = archive_kind(path)
    if kind is not None:
        check_zip_checksums(path)
        return read_archive(path, kind)
    return read_torch_file(path, trust_pickle)


def check_zip_checksums(path: Path) -> None:
    """Refuse a zip checkpoint whose bytes no longer match the CRC-32 each record was written with.

    torch's reader never checks them, so a flipped bit in a weight loads silently as a wrong
    weight. Reading every record once more costs about as much as the load itself from the page
    cache (for a 100 MB file, a few hundredths of a second). A record written without a checksum
    (CRC 0) is taken as it is. A file that is no readable zip is left to the loader, whose message
    says what is wrong with it.

    Raises:
        RtkError: naming the first record whose checksum does not match.
    """
    if not zipfile.is_zipfile(path):
        return
    record = "?"
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 or info.is_dir():
                    continue
                record = info.filename
                with archive.open(info) as fh:  # zipfile compares the CRC-32 when the record is read to its end
                    while fh.read(1 << 24):
                        pass
    except zipfile.BadZipFile as exc:
        if "CRC" not in str(exc):
            return
        raise RtkError(
            f"{path} is corrupt: the bytes of {record} no longer match the checksum (CRC-32) they were written "
            "with, so its weights would load damaged; restore the file from a good copy"
        ) from None
    except (OSError, EOFError, ValueError, NotImplementedError):
        return  # truncated or of a kind zipfile cannot read: torch's own message says what is wrong


def _existing_file(path: str | os.PathLike) -> Path:
    return readable_file(path, "a checkpoint file")


def _has_safetensors_header(path: Path) -> bool:
    """A safetensors file opens with the header's length (8 bytes, little-endian) and then ``{``."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 8 + struct.unpack("<Q", head[:8])[0] <= path.stat().st_size


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a safetensors file, with its metadata under :data:`SAFETENSORS_METADATA` when it has any."""
    safetensors = require("safetensors", "reading .safetensors files")
    path = _existing_file(path)
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as fh:
            tensors: dict[str, Any] = {name: fh.get_tensor(name) for name in fh.keys()}
            metadata = fh.metadata()
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise RtkError(f"{path} is not a readable safetensors file ({first_line(exc, 200)})") from None
    if metadata:
        tensors[SAFETENSORS_METADATA] = dict(metadata)
    return tensors


def read_torch_file(path: str | os.PathLike, trust_pickle: bool = False) -> Any:
    """``torch.load`` a file weights-only, every failure one sentence.

    With ``trust_pickle``, a file that the weights-only reader refuses for the Python objects it
    pickles is then loaded fully, running their code, with a warning; any other file is read as
    without it.
    """
    import torch

    path = _existing_file(path)
    check_zip_checksums(path)  # once: with trust_pickle the file may be loaded twice below
    try:
        return _torch_load(torch, path, weights_only=True)
    except pickle.UnpicklingError as exc:
        error, pickles_code = _unpickling_error(path, str(exc))
        if not (trust_pickle and pickles_code):
            raise error from None

    warn(f"{TRUST_FLAG}: loading {path} by running the code it pickles")
    try:
        return _torch_load(torch, path, weights_only=False)
    except (AttributeError, ImportError) as exc:
        # A class this Python cannot import: a model defined in the script that saved it, say.
        raise RtkError(
            f"{path} pickles objects whose code is not importable here ({first_line(exc, 200)}); load it where that "
            "code lives and save its weights with torch.save(model.state_dict(), …)"
        ) from None


def _torch_load(torch, path: Path, weights_only: bool) -> Any:
    try:
        with warnings.catch_warnings(), _inert_globals_allowed(torch):
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol N" on foreign pickles
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:  # no permission, an I/O error…
            raise os_error(exc, path, "read") from None
        # torch reports a cut-off zip as an OSError (EINVAL, from seeking past the end) or a
        # RuntimeError with advice after the first sentence; only that first sentence is quoted.
        text = f"reading it fails: {os_reason(exc)}" if type(exc) is OSError else _first_sentence(exc)
        if zipfile.is_zipfile(path) or _head(path) == b"PK\x03\x04" or "zip" in text.lower() or isinstance(exc, EOFError):
            raise RtkError(f"{path} is truncated or corrupt: it cannot be read as a checkpoint ({text})") from None
        raise RtkError(f"{path} is not a PyTorch checkpoint ({text})") from None
    except (IndexError, KeyError, TypeError, UnicodeDecodeError):
        # The weights-only unpickler trips over arbitrary bytes in these ways ("KeyError: 101"
        # for a text file): what the bytes are says more than the exception.
        raise RtkError(f"{path} is not a PyTorch checkpoint ({_what_bytes(path)})") from None


def _first_sentence(exc: BaseException) -> str:
    return first_sentence(exc) if str(exc).strip() else "unreadable"


def _head(path: Path, size: int = 4) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def _what_bytes(path: Path) -> str:
    """What a file that is no checkpoint holds, as far as its first bytes tell."""
    head = _head(path, 512)
    if head.startswith(b"\x93NUMPY"):
        return "it is a NumPy .npy array"
    return "it holds text" if _is_text(head) else "neither the zip archive nor the pickle torch.save writes"


@contextlib.contextmanager
def _inert_globals_allowed(torch) -> Iterator[None]:
    """Let the weights-only unpickler build :data:`INERT_GLOBALS`, for this load only where torch allows that."""
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch 2.5 and later
    if scoped is None:
        torch.serialization.add_safe_globals(list(INERT_GLOBALS))
        yield
        return
    with scoped(list(INERT_GLOBALS)):
        yield


def _unpickling_error(path: Path, text: str) -> tuple[RtkError, bool]:
    """Tell a pickle that references code apart from a file that is no pickle at all.

    torch's weights-only reader fails on both alike ("Unsupported operand …" for random bytes,
    a ``.npy`` file, or any pickle of protocol 4 and up), so its message alone cannot decide:
    the refusal is kept for files that really do name a Python global outside torch's allowlist.

    Returns:
        The error, and whether it is that refusal (which :data:`TRUST_FLAG` overrides).
    """
    import torch

    named = _GLOBAL_IN_MESSAGE.search(text)
    if named:
        unsafe = [named.group(1)]
        if zipfile.is_zipfile(path):  # the whole list tells a pickled model from other objects
            unsafe += _unsafe_globals_in_zip(torch, path)
    elif zipfile.is_zipfile(path):
        unsafe = _unsafe_globals_in_zip(torch, path)
    else:
        unsafe = _pickle_globals(path)
        if unsafe is None:
            return RtkError(f"{path} is not a PyTorch checkpoint ({_what_bytes(path)})"), False
        if not unsafe:
            return RtkError(f"{path} is a plain Python pickle, not a PyTorch checkpoint; save the weights with torch.save(model.state_dict(), …)"), False
    if not unsafe:
        reason = next((line.strip() for line in text.splitlines() if line.strip().startswith(("Unsupported", "Trying"))), first_line(text))
        return RtkError(f"{path} is not a PyTorch checkpoint rtk can read ({first_sentence(reason)})"), False
    # Unfamiliar names first: they are the ones worth a look.
    names = sorted(dict.fromkeys(unsafe), key=lambda g: g.startswith(_TRUSTED_MODULES))
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    trust = f"or, only if you trust where the file came from, pass {TRUST_FLAG}, which loads it by running its code"
    if any(name.startswith(_MODULE_CLASSES) for name in names):
        return RtkError(
            f"refusing to load {path}: it is a whole pickled model (torch.save(model); it references {shown}), and "
            f"unpickling it would run code from the file; save its weights instead with "
            f"torch.save(model.state_dict(), \"{path.stem}.pth\"), {trust}"
        ), True
    return RtkError(
        f"refusing to load {path}: it holds pickled Python objects beyond plain tensors and containers "
        f"(it references {shown}), which could run code when loaded; only weights-only checkpoints are read, {trust}"
    ), True


def _unsafe_globals_in_zip(torch, path: Path) -> list[str]:
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch 2.5 and later
    try:
        return list(find(path)) if find else []
    except (ValueError, RuntimeError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile):
        return []


# torch names the global it refused, e.g. "Unsupported global: GLOBAL posix.system was not an
# allowed global…" or "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")
# Modules whose globals ordinary checkpoints name; a refusal lists the other ones first.
_TRUSTED_MODULES = ("torch.", "collections.", "builtins.", "_codecs.", "numpy.")
# Where the classes of a pickled network live: every nn.Module pickles its torch.nn layers.
_MODULE_CLASSES = ("torch.nn.modules.", "torchvision.models.", "timm.models.")
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}


def _pickle_globals(path: Path) -> list[str] | None:
    """The globals (``module.name``) the first pickle in a file names, or ``None`` if it is no complete pickle.

    The opcodes are only parsed (``pickletools.genops``), never executed. ``STACK_GLOBAL`` takes
    its two names from the strings pushed just before it, possibly through the memo.
    """
    import pickletools

    found: list[str] = []
    strings: list[str | None] = []  # strings pushed so far; the last two name a STACK_GLOBAL
    memo: dict[int, str | None] = {}
    previous = None
    try:
        with open(path, "rb") as fh:
            for op, arg, _ in pickletools.genops(fh):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    found.append(".".join(str(s) for s in strings[-2:]))
                elif op.name in _STRING_OPS:
                    strings.append(arg if isinstance(arg, str) else arg.decode("latin-1") if isinstance(arg, bytes) else None)
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    strings.append(memo.get(int(arg)))
                elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    key = len(memo) if op.name == "MEMOIZE" else int(arg)
                    memo[key] = strings[-1] if previous in _STRING_OPS | {"GET", "BINGET", "LONG_BINGET"} and strings else None
                previous = op.name
                if op.name == "STOP":
                    return found
    except (ValueError, EOFError, pickle.UnpicklingError, UnicodeDecodeError):
        return None
    return None
