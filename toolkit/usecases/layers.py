"""Where a lower precision loses: every intermediate tensor of an ONNX-based engine against the
fp32 ONNX's, on the same real images (``rtk parity --layers DIR``).

The fp32 ONNX runs on ONNX Runtime's CPU provider and the candidate on its own runtime (ONNX
Runtime with its provider, or OpenVINO at its precision), each with its intermediate tensors
made graph outputs, as Polygraphy does with ``--onnx-outputs mark all`` on both runners. Tensors
are matched by name and compared in the fp32 graph's order: cosine similarity per image (its
minimum and mean over the images) and relative error ``‖candidate − fp32‖ / ‖fp32‖``. The first
tensor whose minimum cosine falls below the tolerance is where the precision was lost.

In a QDQ (int8) file a tensor that is quantized is read after its QuantizeLinear →
DequantizeLinear pair: the value the next layer really sees. Exposing a tensor keeps a runtime
from fusing across it, so a fused kernel's own rounding can differ slightly from what is shown;
the logits of the normal parity run are the unaltered figure.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from engines.openvino import compile_config
from engines.ort import PROVIDERS
from exporters.onnx import ensure_onnx
from exporters.prepare import prepare
from toolkit.core.errors import RtkError, require
from toolkit.core.image_sets import judged_set, prepare_images
from toolkit.core.onnx_graph import load_onnx_graph, onnx_precision
from toolkit.core.outputs import check_output_folder, json_text, write_atomic
from toolkit.core.plots import pyplot, save_figure
from toolkit.usecases.parity import candidate_request, reference_for

if TYPE_CHECKING:
    import onnx

#: Lowest per-image cosine a tensor may keep, per precision, before it counts as where precision was lost.
LAYER_MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "bf16": 0.99, "int8": 0.98}
#: Images compared by default (every tensor of every image is held for one batch at a time).
LAYER_IMAGES = 32
#: Images per run: a ResNet-50 at 224 px has about 100 MB of activations per image.
LAYER_BATCH = 4


@dataclass(frozen=True)
class LayerRow:
    """One tensor of the fp32 graph compared with the candidate's tensor of the same name.

    Attributes:
        index: its position among the compared tensors, in graph order (the depth axis of the plot).
        tensor: the tensor name.
        node, op: the fp32 node that produces it.
        candidate_node, candidate_op: the candidate's node that produces it (a QDQ graph folds a
            ReLU into the range of its convolution's output, which then carries the ReLU's name).
        min_cosine, mean_cosine: cosine similarity per image (flattened), over the images.
        rel_error: ``‖candidate − fp32‖ / ‖fp32‖`` over all images.
        max_abs: largest absolute difference.
        passed: ``min_cosine`` is at or above the tolerance.
    """

    index: int
    tensor: str
    node: str
    op: str
    candidate_node: str
    candidate_op: str
    min_cosine: float
    mean_cosine: float
    rel_error: float
    max_abs: float
    passed: bool


@dataclass(frozen=True)
class LayerReport:
    """One engine's tensors against the fp32 ONNX's."""

    engine: str
    artefact: str
    reference: str
    images: str
    min_cosine: float
    rows: tuple[LayerRow, ...] = field(default_factory=tuple)
    unmatched: int = 0

    @property
    def first_beyond(self) -> LayerRow | None:
        """The first tensor, in graph order, whose minimum cosine is below the tolerance."""
        return next((r for r in self.rows if not r.passed), None)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_beyond
        return {
            "engine": self.engine,
            "artefact": self.artefact,
            "reference": self.reference,
            "images": self.images,
            "tolerance": {"min_cosine": self.min_cosine},
            "first_beyond_tolerance": first.tensor if first else None,
            "compared": len(self.rows),
            "unmatched": self.unmatched,
            "layers": [asdict(r) for r in self.rows],
        }


# --- exposing tensors ------------------------------------------------------------------------


def graph_tensors(model: "onnx.ModelProto") -> list[tuple[str, str, str]]:
    """``(tensor, node, op)`` for every node output of a graph, in graph order."""
    return [(out, node.name, node.op_type) for node in model.graph.node for out in node.output if out]


def read_points(model: "onnx.ModelProto") -> dict[str, str]:
    """For each tensor name, the tensor to read for it: in a QDQ graph, a quantized tensor's
    DequantizeLinear output (what its consumers see), else the tensor itself."""
    points = {name: name for name, _, _ in graph_tensors(model)}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        dequantized = [c.output[0] for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        if dequantized and node.input[0] in points:
            points[node.input[0]] = dequantized[0]
    return points


def _with_outputs(model: "onnx.ModelProto", names: Sequence[str]) -> bytes:
    from onnx import helper

    tapped = type(model)()
    tapped.CopyFrom(model)
    present = {o.name for o in tapped.graph.output}
    tapped.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names) if n not in present)
    return tapped.SerializeToString()


def ort_runner(path: Path, names: Sequence[str], provider: str = "cpu", threads: int = 0) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A function running ``path`` on ONNX Runtime with ``names`` exposed: batch → {name: array}.

    Raises:
        RtkError: onnxruntime missing, or the graph cannot be loaded.
    """
    import onnx

    ort = require("onnxruntime", "rtk parity --layers")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    providers = [PROVIDERS[provider]] + (["CPUExecutionProvider"] if provider != "cpu" else [])
    try:
        session = ort.InferenceSession(_with_outputs(onnx.load(str(path)), names), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise RtkError(f"ONNX Runtime cannot load {path} with its tensors exposed: {str(exc).splitlines()[0]}") from None
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs() if o.name in set(names)]
    return lambda batch: dict(zip(outputs, session.run(outputs, {input_name: batch})))


