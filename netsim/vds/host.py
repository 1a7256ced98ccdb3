"""Host agent: one host of a distributed fabric, its VMs on vDS proxy switches, and vMotion.

A `HostAgent` runs inside a `Fabric` that holds this host (in its own process with `hvsim host`,
or several agents side by side in one process). It follows the management plane (`HostPlane`),
creates a `ProxySwitch` and a `ProxyLink` for every vDS it is a member of, and moves VMs:

Live migration (vMotion / XenMotion), as the real thing does it: the source stuns the VM and
unplugs its ports, the VM's description travels to the destination on the source's own topic
(`host/<src>/migrate/<dst>`), the destination plugs the same vNICs (same MACs, same port
groups) and sends one RARP per NIC, so every proxy switch and remote MAC table relearns where
the VM is. Frames that reach the source for the VM during the switch-over are counted
(`ProxyLink.counters.rx_in_flight`, plus what was still queued toward the guest), never silent.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

from netsim.dataplane.guest import Guest, Iface, Route
from netsim.dataplane.port import Vif, VmPort
from netsim.dataplane.teaming import rarp_announce
from netsim.errors import ConfigError, NetsimError, TopologyError, TransportError
from netsim.lab.agent import GuestAgent
from netsim.lab.fabric import Fabric, Vm
from netsim.lab.ipfix import IpfixExporter
from netsim.lab.topology import TeamingSpec, Topology
from netsim.vds.dswitch import FabricView, HostPlane, ProxyLink, ProxySwitch
from netsim.vds.monitoring import from_topology as monitoring_from_topology
from netsim.vds.transport.bus import Bus, BusMessage, Subscription
from netsim.vds.transport.topics import Topics
from netsim.vds.vdsconfig import (
    DvLag,
    DvLinkDiscovery,
    DvPortGroup,
    DvSecurity,
    DvShaping,
    DvTeaming,
    VdsConfig,
)
from netsim.wire.frame import mac_to_bytes, mac_to_str

#: how long after a VM left frames for it at the old host count as "in flight" (seconds)
IN_FLIGHT_WINDOW_S = 2.0


@dataclass
class NicSpec:
    """A VM NIC as it moves between hosts (with the guest's address on it, if any)."""

    vds: str
    portgroup: str
    mac: str
    vif: bool = False
    ip: str | None = None  # "10.0.0.1/24"
    vlan: int | None = None  # the guest tags its frames itself (VGT port group)


@dataclass
class MigrationCounters:
    """Migrations this host did, and frames lost while doing them."""

    out: int = 0
    into: int = 0
    refused: int = 0
    queued_dropped: int = 0
    last_error: str = ""
    done: dict[str, str] = field(default_factory=dict)  # vm → host it went to / came from


class HostAgent:
    """Runs one host's VMs and proxy switches against the management plane on a bus."""

    def __init__(
        self,
        fabric: Fabric,
        host: str,
        bus: Bus,
        topics: Topics,
        *,
        session: int,
        batch_frames: int = 256,
        guests: bool = False,
        on_event: Callable[[str], None] | None = None,
        view: FabricView | None = None,
    ) -> None:
        """`view`: the process's shared `FabricView` (peers and configs read once for all its
        agents); without one the agent subscribes to them itself."""
        self.on_event = on_event or (lambda text: None)
        self.run_guests = guests
        self.guests: dict[str, GuestAgent] = {}
        self._guest_tasks: dict[str, list[asyncio.Task[None]]] = {}
        self.fabric = fabric
        self.host = fabric.hosts.get(host) or fabric.add_host(host)
        self.name = host
        self.bus = bus
        self.topics = topics
        self.session = session
        self.batch_frames = batch_frames
        self.proxies: dict[str, ProxySwitch] = {}
        self._exporters: dict[str, asyncio.Task[Any]] = {}  # vDS → its IPFIX exporter task
        self.links: dict[str, ProxyLink] = {}
        self.plane = HostPlane(
            bus, topics, host=host, session=session, apply=self._apply,
            extra_status=lambda: {
                "vms": sorted(self.host.vms), "migration_error": self.migrations.last_error,
            },
            on_event=self.on_event, view=view,
        )
        self.migrations = MigrationCounters()
        self._arrived = asyncio.Event()
        self.failures: list[tuple[str, BaseException]] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        try:
            await self._stack.enter_async_context(self.plane)
            sub = await self._stack.enter_async_context(
                self.bus.subscribe(f"{self.topics.prefix}/host/+/migrate/{self.name}", qos=1)
            )
            self._spawn(self._incoming(sub), "migrations in")
            ctl = await self._stack.enter_async_context(
                self.bus.subscribe(self.topics.control(self.name), qos=1)
            )
            self._spawn(self._control(ctl), "control")
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        for t in [t for ts in self._guest_tasks.values() for t in ts]:
            t.cancel()
        failures = [*self.failures, *self.plane.failures,
                    *(f for link in self.links.values() for f in link.failures)]
        if exc_type is None and failures:
            name, err = failures[0]
            raise NetsimError(f"host agent task {name!r} crashed: {err!r}") from err

    def _spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.name} {what}")
        task.add_done_callback(self._task_done)
        self._stack.callback(task.cancel)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.failures.append((task.get_name(), task.exception()))  # type: ignore[arg-type]

    # -- management plane --------------------------------------------------------------------
    async def _apply(self, config: VdsConfig) -> frozenset[int]:
        proxy = self.proxies.get(config.name)
        if proxy is None:
            proxy = ProxySwitch(self.host, config.name)
            self.proxies[config.name] = proxy
        before = set(proxy.uplinks)
        vlans = proxy.apply(config)
        link = self.links.get(config.name)
        if link is None:
            link = ProxyLink(
                self.bus, self.topics, host=self.name, vds=config.name, peers=self.plane.peers,
                clock=self.fabric.clock, deliver=proxy.deliver, session=self.session,
                deliver_batch=proxy.deliver_batch,
                batch_frames=self.batch_frames,
            )
            await self._stack.enter_async_context(link)
            self.links[config.name] = link
            self.plane.attach_link(link)
        link.fids = proxy.switch.pvlan.fids()
        for up, pif in proxy.uplinks.items():
            if up not in before:
                self._spawn(proxy.pump(pif, link), f"{config.name} {up}")
        if proxy.new_meter is not None or (proxy.monitoring.meter is None
                                           and config.name in self._exporters):
            old = self._exporters.pop(config.name, None)
            if old is not None:
                old.cancel()  # its exporter sends what its meter still holds
            if proxy.new_meter is not None:
                self._exporters[config.name] = self._spawn(
                    IpfixExporter(proxy.new_meter).run(), f"{config.name} ipfix")
                proxy.new_meter = None
        return vlans

    async def wait_config(self, vds: str, version: int = 1, *, within_s: float = 10.0) -> None:
        """Return once this host runs `vds` at ≥ `version`."""
        await self.plane.wait_version(vds, version, within_s=within_s)

    # -- VMs ---------------------------------------------------------------------------------
    def _proxy(self, vds: str) -> ProxySwitch:
        proxy = self.proxies.get(vds)
        if proxy is None:
            raise ConfigError(
                f"{self.name}: not (yet) a member of vDS {vds!r}; known: {sorted(self.proxies)}"
            )
        return proxy

    async def add_vm(
        self, name: str, nics: list[NicSpec], *, domid: int | None = None, **guest: Any
    ) -> Vm:
        """Create a VM whose NICs plug into port groups of this host's proxy switches.

        With `guests=True` on the agent, the VM also runs a guest stack (ARP, ping, routing;
        `router`, `gateway`, `routes` are passed to it).
        """
        vm = self._plug(name, nics, domid)
        if self.run_guests:
            self._start_guest(vm, nics, **guest)
        await self._ports_changed({n.vds for n in nics})
        return vm

    async def add_vms(self, vms: dict[str, list[NicSpec]]) -> list[Vm]:
        """Create many VMs (no guest stacks), reporting the new ports once."""
        out = [self._plug(name, nics, None) for name, nics in vms.items()]
        await self._ports_changed({n.vds for nics in vms.values() for n in nics})
        return out

    def _start_guest(self, vm: Vm, nics: list[NicSpec], **options: Any) -> None:
        ifaces = [
            Iface(n.mac, ipaddress.IPv4Interface(n.ip) if n.ip else None, n.vlan) for n in nics
        ]
        agent = GuestAgent(
            Guest(vm.name, ifaces, **options), [p.vnic.send for p in vm.ports], self.fabric.clock
        )
        self.guests[vm.name] = agent

        async def serve(i: int, port: VmPort) -> None:
            while True:
                for f in await port.vnic.recv_batch():
                    agent.deliver(i, f)

        self._guest_tasks[vm.name] = [
            asyncio.create_task(serve(i, p), name=f"guest {vm.name}/{i}")
            for i, p in enumerate(vm.ports)
        ]

    def _stop_guest(self, name: str) -> None:
        self.guests.pop(name, None)
        for t in self._guest_tasks.pop(name, []):
            t.cancel()

    def _plug(self, name: str, nics: list[NicSpec], domid: int | None) -> Vm:
        for nic in nics:
            sw = self._proxy(nic.vds).switch
            if nic.portgroup not in sw.port_groups:
                raise ConfigError(f"{self.name}/{nic.vds}: no port group {nic.portgroup!r}")
        vm = self.host.add_vm(name, domid=domid)
        for nic in nics:
            sw = self._proxy(nic.vds).switch
            if nic.vif:
                vm.add_vif(sw, nic.portgroup, mac=nic.mac)
            else:
                vm.add_nic(sw, nic.portgroup, mac=nic.mac)
        return vm

    def nic_specs(self, vm: Vm) -> list[NicSpec]:
        """How `vm`'s NICs are plugged (what a migration carries)."""
        out = []
        for p in vm.ports:
            sw = p.switch
            if sw is None or sw.name not in self.proxies:
                raise ConfigError(f"{vm.name}: NIC {p.name} is not on a distributed switch")
            out.append(NicSpec(sw.name, p.sw_group.name, mac_to_str(p.mac), isinstance(p, Vif)))
        agent = self.guests.get(vm.name)
        if agent is not None:
            for spec, iface in zip(out, agent.guest.ifaces, strict=True):
                spec.ip = str(iface.ip) if iface.ip else None
                spec.vlan = iface.vlan
        return out

    async def _ports_changed(self, vdses: set[str]) -> None:
        for vds in vdses:
            self._proxy(vds).monitoring.refresh()  # sessions and the meter follow the ports
            await self.plane.update_vlans(vds, self._proxy(vds).vlans())
        if not vdses:
            await self.plane.report()

    # -- live migration ----------------------------------------------------------------------
    async def migrate(self, vm_name: str, to: str) -> int:
        """Move `vm_name` to host `to`; returns the frames dropped at the source meanwhile."""
        vm = self.host.vms.get(vm_name)
        if vm is None:
            raise ConfigError(f"{self.name}: no VM {vm_name!r} here (have {sorted(self.host.vms)})")
        if to == self.name:
            raise ConfigError(f"{vm_name} is already on {to}")
        if to not in self.plane.peers.online():
            raise TransportError(f"cannot migrate {vm_name}: host {to} is not online")
        nics = self.nic_specs(vm)
        doc: dict[str, Any] = {"vm": vm_name, "domid": vm.domid, "nics": [n.__dict__ for n in nics]}
        agent = self.guests.get(vm_name)
        if agent is not None:
            g = agent.guest
            doc["guest"] = {
                "router": g.router,
                "gateway": str(g.gateway) if g.gateway else None,
                "routes": [[str(r.to), str(r.via)] for r in g.routes],
            }
        self._stop_guest(vm_name)
        # stun: unplug first, so nothing is delivered to a VM that is no longer here; then hand
        # the VM over at once (the switch-over time is what loses frames), then tidy up
        dropped = self._unplug(vm)
        await self.bus.publish(
            f"{self.topics.host_root(self.name)}/migrate/{to}",
            json.dumps(doc).encode(), qos=1,
        )
        await self._ports_changed({n.vds for n in nics})
        self.migrations.out += 1
        self.on_event(f"{vm_name} migrated to {to} ({dropped} frames queued for it dropped)")
        self.migrations.queued_dropped += dropped
        self.migrations.done[vm_name] = to
        return dropped

    def _unplug(self, vm: Vm) -> int:
        until = self.fabric.clock.now_ns() + int(IN_FLIGHT_WINDOW_S * 1e9)
        for p in vm.ports:
            link = self.links.get(p.switch.name) if p.switch is not None else None
            if link is not None:
                link.departed[p.mac] = until
        return self.fabric.remove_vm(vm)

    async def _incoming(self, sub: Subscription) -> None:
        async for msg in sub:
            await self._arrive(msg)

    async def _arrive(self, msg: BusMessage) -> None:
        src = self.topics.host_of(msg.topic) or "?"
        try:
            doc = json.loads(msg.payload)
            nics = [NicSpec(**n) for n in doc["nics"]]
            name = str(doc["vm"])
            domid = int(doc["domid"])
            used = {v.domid for v in self.host.vms.values()}
            if domid in used:  # as on Xen, the domain gets a new id on its new host
                domid = max(used) + 1
            vm = self._plug(name, nics, domid)
            g = doc.get("guest")
            if self.run_guests:
                self._start_guest(vm, nics, **_guest_options(g or {}))
        except (ValueError, KeyError, TypeError, ConfigError, RecursionError) as exc:
            self.migrations.refused += 1
            self.migrations.last_error = f"migration from {src}: {exc}"
            self.on_event(self.migrations.last_error)
            await self.plane.report()
            return
        for p in vm.ports:
            link = self.links[p.switch.name]
            link.departed.pop(p.mac, None)
            link.local_mac(p.sw_group.vlan, p.mac)
            p.vnic.send(rarp_announce(p.mac))  # at once, as vMotion does: everyone relearns
        await self._ports_changed({n.vds for n in nics})
        self.migrations.into += 1
        self.on_event(f"{name} arrived from {src}")
        self.migrations.done[name] = src
        self._arrived.set()

    async def wait_arrival(self, vm: str, *, within_s: float = 10.0) -> Vm:
        """Return the VM once it has arrived here."""
        async def wait() -> Vm:
            while vm not in self.host.vms:
                self._arrived.clear()
                await self._arrived.wait()
            return self.host.vms[vm]

        try:
            return await asyncio.wait_for(wait(), within_s)
        except TimeoutError:
            raise TransportError(
                f"{vm} did not arrive on {self.name} within {within_s} s"
            ) from None

    async def _control(self, sub: Subscription) -> None:
        """Commands from the management plane: {"migrate": VM, "to": HOST}."""
        async for msg in sub:
            try:
                doc = json.loads(msg.payload)
                await self.migrate(str(doc["migrate"]), str(doc["to"]))
            except (ValueError, KeyError, TypeError, ConfigError, TransportError,
                    RecursionError) as exc:
                self.migrations.refused += 1
                self.migrations.last_error = f"control: {exc}"

    def counters(self) -> dict[str, Any]:
        """Bus, link, plane and migration counters (for status output)."""
        return {
            "bus": self.bus.counters.as_dict(),
            "links": {n: _link(link) for n, link in self.links.items()},
            "in_flight_dropped": {n: lk.counters.rx_in_flight for n, lk in self.links.items()},
            "migrations": {k: v for k, v in self.migrations.__dict__.items() if k != "done"},
        }


