"""Link aggregation: LACP port-channels, vDS LAGs and XenServer bonds.

One logical port, `LagPort`, stands on the switch where the member links would: the switch
learns MACs on it, floods to it once, and picks it as an uplink in its teaming order. Its
`Lag` owns the member ports (their `switch` is the Lag): frames arriving on a member are handed
to the LagPort's switch if the member is collecting, LACPDUs are consumed (a bridge never
forwards 01:80:c2:00:00:02), and a frame sent to the LagPort leaves by one member chosen by the
mode:

- `lacp` (IEEE 802.1AX; vSphere `VMwareDvsLacpGroupConfig`, `xe bond-create mode=lacp`, a
  switch's `channel-group N mode active|passive`): LACPDUs every second (`fast`) or 30 s
  (`slow`), at the rate the *partner* asks for in its LACP_Timeout bit; a partner is timed out
  after 3 of *our* periods (3 s short, 90 s long) - first EXPIRED (we ask for fast PDUs for 3 s
  more), then DEFAULTED (forgotten). A member is selected when its partner is known and
  aggregatable; the aggregator takes the members whose partner has the same system and key as
  the lowest-numbered one (the others stay out, as a real switch suspends a port cabled to
  another device). Collecting and distributing go together (coupled control, as Open vSwitch
  does) once both ends say Synchronization. `passive` sends only after hearing an active
  partner, so two passive ends never form a LAG. Frames are spread by a hash of the fields the
  load-balancing algorithm names; see `HASHES`.
- `static` (`channel-group N mode on`): every member whose link is up distributes; no PDUs.
- `active-backup` (XenServer, OVS `bond_mode=active-backup`): one member carries everything;
  the others accept nothing (OVS `bond_check_admissibility`); the first member that is up takes
  over when it fails, and keeps the role when the old one recovers (no failback).
- `balance-slb` (XenServer default, OVS `bond_mode=balance-slb`): each source MAC+VLAN falls in
  one of 256 hash buckets assigned to a member; every `rebalance_interval_ms` (10 s,
  XenServer `other-config:bond-rebalance-interval`) buckets move from the busiest member to
  the least busy one while that narrows the gap (OVS `bond_rebalance`), and loads are halved.
  Broadcast and multicast are accepted only on the active member, so a flood the physical switch
  sends down every member enters once.

Around those, as 802.1AX and Open vSwitch do: an LACP member answers a Marker Information PDU
with a Marker Response out the same member (`marker_responder`; an OVS bond only counts it); an
active-backup or balance-slb bond whose active member changes sends a RARP learning packet per
MAC behind it (`learning_packets`, OVS `bond_compose_learning_packet`); and an LACP bond with
`lacp_fallback_ab` runs active-backup while no partner speaks LACP.

The LACP state machine is a plain object driven by `receive_pdu(member, pdu, now)` and
`tick(now)`, with `next_due_ns()` saying when it next has something to do; `Lag.run(clock)` is
the fabric's task that calls `tick` at those deadlines, so a virtual clock crosses idle time in
one jump and tests drive the timers directly.
"""
from __future__ import annotations

import asyncio
import struct
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from netsim.clock import NS_PER_S, Clock
from netsim.dataplane.port import Pif, Port
from netsim.errors import ConfigError, FrameError
from netsim.wire.lacp import (
    ACTIVITY,
    AGGREGATION,
    COLLECTING,
    DEFAULTED,
    DISTRIBUTING,
    EXPIRED,
    SLOW_PROTOCOLS_MULTICAST,
    SUBTYPE_LACP,
    SUBTYPE_MARKER,
    SYNC,
    TIMEOUT,
    Lacpdu,
    LacpInfo,
    decode_lacpdu,
    decode_marker,
    encode_lacpdu,
    encode_marker,
    state_text,
)

MODES = ("lacp", "static", "active-backup", "balance-slb")
FAST_PERIOD_S = 1.0
SLOW_PERIOD_S = 30.0
TIMEOUT_PERIODS = 3  # a partner is timed out after 3 of our periods: 3 s short, 90 s long
MAX_PDUS_PER_FAST_PERIOD = 3  # 802.1AX §5.4.16: no more than 3 LACPDUs in any 1 s
#: IEEE 802.3 Annex 43B.2: a port sends no more than 10 Slow Protocols frames in any second;
#: Marker Responses beyond that budget (a partner flooding Marker PDUs) are dropped, counted
MAX_MARKER_RESPONSES_PER_S = 10
SLB_BUCKETS = 256
DEFAULT_REBALANCE_MS = 10_000


