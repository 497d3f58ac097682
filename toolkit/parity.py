"""Parity: proof, in numbers, that a runtime gives the same answers as eager PyTorch.

:func:`compare` measures one candidate's logits against the reference's (eager fp32 on the
very same inputs): max/mean absolute error, max relative error, a Polygraphy-style element
check (an element fails only when it is beyond *both* ``atol`` and ``rtol``), cosine
similarity per sample, top-1 agreement and top-5 overlap. :func:`run_parity` feeds identical
inputs to every engine asked for and gathers a :class:`ParityReport`; ``rtk parity`` and
``rtk export`` are thin shells around them.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from toolkit.errors import RtkError
from toolkit.spec import ArtefactMeta

if TYPE_CHECKING:
    from engines.base import Engine
    from toolkit.checkpoint import Checkpoint


@dataclass(frozen=True)
class Tolerance:
    """When a candidate counts as giving the same answers.

    Attributes:
        atol: absolute error an element may have, in units of its sample's largest ``|logit|``
            when that is above 1 (so logits up to 1 are held to ``atol`` itself).
        rtol: relative error (to the reference element) an element may have; an element fails
            only when beyond both.
        min_cosine: the lowest per-sample cosine similarity allowed.
        min_top1: the lowest fraction of samples whose top-1 class must agree.
        check_elements: judge the element check (fp32); for reduced precision it is reported
            but judged only when ``atol``/``rtol`` are given explicitly.
    """

    atol: float
    rtol: float
    min_cosine: float
    min_top1: float
    check_elements: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Defaults per precision. fp32 must match element by element; reduced precision is judged by
#: the direction of the logit vector (cosine) and the decision it leads to (top-1).
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-4, min_cosine=0.99999, min_top1=0.99),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.999, min_top1=0.95, check_elements=False),
    "bf16": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.99, min_top1=0.90, check_elements=False),
}


def tolerance_for(
    precision: str,
    atol: float | None = None,
    rtol: float | None = None,
    min_cosine: float | None = None,
    min_top1: float | None = None,
) -> Tolerance:
    """The default tolerance of a precision with any of its fields overridden.

    Giving ``atol`` or ``rtol`` turns the element check on for reduced precisions too.
    """
    if precision not in DEFAULT_TOLERANCES:
        raise RtkError(f"unknown precision {precision!r}; choose one of {', '.join(DEFAULT_TOLERANCES)}")
    base = DEFAULT_TOLERANCES[precision]
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not value >= 0:
            raise RtkError(f"--{name} must be >= 0, got {value}")
    for name, value in (("min-cosine", min_cosine), ("min-top1", min_top1)):
        if value is not None and not -1.0 <= value <= 1.0:
            raise RtkError(f"--{name} must be within [-1, 1], got {value}")
    return replace(
        base,
        atol=base.atol if atol is None else atol,
        rtol=base.rtol if rtol is None else rtol,
        min_cosine=base.min_cosine if min_cosine is None else min_cosine,
        min_top1=base.min_top1 if min_top1 is None else min_top1,
        check_elements=base.check_elements or atol is not None or rtol is not None,
    )


@dataclass(frozen=True)
class ParityMetrics:
    """How far one candidate's logits are from the reference's.

    Attributes:
        samples: number of inputs compared.
        max_abs, mean_abs: absolute error of the logits.
        max_rel: largest ``|candidate - reference| / |reference|``.
        scale: ``max |reference|``, to read ``max_abs`` against.
        failed_elements: elements beyond both ``atol`` and ``rtol``.
        min_cosine, mean_cosine: cosine similarity of each sample's logit vector.
        top1_agreement: fraction of samples whose arg-max class agrees.
        top5_overlap: mean fraction of the reference's top-5 classes found in the candidate's.
        worst_sample, worst_class: where the largest absolute error is.
        worst_reference, worst_candidate: the two logits there.
        tolerance: what the candidate was judged against.
        failures: why it failed (empty when it passed).
        accuracy, reference_accuracy: on labelled inputs, else ``None``.
    """

    samples: int
    max_abs: float
    mean_abs: float
    max_rel: float
    scale: float
    failed_elements: int
    min_cosine: float
    mean_cosine: float
    top1_agreement: float
    top5_overlap: float
    worst_sample: int
    worst_class: int
    worst_reference: float
    worst_candidate: float
    tolerance: Tolerance
    failures: tuple[str, ...] = ()
    accuracy: float | None = None
    reference_accuracy: float | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def accuracy_delta(self) -> float | None:
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return self.accuracy - self.reference_accuracy

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = list(self.failures)
        d["passed"] = self.passed
        d["accuracy_delta"] = self.accuracy_delta
        return d


def judge_random_top1(precision: str) -> bool:
    """Whether top-1 agreement on random inputs counts: only at full precision (see :func:`compare`)."""
    return precision == "fp32"


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # Two all-zero vectors are identical; one zero vector against another is not.
    same = np.all(a == b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(same, 1.0, 0.0))
    return np.clip(cos, -1.0, 1.0)


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    precision: str = "fp32",
    *,
    tolerance: Tolerance | None = None,
    labels: np.ndarray | None = None,
    judge_top1: bool = True,
) -> ParityMetrics:
    """Measure a candidate's logits against the reference's.

    Args:
        reference: (N, C) logits of the reference (eager fp32).
        candidate: (N, C) logits of the engine under test, on the same inputs.
        precision: the candidate's precision, choosing the default tolerance.
        tolerance: overrides the default of ``precision``.
        labels: (N,) true classes, to add accuracy of both and its delta.
        judge_top1: hold top-1 agreement against ``min_top1``. Random inputs of a reduced
            precision pass ``False``: random images have no right answer, and a flip between two
            near-equal logits there says nothing about the model (it is still reported).

    Returns:
        The metrics, with ``failures`` naming every tolerance that was not met.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.ndim != 2 or ref.shape != cand.shape or ref.shape[0] == 0:
        raise RtkError(f"cannot compare logits of shapes {ref.shape} and {cand.shape}; both must be the same (N, classes)")
    tol = tolerance or tolerance_for(precision)
    n, classes = ref.shape
    finite = np.isfinite(cand)
    err = np.where(finite, np.abs(cand - ref), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ref != 0, err / np.abs(ref), np.where(err == 0, 0.0, np.inf))
    # atol is read against each sample's logit scale: a network whose logits reach thousands
    # (random weights, no calibration) accumulates float32 rounding of that size even in the
    # logits near zero, which neither a fixed atol nor rtol would forgive.
    sample_scale = np.maximum(1.0, np.abs(ref).max(axis=1, keepdims=True))
    bad = (err > tol.atol * sample_scale) & (rel > tol.rtol)
    cos = _cosine(ref, np.where(finite, cand, 0.0))
    top1 = float(np.mean(ref.argmax(1) == cand.argmax(1)))
    k = min(5, classes)
    top_ref = np.argsort(-ref, axis=1)[:, :k]
    top_cand = np.argsort(-np.where(finite, cand, -np.inf), axis=1)[:, :k]
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_cand)]))
    worst = np.unravel_index(int(np.argmax(err)), err.shape)

    failures = []
    if not finite.all():
        failures.append(f"{int((~finite).sum())} logit(s) are NaN or infinite")
    if tol.check_elements and bad.any():
        failures.append(f"{int(bad.sum())} of {err.size} logits beyond atol {tol.atol:g} (× logit scale) and rtol {tol.rtol:g}")
    if cos.min() < tol.min_cosine:
        failures.append(f"cosine similarity {cos.min():.6f} below {tol.min_cosine:g}")
    if judge_top1 and top1 < tol.min_top1:
        failures.append(f"top-1 agreement {top1:.2%} below {tol.min_top1:.2%}")

    accuracy = reference_accuracy = None
    if labels is not None:
        labels = np.asarray(labels)
        reference_accuracy = float(np.mean(ref.argmax(1) == labels))
        accuracy = float(np.mean(cand.argmax(1) == labels))
    return ParityMetrics(
        samples=n,
        max_abs=float(err.max()),
        mean_abs=float(err[np.isfinite(err)].mean()) if np.isfinite(err).any() else math.inf,
        max_rel=float(rel.max()),
        scale=float(np.abs(ref).max()),
        failed_elements=int(bad.sum()),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        top1_agreement=top1,
        top5_overlap=overlap,
        worst_sample=int(worst[0]),
        worst_class=int(worst[1]),
        worst_reference=float(ref[worst]),
        worst_candidate=float(cand[worst]),
        tolerance=tol,
        failures=tuple(failures),
        accuracy=accuracy,
        reference_accuracy=reference_accuracy,
    )


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityInputs:
    """The inputs every engine is fed: random batches and, optionally, labelled real images.

    Attributes:
        batches: list of NCHW float32 arrays (the random part; several batch sizes).
        images: (N, C, H, W) real images or ``None``.
        labels: their classes or ``None``.
        source: where the real images came from.
    """

    batches: tuple[np.ndarray, ...]
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    source: str | None = None


