"""CLI: `hvsim check` — find the VLAN holes of a topology (double tagging), before running it.

`warn_holes` gives `hvsim run` and `hvsim replay` the same findings as warnings on stderr.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from netsim.lab.topology import Topology

console = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def check(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file (see topologies/).")],
) -> None:
    """Report every path by which a frame from one VLAN can be delivered into another through
    double tagging: a sender whose frame carries a second tag under the one that classifies it
    (a guest sending a priority tag, a VGT guest, a station) and a port that sends its VLAN
    untagged (a native-untagged VLAN, VLAN 0 of a plain trunk) into a port that classifies by
    tag. Names the ports and VLANs.

    Exit status 1 if there is any such path, 0 if none, 2 on a bad topology.

    Example: hvsim check topologies/three-hosts.yaml
    """
    from netsim.lab.check import check_topology
    from netsim.lab.topology import load_topology

    topo = load_topology(topology)
    report = check_topology(topo)
    for line in report.lines():
        console.print(line, markup=False)
    if not report.clean:
        raise typer.Exit(1)


def warn_holes(topo: Topology) -> None:
    """Print `hvsim check`'s findings for `topo` as warnings on stderr (nothing if clean)."""
    from netsim.lab.check import check_topology

    report = check_topology(topo)
    if report.clean:
        return
    for line in report.lines():
        err_console.print(f"warning: {line}", markup=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `hvsim` app."""
    app.command("check")(check)
