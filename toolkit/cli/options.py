"""Option parsers shared by the commands, so a flag means the same thing everywhere.

A bad value here is a usage error (one line, exit status 64), like an unknown option: it is
checked before the command does any work.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated, Optional, Sequence

import typer

from engines.names import ENGINE_HELP, EngineName, parse_engine, parse_engines
from toolkit.core.checkpoint import CheckpointOptions
from toolkit.core.errors import RtkError
from toolkit.core.precision import ENGINE_PRECISIONS, ONNX_PRECISIONS, RUN_TIME_PRECISIONS, TRITON_PRECISIONS

DEVICE_HELP = "cpu or cuda[:N]"


def choices(name: str, values: Sequence[str]) -> type[Enum]:
    """A ``str`` Enum of ``values`` for a typer option, so ``--help`` lists them and typer checks them."""
    return Enum(name, {value.replace("-", "_"): value for value in values}, type=str)


#: ``rtk bench --precision``: what a runtime reaches from the fp32 model at run time.
RunTimePrecision = choices("RunTimePrecision", RUN_TIME_PRECISIONS)
#: ``rtk export --precision``: the ONNX files, or all of them.
OnnxPrecision = choices("OnnxPrecision", (*ONNX_PRECISIONS, "all"))
#: ``rtk build --precision``: what a TensorRT engine is built at.
EnginePrecision = choices("EnginePrecision", ENGINE_PRECISIONS)
#: ``rtk triton --precision``: what a Triton model repository serves.
TritonPrecision = choices("TritonPrecision", TRITON_PRECISIONS)


class Weights(str, Enum):
    ema = "ema"
    raw = "raw"


#: ``--weights``, on every command that reads a checkpoint.
WeightsOption = Annotated[
    Weights,
    typer.Option(
        "--weights",
        help="Which weights of a checkpoint that holds two sets: ema, its exponential moving average (timm's "
        "state_dict_ema), taken when present; or raw, the trained weights themselves.",
    ),
]
#: ``--trust-pickle``, on every command that reads a checkpoint.
TrustPickleOption = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Load a checkpoint that pickles Python objects (a whole model saved with torch.save(model)) by RUNNING "
        "THE CODE IT NAMES. Only for a file from a source you trust; better, save model.state_dict() instead.",
    ),
]


def checkpoint_options(weights: Weights, trust_pickle: bool) -> "CheckpointOptions":
    """The :class:`~toolkit.core.checkpoint.CheckpointOptions` of ``--weights`` and ``--trust-pickle``."""

    return CheckpointOptions(weights=weights.value, trust_pickle=trust_pickle)


def int_list(values: "str | Sequence[str] | None", flag: str, minimum: int = 1) -> tuple[int, ...]:
    """Integers from one comma-separated value or several (a repeatable flag), repeats dropped, order kept.

    ``None`` (the flag not given) is the empty tuple; a given flag must hold at least one number.

    Raises:
        RtkError: an entry is empty or not a whole number of at least ``minimum``.
    """
    if values is None:
        return ()
    texts = [values] if isinstance(values, str) else list(values)
    parts = [p.strip() for text in texts for p in str(text).split(",")]
    # ASCII digits only: str.isdigit() also accepts superscripts such as "²", which int() refuses.
    bad = [p for p in parts if not (p.isascii() and p.isdigit()) or int(p) < minimum]
    if bad or not parts:
        kind = "positive integers" if minimum == 1 else f"integers of at least {minimum}"
        raise RtkError(f"{flag} takes comma-separated {kind} such as {minimum},8; got {(bad or [''])[0]!r}")
    return tuple(dict.fromkeys(int(p) for p in parts))


def _usage(check, value, param_hint: str | None = None):
    try:
        return check(value)
    except RtkError as exc:
        raise typer.BadParameter(str(exc), param_hint=param_hint) from None


def check_engine(value: Optional[str]) -> Optional[str]:
    """Callback of a single ``--engine``: the name must be in the grammar (the canonical spelling is returned)."""
    return None if value is None else _usage(lambda v: str(parse_engine(v)), value)


def check_engines(value: Optional[str]) -> Optional[str]:
    """Callback of a comma-separated ``--engine``: every name must be in the grammar (``all`` allowed)."""
    if value is None or not value.strip():
        return value
    _usage(parse_engines, value)
    return value


def check_device(value: Optional[str]) -> Optional[str]:
    """Callback of ``--device``: ``cpu``, ``cuda`` or ``cuda:N``."""
    if value is None:
        return None
    text = value.strip().lower()
    index = text.partition(":")[2]
    if text in ("cpu", "cuda") or (text.startswith("cuda:") and index.isascii() and index.isdigit()):
        return text
    raise typer.BadParameter(f"{value!r} is not a device; use {DEVICE_HELP}")


def check_finite(value: Optional[float]) -> Optional[float]:
    """Callback of a number flag: ``inf`` and ``nan`` parse as floats but pass every range check silently."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def check_positive(value: Optional[float]) -> Optional[float]:
    """Callback of a number flag that must be finite and above zero (a learning rate, a duration)."""
    if check_finite(value) is not None and value <= 0:
        raise typer.BadParameter(f"must be positive, got {value}")
    return value


def check_batch_sizes(value: Optional[str]) -> Optional[str]:
    """Callback of a comma-separated ``--batch-size`` list."""
    if value is not None:
        _usage(lambda v: int_list(v, "--batch-size"), value)
    return value


__all__ = [
    "DEVICE_HELP", "ENGINE_HELP", "EngineName", "TrustPickleOption", "Weights", "WeightsOption", "check_batch_sizes",
    "check_device", "check_engine", "check_engines", "check_finite", "check_positive", "checkpoint_options", "int_list",
]
