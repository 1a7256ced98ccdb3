"""Port mirroring sessions (vSphere `VMwareVspanSession`): what is copied, how, and where to.

A session takes copies of the frames entering and/or leaving its source ports (the switch's
mirror hook hands them over as they cross the port), keeps 1 in `sampling_rate` of them
(deterministically: the 1st, the N+1st, ...; vSphere "one of every n packets is mirrored"),
optionally removes the original VLAN tag (`stripOriginalVlan`), cuts each to
`mirrored_packet_length` bytes (vSphere: at least 60; unset = whole frames) and delivers it:

- `dvPortMirror` / `remoteMirrorDest`: to a destination port, as is (`to_port`);
- `remoteMirrorSource` (RSPAN source): tagged with the RSPAN VLAN (`encapsulationVlanId`) and
  sent out of an uplink into the physical network (`RspanSource`). Switches carry an RSPAN
  VLAN without learning (`rspan_vlan`, Cisco `remote-span`), and the destination session on
  another host takes that VLAN's frames off its uplinks and gives them, untagged of the RSPAN
  tag, to its destination ports (`rspan_destination`);
- `encapsulatedRemoteMirrorSource` (ERSPAN source): inside IPv4/GRE, plain or ERSPAN type II/III
  (`netsim.wire.erspan`), out of an uplink toward the collector's IP (`ErspanSource`).

A destination port without normal I/O (`normalTrafficAllowed` false) receives only mirrored
copies; the switch drops what it would forward to it and what it sends, as
`mirror-destination` ("mirrored traffic will be allowed out on destination ports, but no
traffic will be allowed in", vSphere's port mirroring guide). Every copy not delivered is
counted: `sampled_out`, and `no_uplink` when every uplink is down.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from netsim.clock import Clock
from netsim.dataplane.port import Port
from netsim.errors import ConfigError
from netsim.wire.erspan import ErspanTunnel

SESSION_TYPES = ("dvPortMirror", "remoteMirrorSource", "remoteMirrorDest",
                 "encapsulatedRemoteMirrorSource")
MIN_MIRRORED_LENGTH = 60  # vSphere: mirroredPacketLength "cannot be less than 60"
MAX_SAMPLING_RATE = 65535  # vSphere: samplingRate 1..65535

Deliver = Callable[[bytes, bool, bool], None]  # (frame, truncated, egress)


def vmk_mac(host: str) -> bytes:
    """The MAC of a host's VMkernel port (where ERSPAN tunnels start): VMware's 00:50:56 with
    0x60-0x7f next, from the host's name (stable across runs)."""
    h = zlib.crc32(host.encode())
    return bytes([0x00, 0x50, 0x56, 0x60 | (h >> 16) & 0x1F, (h >> 8) & 0xFF, h & 0xFF])


def check_options(sampling_rate: int, mirrored_packet_length: int | None, where: str) -> None:
    """ConfigError naming `where` unless the session's sampling rate and length are valid."""
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, int) or not (
            1 <= sampling_rate <= MAX_SAMPLING_RATE):
        raise ConfigError(f"{where}: sampling_rate {sampling_rate!r} outside "
                          f"1..{MAX_SAMPLING_RATE}")
    if mirrored_packet_length is not None and (
            isinstance(mirrored_packet_length, bool) or not isinstance(mirrored_packet_length, int)
            or not MIN_MIRRORED_LENGTH <= mirrored_packet_length <= 65535):
        raise ConfigError(f"{where}: mirrored_packet_length {mirrored_packet_length!r} outside "
                          f"{MIN_MIRRORED_LENGTH}..65535")


@dataclass
class MirrorCounters:
    """What a session did with the copies it was offered."""

    offered: int = 0
    sampled_out: int = 0  # skipped by sampling (1 in N kept)
    mirrored: int = 0
    truncated: int = 0  # mirrored, cut to mirrored_packet_length
    no_uplink: int = 0  # RSPAN/ERSPAN: every uplink was down

    def as_dict(self) -> dict[str, int]:
        """JSON-able snapshot."""
        return dict(vars(self))


class _Side:
    """One source port and direction's entry into a session: what the switch's mirror hook
    calls. `tag`: the 802.1Q tag of the VLAN the port's untagged frames belong to."""

    __slots__ = ("egress", "session", "tag")

    def __init__(self, session: MirrorSession, egress: bool, tag: bytes = b"") -> None:
        self.session = session
        self.egress = egress
        self.tag = tag

    def transmit(self, frame: bytes) -> bool:
        self.session.offer(frame, self.egress, self.tag)
        return True


