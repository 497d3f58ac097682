"""The one exception type for user errors, and lazy imports of optional packages.

A :class:`RtkError` carries a message a user can act on. The CLI turns it into one red
line on stderr and exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class RtkError(Exception):
    """A user-facing error: bad input, a missing optional package, a failed check."""


# Module name -> the pip command that provides it.
INSTALL_HINTS = {
    "tensorrt": "pip install 'rtk[trt]'",
    "onnxruntime": "pip install 'rtk[cpu]' (or 'rtk[gpu]' on an NVIDIA GPU)",
    "tritonclient": "pip install 'rtk[triton]'",
    "openvino": "pip install 'rtk[openvino]'",
    # Ray Data (and the pyarrow it brings); the package itself, so the hint holds under any distribution name.
    "ray": "pip install 'ray[data]>=2.40'",
}


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
        hint = INSTALL_HINTS.get(top, f"pip install {top}")
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
