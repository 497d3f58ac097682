"""``rtk bench MODEL``: throughput and latency of every engine, side by side."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from engines.names import parse_engines
from toolkit.cli.onnx_spec import ClassNamesOption, InputSizeOption, MeanOption, StdOption, onnx_meta
from toolkit.cli.options import (
    DeviceOption,
    EnginesOption,
    ModelArgument,
    RunTimePrecision,
    TrustPickleOption,
    Weights,
    WeightsOption,
    checkpoint_options,
    int_list,
    number_list_option,
    number_option,
    path_option,
)
from toolkit.core.console import info, results_console
from toolkit.core.defaults import DEFAULT_BATCH_SIZES
from toolkit.core.errors import RtkError
from toolkit.core.outputs import Output, check_outputs
from toolkit.core.trt.sidecar import sidecar_path
from toolkit.core.validation import COUNT, NON_NEGATIVE, POSITIVE, UsageError, check_name


def _listed(sizes: tuple[int, ...]) -> str:
    return ",".join(map(str, sizes))


def _name(value: Optional[str]) -> Optional[str]:
    """``--name`` is a file stem inside ``--out``: a name, never a path that would write elsewhere."""
    return check_name(value, "--name")


#: ``--batch-size``: the sweep, whose default depends on the device.
BatchSizesOption = Annotated[
    Optional[str],
    number_list_option(
        COUNT, "--batch-size", "--batch-sizes", "-b",
        help=f"Comma-separated batch sizes (default: {_listed(DEFAULT_BATCH_SIZES['cpu'])} on cpu, {_listed(DEFAULT_BATCH_SIZES['cuda'])} on cuda).",
    ),
]


class Io(str, Enum):
    host = "host"
    device = "device"
    both = "both"


def bench(
    model: ModelArgument,
    engine: EnginesOption = None,
    batch_size: BatchSizesOption = None,
    device: DeviceOption = "cpu",
    precision: Annotated[
        Optional[RunTimePrecision],
        typer.Option(help="Precision of engines named without one (eager → eager-fp16, ort → ort-fp16; default: fp16 for trt and ort-trt, fp32 otherwise)."),
    ] = None,
    warmup: Annotated[float, number_option(NON_NEGATIVE, "--warmup", help="Untimed warm-up seconds per engine and batch size.")] = 1.0,
    duration: Annotated[Optional[float], number_option(POSITIVE, "--duration", help="Timed seconds per engine and batch size (default: 3).")] = None,
    iters: Annotated[Optional[int], number_option(COUNT, "--iters", help="Exactly N timed iterations instead of a time budget (in total, split over --rounds).")] = None,
    threads: Annotated[Optional[int], number_option(COUNT, "--threads", help="Intra-op threads for torch, ONNX Runtime and OpenVINO (default: all usable cores).")] = None,
    io: Annotated[
        Optional[Io],
        typer.Option("--io", help="host: numpy in/out (host-to-host); device: tensors stay on the device; both (default: host on cpu, both on cuda)."),
    ] = None,
    rounds: Annotated[int, number_option(COUNT, "--rounds", help="Repeat the sweep N times with engines interleaved and pool the samples (steadier on a busy machine).")] = 1,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Add eager fp32 (checkpoints only) so every engine gets a speed-up.")] = True,
    out: Annotated[Optional[Path], path_option("--out", "-o", help="Write NAME.json, NAME.csv and NAME.png (plot) into this folder.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", callback=_name, help="File stem for --out, a name, not a path (default: model and device, e.g. resnet50-cpu-amd-epyc-2c).")] = None,
    weights: WeightsOption = Weights.ema,
    trust_pickle: TrustPickleOption = False,
    input_size: InputSizeOption = None,
    class_names: ClassNamesOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
) -> None:
    """Benchmark engines on a model: images/s, latency mean/p50/p90/p99/min/max, speed-up over eager fp32.

    Warm-up first, device synchronised before every clock read, then a time budget (or --iters) per engine and batch size.
    On CUDA also the H2D / compute / D2H split (CUDA events) and peak device memory.
    Engines that cannot run here are listed with the reason; an out-of-memory batch size is reported and the sweep goes on.
    With --out DIR: NAME.json (schema: benchmarks/schema.json), NAME.csv and NAME.png.
    """
    from benchmarks.harness import BenchOptions  # lazy: numpy
    from benchmarks.report import check_out_dir, progress_line, render_table, report_name, write_report  # lazy: numpy
    from toolkit.usecases.bench import benchmark_model  # lazy: numpy

    if duration is not None and iters is not None:
        raise UsageError("give --duration or --iters, not both")
    if out is not None:
        check_out_dir(out)
        if name:
            _check_report_files(out, name, model)
    options = BenchOptions(
        engines=tuple(str(n) for n in parse_engines(engine)) if engine and engine.strip() else (),
        batch_sizes=int_list(batch_size, "--batch-size") or None,
        device=device,
        precision=precision.value if precision else None,
        warmup_s=warmup,
        duration_s=duration if duration is not None else BenchOptions.duration_s,
        iters=iters,
        threads=threads,
        io=io.value if io else None,
        rounds=rounds,
        baseline=baseline,
        checkpoint_options=checkpoint_options(weights, trust_pickle),
    )
    meta = onnx_meta(model, input_size, class_names, mean, std)
    report = benchmark_model(model, options, progress=lambda row: info(progress_line(row)), meta=meta).to_dict()
    results_console().print(render_table(report))
    if out is not None:
        _check_report_files(out, name or report_name(report), model)
        for path in write_report(report, out, name):
            info(f"wrote {path}")
    if not any(row.get("status") == "ok" for row in report.get("results", [])):
        raise RtkError("no engine produced a result; the reason for each is in the table above")


def _check_report_files(out: Path, name: str, model: Path) -> None:
    """NAME.json/.csv/.png must not be the model or its engine sidecar (``--name MODEL.engine`` would be)."""

    check_outputs([Output(out / f"{name}{suffix}", "--out/--name") for suffix in (".json", ".csv", ".png")], [model, sidecar_path(model)])

