"""Read pcap and pcapng captures as `(timestamp_ns, frame_bytes, interface_name)` records.

`read_capture(path)` recognises the format from the first bytes, as tshark does, not from the
file name: classic pcap (µs or ns timestamps, either byte order), pcapng (any number of sections
and interfaces, per-interface `if_tsresol`, Enhanced / Simple / obsolete Packet blocks), and
either of them gzip-compressed (`.pcap.gz`, `.pcapng.gz`; decompressed to a temporary file, never
into memory). hvsim moves Ethernet frames: packets of interfaces with another link type are
skipped and counted in `CaptureStats.skipped` — unless an `EthernetRewrite` is given, which turns
Linux cooked (SLL, SLL2), raw IP and BSD loopback packets into Ethernet frames as `tcprewrite
--dlt=enet` does. A classic pcap has one link type for the whole file, so a non-Ethernet pcap
without a rewrite is refused outright. A pcapng frame carries the name of the interface it was
captured on (`if_name`, or `if<N>` when unnamed); a classic pcap has no names, so it yields `None`.

Where the formats leave room, we do what libpcap (`sf-pcap.c`, `sf-pcapng.c`) and tshark
(wiretap) do:
- pcapng sections of versions 1.0 and 1.2 are read; others are refused (tshark: "unknown SHB
  version"); classic pcap needs major version 2 (libpcap: "archaic pcap savefile format").
- a Simple Packet Block's captured length is min(original length, the interface's snaplen).
- an option that runs past its block is an error (tshark: "Not enough data to handle option").
- a classic pcap microsecond (or nanosecond) field is not normalised: libpcap hands it on as
  `tv_usec` unchanged, so a record `(7 s, 1,500,000 µs)` is the instant 8.5 s, as `timersub` /
  tcpreplay compute it.

Records are yielded as they are read; a file that is cut short raises `CaptureError` naming the
byte offset and record number after every complete record before it was yielded, and a file that
is not a capture raises `CaptureError` before any record.

Written on `struct` rather than dpkt: dpkt's pcapng reader keeps only the first interface block
(our captures have one per port, and names matter), and on 100k frames this reader is faster
than `dpkt.pcap.Reader` (see bench/replay.py, which measures both).
"""
from __future__ import annotations

import mmap
import struct
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from netsim.errors import CaptureError

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
#: Link types an `EthernetRewrite` turns into Ethernet (DLT_RAW is 12 or 14 on some BSDs).
CONVERTIBLE = {LINKTYPE_NULL: "NULL", LINKTYPE_RAW: "RAW", 12: "RAW", 14: "RAW",
               LINKTYPE_LOOP: "LOOP", LINKTYPE_LINUX_SLL: "LINUX_SLL",
               LINKTYPE_IPV4: "IPV4", LINKTYPE_IPV6: "IPV6", LINKTYPE_LINUX_SLL2: "LINUX_SLL2"}
_Record = tuple[int, bytes, str | None]
_LINKTYPE_NAMES = {LINKTYPE_ETHERNET: "ETHERNET", 105: "IEEE802_11", 127: "IEEE802_11_RADIOTAP",
                   **CONVERTIBLE}

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),   # little-endian, µs
    b"\xa1\xb2\xc3\xd4": (">", 1_000),   # big-endian, µs
    b"\x4d\x3c\xb2\xa1": ("<", 1),       # little-endian, ns
    b"\xa1\xb2\x3c\x4d": (">", 1),       # big-endian, ns
}
_GZIP_MAGIC = b"\x1f\x8b"
_PCAPNG_SHB = 0x0A0D0D0A
_BOM = 0x1A2B3C4D
_OPT_IF_NAME = 2
_OPT_IF_TSRESOL = 9
#: pcapng section versions tshark and libpcap read (1.2 was written by some old tools).
_PCAPNG_VERSIONS = {(1, 0), (1, 2)}
_AF_INET = 2
_AF_INET6 = {10, 24, 28, 30}   # Linux, NetBSD/OpenBSD, FreeBSD, macOS


def linktype_name(linktype: int) -> str:
    """`113` → `"113 (LINUX_SLL)"`: a link type as a user can look it up."""
    name = _LINKTYPE_NAMES.get(linktype)
    return f"{linktype} ({name})" if name else str(linktype)


