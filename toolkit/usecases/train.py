"""Training: ``train(TrainOptions) -> TrainResult``, the library behind ``rtk train``.

One run reads a :class:`~toolkit.core.data.DataSource`, builds (or fine-tunes) a zoo model, and
trains it with Adam/AdamW/SGD under a warm-up + cosine schedule, validating after every epoch.
Into the output folder it writes ``last.pth`` (with optimizer state, for ``--resume``),
``best.pth`` (by validation accuracy), ``history.json`` and ``curves.png``; all atomically, so
an interrupted run always leaves complete files. Under ``torchrun`` the same code runs with
DistributedDataParallel and only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.request import EngineRequest
from toolkit.core.checkpoint import Checkpoint, CheckpointOptions, load_checkpoint, read_torch_file, save_checkpoint
from toolkit.core.console import ProgressBar, info, warn
from toolkit.core.data import DataSource, resolve_data
from toolkit.core.distributed import DistContext, all_reduce_sum, barrier, cleanup, init_distributed
from toolkit.core.errors import RtkError
from toolkit.core.models import count_parameters, create_model
from toolkit.core.outputs import Output, check_outputs, write_atomic
from toolkit.core.plots import pyplot, save_figure
from toolkit.core.schedule import lr_factor, set_lr
from toolkit.core.spec import WIDTHS, ModelSpec, Preprocess
from toolkit.core.validation import COUNT, COUNT_OR_ZERO, NON_NEGATIVE, PART, POSITIVE, SEED, TRAINING_BATCH, UsageError
from toolkit.usecases.evaluate import evaluate
from toolkit.usecases.opening import open_engine

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


OPTIMIZERS = ("adam", "adamw", "sgd")
FREEZE = ("none", "backbone")
DEFAULT_LR = {"adam": 2e-3, "adamw": 2e-3, "sgd": 0.05}
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "adamw": 0.05, "sgd": 5e-4}
# Inputs up to this size get the small stem (3×3/1 conv, no max-pool) unless told otherwise.
SMALL_STEM_MAX = 64


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run needs; the defaults train resnet18 on the digits in minutes on a CPU.

    Attributes:
        data: ``digits``, a torchvision built-in name, or an image folder.
        arch: architecture; ``resnet18`` by default, or the pretrained checkpoint's.
        epochs: total epochs (a resumed run continues up to this number).
        batch_size: images per step and process; at least 2, since BatchNorm normalises a
            training batch by its own statistics, which one image cannot give. For the same
            reason an epoch's ragged end is dropped when there is more than one batch, so no
            step ever sees a single image.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (momentum 0.9, Nesterov).
        lr: peak learning rate; per-optimizer default when omitted.
        weight_decay: not negative; per-optimizer default when omitted.
        schedule: ``cosine`` (to zero at the end) or ``constant``, after ``warmup_epochs``.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        label_smoothing: cross-entropy label smoothing.
        seed: seeds weights, shuffling and augmentation; equal seeds give equal runs on one machine.
            Not negative (NumPy's generators, which split image folders, refuse negative seeds).
        out: output folder; ``runs/<arch>-<data>`` by default.
        resume: continue from ``out/last.pth``.
        pretrained: checkpoint to start from (rtk or foreign); a head of the wrong size is replaced.
        freeze: ``backbone`` trains only the head; ``none`` trains everything.
        head: ``fc`` or ``mlp1024`` (Linear→1024, ReLU, Linear).
        stem: ``small`` or ``imagenet``; chosen from the input size when omitted.
        width: channels of the first stage, 16, 32, 48 or 64; 64, every published ResNet's, or
            the pretrained checkpoint's when omitted. 16 or 32 train several times faster on
            small images.
        in_chans: 1 or 3; from the data (or the pretrained conv1) when omitted.
        input_size: network input side; the data's default when omitted.
        val_split, data_root, download, max_samples: as for :func:`toolkit.core.data.resolve_data`;
            ``max_samples`` at least 2, for the reason given under ``batch_size``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: mixed precision on CUDA (ignored on CPU).
        channels_last: channels-last memory format on CUDA (ignored on CPU).
        workers: data-loading processes (0: load in the training process); 0 on CPU, 4 on
            CUDA when omitted.
        progress: show a progress bar.
    """

    data: str = "digits"
    arch: str | None = None
    epochs: int = 8
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    out: Path | None = None
    resume: bool = False
    pretrained: Path | None = None
    freeze: str = "none"
    head: str = "fc"
    stem: str | None = None
    width: int | None = None
    in_chans: int | None = None
    input_size: int | None = None
    val_split: float = 0.1
    data_root: Path | None = None
    download: bool = False
    max_samples: int | None = None
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    workers: int | None = None
    progress: bool = True
    checkpoint_options: CheckpointOptions = field(default_factory=CheckpointOptions)

    def output_dir(self, arch: str | None = None) -> Path:
        """``out``, or ``runs/<arch>-<data>`` (``arch``: the architecture actually trained)."""
        if self.out is not None:
            return Path(self.out)
        data = Path(self.data).name or "data"
        return Path("runs") / f"{arch or self.arch or 'resnet18'}-{data}"

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class TrainResult:
    """What a run produced.

    Attributes:
        out: the output folder.
        best, last: checkpoint paths.
        best_epoch, best_val_acc: the epoch ``best.pth`` holds and its validation accuracy.
        test_acc: ``best.pth``'s accuracy on the test split (``None`` without one).
        history: one dict per epoch (losses, accuracies, learning rate, seconds).
        seconds: wall time of this invocation.
        trainable, total: parameter counts.
    """

    out: Path
    best: Path
    last: Path
    best_epoch: int
    best_val_acc: float
    test_acc: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    trainable: int = 0
    total: int = 0


