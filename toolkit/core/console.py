"""Rich consoles shared by every command: results on stdout, messages on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def warn(message: str) -> None:
    """Print a yellow warning line on stderr."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


class ProgressBar:
    """A transient progress bar on stderr, used as a context manager.

    Shown only when asked for and when stderr is a terminal: redirected into a log file, a
    transient bar leaves a blank line per refresh. Extra fields (``loss=0.0``) are shown through
    ``fields`` (a format string over ``task.fields``) and updated with :meth:`advance`.

    Args:
        total: steps to completion.
        description: the text before the bar.
        enabled: whether to show it at all.
        fields: e.g. ``"loss {task.fields[loss]:.4f}"``; its initial values as keyword arguments.
    """

    def __init__(self, total: int, description: str, enabled: bool = True, fields: str | None = None, **initial: float):
        self.total, self.description, self.fields, self.initial = total, description, fields, initial
        self.enabled = enabled and err_console.is_terminal
        self._bar = self._task = None

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
            columns += [TextColumn(self.fields)] if self.fields else []
            self._bar = Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, **self.initial)
        return self

    def advance(self, steps: int = 1, **fields: float) -> None:
        """Move ``steps`` forward, updating any extra fields."""
        if self._bar is not None:
            self._bar.update(self._task, advance=steps, **fields)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def info(message: str) -> None:
    """Print a progress/status line on stderr, keeping stdout for results; the text is printed as is."""
    err_console.print(escape(message), highlight=False, soft_wrap=True)


def results_console() -> Console:
    """The console for result tables on stdout: the terminal's width, or 160 columns when piped
    (rich's 80-column default would fold a wide table into an unreadable log)."""
    return console if console.is_terminal else Console(width=160)
