"""Benchmark reports: a rich table for the terminal, and JSON, CSV and a PNG plot on disk.

The JSON follows ``benchmarks/schema.json``; the CSV has one flat row per result (the
environment lives in the JSON). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from benchmarks.harness import BenchResult
from toolkit.core.outputs import check_output_folder, write_atomic
from toolkit.core.plots import pyplot, save_figure
from toolkit.core.validation import check_name

SCHEMA_PATH = Path(__file__).with_name("schema.json")

#: CSV columns, in order; nested JSON fields are flattened with a prefix.
CSV_COLUMNS = (
    "engine", "precision", "device", "device_name", "io", "batch_size", "status", "reason", "threads",
    "iterations", "timed_s", "throughput_ips",
    "latency_mean_ms", "latency_std_ms", "latency_min_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
    "latency_max_ms", "h2d_ms", "compute_ms", "d2h_ms", "peak_memory_mb", "device_memory_used_mb",
    "speedup_vs_eager", "speedup_vs_fp32", "fp32_engine",
)


def load_schema() -> dict[str, Any]:
    """The JSON schema every report follows."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def report_name(report: dict[str, Any]) -> str:
    """A file stem naming the model and the device, e.g. ``resnet50-cpu-amd-epyc-2c``."""
    env = report["environment"]
    gpu = env.get("gpu") or {}
    device = gpu.get("name") if gpu else f"cpu {env['cpu']['model']} {env['cpu']['cores']}c"
    arch = report["model"].get("arch") or Path(report["model"]["name"]).stem
    return _slug(f"{arch}-{device}")


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    return re.sub(r"[^a-z0-9.]+", "-", text).strip("-")


# --------------------------------------------------------------------------- terminal


def ratio_text(value: float | None, against: str) -> str:
    """A speed ratio against the engine it is measured against: ``2.84x ort``, ``0.35x ort (slower)`` below 1."""
    if value is None:
        return "—"
    return f"{value:.2f}x {against}" + (" (slower)" if value < 1 else "")


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def progress_line(row: "BenchResult") -> str:
    """One status line for a finished row: engine, batch size and I/O, then images/s or why it did not run."""
    where = f"batch {row.batch_size} {row.io}" if row.batch_size else ""
    if row.status == "ok":
        return f"  {row.engine:<16} {where:<16} {row.throughput_ips:10.1f} img/s  p50 {row.latency_ms['p50']:.2f} ms"
    return f"  {row.engine:<16} {where:<16} {row.status}: {row.reason}"


def render_table(report: dict[str, Any]):
    """A rich renderable: the results table (throughput, latency percentiles, speed-up), then why rows were skipped."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    env = report["environment"]
    model = report["model"]
    cuda = str(env["device"]).startswith("cuda")
    shape = "x".join(map(str, model["input_shape"])) if model["input_shape"] else "?"
    title = f"{model.get('arch') or model['name']} ({shape}) on {env['device_name']}, {env['cpu']['threads']} threads; latency in ms per batch"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ["engine", "io", "batch", "img/s", "mean", "p50", "p90", "p99", "min", "max", "vs eager", "vs own fp32", "iters"]
    columns += ["h2d", "compute", "d2h", "peak MB"] if cuda else []
    for name in columns:
        table.add_column(name, justify="left" if name in ("engine", "io") else "right", no_wrap=True)
    notes = []
    for r in report["results"]:
        if r["status"] != "ok":
            where = f" at batch {r['batch_size']} ({r['io']})" if r["batch_size"] else ""
            notes.append(Text.assemble((f"{r['engine']}{where} {r['status']}: ", "yellow"), r["reason"] or ""))
            continue
        lat = r["latency_ms"]
        speed = r["speedup_vs_eager"]
        cells = [
            r["engine"], r["io"], str(r["batch_size"]), f"{r['throughput_ips']:.1f}",
            *(_ms(lat[k]) for k in ("mean", "p50", "p90", "p99", "min", "max")),
            f"{speed:.2f}x" if speed is not None else "—", _vs_fp32(r), str(r["iterations"]),
        ]
        if cuda:
            split = r["split_ms"] or {}
            peak = r["peak_memory_mb"]
            cells += [_ms(split.get("h2d")), _ms(split.get("compute")), _ms(split.get("d2h")), f"{peak:.0f}" if peak else "—"]
        table.add_row(*cells)
    return Group(table, *notes)


def _vs_fp32(row: dict[str, Any]) -> str:
    """``0.35x ort (slower)``: the row over its own runtime's fp32 engine, named."""
    return ratio_text(row.get("speedup_vs_fp32"), row.get("fp32_engine") or "")


