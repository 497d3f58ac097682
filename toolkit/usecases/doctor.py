"""``rtk doctor``: what this machine can run, why not, and what would enable it; ``--check`` runs it.

:func:`diagnose` looks, without running a model: torch and CUDA (GPUs, driver), the installed
ONNX Runtime distributions and which of their execution providers really start (a session is
created on a one-node ONNX graph with each), TensorRT's version and fp16 route, and the status
of one engine of every runtime family in :data:`engines.names.ALL_ENGINES`, with the command
that would enable it. :func:`run_check` then exports a small model and runs parity and a short
benchmark on every engine that can run here, and says which failed.

Like :mod:`toolkit.usecases.opening`, this module sits above ``engines``, ``exporters`` and ``benchmarks``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.environment import collect_environment, gpu_info
from benchmarks.harness import BenchOptions
from engines.names import ALL_ENGINES, parse_engine
from engines.ort_install import (
    gpu_install_hint,
    installed_ort_distributions,
    load_gpu_libraries,
    ort_conflict,
)
from exporters.onnx import ExportOptions, export_onnx
from toolkit.core.checkpoint import save_checkpoint
from toolkit.core.errors import RtkError, first_line, install_hint, module_install_hint
from toolkit.core.models import create_model
from toolkit.core.outputs import json_text, write_atomic
from toolkit.core.spec import ModelSpec, Preprocess
from toolkit.core.trt.library import has_fp16_flag, import_tensorrt, major_version
from toolkit.core.validation import POSITIVE
from toolkit.usecases.bench import benchmark_model
from toolkit.usecases.parity import ParityOptions, run_parity

#: Why an engine needing CUDA cannot run.
NO_CUDA = "needs an NVIDIA GPU with CUDA; torch sees none"


def cuda_hint(cuda_build: str | None) -> str:
    """What gives this environment CUDA: a GPU and its driver, and a CUDA build of torch when this one is not."""
    if cuda_build:
        return f"a machine with an NVIDIA GPU and its driver (this torch is already a CUDA {cuda_build} build)"
    return (
        "a machine with an NVIDIA GPU and its driver, and a CUDA build of torch in place of this CPU-only one "
        "(pip uninstall -y torch torchvision, then reinstall rtk without PyTorch's CPU wheel index)"
    )


@dataclass(frozen=True)
class EngineStatus:
    """Whether one engine can run here.

    Attributes:
        engine: its name (:mod:`engines.names`).
        status: ``available``, ``unavailable`` or ``unknown`` (a runtime rtk doctor has no probe for).
        reason: why not, for the others.
        install: the command or step that would enable it.
    """

    engine: str
    status: str
    reason: str | None = None
    install: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "status": self.status, "reason": self.reason, "install": self.install}


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` found; every section is plain JSON."""

    environment: dict[str, Any]
    torch: dict[str, Any]
    onnxruntime: dict[str, Any]
    tensorrt: dict[str, Any]
    engines: tuple[EngineStatus, ...]
    openvino: dict[str, Any] = field(default_factory=dict)

    def available(self) -> list[str]:
        return [e.engine for e in self.engines if e.status == "available"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "torch": self.torch,
            "onnxruntime": self.onnxruntime,
            "tensorrt": self.tensorrt,
            "openvino": self.openvino,
            "engines": [e.to_dict() for e in self.engines],
        }


def engine_families() -> list[str]:
    """One engine per runtime family, in :data:`ALL_ENGINES` order: ``eager``, ``ort``, ``ort-cuda``…"""

    seen: dict[str, str] = {}
    for name in ALL_ENGINES:
        seen.setdefault(parse_engine(name).family, name)
    return list(seen.values())


def diagnose() -> Diagnosis:
    """Look at this machine (a few seconds: each ONNX Runtime provider starts one session)."""

    import torch

    cuda = torch.cuda.is_available()
    torch_info = {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": cuda,
        "gpus": [gpu_info(f"cuda:{i}") for i in range(torch.cuda.device_count())] if cuda else [],
    }
    ort_info = _onnxruntime_info(cuda)
    trt_info = _tensorrt_info()
    ov_info = _openvino_info()
    found = {"ort": ort_info, "trt": trt_info, "ov": ov_info, "cuda_build": torch.version.cuda}
    engines = tuple(_engine_status(name, cuda, found) for name in engine_families())
    environment = collect_environment("cuda" if cuda else "cpu")
    return Diagnosis(environment, torch_info, ort_info, trt_info, engines, ov_info)


def _onnxruntime_info(cuda: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "distributions": [f"{name} {version}" for name, version in installed_ort_distributions()],
        "conflict": ort_conflict(),
    }
    if importlib.util.find_spec("onnxruntime") is None:
        info["error"] = f"onnxruntime is not installed; install it with: {module_install_hint('onnxruntime')}"
        return info
    import onnxruntime as ort

    info["version"] = ort.__version__
    info["available_providers"] = list(ort.get_available_providers())
    info["providers"] = {p: _provider_starts(ort, p) for p in info["available_providers"]}
    return info


