"""Progress bars for long commands: rich, on stderr (stdout keeps only results), and off when
stderr is not a terminal (logs, CI and pipes get no control codes)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(*, disable: bool = False, transient: bool = True,
                 console: Console | None = None, count: bool = False) -> Progress:
    """A `Progress` on stderr: description, bar, percentage (or done/total with `count`),
    elapsed and remaining time; disabled when asked or when stderr is not a terminal."""
    console = console or Console(stderr=True)
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn() if count else TaskProgressColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    transient=transient, disable=disable or not console.is_terminal)
