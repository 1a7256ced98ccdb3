"""Topologies: a lab described as plain data, validated once, then drawn or built.

Who does what (Mininet's split, with networkx instead of a hand-made graph):
- a YAML file (`load_topology`) or the `TopologyBuilder` sentence API produce the same plain
  document; `validate` turns it into a `Topology` of frozen dataclasses, raising `TopologyError`
  naming file, line and key for every mistake;
- `to_graph` turns the model into a networkx MultiGraph (hosts, switches, port groups, PIFs,
  VLAN PIFs, VMs, vNICs, physical switches as typed nodes; uplinks, attachments and cables as
  typed edges) that drawing and building read;
- building the live fabric from it is a separate step (`netsim.lab.lab`).

Nothing here does I/O except `load_topology`, which reads the file it is given.
"""
from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from netsim.dataplane.discovery import DiscoveryConfig
from netsim.dataplane.filtering import TrafficRuleset
from netsim.dataplane.flowmeter import IpfixConfig
from netsim.dataplane.impair import Impairment, parse_impairment
from netsim.dataplane.mirror import MAX_SAMPLING_RATE, MIN_MIRRORED_LENGTH, SESSION_TYPES
from netsim.dataplane.pvlan import PvlanEntry, PvlanMap
from netsim.dataplane.vifpolicy import VifLocking, VifQos
from netsim.errors import ConfigError, TopologyError
from netsim.lab import policyspec
from netsim.lab.lagspec import LagSpec, channels, host_lag
from netsim.lab.yamlsrc import SourceMap, load_yaml
from netsim.wire.erspan import ENCAPSULATIONS

PathT = tuple[str | int, ...]

HOST_TYPES = ("xen", "esxi")
PORT_MODES = ("access", "trunk", "native-tagged", "native-untagged")
TEAMING_POLICIES = ("port-id", "failover", "ip-hash", "src-mac", "load-based")
FAILURE_DETECTION = ("link", "beacon")
XEN_OUI = (0x00, 0x16, 0x3E)


# --------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class SecuritySpec:
    """vSphere security policy of a port group (vSS defaults: Reject / Accept / Accept)."""

    promiscuous: bool = False
    mac_changes: bool = True
    forged_transmits: bool = True


@dataclass(frozen=True)
class ShapingSpec:
    """Egress shaping of a port group: average and peak in bits/s, burst in bytes."""

    average_bps: int
    peak_bps: int
    burst_bytes: int


@dataclass(frozen=True)
class TeamingSpec:
    """NIC teaming: `port-id` = route based on originating virtual port over the active uplinks;
    standby uplinks take over when an active one goes down."""

    policy: str
    active: tuple[str, ...]
    standby: tuple[str, ...] = ()
    notify_switches: bool = True  # a RARP per moved vNIC on its new uplink
    failback: bool = True  # False = vSphere rollingOrder
    failure_detection: str = "link"  # link | beacon (beacon probing, netsim.dataplane.beacon)


@dataclass(frozen=True)
class PifSpec:
    """A physical NIC of a host (`eth0`, `vmnic1`)."""

    host: str
    name: str
    mtu: int = 1500
    up: bool = True


@dataclass(frozen=True)
class SwitchSpec:
    """A host's standard switch (vSS `vSwitch0`, Xen bridge `xenbr0`/`xapi1`)."""

    host: str
    name: str
    uplinks: tuple[str, ...] = ()
    teaming: TeamingSpec | None = None
    mac_table_size: int = 8192
    aging_s: float = 300.0
    implicit: bool = False
    #: private VLANs as (primary, secondary, type) entries (`VMwareDVSPvlanMapEntry`)
    pvlans: tuple[tuple[int, int, str], ...] = ()
    mtu: int | None = None  # vSS `mtu` / vDS `maxMtu`: caps every port of the switch
    #: a vDS LAG / XenServer bond over some of `uplinks`: the switch's uplink in their place
    lag: LagSpec | None = None
    #: CDP/LLDP on the uplinks (`LinkDiscoveryProtocolConfig`); None = the host type's
    #: default (ESXi: CDP listen; XenServer: none) - see `netsim.dataplane.discovery`
    discovery: DiscoveryConfig | None = None
    #: IPFIX export of the switch's flows (`VMwareIpfixConfig`); None = off
    ipfix: IpfixConfig | None = None
    #: traffic filtering and marking on the uplink port group (vDS `dvs-DVUplinks-N`)
    uplink_traffic_rules: TrafficRuleset | None = None

    @property
    def internal(self) -> bool:
        """True when no PIF connects this switch to the physical network."""
        return not self.uplinks


@dataclass(frozen=True)
class NetworkSpec:
    """A port group (ESXi) / network (Xen): a VLAN on a switch, with its policies."""

    host: str
    name: str
    switch: str
    vlan: int = 0
    internal: bool = False
    security: SecuritySpec = field(default_factory=SecuritySpec)
    shaping: ShapingSpec | None = None
    teaming: TeamingSpec | None = None  # overrides the switch's teaming (ESXi port groups)
    mtu: int | None = None  # a XenServer network's MTU; caps the ports of the port group
    blocked: bool = False  # every port blocked (vSphere DVPortSetting.blocked)
    egress_shaping: ShapingSpec | None = None  # to the VMs (vDS egress; `shaping` = ingress)
    traffic_rules: TrafficRuleset | None = None  # vDS traffic filtering and marking
    default_locking_mode: str = "unlocked"  # XenServer network.default_locking_mode


@dataclass(frozen=True)
class AttachSpec:
    """A vNIC wired to a real interface instead of the built-in guest stack: `netns` (hvsim
    makes a namespace and veth), `tap` (a TAP device NAME, for QEMU) or `iface` (an existing
    interface NAME). See `netsim.lab.attach`."""

    kind: str  # netns | tap | iface
    name: str | None = None


@dataclass(frozen=True)
class VifSpec:
    """A VM's virtual NIC: backend port `port` (Xen `vifDOMID.DEVID`, ESXi `VM.ethN`)."""

    vm: str
    index: int
    port: str
    network: str
    mac: str
    ip: ipaddress.IPv4Interface | None = None
    vlan: int | None = None  # the guest tags its frames itself (VGT port groups)
    attach: AttachSpec | None = None
    mtu: int = 1500  # the vNIC's / VIF's MTU
    locking: VifLocking | None = None  # XenServer VIF locking_mode / ipv4_allowed / ...
    qos: VifQos | None = None  # XenServer VIF qos_algorithm_type=ratelimit


@dataclass(frozen=True)
class RouteSpec:
    """A static route of a guest: `to` network via `via` next hop."""

    to: ipaddress.IPv4Network
    via: ipaddress.IPv4Address


@dataclass(frozen=True)
class DiskSpec:
    """A VM's virtual disk, served to it through a Xen blkif ring (`storage.rings.blkback`).

    `source` names the disk as `storage.diskspec` reads it: a .vhd (with its chain), a raw
    file, `lvm:VG/LV:PV[,PV...]` or `mem:SIZE`; relative paths are relative to the topology file.
    """

    device: str  # xvda ... xvdp
    devid: int  # the xenstore device number: 202 << 8 | 16 * index (xvda = 51712)
    source: str
    read_only: bool = False


@dataclass(frozen=True)
class VmSpec:
    """A VM: its host, domain id, vNICs and (for routers) static routes."""

    host: str
    name: str
    domid: int
    vifs: tuple[VifSpec, ...]
    router: bool = False
    gateway: ipaddress.IPv4Address | None = None
    routes: tuple[RouteSpec, ...] = ()
    disks: tuple[DiskSpec, ...] = ()


@dataclass(frozen=True)
class HostSpec:
    """A hypervisor host: its PIFs, switches, networks and VMs."""

    name: str
    type: str
    pifs: tuple[PifSpec, ...]
    switches: tuple[SwitchSpec, ...]
    networks: tuple[NetworkSpec, ...]
    vms: tuple[VmSpec, ...]

    def pif(self, name: str) -> PifSpec:
        """The PIF called `name`."""
        return next(p for p in self.pifs if p.name == name)

    def switch(self, name: str) -> SwitchSpec:
        """The switch called `name`."""
        return next(s for s in self.switches if s.name == name)

    def network(self, name: str) -> NetworkSpec:
        """The network / port group called `name`."""
        return next(n for n in self.networks if n.name == name)


@dataclass(frozen=True)
class PhysPortSpec:
    """A port of a physical switch cabled to a host's PIF, with its 802.1Q mode."""

    switch: str
    host: str
    pif: str
    mode: str = "trunk"
    vlans: tuple[int, ...] = ()  # trunk: allowed VLANs (empty = all)
    vlan: int = 0  # access VLAN / native VLAN
    mtu: int = 1500
    ifname: str = ""  # the switch's own name of the port in CDP/LLDP (`Gi1/0/7`)

    @property
    def name(self) -> str:
        """`xen1.eth0`: the host and PIF at the other end of the cable."""
        return f"{self.host}.{self.pif}"


@dataclass(frozen=True)
class PhysLinkSpec:
    """A cable between two physical switches (always a trunk of `vlans`, empty = all)."""

    a: str
    b: str
    vlans: tuple[int, ...] = ()
    mtu: int = 1500  # of the ports at both ends


@dataclass(frozen=True)
class PhysSwitchSpec:
    """A switch of the physical network outside the hosts (an 802.1Q bridge)."""

    name: str
    ports: tuple[PhysPortSpec, ...]
    pvlans: tuple[tuple[int, int, str], ...] = ()  # a PVLAN-aware switch's map
    channels: tuple[LagSpec, ...] = ()  # port-channels (LACP or static) over its ports
    #: CDP/LLDP on every port; None = the switch neither sends nor consumes them
    discovery: DiscoveryConfig | None = None
    mgmt: str | None = None  # management address it advertises
    platform: str = "hvsim 802.1Q switch"  # CDP Platform / LLDP System Description
    rspan_vlans: tuple[int, ...] = ()  # carried flooded and unlearned (Cisco `remote-span`)


