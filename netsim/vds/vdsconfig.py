"""The distributed switch's configuration document: one versioned JSON object per vDS.

This is the management plane's wire format (what vCenter keeps centrally and every member
host's proxy switch applies): distributed port groups with VLAN, security, shaping in both
directions and teaming over the vDS's uplink names; the member hosts and, per host, which NIC
backs each uplink. Parsing is strict: anything wrong raises `ConfigError` naming the field path
(`dvs1: portgroups[App].vlan: 4096 outside 0..4095`). Pure: no I/O, clock or globals.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from netsim.dataplane.filtering import TrafficRuleset, ruleset_from_doc, ruleset_to_doc
from netsim.dataplane.flowmeter import IpfixConfig
from netsim.dataplane.lag import HASHES
from netsim.dataplane.pvlan import PvlanEntry, PvlanMap
from netsim.errors import ConfigError
from netsim.vds.monitoring import DvVspanSession, parse_ipfix, parse_sessions

TEAMING_POLICIES = ("port-id", "failover", "ip-hash", "src-mac", "load-based")
FAILURE_DETECTION = ("link", "beacon")
SCHEMA = "hvsim.vds/1"


@dataclass(frozen=True)
class DvSecurity:
    """Security policy; vDS defaults are Reject for all three (unlike a vSS)."""

    promiscuous: bool = False
    mac_changes: bool = False
    forged_transmits: bool = False


@dataclass(frozen=True)
class DvShaping:
    """Token-bucket shaping of one direction: average and peak in bits/s, burst in bytes."""

    average_bps: int
    peak_bps: int
    burst_bytes: int


@dataclass(frozen=True)
class DvTeaming:
    """NIC teaming over the vDS's uplink names (`uplink1`...)."""

    policy: str = "port-id"
    active: tuple[str, ...] = ()
    standby: tuple[str, ...] = ()
    notify_switches: bool = True
    failback: bool = True
    failure_detection: str = "link"  # link | beacon (HostNicFailureCriteria.checkBeacon)


@dataclass(frozen=True)
class DvLag:
    """A LACP LAG of the vDS (`VMwareDvsLacpGroupConfig`): its name, `mode` active/passive,
    the vDS uplinks it bundles (`uplinkNum` is their count), `loadbalanceAlgorithm`,
    `timeoutMode` fast/slow. In a teaming order it stands for all of them."""

    name: str
    uplinks: tuple[str, ...]
    mode: str = "passive"
    load_balance: str = "srcDestIpTcpUdpPortVlan"
    timeout: str = "slow"


@dataclass(frozen=True)
class DvPortGroup:
    """A distributed port group: exists on every member host's proxy switch."""

    name: str
    vlan: int = 0
    security: DvSecurity = field(default_factory=DvSecurity)
    shaping_in: DvShaping | None = None  # toward the VM (vSphere outShapingPolicy, "egress")
    shaping_out: DvShaping | None = None  # from the VM (inShapingPolicy, "ingress")
    teaming: DvTeaming | None = None
    blocked: bool = False  # DVPortSetting.blocked: every port of the group passes nothing
    #: traffic filtering and marking (`DvsTrafficRuleset`), in `ruleset_to_doc` form on the wire
    traffic_rules: TrafficRuleset | None = None


@dataclass(frozen=True)
class DvLinkDiscovery:
    """`LinkDiscoveryProtocolConfig` of the vDS: protocol cdp | lldp, operation none |
    listen | advertise | both (vSphere's default: CDP listen)."""

    protocol: str = "cdp"
    operation: str = "listen"


