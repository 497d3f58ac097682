"""``rtk demo``: the whole pipeline on the embedded digits data, end to end.

train → export (fp32 and fp16 ONNX, and int8 QDQ calibrated on the digits' training split) →
parity (eager, ort, ort-fp16, ort-int8, trt when available) → bench (eager vs ort vs ort-int8) →
predict on a folder of sample images → a closing summary. Every step is
the same library call the individual commands make, so the demo shows what the product does,
not a separate code path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from benchmarks.harness import BenchOptions, BenchReport
from benchmarks.report import progress_line, write_report
from engines.request import EngineRequest
from exporters.int8 import CalibOptions
from exporters.onnx import ExportOptions, export_onnx
from toolkit.core.data import write_digit_images
from toolkit.core.distributed import resolve_device
from toolkit.core.errors import RtkError
from toolkit.core.files import os_error
from toolkit.core.outputs import write_text
from toolkit.core.spec import ARCHS
from toolkit.core.validation import COUNT, POSITIVE, TRAINING_BATCH, UsageError
from toolkit.usecases.bench import benchmark_model
from toolkit.usecases.opening import open_engine
from toolkit.usecases.parity import ParityOptions, ParityReport, run_parity
from toolkit.usecases.predict import PredictOptions, PredictResult, format_predictions, predict
from toolkit.usecases.train import TrainOptions, TrainResult, train

#: Sub-folders the demo owns inside its output folder; a re-run replaces exactly these.
DEMO_PARTS = ("train", "bench", "samples", "predictions")
#: The file by which an output folder is known as the demo's, so that its sub-folders may be replaced.
DEMO_MARKER = ".rtk-demo"
#: A file each sub-folder of an earlier run holds, for folders from before the marker existed.
_PART_SIGNATURES = {"train": "history.json", "bench": "bench.json", "samples": "0", "predictions": "predictions.csv"}
#: The engine the sample folder is classified with.
PREDICT_ENGINE = "ort"


@dataclass(frozen=True)
class DemoOptions:
    """Settings of a demo run.

    Attributes:
        out: output folder (its demo sub-folders are replaced on a re-run).
        arch: architecture to train.
        epochs: training epochs; the training default when omitted.
        device: ``auto``, ``cpu`` or ``cuda``.
        bench_batch_sizes: batch sizes for the eager vs ort benchmark.
        bench_seconds: timed seconds per engine and batch size.
        samples_per_class: sample images written per digit for ``predict``.
        max_samples: limit every data split (for quick smoke runs); ``None`` uses all digits.
        progress: show progress bars.
    """

    out: Path = Path("rtk-demo")
    arch: str = "resnet18"
    epochs: int | None = None
    device: str = "auto"
    bench_batch_sizes: tuple[int, ...] = (1, 64)
    bench_seconds: float = 3.0
    samples_per_class: int = 10
    max_samples: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        # Every option is checked here, before run_demo clears the previous run's folders: a
        # typo must not cost the results already on disk.
        if self.arch not in ARCHS:
            raise UsageError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        for flag, value, rule in (
            ("--epochs", self.epochs, COUNT), ("--max-samples", self.max_samples, TRAINING_BATCH),
            ("--bench-seconds", self.bench_seconds, POSITIVE), ("samples per class", self.samples_per_class, COUNT),
        ):
            rule.check(value, flag)
        if not self.bench_batch_sizes:
            raise UsageError("the demo's benchmark needs at least one batch size")
        for size in self.bench_batch_sizes:
            COUNT.check(size, "a benchmark batch size")


@dataclass
class DemoResult:
    """What a demo run produced and measured."""

    out: Path
    train: "TrainResult"
    onnx: list[Path]
    parity: "ParityReport"
    bench: "BenchReport"
    bench_files: list[Path]
    predict: "PredictResult"
    predictions_file: Path
    seconds: float
    step_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every parity check passed and every sample image was classified."""
        return self.parity.passed and not self.predict.failures

    def artefacts(self) -> dict[str, Path]:
        """Every file the demo wrote that a user may want to open, by what it is."""
        files = {
            "checkpoint (best)": self.train.best,
            "checkpoint (last)": self.train.last,
            "training history": self.train.out / "history.json",
            "training curves": self.train.out / "curves.png",
        }
        for path in self.onnx:
            kind = next((k for k in ("int8.u8", "fp16", "int8") if path.name.endswith(f".{k}.onnx")), "fp32")
            files[f"ONNX {'int8 (uint8 activations, ort-int8 and ov-int8)' if kind == 'int8.u8' else kind}"] = path
        for path in self.bench_files:
            files[f"benchmark {path.suffix[1:].upper()}"] = path
        files["sample images"] = self.predict.root
        files["predictions CSV"] = self.predictions_file
        files["confusion matrix"] = self.predictions_file.with_name("confusion.png")
        return files

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per engine: accuracy on the digits test split, parity verdict, images/s."""
        rows: dict[str, dict[str, Any]] = {}
        reference_acc = None
        for r in self.parity.results:
            data = r.data
            reference_acc = data.reference_accuracy if data else reference_acc
            rows[r.engine] = {
                "engine": r.engine,
                "accuracy": data.accuracy if data else None,
                "parity": "pass" if r.passed else "FAIL",
                "cosine": (data or r.random).min_cosine,
                "top1_agreement": (data or r.random).top1_agreement,
            }
        rows.setdefault("eager", {"engine": "eager", "parity": "reference", "cosine": 1.0, "top1_agreement": 1.0})
        rows["eager"].update(accuracy=reference_acc, parity="reference")
        for row in self.bench.results:
            if row.status != "ok" or row.io != "host":
                continue
            entry = rows.setdefault(row.engine, {"engine": row.engine})
            entry[f"images_per_s@{row.batch_size}"] = row.throughput_ips
        return [rows["eager"], *(v for k, v in rows.items() if k != "eager")]


def trt_available() -> bool:
    """TensorRT is installed and a CUDA GPU is present, so the trt engine can join."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