def random_batches(input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float], batch_sizes: Sequence[int], seed: int = 0) -> tuple[np.ndarray, ...]:
    """Seeded random images (uniform pixels in [0, 1], normalised like real ones), one batch per size."""
    rng = np.random.default_rng(seed)
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return tuple(((rng.random((b, *input_shape), dtype=np.float32) - m) / s).astype(np.float32) for b in batch_sizes)


def labelled_images(ckpt: "Checkpoint", data: str | os.PathLike, max_samples: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Real images of a dataset prepared with the checkpoint's own preprocessing, and their labels.

    The test split is used when the data has one, else the validation split. Labels are mapped
    onto the model's class order by name when both have names.
    """
    from toolkit.data import resolve_data

    source = resolve_data(data, input_size=ckpt.preprocess.input_size[0])
    split = "test" if source.has("test") else "val"
    dataset = source.dataset(split, preprocess=ckpt.preprocess)
    x, y = dataset.arrays(limit=max_samples or None)
    spec = ckpt.spec
    if source.num_classes != spec.num_classes:
        raise RtkError(f"{data} has {source.num_classes} classes but the model has {spec.num_classes}")
    if spec.class_names and tuple(spec.class_names) != tuple(source.class_names):
        if set(spec.class_names) != set(source.class_names):
            raise RtkError(f"the classes of {data} ({', '.join(source.class_names[:5])}…) are not the model's ({', '.join(spec.class_names[:5])}…)")
        order = {name: i for i, name in enumerate(spec.class_names)}
        y = np.asarray([order[source.class_names[int(label)]] for label in y])
    return np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64), f"{source.name} ({split}, {len(y)} images)"


# --- engines under test ------------------------------------------------------------------

#: Engines ``rtk parity`` can check: eager variants run the checkpoint itself; ONNX Runtime and
#: TensorRT run the artefacts next to it (made when missing) or the ones named explicitly.
PARITY_ENGINES = ("eager", "eager-fp16", "eager-bf16", "eager-cl", "ort", "ort-fp16", "ort-cuda", "ort-trt", "trt")


def open_parity_engine(
    ckpt: "Checkpoint",
    name: str,
    *,
    device: str = "cpu",
    onnx: str | os.PathLike | None = None,
    onnx_fp16: str | os.PathLike | None = None,
    trt_engine: str | os.PathLike | None = None,
) -> "Engine":
    """Open one engine under test for a checkpoint.

    Args:
        ckpt: the reference checkpoint; its spec is what every artefact must match.
        name: one of :data:`PARITY_ENGINES`.
        device: where eager and the GPU runtimes run.
        onnx, onnx_fp16, trt_engine: explicit artefacts; by default the ones next to the
            checkpoint (``MODEL.onnx``, ``MODEL.fp16.onnx``, the engine the TensorRT runtime builds).

    Raises:
        RtkError: unknown engine, or an artefact that does not match the checkpoint.
    """
    import engines

    if name not in PARITY_ENGINES:
        raise RtkError(f"unknown engine {name!r} for parity; choose from {', '.join(PARITY_ENGINES)}")
    if name.startswith("eager"):
        variant = name.partition("-")[2]
        return engines.load(ckpt, engine="eager", device=device, precision=variant if variant in ("fp16", "bf16") else "fp32", channels_last=variant == "cl")
    given = {"trt": trt_engine, "ort-fp16": onnx_fp16}.get(name, onnx)
    if given is None and ckpt.path is None:
        raise RtkError(f"an in-memory checkpoint has no artefacts next to it; pass the file {name} runs explicitly")
    # Without an explicit artefact, the one next to the checkpoint (exported or built when missing, then cached).
    path = Path(given) if given else engines.prepare(ckpt.path, name)
    if name == "trt":
        engine = engines.load(path, engine="trt", device=device if device.startswith("cuda") else "cuda")
        try:
            _check_matches(ckpt, ArtefactMeta(engine.spec, engine.preprocess), path)
        except RtkError:
            engine.close()
            raise
        return engine
    meta = _onnx_meta_for(ckpt, path)
    ort_device = device if name in ("ort-cuda", "ort-trt") else "cpu"
    return engines.load(path, engine=name, device=ort_device, meta=meta)


def _onnx_meta_for(ckpt: "Checkpoint", path: Path) -> ArtefactMeta:
    """The checkpoint's spec for an ONNX under test, after checking the file's own metadata agrees.

    A foreign ONNX (no rtk metadata) is judged against the checkpoint's spec; its graph must
    still be an NCHW classifier with the checkpoint's class count (checked by the engine).
    """
    from exporters.onnx_info import load_onnx_graph, metadata_dict

    stored = metadata_dict(load_onnx_graph(path))
    if stored is not None:
        _check_matches(ckpt, ArtefactMeta.from_dict(stored), path)
    return ArtefactMeta(ckpt.spec, ckpt.preprocess)


def _check_matches(ckpt: "Checkpoint", meta: ArtefactMeta, path: Path) -> None:
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


def run_engine(engine: "Engine", batches: Sequence[np.ndarray]) -> np.ndarray:
    """Run every batch through an engine, splitting any batch larger than it accepts."""
    outs = []
    limit = engine.max_batch or max(len(b) for b in batches)
    for batch in batches:
        for start in range(0, len(batch), limit):
            outs.append(engine(batch[start : start + limit]))
    return np.concatenate(outs)


def _chunks(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, len(x), size)]


def run_parity(
    checkpoint: "str | os.PathLike | Checkpoint",
    engines: Sequence[str] = ("eager", "ort"),
    *,
    onnx: str | os.PathLike | None = None,
    onnx_fp16: str | os.PathLike | None = None,
    trt_engine: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    max_samples: int | None = 500,
    batch_sizes: Sequence[int] = (1, 4, 16),
    seed: int = 0,
    device: str = "cpu",
    atol: float | None = None,
    rtol: float | None = None,
    min_cosine: float | None = None,
    min_top1: float | None = None,
    on_engine=None,
) -> ParityReport:
    """Compare engines against the eager fp32 reference of a checkpoint on identical inputs.

    Args:
        checkpoint: the reference model (path or loaded :class:`~toolkit.checkpoint.Checkpoint`).
        engines: names from :data:`PARITY_ENGINES` (``eager``, ``eager-fp16``,
            ``eager-bf16``, ``ort``, ``ort-fp16``, ``ort-cuda``, ``ort-trt``, ``trt``).
        onnx, onnx_fp16: the ONNX files to check; by default the ones next to the checkpoint,
            exported when missing or older than it.
        trt_engine: the TensorRT engine to check; by default built next to the checkpoint.
        data: a dataset name or folder for labelled real images (its test split).
        max_samples: at most this many real images.
        batch_sizes: sizes of the random batches (seeded with ``seed``).
        device: where eager and ``ort-cuda``/``trt`` run.
        atol, rtol, min_cosine, min_top1: override the per-precision tolerances.
        on_engine: called with each :class:`EngineResult` as it is ready (progress output).

    Returns:
        The report; ``report.passed`` is false when any engine is outside tolerance.
    """
    from toolkit.checkpoint import Checkpoint, load_checkpoint

    if not engines:
        raise RtkError("no engines to compare; name some with --engines, e.g. eager,ort")
    unknown = [name for name in engines if name not in PARITY_ENGINES]
    if unknown:
        raise RtkError(f"unknown engine {unknown[0]!r} for parity; choose from {', '.join(PARITY_ENGINES)}")
    if any(b < 1 for b in batch_sizes) or not batch_sizes:
        raise RtkError(f"batch sizes must be positive, got {list(batch_sizes)}")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    spec, pre = ckpt.spec, ckpt.preprocess
    batches = random_batches((spec.in_chans, *pre.input_size), pre.mean, pre.std, batch_sizes, seed)
    images = labels = source = None
    if data is not None:
        images, labels, source = labelled_images(ckpt, data, max_samples)
    chunk = max(batch_sizes)
    data_batches = _chunks(images, chunk) if images is not None else []

    from engines.eager import EagerEngine

    with EagerEngine(ckpt.build_model(), spec, pre, device, "fp32") as reference:
        ref_random = run_engine(reference, batches)
        ref_data = run_engine(reference, data_batches) if data_batches else None
        reference_name = reference.name

    results = []
    artefacts = {"onnx": onnx, "onnx_fp16": onnx_fp16, "trt_engine": trt_engine}
    for name in dict.fromkeys(engines):  # keep order, drop repeats
        with open_parity_engine(ckpt, name, device=device, **artefacts) as engine:
            precision = engine.precision
            tol = tolerance_for(precision, atol, rtol, min_cosine, min_top1)
            out_random = run_engine(engine, batches)
            random_metrics = compare(ref_random, out_random, precision, tolerance=tol, judge_top1=judge_random_top1(precision))
            data_metrics = None
            if ref_data is not None:
                data_metrics = compare(ref_data, run_engine(engine, data_batches), precision, tolerance=tol, labels=labels)
            result = EngineResult(engine.name, str(getattr(engine, "path", ckpt.path)), precision, random_metrics, data_metrics)
        results.append(result)
        if on_engine is not None:
            on_engine(result)
    return ParityReport(
        checkpoint=str(ckpt.path),
        reference=f"{reference_name} fp32 ({device})",
        class_names=tuple(spec.class_name(i) for i in range(spec.num_classes)),
        batch_sizes=tuple(batch_sizes),
        seed=seed,
        data_source=source,
        results=tuple(results),
    )
