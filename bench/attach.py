"""Attach benchmark: real namespaces talking through hvsim against the same through a Linux
bridge, in the same run (root, Linux).

- hvsim: namespace → veth → vSwitch (VST 10) → trunk → physical switch → trunk → vSwitch →
  veth → namespace, the lab running in this process on the real clock.
- baseline: namespace → veth → Linux bridge → veth → namespace, with the guests' offloads set as
  hvsim sets them (no TSO/GSO, so both carry 1500-byte frames); the bridge with the kernel's
  default offloads (64 KiB super-frames) is reported too.

Figures: iperf3 TCP throughput (Mbit/s, 3 s), and ping round-trip time when idle (the added
RTT is hvsim's minus the bridge's). Targets: ≥ 0.1× the bridge's throughput, < 0.5 ms added.
"""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid

from rich.console import Console
from rich.table import Table

from netsim.clock import RealClock
from netsim.lab.attach import netns_name
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology

TOPOLOGY = """\
name: {name}
hosts:
  esx1:
    type: esxi
    pifs: {{vmnic0: {{}}}}
    switches: {{vSwitch0: {{uplinks: [vmnic0]}}}}
    port_groups: {{V10: {{vlan: 10}}}}
    vms:
      a: {{nics: [{{network: V10, ip: 10.9.0.1/24, attach: netns}}]}}
  esx2:
    type: esxi
    pifs: {{vmnic0: {{}}}}
    switches: {{vSwitch0: {{uplinks: [vmnic0]}}}}
    port_groups: {{V10: {{vlan: 10}}}}
    vms:
      b: {{nics: [{{network: V10, ip: 10.9.0.2/24, attach: netns}}]}}
physical:
  core:
    ports:
      esx1.vmnic0: {{mode: trunk, vlans: [10]}}
      esx2.vmnic0: {{mode: trunk, vlans: [10]}}
"""


