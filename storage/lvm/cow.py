"""A COW snapshot's exception store, in dm-snapshot's persistent on-disk format.

Layout of the COW LV (Linux `drivers/md/dm-snap-persistent.c`, `doc/kernel/snapshot.txt`), in
chunks of `chunk_size` sectors: chunk 0 is the header `{magic 'SnAp', valid, version 1,
chunk_size}` (little-endian u32s); then metadata areas, each one chunk of `{old_chunk,
new_chunk}` u64 pairs (chunk_bytes/16 per area, a zero `new_chunk` ends the list), each followed
by the data chunks it describes. When no chunk is left for a copy, the store is marked invalid
(`valid = 0`) and the snapshot fails every I/O from then on, as dm-snapshot does.

`CowStore` does its I/O through a RawIO-like object (the COW LV's linear mapping); callers
decide when to copy (origin write, snapshot write) and `CowStore` records where it went.
"""
from __future__ import annotations

import struct
from typing import Protocol

from storage.errors import LvmError

SNAP_MAGIC = 0x70416E53
SNAP_VERSION = 1
_HEADER = struct.Struct("<IIII")
_EXCEPTION = struct.Struct("<QQ")
DEFAULT_CHUNK_SECTORS = 128  # 64 KiB


class SnapshotInvalidError(LvmError):
    """The snapshot overflowed its COW store (or was invalidated) and can no longer be read."""


