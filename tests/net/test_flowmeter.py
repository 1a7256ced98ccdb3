"""IPFIX flow metering (VMwareIpfixConfig): flow keys, counts, egress interface, idle and
active timeouts on the clock, 1-in-N sampling, internal flows only, a bounded table; and the
IPFIX message codec and decoder."""
from __future__ import annotations

import struct

import pytest

from netsim.clock import NS_PER_S, ManualClock
from netsim.dataplane.flowmeter import FlowMeter, IpfixConfig
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.errors import ConfigError, FrameError
from netsim.wire.erspan import ipv4_header
from netsim.wire.frame import ethernet, push_tag
from netsim.wire.ipfix import (
    END_ACTIVE,
    END_FORCED,
    END_IDLE,
    RECORDS_PER_MESSAGE,
    FlowRecord,
    IpfixDecoder,
    encode_messages,
)

from .conftest import sent

MAC = [bytes([0, 0x16, 0x3E, 0, 0, i]) for i in range(8)]
IP = [bytes([10, 0, 0, i]) for i in range(8)]


def udp(dst: int, src: int, sport: int, dport: int, payload: int = 100, *,
        vid: int | None = None, proto: int = 17) -> bytes:
    l4 = struct.pack("!HHHH", sport, dport, 8 + payload, 0) + bytes(payload)
    f = ethernet(MAC[dst], MAC[src], 0x0800, ipv4_header(IP[src], IP[dst], proto, len(l4)) + l4)
    return push_tag(f, vid) if vid is not None else f


def lab(**cfg: object):
    clock = ManualClock()
    sw = StandardSwitch("dvs", clock=clock)
    sw.add_port_group(PortGroup("pg", vlan=10))
    vms = [sw.attach(Vif(i, 0, mac=MAC[i]), "pg") for i in (1, 2, 3)]
    up = sw.add_uplink(Pif("vmnic0"))
    meter = FlowMeter(IpfixConfig("127.0.0.1", **cfg), clock)  # type: ignore[arg-type]
    meter.attach(sw)
    return clock, sw, vms, up, meter


def test_a_flow_counts_ip_octets_and_packets_with_its_ports_and_interfaces() -> None:
    clock, _sw, (a, b, _), _, meter = lab()
    b.vnic.send(udp(1, 2, 53, 53))  # b is learned: a's frames then go to b only
    for i in range(5):
        a.vnic.send(udp(2, 1, 5000, 53, payload=100 + i))
        clock.advance(1)
    recs = {(r.src_ip, r.dst_ip): r for r in meter.flush()}
    r = recs[("10.0.0.1", "10.0.0.2")]
    assert (r.protocol, r.src_port, r.dst_port, r.vlan) == (17, 5000, 53, 10)
    assert r.packets == 5 and r.octets == sum(20 + 8 + 100 + i for i in range(5))
    ifs = meter.interfaces()
    assert (r.ingress, r.egress) == (ifs[a.name], ifs[b.name])
    assert r.end_ms - r.start_ms == 4000 and r.end_reason == END_FORCED
    # b's first frame was an unknown unicast: flooded, so no single egress interface
    assert recs[("10.0.0.2", "10.0.0.1")].egress == 0


V6 = [bytes.fromhex(f"20010db8{0:022x}{i:02x}") for i in range(8)]


def ip6(dst: int, src: int, nh: int, l4: bytes) -> bytes:
    """An IPv6 frame from VM `src` to VM `dst`: fixed header (next header `nh`) + `l4`."""
    hdr = struct.pack("!IHBB", 6 << 28, len(l4), nh, 64) + V6[src] + V6[dst]
    return ethernet(MAC[dst], MAC[src], 0x86DD, hdr + l4)


def icmp(kind: int, code: int) -> bytes:
    return bytes((kind, code)) + bytes(6) + b"ping" * 4


