"""Accuracy-aware mixed precision: the fewest layers left in float that hold int8's loss to a bound.

``rtk export --precision int8 --max-drop 0.5`` asks that the int8 files lose at most half a point:
of top-1 accuracy on labelled images, of top-1 agreement with fp32 (disagreement in %) on
unlabelled ones, both measured on the check's held-out images against eager fp32's logits.
The search, like Intel Neural Compressor's accuracy-aware tuning and Polygraphy's
``debug precision``, reuses one calibration (:class:`exporters.int8.Int8Quantizer`) and is bounded:

1. every layer quantized: when that meets the bound, nothing is kept in float;
2. sensitivity: for each of the ``L`` quantized layers (every node the quantizer feeds through a
   DequantizeLinear: Conv, Gemm, the residual Adds, pooling; not the ReLUs, which fold into their
   neighbours), the file with that layer alone left in float, and how much closer its logits come
   to fp32's (relative L2 error of the logits; a continuous measure, where accuracy on a few
   hundred images moves in whole images);
3. the most sensitive 1, 2, 4… layers kept in float, doubling up to all but the least sensitive
   one, each trial measured for real on both layouts; when even all but one misses the bound the
   export fails in one sentence;
4. a bisection between the last count that missed and the first that met the bound.

That is at most ``2 + L + 4⌈log2(L − 1)⌉`` quantizations and runs over the judged images
(:func:`trials_bound`; the ranking runs the uint8 layout, the one ONNX Runtime runs fastest on a
CPU): 52 for a ResNet-18 (L = 30: 20 Conv, 8 Add, the pooling and the classifier), 102 for a
ResNet-50 (L = 72). Quantizing never calibrates again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from exporters.int8 import Int8Quantizer, quantized_layers
from toolkit.core.console import info
from toolkit.core.errors import RtkError, require

if TYPE_CHECKING:
    import onnx



@dataclass(frozen=True)
class Measured:
    """One int8 file's loss on the judged images.

    Attributes:
        drop: points lost: accuracy (labelled) or top-1 agreement (unlabelled) below fp32's, × 100.
        error: relative L2 error of its logits against fp32's, over all judged images.
    """

    drop: float
    error: float


@dataclass
class Judge:
    """Runs an int8 graph on the judged images (ONNX Runtime, CPU) and measures its loss against eager fp32.

    Attributes:
        batches: the judged images, in batches.
        reference: eager fp32's logits on them, (N, classes).
        labels: their classes in the model's order, or ``None`` when unlabelled.
        runs: how many graphs were measured.
    """

    batches: Sequence[np.ndarray]
    reference: np.ndarray
    labels: np.ndarray | None = None
    runs: int = field(default=0, init=False)

    @property
    def metric(self) -> str:
        return "top-1 accuracy points" if self.labels is not None else "top-1 disagreement with fp32, %"

    def measure(self, model: "onnx.ModelProto") -> Measured:
        ort = require("onnxruntime", "the --max-drop search")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        logits = np.concatenate([session.run(None, {name: batch})[0] for batch in self.batches]).astype(np.float64)
        self.runs += 1
        ref = np.asarray(self.reference, dtype=np.float64)
        error = float(np.linalg.norm(logits - ref) / max(np.linalg.norm(ref), 1e-12))
        if self.labels is not None:
            drop = float(np.mean(ref.argmax(1) == self.labels) - np.mean(logits.argmax(1) == self.labels))
        else:
            drop = float(1.0 - np.mean(ref.argmax(1) == logits.argmax(1)))
        return Measured(100.0 * drop, error)


@dataclass(frozen=True)
class SearchResult:
    """What :func:`keep_within` chose: the nodes to leave in float, and the record for the files' metadata."""

    float_nodes: list[str]
    record: dict[str, Any]


