"""The machine and software a benchmark ran on, recorded with every result.

Numbers without their environment cannot be compared: the CPU model and the threads used
decide CPU figures, the GPU, driver and CUDA decide GPU figures, and every runtime's version
moves both. Versions are read from package metadata where possible so that recording them
does not import (or require) TensorRT or ONNX Runtime.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from typing import Any

from toolkit import __version__

#: Distributions whose versions are recorded (distribution name -> JSON key).
PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "onnxruntime": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime_gpu",
    "openvino": "openvino",
    "tensorrt": "tensorrt",
    "onnx": "onnx",
    "numpy": "numpy",
}


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to what the platform module knows
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS/Windows have no sched_getaffinity
        return os.cpu_count() or 1


def package_versions() -> dict[str, str | None]:
    """Installed versions of the runtimes that matter for speed (``None`` = not installed)."""
    from importlib import metadata  # its import pulls in the email package: `rtk --help` must not pay for it

    versions: dict[str, str | None] = {"rtk": __version__}
    for dist, key in PACKAGES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    if versions["tensorrt"] is None:
        # Some images ship TensorRT's bindings without pip metadata (NGC containers).
        versions["tensorrt"] = _module_version("tensorrt")
    return versions


def _module_version(name: str) -> str | None:
    import importlib.util

    if importlib.util.find_spec(name) is None:
        return None
    import importlib

    try:
        return getattr(importlib.import_module(name), "__version__", None)
    except ImportError:  # present but broken (missing shared libraries): record as absent
        return None


def gpu_info(device: str = "cuda") -> dict[str, Any]:
    """Name, compute capability, memory, driver and CUDA version of ``device``; ``{}`` without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return {}
    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    return {
        "name": props.name,
        "index": index,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_mb": round(props.total_memory / 2**20),
        "multiprocessors": props.multi_processor_count,
        "driver": _nvidia_smi("driver_version", index),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def _nvidia_smi(field: str, index: int) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader", f"--id={index}"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # nvidia-smi missing or failing: the driver version stays unknown
    return out.stdout.strip() or None


def collect_environment(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Everything needed to judge or reproduce a benchmark's numbers.

    Args:
        device: the device the engines ran on (``"cpu"`` or ``"cuda[:N]"``).
        threads: the intra-op threads the run used (``None`` = the runtimes' defaults).

    Returns:
        A JSON-serialisable dict: ``created`` (UTC ISO time), ``host``, ``os``, ``python``,
        ``cpu`` (model, cores, threads), ``gpu`` (empty on CPU-only machines), ``device``
        and ``versions``.
    """
    import torch

    gpu = gpu_info(device) if device.startswith("cuda") else {}
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": {
            "model": cpu_model(),
            "cores": usable_cores(),
            "threads": threads if threads is not None else torch.get_num_threads(),
        },
        "gpu": gpu,
        "device": device,
        "device_name": gpu.get("name") if gpu else f"{cpu_model()} ({usable_cores()} cores)",
        "versions": package_versions(),
    }
