"""The one engine vocabulary every command speaks: ``eager-fp16-cl``, ``ort-cuda-fp16``, ``trt``.

A name is ``RUNTIME[-PROVIDER][-PRECISION][-FLAG…]``:

- runtime: ``eager`` (PyTorch), ``ort`` (ONNX Runtime), ``ov`` (OpenVINO, CPU) or ``trt`` (TensorRT);
- provider, ONNX Runtime only: ``cuda`` or ``trt`` (its execution providers; the CPU when absent);
- precision: ``fp32``, ``fp16``, ``bf16`` or ``int8`` (a calibrated QDQ ONNX, ``MODEL.int8.onnx``);
  absent means the runtime's default, which
  :data:`DEFAULT_PRECISION` lists (fp16 for TensorRT, fp32 elsewhere), or for an ONNX file named
  directly, the precision it was exported at;
- flags: eager's ``cl`` (channels-last), ``compile`` (``torch.compile``) and ``graph`` (CUDA graph
  replay, benchmarks only); OpenVINO's ``latency`` and ``throughput`` (its performance hint at every
  batch size, instead of latency for small batches and throughput streams for large ones).

``str()`` of a parsed name is its canonical spelling, with a default precision left out, and is
what an engine calls itself, so a row in a report can be asked for again by its name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from toolkit.core.errors import RtkError
from toolkit.core.precision import DEFAULT_PRECISION, PRECISIONS, RUNTIME_PRECISIONS, listed

RUNTIMES = ("eager", "ort", "ov", "trt")
ORT_PROVIDERS = ("cpu", "cuda", "trt")
EAGER_FLAGS = ("cl", "compile", "graph")
#: OpenVINO's performance hints (``auto``, the default, is named by no flag).
OV_HINTS = ("latency", "throughput")
#: The flags each runtime takes.
FLAGS = {"eager": EAGER_FLAGS, "ov": OV_HINTS}
#: What ``all`` stands for: one engine of every kind. The int8 engines are not in it: their ONNX
#: needs calibration data, so it is never exported on demand (``rtk export --precision int8 --calib``).
ALL_ENGINES = (
    "eager", "eager-fp16", "eager-bf16", "eager-cl", "eager-compile", "eager-graph",
    "ort", "ort-fp16", "ort-cuda", "ort-trt", "ov", "ov-fp16", "ov-bf16", "trt",
)
#: The runtime an artefact gets when no engine is named.
DEFAULT_ENGINE = {"checkpoint": "eager", "onnx": "ort", "engine": "trt"}
#: One line for ``--help`` texts.
ENGINE_HELP = (
    "eager, ort, ov or trt, optionally with an ONNX Runtime provider (ort-cuda, ort-trt), a precision (-fp32, -fp16, -bf16, "
    "-int8), eager flags (-cl, -compile, -graph) and an OpenVINO hint (-latency, -throughput): e.g. eager-fp16-cl, ort-fp16, "
    "ort-int8, ort-cuda-fp16, ov-int8, trt-fp32"
)


@dataclass(frozen=True)
class EngineName:
    """A parsed engine name.

    Attributes:
        runtime: ``eager``, ``ort``, ``ov`` or ``trt``.
        provider: ONNX Runtime's execution provider (``cpu``, ``cuda``, ``trt``); ``None`` otherwise.
        precision: ``fp32``, ``fp16``, ``bf16``, ``int8``, or ``None`` for the default (see :attr:`resolved_precision`).
        channels_last, compile, cuda_graph: eager flags.
        hint: OpenVINO's performance hint (``latency`` or ``throughput``); ``None`` for its ``auto``.
    """

    runtime: str
    provider: str | None = None
    precision: str | None = None
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False
    hint: str | None = None

    @property
    def family(self) -> str:
        """The runtime with its provider: ``eager``, ``ort``, ``ort-cuda``, ``ort-trt``, ``ov`` or ``trt``."""
        return self.runtime if self.provider in (None, "cpu") else f"{self.runtime}-{self.provider}"

    @property
    def resolved_precision(self) -> str:
        """The precision asked for, or the runtime's default."""
        return self.precision or DEFAULT_PRECISION[self.family]

    @property
    def artefact(self) -> str:
        """The artefact kind this runtime runs: ``checkpoint``, ``onnx`` or ``engine``."""
        return {"eager": "checkpoint", "ort": "onnx", "ov": "onnx", "trt": "engine"}[self.runtime]

    @property
    def needs_cuda(self) -> bool:
        return self.runtime == "trt" or self.provider in ("cuda", "trt") or self.cuda_graph

    def with_precision(self, precision: str | None) -> "EngineName":
        """The same engine at ``precision`` (validated)."""
        return _validated(replace(self, precision=precision), str(precision))

    def __str__(self) -> str:
        parts = [self.family]
        if self.precision is not None and self.precision != DEFAULT_PRECISION[self.family]:
            parts.append(self.precision)
        parts += ["cl"] * self.channels_last + ["compile"] * self.compile + ["graph"] * self.cuda_graph
        parts += [self.hint] if self.hint else []
        return "-".join(parts)


