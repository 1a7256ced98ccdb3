"""LVM2's binary on-disk structures: the PV label, the PV header and the metadata-area header.

Layout (little-endian, as LVM2 `format_text/layout.h` and `label/label.h` define it):

- label sector (sector 1 of the PV): `LABELONE`, sector number, CRC, header offset, `LVM2 001`;
  then the PV header: 32-char PV UUID, device size in bytes, the data-area list and the
  metadata-area list (each `{offset, size}` in bytes, ended by a zero pair), then the version-2
  extension (version, flags, bootloader-area list).
- metadata area: a 512-byte header (CRC, magic ` LVM2 x[5A%r0N*>`, version 1, the area's start
  and size, `raw_locn` slots `{offset, size, checksum, flags}` pointing at the committed text),
  then a circular buffer holding the text metadata.

Pure codec: bytes in, dataclasses out and back. CRCs are LVM2's CRC-32 (the zlib polynomial,
seed 0xf597a6cf, no final inversion).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from storage.errors import LvmError

SECTOR = 512
LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
LABEL_SCAN_SECTORS = 4
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_HEADER_SIZE = 512
FMTT_VERSION = 1
PV_HEADER_EXTENSION_VSN = 2
PV_EXT_USED = 0x1
INITIAL_CRC = 0xF597A6CF
ID_LEN = 32
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#"
RAW_LOCN_IGNORED = 0x1

_LABEL = struct.Struct("<8sQII8s")  # id, sector_xl, crc_xl, offset_xl, type
_DISK_LOCN = struct.Struct("<QQ")
_MDA_HEAD = struct.Struct("<I16sIQQ")  # checksum, magic, version, start, size
_RAW_LOCN = struct.Struct("<QQII")


def lvm_crc(data: bytes, seed: int = INITIAL_CRC) -> int:
    """LVM2's `calc_crc`: CRC-32 with the given seed and no final inversion."""
    return zlib.crc32(data, seed ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def format_id(raw: str) -> str:
    """32-char UUID → LVM2's dashed display form (6-4-4-4-4-4-6)."""
    if len(raw) != ID_LEN:
        raise LvmError(f"UUID {raw!r} is not {ID_LEN} characters")
    cuts = (6, 4, 4, 4, 4, 4, 6)
    out, pos = [], 0
    for c in cuts:
        out.append(raw[pos:pos + c])
        pos += c
    return "-".join(out)


def parse_id(text: str) -> str:
    """Dashed or plain UUID → the 32 characters; LvmError if malformed."""
    raw = text.replace("-", "")
    if len(raw) != ID_LEN or any(c not in ID_CHARS for c in raw):
        raise LvmError(f"malformed LVM UUID {text!r}")
    return raw


@dataclass(frozen=True)
class DiskLocn:
    """An `{offset, size}` area on the PV, in bytes (size 0 = to the end of the device)."""

    offset: int
    size: int


@dataclass
class PvLabel:
    """The label sector's contents: PV UUID, device size, data and metadata areas."""

    pv_uuid: str  # 32 chars, no dashes
    device_size: int  # bytes
    data_areas: list[DiskLocn] = field(default_factory=list)
    metadata_areas: list[DiskLocn] = field(default_factory=list)
    ext_version: int = PV_HEADER_EXTENSION_VSN
    ext_flags: int = 0
    bootloader_areas: list[DiskLocn] = field(default_factory=list)
    sector: int = 1


def pack_label(label: PvLabel) -> bytes:
    """The 512-byte label sector for `label`."""
    body = bytearray()
    body += label.pv_uuid.encode("ascii")
    body += struct.pack("<Q", label.device_size)
    for areas in (label.data_areas, label.metadata_areas):
        for a in areas:
            body += _DISK_LOCN.pack(a.offset, a.size)
        body += _DISK_LOCN.pack(0, 0)
    if label.ext_version:
        body += struct.pack("<II", label.ext_version, label.ext_flags)
        for a in label.bootloader_areas:
            body += _DISK_LOCN.pack(a.offset, a.size)
        body += _DISK_LOCN.pack(0, 0)
    sector = bytearray(SECTOR)
    offset_xl = _LABEL.size
    if offset_xl + len(body) > SECTOR:
        raise LvmError("PV label does not fit in one sector (too many areas)")
    sector[offset_xl:offset_xl + len(body)] = body
    _LABEL.pack_into(sector, 0, LABEL_ID, label.sector, 0, offset_xl, LABEL_TYPE)
    crc = lvm_crc(bytes(sector[20:]))
    struct.pack_into("<I", sector, 16, crc)
    return bytes(sector)


def unpack_label(sector: bytes, where: str = "<pv>") -> PvLabel:
    """Parse a label sector; LvmError naming the field when it is not a valid LVM2 label."""
    if len(sector) < SECTOR:
        raise LvmError(f"{where}: label sector truncated ({len(sector)} bytes)")
    ident, sector_xl, crc, offset_xl, ltype = _LABEL.unpack_from(sector, 0)
    if ident != LABEL_ID:
        raise LvmError(f"{where}: no LVM label (id {ident!r})")
    if lvm_crc(bytes(sector[20:SECTOR])) != crc:
        raise LvmError(f"{where}: label checksum mismatch")
    if ltype != LABEL_TYPE:
        raise LvmError(f"{where}: label type {ltype!r} is not LVM2 001")
    if not 32 <= offset_xl <= SECTOR - 48:
        raise LvmError(f"{where}: PV header offset {offset_xl} out of range")
    pos = offset_xl
    try:
        uuid = sector[pos:pos + ID_LEN].decode("ascii")
    except UnicodeDecodeError as exc:
        raise LvmError(f"{where}: PV UUID is not ASCII") from exc
    pos += ID_LEN
    (dev_size,) = struct.unpack_from("<Q", sector, pos)
    pos += 8

    def areas() -> list[DiskLocn]:
        nonlocal pos
        out = []
        while True:
            if pos + _DISK_LOCN.size > SECTOR:
                raise LvmError(f"{where}: PV header area list runs past the label sector")
            off, size = _DISK_LOCN.unpack_from(sector, pos)
            pos += _DISK_LOCN.size
            if off == 0:
                return out
            out.append(DiskLocn(off, size))

    label = PvLabel(pv_uuid=uuid, device_size=dev_size, sector=sector_xl)
    label.data_areas = areas()
    label.metadata_areas = areas()
    if pos + 8 <= SECTOR:
        label.ext_version, label.ext_flags = struct.unpack_from("<II", sector, pos)
        pos += 8
        if label.ext_version:
            label.bootloader_areas = areas()
    return label


@dataclass
class RawLocn:
    """Where the committed text sits in the metadata area (offset relative to the area start)."""

    offset: int
    size: int
    checksum: int
    flags: int = 0


@dataclass
class MdaHeader:
    """A metadata area's 512-byte header."""

    start: int  # absolute byte offset of the area on the PV
    size: int  # bytes, header included
    locns: list[RawLocn] = field(default_factory=list)
    version: int = FMTT_VERSION


def pack_mda_header(h: MdaHeader) -> bytes:
    """The 512-byte header with its checksum."""
    buf = bytearray(MDA_HEADER_SIZE)
    _MDA_HEAD.pack_into(buf, 0, 0, MDA_MAGIC, h.version, h.start, h.size)
    pos = _MDA_HEAD.size
    for loc in h.locns:
        _RAW_LOCN.pack_into(buf, pos, loc.offset, loc.size, loc.checksum, loc.flags)
        pos += _RAW_LOCN.size
    struct.pack_into("<I", buf, 0, lvm_crc(bytes(buf[4:])))
    return bytes(buf)


def unpack_mda_header(buf: bytes, where: str = "<mda>") -> MdaHeader:
    """Parse and verify a metadata-area header."""
    if len(buf) < MDA_HEADER_SIZE:
        raise LvmError(f"{where}: metadata area header truncated")
    crc, magic, version, start, size = _MDA_HEAD.unpack_from(buf, 0)
    if lvm_crc(bytes(buf[4:MDA_HEADER_SIZE])) != crc:
        raise LvmError(f"{where}: metadata area header checksum mismatch")
    if magic != MDA_MAGIC:
        raise LvmError(f"{where}: bad metadata area magic {magic!r}")
    if version != FMTT_VERSION:
        raise LvmError(f"{where}: metadata area version {version} unsupported")
    h = MdaHeader(start=start, size=size, version=version)
    pos = _MDA_HEAD.size
    while pos + _RAW_LOCN.size <= MDA_HEADER_SIZE:
        off, sz, ck, fl = _RAW_LOCN.unpack_from(buf, pos)
        pos += _RAW_LOCN.size
        if off == 0:
            break
        h.locns.append(RawLocn(off, sz, ck, fl))
    return h


def circular_read_plan(h: MdaHeader, loc: RawLocn) -> list[tuple[int, int]]:
    """Absolute (offset, length) pieces of a committed text that may wrap in the buffer."""
    if loc.offset < MDA_HEADER_SIZE or loc.offset >= h.size or loc.size > h.size - MDA_HEADER_SIZE:
        raise LvmError(f"metadata text location {loc.offset}+{loc.size} outside area of {h.size}")
    first = min(loc.size, h.size - loc.offset)
    plan = [(h.start + loc.offset, first)]
    if first < loc.size:
        plan.append((h.start + MDA_HEADER_SIZE, loc.size - first))
    return plan


def next_text_offset(h: MdaHeader, size: int) -> int:
    """Where to put the next committed text: after the current one, never overlapping it."""
    usable = h.size - MDA_HEADER_SIZE
    if size > usable // 2:
        raise LvmError(f"metadata of {size} bytes does not fit twice in an area of {h.size} "
                       "bytes (create PVs with a larger metadata area)")
    if not h.locns:
        return MDA_HEADER_SIZE
    cur = h.locns[0]
    cur_end = cur.offset + cur.size
    if cur_end > h.size:  # current text wraps: its tail sits at the buffer start
        start = MDA_HEADER_SIZE + (cur_end - h.size)
    else:
        start = cur_end
    start = -(-start // SECTOR) * SECTOR
    if start + size > h.size:  # wrap to the buffer start, if that does not overlap `cur`
        start = MDA_HEADER_SIZE
        if cur.offset < start + size:
            raise LvmError("metadata area too small for the new text next to the current one")
    return start