class _Raw(Protocol):
    name: str

    def pread(self, offset: int, length: int) -> bytes: ...
    def pwrite(self, offset: int, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def size(self) -> int: ...


def pack_header(valid: bool, chunk_sectors: int) -> bytes:
    """The header chunk's first 16 bytes."""
    return _HEADER.pack(SNAP_MAGIC, 1 if valid else 0, SNAP_VERSION, chunk_sectors)


def unpack_header(buf: bytes, where: str) -> tuple[bool, int]:
    """(valid, chunk_sectors) from a header; LvmError if it is not a dm-snapshot header."""
    magic, valid, version, chunk = _HEADER.unpack_from(buf, 0)
    if magic != SNAP_MAGIC:
        raise LvmError(f"{where}: not a snapshot exception store (magic {magic:#x})")
    if version != SNAP_VERSION:
        raise LvmError(f"{where}: exception store version {version} unsupported")
    if chunk <= 0 or chunk & (chunk - 1):
        raise LvmError(f"{where}: chunk size {chunk} sectors is not a power of two")
    return bool(valid), chunk


class CowStore:
    """The exception table of one snapshot: origin chunk → chunk in the COW LV."""

    def __init__(self, raw: _Raw, chunk_sectors: int, *, name: str) -> None:
        self.raw = raw
        self.name = name
        self.chunk = chunk_sectors * 512
        self.per_area = self.chunk // _EXCEPTION.size
        self.total_chunks = raw.size() // self.chunk
        self.exceptions: dict[int, int] = {}
        self.valid = True
        self._area = 0
        self._slot = 0
        self._next = 2  # first data chunk after header and area 0

    # ----------------------------------------------------------- layout arithmetic
    def _area_chunk(self, area: int) -> int:
        return 1 + area * (self.per_area + 1)

    @property
    def used_chunks(self) -> int:
        """Chunks holding header, metadata areas and copied data."""
        return min(self._next, self.total_chunks)

    @property
    def data_percent(self) -> float:
        """How full the store is, as `lvs` reports `Data%` for snapshots."""
        if not self.valid:
            return 100.0
        return 100.0 * self.used_chunks / max(1, self.total_chunks)

    # ----------------------------------------------------------- create / load
    @classmethod
    def initialise(cls, raw: _Raw, chunk_sectors: int, *, name: str) -> CowStore:
        """Write an empty valid store (header + zeroed first area) and return it."""
        store = cls(raw, chunk_sectors, name=name)
        if store.total_chunks < 3:
            raise LvmError(f"snapshot {name}: COW store of {raw.size()} bytes is too small for "
                           f"{store.chunk}-byte chunks (needs at least 3 chunks)")
        raw.pwrite(store.chunk, bytes(store.chunk))
        raw.pwrite(0, pack_header(True, chunk_sectors) + bytes(store.chunk - _HEADER.size))
        return store

    @classmethod
    def load(cls, raw: _Raw, chunk_sectors: int, *, name: str) -> CowStore:
        """Read the header and every metadata area."""
        valid, chunk = unpack_header(raw.pread(0, _HEADER.size), f"snapshot {name}")
        if chunk != chunk_sectors:
            raise LvmError(f"snapshot {name}: store chunk size {chunk} differs from metadata "
                           f"chunk_size {chunk_sectors}")
        store = cls(raw, chunk_sectors, name=name)
        store.valid = valid
        area = 0
        while True:
            area_chunk = store._area_chunk(area)
            if area_chunk >= store.total_chunks:  # every area full: the next add overflows
                store._area, store._slot = area - 1, store.per_area
                store._next = area_chunk
                break
            buf = raw.pread(area_chunk * store.chunk, store.chunk)
            slot = 0
            for slot in range(store.per_area):
                old, new = _EXCEPTION.unpack_from(buf, slot * _EXCEPTION.size)
                if new == 0:
                    break
                if new >= store.total_chunks:
                    raise LvmError(f"snapshot {name}: exception {slot} of area {area} points "
                                   f"past the store (chunk {new})")
                store.exceptions[old] = new
            else:
                area += 1
                continue
            store._area, store._slot = area, slot
            store._next = area_chunk + 1 + slot
            break
        return store

    # ----------------------------------------------------------- operation
    def invalidate(self) -> None:
        """Mark the store invalid on disk (overflow), as dm-snapshot does."""
        self.valid = False
        self.raw.pwrite(0, pack_header(False, self.chunk // 512))

    def check(self) -> None:
        """Raise SnapshotInvalidError if the snapshot can no longer be used."""
        if not self.valid:
            raise SnapshotInvalidError(f"snapshot {self.name} is invalid (its COW store filled "
                                       "up); remove it with lvremove")

    def refresh(self) -> bool:
        """Pick up what another process appended since this store was loaded: new exceptions
        (its origin was written there) and an invalidation. True when anything changed.

        Sound without locks because a writer stores the copy, then its table entry, and only
        then overwrites the origin chunk (`add` before the origin write): a reader that read
        an origin chunk and afterwards finds no entry for it read the old data; if it finds
        one, it reads the copy. Entries are checked against the slot they must be in (data
        chunks are handed out in order), so an area not yet zeroed by the writer reads as
        "nothing new", never as garbage exceptions."""
        changed = False
        valid, _ = unpack_header(self.raw.pread(0, _HEADER.size), f"snapshot {self.name}")
        if self.valid and not valid:
            self.valid, changed = False, True
        while self.valid:
            area, slot, nxt = self._area, self._slot, self._next
            if slot == self.per_area:
                area, slot = area + 1, 0
                nxt = self._area_chunk(area) + 1
                if nxt >= self.total_chunks:
                    break
            old, new = _EXCEPTION.unpack(self.raw.pread(
                self._area_chunk(area) * self.chunk + slot * _EXCEPTION.size, _EXCEPTION.size))
            if new != nxt or new >= self.total_chunks:
                break
            self.exceptions[old] = new
            self._area, self._slot, self._next = area, slot + 1, nxt + 1
            changed = True
        return changed

    def lookup(self, chunk: int) -> int | None:
        """COW chunk holding origin chunk `chunk`, if it was copied."""
        return self.exceptions.get(chunk)

    def add(self, old_chunk: int, data: bytes) -> int | None:
        """Store `data` as the copy of `old_chunk`; None (and invalid) when the store is full."""
        if not self.valid:
            return None
        if self._slot == self.per_area:
            self._area += 1
            self._slot = 0
            area_chunk = self._area_chunk(self._area)
            if area_chunk + 1 >= self.total_chunks:
                self.invalidate()
                return None
            self.raw.pwrite(area_chunk * self.chunk, bytes(self.chunk))
            self._next = area_chunk + 1
        new = self._next
        if new >= self.total_chunks:
            self.invalidate()
            return None
        self.raw.pwrite(new * self.chunk, data)
        entry_off = self._area_chunk(self._area) * self.chunk + self._slot * _EXCEPTION.size
        self.raw.pwrite(entry_off, _EXCEPTION.pack(old_chunk, new))
        self.exceptions[old_chunk] = new
        self._slot += 1
        self._next += 1
        return new

    def read_chunk(self, new_chunk: int, offset: int, length: int) -> bytes:
        """Bytes of a stored copy."""
        return self.raw.pread(new_chunk * self.chunk + offset, length)

    def write_chunk(self, new_chunk: int, offset: int, data: bytes) -> None:
        """Overwrite part of a stored copy (a write to the snapshot itself)."""
        self.raw.pwrite(new_chunk * self.chunk + offset, data)
