"""CLI commands of the network core: `hvsim demo`."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `hvsim` app."""

    @app.command("demo")
    def demo(
        out: Annotated[Path, typer.Option(
            "--out", help="Directory for the pcapng files (one per port).")] = Path(
                "hvsim-out/demo"),
        capture_drops: Annotated[bool, typer.Option(
            "--capture-drops", help="Also write every dropped frame to OUT/drops.pcapng, "
            "commented with the port and reason (Wireshark's frame.comment).")] = False,
    ) -> None:
        """Run the XenServer VLAN example: VMs on VLANs 5, 65, 400 and an untagged network
        behind trunk uplink eth0; print who reached whom and what was dropped and why; write
        one pcapng per port (the uplink's shows the 802.1Q tags).

        Example: hvsim demo --out ./hvsim-out/demo
        """
        from netsim.lab import demo as demo_mod
        from netsim.live.drops import DropCapture

        drops: list[DropCapture] = []

        def attach(fab: object) -> DropCapture | None:
            if not capture_drops:
                return None
            drops.append(DropCapture(fab, out / "drops.pcapng").start())
            return drops[-1]

        console = Console()
        with Progress(TextColumn("sending traffic"), BarColumn(), MofNCompleteColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("demo", total=None)
            result = asyncio.run(demo_mod.run(
                out, progress=lambda done, total: bar.update(task, completed=done, total=total),
                attach=attach))
        demo_mod.render(result, console)
        for d in drops:
            console.print(f"wrote {out / 'drops.pcapng'}: {d.summary()}")
        bad = [s.label for s in result.steps if not s.ok()]
        if bad:
            console.print(f"[bold red]{len(bad)} step(s) did not go as expected[/]")
            raise typer.Exit(1)