# (frame, metered?, (protocol, src port, dst port, VLAN, ICMP type/code), IP octets)
KEY_CASES = [
    (udp(2, 1, 1, 2), 1, (17, 1, 2, 10, 0), 128),
    (udp(2, 1, 1, 2, proto=6), 1, (6, 1, 2, 10, 0), 128),
    (udp(2, 1, 0x0800, 2, proto=1), 1, (1, 0, 0, 10, 0x0800), 128),  # echo request: IE 32
    (udp(2, 1, 0x0301, 2, proto=1), 1, (1, 0, 0, 10, 0x0301), 128),  # port unreachable
    (udp(2, 1, 1, 2, proto=47), 1, (47, 0, 0, 10, 0), 128),  # GRE: no ports, no ICMP
    (ip6(2, 1, 17, struct.pack("!HHHH", 546, 547, 8, 0)), 1, (17, 546, 547, 10, 0), 48),
    (ip6(2, 1, 6, struct.pack("!HHII", 40000, 443, 0, 0) + bytes(8)), 1,
     (6, 40000, 443, 10, 0), 60),
    (ip6(2, 1, 58, icmp(128, 0)), 1, (58, 0, 0, 10, 128 << 8), 64),  # echo request: IE 139
    (ip6(2, 1, 0, bytes(8)), 1, (0, 0, 0, 10, 0), 48),  # hop-by-hop: not walked, no ports
    (ethernet(MAC[2], MAC[1], 0x0806, bytes(28)), 0, None, 0),  # ARP
    (ethernet(MAC[2], MAC[1], 0x86DD, bytes(60)), 0, None, 0),  # 0x86DD, not a v6 header
    (ethernet(MAC[2], MAC[1], 0x0800, bytes(10)), 0, None, 0),  # IPv4 header cut short
]


@pytest.mark.parametrize(("frame", "metered", "key", "octets"), KEY_CASES)
def test_flow_keys_by_kind_of_frame(frame: bytes, metered: int, key: tuple | None,
                                    octets: int) -> None:
    _, _, (a, _, _), _, meter = lab()
    a.vnic.send(frame)
    assert meter.counters.metered == metered and meter.counters.unmetered == 1 - metered
    recs = meter.flush()
    if key is not None:
        assert [(r.protocol, r.src_port, r.dst_port, r.vlan, r.icmp_type_code)
                for r in recs] == [key]
        assert [r.octets for r in recs] == [octets]
        v6 = frame[12:14] == b"\x86\xdd"
        assert recs[0].src_ip == ("2001:db8::1" if v6 else "10.0.0.1")


def test_icmp_flows_are_keyed_by_type_and_code() -> None:
    """An echo request and its reply, and two unreachables of different codes, are four
    flows, as in OVS's and IPFIX's flow keys."""
    _, _, (a, _, _), _, meter = lab()
    for kind_code in (0x0800, 0x0800, 0x0000, 0x0301, 0x0303):
        a.vnic.send(udp(2, 1, kind_code, 0, proto=1))
    got = sorted((r.icmp_type_code, r.packets) for r in meter.flush())
    assert got == [(0x0000, 1), (0x0301, 1), (0x0303, 1), (0x0800, 2)]


