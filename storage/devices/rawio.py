"""The narrow I/O interface format drivers do their work through: positional read/write on bytes.

A VHD lives in a plain file (`FileIO`), in an LVM logical volume (LVHD), or in memory for tests
(`MemoryIO`); the VHD driver only ever calls these methods, never `open()` itself.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from storage.errors import StorageError


@runtime_checkable
class RawIO(Protocol):
    """Byte-addressed container: a file, an LV, or a buffer."""

    name: str

    def pread(self, offset: int, length: int) -> bytes:
        """Return up to `length` bytes at `offset` (short only at the end of the container)."""
        ...

    def pwrite(self, offset: int, data: bytes) -> None:
        """Write all of `data` at `offset`, growing the container if it is growable."""
        ...

    def flush(self) -> None:
        """Make every completed pwrite durable."""
        ...

    def size(self) -> int:
        """Current length in bytes."""
        ...

    def truncate(self, size: int) -> None:
        """Set the length (grow with zeros or cut)."""
        ...

    def close(self) -> None:
        """Release the container."""
        ...


class FileIO:
    """RawIO on a regular file (or block device) path."""

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = True,
                 create: bool = False) -> None:
        self.name = str(path)
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        try:
            self._fd = os.open(self.name, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError as exc:
            raise StorageError(f"{self.name}: already exists") from exc
        except FileNotFoundError as exc:
            raise StorageError(f"{self.name}: no such file") from exc
        except PermissionError as exc:
            raise StorageError(f"{self.name}: permission denied") from exc
        except IsADirectoryError as exc:
            raise StorageError(f"{self.name}: is a directory") from exc
        self.writable = writable

    @property
    def path(self) -> Path:
        """The file's path."""
        return Path(self.name)

    def pread(self, offset: int, length: int) -> bytes:
        """Return up to `length` bytes at `offset`."""
        return os.pread(self._fd, length, offset)

    def pwrite(self, offset: int, data: bytes) -> None:
        """Write all of `data` at `offset`."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view = view[n:]
            offset += n

    def flush(self) -> None:
        """fsync the file."""
        if self.writable:
            os.fsync(self._fd)

    def size(self) -> int:
        """Current file length."""
        return os.fstat(self._fd).st_size

    def truncate(self, size: int) -> None:
        """Set the file length."""
        os.ftruncate(self._fd, size)

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        # Like io.FileIO: an object dropped without close() must not keep its descriptor (and,
        # for a deleted file, its blocks) for the life of the process.
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            os.close(fd)

    def __enter__(self) -> FileIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryIO:
    """RawIO on a growable bytearray, for tests and in-memory disks."""

    def __init__(self, data: bytes = b"", *, name: str = "<memory>") -> None:
        self.name = name
        self.buf = bytearray(data)

    def pread(self, offset: int, length: int) -> bytes:
        """Return up to `length` bytes at `offset`."""
        return bytes(self.buf[offset:offset + length])

    def pwrite(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset`, growing the buffer with zeros as needed."""
        end = offset + len(data)
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[offset:end] = data

    def flush(self) -> None:
        """Nothing to make durable."""

    def size(self) -> int:
        """Current buffer length."""
        return len(self.buf)

    def truncate(self, size: int) -> None:
        """Set the buffer length."""
        if size < len(self.buf):
            del self.buf[size:]
        else:
            self.buf.extend(bytes(size - len(self.buf)))

    def close(self) -> None:
        """Nothing to release."""
