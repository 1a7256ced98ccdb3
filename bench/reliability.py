"""Benchmark: hostile input, power cuts, overload, isolation and broker faults, measured.

The long runs of the suite in `tests/reliability/` (same harnesses, in `bench/_rel/`):
- fuzz: inputs tried per parser, crashers found now, and the crashers found and fixed before
  (replayed: each must now keep the contract);
- crash: cut points injected per operation (ordered and torn writes) and images/VGs that
  survived;
- overload: 10× offered load for a virtual minute against the unloaded run (same process), drops
  by reason, bounds; the ring's honest VBD share beside a flooding frontend against it alone;
- isolation: random topologies and frames checked, violations;
- broker faults survived (a 30 s host outage in the full run);
- concurrency: three processes writing/snapshotting/cloning/destroying/gc-ing one file, lvm
  and lvhd SR at once, and a SIGKILL loop over gc/snapshot/clone, every VDI checked against
  the model afterwards.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench._progress import stages
from bench._rel import brokerfaults, concurrency, crash, fuzz, isolation, overload, ringfair

FULL_INPUTS = 3000
SLOW_TARGETS = {"scenario YAML": 800, "topology YAML": 2000, "VHD image open": 2000}


def _fuzz(quick: bool, step: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    rows = []
    for t in fuzz.TARGETS:
        step(f"fuzzing {t.name}")
        n = 25 if quick else SLOW_TARGETS.get(t.name, FULL_INPUTS)
        t0 = time.perf_counter()
        r = fuzz.run_target(t, n, seed=1)
        fixed = [g for g in fuzz.REGRESSIONS if g.target == t.name]
        still = 0
        for g in fixed:
            try:
                t.check(g.input)
            except Exception:  # a regression input breaking the contract again
                still += 1
        rows.append({"target": t.name, "inputs": r.inputs, "crashers": r.crashers,
                     "fixed": len(fixed), "regressed": still,
                     "s": round(time.perf_counter() - t0, 1)})
    return {"targets": rows, "inputs": sum(r["inputs"] for r in rows),
            "crashers": sum(len(r["crashers"]) for r in rows),
            "found_and_fixed": [g.found for g in fuzz.REGRESSIONS] + FIXED_ELSEWHERE}


#: Crash and overload findings fixed in this branch (their regression tests live in
#: tests/reliability/test_crash.py and test_overload.py).
FIXED_ELSEWHERE = [
    "VHD open: a foreign VHD footer ending an interrupted block allocation bricked the image",
    "coalesce: a torn 1 KiB header write during relink made the chain unrecoverable",
    "VHD open: a resize cut between its two footer writes bricked the image",
    "isolation/overload: none found (the oracles catch deliberately broken switches)",
    "blkback: a flooding frontend starved another VBD (12-14 % of its throughput)",
    "VHD: two `vhd write` processes on one image allocated blocks at the same offset "
    "(now: QEMU's OFD image locks, the second writer is refused naming the holder)",
    "VHD: a 4 GiB sparse file claiming 2^26..2^30 BAT entries took 22 GB+ RSS (now refused "
    "at 36 MB); `vhd create --size 2040G --block-size 512` 16 GB (now refused, no file)",
    "xenstore: a guest's 60 KB values grew the host by 1.2 GB and stayed (now oxenstored's "
    "quotas; a guest's entries go when it does)",
]


def _crash_scenarios(quick: bool) -> list[Any]:
    scenarios = crash.scenarios()
    if quick:
        scenarios = [s for s in scenarios if s.name == "SR snapshot (file)"]
    return scenarios


def _crash(quick: bool, step: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    rows = []
    for sc in _crash_scenarios(quick):
        for torn in ((False,) if quick else (False, True)):
            step(f"power cuts: {sc.name}{' (torn)' if torn else ''}")
            r = crash.sweep(sc, torn=torn)
            rows.append({"operation": r.name, "cut_points": r.cut_points,
                         "survived": r.survived, "failures": r.failures[:3]})
    return {"sweeps": rows, "cut_points": sum(r["cut_points"] for r in rows),
            "survived": sum(r["survived"] for r in rows)}


def _atheris(quick: bool, seconds: int = 10) -> dict[str, Any]:
    """Coverage-guided runs (bench/_rel/atheris_run.py) when atheris is installed."""
    if quick or importlib.util.find_spec("atheris") is None:
        return {"ran": False, "why": "quick run" if quick else "atheris not installed"}
    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with tempfile.TemporaryDirectory(prefix="hvsim-atheris-") as d:
        for name in ("frame", "filter", "pcap", "scenario", "topology", "batch", "vds",
                     "lvm-text", "lvm-label", "vhd"):
            proc = subprocess.run([sys.executable, "-m", "bench._rel.atheris_run", name,
                                   str(seconds)], cwd=d, env=env, capture_output=True,
                                  text=True, timeout=seconds * 6 + 60)
            out = proc.stdout + proc.stderr
            m = re.search(r"number_of_executed_units: (\d+)", out)
            rows.append({"target": name, "executions": int(m.group(1)) if m else 0,
                         "crashed": proc.returncode != 0,
                         "detail": (re.findall(r"ContractBroken: .*", out) or [""])[0][:200]})
    return {"ran": True, "seconds_each": seconds, "targets": rows}


def _broker(quick: bool) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="hvsim-brokerfaults-") as d:
        work = Path(d)

        async def go() -> list[dict[str, Any]]:
            if quick:
                return [await brokerfaults.malformed(work), await brokerfaults.impersonation(work)]
            return await brokerfaults.run_all(work, outage_s=30.0)

        return asyncio.run(go())


def _concurrency(quick: bool) -> dict[str, Any]:
    runs = [concurrency.run_concurrent(k, workers=3, ops=10 if quick else 40, seed=5)
            for k in concurrency.KINDS]
    kills = [concurrency.sigkill_loop(k, rounds=2 if quick else 10, seed=13)
             for k in (("file",) if quick else concurrency.KINDS)]
    return {"runs": [r.__dict__ | {"ok": r.ok} for r in runs],
            "sigkill": [r.__dict__ | {"ok": r.ok} for r in kills]}


def _reasons(drops: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in drops.items()) or "-"


def run(*, quick: bool) -> dict[str, Any]:
    """Run every part and print the tables; returns the figures."""
    console = Console()
    t0 = time.perf_counter()
    total_steps = (len(fuzz.TARGETS) + len(_crash_scenarios(quick)) * (1 if quick else 2) + 6)
    with stages("reliability", total_steps) as step:
        fz = _fuzz(quick, step)
        step("atheris")
        ath = _atheris(quick)
        cr = _crash(quick, step)
        step("overload: 10x offered load")
        ov = overload.run_overload(capacity=200 if quick else 2000, seconds=60.0,
                                   tick_ms=10 if quick else 1)
        step("ring fairness")
        ring = ringfair.run_ring_fairness(seconds=0.2 if quick else 1.0,
                                          rounds=1 if quick else 3)
        step("isolation: random topologies")
        iso = isolation.as_dict(isolation.run_isolation(500 if quick else 10_000, seed=2026))
        step("broker faults")
        br = _broker(quick)
        step("concurrent processes on one SR; SIGKILL loop")
        cc = _concurrency(quick)

    t = Table(title="hostile input: parsers fuzzed (contract: result or typed one-line error)")
    for col in ("parser", "inputs", "crashers now", "found+fixed", "regressed", "s"):
        t.add_column(col, justify="left" if col == "parser" else "right")
    for r in fz["targets"]:
        t.add_row(r["target"], f"{r['inputs']:,}", str(len(r["crashers"])), str(r["fixed"]),
                  str(r["regressed"]), str(r["s"]))
    console.print(t)
    console.print("found and fixed: " + "; ".join(fz["found_and_fixed"]))
    if ath["ran"]:
        console.print("atheris (coverage-guided, {}s each): ".format(ath["seconds_each"]) +
                      ", ".join(f"{r['target']} {r['executions']:,}"
                                f"{' CRASHED ' + r['detail'] if r['crashed'] else ''}"
                                for r in ath["targets"]))
    else:
        console.print(f"atheris: skipped ({ath['why']})")

    t = Table(title="power cuts: every durable step (ordered; torn = multi-sector write cut)")
    for col in ("operation", "cut points", "survived"):
        t.add_column(col, justify="left" if col == "operation" else "right")
    for r in cr["sweeps"]:
        t.add_row(r["operation"], str(r["cut_points"]), str(r["survived"]))
    console.print(t)

    b, o = ov["unloaded"], ov["overloaded"]
    t = Table(title=f"overload: {o['load']:.0f}× offered for {o['virtual_s']:.0f} s virtual "
                    f"(capacity {o['capacity_fps']:,} frames/s)")
    for col in ("figure", "unloaded (1×)", "overloaded", "ratio / bound"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    t.add_row("offered frames", f"{b['offered']:,}", f"{o['offered']:,}", "10×")
    t.add_row("delivered frames/s (virtual)", f"{b['delivered_fps']:,}",
              f"{o['delivered_fps']:,}", f"{ov['admitted_ratio']:.3f} (≥ 0.8)")
    t.add_row("drops by reason", _reasons(b["drops"]), _reasons(o["drops"]), "")
    t.add_row("MAC-flood drops", "-", _reasons(o["flood_drops"]), "")
    t.add_row("unaccounted frames", str(b["unaccounted"]), str(o["unaccounted"]), "0")
    t.add_row("largest queue", str(b["max_queue"]), str(o["max_queue"]),
              f"≤ {o['queue_limit']}")
    t.add_row("largest MAC table", str(b["max_mac_table"]), str(o["max_mac_table"]),
              f"≤ {o['mac_table_limit']}")
    t.add_row("RSS growth after 10 s (MiB)", str(b["rss_growth_mib"]),
              str(o["rss_growth_mib"]), "")
    t.add_row("probe after the storm", str(b["probe_after_storm"]),
              str(o["probe_after_storm"]), "")
    t.add_row("wall s / offered frames per wall s", f"{b['wall_s']} / {b['offered_fps_wall']:,}",
              f"{o['wall_s']} / {o['offered_fps_wall']:,}", "")
    t.add_row("ring: honest VBD reads/s (alone → flooded)",
              f"{ring['alone']['honest_reads_per_s']:,}",
              f"{ring['flooded']['honest_reads_per_s']:,}", f"{ring['share']:.3f} (fair ≈ 0.5)")
    t.add_row("ring: honest requests per flooding request (same run)", "",
              f"{ring['request_ratio']:.3f}", "(≥ 0.3; 0.13-0.16 before the fix)")
    console.print(t)

    t = Table(title="isolation and broker faults")
    t.add_column("check")
    t.add_column("result", justify="right")
    t.add_row("random topologies / frames / delivered copies checked",
              f"{iso['cases']:,} / {iso['frames_sent']:,} / {iso['copies_checked']:,}")
    t.add_row("isolation violations", str(iso["violations"]))
    for r in br:
        extra = (f" (sent {r['sent']:,}, received {r['received']:,}, lost+counted "
                 f"{r['lost_counted']:,}, unaccounted {r['unaccounted']})" if "sent" in r else "")
        t.add_row(r["fault"], ("survived" if r["survived"] else "FAILED") + extra)
    console.print(t)
    t = Table(title="concurrent processes on one SR; SIGKILL during gc/snapshot/clone "
                    "(every VDI read back against the model)")
    for col in ("SR", "processes / rounds", "operations done", "refused", "VDIs checked",
                "mismatches", "scan clean", "s"):
        t.add_column(col, justify="left" if col in ("SR", "operations done") else "right")
    for r in cc["runs"] + cc["sigkill"]:
        t.add_row(r["kind"], str(r["workers"]),
                  ", ".join(f"{k} {v}" for k, v in sorted(r["done"].items())),
                  str(sum(r["refused"].values())), str(r["vdis_checked"]),
                  str(len(r["mismatches"]) + len(r["errors"])),
                  "yes" if r["scan_clean"] else "NO", str(r["seconds"]))
    console.print(t)
    total = round(time.perf_counter() - t0, 1)
    console.print(f"total {total} s")
    return {"fuzz": fz, "atheris": ath, "crash": cr, "overload": ov, "ring_fairness": ring,
            "isolation": iso,
            "broker_faults": br, "broker_faults_survived": sum(1 for r in br if r["survived"]),
            "concurrency": cc,
            "seconds": total}
