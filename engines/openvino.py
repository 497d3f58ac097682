"""OpenVINO engine: an ONNX file compiled for the CPU by OpenVINO's CPU plugin.

In OpenVINO precision is a run-time choice rather than a property of the file. Left to itself,
the CPU plugin runs an fp32 graph in bf16 on CPUs with bf16 units, so rtk always says which
precision it wants (``INFERENCE_PRECISION_HINT``):

- ``ov``: the fp32 ONNX in strict f32, judged against eager like any fp32 runtime;
- ``ov-bf16`` / ``ov-fp16``: the fp32 ONNX on the CPU's bf16 / fp16 units, only where the plugin
  lists them in ``OPTIMIZATION_CAPABILITIES`` (refused elsewhere rather than emulated slowly);
- ``ov-int8``: a QDQ ONNX (``MODEL.int8.onnx``): the quantized convolutions and matmuls run on
  int8 kernels, the rest in f32.

Compiled models are cached in ``MODEL.ov-cache/`` next to the ONNX file (OpenVINO's
``CACHE_DIR``), so the second run of a model skips compilation; where that folder cannot be
written the model is compiled every time and nothing else changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine
from engines.names import EngineName
from toolkit.core.errors import RtkError, first_line, require
from toolkit.core.files import is_utf8_name
from toolkit.core.onnx_graph import ClassifierGraph
from toolkit.core.spec import ArtefactMeta

#: OpenVINO's element type for each precision rtk names (int8 files keep f32 outside their quantized ops).
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
#: The CPU capability (``OPTIMIZATION_CAPABILITIES``) a reduced precision needs.
CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}
PERFORMANCE_HINTS = ("auto", "latency", "throughput")
#: The smallest batch the ``auto`` hint splits over OpenVINO's throughput streams. Measured on
#: ResNet-50 int8 with 2 threads (benchmarks/results): at batch 8 the streams gave 1.17–1.29× the
#: images/s of one latency request on every thread; at batch 1 the latency request was as fast or faster.
THROUGHPUT_MIN_BATCH = 4


def cpu_capabilities() -> tuple[str, ...]:
    """What OpenVINO's CPU plugin says this CPU can run fast (``FP32``, ``BF16``, ``FP16``, ``INT8``…).

    Raises:
        RtkError: openvino is not installed.
    """
    ov = require("openvino", "the ov engine")
    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def cache_dir_for(path: str | os.PathLike) -> Path | None:
    """``MODEL.ov-cache/`` next to ``MODEL.onnx``, made if needed; ``None`` where it cannot be written.

    A read-only model folder is normal (a mounted volume, a system install): the model then
    compiles on every start instead of failing.
    """
    path = Path(path)
    folder = path.with_name(f"{path.stem}.ov-cache")
    if not is_utf8_name(folder):  # OpenVINO takes the cache folder as UTF-8 text only
        return None
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    return folder if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK) else None


def _is_quantized(model: Any) -> bool:
    """Whether OpenVINO's graph holds quantized ops: its ONNX reader turns QuantizeLinear into FakeQuantize."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def _precision(asked: str | None, quantized: bool, path: Path) -> str:
    """The precision to run ``path`` at, refusing an int8 request on a float file and the reverse."""
    if quantized:
        if asked not in (None, "int8"):
            raise RtkError(
                f"{path.name} is a quantized (QDQ) ONNX, so OpenVINO runs it at int8, not {asked}; "
                "give the fp32 ONNX for the other precisions, or run this file as ov-int8"
            )
        return "int8"
    if asked == "int8":
        raise RtkError(
            f"{path.name} holds no quantized ops, so ov-int8 cannot run it; make the int8 ONNX with "
            "`rtk export CHECKPOINT --precision int8 --calib DATA` and run MODEL.int8.onnx"
        )
    return asked or "fp32"


def _check_capability(precision: str) -> None:
    need = CAPABILITY.get(precision)
    if need is None:
        return
    have = cpu_capabilities()
    if need not in have:
        raise RtkError(
            f"this CPU has no {precision} units (OpenVINO's CPU plugin lists {', '.join(have)}), so ov-{precision} "
            "would not be faster than ov; run ov for fp32 or ov-int8 for int8"
        )


def compile_config(ov, precision: str, threads: int, hint: str, cache_dir: Path | None) -> dict[Any, Any]:
    """The properties ``compile_model`` gets: precision, performance hint, threads and cache."""
    import openvino.properties as props
    import openvino.properties.hint as hints

    config: dict[Any, Any] = {
        hints.inference_precision: getattr(ov.Type, INFERENCE_PRECISION[precision]),
        hints.performance_mode: hints.PerformanceMode.LATENCY if hint == "latency" else hints.PerformanceMode.THROUGHPUT,
    }
    if threads > 0:
        config[props.inference_num_threads] = threads
    if cache_dir is not None:
        config[props.cache_dir] = str(cache_dir)
    return config