def _guest_options(g: dict[str, Any]) -> dict[str, Any]:
    return {
        "router": bool(g.get("router", False)),
        "gateway": ipaddress.IPv4Address(g["gateway"]) if g.get("gateway") else None,
        "routes": tuple(
            Route(ipaddress.IPv4Network(to), ipaddress.IPv4Address(via))
            for to, via in g.get("routes", [])
        ),
    }


def _link(link: ProxyLink) -> dict[str, int]:
    c = link.counters
    r = link.receiver.counters
    return {
        "tx_unicast": c.tx_unicast, "tx_flood": c.tx_flood,
        "tx_no_remote_member": c.tx_no_remote_member, "rx_frames": c.rx_frames,
        "rx_vlan_not_local": c.rx_vlan_not_local, "rx_vlan_mismatch": c.rx_vlan_mismatch,
        "rx_bad_batches": r.bad_batches, "rx_forged_batches": r.forged_batches,
        "rx_lost_frames": r.lost_frames,
    }


def find_port(fabric: Fabric, mac: str | bytes) -> VmPort | None:
    """The VM port with configured MAC `mac`, if this fabric has one."""
    m = mac_to_bytes(mac)
    for p in fabric.ports():
        if isinstance(p, VmPort) and p.mac == m:
            return p
    return None


