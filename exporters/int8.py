"""Calibrated INT8: the fp32 graph quantized to QDQ ONNX with onnxruntime.quantization, in the
layout each runtime runs fastest, from one calibration.

Calibration runs once and its activation ranges (onnxruntime's calibration cache) are quantized
twice, into two files that differ only in how activations are stored:

- ``MODEL.int8.onnx``: signed int8 activations, symmetric per tensor; the form TensorRT 10 and 11
  require, and what ONNX Runtime's CUDA and TensorRT providers run;
- ``MODEL.int8.u8.onnx``: unsigned int8 activations, asymmetric per tensor, for the CPU runtimes.
  ONNX Runtime's x86 kernels multiply uint8 activations by int8 weights (VNNI's u8×s8 dot
  product), and a ReLU folds into the range of the activation after it (zero point at 0), so
  none of the 49 ReLUs of a ResNet-50 stays a float op between a DequantizeLinear and a
  QuantizeLinear as in the symmetric file: about 3× fp32's throughput instead of 0.7–1.1×.
  OpenVINO ran it about 20% faster than the symmetric file too (benchmarks/results).

Both have int8 weights, symmetric per output channel, and the same layers left in float.

Calibration images come from the data's *training* split (its validation split where there is
no training split), or from the part of a folder or file list not held out, and are prepared
with the checkpoint's own preprocessing, the very pipeline ``rtk predict`` runs; the export check
then judges the files on held-out images, so the images that set the ranges never grade them
(:mod:`toolkit.core.image_sets`).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from toolkit.core.artefacts import u8_path_for
from toolkit.core.checkpoint import Checkpoint
from toolkit.core.console import ProgressBar, warn
from toolkit.core.defaults import DEFAULT_CALIB_SAMPLES
from toolkit.core.errors import RtkError, first_line, require
from toolkit.core.image_sets import ImageSet, calibration_draw, calibration_pool, prepare_images
from toolkit.core.onnx_graph import load_onnx_graph, metadata_dict
from toolkit.core.spec import ArtefactMeta
from toolkit.core.validation import COUNT, MAX_DROP, SEED, UsageError

if TYPE_CHECKING:
    import onnx


#: ``--calib-method`` values → onnxruntime ``CalibrationMethod`` member names.
CALIB_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
#: Layer groups ``--keep-float`` understands besides plain node names.
KEEP_FLOAT_GROUPS = ("first-conv", "classifier")
#: The two layouts one calibration gives: ``s8`` (symmetric int8 activations, ``MODEL.int8.onnx``)
#: and ``u8`` (uint8 activations, ``MODEL.int8.u8.onnx``, for the CPU runtimes: ONNX Runtime, OpenVINO).
LAYOUTS = {
    "s8": "int8, symmetric, per tensor",
    "u8": "uint8, asymmetric, per tensor (CPU runtimes: ONNX Runtime, OpenVINO; not for TensorRT)",
}
#: Images per calibration batch. Calibration keeps every activation of the batches it has run
#: (for ResNet-50 at 224 px about 100 MB an image) until it folds them into its ranges or
#: histograms; rtk has it fold after every batch (onnxruntime's ``CalibStridedMinMax`` with a
#: stride of one batch, which all three methods honour), so memory does not grow with
#: ``--calib-samples``. (``CalibMaxIntermediateOutputs`` is not used: onnxruntime 1.32 drops the
#: held batches at that limit instead of folding them in.)
CALIB_BATCH = 8


@dataclass(frozen=True)
class CalibOptions:
    """How the activation ranges of an int8 export are calibrated, and how much accuracy it may lose.

    Attributes:
        data: images to calibrate on: ``digits``, a dataset name, a folder of class folders, any
            folder of images (searched recursively) or a file list (:mod:`toolkit.core.image_sets`).
        samples: how many images to calibrate on (fewer when the data has fewer).
        method: ``minmax``, ``entropy`` or ``percentile`` (see :data:`CALIB_METHODS`).
        keep_float: layers left in float: ``first-conv``, ``classifier`` and/or node names.
        seed: which images are drawn (and, from a folder or list, which are held out).
        max_drop: keep the fewest layers in float that hold the loss to this many points: top-1
            accuracy points on labelled images, top-1 disagreement in % without labels
            (:mod:`exporters.mixed_precision`); ``None`` quantizes every layer it can.
    """

    data: str
    samples: int = DEFAULT_CALIB_SAMPLES
    method: str = "minmax"
    keep_float: tuple[str, ...] = ()
    seed: int = 0
    max_drop: float | None = None

    def __post_init__(self) -> None:
        if not str(self.data).strip():
            raise UsageError("--calib needs images: digits, a dataset name, a folder of images or a file list")
        COUNT.check(self.samples, "--calib-samples")
        SEED.check(self.seed, "the calibration seed")
        if self.method not in CALIB_METHODS:
            raise UsageError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {self.method!r}")
        MAX_DROP.check(self.max_drop, "--max-drop")
        object.__setattr__(self, "keep_float", parse_keep_float(self.keep_float))


def parse_keep_float(value: "str | Iterable[str] | None") -> tuple[str, ...]:
    """``"first-conv,classifier"`` (or an iterable of names) as a tuple without blanks or repeats."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(s.strip() for s in items if s and s.strip()))


