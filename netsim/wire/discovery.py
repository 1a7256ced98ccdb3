"""Link discovery frames: LLDP (IEEE 802.1AB) and CDP v2, as ESXi sends them on its uplinks.

LLDP: ethertype 0x88cc to the nearest-bridge group 01:80:c2:00:00:0e; TLVs of a 7-bit type and
a 9-bit length - Chassis ID (1, subtype 4 = MAC address: the NIC's), Port ID (2, subtype 5 =
interface name: `vmnic0`), TTL (3, seconds), Port Description (4), System Name (5: the host),
End (0). CDP: 802.3 length + LLC/SNAP (AA AA 03, OUI 00:00:0c, protocol 0x2000) to
01:00:0c:cc:cc:cc; version 2, TTL, the Internet checksum of the PDU, then TLVs of a 16-bit type
and a 16-bit length that includes the 4-byte header - Device ID (1: the host), Port ID (3),
Capabilities (4), Software Version (5), Platform (6). Pure codecs; bad input raises FrameError.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from netsim.errors import FrameError

LLDP_MULTICAST = bytes.fromhex("0180c200000e")
CDP_MULTICAST = bytes.fromhex("01000ccccccc")
ETHERTYPE_LLDP = 0x88CC
CDP_SNAP = bytes.fromhex("aaaa0300000c2000")
CDP_CAP_SWITCH = 0x08  # "S": a switch (what an ESXi vSwitch reports)


@dataclass(frozen=True)
class Neighbour:
    """What a discovery frame says about the device that sent it."""

    protocol: str  # "lldp" | "cdp"
    system: str  # LLDP System Name / CDP Device ID
    port: str  # LLDP Port ID / CDP Port ID
    ttl: int
    platform: str = ""


def lldp_frame(src_mac: bytes, *, system: str, port: str, ttl: int = 120,
               description: str = "") -> bytes:
    """An LLDPDU from NIC `src_mac`: chassis = that MAC, port = `port`, system name."""
    def tlv(t: int, value: bytes) -> bytes:
        if len(value) > 511:
            raise FrameError(f"LLDP TLV {t}: value of {len(value)} bytes > 511")
        return struct.pack("!H", (t << 9) | len(value)) + value

    body = (tlv(1, b"\x04" + src_mac) + tlv(2, b"\x05" + port.encode())
            + tlv(3, struct.pack("!H", ttl))
            + (tlv(4, description.encode()) if description else b"")
            + tlv(5, system.encode()) + tlv(0, b""))
    return LLDP_MULTICAST + src_mac + struct.pack("!H", ETHERTYPE_LLDP) + body


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def cdp_frame(src_mac: bytes, *, system: str, port: str, ttl: int = 180,
              platform: str = "VMware ESX", software: str = "Releasebuild") -> bytes:
    """A CDP v2 announcement from NIC `src_mac` (802.3 + SNAP)."""
    def tlv(t: int, value: bytes) -> bytes:
        return struct.pack("!HH", t, len(value) + 4) + value

    tlvs = (tlv(1, system.encode()) + tlv(3, port.encode())
            + tlv(4, struct.pack("!I", CDP_CAP_SWITCH)) + tlv(5, software.encode())
            + tlv(6, platform.encode()))
    if len(tlvs) % 2:  # keep the PDU even: odd lengths are checksummed differently by Cisco
        tlvs = tlvs[:-len(platform) - 4] + tlv(6, platform.encode() + b" ")
    head = struct.pack("!BBH", 2, ttl, 0)
    pdu = head + tlvs
    pdu = head[:2] + struct.pack("!H", _checksum(pdu)) + tlvs
    payload = CDP_SNAP + pdu
    return CDP_MULTICAST + src_mac + struct.pack("!H", len(payload)) + payload


def parse_neighbour(frame: bytes) -> Neighbour | None:
    """The neighbour an LLDP or CDP frame announces; None if it is neither. A cut or
    malformed one raises FrameError."""
    if frame[:6] == LLDP_MULTICAST and frame[12:14] == b"\x88\xcc":
        return _parse_lldp(frame[14:])
    if frame[:6] == CDP_MULTICAST:
        if len(frame) < 22:
            raise FrameError(f"CDP: frame cut at {len(frame)} bytes, inside its LLC/SNAP header")
        if frame[14:22] == CDP_SNAP:
            return _parse_cdp(frame[22:])
    return None


def _parse_lldp(b: bytes) -> Neighbour:
    fields: dict[int, bytes] = {}
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
        fields.setdefault(t, b[i + 2:i + 2 + n])
        i += 2 + n
    for t, what in ((1, "Chassis ID"), (2, "Port ID"), (3, "TTL")):
        if t not in fields or (t == 3 and len(fields[3]) != 2):
            raise FrameError(f"LLDP: mandatory {what} TLV missing or bad")
    return Neighbour("lldp", fields.get(5, b"").decode(errors="replace"),
                     fields[2][1:].decode(errors="replace"), struct.unpack("!H", fields[3])[0])


def _parse_cdp(b: bytes) -> Neighbour:
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
    return Neighbour("cdp", fields.get(1, b"").decode(errors="replace"),
                     fields.get(3, b"").decode(errors="replace"), ttl,
                     fields.get(6, b"").decode(errors="replace").strip())
