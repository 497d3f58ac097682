"""``rtk export MODEL.pth``: checked ONNX files (fp32 and/or fp16) next to a checkpoint."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.cli.options import TrustPickleOption, Weights, WeightsOption, checkpoint_options


class ExportPrecision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    all = "all"


class Exporter(str, Enum):
    dynamo = "dynamo"
    torchscript = "torchscript"


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to export: an rtk .pth, or a foreign one (torchvision, timm, Lightning, .safetensors…).")],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Destination file or folder. Default: MODEL.onnx (and MODEL.fp16.onnx) next to the checkpoint.")
    ] = None,
    precision: Annotated[
        ExportPrecision, typer.Option(help="fp32 writes MODEL.onnx; fp16 writes MODEL.fp16.onnx (fp16 weights and compute, fp32 inputs/outputs); all writes both.")
    ] = ExportPrecision.fp32,
    opset: Annotated[int, typer.Option(help="ONNX opset to pin (the dynamo exporter writes 18 or newer).")] = 18,
    static_batch: Annotated[Optional[int], typer.Option(help="Fix the batch axis to this size instead of keeping it dynamic.")] = None,
    data: Annotated[
        Optional[str], typer.Option(help="Dataset name (digits) or image folder whose labelled test images join the parity check.")
    ] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare ONNX Runtime with eager PyTorch before accepting the file.")] = True,
    exporter: Annotated[Exporter, typer.Option(help="torch exporter: dynamo (default) or the older torchscript one (needed for opset 17).")] = Exporter.dynamo,
    trt: Annotated[bool, typer.Option("--trt", help="Then build the fp16 TensorRT engine (MODEL.engine), as `rtk build` does with its defaults.")] = False,
    weights: WeightsOption = Weights.ema,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Export a checkpoint to ONNX, checked by the ONNX checker and by a parity run against eager PyTorch.

    The file appears only once it has passed: a failed check leaves nothing behind.
    """
    from exporters.onnx import ExportOptions, export_onnx
    from toolkit.console import console, info

    options = ExportOptions(
        precision.value, opset, static_batch, data, check, exporter.value, checkpoint_options=checkpoint_options(weights, trust_pickle),
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
        from toolkit.errors import require

        require("tensorrt", "--trt")
    info(f"exporting {checkpoint} ({', '.join(options.precisions)}, opset {options.opset}, {options.exporter} exporter)")
    paths = export_onnx(checkpoint, output, options, on_checked=report)
    if trt:
        from exporters.trt import build_engine
        from toolkit.cli.build import print_built

        print_built(build_engine(paths[0]))


def register(app: typer.Typer) -> None:
    app.command("export")(export)
