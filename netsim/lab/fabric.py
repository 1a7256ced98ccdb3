"""The fabric: hosts, their PIFs, switches and VMs, the physical network, links and captures.

`async with Fabric() as fab:` starts every task (one pump per link direction, a MAC aging sweep
per switch, guest callbacks, anything `spawn`ed) and stops them all on exit, closing capture
files; a task that crashed is re-raised there, so a bug never goes unnoticed. Objects are built
with plain calls (`fab.add_host("xen1")`, `host.add_pif("eth0")`, `vm.add_vif(bridge, "lan")`,
`fab.link(eth0, phys_port)`) before or while the fabric runs, removed or moved with
`fab.remove_vm(vm)` / `fab.move_vm(vm, host)`, and looked up one way:

    fab["xen1"]          a host            fab["vm1"]        a VM
    fab["xen1/eth0"]     a PIF (or "eth0" when only one host has one)
    fab["vif1.0"]        a VIF             fab["xen1/xapi1"] a switch
    fab["phys"], fab["phys/ge1"]           the physical switch and its ports

A short name (without the owner) works while it is unambiguous; otherwise the error lists the
full names to use.
"""
from __future__ import annotations

import asyncio
import itertools
import re
import zlib
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any

from netsim.clock import Clock, RealClock, sweep_by_deadline
from netsim.dataplane.impair import ImpairedPath, Impairment, direction_seed
from netsim.dataplane.lag import Lag, LagConfig, LagPort
from netsim.dataplane.policy import TeamingPolicy
from netsim.dataplane.port import Pif, Port, Vif, VlanPif, VmPort, VNic
from netsim.dataplane.portgate import port_rule_counters
from netsim.dataplane.switch import Bridge, PhysicalSwitch, PortGroup, StandardSwitch
from netsim.errors import CaptureError, ConfigError, NetsimError, TopologyError
from netsim.wire.capture import PcapngWriter

#: how many MAC table sweeps per aging time: an entry outlives its aging by at most a quarter
AGING_SWEEPS = 4

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]*(/[A-Za-z0-9][A-Za-z0-9_.:@+-]*)*$")


class NotFound(TopologyError, KeyError):
    """`fab[name]` for a name the fabric does not hold (or holds twice under a short name)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _Ambiguous:
    __slots__ = ("paths",)

    def __init__(self, *paths: str) -> None:
        self.paths = list(paths)


class Link:
    """A cable between two ports: frames one port transmits are received by the other.

    The fabric runs one pump task per direction; each pump drains its port's queue in batches.
    `set_up(False)` brings both ends down (what was queued is dropped and counted).
    """

    def __init__(self, a: Port, b: Port) -> None:
        for p in (a, b):
            if isinstance(p, VmPort):
                raise ConfigError(f"link: {p.name} is a VM port; its other side is the guest")
            if isinstance(p, VlanPif):
                raise ConfigError(
                    f"link: {p.name} is a VLAN PIF; link its parent {p.parent.name} instead"
                )
            if getattr(p, "link", None) is not None:
                raise ConfigError(f"link: port {p.path} is already linked to {p.link.peer(p).path}")
        if a is b:
            raise ConfigError(f"link: cannot link port {a.path} to itself")
        self.a = a
        self.b = b
        a.link = self
        b.link = self
        self.name = f"{a.path}<->{b.path}"

    def peer(self, port: Port) -> Port:
        """The port at the other end."""
        return self.b if port is self.a else self.a

    @property
    def up(self) -> bool:
        """True when both ends are up."""
        return self.a.link_up and self.b.link_up

    def set_up(self, up: bool) -> None:
        """Plug or unplug the cable."""
        self.a.set_link(up)
        self.b.set_link(up)

    async def pump(self, src: Port, dst: Port) -> None:
        """Move frames from `src`'s queue into `dst` until cancelled."""
        get_batch = src.queue.get_batch
        receive_batch = dst.receive_batch
        while True:
            receive_batch(await get_batch())

    def __repr__(self) -> str:
        return f"<Link {self.name} {'up' if self.up else 'down'}>"


