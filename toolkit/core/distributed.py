"""Multi-process training under ``torchrun``: process-group set-up, rank checks, reductions.

``torchrun --nproc_per_node N -m toolkit train …`` starts N copies of the same command with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set. Each joins one process group (nccl on CUDA, gloo on
CPU) and the model is wrapped in DistributedDataParallel; rank 0 alone writes files and prints.
Without those variables everything here is a single-process no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from toolkit.core.errors import RtkError
from toolkit.core.validation import UsageError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes (1 in a single process).
        local_rank: rank on this machine, which picks the GPU.
        device: ``"cpu"`` or ``"cuda:N"`` for this process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> str:
    """``auto`` → ``cuda:<local_rank>`` when a GPU is present, else ``cpu``; ``cuda`` gets the local rank."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RtkError(f"device {device} was asked for but no CUDA GPU is available; use --device cpu")
        if device == "cuda":
            device = f"cuda:{local_rank}"
    elif device != "cpu":
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group when started by ``torchrun``; otherwise a single-process context."""
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, resolved)


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few numbers over all processes (identity in a single process)."""
    if not ctx.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    """Wait for every process (e.g. until rank 0 has written a checkpoint)."""
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
