"""``engines.load``: from an artefact that exists (or a loaded checkpoint) to a ready :class:`~engines.base.Engine`.

Nothing is exported or built here: an engine opens the artefact its runtime runs. To run a
checkpoint on ONNX Runtime or TensorRT, :func:`toolkit.usecases.opening.open_engine` makes the ONNX file
or engine first (``exporters.prepare``) and then calls :func:`load`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from engines.names import DEFAULT_ENGINE, EngineName, parse_engine
from toolkit.core.artefacts import artefact_kind
from toolkit.core.errors import RtkError

if TYPE_CHECKING:
    from engines.base import Engine
    from toolkit.core.checkpoint import Checkpoint, CheckpointOptions
    from toolkit.core.spec import ArtefactMeta

#: What each artefact kind is called in messages.
_KIND_WORDS = {"checkpoint": "checkpoints (.pth/.pt/.safetensors)", "onnx": "ONNX files", "engine": "TensorRT engines (.engine/.plan)"}


def load(
    source: "str | os.PathLike | Checkpoint",
    engine: "str | EngineName | None" = None,
    device: str = "cpu",
    precision: str | None = None,
    *,
    threads: int | None = None,
    max_batch: int | None = None,
    meta: "ArtefactMeta | None" = None,
    checkpoint_options: "CheckpointOptions | None" = None,
) -> "Engine":
    """Open an artefact as an engine.

    Args:
        source: a checkpoint, ONNX file or TensorRT engine path; or a loaded
            :class:`toolkit.core.checkpoint.Checkpoint`.
        engine: an engine name (:mod:`engines.names`); by default the artefact's own runtime.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        precision: applies when the name gives none. An ONNX file runs at the precision it holds
            (asking for another is refused), except on OpenVINO, which runs an fp32 file at fp32,
            bf16 or fp16 and a QDQ file at int8; ``ort-trt`` and ``trt`` default to fp16.
        threads: intra-op threads (ONNX Runtime, OpenVINO; ``None`` = their default).
        max_batch: the largest batch ONNX Runtime's TensorRT provider is built for.
        meta: spec and preprocess for a foreign ONNX file that carries none.
        checkpoint_options: which of a checkpoint's weights eager runs (EMA or raw), and whether
            to trust a pickle.

    Returns:
        The engine; use it as a context manager or call ``close()``.

    Raises:
        RtkError: an unknown engine, an artefact this runtime does not run, another precision
            than the artefact holds, a missing optional package.
    """
    from toolkit.core.checkpoint import Checkpoint, load_checkpoint

    if isinstance(source, Checkpoint):
        ckpt, kind, path = source, "checkpoint", source.path
    else:
        ckpt, path = None, Path(source)
        kind = artefact_kind(path)
    name = parse_engine(engine or DEFAULT_ENGINE[kind], precision)
    if name.artefact != kind:
        shown = path.name if path is not None else "this checkpoint"
        raise RtkError(
            f"the {name} engine runs {_KIND_WORDS[name.artefact]}, and {shown} is not one; name the checkpoint, "
            f"which rtk exports or builds for {name} (rtk predict/bench/parity/eval do this), or run {shown} with "
            f"--engine {DEFAULT_ENGINE[kind]}"
        )
    if name.runtime == "eager":
        from engines.eager import EagerEngine

        ckpt = ckpt or load_checkpoint(path, options=checkpoint_options)
        return EagerEngine(
            ckpt.build_model(), ckpt.spec, ckpt.preprocess, device, name.resolved_precision,
            channels_last=name.channels_last, compile=name.compile,
        )
    if name.runtime == "ort":
        from engines.ort import OrtEngine

        return OrtEngine(
            path, meta=meta, provider=name.provider, device=device, threads=threads or 0,
            max_batch=max_batch or 64, precision=name.precision,
        )
    if name.runtime == "ov":
        from engines.openvino import OvEngine

        return OvEngine(path, meta=meta, precision=name.precision, threads=threads or 0)
    from engines.trt import TrtEngine

    trt = TrtEngine(path, device if device.startswith("cuda") else "cuda")
    if name.precision is not None and trt.precision != name.precision:
        trt.close()
        raise RtkError(
            f"{path.name} is an {trt.precision} engine, not {name.precision}; build one with "
            f"`rtk build {trt.sidecar.onnx} --precision {name.precision}`, or name the checkpoint or ONNX file"
        )
    return trt
