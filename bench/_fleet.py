"""A fleet of `hvsim host` processes (many host agents each) on one private mosquitto: how long
a vDS push takes to reach every host, a migration inside that fleet, the broker's message rate
while nothing happens, and memory per host agent; beside a plain-MQTT baseline of the same
fan-out measured in the same run.

Used by `hvsim bench vds` (500 hosts in 4 processes; fewer with --quick) and by the scaled-down
test in tests/dswitch/test_fleet.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

FABRIC = "fleet"
MOVER = "mover"  # the VM that migrates: on the first host, moves to the last one


def write_topology(path: Path, n_hosts: int, n_portgroups: int) -> list[str]:
    """A topology of `n_hosts` ESXi hosts with the same `n_portgroups` port groups (VLAN
    101..) and one VM, on the first host; return the host names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"esx{i}" for i in range(1, n_hosts + 1)]
    pgs = "".join(f"      pg{g}: {{vlan: {100 + g}}}\n" for g in range(1, n_portgroups + 1))
    out = [f"name: fleet{n_hosts}\nseed: 1\nhosts:\n"]
    for i, h in enumerate(names):
        out.append(f"  {h}:\n    type: esxi\n    pifs: {{vmnic0: {{}}}}\n"
                   f"    switches: {{vSwitch0: {{uplinks: [vmnic0]}}}}\n    port_groups:\n{pgs}")
        if i == 0:
            out.append(f"    vms:\n      {MOVER}: {{nics: [{{network: pg1, ip: 10.1.0.1/24}}]}}\n")
    path.write_text("".join(out))
    return names


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class FleetResult:
    """What one fleet run measured (times in seconds, memory in KiB)."""

    hosts: int
    processes: int
    portgroups: int
    keepalive_s: int
    online_s: float = 0.0
    push_s: float = 0.0
    push_reached: int = 0
    push_cpu_s: float = 0.0  # host processes + broker, during the push
    change_s: float = 0.0
    migrate_s: float = 0.0
    steady_window_s: float = 0.0
    steady_packets: int = 0  # every MQTT packet the broker received ($SYS), PINGREQ included
    steady_publishes: int = 0  # PUBLISH packets among them ($SYS)
    steady_seen_on_fabric: int = 0  # messages a wildcard subscriber saw on the fabric's topics
    rss_kib_per_process: list[int] = field(default_factory=list)
    rss_kib_interpreter: int = 0
    config_bytes: int = 0

    @property
    def packets_per_host_per_keepalive(self) -> float:
        per_s = self.steady_packets / max(self.steady_window_s, 1e-9)
        return per_s * self.keepalive_s / self.hosts

    @property
    def rss_kib_per_agent(self) -> float:
        return sum(self.rss_kib_per_process) / self.hosts

    @property
    def rss_kib_per_agent_marginal(self) -> float:
        """Per agent once the interpreter and imported modules of each process are taken off."""
        extra = sum(self.rss_kib_per_process) - self.rss_kib_interpreter * self.processes
        return extra / self.hosts


