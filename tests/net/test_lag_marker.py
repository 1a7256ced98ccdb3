"""802.1AX Marker protocol on our LAG members: a Marker Information PDU on an LACP member is
answered at once, out that member, with the requester's fields unchanged; who answers (switch,
Linux-like responder) and who only counts (Open vSwitch, hence XenServer bonds); responses are
never answered; a flood of markers gets no more than the Slow Protocols budget of replies."""
from __future__ import annotations

import pytest

from netsim.clock import NS_PER_S
from netsim.dataplane.lag import MAX_MARKER_RESPONSES_PER_S, Lag, LagConfig, LagPort
from netsim.dataplane.port import Port
from netsim.errors import FrameError
from netsim.wire.lacp import MarkerPdu, decode_marker, encode_marker

from .conftest import sent

SYS_A = bytes.fromhex("020000000a00")
PEER = bytes.fromhex("02000000bb01")


def lag_of(config: LagConfig, n: int = 2) -> tuple[Lag, list[Port]]:
    lag = Lag(LagPort("po1"), config, system=SYS_A)
    members = [Port(f"a{i}") for i in range(n)]
    for m in members:
        lag.add_member(m)
    for m in members:
        sent(m)  # the first LACPDUs, if any
    return lag, members


def test_marker_round_trip_and_layout() -> None:
    pdu = MarkerPdu(7, PEER, 0xDEADBEEF)
    f = encode_marker(PEER, pdu)
    assert len(f) == 124 and f[12:18] == bytes.fromhex("880902010110")
    assert f[18:20] == b"\x00\x07" and f[20:26] == PEER and f[26:30] == bytes.fromhex("deadbeef")
    assert decode_marker(f) == pdu
    r = encode_marker(SYS_A, pdu.answer())
    assert r[16] == 2 and decode_marker(r) == MarkerPdu(7, PEER, 0xDEADBEEF, response=True)


@pytest.mark.parametrize(("mutate", "what"), [
    (lambda f: f[:20], "cut short"),
    (lambda f: f[:16] + b"\x03" + f[17:], "type 3"),
    (lambda f: f[:17] + b"\x14" + f[18:], "length 20"),
    (lambda f: f[:15] + b"\x00" + f[16:], "version 0"),
    (lambda f: f[:14] + b"\x01" + f[15:], "not Marker"),
])
def test_malformed_markers_name_the_field(mutate, what: str) -> None:
    with pytest.raises(FrameError, match=what):
        decode_marker(mutate(encode_marker(PEER, MarkerPdu(1, PEER, 1))))


@pytest.mark.parametrize(("config", "answered"), [
    (LagConfig(mode="lacp"), True),  # 802.1AX Marker Responder (switch, Linux bonding)
    (LagConfig(mode="lacp", lacp="passive"), True),  # passive still responds
    (LagConfig(mode="lacp", marker_responder=False), False),  # Open vSwitch: counted only
    (LagConfig(mode="static"), False),  # no LACP, no marker protocol
    (LagConfig(mode="active-backup"), False),
    (LagConfig(mode="balance-slb"), False),
])
def test_who_answers_a_marker(config: LagConfig, answered: bool) -> None:
    lag, (m0, m1) = lag_of(config)
    m1.receive(encode_marker(PEER, MarkerPdu(3, PEER, 41)))
    out = sent(m1)
    st = lag.status()["members"][1]
    assert st["markers_rx"] == 1 and st["rx_errors"] == 0
    assert sent(m0) == []  # never out another member
    if answered:
        assert [decode_marker(f) for f in out] == [MarkerPdu(3, PEER, 41, response=True)]
        assert out[0][6:12] != PEER  # from our member's own MAC
        assert st["marker_responses_tx"] == 1
    else:
        assert out == [] and st["marker_responses_tx"] == 0
    # the marker never reaches the switch behind the LAG
    assert lag.port.counters.rx_frames == 0


def test_a_marker_response_is_counted_never_answered() -> None:
    lag, (m0, _) = lag_of(LagConfig())
    m0.receive(encode_marker(PEER, MarkerPdu(3, SYS_A, 9, response=True)))
    assert sent(m0) == []
    st = lag.status()["members"][0]
    assert (st["markers_rx"], st["marker_responses_tx"]) == (1, 0)


def test_a_marker_flood_gets_at_most_the_slow_protocols_budget() -> None:
    lag, (m0, _) = lag_of(LagConfig(), n=2)
    now = 0
    lag.clock_now(lambda: now)
    answers: list[int] = []
    for i in range(300):  # 100 markers a second for 3 s
        now = i * NS_PER_S // 100
        m0.receive(encode_marker(PEER, MarkerPdu(1, PEER, i)))
        answers += [now] * len([f for f in sent(m0) if f[14] == 2])
    assert len(answers) == 3 * MAX_MARKER_RESPONSES_PER_S
    w = MAX_MARKER_RESPONSES_PER_S
    assert all(b - a >= NS_PER_S for a, b in zip(answers, answers[w:], strict=False))
    assert m0.counters.drops == {"marker-rate-limit": 300 - 3 * w}
    assert lag.status()["members"][0]["markers_rx"] == 300
