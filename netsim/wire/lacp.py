"""LACPDUs (IEEE 802.1AX-2008 §5.4.2, formerly 802.3ad clause 43): the frames two ends of a link
aggregation exchange to agree which links form one logical port.

A Slow Protocols frame: destination 01:80:c2:00:00:02 (never forwarded by a bridge), ethertype
0x8809, subtype 1 (LACP; 2 is the Marker protocol), version 1, then three TLVs and a terminator:
Actor Information (type 1, length 20) and Partner Information (type 2, length 20), each
`{u16 system_priority; u8 system[6]; u16 key; u16 port_priority; u16 port; u8 state; 3 reserved}`;
Collector Information (type 3, length 16: `u16 max_delay` + 12 reserved); Terminator (0, 0);
50 reserved bytes. 110 bytes of PDU, 124 with the Ethernet header. All big-endian.

The state octet's bits, least significant first: LACP_Activity (1 = active), LACP_Timeout
(1 = short: the sender wants a PDU every second and times its partner out after 3 s),
Aggregation, Synchronization, Collecting, Distributing, Defaulted, Expired.

The Marker protocol (802.1AX-2008 §5.5, subtype 2) shares the frame: version 1, one TLV of
type 1 (Marker Information) or 2 (Marker Response), length 16, `{u16 requester_port;
u8 requester_system[6]; u32 requester_transaction_id; u16 pad}`, a Terminator (0, 0) and 90
reserved bytes - again 110 bytes of PDU. A Marker Responder answers an Information PDU with the
same three requester fields under TLV type 2, out the port it came in by (§5.5.3.2).

Pure codec; a frame that is not a well-formed LACPDU or Marker PDU raises FrameError naming
the field.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from netsim.errors import FrameError
from netsim.wire.frame import mac_to_str

SLOW_PROTOCOLS_MULTICAST = bytes.fromhex("0180c2000002")
ETHERTYPE_SLOW = 0x8809
SUBTYPE_LACP = 1
SUBTYPE_MARKER = 2

# state octet bits
ACTIVITY = 0x01
TIMEOUT = 0x02  # short timeout
AGGREGATION = 0x04
SYNC = 0x08
COLLECTING = 0x10
DISTRIBUTING = 0x20
DEFAULTED = 0x40
EXPIRED = 0x80
STATE_NAMES = ("activity", "timeout", "aggregation", "synchronized", "collecting",
               "distributing", "defaulted", "expired")

_INFO = struct.Struct("!BBH6sHHHB3x")  # TLV type, length, then the 18 bytes of information
_COLLECTOR = struct.Struct("!BBH12x")
_MARKER = struct.Struct("!BBBBH6sIH")  # subtype, version, TLV type, length, the 14 info bytes
MARKER_INFO = 1
MARKER_RESPONSE = 2
PDU_LEN = 110
FRAME_LEN = 14 + PDU_LEN


@dataclass(frozen=True)
class LacpInfo:
    """One end's Actor or Partner information: who it is and what state it is in."""

    system_priority: int = 0
    system: bytes = bytes(6)
    key: int = 0
    port_priority: int = 0
    port: int = 0
    state: int = 0

    def __post_init__(self) -> None:
        for name in ("system_priority", "key", "port_priority", "port"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v <= 0xFFFF:
                raise FrameError(f"LACP {name} {v!r} is not a 16-bit value")
        if not isinstance(self.system, bytes) or len(self.system) != 6:
            raise FrameError(f"LACP system {self.system!r} is not a 6-byte MAC")
        if not 0 <= self.state <= 0xFF:
            raise FrameError(f"LACP state {self.state!r} is not one octet")

    def same_link_end(self, other: LacpInfo) -> bool:
        """True if both describe the same port of the same system and key (state aside):
        the comparison 802.1AX's recordPDU makes to decide the partner sees us right."""
        return (self.system_priority, self.system, self.key, self.port_priority, self.port) == (
            other.system_priority, other.system, other.key, other.port_priority, other.port)

    def describe(self) -> str:
        """`prio,system key port-prio,port [state names]`, for tables and logs."""
        return (f"{self.system_priority},{mac_to_str(self.system)} key {self.key} port "
                f"{self.port_priority},{self.port} [{state_text(self.state)}]")


@dataclass(frozen=True)
class Lacpdu:
    """A decoded LACPDU."""

    actor: LacpInfo
    partner: LacpInfo
    collector_max_delay: int = 0


def state_text(state: int) -> str:
    """The names of the bits set in a state octet, as `ovs-appctl lacp/show` lists them."""
    return " ".join(n for i, n in enumerate(STATE_NAMES) if state >> i & 1)


def is_slow_protocols(frame: bytes) -> bool:
    """True for an untagged Slow Protocols frame (LACP, Marker, OAM) to 01:80:c2:00:00:02."""
    return len(frame) >= 15 and frame[12] == 0x88 and frame[13] == 0x09 and \
        frame[:6] == SLOW_PROTOCOLS_MULTICAST


def encode_lacpdu(src_mac: bytes, pdu: Lacpdu) -> bytes:
    """The 124-byte frame carrying `pdu`, sent from the member port's MAC `src_mac`."""
    if len(src_mac) != 6:
        raise FrameError(f"LACPDU source MAC {src_mac!r} is not 6 bytes")
    body = bytearray(struct.pack("!BB", SUBTYPE_LACP, 1))
    for tlv_type, info in ((1, pdu.actor), (2, pdu.partner)):
        body += _INFO.pack(tlv_type, 20, info.system_priority, info.system, info.key,
                           info.port_priority, info.port, info.state)
    body += _COLLECTOR.pack(3, 16, pdu.collector_max_delay)
    body += bytes(2 + 50)  # terminator TLV (0, 0) and the reserved tail
    return SLOW_PROTOCOLS_MULTICAST + src_mac + struct.pack("!H", ETHERTYPE_SLOW) + bytes(body)


def decode_lacpdu(frame: bytes) -> Lacpdu:
    """The LACPDU in `frame` (untagged, as received on a member port)."""
    if not is_slow_protocols(frame):
        raise FrameError("not a Slow Protocols frame (01:80:c2:00:00:02, ethertype 0x8809)")
    if frame[14] != SUBTYPE_LACP:
        raise FrameError(f"slow protocols subtype {frame[14]} is not LACP (1)")
    if len(frame) < 14 + 2 + 2 * 20 + 16 + 2:
        raise FrameError(f"LACPDU cut short: {len(frame)} bytes, at least 74 needed")
    if frame[15] < 1:
        raise FrameError(f"LACPDU version {frame[15]} (offset 15) is not 1 or later")
    infos = []
    for i, (want, off) in enumerate(((1, 16), (2, 36))):
        t, ln, sp, system, key, pp, port, state = _INFO.unpack_from(frame, off)
        if t != want or ln != 20:
            name = ("actor", "partner")[i]
            raise FrameError(f"LACPDU {name} TLV at offset {off}: type {t} length {ln}, "
                             f"expected type {want} length 20")
        infos.append(LacpInfo(sp, system, key, pp, port, state))
    t, ln, delay = _COLLECTOR.unpack_from(frame, 56)
    if t != 3 or ln != 16:
        raise FrameError(f"LACPDU collector TLV at offset 56: type {t} length {ln}, "
                         "expected type 3 length 16")
    return Lacpdu(infos[0], infos[1], delay)


@dataclass(frozen=True)
class MarkerPdu:
    """A decoded Marker Information (`response=False`) or Marker Response PDU: who asked
    (the requester's port and system) and which of its markers this is."""

    requester_port: int
    requester_system: bytes
    transaction_id: int
    response: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.requester_port <= 0xFFFF:
            raise FrameError(f"Marker requester port {self.requester_port!r} is not 16-bit")
        if not isinstance(self.requester_system, bytes) or len(self.requester_system) != 6:
            raise FrameError(f"Marker requester system {self.requester_system!r} is not a "
                             "6-byte MAC")
        if not 0 <= self.transaction_id <= 0xFFFFFFFF:
            raise FrameError(f"Marker transaction id {self.transaction_id!r} is not 32-bit")

    def answer(self) -> MarkerPdu:
        """The Marker Response to this Information PDU: the same requester fields."""
        return MarkerPdu(self.requester_port, self.requester_system, self.transaction_id, True)


def encode_marker(src_mac: bytes, pdu: MarkerPdu) -> bytes:
    """The 124-byte frame carrying Marker PDU `pdu`, sent from the port's MAC `src_mac`."""
    if len(src_mac) != 6:
        raise FrameError(f"Marker PDU source MAC {src_mac!r} is not 6 bytes")
    body = _MARKER.pack(SUBTYPE_MARKER, 1, MARKER_RESPONSE if pdu.response else MARKER_INFO, 16,
                        pdu.requester_port, pdu.requester_system, pdu.transaction_id, 0)
    body += bytes(2 + 90)  # terminator TLV (0, 0) and the reserved tail
    return SLOW_PROTOCOLS_MULTICAST + src_mac + struct.pack("!H", ETHERTYPE_SLOW) + body


def decode_marker(frame: bytes) -> MarkerPdu:
    """The Marker PDU in `frame` (untagged, as received on a member port)."""
    if not is_slow_protocols(frame):
        raise FrameError("not a Slow Protocols frame (01:80:c2:00:00:02, ethertype 0x8809)")
    if frame[14] != SUBTYPE_MARKER:
        raise FrameError(f"slow protocols subtype {frame[14]} is not Marker (2)")
    if len(frame) < 14 + _MARKER.size:
        raise FrameError(f"Marker PDU cut short: {len(frame)} bytes, at least "
                         f"{14 + _MARKER.size} needed")
    _sub, version, tlv, length, port, system, tid, _pad = _MARKER.unpack_from(frame, 14)
    if version < 1:
        raise FrameError(f"Marker PDU version {version} (offset 15) is not 1 or later")
    if tlv not in (MARKER_INFO, MARKER_RESPONSE) or length != 16:
        raise FrameError(f"Marker TLV at offset 16: type {tlv} length {length}, expected type "
                         "1 (information) or 2 (response) length 16")
    return MarkerPdu(port, system, tid, tlv == MARKER_RESPONSE)