def parse_engine(name: "str | EngineName", precision: str | None = None) -> EngineName:
    """Parse an engine name; ``precision`` (a ``--precision`` option) applies when the name gives none.

    Raises:
        RtkError: a name outside the grammar, two precisions, a flag or precision the runtime lacks.
    """
    if isinstance(name, EngineName):
        parsed = name
    else:
        parts = str(name).strip().lower().split("-")
        if parts[0] not in RUNTIMES:
            raise RtkError(f"unknown engine {name!r}; {ENGINE_HELP}")
        runtime, rest = parts[0], parts[1:]
        provider = None
        if runtime == "ort":
            provider = "cpu"
            if rest and rest[0] in ("cuda", "trt"):
                provider, rest = rest[0], rest[1:]
        precisions = [p for p in rest if p in PRECISIONS]
        flags = [f for f in rest if f not in PRECISIONS]
        unknown = [f for f in flags if f not in EAGER_FLAGS + OV_HINTS]
        if unknown or len(set(rest)) != len(rest):
            raise RtkError(f"unknown engine {name!r}; {ENGINE_HELP}")
        if len(precisions) > 1:
            raise RtkError(f"engine {name!r} names two precisions ({', '.join(precisions)}); give one")
        foreign = [f for f in flags if f not in FLAGS.get(runtime, ())]
        if foreign:
            owner = "eager" if foreign[0] in EAGER_FLAGS else "ov"
            raise RtkError(f"engine {name!r}: the flag {foreign[0]} applies to {owner} only")
        hints = [f for f in flags if f in OV_HINTS]
        if len(hints) > 1:
            raise RtkError(f"engine {name!r} names two performance hints ({', '.join(hints)}); give one")
        parsed = EngineName(
            runtime, provider, precisions[0] if precisions else None,
            channels_last="cl" in flags, compile="compile" in flags, cuda_graph="graph" in flags, hint=hints[0] if hints else None,
        )
    if parsed.precision is None and precision is not None:
        parsed = replace(parsed, precision=precision)
    return _validated(parsed, str(name))


def _validated(parsed: EngineName, given: str) -> EngineName:
    supported = RUNTIME_PRECISIONS[parsed.family]
    if parsed.precision is not None and parsed.precision not in supported:
        raise RtkError(f"the {parsed.family} engine runs {listed(supported)}, not {parsed.precision} (asked for {given})")
    return parsed


def parse_engines(names: "str | Iterable[str]", precision: str | None = None) -> tuple[EngineName, ...]:
    """A comma-separated list (or iterable) of names, ``all`` expanded to :data:`ALL_ENGINES`,
    repeats dropped, order kept.

    Raises:
        RtkError: an unknown name, or an empty list.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    out: dict[str, EngineName] = {}  # by canonical spelling: trt and trt-fp16 are one engine
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        for text in ALL_ENGINES if item == "all" else (item,):
            parsed = parse_engine(text, precision)
            out.setdefault(str(parsed), parsed)
    if not out:
        raise RtkError(f"no engine named; {ENGINE_HELP}")
    return tuple(out.values())
