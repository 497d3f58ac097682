"""The options that describe an ONNX file without rtk metadata, shared by every command that runs one.

``rtk parity``, ``bench``, ``predict``, ``eval``, ``build`` and ``export`` (int8) take the same four,
read with :func:`toolkit.core.foreign_onnx.foreign_meta`: what the graph says is read from it, these
give the rest, and one warning line says what was assumed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.core.artefacts import ONNX_SUFFIXES, artefact_suffix
from toolkit.core.console import warn
from toolkit.core.errors import RtkError
from toolkit.core.foreign_onnx import OnnxSpecHints, assumptions, foreign_meta
from toolkit.core.spec import ArtefactMeta
from toolkit.core.validation import COUNT, UsageError

_PANEL = "ONNX file without rtk metadata"

InputSizeOption = Annotated[
    Optional[str],
    typer.Option("--input-size", help="Its input's height and width, 224 or 224x192, when its graph leaves them open.", rich_help_panel=_PANEL, show_default=False),
]
ClassNamesOption = Annotated[
    Optional[str],
    typer.Option(
        "--class-names", help="Its class names, in output order: comma-separated, or a text file with one per line [default: class indices].",
        rich_help_panel=_PANEL, show_default=False,
    ),
]
MeanOption = Annotated[
    Optional[str],
    typer.Option("--mean", help="The per-channel mean it was trained with, on the 0..1 scale, e.g. 0.5,0.5,0.5 [default: ImageNet's].", rich_help_panel=_PANEL, show_default=False),
]
StdOption = Annotated[
    Optional[str],
    typer.Option("--std", help="The per-channel standard deviation it was trained with, e.g. 0.5,0.5,0.5 [default: ImageNet's].", rich_help_panel=_PANEL, show_default=False),
]


def onnx_meta(
    model: "str | os.PathLike | None", input_size: Optional[str], class_names: Optional[str], mean: Optional[str], std: Optional[str]
) -> ArtefactMeta | None:
    """The spec of ``model`` when it is an ONNX file without rtk metadata (saying on stderr what was assumed), else ``None``.

    Raises:
        UsageError: a value that does not parse or is out of range (``--std 0``).
        RtkError: a flag given for a model that is not such a file, or what :func:`~toolkit.core.foreign_onnx.foreign_meta` refuses.
    """
    hints = OnnxSpecHints(_size(input_size), _names(class_names), _floats(mean, "--mean"), _floats(std, "--std"))
    if model is None or artefact_suffix(model) not in ONNX_SUFFIXES or not Path(model).is_file():
        if hints.given:
            raise RtkError(f"{', '.join(hints.given)} describe an ONNX file without rtk metadata; {model} is not one, and its own spec is used")
        return None
    meta = foreign_meta(model, hints)
    if meta is not None:
        warn(assumptions(model, meta, hints))
    return meta


def _size(text: Optional[str]) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isascii() and p.strip().isdigit() and 0 < int(p) <= COUNT.high for p in parts):
        raise UsageError(f"--input-size takes a side or HEIGHTxWIDTH in pixels, such as 224 or 224x192; got {text!r}")
    sizes = [int(p) for p in parts]
    return (sizes[0], sizes[-1])


def _names(text: Optional[str]) -> tuple[str, ...] | None:
    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise RtkError(f"cannot read the class names in {path}: {getattr(exc, 'strerror', None) or exc}") from None
        names = [line.strip() for line in lines if line.strip()]
    else:
        names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError(f"--class-names {text!r} names no class")
    return tuple(names)


def _floats(text: Optional[str], flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers such as 0.5,0.5,0.5; got {text!r}") from None
    if not all(math.isfinite(v) for v in values) or len(values) not in (1, 3):
        raise UsageError(f"{flag} takes one finite number per channel (1 or 3); got {text!r}")
    if flag == "--std" and min(values) <= 0:  # pixels are divided by it
        raise UsageError(f"--std takes standard deviations above 0; got {text!r}")
    return values
