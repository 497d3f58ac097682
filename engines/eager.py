"""Eager PyTorch engine: the reference runtime (fp32), plus fp16/bf16 autocast, channels_last and torch.compile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from engines.base import Engine
from toolkit.core.errors import RtkError
from toolkit.core.spec import ModelSpec, Preprocess

if TYPE_CHECKING:
    import torch.nn as nn

PRECISIONS = ("fp32", "fp16", "bf16")


class EagerEngine(Engine):
    """A PyTorch module run in eval mode under ``torch.inference_mode``.

    Args:
        model: the network (put in eval mode and moved to ``device``).
        spec, preprocess: the artefact's metadata.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        precision: ``fp32``; ``fp16``/``bf16`` run under autocast (weights stay fp32).
        channels_last: use the channels-last memory format.
        compile: wrap the module with ``torch.compile``.
    """

    def __init__(
        self,
        model: "nn.Module",
        spec: ModelSpec,
        preprocess: Preprocess,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
    ):
        import torch

        if precision not in PRECISIONS:
            raise RtkError(f"eager precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RtkError(f"device {device} was asked for but no CUDA GPU is available; use --device cpu")
        super().__init__(spec, preprocess, device, precision)
        self._torch = torch
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(device=device, memory_format=self._memory_format)
        self._forward = torch.compile(self.model) if compile else self.model
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        variant = [precision] if precision != "fp32" else []
        variant += ["cl"] if channels_last else []
        variant += ["compile"] if compile else []
        self.name = "-".join(["eager", *variant])

    device_resident = True
    stream_ordered = True

    def _run_device(self, batch: Any) -> Any:
        torch = self._torch
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=self._memory_format)
        with torch.inference_mode():
            if self._dtype is None:
                return self._forward(x)
            with torch.autocast(device_type=x.device.type, dtype=self._dtype):
                return self._forward(x).float()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._to_host(self._run_device(self._torch.from_numpy(batch)))

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)

    def close(self) -> None:
        super().close()
        self.model = self._forward = None
