"""Run a scenario on a built fabric: timeline, captures, expectations, and a JSON report.

`run_scenario(scenario, out_dir=...)` builds the scenario's topology (a `netsim.lab.lab.Lab`, whose
guests answer ARP and ping), checks every name before starting, runs the timeline on a
`VirtualClock` (default: deterministic, as fast as the frames compute) or a `PacedClock`
(`realtime=True`), then evaluates the expectations and writes `report.json` next to the
captures. A caller that built its own `Fabric` passes it as `fabric=` (pings are then not
available). The same scenario twice gives byte-identical captures and report: nothing written
depends on the wall clock.

What "arrives at a port" means: the switch sends the frame out of that port — towards the guest
for a VM port (`vif1.0`), onto the wire for a PIF (`xen1/eth0`) or a physical switch port.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from netsim.dataplane.port import Port
from netsim.dataplane.vclock import PacedClock, VirtualClock
from netsim.errors import ScenarioError
from netsim.lab.fabric import Link, Vm
from netsim.scenario.model import (
    Arrives,
    CounterCheck,
    Expectation,
    FlushMac,
    ImpairEvent,
    LagEvent,
    LinkEvent,
    MirrorEvent,
    MoveVm,
    PingCheck,
    PortEvent,
    PortGroupEvent,
    Replay,
    Scenario,
    Send,
    Step,
    SwitchEvent,
    VifEvent,
    find_port_group,
    fmt_ns,
)
from netsim.wire.filters import Filter, decode
from netsim.wire.pcapread import CaptureStats, read_capture

#: frames handed to the fabric between two yields to the event loop, in fast mode: well under
#: a port queue's 1024 slots, so every hop's pump drains them before the next burst.
BURST = 256
#: after the last step of a scenario without `duration`, frames in flight get this long to land
GRACE_NS = 10_000_000


@dataclass
class Result:
    """The outcome of one expectation."""

    name: str
    kind: str
    passed: bool
    detail: str
    where: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return dataclasses.asdict(self)


@dataclass
class Report:
    """What a run did and whether every expectation held."""

    scenario: str
    source: str
    results: list[Result]
    steps: list[dict[str, Any]]
    counters: dict[str, dict[str, Any]]
    captures: list[str]
    duration_ns: int
    realtime: dict[str, Any] | None = None
    #: files of an earlier run in the same directory, removed before this one wrote (not JSON)
    removed: list[str] = dataclasses.field(default_factory=list)
    #: what each impaired direction did ("esx1/vmnic0:out": offered, delivered, lost, ...)
    impairments: dict[str, dict[str, Any]] | None = None
    #: MAC moves per switch that saw any (flapping: "moves" and the hosts that flapped)
    mac_flaps: dict[str, dict[str, Any]] | None = None
    #: every LAG / bond / port-channel at the end (`Lag.status()`), by its port's path
    lags: dict[str, dict[str, Any]] | None = None

    @property
    def passed(self) -> bool:
        """True when every expectation held."""
        return all(r.passed for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able; identical for identical virtual-time runs."""
        out = {"scenario": self.scenario, "source": self.source, "passed": self.passed,
               "expectations": [r.as_dict() for r in self.results], "steps": self.steps,
               "counters": self.counters, "captures": self.captures,
               "duration_ns": self.duration_ns}
        if self.realtime is not None:
            out["realtime"] = self.realtime
        if self.impairments:
            out["impairments"] = self.impairments
        if self.mac_flaps:
            out["mac_flaps"] = self.mac_flaps
        if self.lags:
            out["lags"] = self.lags
        return out

    def to_json(self) -> str:
        """Stable JSON text (sorted keys)."""
        return json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n"


class PortRecorder:
    """Records frames the switch sends out of chosen ports: `(ns since start, bytes)` each."""

    def __init__(self, clock: Any, t0: int = 0) -> None:
        self.clock = clock
        self.t0 = t0
        self.frames: dict[str, list[tuple[int, bytes]]] = {}

    def watch(self, name: str, port: Any) -> list[tuple[int, bytes]]:
        """Start recording `port` under `name`; returns the live list."""
        if name in self.frames:
            return self.frames[name]
        out: list[tuple[int, bytes]] = []
        now = self.clock.now_ns

        def tap(frame: bytes, outbound: bool) -> None:
            if outbound:
                out.append((now() - self.t0, frame))

        port.add_tap(tap)
        self.frames[name] = out
        return out