def _provider_starts(ort, provider: str) -> dict[str, Any]:
    """Create a session on a one-node graph with ``provider`` first and see whether it is the one running."""

    with tempfile.TemporaryDirectory(prefix="rtk-doctor-") as folder:
        path = _relu_onnx(Path(folder) / "relu.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        problem = load_gpu_libraries(ort, "trt") if provider == "TensorrtExecutionProvider" else None
        try:
            fallback = [] if provider == "CPUExecutionProvider" else ["CPUExecutionProvider"]
            session = ort.InferenceSession(str(path), options, providers=[provider, *fallback])
            import numpy as np

            session.run(None, {"x": np.ones((1, 4), np.float32)})
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types; the reason is what matters
            return {"starts": False, "reason": first_line(exc)}
        running = session.get_providers()[0]
    if running != provider:
        reason = f"ONNX Runtime lists it but the session ran on {running} (its libraries did not load)"
        return {"starts": False, "reason": f"{reason}; {problem}" if problem else reason}
    return {"starts": True}


def _relu_onnx(path: Path) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return write_atomic(path, model.SerializeToString())


def _tensorrt_info() -> dict[str, Any]:
    if importlib.util.find_spec("tensorrt") is None:
        return {"installed": False, "error": f"TensorRT is not installed ({install_hint('trt')})"}
    try:
        trt = import_tensorrt("TensorRT engines")
    except RtkError as exc:
        return {"installed": True, "error": str(exc)}
    return {
        "installed": True,
        "version": str(trt.__version__),
        "major": major_version(trt),
        "fp16_route": "BuilderFlag.FP16 on the fp32 ONNX" if has_fp16_flag(trt) else "strongly typed, from the fp16 ONNX",
    }


def _openvino_info() -> dict[str, Any]:
    """OpenVINO's version and the CPU plugin's capabilities (which say whether ov-bf16 and ov-fp16 run here)."""
    if importlib.util.find_spec("openvino") is None:
        return {"installed": False, "error": f"OpenVINO is not installed ({install_hint('openvino')})"}
    try:
        import openvino as ov

        capabilities = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as exc:  # noqa: BLE001 - a broken install raises whatever its loader raises; the reason is what matters
        return {"installed": True, "error": f"OpenVINO is installed but its CPU plugin does not start ({first_line(exc)})"}
    return {"installed": True, "version": ov.get_version(), "cpu_capabilities": capabilities}


def _engine_status(name: str, cuda: bool, found: dict[str, Any]) -> EngineStatus:
    """The engine's status from what was found (``found``: the ``ort``, ``trt`` and ``ov`` sections and
    torch's ``cuda_build``); without CUDA, the GPU is named first among the reasons."""

    parsed = parse_engine(name)
    status = _software_status(name, parsed.family, found)
    if not parsed.needs_cuda or cuda:
        return status
    reasons = [NO_CUDA] + ([status.reason] if status.status == "unavailable" and status.reason else [])
    installs = [cuda_hint(found["cuda_build"])] + ([status.install] if status.status == "unavailable" and status.install else [])
    return EngineStatus(name, "unavailable", "; ".join(reasons), "; then ".join(installs))


def _software_status(name: str, family: str, found: dict[str, Any]) -> EngineStatus:
    ort_info, trt_info, ov_info = found["ort"], found["trt"], found["ov"]
    if family == "eager":
        return EngineStatus(name, "available")
    if family == "ov":
        if "error" in ov_info:
            return EngineStatus(name, "unavailable", ov_info["error"], install_hint("openvino"))
        units = [c for c in ("BF16", "FP16") if c in ov_info["cpu_capabilities"]]
        extra = f"; this CPU also runs {', '.join('ov-' + u.lower() for u in units)}" if units else "; this CPU has no bf16 or fp16 units (ov-bf16, ov-fp16 refused)"
        return EngineStatus(name, "available", f"OpenVINO {ov_info['version']}{extra}")
    if family.startswith("ort"):
        if "error" in ort_info:
            return EngineStatus(name, "unavailable", ort_info["error"], module_install_hint("onnxruntime"))
        provider = {"ort": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}.get(family)
        if provider is None:
            return EngineStatus(name, "unknown", "rtk doctor has no probe for this provider; rtk doctor --check tries it")
        started = ort_info["providers"].get(provider)
        if started is None:
            return EngineStatus(name, "unavailable", f"ONNX Runtime {ort_info['version']} here has no {provider}", gpu_install_hint())
        if not started["starts"]:
            hint = "pip install 'tensorrt>=10,<11' (ONNX Runtime's TensorRT provider links TensorRT 10)" if family == "ort-trt" else None

            return EngineStatus(name, "unavailable", f"{provider} does not start: {started['reason']}", hint or gpu_install_hint())
        return EngineStatus(name, "available")
    if family == "trt":
        if "error" in trt_info:
            return EngineStatus(name, "unavailable", trt_info["error"], install_hint("trt"))
        return EngineStatus(name, "available")
    return EngineStatus(name, "unknown", "rtk doctor has no probe for this runtime; rtk doctor --check tries it")


# --------------------------------------------------------------------------- --check


@dataclass(frozen=True)
class EngineCheck:
    """One engine run by :func:`run_check`: parity against eager fp32 and a short benchmark."""

    engine: str
    status: str  # passed | failed | unavailable
    reason: str | None = None
    parity: dict[str, Any] | None = None
    bench: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "status": self.status, "reason": self.reason, "parity": self.parity, "bench": self.bench}


