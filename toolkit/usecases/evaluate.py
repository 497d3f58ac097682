"""Accuracy of any artefact on a labelled dataset: :func:`evaluate` and :func:`evaluate_artefact`.

The evaluation images are prepared with the artefact's own :class:`~toolkit.core.spec.Preprocess`
(read from the checkpoint, ONNX metadata or engine sidecar), never from flags, so the figure
measures the model as it will be used.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engines.base import Engine
from engines.request import EngineRequest
from toolkit.core.checkpoint import CheckpointOptions
from toolkit.core.console import ProgressBar, warn
from toolkit.core.data import DataSource, resolve_data
from toolkit.core.errors import RtkError
from toolkit.core.image_sets import few_judged_warning, match_classes
from toolkit.core.metrics import ClassificationReport
from toolkit.core.outputs import Output, check_outputs
from toolkit.core.spec import ArtefactMeta, ModelSpec
from toolkit.core.validation import COUNT, PART, SEED
from toolkit.usecases.opening import open_engine


def label_mapping(data_classes: Sequence[str], spec: ModelSpec) -> np.ndarray:
    """For each class of the data, the index of the same class in the model's output.

    Classes are matched by name (:func:`toolkit.core.image_sets.match_classes`), so a folder whose
    classes are a subset of the model's, or are listed in another order, is scored correctly. A
    model without class names must have exactly as many outputs as the data has classes, which
    are then taken in sorted order.

    Raises:
        RtkError: the data has classes the model does not know.
    """
    match = match_classes(spec, data_classes)
    if not match.complete:
        raise RtkError(f"cannot score these images: {match.reason}")
    return np.asarray(match.mapping, dtype=np.int64)


def evaluation_batch_size(n: int, batch_size: int, engine: Engine) -> int:
    """Images per engine call when scoring ``n`` images: ``batch_size``, capped at what the engine takes.

    Raises:
        RtkError: nothing to score.
        UsageError: a batch size outside :data:`~toolkit.core.validation.COUNT`.
    """
    if n == 0:
        raise RtkError("the evaluation set is empty")
    COUNT.check(batch_size, "the batch size")
    return min(batch_size, engine.max_batch) if engine.max_batch is not None else batch_size


def evaluate(
    engine: "Engine",
    dataset: Any,
    batch_size: int = 256,
    class_names: Sequence[str] | None = None,
    progress: bool = False,
) -> "ClassificationReport":
    """Run an engine over a labelled dataset and score its top-1 predictions.

    Args:
        engine: any loaded engine (eager, ONNX Runtime, TensorRT).
        dataset: a map-style dataset of ``(CHW tensor, label)`` prepared with the engine's
            preprocess, e.g. ``DataSource.dataset("test", engine.preprocess)``.
        batch_size: images per call, clamped to what the engine accepts.
        class_names: the dataset's class names; labels are matched to the model's classes by
            name (see :func:`label_mapping`). Omitted: labels are model indices.
        progress: show a progress bar on stderr.

    Returns:
        Accuracy, per-class accuracy and confusion matrix over the model's classes.
    """
    import torch

    n = len(dataset)
    batch_size = evaluation_batch_size(n, batch_size, engine)
    mapping = label_mapping(class_names, engine.spec) if class_names is not None else None
    labels = np.empty(n, dtype=np.int64)
    predictions = np.empty(n, dtype=np.int64)
    starts = range(0, n, batch_size)
    with ProgressBar(len(starts), "evaluating", progress) as bar:
        for start in starts:
            items = [dataset[i] for i in range(start, min(n, start + batch_size))]
            batch = torch.stack([x for x, _ in items]).numpy()
            count = len(items)
            if count < engine.min_batch:  # a static-shape engine: pad, then drop the padding's outputs
                batch = np.concatenate([batch, np.zeros((engine.min_batch - count, *batch.shape[1:]), batch.dtype)])
            logits = engine(np.ascontiguousarray(batch, dtype=np.float32))[:count]
            predictions[start : start + count] = logits.argmax(axis=1)
            labels[start : start + count] = [y for _, y in items]
            bar.advance()
    if mapping is not None:
        labels = mapping[labels]
    names = [engine.spec.class_name(i) for i in range(engine.spec.num_classes)]
    return ClassificationReport.from_predictions(labels, predictions, names)


@dataclass(frozen=True)
class EvalOptions:
    """What ``rtk eval`` does.

    Attributes:
        model: a checkpoint, ONNX file or TensorRT engine.
        data: ``digits``, a built-in dataset name, or an image folder.
        split: ``test``, ``val``, ``train`` or ``all``; by default the test split when the data has one,
            else the whole of a folder of class folders (``all``), else val.
        batch_size: images per engine call.
        engine: an engine name (:mod:`engines.names`); the artefact's own runtime when omitted. A
            checkpoint on ONNX Runtime or TensorRT is exported (and built) next to it first.
        device: ``cpu`` or ``cuda[:N]``.
        confusion: where to write the confusion-matrix PNG; next to the model when omitted.
        data_root, download, val_split, seed, max_samples: as for :func:`toolkit.core.data.resolve_data`.
        checkpoint_options: which of a checkpoint's weights to evaluate (EMA or raw), and whether
            to trust a pickle.
        meta: the spec and preprocessing of an ONNX file that carries none (:mod:`toolkit.core.foreign_onnx`).
    """

    model: Path
    data: str = "digits"
    split: str | None = None
    batch_size: int = 256
    engine: str | None = None
    device: str = "cpu"
    confusion: Path | None = None
    data_root: Path | None = None
    download: bool = False
    val_split: float = 0.1
    seed: int = 0
    max_samples: int | None = None
    progress: bool = True
    checkpoint_options: CheckpointOptions = field(default_factory=CheckpointOptions)
    meta: ArtefactMeta | None = None

    def __post_init__(self) -> None:
        for flag, value, rule in (
            ("--batch-size", self.batch_size, COUNT), ("--val-split", self.val_split, PART), ("--seed", self.seed, SEED),
            ("--max-samples", self.max_samples, COUNT),
        ):
            rule.check(value, flag)


@dataclass(frozen=True)
class EvalResult:
    """The outcome of :func:`evaluate_artefact`."""

    report: "ClassificationReport"
    model: Path
    engine: str
    data: str
    split: str
    seconds: float
    confusion_png: Path | None
    assumed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "engine": self.engine,
            "data": self.data,
            "split": self.split,
            "seconds": round(self.seconds, 3),
            "confusion_png": str(self.confusion_png) if self.confusion_png else None,
            "assumed": self.assumed,
            **self.report.to_dict(),
        }


#: How an open engine scores one split of a source: ``score(engine, source, split) -> report``.
Scorer = Callable[["Engine", DataSource, str], "ClassificationReport"]


def evaluate_artefact(options: EvalOptions, score: Scorer | None = None) -> EvalResult:
    """Load an artefact, prepare the data with its preprocess, score it, and draw the confusion matrix.

    Args:
        options: what to evaluate, on which data.
        score: how the opened engine scores the split; by default :func:`evaluate` in this process
            (``toolkit.ray_inference`` passes one that runs on a Ray cluster).

    Returns:
        The report, the engine's name and where the confusion PNG went.
    """
    started = time.perf_counter()
    split_hint = options.split or "test"  # the default PNG's name is settled below, once the split is known
    png = options.confusion or Path(options.model).with_name(f"{Path(options.model).stem}.confusion-{split_hint}.png")
    check_outputs([Output(png, "--confusion", (".png",), "a PNG image")], [options.model, options.data])
    source = resolve_data(
        options.data,
        val_split=options.val_split,
        seed=options.seed,
        data_root=options.data_root,
        download=options.download,
        max_samples=options.max_samples,
    )
    split = options.split or source.judged_split
    images = len(source.split(split))  # a missing split fails here, before the engine is opened
    request = EngineRequest.of(options.model, options.engine, device=options.device, checkpoint_options=options.checkpoint_options, meta=options.meta)
    with open_engine(request) as engine:
        label_mapping(source.class_names, engine.spec)  # fail on foreign classes before any work
        assumed = match_classes(engine.spec, source.class_names).assumed
        for warning in (assumed, few_judged_warning(images, f"in {source.name} ({split})")):
            if warning:
                warn(warning)
        report = (score or _score_here(options))(engine, source, split)
        name = engine.name
    png = options.confusion or Path(options.model).with_name(f"{Path(options.model).stem}.confusion-{split}.png")
    check_outputs([Output(png, "--confusion")], [options.model, options.data])
    report.save_confusion_png(png, title=f"{Path(options.model).name} on {_short(source.name)} {split}")
    return EvalResult(report, Path(options.model), name, source.name, split, time.perf_counter() - started, png, assumed)


def _score_here(options: EvalOptions) -> Scorer:
    def score(engine: "Engine", source: DataSource, split: str) -> "ClassificationReport":
        dataset = source.dataset(split, preprocess=engine.preprocess)
        return evaluate(engine, dataset, options.batch_size, source.class_names, progress=options.progress)

    return score


def _short(name: str | os.PathLike) -> str:
    return Path(name).name or str(name)
