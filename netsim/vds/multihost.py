"""Multi-host runs: the async bodies of `hvsim host`, `hvsim vds-push`, `hvsim migrate` and a
local multi-host run (`run_local`, what `hvsim run --broker` starts).

Adapter layer: it reads topology files, opens buses (MQTT or in-process), prints progress; the
switching and management logic lives in `netsim.vds.dswitch` and `netsim.vds.host`.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from netsim.errors import ConfigError, NetsimError, TransportError
from netsim.lab.fabric import Fabric
from netsim.lab.topology import Topology, load_topology
from netsim.vds.dswitch import FabricView, ManagementPlane
from netsim.vds.host import HostAgent, host_plan, vds_from_topology
from netsim.vds.transport.bus import Bus, DropPolicy
from netsim.vds.transport.claim import (
    ClaimWatch,
    HostAccessError,
    HostClaim,
    HostConflictError,
    check_host_free,
)
from netsim.vds.transport.memory import MemoryBroker, MemoryBus
from netsim.vds.transport.mqtt import BrokerSettings, MqttBus
from netsim.vds.transport.topics import Topics
from netsim.vds.vdsconfig import VdsConfig

#: diagnostics and progress (what a host is doing, what it waits for) go to stderr ...
console = Console(stderr=True)
#: ... and the results a command was run for go to stdout, so they can be piped and parsed
results = Console(soft_wrap=True, highlight=False)


@dataclass(frozen=True)
class Lab:
    """Where a multi-host run lives: broker login, fabric name (topic prefix), vDS switch."""

    settings: BrokerSettings | None
    fabric: str = "lab"
    vds_name: str = "dvs1"
    switch: str | None = None

    @property
    def topics(self) -> Topics:
        return Topics(self.fabric)


def _bus(lab: Lab, client_id: str, presence: str | None = None, *,
         keepalive: int | None = None) -> Bus:
    if lab.settings is None:
        raise ConfigError("this command needs --broker mqtt://HOST:PORT")
    settings = lab.settings if keepalive is None else replace(lab.settings, keepalive=keepalive)
    return MqttBus(settings, client_id=f"hvsim-{lab.fabric}-{client_id}",
                   presence_topic=presence)


#: keep-alive of a process's shared reading connection: it carries no presence (no will), so
#: it need not be noticed quickly when it dies, and its pings should not add to the hosts'
VIEW_KEEPALIVE_S = 60


def _stop_event() -> asyncio.Event:
    """Set on SIGTERM/SIGINT, so the host leaves cleanly (presence offline, not by will)."""
    ev = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, ev.set)
    return ev


async def _config_or_stop(waiting: Coroutine[Any, Any, Any], stop: asyncio.Event) -> bool:
    """Await the first configuration; False if SIGTERM/Ctrl-C came first (the host then leaves
    cleanly instead of ignoring the signal until a configuration arrives)."""
    config = asyncio.ensure_future(waiting)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({config, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not config.done():
            config.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await config
    if config.cancelled():
        return False
    config.result()  # a timeout or a refused configuration raises here
    return True


async def _reminding(waiting: Coroutine[Any, Any, Any], text: str, bus: Bus) -> Any:
    """Await `waiting`, printing `text` (and the broker's state) every `CONFIG_REMINDER_S`."""
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CONFIG_REMINDER_S)
            if done:
                return task.result()
            console.print(text + _broker_state(bus))
    finally:
        task.cancel()


_RANGE = re.compile(r"^([^\[\]]*)\[(\d+)-(\d+)\]([^\[\]]*)$")
MAX_HOSTS_PER_PROCESS = 1000
#: Host agents of one process that may be connecting to the broker at the same time.
STARTS_AT_ONCE = 8