@dataclass(frozen=True)
class CheckReport:
    """What ``rtk doctor --check`` wrote: the diagnosis and each engine's check."""

    diagnosis: Diagnosis
    model: dict[str, Any]
    checks: tuple[EngineCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.status != "failed" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "rtk.doctor",
            "version": 1,
            "passed": self.passed,
            "model": self.model,
            "checks": [c.to_dict() for c in self.checks],
            "diagnosis": self.diagnosis.to_dict(),
        }


def check_model(folder: Path) -> Path:
    """A small real checkpoint (ResNet-18, small stem, 32×32 RGB, 10 classes, BatchNorm statistics set)."""
    import torch

    spec = ModelSpec(arch="resnet18", num_classes=10, class_names=tuple(f"class{i}" for i in range(10)), stem="small")
    pre = Preprocess(input_size=(32, 32), resize=32, crop=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model(spec)
    with torch.no_grad():
        model.train()  # a few batches give BatchNorm real statistics, so eval logits are not degenerate
        for _ in range(2):
            model(torch.randn(4, 3, 32, 32, generator=generator))
    return save_checkpoint(folder / "doctor.pth", model.eval(), spec, pre, {"epoch": 0, "metrics": {}})


def run_check(
    diagnosis: Diagnosis,
    engines: list[str] | None = None,
    device: str | None = None,
    bench_s: float = 0.5,
    on_engine=None,
) -> CheckReport:
    """Export a small model, then parity and a short benchmark on every engine that can run here.

    Args:
        diagnosis: from :func:`diagnose`; engines it marks unavailable are reported, not run.
        engines: the engines to check (default: one per runtime family, :func:`engine_families`).
        device: ``cpu`` or ``cuda[:N]`` (default: ``cuda`` when torch sees a GPU).
        bench_s: seconds of timing per engine and batch size.
        on_engine: called with each :class:`EngineCheck` as it is done.

    Returns:
        The report; ``report.passed`` is false when an engine that should run failed.
    """

    POSITIVE.check(bench_s, "--bench-seconds")
    statuses = {e.engine: e for e in diagnosis.engines}
    device = device or ("cuda" if diagnosis.torch["cuda_available"] else "cpu")
    names = engines or engine_families()
    checks = []
    with tempfile.TemporaryDirectory(prefix="rtk-doctor-") as folder:
        checkpoint = check_model(Path(folder))
        if any(parse_engine(n).runtime != "eager" for n in names):
            export_onnx(checkpoint, options=ExportOptions(precision="all"))  # what ort/trt engines run, checked
        for name in names:
            status = statuses.get(name)
            if status is not None and status.status == "unavailable":
                check = EngineCheck(name, "unavailable", status.reason)
            else:
                check = _check_engine(checkpoint, name, device, bench_s)
            checks.append(check)
            if on_engine is not None:
                on_engine(check)
    model = {"arch": "resnet18", "stem": "small", "input": [3, 32, 32], "num_classes": 10, "device": device}
    return CheckReport(diagnosis, model, tuple(checks))


def _check_engine(checkpoint: Path, name: str, device: str, bench_s: float) -> EngineCheck:
    """Parity (batches of 1 and 4, random inputs) and a short benchmark of one engine."""

    try:
        parity = run_parity(checkpoint, ParityOptions(engines=(name,), batch_sizes=(1, 4), device=device, max_samples=None))
        bench = benchmark_model(
            checkpoint,
            BenchOptions(engines=(name,), batch_sizes=(1, 4), device=device, warmup_s=min(bench_s, 0.2), duration_s=bench_s, baseline=False),
        )
    except RtkError as exc:
        return EngineCheck(name, "failed", str(exc))
    if parity.skipped:
        return EngineCheck(name, "failed", parity.skipped[0].reason)
    result = parity.results[0].to_dict()
    rows = [
        {"batch_size": r.batch_size, "status": r.status, "throughput_ips": r.throughput_ips,
         "latency_ms_p50": (r.latency_ms or {}).get("p50"), "reason": r.reason}
        for r in bench.results
    ]  # fmt: skip
    failed = [r for r in rows if r["status"] != "ok"]
    if not parity.passed:
        return EngineCheck(name, "failed", f"{name} is outside parity tolerance against eager fp32", result, rows)
    if failed:
        return EngineCheck(name, "failed", f"{name} benchmark: {failed[0]['reason'] or failed[0]['status']}", result, rows)
    return EngineCheck(name, "passed", None, result, rows)


def write_report(report: CheckReport, path: str | os.PathLike) -> Path:
    """The report as JSON at ``path``, written atomically."""

    return write_atomic(Path(path), json_text(report.to_dict(), default=str))

