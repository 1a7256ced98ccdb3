"""IPFIX (RFC 7011) messages: the flow records a vDS exports, and a collector's decoder.

A message is a 16-byte header (version 10, length, export time in seconds, sequence number =
data records sent before this message in the domain, observation domain ID) and sets: a
template set (ID 2) declares a template (ID >= 256) as a list of Information Elements (IANA
registry numbers, RFC 7012) and their lengths; a data set (ID = template ID) carries records
laid out by it. Over UDP an exporter must send its templates again periodically (RFC 7011
§8.4); ours go in every message, which also lets a collector started late decode at once.

Our templates use only standard IEs. IPv4 flows (`FLOW_TEMPLATE`, ID 256): sourceIPv4Address
(8), destinationIPv4Address (12), protocolIdentifier (4), sourceTransportPort (7),
destinationTransportPort (11), vlanId (58), ingressInterface (10), egressInterface (14),
octetDeltaCount (1), packetDeltaCount (2), flowStartMilliseconds (152), flowEndMilliseconds
(153), flowEndReason (136), icmpTypeCodeIPv4 (32: type × 256 + code, 0 unless ICMP). IPv6
flows (`FLOW6_TEMPLATE`, ID 257): the same with sourceIPv6Address (27) and
destinationIPv6Address (28) for the addresses and icmpTypeCodeIPv6 (139). A message carries
both templates and a data set for each family it has records of. Wireshark's `cflow` dissector
reads them (`tshark -d udp.port==4739,cflow`). Pure: the caller passes times and sequence
numbers.

`IpfixDecoder` reads any exporter's messages (templates, options templates, enterprise IEs,
variable-length fields), keeping templates per (exporter, domain) with a bound on how many.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from netsim.errors import FrameError

IPFIX_VERSION = 10
IPFIX_PORT = 4739
TEMPLATE_SET_ID = 2
OPTIONS_TEMPLATE_SET_ID = 3
FLOW_TEMPLATE_ID = 256
MAX_MESSAGE = 1400  # stay under a 1500-byte MTU with IP and UDP headers
MAX_TEMPLATES = 4096  # per decoder: a hostile exporter cannot grow it without bound

#: flowEndReason values (IANA IE 136)
END_IDLE = 1
END_ACTIVE = 2
END_OF_FLOW = 3
END_FORCED = 4

#: IE number → (name, kind) for the IEs we export and print
IE_NAMES: dict[int, tuple[str, str]] = {
    1: ("octetDeltaCount", "uint"),
    2: ("packetDeltaCount", "uint"),
    4: ("protocolIdentifier", "uint"),
    5: ("ipClassOfService", "uint"),
    7: ("sourceTransportPort", "uint"),
    8: ("sourceIPv4Address", "ipv4"),
    10: ("ingressInterface", "uint"),
    11: ("destinationTransportPort", "uint"),
    12: ("destinationIPv4Address", "ipv4"),
    14: ("egressInterface", "uint"),
    27: ("sourceIPv6Address", "ipv6"),
    28: ("destinationIPv6Address", "ipv6"),
    32: ("icmpTypeCodeIPv4", "uint"),
    56: ("sourceMacAddress", "mac"),
    58: ("vlanId", "uint"),
    80: ("destinationMacAddress", "mac"),
    136: ("flowEndReason", "uint"),
    139: ("icmpTypeCodeIPv6", "uint"),
    149: ("observationDomainId", "uint"),
    152: ("flowStartMilliseconds", "uint"),
    153: ("flowEndMilliseconds", "uint"),
}

FLOW6_TEMPLATE_ID = 257
FLOW_TEMPLATE: tuple[tuple[int, int], ...] = (
    (8, 4), (12, 4), (4, 1), (7, 2), (11, 2), (58, 2), (10, 4), (14, 4),
    (1, 8), (2, 8), (152, 8), (153, 8), (136, 1), (32, 2),
)
FLOW6_TEMPLATE: tuple[tuple[int, int], ...] = (
    (27, 16), (28, 16), (4, 1), (7, 2), (11, 2), (58, 2), (10, 4), (14, 4),
    (1, 8), (2, 8), (152, 8), (153, 8), (136, 1), (139, 2),
)
_RECORD = struct.Struct("!4s4sBHHHIIQQQQBH")
_RECORD6 = struct.Struct("!16s16sBHHHIIQQQQBH")
assert _RECORD.size == sum(n for _, n in FLOW_TEMPLATE)
assert _RECORD6.size == sum(n for _, n in FLOW6_TEMPLATE)
_HEADER = struct.Struct("!HHIII")


@dataclass(frozen=True)
class FlowRecord:
    """One exported flow record (delta counts since the flow's previous export)."""

    src_ip: str
    dst_ip: str
    protocol: int
    src_port: int
    dst_port: int
    vlan: int
    ingress: int  # ingressInterface: the switch's port ID (0 = unknown)
    egress: int  # egressInterface (0 = flooded or not forwarded)
    octets: int
    packets: int
    start_ms: int
    end_ms: int
    end_reason: int = END_IDLE
    #: ICMP / ICMPv6 type × 256 + code (icmpTypeCodeIPv4 / icmpTypeCodeIPv6); 0 otherwise
    icmp_type_code: int = 0


def _template_set() -> bytes:
    body = b""
    for tid, fields in ((FLOW_TEMPLATE_ID, FLOW_TEMPLATE), (FLOW6_TEMPLATE_ID, FLOW6_TEMPLATE)):
        body += struct.pack("!HH", tid, len(fields))
        body += b"".join(struct.pack("!HH", ie, n) for ie, n in fields)
    return struct.pack("!HH", TEMPLATE_SET_ID, 4 + len(body)) + body


_TEMPLATE_SET = _template_set()
#: IPv4 records that fit one message (fewer when IPv6 records share it)
RECORDS_PER_MESSAGE = (MAX_MESSAGE - _HEADER.size - len(_TEMPLATE_SET) - 4) // _RECORD.size


def _pack(r: FlowRecord) -> tuple[int, bytes]:
    """(template ID, the record's bytes) for `r`, by its address family."""
    src, dst = ipaddress.ip_address(r.src_ip), ipaddress.ip_address(r.dst_ip)
    if src.version != dst.version:
        raise FrameError(f"flow record {r.src_ip} -> {r.dst_ip} mixes IPv4 and IPv6")
    rec = _RECORD if src.version == 4 else _RECORD6
    return (FLOW_TEMPLATE_ID if src.version == 4 else FLOW6_TEMPLATE_ID,
            rec.pack(src.packed, dst.packed, r.protocol, r.src_port, r.dst_port, r.vlan,
                     r.ingress, r.egress, r.octets, r.packets, r.start_ms, r.end_ms,
                     r.end_reason, r.icmp_type_code))


def encode_messages(records: list[FlowRecord], *, export_time: int, seq: int,
                    domain_id: int) -> list[bytes]:
    """The IPFIX messages (one per UDP datagram of at most MAX_MESSAGE bytes, each with both
    templates) carrying `records`, IPv4 ones in a data set of template 256 and IPv6 ones in
    one of template 257; `seq` = data records sent before this message in this domain."""
    out = []
    base = _HEADER.size + len(_TEMPLATE_SET)
    sets: dict[int, list[bytes]] = {}
    size = base
    n = 0

    def close() -> None:
        nonlocal size, n, sets
        body = _TEMPLATE_SET + b"".join(
            struct.pack("!HH", tid, 4 + sum(map(len, recs))) + b"".join(recs)
            for tid, recs in sorted(sets.items()))
        out.append(_HEADER.pack(IPFIX_VERSION, _HEADER.size + len(body),
                                export_time & 0xFFFFFFFF, (seq + n) & 0xFFFFFFFF,
                                domain_id) + body)
        n += sum(len(recs) for recs in sets.values())
        sets, size = {}, base

    for r in records:
        tid, data = _pack(r)
        grow = len(data) + (0 if tid in sets else 4)  # a new data set needs its header
        if sets and size + grow > MAX_MESSAGE:
            close()
            grow = len(data) + 4
        sets.setdefault(tid, []).append(data)
        size += grow
    if sets:
        close()
    return out


@dataclass(frozen=True)
class Message:
    """A decoded message: its header and the data records it carried, as {IE name: value}."""

    export_time: int
    seq: int
    domain_id: int
    records: list[dict[str, Any]]
    #: data records of templates not (yet) known: RFC 7011 lets a collector drop them
    unknown_template_records: int = 0


Field = tuple[int, int, int]  # (IE number, length (65535 = variable), enterprise number)


class IpfixDecoder:
    """Decode IPFIX messages from one or more exporters, keeping their templates."""

    def __init__(self, *, max_templates: int = MAX_TEMPLATES) -> None:
        self.templates: dict[tuple[Any, int, int], tuple[Field, ...]] = {}
        self.max_templates = max_templates

    def decode(self, data: bytes, source: Any = None) -> Message:
        """One message (one datagram) from exporter `source`; FrameError naming the offset
        when it is not well-formed (nothing of it is kept then)."""
        if len(data) < _HEADER.size:
            raise FrameError(f"IPFIX message of {len(data)} bytes is shorter than its header")
        version, length, export_time, seq, domain = _HEADER.unpack_from(data)
        if version != IPFIX_VERSION:
            raise FrameError(f"version {version} at offset 0, expected IPFIX {IPFIX_VERSION}")
        if length != len(data):
            raise FrameError(f"message length {length} at offset 2, but the datagram has "
                             f"{len(data)} bytes")
        new_templates: dict[tuple[Any, int, int], tuple[Field, ...] | None] = {}
        data_sets: list[tuple[int, int, int]] = []
        off = _HEADER.size
        while off < length:
            if length - off < 4:
                raise FrameError(f"set header cut short at offset {off}")
            set_id, set_len = struct.unpack_from("!HH", data, off)
            if set_len < 4 or off + set_len > length:
                raise FrameError(f"set length {set_len} at offset {off + 2} runs past the "
                                 f"message ({length} bytes)")
            end = off + set_len
            if set_id in (TEMPLATE_SET_ID, OPTIONS_TEMPLATE_SET_ID):
                self._templates(data, off + 4, end, set_id, (source, domain), new_templates)
            elif set_id >= 256:
                data_sets.append((set_id, off + 4, end))
            else:
                raise FrameError(f"set ID {set_id} at offset {off} is reserved")
            off = end
        known = dict(self.templates)
        for key, fields in new_templates.items():
            if fields is None:
                known.pop(key, None)
            else:
                known[key] = fields
        if len(known) > self.max_templates:
            raise FrameError(f"more than {self.max_templates} templates: refused")
        records: list[dict[str, Any]] = []
        unknown = 0
        for set_id, start, end in data_sets:
            fields = known.get((source, domain, set_id))
            if fields is None:
                unknown += 1
                continue
            records.extend(_records(data, start, end, fields))
        self.templates = known
        return Message(export_time, seq, domain, records, unknown)

    @staticmethod
    def _templates(data: bytes, off: int, end: int, set_id: int, key: tuple[Any, int],
                   out: dict[tuple[Any, int, int], tuple[Field, ...] | None]) -> None:
        while end - off >= 4:
            tid, count = struct.unpack_from("!HH", data, off)
            where = off
            off += 4
            if tid < 256:
                raise FrameError(f"template ID {tid} at offset {where} is below 256")
            if count == 0:  # a template withdrawal
                out[(*key, tid)] = None
                continue
            if set_id == OPTIONS_TEMPLATE_SET_ID:
                if end - off < 2:
                    raise FrameError(f"options template {tid} cut short at offset {off}")
                off += 2  # scope field count: scope fields are decoded like the others
            fields: list[Field] = []
            for _ in range(count):
                if end - off < 4:
                    raise FrameError(f"template {tid} field cut short at offset {off}")
                ie, n = struct.unpack_from("!HH", data, off)
                off += 4
                ent = 0
                if ie & 0x8000:
                    if end - off < 4:
                        raise FrameError(f"template {tid} enterprise number cut short at "
                                         f"offset {off}")
                    (ent,) = struct.unpack_from("!I", data, off)
                    off += 4
                    ie &= 0x7FFF
                if n == 0:
                    raise FrameError(f"template {tid}: field {ie} of length 0 at offset "
                                     f"{off - 2}")
                fields.append((ie, n, ent))
            out[(*key, tid)] = tuple(fields)


def _records(data: bytes, off: int, end: int, fields: tuple[Field, ...]) -> list[dict[str, Any]]:
    out = []
    min_len = sum(1 if n == 0xFFFF else n for _, n, _ in fields)
    while end - off >= min_len:  # what is left after the last record is padding
        rec: dict[str, Any] = {}
        for ie, n, ent in fields:
            if n == 0xFFFF:
                if off >= end:
                    raise FrameError(f"variable-length field {ie} cut short at offset {off}")
                n = data[off]
                off += 1
                if n == 255:
                    if end - off < 2:
                        raise FrameError(f"variable-length field {ie} cut short at offset {off}")
                    (n,) = struct.unpack_from("!H", data, off)
                    off += 2
            if end - off < n:
                raise FrameError(f"field {ie} of {n} bytes cut short at offset {off}")
            raw = data[off:off + n]
            off += n
            name, kind = IE_NAMES.get(ie, (f"ie{ie}", "bytes")) if not ent else (
                f"e{ent}.ie{ie}", "bytes")
            rec[name] = _value(raw, kind)
        out.append(rec)
        if min_len == 0:
            break
    return out


def _value(raw: bytes, kind: str) -> Any:
    if kind == "uint":
        return int.from_bytes(raw, "big")
    if kind == "ipv4" and len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if kind == "ipv6" and len(raw) == 16:
        return str(ipaddress.IPv6Address(raw))
    if kind == "mac" and len(raw) == 6:
        return ":".join(f"{b:02x}" for b in raw)
    return raw.hex()
