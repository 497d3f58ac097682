"""The ``rtk`` typer application and its single error boundary.

Every command lives in its own module under ``toolkit.cli`` (``rtk bench`` is
:func:`toolkit.cli.bench.bench`) and is registered on :data:`app` below, in the order of the
pipeline. ``rtk --help`` imports every command module, so a command module imports only the
options and the light core at its top, and its use-case inside the command's body (marked
``# lazy: numpy``): the help is drawn without loading numpy or anything below it. A
:class:`~toolkit.core.errors.RtkError` raised anywhere below a command becomes one
red line on stderr and exit status 1, and so does an operating-system error about the user's
files (:data:`toolkit.core.files.USER_ERRNOS`); a usage error (unknown option, bad choice, missing
argument, and a :class:`~toolkit.core.validation.UsageError`: a value outside an option's rule,
options that exclude each other) is one line too, with exit status :data:`EXIT_USAGE`; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from toolkit import __version__
from toolkit.cli.bench import bench
from toolkit.cli.build import build
from toolkit.cli.demo import demo
from toolkit.cli.doctor import doctor
from toolkit.cli.eval import eval_command
from toolkit.cli.export import export
from toolkit.cli.inspect import inspect
from toolkit.cli.parity import parity
from toolkit.cli.predict import predict
from toolkit.cli.train import train
from toolkit.cli.triton import triton
from toolkit.core.console import err_console
from toolkit.core.errors import RtkError
from toolkit.core.files import USER_ERRNOS, os_error
from toolkit.core.validation import UsageError

#: Exit status of a user error (bad input, a failed check) in every command.
EXIT_ERROR = 1
#: Exit status of a usage error: an unknown option, a bad choice, a missing argument. It is
#: sysexits.h's EX_USAGE, apart from 2, which ``rtk predict`` uses for "some files were skipped".
EXIT_USAGE = 64

# The base class of click's usage errors, found through the one typer re-exports publicly
# (typer vendors click from 0.29 on; earlier releases use click itself).
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def print_error(message: str) -> None:
    """One red ``error:`` line on stderr."""
    from rich.markup import escape

    # Escaped: messages hold text like pip install 'resnet-toolkit[trt]' that rich would eat as markup.
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def _write_names_as_their_bytes() -> None:
    """A file name that is not valid UTF-8 reaches Python as text with surrogate escapes; written
    with the "surrogateescape" handler it goes out as the bytes it was read from (as ``ls`` shows
    it), where the "strict" one of a UTF-8 locale would fail on it with a traceback."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and (getattr(stream, "encoding", "") or "").lower().replace("-", "") == "utf8":
            reconfigure(errors="surrogateescape")


class _ErrorBoundary(TyperGroup):
    """Turns user and usage errors into one line on stderr and a documented exit status, in every command."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True, **extra: Any) -> Any:
        _write_names_as_their_bytes()
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            # Not standalone: typer would print a usage error as a framed panel with a usage block.
            status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _ClickException as exc:
            message = exc.format_message().strip().rstrip(".")
            if not message:  # `rtk` alone: the help was printed, which is what was asked for
                sys.exit(0)
            usage = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "rtk"
            print_error(f"{message} (see `{usage} --help`)")
            sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(EXIT_ERROR)
        # Outside standalone mode typer returns the status of a typer.Exit, and a command's return
        # value otherwise; rtk's commands return None.
        sys.exit(status if isinstance(status, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            # An option's value outside its rule, or options that exclude each other: refused by a
            # rule while the command line was parsed, or by the options object the command built.
            usage = " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
            print_error(f"{exc} (see `{usage} --help`)")
            raise typer.Exit(EXIT_USAGE) from None
        except RtkError as exc:
            print_error(str(exc))
            raise typer.Exit(EXIT_ERROR) from None
        except OSError as exc:
            # A path the system refuses (name too long, disk full, read-only, no permission) is the
            # user's to fix, wherever below the command it surfaced; other OS errors are bugs.

            if exc.errno not in USER_ERRNOS:
                raise
            print_error(str(os_error(exc)))
            raise typer.Exit(EXIT_ERROR) from None

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # registration order, not alphabetical

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _plain_flags(command, ctx)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _plain_flags(self, ctx)
        super().format_help(ctx, formatter)


def _plain_flags(command: Any, ctx: Any) -> None:
    """Show flags without a value type in ``--help``: typer prints ``<bool>`` beside ``--recursive``,
    which reads as if the flag took a value."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


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


#: Every command by name, in the order of the pipeline, which is the order ``rtk --help`` lists them.
COMMANDS = (
    ("demo", demo), ("train", train), ("eval", eval_command), ("export", export), ("build", build), ("parity", parity),
    ("bench", bench), ("predict", predict), ("triton", triton), ("inspect", inspect), ("doctor", doctor),
)
for _name, _command in COMMANDS:
    app.command(_name)(_command)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # `torchrun -m toolkit.cli.app train …`
    main()
