"""``rtk export MODEL.pth``: checked ONNX files (fp32, fp16 and/or calibrated int8) next to a checkpoint."""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.cli.build import print_built
from toolkit.cli.onnx_spec import ClassNamesOption, InputSizeOption, MeanOption, StdOption, onnx_meta
from toolkit.cli.options import (
    OnnxPrecision,
    TrustPickleOption,
    Weights,
    WeightsOption,
    checkpoint_options,
    number_option,
    path_argument,
    path_option,
)
from toolkit.core.artefacts import ONNX_SUFFIXES, artefact_suffix
from toolkit.core.console import console, info
from toolkit.core.defaults import DEFAULT_CALIB_SAMPLES
from toolkit.core.trt.library import import_tensorrt
from toolkit.core.validation import COUNT, MAX_DROP, UsageError


class CalibMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class Exporter(str, Enum):
    dynamo = "dynamo"
    torchscript = "torchscript"


#: How each file of an export is described in its line.
FILE_KINDS = {
    "int8": "int8, symmetric activations: TensorRT, ONNX Runtime's GPU providers",
    "int8.u8": "int8, uint8 activations: ONNX Runtime on CPUs, OpenVINO",
}


PrecisionOption = Annotated[
    OnnxPrecision,
    typer.Option(
        help="fp32 writes MODEL.onnx; fp16 writes MODEL.fp16.onnx (fp16 weights and compute, fp32 inputs/outputs); "
        "int8 writes MODEL.int8.onnx (QDQ, for TensorRT and ONNX Runtime's GPU providers) and MODEL.int8.u8.onnx "
        "(the same calibration with uint8 activations, for ONNX Runtime on CPUs and OpenVINO), calibrated on --calib; "
        "all writes fp32 and fp16, and int8 when --calib is given."
    ),
]
DataOption = Annotated[
    Optional[str],
    typer.Option(help="Images that join the parity check: a dataset name (digits), a folder (of images, or of class folders) or a file list; accuracy is measured where they carry the model's classes."),
]
CalibOption = Annotated[
    Optional[str],
    typer.Option(
        help="int8: images to calibrate activation ranges on: digits or a dataset name (its training split), a folder of class folders, "
        "any folder of images (searched recursively) or a file list (one image path per line). No labels needed. Images held out "
        "of calibration (its test split, or a fifth of a folder) judge the files unless --data is given."
    ),
]
MaxDropOption = Annotated[
    Optional[float],
    number_option(
        MAX_DROP, "--max-drop",
        help="int8: leave the fewest layers in float that keep the loss within this many points: top-1 accuracy points on labelled "
        "images, top-1 disagreement with fp32 in % on unlabelled ones (e.g. 0.5). Ranks every layer once, then bisects.",
    ),
]


