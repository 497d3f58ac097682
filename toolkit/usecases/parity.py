"""``rtk parity``: proof, in numbers, that every runtime gives the same answers as the reference.

:func:`run_parity` feeds identical inputs (seeded random batches and, optionally, real images) to
every engine asked for and to the reference — eager fp32 on a checkpoint, or, for an ONNX file
given as the model (another tool's, say), that file on ONNX Runtime's CPU provider in fp32 —
measures each with :func:`toolkit.core.compare.compare` and gathers a :class:`ParityReport`.
An engine that cannot run here is listed with the reason (told before any slow work where that
is cheap), the others are still judged, and the report does not pass while one asked for was not
judged.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engines.availability import why_not_here
from engines.base import Engine
from engines.names import EngineName, parse_engines
from engines.request import EngineRequest
from toolkit.core.artefacts import ONNX_SUFFIXES, artefact_suffix, onnx_path_for
from toolkit.core.checkpoint import Checkpoint, CheckpointOptions, load_checkpoint
from toolkit.core.compare import (
    DEFAULT_TOLERANCES,
    ParityMetrics,
    Tolerance,
    chunks,
    compare,
    judge_random_top1,
    random_batches,
    tolerance_for,
)
from toolkit.core.errors import RtkError
from toolkit.core.image_sets import judged_set, prepare_images
from toolkit.core.onnx_graph import (
    foreign_onnx_error,
    load_onnx_graph,
    metadata_dict,
    onnx_precision,
)
from toolkit.core.precision import CALIBRATED_PRECISIONS
from toolkit.core.spec import ArtefactMeta
from toolkit.core.validation import COUNT, SEED, UsageError
from toolkit.usecases.opening import open_engine

__all__ = [
    "DEFAULT_TOLERANCES", "EngineResult", "ParityMetrics", "ParityOptions", "ParityReport", "SkippedEngine", "Tolerance",
    "compare", "run_parity", "tolerance_for",
]


# --- what to run ------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityOptions:
    """What :func:`run_parity` compares, on what, and how strictly.

    Attributes:
        engines: engine names (:mod:`engines.names`), as a tuple or one comma-separated string;
            eager variants run the checkpoint itself, the others the artefacts next to it (made
            when missing) or the ones named below.
        onnx: the ONNX file the fp32 ONNX Runtime engines (and ``ort-trt``, and OpenVINO but ``ov-int8``) run.
        onnx_fp16: the ONNX file the fp16 ONNX Runtime engines run.
        onnx_int8: the QDQ ONNX file the int8 ONNX Runtime engines run (default ``MODEL.int8.onnx``,
            never exported on demand: it needs calibration data).
        trt_engine: the TensorRT engine ``trt`` runs.
        data: real images compared too: a dataset name (its test split), a folder of class folders,
            any folder of images or a file list; accuracy is added where they carry the model's classes.
        max_samples: at most this many real images.
        batch_sizes: sizes of the random batches, seeded with ``seed``.
        device: ``cpu`` or ``cuda[:N]``: where eager runs and which GPU the GPU engines use.
        atol, rtol, min_cosine, min_top1, max_accuracy_drop: override the per-precision tolerances.
        checkpoint_options: which of the checkpoint's weights are the reference (EMA or raw), and
            whether to trust a pickle; the artefacts made from it hold the same weights.
        meta: the spec and preprocessing of an ONNX model that carries none (:mod:`toolkit.core.foreign_onnx`).
    """

    engines: "tuple[EngineName, ...] | str" = ("eager", "ort")
    onnx: Path | None = None
    onnx_fp16: Path | None = None
    onnx_int8: Path | None = None
    trt_engine: Path | None = None
    data: str | None = None
    max_samples: int | None = 500
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    seed: int = 0
    device: str = "cpu"
    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None
    max_accuracy_drop: float | None = None
    checkpoint_options: CheckpointOptions = field(default_factory=CheckpointOptions)
    meta: ArtefactMeta | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "engines", parse_engines(self.engines))
        if not self.batch_sizes:
            raise UsageError("parity needs at least one batch size")
        for size in self.batch_sizes:
            COUNT.check(size, "--batch-size")
        COUNT.check(self.max_samples, "--max-samples")
        SEED.check(self.seed, "--seed")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise UsageError(f"device must be cpu or cuda[:N], got {self.device!r}")
        self.tolerance("fp32")  # the overrides are checked once, up front
        unjudged = [str(e) for e in self.engines if e.precision in CALIBRATED_PRECISIONS]
        if unjudged and self.data is None:
            raise UsageError(
                f"{', '.join(unjudged)} is judged on real images, not random ones; add --data DATA "
                "(e.g. the data it was calibrated on, whose test split it never saw, or any folder of images)"
            )

    def tolerance(self, precision: str) -> Tolerance:
        """The tolerance of ``precision`` with this run's overrides."""
        return tolerance_for(precision, self.atol, self.rtol, self.min_cosine, self.min_top1, self.max_accuracy_drop)

    def artefact_for(self, name: "EngineName") -> Path | None:
        """The artefact named for this engine, or ``None`` for the one next to the checkpoint."""
        if name.runtime == "trt":
            return self.trt_engine
        if name.runtime == "ort":
            if name.precision == "int8":
                return self.onnx_int8
            return self.onnx_fp16 if name.provider != "trt" and name.precision == "fp16" else self.onnx
        if name.runtime == "ov" and name.precision != "int8":  # OpenVINO lowers the fp32 graph itself
            return self.onnx
        return None


