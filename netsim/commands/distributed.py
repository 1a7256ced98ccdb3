"""CLI commands of the multi-host part: broker credentials/ACL (and, later, hosts and migration)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from netsim.transport.brokerconf import DEFAULT_CONTROLLER, make_broker_config

console = Console()


def broker_config(
    hosts: Annotated[list[str], typer.Option("--host", help="A host of the fabric (repeat).")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the files into.")],
    fabric: Annotated[
        str, typer.Option("--fabric", help="Fabric name; its topics live under hvsim/FABRIC/.")
    ] = "lab",
    controller: Annotated[
        str, typer.Option("--controller", help="User of the management plane (vCenter role).")
    ] = DEFAULT_CONTROLLER,
) -> None:
    """Generate mosquitto users, password hashes and an ACL so each host may publish only its
    own topics (hvsim/FABRIC/host/NAME/#) and read the rest of its fabric.

    Writes OUT/passwd (mosquitto PBKDF2-SHA512 hashes), OUT/acl, OUT/NAME.password for every user
    (give it to `hvsim host --password-file`; mode 0600) and OUT/mosquitto.conf
    (a config using them: `mosquitto -c OUT/mosquitto.conf`).

    Example: hvsim broker-config --fabric lab --host esx1 --host esx2 --out ./broker
    """
    out.mkdir(parents=True, exist_ok=True)
    cfg = make_broker_config(fabric, hosts, controller=controller, file_dir=str(out.resolve()))
    for name, text in cfg.files.items():
        path = out / name
        secret = name.endswith(".password") or name == "passwd"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if secret:
            path.chmod(0o600)
    console.print(
        f"fabric [bold]{fabric}[/]: users {controller} (management), {', '.join(hosts)}; "
        f"wrote {', '.join(sorted(cfg.files))} to {out}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `hvsim` app."""
    app.command("broker-config")(broker_config)