def train(options: TrainOptions) -> TrainResult:
    """Train a model as ``options`` describe; see the module docstring for what is written.

    Returns:
        The run's outcome (on every rank; only rank 0 has written files).

    Raises:
        RtkError: bad data, a pretrained checkpoint that does not fit, nothing to resume…
        KeyboardInterrupt: after Ctrl-C, once the last complete checkpoint's location is printed.
    """
    _check_options(options)
    ctx = init_distributed(options.device)
    try:
        return _Run(options, ctx).fit()
    finally:
        cleanup(ctx)


def _check_options(o: TrainOptions) -> None:
    """Every option against its rule, and the options that exclude each other, before any work.

    Raises:
        UsageError: naming the flag.
    """
    for flag, value, rule in (
        ("--epochs", o.epochs, COUNT), ("--batch-size", o.batch_size, TRAINING_BATCH), ("--lr", o.lr, POSITIVE),
        ("--weight-decay", o.weight_decay, NON_NEGATIVE), ("--label-smoothing", o.label_smoothing, PART),
        ("--warmup-epochs", o.warmup_epochs, NON_NEGATIVE), ("--val-split", o.val_split, PART), ("--seed", o.seed, SEED),
        ("--max-samples", o.max_samples, TRAINING_BATCH), ("--workers", o.workers, COUNT_OR_ZERO), ("--input-size", o.input_size, COUNT),
    ):
        rule.check(value, flag)
    checks = [
        (o.optimizer in OPTIMIZERS, f"unknown optimizer {o.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"),
        (o.freeze in FREEZE, f"unknown --freeze {o.freeze!r}; choose one of {', '.join(FREEZE)}"),
        (o.width is None or o.width in WIDTHS, f"--width must be 16, 32, 48 or 64 (every published ResNet's), got {o.width}"),
        (o.in_chans is None or o.in_chans in (1, 3), f"--in-chans must be 1 or 3, got {o.in_chans}"),
        (o.freeze == "none" or o.pretrained is not None or o.resume, "--freeze backbone needs --pretrained: a random backbone is not worth freezing"),
        (not (o.resume and o.pretrained), "--resume and --pretrained exclude each other: resume continues the run in --out"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    _check_out(o)


def _check_out(o: TrainOptions) -> None:
    """Before any training: --out must be a folder whose files overwrite nothing the run reads."""
    out = o.output_dir()
    if out.exists() and not out.is_dir():
        raise RtkError(f"--out {out} is a file; give a folder for best.pth, last.pth, history.json and curves.png")
    written = ["best.pth", "history.json", "curves.png"] + ([] if o.resume else ["last.pth"])  # --resume reads last.pth on purpose
    check_outputs([Output(out / name, "--out") for name in written], [o.pretrained, o.data])


class _Run:
    """One training run; split into steps so each reads on its own."""

    def __init__(self, options: TrainOptions, ctx: DistContext):
        self.o = options
        self.ctx = ctx
        self.out = options.output_dir()
        self.main = ctx.is_main
        self.trainable = self.total = 0  # parameter counts, known once the model is built

    def say(self, message: str) -> None:
        if self.main:
            info(message)

    # -- set-up ----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train to the end (or from where ``--resume`` left off) and test the best checkpoint."""
        started = time.perf_counter()
        resume = self._resume_checkpoint() if self.o.resume else None
        pretrained = self._pretrained_checkpoint() if self.o.pretrained else None
        if pretrained:
            self.out = self.o.output_dir(pretrained.spec.name)
        source, spec, pre = self._data_and_spec(resume, pretrained)
        model, device, memory_format = self._model(spec, pre, source, resume, pretrained)
        optimizer, scaler, (start_epoch, history, best) = self._optimizer_state(model, device, resume)
        loop = _Loop(self, self._distributed(model, device), model, spec, pre, source, optimizer, scaler, memory_format, device)
        try:
            with _stop_on_interrupt(enabled=not self.ctx.distributed) as stop:
                loop.stop = stop
                history, best = loop.run(start_epoch, history, best)
        except KeyboardInterrupt:
            if self.main:
                self._report_interrupt()
            raise
        return self._finish(source, history, best, started)

    def _data_and_spec(self, resume: "Checkpoint | None", pretrained: "Checkpoint | None") -> tuple["DataSource", ModelSpec, Preprocess]:
        """The data, and the network and preprocessing it trains: resumed, fine-tuned or new."""

        o = self.o
        input_size = resume.preprocess.input_size[0] if resume else o.input_size
        if pretrained and input_size is None:  # fine-tune at the size the backbone learned
            input_size = pretrained.preprocess.input_size[0]
        source = resolve_data(
            o.data, input_size=input_size, val_split=o.val_split, seed=o.seed, data_root=o.data_root, download=o.download, max_samples=o.max_samples
        )
        spec = resume.spec if resume else self._spec(source, pretrained)
        if resume and tuple(source.class_names) != tuple(spec.class_names or ()):
            raise RtkError(f"{o.data} has classes {', '.join(source.class_names)}, but the run in {self.out} was trained on {', '.join(spec.class_names or ())}")
        return source, spec, resume.preprocess if resume else source.preprocess.matching(spec)

    def _model(self, spec: ModelSpec, pre: Preprocess, source: "DataSource", resume: "Checkpoint | None", pretrained: "Checkpoint | None"):
        """The network with its starting weights and frozen layers, on the run's device."""
        import torch

        torch.manual_seed(self.o.seed)
        model = create_model(spec)
        if resume:
            model.load_state_dict(resume.state_dict)
        elif pretrained:
            self._transfer(model, pretrained, spec)
        if self.o.freeze == "backbone":
            for name, param in model.named_parameters():
                param.requires_grad = name.startswith("fc.")
        trainable, total = count_parameters(model)
        self.trainable, self.total = trainable, total
        self.say(f"{spec.name} ({spec.stem} stem, {spec.head} head, {spec.in_chans}-channel {pre.input_size[0]}×{pre.input_size[1]} input) "
                 f"on {source.name}: {source.num_classes} classes, "
                 + ", ".join(f"{len(s)} {k}" for k, s in source.splits.items()))
        self.say(f"trainable parameters: {trainable:,} of {total:,} ({format_share(trainable, total)})")
        device = torch.device(self.ctx.device)
        memory_format = torch.channels_last if (device.type == "cuda" and self.o.channels_last) else torch.contiguous_format
        return model.to(device=device, memory_format=memory_format), device, memory_format

    def _optimizer_state(self, model: "nn.Module", device: "torch.device", resume: "Checkpoint | None"):
        """Optimizer and AMP scaler, and (start epoch, history, best) — restored when resuming."""
        import torch

        optimizer = self._optimizer([p for p in model.parameters() if p.requires_grad])
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and self.o.amp)
        if not resume:
            return optimizer, scaler, (0, [], {"epoch": 0, "val_acc": -1.0})
        optimizer.load_state_dict(resume.train["optimizer"])
        if "scaler" in resume.train and scaler.is_enabled():
            scaler.load_state_dict(resume.train["scaler"])
        start_epoch = int(resume.train["epoch"])
        self.say(f"resuming from {self.out / 'last.pth'} after epoch {start_epoch}")
        return optimizer, scaler, (start_epoch, list(resume.train.get("history", [])), dict(resume.train.get("best", {"epoch": 0, "val_acc": -1.0})))

    def _distributed(self, model: "nn.Module", device: "torch.device") -> "nn.Module":
        """The module the loop calls: DDP around the model under torchrun, else the model itself."""
        if not self.ctx.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        cuda = device.type == "cuda"
        self.say(f"DistributedDataParallel over {self.ctx.world_size} processes ({'nccl' if cuda else 'gloo'})")
        return DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    def _finish(self, source: "DataSource", history: list[dict], best: dict, started: float) -> TrainResult:
        """Test the best checkpoint (rank 0), write history.json and summarise."""
        barrier(self.ctx)
        test_acc = self._test(source) if self.main else None
        barrier(self.ctx)
        seconds = time.perf_counter() - started
        if self.main:
            self.write_history(history, best, test_acc, seconds)
            summary = f"best val accuracy {best['val_acc']:.2%} (epoch {best['epoch']})"
            if test_acc is not None:
                summary += f", test accuracy {test_acc:.2%}"
            self.say(f"{summary}; {seconds:.0f} s; wrote {self.out}/best.pth, last.pth, history.json, curves.png")
        return TrainResult(
            self.out, self.out / "best.pth", self.out / "last.pth", int(best["epoch"]), float(best["val_acc"]), test_acc, history,
            seconds, self.trainable, self.total,
        )

    def _report_interrupt(self) -> None:
        # Ask the file rather than the loop: Ctrl-C may land while last.pth is being replaced,
        # and the atomic write means the file holds either the old epoch or the new one.
        last = self.out / "last.pth"
        if not last.exists():
            warn("interrupted before the first epoch finished; nothing was saved")
            return

        epoch = read_torch_file(last).get("train", {}).get("epoch", "?")
        warn(f"interrupted: {last} holds epoch {epoch}; continue with --resume --out {self.out}")

    def _resume_checkpoint(self) -> "Checkpoint":
        last = self.out / "last.pth"
        if not last.exists():
            raise RtkError(f"nothing to resume: {last} does not exist (train without --resume first, or point --out at the run)")
        ckpt = load_checkpoint(last)
        ckpt.check_weights()
        if "optimizer" not in ckpt.train or "epoch" not in ckpt.train:
            raise RtkError(f"{last} holds no optimizer state to resume from; start a new run, e.g. with --pretrained {last}")
        if self.o.arch and self.o.arch != ckpt.spec.arch:
            raise RtkError(f"{last} holds a {ckpt.spec.arch}, but --arch {self.o.arch} was given; drop --arch to resume")
        if self.o.width and self.o.width != ckpt.spec.width:
            raise RtkError(f"{last} has width {ckpt.spec.width}, but --width {self.o.width} was given; drop --width to resume")
        done = int(ckpt.train["epoch"])
        if done >= self.o.epochs:
            raise RtkError(f"the run in {self.out} has already trained {done} epochs; pass --epochs above {done} to continue")
        return ckpt

    def _pretrained_checkpoint(self) -> "Checkpoint":
        ckpt = load_checkpoint(self.o.pretrained, options=self.o.checkpoint_options)
        # Before any training: NaN in the starting weights would surface as a diverging loss,
        # blamed on the learning rate.
        ckpt.check_weights()
        if self.o.arch and self.o.arch != ckpt.spec.arch:
            raise RtkError(
                f"{self.o.pretrained} holds a {ckpt.spec.arch}, but --arch {self.o.arch} was asked; "
                f"pass --arch {ckpt.spec.arch} or a {self.o.arch} checkpoint"
            )
        if self.o.stem and self.o.stem != ckpt.spec.stem:
            raise RtkError(f"{self.o.pretrained} has the {ckpt.spec.stem} stem, but --stem {self.o.stem} was asked")
        if self.o.width and self.o.width != ckpt.spec.width:
            raise RtkError(f"{self.o.pretrained} has width {ckpt.spec.width}, but --width {self.o.width} was asked; drop --width to fine-tune it")
        return ckpt

    def _spec(self, source: "DataSource", pretrained: "Checkpoint | None") -> ModelSpec:
        o = self.o
        classes = dict(num_classes=source.num_classes, class_names=source.class_names, head=o.head)
        if pretrained:  # the backbone as it is (a ResNet-D or SE-ResNet stays one), with the new head
            return dataclasses.replace(pretrained.spec, **classes, in_chans=o.in_chans or pretrained.spec.in_chans)
        stem = o.stem or ("small" if max(source.preprocess.input_size) <= SMALL_STEM_MAX else "imagenet")
        in_chans = o.in_chans or source.preprocess.num_channels
        return ModelSpec(arch=o.arch or "resnet18", **classes, in_chans=in_chans, stem=stem, width=o.width or 64)

    def _transfer(self, model: "nn.Module", pretrained: "Checkpoint", spec: ModelSpec) -> None:
        replaced = transfer_weights(model, pretrained.state_dict, pretrained.path)
        old = pretrained.spec
        if replaced:
            self.say(f"head replaced: {old.head} with {old.num_classes} outputs → new {spec.head} with {spec.num_classes} outputs")
        self.say(f"started from {pretrained.path} ({old.name}, {pretrained.source} checkpoint, {pretrained.weights} weights)")

    def _optimizer(self, params: list) -> "torch.optim.Optimizer":
        import torch

        o = self.o
        lr = o.lr or DEFAULT_LR[o.optimizer]
        wd = DEFAULT_WEIGHT_DECAY[o.optimizer] if o.weight_decay is None else o.weight_decay
        if o.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
        cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, weight_decay=wd)

    # -- outputs ---------------------------------------------------------------------------

    def save(self, name: str, model: "nn.Module", spec: ModelSpec, pre: Preprocess, record: dict[str, Any]) -> Path:
        return save_checkpoint(self.out / name, model, spec, pre, record)

    def _test(self, source: "DataSource") -> float | None:
        """Accuracy of ``best.pth`` on the test split, through the same engine ``rtk eval`` uses."""
        if not source.has("test"):
            return None

        with open_engine(EngineRequest.of(self.out / "best.pth")) as engine:
            report = evaluate(engine, source.dataset("test", engine.preprocess), 256, source.class_names)
        return report.accuracy

    def write_history(self, history: list[dict], best: dict, test_acc: float | None = None, seconds: float | None = None) -> None:
        """history.json: options, best epoch, per-epoch rows; test accuracy and wall time once finished."""
        payload = {
            "options": self.o.to_dict(),
            "best": best,
            "test_acc": test_acc,
            "seconds": round(seconds, 2) if seconds is not None else None,
            "epochs": history,
        }
        write_atomic(self.out / "history.json", json.dumps(payload, indent=2) + "\n")


