"""A topology brought to life: the live `Fabric` built from the model, with a guest per VM.

`build_fabric(topo)` turns the validated model into switches, ports and cables (nothing runs
yet); `Lab` adds a `GuestAgent` per VM, runs everything as `async with Lab(topo) as lab:`, and
offers what a user does in a lab: `ping`, `pingall` (a VLAN-aware reachability matrix),
`set_link` (pull a cable, fail an uplink), and `capture`.

How the model maps onto the fabric (DESIGN §3):
- ESXi: a vSS per switch, its uplinks with the switch's NIC teaming; a port group per network
  (VLAN 0 EST / 1-4094 VST / 4095 VGT, security, shaping); vNIC ports `VM.ethN`.
- XenServer: a bridge per switch (`xenbr0`), its networks as port groups. A VLAN network on a
  bridge with one uplink gets what XenServer builds: its own bridge `xapiN` whose uplink is the
  VLAN PIF `eth0.VID` (so `eth0` carries the tags and guests never see one). Internal networks
  are bridges with no PIF. VIFs are `vifDOMID.DEVID`.
- The physical network: an 802.1Q bridge per physical switch, a port `HOST.PIF` per cable in
  its access/trunk/native mode, trunks between physical switches.

Time: everything runs on one clock. With a `ManualClock` (the default for `pingall`), the lab
drives time itself: it lets the fabric settle, then jumps the clock to the next timeout, so a
run is deterministic and takes no longer than the frames need.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
from array import array
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

from netsim.clock import Clock, ManualClock, RealClock
from netsim.dataplane.flowmeter import FlowMeter
from netsim.dataplane.guest import Guest, Iface, Route
from netsim.dataplane.mirror import (
    ErspanSource,
    MirrorCounters,
    MirrorSession,
    RspanSource,
    rspan_destination,
    rspan_vlan,
    to_port,
    vmk_mac,
)
from netsim.dataplane.policy import (
    FailureDetection,
    LoadBalancing,
    SecurityPolicy,
    ShapingPolicy,
    TeamingPolicy,
    VlanPolicy,
)
from netsim.dataplane.port import Port, VmPort
from netsim.dataplane.pvlan import PvlanEntry, PvlanMap, PvlanType
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.errors import TopologyError
from netsim.lab.agent import GuestAgent, PingResult
from netsim.lab.attach import Attachments, uses_attachments
from netsim.lab.discovery import wire_discovery
from netsim.lab.fabric import Fabric
from netsim.lab.ipfix import IpfixExporter
from netsim.lab.teammon import start_team_monitors
from netsim.lab.topology import (
    HostSpec,
    MirrorSpec,
    NetworkSpec,
    PhysPortSpec,
    TeamingSpec,
    Topology,
)
from netsim.lab.trace import Trace, trace_frame
from netsim.wire.erspan import ErspanTunnel
from netsim.wire.frame import mac_to_bytes

T = TypeVar("T")

#: Frames one outstanding ping can have in any one port queue at the same moment, with margin:
#: its steps (ARP request or its retry, ARP reply, echo request, echo reply) follow one another,
#: each sent when the one before has arrived, and a broadcast puts one copy in each queue.
FRAMES_PER_PING = 4


def _vlan_policy(p: PhysPortSpec) -> VlanPolicy:
    if p.mode == "access":
        return VlanPolicy.access(p.vlan)
    if p.mode == "trunk":
        return VlanPolicy.trunk(p.vlans)
    if p.mode == "native-tagged":
        return VlanPolicy.native_tagged(p.vlan, p.vlans)
    return VlanPolicy.native_untagged(p.vlan, p.vlans)


def _port_group(n: NetworkSpec, vlan: int | None = None) -> PortGroup:
    s = n.security
    shaping = None
    if n.shaping is not None:
        shaping = ShapingPolicy(n.shaping.average_bps, n.shaping.peak_bps, n.shaping.burst_bytes)
    eg = n.egress_shaping
    return PortGroup(n.name, vlan=n.vlan if vlan is None else vlan,
                     security=SecurityPolicy(s.promiscuous, s.mac_changes, s.forged_transmits),
                     shaping=shaping, teaming=_teaming(n.teaming), mtu=n.mtu,
                     blocked=n.blocked,
                     egress_shaping=ShapingPolicy(eg.average_bps, eg.peak_bps, eg.burst_bytes)
                     if eg is not None else None,
                     traffic_rules=n.traffic_rules,
                     default_locking_mode=n.default_locking_mode)


def _teaming(t: TeamingSpec | None) -> TeamingPolicy | None:
    if t is None:
        return None
    return TeamingPolicy(t.active, t.standby, LoadBalancing(t.policy),
                         notify_switches=t.notify_switches, failback=t.failback,
                         failure_detection=FailureDetection(t.failure_detection))


@dataclass
class BuiltHost:
    """Where each network of a host ended up: (switch, port group name)."""

    networks: dict[str, tuple[StandardSwitch, str]] = field(default_factory=dict)


def _pvlan_map(entries: tuple[tuple[int, int, str], ...]) -> PvlanMap:
    return PvlanMap(PvlanEntry(p, s, PvlanType(t)) for p, s, t in entries)


def build_fabric(topo: Topology, *, clock: Clock | None = None) -> Fabric:
    """The live fabric of a topology: hosts, PIFs, switches, port groups, VM ports, the physical
    switches and every cable, port mirroring sessions. Call inside or outside a running loop;
    `async with` the result to run it."""
    fab = Fabric(clock=clock)
    fab.seed = topo.seed
    built: dict[str, BuiltHost] = {}
    for h in topo.hosts:
        built[h.name] = _build_host(fab, h)
    for ps in topo.physical:
        phys = fab.add_physical_switch(ps.name)
        if ps.pvlans:
            phys.pvlan = _pvlan_map(ps.pvlans)
    for ps in topo.physical:
        in_channel = {m for ch in ps.channels for m in ch.members}
        for p in ps.ports:
            if p.name not in in_channel:
                port = fab.add_port(ps.name, p.name, _vlan_policy(p), mtu=p.mtu)
                fab.link(fab[f"{p.host}/{p.pif}"], port)
        for ch in ps.channels:  # a port-channel: its member ports, cabled, and Po as one port
            specs = {p.name: p for p in ps.ports}
            first = specs[ch.members[0]]
            fab.add_lag(ps.name, ch.name, ch.members, ch.config, _vlan_policy(first),
                        mtu=first.mtu)
            for m in ch.members:
                fab.link(fab[f"{specs[m].host}/{specs[m].pif}"], fab[f"{ps.name}/{m}"])
    for link in topo.links:
        trunk = VlanPolicy.trunk(link.vlans)
        a = fab.add_port(link.a, f"to-{link.b}", trunk, mtu=link.mtu)
        b = fab.add_port(link.b, f"to-{link.a}", trunk, mtu=link.mtu)
        fab.link(a, b)
    for h in topo.hosts:
        for pif in h.pifs:
            port = fab[f"{h.name}/{pif.name}"]
            if not pif.up or port.link is None:  # no cable = no carrier
                port.set_link(False)
    for ps in topo.physical:
        for vid in ps.rspan_vlans:
            rspan_vlan(fab[ps.name], vid)
    for m in topo.mirrors:
        _build_mirror(fab, topo, m)
    for h in topo.hosts:
        for s in h.switches:
            if s.ipfix is not None:
                sw = fab[f"{h.name}/{s.name}"]
                meter = sw.flow_meter = FlowMeter(s.ipfix, fab.clock)
                meter.attach(sw)
                fab.spawn(IpfixExporter(meter).run, name=f"ipfix {h.name}/{s.name}")
    wire_discovery(fab, topo)  # CDP/LLDP on uplinks and physical switch ports
    for imp in topo.impairments:  # links that behave like real ones (netem-like)
        if imp.layer == "cable":
            fab.impair_cable(imp.port, imp.impairment)
        else:
            fab.impair(imp.port, imp.impairment, direction=imp.direction)
    return fab


def _build_mirror(fab: Fabric, topo: Topology, m: MirrorSpec) -> None:
    """One port mirroring session (`VMwareVspanSession`) on its host switch."""
    sw: StandardSwitch = fab[f"{m.host}/{m.switch}"]
    where = f"{topo.source}: mirror {m.name}"
    sources = set(m.sources)
    if m.vlans and m.type != "remoteMirrorDest":  # a VLAN source: its VM ports on the switch
        host = topo.host(m.host)
        for vm in host.vms:
            for f in vm.vifs:
                net = host.network(f.network)
                if net.vlan in m.vlans and net.switch == m.switch and f.port != m.destination:
                    sources.add(f.port)
    srcs = [fab[f"{m.host}/{s}"] for s in sorted(sources)]
    if any(s.switch is not sw for s in srcs):
        raise TopologyError(f"{where}: sources and destination must be on one switch "
                            f"({sw.name})")
    counters = MirrorCounters()
    deliver: Callable[[bytes, bool, bool], None]
    uplinks = [fab[f"{m.host}/{u}"] for u in (m.uplinks or topo.host(m.host).switch(
        m.switch).uplinks)]
    if m.type == "remoteMirrorSource":
        deliver = RspanSource(uplinks, m.encapsulation_vlan, counters)
    elif m.type == "encapsulatedRemoteMirrorSource":
        dst_mac = _mac_of_ip(topo, m.destination)
        if dst_mac is None:
            raise TopologyError(f"{where}: no vNIC in the lab has IP {m.destination} (the "
                                "ERSPAN collector): give one of them that address")
        tunnel = ErspanTunnel(
            m.encapsulation, vmk_mac(m.host), dst_mac,
            ipaddress.IPv4Address(m.source_ip).packed,
            ipaddress.IPv4Address(m.destination).packed, session_id=m.erspan_id,
            cos=m.erspan_cos, vlan=m.encapsulation_vlan, gra_ns=m.erspan_gra_ns)
        deliver = ErspanSource(tunnel, uplinks, fab.clock, counters)
    else:
        dest = fab[f"{m.host}/{m.destination}"]
        if dest.switch is not sw:
            raise TopologyError(f"{where}: sources and destination must be on one switch "
                                f"({sw.name})")
        deliver = to_port(dest)
        if not m.normal_traffic_allowed:
            sw.block(dest, reason="mirror-destination")
    session = MirrorSession(m.name, deliver, sampling_rate=m.sampling_rate,
                            mirrored_packet_length=m.mirrored_packet_length,
                            strip_original_vlan=m.strip_original_vlan,
                            tag_original_vlan=m.type in _REMOTE_SOURCES, counters=counters)
    if m.type == "remoteMirrorDest":
        rspan_destination(sw, m.vlans[0], session)
    else:
        session.attach(sw, srcs, ingress=m.direction in ("ingress", "both"),
                       egress=m.direction in ("egress", "both"))
    sw.mirror_sessions[m.name] = session


_REMOTE_SOURCES = ("remoteMirrorSource", "encapsulatedRemoteMirrorSource")


def _mac_of_ip(topo: Topology, ip: str) -> bytes | None:
    for vm in topo.vms:
        for f in vm.vifs:
            if f.ip is not None and str(f.ip.ip) == ip:
                return mac_to_bytes(f.mac)
    return None


def _build_host(fab: Fabric, h: HostSpec) -> BuiltHost:
    host = fab.add_host(h.name)
    out = BuiltHost()
    pifs = {p.name: host.add_pif(p.name, mtu=p.mtu) for p in h.pifs}
    switches: dict[str, StandardSwitch] = {}
    for s in h.switches:
        teaming = _teaming(s.teaming)
        sw = host.add_switch(s.name, mac_table_size=s.mac_table_size, aging_s=s.aging_s,
                             mtu=s.mtu)
        if s.pvlans:
            sw.pvlan = _pvlan_map(s.pvlans)
        lag = s.lag
        if lag is not None:  # vDS LAG / Xen bond: one uplink in place of its members
            pifs[lag.name] = host.add_bond(lag.name, [pifs[m] for m in lag.members],
                                           lag.config)
        for u in s.uplinks:
            if lag is None or u not in lag.members:
                sw.add_uplink(pifs[u])
            elif u == lag.members[0]:
                sw.add_uplink(pifs[lag.name])
        if teaming is not None:  # set once every uplink it names is there
            sw.teaming = teaming
        if s.uplink_traffic_rules is not None:  # the vDS uplink port group's rules
            sw.uplink_rules = s.uplink_traffic_rules
        switches[s.name] = sw
    used = {s.name for s in h.switches}
    xapi = 0
    for n in h.networks:
        spec = h.switch(n.switch)
        if h.type == "xen" and 1 <= n.vlan <= 4094 and (len(spec.uplinks) == 1 or spec.lag):
            # XenServer: a VLAN network is its own bridge xapiN on the VLAN PIF ethX.VID
            while f"xapi{xapi}" in used:
                xapi += 1
            name = f"xapi{xapi}"
            used.add(name)
            bridge = host.add_switch(name, mac_table_size=spec.mac_table_size,
                                     aging_s=spec.aging_s, mtu=spec.mtu)
            bridge.add_port_group(_port_group(n, vlan=0))
            parent = pifs[spec.lag.name if spec.lag else spec.uplinks[0]]  # bond0.5 on a bond
            bridge.add_uplink(host.vlan_pif(parent, n.vlan))
            out.networks[n.name] = (bridge, n.name)
        else:
            sw = switches[n.switch]
            sw.add_port_group(_port_group(n))
            out.networks[n.name] = (sw, n.name)
    for sw in switches.values():
        start_team_monitors(fab, sw)
    for vm_spec in h.vms:
        vm = host.add_vm(vm_spec.name, domid=vm_spec.domid)
        for f in vm_spec.vifs:
            sw, pg = out.networks[f.network]
            if h.type == "xen":
                vif = vm.add_vif(sw, pg, mac=f.mac, mtu=f.mtu)
                if f.locking is not None or f.qos is not None:
                    sw.set_vif_policy(vif, locking=f.locking, qos=f.qos)
            else:
                vm.add_nic(sw, pg, mac=f.mac, mtu=f.mtu)
    return out


class _Row(Mapping[str, bool]):
    """One source's row of a `Reachability` matrix: destination name -> answered."""

    __slots__ = ("_i", "_r")

    def __init__(self, r: Reachability, i: int) -> None:
        self._r = r
        self._i = i

    def __getitem__(self, dst: str) -> bool:
        r = self._r
        j = r._index.get(dst)
        if j is None or j == self._i:
            raise KeyError(dst)
        return bool(r._ok[self._i * len(r.vms) + j])

    def __iter__(self) -> Iterator[str]:
        return (d for j, d in enumerate(self._r.vms) if j != self._i)

    def __len__(self) -> int:
        return max(0, len(self._r.vms) - 1)

    def __repr__(self) -> str:
        return repr(dict(self))


