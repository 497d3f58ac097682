"""``rtk parity``: proof, in numbers, that every runtime gives the same answers as eager PyTorch.

:func:`run_parity` feeds identical inputs (seeded random batches and, optionally, labelled real
images) to every engine asked for and to the eager fp32 reference, measures each with
:func:`toolkit.core.compare.compare` and gathers a :class:`ParityReport`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engines.base import Engine
from engines.names import EngineName, parse_engines
from engines.request import EngineRequest
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
from toolkit.core.precision import CALIBRATED_PRECISIONS
from toolkit.core.spec import ArtefactMeta
from toolkit.core.validation import COUNT, SEED, UsageError
from toolkit.usecases.opening import open_engine

__all__ = ["DEFAULT_TOLERANCES", "EngineResult", "ParityMetrics", "ParityOptions", "ParityReport", "Tolerance", "compare", "run_parity", "tolerance_for"]


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


def _open_candidate(ckpt: Checkpoint, name: EngineName, options: ParityOptions) -> Engine:
    """Open one engine under test for a checkpoint, refusing an artefact of another model.

    A foreign ONNX file (no rtk metadata) is run with the checkpoint's spec; its graph must still
    be an NCHW classifier of the checkpoint's class count and input size.

    Raises:
        RtkError: the engine cannot run, or its artefact does not match the checkpoint.
    """
    given = options.artefact_for(name)
    # The artefacts made from the checkpoint hold the very weights loaded as the reference.
    reading = dataclasses.replace(options.checkpoint_options, weights=ckpt.weights)
    request = EngineRequest.of(
        given or ckpt, name, device=options.device, meta=ArtefactMeta(ckpt.spec, ckpt.preprocess), checkpoint_options=reading,
    )
    engine = open_engine(request)
    try:
        _check_matches(ckpt, ArtefactMeta(engine.spec, engine.preprocess), given or ckpt.path)
    except RtkError:
        engine.close()
        raise
    return engine


def _check_matches(ckpt: "Checkpoint", meta: ArtefactMeta, path: "Path | None") -> None:
    """Refuse an artefact whose classes or input shape are not the checkpoint's."""
    if meta.spec.num_classes != ckpt.spec.num_classes:
        raise RtkError(f"{path} has {meta.spec.num_classes} classes but the checkpoint {ckpt.path} has {ckpt.spec.num_classes}")
    if meta.preprocess.input_size != ckpt.preprocess.input_size or meta.spec.in_chans != ckpt.spec.in_chans:
        raise RtkError(
            f"{path} takes {meta.spec.in_chans}×{meta.preprocess.input_size[0]}×{meta.preprocess.input_size[1]} inputs but the "
            f"checkpoint takes {ckpt.spec.in_chans}×{ckpt.preprocess.input_size[0]}×{ckpt.preprocess.input_size[1]}"
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
class ParityReport:
    """Every engine's parity against the eager fp32 reference of one checkpoint."""

    checkpoint: str
    reference: str
    class_names: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    seed: int
    data_source: str | None
    results: tuple[EngineResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.engine for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "reference": self.reference,
            "passed": self.passed,
            "failed": self.failed,
            "batch_sizes": list(self.batch_sizes),
            "seed": self.seed,
            "data": self.data_source,
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


def _reference_inputs(ckpt: "Checkpoint", options: ParityOptions) -> tuple[_Inputs, str]:
    """Seeded random batches, labelled images when asked for, and eager fp32's logits on both."""

    spec, pre = ckpt.spec, ckpt.preprocess
    batches = random_batches((spec.in_chans, *pre.input_size), pre.mean, pre.std, options.batch_sizes, options.seed)
    images = labels = source = None
    if options.data is not None:
        # Any real images will do: labelled with the model's classes they add accuracy, else not.
        prepared = prepare_images(judged_set(options.data, pre.input_size[0]), spec, pre, options.max_samples)
        images, labels = prepared.images, prepared.labels
        source = prepared.source + ("" if labels is not None else f"; no accuracy: {prepared.unlabelled_reason}")
    data_batches = chunks(images, max(options.batch_sizes)) if images is not None else []
    with open_engine(EngineRequest.of(ckpt, "eager", device=options.device)) as reference:
        ref_random = reference.run_batches(batches)
        ref_data = reference.run_batches(data_batches) if data_batches else None
        name = reference.name
    return _Inputs(batches, ref_random, data_batches, ref_data, labels, source), name


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
    checkpoint: "str | os.PathLike | Checkpoint",
    options: ParityOptions | None = None,
    on_engine: "Callable[[EngineResult], None] | None" = None,
) -> ParityReport:
    """Compare engines against the eager fp32 reference of a checkpoint on identical inputs.

    Args:
        checkpoint: the reference model (path or loaded :class:`~toolkit.core.checkpoint.Checkpoint`).
        options: the engines, their artefacts, the inputs and the tolerances (:class:`ParityOptions`).
        on_engine: called with each :class:`EngineResult` as it is ready (progress output).

    Returns:
        The report; ``report.passed`` is false when any engine is outside tolerance.
    """

    options = options or ParityOptions()
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, options=options.checkpoint_options)
    inputs, reference_name = _reference_inputs(ckpt, options)
    results = []
    for name in options.engines:
        with _open_candidate(ckpt, name, options) as engine:
            result = _measure(engine, inputs, options, ckpt.path)
        results.append(result)
        if on_engine is not None:
            on_engine(result)
    return ParityReport(
        checkpoint=str(ckpt.path),
        reference=f"{reference_name} fp32 ({options.device})",
        class_names=tuple(ckpt.spec.class_name(i) for i in range(ckpt.spec.num_classes)),
        batch_sizes=tuple(options.batch_sizes),
        seed=options.seed,
        data_source=inputs.source,
        results=tuple(results),
    )