# ------------------------------------------------------------------- topology → distributed
@dataclass(frozen=True)
class HostPlan:
    """One host's part of a topology in distributed mode: its VMs and how their NICs plug."""

    host: str
    domids: dict[str, int]
    vms: dict[str, list[NicSpec]]
    guests: dict[str, dict[str, Any]]


def _vds_switch(topo: Topology, host: str, switch: str | None) -> str:
    spec = topo.host(host)
    if switch is not None:
        if all(s.name != switch for s in spec.switches):
            raise TopologyError(
                f"{topo.source}: host {host} has no switch {switch!r} "
                f"(has {', '.join(s.name for s in spec.switches)})"
            )
        return switch
    used = {spec.network(v.network).switch for vm in spec.vms for v in vm.vifs}
    if len(used) > 1:
        raise TopologyError(
            f"{topo.source}: host {host}'s VMs use switches {sorted(used)}; name the one to "
            "distribute with --switch"
        )
    if used:
        return used.pop()
    if not spec.switches:
        raise TopologyError(f"{topo.source}: host {host} has no switch to distribute")
    return spec.switches[0].name


def vds_from_topology(
    topo: Topology, *, name: str = "dvs1", switch: str | None = None
) -> VdsConfig:
    """The vDS that replaces each host's switch `switch` (default: the one its VMs use).

    Port groups of the same name must agree across hosts (VLAN, security, shaping, teaming);
    uplinkN of each host is its switch's Nth uplink NIC (the bus plays the physical network
    between hosts, so the topology's physical switches are not used in distributed mode). Each
    port group's teaming is its network's own `teaming:`, else its switch's, over those uplink
    names; a host with one uplink has no say in it.
    """
    groups: dict[str, tuple[str, DvPortGroup]] = {}
    members: dict[str, dict[str, str]] = {}
    width = 1
    for h in topo.hosts:
        sw = _vds_switch(topo, h.name, switch)
        swspec = h.switch(sw)
        uplinks = swspec.uplinks or ("dvuplink0",)
        members[h.name] = {f"uplink{i + 1}": nic for i, nic in enumerate(uplinks)}
        width = max(width, len(uplinks))
        for net in h.networks:
            if net.switch != sw:
                continue
            sec = net.security
            pg = DvPortGroup(
                net.name,
                net.vlan,
                DvSecurity(sec.promiscuous, sec.mac_changes, sec.forged_transmits),
                shaping_out=(
                    DvShaping(net.shaping.average_bps, net.shaping.peak_bps,
                              net.shaping.burst_bytes) if net.shaping else None
                ),
                teaming=_dv_teaming(net.teaming or swspec.teaming, swspec.uplinks,
                                    swspec.lag.name if swspec.lag else None),
                shaping_in=(
                    DvShaping(net.egress_shaping.average_bps, net.egress_shaping.peak_bps,
                              net.egress_shaping.burst_bytes) if net.egress_shaping else None
                ),
                blocked=net.blocked,
                traffic_rules=net.traffic_rules,
            )
            seen = groups.get(net.name)
            if seen is not None and seen[1].teaming is None:
                seen = (seen[0], replace(seen[1], teaming=pg.teaming))
                groups[net.name] = seen
            if seen is not None and pg.teaming is None:
                pg = replace(pg, teaming=seen[1].teaming)
            if seen is not None and seen[1] != pg:
                raise TopologyError(
                    f"{topo.source}: port group {net.name!r} differs between hosts {seen[0]} "
                    f"and {h.name} (a distributed port group is one definition)"
                )
            groups.setdefault(net.name, (h.name, pg))
    # CDP/LLDP: the first host switch that sets it speaks for the vDS (one setting per vDS)
    found = [h.switch(_vds_switch(topo, h.name, switch)).discovery for h in topo.hosts]
    ld = next((d for d in found if d is not None), None)
    sessions, ipfix = monitoring_from_topology(topo, lambda h: _vds_switch(topo, h, switch))
    # the uplink port group is one per vDS: the first host switch that sets rules speaks for it
    urules = next((r for h in topo.hosts
                   if (r := h.switch(_vds_switch(topo, h.name, switch)).uplink_traffic_rules)
                   is not None), None)
    return VdsConfig(
        name, 1, uplinks=tuple(f"uplink{i + 1}" for i in range(width)),
        portgroups=tuple(pg for _, pg in groups.values()), hosts=members,
        lags=_dv_lags(topo, switch),
        link_discovery=(DvLinkDiscovery(ld.protocols[0], ld.operation) if ld is not None
                        else DvLinkDiscovery()),
        vspan_sessions=sessions, ipfix=ipfix, uplink_traffic_rules=urules,
    )


