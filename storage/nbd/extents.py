"""Which parts of a disk hold data and which are holes, for NBD's `base:allocation` context.

A VHD (and its chain) knows exactly: a sector no image of the chain holds reads as zeros and is
a hole. A raw file asks the filesystem (`SEEK_DATA`/`SEEK_HOLE`, as qemu-nbd does). Other disks
(memory, LVs) report everything as data, which is always a correct answer.
"""
from __future__ import annotations

import os

from storage.devices.blockdev import BlockDevice, DelegatingDisk

#: (length, is_hole) — consecutive pieces of the asked range, in order.
Piece = tuple[int, bool]


def _innermost(dev: BlockDevice) -> BlockDevice:
    seen = 0
    while isinstance(dev, DelegatingDisk) and seen < 16:
        dev = dev._dev  # the delegate is the disk whose layout answers the question
        seen += 1
    return dev


class AllocationMap:
    """Answers "data or hole?" for ranges of one open disk."""

    def __init__(self, dev: BlockDevice) -> None:
        self._dev = dev
        inner = _innermost(dev)
        self._mapper = inner if callable(getattr(inner, "map", None)) else None
        #: True when holes are known from the format itself (cheap to ask on every read)
        self.exact = self._mapper is not None
        self._fd = -1
        if self._mapper is None and type(inner).__name__ == "RawFileDisk":
            try:
                self._fd = os.open(inner.name, os.O_RDONLY | os.O_CLOEXEC)  # type: ignore[attr-defined]
            except OSError:
                self._fd = -1

    def pieces(self, offset: int, length: int, *, limit: int = 1024) -> list[Piece]:
        """At most `limit` pieces covering [offset, offset+length) from its start (the last
        piece may stop short of the end when the limit is reached)."""
        if length <= 0:
            return []
        if self._mapper is not None:
            return self._from_map(offset, length, limit)
        if self._fd >= 0:
            return self._from_seek(offset, length, limit)
        return [(length, False)]

    def _from_map(self, offset: int, length: int, limit: int) -> list[Piece]:
        runs = self._mapper.map(offset, length)  # type: ignore[union-attr]
        out: list[Piece] = []
        pos = (offset // 512) * 512
        end = offset + length
        for n, io, _off in runs:
            start, stop = max(pos, offset), min(pos + n * 512, end)
            pos += n * 512
            if stop <= start:
                continue
            _add(out, stop - start, io is None)
            if len(out) > limit:
                return out[:limit]
        return out

    def _from_seek(self, offset: int, length: int, limit: int) -> list[Piece]:
        out: list[Piece] = []
        pos, end = offset, offset + length
        while pos < end and len(out) <= limit:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError:            # ENXIO: no data after pos
                data = end
            data = min(data, end)
            if data > pos:
                _add(out, data - pos, True)
                pos = data
                continue
            try:
                hole = os.lseek(self._fd, pos, os.SEEK_HOLE)
            except OSError:
                hole = end
            hole = min(max(hole, pos + 1), end)
            _add(out, hole - pos, False)
            pos = hole
        return out[:limit]

    def close(self) -> None:
        """Release the descriptor used for SEEK_DATA (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _add(out: list[Piece], n: int, hole: bool) -> None:
    if out and out[-1][1] == hole:
        out[-1] = (out[-1][0] + n, hole)
    else:
        out.append((n, hole))