class Vm:
    """A guest: a name, a Xen domid, and its NICs (VIFs on Xen, vNIC ports on vSphere)."""

    def __init__(self, host: Host, name: str, domid: int) -> None:
        self.host = host
        self.name = name
        self.domid = domid
        self.ports: list[VmPort] = []

    @property
    def nics(self) -> list[VNic]:
        """The guest side of each NIC, in device order."""
        return [p.vnic for p in self.ports]

    @property
    def vnic(self) -> VNic:
        """The first NIC's guest side (most VMs have one)."""
        if not self.ports:
            raise ConfigError(f"VM {self.name} has no NIC")
        return self.ports[0].vnic

    def add_vif(
        self, switch: StandardSwitch | str, port_group: PortGroup | str = "", *,
        mac: str | bytes | None = None, queue_size: int = 1024, mtu: int = 1500,
    ) -> Vif:
        """Plug a Xen VIF `vif<domid>.<devid>` into a bridge (its only port group by default)."""
        sw = self.host._switch(switch)
        vif = Vif(self.domid, len(self.ports), mac=mac or self.host.fabric._next_mac("00:16:3e"),
                  queue_size=queue_size, mtu=mtu)
        return self._plug(sw, vif, port_group)

    def add_nic(
        self, switch: StandardSwitch | str, port_group: PortGroup | str = "", *,
        mac: str | bytes | None = None, queue_size: int = 1024, mtu: int = 1500,
    ) -> VmPort:
        """Plug a vSphere vNIC (port `<vm>.eth<N>`) into a port group."""
        sw = self.host._switch(switch)
        port = VmPort(f"{self.name}.eth{len(self.ports)}",
                      mac=mac or self.host.fabric._next_mac("00:50:56"), queue_size=queue_size,
                      mtu=mtu)
        return self._plug(sw, port, port_group)

    def _plug(self, sw: StandardSwitch, port: VmPort, port_group: PortGroup | str) -> Any:
        if not port_group:
            if len(sw.port_groups) != 1:
                raise ConfigError(
                    f"VM {self.name}: switch {sw.name} has {len(sw.port_groups)} port groups; "
                    "name the one to use"
                )
            port_group = next(iter(sw.port_groups))
        sw.attach(port, port_group)
        self.host.fabric._register(f"{self.host.name}/{port.name}", port)
        self.ports.append(port)
        return port

    def __repr__(self) -> str:
        return f"<Vm {self.name} domid={self.domid} nics={[p.name for p in self.ports]}>"


