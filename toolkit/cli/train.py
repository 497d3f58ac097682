"""``rtk train``: train or fine-tune a ResNet/ResNeXt classifier (also under ``torchrun``)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.cli.options import (
    DataRootOption,
    DownloadOption,
    TrustPickleOption,
    ValSplitOption,
    Weights,
    WeightsOption,
    check_auto_device,
    checkpoint_options,
    number_option,
    path_option,
)
from toolkit.core.console import console
from toolkit.core.spec import ARCHS
from toolkit.core.validation import COUNT, COUNT_OR_ZERO, NON_NEGATIVE, PART, POSITIVE, SEED, TRAINING_BATCH

Arch = Enum("Arch", {name: name for name in ARCHS}, type=str)


class Optimizer(str, Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Schedule(str, Enum):
    cosine = "cosine"
    constant = "constant"


class Freeze(str, Enum):
    none = "none"
    backbone = "backbone"


class Head(str, Enum):
    fc = "fc"
    mlp1024 = "mlp1024"


class Stem(str, Enum):
    small = "small"
    imagenet = "imagenet"


def train(
    data: Annotated[str, typer.Option(help="digits, mnist, kmnist, fashionmnist, cifar10, svhn, stl10, or an image folder (ROOT/<class>/… or ROOT/train|val[|test]/<class>/…).")] = "digits",
    arch: Annotated[Optional[Arch], typer.Option(help="Architecture [default: resnet18, or the --pretrained checkpoint's].", show_default=False)] = None,
    epochs: Annotated[int, number_option(COUNT, "--epochs", help="Total epochs (a resumed run continues up to this number).")] = 8,
    batch_size: Annotated[int, number_option(TRAINING_BATCH, "--batch-size", help="Images per step (per process under torchrun); at least 2, for BatchNorm.")] = 64,
    optimizer: Annotated[Optimizer, typer.Option(help="adam, adamw, or sgd (momentum 0.9, Nesterov).")] = Optimizer.adam,
    lr: Annotated[Optional[float], number_option(POSITIVE, "--lr", help="Peak learning rate [default: 2e-3 for adam/adamw, 0.05 for sgd].", show_default=False)] = None,
    weight_decay: Annotated[Optional[float], number_option(NON_NEGATIVE, "--weight-decay", help="Weight decay [default: 0 adam, 0.05 adamw, 5e-4 sgd].", show_default=False)] = None,
    schedule: Annotated[Schedule, typer.Option(help="Learning-rate schedule after the warm-up.")] = Schedule.cosine,
    warmup_epochs: Annotated[float, number_option(NON_NEGATIVE, "--warmup-epochs", help="Linear warm-up length in epochs.")] = 1.0,
    label_smoothing: Annotated[float, number_option(PART, "--label-smoothing", help="Label smoothing of the cross-entropy loss.")] = 0.0,
    seed: Annotated[int, number_option(SEED, "--seed", help="Seed for weights, shuffling, augmentation and the hold-out split.")] = 0,
    out: Annotated[Optional[Path], path_option("--out", help="Output folder [default: runs/<arch>-<data>].", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pth.")] = False,
    pretrained: Annotated[Optional[Path], path_option("--pretrained", help="Start from this rtk or foreign checkpoint (torchvision, timm, Lightning, transformers, .safetensors, a Hugging Face model folder…); a head of the wrong size is replaced.")] = None,
    freeze: Annotated[Freeze, typer.Option(help="backbone: train only the head (needs --pretrained).")] = Freeze.none,
    head: Annotated[Head, typer.Option(help="fc (one linear layer) or mlp1024 (Linear→1024, ReLU, Linear).")] = Head.fc,
    stem: Annotated[Optional[Stem], typer.Option(help="small (3×3/1, no max-pool) or imagenet (7×7/2 + max-pool) [default: small up to 64 px].", show_default=False)] = None,
    width: Annotated[Optional[int], typer.Option(help="Channels of the first stage: 16, 32, 48 or 64; 16 or 32 train several times faster on small images [default: 64, or the pretrained checkpoint's].", show_default=False)] = None,
    in_chans: Annotated[Optional[int], typer.Option(help="Input channels, 1 or 3 [default: the data's, or the pretrained conv1's].", show_default=False)] = None,
    input_size: Annotated[Optional[int], number_option(COUNT, "--input-size", help="Network input side in pixels [default: 8 for digits, the native size of built-ins, 224 for folders].", show_default=False)] = None,
    val_split: ValSplitOption = 0.1,
    data_root: DataRootOption = None,
    download: DownloadOption = False,
    max_samples: Annotated[Optional[int], number_option(TRAINING_BATCH, "--max-samples", help="Use at most N images per split (quick trials).")] = None,
    device: Annotated[str, typer.Option(callback=check_auto_device, help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA.")] = True,
    channels_last: Annotated[bool, typer.Option(help="Channels-last memory format on CUDA.")] = True,
    workers: Annotated[Optional[int], number_option(COUNT_OR_ZERO, "--workers", help="Data-loading processes [default: 0 on CPU, 4 on CUDA].", show_default=False)] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    weights: WeightsOption = Weights.ema,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Train a classifier and write best.pth, last.pth, history.json and curves.png.

    The defaults train resnet18 on scikit-learn's handwritten digits on a CPU in a few minutes.
    Fine-tune with --pretrained PATH --freeze backbone --head mlp1024. Under
    `torchrun --nproc_per_node N -m toolkit train …` the run uses DistributedDataParallel.
    """
    from toolkit.usecases.train import TrainOptions  # lazy: numpy
    from toolkit.usecases.train import train as run_training  # lazy: numpy

    options = TrainOptions(
        data=data, arch=arch.value if arch else None, epochs=epochs, batch_size=batch_size, optimizer=optimizer.value,
        lr=lr, weight_decay=weight_decay, schedule=schedule.value, warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing, seed=seed, out=out, resume=resume, pretrained=pretrained,
        freeze=freeze.value, head=head.value, stem=stem.value if stem else None, width=width, in_chans=in_chans,
        input_size=input_size, val_split=val_split, data_root=data_root, download=download,
        max_samples=max_samples, device=device, amp=amp, channels_last=channels_last, workers=workers,
        progress=progress, checkpoint_options=checkpoint_options(weights, trust_pickle),
    )  # fmt: skip
    try:
        result = run_training(options)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        console.print(str(result.best), highlight=False)
