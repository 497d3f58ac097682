"""``rtk eval MODEL --data …``: accuracy of any artefact on a labelled dataset."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.cli.onnx_spec import ClassNamesOption, InputSizeOption, MeanOption, StdOption, onnx_meta
from toolkit.cli.options import (
    BatchSizeOption,
    DataRootOption,
    DeviceOption,
    DownloadOption,
    EngineOption,
    JsonOption,
    MaxSamplesOption,
    ModelArgument,
    TrustPickleOption,
    ValSplitOption,
    Weights,
    WeightsOption,
    checkpoint_options,
    number_option,
    path_option,
)
from toolkit.cli.ray_options import RayAddressOption, RayOption, ReplicasOption, ray_options
from toolkit.core.console import console
from toolkit.core.outputs import json_text
from toolkit.core.validation import SEED


class SplitName(str, Enum):
    test = "test"
    val = "val"
    train = "train"
    all = "all"


def eval_command(
    model: ModelArgument,
    data: Annotated[str, typer.Option(help="digits, a torchvision built-in (mnist, cifar10, …) or an image folder: <class>/images, or train|val|test/<class>/images.")] = "digits",
    split: Annotated[
        Optional[SplitName],
        typer.Option(help="Which split [default: test when the data has one; all of a folder of class folders; else val]. "
                     "train and val of a folder of class folders are the ones training holds out (--val-split, --seed).", show_default=False),
    ] = None,
    batch_size: BatchSizeOption = 256,
    engine: EngineOption = None,
    device: DeviceOption = "cpu",
    confusion: Annotated[Optional[Path], path_option("--confusion", help="Confusion-matrix PNG [default: MODEL.confusion-<split>.png next to the model].", show_default=False)] = None,
    data_root: DataRootOption = None,
    download: DownloadOption = False,
    val_split: ValSplitOption = 0.1,
    seed: Annotated[int, number_option(SEED, "--seed", help="Seed of that hold-out split (as in training).")] = 0,
    max_samples: MaxSamplesOption = None,
    as_json: JsonOption = False,
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
    from toolkit.usecases.evaluate import EvalOptions, evaluate_artefact  # lazy: numpy
    from toolkit.usecases.ray_inference import evaluate_on_ray  # lazy: numpy

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
        typer.echo(json_text(result.to_dict()), nl=False)
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
