"""Declarative frame specs build the bytes Scapy would; filters select frames on raw bytes."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from netsim.wire.filters import FilterError, compile_filter
from netsim.wire.framespec import SpecError, build_frame, parse_spec

A, B = "00:16:3e:00:00:01", "00:16:3e:00:00:02"


def _scapy(pkt: Ether) -> bytes:
    raw = bytes(pkt)
    return raw + b"\0" * max(0, 60 - len(raw))


def test_udp_in_vlan_matches_scapy() -> None:
    ours = build_frame({"eth": {"src": A, "dst": B}, "vlan": {"vid": 10, "pcp": 5},
                        "ipv4": {"src": "10.0.0.1", "dst": "10.0.0.2", "ttl": 7, "id": 99},
                        "udp": {"sport": 1234, "dport": 53}, "payload": 100})
    ref = Ether(src=A, dst=B) / Dot1Q(vlan=10, prio=5) / IP(src="10.0.0.1", dst="10.0.0.2",
                                                             ttl=7, id=99, flags=0) \
        / UDP(sport=1234, dport=53) / bytes(i & 0xFF for i in range(100))
    assert ours == _scapy(ref)


def test_tcp_icmp_arp_and_qinq_match_scapy() -> None:
    tcp = build_frame({"eth": {"src": A, "dst": B}, "ipv4": {"src": "1.2.3.4", "dst": "5.6.7.8"},
                       "tcp": {"sport": 80, "dport": 4000, "flags": "SA", "seq": 7, "ack": 9,
                               "window": 100}})
    assert tcp == _scapy(Ether(src=A, dst=B) / IP(src="1.2.3.4", dst="5.6.7.8", flags=0, id=0)
                         / TCP(sport=80, dport=4000, flags="SA", seq=7, ack=9, window=100))
    icmp = build_frame({"eth": {"src": A, "dst": B}, "ipv4": {"src": "1.2.3.4", "dst": "5.6.7.8"},
                        "icmp": {"id": 3, "seq": 4}, "payload": 56})
    assert icmp == _scapy(Ether(src=A, dst=B) / IP(src="1.2.3.4", dst="5.6.7.8", flags=0, id=0)
                          / ICMP(id=3, seq=4) / bytes(i & 0xFF for i in range(56)))
    arp = build_frame({"eth": {"src": A}, "arp": {"spa": "10.0.0.1", "tpa": "10.0.0.2"}})
    assert arp == _scapy(Ether(src=A, dst="ff:ff:ff:ff:ff:ff")
                         / ARP(op=1, hwsrc=A, psrc="10.0.0.1", pdst="10.0.0.2"))
    qinq = build_frame({"eth": {"src": A, "dst": B}, "vlan": [100, 10], "payload": 50})
    assert qinq == _scapy(Ether(src=A, dst=B, type=0x88A8) / Dot1AD(vlan=100, type=0x8100)
                          / Dot1Q(vlan=10, type=0x88B5) / bytes(i & 0xFF for i in range(50)))


@pytest.mark.parametrize("spec,path,msg", [
    ({"eth": {"src": "zz"}}, ("eth", "src"), "not a MAC"),
    ({"eth": {"src": A}, "vlan": 4096}, ("vlan",), "out of range"),
    ({"eth": {"src": A}, "udp": {}}, ("udp",), "needs an ipv4"),
    ({"eth": {"src": A}, "ipv4": {"src": "1.2.3.4", "dst": "x"}}, ("ipv4", "dst"), "IPv4"),
    ({"eth": {"src": A}, "colour": 1}, ("colour",), "unknown field"),
    ({"eth": {"src": A}, "ipv4": {"src": "1.1.1.1", "dst": "2.2.2.2"}, "tcp": {"flags": "SZ"}},
     ("tcp", "flags"), "unknown TCP flag"),
])
def test_bad_specs_name_the_field(spec: dict, path: tuple, msg: str) -> None:
    with pytest.raises(SpecError, match=msg) as err:
        parse_spec(spec)
    assert err.value.path == path


FRAMES = {
    "udp10": build_frame({"eth": {"src": A, "dst": B}, "vlan": 10,
                          "ipv4": {"src": "10.0.0.1", "dst": "10.0.0.2"},
                          "udp": {"sport": 5000, "dport": 53}}),
    "tcp": build_frame({"eth": {"src": B, "dst": A}, "ipv4": {"src": "10.0.0.2", "dst": "10.0.0.1"},
                        "tcp": {"sport": 22, "dport": 6000}}),
    "arp": build_frame({"eth": {"src": A}, "arp": {"spa": "10.0.0.1", "tpa": "10.0.0.9"}}),
}


@pytest.mark.parametrize("text,expected", [
    ("", {"udp10", "tcp", "arp"}),
    ("vlan 10", {"udp10"}),
    ("vlan", {"udp10"}),
    ("untagged", {"tcp", "arp"}),
    ("udp dst port 53", {"udp10"}),
    ("port 22 or arp", {"tcp", "arp"}),
    (f"ether src {A}", {"udp10", "arp"}),
    (f"src {A} and not broadcast", {"udp10"}),
    ("broadcast", {"arp"}),
    ("host 10.0.0.9", {"arp"}),
    ("src host 10.0.0.2 && tcp", {"tcp"}),
    ("dst 10.0.0.2", {"udp10"}),
    ("ether proto 0x0806", {"arp"}),
    ("ip and !(vlan 10)", {"tcp"}),
    ("ip proto 17", {"udp10"}),
    ("len = 60", {"udp10", "tcp", "arp"}),
    ("len >= 61", set()),
    ("vlan 11", set()),
])
def test_filter_selects(text: str, expected: set[str]) -> None:
    flt = compile_filter(text)
    assert {name for name, f in FRAMES.items() if flt(f)} == expected


@pytest.mark.parametrize("text,msg", [
    ("vlan 5000", "out of range"),
    ("udp and", "ends too early"),
    ("ether src nope", "MAC"),
    ("frobnicate", "unknown word"),
    ("(udp", "missing"),
    ("udp )", "unexpected"),
])
def test_bad_filters_say_where(text: str, msg: str) -> None:
    with pytest.raises(FilterError, match=msg):
        compile_filter(text)


def test_runts_never_match() -> None:
    assert not compile_filter("")(b"\x00" * 13)


@settings(max_examples=60, deadline=None)
@given(vid=st.integers(1, 4094), sport=st.integers(0, 65535), dport=st.integers(0, 65535),
       size=st.integers(0, 200))
def test_filter_agrees_with_spec_fields(vid: int, sport: int, dport: int, size: int) -> None:
    frame = build_frame({"eth": {"src": A, "dst": B}, "vlan": vid,
                         "ipv4": {"src": "10.1.1.1", "dst": "10.2.2.2"},
                         "udp": {"sport": sport, "dport": dport}, "payload": size})
    assert compile_filter(f"vlan {vid} and udp src port {sport} and dst port {dport}")(frame)
    assert not compile_filter(f"vlan {vid % 4094 + 1}")(frame)
    pkt = Ether(frame)
    assert pkt[UDP].sport == sport and pkt[Dot1Q].vlan == vid and len(pkt[UDP].payload) >= size
