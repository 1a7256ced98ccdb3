"""CLI commands to watch a lab: trace (why did a frame (not) arrive), serve (keep a lab running
behind the HTTP API and page), capture (a live pcapng stream from a served lab), extcap (the
Wireshark extcap adapter)."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()

TopologyArg = Annotated[Path, typer.Argument(help="Topology YAML file (see topologies/).")]


def trace(
    topology: TopologyArg,
    source: Annotated[str, typer.Option("--from", help="Where the frame enters: a VM, its "
                                        "port (vif1.0, vm1.eth0), a PIF or a physical port.")],
    frame: Annotated[str | None, typer.Option(
        "--frame", help="The frame: a frame spec like '{eth: {dst: 00:16:3e:00:41:03}, vlan: "
        "65}' (eth.src defaults to the VM's MAC) or hex bytes.")] = None,
    pcap: Annotated[Path | None, typer.Option("--pcap", help="Take the frame from this "
                                              "pcap/pcapng file instead.")] = None,
    record: Annotated[int, typer.Option("--record", min=1, help="With --pcap: which record "
                                        "(1 = first).")] = 1,
    learn: Annotated[str, typer.Option("--learn", help="pingall: let every VM ping every "
                                       "other first, so MAC tables are filled as in a lab that "
                                       "has run; none: empty tables (everything floods).")
                     ] = "pingall",
    as_json: Annotated[bool, typer.Option("--json", help="Print the trace as JSON.")] = False,
) -> None:
    """Trace one frame hop by hop, like `ovs-appctl ofproto/trace`: VLAN classification,
    security checks, MAC lookup, output ports with tag/untag, and every drop with the setting
    that caused it. The lab itself is not changed: the trace runs on a copy of its data plane.

    Example: hvsim trace topologies/xen-vlans.yaml --from vif1.0 --frame '{eth: {dst:
    00:16:3e:00:41:03}, vlan: 65}'
    """
    from netsim.errors import TopologyError
    from netsim.lab.lab import Lab
    from netsim.lab.topology import load_topology

    if learn not in ("pingall", "none"):
        raise typer.BadParameter(f"--learn must be pingall or none, not {learn!r}")
    if (frame is None) == (pcap is None):
        raise TopologyError("trace: give the frame with --frame or --pcap (one of them)")
    value: bytes | str
    if pcap is not None:
        value = _pcap_record(pcap, record)
    else:
        assert frame is not None
        value = frame

    async def go() -> None:
        lab = Lab(load_topology(topology))
        async with lab:
            if learn == "pingall":
                await lab.pingall()
            t = lab.trace(source, value)
        if as_json:
            sys.stdout.write(json.dumps(t.as_dict(), indent=2) + "\n")
        else:
            sys.stdout.write(t.render() + "\n")

    asyncio.run(go())


def _pcap_record(path: Path, n: int) -> bytes:
    from netsim.errors import CaptureError
    from netsim.wire.pcapread import read_capture

    for i, (_ts, f, _iface) in enumerate(read_capture(path), 1):
        if i == n:
            return f
    raise CaptureError(f"{path}: has fewer than {n} record(s)")


BindOpt = Annotated[str, typer.Option("--bind", help="Address to listen on. Anything but "
                                      "loopback needs a token (one is made and printed).")]
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any "
                                      "free one).")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Access token to require "
                                              "(default: none on loopback, a new one "
                                              "elsewhere).", envvar="HVSIM_TOKEN")]
LiveClockOpt = Annotated[str, typer.Option("--clock", help="real: wall time; virtual: lab "
                                           "time at --speed.")]
SpeedOpt = Annotated[str, typer.Option("--speed", help="With --clock virtual: lab seconds "
                                       "per wall second, e.g. 10x.")]


def serve(
    topology: TopologyArg,
    bind: BindOpt = "127.0.0.1",
    port: PortOpt = 8731,
    token: TokenOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Lab name in `hvsim capture` "
                                             "and Wireshark (default: the topology's).")
                    ] = None,
    clock: LiveClockOpt = "real",
    speed: SpeedOpt = "1x",
    traffic: Annotated[str, typer.Option("--traffic", help="pingall: every VM pings every "
                                         "other, again every --interval; none: just run.")
                       ] = "pingall",
    interval: Annotated[float, typer.Option("--interval", min=0.01, help="Seconds (lab time) "
                                            "between pingall rounds.")] = 1.0,
    duration: Annotated[float | None, typer.Option("--duration", min=0.0, help="Stop after "
                                                   "this many lab seconds (default: run "
                                                   "until Ctrl-C).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Directory for drops.pcapng "
                                             "(with --capture-drops).")] = None,
    capture_drops: Annotated[bool, typer.Option(
        "--capture-drops", help="Write every dropped frame to OUT/drops.pcapng, commented "
        "with the port and reason.")] = False,
) -> None:
    """Keep a lab running and serve it: the live page and REST API on http://127.0.0.1:8731,
    live captures for `hvsim capture` and Wireshark (`hvsim extcap --install`).

    Example: hvsim serve topologies/xen-vlans.yaml --clock virtual --speed 10x
    """
    from netsim.lab.lab import Lab
    from netsim.lab.topology import load_topology
    from netsim.live.serve import make_clock, serve_lab

    lab_clock = make_clock(clock, speed)
    topo = load_topology(topology)
    drops_to = None
    if capture_drops:
        d = out if out is not None else Path("hvsim-out")
        d.mkdir(parents=True, exist_ok=True)
        drops_to = d / "drops.pcapng"
    lab = Lab(topo, clock=lab_clock)
    asyncio.run(serve_lab(lab, name=name or _lab_name(topo.name), bind=bind, port=port,
                          token=token, traffic=traffic, interval_s=interval,
                          duration_s=duration, drops_to=drops_to))


def _lab_name(text: str) -> str:
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]", "-", text).strip("-.") or "lab"
    return name[:64]


def capture(
    ports: Annotated[str, typer.Argument(help="Port(s) of the running lab, comma-separated "
                                         "(vif1.0,xen1/eth0), or LAB/PORT.")],
    write: Annotated[str, typer.Option("-w", "--write", help="File to write; - for stdout "
                                       "(pipe it into `wireshark -k -i -` or `tshark -i -`).")],
    lab: Annotated[str | None, typer.Option("--lab", help="Which running lab (default: the "
                                            "only one).")] = None,
    flt: Annotated[str, typer.Option("--filter", "-f", help="hvsim filter, e.g. 'vlan 65 and "
                                     "icmp'.")] = "",
    duration: Annotated[float | None, typer.Option("--duration", "-a", min=0.0, help="Stop "
                                                   "after this many seconds.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Frames the lab keeps "
                                              "for this reader before counting drops.")
                     ] = None,
) -> None:
    """Stream a live pcapng from a running lab (`hvsim serve`): one interface per port; what a
    slow reader missed is counted in the stream (isb_ifdrop).

    Example: hvsim capture vif1.0,xen1/eth0 -w - | tshark -i -
    """
    from netsim.live.client import resolve, stream_capture
    from netsim.wire.filters import compile_filter

    compile_filter(flt)
    entry, names = resolve(ports, lab)
    if write == "-":
        sink = sys.stdout.buffer
    else:
        try:
            sink = open(write, "wb")
        except OSError as exc:
            from netsim.errors import CaptureError

            raise CaptureError(f"cannot write {write}: {exc.strerror}") from exc

    def emit(chunk: bytes) -> None:
        sink.write(chunk)
        sink.flush()

    try:
        asyncio.run(stream_capture(entry, names, emit, flt=flt, duration_s=duration,
                                   limit=limit))
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        if sink is not sys.stdout.buffer:
            sink.close()


def extcap(
    install: Annotated[bool, typer.Option("--install", help="Put the hvsim launcher into "
                                          "Wireshark's personal extcap folder.")] = False,
    directory: Annotated[Path | None, typer.Option("--dir", help="Install here instead.")
                         ] = None,
) -> None:
    """Wireshark integration: with --install, `tshark -D` and Wireshark's capture dialog list
    every port of every running lab (`hvsim: LAB/PORT`) and capture it live.

    Example: hvsim extcap --install && tshark -D
    """
    from netsim.live import extcap as ext

    if not install:
        raise typer.BadParameter("say --install (Wireshark runs the extcap protocol itself)")
    path = ext.install(directory)
    console.print(f"installed {path}; `tshark -D` lists the ports of running labs")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `hvsim` app."""
    app.command("trace")(trace)
    app.command("serve")(serve)
    app.command("capture")(capture)
    app.command("extcap")(extcap)
