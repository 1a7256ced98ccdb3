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
import json
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from netsim.dswitch import HostPlane, ProxyLink, ProxySwitch
from netsim.errors import ConfigError, TransportError
from netsim.fabric import Fabric, Vm
from netsim.frame import mac_to_bytes, mac_to_str
from netsim.port import Vif, VmPort
from netsim.transport.bus import Bus, BusMessage, Subscription
from netsim.transport.topics import Topics
from netsim.vdsconfig import VdsConfig

ETHERTYPE_RARP = 0x8035
#: how long after a VM left frames for it at the old host count as "in flight" (seconds)
IN_FLIGHT_WINDOW_S = 2.0


def rarp_announce(mac: bytes) -> bytes:
    """The RARP request vMotion sends for a moved vNIC: broadcast, source = the VM's MAC."""
    body = (
        (1).to_bytes(2, "big")  # hardware: Ethernet
        + (0x0800).to_bytes(2, "big")  # protocol: IPv4
        + bytes((6, 4))
        + (3).to_bytes(2, "big")  # op 3: request reverse
        + mac + bytes(4) + mac + bytes(4)
    )
    frame = b"\xff" * 6 + mac + ETHERTYPE_RARP.to_bytes(2, "big") + body
    return frame + bytes(60 - len(frame))


@dataclass
class NicSpec:
    """A VM NIC as it moves between hosts."""

    vds: str
    portgroup: str
    mac: str
    vif: bool = False


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
    ) -> None:
        self.fabric = fabric
        self.host = fabric.hosts.get(host) or fabric.add_host(host)
        self.name = host
        self.bus = bus
        self.topics = topics
        self.session = session
        self.batch_frames = batch_frames
        self.proxies: dict[str, ProxySwitch] = {}
        self.links: dict[str, ProxyLink] = {}
        self.plane = HostPlane(bus, topics, host=host, session=session, apply=self._apply)
        self.migrations = MigrationCounters()
        self._arrived = asyncio.Event()
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

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.name} {what}")
        self._stack.callback(task.cancel)

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
                batch_frames=self.batch_frames,
            )
            await self._stack.enter_async_context(link)
            self.links[config.name] = link
            self.plane.attach_link(link)
        for up, pif in proxy.uplinks.items():
            if up not in before:
                self._spawn(proxy.pump(pif, link), f"{config.name} {up}")
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

    async def add_vm(self, name: str, nics: list[NicSpec], *, domid: int | None = None) -> Vm:
        """Create a VM whose NICs plug into port groups of this host's proxy switches."""
        vm = self._plug(name, nics, domid)
        await self._ports_changed({n.vds for n in nics})
        return vm

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
        return out

    async def _ports_changed(self, vdses: set[str]) -> None:
        for vds in vdses:
            await self.plane.update_vlans(vds, self._proxy(vds).vlans())

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
        doc = {"vm": vm_name, "domid": vm.domid, "nics": [n.__dict__ for n in nics]}
        # stun: unplug first, so nothing is delivered to a VM that is no longer here; then hand
        # the VM over at once (the switch-over time is what loses frames), then tidy up
        dropped = self._unplug(vm)
        await self.bus.publish(
            f"{self.topics.host_root(self.name)}/migrate/{to}",
            json.dumps(doc).encode(), qos=1,
        )
        await self._ports_changed({n.vds for n in nics})
        self.migrations.out += 1
        self.migrations.queued_dropped += dropped
        self.migrations.done[vm_name] = to
        return dropped

    def _unplug(self, vm: Vm) -> int:
        until = self.fabric.clock.now_ns() + int(IN_FLIGHT_WINDOW_S * 1e9)
        dropped = 0
        for p in list(vm.ports):
            sw = p.switch
            dropped += p.queue.clear()
            if sw is not None:
                sw.detach(p)
                link = self.links.get(sw.name)
                if link is not None:
                    link.departed[p.mac] = until
        del self.host.vms[vm.name]
        _forget(self.fabric, vm)
        return dropped

    async def _incoming(self, sub: Subscription) -> None:
        async for msg in sub:
            await self._arrive(msg)

    async def _arrive(self, msg: BusMessage) -> None:
        src = self.topics.host_of(msg.topic) or "?"
        try:
            doc = json.loads(msg.payload)
            nics = [NicSpec(**n) for n in doc["nics"]]
            name = str(doc["vm"])
            vm = self._plug(name, nics, int(doc["domid"]))
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            self.migrations.refused += 1
            self.migrations.last_error = f"migration from {src}: {exc}"
            return
        for p in vm.ports:
            link = self.links[p.switch.name]
            link.departed.pop(p.mac, None)
            link.local_mac(p.sw_group.vlan, p.mac)
            p.vnic.send(rarp_announce(p.mac))  # at once, as vMotion does: everyone relearns
        await self._ports_changed({n.vds for n in nics})
        self.migrations.into += 1
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
            except (ValueError, KeyError, TypeError, ConfigError, TransportError) as exc:
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


def _forget(fabric: Fabric, vm: Vm) -> None:
    """Remove a VM that left from the fabric's name registry.

    Fabric (net's) has no public removal yet; this touches its registry directly and only for
    the VM's own names.
    """
    gone: list[Any] = [vm, *vm.ports]
    for registry in (fabric._objects, fabric._short):
        for key in [k for k, v in registry.items() if any(v is g for g in gone)]:
            del registry[key]


def find_port(fabric: Fabric, mac: str | bytes) -> VmPort | None:
    """The VM port with configured MAC `mac`, if this fabric has one."""
    m = mac_to_bytes(mac)
    for p in fabric.ports():
        if isinstance(p, VmPort) and p.mac == m:
            return p
    return None
