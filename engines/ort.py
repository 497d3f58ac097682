"""ONNX Runtime engine: CPUExecutionProvider by default; CUDA and TensorRT execution providers
when onnxruntime-gpu provides them, falling back with a warning (never silently: the engine's
name says what really runs, and :attr:`~engines.base.Engine.fell_back_from` what was asked for)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine
from engines.names import EngineName
from engines.ort_install import gpu_install_hint, load_gpu_libraries, ort_conflict
from toolkit.core.console import warn
from toolkit.core.errors import RtkError, first_line, require
from toolkit.core.files import is_utf8_name
from toolkit.core.onnx_graph import ClassifierGraph
from toolkit.core.spec import ArtefactMeta
from toolkit.core.trt.sidecar import profile_for

GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")
#: Execution providers by the short name used in engine names (``ort-cuda``, ``ort-trt``).
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_SHORT = {full: short for short, full in PROVIDERS.items()}


def _precision(graph: ClassifierGraph, provider: str, asked: str | None, path: Path) -> str:
    """The precision the session runs at: the graph's, or fp16 kernels from TensorRT on an fp32 graph.

    int8 is always the graph's own (a calibrated QDQ file): no provider makes it from float weights here.
    """
    if asked == "int8" and graph.precision != "int8":
        raise RtkError(
            f"{path.name} holds {graph.precision} weights, not a calibrated int8 (QDQ) graph; make one with "
            "`rtk export CHECKPOINT --precision int8 --calib DATA` and run MODEL.int8.onnx, or pass the checkpoint"
        )
    if graph.precision == "int8":
        if asked not in (None, "int8"):
            raise RtkError(f"{path.name} is an int8 (QDQ) graph and runs at int8, not {asked}; give the {asked} ONNX instead")
        return "int8"
    if provider == "trt":
        asked = asked or "fp16"
        if graph.precision == "fp16" or asked == graph.precision:
            if asked != graph.precision:
                raise RtkError(f"{path.name} holds fp16 weights and runs at fp16, not {asked}; give the fp32 ONNX instead")
            return graph.precision
        return asked  # fp16: TensorRT picks fp16 kernels wherever they are faster, so it is judged as fp16
    if asked is not None and asked != graph.precision:
        raise RtkError(
            f"{path.name} holds {graph.precision} weights, so ONNX Runtime runs it at {graph.precision}, not {asked}; "
            f"export the {asked} ONNX (rtk export CHECKPOINT --precision {asked}) or pass the checkpoint, which exports it"
        )
    return graph.precision


def _provider_options(provider: str, path: Path, graph: ClassifierGraph, device_id: int, precision: str, max_batch: int) -> dict[str, Any]:
    """The key options of each execution provider.

    TensorRT gets explicit profile shapes so its engine cache is built once for the whole batch
    range and reused, instead of being rebuilt whenever a new batch size shows up. A QDQ graph
    needs its INT8 mode on (TensorRT 10 builds explicit quantization only with that flag; no
    calibration table is read, the scales are the graph's), and fp16 for the layers left in float.
    """
    if provider == "cuda":
        return _cuda_options(device_id)
    if provider == "trt":
        cache = path.parent / f"{path.stem}.ort-trt-cache"
        try:
            cache.mkdir(exist_ok=True)
        except OSError as exc:
            raise RtkError(f"cannot create the TensorRT provider's cache folder {cache}: {exc.strerror or exc}") from None
        c, h, w = graph.meta.spec.in_chans, *graph.meta.preprocess.input_size
        shape = lambda n: f"{graph.input_name}:{n}x{c}x{h}x{w}"  # noqa: E731
        return {
            "device_id": device_id,
            "trt_fp16_enable": precision in ("fp16", "int8"),
            "trt_int8_enable": precision == "int8",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(profile_for(max_batch)[1]),  # as trt engines are built
            "trt_profile_max_shapes": shape(max_batch),
        }
    return {}


def _cuda_options(device_id: int) -> dict[str, Any]:
    return {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": True}


def _provider_list(ort, provider: str, path: Path, graph: ClassifierGraph, device_id: int, precision: str, max_batch: int) -> list[Any]:
    """The providers to ask the session for, most wanted first, with the ones that take what it leaves."""
    providers: list[Any] = [(PROVIDERS[provider], _provider_options(provider, path, graph, device_id, precision, max_batch))]
    if provider == "trt" and PROVIDERS["cuda"] in ort.get_available_providers():
        providers.append((PROVIDERS["cuda"], _cuda_options(device_id)))  # for what TensorRT does not take
    if provider != "cpu":
        providers.append("CPUExecutionProvider")  # for the few ops a GPU provider lacks
    return providers


def fallback_provider(requested: str, available: list[str]) -> str:
    """The provider ONNX Runtime really runs when ``requested`` is missing: TensorRT → CUDA → CPU."""
    order = {"trt": ("trt", "cuda", "cpu"), "cuda": ("cuda", "cpu"), "cpu": ("cpu",)}[requested]
    return next(p for p in order if p == "cpu" or PROVIDERS[p] in available)


def _session(ort, path: Path, providers: list[Any], threads: int, graph_optimization: str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: ORT's warnings about node placement are noise here
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    # ONNX Runtime takes a path as UTF-8 text only: a file whose name is other bytes is handed
    # over as its contents (which hold the whole model: rtk's exports keep no external data).
    source: str | bytes = str(path) if is_utf8_name(path) else path.read_bytes()
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        named = "" if isinstance(source, str) else " (its name is not UTF-8, so it was read as bytes: a model with external weights needs a UTF-8 name)"
        raise RtkError(f"ONNX Runtime cannot load {path}{named}: {first_line(exc)}") from None



def _start_session(
    path: Path, graph: ClassifierGraph, provider: str, device_id: int, precision: str, max_batch: int, threads: int, graph_optimization: str
) -> tuple[Any, str]:
    """The session, and the provider it really runs on: the one asked for, or the next one that
    starts (TensorRT → CUDA → CPU), with a warning that says why and how to get the one asked for."""
    ort = require("onnxruntime", "the ort engine")
    running = provider
    trt_problem = None
    if provider != "cpu":
        trt_problem = load_gpu_libraries(ort, provider)
        available = ort.get_available_providers()
        if PROVIDERS[provider] not in available:
            running = fallback_provider(provider, available)
            why = f"ONNX Runtime here has no {PROVIDERS[provider]} (available: {', '.join(available)})"
            _warn_fallback(path, provider, why, running, trt_problem)
    providers = _provider_list(ort, running, path, graph, device_id, precision, max_batch)
    session = _session(ort, path, providers, threads, graph_optimization)
    started = _SHORT.get(session.get_providers()[0], "cpu")
    if started != running:
        # onnxruntime-gpu lists a provider whose libraries are missing: the session starts on the
        # next provider in the list (TensorRT → CUDA → CPU) and ONNX Runtime only logs it.
        why = f"{PROVIDERS[running]} failed to start (the session runs {', '.join(session.get_providers())})"
        _warn_fallback(path, provider, why, started, trt_problem)
    return session, started


class OrtEngine(Engine):
    """An ONNX Runtime inference session over an exported model.

    Args:
        path: the ``.onnx`` file.
        meta: spec and preprocess for a foreign ONNX that carries none in its ``metadata_props``
            (e.g. from the checkpoint it came from); a file's own metadata is always preferred.
        provider: ``"cpu"``, ``"cuda"`` or ``"trt"`` (see :data:`PROVIDERS`).
        device: ``"cpu"`` or ``"cuda[:N]"``; the GPU index for the CUDA/TensorRT providers.
        threads: intra-op threads (0 = ONNX Runtime's default).
        graph_optimization: one of :data:`GRAPH_OPT_LEVELS`.
        max_batch: largest batch the TensorRT provider's profile covers.
        precision: what the caller expects: the graph's own precision for the CPU and CUDA
            providers (a mismatch is refused); for TensorRT, ``fp16`` (default) lets it use fp16
            kernels on an fp32 graph. ``None`` takes the file as it is.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        meta: ArtefactMeta | None = None,
        provider: str = "cpu",
        device: str = "cpu",
        threads: int = 0,
        graph_optimization: str = "all",
        max_batch: int = 64,
        precision: str | None = None,
    ):
        path = Path(path)
        if provider not in PROVIDERS:
            raise RtkError(f"unknown ONNX Runtime provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        if graph_optimization not in GRAPH_OPT_LEVELS:
            raise RtkError(f"graph optimisation level must be one of {', '.join(GRAPH_OPT_LEVELS)}, got {graph_optimization!r}")
        graph = ClassifierGraph.read(path, meta)
        precision = _precision(graph, provider, precision, path)
        device_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        session, running = _start_session(path, graph, provider, device_id, precision, max_batch, threads, graph_optimization)
        if running != "trt":
            precision = graph.precision  # fp16 kernels on an fp32 graph come from TensorRT alone
        if graph.static_batch is not None:
            limits = {"min_batch": graph.static_batch, "max_batch": graph.static_batch}
        else:
            limits = {"max_batch": max_batch} if running == "trt" else {}
        super().__init__(
            EngineName("ort", running, precision), graph.meta.spec, graph.meta.preprocess,
            "cpu" if running == "cpu" else f"cuda:{device_id}",
            fell_back_from=EngineName("ort", provider, precision) if running != provider else None, **limits,
        )
        self.session = session
        self.path = path
        self.provider = running
        self.providers = session.get_providers()
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.device_resident = running != "cpu"

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def _run_device(self, batch: Any) -> Any:
        """Run a torch tensor; on a GPU provider it stays on the GPU through IO binding."""
        import torch

        if not self.device_resident:
            return torch.from_numpy(self._infer(np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)))
        x = batch.detach().to(self.device, torch.float32).contiguous()
        out = torch.empty((x.shape[0], self.spec.num_classes), dtype=torch.float32, device=x.device)
        # ORT runs on its own CUDA stream, which nothing orders after the torch work that wrote x.
        torch.cuda.current_stream(x.device).synchronize()
        binding = self.session.io_binding()
        index = x.device.index or 0
        binding.bind_input(self.input_name, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out

    def synchronize(self) -> None:
        if self.device_resident:
            import torch

            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        super().close()
        self.session = None


def _warn_fallback(path: Path, requested: str, why: str, running: str = "cpu", trt_problem: str | None = None) -> None:
    where = "the CPU" if running == "cpu" else f"ONNX Runtime's {PROVIDERS[running]}"
    conflict = ort_conflict()
    if conflict is not None:  # the usual reason a GPU provider is missing, and not fixed by installing more
        warn(f"running {path.name} on {where}: {conflict}")
    elif requested == "trt" and running == "cuda":
        fix = trt_problem or "the TensorRT provider needs TensorRT 10's libraries (pip install 'tensorrt>=10,<11')"
        warn(f"{why}; running {path.name} on {where} instead (named ort-cuda); {fix}")
    else:
        warn(f"{why}; running {path.name} on {where} instead; for ort-{requested}, {gpu_install_hint()}")
