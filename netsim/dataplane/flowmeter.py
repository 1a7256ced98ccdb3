"""IPFIX flow metering on a switch (vSphere `VMwareIpfixConfig`, the vDS "NetFlow" setting).

The meter watches every port of a switch through the switch's mirror hooks: a frame entering
the switch is metered once (its ingress copy), and the output ports it leaves by (its egress
copies, in the same synchronous pipeline run) give the flow's egressInterface (0 when it was
flooded). Flows are keyed as IPFIX flow keys are: source and destination IPv4 or IPv6
address, IP protocol, transport ports (TCP, UDP, SCTP; 0 otherwise and for later fragments)
or ICMP/ICMPv6 type and code, VLAN and ingress interface. Counts are IP octets (the IPv4 total
length; 40 + the IPv6 payload length) and packets. For IPv6 the protocol is the fixed header's
next header: extension headers are not walked (their flows have ports 0), as the traffic
filter does. Frames that are neither IPv4 nor IPv6 (ARP, ...) or are cut inside the IP header
are counted as `unmetered`, never silently ignored.

Timeouts run on the switch's clock (virtual in a lab): a flow idle for `idle_flow_timeout`
seconds ends (flowEndReason 1); a flow older than `active_flow_timeout` is exported and starts
anew (flowEndReason 2), so a long flow is reported periodically. `sampling_rate` N meters 1
packet in N, deterministically (vSphere: "the ratio of total number of packets to the number
of packets analyzed"; 0 = every packet); counts are then of the sampled packets.
`internal_flows_only` exports only flows between two VM ports of the switch (vSphere: "only
internal flows will be collected"). The table is bounded (`max_flows`): a packet of a new flow
that finds it full is counted as `table_full`.
"""
from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Any

from netsim.clock import NS_PER_S, Clock
from netsim.dataplane.port import Port
from netsim.dataplane.switch import ROLE_VM
from netsim.errors import ConfigError
from netsim.wire.ipfix import END_ACTIVE, END_FORCED, END_IDLE, FlowRecord

MAX_FLOWS = 65536


@dataclass(frozen=True)
class IpfixConfig:
    """`VMwareIpfixConfig`: where flows go and when. Timeouts in seconds (vSphere defaults
    and ranges: active 60 (60..3600), idle 15 (10..600)); sampling 0..16384 (0 = all)."""

    collector_ip: str
    collector_port: int = 4739
    observation_domain_id: int = 0
    active_flow_timeout: int = 60
    idle_flow_timeout: int = 15
    sampling_rate: int = 0
    internal_flows_only: bool = False

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.collector_ip)
        except ValueError:
            raise ConfigError(f"ipfix: collector_ip {self.collector_ip!r} is not an IP "
                              "address") from None
        for name, lo, hi in (("collector_port", 1, 65535),
                             ("observation_domain_id", 0, 0xFFFFFFFF),
                             ("active_flow_timeout", 60, 3600), ("idle_flow_timeout", 10, 600),
                             ("sampling_rate", 0, 16384)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"ipfix: {name} {v!r} outside {lo}..{hi}")
        if not isinstance(self.internal_flows_only, bool):
            raise ConfigError(f"ipfix: internal_flows_only {self.internal_flows_only!r} is not "
                              "true or false")

    def to_dict(self) -> dict[str, Any]:
        """As written in a topology or a vDS config document."""
        return dict(vars(self))


@dataclass
class MeterCounters:
    """What the meter did with the frames it saw."""

    metered: int = 0  # packets counted into a flow
    unmetered: int = 0  # neither IPv4 nor IPv6 (ARP, ...) or a cut IP header
    sampled_out: int = 0
    table_full: int = 0
    flows_exported: int = 0
    flows_filtered: int = 0  # ended, but not internal while internal_flows_only

    def as_dict(self) -> dict[str, int]:
        """JSON-able snapshot."""
        return dict(vars(self))


class _Flow:
    __slots__ = ("egress", "internal", "key", "last_ns", "octets", "packets", "start_ns")

    def __init__(self, key: tuple, now: int) -> None:
        self.key = key
        self.packets = 0
        self.octets = 0
        self.start_ns = now
        self.last_ns = now
        self.egress = 0
        self.internal = False


class _Rx:
    __slots__ = ("meter", "port")

    def __init__(self, meter: FlowMeter, port: Port) -> None:
        self.meter = meter
        self.port = port

    def transmit(self, frame: bytes) -> bool:
        self.meter.ingress(self.port, frame)
        return True


