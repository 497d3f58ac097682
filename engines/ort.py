"""ONNX Runtime engine: CPUExecutionProvider by default; CUDA and TensorRT execution providers
when onnxruntime-gpu provides them, falling back to the CPU with a warning (never silently:
the engine's name says what really runs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine
from toolkit.errors import RtkError, require
from toolkit.spec import ArtefactMeta

GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")
#: Execution providers by the short name used in engine names (``ort-cuda``, ``ort-trt``).
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def _provider_options(
    provider: str, path: Path, input_name: str, meta: ArtefactMeta, device_id: int, fp16: bool, max_batch: int
) -> dict[str, Any]:
    """The key options of each execution provider.

    TensorRT gets explicit profile shapes so its engine cache is built once for the whole batch
    range and reused, instead of being rebuilt whenever a new batch size shows up.
    """
    if provider == "cuda":
        return _cuda_options(device_id)
    if provider == "trt":
        cache = path.parent / f"{path.stem}.ort-trt-cache"
        try:
            cache.mkdir(exist_ok=True)
        except OSError as exc:
            raise RtkError(f"cannot create the TensorRT provider's cache folder {cache}: {exc.strerror or exc}") from None
        c, h, w = meta.spec.in_chans, *meta.preprocess.input_size
        shape = lambda n: f"{input_name}:{n}x{c}x{h}x{w}"  # noqa: E731
        return {
            "device_id": device_id,
            "trt_fp16_enable": fp16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(max(1, max_batch // 2)),
            "trt_profile_max_shapes": shape(max_batch),
        }
    return {}


def _cuda_options(device_id: int) -> dict[str, Any]:
    return {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": True}


class OrtEngine(Engine):
    """An ONNX Runtime inference session over an exported model.

    Args:
        path: the ``.onnx`` file.
        meta: spec and preprocess; read from the file's ``metadata_props`` when omitted (a foreign
            ONNX without them needs ``meta``, e.g. from the checkpoint it came from).
        provider: ``"cpu"``, ``"cuda"`` or ``"trt"`` (see :data:`PROVIDERS`).
        device: ``"cpu"`` or ``"cuda[:N]"``; the GPU index for the CUDA/TensorRT providers.
        threads: intra-op threads (0 = ONNX Runtime's default).
        graph_optimization: one of :data:`GRAPH_OPT_LEVELS`.
        max_batch: largest batch the TensorRT provider's profile covers.
        fp16: let the TensorRT provider use FP16 kernels on an fp32 ONNX.
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
        fp16: bool = False,
    ):
        from exporters.onnx_info import check_classifier_io, graph_io, load_onnx_graph, metadata_dict, onnx_precision

        ort = require("onnxruntime", "the ort engine")
        path = Path(path)
        if provider not in PROVIDERS:
            raise RtkError(f"unknown ONNX Runtime provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        if graph_optimization not in GRAPH_OPT_LEVELS:
            raise RtkError(f"graph optimisation level must be one of {', '.join(GRAPH_OPT_LEVELS)}, got {graph_optimization!r}")
        graph = load_onnx_graph(path)
        if meta is None:
            stored = metadata_dict(graph)
            if stored is None:
                raise RtkError(
                    f"{path} carries no rtk metadata, so its classes and preprocessing are unknown; export it with "
                    "`rtk export`, or pass the checkpoint it came from (rtk parity CHECKPOINT --onnx FILE)"
                )
            meta = ArtefactMeta.from_dict(stored)
        inputs, outputs = graph_io(graph)
        check_classifier_io(inputs, outputs, meta.spec, meta.preprocess, str(path))
        precision = onnx_precision(graph)
        del graph

        requested = provider
        available = ort.get_available_providers()
        if PROVIDERS[provider] not in available:
            _warn_fallback(path, requested, f"ONNX Runtime here has no {PROVIDERS[provider]} (available: {', '.join(available)})")
            provider = "cpu"
        device_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        providers: list[Any] = [(PROVIDERS[provider], _provider_options(provider, path, inputs[0].name, meta, device_id, fp16, max_batch))]
        if provider == "trt" and PROVIDERS["cuda"] in available:
            providers.append((PROVIDERS["cuda"], _cuda_options(device_id)))  # for what TensorRT does not take
        if provider != "cpu":
            providers.append("CPUExecutionProvider")  # for the few ops a GPU provider lacks

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
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RtkError(f"ONNX Runtime cannot load {path}: {str(exc).strip().splitlines()[0][:300]}") from None
        if provider != "cpu" and self.session.get_providers()[0] != PROVIDERS[provider]:
            # onnxruntime-gpu is installed but its provider failed to start (CUDA, cuDNN or TensorRT
            # libraries missing): ORT then runs everything on the CPU and only logs it.
            _warn_fallback(path, requested, f"{PROVIDERS[provider]} failed to start (session runs {', '.join(self.session.get_providers())})")
            provider = "cpu"
        if provider == "trt" and fp16:
            precision = "fp16"  # TensorRT picks fp16 kernels wherever they are faster, so judge it as fp16
        super().__init__(meta.spec, meta.preprocess, "cpu" if provider == "cpu" else f"cuda:{device_id}", precision)
        self.path = path
        self.provider = provider
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        static = inputs[0].shape[0]
        if isinstance(static, int):
            self.min_batch = self.max_batch = static
        elif provider == "trt":
            self.max_batch = max_batch
        name = "ort" if provider == "cpu" else f"ort-{provider}"
        name += "-fp16" if precision == "fp16" else ""
        self.name = name if provider == requested else f"{name}(fallback from ort-{requested})"

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def run_device(self, batch: Any) -> Any:
        """Run a torch tensor; on a GPU provider it stays on the GPU through IO binding."""
        import torch

        if self.provider == "cpu" or batch.device.type != "cuda":
            return torch.from_numpy(self._infer(np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)))
        x = batch.detach().to(torch.float32).contiguous()
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
        if self.provider != "cpu":
            import torch

            torch.cuda.synchronize()

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


def _warn_fallback(path: Path, requested: str, why: str) -> None:
    from toolkit.console import warn

    if ort_conflict() is not None:  # the usual reason a GPU provider is missing, and not fixed by installing more
        warn(f"running {path.name} on the CPU: {ort_conflict()}")
        return
    warn(f"{why}; running {path.name} on the CPU instead; for ort-{requested}, {gpu_install_hint()}")