class _Watch:
    """Arrival expectations of one port: decode each outbound frame once, test every filter."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.t0 = 0
        self.items: list[tuple[Callable[[Any], bool], list[int]]] = []

    def add(self, flt: Filter) -> list[int]:
        times: list[int] = []
        self.items.append((flt.match_decoded, times))
        return times

    def tap(self, frame: bytes, outbound: bool) -> None:
        if not outbound:
            return
        d = decode(frame)
        if d is None:
            return
        t = -1
        for match, times in self.items:
            if match(d):
                if t < 0:
                    t = self.clock.now_ns() - self.t0
                times.append(t)


def build_lab(scn: Scenario, clock: Any) -> Any:
    """The running-to-be `Lab` of a scenario's topology file."""
    if scn.topology is None:
        raise scn.error(("topology",), "this scenario names no topology file; pass a fabric")
    from netsim.lab.topology import load_topology
    try:
        from netsim.lab.lab import Lab
    except ImportError as exc:  # the topology part's builder is not installed in this tree
        raise ScenarioError(f"{scn.source}: building topologies needs netsim.lab.lab") from exc
    return Lab(load_topology(scn.topology), clock=clock)


class ScenarioRun:
    """One run of a scenario (see the module docstring); `await run()` gives the `Report`."""

    def __init__(self, scn: Scenario, *, fabric: Any = None, lab: Any = None,
                 out_dir: str | Path | None = None, realtime: bool = False,
                 clock: Any = None, progress: Callable[[float], None] | None = None,
                 replay_progress: Callable[[int], None] | None = None,
                 attach: Callable[[Any], Any] | None = None) -> None:
        self.scn = scn
        #: called with the fabric before it starts (a drop capture, a live server); what it
        #: returns is closed (`close()`) when the run ends
        self.attach = attach
        if clock is None:
            clock = PacedClock() if realtime else VirtualClock()
        self.clock = clock
        self.realtime = realtime
        if fabric is None and lab is None:
            lab = build_lab(scn, clock)
        self.lab = lab
        self.fabric = fabric if fabric is not None else lab.fabric
        if getattr(self.fabric, "clock", clock) is not clock:
            raise ScenarioError(f"{scn.source}: the fabric runs on another clock than the "
                                "scenario; build it with clock=<the run's clock>")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.replay_progress = replay_progress
        self._replayed = 0
        pingable = None
        if lab is not None:
            pingable = [n for n, a in lab.agents.items() if a.guest.addresses()]
        scn.check(self.fabric, pingable=pingable)
        if lab is not None:
            self._check_xen_vlan_changes(lab)
            self._check_xen_discovery(lab)
        self._t0 = 0
        self._end_ns = scn.end_ns
        self._step_stats: list[dict[str, Any]] = []
        self._offsets: list[int] = []
        self._counter_values: dict[int, int] = {}
        self._ping_results: dict[int, Any] = {}

    def _check_xen_vlan_changes(self, lab: Any) -> None:
        for s in self.scn.steps:
            if isinstance(s, PortGroupEvent) and s.vlan is not None:
                sw, _ = find_port_group(self.fabric, s, self.scn)
                host = next((h for h in self.fabric.hosts.values()
                             if sw in h.switches.values()), None)
                if host is not None and lab.topo.host(host.name).type == "xen":
                    raise self.scn.error(
                        (*s.path, "port_group", "vlan"),
                        f"on XenServer host {host.name} a VLAN network is its own bridge over "
                        "ethX.VID; changing its VLAN means another network (not supported); "
                        "security changes work")

    def _host_of(self, sw: Any) -> Any:
        return next((h for h in self.fabric.hosts.values() if sw in h.switches.values()), None)

    def _check_xen_discovery(self, lab: Any) -> None:
        """XenServer's Open vSwitch does LLDP only, sending and receiving together."""
        for s in self.scn.steps:
            if not isinstance(s, SwitchEvent) or s.discovery is None:
                continue
            host = self._host_of(self.fabric[s.switch])
            if host is None or lab.topo.host(host.name).type != "xen":
                continue
            if s.discovery.get("protocol", "lldp") != "lldp" or s.discovery.get(
                    "operation", "both") not in ("both", "none", "down"):
                raise self.scn.error(
                    (*s.path, "switch", "discovery"),
                    f"{host.name} is a XenServer host: its Open vSwitch speaks LLDP only, "
                    "sending and receiving together (lldp:enable=true): protocol lldp, "
                    "operation both or none")

    # -- helpers -----------------------------------------------------------------------------
    def _port(self, name: str) -> Any:
        obj = self.fabric[name]
        return obj.ports[0] if isinstance(obj, Vm) else obj

    async def _until(self, at_ns: int) -> None:
        await self.clock.sleep_until(self._t0 + at_ns)

    # -- running -----------------------------------------------------------------------------
    async def run(self) -> Report:
        """Run the timeline, evaluate, write the report (and captures) to `out_dir`."""
        scn, fab = self.scn, self.fabric
        captures: list[Path] = []
        removed: list[str] = []
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            removed = clear_previous_run(self.out_dir)
            if scn.capture is not None:
                targets = scn.capture if scn.capture == "all" else [
                    self._port(n) if not isinstance(fab[n], Link) else fab[n]
                    for n in scn.capture]
                captures = fab.capture(targets, self.out_dir)
        attached = self.attach(fab) if self.attach is not None else None
        try:
            return await self._run(fab, captures, removed)
        finally:
            if attached is not None:
                attached.close()

    async def _run(self, fab: Any, captures: list[Path], removed: list[str]) -> Report:
        scn = self.scn
        watches: dict[str, _Watch] = {}
        arrivals: dict[int, list[int]] = {}
        for i, e in enumerate(scn.expectations):
            if isinstance(e, Arrives):
                w = watches.get(e.port)
                if w is None:
                    w = watches[e.port] = _Watch(self.clock)
                    self._port(e.port).add_tap(w.tap)
                arrivals[i] = w.add(e.filter)
        if self.lab is None:  # nobody consumes the guests' frames: drain them
            from netsim.dataplane.port import VmPort
            for p in list(fab.ports()):
                if isinstance(p, VmPort):
                    fab.on_receive(p.vnic, _discard)
        async with (self.lab if self.lab is not None else fab):
            self._t0 = self.clock.now_ns()
            for w in watches.values():
                w.t0 = self._t0
            tasks = [asyncio.create_task(self._step(i, s), name=f"step {i}")
                     for i, s in enumerate(scn.steps)]
            for i, e in enumerate(scn.expectations):
                if isinstance(e, CounterCheck) and e.at_ns is not None:
                    tasks.append(asyncio.create_task(self._snapshot(i, e)))
                elif isinstance(e, PingCheck):
                    tasks.append(asyncio.create_task(self._ping(i, e)))
            if self.progress is not None:
                tasks.append(asyncio.create_task(self._ticker()))
            try:
                await self._until(scn.end_ns)
                if scn.duration_ns is None:  # no fixed end: let every step finish (replays)
                    await asyncio.gather(*tasks[:len(scn.steps)])
                    self._end_ns = max(scn.end_ns, self.clock.now_ns() - self._t0 + GRACE_NS)
                    await self._until(self._end_ns)
                await self.clock.settle()
                fab.check()
            finally:
                for t in tasks:
                    t.cancel()
                done = await asyncio.gather(*tasks, return_exceptions=True)
            for t, res in zip(tasks, done, strict=True):
                if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                    raise res
                if t.cancelled() and t.get_name().startswith("step "):
                    idx = int(t.get_name().split()[1])
                    self._step_stats.append({"step": idx, "unfinished": True})
            results = [self._evaluate(i, e, arrivals.get(i)) for i, e in
                       enumerate(scn.expectations)]
            counters = fab.counters()
            mac_flaps = {sw.name: {"moves": sw.mac_flaps.total, "hosts": sw.mac_flaps.as_list()}
                         for sw in _all_switches(fab) if sw.mac_flaps.total}
            lags = {path: lag.status() for path, lag in getattr(fab, "lags", {}).items()}
            impairments = {
                path.name: {"settings": path.impairment.describe(), "held": path.held,
                            **path.stats.as_dict()}
                for path in getattr(fab, "impairments", {}).values()}
        if self.progress is not None:
            self.progress(1.0)
        report = Report(scn.name, scn.source, results,
                        sorted(self._step_stats, key=lambda s: s["step"]), counters,
                        [p.name for p in captures], self._end_ns,
                        _summary(self._offsets) if self.realtime else None, removed,
                        dict(sorted(impairments.items())) or None,
                        dict(sorted(mac_flaps.items())) or None, lags or None)
        if self.out_dir is not None:
            (self.out_dir / "report.json").write_text(report.to_json())
        return report

    async def _ticker(self) -> None:
        end = self.scn.end_ns
        assert self.progress is not None
        for k in range(1, 100):
            await self._until(end * k // 100)
            self.progress(k / 100)

    async def _step(self, idx: int, s: Step) -> None:
        await self._until(s.at_ns)
        fab = self.fabric
        if isinstance(s, Send):
            port = self._port(s.port)
            if s.interval_ns:
                for k in range(s.count):
                    if k:
                        await self._until(s.at_ns + k * s.interval_ns)
                    port.receive(s.frame)
            else:
                for k in range(0, s.count, BURST):
                    if k:
                        await asyncio.sleep(0)
                    port.receive_batch([s.frame] * min(BURST, s.count - k))
            self._step_stats.append({"step": idx, "kind": "send", "frames": s.count})
        elif isinstance(s, Replay):
            stats = CaptureStats()
            n = await self._replay(s, stats)
            self._step_stats.append({"step": idx, "kind": "replay", "frames": n,
                                     "speed": s.speed if s.speed is not None else "max",
                                     "skipped": dict(sorted(stats.skipped.items()))})
        elif isinstance(s, LinkEvent):
            obj = fab[s.target]
            (obj.set_link if hasattr(obj, "set_link") else obj.set_up)(s.up)
            self._step_stats.append({"step": idx, "kind": "link", "target": s.target,
                                     "up": s.up})
        elif isinstance(s, VifEvent):
            port = fab[s.port]
            locking, qos = getattr(port, "sw_vif_policy", None) or (None, None)
            port.switch.set_vif_policy(
                port, locking=s.locking if s.locking is not None else locking,
                qos=None if s.clear_qos else (s.qos if s.qos is not None else qos))
            self._step_stats.append({"step": idx, "kind": "vif", "port": s.port})
        elif isinstance(s, PortGroupEvent):
            sw, pg = find_port_group(fab, s, self.scn)
            changes: dict[str, Any] = {}
            if s.vlan is not None:
                changes["vlan"] = s.vlan
            if s.security is not None:
                changes["security"] = dataclasses.replace(pg.security, **s.security)
            changes.update(s.changes)  # traffic rules, default locking mode
            if s.blocked is not None:
                changes["blocked"] = s.blocked
            if s.mtu is not None:
                changes["mtu"] = s.mtu
            if s.teaming is not None:
                changes["teaming"] = _merged_team(pg.teaming or sw.teaming, s.teaming)
            vms = [p for p in sw.ports.values() if getattr(p, "sw_group", None) is pg]
            before = {p: sw.uplink_for(p) for p in vms}
            sw.update_port_group(dataclasses.replace(pg, **changes))
            if s.teaming is not None:
                sw._notify_moves(before)  # notify switches of the ports the new order moved
            self._step_stats.append({"step": idx, "kind": "port_group", "name": s.name})
        elif isinstance(s, SwitchEvent):
            self._switch_event(idx, s)
        elif isinstance(s, PortEvent):
            port = self._port(s.port)
            if s.mtu is not None:
                port.switch.set_port_mtu(port, s.mtu)
            if s.blocked is not None:
                port.switch.block(port, s.blocked)
            self._step_stats.append({"step": idx, "kind": "port", "name": s.port,
                                     "blocked": s.blocked, "mtu": s.mtu})
        elif isinstance(s, ImpairEvent):
            if s.direction == "cable":
                fab.impair_cable(s.target, s.impairment)
            else:
                fab.impair(s.target, s.impairment, direction=s.direction)
            self._step_stats.append({"step": idx, "kind": "impair", "target": s.target,
                                     "direction": s.direction,
                                     "impair": s.impairment.describe() if s.impairment
                                     else "clear"})
        elif isinstance(s, LagEvent):
            lag = fab[s.target].lag
            lag.reconfigure(dataclasses.replace(lag.config, **s.changes), self.clock.now_ns())
            self._step_stats.append({"step": idx, "kind": "lag", "target": s.target,
                                     **dict(s.changes)})
        elif isinstance(s, MirrorEvent):
            fab[s.switch].mirror_sessions[s.session].enabled = s.enabled
            self._step_stats.append({"step": idx, "kind": "mirror", "session": s.session,
                                     "enabled": s.enabled})
        elif isinstance(s, FlushMac):
            switches = [fab[s.switch]] if s.switch is not None else _all_switches(fab)
            flushed = sum(sw.mac_table.flush() for sw in switches)
            self._step_stats.append({"step": idx, "kind": "flush_mac", "entries": flushed})
        elif isinstance(s, MoveVm):
            from netsim.vds.host import migrate_in_fabric

            moved = migrate_in_fabric(fab, s.vm, s.to)
            self._step_stats.append({"step": idx, "kind": "move_vm", "vm": s.vm,
                                     "from": moved.source, "to": moved.destination,
                                     "queued_dropped": moved.queued_dropped})

    def _switch_event(self, idx: int, s: SwitchEvent) -> None:
        sw = self.fabric[s.switch]
        stat: dict[str, Any] = {"step": idx, "kind": "switch", "name": s.switch}
        if s.mtu is not None:
            sw.mtu = s.mtu
            stat["mtu"] = s.mtu
        if s.teaming is not None:
            stat["notified"] = sw.set_teaming(_merged_team(sw.teaming, s.teaming))
        if s.discovery is not None:
            from netsim.dataplane.discovery import DiscoveryConfig, with_operation
            from netsim.lab.discovery import set_switch_discovery

            host = self._host_of(sw)
            htype = self.lab.topo.host(host.name).type if self.lab is not None else "esxi"
            agents = [a for _, a in self.fabric.discovery.values() if a.port in sw.uplinks]
            # a switch that speaks nothing yet: its host type's protocol (Xen: LLDP only)
            base = agents[0].config if agents else DiscoveryConfig(
                ("lldp",) if htype == "xen" else ("cdp",), "none")
            config = with_operation(base, protocol=s.discovery.get("protocol"),
                                    operation=s.discovery.get("operation"))
            set_switch_discovery(self.fabric, host.name, sw, config, host_type=htype)
            stat["discovery"] = config.describe()
        self._step_stats.append(stat)

    def _iface_port(self, s: Replay, iface: str | None, nth: int) -> Any:
        """The port a frame captured on `iface` enters at (Scenario.check vetted the names)."""
        obj = self.fabric[iface] if iface is not None and iface in self.fabric else None
        if not isinstance(obj, (Vm, Port)):
            raise self.scn.error((*s.path, "replay"), f"{s.pcap.name}: frame {nth} was "
                                 f"captured on {iface!r}, which is no port here; give "
                                 f"{s.into_hint}")
        return self._port(iface)  # type: ignore[arg-type]

    async def _replay(self, s: Replay, stats: CaptureStats) -> int:
        fixed = self._port(s.into) if s.into is not None else None
        ports: dict[str | None, Any] = {}
        n = 0
        first: int | None = None
        base = self._t0 + s.at_ns
        clock = self.clock
        if s.speed is None:
            return await self._replay_fast(s, fixed, stats)
        for ts, frame, iface in read_capture(s.pcap, rewrite=s.rewrite, stats=stats):
            port = fixed
            if port is None:
                port = ports.get(iface)
                if port is None:
                    port = ports[iface] = self._iface_port(s, iface, n + 1)
            if s.speed is not None:
                if first is None:
                    first = ts
                # exact integer ns: a float quotient loses nanoseconds after a jump of years
                target = base + (ts - first if s.speed == 1.0
                                 else round(Fraction(ts - first) / Fraction(s.speed)))
                if target > clock.now_ns():
                    await clock.sleep_until(target)
                if self.realtime:
                    self._offsets.append(clock.now_ns() - target)
            port.receive(frame)
            n += 1
            if n % BURST == 0:
                self._replay_tick(BURST)
                await asyncio.sleep(0)
        self._replay_tick(n % BURST)
        return n

    def _replay_tick(self, frames: int) -> None:
        self._replayed += frames
        if self.replay_progress is not None and frames:
            self.replay_progress(self._replayed)

    async def _replay_fast(self, s: Replay, fixed: Any, stats: CaptureStats) -> int:
        """As fast as the fabric switches: runs of frames for one port go in as one batch
        (`receive_batch`), at most `BURST` frames between two yields to the loop."""
        ports: dict[str | None, Any] = {}
        n = yielded = 0
        batch: list[bytes] = []
        into = fixed
        for _ts, frame, iface in read_capture(s.pcap, rewrite=s.rewrite, stats=stats):
            port = fixed
            if port is None:
                port = ports.get(iface)
                if port is None:
                    port = ports[iface] = self._iface_port(s, iface, n + len(batch) + 1)
            if port is not into or len(batch) >= BURST:
                if batch:
                    into.receive_batch(batch)
                    n += len(batch)
                    batch = []
                    if n - yielded >= BURST:
                        self._replay_tick(n - yielded)
                        yielded = n
                        await asyncio.sleep(0)
                into = port
            batch.append(frame)
        if batch:
            into.receive_batch(batch)
            n += len(batch)
        self._replay_tick(n - yielded)
        return n

    async def _snapshot(self, i: int, e: CounterCheck) -> None:
        assert e.at_ns is not None
        await self._until(e.at_ns)
        await self.clock.settle()
        self._counter_values[i] = self._counter(e)

    async def _ping(self, i: int, e: PingCheck) -> None:
        import ipaddress
        await self._until(e.at_ns)
        agent = self.lab.agents[e.src]
        try:
            target = ipaddress.IPv4Address(e.dst)
        except ValueError:
            target = self.lab.address_of(e.dst, toward=e.src)
        self._ping_results[i] = await agent.ping(target, wait_s=e.wait_ns / 1e9)

    def _counter(self, e: CounterCheck) -> int:
        c = self._port(e.port).counters
        if e.counter == "drops":
            return c.dropped
        if e.counter.startswith("drops."):
            return c.drops.get(e.counter[6:], 0)
        return int(getattr(c, e.counter))

    # -- evaluation --------------------------------------------------------------------------
    def _evaluate(self, i: int, e: Expectation, times: list[int] | None) -> Result:
        where = self.scn.smap.where(e.path).rsplit(": ", 1)[0]
        if isinstance(e, Arrives):
            assert times is not None
            if e.end_ns is not None:  # half-open: a frame at the closing instant is not in
                got = [t for t in times if e.start_ns <= t < e.end_ns]
                window = f"[{fmt_ns(e.start_ns)}, {fmt_ns(e.end_ns)})"
            else:
                got = [t for t in times if e.start_ns <= t]
                window = f"[{fmt_ns(e.start_ns)}, end]"
            first = f", first at {fmt_ns(got[0])}" if got else ""
            if e.never:
                ok = not got
                detail = f"{len(got)} matching frames in {window}{first}"
                kind = "never"
            else:
                ok = len(got) == e.count if e.count is not None else len(got) >= e.min_count
                want = f"exactly {e.count}" if e.count is not None else f">= {e.min_count}"
                detail = f"{len(got)} matching frames in {window} (want {want}){first}"
                kind = "arrives"
                if e.spread_ge_ns is not None or e.spread_le_ns is not None:
                    spread = _spread_ns(got)
                    ok = ok and spread is not None and _within(spread, e.spread_ge_ns,
                                                               e.spread_le_ns)
                    detail += (f"; inter-arrival spread {fmt_ns(spread)} (want "
                               f"{_want(e.spread_ge_ns, e.spread_le_ns)})" if spread is not None
                               else "; too few frames for an inter-arrival spread")
            return Result(e.name, kind, ok, detail, where)
        if isinstance(e, CounterCheck):
            value = self._counter_values.get(i) if e.at_ns is not None else self._counter(e)
            if value is None:
                return Result(e.name, "counter", False, "not measured (run ended first)", where)
            ok = value == e.eq if e.eq is not None else value >= (e.ge or 0)
            return Result(e.name, "counter", ok, f"{e.counter} = {value}", where)
        assert isinstance(e, PingCheck)
        res = self._ping_results.get(i)
        if res is None:
            return Result(e.name, "ping", False, "ping did not finish before the end", where)
        ok = res.replied == e.succeeds
        detail = (f"answered in {fmt_ns(round(res.rtt_s * 1e9))}" if res.replied
                  else f"no answer within {fmt_ns(e.wait_ns)}")
        if res.replied and (e.rtt_ge_ns is not None or e.rtt_le_ns is not None):
            ok = ok and _within(round(res.rtt_s * 1e9), e.rtt_ge_ns, e.rtt_le_ns)
            detail += f" (want {_want(e.rtt_ge_ns, e.rtt_le_ns)})"
        return Result(e.name, "ping", ok, detail, where)


def _merged_team(base: Any, change: Mapping[str, Any]) -> Any:
    """`base` (a TeamingPolicy) with a step's changes: `active`/`standby` given together
    replace the failover order (one alone: the other becomes empty - unused uplinks)."""
    from netsim.dataplane.policy import LoadBalancing

    kw: dict[str, Any] = {}
    if "policy" in change:
        kw["load_balancing"] = LoadBalancing(change["policy"])
    if "active" in change or "standby" in change:
        kw["active"] = change.get("active", ())
        kw["standby"] = change.get("standby", ())
    for key in ("notify_switches", "failback"):
        if key in change:
            kw[key] = change[key]
    return dataclasses.replace(base, **kw)


def _spread_ns(times: list[int]) -> int | None:
    """Standard deviation of the gaps between consecutive arrivals (None: under 3 frames)."""
    if len(times) < 3:
        return None
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return round(statistics.pstdev(gaps))


def _within(v: int, ge: int | None, le: int | None) -> bool:
    return (ge is None or v >= ge) and (le is None or v <= le)


def _want(ge: int | None, le: int | None) -> str:
    parts = ([f">= {fmt_ns(ge)}"] if ge is not None else []) + (
        [f"<= {fmt_ns(le)}"] if le is not None else [])
    return " and ".join(parts)


def _discard(frame: bytes) -> None:
    """A guest that ignores what it receives."""


def _all_switches(fab: Any) -> list[Any]:
    out = list(fab.switches.values())
    for h in fab.hosts.values():
        out.extend(h.switches.values())
    return out


def _summary(offsets: list[int]) -> dict[str, Any]:
    if not offsets:
        return {"frames": 0}
    s = sorted(offsets)

    def pct(p: float) -> int:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {"frames": len(s), "offset_ns_p50": pct(0.5), "offset_ns_p90": pct(0.9),
            "offset_ns_p99": pct(0.99),
            "offset_ns_max": s[-1], "within_1ms": sum(1 for o in s if o <= 1_000_000) / len(s)}


async def run_scenario(scn: Scenario, *, out_dir: str | Path | None = None,
                       realtime: bool = False, fabric: Any = None,
                       progress: Callable[[float], None] | None = None,
                       replay_progress: Callable[[int], None] | None = None,
                       attach: Callable[[Any], Any] | None = None) -> Report:
    """Build (unless `fabric` is given), check, run and evaluate `scn`. `progress` gets the
    fraction of simulated time done; `replay_progress` the frames replayed so far;
    `attach(fabric)` runs before it starts and what it returns is closed at the end."""
    clock = getattr(fabric, "clock", None) if fabric is not None else None
    run = ScenarioRun(scn, fabric=fabric, out_dir=out_dir, realtime=realtime, clock=clock,
                      progress=progress, replay_progress=replay_progress, attach=attach)
    return await run.run()


def clear_previous_run(out_dir: str | Path) -> list[str]:
    """Remove what an earlier run wrote to `out_dir` (its `report.json` lists its captures), so
    that no stale capture looks like this run's; returns the names removed. Files that earlier
    report does not list are left alone."""
    out = Path(out_dir)
    report = out / "report.json"
    try:
        old = json.loads(report.read_text(encoding="utf-8"))
        names = [str(n) for n in old.get("captures", [])]
    except (OSError, ValueError, AttributeError):
        return []
    removed: list[str] = []
    for name in names:
        f = out / name
        if Path(name).name == name and name.endswith(".pcapng") and f.is_file():
            f.unlink()
            removed.append(name)
    report.unlink()
    return [*removed, "report.json"]


__all__ = ["PortRecorder", "Report", "Result", "ScenarioRun", "clear_previous_run", "run_scenario"]
