"""Xen blkif wire format (`xen/include/public/io/blkif.h`, `io/ring.h`), x86-64 ABI — pure code.

Everything here works on buffers and integers: no I/O, no clock, no globals that change. The
layouts are declared once as `struct.Struct`s and checked against the C sizes at import time:

    ring header      req_prod, req_event, rsp_prod, rsp_event (u32 each), padding to 64 bytes
    request          u8 op; u8 nr_segments; u16 handle; (4 pad) u64 id; u64 sector;
                     11 x {u32 gref; u8 first_sect; u8 last_sect; (2 pad)}            = 112 bytes
    discard request  u8 op; u8 flag; u16 handle; (4 pad) u64 id; u64 sector; u64 nr_sectors = 32
    indirect request u8 op; u8 indirect_op; u16 nr_segments; (4 pad) u64 id; u64 sector;
                     u16 handle; (2 pad) u32 indirect_grefs[8]; (4 pad)                = 64
    response         u64 id; u8 op; (1 pad) i16 status; (4 pad)                        = 16
    slot             union of request and response                                     = 112

Ring indices are free-running u32 counters; a slot is `index & (nr_ents - 1)`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from storage.errors import RingProtocolError

PAGE_SIZE = 4096
SECTOR_SIZE = 512
SECTORS_PER_PAGE = PAGE_SIZE // SECTOR_SIZE  # 8: first_sect/last_sect range 0..7
MAX_SEGMENTS = 11  # BLKIF_MAX_SEGMENTS_PER_REQUEST
MAX_INDIRECT_PAGES = 8  # BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST
U32 = 0xFFFFFFFF


class Op(IntEnum):
    """BLKIF_OP_* request codes."""

    READ = 0
    WRITE = 1
    WRITE_BARRIER = 2
    FLUSH_DISKCACHE = 3
    RESERVED_1 = 4
    DISCARD = 5
    INDIRECT = 6


class Status(IntEnum):
    """BLKIF_RSP_* response codes."""

    OKAY = 0
    ERROR = -1
    EOPNOTSUPP = -2


DISCARD_SECURE = 0x1  # BLKIF_DISCARD_SECURE flag of a discard request

# --- layouts (declared once) -------------------------------------------------------------------
HEADER = struct.Struct("<IIII48x")  # req_prod, req_event, rsp_prod, rsp_event, pvt+pad
SEGMENT = struct.Struct("<IBB2x")  # gref, first_sect, last_sect
REQUEST = struct.Struct("<BBH4xQQ" + "IBB2x" * MAX_SEGMENTS)
REQUEST_HEAD = struct.Struct("<BBH4xQQ")  # op, nr_segments, handle, id, sector
DISCARD = struct.Struct("<BBH4xQQQ")  # op, flag, handle, id, sector, nr_sectors
INDIRECT = struct.Struct(f"<BBH4xQQH2x{MAX_INDIRECT_PAGES}I4x")
RESPONSE = struct.Struct("<QBxh4x")  # id, op, status

SLOT_SIZE = max(REQUEST.size, RESPONSE.size)
HEADER_SIZE = HEADER.size
SEGMENTS_PER_INDIRECT_PAGE = PAGE_SIZE // SEGMENT.size  # 512

# Offsets of the header fields, for single-field reads/writes of the shared page.
REQ_PROD_OFF, REQ_EVENT_OFF, RSP_PROD_OFF, RSP_EVENT_OFF = 0, 4, 8, 12
_U32 = struct.Struct("<I")

assert (HEADER.size, SEGMENT.size, REQUEST.size) == (64, 8, 112)
assert (DISCARD.size, INDIRECT.size, RESPONSE.size) == (32, 64, 16)


def ring_slots(nr_pages: int) -> int:
    """Number of slots of a ring spanning `nr_pages` 4 KiB pages (rounded down to a power of 2)."""
    if nr_pages < 1:
        raise RingProtocolError(f"ring needs at least one page, got {nr_pages}")
    n = (nr_pages * PAGE_SIZE - HEADER_SIZE) // SLOT_SIZE
    return 1 << (n.bit_length() - 1)


def slot_offset(index: int, nr_ents: int) -> int:
    """Byte offset in the ring pages of the slot a free-running index refers to."""
    return HEADER_SIZE + (index & (nr_ents - 1)) * SLOT_SIZE


def u32(value: int) -> int:
    """Wrap an index to the u32 range, as C's RING_IDX arithmetic does."""
    return value & U32


