"""CLI: `hvsim replay` — run a scenario file, or replay one capture into a topology."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
#: progress and notes go to stderr, so that stdout holds only the results
err_console = Console(stderr=True)


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
    dlt_ethernet: Annotated[bool, typer.Option(
        "--dlt-ethernet", help="With --pcap: make Linux cooked (SLL, SLL2), raw IP and loopback "
        "packets Ethernet frames, as tcprewrite --dlt=enet.")] = False,
    src_mac: Annotated[str | None, typer.Option(
        "--src-mac", help="With --dlt-ethernet: source MAC (default: a cooked capture's "
        "sender address).")] = None,
    dst_mac: Annotated[str | None, typer.Option(
        "--dst-mac", help="With --dlt-ethernet: destination MAC.")] = None,
    capture_drops: Annotated[bool, typer.Option(
        "--capture-drops", help="Also write every dropped frame to OUT/drops.pcapng, "
        "commented with the port and reason (Wireshark's frame.comment).")] = False,
    live: Annotated[bool, typer.Option(
        "--live", help="Serve the lab while the scenario runs (real time, as --realtime) on "
        "http://127.0.0.1:PORT; afterwards keep serving its final state until Ctrl-C.")
                    ] = False,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="With --live: TCP "
                                      "port (0: any free one).")] = 8731,
) -> None:
    """Run a traffic scenario (or replay a capture) and check its expectations.

    Writes one pcapng per captured port and report.json to --out and prints a pass/fail table.

    Exits with status 1 if an expectation failed, 2 on a bad scenario, topology or capture.

    Virtual time (default) is deterministic and jumps over idle time; --realtime paces it.

    Example: hvsim replay topologies/scenarios/xen-vlan-isolation.yaml --out out/

    Example: hvsim replay --pcap trace.pcapng --into vif1.0 topologies/xen-vlans.yaml --speed 10x
    """
    from netsim.errors import ScenarioError
    from netsim.live.drops import DropCapture
    from netsim.scenario.model import Replay, load_scenario, parse_scenario
    from netsim.scenario.runner import run_scenario

    if pcap is not None:
        cap = "all" if capture == "all" else [c.strip() for c in capture.split(",") if c.strip()]
        if (src_mac or dst_mac) and not dlt_ethernet:
            raise typer.BadParameter("--src-mac/--dst-mac go with --dlt-ethernet",
                                     param_hint="--dlt-ethernet")
        rewrite = ({"dlt_ethernet": True, "src_mac": src_mac, "dst_mac": dst_mac}
                   if dlt_ethernet else None)
        text = _one_liner(target.resolve(), pcap.resolve(), into, speed, cap, rewrite)
        scn = parse_scenario(text, f"replay of {pcap.name}")
        # errors name the CLI's flag, not the one-line scenario's key
        scn.steps = [dataclasses.replace(st, into_hint="--into PORT")
                     if isinstance(st, Replay) else st for st in scn.steps]
    else:
        for flag, val in (("--into", into), ("--dlt-ethernet", dlt_ethernet or None),
                          ("--src-mac", src_mac), ("--dst-mac", dst_mac)):
            if val is not None:
                raise typer.BadParameter(f"{flag} goes with --pcap", param_hint=flag)
        scn = load_scenario(target)
    if scn.topology is not None:
        from netsim.cli.commands.check import warn_holes
        from netsim.lab.topology import load_topology

        warn_holes(load_topology(scn.topology))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScenarioError(f"cannot create output directory {out}: {exc.strerror}") from exc

    drops: list[DropCapture] = []

    def attach(fab: object) -> DropCapture | None:
        if not capture_drops:
            return None
        drops.append(DropCapture(fab, out / "drops.pcapng").start())
        return drops[-1]

    with Progress(TextColumn(f"[bold]{escape(scn.name)}[/]"), BarColumn(), TextColumn(
            "{task.percentage:>3.0f}% of simulated time"), TextColumn("{task.fields[frames]}"),
            TimeElapsedColumn(), console=err_console, transient=True,
            disable=not err_console.is_terminal) as bar:
        task = bar.add_task("run", total=1.0, frames="")
        if live:
            report = asyncio.run(_run_live(scn, out, attach, port,
                                           lambda frac: bar.update(task, completed=frac)))
        else:
            report = asyncio.run(run_scenario(
                scn, out_dir=out, realtime=realtime,
                progress=lambda frac: bar.update(task, completed=frac),
                replay_progress=lambda n: bar.update(task, frames=f"{n:,} frames replayed"),
                attach=attach))

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
    if report.removed:
        err_console.print(f"removed {len(report.removed)} file(s) of the previous run in "
                          f"{out}/ first: {', '.join(report.removed)}", highlight=False,
                          markup=False)
    if report.results or pcap is None:
        console.print(table)
    if pcap is not None:
        _print_replay_summary(report)
    if report.realtime is not None and report.realtime.get("frames"):
        rt = report.realtime
        console.print(f"real-time offsets: p50 {rt['offset_ns_p50'] / 1e3:.0f} µs, p99 "
                      f"{rt['offset_ns_p99'] / 1e3:.0f} µs, max {rt['offset_ns_max'] / 1e3:.0f} "
                      f"µs, {rt['within_1ms']:.1%} within 1 ms")
    for name, st in (report.impairments or {}).items():  # what each impaired direction did
        now = st["settings"] if st["settings"] != "none" else "cleared"
        console.print(f"impaired {name} ({now}): {st['offered']} offered, "
                      f"{st['delivered']} delivered, {st['lost']} lost, {st['queue_dropped']} "
                      f"over the limit, {st['duplicated']} duplicated, {st['corrupted']} "
                      f"corrupted, {st['reordered']} reordered")
    print_lags_and_flaps(report.lags or {}, report.mac_flaps or {})
    for d in drops:
        console.print(f"drops.pcapng: {d.summary()}")
    files = ", ".join([*report.captures, *(["drops.pcapng"] if drops else []), "report.json"])
    console.print(f"wrote {out}/: {files}")
    if not report.passed:
        raise typer.Exit(1)


def print_lags_and_flaps(lags: dict[str, Any], flaps: dict[str, Any]) -> None:
    """Each LAG's members at the end (`Lag.status()` by path), and every switch that saw a MAC
    flap (switch → {"moves", "hosts"}), as a switch logs MACFLAP_NOTIF and OVS `fdb/stats-show`
    counts moves."""
    for path, st in lags.items():
        members = ", ".join(f"{m['member']} {m['status']}"
                            + (" distributing" if m["distributing"] else "")
                            for m in st["members"])
        console.print(f"LAG {path} ({st['mode']}): {'up' if st['up'] else 'DOWN'}; {members}",
                      highlight=False, markup=False)
    for sw, fl in flaps.items():
        console.print(f"MAC flapping on {sw}: {fl['moves']} move(s)", highlight=False,
                      markup=False)
        for h in fl["hosts"][:5]:
            console.print(f"  host {h['mac']} in VLAN {h['vlan']} is flapping between "
                          f"{' and '.join(h['ports'])}: {h['moves']} move(s)", highlight=False,
                          markup=False)


def _print_replay_summary(report: Any) -> None:
    """What a `--pcap` replay did: frames injected, delivered per port, dropped by reason."""
    for st in report.steps:
        if st.get("kind") != "replay":
            continue
        console.print(f"replayed {st['frames']:,} frames", highlight=False)
        for why, n in st.get("skipped", {}).items():
            console.print(f"  skipped {n:,}: {why}", highlight=False, markup=False)
    delivered = {p: c["tx_frames"] for p, c in report.counters.items() if c.get("tx_frames")}
    drops: dict[str, dict[str, int]] = {}
    for p, c in report.counters.items():
        for why, n in c.get("drops", {}).items():
            drops.setdefault(why, {})[p] = n
    if delivered:
        table = Table(title="delivered")
        table.add_column("port")
        table.add_column("frames out", justify="right")
        for p, n in sorted(delivered.items()):
            table.add_row(escape(p), f"{n:,}")
        console.print(table)
    else:
        console.print("delivered: no frame left any port")
    if drops:
        table = Table(title="dropped")
        table.add_column("reason")
        table.add_column("frames", justify="right")
        table.add_column("ports")
        for why, per in sorted(drops.items()):
            table.add_row(escape(why), f"{sum(per.values()):,}",
                          escape(", ".join(f"{p} {n:,}" for p, n in sorted(per.items()))))
        console.print(table)
    else:
        console.print("dropped: none")


async def _run_live(scn: Any, out: Path, attach: Any, port: int, progress: Any) -> Any:
    """Run `scn` in real time behind a live server; keep serving until Ctrl-C / SIGTERM."""
    import contextlib
    import re
    import signal

    from netsim.live.server import LiveServer
    from netsim.scenario.runner import ScenarioRun

    run = ScenarioRun(scn, out_dir=out, realtime=True, progress=progress, attach=attach)
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", scn.name).strip("-.")[:64] or "scenario"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with LiveServer(run.fabric, lab=run.lab, name=name, port=port) as srv:
            console.print(f"serving scenario {scn.name} on {srv.url}/ while it runs")
            report = await run.run()
            srv.event("scenario", f"scenario {scn.name}: {'PASS' if report.passed else 'FAIL'}"
                                  "; serving its final state")
            console.print(f"{scn.name}: {'PASS' if report.passed else 'FAIL'}; still serving "
                          f"{srv.url}/ (Ctrl-C stops)")
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return report


def _one_liner(topology: Path, pcap: Path, into: str | None, speed: str,
               capture: list[str] | str, rewrite: dict[str, Any] | None = None) -> str:
    import json
    into_part = f"into: {json.dumps(into)}, " if into is not None else ""
    if rewrite is not None:
        into_part += "".join(f"{k}: {json.dumps(v)}, " for k, v in rewrite.items()
                             if v is not None)
    return (f"name: replay-{pcap.stem}\n"
            f"topology: {json.dumps(str(topology))}\n"
            f"capture: {json.dumps(capture)}\n"
            f"steps:\n"
            f"  - replay: {{pcap: {json.dumps(str(pcap))}, {into_part}"
            f"speed: {json.dumps(speed)}}}\n")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `hvsim` app."""
    app.command("replay")(replay)