@dataclass(frozen=True)
class Reference:
    """What every engine is compared with.

    Attributes:
        path: the model: a checkpoint (or Hub folder), or an fp32 ONNX file.
        meta: its spec and preprocess.
        checkpoint: the loaded checkpoint (eager fp32 on it is the reference), or ``None`` for an ONNX file.
        request: what opens the reference engine.
        description: how reports name it (``eager fp32 (cpu)``, ``m.onnx on ONNX Runtime fp32 (CPU)``).
    """

    path: Path | None
    meta: ArtefactMeta
    checkpoint: Checkpoint | None
    request: EngineRequest
    description: str


def reference_for(model: "str | os.PathLike | Checkpoint", options: "ParityOptions") -> Reference:
    """The reference of a parity run: eager fp32 on a checkpoint, or an ONNX file on ONNX Runtime fp32.

    Raises:
        RtkError: the model cannot be read; an ONNX file that is not fp32 (a reference must be), or
            that carries no spec and was given none (``options.meta``).
    """
    if isinstance(model, Checkpoint) or artefact_suffix(model) not in ONNX_SUFFIXES:
        ckpt = model if isinstance(model, Checkpoint) else load_checkpoint(model, options=options.checkpoint_options)
        request = EngineRequest.of(ckpt, "eager", device=options.device)
        return Reference(ckpt.path, ArtefactMeta(ckpt.spec, ckpt.preprocess), ckpt, request, f"eager fp32 ({options.device})")
    path = Path(model)
    graph = load_onnx_graph(path)
    stored = metadata_dict(graph)
    if stored is None and options.meta is None:
        raise foreign_onnx_error(path)
    meta = ArtefactMeta.from_dict(stored) if stored is not None else options.meta
    held = onnx_precision(graph)
    if held != "fp32":
        raise RtkError(
            f"{path.name} holds {held} weights; parity of an ONNX file takes it on ONNX Runtime in fp32 as the reference, "
            "so give the fp32 ONNX file (or the checkpoint) and name this one as the engine's file"
        )
    request = EngineRequest.of(path, "ort", meta=meta)
    return Reference(path, meta, None, request, f"{path.name} on ONNX Runtime fp32 (CPU)")


def candidate_request(reference: Reference, name: EngineName, options: "ParityOptions") -> EngineRequest:
    """What opens one engine under test: the artefact named for it, or the one the reference gives.

    From a checkpoint, the artefacts are made next to it (exported or built when missing or stale).
    From an ONNX file, the engines run that file, except the fp16 and int8 ones, which run
    ``MODEL.fp16.onnx`` and ``MODEL.int8.onnx`` beside it (or the files named for them), and a
    TensorRT engine, which is built from it.

    Raises:
        RtkError: eager asked of an ONNX file; a file the engine needs that is not there.
    """
    given = options.artefact_for(name)
    if reference.checkpoint is not None:
        ckpt = reference.checkpoint
        # The artefacts made from the checkpoint hold the very weights loaded as the reference.
        reading = dataclasses.replace(options.checkpoint_options, weights=ckpt.weights)
        return EngineRequest.of(given or ckpt, name, device=options.device, meta=reference.meta, checkpoint_options=reading)
    path = reference.path
    if name.runtime == "eager":
        raise RtkError(f"{name} runs a PyTorch checkpoint, and {path.name} is an ONNX file; compare the runtimes that run it (ort…, ov…, trt…)")
    if given is None and _runs_own_file(name):
        given = onnx_path_for(path, name.precision)
        if not given.exists():
            make = (
                f"make them with `rtk export {path} --precision int8 --calib DATA`" if name.precision == "int8"
                else "an fp16 ONNX file is exported from the checkpoint (rtk export CHECKPOINT --precision fp16); name one with --onnx-fp16"
            )
            raise RtkError(f"{name} runs {given.name}, which is not beside {path.name}; {make}")
    return EngineRequest.of(given or path, name, device=options.device, meta=reference.meta)


