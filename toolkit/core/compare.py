"""Parity metrics: how far one runtime's logits are from the reference's, and the inputs they are measured on.

:func:`compare` measures one candidate's logits against the reference's (eager fp32 on the
very same inputs): max/mean absolute error, max relative error, a Polygraphy-style element
check (an element fails only when it is beyond *both* ``atol`` and ``rtol``), cosine
similarity per sample, top-1 agreement and top-5 overlap. Nothing here opens an engine: the
export check (:mod:`exporters.onnx`) and ``rtk parity`` (:mod:`toolkit.usecases.parity`) both build on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np

from toolkit.core.errors import RtkError
from toolkit.core.outputs import json_ready
from toolkit.core.validation import COSINE, FRACTION, NON_NEGATIVE


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
        max_accuracy_drop: on labelled images, the most the candidate's accuracy may fall below
            the reference's (a fraction: 0.01 is one point); ``None`` does not judge it.
    """

    atol: float
    rtol: float
    min_cosine: float
    min_top1: float
    check_elements: bool = True
    max_accuracy_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Defaults per precision. fp32 must match element by element; reduced precision is judged by
#: the direction of the logit vector (cosine) and the decision it leads to (top-1). int8 is judged
#: on real labelled images only, by the decisions (top-1 agreement) and the accuracy they give:
#: its activation ranges are calibrated on real images, so random inputs fall outside them and
#: their errors say nothing about the model (they are reported, with the cosine, not judged).
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-4, min_cosine=0.99999, min_top1=0.99),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.999, min_top1=0.95, check_elements=False),
    "bf16": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.99, min_top1=0.90, check_elements=False),
    "int8": Tolerance(atol=1e-1, rtol=1e-1, min_cosine=-1.0, min_top1=0.99, check_elements=False, max_accuracy_drop=0.01),
}
#: Precisions judged on real labelled images alone: comparing them on random inputs only is refused.
NEEDS_LABELLED_DATA = ("int8",)


def tolerance_for(
    precision: str,
    atol: float | None = None,
    rtol: float | None = None,
    min_cosine: float | None = None,
    min_top1: float | None = None,
    max_accuracy_drop: float | None = None,
) -> Tolerance:
    """The default tolerance of a precision with any of its fields overridden.

    Giving ``atol`` or ``rtol`` turns the element check on for reduced precisions too.
    """
    if precision not in DEFAULT_TOLERANCES:
        raise RtkError(f"unknown precision {precision!r}; choose one of {', '.join(DEFAULT_TOLERANCES)}")
    base = DEFAULT_TOLERANCES[precision]
    for name, value, rule in (
        ("--atol", atol, NON_NEGATIVE), ("--rtol", rtol, NON_NEGATIVE), ("--min-cosine", min_cosine, COSINE),
        ("--min-top1", min_top1, FRACTION), ("--max-accuracy-drop", max_accuracy_drop, FRACTION),
    ):
        rule.check(value, name)
    return replace(
        base,
        atol=base.atol if atol is None else atol,
        rtol=base.rtol if rtol is None else rtol,
        min_cosine=base.min_cosine if min_cosine is None else min_cosine,
        min_top1=base.min_top1 if min_top1 is None else min_top1,
        check_elements=base.check_elements or atol is not None or rtol is not None,
        max_accuracy_drop=base.max_accuracy_drop if max_accuracy_drop is None else max_accuracy_drop,
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
        judged: which measures the verdict rests on, of ``elements`` (the atol/rtol check), ``cosine``,
            ``top1`` and ``accuracy``; the others are reported, not judged.
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
    judged: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def accuracy_delta(self) -> float | None:
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return self.accuracy - self.reference_accuracy

    def to_dict(self) -> dict[str, Any]:
        """The metrics as JSON-ready values; a metric that is not finite (the error of a NaN logit)
        is ``None``, since JSON has no NaN or infinity: ``failures`` says why."""
        d = json_ready(asdict(self))
        d["failures"] = list(self.failures)
        d["judged"] = list(self.judged)
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
    n = ref.shape[0]
    finite = np.isfinite(cand)
    err, rel, bad = _element_errors(ref, cand, finite, tol)
    cos = _cosine(ref, np.where(finite, cand, 0.0))
    top1 = float(np.mean(ref.argmax(1) == cand.argmax(1)))
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    accuracy, reference_accuracy, accuracy_failure = _accuracies(ref, cand, labels, tol)
    failures = _failures(finite, bad, cos, top1 if judge_top1 else None, tol) + accuracy_failure

    judged = [
        name for name, on in (
            ("elements", tol.check_elements), ("cosine", tol.min_cosine > -1.0), ("top1", judge_top1),
            ("accuracy", labels is not None and tol.max_accuracy_drop is not None),
        ) if on
    ]  # fmt: skip
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
        top5_overlap=_top5_overlap(ref, cand, finite),
        worst_sample=int(worst[0]),
        worst_class=int(worst[1]),
        worst_reference=float(ref[worst]),
        worst_candidate=float(cand[worst]),
        tolerance=tol,
        failures=tuple(failures),
        accuracy=accuracy,
        reference_accuracy=reference_accuracy,
        judged=tuple(judged),
    )