@dataclass(frozen=True)
class MirrorSpec:
    """A port-mirroring session on one host switch: copies of the sources' frames (or of every
    frame of `vlans`) go to `destination`, as vDS port mirroring does."""

    host: str
    name: str
    switch: str
    destination: str
    sources: tuple[str, ...] = ()
    vlans: tuple[int, ...] = ()
    direction: str = "both"  # ingress | egress | both (seen from the source port)
    #: `VMwareVspanSession.sessionType`: dvPortMirror (to a port on this switch),
    #: remoteMirrorSource (RSPAN: into `encapsulation_vlan` out of `uplinks`),
    #: remoteMirrorDest (from RSPAN VLAN `vlans` to `destination`),
    #: encapsulatedRemoteMirrorSource (ERSPAN: to IP `destination`)
    type: str = "dvPortMirror"
    sampling_rate: int = 1
    mirrored_packet_length: int | None = None
    #: vSphere Client "Normal I/O on destination ports": Disallowed unless set
    normal_traffic_allowed: bool = False
    strip_original_vlan: bool = False
    encapsulation_vlan: int = 0  # the RSPAN VLAN; for ERSPAN the VMkernel port's VLAN
    uplinks: tuple[str, ...] = ()  # RSPAN/ERSPAN: the uplinks copies leave by (default: all)
    encapsulation: str = "gre"  # ERSPAN: gre | erspan2 | erspan3
    source_ip: str = ""  # ERSPAN: the VMkernel address the tunnel starts from
    erspan_id: int = 0
    erspan_cos: int = 0
    erspan_gra_ns: bool = False


@dataclass(frozen=True)
class ImpairSpec:
    """Link impairment (netem-like) of the frames port `port` (a fabric path such as
    `core/esx1.vmnic0`, `esx1/vmnic0`, `esx1/web.eth0`) sends (`out`) or receives (`in`);
    `where` is the file:line it came from. A frame crossing a cable meets, in order, the
    sender's `out`, the cable's direction, the receiver's `in`."""

    port: str
    direction: str
    impairment: Impairment
    where: str = ""
    #: "port" (`impair:` of the port) or "cable" (a `links:` direction, after the port's own)
    layer: str = "port"