# -- hashing --------------------------------------------------------------------------------
def _fields(frame: bytes) -> dict[str, bytes]:
    """The header fields a LAG hash may use: MACs, VLAN, IPv4 addresses, TCP/UDP ports."""
    f = {"smac": frame[6:12], "dmac": frame[0:6], "vlan": b"", "sip": b"", "dip": b"",
         "sport": b"", "dport": b""}
    off = 12
    if len(frame) >= 18 and frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        f["vlan"] = bytes((frame[14] & 0x0F, frame[15]))
        off = 16
    if frame[off:off + 2] == b"\x08\x00" and len(frame) >= off + 22:
        ip = off + 2
        ihl = (frame[ip] & 0x0F) * 4
        f["sip"], f["dip"] = frame[ip + 12:ip + 16], frame[ip + 16:ip + 20]
        proto = frame[ip + 9]
        frag = ((frame[ip + 6] & 0x1F) << 8) | frame[ip + 7]
        l4 = ip + ihl
        if proto in (6, 17) and not frag and len(frame) >= l4 + 4:
            f["sport"], f["dport"] = frame[l4:l4 + 2], frame[l4 + 2:l4 + 4]
    return f


#: load-balancing algorithm → the fields it hashes. vSphere's `loadbalanceAlgorithm` names
#: (`VMwareDvsLacpLoadBalanceAlgorithm`), XenServer's `hashing_algorithm` (`tcpudp_ports` =
#: OVS balance-tcp: L2-L4; `src_mac` = source MAC and VLAN), and a physical switch's
#: `port-channel load-balance` choices map onto these.
HASHES: dict[str, tuple[str, ...]] = {
    "srcMac": ("smac",),
    "destMac": ("dmac",),
    "srcDestMac": ("smac", "dmac"),
    "srcIp": ("sip",),
    "destIp": ("dip",),
    "srcDestIp": ("sip", "dip"),
    "srcDestIpVlan": ("sip", "dip", "vlan"),
    "srcTcpUdpPort": ("sport",),
    "destTcpUdpPort": ("dport",),
    "srcDestTcpUdpPort": ("sport", "dport"),
    "srcDestIpTcpUdpPort": ("sip", "dip", "sport", "dport"),
    "srcDestIpTcpUdpPortVlan": ("sip", "dip", "sport", "dport", "vlan"),
    "vlan": ("vlan",),
    "tcpudp_ports": ("smac", "dmac", "vlan", "sip", "dip", "sport", "dport"),
    "src_mac": ("smac", "vlan"),
}
#: vSphere's default LAG algorithm ("source and destination IP address, TCP/UDP port and VLAN")
VSPHERE_DEFAULT_HASH = "srcDestIpTcpUdpPortVlan"
XEN_DEFAULT_HASH = "tcpudp_ports"


def hash_frame(frame: bytes, algorithm: str) -> int:
    """A 32-bit hash of the fields `algorithm` names (CRC-32: stable across runs and hosts).
    A frame lacking a field (no IP, no ports) hashes that field as empty, so all such frames
    of a flow stay on one member."""
    return _HASHERS[algorithm](frame)


_ORDER = ("smac", "dmac", "vlan", "sip", "dip", "sport", "dport")


def _hasher(fields: tuple[str, ...]) -> Callable[[bytes], int]:
    """`hash_frame` for one algorithm: CRC-32 of its fields joined by `|`, read by slicing
    (the frame path calls this per frame; `_fields` says the same thing more slowly)."""
    pick = itemgetter(*(_ORDER.index(k) for k in fields))
    single = len(fields) == 1
    l3 = bool(set(fields) & {"sip", "dip", "sport", "dport"})
    crc = zlib.crc32

    def h(frame: bytes) -> int:
        off = 12
        vlan = b""
        b12 = frame[12] if len(frame) >= 18 else 0
        if (b12 == 0x81 and frame[13] == 0x00) or (b12 == 0x88 and frame[13] == 0xA8):
            vlan = bytes((frame[14] & 0x0F, frame[15]))
            off = 16
        sip = dip = sport = dport = b""
        if l3 and frame[off:off + 2] == b"\x08\x00" and len(frame) >= off + 22:
            ip = off + 2
            sip, dip = frame[ip + 12:ip + 16], frame[ip + 16:ip + 20]
            l4 = ip + (frame[ip] & 0x0F) * 4
            if frame[ip + 9] in (6, 17) and not (frame[ip + 6] & 0x1F or frame[ip + 7]) \
                    and len(frame) >= l4 + 4:
                sport, dport = frame[l4:l4 + 2], frame[l4 + 2:l4 + 4]
        got = pick((frame[6:12], frame[0:6], vlan, sip, dip, sport, dport))
        return crc(got if single else b"|".join(got))
    return h


_TPIDS = (b"\x81\x00", b"\x88\xa8")
_HASHERS = {name: _hasher(fields) for name, fields in HASHES.items()}


