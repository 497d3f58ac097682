"""ONNX Runtime engine: CPUExecutionProvider by default; CUDA and TensorRT execution providers
when onnxruntime-gpu provides them, falling back with a warning (never silently: the engine's
name says what really runs)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine
from engines.names import EngineName
from toolkit.core.errors import RtkError, first_line, require
from toolkit.core.trt.sidecar import profile_for
from toolkit.core.spec import ArtefactMeta

GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")
#: Execution providers by the short name used in engine names (``ort-cuda``, ``ort-trt``).
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_SHORT = {full: short for short, full in PROVIDERS.items()}


@dataclass(frozen=True)
class _Graph:
    """What the ONNX file says about itself: metadata, input, precision, batch axis."""

    meta: ArtefactMeta
    input_name: str
    precision: str
    static_batch: int | None

    @classmethod
    def read(cls, path: Path, fallback_meta: ArtefactMeta | None) -> "_Graph":
        from toolkit.core.onnx_graph import (
            check_classifier_io, foreign_onnx_error, graph_io, load_onnx_graph, metadata_dict, onnx_precision,
        )

        graph = load_onnx_graph(path)
        stored = metadata_dict(graph)
        if stored is not None:
            meta = ArtefactMeta.from_dict(stored)
        elif fallback_meta is not None:
            meta = fallback_meta
        else:
            raise foreign_onnx_error(path)
        inputs, outputs = graph_io(graph)
        check_classifier_io(inputs, outputs, meta.spec, meta.preprocess, str(path))
        batch = inputs[0].shape[0]
        return cls(meta, inputs[0].name, onnx_precision(graph), batch if isinstance(batch, int) else None)


def _precision(graph: _Graph, provider: str, asked: str | None, path: Path) -> str:
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


def _provider_options(provider: str, path: Path, graph: _Graph, device_id: int, precision: str, max_batch: int) -> dict[str, Any]:
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


def _provider_list(ort, provider: str, path: Path, graph: _Graph, device_id: int, precision: str, max_batch: int) -> list[Any]:
    """The providers to ask the session for, most wanted first, with the ones that take what it leaves."""
    providers: list[Any] = [(PROVIDERS[provider], _provider_options(provider, path, graph, device_id, precision, max_batch))]
    if provider == "trt" and PROVIDERS["cuda"] in ort.get_available_providers():
        providers.append((PROVIDERS["cuda"], _cuda_options(device_id)))  # for what TensorRT does not take
    if provider != "cpu":
        providers.append("CPUExecutionProvider")  # for the few ops a GPU provider lacks
    return providers


def _load_gpu_libraries(ort, provider: str) -> str | None:
    """Make the CUDA, cuDNN and TensorRT libraries that pip installed findable by ONNX Runtime.

    onnxruntime-gpu looks for them on the system's library path only; the wheels torch and
    tensorrt bring put them in site-packages. Loading them into the process first lets the
    providers find them by name (``import tensorrt`` loads its ``libnvinfer``).

    Returns:
        Why the TensorRT provider cannot start here, when that is known in advance; else ``None``.
    """
    if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21: CUDA and cuDNN from the nvidia-* wheels
        ort.preload_dlls()
    if provider != "trt" or importlib.util.find_spec("tensorrt") is None:
        return None
    from toolkit.core.trt.library import import_tensorrt, major_version

    try:
        trt = import_tensorrt("ONNX Runtime's TensorRT provider")
    except RtkError as exc:  # a broken install: the provider will not start; say why
        return str(exc)
    return trt_provider_problem(major_version(trt), str(trt.__version__))


def trt_provider_problem(tensorrt_major: int, tensorrt_version: str) -> str | None:
    """Why onnxruntime-gpu's TensorRT provider cannot use the installed TensorRT, or ``None``.

    onnxruntime-gpu's provider is linked against TensorRT 10 (``libnvinfer.so.10``); TensorRT 11
    installs ``libnvinfer.so.11`` only, so with TensorRT 11 alone the provider never starts.
    """
    if tensorrt_major == 10:
        return None
    return (
        f"ONNX Runtime's TensorRT provider needs TensorRT 10 (libnvinfer.so.10) and this environment has TensorRT "
        f"{tensorrt_version}; run ort-trt from an environment with pip install 'tensorrt>=10,<11'"
    )


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
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise RtkError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from None


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
        ort = require("onnxruntime", "the ort engine")
        path = Path(path)
        if provider not in PROVIDERS:
            raise RtkError(f"unknown ONNX Runtime provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        if graph_optimization not in GRAPH_OPT_LEVELS:
            raise RtkError(f"graph optimisation level must be one of {', '.join(GRAPH_OPT_LEVELS)}, got {graph_optimization!r}")
        graph = _Graph.read(path, meta)
        precision = _precision(graph, provider, precision, path)
        requested = provider
        trt_problem = None
        if provider != "cpu":
            trt_problem = _load_gpu_libraries(ort, provider)
            available = ort.get_available_providers()
            if PROVIDERS[provider] not in available:
                provider = fallback_provider(requested, available)
                why = f"ONNX Runtime here has no {PROVIDERS[requested]} (available: {', '.join(available)})"
                _warn_fallback(path, requested, why, provider, trt_problem)
        device_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        self.session = _session(ort, path, _provider_list(ort, provider, path, graph, device_id, precision, max_batch), threads, graph_optimization)
        running = _SHORT.get(self.session.get_providers()[0], "cpu")
        if running != provider:
            # onnxruntime-gpu lists a provider whose libraries are missing: the session starts on the
            # next provider in the list (TensorRT → CUDA → CPU) and ONNX Runtime only logs it.
            why = f"{PROVIDERS[provider]} failed to start (the session runs {', '.join(self.session.get_providers())})"
            _warn_fallback(path, requested, why, running, trt_problem)
            provider = running
        if provider != "trt":
            precision = graph.precision  # fp16 kernels on an fp32 graph come from TensorRT alone
        super().__init__(graph.meta.spec, graph.meta.preprocess, "cpu" if provider == "cpu" else f"cuda:{device_id}", precision)
        self.path = path
        self.provider = provider
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.device_resident = provider != "cpu"
        if graph.static_batch is not None:
            self.min_batch = self.max_batch = graph.static_batch
        elif provider == "trt":
            self.max_batch = max_batch
        name = str(EngineName("ort", provider, precision))
        if provider != requested:
            self.fallback_from = str(EngineName("ort", requested, precision))
            name += f"(fallback from {self.fallback_from})"
        self.name = name

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


#: Distributions that install the ``onnxruntime`` module; any two overwrite each other's files.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")


def installed_ort_distributions() -> list[tuple[str, str]]:
    """(name, version) of every ONNX Runtime distribution installed, from the package metadata."""
    from importlib import metadata

    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return found


def ort_conflict() -> str | None:
    """One sentence with the fix when several ONNX Runtime distributions are installed, else ``None``."""
    found = installed_ort_distributions()
    if len(found) < 2:
        return None
    names = [name for name, _ in found]
    listed = " and ".join(f"{name} {version}" for name, version in found)
    return (
        f"{listed} are installed together and overwrite each other's onnxruntime module, so its GPU providers may be "
        f"missing; keep one: pip uninstall -y {' '.join(names)} && pip install onnxruntime-gpu (or onnxruntime for the CPU)"
    )


def gpu_install_hint() -> str:
    """The command that gives this environment ONNX Runtime's GPU providers, or the conflict to resolve first."""
    conflict = ort_conflict()
    if conflict is not None:
        return conflict
    if any(name == "onnxruntime" for name, _ in installed_ort_distributions()):
        return "install onnxruntime-gpu in place of the CPU build: pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
    return "install onnxruntime-gpu: pip install 'rtk[gpu]'"


def _warn_fallback(path: Path, requested: str, why: str, running: str = "cpu", trt_problem: str | None = None) -> None:
    from toolkit.core.console import warn

    where = "the CPU" if running == "cpu" else f"ONNX Runtime's {PROVIDERS[running]}"
    conflict = ort_conflict()
    if conflict is not None:  # the usual reason a GPU provider is missing, and not fixed by installing more
        warn(f"running {path.name} on {where}: {conflict}")
    elif requested == "trt" and running == "cuda":
        fix = trt_problem or "the TensorRT provider needs TensorRT 10's libraries (pip install 'tensorrt>=10,<11')"
        warn(f"{why}; running {path.name} on {where} instead (named ort-cuda); {fix}")
    else:
        warn(f"{why}; running {path.name} on {where} instead; for ort-{requested}, {gpu_install_hint()}")
