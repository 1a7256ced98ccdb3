"""Changed block tracking (XenServer CBT): which 64 KiB blocks of a VDI were written since a
snapshot.

While CBT is enabled on a VDI, every write first sets the bits of the 64 KiB blocks it touches
in the VDI's CBT log, `<sr>/<uuid>.cbtlog` beside the SR's metadata (on every SR type), and
only then goes to the disk: the log write is ordered before the data write (and, on an SR with
`sync`, flushed before it), so a crash or power cut never leaves written data whose block is
missing from the log.

As in XenServer (blktap's cbt log, `cbt-util`), logs form a chain: a snapshot takes the VDI's
log as its frozen copy and the VDI starts an empty log whose parent is the snapshot's. The
blocks changed between snapshot FROM and VDI (or later snapshot) TO are the OR of the logs from
TO back to, not including, FROM. `xe vdi-list-changed-blocks` prints that bitmap base64
encoded, one bit per 64 KiB block, the first block in the most significant bit of the first
byte. `vdi-data-destroy` drops a snapshot's data but keeps its log, so it can still be a FROM.

Log layout (ours): a 4 KiB header (magic `HVCBTLOG`, version, block size, virtual size,
parent and child log uuids, consistent flag) and the bitmap from offset 4096. Logs are opened
with shared image locks: writers only ever set bits, so a reader (`list-changed-blocks`) may
read while a plugged VBD writes.
"""
from __future__ import annotations

import base64
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from storage.devices.blockdev import BlockDevice, DelegatingDisk
from storage.devices.imagelock import LockMode
from storage.devices.rawio import FileIO, RawIO
from storage.errors import SrError

if TYPE_CHECKING:
    from storage.sr.sr import SR, VDI

BLOCK = 64 * 1024
MAGIC = b"HVCBTLOG"
VERSION = 1
HEADER = 4096
_HDR = struct.Struct(">8sIIQ36s36sB")


def log_path(sr_path: Path, uuid: str) -> Path:
    """Where the CBT log of VDI `uuid` lives."""
    return sr_path / f"{uuid}.cbtlog"