@dataclass(frozen=True)
class Topology:
    """A validated lab: hosts, VMs, physical switches and cables, mirror sessions."""

    name: str
    seed: int
    hosts: tuple[HostSpec, ...]
    physical: tuple[PhysSwitchSpec, ...] = ()
    links: tuple[PhysLinkSpec, ...] = ()
    mirrors: tuple[MirrorSpec, ...] = ()
    source: str = "<builder>"
    impairments: tuple[ImpairSpec, ...] = ()

    def host(self, name: str) -> HostSpec:
        """The host called `name` (KeyError if none)."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    @property
    def vms(self) -> tuple[VmSpec, ...]:
        """Every VM of every host, in file order."""
        return tuple(vm for h in self.hosts for vm in h.vms)

    def vm(self, name: str) -> VmSpec:
        """The VM called `name` (KeyError if none)."""
        for h in self.hosts:
            for vm in h.vms:
                if vm.name == name:
                    return vm
        raise KeyError(name)

    @property
    def vifs(self) -> tuple[VifSpec, ...]:
        """Every vNIC of every VM."""
        return tuple(v for vm in self.vms for v in vm.vifs)


# ----------------------------------------------------------------------------- small parsers
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(bit|bps|b|byte|bytes)?(/s)?\s*$",
                      re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_ISCALE = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_RATE_MAX = 2**63 - 1


def allocate_mac(seed: int, vm: str, index: int, attempt: int = 0) -> str:
    """A MAC in Xen's 00:16:3e OUI with the next byte < 0x80, derived from (seed, VM, vNIC).

    Derived per vNIC (not from a counter) so adding a VM does not renumber the others.
    """
    digest = hashlib.blake2b(f"{seed}/{vm}/{index}/{attempt}".encode(), digest_size=3).digest()
    tail = (digest[0] & 0x7F, digest[1], digest[2])
    return ":".join(f"{b:02x}" for b in (*XEN_OUI, *tail))


class _Checker:
    """Validates one plain document against the schema, with errors pointing into the file."""

    def __init__(self, data: Any, smap: SourceMap) -> None:
        self.data = data
        self.smap = smap

    def fail(self, path: PathT, msg: str) -> TopologyError:
        err = self.smap.error(path, msg, TopologyError)
        assert isinstance(err, TopologyError)
        return err

    def mapping(self, value: Any, path: PathT, allowed: Iterable[str] | None = None,
                *, none_ok: bool = True) -> dict[str, Any]:
        if value is None and none_ok:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail((*path, key), f"key {key!r} must be a name (text)")
        if allowed is not None:
            allowed = tuple(allowed)
            for key in value:
                if key not in allowed:
                    raise self.fail((*path, key), f"unknown key {key!r} "
                                    f"(expected one of: {', '.join(allowed)})")
        return dict(value)

    def seq(self, value: Any, path: PathT) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {_kind(value)}")
        return value

    def name(self, value: Any, path: PathT) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", value):
            raise self.fail(path, f"expected a name (letters, digits, _ . -), got {value!r}")
        return value

    def names(self, value: Any, path: PathT) -> tuple[str, ...]:
        items = self.seq(value, path)
        return tuple(self.name(v, (*path, i)) for i, v in enumerate(items))

    def boolean(self, value: Any, path: PathT, default: bool) -> bool:
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("accept", "reject"):
            return value.lower() == "accept"
        raise self.fail(path, f"expected true/false, got {value!r}")

    def integer(self, value: Any, path: PathT, lo: int, hi: int, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"{what} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise self.fail(path, f"{what} {value} out of range {lo}-{hi}")
        return value

    def vlan(self, value: Any, path: PathT, *, lo: int = 0, hi: int = 4095) -> int:
        return self.integer(value, path, lo, hi, "VLAN ID")

    def vlans(self, value: Any, path: PathT) -> tuple[int, ...]:
        out: list[int] = []
        for i, v in enumerate(self.seq(value, path)):
            if isinstance(v, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", v):
                a, b = (int(x) for x in v.split("-"))
                self.vlan(a, (*path, i), lo=1, hi=4094)
                self.vlan(b, (*path, i), lo=1, hi=4094)
                if a > b:  # an empty range would silently mean "no VLAN" (or, on a trunk, all)
                    raise self.fail((*path, i), f"VLAN range {v!r} runs backwards: write "
                                    f"\"{b}-{a}\" (low-high)")
                out.extend(range(a, b + 1))
            else:
                out.append(self.vlan(v, (*path, i), lo=1, hi=4094))
        return tuple(sorted(set(out)))

    def rate(self, value: Any, path: PathT, *, bits: bool) -> int:
        """`10000000`, `10M`, `10Mbit`, `1.5G` (bits/s) or `64K`, `64KiB` (bytes)."""
        if isinstance(value, bool):
            raise self.fail(path, f"expected a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(path, f"expected a finite number, got {value!r}")
        if isinstance(value, (int, float)):
            n = int(value)
        elif isinstance(value, str) and (m := _RATE_RE.match(value)):
            num, prefix, binary, unit = m.group(1), m.group(2).lower(), m.group(3), m.group(4)
            scale = (_ISCALE if binary or not bits else _SCALE)[prefix]
            n = int(float(num) * scale)
            if bits and unit and unit.lower() in ("b", "byte", "bytes"):
                n *= 8
        else:
            raise self.fail(path, f"expected a number like 10M or 65536, got {value!r}")
        if n <= 0:
            raise self.fail(path, f"must be positive, got {value!r}")
        if n > _RATE_MAX:  # vSphere's shaping fields are 64-bit longs
            raise self.fail(path, f"{value!r} is beyond the largest rate ({_RATE_MAX})")
        return n


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"text {value!r}"}.get(
        type(value), f"{type(value).__name__} {value!r}")


# --------------------------------------------------------------------------------- validate
_TOP_KEYS = ("name", "seed", "hosts", "vms", "physical", "mirrors", "links")
_HOST_KEYS = ("type", "pifs", "switches", "networks", "port_groups", "vms", "mirrors")
_PIF_KEYS = ("mtu", "up", "impair")
_SWITCH_KEYS = ("uplinks", "teaming", "mac_table_size", "aging", "pvlans", "mtu", "lag", "bond",
                "discovery", "ipfix", "uplink_traffic_rules")
_TEAM_KEYS = ("policy", "active", "standby", "notify_switches", "failback", "failure_detection")
_NET_KEYS = ("switch", "vlan", "internal", "security", "shaping", "teaming", "mtu", "blocked",
             *policyspec.NET_KEYS)
_SEC_KEYS = ("promiscuous", "mac_changes", "forged_transmits")
_SHAPE_KEYS = ("average", "peak", "burst")
_VM_KEYS = ("host", "domid", "vifs", "nics", "router", "gateway", "routes", "disks")
_DISK_KEYS = ("device", "source", "mode")
_VIF_KEYS = ("network", "mac", "ip", "vlan", "impair", "attach", "mtu", *policyspec.VIF_KEYS)
_ROUTE_KEYS = ("to", "via")
_PHYS_KEYS = ("ports", "links", "pvlans", "channels", "discovery", "rspan_vlans")
_IPFIX_KEYS = ("collector_ip", "collector_port", "observation_domain_id", "active_flow_timeout",
               "idle_flow_timeout", "sampling_rate", "internal_flows_only")
_PORT_KEYS = ("mode", "vlans", "vlan", "native", "impair", "mtu", "ifname")
_LINK_KEYS = ("vlans", "mtu")
_MIRROR_KEYS = ("switch", "sources", "vlans", "destination", "direction", "type",
                "sampling_rate", "mirrored_packet_length", "normal_traffic_allowed",
                "strip_original_vlan", "encapsulation_vlan", "uplinks", "encapsulation",
                "source_ip", "erspan_id", "erspan_cos", "erspan_gra_ns")


def validate(data: Any, smap: SourceMap | None = None) -> Topology:
    """Check a plain topology document (as loaded from YAML) and return the model.

    Raises `TopologyError` naming file, line and key path for the first problem found.
    """
    smap = smap or SourceMap("<builder>")
    c = _Checker(data, smap)
    top = c.mapping(data, (), _TOP_KEYS, none_ok=False)
    name = top.get("name", Path(smap.source).stem if smap.source != "<builder>" else "lab")
    if not isinstance(name, str):
        raise c.fail(("name",), f"expected text, got {name!r}")
    seed = c.integer(top.get("seed", 0), ("seed",), 0, 2**63 - 1, "seed")
    hosts_raw = c.mapping(top.get("hosts"), ("hosts",))
    if not hosts_raw:
        raise c.fail(("hosts",), "a topology needs at least one host")

    # VMs may sit under their host or at the top level with `host:`; gather both.
    vm_entries: dict[str, list[tuple[PathT, str, dict[str, Any]]]] = {h: [] for h in hosts_raw}
    seen_vm: dict[str, PathT] = {}

    def add_vm_entry(vm_name: Any, path: PathT, host: str, raw: Any) -> None:
        c.name(vm_name, path)
        if vm_name in seen_vm:
            raise c.fail(path, f"VM {vm_name!r} is already defined at "
                         f"{smap.where(seen_vm[vm_name])}")
        seen_vm[vm_name] = path
        vm_entries[host].append((path, vm_name, c.mapping(raw, path, _VM_KEYS)))

    for hname, hraw in hosts_raw.items():
        c.name(hname, ("hosts", hname))
        hmap = c.mapping(hraw, ("hosts", hname), _HOST_KEYS)
        for vm_name, vraw in c.mapping(hmap.get("vms"), ("hosts", hname, "vms")).items():
            vpath: PathT = ("hosts", hname, "vms", vm_name)
            if isinstance(vraw, Mapping) and "host" in vraw and vraw["host"] != hname:
                raise c.fail((*vpath, "host"), f"VM listed under host {hname} names host "
                             f"{vraw['host']!r}")
            add_vm_entry(vm_name, vpath, hname, vraw)
    for vm_name, vraw in c.mapping(top.get("vms"), ("vms",)).items():
        vpath = ("vms", vm_name)
        vmap = c.mapping(vraw, vpath, _VM_KEYS)
        if "host" not in vmap:
            raise c.fail(vpath, "a VM listed at the top level needs `host:`")
        h = c.name(vmap["host"], (*vpath, "host"))
        if h not in hosts_raw:
            raise c.fail((*vpath, "host"), f"no host {h!r} (hosts: {', '.join(hosts_raw)})")
        add_vm_entry(vm_name, vpath, h, vmap)

    # First pass: everything but MACs; remember which vNICs still need one.
    macs: dict[str, PathT] = {}
    pending: list[tuple[int, int, int, PathT]] = []  # (host idx, vm idx, vif idx, path)
    hosts: list[dict[str, Any]] = []
    for hi, (hname, hraw) in enumerate(hosts_raw.items()):
        hosts.append(_host(c, hi, hname, hraw, vm_entries[hname], macs, pending))

    # Second pass: MACs that were not given, allocated deterministically from the seed.
    for hi, vi, fi, _path in pending:
        vm = hosts[hi]["vms"][vi]
        attempt = 0
        while (mac := allocate_mac(seed, vm["name"], fi, attempt)) in macs:
            attempt += 1
        macs[mac] = _path
        vm["vifs"][fi] = {**vm["vifs"][fi], "mac": mac}

    host_specs = tuple(_freeze_host(h) for h in hosts)
    by_name = {h.name: h for h in host_specs}
    physical, links, link_paths = _physical(c, top.get("physical"), by_name)
    mirrors = _mirrors(c, top.get("mirrors"), hosts_raw, by_name)
    topo = Topology(name=name, seed=seed, hosts=host_specs, physical=physical, links=links,
                    mirrors=mirrors, source=smap.source)
    _check_loops(c, topo, link_paths)
    _check_vm_names(c, topo, seen_vm)
    _check_duplicate_ips(c, topo, seen_vm)
    impairments = _impairments(c, top, topo)
    if impairments:
        topo = Topology(name=name, seed=seed, hosts=host_specs, physical=physical, links=links,
                        mirrors=mirrors, source=smap.source, impairments=impairments)
    return topo


def _check_vm_names(c: _Checker, topo: Topology, vm_paths: dict[str, PathT]) -> None:
    """A VM is looked up by its name (`fab["vm1"]`, scenario files), as are ports by their
    short names: a VM called like a port, PIF, switch or host would hide it."""
    others: dict[str, str] = {}
    for h in topo.hosts:
        others[h.name] = f"host {h.name}"
        for p in h.pifs:
            others.setdefault(p.name, f"PIF {h.name}/{p.name}")
        for sw in h.switches:
            others.setdefault(sw.name, f"switch {h.name}/{sw.name}")
            for n in h.networks:
                if n.switch == sw.name and 1 <= n.vlan <= 4094:
                    for u in sw.uplinks:
                        others.setdefault(f"{u}.{n.vlan}", f"VLAN PIF {h.name}/{u}.{n.vlan}")
        for vm in h.vms:
            for f in vm.vifs:
                others.setdefault(f.port, f"port {h.name}/{f.port} (of VM {vm.name})")
    for ps in topo.physical:
        others.setdefault(ps.name, f"physical switch {ps.name}")
        for port in ps.ports:
            others.setdefault(port.name, f"port {ps.name}/{port.name}")
    for vm in topo.vms:
        if vm.name in others:
            raise c.fail(vm_paths[vm.name], f"VM name {vm.name!r} is also the name of "
                         f"{others[vm.name]}: lookups by name would find the VM instead; "
                         "rename the VM")


def _vif_path(c: _Checker, vm_path: PathT, index: int) -> PathT:
    key = "nics" if (*vm_path, "nics", index) in c.smap.lines else "vifs"
    return (*vm_path, key, index, "ip")


def _check_duplicate_ips(c: _Checker, topo: Topology, vm_paths: dict[str, PathT]) -> None:
    """Two vNICs with one IPv4 address in one broadcast domain: ARP would answer for both."""
    domain = _l2_domains(topo)
    seen: dict[tuple[Any, ipaddress.IPv4Address], tuple[str, int]] = {}
    for h in topo.hosts:
        for vm in h.vms:
            for f in vm.vifs:
                if f.ip is None:
                    continue
                net = h.network(f.network)
                vlan = (f.vlan or 0) if net.vlan == 4095 else net.vlan
                key = (domain((h.name, net.switch, vlan)), f.ip.ip)
                if key in seen:
                    ovm, oi = seen[key]
                    here = _vif_path(c, vm_paths[vm.name], f.index)
                    there = c.smap.where(_vif_path(c, vm_paths[ovm], oi))
                    raise c.fail(here, f"IP address {f.ip.ip} is also VM {ovm}'s, in the same "
                                 f"broadcast domain (at {there}): ARP would answer for both")
                seen[key] = (vm.name, f.index)


def _l2_domains(topo: Topology) -> Any:
    """`(switch node, VLAN) → domain`: host switches joined through the physical network
    (ports and inter-switch trunks carrying the VLAN), as a union-find over networkx."""
    g: nx.Graph = nx.Graph()
    vlans = {n.vlan for h in topo.hosts for n in h.networks if n.vlan != 4095} | {
        f.vlan for f in topo.vifs if f.vlan is not None} | {0}
    ports = {(p.host, p.pif): p for ps in topo.physical for p in ps.ports}
    for h in topo.hosts:
        for sw in h.switches:
            for v in vlans:
                g.add_node((h.name, sw.name, v))
                for u in sw.uplinks:
                    port = ports.get((h.name, u))
                    if port is None:
                        continue
                    pv = _phys_vlan(port, v)
                    if pv is not None:
                        g.add_edge((h.name, sw.name, v), ("phys", port.switch, pv))
    phys_vlans = vlans | {p.vlan for p in ports.values()}
    for link in topo.links:
        for v in (link.vlans or phys_vlans):
            g.add_edge(("phys", link.a, v), ("phys", link.b, v))
    comp = {n: i for i, nodes in enumerate(nx.connected_components(g)) for n in nodes}
    return lambda node: comp.get(node, node)


def _phys_vlan(port: PhysPortSpec, v: int) -> int | None:
    """The VLAN of the physical switch a frame of host-side VLAN `v` joins at `port`."""
    if v == 0:
        return port.vlan if port.mode != "trunk" else 0
    if port.mode == "access":
        return None
    return v if not port.vlans or v in port.vlans else None


_CABLE_KEYS = ("between", "a_to_b", "b_to_a")


def _impairments(c: _Checker, top: dict[str, Any], topo: Topology) -> tuple[ImpairSpec, ...]:
    """`impair:` on PIFs, physical switch ports and vNICs (both directions of that port), and
    `links:` (per cable, per direction: `a_to_b` = what the first port sends)."""
    out: dict[tuple[str, str, str], ImpairSpec] = {}

    def fail(path: PathT, msg: str) -> TopologyError:
        return c.fail(path, msg)

    def add(port: str, directions: tuple[str, ...], raw: Any, path: PathT,
            layer: str = "port") -> None:
        imp = parse_impairment(raw, path, fail)
        for d in directions:
            prev = out.get((port, d, layer))
            if prev is not None:
                raise c.fail(path, f"the cable direction from {port} is already impaired at "
                             f"{prev.where}")
            if imp.active:
                out[port, d, layer] = ImpairSpec(port, d, imp, c.smap.where(path), layer)

    both = ("out", "in")
    for h in topo.hosts:
        hraw = top["hosts"][h.name] or {}
        for pname, praw in (hraw.get("pifs") or {}).items():
            if isinstance(praw, Mapping) and "impair" in praw:
                add(f"{h.name}/{pname}", both, praw["impair"],
                    ("hosts", h.name, "pifs", pname, "impair"))
    for vm in topo.vms:
        vraw, vpath = None, None
        for base in (("hosts", vm.host, "vms", vm.name), ("vms", vm.name)):
            node: Any = top
            for k in base:
                node = node.get(k) if isinstance(node, Mapping) else None
            if isinstance(node, Mapping):
                vraw, vpath = node, base
                break
        if vraw is None or vpath is None:
            continue
        key = "nics" if "nics" in vraw else "vifs"
        for f, fraw in zip(vm.vifs, vraw.get(key) or [], strict=False):
            if isinstance(fraw, Mapping) and "impair" in fraw:
                add(f"{vm.host}/{f.port}", both, fraw["impair"],
                    (*vpath, key, f.index, "impair"))
    ends: dict[str, str] = {}  # every cable end -> the other end
    for ps in topo.physical:
        praw = (top.get("physical") or {})[ps.name] or {}
        for p in ps.ports:
            a, b = f"{ps.name}/{p.name}", f"{p.host}/{p.pif}"
            ends[a], ends[b] = b, a
            raw = (praw.get("ports") or {}).get(p.name)
            if isinstance(raw, Mapping) and "impair" in raw:
                add(a, both, raw["impair"], ("physical", ps.name, "ports", p.name, "impair"))
    for lk in topo.links:
        a, b = f"{lk.a}/to-{lk.b}", f"{lk.b}/to-{lk.a}"
        ends[a], ends[b] = b, a
    for i, lraw in enumerate(c.seq(top.get("links"), ("links",))):
        lp: PathT = ("links", i)
        lm = c.mapping(lraw, lp, _CABLE_KEYS, none_ok=False)
        between = lm.get("between")
        if not isinstance(between, list) or len(between) != 2 or \
                not all(isinstance(e, str) for e in between):
            raise c.fail((*lp, "between"), "give the cable's two ends: [SWITCH/PORT, HOST/PIF]")
        a, b = between
        for j, e in enumerate(between):
            if e not in ends:
                known = ", ".join(sorted(ends)[:6]) or "none"
                raise c.fail((*lp, "between", j), f"{e!r} is not the end of a cable (cable "
                             f"ends: {known}{' ...' if len(ends) > 6 else ''})")
        if ends[a] != b:
            raise c.fail((*lp, "between"), f"{a} and {b} are not the two ends of one cable "
                         f"({a} is cabled to {ends[a]})")
        if "a_to_b" not in lm and "b_to_a" not in lm:
            raise c.fail(lp, "say what to impair: a_to_b, b_to_a or both")
        if "a_to_b" in lm:
            add(a, ("out",), lm["a_to_b"], (*lp, "a_to_b"), "cable")
        if "b_to_a" in lm:
            add(b, ("out",), lm["b_to_a"], (*lp, "b_to_a"), "cable")
    return tuple(out.values())


def _host(c: _Checker, host_index: int, hname: str, hraw: Any,
          vms: list[tuple[PathT, str, dict[str, Any]]],
          macs: dict[str, PathT], pending: list[tuple[int, int, int, PathT]]) -> dict[str, Any]:
    hp: PathT = ("hosts", hname)
    h = c.mapping(hraw, hp, _HOST_KEYS)
    htype = h.get("type", "xen")
    if htype not in HOST_TYPES:
        raise c.fail((*hp, "type"), f"host type must be one of {', '.join(HOST_TYPES)}, "
                     f"got {htype!r}")

    pifs: dict[str, PifSpec] = {}
    for pname, praw in c.mapping(h.get("pifs"), (*hp, "pifs")).items():
        pp = (*hp, "pifs", pname)
        c.name(pname, pp)
        p = c.mapping(praw, pp, _PIF_KEYS)
        mtu = c.integer(p.get("mtu", 1500), (*pp, "mtu"), 68, 9216, "MTU")
        pifs[pname] = PifSpec(hname, pname, mtu, c.boolean(p.get("up"), (*pp, "up"), True))

    switches: dict[str, SwitchSpec] = {}
    pif_owner: dict[str, str] = {}
    for sname, sraw in c.mapping(h.get("switches"), (*hp, "switches")).items():
        sp = (*hp, "switches", sname)
        c.name(sname, sp)
        s = c.mapping(sraw, sp, _SWITCH_KEYS)
        uplinks = c.names(s.get("uplinks"), (*sp, "uplinks"))
        for i, u in enumerate(uplinks):
            if u not in pifs:
                raise c.fail((*sp, "uplinks", i), f"no PIF {u!r} on host {hname} "
                             f"(PIFs: {', '.join(pifs) or 'none'})")
            if u in pif_owner:
                raise c.fail((*sp, "uplinks", i), f"PIF {u} is already an uplink of switch "
                             f"{pif_owner[u]}")
            pif_owner[u] = sname
        if len(set(uplinks)) != len(uplinks):
            raise c.fail((*sp, "uplinks"), "an uplink is listed twice")
        if "lag" in s and "bond" in s:
            raise c.fail((*sp, "bond"), "a switch has either a `lag:` (ESXi) or a `bond:` (Xen)")
        lag_key = "lag" if "lag" in s else "bond"
        lag = host_lag(c, s.get(lag_key), (*sp, lag_key), htype, uplinks)
        team_uplinks = uplinks if lag is None else (
            lag.name, *(u for u in uplinks if u not in lag.members))  # the LAG is one uplink
        teaming = _teaming(c, s.get("teaming"), (*sp, "teaming"), team_uplinks, htype)
        size = c.integer(s.get("mac_table_size", 8192), (*sp, "mac_table_size"), 1, 10**6,
                         "MAC table size")
        aging = s.get("aging", 300)
        if isinstance(aging, bool) or not isinstance(aging, (int, float)) or not \
                15 <= aging <= 3600:
            raise c.fail((*sp, "aging"), f"aging must be 15-3600 seconds, got {aging!r}")
        pvlans = ()
        if s.get("pvlans") is not None:
            if htype != "esxi":
                raise c.fail((*sp, "pvlans"), "private VLANs are a vSphere distributed switch "
                             "feature; XenServer has none")
            pvlans = _pvlans(c, s["pvlans"], (*sp, "pvlans"))
        if s.get("uplink_traffic_rules") is not None and htype != "esxi":
            raise c.fail((*sp, "uplink_traffic_rules"), "uplink_traffic_rules is a vSphere "
                         f"distributed switch setting (its uplink port group); host {hname} "
                         f"is {htype}")
        switches[sname] = SwitchSpec(hname, sname, uplinks, teaming, size, float(aging),
                                     pvlans=pvlans, mtu=_mtu(c, s, sp), lag=lag,
                                     discovery=_discovery(c, s.get("discovery"),
                                                          (*sp, "discovery"), htype),
                                     ipfix=_ipfix(c, s.get("ipfix"), (*sp, "ipfix")),
                                     uplink_traffic_rules=policyspec.parse_traffic_rules(
                                         s.get("uplink_traffic_rules"),
                                         (*sp, "uplink_traffic_rules"), c.fail))

    networks: dict[str, NetworkSpec] = {}
    nets_raw = dict(c.mapping(h.get("networks"), (*hp, "networks")))
    pgs_raw = c.mapping(h.get("port_groups"), (*hp, "port_groups"))
    net_paths: dict[str, PathT] = {n: (*hp, "networks", n) for n in nets_raw}
    for n, v in pgs_raw.items():
        if n in nets_raw:
            raise c.fail((*hp, "port_groups", n), f"{n!r} is also listed under networks")
        nets_raw[n] = v
        net_paths[n] = (*hp, "port_groups", n)
    xapi = 0
    for nname, nraw in nets_raw.items():
        np_ = net_paths[nname]
        c.name(nname, np_)
        n = c.mapping(nraw, np_, _NET_KEYS)
        internal = c.boolean(n.get("internal"), (*np_, "internal"), False)
        vlan = c.vlan(n.get("vlan", 0), (*np_, "vlan")) if "vlan" in n else 0
        if "switch" in n:
            sw = c.name(n["switch"], (*np_, "switch"))
            if sw not in switches:
                raise c.fail((*np_, "switch"), f"no switch {sw!r} on host {hname} "
                             f"(switches: {', '.join(switches) or 'none'})")
            if internal and switches[sw].uplinks:
                raise c.fail((*np_, "internal"), f"network is internal but switch {sw} has "
                             f"uplinks {', '.join(switches[sw].uplinks)}")
        elif internal:
            # Xen gives every internal network its own bridge xapiN; no PIF at all.
            while (sw := f"xapi{xapi}") in switches:
                xapi += 1
            switches[sw] = SwitchSpec(hname, sw, implicit=True)
        else:
            explicit = [s for s in switches.values() if not s.implicit]
            if len(explicit) != 1:
                raise c.fail(np_, f"say which switch carries network {nname} "
                             f"(`switch:` or `internal: true`)")
            sw = explicit[0].name
        if internal and vlan:
            raise c.fail((*np_, "vlan"), "an internal network cannot be a VLAN "
                         "(XenServer cannot create internal VLAN networks)")
        sec = c.mapping(n.get("security"), (*np_, "security"), _SEC_KEYS)
        security = SecuritySpec(
            promiscuous=c.boolean(sec.get("promiscuous"), (*np_, "security", "promiscuous"),
                                  False),
            mac_changes=c.boolean(sec.get("mac_changes"), (*np_, "security", "mac_changes"),
                                  True),
            forged_transmits=c.boolean(sec.get("forged_transmits"),
                                       (*np_, "security", "forged_transmits"), True))
        shaping = _shaping(c, n.get("shaping"), (*np_, "shaping"))
        teaming = None
        if n.get("teaming") is not None:
            if htype != "esxi":
                raise c.fail((*np_, "teaming"), "teaming per network is an ESXi port group "
                             "override; on Xen, team (bond) the PIFs at the switch")
            teaming = _teaming(c, n["teaming"], (*np_, "teaming"), switches[sw].uplinks, htype)
        if htype == "xen" and 1 <= vlan <= 4094:
            twin = next((o for o in networks.values() if o.switch == sw and o.vlan == vlan), None)
            if twin is not None:  # xapi: one VLAN PIF ethX.VID, one network
                raise c.fail((*np_, "vlan"), f"VLAN {vlan} on {sw} is already network "
                             f"{twin.name}")
        for key in policyspec.NET_KEYS:  # vDS filtering/egress shaping; XenServer locking
            if n.get(key) is not None and (htype == "xen") != (key == "default_locking_mode"):
                raise c.fail((*np_, key), f"{key} is a "
                             f"{'XenServer network' if htype != 'xen' else 'vSphere port group'}"
                             f" setting; host {hname} is {htype}")
        networks[nname] = NetworkSpec(
            hname, nname, sw, vlan, internal, security, shaping, teaming, mtu=_mtu(c, n, np_),
            blocked=c.boolean(n.get("blocked"), (*np_, "blocked"), False),
            egress_shaping=_shaping(c, n.get("egress_shaping"), (*np_, "egress_shaping")),
            traffic_rules=policyspec.parse_traffic_rules(
                n.get("traffic_rules"), (*np_, "traffic_rules"), c.fail),
            default_locking_mode=policyspec.parse_locking_default(
                n.get("default_locking_mode"), (*np_, "default_locking_mode"), c.fail).value)

    vm_dicts: list[dict[str, Any]] = []
    domids: dict[int, PathT] = {}
    next_domid = 1
    for vi, (vp, vname, v) in enumerate(vms):
        if "domid" in v:
            domid = c.integer(v["domid"], (*vp, "domid"), 1, 32752, "domid")
        else:
            while next_domid in domids:
                next_domid += 1
            domid = next_domid
        if domid in domids:
            raise c.fail((*vp, "domid"), f"domid {domid} is already used on host {hname} "
                         f"by {c.smap.where(domids[domid])}")
        domids[domid] = vp
        if "vifs" in v and "nics" in v:
            raise c.fail((*vp, "nics"), "give either vifs or nics, not both")
        key = "nics" if "nics" in v else "vifs"
        vifs: list[dict[str, Any]] = []
        for fi, fraw in enumerate(c.seq(v.get(key), (*vp, key))):
            fp = (*vp, key, fi)
            f = c.mapping(fraw, fp, _VIF_KEYS, none_ok=False)
            if "network" not in f:
                raise c.fail(fp, "a vNIC needs `network:`")
            net = c.name(f["network"], (*fp, "network"))
            if net not in networks:
                raise c.fail((*fp, "network"), f"no network {net!r} on host {hname}")
            port = f"vif{domid}.{fi}" if htype == "xen" else f"{vname}.eth{fi}"
            ip = None
            if f.get("ip") is not None:
                try:
                    ip = ipaddress.IPv4Interface(str(f["ip"]))
                except ValueError as exc:
                    raise c.fail((*fp, "ip"), f"not an IPv4 address/prefix: {f['ip']!r}") from exc
                if "/" not in str(f["ip"]):
                    raise c.fail((*fp, "ip"), f"give the prefix length too, e.g. {f['ip']}/24")
            guest_vlan = None
            if f.get("vlan") is not None:
                guest_vlan = c.vlan(f["vlan"], (*fp, "vlan"), lo=1, hi=4094)
                if networks[net].vlan != 4095:
                    raise c.fail((*fp, "vlan"), f"the guest can tag frames only on a VLAN "
                                 f"4095 (VGT) network; {net} has VLAN {networks[net].vlan}")
            mac = None
            if f.get("mac") is not None:
                mac = str(f["mac"]).lower().replace("-", ":")
                if not _MAC_RE.match(mac):
                    raise c.fail((*fp, "mac"), f"not a MAC address: {f['mac']!r}")
                if int(mac[:2], 16) & 1:
                    raise c.fail((*fp, "mac"), f"{mac} is a multicast address")
                if mac in macs:
                    raise c.fail((*fp, "mac"), f"duplicate MAC {mac}: already used by "
                                 f"{c.smap.where(macs[mac])}")
                macs[mac] = (*fp, "mac")
            else:
                pending.append((host_index, vi, fi, fp))
            attach = _attach(c, f.get("attach"), (*fp, "attach"))
            bad = next((k for k in policyspec.VIF_KEYS if f.get(k) is not None), None)
            if bad is not None and htype != "xen":
                raise c.fail((*fp, bad), f"{bad} is a XenServer VIF setting; host {hname} "
                             f"is {htype}")
            locking, qos = policyspec.parse_vif_policy(f, fp, c.fail)
            vifs.append({"vm": vname, "index": fi, "port": port, "network": net,
                         "mac": mac, "ip": ip, "vlan": guest_vlan, "attach": attach,
                         "mtu": _mtu(c, f, fp) or 1500, "locking": locking, "qos": qos})
        if len({v["attach"] is None for v in vifs}) > 1:
            raise c.fail((*vp, key), "attach all of a VM's vNICs to real interfaces or none "
                         "(a VM runs either the built-in guest stack or a real one)")
        router = c.boolean(v.get("router"), (*vp, "router"), False)
        if router and len(vifs) < 2:
            raise c.fail((*vp, "router"), "a router VM needs at least two vNICs")
        gateway = None
        if v.get("gateway") is not None:
            gateway = _addr(c, v["gateway"], (*vp, "gateway"))
        routes = []
        for ri, rraw in enumerate(c.seq(v.get("routes"), (*vp, "routes"))):
            rp = (*vp, "routes", ri)
            r = c.mapping(rraw, rp, _ROUTE_KEYS, none_ok=False)
            if "to" not in r or "via" not in r:
                raise c.fail(rp, "a route needs `to:` and `via:`")
            try:
                to = ipaddress.IPv4Network(str(r["to"]), strict=True)
            except ValueError as exc:
                raise c.fail((*rp, "to"), f"not an IPv4 network: {r['to']!r}") from exc
            routes.append(RouteSpec(to, _addr(c, r["via"], (*rp, "via"))))
        vm_dicts.append({"host": hname, "name": vname, "domid": domid, "vifs": vifs,
                         "router": router, "gateway": gateway, "routes": tuple(routes),
                         "disks": _disks(c, v.get("disks"), (*vp, "disks"), htype)})
    return {"name": hname, "type": htype, "pifs": tuple(pifs.values()),
            "switches": tuple(switches.values()), "networks": tuple(networks.values()),
            "vms": vm_dicts}


_IFNAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")


def _attach(c: _Checker, raw: Any, path: PathT) -> AttachSpec | None:
    """`attach: netns`, `attach: {tap: NAME}` or `attach: {iface: NAME}`."""
    if raw is None:
        return None
    if raw == "netns":
        return AttachSpec("netns")
    if isinstance(raw, dict) and len(raw) == 1:
        kind, name = next(iter(raw.items()))
        if kind in ("tap", "iface"):
            if not isinstance(name, str) or not _IFNAME_RE.fullmatch(name):
                raise c.fail((*path, kind), f"{name!r} is not a Linux interface name "
                             "(1-15 letters, digits, _ . : -)")
            return AttachSpec(kind, name)
    raise c.fail(path, f"attach must be netns, {{tap: NAME}} or {{iface: NAME}}, not {raw!r}")


def _disks(c: _Checker, raw: Any, path: PathT, htype: str) -> tuple[DiskSpec, ...]:
    """`disks:` of a VM: a list of sources (xvda, xvdb, ... in order) or of
    `{device, source, mode: rw|ro}`."""
    disks: list[DiskSpec] = []
    seen: dict[str, PathT] = {}
    for di, draw in enumerate(c.seq(raw, path)):
        dp = (*path, di)
        d = {"source": draw} if isinstance(draw, str) else c.mapping(draw, dp, _DISK_KEYS,
                                                                      none_ok=False)
        if htype != "xen":
            raise c.fail(dp, "disks are served through Xen blkif rings: only VMs on xen "
                         "hosts have them")
        if not isinstance(d.get("source"), str) or not d["source"]:
            raise c.fail(dp, "a disk needs `source:` (a .vhd, a raw file, lvm:VG/LV:PV or "
                         "mem:SIZE)")
        device = d.get("device", f"xvd{chr(ord('a') + di)}" if di < 16 else "")
        m = re.fullmatch(r"xvd([a-p])", str(device))
        if not m:
            raise c.fail((*dp, "device"), f"device {device!r}: expected xvda ... xvdp")
        if device in seen:
            raise c.fail((*dp, "device"), f"{device} is already {c.smap.where(seen[device])}")
        seen[device] = dp
        mode = d.get("mode", "rw")
        if mode not in ("rw", "ro"):
            raise c.fail((*dp, "mode"), f"mode {mode!r}: expected rw or ro")
        if d["source"].startswith("mem:"):
            _check_mem_disk(c, d["source"], dp if isinstance(draw, str) else (*dp, "source"))
        disks.append(DiskSpec(str(device), (202 << 8) | 16 * (ord(m.group(1)) - ord("a")),
                              d["source"], mode == "ro"))
    return tuple(disks)


def _check_mem_disk(c: _Checker, source: str, path: PathT) -> None:
    """A `mem:SIZE` disk is held in RAM: its size must parse and fit this machine's memory."""
    from storage.errors import StorageError
    from storage.units import parse_size

    try:
        size = parse_size(source[4:])
    except StorageError as exc:
        raise c.fail(path, f"{source}: {exc}") from None
    ram = _physical_memory()
    if ram is not None and size > ram:
        raise c.fail(path, f"{source} is {size:,} bytes, more than this machine's "
                     f"{ram:,} bytes of RAM (a memory disk is held in RAM): use a .vhd or "
                     "raw file")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _addr(c: _Checker, value: Any, path: PathT) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError as exc:
        raise c.fail(path, f"not an IPv4 address: {value!r}") from exc


