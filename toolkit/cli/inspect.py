"""``rtk inspect PATH``: what an artefact is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def inspect(
    path: Annotated[Path, typer.Argument(help="A checkpoint (.pth/.pt), ONNX file (.onnx) or TensorRT engine (.engine/.plan).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of a table.")] = False,
) -> None:
    """Show what an artefact holds: architecture, classes, parameters, preprocessing, training metrics."""
    from toolkit.artefacts import describe
    from toolkit.console import console

    report = describe(path)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=str(path), show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")
    for key, value in _flatten(report):
        table.add_row(key, value)
    console.print(table)


def _flatten(report: dict, prefix: str = ""):
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and len(value) <= 16:
            yield from _flatten(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            text = ", ".join(map(str, value))
            yield name, text if len(text) < 400 else text[:400] + " …"
        else:
            yield name, "—" if value is None else str(value)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