def _dv_lags(topo: Topology, switch: str | None) -> tuple[DvLag, ...]:
    """The LAG of the vDS, from the first host whose switch has one (a vDS LAG is one
    definition; each host's NICs back its uplinks). The bus carries the hosts' traffic in
    distributed mode, so the LAG is configuration here: LACP runs where NICs are cabled."""
    for h in topo.hosts:
        swspec = h.switch(_vds_switch(topo, h.name, switch))
        lag = swspec.lag
        if lag is not None:
            name = {nic: f"uplink{i + 1}" for i, nic in enumerate(swspec.uplinks)}
            c = lag.config
            return (DvLag(lag.name, tuple(name[m] for m in lag.members), c.lacp, c.hashing,
                          c.rate),)
    return ()


def _dv_teaming(spec: TeamingSpec | None, uplinks: tuple[str, ...], lag: str | None = None
                ) -> DvTeaming | None:
    """A topology teaming over one host's PIFs, over the vDS uplink names instead (a LAG keeps
    its name); None when the host has fewer than two uplinks (nothing to team)."""
    if spec is None or len(uplinks) < 2:
        return None
    name = {nic: f"uplink{i + 1}" for i, nic in enumerate(uplinks)}
    if lag is not None:
        name[lag] = lag
    return DvTeaming(spec.policy, tuple(name[n] for n in spec.active),
                     tuple(name[n] for n in spec.standby))