class Host:
    """A hypervisor host: its PIFs, switches (bridges) and VMs."""

    def __init__(self, fabric: Fabric, name: str) -> None:
        self.fabric = fabric
        self.name = name
        self.pifs: dict[str, Pif] = {}
        self.switches: dict[str, StandardSwitch] = {}
        self.vms: dict[str, Vm] = {}
        self._domids = itertools.count(1)

    def add_pif(self, name: str, *, mtu: int = 1500, queue_size: int = 1024) -> Pif:
        """A physical NIC, e.g. `eth0`."""
        if "." in name:
            raise ConfigError(f"{self.name}: PIF {name!r}: make VLAN PIFs with vlan_pif()")
        pif = Pif(name, mtu=mtu, queue_size=queue_size)
        self.fabric._register(f"{self.name}/{name}", pif)
        self.pifs[name] = pif
        return pif

    def vlan_pif(self, pif: Pif | str, vid: int) -> VlanPif:
        """The VLAN PIF `<pif>.<vid>` (created once)."""
        parent = self.pifs.get(pif) if isinstance(pif, str) else pif
        if parent is None or parent not in self.pifs.values():
            raise ConfigError(f"{self.name}: no PIF {pif!r} on this host")
        known = parent.vlan_pifs.get(vid)
        if known is not None:
            return known
        child = parent.vlan(vid)
        self.fabric._register(f"{self.name}/{child.name}", child)
        self.pifs[child.name] = child
        return child

    def add_switch(
        self, name: str, *, mac_table_size: int = 8192, aging_s: float = 300.0,
        teaming: TeamingPolicy | None = None, mtu: int | None = None,
    ) -> StandardSwitch:
        """A vSwitch or Xen bridge on this host, running on the fabric's clock."""
        sw = StandardSwitch(name, clock=self.fabric.clock, mac_table_size=mac_table_size,
                            aging_s=aging_s, teaming=teaming, mtu=mtu)
        self.fabric._register(f"{self.name}/{name}", sw)
        self.fabric._add_bridge(sw)
        self.switches[name] = sw
        return sw

    def add_bridge(self, name: str, *, uplink: Pif | None = None) -> StandardSwitch:
        """A Xen bridge (`xenbr0`, `xapi1`): a switch with one port group `name` on VLAN 0 and
        `uplink` (a PIF or VLAN PIF) as its uplink."""
        sw = self.add_switch(name)
        sw.add_port_group(PortGroup(name, vlan=0))
        if uplink is not None:
            sw.add_uplink(uplink)
        return sw

    def add_bond(self, name: str, pifs: Iterable[Pif | str], config: LagConfig | None = None
                 ) -> LagPort:
        """A bond (XenServer `xe bond-create network-uuid= pif-uuids= mode=`) or a vDS LAG
        (`VMwareDvsLacpGroupConfig`) over PIFs of this host: the returned port is the uplink
        to give the switch; the PIFs stay cabled as they are. The LACP system id is derived
        from the host name."""
        members = [self.pifs.get(p) if isinstance(p, str) else p for p in pifs]
        for want, m in zip(pifs, members, strict=True):
            if m is None or m not in self.pifs.values():
                raise ConfigError(f"{self.name}: bond {name}: no PIF {want!r} on this host")
        if len(members) < 1:
            raise ConfigError(f"{self.name}: bond {name} needs at least one PIF")
        port = LagPort(name, mtu=min(m.mtu for m in members if m is not None))
        system = b"\x02" + zlib.crc32(self.name.encode()).to_bytes(4, "big") + b"\x00"
        lag = Lag(port, config, system=system)
        for m in members:
            lag.add_member(m)  # type: ignore[arg-type]
        self.fabric._register(f"{self.name}/{name}", port)
        self.pifs[name] = port
        self.fabric._add_lag(lag)
        return port

    def add_vm(self, name: str, *, domid: int | None = None) -> Vm:
        """A guest on this host; domids count from 1 unless given."""
        vm = Vm(self, name, domid if domid is not None else next(self._domids))
        if any(v.domid == vm.domid for v in self.vms.values()):
            raise ConfigError(f"{self.name}: domid {vm.domid} is already used")
        self.fabric._register(name, vm)
        self.vms[name] = vm
        return vm

    def _switch(self, sw: StandardSwitch | str) -> StandardSwitch:
        s = self.switches.get(sw) if isinstance(sw, str) else sw
        if s is None or s not in self.switches.values():
            known = ", ".join(sorted(self.switches)) or "none"
            raise ConfigError(f"{self.name}: no switch {sw!r} on this host (known: {known})")
        return s

    def __repr__(self) -> str:
        return f"<Host {self.name} pifs={list(self.pifs)} vms={list(self.vms)}>"