@dataclass(frozen=True)
class EthernetRewrite:
    """Turn non-Ethernet packets into Ethernet frames, as `tcprewrite --dlt=enet` does.

    `src_mac`/`dst_mac` are 6 bytes or None. A Linux cooked capture names the sender's link-layer
    address, which becomes the source MAC when `src_mac` is not given; every other MAC the
    capture lacks must be given (tcprewrite: `--enet-smac` / `--enet-dmac`)."""

    src_mac: bytes | None = None
    dst_mac: bytes | None = None


@dataclass
class CaptureStats:
    """What a read saw besides the frames it yielded."""

    frames: int = 0
    #: skipped packets by reason, e.g. `"interface 1 'any': link type 113 (LINUX_SLL)"`
    skipped: Counter[str] = field(default_factory=Counter)


def read_capture(path: str | Path, *, rewrite: EthernetRewrite | None = None,
                 stats: CaptureStats | None = None) -> Iterator[tuple[int, bytes, str | None]]:
    """Yield `(timestamp_ns, frame, interface)` for every Ethernet frame of a pcap or pcapng
    file, plain or gzip-compressed; count what is skipped in `stats`."""
    return _records(Path(path), rewrite, stats, idbs_only=False)


def capture_interfaces(path: str | Path, *,
                       rewrite: EthernetRewrite | None = None) -> list[str | None]:
    """The names of the interfaces whose packets `read_capture` would yield (`[None]` for a
    classic pcap, which names none), read from the interface blocks without the packets."""
    return list(dict.fromkeys(i for _, _, i in _records(Path(path), rewrite, None,
                                                        idbs_only=True)))


def _records(path: Path, rewrite: EthernetRewrite | None, stats: CaptureStats | None,
             idbs_only: bool) -> Iterator[tuple[int, bytes, str | None]]:
    stats = stats if stats is not None else CaptureStats()
    try:
        with open(path, "rb") as fh:
            if path.stat().st_size == 0:
                raise CaptureError(f"{path}: empty file, not a pcap or pcapng capture")
            if fh.read(2) == _GZIP_MAGIC:
                with tempfile.TemporaryFile(prefix="hvsim-gunzip-") as plain:
                    cut = _gunzip(path, fh, plain)
                    yield from _read_plain(path, plain, rewrite, stats, True, idbs_only)
                if cut:
                    raise CaptureError(f"{path}: truncated: the gzip stream ends early; "
                                       f"{stats.frames} frames read")
                return
            yield from _read_plain(path, fh, rewrite, stats, False, idbs_only)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read capture: {exc.strerror or exc}") from exc


def _gunzip(path: Path, fh: BinaryIO, plain: BinaryIO) -> bool:
    """Decompress every gzip member of `fh` into `plain`, 1 MiB at a time; True if the stream
    is cut short (what came before is kept: its whole records are still read)."""
    fh.seek(0)
    d = zlib.decompressobj(wbits=31)
    pending = b""
    try:
        while True:
            chunk = d.unconsumed_tail or pending or fh.read(1 << 20)
            pending = b""
            if not chunk:
                return True   # the file ended inside a member
            plain.write(d.decompress(chunk, 1 << 20))
            if d.eof:
                rest = d.unused_data or fh.read(1 << 20)
                if rest[:2] != _GZIP_MAGIC:
                    return False  # the end, or trailing bytes after the last member (gzip(1))
                d = zlib.decompressobj(wbits=31)   # concatenated members, as `cat a.gz b.gz`
                pending = rest
    except zlib.error as exc:
        if plain.tell():
            return True
        raise CaptureError(f"{path}: gzip-compressed but cannot be decompressed: {exc}") from exc
    finally:
        plain.flush()


def _read_plain(path: Path, fh, rewrite: EthernetRewrite | None,  # type: ignore[no-untyped-def]
                stats: CaptureStats, compressed: bool,
                idbs_only: bool) -> Iterator[tuple[int, bytes, str | None]]:
    fh.seek(0, 2)
    if fh.tell() == 0:
        raise CaptureError(f"{path}: gzip file holds nothing, not a pcap or pcapng capture")
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        head = buf[:4]
        if head in _PCAP_MAGIC:
            yield from _read_pcap(path, buf, rewrite, stats, idbs_only)
        elif len(head) == 4 and struct.unpack("<I", head)[0] == _PCAPNG_SHB:
            yield from _read_pcapng(path, buf, rewrite, stats, idbs_only)
        else:
            what = "decompressed, " if compressed else ""
            raise CaptureError(f"{path}: not a pcap or pcapng capture ({what}starts with "
                               f"{bytes(head).hex()})")


