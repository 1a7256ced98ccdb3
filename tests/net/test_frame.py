"""The frame codec: parse/validate/tag/untag on bytes, MAC text, and the Scapy edge."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsim.errors import FrameError
from netsim.wire import frame as fr

A = "00:16:3e:00:00:01"
B = "00:16:3e:00:00:02"


def test_untagged_frame_parses_to_its_fields() -> None:
    f = fr.ethernet(B, A, fr.ETHERTYPE_IPV4, b"x" * 46)
    v = fr.parse(f)
    assert (v.dst, v.src) == (fr.mac_to_bytes(B), fr.mac_to_bytes(A))
    assert (v.tpid, v.vid, v.pcp, v.tags, v.ethertype, v.header_len) == (0, 0, 0, 0, 0x0800, 14)
    assert not v.tagged


@pytest.mark.parametrize("tpid", [fr.TPID_8021Q, fr.TPID_8021AD])
def test_tagged_frame_parses_outer_tag(tpid: int) -> None:
    f = fr.push_tag(fr.ethernet(B, A, fr.ETHERTYPE_ARP, b""), 400, pcp=5, tpid=tpid)
    v = fr.parse(f)
    assert (v.tpid, v.vid, v.pcp, v.dei, v.tags, v.ethertype, v.header_len) == (
        tpid, 400, 5, 0, 1, 0x0806, 18)


def test_qinq_reports_outer_tag_and_inner_ethertype() -> None:
    inner = fr.push_tag(fr.ethernet(B, A, 0x0800), 65)
    f = fr.push_tag(inner, 100, tpid=fr.TPID_8021AD)
    v = fr.parse(f)
    assert (v.tpid, v.vid, v.tags, v.ethertype, v.header_len) == (0x88A8, 100, 2, 0x0800, 22)
    assert fr.pop_tag(f) == inner


def test_push_pop_and_set_vid_round_trip() -> None:
    f = fr.ethernet(B, A, 0x0800, b"payload")
    t = fr.push_tag(f, 5, pcp=3)
    assert len(t) == len(f) + 4
    assert t[12:16] == bytes.fromhex("8100") + ((3 << 13) | 5).to_bytes(2, "big")
    r = fr.set_vid(t, 4094)
    assert fr.parse(r).vid == 4094 and fr.parse(r).pcp == 3
    assert fr.pop_tag(r) == f


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "runt frame: 0 bytes"),
        (b"\x00" * 13, "runt frame: 13 bytes"),
        (bytes(12) + b"\x81\x00" + b"\x00\x05", "cut inside its VLAN tag"),
        (bytes(12) + b"\x81\x00\x00\x05\x81\x00\x00", "tag 2"),
    ],
)
def test_bad_frames_raise_frame_error_saying_what(data: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        fr.parse(data)


def test_validate_checks_mtu_per_tag_and_multicast_source() -> None:
    ok = fr.ethernet(B, A, 0x0800, bytes(1500))
    assert len(ok) == 1514
    fr.validate(ok)
    with pytest.raises(FrameError, match="oversize frame: 1515 bytes > 1514"):
        fr.validate(ok + b"\x00")
    fr.validate(fr.push_tag(ok, 5))  # 1518 allowed with one tag
    with pytest.raises(FrameError, match="oversize"):
        fr.validate(fr.push_tag(ok, 5) + b"\x00")
    with pytest.raises(FrameError, match="multicast"):
        fr.validate(fr.ethernet(B, "01:00:5e:00:00:01", 0x0800))
    fr.validate(ok + bytes(500), mtu=9000)


@pytest.mark.parametrize("vid", [-1, 4096, 99999])
def test_vid_out_of_range_is_refused(vid: int) -> None:
    with pytest.raises(FrameError, match="out of range 0-4095"):
        fr.push_tag(fr.ethernet(B, A, 0x0800), vid)


def test_pop_or_set_on_untagged_frame_is_an_error() -> None:
    f = fr.ethernet(B, A, 0x0800)
    with pytest.raises(FrameError, match="no VLAN tag"):
        fr.pop_tag(f)
    with pytest.raises(FrameError, match="no VLAN tag"):
        fr.set_vid(f, 3)


@pytest.mark.parametrize("text", ["00:16:3e:0a:0b:0c", "00-16-3E-0A-0B-0C", "0016.3e0a.0b0c"])
def test_mac_text_forms(text: str) -> None:
    assert fr.mac_to_bytes(text) == bytes.fromhex("00163e0a0b0c")
    assert fr.mac_to_str(fr.mac_to_bytes(text)) == "00:16:3e:0a:0b:0c"


@pytest.mark.parametrize("text", ["00:16:3e", "zz:16:3e:0a:0b:0c", ""])
def test_bad_mac_text(text: str) -> None:
    with pytest.raises(FrameError, match="bad MAC address"):
        fr.mac_to_bytes(text)


def test_ethernet_pads_to_minimum_before_tagging() -> None:
    assert len(fr.ethernet(B, A, 0x0800)) == 60
    assert len(fr.ethernet(B, A, 0x0800, vid=5)) == 64
    assert len(fr.ethernet(B, A, 0x0800, pad=False)) == 14


def test_gratuitous_arp_detection() -> None:
    from scapy.layers.l2 import ARP, Ether

    garp = fr.from_scapy(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=A, psrc="10.0.0.1", pdst="10.0.0.1"))
    req = fr.from_scapy(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=A, psrc="10.0.0.1", pdst="10.0.0.2"))
    assert fr.arp_is_gratuitous(garp, 14)
    assert not fr.arp_is_gratuitous(req, 14)


def test_scapy_edge_round_trip_keeps_the_tag() -> None:
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Dot1Q, Ether

    ip = IP(src="10.0.65.1", dst="10.0.65.2")
    pkt = Ether(src=A, dst=B) / Dot1Q(vlan=65, prio=2) / ip / ICMP()
    raw = fr.from_scapy(pkt)
    v = fr.parse(raw)
    assert (v.vid, v.pcp, v.ethertype) == (65, 2, 0x0800)
    back = fr.to_scapy(raw)
    assert back[Dot1Q].vlan == 65 and back[IP].dst == "10.0.65.2"
    assert bytes(back) == raw


def test_from_scapy_refuses_a_runt() -> None:
    from scapy.packet import Raw

    with pytest.raises(FrameError, match="runt"):
        fr.from_scapy(Raw(b"abc"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_parse_never_raises_anything_but_frame_error(data: bytes) -> None:
    try:
        v = fr.parse(data)
    except FrameError:
        return
    assert v.header_len <= len(data)
    assert v.header_len == 14 + 4 * v.tags


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=14, max_size=80), st.integers(0, 4095), st.integers(0, 7))
def test_push_then_pop_is_identity(data: bytes, vid: int, pcp: int) -> None:
    t = fr.push_tag(data, vid, pcp=pcp)
    v = fr.parse(t)
    assert (v.vid, v.pcp, v.tpid) == (vid, pcp, fr.TPID_8021Q)
    assert fr.pop_tag(t) == data
