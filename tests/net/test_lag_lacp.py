"""LACP (802.1AX) between two of our LAGs, driven on explicit virtual time: negotiation by
mode (active/passive), periodic rate chosen by the partner's timeout bit, expiry and default
after 3 periods, members going down, a member cabled to another system, a hostile partner,
malformed PDUs."""
from __future__ import annotations

import pytest

from netsim.clock import NS_PER_S
from netsim.dataplane.lag import Lag, LagConfig, LagPort
from netsim.dataplane.port import Port
from netsim.wire.lacp import (
    COLLECTING,
    DISTRIBUTING,
    SYNC,
    TIMEOUT,
    Lacpdu,
    LacpInfo,
    decode_lacpdu,
    encode_lacpdu,
    is_slow_protocols,
)

from .conftest import sent

T0 = 1_000 * NS_PER_S
SYS_A = bytes.fromhex("020000000a00")
SYS_B = bytes.fromhex("020000000b00")


class Pair:
    """Two LAGs of `n` members cabled member to member, with a wire we can cut per
    direction; time moves only when `run` says."""

    def __init__(self, a: LagConfig, b: LagConfig, n: int = 2) -> None:
        self.a = Lag(LagPort("po1"), a, system=SYS_A)
        self.b = Lag(LagPort("lag1"), b, system=SYS_B)
        self.ma = [Port(f"a{i}") for i in range(n)]
        self.mb = [Port(f"b{i}") for i in range(n)]
        for p in self.ma:
            self.a.add_member(p)
        for p in self.mb:
            self.b.add_member(p)
        self.now = T0
        self.cut: set[str] = set()  # member names whose frames are lost on the wire
        self.pdus: dict[str, list[int]] = {p.name: [] for p in self.ma + self.mb}
        for lag in (self.a, self.b):
            lag.clock_now(lambda: self.now)
            lag.start(self.now)
        self.pump()

    def pump(self) -> None:
        for _ in range(100):
            moved = False
            for x, y in zip(self.ma + self.mb, self.mb + self.ma, strict=True):
                for f in sent(x):
                    moved = True
                    if is_slow_protocols(f):
                        self.pdus[x.name].append(self.now)
                    if x.name not in self.cut:
                        y.receive(f)
            if not moved:
                return
        raise AssertionError("LACP did not settle")

    def run(self, seconds: float) -> None:
        """Advance time to each timer deadline in turn, up to `seconds` from now."""
        end = self.now + int(seconds * NS_PER_S)
        while True:
            due = min((d for d in (self.a.next_due_ns(), self.b.next_due_ns())
                       if d is not None), default=None)
            if due is None or due > end:
                break
            self.now = max(due, self.now)
            self.a.tick(self.now)
            self.b.tick(self.now)
            self.pump()
        self.now = end


def up(lag: Lag) -> list[str]:
    return [p.name for p in lag.distributing]


@pytest.mark.parametrize(("a", "b", "forms"), [
    ("active", "active", True),
    ("active", "passive", True),
    ("passive", "active", True),
    ("passive", "passive", False),  # nobody speaks first: no LAG, and no PDU at all
])
def test_lacp_modes_decide_whether_the_lag_forms(a: str, b: str, forms: bool) -> None:
    p = Pair(LagConfig(lacp=a, rate="fast"), LagConfig(lacp=b, rate="fast"))
    p.run(5)
    if forms:
        assert up(p.a) == ["a0", "a1"] and up(p.b) == ["b0", "b1"]
        assert p.a.port.link_up and p.b.port.link_up
        for lag in (p.a, p.b):
            for m in lag.members:
                assert lag.actor_state(m) & (SYNC | COLLECTING | DISTRIBUTING) == \
                    SYNC | COLLECTING | DISTRIBUTING
    else:
        assert up(p.a) == [] and up(p.b) == []
        assert not p.a.port.link_up
        assert all(not v for v in p.pdus.values())


