"""One way from any artefact and any engine name to a running engine, for every command.

:func:`open_engine` is what ``rtk predict``, ``eval``, ``parity``, ``bench`` and ``demo`` call:
it parses the engine name, makes the artefact that engine runs when the model is a checkpoint
(:func:`exporters.prepare.prepare`: the ONNX file or TensorRT engine next to it, reused while
fresh) and opens it (:func:`engines.load`). It sits above both packages, so neither imports the other.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from engines import load
from engines.names import DEFAULT_ENGINE, EngineName, parse_engine
from exporters.prepare import prepare
from toolkit.core.artefacts import artefact_kind

if TYPE_CHECKING:
    from engines.base import Engine
    from toolkit.core.checkpoint import Checkpoint, CheckpointOptions
    from toolkit.core.spec import ArtefactMeta


def open_engine(
    model: "str | os.PathLike | Checkpoint",
    engine: "str | EngineName | None" = None,
    *,
    device: str = "cpu",
    precision: str | None = None,
    threads: int | None = None,
    max_batch: int | None = None,
    meta: "ArtefactMeta | None" = None,
    checkpoint_options: "CheckpointOptions | None" = None,
) -> "Engine":
    """Open ``engine`` on ``model``, exporting or building what it runs when the model is a checkpoint.

    Args:
        model: a checkpoint, ONNX file or TensorRT engine (a path), or a loaded checkpoint.
        engine: an engine name (:mod:`engines.names`); by default the artefact's own runtime.
        device: ``cpu`` or ``cuda[:N]``: where eager runs, and which GPU the GPU engines use (they
            run on the first GPU when ``cpu`` is given, since their name asks for a GPU).
        precision: applies when the engine name gives none.
        threads: intra-op threads for ONNX Runtime and OpenVINO (torch's are process-wide).
        max_batch: the largest batch ONNX Runtime's TensorRT provider, or a TensorRT engine built
            here, is made for.
        meta: spec and preprocess for a foreign ONNX file that carries none.
        checkpoint_options: which of a checkpoint's weights to run or export (EMA or raw), and
            whether to trust a pickle.

    Raises:
        RtkError: an unknown engine or artefact, an engine that cannot run this artefact, a
            failed export or build, a missing optional package.
    """
    from toolkit.core.checkpoint import Checkpoint

    loaded = model if isinstance(model, Checkpoint) else None
    path = loaded.path if loaded is not None else model
    kind = "checkpoint" if loaded is not None else artefact_kind(path)
    name = parse_engine(engine or DEFAULT_ENGINE[kind], precision)
    if name.needs_cuda and not device.startswith("cuda"):
        device = "cuda"
    opened = dict(threads=threads, max_batch=max_batch, meta=meta, checkpoint_options=checkpoint_options)
    if loaded is not None and (name.runtime == "eager" or path is None):
        return load(loaded, name, device, **opened)
    return load(prepare(path, name, device=device, max_batch=max_batch, checkpoint_options=checkpoint_options), name, device, **opened)
