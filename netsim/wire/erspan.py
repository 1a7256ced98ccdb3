"""Encapsulated remote mirroring: a mirrored Ethernet frame inside IPv4 + GRE (+ ERSPAN).

What a vDS `encapsulatedRemoteMirrorSource` session sends to its IP destination
(`VMwareDVSVspanSessionEncapType`: `gre`, `erspan2`, `erspan3`), laid out as the ERSPAN draft
(draft-foschiano-erspan) and Linux `include/net/erspan.h` lay it out, and as Wireshark's `gre`
and `erspan` dissectors read it:

- outer Ethernet (optionally 802.1Q-tagged: the VMkernel port's VLAN), IPv4 protocol 47 (GRE);
- `gre`: a 4-byte GRE header, protocol 0x6558 (transparent Ethernet bridging), then the frame;
- `erspan2` (ERSPAN type II): GRE with the S bit and a sequence number, protocol 0x88BE, then
  8 bytes: Ver=1 | VLAN(12) ; COS(3) | En(2) | T(1) | Session ID(10) ; reserved(12) | Index(20);
- `erspan3` (ERSPAN type III): GRE with S and sequence, protocol 0x22EB, then 12 bytes:
  Ver=2 | VLAN ; COS | BSO(2) | T | Session ID ; Timestamp(32) ; SGT(16) | P(1) | FT(5) |
  HW ID(6) | D(1) | Gra(2) | O(1). We set P=1, FT=0 (an Ethernet frame), as Linux does.

T = the mirrored frame was truncated (`mirroredPacketLength`). VLAN/En carry the original
frame's outer tag (En 0b11 "tag preserved in the frame", 0b00 "untagged"). Pure: no clock or
I/O; the caller passes the sequence number and timestamp.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

from netsim.errors import FrameError

GRE_PROTO_TEB = 0x6558  # transparent Ethernet bridging (plain GRE mirroring)
GRE_PROTO_ERSPAN2 = 0x88BE
GRE_PROTO_ERSPAN3 = 0x22EB
IPPROTO_GRE = 47
ENCAPSULATIONS = ("gre", "erspan2", "erspan3")
#: ERSPAN type III timestamp granularity (`Gra`): 100 microseconds or 100 nanoseconds
GRA_100US = 0
GRA_100NS = 1


def _ip_checksum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, *, ident: int = 0,
                ttl: int = 64, tos: int = 0) -> bytes:
    """A 20-byte IPv4 header (don't fragment set) with its checksum."""
    total = 20 + payload_len
    if total > 0xFFFF:
        raise FrameError(f"IPv4 packet of {total} bytes is bigger than 65535")
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident & 0xFFFF, 0x4000, ttl, proto,
                      0, src, dst)
    return hdr[:10] + struct.pack("!H", _ip_checksum(hdr)) + hdr[12:]


@dataclass(frozen=True)
class ErspanTunnel:
    """The outer headers of one session: from the host's VMkernel address to the collector."""

    encapsulation: str  # gre | erspan2 | erspan3
    src_mac: bytes
    dst_mac: bytes
    src_ip: bytes  # 4 bytes
    dst_ip: bytes
    session_id: int = 0  # ERSPAN session ID, 0..1023 (`erspanId`)
    cos: int = 0  # `erspanCOS`, 0..7
    vlan: int = 0  # outer 802.1Q tag of the VMkernel port (0 = untagged)
    gra_ns: bool = False  # type III timestamps in 100 ns (`erspanGraNanosec`), else 100 us

    def __post_init__(self) -> None:
        if self.encapsulation not in ENCAPSULATIONS:
            raise FrameError(f"encapsulation {self.encapsulation!r}: expected one of "
                             f"{', '.join(ENCAPSULATIONS)}")
        if not 0 <= self.session_id <= 1023:
            raise FrameError(f"ERSPAN session ID {self.session_id} outside 0..1023")
        if not 0 <= self.cos <= 7:
            raise FrameError(f"ERSPAN COS {self.cos} outside 0..7")
        if not 0 <= self.vlan <= 4094:
            raise FrameError(f"VLAN {self.vlan} outside 0..4094")
        for name in ("src_mac", "dst_mac"):
            if len(getattr(self, name)) != 6:
                raise FrameError(f"{name} must be 6 bytes")
        for name in ("src_ip", "dst_ip"):
            if len(getattr(self, name)) != 4:
                raise FrameError(f"{name} must be 4 bytes (IPv4)")

    @cached_property
    def _fixed(self) -> tuple[bytes, int, bytes]:
        """What every outer frame of the session shares: the Ethernet header (and tag), the
        one's-complement sum of the IPv4 header's constant words, the header's address part."""
        l2 = self.dst_mac + self.src_mac
        if self.vlan:
            l2 += struct.pack("!HH", 0x8100, self.vlan)
        addrs = self.src_ip + self.dst_ip
        base = 0x4500 + 0x4000 + ((64 << 8) | IPPROTO_GRE) + sum(struct.unpack("!4H", addrs))
        return l2 + b"\x08\x00", base, addrs

    def encapsulate(self, frame: bytes, *, seq: int = 0, truncated: bool = False,
                    timestamp: int = 0, egress: bool = False, index: int = 0) -> bytes:
        """The whole outer frame carrying `frame` (already cut to the session's length).
        `seq`: GRE sequence number (per session); `timestamp`: ERSPAN III's, in `Gra` units;
        `egress`: the copy was taken as the frame left the source port; `index`: type II's
        port index."""
        if len(frame) < 14:
            raise FrameError(f"cannot mirror a {len(frame)}-byte frame (shorter than Ethernet)")
        tagged = (frame[12] == 0x81 and frame[13] == 0) or (frame[12] == 0x88 and frame[13] == 0xA8)
        vid = ((frame[14] << 8) | frame[15]) & 0x0FFF if tagged and len(frame) >= 18 else 0
        t = 1024 if truncated else 0
        seq &= 0xFFFFFFFF
        enc = self.encapsulation
        if enc == "erspan3":
            low = 0x8000 | (8 if egress else 0) | ((GRA_100NS if self.gra_ns else GRA_100US) << 1)
            gre = _ERSPAN3.pack(0x1000, GRE_PROTO_ERSPAN3, seq, 0x2000 | vid,
                                (self.cos << 13) | t | self.session_id,
                                timestamp & 0xFFFFFFFF, 0, low)
        elif enc == "erspan2":
            en = 0x1800 if tagged else 0
            gre = _ERSPAN2.pack(0x1000, GRE_PROTO_ERSPAN2, seq, 0x1000 | vid,
                                (self.cos << 13) | en | t | self.session_id, index & 0xFFFFF)
        else:
            gre = _GRE.pack(0, GRE_PROTO_TEB)
        l2, base, addrs = self._fixed
        total = 20 + len(gre) + len(frame)
        if total > 0xFFFF:
            raise FrameError(f"IPv4 packet of {total} bytes is bigger than 65535")
        ident = seq & 0xFFFF
        c = base + total + ident
        c = (c & 0xFFFF) + (c >> 16)
        c = (c & 0xFFFF) + (c >> 16)
        ip = _IP_HEAD.pack(0x45, 0, total, ident, 0x4000, 64, IPPROTO_GRE, ~c & 0xFFFF)
        return b"".join((l2, ip, addrs, gre, frame))


