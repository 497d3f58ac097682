"""TensorRT engine: a deserialised plan run with the named-tensor API on torch CUDA buffers.

Before TensorRT sees the plan, its sidecar (``MODEL.engine.json``) is checked against the
running TensorRT version and GPU, and the plan's sha256 against the sidecar's, so a mismatch is
one sentence naming the ``rtk build`` command instead of TensorRT's "version tag does not
match". Device buffers are torch CUDA tensors (torch is already a dependency; no pycuda).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine
from toolkit.sidecar import (
    RuntimeInfo,
    TensorInfo,
    check_engine_file,
    check_engine_tensors,
    check_runtime,
    gpu_name_warning,
    read_sidecar,
    rebuild_command,
)
from toolkit.errors import RtkError, require

# TensorRT DataType member names → numpy dtype names (what the sidecar records).
_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def make_logger(trt):
    """A ``tensorrt.ILogger`` that keeps errors (for messages) and drops info chatter."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg).strip())

        def last_error(self) -> str:
            return self.errors[-1] if self.errors else "TensorRT gave no reason (run with a GPU and check the driver)"

    return _Logger()


def _cuda_device(device: str | None = None):
    """The torch CUDA device to use; raises when there is none."""
    torch = require("torch", "the trt engine")
    if not torch.cuda.is_available():
        raise RtkError("TensorRT needs an NVIDIA GPU with CUDA and none is available on this machine")
    if device is None or not str(device).startswith("cuda"):
        return torch.device("cuda", torch.cuda.current_device())
    dev = torch.device(device)
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())


def current_runtime(device: str | None = None) -> RuntimeInfo:
    """The installed TensorRT version and the GPU ``device`` (default: the current CUDA device).

    Raises:
        RtkError: TensorRT is not installed, or there is no CUDA GPU.
    """
    trt = require("tensorrt", "TensorRT engines")
    import torch

    dev = _cuda_device(device)
    major, minor = torch.cuda.get_device_capability(dev)
    return RuntimeInfo(trt.__version__, torch.cuda.get_device_name(dev), f"{major}.{minor}")


def engine_tensors(trt, engine) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """The engine's (inputs, outputs) from the named-tensor API, in TensorRT's order."""
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        info = TensorInfo(name, _DTYPES.get(dtype.name, dtype.name.lower()), tuple(engine.get_tensor_shape(name)))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(info)
    return tuple(inputs), tuple(outputs)


def engine_profile(engine, input_name: str) -> tuple[int, int, int] | None:
    """(min, opt, max) batch of optimisation profile 0, or ``None`` when the engine has no profile."""
    if engine.num_optimization_profiles == 0 or -1 not in tuple(engine.get_tensor_shape(input_name)):
        return None
    shapes = engine.get_tensor_profile_shape(input_name, 0)
    return tuple(int(s[0]) for s in shapes)


class TrtEngine(Engine):
    """A TensorRT engine built by ``rtk build``.

    Args:
        path: the ``.engine``/``.plan`` file; its sidecar ``<path>.json`` must be beside it.
        device: ``"cuda"`` or ``"cuda:N"`` (anything else means the current CUDA device).

    Raises:
        RtkError: TensorRT or a GPU missing; sidecar missing or edited; engine built for another
            TensorRT version or GPU; engine file replaced; TensorRT cannot deserialise it.
    """

    def __init__(self, path: str | os.PathLike, device: str | None = "cuda"):
        trt = require("tensorrt", "the trt engine")
        import torch

        path = Path(path)
        if not path.is_file():
            raise RtkError(f"{path} does not exist")
        dev = _cuda_device(device)
        sidecar = read_sidecar(path)
        runtime = current_runtime(str(dev))
        check_runtime(sidecar, runtime, path)
        warning = gpu_name_warning(sidecar, runtime)
        if warning:
            from toolkit.console import warn

            warn(warning)
        data = path.read_bytes()
        check_engine_file(sidecar, path, data)
        with torch.cuda.device(dev):
            self._logger = make_logger(trt)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise RtkError(
                    f"TensorRT cannot load {path}: {self._logger.last_error()}; "
                    f"rebuild it with `{rebuild_command(sidecar, path)}`"
                )
            inputs, outputs = engine_tensors(trt, self._engine)
            check_engine_tensors(sidecar, path, inputs, outputs, engine_profile(self._engine, inputs[0].name))
            if len(inputs) != 1 or len(outputs) != 1:
                raise RtkError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; rtk engines have one of each")
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(dev)
        super().__init__(sidecar.spec, sidecar.preprocess, str(dev), sidecar.precision)
        self.name = "trt" if sidecar.precision == "fp16" else f"trt-{sidecar.precision}"
        self.path = path
        self.sidecar = sidecar
        self.min_batch, self.max_batch = sidecar.min_batch, sidecar.max_batch
        self._torch = torch
        self._device = dev
        self._input, self._output = inputs[0].name, outputs[0].name
        self._input_dtype = getattr(torch, inputs[0].dtype)
        self._output_dtype = getattr(torch, outputs[0].dtype)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """The base checks, with a batch outside the optimisation profile named as such."""
        in_profile = self.min_batch <= shape[0] <= self.max_batch if len(shape) == 4 else True
        if not in_profile and tuple(shape[1:]) == self.input_shape:
            lo, opt, hi = self.sidecar.profile
            raise RtkError(
                f"batch size {shape[0]} is outside {self.path.name}'s optimisation profile ({lo}..{hi}); "
                f"split the batch or rebuild with a wider profile, e.g. `rtk build {self.sidecar.onnx} "
                f"--precision {self.precision} --max-batch {max(shape[0], hi)}`"
            )
        super().check_shape(shape)

    device_resident = True

    def _run_device(self, batch: Any) -> Any:
        """Run a torch tensor (any device; moved to the engine's GPU) and return logits on the GPU.

        The engine works on its own CUDA stream, ordered after the caller's current stream and
        before anything the caller queues next, so no host synchronisation is added.
        """
        torch = self._torch
        caller = torch.cuda.current_stream(self._device)
        self._stream.wait_stream(caller)
        # TensorRT runs on the device it deserialised the engine on, which need not be the current one.
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            x = batch.to(self._device, dtype=self._input_dtype, non_blocking=True).contiguous()
            self._context.set_input_shape(self._input, tuple(x.shape))
            out = torch.empty(tuple(self._context.get_tensor_shape(self._output)), dtype=self._output_dtype, device=self._device)
            self._context.set_tensor_address(self._input, x.data_ptr())
            self._context.set_tensor_address(self._output, out.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RtkError(f"TensorRT failed to run {self.path.name}: {self._logger.last_error()}")
        if x is batch:  # the caller's tensor was read on our stream: keep its memory until then
            batch.record_stream(self._stream)
        caller.wait_stream(self._stream)
        out.record_stream(caller)
        return out

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._to_host(self._run_device(self._torch.from_numpy(batch)))

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self._device)

    def close(self) -> None:
        if not self._closed:
            self._stream.synchronize()  # work still queued on the stream uses the context
        super().close()
        # The context must go before the engine, the engine before the runtime.
        self._context = None
        self._engine = None
        self._runtime = None
