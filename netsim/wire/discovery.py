"""Link discovery frames: LLDP (IEEE 802.1AB) and CDP v2, as ESXi and switches send them.

LLDP: ethertype 0x88cc to the nearest-bridge group 01:80:c2:00:00:0e; TLVs of a 7-bit type and
a 9-bit length - Chassis ID (1, subtype 4 = MAC address: the NIC's), Port ID (2, subtype 5 =
interface name: `vmnic0`, `Gi1/0/7`), TTL (3, seconds; 0 = "forget me"), Port Description (4),
System Name (5: the host or switch), System Description (6), System Capabilities (7: bridge),
Management Address (8: IPv4, interface numbering ifIndex), the IEEE 802.1 Port VLAN ID
(127, OUI 00-80-c2 subtype 1) and the IEEE 802.3 Maximum Frame Size (127, OUI 00-12-0f
subtype 4: MTU + 18, the untagged frame with its FCS), End (0).
CDP: 802.3 length + LLC/SNAP (AA AA 03, OUI 00:00:0c, protocol 0x2000) to 01:00:0c:cc:cc:cc;
version 2, TTL (holdtime), the Internet checksum of the PDU, then TLVs of a 16-bit type and a
16-bit length that includes the 4-byte header - Device ID (1: the host), Port ID (3),
Capabilities (4), Software Version (5), Platform (6), Native VLAN (0x0a), MTU (0x11),
Management Address (0x16: a count, then NLPID 0xcc + IPv4 per address). Wireshark's `cdp` and
`lldp` dissectors name these fields (tests/interop/test_discovery_tshark.py reads each back).
Pure codecs; bad input raises FrameError.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from netsim.errors import FrameError

LLDP_MULTICAST = bytes.fromhex("0180c200000e")
CDP_MULTICAST = bytes.fromhex("01000ccccccc")
ETHERTYPE_LLDP = 0x88CC
CDP_SNAP = bytes.fromhex("aaaa0300000c2000")
CDP_CAP_ROUTER = 0x01  # "R"
CDP_CAP_SWITCH = 0x08  # "S": a switch (what an ESXi vSwitch reports)
CDP_CAP_IGMP = 0x20  # "I": IGMP snooping (Catalyst switches report S I)
LLDP_CAP_BRIDGE = 0x0004
LLDP_CAP_ROUTER = 0x0010
_OUI_8021 = bytes.fromhex("0080c2")
_OUI_8023 = bytes.fromhex("00120f")
#: untagged frame overhead counted by the 802.3 Maximum Frame Size: header 14 + FCS 4
FRAME_OVERHEAD = 18


@dataclass(frozen=True)
class Neighbour:
    """What a discovery frame says about the device that sent it."""

    protocol: str  # "lldp" | "cdp"
    system: str  # LLDP System Name / CDP Device ID
    port: str  # LLDP Port ID / CDP Port ID
    ttl: int  # LLDP TTL / CDP holdtime, seconds
    platform: str = ""  # CDP Platform / LLDP System Description
    chassis: str = ""  # LLDP Chassis ID (a MAC) / the CDP frame's source MAC
    vlan: int | None = None  # CDP Native VLAN / LLDP Port VLAN ID
    mtu: int | None = None  # CDP MTU / LLDP Maximum Frame Size - 18
    mgmt: str | None = None  # management IPv4 address
    capabilities: int = 0  # CDP capability bits / LLDP enabled capabilities
    port_description: str = ""  # LLDP Port Description


def _ipv4(addr: str | None) -> bytes | None:
    if addr is None:
        return None
    try:
        return ipaddress.IPv4Address(addr).packed
    except ValueError as exc:
        raise FrameError(f"management address {addr!r} is not an IPv4 address") from exc


def _mac_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def lldp_frame(src_mac: bytes, *, system: str, port: str, ttl: int = 120,
               description: str = "", system_description: str = "",
               capabilities: int = LLDP_CAP_BRIDGE, mgmt: str | None = None,
               vlan: int | None = None, mtu: int | None = None) -> bytes:
    """An LLDPDU from NIC `src_mac`: chassis = that MAC, port = `port`, and the optional TLVs
    that are given (system name - Open vSwitch sends none -, port description, system
    description, management address, port VLAN ID, maximum frame size for `mtu`)."""
    def tlv(t: int, value: bytes) -> bytes:
        if len(value) > 511:
            raise FrameError(f"LLDP TLV {t}: value of {len(value)} bytes > 511")
        return struct.pack("!H", (t << 9) | len(value)) + value

    if not 0 <= ttl <= 0xFFFF:
        raise FrameError(f"LLDP TTL {ttl} outside 0..65535")
    body = (tlv(1, b"\x04" + src_mac) + tlv(2, b"\x05" + port.encode())
            + tlv(3, struct.pack("!H", ttl))
            + (tlv(4, description.encode()) if description else b"")
            + (tlv(5, system.encode()) if system else b"")
            + (tlv(6, system_description.encode()) if system_description else b"")
            + tlv(7, struct.pack("!HH", capabilities, capabilities)))
    addr = _ipv4(mgmt)
    if addr is not None:  # length 5 (subtype + 4), IPv4, ifIndex numbering, interface 0, no OID
        body += tlv(8, bytes((5, 1)) + addr + b"\x02" + bytes(4) + b"\x00")
    if vlan is not None:
        body += tlv(127, _OUI_8021 + b"\x01" + struct.pack("!H", vlan))
    if mtu is not None:
        body += tlv(127, _OUI_8023 + b"\x04" + struct.pack("!H", mtu + FRAME_OVERHEAD))
    body += tlv(0, b"")
    return LLDP_MULTICAST + src_mac + struct.pack("!H", ETHERTYPE_LLDP) + body


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def cdp_frame(src_mac: bytes, *, system: str, port: str, ttl: int = 180,
              platform: str = "VMware ESX", software: str = "Releasebuild",
              capabilities: int = CDP_CAP_SWITCH, mgmt: str | None = None,
              vlan: int | None = None, mtu: int | None = None) -> bytes:
    """A CDP v2 announcement from NIC `src_mac` (802.3 + SNAP), with the Native VLAN, MTU and
    Management Address TLVs when they are given."""
    def tlv(t: int, value: bytes) -> bytes:
        return struct.pack("!HH", t, len(value) + 4) + value

    if not 0 <= ttl <= 255:
        raise FrameError(f"CDP holdtime {ttl} outside 0..255")
    addr = _ipv4(mgmt)

    def build(pad: bytes) -> bytes:
        out = tlv(1, system.encode())
        if addr is not None:  # Addresses: where to reach the device
            out += tlv(2, struct.pack("!IBBBH", 1, 1, 1, 0xCC, 4) + addr)
        out += (tlv(3, port.encode()) + tlv(4, struct.pack("!I", capabilities))
                + tlv(5, software.encode() + pad) + tlv(6, platform.encode()))
        if vlan is not None:
            out += tlv(0x0A, struct.pack("!H", vlan))
        if mtu is not None:
            out += tlv(0x11, struct.pack("!I", mtu))
        if addr is not None:
            out += tlv(0x16, struct.pack("!IBBBH", 1, 1, 1, 0xCC, 4) + addr)
        return out

    tlvs = build(b"")
    if len(tlvs) % 2:  # keep the PDU even: odd lengths are checksummed differently by Cisco
        tlvs = build(b" ")
    head = struct.pack("!BBH", 2, ttl, 0)
    pdu = head + tlvs
    pdu = head[:2] + struct.pack("!H", _checksum(pdu)) + tlvs
    payload = CDP_SNAP + pdu
    return CDP_MULTICAST + src_mac + struct.pack("!H", len(payload)) + payload


def is_discovery(frame: bytes) -> bool:
    """True if `frame` is addressed to the LLDP nearest-bridge or the CDP group."""
    return frame[:6] == LLDP_MULTICAST or frame[:6] == CDP_MULTICAST


def parse_neighbour(frame: bytes) -> Neighbour | None:
    """The neighbour an LLDP or CDP frame announces; None if it is neither. A cut or
    malformed one raises FrameError."""
    if frame[:6] == LLDP_MULTICAST and frame[12:14] == b"\x88\xcc":
        return _parse_lldp(frame[14:])
    if frame[:6] == CDP_MULTICAST:
        if len(frame) < 22:
            raise FrameError(f"CDP: frame cut at {len(frame)} bytes, inside its LLC/SNAP header")
        if frame[14:22] == CDP_SNAP:
            return _parse_cdp(frame[22:], _mac_str(frame[6:12]))
    return None


def _parse_lldp(b: bytes) -> Neighbour:
    fields: dict[int, bytes] = {}
    vlan = mtu = None
    i = 0
    while True:
        if i + 2 > len(b):
            raise FrameError(f"LLDP: cut TLV header at byte {i}")
        (h,) = struct.unpack_from("!H", b, i)
        t, n = h >> 9, h & 0x1FF
        if i + 2 + n > len(b):
            raise FrameError(f"LLDP: TLV {t} at byte {i} runs past the frame")
        if t == 0:
            break
        value = b[i + 2:i + 2 + n]
        if t == 127 and len(value) >= 6:
            if value[:4] == _OUI_8021 + b"\x01":
                vlan = struct.unpack_from("!H", value, 4)[0]
            elif value[:4] == _OUI_8023 + b"\x04":
                mtu = struct.unpack_from("!H", value, 4)[0] - FRAME_OVERHEAD
        else:
            fields.setdefault(t, value)
        i += 2 + n
    for t, what in ((1, "Chassis ID"), (2, "Port ID"), (3, "TTL")):
        if t not in fields or len(fields[t]) < 2 or (t == 3 and len(fields[3]) != 2):
            raise FrameError(f"LLDP: mandatory {what} TLV missing or bad")
    chassis = fields[1]
    chassis_id = (_mac_str(chassis[1:]) if chassis[0] == 4 and len(chassis) == 7
                  else chassis[1:].decode(errors="replace"))
    mgmt = None
    m = fields.get(8, b"")
    if len(m) >= 6 and m[0] == 5 and m[1] == 1:
        mgmt = str(ipaddress.IPv4Address(m[2:6]))
    caps = struct.unpack("!HH", fields[7])[1] if len(fields.get(7, b"")) == 4 else 0

    def text(t: int) -> str:
        return fields.get(t, b"").decode(errors="replace")

    return Neighbour("lldp", text(5), fields[2][1:].decode(errors="replace"),
                     struct.unpack("!H", fields[3])[0], text(6), chassis_id, vlan, mtu, mgmt,
                     caps, text(4))


def _parse_cdp(b: bytes, source: str = "") -> Neighbour:
    if len(b) < 4:
        raise FrameError("CDP: cut header")
    ttl = b[1]
    fields: dict[int, bytes] = {}
    i = 4
    while i < len(b):
        if i + 4 > len(b):
            raise FrameError(f"CDP: cut TLV header at byte {i}")
        t, n = struct.unpack_from("!HH", b, i)
        if n < 4 or i + n > len(b):
            raise FrameError(f"CDP: TLV {t} at byte {i} has a bad length {n}")
        fields.setdefault(t, b[i + 4:i + n])
        i += n

    def text(t: int) -> str:
        return fields.get(t, b"").decode(errors="replace").strip()

    def number(t: int, size: int) -> int | None:
        v = fields.get(t)
        if v is None:
            return None
        if len(v) != size:
            raise FrameError(f"CDP: TLV {t:#06x} is {len(v)} bytes, not {size}")
        return int.from_bytes(v, "big")

    mgmt = None
    for t in (0x16, 0x02):  # Management Address, else the first of Addresses
        a = fields.get(t, b"")
        if len(a) >= 13 and a[4:7] == b"\x01\x01\xcc" and a[7:9] == b"\x00\x04":
            mgmt = str(ipaddress.IPv4Address(a[9:13]))
            break
    return Neighbour("cdp", text(1), text(3), ttl, text(6), source, number(0x0A, 2),
                     number(0x11, 4), mgmt, number(0x04, 4) or 0)