def _read_pcap(path: Path, buf: mmap.mmap, rewrite: EthernetRewrite | None,
               stats: CaptureStats, idbs_only: bool = False) -> Iterator[_Record]:
    end, scale = _PCAP_MAGIC[buf[:4]]
    if len(buf) < 24:
        raise CaptureError(f"{path}: truncated pcap header ({len(buf)} of 24 bytes)")
    major, minor = struct.unpack_from(end + "HH", buf, 4)
    if major not in (2, 543):  # libpcap sf-pcap.c: "archaic" below 2; tshark the same
        raise CaptureError(f"{path}: pcap version {major}.{minor} is not supported (only 2.x, "
                           "as libpcap and tshark)")
    linktype = struct.unpack_from(end + "I", buf, 20)[0] & 0x03FFFFFF
    convert = None
    if linktype != LINKTYPE_ETHERNET:
        if rewrite is None or linktype not in CONVERTIBLE:
            hint = (" (replay it with --dlt-ethernet, as tcprewrite --dlt=enet)"
                    if linktype in CONVERTIBLE else "")
            raise CaptureError(f"{path}: link type {linktype_name(linktype)} is not Ethernet "
                               f"(1){hint}")
        convert = _converter(path, linktype, rewrite)
    if idbs_only:
        yield 0, b"", None
        return
    rec = struct.Struct(end + "IIII")
    unpack = rec.unpack_from
    off, n, size = 24, 0, len(buf)
    while off < size:
        if off + 16 > size:
            raise CaptureError(f"{path}: truncated at byte {off}: record {n + 1} header is cut "
                               f"({size - off} of 16 bytes); {n} frames read")
        sec, frac, incl, _orig = unpack(buf, off)
        off += 16
        if off + incl > size:
            raise CaptureError(f"{path}: truncated at byte {off}: record {n + 1} needs {incl} "
                               f"bytes, {size - off} left; {n} frames read")
        n += 1
        frame = buf[off:off + incl]
        off += incl
        if convert is not None:
            frame, why = convert(frame)
            if frame is None:
                stats.skipped[why] += 1
                continue
        stats.frames += 1
        # libpcap passes tv_usec on unchecked: sec + frac is the instant, whatever frac is
        yield sec * 1_000_000_000 + frac * scale, frame, None


@dataclass
class _Iface:
    name: str
    linktype: int
    snaplen: int
    tsmul: int      # ns per tick when the resolution is a power of ten at or above 1 ns
    tsdiv: int      # ticks per ns otherwise (finer than ns, or a power-of-two resolution)
    convert: object = None   # None for Ethernet; a converter, or the reason its packets skip

    def ts(self, ticks: int) -> int:
        return ticks * self.tsmul if self.tsdiv == 1 else ticks * 1_000_000_000 // self.tsdiv


