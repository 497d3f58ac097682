"""Export on demand: the artefact an engine runs, made next to the model when missing or stale.

``eager`` runs the checkpoint itself. ONNX Runtime runs ``MODEL.onnx`` (or ``MODEL.fp16.onnx``
for fp16 on its CPU and CUDA providers; its TensorRT provider makes fp16 kernels from the fp32
graph). OpenVINO runs ``MODEL.onnx`` at every float precision. TensorRT runs ``MODEL.engine``
(fp16) or ``MODEL.fp32.engine``, built from the ONNX. int8 on any runtime runs ``MODEL.int8.onnx``
(or ``MODEL.int8.engine`` built from it), except the CPU runtimes (ONNX Runtime's CPU provider,
OpenVINO), which run ``MODEL.int8.u8.onnx``, the same calibration with uint8 activations; both are
only found, never made here: calibrating needs data (``rtk export --precision int8 --calib``).
An artefact is fresh while the hash it records of its source matches the source's: the ONNX
file's ``checkpoint_sha256``, the engine sidecar's ``onnx_sha256``.
"""

from __future__ import annotations

from pathlib import Path

from engines.request import EngineRequest
from exporters.int8 import cpu_int8_file
from exporters.onnx import ensure_onnx
from exporters.trt import ensure_engine
from toolkit.core.checkpoint import CheckpointOptions
from toolkit.core.errors import RtkError
from toolkit.core.trt.library import import_tensorrt


def prepare(request: EngineRequest) -> EngineRequest:
    """The request, naming the artefact its engine runs: exported or built next to the model when missing or stale.

    An ONNX file or engine named directly is handed back as it is; whether it suits the engine
    (its precision, say) is checked when it is opened.

    Args:
        request: the engine and the model (:class:`~engines.request.EngineRequest`); its
            ``device`` is the GPU a TensorRT engine is built on and for, its ``max_batch`` the
            largest batch that engine must take (its profile is widened to it), its
            ``checkpoint_options`` which of a checkpoint's weights to export.

    Returns:
        The same request, with ``path`` and ``kind`` those of the artefact to open.

    Raises:
        RtkError: TensorRT missing (checked before any export, which can take minutes); a
            checkpoint held only in memory, which has no artefacts next to it.
    """
    name, kind = request.name, request.kind
    # The CPU runtimes run the uint8 layout of an int8 export, TensorRT and ONNX Runtime's GPU providers the symmetric one.
    cpu = name.runtime == "ov" or (name.runtime == "ort" and name.provider in (None, "cpu"))
    runtime = "OpenVINO" if name.runtime == "ov" else "ONNX Runtime"
    if kind == "onnx" and cpu and name.precision in (None, "int8"):
        # An rtk int8 file named directly: its uint8 layout, when beside it.
        return request.runs(cpu_int8_file(request.path, runtime=runtime), "onnx")
    if name.artefact == kind or kind == "engine" or name.runtime == "eager":
        return request  # as given; opening says what is wrong with an engine file on ONNX Runtime, say
    if request.path is None:
        raise RtkError(f"an in-memory checkpoint has no artefacts next to it; pass the file {name} runs explicitly")
    if name.runtime in ("ort", "ov"):
        return request.runs(_onnx_for_runtime(request, cpu, runtime), "onnx")
    import_tensorrt("the trt engine")
    onnx = request.path if kind == "onnx" else _onnx_for(request.path, _float_or_int8(name.resolved_precision), request.checkpoint_options)
    engine = ensure_engine(onnx, name.resolved_precision, device=request.gpu, max_batch=request.max_batch, meta=request.meta if kind == "onnx" else None)
    return request.runs(engine, "engine")


def _onnx_for_runtime(request: EngineRequest, cpu: bool, runtime: str) -> Path:
    """The ONNX file ONNX Runtime or OpenVINO runs for a checkpoint: the one of its precision, the
    fp32 graph for OpenVINO's float precisions (it lowers them itself) and for the fp16 kernels of
    ONNX Runtime's TensorRT provider, and an int8 export's uint8 layout on a CPU."""
    name, path = request.name, request.path
    precision = name.resolved_precision
    if name.runtime == "ov" or (name.provider == "trt" and precision == "fp16"):
        precision = _float_or_int8(precision)
    onnx = _onnx_for(path, precision, request.checkpoint_options)
    if cpu and precision == "int8":
        return cpu_int8_file(onnx, path, runtime)  # the uint8 layout, the one its CPU kernels run fastest
    return onnx


def _float_or_int8(precision: str) -> str:
    return "int8" if precision == "int8" else "fp32"


def _onnx_for(checkpoint: Path, precision: str, checkpoint_options: CheckpointOptions) -> Path:
    return Path(ensure_onnx(checkpoint, precision, checkpoint_options))