def need_notify(new: int, old: int, event: int) -> bool:
    """`RING_PUSH_*_AND_CHECK_NOTIFY`: notify iff the event index lies in (old, new]."""
    return ((new - event) & U32) < ((new - old) & U32)


# --- messages ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Segment:
    """One scatter/gather element: sectors first..last (inclusive) of the granted page `gref`."""

    gref: int
    first_sect: int
    last_sect: int

    @property
    def nr_sectors(self) -> int:
        """Sectors this segment transfers."""
        return self.last_sect - self.first_sect + 1


@dataclass(frozen=True, slots=True)
class Request:
    """A READ/WRITE/FLUSH/BARRIER request (`struct blkif_request`); any op value as found."""

    op: int
    id: int
    sector: int = 0
    segments: tuple[Segment, ...] = ()
    handle: int = 0
    nr_segments: int | None = None  # as written on the ring; defaults to len(segments)

    @property
    def declared_segments(self) -> int:
        """`nr_segments` as carried on the wire."""
        return len(self.segments) if self.nr_segments is None else self.nr_segments


@dataclass(frozen=True, slots=True)
class DiscardRequest:
    """`struct blkif_request_discard`."""

    id: int
    sector: int
    nr_sectors: int
    flag: int = 0
    handle: int = 0
    op: int = Op.DISCARD


@dataclass(frozen=True, slots=True)
class IndirectRequest:
    """`struct blkif_request_indirect`: segments live in granted pages named by `indirect_grefs`."""

    indirect_op: int
    id: int
    sector: int
    nr_segments: int
    indirect_grefs: tuple[int, ...]
    handle: int = 0
    op: int = Op.INDIRECT


@dataclass(frozen=True, slots=True)
class Response:
    """`struct blkif_response`."""

    id: int
    op: int
    status: int


AnyRequest = Request | DiscardRequest | IndirectRequest


def pack_request_into(buf: memoryview | bytearray, offset: int, req: AnyRequest) -> None:
    """Write `req` as one ring slot (112 bytes) at `offset`."""
    if isinstance(req, Request):
        nseg = req.declared_segments
        if len(req.segments) > MAX_SEGMENTS:
            raise RingProtocolError(f"request {req.id}: {len(req.segments)} segments > 11")
        fields: list[int] = [req.op, nseg, req.handle, req.id, req.sector]
        for seg in req.segments:
            fields += (seg.gref, seg.first_sect, seg.last_sect)
        fields += (0, 0, 0) * (MAX_SEGMENTS - len(req.segments))
        REQUEST.pack_into(buf, offset, *fields)
    elif isinstance(req, DiscardRequest):
        DISCARD.pack_into(buf, offset, req.op, req.flag, req.handle, req.id, req.sector,
                          req.nr_sectors)
    else:
        grefs = tuple(req.indirect_grefs)
        if len(grefs) > MAX_INDIRECT_PAGES:
            raise RingProtocolError(f"request {req.id}: {len(grefs)} indirect pages > 8")
        grefs += (0,) * (MAX_INDIRECT_PAGES - len(grefs))
        INDIRECT.pack_into(buf, offset, req.op, req.indirect_op, req.nr_segments, req.id,
                           req.sector, req.handle, *grefs)