def run_demo(options: DemoOptions, log: Callable[[str], None] = print) -> DemoResult:
    """Run the whole pipeline on the digits data.

    Args:
        options: what to train and how long to benchmark.
        log: receives one line per step (the CLI prints them on stderr).

    Returns:
        Everything produced, with the figures the summary shows.
    """

    # An unknown device, or cuda on a machine without a GPU, fails before anything is cleared.
    resolve_device(options.device)
    out = Path(options.out)
    _prepare(out)
    started = time.perf_counter()
    steps = _Steps(log)

    with steps("train", f"1/5 train {options.arch} on the digits data"):
        trained = _train(out, options)
    log(f"  test accuracy {_pct(trained.test_acc)} (best epoch {trained.best_epoch}), {trained.seconds:.0f} s")
    checkpoint = trained.best

    with steps("export", "2/5 export fp32, fp16 and int8 ONNX (int8: both layouts, calibrated on the digits' training split; "
                         "each file checked against eager before it is kept)"):  # fmt: skip
        onnx_files = export_onnx(checkpoint, options=ExportOptions(precision="all"))
        int8 = _export_int8(checkpoint, options, log)
        onnx_files += int8
    log("  " + ", ".join(str(p) for p in onnx_files))

    engines = ["ort", "ort-fp16"] + (["ort-int8"] if int8 else []) + (["trt"] if trt_available() else [])
    with steps("parity", f"3/5 parity of {', '.join(engines)} against eager fp32 on random inputs and the digits test images"):
        device = "cuda" if options.device in ("auto", "cuda") and trt_available() else "cpu"
        parity = run_parity(checkpoint, ParityOptions(engines=tuple(engines), data="digits", max_samples=options.max_samples, device=device))
    log("  " + ("all engines pass" if parity.passed else f"FAILED: {', '.join(parity.failed)}"))

    bench_engines = ("eager", "ort") + (("ort-int8",) if int8 else ())
    with steps("bench", f"4/5 benchmark {' vs '.join(bench_engines)} at batch {', '.join(map(str, options.bench_batch_sizes))}"):
        bench = _bench(checkpoint, bench_engines, options, log)
        bench_files = write_report(bench.to_dict(), out / "bench", name="bench")

    with steps("predict", f"5/5 classify a folder of sample digit images with {PREDICT_ENGINE}"):
        predicted, predictions_file = _predict(out, onnx_files[0], options)

    return DemoResult(
        out=out,
        train=trained,
        onnx=onnx_files,
        parity=parity,
        bench=bench,
        bench_files=bench_files,
        predict=predicted,
        predictions_file=predictions_file,
        seconds=time.perf_counter() - started,
        step_seconds=steps.seconds,
    )