_GRE = struct.Struct("!HH")
_ERSPAN2 = struct.Struct("!HHIHHI")
_ERSPAN3 = struct.Struct("!HHIHHIHH")
_IP_HEAD = struct.Struct("!BBHHHBBH")


@dataclass(frozen=True)
class Decapsulated:
    """What an ERSPAN/GRE receiver reads from one outer frame."""

    encapsulation: str
    frame: bytes  # the mirrored frame (possibly truncated)
    session_id: int = 0
    seq: int | None = None
    truncated: bool = False
    vlan: int = 0  # the original frame's VLAN as the header gives it
    egress: bool = False
    timestamp: int = 0


def decapsulate(outer: bytes) -> Decapsulated:
    """Read an encapsulated mirror frame (what an ERSPAN destination does); FrameError naming
    the offset when it is not one or is cut short."""
    off = 12
    if outer[12:14] == b"\x81\x00":
        off = 16
    if len(outer) < off + 2 + 20 or outer[off:off + 2] != b"\x08\x00":
        raise FrameError("not an IPv4 frame (offset 12)")
    ip = off + 2
    ihl = (outer[ip] & 0x0F) * 4
    if outer[ip] >> 4 != 4 or ihl < 20 or outer[ip + 9] != IPPROTO_GRE:
        raise FrameError(f"not IPv4/GRE (offset {ip})")
    (total,) = struct.unpack_from("!H", outer, ip + 2)
    if total > len(outer) - ip:
        raise FrameError(f"IPv4 total length {total} is past the frame's end (offset {ip + 2}): "
                         "cut short")
    outer = outer[:ip + total]  # Ethernet padding is not the mirrored frame's
    g = ip + ihl
    if len(outer) < g + 4:
        raise FrameError(f"GRE header cut short (offset {g})")
    flags, proto = struct.unpack_from("!HH", outer, g)
    h = g + 4 + (4 if flags & 0x8000 else 0) + (4 if flags & 0x2000 else 0)
    seq = None
    if flags & 0x1000:
        if len(outer) < h + 4:
            raise FrameError(f"GRE sequence number cut short (offset {h})")
        (seq,) = struct.unpack_from("!I", outer, h)
        h += 4
    if proto == GRE_PROTO_TEB:
        return Decapsulated("gre", outer[h:], seq=seq)
    if proto == GRE_PROTO_ERSPAN2:
        if len(outer) < h + 8:
            raise FrameError(f"ERSPAN type II header cut short (offset {h})")
        w0, w1 = struct.unpack_from("!HH", outer, h)
        return Decapsulated("erspan2", outer[h + 8:], w1 & 0x3FF, seq, bool(w1 & 0x400),
                            w0 & 0xFFF)
    if proto == GRE_PROTO_ERSPAN3:
        if len(outer) < h + 12:
            raise FrameError(f"ERSPAN type III header cut short (offset {h})")
        w0, w1, ts, _sgt, low = struct.unpack_from("!HHIHH", outer, h)
        skip = 12 + (8 if low & 1 else 0)  # O: an 8-byte platform-specific subheader follows
        return Decapsulated("erspan3", outer[h + skip:], w1 & 0x3FF, seq, bool(w1 & 0x400),
                            w0 & 0xFFF, bool(low & 0x8), ts)
    raise FrameError(f"GRE protocol 0x{proto:04x} is not a mirror encapsulation (offset {g + 2})")