def host_plan(topo: Topology, host: str, vds: VdsConfig, *, switch: str | None = None) -> HostPlan:
    """The VMs of `host` with their NICs on `vds`'s port groups."""
    try:
        spec = topo.host(host)
    except KeyError:
        raise TopologyError(
            f"{topo.source}: no host {host!r} (hosts: {', '.join(h.name for h in topo.hosts)})"
        ) from None
    sw = _vds_switch(topo, host, switch)
    vms: dict[str, list[NicSpec]] = {}
    guests: dict[str, dict[str, Any]] = {}
    for vm in spec.vms:
        nics = []
        for v in vm.vifs:
            if spec.network(v.network).switch != sw:
                raise TopologyError(
                    f"{topo.source}: {vm.name} NIC {v.index} is on {v.network!r}, not on the "
                    f"distributed switch {sw}"
                )
            nics.append(NicSpec(vds.name, v.network, v.mac, spec.type == "xen",
                                str(v.ip) if v.ip else None, v.vlan))
        vms[vm.name] = nics
        guests[vm.name] = {
            "router": vm.router, "gateway": vm.gateway,
            "routes": tuple(Route(r.to, r.via) for r in vm.routes),
        }
    return HostPlan(host, {vm.name: vm.domid for vm in spec.vms}, vms, guests)