def ov_runner(path: Path, names: Sequence[str], precision: str, threads: int = 0) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A function running ``path`` on OpenVINO at ``precision`` with every ``names`` tensor it
    still has exposed (its frontend fuses some away): batch → {name: array}.

    Raises:
        RtkError: openvino missing, or the model cannot be read or compiled.
    """

    ov = require("openvino", "rtk parity --layers on ov engines")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except RuntimeError as exc:
        raise RtkError(f"OpenVINO cannot read {path}: {str(exc).splitlines()[0]}") from None
    exposed = []
    for name in dict.fromkeys(names):
        try:
            model.add_outputs(name)
        except RuntimeError:
            continue  # fused away by OpenVINO's frontend
        exposed.append(name)
    compiled = core.compile_model(model, "CPU", compile_config(ov, precision, threads, "latency", None))
    request = compiled.create_infer_request()
    # By name, not position: OpenVINO keeps its own order of outputs.
    ports = {name: port for port in compiled.outputs for name in port.get_names() if name in set(exposed)}

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        result = request.infer({0: batch})
        return {name: np.array(result[port]) for name, port in ports.items()}

    return run


# --- comparing -------------------------------------------------------------------------------


class _Sums:
    """Running sums of one tensor over the batches: per-image dot products and norms, global error."""

    def __init__(self) -> None:
        self.dot: list[np.ndarray] = []
        self.ref: list[np.ndarray] = []
        self.cand: list[np.ndarray] = []
        self.err = 0.0
        self.max_abs = 0.0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        a = ref.reshape(len(ref), -1).astype(np.float64)
        b = cand.reshape(len(cand), -1).astype(np.float64)
        self.dot.append((a * b).sum(1))
        self.ref.append((a * a).sum(1))
        self.cand.append((b * b).sum(1))
        diff = a - b
        self.err += float((diff * diff).sum())
        self.max_abs = max(self.max_abs, float(np.abs(diff).max()) if diff.size else 0.0)

    def result(self) -> tuple[float, float, float, float]:
        dot, ref, cand = (np.concatenate(x) for x in (self.dot, self.ref, self.cand))
        den = np.sqrt(ref * cand)
        same = (ref == 0) & (cand == 0)  # two all-zero images agree; one zero against another does not
        cos = np.where(den > 0, dot / np.where(den > 0, den, 1.0), np.where(same, 1.0, 0.0)).clip(-1, 1)
        total = float(ref.sum())
        rel = float(np.sqrt(self.err / total)) if total > 0 else (0.0 if self.err == 0 else float("inf"))
        return float(cos.min()), float(cos.mean()), rel, self.max_abs


Tap = Callable[[Path, Sequence[str]], Callable[[np.ndarray], dict[str, np.ndarray]]]


def compare_layers(
    reference: Path,
    candidate: Path,
    tap: Tap,
    images: np.ndarray,
    *,
    engine: str,
    precision: str,
    source: str,
    min_cosine: float | None = None,
) -> LayerReport:
    """Compare every tensor of ``candidate`` with the fp32 ``reference`` ONNX on ``images``.

    Args:
        reference: the fp32 ONNX file.
        candidate: the ONNX file the engine runs.
        tap: makes the candidate's runner from its path and the tensor names to expose
            (:func:`ort_runner`, :func:`ov_runner`).
        images: (N, C, H, W) float32, prepared like the model's inputs.
        engine, precision: the engine's name and precision (which sets the default tolerance).
        source: what the images are, for the report.
        min_cosine: the tolerance; :data:`LAYER_MIN_COSINE` of ``precision`` by default.

    Returns:
        The report, tensors in the fp32 graph's order.
    """
    import onnx

    fp32 = onnx.load(str(reference), load_external_data=False)
    order = graph_tensors(fp32)
    theirs = onnx.load(str(candidate), load_external_data=False)
    points = read_points(theirs)
    producers = {name: (node, op) for name, node, op in graph_tensors(theirs)}
    wanted = [name for name, _, _ in order if name in points]
    run_reference = ort_runner(reference, wanted)
    run = tap(candidate, [points[n] for n in wanted])
    sums: dict[str, _Sums] = {}
    for start in range(0, len(images), LAYER_BATCH):
        batch = np.ascontiguousarray(images[start : start + LAYER_BATCH])
        ref_out, cand_out = run_reference(batch), run(batch)
        for name in wanted:
            a, b = ref_out.get(name), cand_out.get(points[name])
            if a is None or b is None or a.shape != b.shape or a.ndim < 2 or a.shape[0] != len(batch) or not np.issubdtype(a.dtype, np.floating):
                continue
            sums.setdefault(name, _Sums()).add(a, b)
    tolerance = LAYER_MIN_COSINE.get(precision, LAYER_MIN_COSINE["fp32"]) if min_cosine is None else min_cosine
    rows = []
    for name, node, op in order:
        if name in sums:
            low, mean, rel, max_abs = sums[name].result()
            rows.append(LayerRow(len(rows), name, node, op, *producers[name], low, mean, rel, max_abs, low >= tolerance))
    if not rows:
        raise RtkError(f"no tensor of {candidate.name} matches one of {reference.name} by name; it is not an export of the same graph")
    unmatched = sum(1 for name, _, op in order if name not in sums and op not in ("Constant", "Shape", "Gather", "Unsqueeze", "Concat"))
    return LayerReport(engine, str(candidate), str(reference), source, tolerance, tuple(rows), unmatched)


# --- from rtk parity ------------------------------------------------------------------------


def check_folder(folder: str | os.PathLike) -> Path:
    """Fail before any work when ``folder`` cannot take the reports (it is a file, or lies under one).

    Raises:
        RtkError: one sentence naming the file in the way.
    """
    return check_output_folder(folder, "--layers")


def layer_reports(
    model, options, folder: str | os.PathLike, on_report: Callable[[LayerReport], None] | None = None, skip: Sequence[str] = (),
) -> list[LayerReport]:
    """Per-layer reports of every ONNX-based engine of a parity run, written into ``folder``.

    Args:
        model: the parity run's reference: a checkpoint (path or loaded), whose fp32 ONNX is the
            reference graph, or an fp32 ONNX file, itself the reference graph.
        options: the parity run's :class:`toolkit.usecases.parity.ParityOptions` (engines, files, ``data``).
        folder: where ``ENGINE.layers.json`` and ``.png`` go.
        on_report: called with each report as it is ready.
        skip: engines left out (the ones the parity run could not judge).

    Raises:
        RtkError: no ``data``; an engine whose artefact cannot be made or run.
    """

    if options.data is None:
        raise RtkError("--layers compares every tensor on real images; add --data DATA (a dataset, a folder of images or a file list)")
    reference = reference_for(model, options)
    ckpt, meta = reference.checkpoint, reference.meta
    if options.onnx is not None:
        fp32 = Path(options.onnx)
    elif ckpt is not None:
        fp32 = Path(ensure_onnx(ckpt.path, "fp32", dataclasses.replace(options.checkpoint_options, weights=ckpt.weights)))
    else:
        fp32 = reference.path
    pre = meta.preprocess
    prepared = prepare_images(judged_set(options.data, pre.input_size[0]), meta.spec, pre, min(LAYER_IMAGES, options.max_samples or LAYER_IMAGES))
    reports = []
    for name in options.engines:
        if name.runtime not in ("ort", "ov") or str(name) in skip:
            continue  # eager has no graph to match; rtk's TensorRT engines expose only their logits
        artefact = prepare(candidate_request(reference, name, options)).path
        precision = _precision_of(artefact, name)
        if name.runtime == "ort":
            tap: Tap = lambda path, names, provider=name.provider or "cpu": ort_runner(path, names, provider)  # noqa: E731
        else:
            tap = lambda path, names, precision=precision: ov_runner(path, names, precision)  # noqa: E731
        report = compare_layers(fp32, artefact, tap, prepared.images, engine=str(name.with_precision(precision)), precision=precision, source=prepared.source)
        write_layer_report(report, folder)
        reports.append(report)
        if on_report is not None:
            on_report(report)
    return reports


def _precision_of(path: Path, name) -> str:
    """The precision an ONNX-based engine runs ``path`` at: int8 for a QDQ graph, else the file's
    own (ONNX Runtime) or the one the name asks for (OpenVINO lowers the fp32 graph itself)."""

    held = onnx_precision(load_onnx_graph(path))
    if held == "int8" or (name.runtime == "ort" and name.provider != "trt"):
        return held
    return name.resolved_precision  # OpenVINO and ONNX Runtime's TensorRT provider lower the fp32 graph themselves


# --- output ----------------------------------------------------------------------------------


def plot_layers(report: LayerReport):
    """Error against depth: 1 − mean and 1 − min cosine, and relative error, per tensor in graph order."""

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 5))
    x = [r.index for r in report.rows]
    floor = 1e-9  # a log axis has no zero: identical tensors sit on the floor
    ax.plot(x, [max(1 - r.min_cosine, floor) for r in report.rows], marker=".", label="1 − min cosine")
    ax.plot(x, [max(1 - r.mean_cosine, floor) for r in report.rows], linestyle=":", label="1 − mean cosine")
    ax.plot(x, [max(r.rel_error, floor) for r in report.rows], linestyle="--", label="relative error")
    ax.axhline(1 - report.min_cosine, color="grey", linewidth=0.8, label=f"tolerance (cosine {report.min_cosine:g})")
    first = report.first_beyond
    if first is not None:
        ax.axvline(first.index, color="red", linewidth=0.8)
        ax.annotate(f"first beyond: {first.tensor} ({first.op})", (first.index, 1 - report.min_cosine), color="red", fontsize=8,
                    xytext=(4, 8), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("tensor, in graph order (depth)")
    ax.set_ylabel("error against the fp32 ONNX")
    ax.set_title(f"{report.engine} against the fp32 ONNX, per tensor ({report.images})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write_layer_report(report: LayerReport, folder: str | os.PathLike) -> list[Path]:
    """``ENGINE.layers.json`` and ``ENGINE.layers.png`` in ``folder`` (made when missing)."""
    folder = Path(folder)
    stem = report.engine.replace("/", "_")
    return [
        write_atomic(folder / f"{stem}.layers.json", json_text(report.to_dict())),
        save_figure(plot_layers(report), folder / f"{stem}.layers.png"),
    ]


def summary_line(report: LayerReport) -> str:
    """``ort-int8: 62 tensors on 32 images; first below cosine 0.98: relu_7 (Relu), cosine 0.41``."""
    first = report.first_beyond
    worst = min(report.rows, key=lambda r: r.min_cosine)
    head = f"{report.engine}: {len(report.rows)} tensors compared on {report.images}"
    if first is None:
        return f"{head}; none below cosine {report.min_cosine:g} (lowest {worst.min_cosine:.6f} at {worst.tensor}, {worst.op})"
    made_by = f"{first.op} {first.node}" + ("" if first.candidate_node == first.node else f"; {first.candidate_op} {first.candidate_node} in {Path(report.artefact).name}")
    return (
        f"{head}; first below cosine {report.min_cosine:g}: {first.tensor} ({made_by}), cosine {first.min_cosine:.6f}, "
        f"relative error {first.rel_error:.3g}"
    )
