"""vDS data plane between two host processes through mosquitto, against plain aiomqtt.

Baseline (same run, same private broker): a plain aiomqtt publisher process sends N messages of
64 bytes (one minimum-size frame each) at QoS 0 and a plain aiomqtt subscriber process counts
them — mosquitto's and aiomqtt's own message rate for frame-sized messages.
Ours: a publisher process pushes N 64-byte frames through `BatchSender` over an `MqttBus`
(frames batched per topic, length-prefixed, sequence-numbered) and a subscriber process decodes
them with `BatchReceiver`. Rates are frames (or messages) received per second, from the moment
the publisher starts until the last one arrives; losses are reported, not hidden.

At scale (`bench/_fleet.py`): 500 hosts in 4 `hvsim host --names-from` processes (20 in 2 with
--quick), 50 port groups: time from a vds-push until every host reports the version, beside
a plain-MQTT baseline of the same fan-out and round trip (one QoS 1 publish of the same size
to as many aiomqtt subscribers in as many processes, each acknowledging on its own topic);
a vMotion between hosts of two processes; the broker's received packets per host per
keep-alive while idle ($SYS/broker/messages/received, PINGREQ included); RSS per agent.
"""
from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import _fleet

FRAME_SIZE = 64
#: the distributed switch at scale: hosts, `hvsim host` processes, port groups, keep-alive (s)
FLEET_HOSTS = 500
FLEET_PROCESSES = 4
FLEET_PORTGROUPS = 50
FLEET_KEEPALIVE_S = 5
TOPIC = "hvsim/bench/host/h1/data/dvs/to/h2"
IDLE_S = 1.5  # the subscriber stops after this long without traffic


def _frame(i: int) -> bytes:
    """A 64-byte Ethernet frame (dst, src, IPv4 ethertype, payload carrying `i`)."""
    return (
        b"\x00\x16\x3e\x00\x00\x02\x00\x16\x3e\x00\x00\x01\x08\x00"
        + i.to_bytes(4, "big")
        + bytes(FRAME_SIZE - 18)
    )


# -- processes ----------------------------------------------------------------------------
def _plain_sub(port: int, n: int, ready: Any, out: Any) -> None:
    async def main() -> None:
        import aiomqtt

        got = 0
        last = time.monotonic()

        async def count(c: aiomqtt.Client) -> None:
            nonlocal got, last
            async for _ in c.messages:  # the idiomatic aiomqtt loop, nothing in between
                got += 1
                last = time.monotonic()
                if got >= n:
                    return

        async with aiomqtt.Client("127.0.0.1", port, identifier="plain-sub") as c:
            await c.subscribe(TOPIC)
            ready.set()
            task = asyncio.create_task(count(c))
            while not task.done():  # stop after IDLE_S without traffic (lost messages)
                await asyncio.wait({task}, timeout=IDLE_S)
                if got and time.monotonic() - last > IDLE_S:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        out.put({"received": got, "t_last": last})

    asyncio.run(main())


def _plain_pub(port: int, n: int, out: Any) -> None:
    async def main() -> None:
        import aiomqtt

        async with aiomqtt.Client("127.0.0.1", port, identifier="plain-pub") as c:
            t0 = time.monotonic()
            for i in range(n):
                await c.publish(TOPIC, _frame(i), qos=0)
                if i % 256 == 0:
                    await asyncio.sleep(0)  # let paho flush the socket, as a real sender would
            out.put({"t_start": t0, "t_sent": time.monotonic()})
            await asyncio.sleep(0.5)

    asyncio.run(main())


