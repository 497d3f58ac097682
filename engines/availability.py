"""Whether an engine can run on this machine, told without opening it: no export, no build, no session.

A command that runs several engines (``rtk parity``) asks first, so that an engine that cannot run
here (no GPU, no TensorRT, no onnxruntime-gpu, no OpenVINO) is reported in a second instead of
after minutes of exporting, tracing and comparing the others. Opening the engine stays the proof:
what passes here can still fail to open, and is then reported with that reason.
"""

from __future__ import annotations

import importlib.util
import sys

from engines.names import EngineName
from engines.ort_install import gpu_install_hint
from toolkit.core.errors import install_hint, module_install_hint
from toolkit.core.trt.library import cuda_gpu_present

#: ONNX Runtime's execution providers by the short name engine names use.
_PROVIDERS = {"cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}


def why_not_here(name: EngineName) -> str | None:
    """Why ``name`` cannot run on this machine, when that is cheap to tell; ``None`` when it may run.

    Checks, in that order: a CUDA GPU for an engine that needs one, then the package its runtime
    needs (TensorRT, ONNX Runtime and the execution provider asked for, OpenVINO). All are said
    together, so one reading tells the whole way to make it run.
    """
    reasons = []
    if name.needs_cuda and not cuda_gpu_present():
        reasons.append("needs an NVIDIA GPU with CUDA, and this machine has none that torch sees")
    if (name.runtime == "trt" or name.provider == "trt") and not _installed("tensorrt"):
        reasons.append(f"needs TensorRT, which is not installed ({install_hint('trt')})")
    if name.runtime == "ort":
        reasons += _ort_problem(name)
    if name.runtime == "ov" and not _installed("openvino"):
        reasons.append(f"needs OpenVINO, which is not installed ({module_install_hint('openvino')})")
    return f"{name} {'; it also '.join(reasons)}" if reasons else None


def _ort_problem(name: EngineName) -> list[str]:
    if not _installed("onnxruntime"):
        return [f"needs ONNX Runtime, which is not installed ({module_install_hint('onnxruntime')})"]
    provider = _PROVIDERS.get(name.provider or "cpu")
    if provider is None:
        return []
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        return []
    return [f"needs ONNX Runtime's {provider}, which onnxruntime {ort.__version__} here lacks ({gpu_install_hint()})"]


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (one set to ``None`` in ``sys.modules`` cannot)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None
