"""The engine contract every runtime implements.

Modelled on a runner: the public :meth:`Engine.__call__` checks the input once for every
runtime, and each runtime implements only the private hooks (:meth:`Engine._infer`, and
:meth:`Engine._run_device` where it has a device-resident path). An engine's identity (its
canonical name, precision and batch limits) is given to the base constructor once and cannot be
changed afterwards. Engines are context managers.

The output is checked here too, once for every runtime: one row of ``num_classes`` logits per
input (an ONNX file whose metadata names other classes than its graph computes fails here, not
later with an index error), and every logit finite. The finite check lives in the contract, not
in each command, because every result that reaches a user (predict rows, eval accuracy, parity's
reference) comes through here: a model that computes NaN (a NaN weight, a negative BatchNorm
variance) fails in one sentence instead of printing NaN as a probability. Three callers opt out
with ``finite=False``, each for a reason: parity and the export check measure a candidate's
non-finite logits as that engine's failure (and go on to judge the others), and the benchmark
times calls whose results nobody reads.
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

import numpy as np

from engines.names import EngineName
from toolkit.core.errors import RtkError
from toolkit.core.spec import ModelSpec, Preprocess


class NonFiniteOutput(RtkError):
    """An engine computed NaN or infinite logits.

    Attributes:
        rows: the inputs of the batch (indices) whose logits are not all finite.
    """

    def __init__(self, message: str, rows: Sequence[int] = ()):
        super().__init__(message)
        self.rows = tuple(rows)


class Engine(abc.ABC):
    """A loaded model that maps an NCHW float32 batch to logits.

    Args:
        name: what runs, as a parsed name: its canonical spelling (``eager-fp16``, ``ort-cuda``,
            ``trt``) is :attr:`name`, so a row in a report can be asked for again by it, and its
            precision is :attr:`precision`.
        spec: the network's spec (from the artefact).
        preprocess: how inputs must be prepared (from the artefact).
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:N"``).
        min_batch, max_batch: the batch sizes the engine accepts (``max_batch`` ``None`` = any).
        fell_back_from: the engine that was asked for, when the runtime fell back to another
            provider (ONNX Runtime without its GPU libraries); ``None`` when this is what was asked for.
    """

    #: True when :meth:`run_device` queues its work on the caller's current CUDA stream (so CUDA
    #: events on that stream time it without a host sync); False when it blocks the host instead.
    stream_ordered: bool = False
    #: Whether :meth:`run_device` keeps device tensors on the device (the default copies through the host).
    device_resident: bool = False
    #: GPU memory the runtime holds outside torch's allocator (TensorRT's plan and context), bytes.
    device_memory_bytes: int = 0

    def __init__(
        self,
        name: EngineName,
        spec: ModelSpec,
        preprocess: Preprocess,
        device: str = "cpu",
        *,
        min_batch: int = 1,
        max_batch: int | None = None,
        fell_back_from: EngineName | None = None,
    ):
        self._identity = (str(name), name.resolved_precision, min_batch, max_batch, str(fell_back_from) if fell_back_from else None)
        self.spec = spec
        self.preprocess = preprocess
        self.device = device
        self._closed = False

    @property
    def name(self) -> str:
        """The engine's canonical name (:mod:`engines.names`), e.g. ``ort-fp16`` or ``eager-bf16-cl``."""
        return self._identity[0]

    @property
    def precision(self) -> str:
        """``fp32``, ``fp16``, ``bf16`` or ``int8``: what the engine computes in."""
        return self._identity[1]

    @property
    def min_batch(self) -> int:
        return self._identity[2]

    @property
    def max_batch(self) -> int | None:
        return self._identity[3]

    @property
    def fell_back_from(self) -> str | None:
        """The engine asked for, when the runtime runs this one in its place; ``None`` otherwise."""
        return self._identity[4]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input."""
        return (self.spec.in_chans, *self.preprocess.input_size)

    def __call__(self, batch: Any, *, finite: bool = True) -> np.ndarray:
        """Run a batch.

        Args:
            batch: NCHW float32 host array, or a torch tensor (see :meth:`run_device`).
            finite: refuse non-finite logits (see the module docstring for who passes ``False``).

        Returns:
            Logits as a float32 host array of shape (N, num_classes).

        Raises:
            RtkError: the engine is closed, the batch has the wrong rank, shape, dtype or size, or
                the model returned another shape than (N, num_classes).
            NonFiniteOutput: some logits are NaN or infinite (unless ``finite`` is false).
        """
        if _is_torch_tensor(batch):
            return self._checked(self._to_host(self.run_device(batch)), len(batch), finite)
        self._check_open()
        if not isinstance(batch, np.ndarray):
            raise RtkError(f"{self.name} expects a numpy array or torch tensor, got {type(batch).__name__}")
        if batch.dtype != np.float32:
            raise RtkError(f"{self.name} expects float32 input, got {batch.dtype}")
        self._check_shape(batch.shape)
        out = self._infer(np.ascontiguousarray(batch))
        return self._checked(np.asarray(out, dtype=np.float32), len(batch), finite)

    def _checked(self, out: np.ndarray, n: int, finite: bool) -> np.ndarray:
        """``out`` once it is one finite row of ``num_classes`` logits per input."""
        classes = self.spec.num_classes
        if out.shape != (n, classes):
            raise RtkError(
                f"the {self.name} engine returned logits of shape {out.shape} for {n} input(s), but the model's spec "
                f"has {classes} classes: the artefact's graph and its metadata disagree"
            )
        if finite and not np.isfinite(out).all():
            bad = ~np.isfinite(out)
            rows = np.flatnonzero(bad.any(axis=1))
            kinds = "/".join(k for k, hit in (("NaN", np.isnan(out).any()), ("Inf", np.isinf(out).any())) if hit)
            raise NonFiniteOutput(
                f"the {self.name} engine computed {kinds} logits for {len(rows)} of {n} input(s) ({int(bad.sum())} of "
                f"{bad.size} values): the model is broken (a NaN or infinite weight, a negative BatchNorm variance) "
                f"or overflows at {self.precision}, so it has no answer to give",
                rows.tolist(),
            )
        return out

    def run_device(self, batch: Any) -> Any:
        """Inference on a torch tensor, returning logits as a tensor on the engine's device.

        The same checks as :meth:`__call__` apply. Runtimes with a device-resident path
        (eager, TensorRT, ONNX Runtime's IO binding) keep a GPU tensor on the GPU; the others
        copy through the host (:attr:`device_resident` says which).

        Raises:
            RtkError: the engine is closed, or the tensor is not a floating-point NCHW batch of the model's size.
        """
        self._check_open()
        if not _is_torch_tensor(batch):
            raise RtkError(f"{self.name}.run_device expects a torch tensor, got {type(batch).__name__}")
        if not batch.is_floating_point():
            raise RtkError(f"{self.name} expects a floating-point tensor, got {batch.dtype}")
        self._check_shape(tuple(batch.shape))
        return self._run_device(batch)

    def _check_open(self) -> None:
        if self._closed:
            raise RtkError(f"the {self.name} engine is closed")

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        """Reject anything but an (N, C, H, W) batch of the model's size within the batch limits."""
        if len(shape) != 4:
            raise RtkError(f"{self.name} expects an NCHW batch (4 dimensions), got shape {tuple(shape)}")
        if tuple(shape[1:]) != self.input_shape:
            raise RtkError(f"{self.name} expects inputs of shape (N, {', '.join(map(str, self.input_shape))}), got {tuple(shape)}")
        n = shape[0]
        if n < self.min_batch or (self.max_batch is not None and n > self.max_batch):
            raise RtkError(self._batch_refused(n))

    def _batch_refused(self, n: int) -> str:
        """The sentence refusing a batch of ``n`` outside the limits; runtimes may say more (how to widen them)."""
        hi = self.max_batch if self.max_batch is not None else "any"
        return f"batch size {n} is outside what the {self.name} engine accepts ({self.min_batch}..{hi})"

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Runtime-specific inference on a validated, contiguous float32 NCHW host array."""

    def _run_device(self, batch: Any) -> Any:
        """Runtime-specific inference on a validated tensor; the default copies through the host."""
        import torch

        return torch.from_numpy(self._infer(np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)))

    @staticmethod
    def _to_host(out: Any) -> np.ndarray:
        if _is_torch_tensor(out):
            out = out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    def run_batches(self, batches: Sequence[np.ndarray], *, finite: bool = True) -> np.ndarray:
        """Logits of every batch, concatenated; a batch larger than the engine accepts is split.

        ``finite`` as for :meth:`__call__`.
        """
        outs = []
        limit = self.max_batch or max(len(b) for b in batches)
        for batch in batches:
            for start in range(0, len(batch), limit):
                outs.append(self(batch[start : start + limit], finite=finite))
        return np.concatenate(outs)

    def synchronize(self) -> None:
        """Wait for queued device work to finish (a no-op on CPU)."""

    def close(self) -> None:
        """Release the runtime's resources; the engine cannot be called afterwards."""
        self._closed = True

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.spec.name} on {self.device}>"


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


class TensorEngine(Engine):
    """An engine whose own path takes torch tensors (eager, TensorRT): a host batch goes through it too."""

    device_resident = True

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import torch  # engines import torch on first use: `rtk --help` must not pay for it

        return self._to_host(self._run_device(torch.from_numpy(batch)))