def bitmap_bytes(size: int) -> int:
    """Bytes of bitmap for a disk of `size` bytes."""
    blocks = -(-size // BLOCK)
    return -(-blocks // 8)


class CbtLog:
    """An open CBT log: its links and bitmap (kept in memory; changed bytes written through)."""

    def __init__(self, io: RawIO, *, size: int, parent: str | None, child: str | None,
                 bitmap: bytearray, barriers: bool = False) -> None:
        self.io = io
        self.size = size
        self.parent = parent
        self.child = child
        self.bitmap = bitmap
        self.barriers = barriers

    @classmethod
    def create(cls, io: RawIO, size: int, *, parent: str | None = None,
               bitmap: bytes | None = None, barriers: bool = False) -> CbtLog:
        """Write a new log (all clear, or `bitmap`) into the empty container `io`."""
        bm = bytearray(bitmap) if bitmap is not None else bytearray(bitmap_bytes(size))
        log = cls(io, size=size, parent=parent, child=None, bitmap=bm, barriers=barriers)
        log._write_header()
        io.pwrite(HEADER, bytes(bm))
        io.flush()
        return log

    @classmethod
    def open(cls, io: RawIO, *, barriers: bool = False) -> CbtLog:
        """Read the log in `io`; raises SrError naming what is wrong."""
        raw = io.pread(0, _HDR.size)
        if len(raw) < _HDR.size:
            raise SrError(f"{io.name}: CBT log header truncated ({len(raw)} bytes)")
        magic, version, block, size, parent, child, _consistent = _HDR.unpack(raw)
        if magic != MAGIC:
            raise SrError(f"{io.name}: not a CBT log (magic {magic!r} at offset 0)")
        if version != VERSION or block != BLOCK:
            raise SrError(f"{io.name}: unsupported CBT log (version {version}, block {block})")
        n = bitmap_bytes(size)
        bm = io.pread(HEADER, n)
        if len(bm) != n:
            raise SrError(f"{io.name}: CBT bitmap truncated: {len(bm)} of {n} bytes at "
                          f"offset {HEADER}")
        return cls(io, size=size, parent=_uuid_field(parent), child=_uuid_field(child),
                   bitmap=bytearray(bm), barriers=barriers)

    def _write_header(self) -> None:
        self.io.pwrite(0, _HDR.pack(MAGIC, VERSION, BLOCK, self.size,
                                    (self.parent or "").encode(), (self.child or "").encode(), 1))

    def mark(self, offset: int, length: int) -> None:
        """Set the bits of every block in [offset, offset+length) and make them durable
        before returning (ordered; flushed with `barriers`)."""
        if length <= 0:
            return
        first, last = offset // BLOCK, (offset + length - 1) // BLOCK
        bm = self.bitmap
        lo = hi = None
        for b in range(first, last + 1):
            byte, bit = divmod(b, 8)
            m = 0x80 >> bit
            if not bm[byte] & m:
                bm[byte] |= m
                lo = byte if lo is None else lo
                hi = byte
        if lo is None:
            return                       # already marked: nothing to make durable
        self.io.pwrite(HEADER + lo, bytes(bm[lo:hi + 1]))
        if self.barriers:
            self.io.flush()

    def resize(self, size: int) -> None:
        """Track a disk of `size` bytes (new blocks clear; blocks cut off dropped)."""
        n = bitmap_bytes(size)
        self.bitmap = self.bitmap[:n] + bytearray(max(0, n - len(self.bitmap)))
        self.size = size
        self.io.pwrite(HEADER, bytes(self.bitmap))
        self.io.truncate(HEADER + n)
        self._write_header()
        self.io.flush()

    def close(self) -> None:
        """Close the container."""
        self.io.close()


def _uuid_field(raw: bytes) -> str | None:
    text = raw.rstrip(b"\0").decode("ascii", "replace")
    return text or None


class CbtDevice(DelegatingDisk):
    """A VDI's block device with CBT on: every write (and discard) is logged first."""

    def __init__(self, dev: BlockDevice, log: CbtLog) -> None:
        super().__init__(dev)
        self.log = log

    def write(self, offset: int, data: bytes) -> None:
        """Mark the blocks, then write."""
        self.log.mark(offset, len(data))
        self._dev.write(offset, data)

    def discard(self, offset: int, length: int) -> None:
        """Mark the blocks, then discard (the content changes to zeros)."""
        self.log.mark(offset, length)
        self._dev.discard(offset, length)

    def close(self) -> None:
        """Close the disk and the log."""
        try:
            self._dev.close()
        finally:
            self.log.close()


def open_log(sr: SR, uuid: str) -> CbtLog:
    """Open VDI `uuid`'s CBT log."""
    path = log_path(sr.path, uuid)
    if not path.exists():
        raise SrError(f"VDI {uuid} has no CBT log ({path}); enable CBT with "
                      "`hvsim vdi enable-cbt`")
    return CbtLog.open(FileIO(path, lock=LockMode.SHARED_WRITE), barriers=sr.sync)


def wrap(sr: SR, vdi: VDI, dev: BlockDevice, *, read_only: bool) -> BlockDevice:
    """`dev` with CBT logging when the VDI has CBT enabled and is opened for writing."""
    if read_only or not getattr(vdi, "cbt_enabled", False):
        return dev
    try:
        log = open_log(sr, vdi.uuid)
    except BaseException:
        dev.close()
        raise
    return CbtDevice(dev, log)


def _write_log_file(path: Path, size: int, *, parent: str | None, bitmap: bytes | None) -> None:
    """Atomically (temp file + rename) write a new log at `path`."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    log = CbtLog.create(FileIO(tmp, create=True, lock=LockMode.SHARED_WRITE), size,
                         parent=parent, bitmap=bitmap)
    log.close()
    os.replace(tmp, path)


def enable(sr: SR, uuid: str) -> None:
    """`xe vdi-enable-cbt`: start logging the VDI's writes (idempotent)."""
    with sr.locked():
        vdi = sr.vdi(uuid)
        if vdi.hidden:
            raise SrError(f"VDI {vdi.uuid} is a hidden base copy")
        if vdi.cbt_enabled:
            return
        # A plugged VBD is paused around the change and reopened logging, as XenServer's
        # sm (VDI.configure_blocktracking: tap_pause, create the log, tap_unpause) does.
        with sr._paused(vdi):
            _write_log_file(log_path(sr.path, vdi.uuid), vdi.virtual_size, parent=None,
                            bitmap=None)
            vdi.cbt_enabled = True
            sr.save()


def disable(sr: SR, uuid: str) -> None:
    """`xe vdi-disable-cbt`: stop logging and delete the VDI's own log (snapshots keep
    theirs)."""
    with sr.locked():
        vdi = sr.vdi(uuid)
        if not vdi.cbt_enabled:
            return
        with sr._paused(vdi):       # a plugged VBD continues without logging
            vdi.cbt_enabled = False
            sr.save()
            log_path(sr.path, vdi.uuid).unlink(missing_ok=True)


def on_snapshot(sr: SR, vdi: VDI, snap: VDI) -> None:
    """A snapshot of a CBT-enabled VDI: the snapshot gets the VDI's log (frozen) and the VDI
    starts an empty one chained to it. Called with the VDI's devices paused."""
    src = log_path(sr.path, vdi.uuid)
    log = CbtLog.open(FileIO(src, writable=False, lock=LockMode.SHARED_READ))
    try:
        bitmap, parent, size = bytes(log.bitmap), log.parent, log.size
    finally:
        log.close()
    # frozen copy first: a crash between the two steps leaves the VDI's log whole (a superset)
    _write_log_file(log_path(sr.path, snap.uuid), size, parent=parent, bitmap=bitmap)
    _write_log_file(src, vdi.virtual_size, parent=snap.uuid, bitmap=None)
    snap.cbt_enabled = True


def on_resize(sr: SR, vdi: VDI) -> None:
    """The VDI's size changed: its log follows."""
    if not vdi.cbt_enabled:
        return
    log = open_log(sr, vdi.uuid)
    try:
        log.resize(vdi.virtual_size)
    finally:
        log.close()


def list_changed_blocks(sr: SR, from_uuid: str, to_uuid: str) -> bytes:
    """The bitmap of 64 KiB blocks written between VDI `from_uuid` (a snapshot) and
    `to_uuid` (a later snapshot, or the VDI itself); first block = MSB of byte 0."""
    sr.vdi(from_uuid)
    sr.vdi(to_uuid)
    if from_uuid == to_uuid:    # as sm's VDI.list_changed_blocks (CBTChangedBlocksError)
        raise SrError(f"VDI {from_uuid}: source and target VDI are the same")
    acc = 0
    n: int | None = None
    cur: str | None = to_uuid
    seen: set[str] = set()
    while cur != from_uuid:
        if cur is None or cur in seen:
            raise SrError(f"VDI {from_uuid} is not an earlier snapshot in VDI {to_uuid}'s "
                          "CBT chain (CBT was off, or disabled, in between)")
        seen.add(cur)
        path = log_path(sr.path, cur)
        if not path.exists():
            raise SrError(f"VDI {cur} has no CBT log ({path}): the chain from {to_uuid} to "
                          f"{from_uuid} is broken")
        log = CbtLog.open(FileIO(path, writable=False, lock=LockMode.SHARED_READ))
        try:
            if n is None:
                n = len(log.bitmap)
            acc |= int.from_bytes(bytes(log.bitmap[:n]).ljust(n, b"\0"), "big")
            cur = log.parent
        finally:
            log.close()
    if n is None:                        # FROM == TO: nothing changed
        if not log_path(sr.path, from_uuid).exists():
            raise SrError(f"VDI {from_uuid} has no CBT log")
        n = bitmap_bytes(sr.vdi(to_uuid).virtual_size)
    return acc.to_bytes(n, "big")


def encode(bitmap: bytes) -> str:
    """The base64 text `xe vdi-list-changed-blocks` prints."""
    return base64.b64encode(bitmap).decode("ascii")


def ranges(bitmap: bytes) -> list[tuple[int, int]]:
    """The set bits as merged (offset, length) byte ranges."""
    out: list[tuple[int, int]] = []
    for byte_i, byte in enumerate(bitmap):
        if not byte:
            continue
        for bit in range(8):
            if byte & (0x80 >> bit):
                off = (byte_i * 8 + bit) * BLOCK
                if out and out[-1][0] + out[-1][1] == off:
                    out[-1] = (out[-1][0], out[-1][1] + BLOCK)
                else:
                    out.append((off, BLOCK))
    return out


def data_destroy(sr: SR, uuid: str) -> None:
    """`xe vdi-data-destroy`: delete a CBT-enabled snapshot's data, keeping its CBT log (the
    VDI stays, as type cbt_metadata, usable as a FROM)."""
    with sr.locked():
        vdi = sr.vdi(uuid)
        if not vdi.is_a_snapshot:
            raise SrError(f"VDI {vdi.uuid} is not a snapshot; only snapshots' data can be "
                          "destroyed")
        if not vdi.cbt_enabled:
            raise SrError(f"VDI {vdi.uuid} does not have CBT enabled; destroy it instead")
        if vdi.cbt_metadata:
            return
        if sr.children(vdi.uuid):
            raise SrError(f"VDI {vdi.uuid} has children")
        if any(v.vdi == vdi.uuid and v.currently_attached for v in sr.vbds.values()):
            raise SrError(f"VDI {vdi.uuid} is attached; unplug it first")
        sr.driver.vdi_destroy(vdi)
        vdi.cbt_metadata = True
        vdi.location = ""
        vdi.parent = None
        sr.save()
