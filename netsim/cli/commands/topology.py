"""CLI commands on topology files: draw, run (with captures), ping, pingall."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from netsim.clock import Clock
    from netsim.lab.lab import Lab, Reachability

console = Console()

TopologyArg = Annotated[Path, typer.Argument(help="Topology YAML file (see topologies/).")]
WaitOpt = Annotated[float, typer.Option("--wait", help="Seconds (lab time) to wait for each "
                                        "reply before calling it lost.")]
ClockOpt = Annotated[str, typer.Option("--clock", help="virtual: time jumps to the next "
                                       "timeout, deterministic and fast; real: wall time.")]


def _clock(kind: str) -> Clock:
    from netsim.clock import RealClock
    from netsim.dataplane.vclock import VirtualClock

    if kind == "virtual":  # jumps to the next deadline: delays of impaired links are exact
        return VirtualClock()
    if kind == "real":
        return RealClock()
    raise typer.BadParameter(f"--clock must be virtual or real, not {kind!r}")


def _lab(topology: Path, clock: str) -> Lab:
    from netsim.lab.attach import uses_attachments
    from netsim.lab.lab import Lab
    from netsim.lab.topology import load_topology

    topo = load_topology(topology)
    if uses_attachments(topo):  # real guests (attach:) run on the real clock
        from netsim.clock import RealClock

        return Lab(topo, clock=RealClock())
    return Lab(topo, clock=_clock(clock))


def draw(
    topology: TopologyArg,
    out: Annotated[Path, typer.Option("-o", "--out", help="Picture to write: .svg, .png, .pdf "
                                      "or .dot (Graphviz source).")],
) -> None:
    """Draw a topology: hosts, switches, port groups with their VLANs, PIFs, VMs, the physical
    network.

    Example: hvsim draw topologies/xen-vlans.yaml -o xen-vlans.svg
    """
    from netsim.lab.draw import render
    from netsim.lab.topology import load_topology

    topo = load_topology(topology)
    render(topo, out)
    console.print(f"wrote {out} ({len(topo.hosts)} hosts, {len(topo.vms)} VMs)")


def ping(
    topology: TopologyArg,
    src: Annotated[str, typer.Argument(help="VM that sends the echo requests.")],
    dst: Annotated[str, typer.Argument(help="VM name or IPv4 address to ping.")],
    count: Annotated[int, typer.Option("-c", "--count", min=1, help="Echo requests.")] = 3,
    wait: WaitOpt = 1.0,
    clock: ClockOpt = "virtual",
) -> None:
    """Ping from one VM of a topology to another (or to an address), through the emulated
    switches and cables. Exit status 1 if no reply came back.

    Example: hvsim ping topologies/xen-router.yaml a1 b1
    """

    async def go() -> int:
        lab = _lab(topology, clock)
        async with lab:
            target = dst
            answered = 0
            for _ in range(count):
                r = await lab.ping(src, target, wait_s=wait)
                if r.replied:
                    answered += 1
                    console.print(f"reply from {r.dst}: icmp_seq={r.seq} ttl={r.ttl} "
                                  f"time={r.rtt_s * 1e3:.3f} ms (lab clock)")
                else:
                    console.print(f"no reply from {r.dst}: icmp_seq={r.seq}")
            console.print(f"{src} -> {dst}: {count} sent, {answered} received, "
                          f"{100 * (count - answered) // count}% loss")
            return answered

    if asyncio.run(go()) == 0:
        raise typer.Exit(1)


#: Above this many VMs, pingall prints answers per pair of networks, not the VM matrix
#: (whose columns no terminal shows and which takes longer to draw than 100 VMs to ping).
MATRIX_MAX_VMS = 40


def _networks_of(lab: Lab) -> dict[str, str]:
    vlan_of: dict[str, str] = {}
    for vm in lab.topo.vms:
        host = lab.topo.host(vm.host)
        vlan_of[vm.name] = ",".join(
            f"{f.network}({host.network(f.network).vlan or 'untagged'})" for f in vm.vifs)
    return vlan_of


def _summary_table(r: Reachability, lab: Lab) -> Table:
    """Answered/tried for every (source network, destination network) pair."""
    vlan_of = _networks_of(lab)
    groups = sorted({vlan_of.get(v, "") for v in r.vms})
    tried: dict[tuple[str, str], int] = {}
    answered: dict[tuple[str, str], int] = {}
    members = {g: [j for j, d in enumerate(r.vms) if vlan_of.get(d, "") == g] for g in groups}
    for s in r.vms:  # a row of answers at a time: 999,000 pairs in a 1,000-VM lab
        gs = vlan_of.get(s, "")
        row = r.answered_row(s)
        for gd, js in members.items():
            n = len(js) - (gs == gd)
            if n:
                key = (gs, gd)
                tried[key] = tried.get(key, 0) + n
                answered[key] = answered.get(key, 0) + sum(row[j] for j in js)
    table = Table(title=f"reachability: {lab.topo.name}", min_width=60,
                  caption=f"{r.answered}/{r.pairs} answered among {len(r.vms)} VMs; a cell is "
                          "answered/tried from the row's VMs to the column's (--matrix: VM by "
                          "VM)")
    table.add_column("from \\ to", style="bold")
    for g in groups:
        table.add_column(g, justify="right")
    for gs in groups:
        cells = []
        for gd in groups:
            n, ok = tried.get((gs, gd), 0), answered.get((gs, gd), 0)
            color = "green" if n and ok == n else ("red" if ok == 0 else "yellow")
            cells.append(f"[{color}]{ok}/{n}[/]" if n else "[dim]-[/]")
        table.add_row(gs, *cells)
    return table


def _matrix_table(r: Reachability, lab: Lab) -> Table:
    vlan_of = _networks_of(lab)
    table = Table(title=f"reachability: {lab.topo.name} ({r.answered}/{r.pairs} answered)",
                  caption="row pings column; ✓ answered, · no answer")
    table.add_column("from \\ to", style="bold")
    table.add_column("network (VLAN)", style="dim")
    for d in r.vms:
        table.add_column(d, justify="center")
    for s in r.vms:
        row = ["[dim]-[/]" if s == d else ("[green]✓[/]" if r.matrix[s][d] else "[red]·[/]")
               for d in r.vms]
        table.add_row(s, vlan_of.get(s, ""), *row)
    return table


def pingall(
    topology: TopologyArg,
    wait: WaitOpt = 1.0,
    clock: ClockOpt = "virtual",
    matrix: Annotated[bool | None, typer.Option(
        "--matrix/--summary", help="VM by VM, or answered/tried per pair of networks "
        f"(default: the matrix up to {MATRIX_MAX_VMS} VMs).")] = None,
) -> None:
    """Every VM with an address pings every other VM: a VLAN-aware reachability matrix (same
    VLAN answers, other VLANs do not, routed networks through their router VM).

    Example: hvsim pingall topologies/xen-vlans.yaml
    """

    async def go() -> None:
        lab = _lab(topology, clock)
        names = [v for v, a in lab.agents.items() if a.guest.addresses()]
        total = len(names) * (len(names) - 1)
        t0 = time.perf_counter()
        with Progress(TextColumn("pinging"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("pings", total=total)
            async with lab:
                done = [0]

                def advance(n: int) -> None:  # the bar moves every 1% (or ping), not per ping
                    done[0] += n
                    if done[0] >= step:
                        bar.advance(task, done[0])
                        done[0] = 0

                step = max(1, total // 100)
                r = await lab.pingall(wait_s=wait, progress=advance)
                bar.advance(task, done[0])
        full = matrix if matrix is not None else len(r.vms) <= MATRIX_MAX_VMS
        console.print(_matrix_table(r, lab) if full else _summary_table(r, lab))
        console.print(f"{r.pairs} pings in {time.perf_counter() - t0:.2f} s wall time")

    asyncio.run(go())


def run(
    topology: TopologyArg,
    out: Annotated[Path, typer.Option("--out", help="Directory for the pcapng files.")],
    duration: Annotated[float, typer.Option("--duration", min=0.0, help="Seconds of lab time "
                                            "to run after the traffic.")] = 1.0,
    capture: Annotated[str, typer.Option("--capture", help="Ports to capture: all, or "
                                         "comma-separated names (vif1.0,xen1/eth0,trunk/"
                                         "xen1.eth0).")] = "all",
    traffic: Annotated[str, typer.Option("--traffic", help="pingall: every VM pings every "
                                         "other; none: just run.")] = "pingall",
    clock: ClockOpt = "virtual",
    capture_drops: Annotated[bool, typer.Option(
        "--capture-drops", help="Also write every dropped frame to OUT/drops.pcapng, "
        "commented with the port and reason (Wireshark's frame.comment).")] = False,
    live: Annotated[bool, typer.Option(
        "--live", help="Keep the lab running in real time and serve it on "
        "http://127.0.0.1:8731 (as `hvsim serve`) until Ctrl-C or --duration.")] = False,
    speed: Annotated[str, typer.Option(
        "--speed", help="With --live: lab seconds per wall second, e.g. 10x.")] = "1x",
    broker: Annotated[str | None, typer.Option(
        "--broker", help="Run each host as its own agent, joined by a distributed switch "
        "through this MQTT broker (mqtt://HOST:PORT); captures go to OUT/<host>.pcapng.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Broker user (with --broker).")
                    ] = None,
    password_file: Annotated[Path | None, typer.Option(
        "--password-file", help="File holding the broker password (with --broker).")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        "--tls-ca", help="CA to check the broker's TLS certificate (with --broker).")] = None,
    fabric: Annotated[str, typer.Option(
        "--fabric", help="Topic prefix hvsim/FABRIC/ on the broker (with --broker).")] = "lab",
    neighbors: Annotated[bool, typer.Option(
        "--neighbors", help="After the run, print each uplink's and physical switch port's "
        "CDP/LLDP neighbour (switch name, port, VLAN, MTU).")] = False,
) -> None:
    """Run a topology, capturing ports to DIR/<port>.pcapng (one file per port, named after
    it, ns timestamps; uplinks show the 802.1Q tags), and print what crossed each port.

    Example: hvsim run topologies/xen-vlans.yaml --out ./run1 --capture eth0,eth0.5,vif1.0

    With --broker the hosts run as separate agents of one distributed switch over MQTT
    (see `hvsim host` to run them on several machines).
    """
    if traffic not in ("pingall", "none"):
        raise typer.BadParameter(f"--traffic must be pingall or none, not {traffic!r}")
    from netsim.cli.commands.check import warn_holes

    if neighbors and (broker is not None or live):
        raise typer.BadParameter("the bus plays the physical network with --broker (no switch "
                                 "to hear); with --live the page shows the neighbours",
                                 param_hint="--neighbors")
    if broker is not None:
        from netsim.cli.commands.distributed import run_with_broker
        from netsim.lab.topology import load_topology

        impaired = load_topology(topology).impairments
        if impaired:  # the bus stands in for the physical network there: nothing to impair
            raise typer.BadParameter(f"{impaired[0].where}: link impairment is not applied with "
                                     "--broker (distributed mode); run without --broker")

        warn_holes(load_topology(topology))
        run_with_broker(topology, broker=broker, out=out, user=user,
                        password_file=password_file, tls_ca=tls_ca, fabric=fabric,
                        duration=duration, ping=traffic == "pingall")
        return

    if live:
        _run_live(topology, out, capture, traffic, speed, duration, capture_drops)
        return

    async def go() -> None:
        from netsim.live.drops import DropCapture

        lab = _lab(topology, clock)
        warn_holes(lab.topo)
        paths = lab.capture(capture, out)
        drops = DropCapture(lab.fabric, out / "drops.pcapng").start() if capture_drops else None
        try:
            await _run_lab(lab, traffic, duration)
        finally:
            if drops is not None:
                drops.close()
        counters = lab.fabric.counters()
        table = Table(title=f"{lab.topo.name}: ports")
        for col in ("port", "rx frames", "tx frames", "drops"):
            table.add_column(col, justify="left" if col in ("port", "drops") else "right")
        for name, c in sorted(counters.items()):
            if c["rx_frames"] or c["tx_frames"] or c["drops"]:
                drops_text = ", ".join(f"{k} {v}" for k, v in c["drops"].items())
                table.add_row(name, str(c["rx_frames"]), str(c["tx_frames"]), drops_text)
        console.print(table)
        from netsim.cli.commands.scenario import print_lags_and_flaps

        fab = lab.fabric
        switches = [*fab.switches.values(), *(s for h in fab.hosts.values()
                                             for s in h.switches.values())]
        print_lags_and_flaps({p: lag.status() for p, lag in fab.lags.items()},
                             {sw.name: {"moves": sw.mac_flaps.total,
                                        "hosts": sw.mac_flaps.as_list()}
                              for sw in switches if sw.mac_flaps.total})
        if neighbors:
            print_neighbours(lab.fabric)
        console.print(f"wrote {len(paths)} capture file(s) in {out}")
        if drops is not None:
            console.print(f"wrote {out / 'drops.pcapng'}: {drops.summary()}")

    import signal

    # SIGTERM ends the run like Ctrl-C: the lab leaves through its cleanup (namespaces, veths)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        asyncio.run(go())
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_neighbours(fab: object) -> None:
    """The CDP/LLDP neighbour table of a fabric (as vSphere's "view settings" of a physical
    adapter and `show cdp neighbors` on the switch)."""
    from netsim.lab.discovery import neighbour_table

    rows = neighbour_table(fab)
    table = Table(title="CDP/LLDP neighbours")
    for col in ("device", "port", "discovery", "proto", "neighbour", "remote port", "vlan",
                "mtu", "mgmt", "platform", "hold"):
        table.add_column(col, justify="right" if col in ("vlan", "mtu", "hold") else "left")
    for r in rows:
        table.add_row(r.device, r.port, r.config, r.protocol or "-", r.system or "-",
                      r.remote_port or "-", "" if r.vlan is None else str(r.vlan),
                      "" if r.mtu is None else str(r.mtu), r.mgmt or "", r.platform,
                      f"{r.hold_s}s" if r.system else "")
    if not rows:
        console.print("CDP/LLDP neighbours: no port speaks CDP or LLDP in this topology")
        return
    console.print(table)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_live(topology: Path, out: Path, capture: str, traffic: str, speed: str,
              duration: float, capture_drops: bool) -> None:
    from netsim.lab.lab import Lab
    from netsim.lab.topology import load_topology
    from netsim.live.serve import make_clock, serve_lab

    lab_clock = make_clock("real" if speed in ("1", "1x") else "virtual", speed)
    topo = load_topology(topology)
    lab = Lab(topo, clock=lab_clock)
    paths = lab.capture(capture, out)
    console.print(f"capturing {len(paths)} port(s) to {out}")
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in topo.name)[:64] or "lab"
    asyncio.run(serve_lab(lab, name=name, traffic=traffic, duration_s=duration or None,
                          drops_to=out / "drops.pcapng" if capture_drops else None,
                          say=console.print))
    lab.fabric.flush_captures()


async def _run_lab(lab: Lab, traffic: str, duration: float) -> None:
    async with lab:
        if lab.attachments is not None and lab.attachments.cleaned:
            console.print(f"removed what an earlier run of {lab.topo.name} left behind: "
                          f"{', '.join(lab.attachments.cleaned)}")
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            if traffic == "pingall":
                t = bar.add_task("traffic (pingall)", total=None)
                r = await lab.pingall()
                bar.update(t, completed=1, total=1)
                console.print(f"pingall: {r.answered}/{r.pairs} answered")
            bar.add_task(f"running {duration:g} s", total=None)
            await lab.run_for(duration)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `hvsim` app."""
    app.command("draw")(draw)
    app.command("run")(run)
    app.command("ping")(ping)
    app.command("pingall")(pingall)
