"""Adapters: the `hvsim` command line (typer root in `app`, subcommands in `commands/`)."""
from __future__ import annotations

from typing import Any


def main() -> None:
    """Console entry point (see `netsim.cli.app.main`). The data-moving storage commands run
    without loading the typer app when invoked plainly (`storage.cli.fast`: start-up was half
    the time of a 1 GiB `hvsim vhd export`)."""
    import sys

    from storage.cli import fast

    status = fast.run(sys.argv[1:])
    if status is not None:
        sys.exit(status)
    from netsim.cli.app import main as _main

    _main()


def __getattr__(name: str) -> Any:
    if name == "app":
        from netsim.cli import app as _app_module

        return _app_module.load_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
