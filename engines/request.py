"""What to open: an engine name, the artefact it runs, and how, parsed once and handed down.

A command parses the user's model path and ``--engine`` into one :class:`EngineRequest`;
preparation (:func:`exporters.prepare.prepare`) hands back the same request naming the artefact
the engine really runs (the ONNX file or TensorRT engine made next to a checkpoint), and
:func:`toolkit.usecases.opening.open_engine` opens it. Nothing on the way parses the name or
guesses the artefact's kind again.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from engines.names import DEFAULT_ENGINE, EngineName, parse_engine
from toolkit.core.artefacts import artefact_kind
from toolkit.core.checkpoint import Checkpoint, CheckpointOptions
from toolkit.core.spec import ArtefactMeta


@dataclass(frozen=True)
class EngineRequest:
    """One engine to open.

    Attributes:
        name: the engine (:mod:`engines.names`), its precision resolved against ``--precision``.
        path: the artefact it runs: a checkpoint, ONNX file or TensorRT engine; ``None`` for a
            checkpoint loaded in memory only.
        kind: what ``path`` is: ``checkpoint``, ``onnx`` or ``engine``.
        checkpoint: the checkpoint, when it is already loaded (eager then runs it as it is).
        device: ``cpu`` or ``cuda[:N]``: where eager runs and which GPU the GPU engines use (an
            engine whose name needs a GPU runs on the first one when ``cpu`` was given).
        threads: intra-op threads for ONNX Runtime and OpenVINO (torch's are process-wide).
        max_batch: the largest batch ONNX Runtime's TensorRT provider, or a TensorRT engine
            built here, is made for.
        meta: spec and preprocess for a foreign ONNX file that carries none.
        checkpoint_options: which of a checkpoint's weights to run or export (EMA or raw), and
            whether to trust a pickle.
    """

    name: EngineName
    path: Path | None
    kind: str
    checkpoint: Checkpoint | None = None
    device: str = "cpu"
    threads: int | None = None
    max_batch: int | None = None
    meta: ArtefactMeta | None = None
    checkpoint_options: CheckpointOptions = field(default_factory=CheckpointOptions)

    @classmethod
    def of(
        cls,
        model: "str | os.PathLike | Checkpoint",
        engine: "str | EngineName | None" = None,
        *,
        precision: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
        max_batch: int | None = None,
        meta: ArtefactMeta | None = None,
        checkpoint_options: CheckpointOptions | None = None,
    ) -> "EngineRequest":
        """Parse a model (a path or a loaded checkpoint) and an engine name into a request.

        Args:
            model: a checkpoint, ONNX file or TensorRT engine, or a loaded checkpoint.
            engine: an engine name; by default the artefact's own runtime (eager, ort, trt).
            precision: applies when the name gives none.
            device, threads, max_batch, meta, checkpoint_options: as the attributes.

        Raises:
            RtkError: a missing file or one of no kind rtk knows; a name outside the grammar.
        """
        loaded = model if isinstance(model, Checkpoint) else None
        path = loaded.path if loaded is not None else Path(model)
        kind = "checkpoint" if loaded is not None else artefact_kind(path)
        name = parse_engine(engine or DEFAULT_ENGINE[kind], precision)
        if name.needs_cuda and not device.startswith("cuda"):
            device = "cuda"
        return cls(
            name, path, kind, loaded, device, threads, max_batch, meta, checkpoint_options or CheckpointOptions(),
        )

    def runs(self, path: str | os.PathLike, kind: str) -> "EngineRequest":
        """The same request, running ``path`` (of ``kind``) instead: what preparation hands back."""
        return dataclasses.replace(self, path=Path(path), kind=kind, checkpoint=None if kind != "checkpoint" else self.checkpoint)

    @property
    def gpu(self) -> str | None:
        """The GPU asked for (``cuda:N``), or ``None`` for the current one."""
        return self.device if self.device.startswith("cuda") else None
