"""A progress bar for long benchmarks: on stderr (the tables stay on stdout), off when stderr
is not a terminal."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def stages(title: str, total: int) -> Iterator[Callable[[str], None]]:
    """`step(description)` marks the previous stage done and names the one starting."""
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as prog:
        task = prog.add_task(title, total=total)
        started = False

        def step(description: str) -> None:
            nonlocal started
            if started:
                prog.advance(task)
            started = True
            prog.update(task, description=f"{escape(title)}: {escape(description)}")

        yield step
        prog.update(task, completed=total)
