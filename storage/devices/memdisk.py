"""`MemoryDisk`: a `BlockDevice` held in memory (on `MemoryIO`), for tests, demos and benchmarks."""
from __future__ import annotations

from storage.devices.rawio import MemoryIO
from storage.errors import StorageError


class MemoryDisk:
    """A fixed-size disk in a bytearray; counts flushes and discards so tests can observe them."""

    def __init__(self, size: int, *, read_only: bool = False, name: str = "<memdisk>",
                 data: bytes | None = None) -> None:
        if size < 0:
            raise StorageError(f"{name}: negative size {size}")
        try:
            buf = bytes(size) if data is None else data[:size].ljust(size, b"\0")
        except (OverflowError, MemoryError):
            raise StorageError(f"{name}: {size:,} bytes do not fit in memory") from None
        self.io = MemoryIO(buf, name=name)
        self.name = name
        self._size = size
        self._read_only = read_only
        self.flushes = 0
        self.discards = 0

    @property
    def size(self) -> int:
        """Virtual size in bytes."""
        return self._size

    @property
    def read_only(self) -> bool:
        """True when writes and discards are refused."""
        return self._read_only

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise StorageError(
                f"{self.name}: range {offset}+{length} outside disk of {self._size} bytes")

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`."""
        self._check(offset, length)
        return self.io.pread(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset`."""
        if self._read_only:
            raise StorageError(f"{self.name}: read-only")
        self._check(offset, len(data))
        self.io.pwrite(offset, data)

    def flush(self) -> None:
        """Nothing to make durable; counted."""
        self.flushes += 1

    def discard(self, offset: int, length: int) -> None:
        """Zero the range (a discarded range reads as zeros)."""
        if self._read_only:
            raise StorageError(f"{self.name}: read-only")
        self._check(offset, length)
        self.discards += 1
        self.io.pwrite(offset, bytes(length))

    def close(self) -> None:
        """Nothing to release."""


class RawFileDisk:
    """A `BlockDevice` on a raw image file (any size; the tail short of a sector is unused)."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        from storage.devices.rawio import FileIO

        self.io = FileIO(path, writable=not read_only)
        self.name = path
        self._size = self.io.size()
        self._read_only = read_only

    @property
    def size(self) -> int:
        """File length in bytes."""
        return self._size

    @property
    def read_only(self) -> bool:
        """True when opened read-only."""
        return self._read_only

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise StorageError(
                f"{self.name}: range {offset}+{length} outside disk of {self._size} bytes")

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`."""
        self._check(offset, length)
        return self.io.pread(offset, length).ljust(length, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset`."""
        if self._read_only:
            raise StorageError(f"{self.name}: read-only")
        self._check(offset, len(data))
        self.io.pwrite(offset, data)

    def flush(self) -> None:
        """fsync."""
        self.io.flush()

    def discard(self, offset: int, length: int) -> None:
        """Write zeros over the range."""
        if self._read_only:
            raise StorageError(f"{self.name}: read-only")
        self._check(offset, length)
        self.io.pwrite(offset, bytes(length))

    def close(self) -> None:
        """Close the file."""
        self.io.close()
