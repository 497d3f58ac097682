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

import os
from pathlib import Path

from typing import TYPE_CHECKING

from engines.names import DEFAULT_ENGINE, EngineName, parse_engine
from toolkit.artefacts import artefact_kind

if TYPE_CHECKING:
    from toolkit.checkpoint import CheckpointOptions


def prepare(
    source: str | os.PathLike,
    engine: "str | EngineName | None" = None,
    precision: str | None = None,
    *,
    device: str | None = None,
    max_batch: int | None = None,
    checkpoint_options: "CheckpointOptions | None" = None,
) -> Path:
    """The artefact ``engine`` runs for ``source``, exported or built next to it when missing or stale.

    An ONNX file or engine named directly is returned as it is; whether it suits the engine
    (its precision, say) is checked when it is loaded.

    Args:
        source: a checkpoint, ONNX file or TensorRT engine.
        engine: an engine name (:mod:`engines.names`); by default the artefact's own runtime.
        precision: applies when the name gives none.
        device: the GPU a TensorRT engine is built on and for (``cuda:N``).
        max_batch: the largest batch a TensorRT engine must take (its profile is widened to it).
        checkpoint_options: which of a checkpoint's weights to export (EMA or raw), and whether
            to trust a pickle.

    Returns:
        The path to load with :func:`engines.load`.

    Raises:
        RtkError: the engine cannot run this kind of artefact (an engine file on ONNX Runtime, an
            ONNX file on eager); TensorRT missing (checked before any export, which can take minutes).
    """
    path = Path(source)
    kind = artefact_kind(path)
    name = parse_engine(engine or DEFAULT_ENGINE[kind], precision)
    # The CPU runtimes run the uint8 layout of an int8 export, TensorRT and ONNX Runtime's GPU providers the symmetric one.
    cpu = name.runtime == "ov" or (name.runtime == "ort" and name.provider in (None, "cpu"))
    runtime = "OpenVINO" if name.runtime == "ov" else "ONNX Runtime"
    if kind == "onnx" and cpu and name.precision in (None, "int8"):
        from exporters.int8 import cpu_int8_file

        return cpu_int8_file(path, runtime=runtime)  # an rtk int8 file named directly: its uint8 layout, when beside it
    if name.artefact == kind or kind == "engine" or name.runtime == "eager":
        return path  # as given; the loader says what is wrong with an engine file on ONNX Runtime, say
    if name.runtime == "ort":
        # ONNX Runtime's TensorRT provider makes its own fp16 kernels from the fp32 graph.
        onnx_precision = "fp32" if name.provider == "trt" and name.resolved_precision == "fp16" else name.resolved_precision
        onnx = _onnx_for(path, onnx_precision, checkpoint_options)
        if cpu and onnx_precision == "int8":
            from exporters.int8 import cpu_int8_file

            return cpu_int8_file(onnx, path, runtime)  # the uint8 layout, the one its CPU kernels run fastest
        return onnx
    if name.runtime == "ov":
        # OpenVINO lowers precision itself: every float engine runs the fp32 graph.
        if name.resolved_precision != "int8":
            return _onnx_for(path, "fp32", checkpoint_options)
        from exporters.int8 import cpu_int8_file

        return cpu_int8_file(_onnx_for(path, "int8", checkpoint_options), path, runtime)
    from toolkit.trt_runtime import import_tensorrt

    import_tensorrt("the trt engine")
    from exporters.trt import ensure_engine

    onnx = path if kind == "onnx" else _onnx_for(path, "int8" if name.resolved_precision == "int8" else "fp32", checkpoint_options)
    gpu = device if device is not None and str(device).startswith("cuda") else None
    return ensure_engine(onnx, name.resolved_precision, device=gpu, max_batch=max_batch)


def _onnx_for(checkpoint: Path, precision: str, checkpoint_options: "CheckpointOptions | None") -> Path:
    from exporters.onnx import ensure_onnx

    return Path(ensure_onnx(checkpoint, precision, checkpoint_options))