@dataclass(frozen=True)
class CalibrationSet:
    """The prepared calibration images, where they came from, and the images held out of them.

    Attributes:
        images: (N, C, H, W) float32, prepared like the model's inputs.
        source: ``digits (train, 256 of 1257 images)``.
        asked: how many images were asked for (``--calib-samples``).
        available: how many the data had to calibrate on.
        held_out: images never calibrated on, to judge the result (``None`` when the data has none).
        paths: the files calibrated on, when they are files (a check on other data leaves them out).
    """

    images: np.ndarray
    source: str
    asked: int | None = None
    available: int | None = None
    held_out: ImageSet | None = None
    paths: tuple[Path, ...] = ()

    def summary(self) -> str:
        """``calibrated on 32 images of cal (folder) (256 asked: it has 40, 8 of them held out to judge)``."""
        count = len(self.images)
        line = f"calibrated on {count} image{'s' if count != 1 else ''} of {self.source}"
        if self.asked is None or self.asked <= count:
            return line
        if self.paths and self.held_out is not None:  # a folder or list: part of it judges
            return line + f" ({self.asked} asked: it has {self.available + len(self.held_out)}, {len(self.held_out)} of them held out to judge)"
        return line + f" ({self.asked} asked: the split has {self.available})"


def calibration_images(ckpt: "Checkpoint | ArtefactMeta", options: CalibOptions) -> CalibrationSet:
    """Draw ``options.samples`` images (seeded) to calibrate on, prepared like the model's inputs.

    Raises:
        RtkError: the data cannot be found or read.
    """
    pool, held = calibration_pool(options.data, ckpt.preprocess.input_size[0], options.samples, options.seed)
    if len(pool) == 0:
        raise RtkError(f"{options.data} has no images in {pool.description} to calibrate on")
    prepared = prepare_images(calibration_draw(pool, options.samples, options.seed), ckpt.spec, ckpt.preprocess)
    return CalibrationSet(prepared.images, pool.description, options.samples, len(pool), held, prepared.paths)


def keep_float_nodes(model: "onnx.ModelProto", wanted: Iterable[str]) -> list[str]:
    """The node names ``--keep-float`` stands for in this graph.

    ``first-conv`` is the first convolution in graph order; ``classifier`` is every fully
    connected layer (Gemm, MatMul: in a ResNet, the head alone). Anything else must be a node name.

    Raises:
        RtkError: a name that is neither a group nor a node of the graph.
    """
    nodes = list(model.graph.node)
    names = {n.name for n in nodes}
    out: list[str] = []
    for item in wanted:
        if item == "first-conv":
            found = [n.name for n in nodes if n.op_type == "Conv"][:1]
        elif item == "classifier":
            found = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
        elif item in names:
            found = [item]
        else:
            convs = weighted_layers(model)
            raise RtkError(
                f"--keep-float {item!r} is neither {' nor '.join(KEEP_FLOAT_GROUPS)} nor a node of the graph "
                f"(its layers are named like {', '.join(convs[:2])} … {convs[-1] if convs else ''}; rtk inspect lists the ops)"
            )
        out += [name for name in found if name not in out]
    return out


