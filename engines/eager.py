"""Eager PyTorch engine: the reference runtime (fp32), plus fp16/bf16 autocast, channels_last and torch.compile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engines.base import TensorEngine
from engines.names import EngineName, parse_engine
from toolkit.core.errors import RtkError
from toolkit.core.spec import ModelSpec, Preprocess

if TYPE_CHECKING:
    import torch.nn as nn


class EagerEngine(TensorEngine):
    """A PyTorch module run in eval mode under ``torch.inference_mode``.

    Args:
        model: the network (put in eval mode and moved to ``device``).
        spec, preprocess: the artefact's metadata.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        name: which eager engine (:mod:`engines.names`): ``eager`` runs fp32; ``eager-fp16`` and
            ``eager-bf16`` run under autocast (weights stay fp32); ``-cl`` uses the channels-last
            memory format, ``-compile`` wraps the module with ``torch.compile``, ``-graph`` is
            replayed as a CUDA graph by the benchmark harness.

    Raises:
        RtkError: a name of another runtime, or a CUDA device on a machine without one.
    """

    stream_ordered = True

    def __init__(self, model: "nn.Module", spec: ModelSpec, preprocess: Preprocess, device: str = "cpu", name: "EngineName | str" = "eager"):
        import torch  # engines import torch on first use: `rtk --help` must not pay for it

        name = parse_engine(name)
        if name.runtime != "eager":
            raise RtkError(f"the eager engine runs PyTorch checkpoints, not {name}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RtkError(f"device {device} was asked for but no CUDA GPU is available; use --device cpu")
        super().__init__(name, spec, preprocess, device)
        self._torch = torch
        self._memory_format = torch.channels_last if name.channels_last else torch.contiguous_format
        self.model = model.eval().to(device=device, memory_format=self._memory_format)
        self._forward = torch.compile(self.model) if name.compile else self.model
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name.resolved_precision)

    def _run_device(self, batch: Any) -> Any:
        torch = self._torch
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=self._memory_format)
        with torch.inference_mode():
            if self._dtype is None:
                return self._forward(x)
            with torch.autocast(device_type=x.device.type, dtype=self._dtype):
                return self._forward(x).float()

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)

    def close(self) -> None:
        super().close()
        self.model = self._forward = None
