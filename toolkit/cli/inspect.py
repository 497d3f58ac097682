"""``rtk inspect PATH``: what an artefact is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.options import JsonOption, TrustPickleOption, Weights, WeightsOption, checkpoint_options, path_argument
from toolkit.core.console import console


def inspect(
    path: Annotated[Path, path_argument(help="A checkpoint (.pth/.pt/.ckpt/.pth.tar/.safetensors/.pt2, or a Hugging Face model folder), ONNX file (.onnx) or TensorRT engine (.engine/.plan).")],
    as_json: JsonOption = False,
    weights: WeightsOption = Weights.ema,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Show what an artefact holds: architecture, classes, parameters, which weights, preprocessing, training record.

    For a foreign checkpoint the training record is what the file keeps of one: epoch, best
    metric, arch name, timm's arguments, Lightning's hyper-parameters; preprocess_sources says
    where each preprocessing value and the class names came from (a Hub folder's config.json,
    its preprocessor_config.json, timm's arguments, or ImageNet's default).
    """
    from toolkit.usecases.inspect import describe  # lazy: numpy

    report = describe(path, checkpoint_options(weights, trust_pickle))
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=str(path), show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")
    for key, value in _flatten(report):
        table.add_row(key, value)
    console.print(table)


def _flatten(report: dict, prefix: str = ""):
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and len(value) <= 16:
            yield from _flatten(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            text = ", ".join(map(str, value))
            yield name, text if len(text) < 400 else text[:400] + " …"
        else:
            yield name, "—" if value is None else str(value)
