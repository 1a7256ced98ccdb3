"""Port mirroring sessions and IPFIX of a distributed switch: their place in the vDS
configuration document, and how each member host's proxy switch applies them.

In the document (`VdsConfig.vspan_sessions`, `VdsConfig.ipfix`) a session names its ports by
VM port name (`web.eth0`) and its uplinks by vDS uplink name (`uplink1`), as vCenter names
dvports and uplink ports; every host applies the part that is local to it, as ESXi does:
- `dvPortMirror`: sources and destination on the same host (vSphere mirrors nothing across
  hosts in this session type); a host without the destination mirrors nothing;
- `remoteMirrorSource`: local sources, into RSPAN VLAN `encapsulation_vlan`, out of the named
  uplinks (default all) of this host;
- `remoteMirrorDest`: RSPAN VLAN `vlans[0]` from the uplinks to the local destination;
- `encapsulatedRemoteMirrorSource`: local sources, ERSPAN/GRE to `destination` (an IPv4
  address; `destination_mac` is the next hop's MAC, which ESXi's VMkernel stack would learn by
  ARP) from `source_ip`.
Sessions and the meter follow the ports: `ProxyMonitoring.refresh()` runs after a config and
after VMs come or go. Counters of a session live as long as its name does.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netsim.clock import Clock
from netsim.dataplane.flowmeter import FlowMeter, IpfixConfig
from netsim.dataplane.mirror import (
    SESSION_TYPES,
    ErspanSource,
    MirrorCounters,
    MirrorSession,
    RspanSource,
    check_options,
    rspan_destination,
    to_port,
    vmk_mac,
)
from netsim.dataplane.port import Pif, VmPort
from netsim.errors import ConfigError, FrameError
from netsim.wire.erspan import ENCAPSULATIONS, ErspanTunnel
from netsim.wire.frame import mac_to_bytes


@dataclass(frozen=True)
class DvVspanSession:
    """One `VMwareVspanSession` of the vDS (ports by VM port name, uplinks by vDS name)."""

    name: str
    type: str = "dvPortMirror"
    enabled: bool = True
    sources: tuple[str, ...] = ()
    direction: str = "both"  # ingress | egress | both, seen from the source port
    vlans: tuple[int, ...] = ()  # remoteMirrorDest: the RSPAN VLAN
    destination: str = ""  # a port name, or the ERSPAN collector's IPv4 address
    uplinks: tuple[str, ...] = ()
    sampling_rate: int = 1
    mirrored_packet_length: int | None = None
    #: `VMwareVspanSession.normalTrafficAllowed`; unset = false, the vSphere Client's
    #: "Normal I/O on destination ports: Disallowed"
    normal_traffic_allowed: bool = False
    strip_original_vlan: bool = False
    encapsulation_vlan: int = 0
    encapsulation: str = "gre"
    source_ip: str = ""
    destination_mac: str = ""
    erspan_id: int = 0
    erspan_cos: int = 0
    erspan_gra_ns: bool = False


def _get(d: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any) -> Any:
    v = d.get(key, default)
    if v is default and key not in d:
        return v
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ConfigError(f"{where}.{key}: {v!r} is not {getattr(kind, '__name__', kind)}")
    return v


def parse_ipfix(doc: Any, where: str) -> IpfixConfig | None:
    """The document's `ipfix` object (null = off)."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected an object or null")
    known = set(IpfixConfig.__dataclass_fields__)
    for k in doc:
        if k not in known:
            raise ConfigError(f"{where}.{k}: unknown setting (known: {', '.join(sorted(known))})")
    if "collector_ip" not in doc:
        raise ConfigError(f"{where}.collector_ip: missing")
    if not isinstance(doc["collector_ip"], str):
        raise ConfigError(f"{where}.collector_ip: {doc['collector_ip']!r} is not str")
    try:
        return IpfixConfig(**doc)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).removeprefix('ipfix: ')}") from None


