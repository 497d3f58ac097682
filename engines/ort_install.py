"""How ONNX Runtime is installed here: which distributions, whether they clash, and how to get its GPU providers.

ONNX Runtime ships as several distributions (onnxruntime, onnxruntime-gpu, …) that install the
same ``onnxruntime`` module over each other; its GPU providers also need the CUDA, cuDNN and
TensorRT libraries that other wheels bring. The ONNX Runtime engine warns with these hints when
it falls back to another provider, and ``rtk doctor`` reports them.
"""

from __future__ import annotations

import importlib.util

from toolkit.core.errors import RtkError, install_hint
from toolkit.core.trt.library import import_tensorrt, major_version


def load_gpu_libraries(ort, provider: str) -> str | None:
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


#: Distributions that install the ``onnxruntime`` module; any two overwrite each other's files.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")


def installed_ort_distributions() -> list[tuple[str, str]]:
    """(name, version) of every ONNX Runtime distribution installed, from the package metadata."""
    from importlib import metadata  # its import pulls in the email package: `rtk --help` must not pay for it

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
        f"missing; keep one: pip uninstall -y {' '.join(names)} && {install_hint('gpu')} (the cpu extra for the CPU)"
    )


def gpu_install_hint() -> str:
    """The command that gives this environment ONNX Runtime's GPU providers, or the conflict to resolve first."""
    conflict = ort_conflict()
    if conflict is not None:
        return conflict
    if any(name == "onnxruntime" for name, _ in installed_ort_distributions()):
        return f"install onnxruntime-gpu in place of the CPU build: pip uninstall -y onnxruntime && {install_hint('gpu')}"
    return f"install onnxruntime-gpu: {install_hint('gpu')}"