class Fabric:
    """Owns everything and runs it; see the module docstring."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else RealClock()
        self.hosts: dict[str, Host] = {}
        self.switches: dict[str, Bridge] = {}
        self.links: list[Link] = []
        self.captures: list[PcapngWriter] = []
        self._objects: dict[str, Any] = {}
        self._short: dict[str, Any] = {}
        self._tasks: dict[asyncio.Task[Any], str] = {}
        self._failures: list[tuple[str, BaseException]] = []
        self._pending: list[tuple[Any, str]] = []  # coroutines, or functions making them
        self._macs = itertools.count(1)
        self._watched: list[Any] = []  # guest queues drained by on_receive callbacks
        self._bridges: list[Bridge] = []  # every switch: each gets a MAC aging sweep task
        #: every LAG / port-channel / bond by its logical port's path; each runs its timers
        self.lags: dict[str, Lag] = {}
        self.running = False
        #: seeds every impaired direction's RNG (the topology's `seed`)
        self.seed = 0
        #: every impaired direction by (port path, "out" | "in" | "cable")
        self.impairments: dict[tuple[str, str], ImpairedPath] = {}
        self._stages: dict[Port, dict[str, ImpairedPath]] = {}
        self._live: set[ImpairedPath] = set()  # stages in a chain (set, or draining)
        #: CDP/LLDP agents by port path: (device name, `LinkDiscovery`); see
        #: `netsim.lab.discovery`
        self.discovery: dict[str, tuple[str, Any]] = {}

    # -- building ----------------------------------------------------------------------------
    def add_host(self, name: str) -> Host:
        """A hypervisor host."""
        host = Host(self, name)
        self._register(name, host)
        self.hosts[name] = host
        return host

    def add_physical_switch(self, name: str, *, mac_table_size: int = 8192,
                            aging_s: float = 300.0) -> PhysicalSwitch:
        """An 802.1Q switch of the physical network; add its ports with `add_port`."""
        sw = PhysicalSwitch(name, clock=self.clock, mac_table_size=mac_table_size,
                            aging_s=aging_s)
        self._register(name, sw)
        self._add_bridge(sw)
        self.switches[name] = sw
        return sw

    def add_port(self, switch: PhysicalSwitch | str, name: str, vlan: Any = None, *,
                 mtu: int = 1500) -> Port:
        """A port on a physical switch, registered as `<switch>/<name>`."""
        sw = self[switch] if isinstance(switch, str) else switch
        if not isinstance(sw, PhysicalSwitch):
            raise ConfigError(f"{switch!r} is not a physical switch of this fabric")
        port = sw.add_port(Port(name, mtu=mtu), vlan)
        self._register(f"{sw.name}/{name}", port)
        return port

    def add_lag(self, switch: PhysicalSwitch | str, name: str, members: Iterable[str],
                config: LagConfig | None = None, vlan: Any = None, *, mtu: int = 1500
                ) -> LagPort:
        """A port-channel `name` on a physical switch (`interface Port-channel1` +
        `channel-group 1 mode active` on each member): member ports `<switch>/<member>` to
        cable, and the logical port `<switch>/<name>` that learns and forwards for them."""
        sw = self[switch] if isinstance(switch, str) else switch
        if not isinstance(sw, PhysicalSwitch):
            raise ConfigError(f"{switch!r} is not a physical switch of this fabric")
        port = LagPort(name, mtu=mtu)
        system = b"\x02" + zlib.crc32(sw.name.encode()).to_bytes(4, "big") + b"\x01"
        lag = Lag(port, config, system=system)
        for mname in members:
            member = Port(mname, mtu=mtu)
            self._register(f"{sw.name}/{mname}", member)
            lag.add_member(member)
        sw.add_port(port, vlan)
        self._register(f"{sw.name}/{name}", port)
        self._add_lag(lag)
        return port

    def link(self, a: Port | str, b: Port | str) -> Link:
        """Cable two ports together (a PIF to a physical switch port, or two switch ports)."""
        pa = self._as_port(a)
        pb = self._as_port(b)
        link = Link(pa, pb)
        self.links.append(link)
        if self.running:
            self._start_link(link)
        return link

    def impair(self, target: Port | str, imp: Impairment | None, *,
               direction: str = "both") -> list[ImpairedPath]:
        """Impair (netem-like) the frames a port sends (`out`), receives (`in`) or both; None
        (or an impairment that changes nothing) clears it. Each direction has its own RNG,
        seeded from `seed` and the direction's name. For a VM port, `out` is toward the guest
        and `in` is what the guest sends. Changing the settings keeps the RNG and the frames in
        flight; clearing lets the frames in flight arrive at their time first. Returns the
        directions now impaired."""
        port = self._as_port(target)
        if direction not in ("both", "out", "in"):
            raise ConfigError(f"impair {port.path}: direction must be out, in or both, "
                              f"not {direction!r}")
        if isinstance(port, VlanPif):
            raise ConfigError(f"impair: {port.name} is a VLAN PIF; impair its parent "
                              f"{port.parent.name} instead")
        done = []
        for d in (("out", "in") if direction == "both" else (direction,)):
            path = self._set_stage(port, d, imp)
            if path is not None:
                done.append(path)
        return done

    def impair_cable(self, target: Port | str, imp: Impairment | None) -> ImpairedPath | None:
        """Impair the frames `target` sends onto its cable (a topology's `links:` entry, one
        direction): a stage after the port's own `out` impairment, if it has one. Drops are
        counted on `target`. None clears it."""
        port = self._as_port(target)
        if port.link is None:
            raise ConfigError(f"impair: {port.path} has no cable to impair")
        return self._set_stage(port, "cable", imp)

    def _set_stage(self, port: Port, stage: str, imp: Impairment | None) -> ImpairedPath | None:
        stages = self._stages.setdefault(port, {})
        path = stages.get(stage)
        d = "in" if stage == "in" else "out"
        if imp is None or not imp.active:
            if path is not None and path in self._live:
                path.set(Impairment())
                path.retire()  # leaves the chain once what is in flight has arrived
            return None
        if path is None:
            name = (f"{port.path}:{stage}" if stage != "cable"
                    else f"{port.path}->{port.link.peer(port).path}")
            path = ImpairedPath(
                name, imp, seed=direction_seed(self.seed, name), clock=self.clock,
                deliver=port.emit_batch, counters=port.counters,
                deliver_corrupt=port.arrive_corrupt if d == "in" else self._corrupt_receiver(port),
                spawn=lambda c, n: self.spawn(c, name=n),
                on_retired=lambda p, port=port, d=d: self._retired(p, port, d))
            stages[stage] = path
            self.impairments[(port.path, stage)] = path
        else:
            path.set(imp)
            path.retiring = False
        self._live.add(path)
        self._rewire(port, d)
        return path

    def _retired(self, path: ImpairedPath, port: Port, d: str) -> None:
        self._live.discard(path)
        self._rewire(port, d)

    def _rewire(self, port: Port, d: str) -> None:
        """Chain the live stages of one direction of `port`: (port `out`, then `cable`) or
        `in`; the first is where the port hands frames, the last delivers them."""
        stages = self._stages.get(port, {})
        order = ("out", "cable") if d == "out" else ("in",)
        chain = [stages[k] for k in order if k in stages and stages[k] in self._live]
        for a, b in itertools.pairwise(chain):
            a.deliver = b.offer_batch
        if chain:
            chain[-1].deliver = self._egress_receiver(port) if d == "out" else port.arrive_batch
        setattr(port, "impair_out" if d == "out" else "impair_in", chain[0] if chain else None)
        port.refresh()

    @staticmethod
    def _egress_receiver(port: Port) -> Callable[[list[bytes]], None]:
        """Where frames leaving `port`'s egress impairment go: straight to the far end of its
        cable (the delay line was the wire; no second queue and pump hop), else (a VM port,
        or no cable) into the port's output queue."""
        def deliver(frames: list[bytes]) -> None:
            link = port.link
            if link is not None:
                link.peer(port).receive_batch(frames)
            else:
                port.emit_batch(frames)
        return deliver

    @staticmethod
    def _corrupt_receiver(port: Port) -> Callable[[bytes], None]:
        """Who checks the FCS of a corrupted frame `port` sends: the far end of its cable (or,
        for a VM port, the guest's NIC, counted on the port)."""
        def corrupt(frame: bytes) -> None:
            link = port.link
            if link is not None:
                link.peer(port).arrive_corrupt(frame)
            else:
                port.counters.drop("corrupt")
        return corrupt

    def on_receive(self, target: VNic | VmPort | Vm | str,
                   callback: Callable[[bytes], None]) -> None:
        """Run `callback(frame)` for every frame delivered to a guest NIC (as a fabric task)."""
        vnic = self._as_vnic(target)
        self._watched.append(vnic.port.queue)

        async def serve() -> None:
            while True:
                for f in await vnic.recv_batch():
                    callback(f)

        self.spawn(serve(), name=f"guest {vnic.name}")

    def on_receive_batch(self, target: VNic | VmPort | Vm | str,
                         callback: Callable[[list[bytes]], None]) -> None:
        """Like `on_receive`, with every frame that is waiting handed over in one call
        (oldest first): for a consumer that is cheaper per frame in a loop of its own."""
        vnic = self._as_vnic(target)
        self._watched.append(vnic.port.queue)

        async def serve() -> None:
            while True:
                callback(await vnic.recv_batch())

        self.spawn(serve(), name=f"guest {vnic.name}")

    # -- VM lifecycle ------------------------------------------------------------------------
    def remove_vm(self, vm: Vm | str) -> int:
        """Shut a VM down: unplug every NIC from its switch (what it learned there is
        forgotten) and forget the VM's and its ports' names. Returns how many frames that
        were still queued toward the guest were dropped (also counted on each port as
        `link-down`)."""
        v = self._as_vm(vm)
        dropped = self._unplug(v)
        del v.host.vms[v.name]
        return dropped

    def move_vm(self, vm: Vm | str, to: Host | str) -> int:
        """Move a running VM to host `to` (live migration's switch-over).

        Each NIC moves, as the same port object (the guest's `VNic` keeps working, same MAC),
        to the destination's switch of the same name and its port group of the same name;
        everything is checked before anything moves, so a refused move changes nothing. The
        VM keeps its name; its ports' full names change host (`esx2/web.eth0` →
        `esx3/web.eth0`). If its domid is taken there it gets a new one, as on Xen, and its
        VIFs are renamed to match (`vif3.0` → `vif5.0`). Returns how many frames queued toward
        the guest were dropped in the switch-over. Announcing the move (RARP) is the caller's.
        """
        v = self._as_vm(vm)
        dst = to if isinstance(to, Host) else self.hosts.get(to)
        if dst is None or self.hosts.get(dst.name) is not dst:
            raise ConfigError(f"move {v.name}: no host {to!r} (hosts: {sorted(self.hosts)})")
        if dst is v.host:
            raise ConfigError(f"move {v.name}: already on {dst.name}")
        plan: list[tuple[VmPort, StandardSwitch, str]] = []
        for p in v.ports:
            if p.switch is None:
                raise ConfigError(f"move {v.name}: {p.name} is not plugged in")
            sw = dst.switches.get(p.switch.name)
            group = p.sw_group.name
            if sw is None or group not in sw.port_groups:
                raise ConfigError(
                    f"move {v.name}: {dst.name} has no switch {p.switch.name!r} with port group "
                    f"{group!r} (the destination must carry the same networks)"
                )
            plan.append((p, sw, group))
        domid = v.domid
        if any(o.domid == domid for o in dst.vms.values()):
            domid = max(o.domid for o in dst.vms.values()) + 1  # a new domain id, as on Xen
        names = [
            f"{dst.name}/{f'vif{domid}.{p.devid}' if isinstance(p, Vif) else p.name}"
            for p, _, _ in plan
        ]
        clash = [n for n in names if n in self._objects]
        if clash:
            raise ConfigError(f"move {v.name}: {', '.join(clash)} already exist(s)")
        dropped = self._unplug(v)
        del v.host.vms[v.name]
        v.host = dst
        v.domid = domid
        v.ports = []
        dst.vms[v.name] = v
        self._register(v.name, v)
        for p, sw, group in plan:
            if isinstance(p, Vif) and p.domid != domid:
                p.domid = domid
                p.name = f"vif{domid}.{p.devid}"
            v._plug(sw, p, group)
        return dropped

    def _unplug(self, vm: Vm) -> int:
        dropped = 0
        for p in vm.ports:
            n = p.queue.clear()
            if n:
                p.counters.drop("link-down", n)
            dropped += n
            if p.switch is not None:
                p.switch.detach(p)
        self._unregister(vm.name)
        for p in vm.ports:
            self._unregister(p.path)
        return dropped

    def _as_vm(self, vm: Vm | str) -> Vm:
        obj = self[vm] if isinstance(vm, str) else vm
        if not isinstance(obj, Vm) or obj.host.vms.get(obj.name) is not obj:
            raise ConfigError(f"{vm!r} is not a VM of this fabric")
        return obj

    def spawn(self, coro: Coroutine[Any, Any, Any] | Callable[[], Coroutine[Any, Any, Any]], *,
              name: str = "task") -> None:
        """Run a coroutine as a fabric task (started now if running, else on enter); pass a
        function that makes it when a fabric that is never run must not leave it unawaited."""
        if self.running:
            self._start(coro, name)
        else:
            self._pending.append((coro, name))

    # -- capture -----------------------------------------------------------------------------
    def capture(self, targets: Iterable[Port | Link | str] | str, out_dir: str | Path, *,
                single_file: str | None = None) -> list[Path]:
        """Capture ports (or links, or "all" ports) to pcapng: `<out_dir>/<name>.pcapng` per port,
        or every port in one file `single_file` with one interface each. Frames are recorded as
        they cross the port, in both directions. Returns the paths written."""
        ports = self._capture_targets(targets)
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CaptureError(f"cannot create capture directory {out}: {exc.strerror}") from exc
        paths: list[Path] = []
        if single_file is not None:
            path = out / single_file
            w = PcapngWriter(path, clock=self.clock)
            ids = [w.add_interface(n, description=d) for _, n, d in ports]
            for (port, _, _), i in zip(ports, ids, strict=True):
                port.add_tap(w.tap(i))
            self.captures.append(w)
            return [path]
        for port, name, desc in ports:
            path = out / capture_file_name(name)
            w = PcapngWriter(path, clock=self.clock)
            port.add_tap(w.tap(w.add_interface(name, description=desc)))
            self.captures.append(w)
            paths.append(path)
        return paths

    def flush_captures(self) -> None:
        """Write every capture's buffered records to its file."""
        for w in self.captures:
            w.flush()

    def _capture_targets(self, targets: Iterable[Port | Link | str] | str
                         ) -> list[tuple[Port, str, str]]:
        if isinstance(targets, str):
            if targets != "all":
                targets = [t.strip() for t in targets.split(",") if t.strip()]
            else:
                targets = list(self.ports())
        seen: list[tuple[Port, str, str]] = []
        for t in targets:
            if isinstance(t, Link):
                port, desc = t.a, f"link {t.name}"
            else:
                obj = self[t] if isinstance(t, str) else t
                if isinstance(obj, Link):
                    port, desc = obj.a, f"link {obj.name}"
                elif isinstance(obj, Port):
                    port, desc = obj, obj.path
                else:
                    raise CaptureError(f"capture: {t!r} is not a port or link")
            if all(port is not p for p, _, _ in seen):
                seen.append((port, self.short_name(port), desc))
        if not seen:
            raise CaptureError("capture: nothing to capture")
        return seen

    # -- lookups -----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        obj = self._objects.get(name)
        if obj is not None:
            return obj
        obj = self._short.get(name)
        if isinstance(obj, _Ambiguous):
            raise NotFound(f"{name!r} is ambiguous; use one of {', '.join(sorted(obj.paths))}")
        if obj is None:
            raise NotFound(f"no {name!r} in this fabric (try one of: {self._hint(name)})")
        return obj

    def __contains__(self, name: object) -> bool:
        return name in self._objects or (
            name in self._short and not isinstance(self._short[name], _Ambiguous)
        )

    def names(self) -> list[str]:
        """Every full name, sorted."""
        return sorted(self._objects)

    def ports(self) -> Iterator[Port]:
        """Every port (PIFs, VLAN PIFs, VM ports, physical switch ports), in creation order."""
        return (o for o in self._objects.values() if isinstance(o, Port))

    def short_name(self, port: Port) -> str:
        """The shortest name `fab[...]` resolves to this object."""
        short = port.path.split("/", 1)[-1]
        return short if self._short.get(short) is port else port.path

    def counters(self) -> dict[str, dict[str, Any]]:
        """Every port's counters by full name (with `rules`, the matches per traffic rule,
        on ports that have traffic filtering rules)."""
        out = {}
        for p in self.ports():
            out[p.path] = c = p.counters.as_dict()
            if getattr(p, "sw_rx_gate", None) or getattr(p, "sw_tx_gate", None):
                rules = port_rule_counters(p)
                if rules:
                    c["rules"] = rules
        return out

    def _hint(self, name: str) -> str:
        cands = [n for n in self._objects if name.lower() in n.lower()] or self.names()
        return ", ".join(cands[:8]) + (" ..." if len(cands) > 8 else "")

    def _register(self, path: str, obj: Any) -> None:
        if not _NAME_RE.match(path):
            raise ConfigError(f"bad name {path!r}: use letters, digits and . _ - : @ +")
        if path in self._objects or (path in self._short and "/" not in path):
            raise ConfigError(f"name {path!r} is already used in this fabric")
        self._objects[path] = obj
        if isinstance(obj, Port):
            obj.path = path
        if "/" in path:
            short = path.split("/", 1)[1]
            if short in self._objects:
                return
            prev = self._short.get(short)
            if prev is None:
                self._short[short] = obj
            elif isinstance(prev, _Ambiguous):
                prev.paths.append(path)
            else:
                self._short[short] = _Ambiguous(getattr(prev, "path", short), path)

    def _unregister(self, path: str) -> None:
        """Forget the object registered at `path` (and its short name, unless another object
        shares it)."""
        obj = self._objects.pop(path, None)
        if obj is not None and "/" in path:
            short = path.split("/", 1)[1]
            prev = self._short.get(short)
            if prev is obj:
                del self._short[short]
            elif isinstance(prev, _Ambiguous) and path in prev.paths:
                prev.paths.remove(path)
                if len(prev.paths) == 1 and prev.paths[0] in self._objects:
                    self._short[short] = self._objects[prev.paths[0]]

    def _as_port(self, p: Port | str) -> Port:
        obj = self[p] if isinstance(p, str) else p
        if not isinstance(obj, Port):
            raise ConfigError(f"{p!r} is not a port")
        return obj

    def _as_vnic(self, t: VNic | VmPort | Vm | str) -> VNic:
        obj = self[t] if isinstance(t, str) else t
        if isinstance(obj, Vm):
            return obj.vnic
        if isinstance(obj, VmPort):
            return obj.vnic
        if isinstance(obj, VNic):
            return obj
        raise ConfigError(f"{t!r} is not a VM or a VM's NIC")

    def _next_mac(self, oui: str) -> str:
        n = next(self._macs)
        return f"{oui}:{(n >> 16) & 0x7F:02x}:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"

    # -- running -----------------------------------------------------------------------------
    def _add_bridge(self, sw: Bridge) -> None:
        self._bridges.append(sw)
        if self.running:
            self._start_aging(sw)

    def _add_lag(self, lag: Lag) -> None:
        self.lags[lag.port.path] = lag
        lag.clock_now(self.clock.now_ns)
        if self.running:
            self._start(lag.run(self.clock), f"lag {lag.port.path}")

    def _start_aging(self, sw: Bridge) -> None:
        self._start(self._age(sw), f"mac aging {sw.name}")

    async def _age(self, sw: Bridge) -> None:
        """Expire `sw`'s MAC table entries as they age out, by the fabric's clock: the task
        sleeps until the oldest entry can expire (at most every aging/`AGING_SWEEPS` seconds)
        and not at all while the table is empty, so idle time costs nothing (lookups also
        expire entries lazily; the frame path pays nothing for the sweep)."""
        table = sw.mac_table
        now = self.clock.now_ns
        await sweep_by_deadline(self.clock, table.next_expiry_ns, lambda: table.expire(now()),
                                table.wait_for_entry, min_gap_s=table.aging_s / AGING_SWEEPS)

    async def __aenter__(self) -> Fabric:
        self.running = True
        for link in self.links:
            self._start_link(link)
        for sw in self._bridges:
            self._start_aging(sw)
        for path, lag in self.lags.items():
            self._start(lag.run(self.clock), f"lag {path}")
        for _, agent in self.discovery.values():  # CDP/LLDP agents that advertise
            agent.start()
        pending, self._pending = self._pending, []
        for coro, name in pending:
            self._start(coro, name)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.running = False
        for path in self.impairments.values():
            path.close()
        try:
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.clear()
            errors = []
            for w in self.captures:
                try:
                    w.close()
                except CaptureError as err:
                    errors.append(err)
        if exc_type is None:
            self.check()
            if errors:
                raise errors[0]

    def check(self) -> None:
        """Raise if any fabric task has crashed (a bug: switch tasks never raise for frames)."""
        if self._failures:
            name, err = self._failures[0]
            raise NetsimError(f"fabric task {name!r} crashed: {err!r}") from err

    async def settle(self, *, rounds: int = 3, limit: int = 100_000) -> None:
        """Yield to the loop until every link queue, and every guest queue an `on_receive`
        callback drains, has been empty for `rounds` passes in a row: frames in flight have
        arrived and guests have answered. Raises if it does not quiet down within `limit`."""
        quiet = 0
        for _ in range(limit):
            await asyncio.sleep(0)
            self.check()
            if any(len(lk.a.queue) or len(lk.b.queue) for lk in self.links) or any(
                len(q) for q in self._watched
            ):
                quiet = 0
            else:
                quiet += 1
                if quiet >= rounds:
                    return
        raise NetsimError(f"fabric did not settle within {limit} loop passes")

    def _start_link(self, link: Link) -> None:
        self._start(link.pump(link.a, link.b), f"link {link.a.path}->{link.b.path}")
        self._start(link.pump(link.b, link.a), f"link {link.b.path}->{link.a.path}")

    def _start(self, coro: Coroutine[Any, Any, Any] | Callable[[], Coroutine[Any, Any, Any]],
               name: str) -> None:
        if not asyncio.iscoroutine(coro):
            coro = coro()
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[task] = name
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        name = self._tasks.pop(task, task.get_name())
        if not task.cancelled() and task.exception() is not None:
            self._failures.append((name, task.exception()))


def capture_file_name(port: str) -> str:
    """The file a port's capture goes to: `<port>.pcapng`, with `%` and `/` percent-escaped
    (`esx1/vmnic0` → `esx1%2Fvmnic0.pcapng`), so that two ports never share a file name and
    `core/esx1.vmnic0` and `esx1/vmnic0` are told apart (the pcapng interface keeps the name)."""
    return port.replace("%", "%25").replace("/", "%2F") + ".pcapng"
