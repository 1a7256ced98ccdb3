"""The `hvsim` command: the root typer app that mounts every subcommand.

Each part of hvsim registers its own commands (`netsim.commands.*`, `storage.commands.*`); this
module only assembles them, runs benchmarks by name, and turns our typed errors into one clear
line on stderr and exit status 2 instead of a traceback.
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from netsim.errors import NetsimError
from storage.errors import StorageError

COMMAND_MODULES = (
    "netsim.commands.fabric",
    "netsim.commands.topology",
    "netsim.commands.scenario",
    "netsim.commands.distributed",
    "storage.commands.vhd",
    "storage.commands.lvm",
    "storage.commands.ring",
)

app = typer.Typer(
    name="hvsim",
    help=(
        "Emulate a hypervisor's virtual network and storage: vSphere/Xen switches, VLANs, pcaps, "
        "VHD chains, LVM and blkif rings.\n\nExample: hvsim demo --out ./hvsim-out"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

err_console = Console(stderr=True)


@app.callback()
def root() -> None:
    """Emulate a hypervisor's virtual network and storage."""


def available_benchmarks() -> list[str]:
    """Names accepted by `hvsim bench`."""
    import bench

    modules = pkgutil.iter_modules(bench.__path__)
    return sorted(m.name for m in modules if not m.name.startswith("_"))


@app.command("bench")
def bench_cmd(
    name: Annotated[str, typer.Argument(help="Benchmark to run: switch, storage, ring, vds, ...")],
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this JSON file.")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Fewer iterations, for a smoke run.")] = False,
) -> None:
    """Run a benchmark and print its figures with ratios against in-process baselines.

    Example: hvsim bench switch --json switch.json
    """
    names = available_benchmarks()
    if name not in names:
        raise typer.BadParameter(f"no benchmark {name!r}; available: {', '.join(names) or 'none'}")
    module = importlib.import_module(f"bench.{name}")
    result = module.run(quick=quick)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        err_console.print(f"wrote {json_path}")


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console entry point: run the app, printing our errors as one line each."""
    try:
        app()
    except (NetsimError, StorageError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
