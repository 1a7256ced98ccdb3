"""RawIO on files: positional I/O, clear errors, and no descriptor outliving its object."""
from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from storage.devices.rawio import FileIO, MemoryIO
from storage.errors import StorageError


def _fds_to(path: Path) -> int:
    n = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            n += os.readlink(fd) == str(path)
        except OSError:
            continue
    return n


def test_pread_pwrite_size_truncate(tmp_path: Path) -> None:
    with FileIO(tmp_path / "f", create=True) as f:
        f.pwrite(4096, b"abc")
        assert f.size() == 4099
        assert f.pread(4096, 10) == b"abc"
        assert f.pread(0, 4) == b"\0" * 4
        f.truncate(4097)
        assert f.pread(4096, 10) == b"a"


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"nope: no such file"):
        FileIO(tmp_path / "nope")
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(StorageError, match="already exists"):
        FileIO(tmp_path / "f", create=True)


def test_a_dropped_unclosed_file_releases_its_descriptor(tmp_path: Path) -> None:
    path = (tmp_path / "f").resolve()
    f = FileIO(path, create=True)
    assert _fds_to(path) == 1
    del f
    gc.collect()
    assert _fds_to(path) == 0


def test_memory_io_grows_and_truncates() -> None:
    m = MemoryIO()
    m.pwrite(10, b"xy")
    assert m.size() == 12 and m.pread(9, 5) == b"\0xy"
    m.truncate(11)
    assert m.pread(0, 100) == b"\0" * 10 + b"x"
