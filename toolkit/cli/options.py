"""Options shared by the commands, so a flag means the same thing, with the same rule, everywhere.

A numeric option carries its rule (:func:`number_option`, with a rule from
:mod:`toolkit.core.validation`): a value outside it is a usage error (one line, exit status 64),
like an unknown option, refused while the command line is parsed, before any work, and the rule
is shown in ``--help``. A path is never tested by the parser (:func:`path_argument`), so what is
wrong with a file is said by rtk's readers, with exit status 1. Options that several commands
share are declared once here as ``Annotated`` aliases (:data:`DeviceOption`, :data:`EngineOption`…).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

import typer

from engines.names import ENGINE_HELP, EngineName, parse_engine, parse_engines
from toolkit.core.checkpoint import CheckpointOptions
from toolkit.core.errors import RtkError
from toolkit.core.precision import ENGINE_PRECISIONS, ONNX_PRECISIONS, RUN_TIME_PRECISIONS, TRITON_PRECISIONS
from toolkit.core.validation import COUNT, PART, Number, UsageError

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


def int_list(values: "str | Sequence[str] | None", flag: str, rule: Number = COUNT) -> tuple[int, ...]:
    """Integers from one comma-separated value or several (a repeatable flag), repeats dropped, order kept.

    ``None`` (the flag not given) is the empty tuple; a given flag must hold at least one number,
    and every number must follow ``rule``.

    Raises:
        UsageError: an entry is empty, not a whole number, or outside ``rule``.
    """
    if values is None:
        return ()
    texts = [values] if isinstance(values, str) else list(values)
    parts = [p.strip() for text in texts for p in str(text).split(",")]
    bad = [p for p in parts if not _follows_rule(p, rule)]
    if bad or not parts:
        kind = "positive integers" if rule.low == 1 else f"whole numbers {rule.brief()}"
        raise UsageError(f"{flag} takes comma-separated {kind} such as {int(rule.low or 0)},8; got {(bad or [''])[0]!r}")
    return tuple(dict.fromkeys(int(p) for p in parts))


def _follows_rule(text: str, rule: Number) -> bool:
    # ASCII digits only: str.isdigit() also accepts superscripts such as "²", which int() refuses.
    if not (text.isascii() and text.isdigit()):
        return False
    try:
        rule.check(int(text), "")
    except UsageError:
        return False
    return True


def _flag(param: Any) -> str:
    """The name a message gives an option: its long form (``--top-k``), or its name for an argument."""
    opts = list(getattr(param, "opts", None) or [])
    return next((o for o in opts if o.startswith("--")), opts[0] if opts else str(param.name))


def _follows(rule: Number) -> Callable[..., Any]:
    def callback(param: typer.CallbackParam, value: Any) -> Any:
        return rule.check(value, _flag(param))

    return callback


def number_option(rule: Number, *decls: str, help: str, **kwargs: Any) -> Any:
    """A typer option whose value must follow ``rule``: refused while the command line is parsed
    (a :class:`~toolkit.core.validation.UsageError`, exit status 64), and shown in ``--help``.

    The options objects the commands build check the same rule again, for Python callers.
    """
    # "[≥ 1]" is literal text to rich: a markup tag starts with a letter, "#", "/" or "@".
    return typer.Option(*decls, callback=_follows(rule), help=f"{help} [{rule.brief()}]", **kwargs)


def number_list_option(rule: Number, *decls: str, help: str, **kwargs: Any) -> Any:
    """A typer option of comma-separated whole numbers that must each follow ``rule`` (see :func:`int_list`)."""

    def callback(param: typer.CallbackParam, value: Any) -> Any:
        int_list(value, _flag(param), rule)
        return value

    return typer.Option(*decls, callback=callback, metavar="N[,N...]", help=f"{help} [each {rule.brief()}]", **kwargs)


def path_argument(**kwargs: Any) -> Any:
    """A typer argument naming a file or folder. The argument parser does not test whether it can
    be read: rtk's own readers do, so an operating-system refusal (no permission, a symlink loop)
    is one sentence with exit status 1, like every other error about the user's files."""
    return typer.Argument(readable=False, **kwargs)


def path_option(*decls: str, **kwargs: Any) -> Any:
    """A typer option naming a file or folder; not tested by the argument parser (see :func:`path_argument`)."""
    return typer.Option(*decls, readable=False, **kwargs)


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
    return _device(value, auto=False)


