"""The one precision vocabulary: every option, engine name, exporter, sidecar and report draws on it.

A precision is ``fp32``, ``fp16``, ``bf16`` or ``int8``. Each place that takes one takes a subset,
declared here and nowhere else, so that a precision is spelt the same everywhere and a new one is
added in one place:

- :data:`RUNTIME_PRECISIONS`: what each runtime family runs (``rtk … -e ort-fp16``);
- :data:`ONNX_PRECISIONS`: what an ONNX file holds (``rtk export --precision``);
- :data:`ENGINE_PRECISIONS`: what a TensorRT engine is built at (``rtk build --precision``);
- :data:`RUN_TIME_PRECISIONS`: what ``rtk bench --precision`` applies to engines named without
  one (a precision a runtime reaches from the fp32 model at run time);
- :data:`TRITON_PRECISIONS`: what a Triton model repository serves.
"""

from __future__ import annotations

from enum import Enum
from typing import Iterable

from toolkit.core.errors import RtkError


class Precision(str, Enum):
    """A numeric precision; its value is its spelling in names, options and files."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"


#: Every precision, in the order options list them.
PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)

#: What each runtime family (:attr:`engines.names.EngineName.family`) can run.
RUNTIME_PRECISIONS: dict[str, tuple[str, ...]] = {
    "eager": ("fp32", "fp16", "bf16"),
    "ort": ("fp32", "fp16", "int8"),
    "ort-cuda": ("fp32", "fp16", "int8"),
    "ort-trt": ("fp32", "fp16", "int8"),
    # OpenVINO lowers precision at run time (fp16/bf16 where the CPU has the units) and runs QDQ files as int8.
    "ov": ("fp32", "fp16", "bf16", "int8"),
    "trt": ("fp32", "fp16", "int8"),
}
#: The precision a runtime family runs at when its name gives none: TensorRT builds fp16 engines
#: and ONNX Runtime's TensorRT provider adds fp16 kernels; the others run the model as it is.
DEFAULT_PRECISION: dict[str, str] = {"eager": "fp32", "ort": "fp32", "ort-cuda": "fp32", "ort-trt": "fp16", "ov": "fp32", "trt": "fp16"}

#: What an ONNX file holds: ``MODEL.onnx``, ``MODEL.fp16.onnx`` and the calibrated QDQ ``MODEL.int8.onnx``.
ONNX_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
#: What a TensorRT engine is built at (fp16 first: it is ``rtk build``'s default).
ENGINE_PRECISIONS: tuple[str, ...] = ("fp16", "fp32", "int8")
#: What a runtime reaches from the fp32 model at run time, without calibration data.
RUN_TIME_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
#: What a Triton model repository serves (an ONNX file or a TensorRT engine of either).
TRITON_PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
#: Precisions that need calibration data, so are judged on real labelled images rather than random ones.
CALIBRATED_PRECISIONS: tuple[str, ...] = ("int8",)


def check_precision(value: str, allowed: Iterable[str], what: str = "precision") -> str:
    """``value`` when it is one of ``allowed``.

    Raises:
        RtkError: naming ``what`` and the precisions it takes.
    """
    allowed = tuple(allowed)
    if value not in allowed:
        raise RtkError(f"{what} must be {listed(allowed)}, not {value!r}")
    return value


def listed(precisions: Iterable[str], conjunction: str = "or") -> str:
    """``fp32, fp16 or int8``: precisions in a sentence."""
    items = list(precisions)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}"
