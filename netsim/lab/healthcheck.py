"""The vDS health check (vSphere "vSphere Distributed Switch Health Check"): VLAN and MTU, and
teaming and failover, run on a live fabric.

What vSphere checks, and how it is done here:
- **VLAN**: for every VLAN of the switch's port groups (VST, 1-4094), each uplink sends a probe
  tagged with that VLAN; a VLAN is carried by the physical port behind an uplink when another
  uplink (of this host or another) receives that uplink's probe, or it receives one. vSphere
  lists, per host and uplink, the VLANs "not trunked". Where no uplink anywhere hears another
  in a VLAN, every uplink is listed for it (nobody can be cleared); with a single uplink in the
  whole check nothing can be said and the VLAN is listed as `unknown`. The uplinks that hear
  each other form groups (as beacon probing's `decide`); the largest group is right and the
  others are listed; with no largest group (two uplinks that do not hear each other) all are
  listed, marked "this side or the other".
- **MTU**: in each VLAN that passed, each uplink that passed sends a probe padded to the
  switch's MTU (the vSS `mtu` / vDS `maxMtu`, else its uplinks' MTU), judged the same way: an
  uplink cut off from the group at full size (but not at 60 bytes) has an MTU mismatch - its
  physical port (or the NIC) passes less than the switch sends.
  Drops on the way are the fabric's own, counted per port (`oversize`, `vlan-not-allowed`).
- **Teaming**: an IP hash team (`loadbalance_ip`) needs its uplinks' physical ports in one
  port-channel (EtherChannel/LAG); without one the physical switch sees the VMs' MACs flap.
  The reverse - uplinks in a port-channel under another policy - is reported as well, as
  vSphere does.

Probes are 0x8922 frames of kind 2 (`netsim.dataplane.beacon`); receivers report to the check
directly (vSphere's hosts report to vCenter), not by ack frames.
"""
from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from netsim.dataplane import beacon
from netsim.dataplane.policy import LoadBalancing
from netsim.dataplane.port import Port
from netsim.dataplane.switch import StandardSwitch


@dataclass(frozen=True)
class UplinkHealth:
    """One row of the VLAN and MTU check: a host's uplink and what its physical port lacks."""

    host: str
    switch: str
    uplink: str
    physical_port: str  # what the uplink is cabled to ("" if nothing)
    vlans_checked: tuple[int, ...]
    vlans_not_trunked: tuple[int, ...]
    mtu: int  # the MTU the switch sends (and the probe's size)
    mtu_mismatch_vlans: tuple[int, ...]  # VLANs in which a full-size frame does not pass
    unknown_vlans: tuple[int, ...] = ()  # no second uplink to tell
    link_up: bool = True  # a link-down uplink is not probed
    #: listed VLANs where the fault may be on the other side (no group of uplinks heard each
    #: other: with two uplinks, either may be the one misconfigured)
    ambiguous_vlans: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every VLAN is trunked and the MTU matches."""
        return self.link_up and not (self.vlans_not_trunked or self.mtu_mismatch_vlans)


@dataclass(frozen=True)
class TeamingHealth:
    """One finding of the teaming check."""

    host: str
    switch: str
    policy: str
    uplinks: tuple[str, ...]
    message: str


@dataclass
class HealthReport:
    """The whole health check: `uplinks` (VLAN and MTU rows) and `teaming` warnings."""

    uplinks: list[UplinkHealth] = field(default_factory=list)
    teaming: list[TeamingHealth] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return all(u.ok for u in self.uplinks) and not self.teaming

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"ok": self.ok,
                "uplinks": [{**asdict(u), "ok": u.ok} for u in self.uplinks],
                "teaming": [asdict(t) for t in self.teaming]}

    def rows(self) -> list[tuple[str, ...]]:
        """The VLAN and MTU table as text cells: host, switch, uplink, physical port, VLANs
        not trunked, MTU, MTU mismatch, status."""

        def vl(v: Iterable[int]) -> str:
            return ",".join(str(x) for x in v) or "-"

        out = []
        for u in self.uplinks:
            status = "ok" if u.ok else "mismatch" if u.link_up else "link down"
            if u.ambiguous_vlans:
                status += f" (VLAN {vl(u.ambiguous_vlans)}: this side or the other)"
            if u.unknown_vlans:
                status += f" (VLAN {vl(u.unknown_vlans)}: unknown, no second uplink)"
            out.append((u.host, u.switch, u.uplink, u.physical_port or "-",
                        vl(u.vlans_not_trunked), str(u.mtu),
                        ("VLAN " + vl(u.mtu_mismatch_vlans)) if u.mtu_mismatch_vlans else "-",
                        status))
        return out


def _vlans(sw: StandardSwitch) -> tuple[int, ...]:
    return tuple(sorted({g.vlan for g in sw.port_groups.values() if 1 <= g.vlan <= 4094}))


def _mtu(sw: StandardSwitch) -> int:
    if sw.mtu is not None:
        return sw.mtu
    return max((u.mtu for u in sw.uplinks), default=1500)


def _peer(port: Port) -> Port | None:
    link = getattr(port, "link", None)
    return link.peer(port) if link is not None else None


def _port_channel(port: Port | None) -> str | None:
    """The port-channel (LAG) a physical port is a member of, by its logical port's path: a
    member's `switch` is its `Lag` (netsim.dataplane.lag), which has `port` and `members`."""
    owner = getattr(port, "switch", None)
    if owner is not None and hasattr(owner, "members") and hasattr(owner, "port"):
        return str(getattr(owner.port, "path", owner.port))
    return None


