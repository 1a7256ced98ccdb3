"""CLI: `hvsim replay` — run a scenario file, or replay one capture into a topology."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()


def replay(
    target: Annotated[Path, typer.Argument(
        help="A scenario YAML file; with --pcap, the topology YAML file to replay into.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the captures "
                                      "(pcapng, one per port) and report.json.")] = Path(
        "hvsim-out"),
    pcap: Annotated[Path | None, typer.Option("--pcap", help="Replay this pcap/pcapng into "
                                              "--into (TARGET is then a topology).")] = None,
    into: Annotated[str | None, typer.Option("--into", help="Port or VM the capture enters "
                                             "at, e.g. vif1.0 or xen1/eth0 (default: each "
                                             "frame at the port its pcapng interface names).")
                    ] = None,
    speed: Annotated[str, typer.Option("--speed", help="With --pcap: original, max, or a "
                                       "factor like 10x.")] = "original",
    capture: Annotated[str, typer.Option("--capture", help="With --pcap: ports to capture, "
                                         "comma-separated, or all.")] = "all",
    realtime: Annotated[bool, typer.Option("--realtime", help="Pace on the wall clock instead "
                                           "of virtual time.")] = False,
) -> None:
    """Run a traffic scenario (or replay a capture) and check its expectations.

    Writes one pcapng per captured port and report.json to --out and prints a pass/fail table.

    Exits with status 1 if an expectation failed, 2 on a bad scenario, topology or capture.

    Virtual time (default) is deterministic and jumps over idle time; --realtime paces it.

    Example: hvsim replay topologies/scenarios/xen-vlan-isolation.yaml --out out/

    Example: hvsim replay --pcap trace.pcapng --into vif1.0 topologies/xen-vlans.yaml --speed 10x
    """
    from netsim.errors import ScenarioError
    from netsim.scenario.model import load_scenario, parse_scenario
    from netsim.scenario.runner import run_scenario

    if pcap is not None:
        cap = "all" if capture == "all" else [c.strip() for c in capture.split(",") if c.strip()]
        text = _one_liner(target.resolve(), pcap.resolve(), into, speed, cap)
        scn = parse_scenario(text, f"replay of {pcap.name}")
    else:
        if into is not None:
            raise typer.BadParameter("--into goes with --pcap", param_hint="--into")
        scn = load_scenario(target)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScenarioError(f"cannot create output directory {out}: {exc.strerror}") from exc

    with Progress(TextColumn(f"[bold]{scn.name}[/]"), BarColumn(), TextColumn(
            "{task.percentage:>3.0f}% of simulated time"), TimeElapsedColumn(),
            console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("run", total=1.0)
        report = asyncio.run(run_scenario(
            scn, out_dir=out, realtime=realtime,
            progress=lambda frac: bar.update(task, completed=frac)))

    if not console.is_terminal:  # logs and CI: room for the names instead of 80 columns
        console.width = max(console.width, 140)
    table = Table(title=f"{scn.name}: {'PASS' if report.passed else 'FAIL'}")
    table.add_column("", width=4)
    table.add_column("expectation")
    table.add_column("observed")
    table.add_column("where", style="dim")
    for r in report.results:
        table.add_row("[green]ok[/]" if r.passed else "[red]FAIL[/]", r.name, r.detail,
                      Path(r.where).name)
    for s in report.steps:
        if s.get("unfinished"):
            table.add_row("[yellow]cut[/]", f"step {s['step']}", "still running at the end "
                          "(duration)", "")
    console.print(table)
    if report.realtime is not None and report.realtime.get("frames"):
        rt = report.realtime
        console.print(f"real-time offsets: p50 {rt['offset_ns_p50'] / 1e3:.0f} µs, p99 "
                      f"{rt['offset_ns_p99'] / 1e3:.0f} µs, max {rt['offset_ns_max'] / 1e3:.0f} "
                      f"µs, {rt['within_1ms']:.1%} within 1 ms")
    files = ", ".join([*report.captures, "report.json"])
    console.print(f"wrote {out}/: {files}")
    if not report.passed:
        raise typer.Exit(1)


def _one_liner(topology: Path, pcap: Path, into: str | None, speed: str,
               capture: list[str] | str) -> str:
    import json
    into_part = f"into: {json.dumps(into)}, " if into is not None else ""
    return (f"name: replay-{pcap.stem}\n"
            f"topology: {json.dumps(str(topology))}\n"
            f"capture: {json.dumps(capture)}\n"
            f"steps:\n"
            f"  - replay: {{pcap: {json.dumps(str(pcap))}, {into_part}"
            f"speed: {json.dumps(speed)}}}\n")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `hvsim` app."""
    app.command("replay")(replay)