class _Tx(_Rx):
    __slots__ = ()

    def transmit(self, frame: bytes) -> bool:
        self.meter.egress(self.port)
        return True


class FlowMeter:
    """The flow cache of one switch; `expire()` returns the records due for export."""

    def __init__(self, config: IpfixConfig, clock: Clock, *, max_flows: int = MAX_FLOWS
                 ) -> None:
        self.config = config
        self.clock = clock
        self.max_flows = max_flows
        self.flows: dict[tuple, _Flow] = {}
        self.counters = MeterCounters()
        #: port → ingressInterface/egressInterface number (the port's switch ID + 1)
        self.ifindex: dict[Port, int] = {}
        self._pending: _Flow | None = None
        self._ntx = 0
        self._in_vm = False
        self._phase = 0
        self._idle_ns = config.idle_flow_timeout * NS_PER_S
        self._active_ns = config.active_flow_timeout * NS_PER_S
        self._waiter: asyncio.Future[None] | None = None
        self._now = clock.now_ns

    def attach(self, switch: Any, ports: list[Port] | None = None) -> None:
        """Meter every port of `switch` (or `ports` of it): frames in, and where they go."""
        for p in ports if ports is not None else list(switch.ports.values()):
            self.ifindex[p] = p.sw_id + 1
            switch.mirror([p], _Rx(self, p), ingress=True, egress=False)
            switch.mirror([p], _Tx(self, p), ingress=False, egress=True)

    def interfaces(self) -> dict[str, int]:
        """Port name → the interface number its flows are exported with."""
        return {p.name: i for p, i in sorted(self.ifindex.items(), key=lambda x: x[1])}

    # -- per frame ---------------------------------------------------------------------------
    def ingress(self, port: Port, frame: bytes) -> None:
        """A frame entered the switch by `port` (after the switch's ingress checks)."""
        self._pending = None
        c = self.counters
        off = 12
        vid = port.sw_pvid  # type: ignore[attr-defined]
        b12 = frame[12]
        if ((b12 == 0x81 and frame[13] == 0) or (b12 == 0x88 and frame[13] == 0xA8)) and len(
                frame) >= 18:
            v = ((frame[14] << 8) | frame[15]) & 0x0FFF  # only the outer tag classifies
            if v:
                vid = v
            off = 16
        ip = off + 2
        if frame[off] != 8 or frame[off + 1] or len(frame) < ip + 20 or frame[ip] >> 4 != 4:
            if frame[off] == 0x86 and frame[off + 1] == 0xDD and len(frame) >= ip + 40 and \
                    frame[ip] >> 4 == 6:
                self._ingress6(port, frame, ip, vid)
                return
            c.unmetered += 1
            return
        n = self.config.sampling_rate
        if n > 1:
            k = self._phase
            self._phase = k + 1 if k + 1 < n else 0
            if k:
                c.sampled_out += 1
                return
        ihl = (frame[ip] & 0x0F) * 4
        total = (frame[ip + 2] << 8) | frame[ip + 3]
        proto = frame[ip + 9]
        sport = dport = 0
        l4 = ip + ihl
        if proto in (6, 17, 132) and not (
                ((frame[ip + 6] & 0x1F) << 8) | frame[ip + 7]) and len(frame) >= l4 + 4:
            sport = (frame[l4] << 8) | frame[l4 + 1]
            dport = (frame[l4 + 2] << 8) | frame[l4 + 3]
        elif proto == 1 and not (((frame[ip + 6] & 0x1F) << 8) | frame[ip + 7]) and \
                len(frame) >= l4 + 2:
            dport = (frame[l4] << 8) | frame[l4 + 1]  # ICMP type, code (exported as IE 32)
        key = (frame[ip + 12:ip + 20], proto, sport, dport, vid, self.ifindex.get(port, 0))
        # the IPv4 path counts inline (the per-frame hot path; `_count` says the same)
        now = self._now()
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= self.max_flows:
                c.table_full += 1
                return
            flow = self.flows[key] = _Flow(key, now)
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(None)
        flow.packets += 1
        flow.octets += min(total, len(frame) - ip) if total >= 20 else len(frame) - ip
        flow.last_ns = now
        flow.egress = 0
        flow.internal = False
        c.metered += 1
        self._pending = flow
        self._ntx = 0
        self._in_vm = port.sw_role == ROLE_VM  # type: ignore[attr-defined]

    def _ingress6(self, port: Port, frame: bytes, ip: int, vid: int) -> None:
        """An IPv6 frame (fixed header at `ip`) entered by `port`."""
        n = self.config.sampling_rate
        if n > 1:
            k = self._phase
            self._phase = k + 1 if k + 1 < n else 0
            if k:
                self.counters.sampled_out += 1
                return
        proto = frame[ip + 6]
        sport = dport = 0
        l4 = ip + 40
        if proto in (6, 17, 132) and len(frame) >= l4 + 4:
            sport = (frame[l4] << 8) | frame[l4 + 1]
            dport = (frame[l4 + 2] << 8) | frame[l4 + 3]
        elif proto == 58 and len(frame) >= l4 + 2:
            dport = (frame[l4] << 8) | frame[l4 + 1]  # ICMPv6 type, code (IE 139)
        size = 40 + ((frame[ip + 4] << 8) | frame[ip + 5])
        self._count(port, (frame[ip + 8:ip + 40], proto, sport, dport, vid,
                           self.ifindex.get(port, 0)), min(size, len(frame) - ip))

    def _count(self, port: Port, key: tuple, octets: int) -> None:
        c = self.counters
        now = self._now()
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= self.max_flows:
                c.table_full += 1
                return
            flow = self.flows[key] = _Flow(key, now)
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(None)
        flow.packets += 1
        flow.octets += octets
        flow.last_ns = now
        flow.egress = 0
        flow.internal = False
        c.metered += 1
        self._pending = flow
        self._ntx = 0
        self._in_vm = port.sw_role == ROLE_VM  # type: ignore[attr-defined]

    def egress(self, port: Port) -> None:
        """The frame being switched left by `port`."""
        flow = self._pending
        if flow is None:
            return
        self._ntx += 1
        if self._ntx == 1:
            flow.egress = self.ifindex.get(port, 0)
            flow.internal = self._in_vm and port.sw_role == ROLE_VM  # type: ignore[attr-defined]
        else:  # flooded: no single egress interface
            flow.egress = 0
            flow.internal = False

    # -- timeouts ----------------------------------------------------------------------------
    def next_due_ns(self) -> int | None:
        """When the next flow times out (None: no flows)."""
        if not self.flows:
            return None
        return min(min(f.last_ns + self._idle_ns, f.start_ns + self._active_ns)
                   for f in self.flows.values())

    async def wait_for_flow(self) -> None:
        """Return once the cache holds a flow (at once if it does)."""
        while not self.flows:
            w = self._waiter
            if w is None or w.done():
                w = self._waiter = asyncio.get_running_loop().create_future()
            await w

    def expire(self, now: int | None = None) -> list[FlowRecord]:
        """End the flows idle or active too long at `now` (default: the clock's) and return
        their records."""
        if now is None:
            now = self.clock.now_ns()
        out = []
        for key, f in list(self.flows.items()):
            if now - f.last_ns >= self._idle_ns:
                reason = END_IDLE
            elif now - f.start_ns >= self._active_ns:
                reason = END_ACTIVE
            else:
                continue
            del self.flows[key]
            self._ended(f, reason, out)
        return out

    def flush(self) -> list[FlowRecord]:
        """End every flow now (the exporter is stopping): flowEndReason 4, forced end."""
        out: list[FlowRecord] = []
        flows, self.flows = self.flows, {}
        for f in flows.values():
            self._ended(f, END_FORCED, out)
        self._pending = None
        return out

    def _ended(self, f: _Flow, reason: int, out: list[FlowRecord]) -> None:
        if f is self._pending:
            self._pending = None
        if self.config.internal_flows_only and not f.internal:
            self.counters.flows_filtered += 1
            return
        addrs, proto, sport, dport, vid, ingress = f.key
        half = len(addrs) // 2  # 4 bytes each for IPv4, 16 for IPv6
        icmp = 0
        if proto == (1 if half == 4 else 58):  # the key keeps type/code where ports go
            icmp, dport = dport, 0
        out.append(FlowRecord(str(ipaddress.ip_address(addrs[:half])),
                              str(ipaddress.ip_address(addrs[half:])),
                              proto, sport, dport, vid, ingress, f.egress, f.octets, f.packets,
                              f.start_ns // 1_000_000, f.last_ns // 1_000_000, reason, icmp))
        self.counters.flows_exported += 1
