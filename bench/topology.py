"""Benchmark: load, validate and graph a generated lab of 1,000 VMs on 10 hosts with 100 VLANs.

`generate(hosts, vms, vlans)` writes such a topology as YAML (one trunk PIF per host, a port
group per VLAN on every host, VMs spread round-robin over the VLANs). The figures: generating,
loading (YAML with line numbers + validation), building the networkx graph, building the live
fabric with a guest per VM, starting it, the peak memory of all that, and a pingall over 100 VMs
on the virtual clock (all pairs; same VLAN answers). Baselines in the same process:
`yaml.safe_load` of the same text (the pure-Python loader our line-keeping loader is built on)
and libyaml's C loader when present.
Targets (issue 5): load+build < 5 s and < 1 GiB; pingall over 100 VMs in seconds.
Then issue 21's scale rows (`bench._scale`): the whole `hvsim pingall` of 100 VMs, pingall in
the 1,000-VM lab, build + teardown of 5,000 VMs, beside Mininet's (quoted) figures.
"""
from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from bench._progress import stages
from bench._scale import full_table, run_full_pingall, run_scale, scale_table
from netsim.lab.lab import Lab, Reachability
from netsim.lab.topology import Topology, parse_topology, to_graph


def generate(hosts: int = 10, vms: int = 1000, vlans: int = 100, *, seed: int = 1) -> str:
    """A topology YAML text: `hosts` XenServer hosts, `vms` VMs, `vlans` VLANs on a trunk."""
    out = [f"name: generated-{hosts}x{vms}x{vlans}", f"seed: {seed}", "hosts:"]
    vlan_ids = [10 + i for i in range(vlans)]
    per_host = [vms // hosts + (1 if h < vms % hosts else 0) for h in range(hosts)]
    n = 0
    for h in range(hosts):
        out += [f"  xen{h + 1}:", "    type: xen", "    pifs: {eth0: {}}",
                "    switches: {xenbr0: {uplinks: [eth0]}}", "    networks:"]
        out += [f"      vlan{v}: {{switch: xenbr0, vlan: {v}}}" for v in vlan_ids]
        out.append("    vms:")
        for _ in range(per_host[h]):
            v = vlan_ids[n % vlans]
            host_part = n // vlans
            ip = f"10.{v // 256}.{v % 256}.{host_part + 1}/16" if host_part < 254 else None
            ip_text = f", ip: {ip}" if ip else ""
            out.append(f"      vm{n + 1}: {{vifs: [{{network: vlan{v}{ip_text}}}]}}")
            n += 1
    out += ["physical:", "  core:", "    ports:"]
    vl = f"{vlan_ids[0]}-{vlan_ids[-1]}"
    out += [f"      xen{h + 1}.eth0: {{mode: trunk, vlans: [\"{vl}\"]}}" for h in range(hosts)]
    return "\n".join(out) + "\n"


async def _start_and_ping(lab: Lab) -> float:
    t0 = time.perf_counter()
    async with lab:
        first, second = list(lab.agents)[:2]
        await lab.ping(first, second)
    return time.perf_counter() - t0


async def _pingall(topo: Topology) -> Reachability:
    async with Lab(topo) as lab:
        return await lab.pingall()


def _vlan_sizes(topo: Topology) -> list[int]:
    sizes: dict[int, int] = {}
    for h in topo.hosts:
        for vm in h.vms:
            v = h.network(vm.vifs[0].network).vlan
            sizes[v] = sizes.get(v, 0) + 1
    return list(sizes.values())


def _timed(fn: Any, repeat: int) -> tuple[float, Any]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def run(*, quick: bool = False, scale: bool = True, full: bool = False) -> dict[str, Any]:
    """Run the benchmark; print a table; return the figures (with issue 21's `scale` rows
    unless `scale` is False; with `full`, only the whole 1,000-VM pingall, measured)."""
    if full:
        row = run_full_pingall(quick=quick)
        Console().print(full_table(row))
        return {"pingall_full": row}
    hosts, vms, vlans = (10, 1000, 100) if not quick else (4, 200, 20)
    repeat = 3 if not quick else 1
    with stages("topology", 8) as step:
        step("generate YAML")
        t_gen, text = _timed(lambda: generate(hosts, vms, vlans), repeat)
        step("load + validate")
        t_load, topo = _timed(lambda: parse_topology(text, "generated.yaml"), repeat)
        step("networkx graph")
        t_graph, graph = _timed(lambda: to_graph(topo), repeat)
        step("baselines: yaml loaders")
        t_yaml, _ = _timed(lambda: yaml.load(text, Loader=yaml.SafeLoader), repeat)
        c_loader = getattr(yaml, "CSafeLoader", None)
        t_cyaml = (_timed(lambda: yaml.load(text, Loader=c_loader), repeat)[0] if c_loader
                   else None)
        step("build the live fabric")
        t_build, lab = _timed(lambda: Lab(topo), repeat)
        step("start + first ping")
        t_start = asyncio.run(_start_and_ping(lab))

        step("peak memory")
        gc.collect()
        tracemalloc.start()
        again = parse_topology(text, "generated.yaml")
        kept = (again, to_graph(again), Lab(again))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del kept, again

        small_vms = 100 if not quick else 30
        step(f"pingall {small_vms} VMs")
        small = parse_topology(generate(2, small_vms, 10), "pingall.yaml")
        t_pingall, reach = _timed(lambda: asyncio.run(_pingall(small)), 1)
    expected = sum(n * (n - 1) for n in _vlan_sizes(small))

    total = t_load + t_graph
    result: dict[str, Any] = {
        "hosts": hosts, "vms": len(topo.vms), "vlans": vlans,
        "yaml_bytes": len(text), "graph_nodes": graph.number_of_nodes(),
        "graph_edges": graph.number_of_edges(),
        "generate_s": round(t_gen, 4), "load_validate_s": round(t_load, 4),
        "graph_s": round(t_graph, 4), "load_and_graph_s": round(total, 4),
        "peak_mib": round(peak / 2**20, 1),
        "build_fabric_s": round(t_build, 4), "start_and_first_ping_s": round(t_start, 4),
        "load_graph_build_s": round(total + t_build, 4),
        "pingall_vms": small_vms, "pingall_pairs": reach.pairs,
        "pingall_answered": reach.answered, "pingall_expected": expected,
        "pingall_wall_s": round(t_pingall, 3),
        "baseline_yaml_safe_load_s": round(t_yaml, 4),
        "ratio_load_vs_safe_load": round(t_load / t_yaml, 2),
        "target_s": 5.0, "target_mib": 1024,
        "meets_target": total + t_build < 5.0 and peak < 2**30,
    }
    if t_cyaml is not None:
        result["baseline_yaml_c_loader_s"] = round(t_cyaml, 4)
    table = Table(title=f"topology: {len(topo.vms)} VMs on {hosts} hosts, {vlans} VLANs")
    table.add_column("step")
    table.add_column("time", justify="right")
    table.add_column("vs yaml.safe_load", justify="right")
    table.add_row("generate YAML", f"{t_gen * 1e3:.0f} ms", "")
    table.add_row("load + validate", f"{t_load * 1e3:.0f} ms", f"{t_load / t_yaml:.2f}×")
    table.add_row("networkx graph", f"{t_graph * 1e3:.0f} ms", "")
    table.add_row("load + graph", f"{total * 1e3:.0f} ms", "")
    table.add_row("build live fabric + guests", f"{t_build * 1e3:.0f} ms", "")
    table.add_row("load + graph + build", f"{(total + t_build) * 1e3:.0f} ms (target < 5 s)",
                  "")
    table.add_row("start fabric + first ping", f"{t_start * 1e3:.0f} ms", "")
    table.add_row(f"pingall {small_vms} VMs, virtual clock",
                  f"{t_pingall:.2f} s ({reach.answered}/{reach.pairs} answered, "
                  f"{expected} expected)", "")
    table.add_row("baseline yaml.safe_load (pure Python)", f"{t_yaml * 1e3:.0f} ms", "1.00×")
    if t_cyaml is not None:
        table.add_row("baseline yaml C loader", f"{t_cyaml * 1e3:.0f} ms",
                      f"{t_cyaml / t_yaml:.2f}×")
    table.add_row("peak memory, load + graph + build", f"{peak / 2**20:.1f} MiB (target < 1 GiB)",
                  "")
    Console().print(table)
    if scale:
        result["scale"] = run_scale(quick=quick)
        Console().print(scale_table(result["scale"]))
    return result
