"""One way from any artefact and any engine name to a running engine, for every command.

:func:`open_engine` is what ``rtk predict``, ``eval``, ``parity``, ``bench``, ``demo`` and
``doctor`` call, with one :class:`~engines.request.EngineRequest`: it makes the artefact the engine
runs when the model is a checkpoint (:func:`exporters.prepare.prepare`: the ONNX file or TensorRT
engine next to it, reused while fresh) and opens it on its runtime. It sits above both
``exporters`` and ``engines``, so neither imports the other.
"""

from __future__ import annotations

from engines.base import Engine
from engines.eager import EagerEngine
from engines.names import DEFAULT_ENGINE
from engines.openvino import OvEngine
from engines.ort import OrtEngine
from engines.request import EngineRequest
from engines.trt import TrtEngine
from exporters.prepare import prepare
from toolkit.core.checkpoint import load_checkpoint
from toolkit.core.errors import RtkError

#: What each artefact kind is called in messages.
_KIND_WORDS = {"checkpoint": "checkpoints (.pth/.pt/.safetensors)", "onnx": "ONNX files", "engine": "TensorRT engines (.engine/.plan)"}


def open_engine(request: EngineRequest) -> Engine:
    """Open the engine a request names, exporting or building what it runs when the model is a checkpoint.

    Args:
        request: the engine, the artefact and the options of opening
            (:meth:`EngineRequest.of <engines.request.EngineRequest.of>` makes one from a path and a name).

    Returns:
        The engine; use it as a context manager or call ``close()``.

    Raises:
        RtkError: an engine that cannot run this artefact, a failed export or build, another
            precision than the artefact holds, a missing optional package.
    """
    prepared = prepare(request)
    name = prepared.name
    if name.artefact != prepared.kind:
        shown = prepared.path.name if prepared.path is not None else "this checkpoint"
        raise RtkError(
            f"the {name} engine runs {_KIND_WORDS[name.artefact]}, and {shown} is not one; name the checkpoint, "
            f"which rtk exports or builds for {name} (rtk predict/bench/parity/eval do this), or run {shown} with "
            f"--engine {DEFAULT_ENGINE[prepared.kind]}"
        )
    runtime = {"eager": _eager, "ort": _ort, "ov": _openvino, "trt": _tensorrt}[name.runtime]
    return runtime(prepared)


def _eager(request: EngineRequest) -> Engine:
    ckpt = request.checkpoint or load_checkpoint(request.path, options=request.checkpoint_options)
    return EagerEngine(ckpt.build_model(), ckpt.spec, ckpt.preprocess, request.device, request.name)


def _ort(request: EngineRequest) -> Engine:
    name = request.name
    return OrtEngine(
        request.path, meta=request.meta, provider=name.provider, device=request.device, threads=request.threads or 0,
        max_batch=request.max_batch or 64, precision=name.precision,
    )


def _openvino(request: EngineRequest) -> Engine:
    name = request.name
    return OvEngine(request.path, meta=request.meta, precision=name.precision, threads=request.threads or 0, performance_hint=name.hint or "auto")


def _tensorrt(request: EngineRequest) -> Engine:
    name, path = request.name, request.path
    trt = TrtEngine(path, request.gpu or "cuda")
    if name.precision is not None and trt.precision != name.precision:
        trt.close()
        raise RtkError(
            f"{path.name} is an {trt.precision} engine, not {name.precision}; build one with "
            f"`rtk build {trt.sidecar.onnx} --precision {name.precision}`, or name the checkpoint or ONNX file"
        )
    return trt
