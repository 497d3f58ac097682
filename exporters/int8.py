"""Calibrated INT8: the fp32 graph quantized to QDQ ONNX (``MODEL.int8.onnx``) with onnxruntime.quantization.

One QDQ file serves every runtime that takes explicit quantization: ONNX Runtime (CPU, CUDA,
TensorRT providers), TensorRT 10 (with its INT8 builder flag) and 11 (strongly typed), and
OpenVINO. So the default format is the one TensorRT requires, which ONNX Runtime also documents as its
first choice (S8S8 QDQ): signed int8 weights, symmetric and per output channel; signed int8
activations, symmetric and per tensor, their ranges calibrated on real images. On x86 CPUs
ONNX Runtime's fast int8 kernels take uint8 activations (u8×s8): ``activations="uint8"``
(asymmetric) made ResNet-50 about 3× cheaper than fp32 in CPU time where the symmetric file
gained about 1.1×, but TensorRT refuses it.

Calibration images come from the *training* split of the data (the validation split where there
is no training split) and are prepared with the checkpoint's own preprocessing, the very
pipeline ``rtk predict`` runs; the export check then judges the file on the held-out test (or
validation) images, so the images that set the ranges never grade them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from toolkit.core.checkpoint import Checkpoint
from toolkit.core.console import ProgressBar
from toolkit.core.data import PreparedDataset, resolve_data
from toolkit.core.errors import RtkError, first_line, require

if TYPE_CHECKING:
    import onnx


#: ``--calib-method`` values → onnxruntime ``CalibrationMethod`` member names.
CALIB_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
#: Layer groups ``--keep-float`` understands besides plain node names.
KEEP_FLOAT_GROUPS = ("first-conv", "classifier")
#: Activation types: ``int8`` (symmetric: what TensorRT requires, and runs everywhere) or
#: ``uint8`` (asymmetric: ONNX Runtime's fastest CPU kernels on x86, u8×s8; TensorRT refuses it).
ACTIVATIONS = ("int8", "uint8")
DEFAULT_CALIB_SAMPLES = 256
#: Images per calibration batch. Calibration keeps every activation of the batches it has run
#: (for ResNet-50 at 224 px about 100 MB an image) until it folds them into its ranges or
#: histograms; rtk has it fold after every batch (onnxruntime's ``CalibStridedMinMax`` with a
#: stride of one batch, which all three methods honour), so memory does not grow with
#: ``--calib-samples``. (``CalibMaxIntermediateOutputs`` is not used: onnxruntime 1.32 drops the
#: held batches at that limit instead of folding them in.)
CALIB_BATCH = 8


@dataclass(frozen=True)
class CalibOptions:
    """How the activation ranges of an int8 export are calibrated.

    Attributes:
        data: anything ``--data`` accepts: ``digits``, an image folder, a torchvision dataset name.
        samples: how many images to calibrate on (fewer when the split has fewer).
        method: ``minmax``, ``entropy`` or ``percentile`` (see :data:`CALIB_METHODS`).
        keep_float: layers left in float: ``first-conv``, ``classifier`` and/or node names.
        seed: which images are drawn from the split.
        activations: ``int8`` (symmetric, the portable default) or ``uint8`` (see :data:`ACTIVATIONS`).
    """

    data: str
    samples: int = DEFAULT_CALIB_SAMPLES
    method: str = "minmax"
    keep_float: tuple[str, ...] = ()
    seed: int = 0
    activations: str = "int8"

    def __post_init__(self) -> None:
        if not str(self.data).strip():
            raise RtkError("--calib needs a dataset: digits, an image folder or a torchvision dataset name")
        if self.samples < 1:
            raise RtkError(f"--calib-samples must be at least 1, got {self.samples}")
        if self.method not in CALIB_METHODS:
            raise RtkError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {self.method!r}")
        if self.activations not in ACTIVATIONS:
            raise RtkError(f"--activations must be one of {', '.join(ACTIVATIONS)}, got {self.activations!r}")
        object.__setattr__(self, "keep_float", parse_keep_float(self.keep_float))


def parse_keep_float(value: "str | Iterable[str] | None") -> tuple[str, ...]:
    """``"first-conv,classifier"`` (or an iterable of names) as a tuple without blanks or repeats."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(s.strip() for s in items if s and s.strip()))


@dataclass(frozen=True)
class CalibrationSet:
    """The prepared calibration images and where they came from (``digits (train, 256 of 1257 images)``)."""

    images: np.ndarray
    source: str