class _Matrix(Mapping[str, Mapping[str, bool]]):
    """`matrix[src][dst]`, read from the answered bitmap (no dict of dicts is kept)."""

    __slots__ = ("_r",)

    def __init__(self, r: Reachability) -> None:
        self._r = r

    def __getitem__(self, src: str) -> Mapping[str, bool]:
        i = self._r._index.get(src)
        if i is None:
            raise KeyError(src)
        return _Row(self._r, i)

    def __iter__(self) -> Iterator[str]:
        return iter(self._r.vms)

    def __len__(self) -> int:
        return len(self._r.vms)

    def __repr__(self) -> str:
        return repr({s: dict(row) for s, row in self.items()})


class _Results(Sequence[PingResult]):
    """Every ping's `PingResult`, source by source, destinations in lab order; each made
    when it is read."""

    __slots__ = ("_r",)

    def __init__(self, r: Reachability) -> None:
        self._r = r

    def __len__(self) -> int:
        return self._r.pairs

    @overload
    def __getitem__(self, k: int) -> PingResult: ...

    @overload
    def __getitem__(self, k: slice) -> tuple[PingResult, ...]: ...

    def __getitem__(self, k: int | slice) -> PingResult | tuple[PingResult, ...]:
        if isinstance(k, slice):
            return tuple(self[i] for i in range(*k.indices(len(self))))
        total = len(self)
        if k < 0:
            k += total
        if not 0 <= k < total:
            raise IndexError("pingall result index out of range")
        m = len(self._r.vms) - 1
        i, j = divmod(k, m)
        return self._r._result(i, j + (j >= i))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} ping results>"