def parse_sessions(doc: Any, where: str, uplinks: tuple[str, ...]) -> tuple[DvVspanSession, ...]:
    """The document's `vspan_sessions` list, each checked against its session type."""
    if doc is None:
        return ()
    if not isinstance(doc, list):
        raise ConfigError(f"{where}: {doc!r} is not list")
    out: list[DvVspanSession] = []
    names: set[str] = set()
    for i, d in enumerate(doc):
        if not isinstance(d, dict):
            raise ConfigError(f"{where}[{i}]: expected an object")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}[{i}].name: missing")
        w = f"{where}[{name if name.isprintable() else repr(name)}]"
        if name in names:
            raise ConfigError(f"{w}: session named twice")
        names.add(name)
        for k in d:
            if k not in DvVspanSession.__dataclass_fields__:
                raise ConfigError(f"{w}.{k}: unknown setting")
        kind = _get(d, "type", str, w, "dvPortMirror")
        if kind not in SESSION_TYPES:
            raise ConfigError(f"{w}.type: {kind!r} not one of {SESSION_TYPES}")
        strs = {k: tuple(_get(d, k, list, w, [])) for k in ("sources", "uplinks")}
        for k, vs in strs.items():
            if not all(isinstance(v, str) and v for v in vs):
                raise ConfigError(f"{w}.{k}: expected names, got {list(vs)}")
        for u in strs["uplinks"]:
            if u not in uplinks:
                raise ConfigError(f"{w}.uplinks: {u!r} is not one of the vDS's {list(uplinks)}")
        vlans = tuple(_get(d, "vlans", list, w, []))
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4094
                   for v in vlans):
            raise ConfigError(f"{w}.vlans: expected VLAN IDs 1..4094, got {list(vlans)}")
        s = DvVspanSession(
            name, kind, _get(d, "enabled", bool, w, True), strs["sources"],
            _get(d, "direction", str, w, "both"), vlans, _get(d, "destination", str, w, ""),
            strs["uplinks"], _get(d, "sampling_rate", int, w, 1),
            _get(d, "mirrored_packet_length", (int, type(None)), w, None),
            _get(d, "normal_traffic_allowed", bool, w, False),
            _get(d, "strip_original_vlan", bool, w, False),
            _get(d, "encapsulation_vlan", int, w, 0), _get(d, "encapsulation", str, w, "gre"),
            _get(d, "source_ip", str, w, ""), _get(d, "destination_mac", str, w, ""),
            _get(d, "erspan_id", int, w, 0), _get(d, "erspan_cos", int, w, 0),
            _get(d, "erspan_gra_ns", bool, w, False))
        _check_session(s, w)
        out.append(s)
    return tuple(out)


def _check_session(s: DvVspanSession, w: str) -> None:
    if s.direction not in ("ingress", "egress", "both"):
        raise ConfigError(f"{w}.direction: {s.direction!r} not one of ingress, egress, both")
    check_options(s.sampling_rate, s.mirrored_packet_length, w)
    if not 0 <= s.encapsulation_vlan <= 4094:
        raise ConfigError(f"{w}.encapsulation_vlan: {s.encapsulation_vlan} outside 0..4094")
    if s.type == "remoteMirrorDest":
        if len(s.vlans) != 1 or s.sources or not s.destination:
            raise ConfigError(f"{w}: an RSPAN destination takes one VLAN in `vlans` and a "
                              "`destination` port")
    elif not s.sources:
        raise ConfigError(f"{w}.sources: a {s.type} session needs source ports")
    if s.type == "dvPortMirror" and not s.destination:
        raise ConfigError(f"{w}.destination: missing")
    if s.type == "remoteMirrorSource" and not 1 <= s.encapsulation_vlan <= 4094:
        raise ConfigError(f"{w}.encapsulation_vlan: an RSPAN source needs the RSPAN VLAN")
    if s.type == "encapsulatedRemoteMirrorSource":
        try:
            ipaddress.IPv4Address(s.destination)
            ipaddress.IPv4Address(s.source_ip)
            mac_to_bytes(s.destination_mac)
            ErspanTunnel(s.encapsulation, bytes(6), bytes(6), bytes(4), bytes(4),
                         session_id=s.erspan_id, cos=s.erspan_cos, vlan=s.encapsulation_vlan)
        except (ValueError, ConfigError, FrameError) as exc:
            raise ConfigError(f"{w}: ERSPAN settings: {exc}") from None
    elif s.encapsulation not in ENCAPSULATIONS:
        raise ConfigError(f"{w}.encapsulation: {s.encapsulation!r} not one of {ENCAPSULATIONS}")


def from_topology(topo: Any, switch_of: Callable[[str], str]
                  ) -> tuple[tuple[DvVspanSession, ...], IpfixConfig | None]:
    """The vDS's sessions and IPFIX from a topology's hosts (`switch_of(host)`: the host's
    switch the vDS replaces). Session names are one namespace across the vDS; the members
    that set `ipfix:` must agree (it is one vDS setting, applied on every member)."""
    from netsim.errors import TopologyError

    sessions: dict[str, DvVspanSession] = {}
    ipfix: dict[str, IpfixConfig | None] = {}
    for h in topo.hosts:
        sw = switch_of(h.name)
        ipfix[h.name] = h.switch(sw).ipfix
        for m in topo.mirrors:
            if m.host != h.name or m.switch != sw:
                continue
            if m.name in sessions:
                raise TopologyError(f"{topo.source}: mirror session {m.name!r} is on two hosts "
                                    "(a vDS session name is one session)")
            dst_mac = ""
            if m.type == "encapsulatedRemoteMirrorSource":
                dst_mac = next((f.mac for vm in topo.vms for f in vm.vifs
                                if f.ip is not None and str(f.ip.ip) == m.destination), "")
                if not dst_mac:
                    raise TopologyError(f"{topo.source}: mirror {m.name}: no vNIC in the lab "
                                        f"has IP {m.destination} (the ERSPAN collector)")
            nics = h.switch(sw).uplinks
            sessions[m.name] = DvVspanSession(
                m.name, m.type, True, m.sources, m.direction, m.vlans, m.destination,
                tuple(f"uplink{nics.index(u) + 1}" for u in m.uplinks), m.sampling_rate,
                m.mirrored_packet_length, m.normal_traffic_allowed, m.strip_original_vlan,
                m.encapsulation_vlan, m.encapsulation, m.source_ip, dst_mac, m.erspan_id,
                m.erspan_cos, m.erspan_gra_ns)
    configs = {c for c in ipfix.values() if c is not None}
    if len(configs) > 1:
        raise TopologyError(f"{topo.source}: the hosts' `ipfix:` settings differ; a vDS has "
                            "one IPFIX configuration")
    return tuple(sessions.values()), next(iter(configs), None)


