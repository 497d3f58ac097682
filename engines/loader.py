"""``engines.load``: from an artefact path (or a model) to a ready :class:`~engines.base.Engine`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.artefacts import artefact_kind
from toolkit.errors import RtkError

if TYPE_CHECKING:
    from engines.base import Engine

#: Engine names accepted by ``--engine``.
ENGINE_NAMES = ("eager", "ort")


def load(
    source: "str | os.PathLike | Any",
    engine: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    **options: Any,
) -> "Engine":
    """Load an artefact (or wrap an in-memory model) as an engine.

    Args:
        source: a checkpoint, ONNX file or engine path; or a :class:`toolkit.checkpoint.Checkpoint`.
        engine: runtime name (one of :data:`ENGINE_NAMES`); by default chosen from the artefact.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (what each runtime supports).
        **options: runtime options (``threads``, ``channels_last``, ``compile``, …).

    Returns:
        The engine; use it as a context manager or call ``close()``.
    """
    from toolkit.checkpoint import Checkpoint, load_model

    if isinstance(source, Checkpoint):
        from engines.eager import EagerEngine

        return EagerEngine(source.build_model(), source.spec, source.preprocess, device, precision, **options)
    path = Path(source)
    kind = artefact_kind(path)
    engine = engine or {"checkpoint": "eager", "onnx": "ort", "engine": "trt"}[kind]
    if engine == "eager":
        if kind != "checkpoint":
            raise RtkError(f"the eager engine runs checkpoints (.pth/.pt), not {path.name}")
        from engines.eager import EagerEngine

        model, ckpt = load_model(path)
        return EagerEngine(model, ckpt.spec, ckpt.preprocess, device, precision, **options)
    if engine == "ort":
        if kind != "onnx":
            raise RtkError(f"the ort engine runs ONNX files, not {path.name}; export it first with `rtk export {path}`")
        from engines.ort import OrtEngine

        return OrtEngine(path, **options)
    raise RtkError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_NAMES)}")