class Reachability:
    """Who reaches whom: `matrix[src][dst]` is True when a ping from src to dst was answered.

    Kept compact, whatever the lab's size: one byte per (src, dst) pair for the answer, and
    arrays of the target address, ICMP sequence number, round-trip time and TTL; `result(src,
    dst)` and `results` make `PingResult`s only when read (a 1,000-VM pingall has 999,000).
    """

    def __init__(self, vms: Sequence[str]) -> None:
        self.vms: tuple[str, ...] = tuple(vms)
        n = len(self.vms)
        self._index = {v: i for i, v in enumerate(self.vms)}
        # 16 bytes a pair: 1, 4, 2, 8 and 1
        self._ok = bytearray(n * n)
        self._dst = array("I", [0]) * (n * n)
        self._seq = array("H", [0]) * (n * n)
        self._rtt = array("d", [0.0]) * (n * n)
        self._ttl = bytearray(n * n)
        self.matrix: Mapping[str, Mapping[str, bool]] = _Matrix(self)

    def record(self, src: int, dst: int, target: int, seq: int, rtt_s: float | None,
               ttl: int | None) -> None:
        """Store one ping's fate: `src`/`dst` index `vms`; `rtt_s` None when unanswered."""
        k = src * len(self.vms) + dst
        self._dst[k] = target
        self._seq[k] = seq
        if rtt_s is not None:
            self._ok[k] = 1
            self._rtt[k] = rtt_s
            self._ttl[k] = ttl or 0

    def reachable(self, src: str, dst: str) -> bool:
        """True if `src` got an answer from `dst`."""
        return self.matrix[src][dst]

    def result(self, src: str, dst: str) -> PingResult:
        """The ping from `src` to `dst`, as a `PingResult`."""
        i, j = self._index[src], self._index[dst]
        if i == j:
            raise KeyError(f"{src} does not ping itself")
        return self._result(i, j)

    def _result(self, i: int, j: int) -> PingResult:
        k = i * len(self.vms) + j
        dst = ipaddress.IPv4Address(self._dst[k])
        if self._ok[k]:
            return PingResult(self.vms[i], dst, self._seq[k], True, self._rtt[k],
                              self._ttl[k])
        return PingResult(self.vms[i], dst, self._seq[k], False)

    @property
    def results(self) -> Sequence[PingResult]:
        """Every ping's result, source by source, destinations in lab order."""
        return _Results(self)

    def answered_row(self, src: str) -> bytes:
        """`src`'s answers as bytes, one per VM in `vms` order (1 answered; its own is 0)."""
        n = len(self.vms)
        i = self._index[src]
        return bytes(self._ok[i * n:(i + 1) * n])

    @property
    def pairs(self) -> int:
        """How many (src, dst) pairs were tried."""
        n = len(self.vms)
        return n * (n - 1)

    @property
    def answered(self) -> int:
        """How many pairs answered."""
        return self._ok.count(1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reachability):
            return NotImplemented
        return (self.vms == other.vms and self._ok == other._ok and self._dst == other._dst
                and self._seq == other._seq and self._rtt == other._rtt
                and self._ttl == other._ttl)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Reachability {self.answered}/{self.pairs} answered among {len(self.vms)} VMs>"