def _teaming(c: _Checker, raw: Any, path: PathT, uplinks: tuple[str, ...],
             htype: str) -> TeamingSpec | None:
    if raw is None:
        # ESXi teams every multi-uplink vSwitch (all active, port id); a Xen bridge with two
        # PIFs and no bond is a plain bridge between them.
        if htype == "esxi" and len(uplinks) > 1:
            return TeamingSpec("port-id", uplinks)
        return None
    t = c.mapping(raw, path, _TEAM_KEYS, none_ok=False)
    policy = t.get("policy", "port-id")
    if policy not in TEAMING_POLICIES:
        raise c.fail((*path, "policy"), f"teaming policy must be one of "
                     f"{', '.join(TEAMING_POLICIES)}, got {policy!r}")
    active = c.names(t["active"], (*path, "active")) if "active" in t else ()
    standby = c.names(t.get("standby"), (*path, "standby"))
    for key, names in (("active", active), ("standby", standby)):
        for i, n in enumerate(names):
            if n not in uplinks:
                raise c.fail((*path, key, i), f"{n} is not an uplink of this switch "
                             f"(uplinks: {', '.join(uplinks) or 'none'})")
    if set(active) & set(standby):
        raise c.fail((*path, "standby"), "an uplink cannot be both active and standby")
    if "active" not in t:
        active = tuple(u for u in uplinks if u not in standby)
    if not active:
        raise c.fail((*path, "active"), "teaming needs at least one active uplink")
    if htype == "xen" and policy in ("ip-hash", "src-mac", "load-based"):
        raise c.fail((*path, "policy"), f"{policy} is a vSphere teaming policy; XenServer "
                     "bonds are active-backup, balance-slb or lacp")
    detect = t.get("failure_detection", "link")
    if detect not in FAILURE_DETECTION:
        raise c.fail((*path, "failure_detection"), "failure_detection must be one of "
                     f"{', '.join(FAILURE_DETECTION)}, got {detect!r}")
    if htype == "xen" and detect != "link":
        raise c.fail((*path, "failure_detection"), "beacon probing is a vSphere failure "
                     "detection; XenServer bonds watch link status")
    return TeamingSpec(policy, active, standby,
                       c.boolean(t.get("notify_switches"), (*path, "notify_switches"), True),
                       c.boolean(t.get("failback"), (*path, "failback"), True), detect)