class MirrorSession:
    """One mirroring session's data path: sampling, tag stripping, truncation, delivery."""

    def __init__(self, name: str, deliver: Deliver, *, sampling_rate: int = 1,
                 mirrored_packet_length: int | None = None,
                 strip_original_vlan: bool = False, tag_original_vlan: bool = False,
                 counters: MirrorCounters | None = None) -> None:
        check_options(sampling_rate, mirrored_packet_length, f"mirror session {name}")
        self.name = name
        self.deliver = deliver
        self.sampling_rate = sampling_rate
        self.mirrored_packet_length = mirrored_packet_length
        self.strip_original_vlan = strip_original_vlan
        #: copies of untagged frames get the tag of the VLAN they were switched in (remote
        #: sessions: vSphere keeps "the original VLAN tag" unless stripOriginalVlan)
        self.tag_original_vlan = tag_original_vlan and not strip_original_vlan
        self.counters = counters if counters is not None else MirrorCounters()
        #: `VMwareVspanSession.enabled`: a disabled session takes no copies (none counted)
        self.enabled = True
        self._phase = 0

    def offer(self, frame: bytes, egress: bool, tag: bytes = b"") -> None:
        """A copy of a frame crossing a source port (`egress`: leaving the switch by it;
        `tag`: the tag of the port's VLAN, for an untagged frame)."""
        if not self.enabled:
            return
        c = self.counters
        c.offered += 1
        n = self.sampling_rate
        if n > 1:
            k = self._phase
            self._phase = k + 1 if k + 1 < n else 0
            if k:
                c.sampled_out += 1
                return
        if self.strip_original_vlan and len(frame) >= 18 and frame[12:14] in (
                b"\x81\x00", b"\x88\xa8"):
            frame = frame[:12] + frame[16:]
        elif tag and self.tag_original_vlan and frame[12:14] not in (b"\x81\x00", b"\x88\xa8"):
            frame = frame[:12] + tag + frame[12:]
        cut = self.mirrored_packet_length
        truncated = cut is not None and len(frame) > cut
        if truncated:
            frame = frame[:cut]
            c.truncated += 1
        c.mirrored += 1
        self.deliver(frame, truncated, egress)

    def attach(self, switch: Any, sources: Sequence[Port | str], *, ingress: bool = True,
               egress: bool = True) -> None:
        """Take copies from `sources` on `switch` (frames entering and/or leaving them)."""
        for src in sources:
            p = switch.ports.get(src if isinstance(src, str) else src.name)
            if p is None:
                raise ConfigError(f"{switch.name}: no port {src!r} to mirror")
            vid = getattr(p, "sw_pvid", 0)
            tag = b"\x81\x00" + vid.to_bytes(2, "big") if 0 < vid < 4095 else b""
            if ingress:
                switch.mirror([p], _Side(self, False, tag), ingress=True, egress=False)
            if egress:
                switch.mirror([p], _Side(self, True, tag), ingress=False, egress=True)


class to_port:
    """Delivery to a local destination port (`dvPortMirror`, `remoteMirrorDest`)."""

    __slots__ = ("port",)

    def __init__(self, port: Port) -> None:
        self.port = port

    def __call__(self, frame: bytes, truncated: bool, egress: bool) -> None:
        self.port.transmit(frame)


def _first_up(uplinks: Sequence[Port]) -> Port | None:
    for p in uplinks:
        if p.link_up:
            return p
    return None


class RspanSource:
    """`remoteMirrorSource` delivery: each copy gets an outer tag for the RSPAN VLAN and
    leaves by the first of `uplinks` whose link is up (the session's uplink ports)."""

    def __init__(self, uplinks: Sequence[Port], vlan: int, counters: MirrorCounters) -> None:
        if not 1 <= vlan <= 4094:
            raise ConfigError(f"RSPAN VLAN {vlan} outside 1..4094")
        if not uplinks:
            raise ConfigError("an RSPAN source session needs an uplink")
        self.uplinks = tuple(uplinks)
        self.tag = b"\x81\x00" + vlan.to_bytes(2, "big")
        self.counters = counters

    def __call__(self, frame: bytes, truncated: bool, egress: bool) -> None:
        up = _first_up(self.uplinks)
        if up is None:
            self.counters.no_uplink += 1
            return
        up.transmit(frame[:12] + self.tag + frame[12:])


class ErspanSource:
    """`encapsulatedRemoteMirrorSource` delivery: each copy inside the session's tunnel
    headers (GRE sequence numbers per session; ERSPAN III timestamps from `clock`), out of the
    first of `uplinks` whose link is up."""

    def __init__(self, tunnel: ErspanTunnel, uplinks: Sequence[Port], clock: Clock,
                 counters: MirrorCounters) -> None:
        if not uplinks:
            raise ConfigError("an ERSPAN source session needs an uplink")
        self.tunnel = tunnel
        self.uplinks = tuple(uplinks)
        self.clock = clock
        self.counters = counters
        self.seq = 0
        self._tick_ns = 100 if tunnel.gra_ns else 100_000

    def __call__(self, frame: bytes, truncated: bool, egress: bool) -> None:
        up = _first_up(self.uplinks)
        if up is None:
            self.counters.no_uplink += 1
            return
        ts = self.clock.now_ns() // self._tick_ns
        up.transmit(self.tunnel.encapsulate(frame, seq=self.seq, truncated=truncated,
                                            timestamp=ts, egress=egress))
        self.seq = (self.seq + 1) & 0xFFFFFFFF


def rspan_vlan(bridge: Any, vid: int) -> None:
    """Carry `vid` as an RSPAN VLAN on `bridge` (a physical switch): flooded, never learned."""
    if not 1 <= vid <= 4094:
        raise ConfigError(f"{bridge.name}: RSPAN VLAN {vid} outside 1..4094")
    bridge.span_vlans[vid] = bridge.flood_unlearned


def rspan_destination(switch: Any, vid: int, session: MirrorSession) -> None:
    """A `remoteMirrorDest` session on a host switch: every frame of RSPAN VLAN `vid` that
    arrives on an uplink goes, without the RSPAN tag, through `session` to its destination."""
    if not 1 <= vid <= 4094:
        raise ConfigError(f"{switch.name}: RSPAN VLAN {vid} outside 1..4094")
    if vid in switch.span_vlans:
        raise ConfigError(f"{switch.name}: RSPAN VLAN {vid} already has a destination session")

    switch.span_vlans[vid] = RspanTake(session)


class RspanTake:
    """A host switch's handler of an RSPAN VLAN: every frame goes to the destination session
    (a class, not a closure, so that a copy of the fabric copies it: `hvsim trace`)."""

    __slots__ = ("session",)

    def __init__(self, session: MirrorSession) -> None:
        self.session = session

    def __call__(self, port: Port, inner: bytes, tagged: bytes | None, vid: int, pcp: int,
                 now: int) -> None:
        self.session.offer(inner, False)