def unpack_request(buf: bytes | memoryview, offset: int = 0) -> AnyRequest:
    """Decode the ring slot at `offset` as the request kind its op byte names.

    Never raises for hostile contents: an unknown op or an out-of-range count comes back as
    written, for the backend to judge. Only the first `min(nr_segments, 11)` segments are decoded.
    """
    op = buf[offset]
    if op == Op.DISCARD:
        _, flag, handle, rid, sector, nr = DISCARD.unpack_from(buf, offset)
        return DiscardRequest(id=rid, sector=sector, nr_sectors=nr, flag=flag, handle=handle)
    if op == Op.INDIRECT:
        f = INDIRECT.unpack_from(buf, offset)
        return IndirectRequest(indirect_op=f[1], id=f[3], sector=f[4], nr_segments=f[2],
                               indirect_grefs=tuple(f[6:]), handle=f[5])
    f = REQUEST.unpack_from(buf, offset)
    nseg = f[1]
    n = min(nseg, MAX_SEGMENTS)
    segs = tuple(Segment(f[5 + 3 * i], f[6 + 3 * i], f[7 + 3 * i]) for i in range(n))
    return Request(op=op, id=f[3], sector=f[4], segments=segs, handle=f[2],
                   nr_segments=None if nseg == n else nseg)


def unpack_segments(buf: bytes | memoryview, count: int) -> list[Segment]:
    """Decode `count` consecutive `blkif_request_segment`s (the contents of indirect pages)."""
    return [Segment(*SEGMENT.unpack_from(buf, i * SEGMENT.size)) for i in range(count)]


def pack_segments(segments: list[Segment]) -> bytes:
    """Encode segments as an indirect page's contents."""
    return b"".join(SEGMENT.pack(s.gref, s.first_sect, s.last_sect) for s in segments)


def pack_segment_table(flat: list[int]) -> bytes:
    """Encode flat (gref, first_sect, last_sect, ...) triples as an indirect page's contents."""
    count = len(flat) // 3
    return struct.pack("<" + "IBB2x" * count, *flat)


def pack_rw_into(buf: memoryview | bytearray, offset: int, op: int, rid: int, sector: int,
                 flat: list[int]) -> None:
    """READ/WRITE request from flat (gref, first, last, ...) triples: the data path's packer."""
    nseg = len(flat) // 3
    if nseg > MAX_SEGMENTS:
        raise RingProtocolError(f"request {rid}: {nseg} segments > 11")
    # Only the segments in use are written: the rest of the slot is ignored by nr_segments.
    REQUEST_N[nseg].pack_into(buf, offset, op, nseg, 0, rid, sector, *flat)


# A request's head plus its first n segments, n = 0..11 (the data path packs only those).
REQUEST_N = tuple(struct.Struct("<BBH4xQQ" + "IBB2x" * n) for n in range(MAX_SEGMENTS + 1))


def pack_response_into(buf: memoryview | bytearray, offset: int, rsp: Response) -> None:
    """Write `rsp` into a ring slot at `offset`."""
    RESPONSE.pack_into(buf, offset, rsp.id & 0xFFFFFFFFFFFFFFFF, rsp.op & 0xFF, rsp.status)


def unpack_response(buf: bytes | memoryview, offset: int = 0) -> Response:
    """Decode a response slot."""
    rid, op, status = RESPONSE.unpack_from(buf, offset)
    return Response(rid, op, status)


def read_u32(buf: memoryview | bytearray, offset: int) -> int:
    """One u32 of the ring header."""
    return _U32.unpack_from(buf, offset)[0]


def write_u32(buf: memoryview | bytearray, offset: int, value: int) -> None:
    """Store one u32 of the ring header (wrapped to 32 bits)."""
    _U32.pack_into(buf, offset, value & U32)


def indirect_pages_for(nr_segments: int) -> int:
    """Indirect pages needed to hold `nr_segments` segment descriptors."""
    return -(-nr_segments // SEGMENTS_PER_INDIRECT_PAGE)
