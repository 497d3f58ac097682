"""``rtk parity MODEL.pth --engine eager,ort,ort-fp16``: do all runtimes give the same answers?"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.cli.onnx_spec import (
    ClassNamesOption,
    InputSizeOption,
    MeanOption,
    StdOption,
    onnx_meta,
)
from toolkit.cli.options import (
    BatchSizesOption,
    DeviceOption,
    EnginesOption,
    MaxSamplesOption,
    TrustPickleOption,
    Weights,
    WeightsOption,
    checkpoint_options,
    int_list,
    number_option,
    path_argument,
    path_option,
)
from toolkit.core.console import console, err_console, info, warn
from toolkit.core.errors import RtkError
from toolkit.core.outputs import Output, check_outputs, json_text, write_atomic
from toolkit.core.validation import COSINE, FRACTION, NON_NEGATIVE, SEED, UsageError

DataOption = Annotated[
    Optional[str],
    typer.Option(help="Real images compared too: a dataset name (digits; its test split), a folder (of images, or of class folders) or a file list; with accuracy where they carry the model's classes (int8 engines are judged on them alone)."),
]
LayersOption = Annotated[
    Optional[Path],
    path_option(
        "--layers", help="Also compare every intermediate tensor of each ONNX-based engine (ort…, ov…) with the fp32 ONNX's on "
        "--data's images, and write ENGINE.layers.json and ENGINE.layers.png into this folder: where precision is lost.",
    ),
]


def parity(
    checkpoint: Annotated[
        Path,
        path_argument(
            metavar="MODEL",
            help="The reference: a checkpoint (.pth, .safetensors, .pt2…, or a Hugging Face model folder), eager fp32 on it being the "
            "truth; or an fp32 ONNX file (another tool's too), the truth then being that file on ONNX Runtime fp32 (CPU).",
        ),
    ],
    engine: EnginesOption = "eager,ort",
    onnx: Annotated[Optional[Path], path_option("--onnx", help="ONNX file for the fp32 ONNX Runtime engines and ort-trt. Default: MODEL.onnx next to the checkpoint (exported when missing or stale).")] = None,
    onnx_fp16: Annotated[Optional[Path], path_option("--onnx-fp16", help="ONNX file for ort-fp16 and ort-cuda-fp16. Default: MODEL.fp16.onnx (exported when missing or stale).")] = None,
    onnx_int8: Annotated[Optional[Path], path_option("--onnx-int8", help="QDQ ONNX file for ort-int8. Default: MODEL.int8.onnx next to the checkpoint (made by rtk export --precision int8 --calib DATA).")] = None,
    trt_engine: Annotated[Optional[Path], path_option("--trt-engine", help="TensorRT engine for trt. Default: MODEL.engine next to the checkpoint, built in fp16 when missing or stale.")] = None,
    data: DataOption = None,
    max_samples: MaxSamplesOption = 500,
    batch_size: BatchSizesOption = "1,4,16",
    seed: Annotated[int, number_option(SEED, "--seed", help="Seed of the random inputs.")] = 0,
    device: DeviceOption = "cpu",
    atol: Annotated[Optional[float], number_option(NON_NEGATIVE, "--atol", help="Absolute tolerance per logit, times the sample's largest |logit| when above 1 (default per precision: fp32 1e-4).")] = None,
    rtol: Annotated[Optional[float], number_option(NON_NEGATIVE, "--rtol", help="Relative tolerance per logit; a logit fails only beyond both (fp32 1e-4).")] = None,
    min_cosine: Annotated[Optional[float], number_option(COSINE, "--min-cosine", help="Lowest per-sample cosine similarity (fp32 0.99999, fp16 0.999, bf16 0.99; int8 reported, not judged).")] = None,
    min_top1: Annotated[Optional[float], number_option(FRACTION, "--min-top1", help="Lowest top-1 agreement (fp32 0.99; fp16 0.95, bf16 0.90 and int8 0.99, judged on real images).")] = None,
    max_accuracy_drop: Annotated[Optional[float], number_option(FRACTION, "--max-accuracy-drop", help="Most the accuracy on --data may fall below eager fp32's, as a fraction (int8 0.01, one point; not judged otherwise).")] = None,
    json_path: Annotated[Optional[Path], path_option("--json", help="Also write the full report as JSON to this file ('-' for stdout only).")] = None,
    layers: LayersOption = None,
    weights: WeightsOption = Weights.ema,
    trust_pickle: TrustPickleOption = False,
    input_size: InputSizeOption = None,
    class_names: ClassNamesOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
) -> None:
    """Compare engines with a reference on identical inputs; exit 1 if any is outside tolerance or could not be judged.

    The reference is eager PyTorch fp32 on a checkpoint, or an ONNX file on ONNX Runtime fp32. Each
    engine is measured on seeded random batches (and real images with --data): max/mean absolute
    and max relative error, the element check (a logit fails only beyond both --atol and --rtol),
    cosine similarity, top-1 agreement, top-5 overlap and accuracy. An engine that cannot run here
    is listed with the reason and the others are still judged.
    """
    from toolkit.core.image_sets import few_judged_warning  # lazy: numpy
    from toolkit.usecases.layers import check_folder, layer_reports, summary_line  # lazy: numpy
    from toolkit.usecases.parity import ParityOptions, run_parity  # lazy: numpy

    options = ParityOptions(
        engines=engine, onnx=onnx, onnx_fp16=onnx_fp16, onnx_int8=onnx_int8, trt_engine=trt_engine, data=data, max_samples=max_samples,
        batch_sizes=int_list(batch_size, "--batch-size"), seed=seed, device=device,
        atol=atol, rtol=rtol, min_cosine=min_cosine, min_top1=min_top1, max_accuracy_drop=max_accuracy_drop,
        checkpoint_options=checkpoint_options(weights, trust_pickle), meta=onnx_meta(checkpoint, input_size, class_names, mean, std),
    )
    to_stdout = json_path is not None and str(json_path) == "-"
    if layers is not None:
        check_folder(layers)
        if data is None:
            raise UsageError("--layers compares every tensor on real images; add --data DATA (a dataset, a folder of images or a file list)")
    if json_path is not None and not to_stdout:
        check_outputs([Output(json_path, "--json", (".json", ""), "JSON")], [checkpoint, onnx, onnx_fp16, onnx_int8, trt_engine, data])
    if not to_stdout:
        info(f"parity of {', '.join(map(str, options.engines))} against {checkpoint}")
    report = run_parity(
        checkpoint, options,
        on_engine=lambda r: info(f"judged {r.engine}: {'pass' if r.passed else 'FAIL'}"),
        on_skip=lambda s: warn(f"{s.engine} is not judged (the reason ends the report)"),
    )  # fmt: skip
    if report.assumed:
        warn(report.assumed)
    if data is not None and report.images:
        few = few_judged_warning(report.images, f"in {data}")
        if few:
            warn(few)
    if to_stdout:
        typer.echo(json_text(report.to_dict()), nl=False)
    else:
        if json_path is not None:
            _write_json(json_path, report.to_dict())
        _print(report, console)
    if layers is not None:
        # With --json - stdout holds the JSON alone, so the per-layer lines go to stderr.
        say = info if to_stdout else (lambda line: console.print(line, highlight=False, markup=False))
        skip = {s.engine for s in report.skipped}
        layer_reports(checkpoint, options, layers, on_report=lambda r: say(summary_line(r)), skip=skip)
    if report.failed and not to_stdout:
        err_console.print(f"[bold red]parity failed:[/bold red] {', '.join(report.failed)}", highlight=False)
    if report.skipped:  # a gate stays shut while an engine asked for was not judged
        judged = f"; {len(report.results)} other engine(s) judged above" if report.results else ""
        raise RtkError(f"parity incomplete: {'; '.join(s.reason for s in report.skipped)}{judged}")
    if not report.passed:
        raise typer.Exit(1)


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json_text(data))  # an OS error is already one sentence


def _print(report, console) -> None:
    from rich.table import Table

    for kind, label in (("random", f"random inputs (batches {', '.join(map(str, report.batch_sizes))}, seed {report.seed})"), ("data", report.data_source)):
        columns = [(r.engine, getattr(r, kind)) for r in report.results if getattr(r, kind) is not None]
        if not columns:
            continue
        unjudged = any(set(_JUDGED_BY.values()) - set(m.judged) for _, m in columns)
        caption = "* reported, not judged: the verdict rests on the other measures" if unjudged else None
        table = Table(title=f"{label} vs {report.reference}", title_justify="left", caption=caption, caption_justify="left")
        table.add_column("metric")
        for engine, _ in columns:
            table.add_column(engine, justify="right")
        rows = [
            ("samples", lambda m: str(m.samples)),
            ("max abs error", lambda m: _number(m.max_abs, ".2e")),
            ("mean abs error", lambda m: _number(m.mean_abs, ".2e")),
            ("max rel error", lambda m: _number(m.max_rel, ".2e")),
            ("logits beyond atol+rtol", lambda m: str(m.failed_elements)),
            ("cosine (min)", lambda m: _number(m.min_cosine, ".6f")),
            ("top-1 agreement", lambda m: f"{m.top1_agreement:.2%}"),
            ("top-5 overlap", lambda m: f"{m.top5_overlap:.2%}"),
        ]
        if kind == "data" and any(m.accuracy is not None for _, m in columns):
            rows.append(("accuracy (Δ)", lambda m: f"{m.accuracy:.2%} ({m.accuracy_delta:+.2%})"))
        rows.append(("result", lambda m: "[green]pass[/green]" if m.passed else "[bold red]FAIL[/bold red]"))
        for name, cell in rows:
            judged_as = _JUDGED_BY.get(name)
            mark = lambda m: "" if judged_as is None or judged_as in m.judged else " *"  # noqa: E731
            table.add_row(name, *(cell(m) + mark(m) for _, m in columns))
        console.print(table)
    for result in report.results:
        for inputs, m in (("random inputs", result.random), ("real images", result.data)):
            if m is not None and not m.passed:
                console.print(
                    f"[bold red]{result.engine}[/bold red] fails on {inputs}: {'; '.join(m.failures)}. Worst: sample "
                    f"{m.worst_sample}, class {report.class_names[m.worst_class]}: reference {_number(m.worst_reference, '.6g')}, "
                    f"{result.engine} {_number(m.worst_candidate, '.6g')}",
                    highlight=False,
                )
    if report.images:
        console.print(f"real images judged: {report.images}", highlight=False, markup=False)
    if report.passed:
        console.print(f"[green]all {len(report.results)} engine(s) match the reference[/green]", highlight=False)


def _number(value: float, spec: str) -> str:
    """A metric as the table shows it; one that is not finite (an engine's NaN logits) is "not finite", never "nan"."""
    return format(value, spec) if math.isfinite(value) else "not finite"
#: Each table row that is a verdict's measure, and its name in :attr:`ParityMetrics.judged`.
_JUDGED_BY = {"logits beyond atol+rtol": "elements", "cosine (min)": "cosine", "top-1 agreement": "top1", "accuracy (Δ)": "accuracy"}