def _read_pcapng(path: Path, buf: mmap.mmap, rewrite: EthernetRewrite | None,
                 stats: CaptureStats, idbs_only: bool = False) -> Iterator[_Record]:
    size = len(buf)
    off, n = 0, 0
    end = "<"
    ifaces: list[_Iface] = []
    while off < size:
        if off + 12 > size:
            raise CaptureError(f"{path}: truncated at byte {off}: block header is cut; "
                               f"{n} frames read")
        btype = struct.unpack_from(end + "I", buf, off)[0]
        if btype == _PCAPNG_SHB:  # a palindrome: reads the same in either byte order
            bom = buf[off + 8:off + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                end = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                end = ">"
            else:
                raise CaptureError(f"{path}: byte {off}: section header has a bad byte-order "
                                   f"magic {bytes(bom).hex()}")
            if off + 16 > size:
                raise CaptureError(f"{path}: truncated at byte {off}: section header is cut; "
                                   f"{n} frames read")
            version = struct.unpack_from(end + "HH", buf, off + 12)
            if version not in _PCAPNG_VERSIONS:
                raise CaptureError(f"{path}: byte {off}: pcapng section version "
                                   f"{version[0]}.{version[1]} is not supported (1.0 and 1.2 "
                                   "are, as in tshark and libpcap)")
            ifaces = []
        blen = struct.unpack_from(end + "I", buf, off + 4)[0]
        if blen < 12 or blen % 4:
            raise CaptureError(f"{path}: byte {off}: block length {blen} is invalid "
                               f"(corrupt file); {n} frames read")
        if off + blen > size:
            raise CaptureError(f"{path}: truncated at byte {off}: block of {blen} bytes, "
                               f"{size - off} left; {n} frames read")
        body = off + 8
        bend = off + blen - 4
        if idbs_only and btype != 1:
            pass
        elif btype in (6, 2):  # Enhanced Packet Block; obsolete Packet Block (same layout + drops)
            if bend - body < 20:
                kind = "enhanced packet" if btype == 6 else "packet"
                raise CaptureError(f"{path}: byte {off}: {kind} block too short ({blen} bytes)")
            if btype == 6:
                ifid, hi, lo, caplen, _orig = struct.unpack_from(end + "IIIII", buf, body)
            else:
                ifid, _drops, hi, lo, caplen, _orig = struct.unpack_from(end + "HHIIII", buf, body)
            if ifid >= len(ifaces):
                raise CaptureError(f"{path}: byte {off}: packet names interface {ifid}, "
                                   f"but the section declares {len(ifaces)}")
            if body + 20 + caplen > bend:
                raise CaptureError(f"{path}: byte {off}: packet length {caplen} overruns "
                                   f"its block")
            iface = ifaces[ifid]
            n += 1
            frame = _ethernet(iface, buf[body + 20:body + 20 + caplen], stats)
            if frame is not None:
                yield iface.ts((hi << 32) | lo), frame, iface.name
        elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
            if not ifaces:
                raise CaptureError(f"{path}: byte {off}: simple packet before any interface")
            if bend - body < 4:
                raise CaptureError(f"{path}: byte {off}: simple packet block too short")
            orig = struct.unpack_from(end + "I", buf, body)[0]
            caplen = min(orig, bend - body - 4)
            if ifaces[0].snaplen:  # the pcapng spec and tshark: min(original, snaplen)
                caplen = min(caplen, ifaces[0].snaplen)
            n += 1
            frame = _ethernet(ifaces[0], buf[body + 4:body + 4 + caplen], stats)
            if frame is not None:
                yield 0, frame, ifaces[0].name
        elif btype == 1:  # Interface Description Block
            ifaces.append(_parse_idb(path, buf, off, body, bend, end, len(ifaces), rewrite))
            if idbs_only and not isinstance(ifaces[-1].convert, str):
                yield 0, b"", ifaces[-1].name
        off += blen


def _ethernet(iface: _Iface, frame: bytes, stats: CaptureStats) -> bytes | None:
    conv = iface.convert
    if conv is None:
        stats.frames += 1
        return frame
    if isinstance(conv, str):
        stats.skipped[conv] += 1
        return None
    out, why = conv(frame)  # type: ignore[operator]
    if out is None:
        stats.skipped[f"interface {iface.name!r}: {why}"] += 1
        return None
    stats.frames += 1
    return out


def _parse_idb(path: Path, buf: mmap.mmap, off: int, body: int, bend: int, end: str,
               index: int, rewrite: EthernetRewrite | None) -> _Iface:
    if bend - body < 8:
        raise CaptureError(f"{path}: byte {off}: interface description block too short")
    linktype, _res, snaplen = struct.unpack_from(end + "HHI", buf, body)
    name = f"if{index}"
    tsresol = 6
    p = body + 8
    while p + 4 <= bend:
        code, olen = struct.unpack_from(end + "HH", buf, p)
        if code == 0:
            break
        if p + 4 + olen > bend:
            raise CaptureError(f"{path}: byte {p}: option {code} of interface {index} is "
                               f"{olen} bytes long and runs past its block (corrupt file)")
        val = buf[p + 4:p + 4 + olen]
        if code == _OPT_IF_NAME:
            name = bytes(val).decode("utf-8", "replace").rstrip("\x00") or name
        elif code == _OPT_IF_TSRESOL and olen >= 1:
            tsresol = val[0]
        p += 4 + ((olen + 3) & ~3)
    if tsresol & 0x80:
        iface = _Iface(name, linktype, snaplen, 1, 1 << (tsresol & 0x7F))
    elif tsresol <= 9:
        iface = _Iface(name, linktype, snaplen, 10 ** (9 - tsresol), 1)
    else:
        iface = _Iface(name, linktype, snaplen, 1, 10 ** tsresol)
    if linktype != LINKTYPE_ETHERNET:
        if rewrite is not None and linktype in CONVERTIBLE:
            iface.convert = _converter(path, linktype, rewrite)
        else:
            hint = ", give --dlt-ethernet" if linktype in CONVERTIBLE else ""
            iface.convert = (f"interface {index} {name!r}: link type {linktype_name(linktype)}, "
                             f"not Ethernet{hint}")
    return iface


def _converter(path: Path, linktype: int, rw: EthernetRewrite):  # type: ignore[no-untyped-def]
    """A function `packet → (ethernet_frame, "")` or `(None, reason)` for `linktype`."""
    cooked = linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2)
    if rw.dst_mac is None or (rw.src_mac is None and not cooked):
        need = "--dst-mac" if rw.dst_mac is None else "--src-mac"
        has = "has the sender's address but " if cooked else ""
        raise CaptureError(f"{path}: link type {linktype_name(linktype)} {has}has no "
                           f"{'destination' if need == '--dst-mac' else 'source'} MAC; give "
                           f"{need} with --dlt-ethernet (as tcprewrite --enet-"
                           f"{'dmac' if need == '--dst-mac' else 'smac'})")
    dst = rw.dst_mac

    def eth(src: bytes, ethertype: int, payload: bytes) -> tuple[bytes, str]:
        return dst + src + struct.pack(">H", ethertype) + payload, ""

    if linktype == LINKTYPE_LINUX_SLL:
        def sll(pkt: bytes) -> tuple[bytes | None, str]:
            if len(pkt) < 16:
                return None, "cooked header cut short"
            alen, proto = struct.unpack_from(">H", pkt, 4)[0], struct.unpack_from(">H", pkt, 14)[0]
            return _cooked(pkt[6:12] if alen == 6 else None, proto, pkt[16:])
        conv = sll
    elif linktype == LINKTYPE_LINUX_SLL2:
        def sll2(pkt: bytes) -> tuple[bytes | None, str]:
            if len(pkt) < 20:
                return None, "cooked header cut short"
            proto, alen = struct.unpack_from(">H", pkt, 0)[0], pkt[11]
            return _cooked(pkt[12:18] if alen == 6 else None, proto, pkt[20:])
        conv = sll2
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        def null(pkt: bytes) -> tuple[bytes | None, str]:
            if len(pkt) < 4:
                return None, "loopback header cut short"
            # LOOP is big-endian; NULL is in the writer's byte order: a family fits 16 bits
            fam = struct.unpack_from(">I" if linktype == LINKTYPE_LOOP else "<I", pkt)[0]
            if fam > 0xFFFF:
                fam = struct.unpack_from(">I", pkt)[0]
            if fam == _AF_INET:
                return eth(rw.src_mac, 0x0800, pkt[4:])  # type: ignore[arg-type]
            if fam in _AF_INET6:
                return eth(rw.src_mac, 0x86DD, pkt[4:])  # type: ignore[arg-type]
            return None, f"address family {fam} is not IP"
        conv = null
    else:
        def raw(pkt: bytes) -> tuple[bytes | None, str]:
            version = pkt[0] >> 4 if pkt else 0
            if version == 4 and linktype != LINKTYPE_IPV6:
                return eth(rw.src_mac, 0x0800, pkt)  # type: ignore[arg-type]
            if version == 6 and linktype != LINKTYPE_IPV4:
                return eth(rw.src_mac, 0x86DD, pkt)  # type: ignore[arg-type]
            return None, f"IP version {version} is not 4 or 6"
        conv = raw

    def _cooked(addr: bytes | None, proto: int, payload: bytes) -> tuple[bytes | None, str]:
        src = rw.src_mac or addr
        if src is None:
            return None, "cooked packet names no 6-byte sender address; give --src-mac"
        if proto < 0x0600:  # 802.2 / 802.3 frames and CAN: no Ethertype to put on the wire
            return None, f"cooked protocol {proto:#06x} is not an Ethertype"
        return eth(src, proto, payload)

    return conv