def _element_errors(ref: np.ndarray, cand: np.ndarray, finite: np.ndarray, tol: Tolerance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Absolute and relative error of every logit (infinite where the candidate's is not finite),
    and which logits fail the element check: beyond both atol (read against the sample's logit
    scale) and rtol."""
    err = np.where(finite, np.abs(cand - ref), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ref != 0, err / np.abs(ref), np.where(err == 0, 0.0, np.inf))
    # atol is read against each sample's logit scale: a network whose logits reach thousands
    # (random weights, no calibration) accumulates float32 rounding of that size even in the
    # logits near zero, which neither a fixed atol nor rtol would forgive.
    sample_scale = np.maximum(1.0, np.abs(ref).max(axis=1, keepdims=True))
    return err, rel, (err > tol.atol * sample_scale) & (rel > tol.rtol)


def _top5_overlap(ref: np.ndarray, cand: np.ndarray, finite: np.ndarray) -> float:
    """The mean share of the reference's top 5 classes (all, for fewer) that the candidate ranks in its top 5."""
    k = min(5, ref.shape[1])
    top_ref = np.argsort(-ref, axis=1)[:, :k]
    top_cand = np.argsort(-np.where(finite, cand, -np.inf), axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_cand)]))


def _failures(finite: np.ndarray, bad: np.ndarray, cos: np.ndarray, top1: float | None, tol: Tolerance) -> list[str]:
    """Each tolerance the candidate misses, in words; ``top1`` ``None``: agreement is not judged."""
    failures = []
    if not finite.all():
        failures.append(f"{int((~finite).sum())} logit(s) are NaN or infinite")
    if tol.check_elements and bad.any():
        failures.append(f"{int(bad.sum())} of {bad.size} logits beyond atol {tol.atol:g} (× logit scale) and rtol {tol.rtol:g}")
    if cos.min() < tol.min_cosine:
        failures.append(f"cosine similarity {cos.min():.6f} below {tol.min_cosine:g}")
    if top1 is not None and top1 < tol.min_top1:
        failures.append(f"top-1 agreement {top1:.2%} below {tol.min_top1:.2%}")
    return failures


def _accuracies(
    ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None, tol: Tolerance
) -> tuple[float | None, float | None, list[str]]:
    """The candidate's and the reference's accuracy on ``labels`` (``None`` without labels), and the
    failure when the candidate's falls further below than ``tol.max_accuracy_drop``."""
    if labels is None:
        return None, None, []
    labels = np.asarray(labels)
    reference_accuracy = float(np.mean(ref.argmax(1) == labels))
    accuracy = float(np.mean(cand.argmax(1) == labels))
    drop = reference_accuracy - accuracy
    # The 1e-9 absorbs float rounding of the two fractions, so exactly at the limit passes.
    if tol.max_accuracy_drop is not None and drop > tol.max_accuracy_drop + 1e-9:
        return accuracy, reference_accuracy, [
            f"accuracy {accuracy:.2%} is {drop:.2%} below the reference's {reference_accuracy:.2%} "
            f"(at most {tol.max_accuracy_drop:.2%} allowed)"
        ]
    return accuracy, reference_accuracy, []


# --- inputs -------------------------------------------------------------------------------


def random_batches(input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float], batch_sizes: Sequence[int], seed: int = 0) -> tuple[np.ndarray, ...]:
    """Seeded random images (uniform pixels in [0, 1], normalised like real ones), one batch per size."""
    rng = np.random.default_rng(seed)
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return tuple(((rng.random((b, *input_shape), dtype=np.float32) - m) / s).astype(np.float32) for b in batch_sizes)




def chunks(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, len(x), size)]
