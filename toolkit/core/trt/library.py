"""What the TensorRT engine and the engine builder share: the import, the version, one logger,
one runtime per GPU, the GPU itself, and the engine's I/O tensors as rtk describes them.

TensorRT keeps one logger per process: the first ``ILogger`` handed to a ``Builder`` or
``Runtime`` receives every later message, whichever object logged it. So rtk makes exactly one
(:func:`logger`), and asks it for the errors logged since an operation started
(:meth:`ErrorLog.mark`, :meth:`ErrorLog.last_error`) instead of the last error ever seen.

Nothing here runs at import time and nothing imports an engine or a CLI module, so the sidecar
checks (:mod:`toolkit.core.trt.sidecar`), the builder (:mod:`exporters.trt`) and the engine
(:mod:`engines.trt`) can all use it.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from types import ModuleType
from typing import Any

from toolkit.core.errors import RtkError, first_line, install_hint, require
from toolkit.core.trt.sidecar import TensorInfo, TrtPlatform

#: TensorRT binds a tensor only at an address aligned to this many bytes; at another address
#: ``set_tensor_address`` returns False and the previous address stays bound.
ALIGNMENT = 256

#: TensorRT ``DataType`` member names → the numpy/torch dtype names rtk runs. Other types
#: (INT8, FP8, INT4…) are not a classifier's input or output here and are refused by name.
DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64"}

_NO_REASON = "TensorRT gave no reason"


def import_tensorrt(purpose: str) -> ModuleType:
    """Import ``tensorrt`` for ``purpose``.

    Raises:
        RtkError: not installed (with the install command), or installed but broken: TensorRT's
            wheels load CUDA libraries on import, which fails with OSError or RuntimeError when
            they are missing or mismatched. Either way it is one sentence, never a traceback.
    """
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        try:
            return require("tensorrt", purpose)  # raises the install hint
        except RtkError as exc:
            raise RtkError(f"{exc}{_no_gpu_note()}") from None
    except Exception as exc:  # noqa: BLE001 - a broken install raises whatever its loader raises
        raise RtkError(
            f"tensorrt is installed but cannot be imported ({type(exc).__name__}: {first_line(exc)}), so {purpose} "
            f"cannot run; reinstall it with: {install_hint('trt')}"
        ) from None


def cuda_gpu_present() -> bool:
    """Whether torch sees an NVIDIA GPU with CUDA here (torch is a dependency; only the GPU may be missing)."""
    import torch

    return bool(torch.cuda.is_available())


def _no_gpu_note() -> str:
    """Said after TensorRT's install hint on a machine where installing it would not be enough."""
    return "" if cuda_gpu_present() else "; TensorRT also needs an NVIDIA GPU with CUDA, and this machine has none that torch sees"


def major_version(trt: ModuleType) -> int:
    """TensorRT's major version (10, 11…) from ``tensorrt.__version__``."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        raise RtkError(f"cannot read TensorRT's version from {trt.__version__!r}") from None


def has_fp16_flag(trt: ModuleType) -> bool:
    """True on TensorRT 10 (``BuilderFlag.FP16`` exists); TensorRT 11 builds fp16 only strongly typed."""
    return hasattr(trt.BuilderFlag, "FP16")


class ErrorLog:
    """TensorRT's process-wide logger: errors kept with a sequence number, info chatter dropped."""

    def __init__(self, trt: ModuleType):
        self._trt = trt
        self._errors: list[tuple[int, str]] = []
        self._count = 0
        self._lock = threading.Lock()
        severity = trt.ILogger.Severity
        self._kept = (severity.INTERNAL_ERROR, severity.ERROR)
        log = self

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                if severity in log._kept:
                    log.record(str(msg).strip())

        self.ilogger = _Logger()

    def record(self, message: str) -> None:
        with self._lock:
            self._count += 1
            self._errors.append((self._count, message))
            del self._errors[:-100]  # a long-running process keeps only recent errors

    def mark(self) -> int:
        """A point to ask :meth:`last_error` from: call it before a TensorRT operation."""
        with self._lock:
            return self._count

    def last_error(self, since: int = 0) -> str:
        """The last error logged after ``since`` (a :meth:`mark`), or a sentence saying there is none."""
        with self._lock:
            fresh = [message for number, message in self._errors if number > since]
        return fresh[-1] if fresh else _NO_REASON


_LOGS: dict[int, ErrorLog] = {}
_RUNTIMES: dict[tuple[int, int], Any] = {}
_GUARD = threading.Lock()


def logger(trt: ModuleType) -> ErrorLog:
    """The one :class:`ErrorLog` of this process for this ``tensorrt`` module."""
    with _GUARD:
        log = _LOGS.get(id(trt))
        if log is None or log._trt is not trt:
            log = _LOGS[id(trt)] = ErrorLog(trt)
        return log


def deserializer(trt: ModuleType, device: "CudaDevice") -> Any:
    """The ``tensorrt.Runtime`` for ``device``, made once (under that device) and reused."""
    key = (id(trt), device.index)
    with _GUARD:
        found = _RUNTIMES.get(key)
        if found is not None and found[0] is trt:
            return found[1]
    with device.activate():
        made = trt.Runtime(logger(trt).ilogger)
    with _GUARD:
        _RUNTIMES[key] = (trt, made)
    return made


