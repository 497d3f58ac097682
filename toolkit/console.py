"""Rich consoles shared by every command: results on stdout, messages on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def warn(message: str) -> None:
    """Print a yellow warning line on stderr."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """Print a progress/status line on stderr, keeping stdout for results; the text is printed as is."""
    err_console.print(escape(message), highlight=False, soft_wrap=True)