def export(
    checkpoint: Annotated[Path, path_argument(help="Checkpoint to export: an rtk .pth, or a foreign one (torchvision, timm, Lightning, transformers, mmpretrain, .safetensors, TorchScript, .pt2, a Hugging Face model folder…); or an fp32 ONNX file to quantize (--precision int8).")],
    output: Annotated[
        Optional[Path], path_option("--output", "-o", help="Destination file or folder. Default: MODEL.onnx (and MODEL.fp16.onnx) next to the checkpoint.")
    ] = None,
    precision: PrecisionOption = OnnxPrecision.fp32,
    opset: Annotated[int, number_option(COUNT, "--opset", help="ONNX opset to pin (the dynamo exporter writes 18 or newer).")] = 18,
    static_batch: Annotated[Optional[int], number_option(COUNT, "--static-batch", help="Fix the batch axis to this size instead of keeping it dynamic.")] = None,
    data: DataOption = None,
    calib: CalibOption = None,
    calib_samples: Annotated[int, number_option(COUNT, "--calib-samples", help="int8: how many calibration images (drawn with a fixed seed).")] = DEFAULT_CALIB_SAMPLES,
    calib_method: Annotated[CalibMethod, typer.Option(help="int8: how activation ranges are set from the calibration images.")] = CalibMethod.minmax,
    keep_float: Annotated[Optional[str], typer.Option(help="int8: layers left in float, comma-separated: first-conv, classifier and/or ONNX node names.")] = None,
    max_drop: MaxDropOption = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare ONNX Runtime with eager PyTorch before accepting the file.")] = True,
    exporter: Annotated[Exporter, typer.Option(help="torch exporter: dynamo (default) or the older torchscript one (needed for opset 17).")] = Exporter.dynamo,
    trt: Annotated[bool, typer.Option("--trt", help="Then build the fp16 TensorRT engine (MODEL.engine), as `rtk build` does with its defaults.")] = False,
    weights: WeightsOption = Weights.ema,
    trust_pickle: TrustPickleOption = False,
    input_size: InputSizeOption = None,
    class_names: ClassNamesOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
) -> None:
    """Export a checkpoint to ONNX, checked by the ONNX checker and by a parity run against eager PyTorch.

    The file appears only once it has passed: a failed check leaves nothing behind. An fp32 ONNX file
    (another tool's too) can be quantized to int8 the same way, checked against itself on ONNX Runtime. The int8
    files are judged on real images held out of calibration: top-1 agreement and accuracy drop
    against eager fp32 where they carry the model's classes, top-1 agreement and cosine where not.
    An existing MODEL.onnx (or MODEL.fp16.onnx…) that rtk did not export is never replaced.
    """
    from exporters.int8 import CalibOptions  # lazy: numpy
    from exporters.onnx import ExportOptions, export_onnx  # lazy: numpy
    from exporters.trt import build_engine  # lazy: numpy

    if max_drop is not None and calib is None:
        raise UsageError("--max-drop bounds what the int8 export loses; add --precision int8 --calib DATA")
    calib_options = CalibOptions(calib, calib_samples, calib_method.value, keep_float, max_drop=max_drop) if calib is not None else None
    options = ExportOptions(
        precision.value, opset, static_batch, data, check, exporter.value, calib=calib_options,
        checkpoint_options=checkpoint_options(weights, trust_pickle),
    )
    if trt:  # fail before a long export, not after it
        import_tensorrt("--trt")
    # An ONNX file can only be quantized: anything else is refused by export_onnx, before its spec is read.
    from_onnx = artefact_suffix(checkpoint) in ONNX_SUFFIXES
    meta = onnx_meta(checkpoint, input_size, class_names, mean, std) if options.precision == "int8" or not from_onnx else None
    if from_onnx and options.precision == "int8":
        info(f"quantizing {checkpoint} to int8, checked against itself on ONNX Runtime fp32")
    elif not from_onnx:
        info(f"exporting {checkpoint} ({', '.join(options.precisions)}, opset {options.opset}, {options.exporter} exporter)")
    reference = "ONNX Runtime fp32" if from_onnx else "eager"
    paths = export_onnx(checkpoint, output, options, on_checked=functools.partial(_report, reference=reference), meta=meta)
    if trt:
        print_built(build_engine(paths[0]))


def _report(path: Path, kind: str, metrics, reference: str = "eager") -> None:
    """One line per file written: what it is, its size, and what its check measured against ``reference``."""
    size = path.stat().st_size / 1e6
    what = FILE_KINDS.get(kind, kind)
    if metrics is None:
        console.print(f"[green]wrote[/green] {path} ({what}, {size:.1f} MB, not checked)", highlight=False)
        return
    line = (
        f"[green]wrote[/green] {path} ({what}, {size:.1f} MB): vs {reference} on {metrics.samples} images, max abs {metrics.max_abs:.2e} "
        f"(logits up to {metrics.scale:.3g}), cosine ≥ {metrics.min_cosine:.6f}, top-1 agreement {metrics.top1_agreement:.1%}"
    )
    if metrics.accuracy is not None:
        line += f", accuracy {metrics.accuracy:.2%} ({reference} {metrics.reference_accuracy:.2%})"
    elif kind.startswith("int8"):
        line += ", no accuracy measured (no labels of the model's classes)"
    console.print(line, highlight=False)
