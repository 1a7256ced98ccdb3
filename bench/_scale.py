"""Issue 21's scale rows of `hvsim bench topology`: pingall of 100 VMs (the whole command), a
pingall of the 1,000-VM lab, and build + teardown of 5,000 VMs on 50 hosts, each beside its
Mininet baseline; and, for `hvsim bench topology --full`, that 1,000-VM pingall run whole
(`run_full_pingall`: all 999,000 pings measured, not projected).

Mininet is not installable on this machine, so its figures are QUOTED, not measured in this run:
they were measured on this machine when issue 21 was filed (Mininet 2.3.1, Linux bridges):
`pingall` of 100 hosts took 22.3 s and building a host ≈44 ms. Every row also records the CPU
time of the run (the machine is shared: wall time includes waiting for a core) and the load
average at the start, so a reader can tell a slow machine from a slow program.

Each measured run is a child process (`python -m netsim ...` or this module's `_child`), so its
peak RSS is its own.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Quoted baselines (see the module docstring): not measured in this run.
MININET_PINGALL_100_S = 22.3
MININET_BUILD_PER_HOST_S = 0.044
#: Mininet's pingall of 100 hosts sends 9,900 pings: its time per ping, for projections.
MININET_PER_PING_S = MININET_PINGALL_100_S / 9_900


def _child_rusage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, r.ru_maxrss / 1024


def _run(cmd: list[str]) -> tuple[float, float, str]:
    """Run `cmd`; (wall s, CPU s of the child, its stdout)."""
    cpu0, _ = _child_rusage()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "COLUMNS": "120"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    cpu1, _ = _child_rusage()
    return wall, cpu1 - cpu0, proc.stdout


def _peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it starts afresh at exec, so a child
    does not report its parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _child(job: str, arg: str) -> None:
    """Runs in the child process: one measured job, its figures as JSON on stdout."""
    import asyncio

    from bench.topology import generate
    from netsim.lab.lab import Lab
    from netsim.lab.topology import parse_topology

    spec = json.loads(arg)
    out: dict[str, Any] = {}
    c0, t0 = time.process_time(), time.perf_counter()
    if job == "pingall":
        topo = parse_topology(generate(spec["hosts"], spec["vms"], spec["vlans"]), "gen.yaml")

        async def go() -> None:
            async with Lab(topo) as lab:
                names = list(lab.agents)
                per_vlan = spec["sources"] // spec["vlans"]
                # sources spread evenly: per_vlan in every VLAN, over every host (every VM
                # when all are sources: the full run)
                pick = (names if spec["sources"] >= len(names) else
                        [names[i * spec["vlans"] + i % spec["vlans"]]
                         for i in range(per_vlan * spec["vlans"])])
                v0 = lab.clock.now_ns()
                c1 = time.process_time()
                r = await lab.pingall(vms=pick)
                out.update(setup_cpu_s=round(c1 - c0, 3),
                           pingall_cpu_s=round(time.process_time() - c1, 3))
                drops: dict[str, int] = {}
                for p in lab.fabric.ports():
                    for k, v in p.counters.drops.items():
                        drops[k] = drops.get(k, 0) + v
                out.update(pairs=r.pairs, answered=r.answered, sources=len(pick),
                           expected=spec["vlans"] * per_vlan * (per_vlan - 1),
                           queue_full=drops.get("queue-full", 0),
                           virtual_s=round((lab.clock.now_ns() - v0) / 1e9, 2))
        asyncio.run(go())
    elif job == "build":
        text = generate(spec["hosts"], spec["vms"], spec["vlans"])
        t1 = time.perf_counter()
        topo = parse_topology(text, "gen.yaml")
        t2 = time.perf_counter()
        lab = Lab(topo)
        t3 = time.perf_counter()

        async def cycle() -> float:
            async with lab:
                started = time.perf_counter()
            return started

        t4 = asyncio.run(cycle())
        t5 = time.perf_counter()
        out.update(load_s=round(t2 - t1, 3), build_s=round(t3 - t2, 3),
                   start_s=round(t4 - t3, 3), stop_s=round(t5 - t4, 3),
                   build_start_stop_s=round(t5 - t2, 3))
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    out["cpu_s"] = round(time.process_time() - c0, 3)
    out["rss_mib"] = _peak_rss_mib()
    print(json.dumps(out))


def _in_child(job: str, spec: dict[str, Any]) -> dict[str, Any]:
    _, _, stdout = _run([sys.executable, "-c",
                         f"from bench._scale import _child; _child({job!r}, {json.dumps(spec)!r})"])
    return json.loads(stdout.strip().splitlines()[-1])


def run_full_pingall(*, quick: bool = False) -> dict[str, Any]:
    """Issue 21 target 2 measured, not projected: every VM of the 1,000-VM lab (10 hosts, 10
    VLANs, one /16) pings every other, 999,000 pings, in a child process; its wall and CPU
    time, peak RSS (VmHWM of the child) and whether every same-VLAN pair, and no other,
    answered."""
    spec = ({"hosts": 10, "vms": 1000, "vlans": 10, "sources": 1000} if not quick else
            {"hosts": 4, "vms": 200, "vlans": 4, "sources": 200})
    m = _in_child("pingall", spec)
    return {
        **spec, "measured": m, "pings": spec["vms"] * (spec["vms"] - 1),
        "target_s": 40.0, "target_rss_mib": 1024,
        "exact": m["answered"] == m["expected"] and m["queue_full"] == 0,
        "meets_target_cpu": None if quick else m["cpu_s"] <= 40.0 and m["rss_mib"] <= 1024,
        "meets_target_wall": None if quick else m["wall_s"] <= 40.0 and m["rss_mib"] <= 1024,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def full_table(row: dict[str, Any]) -> Any:
    """The full run as a one-row rich table."""
    from rich.table import Table

    m = row["measured"]
    t = Table(title=f"pingall of all {row['vms']:,} VMs ({row['pings']:,} pings, "
                    f"{row['hosts']} hosts, {row['vlans']} VLANs); load average "
                    f"{row['load_average_at_start']}")
    for col in ("answered / expected", "wall", "CPU (lab setup + pings)", "peak RSS",
                "target", "met (CPU / wall)"):
        t.add_column(col)
    t.add_row(f"{m['answered']:,} / {m['expected']:,} (queue-full {m['queue_full']})",
              f"{m['wall_s']:.1f} s", f"{m['cpu_s']:.1f} s ({m['setup_cpu_s']:.1f} + "
              f"{m['pingall_cpu_s']:.1f})", f"{m['rss_mib']} MiB", "≤ 40 s, ≤ 1 GiB",
              f"{_met(row['meets_target_cpu'])} / {_met(row['meets_target_wall'])}")
    return t


def run_scale(*, quick: bool = False) -> dict[str, Any]:
    """The three rows; each a dict of figures, baseline, target and whether it is met."""
    from bench.topology import generate

    rows: dict[str, Any] = {"load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    # 1. the whole `hvsim pingall` command on 100 VMs of one VLAN (9,900 pings)
    vms = 100 if not quick else 30
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pingall.yaml"
        path.write_text(generate(1, vms, 1))
        wall, cpu, stdout = _run([sys.executable, "-m", "netsim", "pingall", str(path)])
    ok = f"{vms * (vms - 1)}/{vms * (vms - 1)} answered" in " ".join(stdout.split())
    rows["pingall_100"] = {
        "vms": vms, "pings": vms * (vms - 1), "all_answered": ok,
        "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
        "baseline_mininet_s_quoted": MININET_PINGALL_100_S,
        "speedup_vs_mininet_wall": round(MININET_PINGALL_100_S / wall, 1),
        "speedup_vs_mininet_cpu": round(MININET_PINGALL_100_S / cpu, 1),
        "target_s": 2.2, "meets_target_wall": None if quick else wall <= 2.2,
        "meets_target_cpu": None if quick else cpu <= 2.2,
    }
    # 2. pingall in the 1,000-VM lab (10 hosts, 10 VLANs, one /16): sources spread over every
    #    host and VLAN, pinging each other in the whole lab's flood domain; the full run's
    #    time projected from the per-ping cost (each ARP request floods the same 100 VMs of its
    #    VLAN whichever VMs ping)
    spec = ({"hosts": 10, "vms": 1000, "vlans": 10, "sources": 100} if not quick else
            {"hosts": 4, "vms": 200, "vlans": 4, "sources": 40})
    big = _in_child("pingall", spec)
    full_pings = spec["vms"] * (spec["vms"] - 1)
    # building the lab once, then every ping at the measured cost per ping
    per_ping_cpu = big["pingall_cpu_s"] / big["pairs"]
    projected = big["setup_cpu_s"] + per_ping_cpu * full_pings
    rows["pingall_1000"] = {
        **spec, "measured": big, "full_pings": full_pings,
        "projected_full_cpu_s": round(projected, 1),
        "baseline_mininet_projected_s_quoted": round(
            MININET_BUILD_PER_HOST_S * spec["vms"] + MININET_PER_PING_S * full_pings),
        "target_s": 40.0, "target_rss_mib": 1024,
        "exact": big["answered"] == big["expected"] and big["queue_full"] == 0,
        "meets_target": None if quick else (projected <= 40.0 and big["rss_mib"] <= 1024),
        "note": ("Measured with the sources named, projected to all 999,000 pings as the "
                 "lab's setup once plus the measured cost per ping (`hvsim bench topology "
                 "--full` measures the whole run). Where the time goes: 90% of pings cross "
                 "VLANs in one /16, so each sends an ARP request nobody answers (one: Linux "
                 "re-sends only after retrans_time, 1 s, when ping -W1 has given up), flooded "
                 "to the 100 VMs of its VLAN on 10 hosts: ~90M guest deliveries and ~11 switch "
                 "hops per request. A switch decides such a flood for each guest that reads its "
                 "port with nothing queued ahead (counted, or nothing when it knows the sender "
                 "at that MAC), so most never queue or wake a guest. Per ping now (micro-"
                 "measured): ~5 us per bridge hop with its 10 VM decisions, x10 bridges, ~5 us "
                 "for the core, ~9 us for the source guest's ICMP and ARP, and the rest in the "
                 "ping driver and event loop (a future, a clock timer and a task wake-up per "
                 "ping). What would close the rest: per-port counters folded in on read so a "
                 "flood is O(1) per switch, not O(VMs), and a driver that waits for a round of "
                 "pings on one timer. Mininet was not run: building "
                 "1,000 hosts at its 44 ms each is 44 s, and 999,000 pings at its 100-host rate "
                 "(2.25 ms a ping) another ~37 min, before its per-ping cost grows with the "
                 "bridge's flood domain."),
    }
    # 4. build + teardown of 5,000 VMs on 50 hosts
    spec = ({"hosts": 50, "vms": 5000, "vlans": 50} if not quick else
            {"hosts": 10, "vms": 1000, "vlans": 10})
    built = _in_child("build", spec)
    rows["build_teardown_5000"] = {
        **spec, "measured": built,
        "baseline_mininet_s_quoted": round(MININET_BUILD_PER_HOST_S * spec["vms"], 1),
        "speedup_vs_mininet": round(MININET_BUILD_PER_HOST_S * spec["vms"]
                                    / built["build_start_stop_s"], 1),
        "target_s": 10.0,
        "meets_target": None if quick else built["build_start_stop_s"] <= 10.0,
    }
    return rows


def _met(v: bool | None) -> str:
    return "quick run: sizes differ" if v is None else ("yes" if v else "NO")


def scale_table(rows: dict[str, Any]) -> Any:
    """The rows as a rich table, each beside its (quoted) Mininet baseline."""
    from rich.table import Table

    t = Table(title="scale (issue 21); Mininet figures QUOTED from earlier runs on this "
                    f"machine, not measured now; load average {rows['load_average_at_start']}")
    for col in ("row", "hvsim: wall / CPU", "Mininet (quoted)", "target", "met"):
        t.add_column(col)
    a = rows["pingall_100"]
    t.add_row(f"hvsim pingall, {a['vms']} VMs one VLAN (whole command)",
              f"{a['wall_s']:.2f} s / {a['cpu_s']:.2f} s "
              f"({a['speedup_vs_mininet_wall']}× / {a['speedup_vs_mininet_cpu']}×)",
              f"{a['baseline_mininet_s_quoted']} s (100 hosts)", "≤ 2.2 s",
              f"wall {_met(a['meets_target_wall'])}, CPU {_met(a['meets_target_cpu'])}")
    b = rows["pingall_1000"]
    m = b["measured"]
    t.add_row(f"pingall in the {b['vms']}-VM lab: {m['sources']} sources measured "
              f"({m['answered']}/{m['expected']} expected answers, queue-full {m['queue_full']}, "
              f"RSS {m['rss_mib']} MiB)",
              f"{m['wall_s']:.1f} s / {m['cpu_s']:.1f} s; all {b['full_pings']:,} pings "
              f"projected {b['projected_full_cpu_s']} s CPU",
              f"≈{b['baseline_mininet_projected_s_quoted']:,} s projected (build + pings at its "
              "100-host rate)", "≤ 40 s, ≤ 1 GiB", _met(b["meets_target"]))
    c = rows["build_teardown_5000"]
    m = c["measured"]
    t.add_row(f"build + start + stop {c['vms']:,} VMs on {c['hosts']} hosts "
              f"(load YAML {m['load_s']} s more, RSS {m['rss_mib']} MiB)",
              f"{m['build_start_stop_s']:.2f} s / {m['cpu_s']:.2f} s (child CPU incl. load)",
              f"{c['baseline_mininet_s_quoted']} s (44 ms per host)", "≤ 10 s",
              _met(c["meets_target"]))
    return t