class CudaDevice:
    """The CUDA operations TensorRT's builder and engine need, on one GPU, done with torch.

    Args:
        device: ``"cuda"`` / ``None`` (the current CUDA device) or ``"cuda:N"``.

    Raises:
        RtkError: no CUDA GPU, or no GPU with that index.
    """

    def __init__(self, device: str | None = None):
        torch = require("torch", "TensorRT")
        if not torch.cuda.is_available():
            raise RtkError("TensorRT needs an NVIDIA GPU with CUDA and none is available on this machine")
        text = str(device) if device is not None else "cuda"
        if not text.startswith("cuda"):
            text = "cuda"
        dev = torch.device(text)
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise RtkError(f"{text} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        self._torch = torch
        self.index = index
        self.torch_device = torch.device("cuda", index)

    def __str__(self) -> str:
        return f"cuda:{self.index}"

    def name(self) -> str:
        return self._torch.cuda.get_device_name(self.torch_device)

    def capability(self) -> str:
        major, minor = self._torch.cuda.get_device_capability(self.torch_device)
        return f"{major}.{minor}"

    def activate(self) -> contextlib.AbstractContextManager:
        """Make this GPU the current one: TensorRT builds and deserialises on the current device."""
        return self._torch.cuda.device(self.torch_device)

    def new_stream(self) -> Any:
        return self._torch.cuda.Stream(self.torch_device)

    def current_stream(self) -> Any:
        return self._torch.cuda.current_stream(self.torch_device)

    def use_stream(self, stream: Any) -> contextlib.AbstractContextManager:
        return self._torch.cuda.stream(stream)

    @staticmethod
    def stream_handle(stream: Any) -> int:
        return stream.cuda_stream

    @staticmethod
    def wait(stream: Any, other: Any) -> None:
        """Order ``stream`` after the work queued so far on ``other`` (no host synchronisation)."""
        stream.wait_stream(other)

    @staticmethod
    def keep_until_done(tensor: Any, stream: Any) -> None:
        """Keep ``tensor``'s memory from being reused until ``stream`` has finished with it."""
        tensor.record_stream(stream)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """A fresh tensor on this GPU (torch's caching allocator aligns blocks to 512 bytes)."""
        return self._torch.empty(shape, dtype=dtype, device=self.torch_device)

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self.torch_device)


def open_device(device: str | None = None) -> CudaDevice:
    """The GPU ``device`` names (``None``/``"cuda"`` = the current one). Tests replace this seam."""
    return CudaDevice(device)


def on_device(batch: Any, device: CudaDevice, dtype: Any) -> Any:
    """``batch`` as a contiguous ``dtype`` tensor on ``device`` at an address TensorRT accepts.

    A view such as ``t[1:]`` starts inside its parent's block; TensorRT refuses an address that
    is not :data:`ALIGNMENT`-aligned, so such a tensor is copied into a fresh allocation.
    """
    x = batch.to(device.torch_device, dtype=dtype, non_blocking=True).contiguous()
    if x.data_ptr() % ALIGNMENT:
        fresh = device.empty(tuple(x.shape), x.dtype)
        fresh.copy_(x)
        x = fresh
    return x


def current_platform(device: str | None = None) -> TrtPlatform:
    """The installed TensorRT version and the GPU ``device`` (default: the current CUDA device).

    Raises:
        RtkError: TensorRT is not installed or broken, or there is no such CUDA GPU.
    """
    trt = import_tensorrt("TensorRT engines")
    dev = open_device(device)
    return TrtPlatform(str(trt.__version__), dev.name(), dev.capability())


def tensor_dtype(trt_dtype: Any, name: str) -> str:
    """The dtype name rtk uses for a TensorRT ``DataType``.

    Raises:
        RtkError: a type rtk does not run (an INT8 or FP8 I/O tensor, say).
    """
    member = getattr(trt_dtype, "name", str(trt_dtype))
    if member not in DTYPES:
        raise RtkError(
            f"the engine's tensor {name!r} is of TensorRT type {member}; rtk runs engines whose inputs and outputs are "
            f"{', '.join(sorted(set(DTYPES.values())))}: export the model again with `rtk export` and rebuild"
        )
    return DTYPES[member]


def engine_tensors(trt: ModuleType, engine: Any) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """The engine's (inputs, outputs) from the named-tensor API, in TensorRT's order."""
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        info = TensorInfo(name, tensor_dtype(engine.get_tensor_dtype(name), name), tuple(engine.get_tensor_shape(name)))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(info)
    return tuple(inputs), tuple(outputs)


def engine_profile(engine: Any, input_name: str) -> tuple[int, int, int] | None:
    """(min, opt, max) batch of optimisation profile 0, or ``None`` when the engine has no profile."""
    if engine.num_optimization_profiles == 0 or -1 not in tuple(engine.get_tensor_shape(input_name)):
        return None
    shapes = engine.get_tensor_profile_shape(input_name, 0)
    return tuple(int(s[0]) for s in shapes)


def engine_memory_bytes(engine: Any) -> int:
    """Device memory a context of ``engine`` holds outside torch's allocator (activations, scratch)."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(size if size is not None else getattr(engine, "device_memory_size", 0))