def calibration_images(ckpt: "Checkpoint", options: CalibOptions) -> CalibrationSet:
    """Draw ``options.samples`` images (seeded) from the data's training split, prepared like the model's inputs.

    Raises:
        RtkError: the data cannot be found or read.
    """

    source = resolve_data(options.data, input_size=ckpt.preprocess.input_size[0])
    split_name = "train" if source.has("train") else "val"
    split = source.splits[split_name]
    if len(split) == 0:
        raise RtkError(f"{options.data} has no images in its {split_name} split to calibrate on")
    count = min(options.samples, len(split))
    # A seeded draw over the whole split, not its first images: a folder lists one class after
    # another, and ranges calibrated on one class clip the others.
    picked = np.sort(np.random.default_rng(options.seed).choice(len(split), count, replace=False))
    images, _ = PreparedDataset(split.subset(picked), ckpt.preprocess).arrays()
    return CalibrationSet(np.ascontiguousarray(images, dtype=np.float32), f"{source.name} ({split_name}, {count} of {len(split)} images)")


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
            convs = [n.name for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul")]
            raise RtkError(
                f"--keep-float {item!r} is neither {' nor '.join(KEEP_FLOAT_GROUPS)} nor a node of the graph "
                f"(its layers are named like {', '.join(convs[:2])} … {convs[-1] if convs else ''}; rtk inspect lists the ops)"
            )
        out += [name for name in found if name not in out]
    return out


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


def quantize_qdq(
    fp32: "onnx.ModelProto", calib: CalibrationSet, options: CalibOptions, static_batch: int | None = None, progress: bool = True
) -> tuple["onnx.ModelProto", dict[str, Any]]:
    """Quantize an fp32 classifier graph to QDQ int8, calibrated on ``calib``.

    Args:
        fp32: the exported fp32 graph (input ``input``).
        calib: the prepared calibration images.
        options: calibration method, layers kept in float.
        static_batch: the graph's fixed batch size, if any (calibration batches then have that size).
        progress: show a progress bar over the calibration batches.

    Returns:
        The QDQ model and the calibration record that goes into its rtk metadata.

    Raises:
        RtkError: onnxruntime missing, a ``--keep-float`` name that is not in the graph, or fewer
            calibration images than one static batch.
    """
    import onnx

    ort = require("onnxruntime", "int8 export")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process


    batch = static_batch or CALIB_BATCH
    signed = options.activations == "int8"
    if static_batch and len(calib.images) < static_batch:
        raise RtkError(f"the static batch is {static_batch} but only {len(calib.images)} calibration images were drawn; raise --calib-samples")
    with tempfile.TemporaryDirectory(prefix="rtk-int8-") as tmp:
        source, prepared, quantized = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(fp32, str(source))
        # Shape inference and ONNX Runtime's basic graph optimisation first, as onnxruntime's
        # quantization guide recommends: the quantizer needs every activation's shape, and what
        # the optimiser folds away (constant subgraphs) gets no Q/DQ pairs of its own.
        quant_pre_process(str(source), str(prepared))
        excluded = keep_float_nodes(onnx.load(str(prepared)), options.keep_float)
        reader = _Reader(fp32.graph.input[0].name, calib.images, batch, whole_batches=static_batch is not None)
        with ProgressBar(len(reader.batches), f"calibrating ({options.method})", enabled=progress) as bar:
            reader.progress = bar
            try:
                quantize_static(
                    str(prepared), str(quantized), reader,
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if signed else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    calibrate_method=getattr(CalibrationMethod, CALIB_METHODS[options.method]),
                    calibration_providers=["CPUExecutionProvider"],
                    extra_options={"ActivationSymmetric": signed, "WeightSymmetric": True, "CalibStridedMinMax": 1},
                )
            except (RuntimeError, ValueError) as exc:  # onnxruntime's own failures while calibrating
                raise RtkError(f"onnxruntime could not quantize the graph: {first_line(exc)}") from None
        model = onnx.load(str(quantized))
    record = {
        "format": "QDQ",
        "quantizer": f"onnxruntime {ort.__version__} quantize_static",
        "weights": "int8, symmetric, per output channel",
        "activations": "int8, symmetric, per tensor" if signed else "uint8, asymmetric, per tensor (not for TensorRT)",
        "data": str(options.data),
        "source": calib.source,
        "samples": int(sum(len(b) for b in reader.batches)),
        "method": options.method,
        "seed": options.seed,
        "keep_float": list(options.keep_float),
        "float_nodes": excluded,
    }
    return model, record


def export_hint(checkpoint: "str | os.PathLike", calib: str | None = None) -> str:
    """The command that writes the int8 ONNX of a checkpoint (``DATA`` when the calibration data is unknown)."""
    return f"rtk export {checkpoint} --precision int8 --calib {calib or 'DATA'}"
