"""``rtk demo``: train → export → parity → bench → predict on the embedded digits data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.cli.options import check_auto_device, number_option, path_option
from toolkit.core.console import console, err_console, info
from toolkit.core.validation import COUNT, POSITIVE, TRAINING_BATCH


def demo(
    out: Annotated[Path, path_option("--out", "-o", help="Output folder; its demo sub-folders are replaced on a re-run.")] = Path("rtk-demo"),
    arch: Annotated[str, typer.Option(help="Architecture to train.")] = "resnet18",
    epochs: Annotated[Optional[int], number_option(COUNT, "--epochs", help="Training epochs (the training default when omitted).")] = None,
    device: Annotated[str, typer.Option(callback=check_auto_device, help="auto, cpu or cuda.")] = "auto",
    bench_seconds: Annotated[float, number_option(POSITIVE, "--bench-seconds", help="Timed seconds per engine and batch size in the benchmark.")] = 3.0,
    max_samples: Annotated[Optional[int], number_option(TRAINING_BATCH, "--max-samples", help="Use at most this many images per data split (quick smoke runs).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Run the whole pipeline on the embedded digits data and summarise it.

    Trains a classifier on scikit-learn's bundled handwritten digits, exports fp32 and fp16
    ONNX and an int8 one calibrated on the training images, checks every runtime against eager
    PyTorch, benchmarks eager against ONNX Runtime (fp32 and int8),
    classifies a folder of sample images, and prints accuracy, parity and images/s per engine
    with the path of every file written. Exits 1 when a parity check fails.
    """
    from toolkit.usecases.demo import DemoOptions, run_demo  # lazy: numpy

    options = DemoOptions(
        out=out, arch=arch, epochs=epochs, device=device, bench_seconds=bench_seconds, max_samples=max_samples, progress=progress
    )
    result = run_demo(options, log=_log)
    _print_summary(result)
    if not result.passed:
        raise typer.Exit(1)


def _log(line: str) -> None:
    """Step headings (``▶ …``) in bold cyan, everything else as plain status lines."""
    from rich.text import Text

    if line.startswith("▶"):
        err_console.print(Text(line, style="bold cyan"), soft_wrap=True)
    else:
        info(line)


def _print_summary(result) -> None:
    from rich import box
    from rich.table import Table

    rows = result.summary_rows()
    batch_keys = sorted({k for r in rows for k in r if k.startswith("images_per_s@")}, key=lambda k: int(k.split("@")[1]))
    # Two-line headers and no outer borders: the table fits 80 columns (a log file, CI) uncut.
    table = Table(title="rtk demo: digits test split", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("engine", "accuracy", "parity", "min\ncosine", "top-1\nagreement", *(f"images/s\nbatch {k.split('@')[1]}" for k in batch_keys)):
        table.add_column(name, justify="left" if name in ("engine", "parity") else "right", no_wrap=True)
    for r in rows:
        parity = r.get("parity", "—")
        style = "green" if parity in ("pass", "reference") else "bold red"
        table.add_row(
            r["engine"],
            _fmt(r.get("accuracy"), "{:.2%}"),
            f"[{style}]{parity}[/{style}]",
            _fmt(r.get("cosine"), "{:.6f}"),
            _fmt(r.get("top1_agreement"), "{:.2%}"),
            *(_fmt(r.get(k), "{:,.0f}") for k in batch_keys),
        )
    console.print(table)
    for line in speed_lines(result.bench.results):
        console.print(line, highlight=False)
    ev = result.predict.evaluation
    console.print(
        f"predict: {result.predict.classified} sample images at {result.predict.images_per_s:,.0f} images/s"
        + (f", accuracy {ev.accuracy:.2%}" if ev is not None else "")
    )
    files = Table(title="files written", show_header=False, title_justify="left")
    files.add_column(style="bold cyan")
    files.add_column(overflow="fold")
    for what, path in result.artefacts().items():
        files.add_row(what, str(path))
    console.print(files)
    console.print(f"demo finished in {result.seconds:.0f} s")


def speed_lines(rows) -> list[str]:
    """One line per engine: its speed over eager fp32 and over its own runtime's fp32 engine, at each
    batch size, with "slower" wherever a ratio is below 1 (``ort-int8 speed: batch 1: 0.35x ort (slower), 2.99x eager; …``)."""
    from benchmarks.report import ratio_text  # lazy: numpy

    lines = []
    engines = dict.fromkeys(r.engine for r in rows if r.status == "ok" and r.io == "host" and r.engine != "eager")
    for engine in engines:
        parts = []
        for row in (r for r in rows if r.engine == engine and r.status == "ok" and r.io == "host"):
            ratios = [ratio_text(row.speedup_vs_eager, "eager")] if row.speedup_vs_eager else []
            if row.speedup_vs_fp32:
                ratios.insert(0, ratio_text(row.speedup_vs_fp32, row.fp32_engine))
            parts.append(f"batch {row.batch_size}: {', '.join(ratios)}")
        lines.append(f"{engine} speed: {'; '.join(parts)}")
    return lines


def _fmt(value, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)