def _bus_sub(port: int, n: int, ready: Any, out: Any) -> None:
    async def main() -> None:
        from netsim.vds.transport.dataplane import BatchReceiver
        from netsim.vds.transport.mqtt import BrokerSettings, MqttBus
        from netsim.vds.transport.topics import Topics

        topics = Topics("bench")
        rx = BatchReceiver(topics.host_of)
        last = 0.0
        async with (
            MqttBus(BrokerSettings("127.0.0.1", port), client_id="h2") as bus,
            bus.subscribe(topics.unicast_to("h2"), maxsize=65536) as sub,
        ):
            await asyncio.sleep(0.2)  # the SUBACK is in; broker routes to us
            ready.set()
            while rx.counters.frames < n:
                try:
                    msgs = await asyncio.wait_for(sub.get_batch(), IDLE_S)
                except TimeoutError:
                    break
                for m in msgs:
                    rx.accept(m)
                last = time.monotonic()
            out.put({
                "received": rx.counters.frames,
                "lost_counted": rx.counters.lost_frames,
                "bad": rx.counters.bad_batches,
                "batches": rx.counters.batches,
                "sub_dropped": sub.dropped,
                "t_last": last,
            })

    asyncio.run(main())


def _bus_pub(port: int, n: int, batch: int, out: Any) -> None:
    async def main() -> None:
        from netsim.vds.transport.dataplane import BatchSender
        from netsim.vds.transport.mqtt import BrokerSettings, MqttBus
        from netsim.vds.transport.topics import Topics

        topics = Topics("bench")
        topic = topics.unicast("h1", "h2")
        frames = [_frame(i) for i in range(4096)]
        async with MqttBus(BrokerSettings("127.0.0.1", port), client_id="h1") as bus:
            tx = BatchSender(bus, "h1", session=1, max_frames=batch)
            t0 = time.monotonic()
            for i in range(n):
                await tx.send(topic, 10, frames[i & 4095])
                if i % batch == batch - 1:
                    await asyncio.sleep(0)
            await tx.flush()
            out.put({"t_start": t0, "t_sent": time.monotonic(), "batches": tx.counters.batches})
            await asyncio.sleep(0.5)

    asyncio.run(main())


def _pair(ctx: Any, sub_target: Any, sub_args: tuple, pub_target: Any, pub_args: tuple) -> dict:
    out_sub = ctx.Queue()
    out_pub = ctx.Queue()
    ready = ctx.Event()
    sub = ctx.Process(target=sub_target, args=(*sub_args, ready, out_sub))
    sub.start()
    try:
        if not ready.wait(20):
            raise RuntimeError("benchmark subscriber did not start")
        pub = ctx.Process(target=pub_target, args=(*pub_args, out_pub))
        pub.start()
        p = out_pub.get(timeout=300)
        s = out_sub.get(timeout=300)
        pub.join(10)
        sub.join(10)
    finally:
        for proc in (sub,):
            if proc.is_alive():
                proc.terminate()
    elapsed = max(s["t_last"] - p["t_start"], 1e-9)
    return {**s, **p, "elapsed_s": elapsed, "rate": s["received"] / elapsed}