def _shaping(c: _Checker, raw: Any, path: PathT) -> ShapingSpec | None:
    if raw is None:
        return None
    s = c.mapping(raw, path, _SHAPE_KEYS, none_ok=False)
    if "average" not in s:
        raise c.fail(path, "shaping needs `average:` (bits/s)")
    avg = c.rate(s["average"], (*path, "average"), bits=True)
    peak = c.rate(s["peak"], (*path, "peak"), bits=True) if "peak" in s else avg
    if peak < avg:
        raise c.fail((*path, "peak"), f"peak {peak} bit/s is below average {avg} bit/s "
                     "(peak must be >= average)")
    burst = c.rate(s["burst"], (*path, "burst"), bits=False) if "burst" in s else 1518
    if burst < 64:
        raise c.fail((*path, "burst"), f"burst {burst} bytes is smaller than one frame")
    return ShapingSpec(avg, peak, burst)


def _mtu(c: _Checker, m: Mapping[str, Any], path: PathT) -> int | None:
    """The `mtu:` key of a mapping (68-9216; jumbo frames are 9000), None if absent."""
    if m.get("mtu") is None:
        return None
    return c.integer(m["mtu"], (*path, "mtu"), 68, 9216, "MTU")


def _discovery(c: _Checker, raw: Any, path: PathT, htype: str) -> DiscoveryConfig | None:
    """A host switch's `discovery: {protocol: cdp|lldp, operation: none|down|listen|advertise|
    both}` (vSphere LinkDiscoveryProtocolConfig). XenServer's Open vSwitch has LLDP only,
    sending and receiving together (Interface `lldp:enable=true`): `{protocol: lldp}`."""
    if raw is None:
        return None
    d = c.mapping(raw, path, ("protocol", "operation"), none_ok=False)
    proto = d.get("protocol", "lldp" if htype == "xen" else "cdp")
    if proto not in ("cdp", "lldp"):
        raise c.fail((*path, "protocol"), f"discovery protocol must be cdp or lldp, got {proto!r}")
    op = d.get("operation", "both" if htype == "xen" else "listen")
    if op not in ("none", "down", "listen", "advertise", "both"):
        raise c.fail((*path, "operation"), "discovery operation must be none (down), listen, "
                     f"advertise or both, got {op!r}")
    if htype == "xen" and (proto != "lldp" or op not in ("both", "none", "down")):
        raise c.fail(path, "XenServer's Open vSwitch speaks LLDP only, sending and receiving "
                     "together (ovs-vsctl set Interface ethX lldp:enable=true): use "
                     "{protocol: lldp} (operation both or none)")
    return DiscoveryConfig((proto,), op)


