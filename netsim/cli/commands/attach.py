"""CLI for labs with real guests: `hvsim exec LAB VM -- CMD` runs a program inside a VM whose
vNICs are attached to a network namespace (`attach: netns`)."""
from __future__ import annotations

import os
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add `exec` to the root `hvsim` app."""

    @app.command("exec", context_settings={"allow_extra_args": True,
                                            "ignore_unknown_options": True})
    def exec_cmd(
        lab: Annotated[str, typer.Argument(help="The running lab (its topology's name).")],
        vm: Annotated[str, typer.Argument(help="A VM of it with attach: netns.")],
        command: Annotated[list[str], typer.Argument(help="The program and its arguments "
                                                     "(after --).")],
    ) -> None:
        """Run a program inside a VM of a running lab (its namespace hv-LAB-VM): the same as
        `ip netns exec hv-LAB-VM CMD`. The exit status is the program's.

        Example: hvsim exec lab1 web -- ping -c 3 10.0.0.2
        """
        from netsim.lab.attach import exec_argv, require_root_linux

        require_root_linux()
        argv = exec_argv(lab, vm, command)
        os.execvp(argv[0], argv)
