"""Declarative frame specs → Ethernet frame bytes, built with `struct` (pure codec).

A spec is plain data, as written in a scenario file:

```yaml
eth: {src: "00:16:3e:00:00:01", dst: "ff:ff:ff:ff:ff:ff"}   # type: optional ethertype
vlan: 10                       # or {vid: 10, pcp: 3, tpid: 0x8100}; a list for QinQ (outer first)
ipv4: {src: 10.0.0.1, dst: 10.0.0.2, ttl: 64, tos: 0, id: 0, df: false}
udp: {sport: 1234, dport: 53}  # or tcp: {sport, dport, seq, ack, flags: "S", window}
                               # or icmp: {type: 8, code: 0, id: 1, seq: 1}
arp: {op: request, sha: ..., spa: 10.0.0.1, tha: "00:00:00:00:00:00", tpa: 10.0.0.2}
payload: 64                    # payload bytes (a repeating 0x00..0xff pattern), or a string
```

`parse_spec(mapping)` validates every field once (raising `SpecError` with the key path of the
bad field, which file loaders turn into `file:line: key: message`) and `FrameSpec.build()`
returns the bytes; build once and send the same bytes at any rate. Checksums (IPv4 header,
UDP/TCP pseudo-header, ICMP) are computed; frames shorter than 60 bytes are padded, as a NIC does.
Nothing here evaluates text: Scapy packets enter only from Python callers, through
`netsim.wire.frame.from_scapy`.
"""
from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from netsim.errors import FrameError

ETH_P_IPV4 = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO = {"icmp": 1, "tcp": 6, "udp": 17}
MIN_FRAME = 60  # without FCS
TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40,
             "C": 0x80}
ARP_OPS = {"request": 1, "reply": 2}


class SpecError(FrameError):
    """A frame spec field that is missing or wrong; `path` is its key path within the spec."""

    def __init__(self, path: Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.path = tuple(path)
        self.message = message

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.path)
        return f"{where}: {self.message}" if where else self.message


def mac_bytes(value: Any, path: Sequence[str | int] = ()) -> bytes:
    """`"00:16:3e:00:00:01"` (or `-` separated) → 6 bytes."""
    if isinstance(value, bytes) and len(value) == 6:
        return value
    text = str(value).strip().replace("-", ":")
    parts = text.split(":")
    try:
        if len(parts) != 6 or any(len(p) not in (1, 2) for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise SpecError(path, f"{value!r} is not a MAC address (like 00:16:3e:00:00:01)") from None


def mac_str(raw: bytes) -> str:
    """6 bytes → `"00:16:3e:00:00:01"`."""
    return ":".join(f"{b:02x}" for b in raw)


def ip4_bytes(value: Any, path: Sequence[str | int] = ()) -> bytes:
    """`"10.0.0.1"` → 4 bytes."""
    try:
        return ipaddress.IPv4Address(str(value)).packed
    except ValueError:
        raise SpecError(path, f"{value!r} is not an IPv4 address") from None


def _int(value: Any, path: Sequence[str | int], lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise SpecError(path, f"{value!r} is not an integer") from None
        else:
            raise SpecError(path, f"{value!r} is not an integer")
    if not lo <= value <= hi:
        raise SpecError(path, f"{value} is out of range {lo}..{hi}")
    return value


def checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass(frozen=True)
class VlanTag:
    """One 802.1Q/802.1ad tag."""

    vid: int
    pcp: int = 0
    dei: int = 0
    tpid: int = ETH_P_8021Q


@dataclass(frozen=True)
class FrameSpec:
    """A validated declarative frame; `build()` gives its bytes."""

    src: bytes
    dst: bytes
    tags: tuple[VlanTag, ...] = ()
    ethertype: int | None = None
    ipv4: Mapping[str, Any] | None = None
    l4: str | None = None          # "udp" | "tcp" | "icmp"
    l4_fields: Mapping[str, Any] | None = None
    arp: Mapping[str, Any] | None = None
    payload: bytes = b""

    def build(self) -> bytes:
        """The frame's bytes (padded to 60)."""
        l3 = b""
        ethertype = self.ethertype
        if self.arp is not None:
            a = self.arp
            l3 = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IPV4, 6, 4, a["op"], a["sha"], a["spa"],
                             a["tha"], a["tpa"]) + self.payload
            ethertype = ETH_P_ARP if ethertype is None else ethertype
        elif self.ipv4 is not None:
            l3 = self._ipv4()
            ethertype = ETH_P_IPV4 if ethertype is None else ethertype
        else:
            l3 = self.payload
            if ethertype is None:
                ethertype = 0x88B5  # IEEE local experimental ethertype
        head = self.dst + self.src
        for tag in self.tags:
            head += struct.pack("!HH", tag.tpid, (tag.pcp << 13) | (tag.dei << 12) | tag.vid)
        frame = head + struct.pack("!H", ethertype) + l3
        if len(frame) < MIN_FRAME:
            frame += b"\0" * (MIN_FRAME - len(frame))
        return frame

    def _ipv4(self) -> bytes:
        ip = self.ipv4 or {}
        src, dst = ip["src"], ip["dst"]
        f = self.l4_fields or {}
        if self.l4 == "udp":
            length = 8 + len(self.payload)
            pseudo = src + dst + struct.pack("!BBH", 0, 17, length)
            hdr = struct.pack("!HHHH", f["sport"], f["dport"], length, 0)
            csum = checksum(pseudo + hdr + self.payload) or 0xFFFF
            l4 = hdr[:6] + struct.pack("!H", csum) + self.payload
        elif self.l4 == "tcp":
            length = 20 + len(self.payload)
            pseudo = src + dst + struct.pack("!BBH", 0, 6, length)
            hdr = struct.pack("!HHIIBBHHH", f["sport"], f["dport"], f["seq"], f["ack"], 5 << 4,
                              f["flags"], f["window"], 0, 0)
            csum = checksum(pseudo + hdr + self.payload)
            l4 = hdr[:16] + struct.pack("!H", csum) + hdr[18:] + self.payload
        elif self.l4 == "icmp":
            hdr = struct.pack("!BBHHH", f["type"], f["code"], 0, f["id"], f["seq"])
            csum = checksum(hdr + self.payload)
            l4 = hdr[:2] + struct.pack("!H", csum) + hdr[4:] + self.payload
        else:
            l4 = self.payload
        proto = IPPROTO.get(self.l4 or "", ip.get("proto", 0))
        total = 20 + len(l4)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, ip["tos"], total, ip["id"],
                          0x4000 if ip["df"] else 0, ip["ttl"], proto, 0, src, dst)
        return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + l4