def _phys_discovery(c: _Checker, raw: Any, path: PathT
                    ) -> tuple[DiscoveryConfig | None, str | None, str]:
    """A physical switch's `discovery: {protocols: [cdp, lldp], operation: both, mgmt: IP,
    platform: TEXT}` (or `discovery: cdp`): (config, management address, platform)."""
    if raw is None:
        return None, None, "hvsim 802.1Q switch"
    if isinstance(raw, str):
        raw = {"protocols": [raw]}
    d = c.mapping(raw, path, ("protocols", "operation", "mgmt", "platform"), none_ok=False)
    protos = d.get("protocols", ["cdp"])
    if isinstance(protos, str):
        protos = [protos]
    protos = c.names(protos, (*path, "protocols"))
    for i, p in enumerate(protos):
        if p not in ("cdp", "lldp"):
            raise c.fail((*path, "protocols", i), f"discovery protocol must be cdp or lldp, "
                         f"got {p!r}")
    if not protos or len(set(protos)) != len(protos):
        raise c.fail((*path, "protocols"), "give cdp, lldp or both, once each")
    op = d.get("operation", "both")
    if op not in ("none", "down", "listen", "advertise", "both"):
        raise c.fail((*path, "operation"), "discovery operation must be none, listen, "
                     f"advertise or both, got {op!r}")
    mgmt = str(_addr(c, d["mgmt"], (*path, "mgmt"))) if "mgmt" in d else None
    platform = d.get("platform", "hvsim 802.1Q switch")
    if not isinstance(platform, str) or not platform or len(platform) > 200:
        raise c.fail((*path, "platform"), "platform is a text of 1-200 characters")
    return DiscoveryConfig(tuple(protos), op), mgmt, platform


