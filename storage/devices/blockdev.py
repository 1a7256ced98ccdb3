"""The one narrow interface every virtual disk offers: byte-addressed read/write of a fixed size.

VHD images and chains, LVM logical volumes and raw files all implement `BlockDevice`; the blkif
backend and the SR layer talk to disks only through it.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

SECTOR_SIZE = 512


@runtime_checkable
class BlockDevice(Protocol):
    """A virtual disk of `size` bytes. Offsets and lengths are in bytes, any alignment."""

    @property
    def size(self) -> int:
        """Virtual size in bytes."""
        ...

    @property
    def read_only(self) -> bool:
        """True when writes and discards are refused."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Return `length` bytes at `offset`; unwritten space reads as zeros (or the parent's)."""
        ...

    def write(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset`; durable once `flush` returns."""
        ...

    def flush(self) -> None:
        """Make every write that returned before this call durable."""
        ...

    def discard(self, offset: int, length: int) -> None:
        """Hint that the range is unused; later reads of it may return zeros."""
        ...

    def close(self) -> None:
        """Flush and release the underlying file(s)."""
        ...


class DelegatingDisk:
    """A BlockDevice that forwards every call to the device in `self._dev`; subclasses change
    what they need (what `close` releases, swapping the device underneath)."""

    def __init__(self, dev: BlockDevice) -> None:
        self._dev = dev

    @property
    def inner(self) -> BlockDevice:
        """The device this one forwards to."""
        return self._dev

    @property
    def size(self) -> int:
        """Virtual size in bytes."""
        return self._dev.size

    @property
    def read_only(self) -> bool:
        """True when writes and discards are refused."""
        return self._dev.read_only

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`."""
        return self._dev.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset`."""
        self._dev.write(offset, data)

    def flush(self) -> None:
        """Make completed writes durable."""
        self._dev.flush()

    def discard(self, offset: int, length: int) -> None:
        """Pass a discard hint on."""
        self._dev.discard(offset, length)

    def close(self) -> None:
        """Close the device."""
        self._dev.close()
