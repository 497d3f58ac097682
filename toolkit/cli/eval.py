"""``rtk eval MODEL --data …``: accuracy of any artefact on a labelled dataset."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.cli.onnx_spec import ClassNamesOption, InputSizeOption, MeanOption, StdOption, onnx_meta
from toolkit.cli.options import (
    DEVICE_HELP,
    ENGINE_HELP,
    TrustPickleOption,
    Weights,
    WeightsOption,
    check_device,
    check_engine,
    checkpoint_options,
)
from toolkit.cli.ray_options import RayAddressOption, RayOption, ReplicasOption, ray_options
from toolkit.core.console import console
from toolkit.usecases.evaluate import EvalOptions, evaluate_artefact
from toolkit.usecases.ray_inference import evaluate_on_ray


class SplitName(str, Enum):
    test = "test"
    val = "val"
    train = "train"
    all = "all"


def eval_command(
    model: Annotated[Path, typer.Argument(help="A checkpoint (.pth/.pt/.safetensors/.pt2…, or a Hugging Face model folder), ONNX file (.onnx) or TensorRT engine (.engine/.plan).")],
    data: Annotated[str, typer.Option(help="digits, a torchvision built-in (mnist, cifar10, …) or an image folder: <class>/images, or train|val|test/<class>/images.")] = "digits",
    split: Annotated[
        Optional[SplitName],
        typer.Option(help="Which split [default: test when the data has one; all of a folder of class folders; else val]. "
                     "train and val of a folder of class folders are the ones training holds out (--val-split, --seed).", show_default=False),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per engine call.")] = 256,
    engine: Annotated[
        Optional[str],
        typer.Option("--engine", "-e", callback=check_engine, help=f"Engine: {ENGINE_HELP} [default: the artefact's own]. A checkpoint on "
                     "ONNX Runtime or TensorRT is exported (and built) next to itself first.", show_default=False),
    ] = None,
    device: Annotated[str, typer.Option(callback=check_device, help=f"{DEVICE_HELP}.")] = "cpu",
    confusion: Annotated[Optional[Path], typer.Option(help="Confusion-matrix PNG [default: MODEL.confusion-<split>.png next to the model].", show_default=False)] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Where torchvision's datasets live [default: ./data].", show_default=False)] = None,
    download: Annotated[bool, typer.Option("--download", help="Let torchvision download a missing built-in dataset.")] = False,
    val_split: Annotated[float, typer.Option(help="Validation fraction of a flat folder or built-in (as in training).")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of that hold-out split (as in training).")] = 0,
    max_samples: Annotated[Optional[int], typer.Option(help="Use at most N images (quick checks).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of tables.")] = False,
    weights: WeightsOption = Weights.ema,
    trust_pickle: TrustPickleOption = False,
    ray: RayOption = False,
    ray_address: RayAddressOption = None,
    replicas: ReplicasOption = None,
    input_size: InputSizeOption = None,
    class_names: ClassNamesOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
) -> None:
    """Measure accuracy, per-class accuracy and the confusion matrix of a model on a labelled dataset.

    Images are prepared with the artefact's own preprocessing (stored in it), and classes are
    matched to the model's by name. With --ray the images are decoded and scored on a Ray cluster,
    a new local instance by default, with the same figures.
    """

    on_ray = ray_options(ray, ray_address, replicas)
    options = EvalOptions(
        model=model, data=data, split=split.value if split else None, batch_size=batch_size, engine=engine,
        device=device, confusion=confusion, data_root=data_root, download=download, val_split=val_split,
        seed=seed, max_samples=max_samples, progress=not as_json, checkpoint_options=checkpoint_options(weights, trust_pickle),
        meta=onnx_meta(model, input_size, class_names, mean, std),
    )  # fmt: skip
    if on_ray is None:
        result = evaluate_artefact(options)
    else:
        result = evaluate_on_ray(options, on_ray)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    _print_tables(result)


def _print_tables(result) -> None:
    from rich.table import Table

    report = result.report
    console.print(
        f"[bold]{result.model}[/bold] ({result.engine}) on {result.data} ({result.split}, {report.total} images): "
        f"accuracy [bold]{report.accuracy:.2%}[/bold] ({report.correct}/{report.total}) in {result.seconds:.1f} s",
        highlight=False,
    )
    table = Table(title="per-class accuracy", title_justify="left")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("support", justify="right")
    support = report.confusion.sum(axis=1)
    for i, (name, acc) in enumerate(report.per_class_accuracy().items()):
        table.add_row(name, "—" if acc is None else f"{acc:.2%}", str(int(support[i])))
    console.print(table)
    console.print(f"confusion matrix: {result.confusion_png}", highlight=False)