def check_auto_device(value: Optional[str]) -> Optional[str]:
    """Callback of the ``--device`` of ``rtk train`` and ``rtk demo``: ``auto`` (a GPU when there is one) too."""
    return _device(value, auto=True)


def _device(value: Optional[str], auto: bool) -> Optional[str]:
    if value is None:
        return None
    text = value.strip().lower()
    index = text.partition(":")[2]
    if text in ("cpu", "cuda") or (text.startswith("cuda:") and index.isascii() and index.isdigit()) or (auto and text == "auto"):
        return text
    raise typer.BadParameter(f"{value!r} is not a device; use {'auto, ' if auto else ''}{DEVICE_HELP}")


def _usage(check, value, param_hint: str | None = None):
    try:
        return check(value)
    except RtkError as exc:
        raise typer.BadParameter(str(exc), param_hint=param_hint) from None


# --- options that several commands share: the same flag, help and rule everywhere ------------------

#: The model a command reads (``rtk eval``, ``rtk bench``).
ModelArgument = Annotated[
    Path,
    path_argument(help="A checkpoint (.pth/.pt/.safetensors/.pt2…, or a Hugging Face model folder), ONNX file (.onnx) or TensorRT engine (.engine/.plan)."),
]
#: ``--device`` of the commands that run engines.
DeviceOption = Annotated[
    str, typer.Option("--device", callback=check_device, help=f"Where eager runs and which GPU the GPU engines use: {DEVICE_HELP}.")
]
#: ``--engine`` of the commands that run one engine (``rtk predict``, ``rtk eval``).
EngineOption = Annotated[
    Optional[str],
    typer.Option(
        "--engine", "-e", callback=check_engine, show_default=False,
        help=f"Engine: {ENGINE_HELP}. Default: the model file's own (.pth eager, .onnx ort, .engine trt). A checkpoint on "
        "ONNX Runtime or TensorRT is exported (and built) next to itself first, and reused while fresh.",
    ),
]
#: ``--engine`` of the commands that compare engines (``rtk bench``, ``rtk parity``).
EnginesOption = Annotated[
    Optional[str],
    typer.Option(
        "--engine", "--engines", "-e", callback=check_engines,
        help=f"Comma-separated engines: {ENGINE_HELP}; or all (one of every kind). From a checkpoint, the ONNX files and "
        "engines they run are exported (and built) next to it when missing or stale.",
    ),
]
#: ``--batch-size`` of the commands that feed an engine batches of images (``rtk predict``, ``rtk eval``).
BatchSizeOption = Annotated[Optional[int], number_option(COUNT, "--batch-size", "-b", help="Images per engine call.")]
#: ``--batch-size`` of the commands that sweep or compare several batch sizes (``rtk bench``, ``rtk parity``).
BatchSizesOption = Annotated[
    Optional[str], number_list_option(COUNT, "--batch-size", "--batch-sizes", "-b", help="Batch sizes, comma-separated.")
]
#: ``--max-samples`` of the commands that read a set of real images (``rtk eval``, ``rtk parity``).
MaxSamplesOption = Annotated[Optional[int], number_option(COUNT, "--max-samples", help="Use at most N images of the data.")]
#: ``--json``: the result as one JSON object on stdout.
JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON object instead of tables.")]
#: ``--data-root``, ``--download`` and ``--val-split``: where a built-in dataset lives and how a split is held out.
DataRootOption = Annotated[
    Optional[Path], path_option("--data-root", help="Where torchvision's datasets live. Default: ./data.", show_default=False)
]
DownloadOption = Annotated[bool, typer.Option("--download", help="Let torchvision download a missing built-in dataset.")]
ValSplitOption = Annotated[
    float, number_option(PART, "--val-split", help="Fraction held out for validation when the data has no val split (as in training).")
]


__all__ = [
    "DEVICE_HELP", "ENGINE_HELP", "BatchSizeOption", "BatchSizesOption", "DataRootOption", "DeviceOption", "DownloadOption",
    "EngineName", "EngineOption", "EnginesOption", "JsonOption", "MaxSamplesOption", "ModelArgument", "TrustPickleOption",
    "ValSplitOption", "Weights", "WeightsOption", "check_auto_device", "check_device", "check_engine", "check_engines",
    "checkpoint_options", "int_list", "number_list_option", "number_option", "path_argument", "path_option",
]