def expand_host_names(spec: str) -> list[str]:
    """`esx[1-125]` -> esx1 .. esx125 (`esx[001-125]` keeps the width); commas separate
    several (`esx1,esx[3-4]`). ConfigError for a malformed or reversed range."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        m = _RANGE.match(part)
        if m is None:
            if not part or "[" in part or "]" in part:
                raise ConfigError(f"host names {spec!r}: {part!r} is not a name or NAME[A-B]")
            names.append(part)
            continue
        head, a, b, tail = m.groups()
        lo, hi = int(a), int(b)
        if lo > hi or hi - lo >= MAX_HOSTS_PER_PROCESS:
            raise ConfigError(f"host names {spec!r}: range [{a}-{b}] must go up and name at "
                              f"most {MAX_HOSTS_PER_PROCESS} hosts")
        width = len(a) if a.startswith("0") else 0
        names += [f"{head}{i:0{width}d}{tail}" for i in range(lo, hi + 1)]
    if len(names) != len(set(names)):
        raise ConfigError(f"host names {spec!r}: a host is named twice")
    return names


#: a host still without its configuration says so this often (seconds)
CONFIG_REMINDER_S = 30.0
#: longest pause between attempts of a host (of several in a process) to join
JOIN_RETRY_MAX_S = 30.0


async def run_hosts(
    topo_path: Path, names: list[str], lab: Lab, *, duration: float | None,
    config_wait_s: float | None = None,
) -> None:
    """Run several hosts of the topology in this process (each its own agent and broker
    connection, with its own presence), until stopped or for `duration` seconds.

    The agents share one more connection, without a will, for what they all read: every
    host's presence and status and the vDS configurations (a `FabricView`), and for the
    look-before-joining check of each host name."""
    topo = load_topology(topo_path)
    known = {h.name for h in topo.hosts}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"{topo_path}: no host {', '.join(missing[:5])}"
                          f"{' ...' if len(missing) > 5 else ''} in the topology "
                          f"({len(known)} hosts)")
    vds = vds_from_topology(topo, name=lab.vds_name, switch=lab.switch)  # once, not per host
    stop = _stop_event()
    # Connect a few at a time: a hundred MQTT handshakes started in one loop turn starve each
    # other (the broker drops clients whose CONNECT comes later than its timeout).
    starting = asyncio.Semaphore(STARTS_AT_ONCE)

    waiting = set(names)

    async def one(name: str, view: FabricView) -> None:
        delay = 1.0
        while True:
            await starting.acquire()
            connected = asyncio.Event()
            run = asyncio.ensure_future(run_host(
                topo_path, name, lab, duration=duration, config_wait_s=config_wait_s,
                topo=topo, vds=vds, stop=stop, connected=connected.set, view=view,
                configured=lambda: waiting.discard(name)))
            waiter = asyncio.ensure_future(connected.wait())
            try:
                await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                starting.release()
            try:
                await run
                return
            except (HostConflictError, HostAccessError):
                raise
            except TransportError as exc:
                # The shared connection got in, so address and login are right: a host that
                # could not join (a timeout while the broker is busy with hundreds of others,
                # or a restart) tries again, as its bus would once connected.
                if connected.is_set() or stop.is_set():
                    raise
                console.print(f"{name}: {exc}; trying again in {delay:.0f} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, JOIN_RETRY_MAX_S)

    async def remind(bus: Bus) -> None:
        vds = lab.vds_name
        while waiting:
            await asyncio.sleep(CONFIG_REMINDER_S)
            if waiting:
                console.print(f"{len(waiting)} of {len(names)} hosts still wait for {vds}'s "
                              f"configuration (hvsim vds-push){_broker_state(bus)}")

    claim = HostClaim.new()
    async with (
        _bus(lab, f"view-{claim.instance}",
             keepalive=max(VIEW_KEEPALIVE_S, lab.settings.keepalive if lab.settings else 0))
        as bus,
        FabricView(bus, lab.topics) as view,
    ):
        reminder = asyncio.create_task(remind(bus))
        try:
            await asyncio.gather(*(one(n, view) for n in names))
        finally:
            reminder.cancel()
        if view.failures:
            name, err = view.failures[0]
            raise NetsimError(f"task {name!r} crashed: {err!r}") from err


def _broker_state(bus: Bus) -> str:
    """'' while connected; else why not (the bus keeps reconnecting by itself)."""
    if getattr(bus, "connected", True):
        return ""
    why = getattr(bus, "last_error", None)
    return f"; the broker is not reachable, retrying{f' ({why})' if why else ''}"


async def run_host(
    topo_path: Path, name: str, lab: Lab, *, duration: float | None,
    config_wait_s: float | None = None,
    topo: Topology | None = None, vds: VdsConfig | None = None,
    stop: asyncio.Event | None = None,
    connected: Callable[[], None] | None = None,
    view: FabricView | None = None,
    configured: Callable[[], None] | None = None,
) -> None:
    """Run host `name` of the topology until stopped (or for `duration` seconds);
    `connected()` is called once it is online (presence published, waiting for its
    configuration), `configured()` once its first configuration is applied.

    Without a configuration the host waits (saying so every `CONFIG_REMINDER_S` unless it runs
    with a shared `view`, whose owner says it for all), through broker outages (the bus
    reconnects by itself), for `config_wait_s` seconds if given (then TransportError), else
    until stopped. With `view`, the host reads peers and configurations from it and probes
    its name on the view's connection."""
    if duration is not None:
        config_wait_s = duration if config_wait_s is None else min(config_wait_s, duration)
    if topo is None:
        topo = load_topology(topo_path)
    if vds is None:
        vds = vds_from_topology(topo, name=lab.vds_name, switch=lab.switch)
    plan = host_plan(topo, name, vds, switch=lab.switch)
    topics = lab.topics
    session = int.from_bytes(os.urandom(4), "big")
    if stop is None:
        stop = _stop_event()
    claim = HostClaim.new()
    # look first, on a connection without a will: a second instance must not touch the first
    stale = lab.settings.keepalive * 1.5 if lab.settings else None
    if view is not None:
        await check_host_free(view.bus, topics, name, claim, stale_after_s=stale)
    else:
        async with _bus(lab, f"{name}-probe-{claim.instance}") as probe:
            await check_host_free(probe, topics, name, claim, stale_after_s=stale)
    async with (
        Fabric() as fab,
        _bus(lab, f"{name}-{claim.instance}", topics.presence(name)) as bus,
        ClaimWatch(bus, topics, name, claim) as watch,
        HostAgent(fab, name, bus, topics, session=session, guests=True, view=view,
                  on_event=lambda text: console.print(f"{name}: {text}")) as agent,
    ):
        console.print(f"{name}: connected to {lab.settings.url if lab.settings else 'memory'}; "
                      f"waiting for {vds.name}'s configuration (hvsim vds-push)")
        if connected is not None:
            connected()
        waiting = agent.wait_config(vds.name, 1, within_s=config_wait_s)
        if view is None:
            waiting = _reminding(waiting, f"{name}: still waiting for {vds.name}'s "
                                 "configuration (hvsim vds-push)", bus)
        if not await _config_or_stop(waiting, stop):
            console.print(f"{name}: leaving before any configuration arrived")
            return
        if configured is not None:
            configured()
        for vm, nics in plan.vms.items():
            await agent.add_vm(vm, nics, domid=plan.domids[vm], **plan.guests[vm])
        running = agent.plane.running[vds.name].version
        vlans = sorted(agent.plane.vlans.get(vds.name, ()))
        console.print(f"{name}: {len(plan.vms)} VMs on {vds.name} v{running} (VLANs {vlans}); "
                      "Ctrl-C or SIGTERM to leave")
        waiter = asyncio.create_task(stop.wait())
        taken = asyncio.create_task(watch.superseded.wait())
        try:
            await asyncio.wait({waiter, taken}, timeout=duration, return_when="FIRST_COMPLETED")
        finally:
            waiter.cancel()
            taken.cancel()
        if watch.superseded.is_set():
            bus.presence_topic = None  # leave the presence to the instance that runs the host
            raise watch.error()
        console.print(f"{name}: leaving; counters {agent.counters()['links']}")


