"""Thin pools: thin LVs and thin snapshots that share the pool's data chunks.

The VG metadata is LVM2's (`thin-pool` segment naming `<pool>_tdata` and `<pool>_tmeta`,
`thin` segments with `device_id`), but the mapping table inside `<pool>_tmeta` is **hvsim's
own format, not dm-thin's** btree metadata: LVM2 lists our thin LVs, `thin_check` would reject
the table. Layout: two slots of half the metadata LV each; a slot is a 32-byte header
(`HVSIMTHN`, version, seqno, CRC-32 and length of the body) and a body of, per device,
`{device_id u32, count u32}` then `count` × `{virtual chunk u64, data chunk u64}` (little-endian).
A commit writes the whole table into the older slot; on open the newest valid slot wins.

Like dm-thin, mappings made since the last commit (a flush) may be lost in a crash, but what
was committed is never overwritten before the next commit: a data chunk is written in place
only when no committed mapping shares it, and a freed chunk is reused only after the commit
that freed it.
"""
from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Iterator
from typing import Protocol

from storage.errors import LvmError
from storage.lvm.device import FollowsVg

MAGIC = b"HVSIMTHN"
VERSION = 1
_HEAD = struct.Struct("<8sIQIQ")  # magic, version, seqno, crc, body length (32 bytes)
_DEV = struct.Struct("<II")
_MAP = struct.Struct("<QQ")
DEFAULT_CHUNK_SECTORS = 128  # 64 KiB, LVM2's default for small pools
MAX_DEVICE_ID = (1 << 24) - 1


class ThinPoolFullError(LvmError):
    """No free data chunk is left in the pool (dm-thin's out-of-data-space)."""