def _physical_ports(uplink: Port) -> str:
    """What an uplink is cabled to: its peer's path, or for a host LAG its members' peers
    joined by '+' ("" if nothing)."""
    members = getattr(getattr(uplink, "lag", None), "members", None)
    ports = [getattr(m, "port", m) for m in members] if members else [uplink]
    peers = [_peer(p) for p in ports]
    return "+".join(p.path for p in peers if p is not None)


def _uplink_channel(uplink: Port) -> str | None:
    """The port-channel behind an uplink; for a host LAG (vDS LAG, Xen bond) the one all its
    members' physical ports are in, else None."""
    lag = getattr(uplink, "lag", None)
    members = getattr(lag, "members", None)
    if members:
        chans = {_port_channel(_peer(getattr(m, "port", m))) for m in members}
        return chans.pop() if len(chans) == 1 else None
    return _port_channel(_peer(uplink))


def teaming_check(switches: Iterable[tuple[str, StandardSwitch]]) -> list[TeamingHealth]:
    """IP hash teams whose physical ports are not one port-channel, and port-channels under a
    team that does not hash by IP."""
    out = []
    for host, sw in switches:
        policies = [("switch", sw.teaming)] + [(f"port group {g.name}", g.teaming)
                                               for g in sw.port_groups.values() if g.teaming]
        for where, pol in policies:
            active, standby = sw.team_order(pol)
            team = [u for u in (*active, *standby)]
            if len(team) < 2:
                continue
            channels = {u.name: _uplink_channel(u) for u in team}
            names = tuple(u.name for u in team)
            lb = pol.load_balancing
            if lb is LoadBalancing.IP_HASH:
                chans = set(channels.values())
                if None in chans or len(chans) != 1:
                    lone = [n for n, c in channels.items() if c is None]
                    msg = (f"{where}: IP hash needs the uplinks' physical ports in one "
                           "port-channel (EtherChannel/LAG); "
                           + (f"{', '.join(lone)} not in any" if lone
                              else f"they are in {', '.join(sorted(str(c) for c in chans))}"))
                    out.append(TeamingHealth(host, sw.name, lb.value, names, msg))
            elif any(channels.values()):
                inch = sorted(n for n, c in channels.items() if c)
                out.append(TeamingHealth(
                    host, sw.name, lb.value, names,
                    f"{where}: {', '.join(inch)} in a port-channel but the team's policy is "
                    f"{lb.value}, not ip-hash"))
    return out