def _mapping(value: Any, path: Sequence[str | int]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _only(m: Mapping[str, Any], allowed: set[str], path: Sequence[str | int]) -> None:
    for key in m:
        if key not in allowed:
            raise SpecError((*path, key), f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _payload(value: Any, path: Sequence[str | int]) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SpecError(path, f"text {value[exc.start:exc.end]!r} at character "
                            f"{exc.start} cannot be UTF-8 encoded (a lone surrogate); give "
                            "the bytes' text or a length") from None
    n = _int(value, path, 0, 9000)
    return bytes(i & 0xFF for i in range(n))


def _tags(value: Any, path: Sequence[str | int]) -> tuple[VlanTag, ...]:
    items = value if isinstance(value, list) else [value]
    tags = []
    for i, item in enumerate(items):
        p = (*path, i) if isinstance(value, list) else tuple(path)
        if isinstance(item, Mapping):
            _only(item, {"vid", "pcp", "dei", "tpid"}, p)
            if "vid" not in item:
                raise SpecError(p, "missing field 'vid'")
            default_tpid = ETH_P_8021AD if isinstance(value, list) and i < len(items) - 1 \
                else ETH_P_8021Q
            tags.append(VlanTag(
                vid=_int(item["vid"], (*p, "vid"), 0, 4095),
                pcp=_int(item.get("pcp", 0), (*p, "pcp"), 0, 7),
                dei=_int(item.get("dei", 0), (*p, "dei"), 0, 1),
                tpid=_int(item.get("tpid", default_tpid), (*p, "tpid"), 0, 0xFFFF)))
        else:
            tpid = ETH_P_8021AD if isinstance(value, list) and i < len(items) - 1 \
                else ETH_P_8021Q
            tags.append(VlanTag(vid=_int(item, p, 0, 4095), tpid=tpid))
    return tuple(tags)


def parse_spec(spec: Mapping[str, Any], path: Sequence[str | int] = ()) -> FrameSpec:
    """Validate a declarative frame spec (see the module docstring) into a `FrameSpec`."""
    spec = _mapping(spec, path)
    _only(spec, {"eth", "vlan", "ipv4", "udp", "tcp", "icmp", "arp", "payload"}, path)
    eth = _mapping(spec.get("eth", {}), (*path, "eth"))
    _only(eth, {"src", "dst", "type"}, (*path, "eth"))
    l4s = [k for k in ("udp", "tcp", "icmp") if k in spec]
    if len(l4s) > 1:
        raise SpecError((*path, l4s[1]), f"a frame has one transport; {l4s[0]} is already given")
    if "arp" in spec and ("ipv4" in spec or l4s):
        raise SpecError((*path, "arp"), "an ARP frame carries no ipv4/udp/tcp/icmp")
    if l4s and "ipv4" not in spec:
        raise SpecError((*path, l4s[0]), "needs an ipv4 section (src and dst)")
    if "src" not in eth and "arp" not in spec:
        raise SpecError((*path, "eth"), "missing field 'src'")
    arp = None
    if "arp" in spec:
        a = _mapping(spec["arp"], (*path, "arp"))
        ap = (*path, "arp")
        _only(a, {"op", "sha", "spa", "tha", "tpa"}, ap)
        op = a.get("op", "request")
        if isinstance(op, str):
            if op not in ARP_OPS:
                raise SpecError((*ap, "op"), f"{op!r}: expected request or reply")
            op = ARP_OPS[op]
        else:
            op = _int(op, (*ap, "op"), 1, 2)
        for key in ("spa", "tpa"):
            if key not in a:
                raise SpecError(ap, f"missing field {key!r}")
        sha = mac_bytes(a.get("sha", eth.get("src")), (*ap, "sha"))
        arp = {"op": op, "sha": sha, "spa": ip4_bytes(a["spa"], (*ap, "spa")),
               "tha": mac_bytes(a.get("tha", "00:00:00:00:00:00"), (*ap, "tha")),
               "tpa": ip4_bytes(a["tpa"], (*ap, "tpa"))}
    src = mac_bytes(eth["src"], (*path, "eth", "src")) if "src" in eth else arp["sha"]  # type: ignore[index]
    default_dst = "ff:ff:ff:ff:ff:ff"
    dst = mac_bytes(eth.get("dst", default_dst), (*path, "eth", "dst"))
    ethertype = _int(eth["type"], (*path, "eth", "type"), 0x600, 0xFFFF) if "type" in eth \
        else None
    ipv4 = None
    if "ipv4" in spec:
        ip = _mapping(spec["ipv4"], (*path, "ipv4"))
        ipp = (*path, "ipv4")
        _only(ip, {"src", "dst", "ttl", "tos", "id", "df", "proto"}, ipp)
        for key in ("src", "dst"):
            if key not in ip:
                raise SpecError(ipp, f"missing field {key!r}")
        ipv4 = {"src": ip4_bytes(ip["src"], (*ipp, "src")),
                "dst": ip4_bytes(ip["dst"], (*ipp, "dst")),
                "ttl": _int(ip.get("ttl", 64), (*ipp, "ttl"), 0, 255),
                "tos": _int(ip.get("tos", 0), (*ipp, "tos"), 0, 255),
                "id": _int(ip.get("id", 0), (*ipp, "id"), 0, 0xFFFF),
                "df": bool(ip.get("df", False)),
                "proto": _int(ip.get("proto", 0), (*ipp, "proto"), 0, 255)}
    l4 = l4s[0] if l4s else None
    fields: dict[str, Any] | None = None
    if l4 is not None:
        lp = (*path, l4)
        m = _mapping(spec[l4] if spec[l4] is not None else {}, lp)
        if l4 in ("udp", "tcp"):
            allowed = {"sport", "dport"} | ({"seq", "ack", "flags", "window"} if l4 == "tcp"
                                            else set())
            _only(m, allowed, lp)
            fields = {"sport": _int(m.get("sport", 1024), (*lp, "sport"), 0, 0xFFFF),
                      "dport": _int(m.get("dport", 1024), (*lp, "dport"), 0, 0xFFFF)}
            if l4 == "tcp":
                flags = m.get("flags", "S")
                if isinstance(flags, str):
                    bad = [c for c in flags if c not in TCP_FLAGS]
                    if bad:
                        raise SpecError((*lp, "flags"), f"unknown TCP flag {bad[0]!r} "
                                        f"(use letters of {''.join(TCP_FLAGS)})")
                    flags = sum(TCP_FLAGS[c] for c in set(flags))
                fields.update(seq=_int(m.get("seq", 0), (*lp, "seq"), 0, 0xFFFFFFFF),
                              ack=_int(m.get("ack", 0), (*lp, "ack"), 0, 0xFFFFFFFF),
                              flags=_int(flags, (*lp, "flags"), 0, 0xFF),
                              window=_int(m.get("window", 8192), (*lp, "window"), 0, 0xFFFF))
        else:
            _only(m, {"type", "code", "id", "seq"}, lp)
            fields = {"type": _int(m.get("type", 8), (*lp, "type"), 0, 255),
                      "code": _int(m.get("code", 0), (*lp, "code"), 0, 255),
                      "id": _int(m.get("id", 0), (*lp, "id"), 0, 0xFFFF),
                      "seq": _int(m.get("seq", 0), (*lp, "seq"), 0, 0xFFFF)}
    tags = _tags(spec["vlan"], (*path, "vlan")) if "vlan" in spec else ()
    payload = _payload(spec.get("payload"), (*path, "payload"))
    if ipv4 is not None:  # the IPv4 total length is 16 bits: header + transport + payload
        room = 0xFFFF - 20 - {"udp": 8, "tcp": 20, "icmp": 8, None: 0}[l4]
        if len(payload) > room:
            raise SpecError((*path, "payload"), f"{len(payload):,} bytes do not fit in one "
                            f"IPv4{'/' + l4.upper() if l4 else ''} packet: at most {room:,} "
                            "(the IPv4 total length is 16 bits)")
    return FrameSpec(src=src, dst=dst, tags=tags, ethertype=ethertype, ipv4=ipv4, l4=l4,
                     l4_fields=fields, arp=arp, payload=payload)


def build_frame(spec: Mapping[str, Any]) -> bytes:
    """Shortcut: validate `spec` and return its bytes."""
    return parse_spec(spec).build()