# --------------------------------------------------------------------------- files


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def flat_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat dict per result with the :data:`CSV_COLUMNS` keys."""
    rows = []
    device_name = report["environment"]["device_name"]
    for r in report["results"]:
        row = {k: r.get(k) for k in CSV_COLUMNS if k in r}
        row["device_name"] = device_name
        for k, v in (r.get("latency_ms") or {}).items():
            row[f"latency_{k}_ms"] = v
        for k, v in (r.get("split_ms") or {}).items():
            row[f"{k}_ms"] = v
        rows.append({k: row.get(k) for k in CSV_COLUMNS})
    return rows


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in flat_rows(report):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def plot(report: dict[str, Any]):
    """A figure: throughput vs batch size per engine, and p50/p90/p99 latency per engine and batch size."""

    plt = pyplot()

    ok = [r for r in report["results"] if r["status"] == "ok"]
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in ok:
        series.setdefault((r["engine"], r["io"]), []).append(r)
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((engine, io_mode), rows) in enumerate(sorted(series.items())):
        rows = sorted(rows, key=lambda r: r["batch_size"])
        label = engine if len({k[1] for k in series}) == 1 else f"{engine} ({io_mode})"
        color = colors[i % len(colors)]
        bs = [r["batch_size"] for r in rows]
        ax_t.plot(bs, [r["throughput_ips"] for r in rows], marker="o", color=color, label=label)
        ax_l.plot(bs, [r["latency_ms"]["p50"] for r in rows], marker="o", color=color, label=label)
        ax_l.fill_between(
            bs, [r["latency_ms"]["p50"] for r in rows], [r["latency_ms"]["p99"] for r in rows], color=color, alpha=0.15
        )
        ax_l.plot(bs, [r["latency_ms"]["p90"] for r in rows], linestyle=":", color=color)
        ax_l.plot(bs, [r["latency_ms"]["p99"] for r in rows], linestyle="--", color=color)
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.grid(True, which="both", alpha=0.3)
        batch_sizes = sorted({r["batch_size"] for r in ok})
        if batch_sizes:
            ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax_t.set_ylabel("images / s")
    ax_t.set_ylim(bottom=0)  # a cut axis exaggerates differences
    ax_t.set_title("throughput")
    ax_l.set_yscale("log")
    ax_l.set_ylabel("latency per batch, ms")
    ax_l.set_title("latency percentiles")
    if series:
        ax_t.legend(fontsize=8)
        _latency_legend(ax_l)
    env = report["environment"]
    fig.suptitle(
        f"{report['model'].get('arch') or report['model']['name']} on {env['device_name']}, {env['cpu']['threads']} threads",
        fontsize=11,
    )
    return fig


def _latency_legend(ax) -> None:
    """The latency panel's key: each engine's colour, then what the line styles and the shaded band mean."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    engines, labels = ax.get_legend_handles_labels()
    styles = [
        Line2D([], [], color="grey", marker="o", label="p50 (median)"),
        Line2D([], [], color="grey", linestyle=":", label="p90"),
        Line2D([], [], color="grey", linestyle="--", label="p99"),
        Patch(color="grey", alpha=0.15, label="shaded: p50 to p99 (49% of the calls; 1% are slower still)"),
    ]
    ax.legend(engines + styles, labels + [h.get_label() for h in styles], fontsize=8)


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Fail now, before a sweep that may take minutes, when ``out_dir`` cannot take the report files.

    Nothing is created: the folder is made by :func:`write_report`, once there is a report.

    Raises:
        RtkError: ``out_dir`` is a file, lies under a file, or its nearest existing folder
            cannot be written.
    """
    return check_output_folder(out_dir, "--out")


def write_report(report: dict[str, Any], out_dir: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Write ``NAME.json``, ``NAME.csv`` and ``NAME.png`` under ``out_dir``.

    Args:
        report: a :meth:`benchmarks.harness.BenchReport.to_dict` result.
        out_dir: the folder (created when missing).
        name: file stem; by default the model and device (:func:`report_name`).

    Returns:
        The paths written.
    """

    out = Path(out_dir)
    stem = check_name(name, "--name") or report_name(report)  # a name, never a path out of out_dir
    paths = [
        write_atomic(out / f"{stem}.json", to_json(report)),
        write_atomic(out / f"{stem}.csv", to_csv(report)),
    ]
    paths.append(save_figure(plot(report), out / f"{stem}.png"))
    return paths