async def _retained(bus: Bus, topic: str, wait_s: float = 0.5) -> bytes | None:
    async with bus.subscribe(topic, qos=1, policy=DropPolicy.DROP_OLDEST) as sub:
        try:
            return (await asyncio.wait_for(sub.get(), wait_s)).payload
        except TimeoutError:
            return None


async def push_config(
    topo_path: Path, lab: Lab, *, wait_s: float | None = 10.0
) -> VdsConfig:
    """Publish the topology's vDS (a new version if it changed) and wait for the hosts."""
    topo = load_topology(topo_path)
    vds = vds_from_topology(topo, name=lab.vds_name, switch=lab.switch)
    topics = lab.topics
    async with _bus(lab, "vcenter") as bus, ManagementPlane(bus, topics) as mp:
        raw = await _retained(bus, topics.vds_config(vds.name))
        if raw is not None:
            current = VdsConfig.from_json(raw, source=topics.vds_config(vds.name))
            mp.configs[vds.name] = current
            if replace(vds, version=current.version) == current:
                results.print(f"{vds.name}: unchanged, v{current.version}")
                vds = current
            else:
                vds = await mp.publish(replace(vds, version=current.version + 1))
        else:
            vds = await mp.publish(vds)
        if wait_s:
            t0 = time.monotonic()
            await mp.wait_applied(vds.name, vds.version, within_s=wait_s)
            results.print(f"{vds.name} v{vds.version} runs on {', '.join(sorted(vds.hosts))} "
                          f"({(time.monotonic() - t0) * 1000:.0f} ms)")
        else:
            results.print(f"{vds.name} v{vds.version} published (not waiting for the hosts)")
    return vds