class _Raw(Protocol):
    name: str

    def pread(self, offset: int, length: int) -> bytes: ...
    def pwrite(self, offset: int, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def size(self) -> int: ...


def pack_table(seqno: int, maps: dict[int, dict[int, int]]) -> bytes:
    """Header + body for one slot."""
    body = bytearray()
    for dev_id in sorted(maps):
        m = maps[dev_id]
        body += _DEV.pack(dev_id, len(m))
        for v in sorted(m):
            body += _MAP.pack(v, m[v])
    return _HEAD.pack(MAGIC, VERSION, seqno, zlib.crc32(body), len(body)) + bytes(body)


def unpack_table(buf: bytes, limit: int, where: str) -> tuple[int, dict[int, dict[int, int]]]:
    """(seqno, maps) from a slot; LvmError if it is not a valid table."""
    if len(buf) < _HEAD.size:
        raise LvmError(f"{where}: thin metadata slot truncated")
    magic, version, seqno, crc, length = _HEAD.unpack_from(buf, 0)
    if magic != MAGIC or version != VERSION:
        raise LvmError(f"{where}: no thin metadata table")
    if length > limit - _HEAD.size or _HEAD.size + length > len(buf):
        raise LvmError(f"{where}: thin metadata body length {length} out of range")
    body = buf[_HEAD.size:_HEAD.size + length]
    if zlib.crc32(body) != crc:
        raise LvmError(f"{where}: thin metadata checksum mismatch")
    maps: dict[int, dict[int, int]] = {}
    pos = 0
    while pos < length:
        if pos + _DEV.size > length:
            raise LvmError(f"{where}: thin metadata device record truncated at {pos}")
        dev_id, count = _DEV.unpack_from(body, pos)
        pos += _DEV.size
        if pos + count * _MAP.size > length:
            raise LvmError(f"{where}: thin device {dev_id} mappings truncated")
        m = maps.setdefault(dev_id, {})
        for _ in range(count):
            v, d = _MAP.unpack_from(body, pos)
            m[v] = d
            pos += _MAP.size
    return seqno, maps


class ThinPool:
    """A pool's data chunks and the thin devices mapping into them."""

    def __init__(self, name: str, data: _Raw, meta: _Raw, chunk_sectors: int, *,
                 zero_new_blocks: bool = True) -> None:
        self.name = name
        self.data = data
        self.meta = meta
        self.chunk = chunk_sectors * 512
        self.zero_new_blocks = zero_new_blocks
        self.maps: dict[int, dict[int, int]] = {}
        self.seqno = 0
        self.slot_size = meta.size() // 2
        self._resize_refs()

    # ------------------------------------------------------------ bookkeeping
    def _resize_refs(self) -> None:
        n = self.data.size() // self.chunk
        self.refs = array("I", bytes(4 * n))
        self.committed = array("I", bytes(4 * n))
        self.fresh: set[int] = set()
        self._hint = 0

    @property
    def total_chunks(self) -> int:
        """Data chunks in the pool."""
        return len(self.refs)

    @property
    def used_chunks(self) -> int:
        """Data chunks some device maps."""
        return len(self.refs) - self.refs.count(0)

    def _recount(self) -> None:
        self.refs = array("I", bytes(4 * self.total_chunks))
        for m in self.maps.values():
            for d in m.values():
                if d >= len(self.refs):
                    raise LvmError(f"thin pool {self.name}: a mapping points at data chunk {d} "
                                   f"beyond the pool's {len(self.refs)}")
                self.refs[d] += 1
        self.committed = array("I", self.refs)
        self.fresh = set()

    def grown(self) -> None:
        """The data LV was extended: more chunks to allocate from."""
        n = self.data.size() // self.chunk
        extra = n - len(self.refs)
        if extra > 0:
            self.refs.extend([0] * extra)
            self.committed.extend([0] * extra)

    # ------------------------------------------------------------ persistence
    @classmethod
    def format(cls, name: str, data: _Raw, meta: _Raw, chunk_sectors: int, *,
               zero_new_blocks: bool = True) -> ThinPool:
        """A new, empty pool (both slots written)."""
        pool = cls(name, data, meta, chunk_sectors, zero_new_blocks=zero_new_blocks)
        if pool.slot_size < 4096:
            raise LvmError(f"thin pool {name}: metadata LV too small")
        for slot in (0, 1):
            meta.pwrite(slot * pool.slot_size, pack_table(slot, {}))
        pool.seqno = 1
        meta.flush()
        return pool

    @classmethod
    def load(cls, name: str, data: _Raw, meta: _Raw, chunk_sectors: int, *,
             zero_new_blocks: bool = True) -> ThinPool:
        """Open a pool: the newest valid table wins."""
        pool = cls(name, data, meta, chunk_sectors, zero_new_blocks=zero_new_blocks)
        best: tuple[int, dict[int, dict[int, int]]] | None = None
        errors = []
        for slot in (0, 1):
            try:
                got = unpack_table(meta.pread(slot * pool.slot_size, pool.slot_size),
                                   pool.slot_size, f"thin pool {name} slot {slot}")
            except LvmError as exc:
                errors.append(str(exc))
                continue
            if best is None or got[0] > best[0]:
                best = got
        if best is None:
            raise LvmError(f"thin pool {name}: no valid metadata table ({'; '.join(errors)})")
        pool.seqno, pool.maps = best
        pool._recount()
        return pool

    def commit(self) -> None:
        """Make every mapping durable: data first, then the table into the older slot."""
        self.data.flush()
        raw = pack_table(self.seqno + 1, self.maps)
        if len(raw) > self.slot_size:
            raise LvmError(f"thin pool {self.name}: metadata full ({len(raw)} bytes of "
                           f"mappings, {self.slot_size} per slot); extend {self.name}_tmeta")
        slot = (self.seqno + 1) % 2
        self.meta.pwrite(slot * self.slot_size, raw)
        self.meta.flush()
        self.seqno += 1
        self.committed = array("I", self.refs)
        self.fresh.clear()

    # ------------------------------------------------------------ devices
    def create(self, dev_id: int) -> None:
        """A new empty thin device."""
        if dev_id in self.maps:
            raise LvmError(f"thin pool {self.name}: device {dev_id} already exists")
        self.maps[dev_id] = {}
        self.commit()

    def snapshot(self, origin: int, dev_id: int) -> None:
        """A new device sharing every chunk of `origin` (O(mapped chunks), no data copied)."""
        if dev_id in self.maps:
            raise LvmError(f"thin pool {self.name}: device {dev_id} already exists")
        src = self._dev(origin)
        self.maps[dev_id] = dict(src)
        for d in src.values():
            self.refs[d] += 1
        self.commit()

    def delete(self, dev_id: int) -> None:
        """Drop a device; its chunks are free after this commit."""
        m = self.maps.pop(dev_id, None)
        if m is None:
            return
        for d in m.values():
            self.refs[d] -= 1
        self.commit()

    def retain(self, dev_ids: set[int]) -> list[int]:
        """Delete devices the VG metadata no longer knows (left by an interrupted change)."""
        orphans = [d for d in self.maps if d not in dev_ids]
        for d in orphans:
            self.delete(d)
        return orphans

    def _dev(self, dev_id: int) -> dict[int, int]:
        try:
            return self.maps[dev_id]
        except KeyError:
            raise LvmError(f"thin pool {self.name}: no thin device {dev_id}") from None

    def mapped_chunks(self, dev_id: int) -> int:
        """Chunks the device maps (its `Data%` numerator)."""
        return len(self._dev(dev_id))

    # ------------------------------------------------------------ data
    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        c = self.chunk
        end = offset + length
        while offset < end:
            v, within = divmod(offset, c)
            n = min(c - within, end - offset)
            yield v, within, n
            offset += n

    def _allocate(self) -> int:
        refs, committed, n = self.refs, self.committed, len(self.refs)
        for i in range(n):
            d = (self._hint + i) % n
            if refs[d] == 0 and committed[d] == 0:  # free now and in the committed table
                self._hint = d + 1
                refs[d] = 1
                self.fresh.add(d)
                return d
        raise ThinPoolFullError(f"thin pool {self.name} is out of data space "
                                f"({n} chunks of {self.chunk} bytes); extend it")

    def read(self, dev_id: int, offset: int, length: int) -> bytes:
        """Bytes of a thin device (unmapped chunks read as zeros)."""
        m = self._dev(dev_id)
        out = []
        for v, within, n in self._pieces(offset, length):
            d = m.get(v)
            out.append(bytes(n) if d is None else self.data.pread(d * self.chunk + within, n))
        return b"".join(out)

    def write(self, dev_id: int, offset: int, data: bytes) -> None:
        """Write into a thin device, breaking sharing and allocating chunks as needed."""
        m = self._dev(dev_id)
        view = memoryview(data)
        pos = 0
        c = self.chunk
        for v, within, n in self._pieces(offset, len(data)):
            d = m.get(v)
            piece = view[pos:pos + n]
            if d is not None and self.refs[d] == 1 and (d in self.fresh or
                                                        self.committed[d] <= 1):
                self.data.pwrite(d * c + within, bytes(piece))
            else:
                new = self._allocate()
                if d is not None:  # shared (now or in the committed table): copy, then write
                    old = bytearray(self.data.pread(d * c, c))
                    self.refs[d] -= 1
                elif n < c and self.zero_new_blocks:
                    old = bytearray(c)
                else:
                    old = None
                if old is not None:
                    old[within:within + n] = piece
                    self.data.pwrite(new * c, bytes(old))
                else:
                    self.data.pwrite(new * c + within, bytes(piece))
                m[v] = new
            pos += n

    def discard(self, dev_id: int, offset: int, length: int) -> None:
        """Unmap the chunks wholly inside the range (they read as zeros afterwards)."""
        m = self._dev(dev_id)
        c = self.chunk
        first, last = -(-offset // c), (offset + length) // c
        for v in range(first, last):
            d = m.pop(v, None)
            if d is not None:
                self.refs[d] -= 1
        for v, within, n in self._pieces(offset, length):
            if n < c and v in m:  # partial chunk: write zeros
                self.write(dev_id, v * c + within, bytes(n))

    def truncate(self, dev_id: int, size: int) -> None:
        """Unmap chunks at or past `size` (a reduced thin LV)."""
        m = self._dev(dev_id)
        first = -(-size // self.chunk)
        for v in [v for v in m if v >= first]:
            self.refs[m.pop(v)] -= 1


class ThinView(Protocol):
    """What a thin device needs from its VG (implemented by `VolumeGroup`)."""

    generation: int

    def thin_binding(self, lv_id: str) -> tuple[str, ThinPool, int, int, bool]: ...

    def watch(self, dev: object) -> None: ...


class ThinDevice(FollowsVg):
    """A thin LV (or thin snapshot) as a `BlockDevice`; `flush` commits the pool's mappings."""

    _vg: ThinView  # type: ignore[assignment]

    def _refresh(self) -> None:
        self.name, self.pool, self.device_id, self._size, self._read_only = \
            self._vg.thin_binding(self._lv_id)
        self._gen = self._vg.generation

    def invalidate(self) -> None:
        """The VG's metadata changed (resize, rename, removal)."""
        self._gen = -1

    def _check(self, offset: int, length: int) -> None:
        if self._gen != self._vg.generation:
            self._refresh()
        if offset < 0 or length < 0 or offset + length > self._size:
            raise LvmError(f"{self.name}: I/O at {offset}+{length} beyond the LV's "
                           f"{self._size} bytes")

    def read(self, offset: int, length: int) -> bytes:
        """Bytes at `offset` (unprovisioned chunks read as zeros)."""
        self._check(offset, length)
        return self.pool.read(self.device_id, offset, length)

    def write(self, offset: int, data: bytes) -> None:
        """Write, provisioning chunks from the pool."""
        self._check(offset, len(data))
        if self._read_only:
            raise LvmError(f"{self.name}: logical volume is read-only")
        self.pool.write(self.device_id, offset, data)

    def flush(self) -> None:
        """Commit the pool's mappings (as a FLUSH does for dm-thin)."""
        if not self.closed:
            self.pool.commit()

    def discard(self, offset: int, length: int) -> None:
        """Return whole chunks to the pool."""
        self._check(offset, length)
        if self._read_only:
            raise LvmError(f"{self.name}: logical volume is read-only")
        self.pool.discard(self.device_id, offset, length)

    def close(self) -> None:
        """Flush and stop using the device (letting another writer in)."""
        if not self.closed:
            try:
                self.flush()
            finally:
                self.closed = True
                lock = getattr(self, "write_lock", None)
                if lock is not None:
                    lock.release()