async def _run(*cmd: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {err.decode().strip() or proc.returncode}")
    return out.decode()


async def _measure(ns_a: str, ns_b: str, dst: str, *, seconds: int, pings: int) -> dict:
    server = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns_b, "iperf3", "-s", "-1", "-p", "5299",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # until the server listens (a fixed 0.5 s lost that race on a loaded machine)
        for _ in range(600):
            if server.returncode is not None or await _run(
                    "ip", "netns", "exec", ns_b, "ss", "-Hltn", "sport = :5299"):
                break
            await asyncio.sleep(0.05)
        out = await _run("ip", "netns", "exec", ns_a, "iperf3", "-c", dst, "-p", "5299", "-t",
                         str(seconds), "-J")
    finally:
        if server.returncode is None:
            server.kill()
        await server.wait()
    mbps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    await _run("ip", "netns", "exec", ns_a, "ping", "-c", "3", "-q", dst)  # ARP, warm caches
    ping = await _run("ip", "netns", "exec", ns_a, "ping", "-c", str(pings), "-i", "0.05", "-q",
                      dst)
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", ping)
    if m is None:
        raise RuntimeError(f"ping output not understood: {ping!r}")
    return {"tcp_Mbit_s": mbps, "rtt_min_ms": float(m.group(1)),
            "rtt_avg_ms": float(m.group(2))}


async def _bridge(tag: str, *, offloads: bool, seconds: int, pings: int) -> dict:
    ns = [f"hvbench-{tag}-{x}" for x in ("a", "b", "br")]
    try:
        for n in ns:
            await _run("ip", "netns", "add", n)
        await _run("ip", "-n", ns[2], "link", "add", "br0", "type", "bridge")
        await _run("ip", "-n", ns[2], "link", "set", "br0", "up")
        for i, n in enumerate(ns[:2]):
            await _run("ip", "-n", ns[2], "link", "add", f"p{i}", "type", "veth", "peer", "name",
                       "eth0", "netns", n)
            await _run("ip", "-n", ns[2], "link", "set", f"p{i}", "master", "br0", "up")
            await _run("ip", "-n", n, "addr", "add", f"10.9.0.{i + 1}/24", "dev", "eth0")
            await _run("ip", "-n", n, "link", "set", "eth0", "up")
            await _run("ip", "-n", n, "link", "set", "lo", "up")
            if not offloads:
                await _run("ip", "netns", "exec", n, "ethtool", "-K", "eth0", "tx", "off", "tso",
                           "off", "gso", "off", check=False)
        return await _measure(ns[0], ns[1], "10.9.0.2", seconds=seconds, pings=pings)
    finally:
        for n in ns:
            await _run("ip", "netns", "del", n, check=False)


async def _hvsim(name: str, *, seconds: int, pings: int) -> dict:
    lab = Lab(parse_topology(TOPOLOGY.format(name=name), source="bench-attach"),
              clock=RealClock())
    async with lab:
        res = await _measure(netns_name(name, "a"), netns_name(name, "b"), "10.9.0.2",
                             seconds=seconds, pings=pings)
        att = lab.attachments.counters()  # type: ignore[union-attr]
        res["drops"] = {p: c["drops"] for p, c in att.items() if c["drops"]}
    return res


async def _main(quick: bool) -> dict:
    seconds, pings = (2, 20) if quick else (5, 100)
    tag = uuid.uuid4().hex[:6]
    res: dict = {"seconds": seconds, "pings": pings}
    res["hvsim"] = await _hvsim(f"bench{tag}", seconds=seconds, pings=pings)
    res["bridge"] = await _bridge(tag, offloads=False, seconds=seconds, pings=pings)
    res["bridge_default_offloads"] = await _bridge(tag + "o", offloads=True, seconds=seconds,
                                                   pings=pings)
    res["ratio_tcp"] = res["hvsim"]["tcp_Mbit_s"] / res["bridge"]["tcp_Mbit_s"]
    res["ratio_tcp_vs_default_offloads"] = (res["hvsim"]["tcp_Mbit_s"]
                                            / res["bridge_default_offloads"]["tcp_Mbit_s"])
    res["added_rtt_ms"] = res["hvsim"]["rtt_avg_ms"] - res["bridge"]["rtt_avg_ms"]
    return res


def run(*, quick: bool) -> dict:
    """Run the attach benchmark; prints a table and returns the figures."""
    from netsim.lab.attach import require_root_linux

    require_root_linux()
    res = asyncio.run(_main(quick))
    _print(res)
    return res


def _print(res: dict) -> None:
    t = Table(title="hvsim attach bench: namespace → hvsim (vSwitch, trunk, vSwitch) → "
                    "namespace vs a Linux bridge")
    for col in ("path", "iperf3 TCP", "ping avg (min)", "ratio"):
        t.add_column(col, justify="left" if col == "path" else "right")
    h, b, d = res["hvsim"], res["bridge"], res["bridge_default_offloads"]
    t.add_row("hvsim", f"{h['tcp_Mbit_s']:.0f} Mbit/s",
              f"{h['rtt_avg_ms']:.3f} ({h['rtt_min_ms']:.3f}) ms",
              f"{res['ratio_tcp']:.2f}× (target ≥0.1)")
    t.add_row("Linux bridge, same offloads", f"{b['tcp_Mbit_s']:.0f} Mbit/s",
              f"{b['rtt_avg_ms']:.3f} ({b['rtt_min_ms']:.3f}) ms", "1.00×")
    t.add_row("Linux bridge, default offloads", f"{d['tcp_Mbit_s']:.0f} Mbit/s",
              f"{d['rtt_avg_ms']:.3f} ({d['rtt_min_ms']:.3f}) ms",
              f"{res['ratio_tcp_vs_default_offloads']:.3f}×")
    t.add_row("added RTT (hvsim − bridge)", "", f"{res['added_rtt_ms']:.3f} ms",
              "target < 0.5 ms")
    Console().print(t)
    if h.get("drops"):
        Console().print(f"hvsim attachment drops: {h['drops']}")