async def migrate_vm(vm: str, to: str, lab: Lab, *, within_s: float = 10.0) -> float:
    """Ask the VM's current host to move it to `to`; return the seconds it took."""
    topics = lab.topics
    async with _bus(lab, "vcenter-migrate") as bus, ManagementPlane(bus, topics) as mp:
        with contextlib.suppress(TransportError):
            await mp.peers.wait_until(lambda: mp.peers.host_of_vm(vm) is not None,
                                      within_s=2.0, what="status")
        src = mp.peers.host_of_vm(vm)
        if src is None:
            raise ConfigError(f"no online host of fabric {lab.fabric!r} runs VM {vm!r}")
        if src == to:
            raise ConfigError(f"{vm} already runs on {to}")
        if to not in mp.peers.online():
            raise TransportError(f"host {to} is not online in fabric {lab.fabric!r}")
        t0 = time.monotonic()
        before = mp.peers.hosts[to].migration_error
        await bus.publish(topics.control(src), json.dumps({"migrate": vm, "to": to}).encode(),
                          qos=1)

        def settled() -> bool:
            return mp.peers.host_of_vm(vm) == to or mp.peers.hosts[to].migration_error != before

        await mp.peers.wait_until(settled, within_s=within_s, what=f"{vm} arriving on {to}")
        if mp.peers.host_of_vm(vm) != to:
            raise ConfigError(f"{to} refused {vm}: {mp.peers.hosts[to].migration_error}")
        took = time.monotonic() - t0
        results.print(f"{vm}: {src} → {to} in {took * 1000:.0f} ms")
        return took


#: Above this many hosts, `hvsim hosts` summarises (counts, versions, who is offline) unless
#: asked for every row.
HOSTS_TABLE_MAX = 20


def _names(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" … (+{len(names) - limit})" if len(names) > limit
                                       else "")