class Lab:
    """A running topology (see the module docstring)."""

    def __init__(self, topo: Topology, *, clock: Clock | None = None) -> None:
        self.topo = topo
        # vNICs wired to real interfaces (attach:) run with real kernels: real time only
        self.attachments: Attachments | None = None
        if uses_attachments(topo):
            self.attachments = Attachments(topo)
            if clock is None:
                clock = RealClock()
            elif hasattr(clock, "advance"):
                raise TopologyError(f"{topo.name}: attached vNICs exchange frames with real "
                                    "kernels; run this lab on the real clock")
        self.clock: Clock = clock if clock is not None else ManualClock()
        self.fabric = build_fabric(topo, clock=self.clock)
        self.agents: dict[str, GuestAgent] = {}
        real = self.attachments.vms if self.attachments is not None else set()
        for index, vm in enumerate(topo.vms):
            if vm.name in real:
                continue
            guest = Guest(
                vm.name,
                [Iface(f.mac, f.ip, f.vlan) for f in vm.vifs],
                router=vm.router, gateway=vm.gateway,
                routes=[Route(r.to, r.via) for r in vm.routes])
            ports: list[VmPort] = self.fabric[vm.name].ports
            self.agents[vm.name] = GuestAgent(guest, [p.vnic.send for p in ports], self.clock,
                                              ident=index + 1)
        # VMs' disks (`disks:` in the topology): attached when the lab starts, each served by
        # a blkback on its host and reached by the VM's blkfront over a blkif ring.
        self.disks: dict[tuple[str, str], Any] = {}  # (vm, device) -> storage BlkFront
        self._hypervisors: dict[str, Any] = {}
        self._disk_devices: list[Any] = []

    async def __aenter__(self) -> Lab:
        # Guests start listening when the lab starts (a Lab built and never run leaves nothing
        # behind).
        for name, agent in self.agents.items():
            for i, p in enumerate(self.fabric[name].ports):
                self.fabric.on_receive_batch(p.vnic, _deliverer(agent, i))
                p.set_reader(agent.guest, i)
        att = self.attachments
        if att is not None:
            await asyncio.to_thread(att.setup)
            att.bind({p.name: p.vnic for vm in att.vms for p in self.fabric[vm].ports})
        await self.fabric.__aenter__()
        try:
            if att is not None:
                att.start()
            await self._attach_disks()
        except BaseException as exc:
            await self._detach_disks()
            await self._detach_nics()
            await self.fabric.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for name in self.agents:  # nobody reads the guests' ports any more: frames queue
            for p in self.fabric[name].ports:
                p.set_reader(None)
        try:
            await self._detach_disks()
        finally:
            try:
                await self._detach_nics()
            finally:
                await self.fabric.__aexit__(*exc)

    async def _detach_nics(self) -> None:
        att = self.attachments
        if att is not None:
            try:
                await att.stop()
            finally:
                await asyncio.to_thread(att.teardown)

    async def _attach_disks(self) -> None:
        from storage.diskspec import open_disk
        from storage.errors import StorageError
        from storage.rings.blkfront import BlkFront
        from storage.rings.hypervisor import Hypervisor

        source = Path(self.topo.source)
        base = source.parent if source.suffix in (".yaml", ".yml") else None
        for vm in self.topo.vms:
            if not vm.disks:
                continue
            hv = self._hypervisors.setdefault(vm.host, Hypervisor())
            hv.create_domain(vm.domid, ram_pages=1024 * len(vm.disks))
            for d in vm.disks:
                try:
                    dev = open_disk(d.source, read_only=d.read_only, base_dir=base)
                    self._disk_devices.append(dev)
                    await hv.attach_vbd(vm.domid, dev, devid=d.devid, read_only=d.read_only)
                    front = BlkFront(hv.guest(vm.domid), d.devid)
                    await front.connect()
                except StorageError as exc:
                    raise TopologyError(f"{self.topo.name}: {vm.name} {d.device} "
                                        f"({d.source}): {exc}") from exc
                self.disks[(vm.name, d.device)] = front

    async def _detach_disks(self) -> None:
        for front in self.disks.values():
            await front.close()
        self.disks.clear()
        for hv in self._hypervisors.values():
            await hv.close()
        self._hypervisors.clear()
        for dev in self._disk_devices:
            dev.close()
        self._disk_devices.clear()

    def disk(self, vm: str, device: str = "xvda") -> Any:
        """The running VM's block device (a `storage.rings.blkfront.BlkFront`: async read, write,
        flush, discard), served through its host's blkback."""
        try:
            return self.disks[(vm, device)]
        except KeyError:
            have = ", ".join(f"{v}:{d}" for v, d in self.disks) or "none"
            raise TopologyError(f"{self.topo.name}: no disk {vm}:{device} in the running lab "
                                f"(disks: {have})") from None

    def __getitem__(self, name: str) -> Any:
        return self.fabric[name]

    # -- driving time --------------------------------------------------------------------------
    async def drive(self, aw: Awaitable[T], *, step_s: float = 0.05) -> T:
        """Await `aw`; on a ManualClock, move time forward whenever the fabric is quiet: by
        `step_s`, or straight to the next sleeper's deadline when that is further away (nothing
        can happen in between, so an idle hour is one jump, not 36,000 steps)."""
        task = asyncio.ensure_future(aw)
        advance: Callable[[float], None] | None = getattr(self.clock, "advance", None)
        if advance is None:
            return await task
        next_deadline = getattr(self.clock, "next_deadline_ns", None)
        try:
            while not task.done():
                await self.settle()
                if not task.done():
                    due = next_deadline() if next_deadline is not None else None
                    gap = (due - self.clock.now_ns()) / 1e9 if due is not None else 0.0
                    advance(max(step_s, gap))
            return task.result()
        finally:
            if not task.done():
                task.cancel()

    async def settle(self, *, rounds: int = 5, limit: int = 1_000_000) -> None:
        """Yield to the loop until no port holds a queued frame for `rounds` passes in a row
        (every frame in flight, guests' answers included, has arrived)."""
        # the queues someone drains, as their deques: one C-level pass a round
        queues = [p.queue.items for p in self.fabric.ports()
                  if p.link is not None or isinstance(p, VmPort)]
        quiet = 0
        for _ in range(limit):
            await asyncio.sleep(0)
            self.fabric.check()
            if any(map(len, queues)):
                quiet = 0
            else:
                quiet += 1
                if quiet >= rounds:
                    return
        raise TopologyError(f"{self.topo.name}: the fabric did not settle")

    async def run_for(self, seconds: float, *, step_s: float = 0.1) -> None:
        """Let `seconds` of lab time pass (jumping on a ManualClock, sleeping otherwise)."""
        await self.drive(self.clock.sleep(seconds), step_s=min(step_s, seconds or step_s))

    # -- what users do in a lab ----------------------------------------------------------------
    def address_of(self, vm: str, toward: str | None = None) -> ipaddress.IPv4Address:
        """An IPv4 address of `vm` (a built-in guest or an attached one); the one on a network
        `toward` shares when there is one."""
        addrs = self._ips(vm)
        if not addrs:
            raise TopologyError(f"VM {vm} has no IPv4 address (give its vNIC an `ip:`)")
        if toward is not None:
            for ip in self._ips(toward):
                for a in addrs:
                    if a.network == ip.network:
                        return a.ip
        return addrs[0].ip

    def _ips(self, vm: str) -> list[ipaddress.IPv4Interface]:
        spec = next((v for v in self.topo.vms if v.name == vm), None)
        if spec is None:
            known = ", ".join(v.name for v in self.topo.vms) or "none"
            raise TopologyError(f"no VM {vm!r} in {self.topo.name} (VMs: {known})")
        return [f.ip for f in spec.vifs if f.ip is not None]

    def _agent(self, vm: str) -> GuestAgent:
        agent = self.agents.get(vm)
        if agent is None:
            known = ", ".join(self.agents) or "none"
            raise TopologyError(f"no VM {vm!r} in {self.topo.name} (VMs: {known})")
        return agent

    async def ping(self, src: str, dst: str, *, wait_s: float = 1.0) -> PingResult:
        """Ping `dst` (a VM name or an IPv4 address) from VM `src`."""
        agent = self._agent(src)
        try:
            target = ipaddress.IPv4Address(dst)
        except ValueError:
            target = self.address_of(dst, toward=src)
        if not agent.guest.addresses():
            raise TopologyError(f"VM {src} has no IPv4 address to ping from")
        return await self.drive(agent.ping(target, wait_s=wait_s))

    def ping_budget(self) -> int:
        """How many pings may be outstanding at once in this lab so that no port queue can
        overflow: the smallest queue someone drains, over the frames one ping can have in a
        queue at a time (`FRAMES_PER_PING`)."""
        sizes = [p.queue.maxlen for p in self.fabric.ports()
                 if p.link is not None or isinstance(p, VmPort)]
        return max(1, min(sizes, default=1024) // FRAMES_PER_PING)

    async def pingall(self, *, wait_s: float = 1.0, vms: list[str] | None = None,
                      per_vm: int = 8,
                      progress: Callable[[int], None] | None = None) -> Reachability:
        """Every VM with an address pings every other: the reachability matrix.

        All VMs ping at once, each with at most `per_vm` pings outstanding and the lab with at
        most `ping_budget()`, so that even when every ping's ARP request is flooded into the
        same trunk queue it fits: a lost answer is the network's, never the tool's overload.
        A fixed pool of workers takes the pairs in turn (source 1..n to their next
        destination, then the one after), so memory does not grow with the number of pairs.
        """
        names = [v for v in (vms or list(self.agents)) if self.agents[v].guest.addresses()]
        limits = {n: asyncio.Semaphore(per_vm) for n in names}
        n = len(names)
        total = n * (n - 1)
        reach = Reachability(names)
        record = reach.record

        def pairs() -> Iterator[tuple[int, int]]:
            for k in range(1, n):
                for i in range(n):
                    yield i, (i + k) % n

        todo = pairs()
        # a VM with one address is pinged there from everywhere: look it up once
        single = {d: a[0] for d in names
                  if len(a := self.agents[d].guest.addresses()) == 1}
        agents = [self.agents[v] for v in names]
        sems = [limits[v] for v in names]

        async def worker() -> None:
            for i, j in todo:
                src, dst = names[i], names[j]
                target = single.get(dst) or self.address_of(dst, toward=src)
                async with sems[i]:
                    seq, rtt, ttl = await agents[i].ping_fields(target, wait_s=wait_s)
                record(i, j, int(target), seq, rtt, ttl)
                if progress is not None:
                    progress(1)

        workers = min(self.ping_budget(), total)
        await self.drive(asyncio.gather(*(worker() for _ in range(workers))))
        return reach

    def set_link(self, name: str, up: bool) -> None:
        """Bring a PIF (`esx1/vmnic0`) or any port up or down; a switch with NIC teaming fails
        over to its standby uplink when the active one goes down."""
        obj = self.fabric[name]
        if not isinstance(obj, Port):
            raise TopologyError(f"{name} is not a port or PIF")
        obj.set_link(up)

    def trace(self, source: str, frame: bytes | str | Mapping[str, Any]) -> Trace:
        """Why does this frame (not) arrive? `frame` (bytes, hex or a frame spec; `eth.src`
        defaults to the VM's MAC) traced hop by hop from `source` on a copy of the data plane
        as it is now: see `netsim.lab.trace`."""
        return trace_frame(self.fabric, source, frame)

    def capture(self, targets: str | list[str], out_dir: str | Path) -> list[Path]:
        """pcapng per port: `<out_dir>/<port>.pcapng` ("all" = every port)."""
        return self.fabric.capture(targets, out_dir)


def _deliverer(agent: GuestAgent, ifindex: int) -> Callable[[list[bytes]], None]:
    return functools.partial(agent.deliver_batch, ifindex)  # a C-level call per batch