@pytest.mark.parametrize(("rate_a", "rate_b", "a_every", "b_every"), [
    # each end sends at the rate its *partner* asks for (the partner's LACP_Timeout bit)
    ("fast", "fast", 1, 1),
    ("fast", "slow", 30, 1),
    ("slow", "fast", 1, 30),
    ("slow", "slow", 30, 30),
])
def test_periodic_rate_is_the_one_the_partner_asks_for(
        rate_a: str, rate_b: str, a_every: int, b_every: int) -> None:
    p = Pair(LagConfig(rate=rate_a), LagConfig(rate=rate_b), n=1)
    p.run(5)  # negotiation done
    for v in p.pdus.values():
        v.clear()
    p.run(120)
    assert len(p.pdus["a0"]) == 120 // a_every
    assert len(p.pdus["b0"]) == 120 // b_every
    gaps = {(y - x) // NS_PER_S for x, y in zip(p.pdus["a0"], p.pdus["a0"][1:], strict=False)}
    assert gaps == {a_every}


@pytest.mark.parametrize(("rate", "expire_s", "default_s"), [
    ("fast", 3, 6),  # short timeout 3 s; expired asks for fast and waits 3 s more
    ("slow", 90, 93),  # long timeout 90 s
])
def test_partner_silence_expires_then_defaults_the_member(
        rate: str, expire_s: int, default_s: int) -> None:
    p = Pair(LagConfig(rate=rate), LagConfig(rate="fast"), n=2)
    p.run(5)
    assert up(p.a) == ["a0", "a1"]
    p.cut.add("b1")  # b1's PDUs no longer arrive at a1
    last_heard = max(p.pdus["b1"])
    t_cut = p.now
    # b sends every second (a asks... a's own rate decides b's period): find when a1 expires
    step = NS_PER_S // 2
    expired_at = defaulted_at = None
    while p.now < t_cut + 200 * NS_PER_S and defaulted_at is None:
        p.run(step / NS_PER_S)
        st = p.a.status()["members"][1]["status"]
        if st == "expired" and expired_at is None:
            expired_at = p.now
            assert up(p.a) == ["a0"]  # out of sync: no longer collecting/distributing
            assert p.a.actor_state(p.a.members[1]) & TIMEOUT  # asks for fast PDUs
        if st == "defaulted":
            defaulted_at = p.now
    assert expired_at is not None and defaulted_at is not None
    # within half a second (our polling step) of the timer set by the last PDU heard
    assert 0 <= expired_at - (last_heard + expire_s * NS_PER_S) < step
    assert 0 <= defaulted_at - (last_heard + default_s * NS_PER_S) < step
    assert up(p.a) == ["a0"] and p.a.port.link_up
    p.cut.clear()  # the wire heals: b1's next PDU brings a1 back
    p.run(35)
    assert up(p.a) == ["a0", "a1"]


def test_a_member_going_down_leaves_the_lag_and_the_last_one_takes_it_down() -> None:
    p = Pair(LagConfig(rate="fast"), LagConfig(rate="fast"), n=3)
    p.run(5)
    assert up(p.a) == ["a0", "a1", "a2"]
    p.ma[1].set_link(False)
    p.mb[1].set_link(False)
    p.pump()
    assert up(p.a) == ["a0", "a2"] and up(p.b) == ["b0", "b2"]
    for port in (p.ma[0], p.ma[2]):
        port.set_link(False)
    assert up(p.a) == [] and not p.a.port.link_up
    p.ma[1].set_link(True)  # back: a new PDU at once; in sync again within one exchange
    p.mb[1].set_link(True)
    p.pump()
    p.run(1)
    assert up(p.a) == ["a1"] and p.a.port.link_up


def test_a_member_cabled_to_another_system_is_not_aggregated() -> None:
    p = Pair(LagConfig(rate="fast"), LagConfig(rate="fast"), n=2)
    stranger = Lag(LagPort("other"), LagConfig(rate="fast"),
                   system=bytes.fromhex("02000000ff00"))
    p.cut.add("b1")  # a1 hears the stranger instead of b1
    sp = Port("s0")
    stranger.add_member(sp)
    stranger.clock_now(lambda: p.now)
    stranger.start(p.now)
    for _ in range(10):
        p.run(1)
        stranger.tick(p.now)
        for f in sent(sp):
            p.ma[1].receive(f)
        for f in sent(p.ma[1]):
            sp.receive(f)
    assert up(p.a) == ["a0"]
    assert p.a.status()["members"][1]["selected"] is False
    assert p.a.status()["members"][1]["status"] == "current"


def test_a_hostile_partner_cannot_make_us_send_more_than_3_pdus_a_second() -> None:
    lag = Lag(LagPort("po1"), LagConfig(rate="slow"), system=SYS_A)
    m = Port("a0")
    lag.add_member(m)
    now = T0
    lag.clock_now(lambda: now)
    lag.start(now)
    tx = [now] * len(sent(m))
    for i in range(3000):  # a PDU every ms, each with another state: each asks for an answer
        now = T0 + i * 1_000_000
        state = 0x05 | (i & 1) << 1 | (i & 2) << 2
        lag.receive_pdu(m, Lacpdu(LacpInfo(1, SYS_B, 9, 1, 1, state), LacpInfo()), now)
        lag.tick(now)
        tx += [now] * len(sent(m))
    # 3 s of provocation: 3 answers in each second, never a 4th within any 1 s window
    assert len(tx) == 9
    assert all(b - a >= NS_PER_S for a, b in zip(tx, tx[3:], strict=False))


def test_malformed_and_non_lacp_slow_frames_are_counted_not_fatal() -> None:
    lag = Lag(LagPort("po1"), LagConfig(), system=SYS_A)
    m = Port("a0")
    lag.add_member(m)
    good = encode_lacpdu(SYS_B, Lacpdu(LacpInfo(1, SYS_B, 1, 1, 1, 0x3D), LacpInfo()))
    m.receive(good[:40])  # cut inside the partner TLV
    m.receive(good[:16] + b"\x07" + good[17:])  # actor TLV type 7
    m.receive(good[:14] + b"\x02" + good[15:])  # subtype Marker, but a TLV of length 20
    m.receive(good[:14] + b"\x03" + good[15:])  # OAM (subtype 3): not a LAG's protocol
    st = lag.status()["members"][0]
    assert (st["rx_errors"], st["markers_rx"], st["pdus_rx"]) == (4, 1, 0)
    assert st["marker_responses_tx"] == 0 and sent(m) == []
    assert m.counters.drops == {"malformed": 3, "slow-protocol-unsupported": 1}


def test_lacpdu_round_trip_and_layout() -> None:
    pdu = Lacpdu(LacpInfo(65534, SYS_A, 7, 255, 3, 0x3F), LacpInfo(32768, SYS_B, 9, 128, 2, 0x0D),
                 collector_max_delay=50)
    f = encode_lacpdu(SYS_A, pdu)
    assert len(f) == 124 and f[:6] == bytes.fromhex("0180c2000002") and f[12:16] == \
        bytes.fromhex("88090101")
    assert decode_lacpdu(f) == pdu