def _runs_own_file(name: EngineName) -> bool:
    """Whether an engine runs an ONNX file of its own precision rather than the fp32 one: every int8
    engine (a calibrated file), and fp16 on ONNX Runtime's CPU and CUDA providers. TensorRT, its ONNX
    Runtime provider and OpenVINO make their fp16 from the fp32 graph."""
    if name.precision == "int8":
        return True
    return name.precision == "fp16" and name.runtime == "ort" and name.provider != "trt"


def _open_candidate(reference: Reference, name: EngineName, options: "ParityOptions") -> Engine:
    """Open one engine under test, refusing one that ran another engine than asked or an artefact of another model.

    A foreign ONNX file (no rtk metadata) is run with the reference's spec; its graph must still
    be an NCHW classifier of the reference's class count and input size.

    Raises:
        RtkError: the engine cannot run, fell back to another runtime, or its artefact does not match the reference.
    """
    request = candidate_request(reference, name, options)
    engine = open_engine(request)
    try:
        if engine.fell_back_from is not None:
            raise RtkError(f"{name} cannot run here: its runtime fell back to {engine.name}, which would be judged under the name asked for")
        _check_matches(reference, ArtefactMeta(engine.spec, engine.preprocess), request.path)
    except RtkError:
        engine.close()
        raise
    return engine


def _check_matches(reference: Reference, meta: ArtefactMeta, path: "Path | None") -> None:
    """Refuse an artefact whose classes or input shape are not the reference's."""
    ref = reference.meta
    if meta.spec.num_classes != ref.spec.num_classes:
        raise RtkError(f"{path} has {meta.spec.num_classes} classes but the reference {reference.path} has {ref.spec.num_classes}")
    if meta.preprocess.input_size != ref.preprocess.input_size or meta.spec.in_chans != ref.spec.in_chans:
        raise RtkError(
            f"{path} takes {meta.spec.in_chans}×{meta.preprocess.input_size[0]}×{meta.preprocess.input_size[1]} inputs but the "
            f"reference takes {ref.spec.in_chans}×{ref.preprocess.input_size[0]}×{ref.preprocess.input_size[1]}"
        )


# --- running every engine -----------------------------------------------------------------


@dataclass(frozen=True)
class EngineResult:
    """One engine's parity: its name, the artefact it ran, its precision and metrics.

    ``random`` covers the random batches, ``data`` the labelled images (``None`` without data).
    """

    engine: str
    artefact: str
    precision: str
    random: ParityMetrics
    data: ParityMetrics | None = None

    @property
    def passed(self) -> bool:
        return self.random.passed and (self.data is None or self.data.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "artefact": self.artefact,
            "precision": self.precision,
            "passed": self.passed,
            "random": self.random.to_dict(),
            "data": self.data.to_dict() if self.data else None,
        }


@dataclass(frozen=True)
class SkippedEngine:
    """An engine asked for that was not judged, and why (it cannot run here, or its artefact cannot be made or opened)."""

    engine: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "reason": self.reason}


@dataclass(frozen=True)
class ParityReport:
    """Every engine's parity against the reference of one model (eager fp32, or an ONNX file on ONNX Runtime fp32).

    Attributes:
        model: the reference model's path.
        reference: how the reference ran (``eager fp32 (cpu)``…).
        images: how many real images were judged (0 without ``data``).
        assumed: what matching the images' classes to the model's took for granted, or ``None``.
        skipped: the engines asked for that were not judged, with the reason.
    """

    model: str
    reference: str
    class_names: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    seed: int
    data_source: str | None
    results: tuple[EngineResult, ...] = field(default_factory=tuple)
    skipped: tuple[SkippedEngine, ...] = ()
    images: int = 0
    assumed: str | None = None

    @property
    def passed(self) -> bool:
        """Every engine asked for was judged, and passed: a skipped engine fails the run, so a gate stays shut."""
        return not self.skipped and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.engine for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "reference": self.reference,
            "passed": self.passed,
            "failed": self.failed,
            "skipped": [s.to_dict() for s in self.skipped],
            "batch_sizes": list(self.batch_sizes),
            "seed": self.seed,
            "data": self.data_source,
            "images": self.images,
            "assumed": self.assumed,
            "class_names": list(self.class_names),
            "engines": [r.to_dict() for r in self.results],
        }


@dataclass(frozen=True)
class _Inputs:
    """Identical inputs for every engine, and the reference's logits on them."""

    batches: tuple[np.ndarray, ...]
    reference: np.ndarray
    data_batches: list[np.ndarray]
    data_reference: np.ndarray | None
    labels: np.ndarray | None
    source: str | None
    images: int = 0
    assumed: str | None = None