class OvEngine(Engine):
    """An ONNX file compiled by OpenVINO for the CPU.

    Args:
        path: the ``.onnx`` file: fp32 for ``ov``/``ov-bf16``/``ov-fp16``, QDQ for ``ov-int8``.
        meta: spec and preprocess for a foreign ONNX that carries none.
        precision: ``fp32``, ``bf16``, ``fp16`` or ``int8``; ``None`` = what the file holds
            (int8 for a QDQ file, fp32 otherwise).
        threads: inference threads (``INFERENCE_NUM_THREADS``; 0 = OpenVINO's default, every core).
        performance_hint: ``latency``: one inference request on every thread, the fastest single
            small call; ``throughput``: OpenVINO's streams, each on part of the threads, with a
            batch split over them; ``auto`` (default): latency below :data:`THROUGHPUT_MIN_BATCH`
            images, throughput from there on (compiled on the first such batch, so a process that
            only ever runs small batches pays for one compilation and holds one copy of the weights).
        cache: cache compiled models in ``MODEL.ov-cache/`` (see :func:`cache_dir_for`).

    Raises:
        RtkError: openvino missing, an unreadable or non-classifier ONNX, an fp16 ONNX, a
            precision the file or this CPU cannot run.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        meta: ArtefactMeta | None = None,
        precision: str | None = None,
        threads: int = 0,
        performance_hint: str = "auto",
        cache: bool = True,
    ):
        self._ov = require("openvino", "the ov engine")
        path = Path(path)
        if performance_hint not in PERFORMANCE_HINTS:
            raise RtkError(f"performance hint must be one of {', '.join(PERFORMANCE_HINTS)}, got {performance_hint!r}")
        graph = ClassifierGraph.read(path, meta)
        if graph.precision in ("fp16", "bf16"):  # a QDQ file reads as fp32 (its scales) or int8
            raise RtkError(
                f"{path.name} holds {graph.precision} weights; OpenVINO reduces precision itself, so give it the fp32 ONNX "
                "(MODEL.onnx) and name ov-fp16 or ov-bf16"
            )
        self._core = self._ov.Core()
        model = self._read(path)
        precision = _precision(precision, _is_quantized(model), path)
        _check_capability(precision)
        limits = {"min_batch": graph.static_batch, "max_batch": graph.static_batch} if graph.static_batch is not None else {}
        hint = None if performance_hint == "auto" else performance_hint
        super().__init__(EngineName("ov", None, precision, hint=hint), graph.meta.spec, graph.meta.preprocess, "cpu", **limits)
        self.path = path
        self.performance_hint = performance_hint
        self.cache_dir = cache_dir_for(path) if cache else None
        self._requested_threads = threads
        #: Inference requests by hint, compiled when first needed.
        self._requests: dict[str, list[Any]] = {}
        first = "throughput" if performance_hint == "throughput" else "latency"
        self.threads = self._compile(first, model)

    def _read(self, path: Path) -> Any:
        try:  # a name that is not UTF-8 cannot cross into OpenVINO as text: its contents can
            return self._core.read_model(str(path) if is_utf8_name(path) else path.read_bytes())
        except RuntimeError as exc:
            raise RtkError(f"OpenVINO cannot read {path}: {first_line(exc)}") from None

    def _compile(self, hint: str, model: Any = None) -> int:
        """Compile for ``hint`` and make its requests (one for latency, one per stream for throughput);
        returns the threads the compiled model uses."""
        config = compile_config(self._ov, self.precision, self._requested_threads, hint, self.cache_dir)
        try:
            compiled = self._core.compile_model(model if model is not None else self._read(self.path), "CPU", config)
        except RuntimeError as exc:
            raise RtkError(f"OpenVINO cannot compile {self.path.name} for the CPU: {first_line(exc)}") from None
        count = 1 if hint == "latency" else max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests[hint] = [compiled.create_infer_request() for _ in range(count)]
        return int(compiled.get_property("INFERENCE_NUM_THREADS"))

    def requests_for(self, batch_size: int) -> list[Any]:
        """The inference requests a batch of ``batch_size`` runs on under this engine's hint."""
        hint = self.performance_hint
        if hint == "auto":
            large = batch_size >= THROUGHPUT_MIN_BATCH and self.min_batch != self.max_batch
            hint = "throughput" if large else "latency"
        if hint not in self._requests:
            self._compile(hint)
        return self._requests[hint]

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        requests = self.requests_for(len(batch))
        if len(requests) == 1 or len(batch) == 1:
            return self._run(requests[0], batch)
        # One slice of the batch per request; the requests run side by side on their streams. Slices
        # along the batch axis of a contiguous array are contiguous, so each is read in place.
        parts = np.array_split(batch, min(len(requests), len(batch)))
        for request, part in zip(requests, parts):
            request.start_async({0: part}, share_inputs=True)
        outs = []
        for request, _ in zip(requests, parts):
            request.wait()
            outs.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))
        return np.concatenate(outs)

    @staticmethod
    def _run(request: Any, batch: np.ndarray) -> np.ndarray:
        # share_inputs: the validated contiguous batch is read in place; the output is copied
        # because the request reuses its buffer on the next call.
        result = request.infer({0: batch}, share_inputs=True)
        return np.array(result[0], dtype=np.float32)

    def close(self) -> None:
        super().close()
        self._requests = {}
