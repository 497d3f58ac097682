"""``rtk doctor``: what this machine can run, why not, and (``--check``) proof that it runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from engines.names import parse_engines
from toolkit.cli.options import check_device, check_engines, number_option, path_option
from toolkit.core.console import console, err_console
from toolkit.core.errors import RtkError
from toolkit.core.outputs import Output, check_outputs, json_text
from toolkit.core.validation import POSITIVE, UsageError

DEFAULT_REPORT = Path("rtk-doctor.json")


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings (and the check, with --check) as JSON.")] = False,
    check: Annotated[
        bool,
        typer.Option("--check", help="Export a small model and run parity and a short benchmark on every engine that can run here."),
    ] = False,
    output: Annotated[Path, path_option("--output", "-o", help="With --check: where to write the JSON report.")] = DEFAULT_REPORT,
    engines: Annotated[
        Optional[str], typer.Option(callback=check_engines, help="With --check: comma-separated engines to check [default: one of each runtime].")
    ] = None,
    device: Annotated[Optional[str], typer.Option(callback=check_device, help="With --check: cpu or cuda[:N] [default: cuda when there is a GPU].")] = None,
    bench_seconds: Annotated[float, number_option(POSITIVE, "--bench-seconds", help="With --check: seconds of timing per engine and batch size.")] = 0.5,
) -> None:
    """What this machine can run and why not: torch, CUDA, GPUs and driver, ONNX Runtime and the
    providers that really start, TensorRT, each engine with the install command that enables it.

    With --check it also exports a small model and runs parity and a short benchmark on every
    engine that can run, writes one JSON report, and exits 1 if any of them fails. Run it first
    on a new GPU machine.
    """
    from toolkit.usecases.doctor import diagnose, run_check, write_report  # lazy: numpy

    if not check and (engines is not None or device is not None or output != DEFAULT_REPORT):
        raise UsageError("--engines, --device and --output apply with --check")
    names = [str(n) for n in parse_engines(engines)] if engines is not None else None
    if check:  # before the checks run, which take a while
        check_outputs([Output(output, "--output", (".json", ""), "JSON")])
    diagnosis = diagnose()
    if not check:
        if as_json:
            typer.echo(json.dumps(diagnosis.to_dict(), indent=2, default=str))
        else:
            _print_diagnosis(diagnosis)
        return
    if not as_json:
        _print_diagnosis(diagnosis)

    def progress(result) -> None:
        if not as_json:
            err_console.print(f"checked {result.engine}: {result.status}" + (f" ({result.reason})" if result.reason else ""), highlight=False, markup=False)

    report = run_check(diagnosis, names, device, bench_seconds, on_engine=progress)
    path = write_report(report, output)
    if as_json:
        typer.echo(json_text(report.to_dict(), default=str), nl=False)
    else:
        _print_check(report, path)
    if not report.passed:
        failed = ", ".join(c.engine for c in report.checks if c.status == "failed")
        raise RtkError(f"rtk doctor --check: {failed} failed on this machine; see {path}")


def _print_diagnosis(diagnosis) -> None:
    from rich.markup import escape
    from rich.table import Table

    env, torch_info, ort, trt = diagnosis.environment, diagnosis.torch, diagnosis.onnxruntime, diagnosis.tensorrt
    lines = [
        f"python {env['python']} on {env['os']}, {env['cpu']['model']} ({env['cpu']['cores']} cores)",
        f"torch {torch_info['version']} (CUDA build: {torch_info['cuda_build'] or 'none'}), CUDA available: {'yes' if torch_info['cuda_available'] else 'no'}",
    ]
    for gpu in torch_info["gpus"]:
        lines.append(
            f"  GPU {gpu['index']}: {gpu['name']} (compute capability {gpu['compute_capability']}, {gpu['memory_mb']} MiB), "
            f"driver {gpu.get('driver') or 'unknown'}"
        )
    if "error" in ort:
        lines.append(f"onnxruntime: {ort['error']}")
    else:
        lines.append(f"onnxruntime {ort['version']} ({', '.join(ort['distributions']) or 'no distribution metadata'})")
        for provider, started in ort["providers"].items():
            lines.append(f"  {provider}: " + ("starts" if started["starts"] else f"does not start: {started['reason']}"))
        if ort.get("conflict"):
            lines.append(f"  {ort['conflict']}")
    if "error" in trt:
        lines.append(f"tensorrt: {trt['error']}")
    else:
        lines.append(f"tensorrt {trt['version']} (fp16 engines: {trt['fp16_route']})")
    ov = diagnosis.openvino
    if "error" in ov:
        lines.append(f"openvino: {ov['error']}")
    else:
        lines.append(f"openvino {ov['version']} (CPU capabilities: {', '.join(ov['cpu_capabilities'])})")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    table = Table(title="engines", title_justify="left")
    for column in ("engine", "status", "why not", "to enable"):
        table.add_column(column, overflow="fold")
    for e in diagnosis.engines:
        style = {"available": "green", "unavailable": "red"}.get(e.status, "yellow")
        table.add_row(e.engine, f"[{style}]{e.status}[/{style}]", escape(e.reason or ""), escape(e.install or ""))
    console.print(table)


def _print_check(report, path: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"rtk doctor --check on {report.model['device']}", title_justify="left")
    for column in ("engine", "result", "max abs err", "top-1 agree", "images/s (batch 1 / 4)", "why"):
        table.add_column(column, overflow="fold")
    for c in report.checks:
        metrics = (c.parity or {}).get("random") or {}
        speeds = " / ".join(f"{r['throughput_ips']:.0f}" if r.get("throughput_ips") else "—" for r in c.bench) or "—"
        style = {"passed": "green", "failed": "red"}.get(c.status, "yellow")
        table.add_row(
            c.engine, f"[{style}]{c.status}[/{style}]",
            _number(metrics.get("max_abs")), _percent(metrics.get("top1_agreement")), speeds, escape(c.reason or ""),
        )  # fmt: skip
    console.print(table)
    console.print(f"report: {path}", highlight=False, markup=False)


def _number(value) -> str:
    return "—" if value is None else f"{value:.3g}"


def _percent(value) -> str:
    """A fraction as parity prints it (``100.00%``), so the two commands show one figure alike."""
    return "—" if value is None else f"{value:.2%}"