def _interpreter_rss_kib() -> int:
    """RSS of a Python process that has imported what a host process imports, no agents."""
    code = ("import netsim.vds.multihost, netsim.cli.app, pathlib;"
            "print([l.split()[1] for l in pathlib.Path('/proc/self/status').read_text()"
            ".splitlines() if l.startswith('VmRSS:')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.strip())


async def _sys_counters(bus: Any) -> tuple[int, int, int]:
    """The broker's (uptime s, packets received, PUBLISH received) as of one $SYS update.

    mosquitto publishes $SYS values retained and only when they changed, uptime first in each
    update: the latest value of each counter just after a fresh uptime is that tick's."""
    latest: dict[str, int] = {}
    keys = {"$SYS/broker/uptime": "up", "$SYS/broker/messages/received": "all",
            "$SYS/broker/publish/messages/received": "pub"}
    async with bus.subscribe("$SYS/broker/#", qos=0, maxsize=4096) as sub:
        fresh_up = False
        deadline = time.monotonic() + 30
        while True:
            try:
                m = await asyncio.wait_for(sub.get(), 0.5)
            except TimeoutError:
                if fresh_up and "all" in latest:
                    break  # the rest of this tick's update is in
                if time.monotonic() > deadline:
                    raise RuntimeError("no $SYS update from the broker") from None
                continue
            key = keys.get(m.topic)
            if key is None:
                continue
            if key == "up" and not m.retain:
                if fresh_up and "all" in latest:
                    break  # the next tick began: keep this one's values
                fresh_up = True
            latest[key] = int(m.payload.split()[0])
    return latest["up"], latest["all"], latest.get("pub", 0)


def _start_hosts(workdir: Path, index: int, names: list[str], url: str, keepalive: int,
                 topo_path: Path) -> subprocess.Popen[bytes]:
    """One `hvsim host --names-from` process running `names`; its output to a log file."""
    listing = workdir / f"hosts{index}.txt"
    listing.write_text("\n".join(names) + "\n")
    with (workdir / f"hosts{index}.log").open("wb") as logf:
        return subprocess.Popen(
            [sys.executable, "-m", "netsim", "host", "--names-from", str(listing),
             "--broker", url, "--fabric", FABRIC, "--keepalive", str(keepalive), str(topo_path)],
            stdout=logf, stderr=subprocess.STDOUT)


async def measure(workdir: Path, *, n_hosts: int, n_procs: int, n_portgroups: int = 50,
                  keepalive: int = 5, steady_keepalives: int = 2,
                  log: Any = None) -> FleetResult:
    """Run the fleet on a private mosquitto in `workdir`; return what it measured."""
    from netsim.lab.topology import load_topology
    from netsim.vds.dswitch import ManagementPlane
    from netsim.vds.host import vds_from_topology
    from netsim.vds.transport.broker import MosquittoBroker
    from netsim.vds.transport.mqtt import MqttBus
    from netsim.vds.transport.topics import Topics
    from netsim.vds.vdsconfig import DvPortGroup

    say = log or (lambda text: None)
    topo_path = workdir / "fleet.yaml"
    names = write_topology(topo_path, n_hosts, n_portgroups)
    res = FleetResult(n_hosts, n_procs, n_portgroups, keepalive)
    res.rss_kib_interpreter = _interpreter_rss_kib()
    topics = Topics(FABRIC)
    per = -(-n_hosts // n_procs)
    broker = MosquittoBroker(workdir / "broker", sys_interval=1)
    procs: list[subprocess.Popen[bytes]] = []
    with broker:
        try:
            for p in range(n_procs):
                procs.append(_start_hosts(workdir, p, names[p * per:(p + 1) * per], broker.url,
                                          keepalive, topo_path))
            vds = vds_from_topology(load_topology(topo_path))
            res.config_bytes = len(vds.to_json())
            t0 = time.monotonic()
            async with (MqttBus(replace(broker.settings(), keepalive=60),
                                client_id="fleet-vcenter") as bus,
                        ManagementPlane(bus, topics) as mgmt):
                peers = mgmt.peers
                await peers.wait_until(lambda: len(peers.online()) == n_hosts,
                                       within_s=120 + n_hosts * 0.5, what="hosts online")
                res.online_s = time.monotonic() - t0
                say(f"{n_hosts} hosts online in {res.online_s:.1f} s")
                pids = [p.pid for p in procs] + [broker.pid]
                cpu0 = sum(_cpu_s(pid) for pid in pids)
                t0 = time.monotonic()
                await mgmt.publish(vds)
                try:
                    await mgmt.wait_applied(vds.name, vds.version, within_s=60)
                finally:
                    res.push_s = time.monotonic() - t0
                    res.push_cpu_s = sum(_cpu_s(pid) for pid in pids) - cpu0
                    res.push_reached = sum(
                        1 for h in names if (peers.version(h, vds.name) or 0) >= vds.version)
                say(f"push v1 of {res.config_bytes} bytes: {res.push_s * 1000:.0f} ms, "
                    f"{res.push_reached} hosts")
                await peers.wait_until(lambda: peers.host_of_vm(MOVER) == names[0],
                                       within_s=30, what=f"{MOVER} plugged on {names[0]}")
                # a change: one more port group, every host re-applies
                v2 = replace(vds, version=2, portgroups=(*vds.portgroups,
                                                         DvPortGroup("extra", 4000)))
                t0 = time.monotonic()
                await mgmt.publish(v2)
                await mgmt.wait_applied(vds.name, 2, within_s=60)
                res.change_s = time.monotonic() - t0
                say(f"push v2: {res.change_s * 1000:.0f} ms")
                # migration between the first and the last host (two different processes)
                dst = names[-1]
                t0 = time.monotonic()
                await bus.publish(topics.control(names[0]),
                                  f'{{"migrate": "{MOVER}", "to": "{dst}"}}'.encode(), qos=1)
                await peers.wait_until(lambda: peers.host_of_vm(MOVER) == dst, within_s=30,
                                       what=f"{MOVER} on {dst}")
                res.migrate_s = time.monotonic() - t0
                say(f"migration {names[0]} → {dst}: {res.migrate_s * 1000:.0f} ms")
                # steady state: nothing flows; count what the broker receives
                await asyncio.sleep(1.0)
                async with bus.subscribe(topics.all, qos=0, maxsize=1 << 20) as every:
                    await asyncio.sleep(0.5)
                    every.get_ready()  # retained messages, not traffic
                    up0, all0, pub0 = await _sys_counters(bus)
                    await asyncio.sleep(keepalive * steady_keepalives)
                    up1, all1, pub1 = await _sys_counters(bus)
                    # retained copies (sent for the new subscription) are state, not traffic
                    res.steady_seen_on_fabric = sum(1 for m in every.get_ready() if not m.retain)
                res.steady_window_s = up1 - up0
                res.steady_packets = all1 - all0
                res.steady_publishes = pub1 - pub0
                say(f"steady: {res.steady_packets} packets ({res.steady_publishes} PUBLISH) in "
                    f"{res.steady_window_s} s")
                res.rss_kib_per_process = [_rss_kib(p.pid) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
    return res


# -- baseline: the same fan-out with plain aiomqtt clients -----------------------------------
def _plain_clients(port: int, first: int, count: int, ready: Any) -> None:
    async def main() -> None:
        import aiomqtt

        async def one(i: int, connected: asyncio.Event) -> None:
            while True:  # a busy machine may time a connect out: try again
                try:
                    async with aiomqtt.Client("127.0.0.1", port, identifier=f"plain-{i}",
                                              keepalive=60, timeout=30) as c:
                        await c.subscribe("plain/config", qos=1)
                        connected.set()
                        async for m in c.messages:
                            await c.publish(f"plain/ack/{i}", b"1", qos=1)
                            del m
                except aiomqtt.MqttError:
                    if connected.is_set():
                        raise
                    await asyncio.sleep(0.5)

        evs = []
        tasks = []
        for i in range(first, first + count):
            ev = asyncio.Event()
            evs.append(ev)
            tasks.append(asyncio.create_task(one(i, ev)))
            await ev.wait()  # connect one at a time, as the agents do (bounded)
        ready.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())


def plain_fanout(n_clients: int, n_procs: int, payload_bytes: int,
                 workdir: Path) -> float:
    """Seconds from one QoS 1 publish of `payload_bytes` until each of `n_clients` plain
    aiomqtt subscribers (in `n_procs` processes) has acknowledged it on its own topic: what
    mosquitto and aiomqtt alone take for the push's round trip."""
    from netsim.vds.transport.broker import MosquittoBroker

    ctx = mp.get_context("spawn")
    per = -(-n_clients // n_procs)
    with MosquittoBroker(workdir / "plain") as broker:
        readies = []
        procs = []
        for p in range(n_procs):
            count = min(per, n_clients - p * per)
            ev = ctx.Event()
            readies.append(ev)
            procs.append(ctx.Process(target=_plain_clients, args=(broker.port, p * per,
                                                                  count, ev), daemon=True))
            procs[-1].start()
        try:
            for ev in readies:
                if not ev.wait(900):
                    raise RuntimeError("plain MQTT clients did not connect")
            return asyncio.run(_plain_publish(broker.port, n_clients, payload_bytes))
        finally:
            for pr in procs:
                pr.terminate()
                pr.join(10)


async def _plain_publish(port: int, n: int, size: int) -> float:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier="plain-pub") as c:
        await c.subscribe("plain/ack/+", qos=1)
        await asyncio.sleep(0.2)
        seen: set[str] = set()
        t0 = time.monotonic()
        await c.publish("plain/config", b"x" * size, qos=1)

        async def collect() -> None:
            async for m in c.messages:
                seen.add(str(m.topic))
                if len(seen) >= n:
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collect(), 120)
        took = time.monotonic() - t0
        if len(seen) < n:
            raise RuntimeError(f"plain fan-out: {len(seen)} of {n} acknowledged")
        return took
