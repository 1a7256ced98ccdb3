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


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `hvsim` app."""
    app.command("trace")(trace)