def test_ipv4_and_ipv6_records_share_messages_in_two_data_sets() -> None:
    v4 = records(3)
    v6 = [FlowRecord("2001:db8::1", "2001:db8::2", 58, 0, 0, 10, 1, 2, 64, 1, 5, 6, 1,
                     icmp_type_code=0x8000 + i) for i in range(3)]
    mixed = [x for pair in zip(v4, v6, strict=True) for x in pair]
    (msg,) = encode_messages(mixed, export_time=1, seq=0, domain_id=1)
    out = IpfixDecoder().decode(msg, "exp").records
    assert [r.get("sourceIPv6Address", r.get("sourceIPv4Address")) for r in out] == \
        ["10.0.0.1"] * 3 + ["2001:db8::1"] * 3  # set 256, then set 257
    assert [r["icmpTypeCodeIPv6"] for r in out[3:]] == [0x8000, 0x8001, 0x8002]
    # many IPv6 records: split under the MTU, sequence numbers count every record before
    msgs = encode_messages(v6 * 40, export_time=1, seq=100, domain_id=1)
    dec = IpfixDecoder()
    decoded = [dec.decode(m, "exp") for m in msgs]
    assert all(len(m) <= 1400 for m in msgs) and len(msgs) > 1
    assert sum(len(m.records) for m in decoded) == 120
    seqs = [m.seq for m in decoded]
    assert seqs == [100 + sum(len(m.records) for m in decoded[:i]) for i in range(len(msgs))]
    with pytest.raises(FrameError, match="mixes IPv4 and IPv6"):
        encode_messages([FlowRecord("10.0.0.1", "2001:db8::1", 6, 1, 2, 0, 0, 0, 1, 1, 0, 0)],
                        export_time=0, seq=0, domain_id=1)


def test_vgt_frames_are_keyed_by_their_own_vlan() -> None:
    clock = ManualClock()
    sw = StandardSwitch("dvs", clock=clock)
    sw.add_port_group(PortGroup("trunk", vlan=4095))
    a = sw.attach(Vif(1, 0, mac=MAC[1]), "trunk")
    sw.attach(Vif(2, 0, mac=MAC[2]), "trunk")
    meter = FlowMeter(IpfixConfig("127.0.0.1"), clock)
    meter.attach(sw)
    a.vnic.send(udp(2, 1, 1, 2, vid=77))
    assert [r.vlan for r in meter.flush()] == [77]


def test_idle_timeout_ends_a_flow_and_active_timeout_reports_a_long_one() -> None:
    clock, _, (a, _, _), _, meter = lab(idle_flow_timeout=10, active_flow_timeout=60)
    a.vnic.send(udp(2, 1, 1, 1))
    assert meter.next_due_ns() == clock.now_ns() + 10 * NS_PER_S
    clock.advance(9.9)
    assert meter.expire() == []
    clock.advance(0.1)
    (r,) = meter.expire()
    assert (r.packets, r.end_reason) == (1, END_IDLE) and meter.flows == {}
    # a flow sending every 5 s never idles out: it is reported every 60 s, counts as deltas
    reports: list[FlowRecord] = []
    for _ in range(37):  # 180 s
        a.vnic.send(udp(2, 1, 2, 2))
        clock.advance(5)
        reports += meter.expire()
    assert [(x.packets, x.end_reason) for x in reports] == [(12, END_ACTIVE)] * 3
    assert sum(x.packets for x in reports) + sum(x.packets for x in meter.flush()) == 37


@pytest.mark.parametrize(("rate", "sent_n", "metered"), [(0, 10, 10), (1, 10, 10), (2, 10, 5),
                                                         (3, 10, 4), (100, 250, 3)])
def test_sampling_meters_one_packet_in_n(rate: int, sent_n: int, metered: int) -> None:
    _, _, (a, _, _), _, meter = lab(sampling_rate=rate)
    for _ in range(sent_n):
        a.vnic.send(udp(2, 1, 1, 1))
    assert meter.counters.metered == metered
    assert meter.counters.sampled_out == sent_n - metered
    assert sum(r.packets for r in meter.flush()) == metered


@pytest.mark.parametrize("internal_only", [False, True])
def test_internal_flows_only_keeps_vm_to_vm_flows(internal_only: bool) -> None:
    _, _, (a, b, _), up, meter = lab(internal_flows_only=internal_only)
    b.vnic.send(udp(1, 2, 9, 9))  # flooded (a unknown yet): to a and the uplink: not internal
    a.vnic.send(udp(2, 1, 7, 7))  # VM to VM: internal
    up.receive(udp(1, 5, 8, 8))  # from the physical network
    got = {(r.src_port, r.dst_port) for r in meter.flush()}
    assert got == ({(7, 7)} if internal_only else {(7, 7), (8, 8), (9, 9)})
    assert meter.counters.flows_filtered == (2 if internal_only else 0)


