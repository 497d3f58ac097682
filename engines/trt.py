"""TensorRT engine: a deserialised plan run with the named-tensor API on torch CUDA buffers.

Before TensorRT sees the plan, its sidecar (``MODEL.engine.json``) is checked against the
running TensorRT version and GPU, and the plan's sha256 against the sidecar's, so a mismatch is
one sentence naming the ``rtk build`` command instead of TensorRT's "version tag does not
match". Device buffers are torch CUDA tensors (torch is already a dependency; no pycuda).
"""

from __future__ import annotations

import os
from typing import Any

from engines.base import TensorEngine
from engines.names import EngineName
from toolkit.core.console import warn
from toolkit.core.errors import RtkError
from toolkit.core.files import readable_file
from toolkit.core.trt import library as trt_library
from toolkit.core.trt.library import engine_memory_bytes, engine_profile, engine_tensors
from toolkit.core.trt.sidecar import (
    TrtPlatform,
    check_engine_file,
    check_engine_tensors,
    check_platform,
    gpu_name_warning,
    read_sidecar,
    rebuild_command,
)


class TrtEngine(TensorEngine):
    """A TensorRT engine built by ``rtk build``.

    Args:
        path: the ``.engine``/``.plan`` file; its sidecar ``<path>.json`` must be beside it.
        device: ``"cuda"`` or ``"cuda:N"`` (anything else means the current CUDA device).

    Raises:
        RtkError: TensorRT or a GPU missing; sidecar missing or edited; engine built for another
            TensorRT version or GPU; engine file replaced; TensorRT cannot deserialise it.
    """

    def __init__(self, path: str | os.PathLike, device: str | None = "cuda"):
        trt = trt_library.import_tensorrt("the trt engine")
        import torch

        path = readable_file(path, "a TensorRT engine")
        dev = trt_library.open_device(device)
        sidecar = read_sidecar(path)
        platform = TrtPlatform(str(trt.__version__), dev.name(), dev.capability())
        check_platform(sidecar, platform, path)
        warning = gpu_name_warning(sidecar, platform)
        if warning:
            warn(warning)
        data = path.read_bytes()
        check_engine_file(sidecar, path, data)
        log = trt_library.logger(trt)
        self._log = log
        with dev.activate():
            since = log.mark()
            self._engine = trt_library.deserializer(trt, dev).deserialize_cuda_engine(data)
            if self._engine is None:
                raise RtkError(
                    f"TensorRT cannot load {path}: {log.last_error(since)}; "
                    f"rebuild it with `{rebuild_command(sidecar, path)}`"
                )
            inputs, outputs = engine_tensors(trt, self._engine)
            if len(inputs) != 1 or len(outputs) != 1:
                raise RtkError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; rtk engines have one of each")
            check_engine_tensors(sidecar, path, inputs, outputs, engine_profile(self._engine, inputs[0].name))
            since = log.mark()
            self._context = self._engine.create_execution_context()
            if self._context is None:
                # TensorRT returns None when it cannot allocate the activations of the largest profile shape.
                memory = engine_memory_bytes(self._engine) / 2**20
                self._engine = None
                raise RtkError(
                    f"TensorRT cannot create an execution context for {path} on {dev} ({log.last_error(since)}); it needs "
                    f"{memory:.0f} MiB of GPU memory for batch {sidecar.max_batch}: free GPU memory, or rebuild with a "
                    f"smaller --max-batch"
                )
            self._stream = dev.new_stream()
        super().__init__(
            EngineName("trt", precision=sidecar.precision), sidecar.spec, sidecar.preprocess, str(dev),
            min_batch=sidecar.min_batch, max_batch=sidecar.max_batch,
        )
        self.path = path
        self.sidecar = sidecar
        #: GPU memory TensorRT holds for this engine outside torch's allocator: plan and context.
        self.device_memory_bytes = len(data) + engine_memory_bytes(self._engine)
        self._torch = torch
        self._dev = dev
        self._input, self._output = inputs[0].name, outputs[0].name
        self._input_dtype = getattr(torch, inputs[0].dtype)
        self._output_dtype = getattr(torch, outputs[0].dtype)

    def _batch_refused(self, n: int) -> str:
        """A batch outside the optimisation profile, named as such, with the build that takes it."""
        lo, opt, hi = self.sidecar.profile
        return (
            f"batch size {n} is outside {self.path.name}'s optimisation profile ({lo}..{hi}); "
            f"split the batch or rebuild with a wider profile, e.g. `rtk build {self.sidecar.onnx} "
            f"--precision {self.precision} --max-batch {max(n, hi)}`"
        )

    #: run_device orders its work on the caller's current stream: CUDA events need no host sync.
    stream_ordered = True

    def _run_device(self, batch: Any) -> Any:
        """Run a torch tensor (any device; moved to the engine's GPU) and return logits on the GPU.

        The engine works on its own CUDA stream, ordered after the caller's current stream and
        before anything the caller queues next, so no host synchronisation is added.

        Raises:
            RtkError: TensorRT refused the shape or a tensor address, or failed to run; the
                previous batch's addresses are never silently reused.
        """
        dev, context = self._dev, self._context
        caller = dev.current_stream()
        dev.wait(self._stream, caller)
        # TensorRT runs on the device it deserialised the engine on, which need not be the current one.
        with dev.activate(), dev.use_stream(self._stream):
            x = trt_library.on_device(batch, dev, self._input_dtype)
            since = self._log.mark()
            if not context.set_input_shape(self._input, tuple(x.shape)):
                raise RtkError(f"TensorRT refused input shape {tuple(x.shape)} for {self.path.name}: {self._log.last_error(since)}")
            out = dev.empty(tuple(context.get_tensor_shape(self._output)), self._output_dtype)
            for name, tensor in ((self._input, x), (self._output, out)):
                if not context.set_tensor_address(name, tensor.data_ptr()):
                    raise RtkError(
                        f"TensorRT refused the address of {name!r} for {self.path.name} "
                        f"({tensor.data_ptr():#x}): {self._log.last_error(since)}"
                    )
            if not context.execute_async_v3(dev.stream_handle(self._stream)):
                raise RtkError(f"TensorRT failed to run {self.path.name}: {self._log.last_error(since)}")
        if x is batch:  # the caller's tensor was read on our stream: keep its memory until then
            dev.keep_until_done(batch, self._stream)
        dev.wait(caller, self._stream)
        dev.keep_until_done(out, caller)
        return out

    def synchronize(self) -> None:
        self._dev.synchronize()

    def close(self) -> None:
        if not self._closed:
            self._stream.synchronize()  # work still queued on the stream uses the context
        super().close()
        # The context must go before the engine (the runtime is the process's and stays).
        self._context = None
        self._engine = None