def _host_summary(lab: Lab, hosts: dict[str, Any]) -> Table:
    """Counts instead of rows: presence, hosts per vDS version, VMs, migration errors."""
    t = Table(title=f"hosts of fabric {lab.fabric}: {len(hosts)} (hvsim hosts --all: every row)")
    t.add_column("what")
    t.add_column("hosts", justify="right")
    t.add_column("which")
    online = sorted(n for n, st in hosts.items() if st.online)
    offline = sorted(n for n, st in hosts.items() if not st.online)
    t.add_row("[green]online[/]", str(len(online)), _names(online, 4))
    t.add_row("[red]offline[/]", str(len(offline)), _names(offline))
    versions: dict[str, list[str]] = {}
    for n, st in hosts.items():
        for v, (ver, _vl) in st.vds.items():
            versions.setdefault(f"{v} v{ver}", []).append(n)
    for key, who in sorted(versions.items()):
        t.add_row(key, str(len(who)), _names(sorted(who), 4))
    vms = sum(len(st.vms) for st in hosts.values())
    t.add_row("VMs", str(vms), "")
    errors = sorted(n for n, st in hosts.items() if st.migration_error)
    if errors:
        t.add_row("last migration error", str(len(errors)), _names(errors))
    return t


async def host_table(lab: Lab, *, wait_s: float = 1.0, every_row: bool | None = None) -> Table:
    """Every host the fabric's retained topics know: presence, vDS versions, VLANs, VMs — a
    row each, or (by default above `HOSTS_TABLE_MAX` hosts) a summary."""
    topics = lab.topics
    async with _bus(lab, "vcenter-status") as bus, ManagementPlane(bus, topics) as mp:
        await asyncio.sleep(wait_s)  # retained presence and status arrive right after SUBACK
        hosts = dict(mp.peers.hosts)
        if not (every_row if every_row is not None else len(hosts) <= HOSTS_TABLE_MAX):
            return _host_summary(lab, hosts)
        t = Table(title=f"hosts of fabric {lab.fabric}")
        for col in ("host", "presence", "vDS (version: VLANs)", "VMs", "last migration error"):
            t.add_column(col)
        for name, st in sorted(mp.peers.hosts.items()):
            t.add_row(
                name,
                "[green]online[/]" if st.online else "[red]offline[/]",
                "; ".join(f"{v} v{ver}: {sorted(vl)}" for v, (ver, vl) in sorted(st.vds.items())),
                ", ".join(st.vms),
                st.migration_error,
            )
        return t


async def run_local(
    topo: Topology,
    lab: Lab,
    *,
    ping: bool = True,
    wait_s: float = 10.0,
    capture_dir: Path | None = None,
    duration: float = 0.0,
) -> dict[str, Any]:
    """Every host of `topo` as its own agent in this process, joined through the broker (or
    an in-process bus when `lab.settings` is None); ping every VM pair; return the results.

    With `capture_dir`, each host's ports are captured to `<dir>/<host>.pcapng` (one interface
    per port, named after it), as `hvsim run` does for a single-process lab."""
    vds = vds_from_topology(topo, name=lab.vds_name, switch=lab.switch)
    topics = lab.topics
    memory = MemoryBroker() if lab.settings is None else None
    if memory is None:
        await _refuse_live_hosts(lab, [h.name for h in topo.hosts])

    def make(cid: str, presence: str | None = None) -> Bus:
        if memory is not None:
            return MemoryBus(memory, client_id=cid, presence_topic=presence)
        return _bus(lab, cid, presence)

    results: dict[str, Any] = {"pings": []}
    async with contextlib.AsyncExitStack() as stack:
        vc = await stack.enter_async_context(make("vcenter"))
        mp = await stack.enter_async_context(ManagementPlane(vc, topics))
        agents: dict[str, HostAgent] = {}
        fabrics: dict[str, Fabric] = {}
        for i, h in enumerate(topo.hosts):
            fab = fabrics[h.name] = await stack.enter_async_context(Fabric())
            bus = await stack.enter_async_context(make(h.name, topics.presence(h.name)))
            agents[h.name] = await stack.enter_async_context(
                HostAgent(fab, h.name, bus, topics, session=i + 1, guests=True)
            )
        await mp.publish(vds)
        await mp.wait_applied(vds.name, vds.version, within_s=wait_s)
        for h in topo.hosts:
            plan = host_plan(topo, h.name, vds, switch=lab.switch)
            for vm, nics in plan.vms.items():
                await agents[h.name].add_vm(vm, nics, domid=plan.domids[vm], **plan.guests[vm])
        if capture_dir is not None:
            results["captures"] = [
                str(p) for name, fab in fabrics.items()
                for p in fab.capture("all", capture_dir, single_file=f"{name}.pcapng")
            ]
        for a in agents.values():  # every host knows every other host's VLANs
            await a.plane.peers.wait_until(
                lambda a=a: all(a.plane.peers.version(o, vds.name) == vds.version
                                and o in a.plane.peers.online() for o in agents),
                within_s=wait_s, what=f"{a.name} status")
        if ping:
            results["pings"] = await _ping_all(topo, agents)
        if duration:
            await asyncio.sleep(duration)
        results["counters"] = {n: a.counters() for n, a in agents.items()}
        results["ports"] = {n: fab.counters() for n, fab in fabrics.items()}
    return results