def keep_within(quantizer: "Int8Quantizer", keep_float: Sequence[str], max_drop: float, judge: Judge) -> SearchResult:
    """The fewest quantized layers to leave in float (besides ``keep_float``) for both int8 layouts
    to lose at most ``max_drop`` points on the judged images.

    Args:
        quantizer: one calibration of the graph.
        keep_float: nodes the user keeps in float anyway (``--keep-float``).
        max_drop: the bound, in points (see :class:`Measured`).
        judge: the held-out images and eager fp32's logits on them.

    Returns:
        The float nodes and a record: the bound and its measure, the layers kept, every layer's
        sensitivity, the drop measured on each layout, trials and seconds spent.

    Raises:
        RtkError: even with every quantized layer but one left in float the bound is missed.
    """

    started = time.perf_counter()
    base = list(keep_float)
    quantized = quantizer.quantize("s8", base)
    everything = {"s8": judge.measure(quantized), "u8": judge.measure(quantizer.quantize("u8", base))}
    record = _Record(max_drop, judge, started)
    if _worst(everything) <= max_drop:
        return SearchResult(base, record([], everything, []))
    layers = quantized_layers(quantized)
    info(f"int8 loses {_worst(everything):.2f} {judge.metric}; ranking {len(layers)} layers by what keeping each in float gives back")
    ops = {n.name: n.op_type for n in quantized.graph.node}
    ranked = []
    for name in layers:
        gain = everything["u8"].error - judge.measure(quantizer.quantize("u8", base + [name])).error
        ranked.append({"layer": name, "op": ops[name], "sensitivity": round(gain, 6)})
    ranked.sort(key=lambda r: -r["sensitivity"])
    order = [r["layer"] for r in ranked]
    count, kept, measured = _fewest(order, lambda k: _measure(quantizer, judge, base + order[:k]), max_drop)
    if count is None:
        raise RtkError(
            f"--max-drop {max_drop:g} cannot be met: even with every layer but {order[-1]} left in float the int8 files lose "
            f"{_worst(measured):.2f} {judge.metric} on {len(judge.reference)} held-out images; allow more, or export fp16"
        )
    return SearchResult(base + kept, record(kept, measured, ranked))


def _fewest(order: Sequence[str], trial, max_drop: float) -> tuple[int | None, list[str], dict[str, Measured]]:
    """The smallest count of the ranked layers to keep in float that meets the bound, found by
    doubling (1, 2, 4… up to all but one) and then bisecting between the last count that missed and
    the first that met it. Doubling from one finds the few sensitive layers a network usually has in
    few trials; a loss counted in whole images is not monotonic in the count, and growing from one
    keeps the answer small where a bisection over the whole range could settle on a large count.

    Returns:
        ``(count, layers, measured)``, or ``(None, [], measured at all but one)`` when no count met it.
    """
    last = len(order) - 1
    missed, count = 0, 1
    while True:
        count = min(count, last)
        measured = trial(count)
        if _worst(measured) <= max_drop:
            break
        if count == last:
            return None, [], measured
        missed, count = count, count * 2
    best, best_measured = count, measured
    low, high = missed + 1, count - 1
    while low <= high:
        middle = (low + high) // 2
        measured = trial(middle)
        if _worst(measured) <= max_drop:
            best, best_measured, high = middle, measured, middle - 1
        else:
            low = middle + 1
    return best, list(order[:best]), best_measured


def _measure(quantizer: "Int8Quantizer", judge: Judge, float_nodes: Sequence[str]) -> dict[str, Measured]:
    """Both layouts with ``float_nodes`` in float, measured."""
    return {layout: judge.measure(quantizer.quantize(layout, float_nodes)) for layout in ("s8", "u8")}


@dataclass
class _Record:
    """Makes the ``max_drop`` record of the files' calibration metadata."""

    target: float
    judge: Judge
    started: float

    def __call__(self, kept: Sequence[str], measured: dict[str, Measured], sensitivities: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "target": self.target,
            "metric": self.judge.metric,
            "images": int(len(self.judge.reference)),
            "kept_float": list(kept),
            "drop": {layout: round(m.drop, 4) for layout, m in measured.items()},
            "sensitivities": sensitivities,
            "trials": self.judge.runs,
            "seconds": round(time.perf_counter() - self.started, 1),
        }


def _worst(measured: dict[str, Measured]) -> float:
    return max(m.drop for m in measured.values())


def trials_bound(layers: int) -> int:
    """The most graphs the search measures for ``layers`` quantized layers: both files with every
    layer quantized, one per layer for the ranking, then both files at each count the doubling
    (at most ``⌈log2(layers − 1)⌉ + 1``) and the bisection (at most ``⌈log2(layers − 1)⌉ − 1``) try."""
    steps = math.ceil(math.log2(max(layers - 1, 2)))
    return 2 + layers + 2 * (steps + 1) + 2 * (steps - 1)