def quantized_layers(model: "onnx.ModelProto") -> list[str]:
    """The layers a QDQ graph runs quantized, in graph order: every node fed by a DequantizeLinear
    (Conv, Gemm, Add, pooling…), but the ReLUs, which fold into their neighbours' ranges."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    return [
        node.name for node in model.graph.node
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Relu", "Clip")
        and any(producers.get(name) == "DequantizeLinear" for name in node.input)
    ]


def weighted_layers(model: "onnx.ModelProto") -> list[str]:
    """The names of the layers with weights (Conv, Gemm, MatMul), in graph order: what can be kept in float."""
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


class _Reader:
    """Feeds the calibration images to onnxruntime in batches, advancing a progress bar.

    ``__len__`` and ``set_range`` are what onnxruntime's strided calibration asks of a reader:
    it runs the batches of one range, folds them into its ranges, then asks for the next.
    """

    def __init__(self, input_name: str, images: np.ndarray, batch: int, whole_batches: bool):
        self.input_name, self.progress = input_name, None
        usable = len(images) // batch * batch if whole_batches else len(images)  # a static graph takes whole batches only
        self.batches = [images[i : i + batch] for i in range(0, usable, batch)]
        self.index, self.end = 0, len(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.index, self.end = start_index, min(end_index, len(self.batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= self.end:
            return None
        batch = self.batches[self.index]
        self.index += 1
        if self.progress is not None:
            self.progress.advance()
        return {self.input_name: batch}


class Int8Quantizer:
    """One calibration of an fp32 classifier graph, quantized into either layout as often as asked.

    The graph is pre-processed as onnxruntime's quantization guide recommends (shape inference
    and basic graph optimisation: the quantizer needs every activation's shape, and what the
    optimiser folds away gets no Q/DQ pairs). The first :meth:`quantize` calibrates on the images
    and keeps the ranges in onnxruntime's calibration cache; every later one reads them from
    there, so the second layout and every trial of the ``--max-drop`` search cost a quantization
    pass (about a second for a ResNet-50), never a calibration. Use it as a context manager.

    Args:
        fp32: the exported fp32 graph (input ``input``).
        calib: the prepared calibration images.
        options: calibration method and seed.
        static_batch: the graph's fixed batch size, if any (calibration batches then have that size).
        progress: show a progress bar over the calibration batches.

    Raises:
        RtkError: onnxruntime missing or older than 1.27 (no calibration cache), or fewer
            calibration images than one static batch.
    """

    def __init__(
        self, fp32: "onnx.ModelProto", calib: CalibrationSet, options: CalibOptions, static_batch: int | None = None, progress: bool = True
    ):
        import onnx

        self.ort = require("onnxruntime", "int8 export")
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
            raise RtkError(
                f"int8 export calibrates once for both of its files through onnxruntime's calibration cache, which "
                f"onnxruntime {self.ort.__version__} lacks; pip install -U 'onnxruntime>=1.27'"
            )
        if static_batch and len(calib.images) < static_batch:
            raise RtkError(f"the static batch is {static_batch} but only {len(calib.images)} calibration images were drawn; raise --calib-samples")
        self.calib, self.options, self.progress = calib, options, progress
        self.batch = static_batch or CALIB_BATCH
        self.whole_batches = static_batch is not None
        self.input_name = fp32.graph.input[0].name
        self._tmp = tempfile.TemporaryDirectory(prefix="rtk-int8-")
        folder = Path(self._tmp.name)
        self.prepared, self.cache = folder / "prepared.onnx", folder / "ranges.json"
        onnx.save(fp32, str(folder / "fp32.onnx"))
        quant_pre_process(str(folder / "fp32.onnx"), str(self.prepared))
        self.model = onnx.load(str(self.prepared))  # pre-processed: the graph every layout is quantized from
        self.samples = 0

    def __enter__(self) -> "Int8Quantizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._tmp.cleanup()

    @property
    def layers(self) -> list[str]:
        """The weighted layers of the graph, in order (what ``--keep-float`` and ``--max-drop`` may leave in float)."""
        return weighted_layers(self.model)

    def float_nodes(self, keep_float: Iterable[str]) -> list[str]:
        """The node names ``--keep-float`` groups or names stand for here (:func:`keep_float_nodes`)."""
        return keep_float_nodes(self.model, keep_float)

    def quantize(self, layout: str, float_nodes: Iterable[str] = ()) -> "onnx.ModelProto":
        """The QDQ graph in ``layout`` (``s8`` or ``u8``) with ``float_nodes`` left in float.

        Raises:
            RtkError: onnxruntime fails to calibrate or quantize the graph.
        """
        import onnx

        signed = layout == "s8"
        reader = None
        if not self.cache.exists():
            reader = _Reader(self.input_name, self.calib.images, self.batch, self.whole_batches)
            self.samples = int(sum(len(b) for b in reader.batches))
        out = Path(self._tmp.name) / f"{layout}.onnx"
        with ProgressBar(len(reader.batches) if reader else 0, f"calibrating ({self.options.method})", enabled=self.progress and reader is not None) as bar:
            if reader is not None:
                reader.progress = bar
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the histogram methods print their progress
                    self._quantize_static(out, reader, signed, float_nodes)
            except (RuntimeError, ValueError) as exc:  # onnxruntime's own failures while calibrating
                raise RtkError(f"onnxruntime could not quantize the graph: {first_line(exc)}") from None
        return onnx.load(str(out))

    def _quantize_static(self, out: Path, reader: "_Reader | None", signed: bool, float_nodes: Iterable[str]) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        quantize_static(
            str(self.prepared), str(out), reader,
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8 if signed else QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(float_nodes),
            calibrate_method=getattr(CalibrationMethod, CALIB_METHODS[self.options.method]),
            calibration_providers=["CPUExecutionProvider"],
            extra_options={"ActivationSymmetric": signed, "WeightSymmetric": True, "CalibStridedMinMax": 1},
            # The first call calibrates and keeps the ranges here; every later one reads them back.
            calibration_cache_path=str(self.cache),
        )

    def record(self, layout: str, float_nodes: Iterable[str]) -> dict[str, Any]:
        """The calibration record that goes into a file's rtk metadata (call after a :meth:`quantize`).

        ``ranges_sha256`` identifies the calibration: both layouts of one export carry the same.
        """
        return {
            "format": "QDQ",
            "quantizer": f"onnxruntime {self.ort.__version__} quantize_static",
            "layout": layout,
            "weights": "int8, symmetric, per output channel",
            "activations": LAYOUTS[layout],
            "data": str(self.options.data),
            "source": self.calib.source,
            "samples": self.samples,
            "asked": self.calib.asked,
            "available": self.calib.available,
            "method": self.options.method,
            "seed": self.options.seed,
            "keep_float": list(self.options.keep_float),
            "float_nodes": list(float_nodes),
            "ranges_sha256": hashlib.sha256(self.cache.read_bytes()).hexdigest(),
        }


def _calibration_record(path: Path) -> dict[str, Any] | None:
    """The ``calibration`` record of an rtk int8 ONNX, or ``None`` (a float file, a foreign one, unreadable)."""

    try:
        record = metadata_dict(load_onnx_graph(path))
    except RtkError:
        return None
    return (record or {}).get("calibration")


def layout_of(record: dict[str, Any] | None) -> str | None:
    """``s8`` or ``u8`` from a calibration record (files from before the two layouts say it in ``activations``)."""
    if not record:
        return None
    return record.get("layout") or ("u8" if str(record.get("activations", "")).startswith("uint8") else "s8")


def cpu_int8_file(path: str | os.PathLike, checkpoint: "str | os.PathLike | None" = None, runtime: str = "ONNX Runtime") -> Path:
    """The int8 file a CPU runtime (ONNX Runtime's CPU provider, OpenVINO) runs for the int8 ONNX
    ``path``: its uint8-activation layout beside it (``MODEL.int8.u8.onnx``) when that comes from
    the same calibration, else ``path``.

    A missing or stale uint8 file is not an error, since the symmetric file runs too, only slower
    (ONNX Runtime's x86 kernels several times, OpenVINO's about 20%), so it is said in one warning
    line with the command that makes both.

    Args:
        path: an int8 ONNX file (``MODEL.int8.onnx``, or any QDQ file named directly).
        checkpoint: the checkpoint it was exported from, for the command in the warning.
        runtime: who runs it, for the warning.
    """

    path = Path(path)
    record = _calibration_record(path)
    if layout_of(record) != "s8":
        return path  # the uint8 layout itself, an older uint8 export, or a QDQ file rtk did not make
    sibling = u8_path_for(path)
    theirs = _calibration_record(sibling) if sibling.exists() else None
    if theirs is not None and layout_of(theirs) == "u8" and theirs.get("ranges_sha256") == record.get("ranges_sha256"):
        return sibling
    if not sibling.exists():
        state = "is missing"
    elif theirs is None:
        state = "was not exported by rtk"
    else:
        state = "comes from another calibration"
    hint = export_hint(checkpoint or "CHECKPOINT", record.get("data"))
    warn(
        f"{sibling.name} {state}, so {runtime} runs {path.name}, whose symmetric int8 activations run slower on a CPU "
        f"than uint8 ones; {hint} writes both"
    )
    return path


def refuse_u8_for_tensorrt(path: str | os.PathLike) -> None:
    """TensorRT takes symmetric int8 activations only: refuse the uint8 layout in one sentence, naming the file to build.

    Raises:
        RtkError: ``path`` is an rtk int8 file with uint8 activations.
    """
    path = Path(path)
    if layout_of(_calibration_record(path)) == "u8":
        name = path.name.replace(".u8.onnx", ".onnx") if path.name.endswith(".u8.onnx") else "MODEL.int8.onnx"
        raise RtkError(
            f"{path.name} holds uint8 activations, the layout CPU runtimes run fastest, which TensorRT refuses; "
            f"build {name}, written beside it by the same export"
        )


def export_hint(checkpoint: "str | os.PathLike", calib: str | None = None) -> str:
    """The command that writes the int8 ONNX files of a checkpoint (``DATA`` when the calibration data is unknown)."""
    return f"rtk export {checkpoint} --precision int8 --calib {calib or 'DATA'}"
