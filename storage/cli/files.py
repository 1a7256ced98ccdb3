"""Files named on a command line: `-` is stdin/stdout, and a file that cannot be opened is one
`StorageError` line (`x.raw: cannot read: No such file or directory`), never a traceback."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from storage.errors import StorageError


def is_std(path: Path | str | None) -> bool:
    """True for no path or `-`: the standard stream."""
    return path is None or str(path) == "-"


@contextlib.contextmanager
def open_output(path: Path | str | None) -> Iterator[BinaryIO]:
    """Binary output to `path`, or to stdout for None / `-` (flushed, not closed)."""
    if is_std(path):
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        fh = open(path, "wb")
    except OSError as exc:
        raise StorageError(f"{path}: cannot write: {exc.strerror or exc}") from None
    with fh:
        yield fh


@contextlib.contextmanager
def open_input(path: Path | str | None) -> Iterator[BinaryIO]:
    """Binary input from `path`, or from stdin for None / `-`."""
    if is_std(path):
        yield sys.stdin.buffer
        return
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise StorageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with fh:
        yield fh


def input_size(path: Path | str | None) -> int | None:
    """The size of a regular input file (None for stdin or a pipe)."""
    if is_std(path):
        return None
    try:
        p = Path(path)  # type: ignore[arg-type]
        return p.stat().st_size if p.is_file() else None
    except OSError as exc:
        raise StorageError(f"{path}: cannot read: {exc.strerror or exc}") from None
