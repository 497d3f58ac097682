"""``rtk export MODEL.pth``: checked ONNX files (fp32, fp16 and/or calibrated int8) next to a checkpoint."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from exporters.int8 import DEFAULT_CALIB_SAMPLES, CalibOptions
from exporters.onnx import ExportOptions, export_onnx
from exporters.trt import build_engine
from toolkit.cli.build import print_built
from toolkit.cli.options import OnnxPrecision, TrustPickleOption, Weights, WeightsOption, checkpoint_options
from toolkit.core.console import console, info
from toolkit.core.errors import require


class CalibMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class Activations(str, Enum):
    int8 = "int8"
    uint8 = "uint8"


class Exporter(str, Enum):
    dynamo = "dynamo"
    torchscript = "torchscript"


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to export: an rtk .pth, or a foreign one (torchvision, timm, Lightning, transformers, mmpretrain, .safetensors, TorchScript, .pt2, a Hugging Face model folder…).")],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Destination file or folder. Default: MODEL.onnx (and MODEL.fp16.onnx) next to the checkpoint.")
    ] = None,
    precision: Annotated[
        OnnxPrecision,
        typer.Option(
            help="fp32 writes MODEL.onnx; fp16 writes MODEL.fp16.onnx (fp16 weights and compute, fp32 inputs/outputs); "
            "int8 writes MODEL.int8.onnx (QDQ, calibrated on --calib); all writes fp32 and fp16, and int8 when --calib is given."
        ),
    ] = OnnxPrecision.fp32,
    opset: Annotated[int, typer.Option(help="ONNX opset to pin (the dynamo exporter writes 18 or newer).")] = 18,
    static_batch: Annotated[Optional[int], typer.Option(help="Fix the batch axis to this size instead of keeping it dynamic.")] = None,
    data: Annotated[
        Optional[str], typer.Option(help="Dataset name (digits) or image folder whose labelled test images join the parity check.")
    ] = None,
    calib: Annotated[
        Optional[str],
        typer.Option(help="int8: images to calibrate activation ranges on (digits, an image folder or a dataset name; its training split). Its test split also checks the file unless --data is given."),
    ] = None,
    calib_samples: Annotated[int, typer.Option(help="int8: how many calibration images (drawn with a fixed seed).")] = DEFAULT_CALIB_SAMPLES,
    calib_method: Annotated[CalibMethod, typer.Option(help="int8: how activation ranges are set from the calibration images.")] = CalibMethod.minmax,
    keep_float: Annotated[
        Optional[str],
        typer.Option(help="int8: layers left in float, comma-separated: first-conv, classifier and/or ONNX node names."),
    ] = None,
    activations: Annotated[
        Activations,
        typer.Option(help="int8: activation type. int8 (symmetric) runs on ONNX Runtime, TensorRT and OpenVINO; uint8 (asymmetric) gives ONNX Runtime's fastest x86 CPU kernels but TensorRT refuses it."),
    ] = Activations.int8,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare ONNX Runtime with eager PyTorch before accepting the file.")] = True,
    exporter: Annotated[Exporter, typer.Option(help="torch exporter: dynamo (default) or the older torchscript one (needed for opset 17).")] = Exporter.dynamo,
    trt: Annotated[bool, typer.Option("--trt", help="Then build the fp16 TensorRT engine (MODEL.engine), as `rtk build` does with its defaults.")] = False,
    weights: WeightsOption = Weights.ema,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Export a checkpoint to ONNX, checked by the ONNX checker and by a parity run against eager PyTorch.

    The file appears only once it has passed: a failed check leaves nothing behind. An int8
    file is judged on real labelled images (top-1 agreement and accuracy drop against eager fp32).
    """

    calib_options = CalibOptions(calib, calib_samples, calib_method.value, keep_float, activations=activations.value) if calib is not None else None
    options = ExportOptions(
        precision.value, opset, static_batch, data, check, exporter.value, calib=calib_options,
        checkpoint_options=checkpoint_options(weights, trust_pickle),
    )

    def report(path: Path, prec: str, metrics) -> None:
        size = path.stat().st_size / 1e6
        if metrics is None:
            console.print(f"[green]wrote[/green] {path} ({prec}, {size:.1f} MB, not checked)", highlight=False)
            return
        line = (
            f"[green]wrote[/green] {path} ({prec}, {size:.1f} MB): vs eager max abs {metrics.max_abs:.2e} "
            f"(logits up to {metrics.scale:.3g}), cosine ≥ {metrics.min_cosine:.6f}, top-1 agreement {metrics.top1_agreement:.1%}"
        )
        if metrics.accuracy is not None:
            line += f", accuracy {metrics.accuracy:.2%} (eager {metrics.reference_accuracy:.2%})"
        console.print(line, highlight=False)

    if trt:  # fail before a long export, not after it

        require("tensorrt", "--trt")
    info(f"exporting {checkpoint} ({', '.join(options.precisions)}, opset {options.opset}, {options.exporter} exporter)")
    paths = export_onnx(checkpoint, output, options, on_checked=report)
    if trt:
        print_built(build_engine(paths[0]))
