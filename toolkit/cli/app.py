"""The ``rtk`` typer application and its single error boundary.

Every command lives in its own module under ``toolkit.cli`` and registers itself on
:data:`app`. A :class:`~toolkit.errors.RtkError` raised anywhere below a command becomes one
red line on stderr and exit status 1; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from toolkit import __version__
from toolkit.errors import RtkError

# Command modules in the order of the pipeline, which is the order ``rtk --help`` lists them;
# each defines a ``register(app)`` function.
COMMAND_MODULES = (
    "demo",
    "train",
    "eval",
    "export",
    "build",
    "parity",
    "bench",
    "predict",
    "triton",
    "inspect",
)


class _ErrorBoundary(TyperGroup):
    """Turns user errors into one line on stderr and exit status 1, in every command."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RtkError as exc:
            from rich.markup import escape

            from toolkit.console import err_console

            # Escaped: messages hold text like pip install 'rtk[trt]' that rich would eat as markup.
            err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # registration order, not alphabetical


app = typer.Typer(
    name="rtk",
    cls=_ErrorBoundary,
    help="Train, export, build, verify, benchmark and run PyTorch ResNet/ResNeXt classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rtk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Train, export, build, verify, benchmark and run PyTorch ResNet/ResNeXt classifiers."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"toolkit.cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # `torchrun -m toolkit.cli.app train …`
    main()