async def health_check(
    switches: list[tuple[str, StandardSwitch]],
    settle: Callable[[], Awaitable[None]],
) -> HealthReport:
    """Run the VLAN and MTU check over `switches` ((host name, switch) pairs, on one running
    fabric) and the teaming check; `settle()` must return once every frame sent has arrived
    (`Lab.settle`)."""
    heard: set[tuple[Port, Port, int, bool]] = set()  # (receiver, sender, VLAN, full size)
    probes: dict[int, tuple[Port, int, bool]] = {}  # probe id -> (uplink, vid, full size)
    ids = itertools.count(1)
    members = {u for _, sw in switches for u in sw.uplinks}

    def listener(port: Port, inner: bytes, vid: int, now: int) -> None:
        b = beacon.parse(inner)
        if b is None or b.kind != beacon.KIND_PROBE or port not in members:
            return
        p = probes.get(b.seq)
        # counted only in its own VLAN: a probe that left an access port untagged arrived in
        # another VLAN
        if p is not None and p[0] is not port and p[1] == vid:
            heard.add((port, p[0], p[1], p[2]))

    parties: dict[int, list[Port]] = {}  # VLAN -> the uplinks (up) whose switch has it
    for _, sw in switches:
        for vid in _vlans(sw):
            parties.setdefault(vid, []).extend(u for u in sw.uplinks if u.link_up)

    async def round_(full: bool, which: dict[int, list[Port]]) -> None:
        for _, sw in switches:
            size = 14 + _mtu(sw) if full else 60
            for u in sw.uplinks:
                vids = [v for v in _vlans(sw) if u in which.get(v, ())]
                mac = beacon.uplink_mac(u.path)
                for vid in vids:
                    seq = next(ids)
                    probes[seq] = (u, vid, full)
                    sw.send_control(u, beacon.build(mac, u.name, seq, kind=beacon.KIND_PROBE,
                                                    size=size), vid)
                if vids:
                    await settle()  # bounded queues: one uplink's probes at a time

    def judge(full: bool, who: dict[int, list[Port]]
              ) -> tuple[dict[int, list[Port]], set[tuple[Port, int]], set[tuple[Port, int]]]:
        """(passed per VLAN, failed (uplink, VLAN), failed but maybe the other side's fault)"""
        passed: dict[int, list[Port]] = {}
        failed: set[tuple[Port, int]] = set()
        unsure: set[tuple[Port, int]] = set()
        for vid, us in who.items():
            if len(us) < 2:
                continue
            bad, ambiguous = beacon.decide(
                us, lambda a, b, v=vid: (a, b, v, full) in heard)
            if ambiguous:  # nobody can be cleared: every uplink is listed
                bad = frozenset(us)
                unsure.update((u, vid) for u in us)
            failed.update((u, vid) for u in bad)
            passed[vid] = [u for u in us if u not in bad]
        return passed, failed, unsure

    for _, sw in switches:
        sw.control_listeners.append(listener)
    try:
        await round_(False, parties)
        vlan_ok, not_trunked, unsure_v = judge(False, parties)
        await round_(True, vlan_ok)
        _, mtu_bad, unsure_m = judge(True, vlan_ok)
    finally:
        for _, sw in switches:
            if listener in sw.control_listeners:
                sw.control_listeners.remove(listener)

    report = HealthReport()
    for host, sw in switches:
        vids = _vlans(sw)
        for u in sw.uplinks:
            report.uplinks.append(UplinkHealth(
                host, sw.name, u.name, _physical_ports(u), vids,
                tuple(v for v in vids if (u, v) in not_trunked),
                _mtu(sw), tuple(v for v in vids if (u, v) in mtu_bad),
                unknown_vlans=tuple(v for v in vids
                                    if u.link_up and len(parties.get(v, ())) < 2),
                ambiguous_vlans=tuple(v for v in vids
                                      if (u, v) in unsure_v or (u, v) in unsure_m),
                link_up=u.link_up))
    report.teaming = teaming_check(switches)
    return report


def esxi_switches(topo: Any, fabric: Any) -> list[tuple[str, StandardSwitch]]:
    """The switches a topology's health check covers: every ESXi host's switch with uplinks
    (the health check is a vSphere feature; XenServer hosts are left out)."""
    out = []
    for h in topo.hosts:
        if h.type != "esxi":
            continue
        for s in h.switches:
            sw = fabric[f"{h.name}/{s.name}"]
            if isinstance(sw, StandardSwitch) and sw.uplinks:
                out.append((h.name, sw))
    return out
