"""The `hvsim` command: the root typer app that mounts every subcommand.

Each part of hvsim registers its own commands (`netsim.cli.commands.*`, `storage.cli.*`); this
module only assembles them, runs benchmarks by name, and turns our typed errors into one clear
line on stderr and exit status 2 instead of a traceback.
"""
from __future__ import annotations

import contextlib
import importlib
import sys

import typer
from rich.console import Console
from rich.markup import escape

from netsim.errors import NetsimError
from storage.errors import StorageError

#: Which module registers each top-level command. `hvsim CMD` imports only CMD's module (start-up
#: time is most of a short command's run); `hvsim --help` imports them all. A test checks this
#: map against what the modules really register.
COMMAND_OWNERS: dict[str, str] = {
    "demo": "netsim.cli.commands.fabric",
    "check": "netsim.cli.commands.check",
    "health-check": "netsim.cli.commands.check",
    "draw": "netsim.cli.commands.topology",
    "run": "netsim.cli.commands.topology",
    "ping": "netsim.cli.commands.topology",
    "pingall": "netsim.cli.commands.topology",
    "replay": "netsim.cli.commands.scenario",
    "trace": "netsim.cli.commands.live",
    "serve": "netsim.cli.commands.live",
    "capture": "netsim.cli.commands.live",
    "extcap": "netsim.cli.commands.live",
    "broker-config": "netsim.cli.commands.distributed",
    "host": "netsim.cli.commands.distributed",
    "vds-push": "netsim.cli.commands.distributed",
    "migrate": "netsim.cli.commands.distributed",
    "hosts": "netsim.cli.commands.distributed",
    "multihost": "netsim.cli.commands.distributed",
    "exec": "netsim.cli.commands.attach",
    "ipfix": "netsim.cli.commands.ipfix",
    "vhd": "storage.cli.vhd",
    "sr": "storage.cli.sr",
    "vdi": "storage.cli.vdi",
    "lvm": "storage.cli.lvm",
    "ring": "storage.cli.ring",
    "guest": "storage.cli.ring",
    "nbd": "storage.cli.nbd",
    # benchmarks register themselves: netsim and storage never import bench
    "bench": "bench._cli",
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


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version
        try:
            v = version("hvsim")
        except PackageNotFoundError:  # run from a source tree that was never installed
            v = "unknown (not installed)"
        print(f"hvsim {v} (Python {sys.version.split()[0]})")
        raise typer.Exit()


@_root.callback()
def root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                 help="Print hvsim's version and exit."),
) -> None:
    """Emulate a hypervisor's virtual network and storage."""


_loaded: set[str] = set()


def load_commands(modules: tuple[str, ...] = COMMAND_MODULES) -> typer.Typer:
    """The root app with the commands of `modules` registered (each module once)."""
    for name in modules:
        if name not in _loaded:
            importlib.import_module(name).register(_root)
            _loaded.add(name)
    return _root


def __getattr__(name: str) -> typer.Typer:
    # `from netsim.cli.app import app` gives the app with every command.
    if name == "app":
        return load_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console entry point: run the app, printing our errors as one line each."""
    first = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if first is None and "--version" in sys.argv[1:]:  # no need to import every command
        with contextlib.suppress(typer.Exit):
            _version(True)
        return
    owner = COMMAND_OWNERS.get(first or "")
    application = load_commands((owner,) if owner else COMMAND_MODULES)
    try:
        application()
    except (NetsimError, StorageError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
