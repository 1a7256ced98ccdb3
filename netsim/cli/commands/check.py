"""CLI: `hvsim check` — find the VLAN holes of a topology (double tagging), before running it;
`hvsim health-check` — the vDS health check (VLAN, MTU, teaming) on the running topology.

`warn_holes` gives `hvsim run` and `hvsim replay` the same findings as warnings on stderr.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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


def health_check(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file (see topologies/).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """The vSphere distributed switch health check, run on the topology: every ESXi uplink
    sends probe frames in each VLAN of its switch's port groups, small and then padded to the
    switch's MTU; the table lists, per host and uplink, the VLANs its physical port does not
    trunk and the VLANs where the MTU does not match. The teaming check warns of IP hash teams
    whose physical ports are not one port-channel (and port-channels under other policies).

    Exit status 1 if anything was found, 0 if all is well, 2 on a bad topology.

    Example: hvsim health-check topologies/three-hosts.yaml --json
    """
    import asyncio
    import json

    from netsim.errors import TopologyError
    from netsim.lab.healthcheck import esxi_switches
    from netsim.lab.healthcheck import health_check as run_check
    from netsim.lab.lab import Lab
    from netsim.lab.topology import load_topology

    topo = load_topology(topology)

    async def run() -> Any:
        async with Lab(topo) as lab:
            switches = esxi_switches(topo, lab.fabric)
            if not switches:
                raise TopologyError(f"{topo.source}: no ESXi switch with uplinks to check "
                                    "(the health check is a vSphere feature)")
            await lab.run_for(3.0)  # links, LAGs (LACP) and beacons settle first
            return await run_check(switches, lambda: lab.run_for(1.0))

    report = asyncio.run(run())
    if json_out:
        console.print_json(json.dumps(report.as_dict()))
    else:
        header = ("HOST", "SWITCH", "UPLINK", "PHYSICAL PORT", "VLANS NOT TRUNKED", "MTU",
                  "MTU MISMATCH", "STATUS")
        rows = [header, *report.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        for r in rows:  # plain aligned columns: greps and diffs well
            console.print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False))
                          + "  " + r[-1], markup=False)
        for t in report.teaming:
            console.print(f"warning: teaming: {t.host}/{t.switch} ({t.policy} over "
                          f"{', '.join(t.uplinks)}): {t.message}", markup=False)
        if not report.teaming:
            console.print("teaming: ok", markup=False)
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `hvsim` app."""
    app.command("check")(check)
    app.command("health-check")(health_check)