@dataclass(frozen=True)
class VdsConfig:
    """One vDS: its version, uplink names, port groups, member hosts and their uplink NICs."""

    name: str
    version: int = 1
    uplinks: tuple[str, ...] = ("uplink1",)
    portgroups: tuple[DvPortGroup, ...] = ()
    #: host → {uplink name → host NIC}
    hosts: dict[str, dict[str, str]] = field(default_factory=dict)
    #: private VLANs: `VMwareDVSPvlanMapEntry`s as (primary, secondary, type); port groups
    #: whose VLAN is one of these IDs are private VLAN port groups
    pvlans: tuple[tuple[int, int, str], ...] = ()
    #: `VMwareDVSConfigSpec.maxMtu`: the largest frame payload any proxy switch port passes
    max_mtu: int = 1500
    #: LACP LAGs over the uplinks (`VmwareDistributedVirtualSwitch.lacpGroupConfig`)
    lags: tuple[DvLag, ...] = ()
    #: `VMwareDVSConfigSpec.linkDiscoveryProtocolConfig`: CDP/LLDP on every member's uplinks
    link_discovery: DvLinkDiscovery = field(default_factory=DvLinkDiscovery)
    #: port mirroring sessions (`VMwareDVSConfigSpec.vspanSession`; netsim.vds.monitoring)
    vspan_sessions: tuple[DvVspanSession, ...] = ()
    #: flow export (`VMwareDVSConfigSpec.ipfixConfig`); None = off
    ipfix: IpfixConfig | None = None
    #: traffic filtering and marking of the uplink port group (`DvsTrafficRuleset` of
    #: `dvs-DVUplinks-N`), in `ruleset_to_doc` form on the wire; None = no rules
    uplink_traffic_rules: TrafficRuleset | None = None

    def pvlan_map(self) -> PvlanMap:
        """The PVLAN map the proxy switches apply."""
        return PvlanMap(PvlanEntry(p, s, t) for p, s, t in self.pvlans)  # type: ignore[arg-type]

    def portgroup(self, name: str) -> DvPortGroup:
        """The port group called `name`; ConfigError if there is none."""
        for pg in self.portgroups:
            if pg.name == name:
                return pg
        raise ConfigError(f"{self.name}: no distributed port group {name!r}")

    def vlans(self) -> set[int]:
        """Every VLAN a port group of this vDS uses (4095 = guest tagging)."""
        return {pg.vlan for pg in self.portgroups}

    def bumped(self, **changes: Any) -> VdsConfig:
        """A copy with `changes` applied and the version increased by one."""
        return replace(self, version=self.version + 1, **changes)

    def to_json(self) -> bytes:
        """The document as published (canonical key order)."""
        doc = {"schema": SCHEMA, **asdict(self)}
        doc["pvlans"] = [{"primary": p, "secondary": s, "type": t} for p, s, t in self.pvlans]
        for pg, d in zip(self.portgroups, doc["portgroups"], strict=True):
            d["traffic_rules"] = (ruleset_to_doc(pg.traffic_rules)
                                  if pg.traffic_rules is not None else None)
        doc["uplink_traffic_rules"] = (ruleset_to_doc(self.uplink_traffic_rules)
                                       if self.uplink_traffic_rules is not None else None)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str = "vds config") -> VdsConfig:
        """Parse and validate a published document."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{source}: not JSON ({exc})") from None
        except RecursionError:  # a hostile document nested thousands deep
            raise ConfigError(f"{source}: JSON nested too deeply") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        if doc.get("schema") != SCHEMA:
            raise ConfigError(f"{source}: schema {doc.get('schema')!r}, expected {SCHEMA!r}")
        return _parse(doc, source)


# ------------------------------------------------------------------------------ validation
def _get(d: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ConfigError(f"{where}.{key}: missing")
        return default
    v = d[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ConfigError(f"{where}.{key}: {v!r} is not {getattr(kind, '__name__', kind)}")
    return v


def _shaping(d: Any, where: str) -> DvShaping | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected an object or null")
    s = DvShaping(
        _get(d, "average_bps", int, where),
        _get(d, "peak_bps", int, where),
        _get(d, "burst_bytes", int, where),
    )
    if s.average_bps <= 0 or s.burst_bytes <= 0:
        raise ConfigError(f"{where}: average_bps and burst_bytes must be > 0")
    if s.peak_bps < s.average_bps:
        raise ConfigError(f"{where}: peak_bps {s.peak_bps} < average_bps {s.average_bps}")
    return s


def _label(text: str) -> str:
    """A name from the document as it appears in an error path: as is when printable, else
    quoted with escapes (a broker message must not break our one-line errors)."""
    return text if text.isprintable() else repr(text)


def _parse(doc: dict, source: str) -> VdsConfig:
    name = _get(doc, "name", str, source)
    where = f"{source} {_label(name)}"
    version = _get(doc, "version", int, where)
    if version < 1:
        raise ConfigError(f"{where}.version: {version} must be ≥ 1")
    uplinks = tuple(_get(doc, "uplinks", list, where))
    if not all(isinstance(u, str) and u for u in uplinks) or len(set(uplinks)) != len(uplinks):
        raise ConfigError(f"{where}.uplinks: expected distinct names, got {list(uplinks)}")
    pgs: list[DvPortGroup] = []
    seen: set[str] = set()
    for i, p in enumerate(_get(doc, "portgroups", list, where)):
        if not isinstance(p, dict):
            raise ConfigError(f"{where}.portgroups[{i}]: expected an object")
        pname = _get(p, "name", str, f"{where}.portgroups[{i}]")
        pw = f"{where}.portgroups[{_label(pname)}]"
        if pname in seen:
            raise ConfigError(f"{pw}: port group named twice")
        seen.add(pname)
        vlan = _get(p, "vlan", int, pw, 0)
        if not 0 <= vlan <= 4095:
            raise ConfigError(f"{pw}.vlan: {vlan} outside 0..4095")
        sec = _get(p, "security", dict, pw, {})
        security = DvSecurity(
            _get(sec, "promiscuous", bool, f"{pw}.security", False),
            _get(sec, "mac_changes", bool, f"{pw}.security", False),
            _get(sec, "forged_transmits", bool, f"{pw}.security", False),
        )
        teaming = None
        t = p.get("teaming")
        if t is not None:
            tw = f"{pw}.teaming"
            if not isinstance(t, dict):
                raise ConfigError(f"{tw}: expected an object")
            policy = _get(t, "policy", str, tw, "port-id")
            if policy not in TEAMING_POLICIES:
                raise ConfigError(f"{tw}.policy: {policy!r} not one of {TEAMING_POLICIES}")
            active = tuple(_get(t, "active", list, tw, []))
            standby = tuple(_get(t, "standby", list, tw, []))
            lag_names = [lg.get("name") for lg in doc.get("lags") or [] if isinstance(lg, dict)]
            for u in (*active, *standby):
                if u not in uplinks and u not in lag_names:
                    raise ConfigError(f"{tw}: uplink {u!r} is not one of the vDS's "
                                      f"{list(uplinks) + lag_names}")
            detect = _get(t, "failure_detection", str, tw, "link")
            if detect not in FAILURE_DETECTION:
                raise ConfigError(f"{tw}.failure_detection: {detect!r} not one of "
                                  f"{FAILURE_DETECTION}")
            teaming = DvTeaming(policy, active, standby,
                                _get(t, "notify_switches", bool, tw, True),
                                _get(t, "failback", bool, tw, True), detect)
        pgs.append(
            DvPortGroup(
                pname,
                vlan,
                security,
                _shaping(p.get("shaping_in"), f"{pw}.shaping_in"),
                _shaping(p.get("shaping_out"), f"{pw}.shaping_out"),
                teaming,
                _get(p, "blocked", bool, pw, False),
                ruleset_from_doc(p.get("traffic_rules"), f"{pw}.traffic_rules"),
            )
        )
    hosts: dict[str, dict[str, str]] = {}
    for h, mapping in _get(doc, "hosts", dict, where, {}).items():
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise ConfigError(f"{where}.hosts[{_label(h)}]: expected {{uplink: nic}}")
        for u in mapping:
            if u not in uplinks:
                raise ConfigError(f"{where}.hosts[{_label(h)}]: uplink {u!r} is not one of "
                                  f"{list(uplinks)}")
        hosts[h] = dict(mapping)
    entries: list[PvlanEntry] = []
    for i, e in enumerate(_get(doc, "pvlans", list, where, [])):
        ew = f"{where}.pvlans[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{ew}: expected {{primary, secondary, type}}")
        try:
            entries.append(PvlanEntry(_get(e, "primary", int, ew), _get(e, "secondary", int, ew),
                                      _get(e, "type", str, ew)))  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(f"{ew}: {exc}") from None
    try:
        pmap = PvlanMap(entries)
    except ConfigError as exc:
        raise ConfigError(f"{where}.pvlans: {exc}") from None
    pvlans = tuple((e.primary, e.secondary, e.type.value) for e in pmap.entries)
    max_mtu = _get(doc, "max_mtu", int, where, 1500)
    if not 68 <= max_mtu <= 9216:
        raise ConfigError(f"{where}.max_mtu: {max_mtu} outside 68..9216")
    ld = _get(doc, "link_discovery", dict, where, {})
    lw = f"{where}.link_discovery"
    discovery = DvLinkDiscovery(_get(ld, "protocol", str, lw, "cdp"),
                                _get(ld, "operation", str, lw, "listen"))
    if discovery.protocol not in ("cdp", "lldp"):
        raise ConfigError(f"{lw}.protocol: {discovery.protocol!r} not one of cdp, lldp")
    if discovery.operation not in ("none", "listen", "advertise", "both"):
        raise ConfigError(f"{lw}.operation: {discovery.operation!r} not one of none, listen, "
                          "advertise, both")
    return VdsConfig(name, version, uplinks, tuple(pgs), hosts, pvlans, max_mtu,
                     _lags(_get(doc, "lags", list, where, []), uplinks, where), discovery,
                     parse_sessions(doc.get("vspan_sessions"), f"{where}.vspan_sessions",
                                    uplinks),
                     parse_ipfix(doc.get("ipfix"), f"{where}.ipfix"),
                     ruleset_from_doc(doc.get("uplink_traffic_rules"),
                                      f"{where}.uplink_traffic_rules"))


def _lags(raw: list[Any], uplinks: tuple[str, ...], where: str) -> tuple[DvLag, ...]:
    out: list[DvLag] = []
    used: dict[str, str] = {}
    for i, d in enumerate(raw):
        lw = f"{where}.lags[{i}]"
        if not isinstance(d, dict):
            raise ConfigError(f"{lw}: expected an object")
        name = _get(d, "name", str, lw)
        if not name or name in uplinks or any(lg.name == name for lg in out):
            raise ConfigError(f"{lw}.name: {_label(name)!r} is empty or already a name here")
        members = tuple(_get(d, "uplinks", list, lw))
        if len(members) < 2:
            raise ConfigError(f"{lw}.uplinks: a LAG bundles at least two uplinks")
        for u in members:
            if u not in uplinks:
                raise ConfigError(f"{lw}.uplinks: {u!r} is not one of {list(uplinks)}")
            if u in used:
                raise ConfigError(f"{lw}.uplinks: {u!r} is already in LAG {used[u]}")
            used[u] = name
        lag = DvLag(name, members, _get(d, "mode", str, lw, "passive"),
                    _get(d, "load_balance", str, lw, "srcDestIpTcpUdpPortVlan"),
                    _get(d, "timeout", str, lw, "slow"))
        for key, ok in (("mode", ("active", "passive")), ("timeout", ("fast", "slow")),
                        ("load_balance", tuple(HASHES))):
            if getattr(lag, key) not in ok:
                raise ConfigError(f"{lw}.{key}: {getattr(lag, key)!r} not one of {ok}")
        out.append(lag)
    return tuple(out)
