"""Learning-rate schedules as pure functions of the optimisation step.

A schedule that is a function of the step alone needs no state of its own in a checkpoint:
resuming at step ``s`` gives exactly the learning rate an uninterrupted run would have had.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant")


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine") -> float:
    """The multiplier of the base learning rate at ``step`` (0-based).

    A linear warm-up from ``1 / (warmup_steps + 1)`` to 1 over ``warmup_steps`` steps, then
    either a half-cosine decay to 0 at ``total_steps`` (``cosine``) or 1 (``constant``).

    Args:
        step: the optimisation step about to be taken.
        total_steps: steps in the whole run.
        warmup_steps: steps of linear warm-up.
        schedule: one of :data:`SCHEDULES`.

    Returns:
        A factor in (0, 1].
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, base_lr: float, factor: float) -> float:
    """Set every parameter group's learning rate to ``base_lr * factor``; returns it."""
    lr = base_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