# ------------------------------------------------------------------ migration inside one lab
@dataclass(frozen=True)
class LocalMigration:
    """What moving a VM between hosts of one fabric did."""

    vm: str
    source: str
    destination: str
    nics: int
    queued_dropped: int  # frames waiting for the guest at the source, lost with the switch-over


def migrate_in_fabric(fabric: Fabric, vm_name: str, to: str) -> LocalMigration:
    """Move a VM to another host of the same fabric (a scenario's `migrate: {vm, to}` step).

    Each NIC moves to the destination's switch of the same name (a vDS exists on every member
    host), into the port group of the same name, keeping its MAC; the destination then sends a
    RARP per NIC so the physical network and every switch relearn where the VM is. The VM's name
    stays; its ports' full names change host (`esx2/web.eth0` → `esx3/web.eth0`).
    """
    vm = fabric[vm_name]
    if not isinstance(vm, Vm):
        raise ConfigError(f"{vm_name!r} is not a VM")
    src = vm.host
    if to not in fabric.hosts:
        raise ConfigError(f"migrate {vm_name}: no host {to!r} (hosts: {sorted(fabric.hosts)})")
    try:
        dropped = fabric.move_vm(vm, to)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("move ", "migrate ", 1)) from None
    for p in vm.ports:
        p.vnic.send(rarp_announce(p.mac))
    return LocalMigration(vm.name, src.name, to, len(vm.ports), dropped)