def test_a_full_flow_table_counts_what_it_cannot_meter() -> None:
    clock = ManualClock()
    sw = StandardSwitch("dvs", clock=clock)
    sw.add_port_group(PortGroup("pg"))
    a = sw.attach(Vif(1, 0, mac=MAC[1]), "pg")
    meter = FlowMeter(IpfixConfig("127.0.0.1"), clock, max_flows=3)
    meter.attach(sw)
    for port in range(5):
        a.vnic.send(udp(2, 1, port, 1))
    assert len(meter.flows) == 3 and meter.counters.table_full == 2


@pytest.mark.parametrize(("field", "value"), [
    ("collector_ip", "not-an-ip"), ("collector_port", 0), ("collector_port", 70000),
    ("active_flow_timeout", 59), ("idle_flow_timeout", 601), ("sampling_rate", -1),
    ("sampling_rate", 16385), ("observation_domain_id", -1), ("internal_flows_only", "yes")])
def test_config_values_outside_vsphere_ranges_are_refused(field: str, value: object) -> None:
    args: dict[str, object] = {"collector_ip": "127.0.0.1", field: value}
    with pytest.raises(ConfigError, match=f"ipfix: {field}"):
        IpfixConfig(**args)  # type: ignore[arg-type]


# ------------------------------------------------------------------ codec and decoder
def records(n: int) -> list[FlowRecord]:
    return [FlowRecord("10.0.0.1", "10.0.0.2", 17, i, 53, 10, 1, 2, 1000 + i, 1 + i,
                       1_700_000_000_000, 1_700_000_001_000) for i in range(n)]


def test_messages_split_under_the_mtu_and_decode_back() -> None:
    recs = records(RECORDS_PER_MESSAGE * 2 + 1)
    msgs = encode_messages(recs, export_time=1_700_000_002, seq=7, domain_id=99)
    assert len(msgs) == 3 and all(len(m) <= 1400 for m in msgs)
    dec = IpfixDecoder()
    out = [dec.decode(m, "exp") for m in msgs]
    assert [m.seq for m in out] == [7, 7 + RECORDS_PER_MESSAGE, 7 + 2 * RECORDS_PER_MESSAGE]
    flat = [r for m in out for r in m.records]
    assert [r["sourceTransportPort"] for r in flat] == list(range(len(recs)))
    assert flat[0] == {
        "sourceIPv4Address": "10.0.0.1", "destinationIPv4Address": "10.0.0.2",
        "protocolIdentifier": 17, "sourceTransportPort": 0, "destinationTransportPort": 53,
        "vlanId": 10, "ingressInterface": 1, "egressInterface": 2, "octetDeltaCount": 1000,
        "packetDeltaCount": 1, "flowStartMilliseconds": 1_700_000_000_000,
        "flowEndMilliseconds": 1_700_000_001_000, "flowEndReason": 1, "icmpTypeCodeIPv4": 0}


def _msg(body: bytes, *, version: int = 10) -> bytes:
    return struct.pack("!HHIII", version, 16 + len(body), 0, 0, 1) + body