class _Steps:
    """Announces each step of the demo and times it: ``with steps("train", "1/5 train …"):``."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, text: str) -> Iterator[None]:
        self.log(f"▶ {text}")
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started


def _train(out: Path, options: DemoOptions) -> TrainResult:
    """Step 1: the digits model, trained into ``out/train``."""
    epochs: dict[str, Any] = {"epochs": options.epochs} if options.epochs else {}
    return train(
        TrainOptions(
            data="digits", arch=options.arch, out=out / "train", device=options.device, max_samples=options.max_samples,
            progress=options.progress, **epochs,
        )
    )


def _bench(checkpoint: Path, engines: tuple[str, ...], options: DemoOptions, log: Callable[[str], None]) -> BenchReport:
    """Step 4: each engine at each batch size, a line per engine and batch size as each finishes
    (the step takes several seconds each)."""
    bench_options = BenchOptions(
        engines=engines, batch_sizes=options.bench_batch_sizes, warmup_s=min(1.0, options.bench_seconds), duration_s=options.bench_seconds,
    )
    return benchmark_model(checkpoint, bench_options, progress=lambda row: log(progress_line(row)))


def _predict(out: Path, onnx_file: Path, options: DemoOptions) -> tuple[PredictResult, Path]:
    """Step 5: sample digit images written to ``out/samples``, classified, the predictions (and the
    confusion matrix) written to ``out/predictions``."""
    samples = out / "samples"
    write_digit_images(samples, "test", per_class=options.samples_per_class)
    with open_engine(EngineRequest.of(onnx_file, PREDICT_ENGINE)) as engine:
        predicted = predict(samples, engine, PredictOptions(top_k=3))
    predictions_file = write_text(out / "predictions" / "predictions.csv", format_predictions(predicted, "csv"))
    if predicted.evaluation is not None:
        predicted.evaluation.save_confusion_png(predictions_file.with_name("confusion.png"), title="predict on sample images")
    return predicted, predictions_file


def _export_int8(checkpoint: Path, options: DemoOptions, log: Callable[[str], None]) -> list[Path]:
    """The int8 ONNX calibrated on the digits' training split, or nothing when it fails its check.

    A model trained for a few steps (a smoke run) can miss int8's bar of 99% top-1 agreement;
    the demo then says so and goes on without the int8 engine, as a user's export would refuse it.
    """

    calib = CalibOptions("digits", samples=min(256, options.max_samples or 256))
    try:
        return export_onnx(checkpoint, options=ExportOptions(precision="int8", calib=calib, progress=options.progress))
    except RtkError as exc:
        log(f"  int8 left out: {exc}")
        return []


def _prepare(out: Path) -> None:
    """Make ``out`` ready for a run, replacing only what an earlier demo wrote there."""
    if out.exists() and not out.is_dir():
        raise RtkError(f"{out} is a file; the demo needs a folder for its output")
    ours = (out / DEMO_MARKER).is_file()
    for part in DEMO_PARTS:
        if (out / part).exists() and not ours and not (out / part / _PART_SIGNATURES[part]).exists():
            raise RtkError(f"{out / part} exists and was not written by rtk demo, so it is not replaced; give another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / DEMO_MARKER).touch()
        for part in DEMO_PARTS:
            target = out / part
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    except OSError as exc:
        raise os_error(exc, out, "prepare the demo folder") from None


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"
