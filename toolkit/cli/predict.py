"""``rtk predict PATH``: classify a folder (or one image) with any engine."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from engines.request import EngineRequest
from toolkit.cli.onnx_spec import ClassNamesOption, InputSizeOption, MeanOption, StdOption, onnx_meta
from toolkit.cli.options import (
    BatchSizeOption,
    DeviceOption,
    EngineOption,
    TrustPickleOption,
    Weights,
    WeightsOption,
    checkpoint_options,
    number_option,
    path_argument,
    path_option,
)
from toolkit.cli.ray_options import RayAddressOption, RayOption, ReplicasOption, ray_options
from toolkit.core.console import ProgressBar, console, info, warn
from toolkit.core.errors import RtkError
from toolkit.core.images import describe_ignored
from toolkit.core.outputs import Output, check_outputs, write_text
from toolkit.core.validation import COUNT, COUNT_OR_ZERO

if TYPE_CHECKING:
    from toolkit.usecases.predict import PredictResult  # lazy: for type checkers only

#: Exit status when some files could not be read but the rest were classified and written.
EXIT_PARTIAL = 2


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


#: The suffixes an --output file of each format may have ("" = none, e.g. /dev/stdout).
FORMAT_SUFFIXES = {
    OutputFormat.table: (".txt", ".log", ""),
    OutputFormat.json: (".json", ""),
    OutputFormat.jsonl: (".jsonl", ".ndjson", ""),
    OutputFormat.csv: (".csv", ""),
}


ModelOption = Annotated[
    Optional[Path],
    path_option("--model", "-m", help="Checkpoint, ONNX file or TensorRT engine. Default: $RTK_MODEL, then model = \"…\" "
                "in rtk.toml (image folder, then working directory), then the only model file in the working directory."),
]
FormatOption = Annotated[
    Optional[OutputFormat], typer.Option("--format", "-f", help="Output format (default: from the -o suffix .json/.jsonl/.csv, else table).")
]
WorkersOption = Annotated[
    Optional[int], number_option(COUNT_OR_ZERO, "--workers", help="Decoding threads; 0 decodes in the main thread (default: one per core, at most 8).")
]
ConfusionPngOption = Annotated[
    Optional[Path], path_option("--confusion-png", help="For a labelled folder (<class>/image), save the confusion matrix as this PNG.")
]


def predict(
    path: Annotated[Path, path_argument(help="A folder of images, or one image file.")],
    model: ModelOption = None,
    engine: EngineOption = None,
    device: DeviceOption = "cpu",
    top_k: Annotated[int, number_option(COUNT, "--top-k", "-k", help="Classes listed per image.")] = 5,
    batch_size: BatchSizeOption = None,
    fmt: FormatOption = None,
    output: Annotated[Optional[Path], path_option("--output", "-o", help="Write the output to this file (atomically) instead of stdout.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also classify images in subfolders, at any depth.")] = False,
    workers: WorkersOption = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop with an error at the first unreadable file, writing nothing.")] = False,
    confusion_png: ConfusionPngOption = None,
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
    """Classify a folder of images, or one image, with any engine.

    Reads jpg, png, bmp, gif (first frame), tiff and webp, with any case of suffix; EXIF orientation is honoured.
    Files with an image suffix that cannot be read (corrupt, truncated, empty, not an image) are listed on stderr
    with the reason and skipped; files without an image suffix (notes.txt, photo.heic) are named on stderr as ignored.
    A folder of class folders (<class>/image, as rtk train, eval and parity read it) is labelled by folder and, where
    the folder names are the model's classes, scored: accuracy and confusion matrix.

    With --ray the same run goes to a Ray cluster (a new local instance by default) and gives the same output.

    Exit status: 0 all classified; 2 some files skipped (the rest classified and written); 1 error, nothing
    written; 64 a usage error.
    """
    from toolkit.usecases.opening import open_engine  # lazy: numpy
    from toolkit.usecases.predict import PredictOptions, default_workers, resolve_model  # lazy: numpy
    from toolkit.usecases.predict import predict as run  # lazy: numpy
    from toolkit.usecases.ray_inference import predict_on_ray  # lazy: numpy

    on_ray = ray_options(ray, ray_address, replicas, workers)
    options = PredictOptions(top_k, batch_size, default_workers() if workers is None else workers, recursive, strict)
    fmt = fmt or _format_from_suffix(output)
    model_path = resolve_model(model, path)
    check_outputs(
        [
            Output(output, "--output", FORMAT_SUFFIXES[fmt], f"the {fmt.value} format") if output else None,
            Output(confusion_png, "--confusion-png", (".png",), "a PNG image") if confusion_png else None,
        ],
        [path, model_path],
    )
    loading = checkpoint_options(weights, trust_pickle)
    meta = onnx_meta(model_path, input_size, class_names, mean, std)
    request = EngineRequest.of(model_path, engine, device=device, checkpoint_options=loading, meta=meta)
    with open_engine(request) as loaded, _Progress() as progress:
        if on_ray is None:
            result = run(path, loaded, options, progress)
        else:
            result = predict_on_ray(path, loaded, request, options, on_ray, progress)
    _write(result, fmt, output, confusion_png, model_path, path)
    if result.failures:
        raise typer.Exit(EXIT_PARTIAL)


def _write(result: "PredictResult", fmt: OutputFormat, output: Path | None, confusion_png: Path | None, model_path: Path, path: Path) -> None:
    """The results on stdout or in ``--output``, the confusion matrix, and the summary on stderr."""
    from toolkit.usecases.predict import format_predictions  # lazy: numpy
    for p in result.failures:
        warn(f"skipped {p.path}: {p.error}")
    if not result.classified:
        raise RtkError(f"none of the {len(result.predictions)} file(s) could be read")
    text = _render_table(result) if fmt is OutputFormat.table else format_predictions(result, fmt.value)
    if output:
        write_text(output, text)
    else:
        typer.echo(text, nl=False)
    if confusion_png and result.evaluation is not None:
        result.evaluation.save_confusion_png(confusion_png, title=f"{model_path.name} on {result.root.name}")
    elif confusion_png:
        warn(f"no confusion matrix: no image of {path} lies in a class folder named after one of the model's classes")
    _report(result, model_path, output, info)


def _format_from_suffix(output: Path | None) -> OutputFormat:
    suffix = output.suffix.lower().lstrip(".") if output else ""
    return OutputFormat(suffix) if suffix in ("json", "jsonl", "csv") else OutputFormat.table


def _report(result: "PredictResult", model_path: Path, output: Path | None, info) -> None:
    """Summary lines on stderr, so stdout holds only the results."""
    failed = f", {len(result.failures)} skipped" if result.failures else ""
    info(
        f"classified {result.classified} image(s){failed} in {result.seconds:.2f} s: "
        f"{result.images_per_s:.1f} images/s ({result.engine} on {result.device}, {model_path.name})"
    )
    if result.ignored:
        info(describe_ignored(result.ignored, result.root))
    ev = result.evaluation
    for note in result.notes:
        warn(note)
    if ev is not None:
        info(f"accuracy {ev.accuracy:.2%} ({ev.correct}/{ev.total} images in class folders)")
    if output:
        info(f"wrote {output}")


def _render_table(result: "PredictResult") -> str:
    """The predictions (and, for a labelled folder, accuracy and confusion matrix) as text tables."""
    from rich.console import Console
    from rich.table import Table

    buf = Console(record=True, width=console.width if console.is_terminal else 120, file=_Null())
    table = Table(title=f"{result.classified} image(s) in {result.root}", title_justify="left")
    labelled = any(p.label is not None for p in result.predictions)
    for name, kw in [("path", {"overflow": "fold"}), *([("label", {})] if labelled else []), ("top-1", {}), ("prob", {"justify": "right"}), ("top-k", {"overflow": "fold"})]:
        table.add_column(name, **kw)
    for p in result.predictions:
        row = result.row(p)
        label = [row["label"] or "—"] if labelled else []
        if p.error:
            table.add_row(row["path"], *label, "[red]error[/red]", "", p.error)
            continue
        mark = "" if row["label"] not in result.class_names else (" ✓" if row["label"] == row["top1"] else " ✗")
        rest = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in row["top_k"][1:])
        table.add_row(row["path"], *label, f"{row['top1']}{mark}", f"{row['top1_prob']:.3f}", rest)
    buf.print(table)
    ev = result.evaluation
    if ev is not None:
        n = len(ev.class_names)
        matrix = Table(title=f"accuracy {ev.accuracy:.2%} ({ev.correct}/{ev.total}); rows actual, columns predicted", title_justify="left")
        matrix.add_column("actual \\ predicted")
        for name in ev.class_names:
            matrix.add_column(name, justify="right")
        matrix.add_column("recall", justify="right")
        for i, (name, acc) in enumerate(ev.per_class_accuracy().items()):
            cells = [str(ev.confusion[i, j]) if ev.confusion[i, j] else "·" for j in range(n)]
            matrix.add_row(name, *cells, "—" if acc is None else f"{acc:.0%}")
        buf.print(matrix)
    return buf.export_text(styles=console.is_terminal)


class _Null:
    """A file that discards writes (the recording console only needs its export)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _Progress:
    """Progress of a folder run on stderr, for folders of more than a few batches."""

    MIN_IMAGES = 200

    def __init__(self):
        self._bar: ProgressBar | None = None
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = ProgressBar(total, "classifying", total >= self.MIN_IMAGES).__enter__()
        self._bar.advance(done - self._done)
        self._done = done

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