# -- configuration ------------------------------------------------------------------------
@dataclass(frozen=True)
class LagConfig:
    """How a LAG or bond behaves.

    mode: `lacp` | `static` | `active-backup` | `balance-slb`. lacp: `active` (send LACPDUs
    unprompted) or `passive`; rate: `fast` (1 s) or `slow` (30 s) - the rate we ask the partner
    to send at, and our timeout (3 periods). hashing: a key of HASHES. system_priority and key
    identify our aggregator in LACPDUs (802.1AX: lower priority wins; the key groups members
    that may aggregate together). rebalance_interval_ms: balance-slb's rebalancing period
    (0 = never). marker_responder: answer 802.1AX Marker PDUs (the standard's Marker Responder,
    as switches and Linux bonding do); Open vSwitch - so a XenServer bond - only counts them.
    lacp_fallback_ab: OVS `other_config:lacp-fallback-ab` - an LACP bond whose partner never
    speaks LACP runs active-backup instead of going down (vswitch.xml); other modes ignore it,
    as OVS does, so `xe bond-set-mode` away from lacp and back keeps it.
    """

    mode: str = "lacp"
    lacp: str = "active"
    rate: str = "slow"
    hashing: str = VSPHERE_DEFAULT_HASH
    system_priority: int = 32768
    key: int = 1
    rebalance_interval_ms: int = DEFAULT_REBALANCE_MS
    marker_responder: bool = True
    lacp_fallback_ab: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"lag mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.lacp not in ("active", "passive"):
            raise ConfigError(f"lacp {self.lacp!r} must be active or passive")
        if self.rate not in ("fast", "slow"):
            raise ConfigError(f"lacp rate {self.rate!r} must be fast or slow")
        if self.hashing not in HASHES:
            raise ConfigError(f"hashing {self.hashing!r} is not one of {', '.join(HASHES)}")
        for name, hi in (("system_priority", 0xFFFF), ("key", 0xFFFF)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
                raise ConfigError(f"lag {name} {v!r} must be 0..{hi}")
        r = self.rebalance_interval_ms
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(f"rebalance_interval_ms {r!r} must be >= 0")
        for flag in ("marker_responder", "lacp_fallback_ab"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} {getattr(self, flag)!r} must be true or false")


# -- the logical port ---------------------------------------------------------------------
class LagPort(Pif):
    """The port-channel / LAG / bond as one port of its switch (`Po1`, `lag1`, `bond0`). It
    is up while at least one member distributes; a frame sent out of it leaves by the member
    its `Lag` picks."""

    kind = "lag"

    def __init__(self, name: str, *, mtu: int = 1500) -> None:
        super().__init__(name, mtu=mtu, queue_size=1)
        self.lag: Lag | None = None
        self.link_up = False
        self.refresh()

    def refresh(self) -> None:
        """Frames to a LagPort always go through `transmit` (the member choice)."""
        self.tx_plain = False

    def transmit(self, frame: bytes) -> bool:
        """Send by the member the LAG's mode picks; counted here and on the member."""
        c = self.counters
        lag = self.lag
        member = lag.member_for(frame) if lag is not None and self.link_up else None
        if member is None:
            c.drop("link-down", 1, frame)
            return False
        if self.taps:
            for tap in self.taps:
                tap(frame, True)
        if not member.transmit(frame):
            c.drop("queue-full", 1, frame)
            return False
        c.tx_frames += 1
        c.tx_bytes += len(frame)
        return True


# -- members ------------------------------------------------------------------------------
class _Member:
    """One member link's LACP variables (802.1AX §5.4.7, the ones this model needs)."""

    __slots__ = ("collecting", "current_until", "last_pdu", "marker_times", "number", "partner",
                 "partner_matched", "periodic_due", "port", "rx_state", "selected", "stats",
                 "tx_times")

    def __init__(self, port: Port, number: int) -> None:
        self.port = port
        self.number = number
        self.partner: LacpInfo | None = None  # the partner's operational information
        self.partner_matched = False  # the partner's last PDU described us as we are
        self.rx_state = "defaulted"  # current | expired | defaulted (receive machine)
        self.current_until: int | None = None
        self.periodic_due: int | None = None
        self.selected = False
        self.collecting = False
        self.last_pdu: Lacpdu | None = None
        self.tx_times: deque[int] = deque(maxlen=MAX_PDUS_PER_FAST_PERIOD)
        self.marker_times: deque[int] = deque(maxlen=MAX_MARKER_RESPONSES_PER_S)
        self.stats = {"pdus_rx": 0, "pdus_tx": 0, "rx_errors": 0, "markers_rx": 0,
                      "marker_responses_tx": 0}


class Lag:
    """A link aggregation: its `LagPort`, the member ports, and the mode's state (LACP state
    machines, the active member, balance-slb's bucket map). `add_member(port)` makes `port`'s
    arrivals come here; cable the member, not the LagPort."""

    def __init__(self, port: LagPort, config: LagConfig | None = None, *,
                 system: bytes = bytes.fromhex("020000000001")) -> None:
        if not isinstance(port, LagPort):
            raise ConfigError(f"a Lag needs a LagPort, not {port!r}")
        if len(system) != 6:
            raise ConfigError(f"{port.name}: LACP system id must be a 6-byte MAC")
        self.port = port
        port.lag = self
        self.config = config if config is not None else LagConfig()
        self._hash = _HASHERS[self.config.hashing]
        self.system = system
        self.members: list[_Member] = []
        self._by_port: dict[Port, _Member] = {}
        self._dist: tuple[Port, ...] = ()
        self._active: Port | None = None  # active-backup / balance-slb: the active member
        self._slb: list[Port | None] = [None] * SLB_BUCKETS
        self._slb_load = [0] * SLB_BUCKETS
        self._rebalance_due: int | None = None
        self._fallback = False  # lacp-fallback-ab in force: no partner, running active-backup
        self._pending_learning = False
        self._wake: asyncio.Event | None = None
        self._now: Callable[[], int] | None = None
        #: how many times balance-slb moved a bucket, and member changes of active-backup
        self.rebalances = 0
        self.failovers = 0
        #: RARP learning packets sent after active member changes (OVS SLB/AB bonds)
        self.learning_packets_sent = 0

    # -- building -------------------------------------------------------------------------
    def add_member(self, member: Port) -> None:
        """Make `member` (a physical switch port or a host NIC) a link of this LAG."""
        if not isinstance(member, Port) or isinstance(member, LagPort):
            raise ConfigError(f"{self.port.name}: a member must be a plain port, not {member!r}")
        if member.switch is not None:
            raise ConfigError(f"{self.port.name}: {member.name} is already attached to "
                              f"{getattr(member.switch, 'name', member.switch)}")
        m = _Member(member, len(self.members) + 1)
        self.members.append(m)
        self._by_port[member] = m
        member.switch = self  # type: ignore[assignment]
        member.on_link_change(self._member_link)
        self._update(None)

    @property
    def name(self) -> str:
        """The LagPort's name."""
        return self.port.name

    def member_ports(self) -> list[Port]:
        """The member ports in the order they were added."""
        return [m.port for m in self.members]

    @property
    def distributing(self) -> tuple[Port, ...]:
        """The members frames leave by now."""
        return self._dist

    def clock_now(self, now: Callable[[], int]) -> None:
        """Give the LAG a clock reading function (for PDUs sent from the frame path)."""
        self._now = now

    # -- frames in ------------------------------------------------------------------------
    def ingress(self, member: Port, frame: bytes, now: int | None = None) -> None:
        """A frame arrived on `member`: LACPDUs feed the state machine; other frames enter
        the LagPort's switch if the member collects them."""
        m = self._by_port.get(member)
        if m is None:
            member.counters.drop("link-down", 1, frame)
            return
        if len(frame) >= 15 and frame[12] == 0x88 and frame[13] == 0x09 and \
                frame[:6] == SLOW_PROTOCOLS_MULTICAST:
            self._slow(m, frame)
            return
        if not self._admits(m, frame):
            member.counters.drop("lag-not-collecting", 1, frame)
            return
        self.port.arrive(frame)

    def ingress_batch(self, member: Port, frames: Sequence[bytes]) -> None:
        """Several frames arrived on `member`, in order."""
        for f in frames:
            self.ingress(member, f)

    def _admits(self, m: _Member, frame: bytes) -> bool:
        mode = self.config.mode
        if mode == "lacp":
            if self._fallback:  # OVS bond_check_admissibility: active-backup's rule
                return m.port is self._active
            return m.collecting
        if mode == "static":
            return m.port.link_up
        if mode == "active-backup":
            return m.port is self._active
        # balance-slb: unicast on any enabled member; broadcast/multicast on the active one
        return m.port in self._dist and (not frame[0] & 1 or m.port is self._active)

    def _slow(self, m: _Member, frame: bytes) -> None:
        if frame[14] == SUBTYPE_MARKER:
            self._marker(m, frame)
            return
        if frame[14] != SUBTYPE_LACP:  # OAM, OSSP, ...: not ours (OVS counts them as bad PDUs)
            m.stats["rx_errors"] += 1
            m.port.counters.drop("slow-protocol-unsupported", 1, frame)
            return
        if self.config.mode != "lacp":
            m.stats["rx_errors"] += 1
            m.port.counters.drop("lag-not-collecting", 1, frame)
            return
        try:
            pdu = decode_lacpdu(frame)
        except FrameError:
            m.stats["rx_errors"] += 1
            m.port.counters.drop("malformed", 1, frame)
            return
        self.receive_pdu(m.port, pdu, self._now() if self._now else 0)

    def _marker(self, m: _Member, frame: bytes) -> None:
        """802.1AX §5.5 Marker Responder: a Marker Information PDU on an LACP member is answered
        at once, out the same member, with a Marker Response carrying the requester's port,
        system and transaction id unchanged. Linux bonding (802.3ad mode) and switches answer;
        Open vSwitch (lib/lacp.c, `lacp_process_packet`) only counts the PDU
        (`dot3adAggPortStatsMarkerPDUsRx`) - `LagConfig.marker_responder=False` models that."""
        m.stats["markers_rx"] += 1
        try:
            pdu = decode_marker(frame)
        except FrameError:
            m.stats["rx_errors"] += 1
            m.port.counters.drop("malformed", 1, frame)
            return
        if pdu.response or self.config.mode != "lacp" or not self.config.marker_responder \
                or not m.port.link_up:
            return  # a response (we never ask), or no responder here: counted in markers_rx
        now = self._now() if self._now else 0
        t = m.marker_times
        if len(t) == t.maxlen and now - t[0] < NS_PER_S:
            m.port.counters.drop("marker-rate-limit", 1, frame)
            return
        t.append(now)
        m.stats["marker_responses_tx"] += 1
        m.port.transmit(encode_marker(_member_mac(m.port, self.system), pdu.answer()))

    # -- frames out -----------------------------------------------------------------------
    def member_for(self, frame: bytes) -> Port | None:
        """The member `frame` leaves by, or None if none distributes."""
        dist = self._dist
        if not dist:
            return None
        mode = self.config.mode
        if mode == "active-backup" or self._fallback:
            return self._active
        if mode == "balance-slb":
            b = zlib.crc32(frame[6:12] + _vlan_of(frame)) & (SLB_BUCKETS - 1)
            p = self._slb[b]
            if p is None or p not in dist:  # a new (or orphaned) bucket: by its hash, as
                p = self._slb[b] = dist[b % len(dist)]  # OVS picks one at random
            self._slb_load[b] += len(frame)
            return p
        if len(dist) == 1:
            return dist[0]
        return dist[self._hash(frame) % len(dist)]

    # -- LACP -----------------------------------------------------------------------------
    def actor_info(self, m: _Member) -> LacpInfo:
        """What we say about member `m` in our LACPDUs."""
        return LacpInfo(self.config.system_priority, self.system, self.config.key, 255,
                        m.number, self.actor_state(m))

    def actor_state(self, m: _Member) -> int:
        """Our state octet for member `m`."""
        c = self.config
        s = AGGREGATION
        if c.lacp == "active":
            s |= ACTIVITY
        if c.rate == "fast" or m.rx_state == "expired":
            s |= TIMEOUT
        if m.selected:
            s |= SYNC
        if m.collecting:
            s |= COLLECTING | DISTRIBUTING
        if m.rx_state == "defaulted":
            s |= DEFAULTED
        elif m.rx_state == "expired":
            s |= EXPIRED
        return s

    def _timeout_ns(self, m: _Member) -> int:
        short = self.config.rate == "fast" or m.rx_state == "expired"
        return int((FAST_PERIOD_S if short else SLOW_PERIOD_S) * TIMEOUT_PERIODS * NS_PER_S)

    def _period_ns(self, m: _Member) -> int | None:
        """The periodic transmission interval of `m`, None = no periodic PDUs (both passive,
        or the link is down)."""
        if not m.port.link_up:
            return None
        p = m.partner
        if self.config.lacp == "passive" and (p is None or not p.state & ACTIVITY):
            return None
        if p is None:  # nobody heard yet: the rate we would ask for ourselves
            fast = self.config.rate == "fast"
        else:
            fast = bool(p.state & TIMEOUT)
        return int((FAST_PERIOD_S if fast else SLOW_PERIOD_S) * NS_PER_S)

    def receive_pdu(self, member: Port, pdu: Lacpdu, now: int) -> None:
        """The receive machine's CURRENT state: record the partner, restart its timer, and
        answer at once if the partner's view of us is stale or our state changed."""
        m = self._by_port[member]
        m.stats["pdus_rx"] += 1
        if not m.port.link_up:
            return
        before = self.actor_state(m)
        old_partner = m.partner
        m.last_pdu = pdu
        m.partner = pdu.actor
        m.rx_state = "current"
        m.partner_matched = pdu.partner.same_link_end(self.actor_info(m))
        m.current_until = now + self._timeout_ns(m)
        rate_changed = old_partner is None or \
            (old_partner.state ^ pdu.actor.state) & (TIMEOUT | ACTIVITY)
        self._update(now)
        stale = not m.partner_matched or pdu.partner.state != self.actor_state(m)
        # 802.1AX periodic machine: a partner that now asks for the short timeout moves
        # SLOW_PERIODIC to PERIODIC_TX - a PDU at once, then every second
        faster = pdu.actor.state & TIMEOUT and (old_partner is None
                                                or not old_partner.state & TIMEOUT)
        if stale or self.actor_state(m) != before or faster:
            self._send(m, now)
        elif rate_changed:
            period = self._period_ns(m)
            m.periodic_due = None if period is None else now + period
        self._kick()

    def tick(self, now: int) -> None:
        """Run every timer due at `now`: partner timeouts, periodic LACPDUs, balance-slb
        rebalancing."""
        changed = []
        for m in self.members:
            if m.current_until is not None and now >= m.current_until:
                if m.rx_state == "current":  # EXPIRED: partner out of sync; ask for fast
                    m.rx_state = "expired"
                    if m.partner is not None:
                        m.partner = _with_state(m.partner, (m.partner.state & ~SYNC) | TIMEOUT)
                    m.current_until = now + self._timeout_ns(m)
                else:  # DEFAULTED: the partner is forgotten
                    m.rx_state = "defaulted"
                    m.partner = None
                    m.partner_matched = False
                    m.current_until = None
                changed.append(m)
        if changed:
            self._update(now)
            for m in changed:
                if m.port.link_up:
                    self._send(m, now)
        if self.config.mode == "lacp":
            for m in self.members:
                if m.periodic_due is not None and now >= m.periodic_due:
                    self._send(m, now)
        if self._rebalance_due is not None and now >= self._rebalance_due:
            self.rebalance()
            self._rebalance_due = now + self.config.rebalance_interval_ms * 1_000_000

    def next_due_ns(self) -> int | None:
        """When `tick` next has something to do (None: nothing until a frame or link
        change)."""
        dues = [d for m in self.members for d in (m.current_until, m.periodic_due)
                if d is not None]
        if self._rebalance_due is not None:
            dues.append(self._rebalance_due)
        return min(dues, default=None)

    def start(self, now: int) -> None:
        """Begin at `now`: a first LACPDU on every member that may send, the rebalancing
        timer of balance-slb."""
        if self.config.mode == "lacp":
            for m in self.members:
                if m.port.link_up and self._period_ns(m) is not None:
                    self._send(m, now)
        if self.config.mode == "balance-slb" and self.config.rebalance_interval_ms:
            self._rebalance_due = now + self.config.rebalance_interval_ms * 1_000_000

    def _send(self, m: _Member, now: int) -> None:
        period = self._period_ns(m)
        if period is None and m.partner is None:
            m.periodic_due = None
            return  # passive and nobody active heard: stay silent
        t = m.tx_times
        if len(t) == t.maxlen and now - t[0] < NS_PER_S:
            m.periodic_due = t[0] + NS_PER_S  # rate limit: the next slot
            return
        t.append(now)
        partner = m.partner if m.partner is not None else LacpInfo()
        frame = encode_lacpdu(_member_mac(m.port, self.system), Lacpdu(self.actor_info(m),
                                                                        partner))
        m.stats["pdus_tx"] += 1
        m.port.transmit(frame)
        m.periodic_due = None if period is None else now + period

    # -- selection and state --------------------------------------------------------------
    def _member_link(self, port: Port) -> None:
        m = self._by_port[port]
        now = self._now() if self._now else 0
        if not port.link_up:  # PORT_DISABLED: the partner goes out of sync
            m.rx_state = "defaulted"
            m.partner = None
            m.partner_matched = False
            m.current_until = m.periodic_due = None
        self._update(now)
        if port.link_up and self.config.mode == "lacp":
            self._send(m, now)
        self._kick()

    def _update(self, now: int | None) -> None:
        """Recompute selection, collecting/distributing, the active member; bring the
        LagPort up or down with them."""
        mode = self.config.mode
        up = [m for m in self.members if m.port.link_up]
        if mode == "lacp":
            eligible = [m for m in up if m.rx_state == "current" and m.partner is not None
                        and m.partner.state & AGGREGATION]
            group = None
            if eligible:
                p = eligible[0].partner
                assert p is not None
                group = (p.system_priority, p.system, p.key)
            for m in self.members:
                p = m.partner
                m.selected = bool(group and m in eligible and p is not None
                                  and (p.system_priority, p.system, p.key) == group)
                m.collecting = bool(m.selected and m.partner_matched and p is not None
                                    and p.state & SYNC)
            dist = tuple(m.port for m in self.members if m.collecting)
            # OVS lacp-fallback-ab (lib/lacp.c `lacp_update_attached`, bond.c
            # `bond_is_falling_back_to_ab`): while no member has heard a partner (every one
            # DEFAULTED: LACP "configured", never "negotiated"), the bond runs active-backup
            # instead of staying down; the first LACPDU heard brings LACP back
            self._fallback = self.config.lacp_fallback_ab and \
                all(m.rx_state == "defaulted" for m in self.members)
            if self._fallback:
                self._choose_active(up)
                dist = (self._active,) if self._active is not None else ()
            else:
                self._active = None
        else:
            for m in self.members:
                m.selected = m.collecting = m.port.link_up
            dist = tuple(m.port for m in up)
            self._choose_active(up)
            if mode == "active-backup":
                dist = (self._active,) if self._active is not None else ()
        self._dist = dist
        if bool(dist) != self.port.link_up:
            self.port.set_link(bool(dist))
        if self._pending_learning:
            self.send_learning_packets()

    def _choose_active(self, up: list[_Member]) -> None:
        """Keep the active member while it is up (no failback), else take the first member
        that is up; a change of active member sends learning packets."""
        if self._active is not None and self._active.link_up:
            return
        old = self._active
        self._active = up[0].port if up else None
        if old is not None and up:
            self.failovers += 1
        if self._active is not None:
            self._pending_learning = True

    def learning_packets(self) -> list[tuple[Port, bytes]]:
        """What Open vSwitch sends when a bond's active member changes (bond.c
        `bond_should_send_learning_packets` / `bond_compose_learning_packet`, in
        active-backup, balance-slb, and an LACP bond fallen back to active-backup): for every
        MAC learned on a port other than the bond - on the bond's bridge and on the bridges
        over its VLAN PIFs (`bond0.5`) - a RARP (`compose_rarp`: ethertype 0x8035, opcode 3,
        from that MAC to broadcast) tagged with the MAC's VLAN when it is not 0, paired with
        the member the MAC's own frames leave by, so the physical switch relearns the MAC
        there. Not sent for a negotiated LACP bond (the partner knows the links are one)."""
        if self._active is None or (self.config.mode in ("lacp", "static")
                                    and not self._fallback):
            return []
        out = []
        sources = [(self.port.switch, 0)]
        sources += [(vp.switch, vid) for vid, vp in sorted(self.port.vlan_pifs.items())]
        seen = set()
        for sw, tag in sources:
            if sw is None or not hasattr(sw, "mac_entries"):
                continue
            for e in sw.mac_entries():
                if e.port is self.port or e.port in self.port.vlan_pifs.values():
                    continue
                vid = tag or e.vlan
                mac = bytes.fromhex(e.mac.replace(":", ""))
                if (vid, mac) in seen:
                    continue
                seen.add((vid, mac))
                frame = rarp_learning_packet(mac, vid)
                member = self._member_quiet(frame)
                if member is not None:
                    out.append((member, frame))
        return out

    def send_learning_packets(self) -> int:
        """Send `learning_packets()` out their members; how many were sent."""
        self._pending_learning = False
        n = 0
        for member, frame in self.learning_packets():
            if member.transmit(frame):
                n += 1
        self.learning_packets_sent += n
        return n

    def _member_quiet(self, frame: bytes) -> Port | None:
        """`member_for` without counting the frame in balance-slb's bucket load."""
        if self.config.mode == "balance-slb" and self._dist:
            b = zlib.crc32(frame[6:12] + _vlan_of(frame)) & (SLB_BUCKETS - 1)
            p = self._slb[b]
            if p is None or p not in self._dist:
                p = self._slb[b] = self._dist[b % len(self._dist)]
            return p
        return self._active

    def rebalance(self) -> int:
        """balance-slb: move hash buckets from the busiest member to the least busy while a
        move narrows the gap between them (OVS `bond_rebalance`), then halve every bucket's
        load so the next interval weighs recent traffic most. Returns how many moved."""
        dist = self._dist
        moved = 0
        if self.config.mode == "balance-slb" and len(dist) > 1:
            for _ in range(SLB_BUCKETS):
                load = {p: 0 for p in dist}
                for b, p in enumerate(self._slb):
                    if p in load:
                        load[p] += self._slb_load[b]
                hi = max(dist, key=lambda p: load[p])
                lo = min(dist, key=lambda p: load[p])
                gap = load[hi] - load[lo]
                cands = [b for b, p in enumerate(self._slb)
                         if p is hi and 0 < self._slb_load[b] < gap]
                if not cands:
                    break
                best = min(cands, key=lambda b: abs(gap - 2 * self._slb_load[b]))
                self._slb[best] = lo
                moved += 1
        self._slb_load = [x // 2 for x in self._slb_load]
        self.rebalances += moved
        return moved

    def choice_text(self) -> str:
        """How this LAG picks a member, in words: `active-backup: the active member`,
        `hash srcDestIp over 2 members`, `balance-slb: source MAC bucket`."""
        mode = self.config.mode
        if mode == "active-backup":
            return "active-backup: the active member"
        if self._fallback:
            return "lacp-fallback-ab (no LACP partner): the active member"
        if mode == "balance-slb":
            return "balance-slb: its source MAC's bucket"
        return f"{self.config.hashing} hash over {len(self._dist)} member(s)"

    def reconfigure(self, config: LagConfig, now: int) -> None:
        """Apply new settings live (`xe bond-set-mode`, a vDS LAG edit, `lacp rate fast` on a
        channel): a changed rate or activity is told to the partner at once (802.1AX: a change
        of the actor's state sets NTT); a changed mode starts the members afresh."""
        if not isinstance(config, LagConfig):
            raise ConfigError(f"{self.name}: config must be a LagConfig, not {config!r}")
        old, self.config = self.config, config
        self._hash = _HASHERS[config.hashing]
        if config.mode != old.mode:
            for m in self.members:
                m.rx_state, m.partner, m.partner_matched = "defaulted", None, False
                m.current_until = m.periodic_due = None
            self._active = None
            self._slb = [None] * SLB_BUCKETS
            self._rebalance_due = None
            self._update(now)
            self.start(now)
        else:
            self._update(now)
            if config.mode == "lacp" and (config.rate, config.lacp) != (old.rate, old.lacp):
                for m in self.members:
                    if m.port.link_up:
                        m.tx_times.clear()
                        self._send(m, now)
            if config.mode == "balance-slb" and \
                    config.rebalance_interval_ms != old.rebalance_interval_ms:
                self._rebalance_due = (now + config.rebalance_interval_ms * 1_000_000
                                       if config.rebalance_interval_ms else None)
        self._kick()

    def slb_assignment(self) -> dict[int, str]:
        """balance-slb: bucket → member name, for the buckets in use."""
        return {b: p.name for b, p in enumerate(self._slb) if p is not None}

    # -- running --------------------------------------------------------------------------
    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self, clock: Clock) -> None:
        """The LAG's timers on `clock`, each at its deadline, until cancelled."""
        self._now = clock.now_ns
        self._wake = asyncio.Event()
        self.start(clock.now_ns())
        while True:
            due = self.next_due_ns()
            self._wake.clear()
            waker = asyncio.ensure_future(self._wake.wait())
            sleeper = None
            try:
                if due is None:
                    await waker
                else:
                    sleeper = asyncio.ensure_future(
                        clock.sleep(max(due - clock.now_ns(), 0) / NS_PER_S))
                    await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waker.cancel()
                if sleeper is not None:
                    sleeper.cancel()
            self.tick(clock.now_ns())

    # -- showing --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What `ovs-appctl lacp/show` / `bond/show` tell: per member its receive state,
        our and the partner's information, counters; JSON-able."""
        rows = []
        for m in self.members:
            p = m.partner
            rows.append({
                "member": m.port.name, "link": "up" if m.port.link_up else "down",
                "status": m.rx_state if self.config.mode == "lacp" else
                ("enabled" if m.port in self._dist else "disabled"),
                "selected": m.selected, "distributing": m.port in self._dist,
                "actor_state": state_text(self.actor_state(m)),
                "partner": p.describe() if p is not None else None, **m.stats})
        return {"name": self.name, "mode": self.config.mode, "lacp": self.config.lacp,
                "rate": self.config.rate, "hashing": self.config.hashing,
                "up": self.port.link_up, "members": rows,
                "active": self._active.name if self._active is not None else None,
                "rebalances": self.rebalances, "failovers": self.failovers,
                "fallback_ab": self._fallback, "learning_packets": self.learning_packets_sent}


def _with_state(info: LacpInfo, state: int) -> LacpInfo:
    return LacpInfo(info.system_priority, info.system, info.key, info.port_priority, info.port,
                    state)


def _vlan_of(frame: bytes) -> bytes:
    if len(frame) >= 18 and frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        return bytes((frame[14] & 0x0F, frame[15]))
    return b""


def _member_mac(port: Port, system: bytes) -> bytes:
    """The source MAC of a member's LACPDUs: the system id with the member's index folded in
    (802.1AX: the individual MAC of the port)."""
    mac = getattr(port, "mac_address", None)
    if isinstance(mac, bytes) and len(mac) == 6:
        return mac
    h = zlib.crc32(port.name.encode()) & 0xFFFFFF
    return bytes((system[0] | 0x02, system[1], system[2])) + h.to_bytes(3, "big")


def rarp_learning_packet(mac: bytes, vid: int = 0) -> bytes:
    """Open vSwitch's learning packet (lib/packets.c `compose_rarp`): a RARP request
    (ethertype 0x8035, opcode 3 "request reverse") from `mac` to broadcast with `mac` as
    sender and target hardware address and 0.0.0.0 for both protocol addresses, 802.1Q-tagged
    with `vid` when it is not 0; 60 bytes untagged."""
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 3, mac, bytes(4), mac, bytes(4))
    frame = b"\xff" * 6 + mac + b"\x80\x35" + body
    frame += bytes(60 - len(frame))
    if vid:
        frame = frame[:12] + struct.pack("!HH", 0x8100, vid) + frame[12:]
    return frame