def _e2e_host(port: int, name: str, n: int, ready: Any, out: Any, burst: int = 256) -> None:
    """One host process of the end-to-end run: esx1's VM `src` sends n frames to esx2's VM
    `dst` through both proxy switches and the broker; esx2 counts what `dst` receives.
    `burst` frames per guest turn (256: a guest filling its TX ring; 1: a guest sending one
    frame and yielding, as a request/response workload does)."""
    async def main() -> None:
        from netsim.lab.fabric import Fabric
        from netsim.vds.host import HostAgent, NicSpec
        from netsim.vds.transport.mqtt import BrokerSettings, MqttBus
        from netsim.vds.transport.topics import Topics

        topics = Topics("bench-e2e")
        src_mac, dst_mac = "00:50:56:00:00:01", "00:50:56:00:00:02"
        async with (
            Fabric() as fab,
            MqttBus(BrokerSettings("127.0.0.1", port), client_id=f"e2e-{name}",
                    presence_topic=topics.presence(name)) as bus,
            HostAgent(fab, name, bus, topics, session=1) as agent,
        ):
            ready.set()
            await agent.wait_config("dvs1", 1, within_s=30)
            mine = src_mac if name == "esx1" else dst_mac
            vm = await agent.add_vm(name + "-vm", [NicSpec("dvs1", "App", mine)])
            vnic = vm.ports[0].vnic
            other = "esx2" if name == "esx1" else "esx1"
            await agent.plane.peers.wait_until(
                lambda: other in agent.plane.peers.flood_targets("dvs1", 100, name),
                within_s=30, what="peer VLANs")
            if name == "esx2":
                got = 0
                last = time.monotonic()
                hello = b"\xff" * 6 + bytes.fromhex(dst_mac.replace(":", "")) + b"\x88\xb5"
                while got < n:
                    vnic.send(hello + bytes(46))  # until esx1 has learned us
                    try:
                        frames = await asyncio.wait_for(vnic.recv_batch(), 0.2 if not got
                                                        else IDLE_S)
                    except TimeoutError:
                        if got:
                            break
                        continue
                    got += len(frames)
                    last = time.monotonic()
                    if got:
                        break
                while got < n:
                    try:
                        got += len(await asyncio.wait_for(vnic.recv_batch(), IDLE_S))
                    except TimeoutError:
                        break
                    last = time.monotonic()
                out.put({"received": got, "t_last": last,
                         "rx_lost": agent.links["dvs1"].receiver.counters.lost_frames})
            else:
                await vnic.recv()  # esx2's hello: both switches have learned both MACs
                frame = (bytes.fromhex(dst_mac.replace(":", "")) +
                         bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00" + bytes(50))
                uplink = agent.proxies["dvs1"].uplinks["uplink1"].queue
                t0 = time.monotonic()
                for i in range(0, n, burst):
                    vnic.send_many([frame] * min(burst, n - i))
                    if burst == 1:
                        await asyncio.sleep(0)
                    while len(uplink) > 512:  # noqa: ASYNC110 - a guest spinning on a full TX ring
                        await asyncio.sleep(0)
                link = agent.links["dvs1"]
                out.put({"t_start": t0, "t_sent": time.monotonic(),
                         "messages": link.sender.counters.batches,
                         "uplink_drops": agent.proxies["dvs1"].uplinks["uplink1"].counters.dropped,
                         "tx_dropped": bus.counters.tx_dropped_queue_full})
                await asyncio.sleep(IDLE_S + 1)

    asyncio.run(main())


async def _push_e2e_config(port: int) -> None:
    from netsim.vds.dswitch import ManagementPlane
    from netsim.vds.transport.mqtt import BrokerSettings, MqttBus
    from netsim.vds.transport.topics import Topics
    from netsim.vds.vdsconfig import DvPortGroup, VdsConfig

    topics = Topics("bench-e2e")
    async with (
        MqttBus(BrokerSettings("127.0.0.1", port), client_id="e2e-vc") as bus,
        ManagementPlane(bus, topics) as mp,
    ):
        await mp.publish(VdsConfig("dvs1", 1, portgroups=(DvPortGroup("App", 100),),
                                   hosts={h: {"uplink1": "vmnic0"} for h in ("esx1", "esx2")}))
        await mp.wait_applied("dvs1", 1, within_s=30)


def _e2e(ctx: Any, port: int, n: int, burst: int = 256) -> dict:
    outs = {h: ctx.Queue() for h in ("esx1", "esx2")}
    readies = {h: ctx.Event() for h in ("esx1", "esx2")}
    procs = [ctx.Process(target=_e2e_host, args=(port, h, n, readies[h], outs[h], burst))
             for h in ("esx1", "esx2")]
    for p in procs:
        p.start()
    try:
        for ev in readies.values():
            if not ev.wait(30):
                raise RuntimeError("end-to-end host process did not start")
        asyncio.run(_push_e2e_config(port))
        s = outs["esx1"].get(timeout=300)
        r = outs["esx2"].get(timeout=300)
        for p in procs:
            p.join(15)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    elapsed = max(r["t_last"] - s["t_start"], 1e-9)
    return {**s, **r, "rate": r["received"] / elapsed}


async def _rollout(port: int, n_hosts: int, n_vms: int) -> dict:
    """10 hosts × 100 VMs: time from publishing a changed vDS config until every host reports
    running it (each host re-applies its port groups to all its VM ports)."""
    import contextlib

    from netsim.lab.fabric import Fabric
    from netsim.vds.dswitch import ManagementPlane
    from netsim.vds.host import HostAgent, NicSpec
    from netsim.vds.transport.mqtt import BrokerSettings, MqttBus
    from netsim.vds.transport.topics import Topics
    from netsim.vds.vdsconfig import DvPortGroup, VdsConfig

    topics = Topics("bench")
    settings = BrokerSettings("127.0.0.1", port)
    hosts = [f"esx{i:02d}" for i in range(n_hosts)]

    def config(version: int, app_vlan: int) -> VdsConfig:
        return VdsConfig("dvs1", version,
                         portgroups=(DvPortGroup("App", app_vlan), DvPortGroup("DB", 200)),
                         hosts={h: {"uplink1": "vmnic0"} for h in hosts})

    async with contextlib.AsyncExitStack() as stack:
        vc = await stack.enter_async_context(MqttBus(settings, client_id="bench-vc"))
        mp = await stack.enter_async_context(ManagementPlane(vc, topics))
        agents = []
        for i, h in enumerate(hosts):
            fab = await stack.enter_async_context(Fabric())
            bus = await stack.enter_async_context(
                MqttBus(settings, client_id=f"bench-{h}", presence_topic=topics.presence(h)))
            agents.append(await stack.enter_async_context(
                HostAgent(fab, h, bus, topics, session=i + 1)))
        t0 = time.monotonic()
        await mp.publish(config(1, 100))
        await mp.wait_applied("dvs1", 1, within_s=30)
        first = time.monotonic() - t0
        for i, a in enumerate(agents):
            await a.add_vms({
                f"vm{i}-{v}": [NicSpec("dvs1", "App" if v % 2 else "DB",
                                       f"00:50:56:{i:02x}:{v >> 8:02x}:{v & 0xFF:02x}")]
                for v in range(n_vms)
            })
        t0 = time.monotonic()
        await mp.publish(config(2, 300))
        await mp.wait_applied("dvs1", 2, within_s=30)
        change = time.monotonic() - t0
        moved = sum(1 for a in agents for p in a.proxies["dvs1"].vm_ports()
                    if p.sw_group.vlan == 300)
    return {"hosts": n_hosts, "vms": n_hosts * n_vms, "first_rollout_s": round(first, 3),
            "change_rollout_s": round(change, 3), "ports_moved_to_new_vlan": moved}


def run(*, quick: bool) -> dict:
    """Measure both rates through one private mosquitto; print a table; return the figures."""
    from netsim.vds.transport.broker import MosquittoBroker

    n_plain = 10_000 if quick else 100_000
    n_frames = 100_000 if quick else 1_000_000
    n_e2e = 20_000 if quick else 200_000
    batch = 256
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="hvsim-bench-vds-") as d:
        with MosquittoBroker(Path(d)) as broker:
            port = broker.port
            plain = _pair(ctx, _plain_sub, (port, n_plain), _plain_pub, (port, n_plain))
            ours = _pair(
                ctx, _bus_sub, (broker.port, n_frames), _bus_pub, (broker.port, n_frames, batch)
            )
            roll = asyncio.run(_rollout(broker.port, 10, 100))
            e2e = _e2e(ctx, broker.port, n_e2e)
        with MosquittoBroker(Path(d) / "trickle") as broker:  # fresh retained state
            trickle = _e2e(ctx, broker.port, n_e2e // 4, burst=1)
        fleet_hosts, fleet_procs = (20, 2) if quick else (FLEET_HOSTS, FLEET_PROCESSES)
        fleet = asyncio.run(_fleet.measure(Path(d) / "fleet", n_hosts=fleet_hosts,
                                           n_procs=fleet_procs, n_portgroups=FLEET_PORTGROUPS,
                                           keepalive=FLEET_KEEPALIVE_S))
        plain_push = _fleet.plain_fanout(fleet_hosts, fleet_procs, fleet.config_bytes,
                                         Path(d) / "fanout")
    ratio = ours["rate"] / plain["rate"] if plain["rate"] else 0.0
    result = {
        "frame_size": FRAME_SIZE,
        "baseline_aiomqtt_msgs_per_s": round(plain["rate"]),
        "baseline_sent": n_plain,
        "baseline_received": plain["received"],
        "baseline_publisher_msgs_per_s": round(
            n_plain / max(plain["t_sent"] - plain["t_start"], 1e-9)
        ),
        "vds_frames_per_s": round(ours["rate"]),
        "vds_frames_sent": n_frames,
        "vds_frames_received": ours["received"],
        "vds_publisher_frames_per_s": round(
            n_frames / max(ours["t_sent"] - ours["t_start"], 1e-9)
        ),
        "vds_frames_lost_counted": ours["lost_counted"],
        "vds_bad_batches": ours["bad"],
        "vds_frames_per_batch": batch,
        "vds_batches": ours["batches"],
        "ratio_vs_baseline": round(ratio, 2),
        "target_ratio": 0.5,
        "target_frames_per_s": 20_000,
        "meets_targets": ratio >= 0.5 and ours["rate"] >= 20_000,
        "e2e_vm_to_vm_frames_per_s": round(e2e["rate"]),
        "e2e_frames_sent": n_e2e,
        "e2e_frames_received": e2e["received"],
        "e2e_frames_lost_counted": e2e["rx_lost"],
        "e2e_uplink_drops": e2e["uplink_drops"],
        "e2e_frames_per_message": round(n_e2e / max(e2e["messages"], 1), 1),
        "trickle_vm_to_vm_frames_per_s": round(trickle["rate"]),
        "trickle_frames_sent": n_e2e // 4,
        "trickle_frames_received": trickle["received"],
        "trickle_frames_lost_counted": trickle["rx_lost"],
        "trickle_frames_per_message": round(n_e2e // 4 / max(trickle["messages"], 1), 1),
        "rollout_hosts": roll["hosts"],
        "rollout_vms": roll["vms"],
        "rollout_first_s": roll["first_rollout_s"],
        "rollout_change_s": roll["change_rollout_s"],
        "rollout_ports_moved": roll["ports_moved_to_new_vlan"],
        "rollout_target_s": 2.0,
        "fleet_hosts": fleet.hosts,
        "fleet_processes": fleet.processes,
        "fleet_portgroups": fleet.portgroups,
        "fleet_config_bytes": fleet.config_bytes,
        "fleet_online_s": round(fleet.online_s, 2),
        "fleet_push_s": round(fleet.push_s, 3),
        "fleet_push_hosts_reached": fleet.push_reached,
        "fleet_push_cpu_s": round(fleet.push_cpu_s, 2),
        "fleet_push_baseline_plain_mqtt_s": round(plain_push, 3),
        "fleet_push_ratio_vs_baseline": round(fleet.push_s / plain_push, 2) if plain_push else None,
        "fleet_push_target_s": 10.0,
        "fleet_change_s": round(fleet.change_s, 3),
        "fleet_migrate_s": round(fleet.migrate_s, 3),
        "fleet_migrate_target_s": 1.0,
        "fleet_keepalive_s": fleet.keepalive_s,
        "fleet_steady_window_s": fleet.steady_window_s,
        "fleet_steady_broker_packets": fleet.steady_packets,
        "fleet_steady_broker_publishes": fleet.steady_publishes,
        "fleet_steady_msgs_per_host_per_keepalive": round(
            fleet.packets_per_host_per_keepalive, 3),
        "fleet_steady_target_msgs_per_host_per_keepalive": 1.0,
        "fleet_rss_kib_per_process": fleet.rss_kib_per_process,
        "fleet_rss_kib_per_agent": round(fleet.rss_kib_per_agent),
        "fleet_rss_kib_per_agent_without_interpreter": round(fleet.rss_kib_per_agent_marginal),
    }
    table = Table(title=f"vDS data plane through mosquitto, {FRAME_SIZE}-byte frames, 2 processes")
    table.add_column("path")
    table.add_column("sent", justify="right")
    table.add_column("received", justify="right")
    table.add_column("rate /s", justify="right")
    table.add_column("× baseline", justify="right")
    table.add_row("plain aiomqtt pub→sub (1 frame/msg)", f"{n_plain:,}", f"{plain['received']:,}",
                  f"{plain['rate']:,.0f}", "1.00")
    table.add_row(f"hvsim MqttBus + batches ({batch} frames/msg)", f"{n_frames:,}",
                  f"{ours['received']:,}", f"{ours['rate']:,.0f}", f"{ratio:.2f}")
    table.add_row("VM→VM through 2 proxy switches + bus", f"{n_e2e:,}",
                  f"{e2e['received']:,}", f"{e2e['rate']:,.0f}",
                  f"{e2e['rate'] / plain['rate']:.2f}" if plain["rate"] else "-")
    table.add_row("VM→VM, guest sends 1 frame per loop turn", f"{n_e2e // 4:,}",
                  f"{trickle['received']:,}", f"{trickle['rate']:,.0f}",
                  f"{trickle['rate'] / plain['rate']:.2f}" if plain["rate"] else "-")
    Console().print(table)
    Console().print(
        f"frames lost (counted from sequence gaps): {ours['lost_counted']:,}; "
        "targets ≥0.5× baseline and ≥20k frames/s: "
        + ("met" if result["meets_targets"] else "NOT met")
    )
    Console().print(
        f"frames per bus message VM→VM: {result['e2e_frames_per_message']} (bursts), "
        f"{result['trickle_frames_per_message']} (1 frame per turn)"
    )
    Console().print(
        f"config roll-out, {roll['hosts']} hosts × {roll['vms'] // roll['hosts']} VMs through "
        f"mosquitto: first {roll['first_rollout_s'] * 1000:.0f} ms, change (VLAN of "
        f"{roll['ports_moved_to_new_vlan']} ports) {roll['change_rollout_s'] * 1000:.0f} ms "
        "(target < 2 s)"
    )
    t = Table(title=f"vDS of {fleet.hosts} hosts in {fleet.processes} `hvsim host` processes "
              f"through mosquitto, {fleet.portgroups} port groups ({fleet.config_bytes:,} "
              "bytes of config)")
    t.add_column("what")
    t.add_column("measured", justify="right")
    t.add_column("baseline / target", justify="right")
    t.add_row(f"plain MQTT: 1 publish → {fleet.hosts} subscribers, each acks",
              f"{plain_push * 1000:,.0f} ms", "baseline")
    t.add_row(f"vds-push v1 → every host reports it (CPU {fleet.push_cpu_s:.2f} s)",
              f"{fleet.push_s * 1000:,.0f} ms ({fleet.push_reached} hosts)",
              f"{result['fleet_push_ratio_vs_baseline']}× baseline; ≤ 10 s")
    t.add_row("vds-push v2 (one more port group)", f"{fleet.change_s * 1000:,.0f} ms", "")
    t.add_row("vMotion between hosts of two processes", f"{fleet.migrate_s * 1000:,.0f} ms",
              "≤ 1 s")
    t.add_row(f"idle: broker packets per host per keep-alive ({fleet.keepalive_s} s)",
              f"{fleet.packets_per_host_per_keepalive:.2f} ({fleet.steady_publishes} PUBLISH)",
              "≤ 1")
    t.add_row("RSS per host agent (without the interpreter)",
              f"{fleet.rss_kib_per_agent / 1024:.2f} MiB "
              f"({fleet.rss_kib_per_agent_marginal / 1024:.2f} MiB)", "")
    t.add_row("all hosts online after start", f"{fleet.online_s:.1f} s", "")
    Console().print(t)
    return result