class ProxyMonitoring:
    """The mirroring sessions and flow meter of one host's proxy switch."""

    def __init__(self, switch: Any, uplinks: dict[str, Pif], clock: Clock, host: str) -> None:
        self.switch = switch
        self.uplinks = uplinks  # vDS uplink name → this host's NIC
        self.clock = clock
        self.host = host
        self.sessions: tuple[DvVspanSession, ...] = ()
        self.ipfix: IpfixConfig | None = None
        #: live sessions by name (their counters survive re-application)
        self.live: dict[str, MirrorSession] = {}
        self.meter: FlowMeter | None = None
        self._blocked: list[VmPort] = []
        self._span_vlans: list[int] = []

    def apply(self, sessions: tuple[DvVspanSession, ...], ipfix: IpfixConfig | None
              ) -> FlowMeter | None:
        """Take a new configuration; returns a new flow meter to export from, if any."""
        new_meter = None
        if ipfix != self.ipfix:
            self.ipfix = ipfix
            self.meter = new_meter = FlowMeter(ipfix, self.clock) if ipfix else None
        self.sessions = sessions
        self.refresh()
        return new_meter

    def refresh(self) -> None:
        """Re-attach every session and the meter to the ports there are now."""
        sw = self.switch
        live = self.live
        meter = self.meter
        sw.unmirror(lambda m: getattr(m, "session", None) in live.values()
                    or getattr(m, "meter", None) is not None)
        for p in self._blocked:
            if p.switch is sw:
                sw.block(p, False)
        for vid in self._span_vlans:
            sw.span_vlans.pop(vid, None)
        self._blocked, self._span_vlans = [], []
        ports = {p.name: p for p in sw.ports.values() if isinstance(p, VmPort)}
        wanted = {s.name for s in self.sessions if s.enabled}
        for name in list(live):
            if name not in wanted:
                del live[name]
        for s in self.sessions:
            if s.enabled:
                self._attach(s, ports)
        sw.mirror_sessions = dict(live)
        if meter is not None:
            meter.attach(sw)
        sw.flow_meter = meter

    def _attach(self, s: DvVspanSession, ports: dict[str, VmPort]) -> None:
        sw = self.switch
        counters = self.live[s.name].counters if s.name in self.live else MirrorCounters()
        deliver: Callable[[bytes, bool, bool], None]
        ups = [self.uplinks[u] for u in (s.uplinks or tuple(self.uplinks)) if u in self.uplinks]
        if s.type == "remoteMirrorSource":
            if not ups:
                return
            deliver = RspanSource(ups, s.encapsulation_vlan, counters)
        elif s.type == "encapsulatedRemoteMirrorSource":
            if not ups:
                return
            tunnel = ErspanTunnel(
                s.encapsulation, vmk_mac(self.host), mac_to_bytes(s.destination_mac),
                ipaddress.IPv4Address(s.source_ip).packed,
                ipaddress.IPv4Address(s.destination).packed, session_id=s.erspan_id,
                cos=s.erspan_cos, vlan=s.encapsulation_vlan, gra_ns=s.erspan_gra_ns)
            deliver = ErspanSource(tunnel, ups, self.clock, counters)
        else:
            dest = ports.get(s.destination)
            if dest is None:  # the destination is on another host: nothing to do here
                return
            deliver = to_port(dest)
            if not s.normal_traffic_allowed:
                sw.block(dest, reason="mirror-destination")
                self._blocked.append(dest)
        session = MirrorSession(
            s.name, deliver, sampling_rate=s.sampling_rate,
            mirrored_packet_length=s.mirrored_packet_length,
            strip_original_vlan=s.strip_original_vlan,
            tag_original_vlan=s.type in ("remoteMirrorSource", "encapsulatedRemoteMirrorSource"),
            counters=counters)
        self.live[s.name] = session
        if s.type == "remoteMirrorDest":
            vid = s.vlans[0]
            if vid not in sw.span_vlans:
                rspan_destination(sw, vid, session)
                self._span_vlans.append(vid)
            return
        srcs = [ports[n] for n in s.sources if n in ports and n != s.destination]
        if srcs:
            session.attach(sw, srcs, ingress=s.direction in ("ingress", "both"),
                           egress=s.direction in ("egress", "both"))
