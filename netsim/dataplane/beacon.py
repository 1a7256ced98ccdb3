"""Beacon probing: NIC team failure detection beyond the link (vSphere "Network failure
detection: Beacon probing", `HostNicFailureCriteria.checkBeacon`).

What ESXi does, and what this module does the same way:
- Every uplink of the team that is up (active and standby; unused ones do not take part) sends
  one beacon per second per VLAN in use on the switch (the port groups' VLANs): a broadcast
  Ethernet frame from the uplink's own MAC, ethertype 0x8922 (ESX(i) 4.1 and later; ESX 3.5
  used 0x05ff and ESX 4.0 an 802.3/LLC frame - "VMware ESX Beacon Probing Explained",
  experts-exchange 8353; vswitchzero.com "Beacon Probing Deep Dive"). Tagged with the VLAN when
  the uplink carries it tagged, so a capture on the uplink shows one beacon per VLAN per second.
- The physical network floods the broadcast; the other uplinks of the same team receive it. An
  uplink that has heard no beacon from any team member (and has not been heard by one) for 3
  consecutive intervals is failed - 3 missed beacons, as ESXi.
- Deciding *which* uplink is bad needs at least 3 uplinks: the uplinks that still hear each
  other form the healthy group; uplinks outside it are failed and their ports fail over (with
  notify-switches RARPs, as for a link failure). With 2 uplinks (or when no group is larger
  than the others) the switch cannot tell which side is bad and goes into "shotgun" mode: each
  frame from a VM leaves by every team uplink that is up, and frames arriving on any of them are
  taken - what ESXi does (VMware KB 1005577: beacon probing with two NICs "shotguns" traffic).
  Duplicate deliveries are the price, as on ESXi.
- Link status still counts: a link-down uplink is failed at once, whatever the beacons say.
- Beacons are consumed by the receiving switch: never delivered to VMs, never learned.

The payload after the ethertype is ours (ESXi's is not documented; captures show the NIC's MAC
and name in it): kind (1 beacon, 2 health-check probe, 3 health-check ack), a reserved byte, a
32-bit sequence number, the sender's MAC and its name (length-prefixed UTF-8), zero-padded to a
60-byte frame (or the size asked for: the vDS health check pads its MTU probes).
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netsim.clock import Clock
from netsim.errors import ConfigError

if TYPE_CHECKING:
    from netsim.dataplane.port import Port
    from netsim.dataplane.switch import StandardSwitch

ETHERTYPE_BEACON = 0x8922
BROADCAST = b"\xff" * 6
KIND_BEACON = 1
KIND_PROBE = 2
KIND_ACK = 3
#: seconds between beacons (ESXi: one per second)
INTERVAL_S = 1.0
#: consecutive missed beacons after which an uplink is failed (ESXi: 3)
MISSED = 3
_HDR = struct.Struct("!BBI6sB")  # kind, reserved, seq, sender MAC, name length
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Beacon:
    """A decoded beacon or health-check frame (the inner, untagged form)."""

    dst: bytes
    src: bytes
    kind: int
    seq: int
    sender: bytes
    name: str


def uplink_mac(path: str) -> bytes:
    """A stable MAC for a physical NIC that has none of its own: VMware's OUI 00:50:56 and 3
    bytes from the NIC's path (`esx1/vmnic0`), the top bit clear (00:50:56:00-7f is the range
    vCenter hands out)."""
    h = zlib.crc32(path.encode())
    return bytes((0x00, 0x50, 0x56, (h >> 16) & 0x7F, (h >> 8) & 0xFF, h & 0xFF))


def build(src: bytes, name: str, seq: int, *, kind: int = KIND_BEACON,
          dst: bytes = BROADCAST, size: int = 60) -> bytes:
    """An untagged beacon frame (ethertype 0x8922) from `src`, padded with zeros to `size`
    bytes (at least 60)."""
    if len(src) != 6 or len(dst) != 6:
        raise ConfigError(f"beacon: MACs must be 6 bytes, got {src!r} / {dst!r}")
    raw = name.encode()[:64]
    frame = (dst + src + ETHERTYPE_BEACON.to_bytes(2, "big")
             + _HDR.pack(kind, 0, seq & 0xFFFFFFFF, src, len(raw)) + raw)
    return frame + bytes(max(60, size) - len(frame))


def parse(inner: bytes) -> Beacon | None:
    """Decode an untagged frame of ethertype 0x8922; None if it is not one of ours (too
    short, unknown kind, name cut)."""
    if len(inner) < 14 + _HDR.size or inner[12:14] != b"\x89\x22":
        return None
    kind, _, seq, sender, n = _HDR.unpack_from(inner, 14)
    end = 14 + _HDR.size + n
    if kind not in (KIND_BEACON, KIND_PROBE, KIND_ACK) or end > len(inner):
        return None
    try:
        name = inner[14 + _HDR.size:end].decode()
    except UnicodeDecodeError:
        return None
    return Beacon(inner[0:6], inner[6:12], kind, seq, sender, name)


def decide(members: Iterable[Any], heard: Callable[[Any, Any], bool]
           ) -> tuple[frozenset[Any], bool]:
    """(failed uplinks, shotgun) for the team `members` (uplinks that are up), where
    `heard(a, b)` says a beacon from `b` reached `a` within the last `MISSED` intervals.

    Uplinks that hear each other (either way) form groups; the one largest group of two or more
    is healthy and every uplink outside it fails. No such group (two uplinks that lost each
    other, or a tie) = nothing can be blamed: no uplink fails and the team shotguns."""
    ms = list(members)
    if len(ms) < 2:
        return frozenset(), False
    groups: list[list[Any]] = []
    left = list(ms)
    while left:
        group = [left.pop(0)]
        for a in group:  # grows while we walk it
            near = [b for b in left if heard(a, b) or heard(b, a)]
            for b in near:
                left.remove(b)
            group.extend(near)
        groups.append(group)
    if len(groups) == 1:
        return frozenset(), False
    groups.sort(key=len, reverse=True)
    if len(groups[0]) >= 2 and len(groups[0]) > len(groups[1]):
        healthy = set(groups[0])
        return frozenset(m for m in ms if m not in healthy), False
    return frozenset(), True


class BeaconProbe:
    """Beacon probing on one vSwitch's team: `await probe.run()` as a fabric task (the fabric
    clock paces it); `tick()` is one interval (send, then judge), for tests and the runner.

    Counters: `sent`, `received` (from this team), `foreign` (beacons of other hosts, consumed),
    `malformed`; `failed` and `shotgun` are the current verdict, `events` its history."""

    def __init__(self, switch: StandardSwitch, *, interval_s: float = INTERVAL_S,
                 missed: int = MISSED) -> None:
        self.switch = switch
        self.clock: Clock = switch.clock
        self.interval_ns = round(interval_s * NS_PER_S)
        self.missed = missed
        self.seq = 0
        self.sent = 0
        self.received = 0
        self.foreign = 0
        self.malformed = 0
        self.started_ns: int | None = None
        #: (receiving uplink, sending uplink) -> when a beacon last made that trip
        self.last_heard: dict[tuple[Port, Port], int] = {}
        self.failed: frozenset[Port] = frozenset()
        self.shotgun = False
        #: (time ns, uplink name, "failed" | "restored" | "shotgun" | "decided")
        self.events: list[tuple[int, str, str]] = []
        self._macs: dict[bytes, Port] = {}
        self.closed = False
        #: uplink -> when this prober first saw its link up (since it last went down)
        self._up_since: dict[Port, int] = {}
        switch.control_listeners.append(self.receive)

    # -- what the team is ---------------------------------------------------------------------
    def members(self) -> list[Port]:
        """The uplinks taking part: active and standby of the switch's policy and every port
        group override, in uplink order."""
        sw = self.switch
        named: set[Port] = set()
        policies = [sw.teaming, *(g.teaming for g in sw.port_groups.values() if g.teaming)]
        for pol in policies:
            active, standby = sw.team_order(pol)
            named.update(active)
            named.update(standby)
        return [u for u in sw.uplinks if u in named]

    def vlans(self, uplink: Port) -> list[int]:
        """The VLANs beacons go out on from `uplink`: the port groups' VLANs (VGT 4095 and EST
        go untagged, as VLAN 0) that the uplink carries, sorted."""
        vids = {0 if g.vlan == 4095 else g.vlan for g in self.switch.port_groups.values()} or {0}
        carry = uplink.sw_carry
        return sorted(v for v in vids if carry is None or v in carry)

    def mac_of(self, uplink: Port) -> bytes:
        """The uplink's MAC (its `mac` attribute, else derived from its path)."""
        mac = getattr(uplink, "mac", None)
        if not isinstance(mac, bytes):
            mac = uplink_mac(uplink.path)
        self._macs[mac] = uplink
        return mac

    # -- the protocol -------------------------------------------------------------------------
    def send(self) -> int:
        """Send this interval's beacons: one per member uplink that is up, per VLAN."""
        sw = self.switch
        now = self.clock.now_ns()
        if self.started_ns is None:
            self.started_ns = now
        self.seq += 1
        n = 0
        for u in self.members():
            if not u.link_up:
                self._up_since.pop(u, None)
                continue
            self._up_since.setdefault(u, now)
            frame = build(self.mac_of(u), u.name, self.seq)
            for vid in self.vlans(u):
                sw.send_control(u, frame, vid)
                n += 1
        self.sent += n
        return n

    def receive(self, port: Port, inner: bytes, vid: int, now: int) -> bool:
        """An 0x8922 frame arrived on uplink `port`: record a beacon from a team member;
        returns True if it was a beacon (health-check frames are for other listeners)."""
        b = parse(inner)
        if b is None:
            self.malformed += 1
            return False
        if b.kind != KIND_BEACON:
            return False
        sender = self._macs.get(b.src)
        if sender is None or sender is port:
            self.foreign += 1
            return True
        self.received += 1
        self.last_heard[port, sender] = now
        return True

    def heard(self, a: Port, b: Port, now: int | None = None) -> bool:
        """True if a beacon from `b` reached `a` within the last `missed` intervals."""
        t = self.last_heard.get((a, b))
        if now is None:
            now = self.clock.now_ns()
        return t is not None and now - t <= self.missed * self.interval_ns

    def judge(self) -> None:
        """Decide which uplinks have failed (no verdict before `missed` intervals have passed
        since the first beacon) and tell the switch if that changed."""
        now = self.clock.now_ns()
        if self.started_ns is None or now - self.started_ns < self.missed * self.interval_ns:
            return
        up = [u for u in self.members() if u.link_up]
        grace = self.missed * self.interval_ns
        # an uplink whose link came up less than `missed` intervals ago has not had the time
        # to be heard: it is given the benefit of the doubt (no flap on every link-up)
        fresh = {u for u in up if now - self._up_since.get(u, now) < grace}
        failed, shotgun = decide(
            up, lambda a, b: a in fresh or b in fresh or self.heard(a, b, now))
        if failed == self.failed and shotgun == self.shotgun:
            return
        for u in sorted(failed - self.failed, key=lambda p: p.name):
            self.events.append((now, u.name, "failed"))
        for u in sorted(self.failed - failed, key=lambda p: p.name):
            self.events.append((now, u.name, "restored" if u.link_up else "link-down"))
        if shotgun != self.shotgun:
            self.events.append((now, "*", "shotgun" if shotgun else "decided"))
        self.failed, self.shotgun = failed, shotgun
        self.switch.set_beacon_state(failed, shotgun)

    def tick(self) -> None:
        """One interval: judge what the last intervals heard, then send."""
        self.judge()
        self.send()

    async def run(self) -> None:
        """Beacon every interval on the switch's clock until cancelled."""
        next_ns = self.clock.now_ns()
        while not self.closed:
            self.tick()
            next_ns += self.interval_ns
            await self.clock.sleep(max(0, next_ns - self.clock.now_ns()) / NS_PER_S)

    def close(self) -> None:
        """Stop listening and beaconing; the switch goes back to link status only."""
        self.closed = True
        if self.receive in self.switch.control_listeners:
            self.switch.control_listeners.remove(self.receive)
        self.switch.set_beacon_state(frozenset(), False)