def _pvlans(c: _Checker, raw: Any, path: PathT) -> tuple[tuple[int, int, str], ...]:
    """`{primary: {secondary: isolated|community}}` → checked (primary, secondary, type)
    entries, the primary itself promiscuous (vSphere's `VMwareDVSPvlanMapEntry` list)."""
    def vlan_keys(value: Any, where: PathT) -> dict[int, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise c.fail(where, "expected a mapping like {100: {101: isolated, 102: community}}"
                         f", got {_kind(value)}")
        return dict(value)

    entries: list[PvlanEntry] = []
    for primary, secs in vlan_keys(raw, path).items():
        pp = (*path, primary)
        c.vlan(primary, pp, lo=1, hi=4094)
        try:
            entries.append(PvlanEntry(primary, primary, "promiscuous"))  # type: ignore[arg-type]
            for sec, kind in vlan_keys(secs, pp).items():
                c.vlan(sec, (*pp, sec), lo=1, hi=4094)
                if sec != primary:
                    entries.append(PvlanEntry(primary, sec, kind))
                elif kind != "promiscuous":
                    raise ConfigError(f"pvlan {sec}: only the promiscuous secondary has the "
                                      f"primary's ID; {kind!r} needs another one")
            PvlanMap(entries)
        except ConfigError as exc:
            raise c.fail(pp, str(exc)) from None
    return tuple((e.primary, e.secondary, e.type.value) for e in PvlanMap(entries).entries)


def _freeze_host(h: dict[str, Any]) -> HostSpec:
    vms = tuple(
        VmSpec(host=v["host"], name=v["name"], domid=v["domid"],
               vifs=tuple(VifSpec(**f) for f in v["vifs"]), router=v["router"],
               gateway=v["gateway"], routes=v["routes"], disks=v.get("disks", ()))
        for v in h["vms"])
    return HostSpec(h["name"], h["type"], h["pifs"], h["switches"], h["networks"], vms)


def _physical(c: _Checker, raw: Any, hosts: dict[str, HostSpec]
              ) -> tuple[tuple[PhysSwitchSpec, ...], tuple[PhysLinkSpec, ...], list[PathT]]:
    phys = c.mapping(raw, ("physical",))
    cabled: dict[tuple[str, str], PathT] = {}
    switches: list[PhysSwitchSpec] = []
    raw_links: list[tuple[PathT, str, str, Any]] = []
    for sname, sraw in phys.items():
        sp: PathT = ("physical", sname)
        c.name(sname, sp)
        if sname in hosts:
            raise c.fail(sp, f"physical switch {sname!r} has the name of a host")
        s = c.mapping(sraw, sp, _PHYS_KEYS)
        ports = []
        for pname, praw in c.mapping(s.get("ports"), (*sp, "ports")).items():
            pp = (*sp, "ports", pname)
            host, _, pif = str(pname).partition(".")
            if not pif:
                raise c.fail(pp, f"a port is named HOST.PIF (like xen1.eth0), got {pname!r}")
            if host not in hosts:
                raise c.fail(pp, f"no host {host!r} (hosts: {', '.join(hosts)})")
            if pif not in {p.name for p in hosts[host].pifs}:
                raise c.fail(pp, f"no PIF {pif!r} on host {host}")
            if (host, pif) in cabled:
                raise c.fail(pp, f"{pname} is already cabled at {c.smap.where(cabled[host, pif])}")
            cabled[host, pif] = pp
            p = c.mapping(praw, pp, _PORT_KEYS)
            mode = p.get("mode", "trunk")
            if mode not in PORT_MODES:
                raise c.fail((*pp, "mode"), f"port mode must be one of {', '.join(PORT_MODES)}, "
                             f"got {mode!r}")
            vlans = c.vlans(p.get("vlans"), (*pp, "vlans"))
            vkey = "native" if "native" in p else "vlan"
            vlan = c.vlan(p.get(vkey, 0), (*pp, vkey)) if vkey in p else 0
            if vlan == 4095:
                raise c.fail((*pp, vkey), "VLAN 4095 is not a VLAN on a physical port")
            if mode == "access" and vlans:
                raise c.fail((*pp, "vlans"), "an access port carries one VLAN: use `vlan:`")
            if mode.startswith("native") and not vlan:
                raise c.fail(pp, f"a {mode} port needs `native:` (its native VLAN)")
            ifname = p.get("ifname", "")
            if not isinstance(ifname, str) or not re.fullmatch(r"[A-Za-z0-9_./:\-]{0,64}",
                                                               ifname):
                raise c.fail((*pp, "ifname"), f"ifname is an interface name like Gi1/0/7 "
                             f"(letters, digits, / . : - _), got {ifname!r}")
            ports.append(PhysPortSpec(sname, host, pif, mode, vlans, vlan,
                                      _mtu(c, p, pp) or 1500, ifname))
        for li, lraw in enumerate(c.seq(s.get("links"), (*sp, "links"))):
            raw_links.append(((*sp, "links", li), sname, "", lraw))
        switches.append(PhysSwitchSpec(sname, tuple(ports),
                                       _pvlans(c, s.get("pvlans"), (*sp, "pvlans")),
                                       channels(c, s.get("channels"), (*sp, "channels"),
                                                {p.name: p for p in ports}),
                                       *_phys_discovery(c, s.get("discovery"),
                                                        (*sp, "discovery")),
                                       rspan_vlans=c.vlans(s.get("rspan_vlans"),
                                                           (*sp, "rspan_vlans"))))
    names = {s.name for s in switches}
    links = []
    for lp, a, _, lraw in raw_links:
        if isinstance(lraw, str):
            lraw = {lraw: {}}
        lm = c.mapping(lraw, lp, none_ok=False)
        if len(lm) != 1:
            raise c.fail(lp, "a link is `OTHER_SWITCH: {vlans: [...]}` (one per item)")
        (b, opts), = lm.items()
        if b not in names:
            raise c.fail((*lp, b), f"no physical switch {b!r}")
        if b == a:
            raise c.fail((*lp, b), "a switch cabled to itself is a loop")
        o = c.mapping(opts, (*lp, b), _LINK_KEYS)
        links.append((lp, PhysLinkSpec(a, b, c.vlans(o.get("vlans"), (*lp, b, "vlans")),
                                       _mtu(c, o, (*lp, b)) or 1500)))
    return (tuple(switches), tuple(link for _, link in links), [lp for lp, _ in links])


def _ipfix(c: _Checker, raw: Any, path: PathT) -> IpfixConfig | None:
    """A switch's `ipfix:` (`VMwareIpfixConfig`), checked as vSphere checks it."""
    if raw is None:
        return None
    m = c.mapping(raw, path, _IPFIX_KEYS, none_ok=False)
    if "collector_ip" not in m:
        raise c.fail(path, "IPFIX needs `collector_ip:`")
    try:
        return IpfixConfig(**{k: (str(v) if k == "collector_ip" else v) for k, v in m.items()})
    except ConfigError as exc:
        field = str(exc).split(":", 1)[1].split()[0] if ":" in str(exc) else ""
        raise c.fail((*path, field) if field in m else path,
                     str(exc).removeprefix("ipfix: ")) from None


def _mirrors(c: _Checker, raw: Any, hosts_raw: dict[str, Any],
             hosts: dict[str, HostSpec]) -> tuple[MirrorSpec, ...]:
    out: list[MirrorSpec] = []
    entries: list[tuple[PathT, str, str, Any]] = []
    for hname, hraw in hosts_raw.items():
        for mname, mraw in c.mapping(hraw.get("mirrors") if isinstance(hraw, Mapping) else None,
                                     ("hosts", hname, "mirrors")).items():
            entries.append((("hosts", hname, "mirrors", mname), hname, mname, mraw))
    if raw is not None:
        raise c.fail(("mirrors",), "mirror sessions live under their host: "
                     "hosts.HOST.mirrors.NAME")
    for mp, hname, mname, mraw in entries:
        c.name(mname, mp)
        m = c.mapping(mraw, mp, _MIRROR_KEYS, none_ok=False)
        host = hosts[hname]
        ports = {f.port: (vm, f) for vm in host.vms for f in vm.vifs}
        kind = m.get("type", "dvPortMirror")
        if kind not in SESSION_TYPES:
            raise c.fail((*mp, "type"), f"session type is one of {', '.join(SESSION_TYPES)}, "
                         f"got {kind!r}")
        remote_src = kind in ("remoteMirrorSource", "encapsulatedRemoteMirrorSource")
        dest = ""
        sw = m.get("switch")
        if kind == "encapsulatedRemoteMirrorSource":
            if "destination" not in m:
                raise c.fail(mp, "an ERSPAN session needs `destination:` (the collector's IP)")
            dest = _ipv4(c, m["destination"], (*mp, "destination"))
            if "source_ip" not in m:
                raise c.fail(mp, "an ERSPAN session needs `source_ip:` (its VMkernel address)")
            _ipv4(c, m["source_ip"], (*mp, "source_ip"))
        elif kind == "remoteMirrorSource":
            if "destination" in m:
                raise c.fail((*mp, "destination"), "an RSPAN source sends into "
                             "`encapsulation_vlan:` out of `uplinks:`; it has no destination")
        else:
            if "destination" not in m:
                raise c.fail(mp, "a mirror session needs `destination:`")
            dest = c.name(m["destination"], (*mp, "destination"))
            if dest not in ports:
                raise c.fail((*mp, "destination"), f"no vNIC port {dest!r} on host {hname} "
                             f"(ports: {', '.join(ports) or 'none'})")
            dest_net = host.network(ports[dest][1].network)
            sw = m.get("switch", dest_net.switch)
            if sw != dest_net.switch:
                raise c.fail((*mp, "switch"), f"destination {dest} is on switch "
                             f"{dest_net.switch}")
        sources = c.names(m.get("sources"), (*mp, "sources"))
        for i, s in enumerate(sources):
            if s not in ports:
                raise c.fail((*mp, "sources", i), f"no vNIC port {s!r} on host {hname}")
            if s == dest:
                raise c.fail((*mp, "sources", i), "a port cannot mirror to itself")
        vlans = c.vlans(m.get("vlans"), (*mp, "vlans"))
        if kind == "remoteMirrorDest":
            if sources or len(vlans) != 1:
                raise c.fail(mp, "an RSPAN destination takes one RSPAN VLAN: `vlans: [VID]` "
                             "(and no `sources:`)")
        elif not sources and not vlans:
            raise c.fail(mp, "a mirror session needs `sources:` or `vlans:`")
        if sw is None:
            first = sources[0] if sources else None
            if first is None:
                raise c.fail(mp, "name the session's `switch:`")
            sw = host.network(ports[first][1].network).switch
        if sw not in {x.name for x in host.switches}:
            raise c.fail((*mp, "switch"), f"no switch {sw!r} on host {hname}")
        for i, s in enumerate(sources):
            if host.network(ports[s][1].network).switch != sw:
                raise c.fail((*mp, "sources", i), f"{s} is not on switch {sw}")
        direction = m.get("direction", "both")
        if direction not in ("ingress", "egress", "both"):
            raise c.fail((*mp, "direction"), "direction is ingress, egress or both")
        rate = c.integer(m.get("sampling_rate", 1), (*mp, "sampling_rate"), 1,
                         MAX_SAMPLING_RATE, "sampling rate")
        length = m.get("mirrored_packet_length")
        if length is not None:
            length = c.integer(length, (*mp, "mirrored_packet_length"), MIN_MIRRORED_LENGTH,
                               65535, "mirrored packet length")
        enc_vlan = 0
        if "encapsulation_vlan" in m:
            if not remote_src:
                raise c.fail((*mp, "encapsulation_vlan"), f"a {kind} session does not "
                             "encapsulate")
            enc_vlan = c.vlan(m["encapsulation_vlan"], (*mp, "encapsulation_vlan"), lo=1,
                              hi=4094)
        elif kind == "remoteMirrorSource":
            raise c.fail(mp, "an RSPAN source needs `encapsulation_vlan:` (the RSPAN VLAN)")
        uplinks = c.names(m.get("uplinks"), (*mp, "uplinks"))
        if uplinks and not remote_src:
            raise c.fail((*mp, "uplinks"), f"a {kind} session sends to a port, not an uplink")
        sw_uplinks = host.switch(sw).uplinks
        for i, u in enumerate(uplinks):
            if u not in sw_uplinks:
                raise c.fail((*mp, "uplinks", i), f"{u} is not an uplink of switch {sw} "
                             f"(uplinks: {', '.join(sw_uplinks) or 'none'})")
        if remote_src and not sw_uplinks:
            raise c.fail((*mp, "switch"), f"switch {sw} has no uplink for the session's "
                         "copies to leave by")
        enc = m.get("encapsulation", "gre")
        if enc not in ENCAPSULATIONS:
            raise c.fail((*mp, "encapsulation"), f"encapsulation is one of "
                         f"{', '.join(ENCAPSULATIONS)}, got {enc!r}")
        if kind != "encapsulatedRemoteMirrorSource":
            for key in ("encapsulation", "source_ip", "erspan_id", "erspan_cos",
                        "erspan_gra_ns"):
                if key in m:
                    raise c.fail((*mp, key), f"`{key}` is for ERSPAN sessions "
                                 "(type: encapsulatedRemoteMirrorSource)")
        out.append(MirrorSpec(
            hname, mname, sw, dest, sources, vlans, direction, kind, rate, length,
            c.boolean(m.get("normal_traffic_allowed"), (*mp, "normal_traffic_allowed"), False),
            c.boolean(m.get("strip_original_vlan"), (*mp, "strip_original_vlan"), False),
            enc_vlan, uplinks, enc, str(m.get("source_ip", "")),
            c.integer(m.get("erspan_id", 0), (*mp, "erspan_id"), 0, 1023, "ERSPAN session ID"),
            c.integer(m.get("erspan_cos", 0), (*mp, "erspan_cos"), 0, 7, "ERSPAN COS"),
            c.boolean(m.get("erspan_gra_ns"), (*mp, "erspan_gra_ns"), False)))
    return tuple(out)


def _ipv4(c: _Checker, value: Any, path: PathT) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise c.fail(path, f"expected an IPv4 address, got {value!r}") from None


def _check_loops(c: _Checker, topo: Topology, link_paths: list[PathT]) -> None:
    """Refuse a physical layer-2 loop: two paths between the same bridges with no teaming.

    A teamed host switch never forwards between its uplinks (vSphere teaming, Xen bonds), so
    each of its uplinks is a separate end; an unteamed switch (a plain Xen bridge) forwards
    between all of its PIFs and closes a loop when two of them reach the same physical network.
    """
    g: nx.Graph = nx.Graph()
    edges: list[tuple[str, str, PathT]] = []
    for s in topo.physical:
        g.add_node(f"physical switch {s.name}")
        channel_of = {m: ch.name for ch in s.channels for m in ch.members}
        seen: set[tuple[str, str]] = set()
        for p in s.ports:
            host = topo.host(p.host)
            sw = next((x for x in host.switches if p.pif in x.uplinks), None)
            if sw is None:
                end = f"{p.host}/{p.pif}"
            elif sw.teaming is not None or sw.lag is not None:
                end = f"{p.host}/{sw.name} uplink {p.pif}"
            else:
                end = f"{p.host}/{sw.name}"
            ch = channel_of.get(p.name)
            if ch is not None:  # a port-channel is one link, however many cables
                if (ch, end) in seen:
                    continue
                seen.add((ch, end))
            edges.append((f"physical switch {s.name}", end,
                          ("physical", s.name, "ports", p.name)))
    for lp, link in zip(link_paths, topo.links, strict=True):
        edges.append((f"physical switch {link.a}", f"physical switch {link.b}", lp))
    for a, b, path in edges:
        if g.has_node(a) and g.has_node(b) and nx.has_path(g, a, b):
            loop = " - ".join(nx.shortest_path(g, b, a))
            raise c.fail(path, f"loop in the physical network without teaming: {a} - {loop} "
                         "(team the host's uplinks or remove a cable)")
        g.add_edge(a, b)


# ------------------------------------------------------------------------------- load / build
def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology YAML file."""
    p = Path(path)
    source = p.name if p.parent == Path(".") else str(p)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise TopologyError(f"{p}: cannot read: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise TopologyError(f"{source}:{line}: not UTF-8 text: byte {raw[exc.start]:#04x} "
                            "(save the file as UTF-8; latin-1 and other encodings are not "
                            "read)") from None
    return parse_topology(text, source)


def parse_topology(text: str, source: str = "topology.yaml") -> Topology:
    """Validate a topology given as YAML text; `source` names it in errors."""
    data, smap = load_yaml(text, source, TopologyError)
    return validate(data, smap)


class TopologyBuilder:
    """Write a topology in Python; `build()` validates it exactly as a file would be.

        t = TopologyBuilder("lab")
        t.add_host("xen1", pifs=["eth0"])
        t.add_switch("xen1", "xenbr0", uplinks=["eth0"])
        t.add_port_group("xen1", "vlan5", switch="xenbr0", vlan=5)
        t.add_vm("xen1", "vm1", nics=[{"network": "vlan5", "ip": "10.0.5.1/24"}])
        t.connect("xen1.eth0", "phys", mode="trunk", vlans=[5])
        topo = t.build()
    """

    def __init__(self, name: str = "lab", *, seed: int = 0) -> None:
        self.doc: dict[str, Any] = {"name": name, "seed": seed, "hosts": {}}

    def _host(self, host: str) -> dict[str, Any]:
        if host not in self.doc["hosts"]:
            raise TopologyError(f"<builder>: no host {host!r}; call add_host first")
        return self.doc["hosts"][host]

    def add_host(self, name: str, *, type: str = "xen",
                 pifs: Iterable[str] | Mapping[str, Mapping[str, Any]] = ()) -> TopologyBuilder:
        """A host with its physical NICs."""
        pif_map = dict(pifs) if isinstance(pifs, Mapping) else {p: {} for p in pifs}
        self.doc["hosts"][name] = {"type": type, "pifs": pif_map}
        return self

    def add_pif(self, host: str, name: str, **opts: Any) -> TopologyBuilder:
        """Another physical NIC on `host`."""
        self._host(host).setdefault("pifs", {})[name] = opts
        return self

    def add_switch(self, host: str, name: str, *, uplinks: Iterable[str] = (),
                   teaming: Mapping[str, Any] | None = None, **opts: Any) -> TopologyBuilder:
        """A standard switch on `host` with its uplinks (and teaming)."""
        sw: dict[str, Any] = {"uplinks": list(uplinks), **opts}
        if teaming is not None:
            sw["teaming"] = dict(teaming)
        self._host(host).setdefault("switches", {})[name] = sw
        return self

    def add_port_group(self, host: str, name: str, *, switch: str | None = None,
                       vlan: int = 0, internal: bool = False, **opts: Any) -> TopologyBuilder:
        """A port group / network on `host`: a VLAN of a switch, or an internal network."""
        pg: dict[str, Any] = {"vlan": vlan, **opts}
        if switch is not None:
            pg["switch"] = switch
        if internal:
            pg["internal"] = True
        self._host(host).setdefault("networks", {})[name] = pg
        return self

    add_network = add_port_group

    def add_vm(self, host: str, name: str, *, nics: Iterable[Mapping[str, Any]] = (),
               **opts: Any) -> TopologyBuilder:
        """A VM on `host` with its vNICs (`{"network": ..., "ip": ..., "mac": ...}`)."""
        self._host(host).setdefault("vms", {})[name] = {
            "vifs": [dict(n) for n in nics], **opts}
        return self

    def connect(self, a: str, b: str, **opts: Any) -> TopologyBuilder:
        """Cable `HOST.PIF` to physical switch `b` (port options: mode, vlans, vlan/native),
        or physical switch `a` to physical switch `b`."""
        phys = self.doc.setdefault("physical", {})
        if "." in a:
            phys.setdefault(b, {}).setdefault("ports", {})[a] = opts
        else:
            phys.setdefault(b, {}).setdefault("ports", {})
            phys.setdefault(a, {}).setdefault("links", []).append({b: opts})
        return self

    def add_channel(self, switch: str, name: str, ports: Iterable[str], *, mode: str,
                    **opts: Any) -> TopologyBuilder:
        """A port-channel `name` on physical switch `switch` over its `HOST.PIF` ports (mode
        active, passive or on; opts: rate, load_balance). A host switch's LAG or bond is
        `add_switch(..., lag={...})` (ESXi) or `bond={...}` (Xen)."""
        phys = self.doc.setdefault("physical", {}).setdefault(switch, {})
        phys.setdefault("channels", {})[name] = {"ports": list(ports), "mode": mode, **opts}
        return self

    def add_mirror(self, host: str, name: str, *, destination: str | None = None, **opts: Any
                   ) -> TopologyBuilder:
        """A port-mirroring session on `host` (`type=`, `sources=`, ... as in YAML; an RSPAN
        source has no `destination`)."""
        session = {"destination": destination} if destination is not None else {}
        self._host(host).setdefault("mirrors", {})[name] = {**session, **opts}
        return self

    def add_rspan_vlans(self, switch: str, vlans: Iterable[int]) -> TopologyBuilder:
        """Carry `vlans` on physical switch `switch` as RSPAN VLANs (flooded, not learned)."""
        self.doc.setdefault("physical", {}).setdefault(switch, {})["rspan_vlans"] = list(vlans)
        return self

    def build(self) -> Topology:
        """Validate and return the model (the same checks as a file gets)."""
        return validate(self.doc, SourceMap("<builder>"))


# ------------------------------------------------------------------------------------ graph
def node_id(kind: str, *parts: str) -> str:
    """Graph node ids: `host:xen1`, `switch:xen1/xenbr0`, `pg:xen1/vlan5`, `pif:xen1/eth0`,
    `vlanpif:xen1/eth0.5`, `vm:vm1`, `vnic:xen1/vif1.0`, `pswitch:core`."""
    return f"{kind}:{'/'.join(parts)}"


def to_graph(topo: Topology) -> nx.MultiGraph:
    """The lab as a networkx MultiGraph.

    Nodes carry `kind` (host, switch, portgroup, pif, vlanpif, vm, vnic, pswitch), `name`,
    `host` and `spec` (the frozen model object). Edges carry `kind`: `contains` (host to its
    PIFs, switches, VMs), `uplink` (switch–PIF), `portgroup` (switch–port group), `vlanpif`
    (Xen VLAN network–`ethX.VID`–PIF), `nic` (VM–vNIC), `attach` (vNIC–port group), `cable`
    (PIF–physical switch, physical switch–physical switch).
    """
    g = nx.MultiGraph(name=topo.name)
    for h in topo.hosts:
        hid = node_id("host", h.name)
        g.add_node(hid, kind="host", name=h.name, host=h.name, spec=h)
        for p in h.pifs:
            pid = node_id("pif", h.name, p.name)
            g.add_node(pid, kind="pif", name=p.name, host=h.name, spec=p)
            g.add_edge(hid, pid, kind="contains")
        for s in h.switches:
            sid = node_id("switch", h.name, s.name)
            g.add_node(sid, kind="switch", name=s.name, host=h.name, spec=s)
            g.add_edge(hid, sid, kind="contains")
            for u in s.uplinks:
                role = "active"
                if s.teaming is not None and u in s.teaming.standby:
                    role = "standby"
                lag = s.lag.name if s.lag is not None and u in s.lag.members else None
                g.add_edge(sid, node_id("pif", h.name, u), kind="uplink", role=role, lag=lag)
        for n in h.networks:
            nid = node_id("pg", h.name, n.name)
            g.add_node(nid, kind="portgroup", name=n.name, host=h.name, spec=n, vlan=n.vlan)
            sw = h.switch(n.switch)
            g.add_edge(nid, node_id("switch", h.name, sw.name), kind="portgroup")
            if h.type == "xen" and 1 <= n.vlan <= 4094:
                # XenServer: a VLAN network gets VLAN PIF ethX.VID (bond0.VID on a bond)
                bases = [(sw.lag.name, sw.lag.members)] if sw.lag is not None else [
                    (u, (u,)) for u in sw.uplinks]
                for base, members in bases:
                    vid = node_id("vlanpif", h.name, f"{base}.{n.vlan}")
                    g.add_node(vid, kind="vlanpif", name=f"{base}.{n.vlan}", host=h.name,
                               vlan=n.vlan, pif=base)
                    g.add_edge(nid, vid, kind="vlanpif")
                    for u in members:
                        g.add_edge(vid, node_id("pif", h.name, u), kind="vlanpif")
        for vm in h.vms:
            vmid = node_id("vm", vm.name)
            g.add_node(vmid, kind="vm", name=vm.name, host=h.name, spec=vm)
            g.add_edge(hid, vmid, kind="contains")
            for f in vm.vifs:
                fid = node_id("vnic", h.name, f.port)
                g.add_node(fid, kind="vnic", name=f.port, host=h.name, spec=f)
                g.add_edge(vmid, fid, kind="nic")
                g.add_edge(fid, node_id("pg", h.name, f.network), kind="attach")
    for s in topo.physical:
        sid = node_id("pswitch", s.name)
        g.add_node(sid, kind="pswitch", name=s.name, host=None, spec=s)
    for s in topo.physical:
        for p in s.ports:
            g.add_edge(node_id("pif", p.host, p.pif), node_id("pswitch", s.name), kind="cable",
                       spec=p)
    for link in topo.links:
        g.add_edge(node_id("pswitch", link.a), node_id("pswitch", link.b), kind="cable",
                   spec=link)
    return g
