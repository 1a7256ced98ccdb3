"""CLI commands on topology files: draw (and, with the live fabric, run / ping / pingall)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()

TopologyArg = Annotated[Path, typer.Argument(help="Topology YAML file (see topologies/).")]


def draw(
    topology: TopologyArg,
    out: Annotated[Path, typer.Option("-o", "--out", help="Picture to write: .svg, .png, .pdf "
                                      "or .dot (Graphviz source).")],
) -> None:
    """Draw a topology: hosts, switches, port groups with their VLANs, PIFs, VMs, the physical
    network.

    Example: hvsim draw topologies/xen-vlans.yaml -o xen-vlans.svg
    """
    from netsim.draw import render
    from netsim.topology import load_topology

    topo = load_topology(topology)
    render(topo, out)
    console.print(f"wrote {out} ({len(topo.hosts)} hosts, {len(topo.vms)} VMs)")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `hvsim` app."""
    app.command("draw")(draw)
