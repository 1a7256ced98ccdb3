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

#: Which module registers each top-level command. `hvsim CMD` imports only CMD's module (start-up
#: time is most of a short command's run); `hvsim --help` imports them all. A test checks this
#: map against what the modules really register.
COMMAND_OWNERS: dict[str, str] = {
    "demo": "netsim.commands.fabric",
    "draw": "netsim.commands.topology",
    "run": "netsim.commands.topology",
    "ping": "netsim.commands.topology",
    "pingall": "netsim.commands.topology",
    "replay": "netsim.commands.scenario",
    "broker-config": "netsim.commands.distributed",
    "host": "netsim.commands.distributed",
    "vds-push": "netsim.commands.distributed",
    "migrate": "netsim.commands.distributed",
    "hosts": "netsim.commands.distributed",
    "multihost": "netsim.commands.distributed",
    "vhd": "storage.commands.vhd",
    "sr": "storage.commands.vhd",
    "vdi": "storage.commands.vhd",
    "lvm": "storage.commands.lvm",
    "ring": "storage.commands.ring",
    "guest": "storage.commands.ring",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMAND_OWNERS.values()))

_root = typer.Typer(
    name="hvsim",
    help=(
        "Emulate a hypervisor's virtual network and storage: vSphere/Xen switches, VLANs, pcaps, "
        "VHD chains, LVM and blkif rings.\n\nExample: hvsim demo --out ./hvsim-out"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# soft_wrap: an error stays on one line when stderr is not a terminal (logs, CI, pipes)
err_console = Console(stderr=True, soft_wrap=True)


@_root.callback()
def root() -> None:
    """Emulate a hypervisor's virtual network and storage."""


def available_benchmarks() -> list[str]:
    """Names accepted by `hvsim bench`."""
    import bench

    modules = pkgutil.iter_modules(bench.__path__)
    return sorted(m.name for m in modules if not m.name.startswith("_"))


@_root.command("bench")
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


_loaded: set[str] = set()


def load_commands(modules: tuple[str, ...] = COMMAND_MODULES) -> typer.Typer:
    """The root app with the commands of `modules` registered (each module once)."""
    for name in modules:
        if name not in _loaded:
            importlib.import_module(name).register(_root)
            _loaded.add(name)
    return _root


def __getattr__(name: str) -> typer.Typer:
    # `from netsim.cli import app` gives the app with every command.
    if name == "app":
        return load_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console entry point: run the app, printing our errors as one line each."""
    first = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    owner = COMMAND_OWNERS.get(first or "")
    application = load_commands((owner,) if owner else COMMAND_MODULES)
    try:
        application()
    except (NetsimError, StorageError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