class _StopRequest:
    """Set by the first Ctrl-C; the loop stops at its next step boundary."""

    requested = False

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


@contextmanager
def _stop_on_interrupt(enabled: bool = True):
    """Turn the first Ctrl-C into a request the loop honours between steps.

    A SIGINT delivered at an arbitrary bytecode can land inside a lazy import (matplotlib's, when
    the first curves are plotted) or a library's ``__set_name__``, which re-raises it as some other
    error and ends the run with a traceback instead of exit status 130. Deferring it to a step
    boundary makes the interrupt always clean; a second Ctrl-C stops at once. Under ``torchrun``
    (``enabled=False``) every rank gets the signal and must stop together, so it stays immediate.
    """
    stop = _StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        warn("stopping after the current step (Ctrl-C again to stop now)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


class _Loop:
    """The epoch loop: train one epoch, validate, checkpoint, plot."""

    stop = _StopRequest()

    def __init__(self, run: _Run, net, model, spec, pre, source, optimizer, scaler, memory_format, device):
        import torch

        self.job, self.net, self.model, self.spec, self.pre = run, net, model, spec, pre
        self.optimizer, self.scaler, self.memory_format, self.device = optimizer, scaler, memory_format, device
        o, ctx = run.o, run.ctx
        self.o, self.ctx = o, ctx
        self.train_set = source.dataset("train", pre, augment=True)
        self.val_set = source.dataset("val", pre)
        self.source_name = source.name
        self.workers = o.workers if o.workers is not None else (4 if device.type == "cuda" else 0)
        per_rank = len(self.train_set) // ctx.world_size
        if per_rank < 2:
            each = f" per process ({ctx.world_size} processes)" if ctx.distributed else ""
            raise RtkError(
                f"{source.name} leaves {per_rank} training image(s){each}, but a training batch needs at least 2 "
                f"for BatchNorm; add training images"
            )
        # A last batch of one image breaks BatchNorm; drop the ragged end when there is more than one batch.
        self.drop_last = per_rank > o.batch_size
        self.steps_per_epoch = max(1, per_rank // o.batch_size if self.drop_last else -(-per_rank // o.batch_size))
        self.total_steps = self.steps_per_epoch * o.epochs
        self.warmup_steps = round(o.warmup_epochs * self.steps_per_epoch)
        self.base_lr = o.lr or DEFAULT_LR[o.optimizer]
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=o.label_smoothing)
        self.autocast = dict(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda" and o.amp)

    def loader(self, epoch: int):
        import torch
        from torch.utils.data import DataLoader, DistributedSampler

        # Seeding per epoch (and rank) makes a resumed run see the same batches as an uninterrupted one.
        torch.manual_seed(self.o.seed * 100_003 + epoch * 1_009 + self.ctx.rank)
        generator = torch.Generator().manual_seed(self.o.seed * 100_003 + epoch)
        sampler = None
        if self.ctx.distributed:
            sampler = DistributedSampler(self.train_set, self.ctx.world_size, self.ctx.rank, shuffle=True, seed=self.o.seed, drop_last=True)
            sampler.set_epoch(epoch)
        return DataLoader(
            self.train_set,
            batch_size=self.o.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=generator,
            drop_last=self.drop_last,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def set_train_mode(self) -> None:
        self.net.train()
        if self.o.freeze == "backbone":
            # Frozen layers keep their BatchNorm statistics too: only the head may change.
            for name, module in self.model.named_children():
                if name != "fc":
                    module.eval()

    def run(self, start_epoch: int, history: list[dict], best: dict) -> tuple[list[dict], dict]:
        for epoch in range(start_epoch, self.o.epochs):
            t0 = time.perf_counter()
            train_loss, train_acc, lr = self.train_epoch(epoch)
            val_loss, val_acc = self.validate()
            if not math.isfinite(val_loss):
                raise RtkError(
                    f"the validation loss became {val_loss} at epoch {epoch + 1}: the weights hold NaN/Inf, so this epoch "
                    f"is not saved; lower --lr (now {self.base_lr:g})"
                )
            row = {
                "epoch": epoch + 1,
                "train_loss": round(train_loss, 6),
                "train_acc": round(train_acc, 6),
                "val_loss": round(val_loss, 6),
                "val_acc": round(val_acc, 6),
                "lr": lr,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            history = [*history, row]
            improved = val_acc > best["val_acc"]
            if improved:
                best = {"epoch": epoch + 1, "val_acc": val_acc}
            if self.job.main:
                self.checkpoint(row, history, best, improved)
                info(
                    f"epoch {epoch + 1}/{self.o.epochs}  train loss {train_loss:.4f} acc {train_acc:.2%}  "
                    f"val loss {val_loss:.4f} acc {val_acc:.2%}  lr {lr:.2e}  {row['seconds']:.1f} s" + ("  ★ best" if improved else "")
                )
            barrier(self.ctx)
            self.stop.check()
        return history, best

    def train_epoch(self, epoch: int) -> tuple[float, float, float]:
        import torch

        self.set_train_mode()
        loss_sum = correct = seen = 0.0
        lr = self.base_lr
        with ProgressBar(
            self.steps_per_epoch, f"epoch {epoch + 1}/{self.o.epochs}", self.job.main and self.o.progress,
            "loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}", loss=0.0, acc=0.0,
        ) as bar:
            for i, (x, y) in enumerate(self.loader(epoch)):
                step = epoch * self.steps_per_epoch + i
                lr = set_lr(self.optimizer, self.base_lr, lr_factor(step, self.total_steps, self.warmup_steps, self.o.schedule))
                x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
                y = y.to(self.device, non_blocking=True)
                with torch.autocast(**self.autocast):
                    logits = self.net(x)
                    loss = self.criterion(logits, y)
                if not torch.isfinite(loss):
                    raise RtkError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; lower --lr (now {self.base_lr:g})")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                n = y.numel()
                loss_sum += loss.item() * n
                correct += (logits.argmax(1) == y).sum().item()
                seen += n
                bar.advance(loss=loss_sum / seen, acc=correct / seen)
                self.stop.check()
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], self.ctx)
        return loss_sum / max(seen, 1), correct / max(seen, 1), lr

    def validate(self) -> tuple[float, float]:
        """Validation loss and accuracy; each process scores its share, then the sums are combined."""
        import torch
        import torch.nn.functional as F

        self.net.eval()
        indices = range(self.ctx.rank, len(self.val_set), self.ctx.world_size)
        loss_sum = correct = 0.0
        batch = max(self.o.batch_size, 256)
        with torch.inference_mode():
            for start in range(0, len(indices), batch):
                items = [self.val_set[i] for i in indices[start : start + batch]]
                x = torch.stack([t for t, _ in items]).to(self.device).contiguous(memory_format=self.memory_format)
                y = torch.tensor([label for _, label in items], device=self.device)
                with torch.autocast(**self.autocast):
                    logits = self.model(x).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
                self.stop.check()
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, float(len(indices))], self.ctx)
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    def checkpoint(self, row: dict, history: list[dict], best: dict, improved: bool) -> None:
        record = {
            "epoch": row["epoch"],
            "epochs": self.o.epochs,
            "metrics": {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
            "best": best,
            "data": self.source_name,
            "seed": self.o.seed,
            "args": self.o.to_dict(),
        }
        if improved:
            self.job.save("best.pth", self.model, self.spec, self.pre, record)
        state = {"optimizer": self.optimizer.state_dict(), "history": history}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        self.job.save("last.pth", self.model, self.spec, self.pre, {**record, **state})
        self.job.write_history(history, best)
        save_curves(history, self.job.out / "curves.png", title=f"{self.spec.name} on {Path(self.source_name).name}")


def transfer_weights(model: "nn.Module", state: dict[str, "torch.Tensor"], source: Path | str | None = None) -> bool:
    """Load pretrained weights into ``model``, replacing the head when it does not fit.

    Every backbone tensor must exist in both with the same shape; the head (``fc.*``) is taken
    over only when all of its tensors match (same kind, same number of classes).

    Args:
        model: a freshly created zoo model.
        state: the pretrained ``state_dict`` (torchvision key names).
        source: where it came from, for messages.

    Returns:
        Whether the head was replaced (left freshly initialised).

    Raises:
        RtkError: naming the first backbone tensor that is missing, extra or of another shape.
    """
    where = source or "the pretrained checkpoint"
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = [k for k in own if not k.startswith("fc.") and k not in backbone]
    extra = [k for k in backbone if k not in own]
    if missing or extra:
        detail = f"it lacks {missing[0]}" if missing else f"it has {extra[0]}, which the model does not"
        raise RtkError(f"{where} does not fit the model's backbone: {detail} ({len(missing)} missing, {len(extra)} extra tensors)")
    for key, value in backbone.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise RtkError(f"{where} does not fit the model: {key} is {tuple(value.shape)} there but {tuple(own[key].shape)} here")
    head = {k: v for k, v in state.items() if k.startswith("fc.")}
    own_head = {k: v for k, v in own.items() if k.startswith("fc.")}
    keep_head = head.keys() == own_head.keys() and all(tuple(head[k].shape) == tuple(own_head[k].shape) for k in head)
    model.load_state_dict({**backbone, **(head if keep_head else {})}, strict=False)
    return not keep_head


def format_share(part: int, whole: int) -> str:
    """``part / whole`` as a percentage with two significant digits below 10%, so that a small
    share (a head of 5,130 in 11 million parameters: 0.046%) never reads as 0.0%."""
    if whole <= 0 or part <= 0:
        return "0%"
    percent = 100.0 * part / whole
    decimals = max(1, 1 - math.floor(math.log10(percent)))
    return f"{percent:.{decimals}f}%"


def save_curves(history: list[dict], path: Path, title: str = "training") -> Path:
    """Loss and accuracy per epoch (train and validation) as a PNG."""

    plt = pyplot()

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], style, label=split, markersize=3)
        ax_acc.plot(epochs, [row[f"{split}_acc"] for row in history], style, label=split, markersize=3)
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)