def _reference_inputs(reference: Reference, options: ParityOptions) -> _Inputs:
    """Seeded random batches, real images when asked for, and the reference's logits on both."""

    spec, pre = reference.meta.spec, reference.meta.preprocess
    batches = random_batches((spec.in_chans, *pre.input_size), pre.mean, pre.std, options.batch_sizes, options.seed)
    images = labels = source = assumed = None
    if options.data is not None:
        # Any real images will do: labelled with the model's classes they add accuracy, else not.
        prepared = prepare_images(judged_set(options.data, pre.input_size[0]), spec, pre, options.max_samples)
        images, labels, assumed = prepared.images, prepared.labels, prepared.assumed
        source = prepared.source + ("" if labels is not None else f"; no accuracy: {prepared.unlabelled_reason}")
    data_batches = chunks(images, max(options.batch_sizes)) if images is not None else []
    with open_engine(reference.request) as engine:
        ref_random = engine.run_batches(batches)
        ref_data = engine.run_batches(data_batches) if data_batches else None
    count = 0 if images is None else len(images)
    return _Inputs(batches, ref_random, data_batches, ref_data, labels, source, count, assumed)


def _measure(engine: "Engine", inputs: _Inputs, options: ParityOptions, fallback_artefact: Any) -> EngineResult:
    """One engine's logits on the shared inputs, compared with the reference's."""
    precision = engine.precision
    tol = options.tolerance(precision)
    # finite=False: a candidate's NaN or infinite logits are measured as its failure (compare
    # counts them), so the report still judges every other engine.
    random_logits = engine.run_batches(inputs.batches, finite=False)
    random_metrics = compare(inputs.reference, random_logits, precision, tolerance=tol, judge_top1=judge_random_top1(precision))
    data_metrics = None
    if inputs.data_reference is not None:
        data_logits = engine.run_batches(inputs.data_batches, finite=False)
        data_metrics = compare(inputs.data_reference, data_logits, precision, tolerance=tol, labels=inputs.labels)
    return EngineResult(engine.name, str(getattr(engine, "path", fallback_artefact)), precision, random_metrics, data_metrics)


def run_parity(
    model: "str | os.PathLike | Checkpoint",
    options: ParityOptions | None = None,
    on_engine: "Callable[[EngineResult], None] | None" = None,
    on_skip: "Callable[[SkippedEngine], None] | None" = None,
) -> ParityReport:
    """Compare engines against a reference on identical inputs, reporting every engine that could run.

    The reference is eager fp32 on a checkpoint, or, when ``model`` is an ONNX file, that file on
    ONNX Runtime's CPU provider in fp32. Engines that cannot run here are found first where that is
    cheap (no GPU, a runtime not installed), before the reference's work; one whose artefact
    cannot be made or opened, or that fails while it runs, is skipped with the reason and the
    others are still judged.

    Args:
        model: the reference model (path or loaded :class:`~toolkit.core.checkpoint.Checkpoint`), or an fp32 ONNX file.
        options: the engines, their artefacts, the inputs and the tolerances (:class:`ParityOptions`).
        on_engine: called with each :class:`EngineResult` as it is ready (progress output).
        on_skip: called with each :class:`SkippedEngine` as it is known.

    Returns:
        The report; ``report.passed`` is false when any engine is outside tolerance or was not judged.
    """

    options = options or ParityOptions()
    reference = reference_for(model, options)
    skipped: list[SkippedEngine] = []

    def skip(name: EngineName, reason: str) -> None:
        skipped.append(SkippedEngine(str(name), reason))
        if on_skip is not None:
            on_skip(skipped[-1])

    runnable = []
    for name in options.engines:
        why = why_not_here(name)
        if why is None:
            runnable.append(name)
        else:
            skip(name, why)
    inputs = _reference_inputs(reference, options) if runnable else None
    results = []
    for name in runnable:
        try:
            with _open_candidate(reference, name, options) as engine:
                result = _measure(engine, inputs, options, reference.path)
        except RtkError as exc:
            skip(name, str(exc))
            continue
        results.append(result)
        if on_engine is not None:
            on_engine(result)
    spec = reference.meta.spec
    return ParityReport(
        model=str(reference.path),
        reference=reference.description,
        class_names=tuple(spec.class_name(i) for i in range(spec.num_classes)),
        batch_sizes=tuple(options.batch_sizes),
        seed=options.seed,
        data_source=inputs.source if inputs else None,
        results=tuple(results),
        skipped=tuple(skipped),
        images=inputs.images if inputs else 0,
        assumed=inputs.assumed if inputs else None,
    )
