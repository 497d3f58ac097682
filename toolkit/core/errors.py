"""The one exception type for user errors, and lazy imports of optional packages.

A :class:`RtkError` carries a message a user can act on. The CLI turns it into one red
line on stderr and exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import importlib
import json
import shlex
import urllib.parse
from pathlib import Path
from types import ModuleType


class RtkError(Exception):
    """A user-facing error: bad input, a missing optional package, a failed check."""


#: The distribution rtk is published as. The command is ``rtk`` and the import packages are
#: ``toolkit``, ``engines``, ``exporters`` and ``benchmarks``; ``rtk`` on the package index is another project.
DISTRIBUTION = "resnet-toolkit"

#: Optional module -> the extra of rtk's distribution that provides it (``onnxruntime``: the CPU build).
EXTRAS = {"tensorrt": "trt", "onnxruntime": "cpu", "tritonclient": "triton", "openvino": "openvino", "ray": "ray"}


@functools.lru_cache(maxsize=1)
def installed_from() -> Path | None:
    """The source checkout rtk runs from, or ``None`` when it was installed from a wheel.

    An editable install records its checkout in the distribution's ``direct_url.json``
    (PEP 610); code run from a checkout that is not installed at all (``PYTHONPATH``) is that
    checkout when a ``pyproject.toml`` naming :data:`DISTRIBUTION` sits above it.
    """
    from importlib import (
        metadata,  # its import pulls in the email package: only an install hint pays for it
    )

    # The first record an installer left (its INSTALLER file, PEP 376), in sys.path order: the
    # ``.egg-info`` folder an editable build leaves inside the checkout is metadata, not a record,
    # and the checkout is on sys.path whenever rtk runs from there.
    dist = next((d for d in metadata.distributions(name=DISTRIBUTION) if d.read_text("INSTALLER") is not None), None)
    if dist is None:
        root = Path(__file__).resolve().parents[2]
        project = root / "pyproject.toml"
        named = project.is_file() and f'name = "{DISTRIBUTION}"' in project.read_text(encoding="utf-8", errors="replace")
        return root if named else None
    try:
        record = json.loads(dist.read_text("direct_url.json") or "{}")
    except json.JSONDecodeError:
        return None
    url = record.get("url", "")
    if record.get("dir_info", {}).get("editable") and url.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    return None


def install_hint(extra: str) -> str:
    """The command that adds one of rtk's extras (``trt``, ``gpu``, ``openvino``…), for the way rtk is installed here.

    From a checkout: ``cd CHECKOUT && pip install -e '.[trt]'``; from a wheel: ``pip install 'resnet-toolkit[trt]'``.
    """
    checkout = installed_from()
    if checkout is not None:
        return f"cd {shlex.quote(str(checkout))} && pip install -e '.[{extra}]'"
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def module_install_hint(module: str) -> str:
    """The command that installs an optional module: rtk's extra that provides it, else the module by name."""
    top = module.split(".")[0]
    if top == "onnxruntime":
        return f"{install_hint('cpu')} (the gpu extra on an NVIDIA GPU)"
    return install_hint(EXTRAS[top]) if top in EXTRAS else f"pip install {top}"


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import an optional or heavy package on first use.

    Args:
        module: importable module name, e.g. ``"tensorrt"``.
        purpose: what it is needed for, used in the error message.

    Returns:
        The imported module.

    Raises:
        RtkError: the package is not installed; the message names the install command.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = module_install_hint(top)
        need = f" for {purpose}" if purpose else ""
        raise RtkError(f"{top} is needed{need} but is not installed ({exc}); install it with: {hint}") from None


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none), at most ``limit`` characters.

    Third-party errors often carry pages of context; a user-facing sentence quotes only their
    first line. A line too long is cut after its last whole sentence that fits, else after a
    whole word with an ellipsis: never mid-sentence silently.
    """
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    if line.endswith(":") and ". " in line:  # "… arguments. The following types are supported:" goes on below
        line = line[: line.rfind(". ") + 1]
    if len(line) <= limit:
        return line
    cut = line[:limit]
    end = cut.rfind(". ")
    if end >= limit // 3:  # whole sentences fit: keep them and drop the rest
        return cut[: end + 1]
    space = cut.rfind(" ", 0, limit - 1)
    return (cut[:space] if space > 0 else cut[: limit - 1]).rstrip(" ,;:") + "…"


def first_sentence(exc: BaseException | str, limit: int = 200) -> str:
    """The first sentence of an exception's first line, without its full stop (see :func:`first_line`).

    Libraries append advice to their first sentence ("... This can happen if ..."); a user-facing
    message quoting them in parentheses needs only what went wrong.
    """
    line = first_line(exc, limit)
    end = line.find(". ")
    return (line[:end] if end > 0 else line).rstrip(".")