@pytest.mark.parametrize(("data", "msg"), [
    (b"\x00\x0a", "shorter than its header"),
    (_msg(b"", version=9), "version 9"),
    (_msg(b"")[:-1] + b"", "shorter than its header"),
    (struct.pack("!HHIII", 10, 40, 0, 0, 0), "message length 40"),
    (_msg(struct.pack("!HH", 2, 3)), "set length 3"),
    (_msg(struct.pack("!HH", 2, 200)), "set length 200"),
    (_msg(struct.pack("!HH", 1, 4)), "set ID 1"),
    (_msg(struct.pack("!HHHH", 2, 8, 100, 1)), "template ID 100"),
    (_msg(struct.pack("!HHHHHH", 2, 12, 300, 2, 8, 4)), "field cut short"),
    (_msg(struct.pack("!HHHHHH", 2, 12, 300, 1, 0x8008, 4)), "enterprise number cut short"),
    (_msg(struct.pack("!HHHHHH", 2, 12, 300, 1, 8, 0)), "length 0"),
])
def test_bad_messages_raise_one_error_naming_what_and_where(data: bytes, msg: str) -> None:
    dec = IpfixDecoder()
    with pytest.raises(FrameError, match=msg):
        dec.decode(data, "exp")
    assert dec.templates == {}


def test_decoder_reads_variable_length_and_enterprise_fields_and_bounds_templates() -> None:
    tmpl = struct.pack("!HHHHHHIHH", 300, 3, 8, 4, 0x8001, 0xFFFF, 6876, 4, 1)
    data = bytes([10, 0, 0, 1]) + b"\x03abc" + b"\x11"
    m = _msg(struct.pack("!HH", 2, 4 + len(tmpl)) + tmpl
             + struct.pack("!HH", 300, 4 + len(data)) + data)
    (rec,) = IpfixDecoder().decode(m, "x").records
    assert rec == {"sourceIPv4Address": "10.0.0.1", "e6876.ie1": "616263",
                   "protocolIdentifier": 17}
    dec = IpfixDecoder(max_templates=2)
    many = b"".join(struct.pack("!HHHH", 256 + i, 1, 4, 1) for i in range(3))
    with pytest.raises(FrameError, match="more than 2 templates"):
        dec.decode(_msg(struct.pack("!HH", 2, 4 + len(many)) + many), "x")
    # data for a template never seen is counted, not decoded
    assert IpfixDecoder().decode(_msg(struct.pack("!HHI", 400, 8, 0)), "x"
                                 ).unknown_template_records == 1


def test_metering_does_not_change_what_the_switch_forwards() -> None:
    _, _, (a, b, _), _, _meter = lab()
    b.vnic.send(udp(1, 2, 1, 1))
    sent(a)
    a.vnic.send(udp(2, 1, 1, 1))
    assert [f[6:12] for f in sent(b)] == [MAC[1]]


@pytest.mark.parametrize(("rec", "line"), [
    (FlowRecord("10.0.0.1", "10.0.0.2", 17, 5000, 53, 10, 1, 2, 128, 1, 0, 1000, 1),
     "10.0.0.1:5000 -> 10.0.0.2:53 proto 17 vlan 10 if 1->2 packets 1 octets 128"),
    (FlowRecord("10.0.0.1", "10.0.0.2", 1, 0, 0, 10, 1, 2, 84, 1, 0, 0, 1, 0x0800),
     "10.0.0.1 -> 10.0.0.2 proto 1 icmp 8/0 vlan 10"),
    (FlowRecord("2001:db8::1", "2001:db8::2", 6, 40000, 443, 0, 1, 0, 60, 1, 0, 0, 4),
     "[2001:db8::1]:40000 -> [2001:db8::2]:443 proto 6 vlan 0"),
    (FlowRecord("2001:db8::1", "2001:db8::2", 58, 0, 0, 0, 1, 0, 64, 1, 0, 0, 4, 0x8000),
     "2001:db8::1 -> 2001:db8::2 proto 58 icmp 128/0 vlan 0"),
])
def test_ipfix_listen_prints_ipv4_ipv6_and_icmp_flows(rec: FlowRecord, line: str) -> None:
    from netsim.cli.commands.ipfix import _line

    (msg,) = encode_messages([rec], export_time=0, seq=0, domain_id=3)
    (r,) = IpfixDecoder().decode(msg, "exp").records
    assert _line(r, "127.0.0.1:9", 3).startswith(line)