async def _refuse_live_hosts(lab: Lab, names: list[str]) -> None:
    """Refuse (one HostConflictError naming them all) to run in-process hosts whose names a
    live `hvsim host` process already runs in this fabric: the same claim check `hvsim host`
    makes, so a local run never marks live hosts offline nor lets a second instance in."""
    claim = HostClaim.new()
    conflicts: list[str] = []
    async with _bus(lab, f"local-probe-{claim.instance}") as probe:
        for name in names:
            try:
                await check_host_free(probe, lab.topics, name, claim)
            except HostConflictError as exc:
                conflicts.append(str(exc).split(": stop it")[0])
    if conflicts:
        raise HostConflictError(
            f"{'; '.join(conflicts)}: this command runs every host of the topology itself and "
            f"would take them over; stop them, or run it with another --fabric"
        )


async def _ping_all(topo: Topology, agents: dict[str, HostAgent]) -> list[dict[str, Any]]:
    where = {vm.name: vm.host for vm in topo.vms}
    addrs = {vm.name: [v.ip.ip for v in vm.vifs if v.ip] for vm in topo.vms}
    out = []
    for a, b in itertools.permutations(sorted(where), 2):
        if not addrs[b] or not addrs[a]:
            continue
        agent = agents[where[a]].guests[a]
        if agent.guest.route(addrs[b][0]) is None:
            out.append({"src": a, "dst": b, "dst_ip": str(addrs[b][0]), "src_host": where[a],
                        "dst_host": where[b], "replied": False, "no_route": True,
                        "rtt_ms": None})
            continue
        r = await agent.ping(addrs[b][0], wait_s=1.0)
        if not r.replied:  # the first echo may wait on ARP across hosts: one retry
            r = await agent.ping(addrs[b][0], wait_s=1.0)
        out.append({"src": a, "dst": b, "dst_ip": str(addrs[b][0]), "src_host": where[a],
                    "dst_host": where[b], "replied": r.replied, "no_route": False, "rtt_ms":
                    round(r.rtt_s * 1000, 2) if r.rtt_s is not None else None})
    return out


def ping_table(pings: list[dict[str, Any]]) -> Table:
    """The ping matrix as a rich table."""
    t = Table(title="ping between VMs across hosts")
    for col in ("from", "to", "result", "rtt ms"):
        t.add_column(col)
    for p in pings:
        t.add_row(f"{p['src']} ({p['src_host']})", f"{p['dst']} {p['dst_ip']} ({p['dst_host']})",
                  "[green]reply[/]" if p["replied"] else
                  "no route" if p["no_route"] else "[red]lost[/]",
                  str(p["rtt_ms"] or "-"))
    return t

