"""CLI commands of the multi-host part: hosts over a broker, vDS config, migration, broker ACL."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from netsim.vds.transport.brokerconf import DEFAULT_CONTROLLER, make_broker_config

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
        # clear passwords: owner only; hashes and ACL: the broker's group may read them
        mode = 0o600 if name.endswith(".password") else 0o640 if name in ("passwd", "acl") \
            else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        path.chmod(mode)
    console.print(
        f"fabric [bold]{fabric}[/]: users {controller} (management), {', '.join(hosts)}; "
        f"wrote {', '.join(sorted(cfg.files))} to {out}"
    )


TopologyArg = Annotated[Path, typer.Argument(help="Topology YAML file (see topologies/).")]
BrokerOpt = Annotated[
    str, typer.Option("--broker", help="Broker URL: mqtt://HOST:PORT or mqtts://HOST:PORT.")
]
UserOpt = Annotated[str | None, typer.Option("--user", help="Broker user name.")]
PasswordOpt = Annotated[
    Path | None,
    typer.Option("--password-file", help="File whose first line is the broker password."),
]
TlsOpt = Annotated[
    Path | None, typer.Option("--tls-ca", help="CA certificate to check the broker's TLS with.")
]
FabricOpt = Annotated[
    str, typer.Option("--fabric", help="Fabric name: topics live under hvsim/FABRIC/.")
]
SwitchOpt = Annotated[
    str | None,
    typer.Option("--switch", help="The hosts' switch the vDS replaces (default: the VMs' one)."),
]


def _lab(broker: str | None, user: str | None, password_file: Path | None, tls_ca: Path | None,
         fabric: str, switch: str | None, keepalive: int | None = None) -> object:
    from dataclasses import replace

    from netsim.vds.multihost import Lab
    from netsim.vds.transport.mqtt import parse_broker_url

    settings = None
    if broker is not None:
        settings = parse_broker_url(broker, username=user, password_file=password_file,
                                    tls_ca=tls_ca)
        if keepalive is not None:
            settings = replace(settings, keepalive=keepalive)
    return Lab(settings, fabric=fabric, switch=switch)


def host(
    topology: TopologyArg,
    broker: BrokerOpt,
    name: Annotated[str | None, typer.Option(
        "--name", help="Which host of the topology to run; several run in this process: "
        "esx[1-125] or esx1,esx3.")] = None,
    names_from: Annotated[Path | None, typer.Option(
        "--names-from", help="A file of host names to run in this process, one a line "
        "(# comments).")] = None,
    user: UserOpt = None,
    password_file: PasswordOpt = None,
    tls_ca: TlsOpt = None,
    fabric: FabricOpt = "lab",
    switch: SwitchOpt = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Leave after this many seconds.")
    ] = None,
    keepalive: Annotated[
        int, typer.Option("--keepalive", min=1, max=3600,
                          help="MQTT keep-alive in seconds: a host that goes silent (hung, "
                          "cut off) is marked down after about 1.5-2× this.")
    ] = 5,
    config_wait: Annotated[
        float, typer.Option("--config-wait", min=0, help="Give up (exit 2) when no vDS "
                            "configuration arrived within this many seconds (0: wait until "
                            "stopped, saying so every 30 s).")
    ] = 0.0,
) -> None:
    """Run one host of a topology as its own process: its VMs (with guest stacks that answer
    ping) on a distributed-switch proxy, joined to the other hosts through an MQTT broker.

    The host waits for the vDS configuration (`hvsim vds-push`), then plugs its VMs in. Its
    presence is the MQTT last will: if the process dies, the others see it go down.

    Example: hvsim host --name esx1 --broker mqtt://10.0.0.9:1883 --user esx1
    --password-file broker/esx1.password topologies/three-hosts.yaml
    """
    from netsim.vds.multihost import expand_host_names, run_host, run_hosts

    if (name is None) == (names_from is None):
        raise typer.BadParameter("give --name or --names-from (one of them)")
    if names_from is not None:
        try:
            lines = names_from.read_text().splitlines()
        except OSError as exc:
            raise typer.BadParameter(f"--names-from {names_from}: {exc.strerror}") from None
        names = [n for line in lines if (n := line.split("#", 1)[0].strip())]
        if not names:
            raise typer.BadParameter(f"--names-from {names_from}: no host names in it")
        name = ",".join(names)
    assert name is not None
    names = expand_host_names(name)
    if len(names) == 1:
        lab = _lab(broker, user or names[0], password_file, tls_ca, fabric, switch, keepalive)
        asyncio.run(run_host(topology, names[0], lab, duration=duration,  # type: ignore[arg-type]
                             config_wait_s=config_wait or None))
        return
    lab = _lab(broker, user, password_file, tls_ca, fabric, switch, keepalive)
    asyncio.run(run_hosts(topology, names, lab, duration=duration,  # type: ignore[arg-type]
                          config_wait_s=config_wait or None))


def vds_push(
    topology: TopologyArg,
    broker: BrokerOpt,
    user: UserOpt = None,
    password_file: PasswordOpt = None,
    tls_ca: TlsOpt = None,
    fabric: FabricOpt = "lab",
    switch: SwitchOpt = None,
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for every host to apply it (0: no).")
    ] = 10.0,
) -> None:
    """Publish the topology's distributed switch configuration (the vCenter role): a new
    version when it changed, retained, so hosts that start later get it too. Hosts apply it
    live and report the version they run.

    Example: hvsim vds-push --broker mqtt://10.0.0.9:1883 --user vcenter
    --password-file broker/vcenter.password topologies/three-hosts.yaml
    """
    from netsim.vds.multihost import push_config

    lab = _lab(broker, user, password_file, tls_ca, fabric, switch)
    asyncio.run(push_config(topology, lab, wait_s=wait or None))  # type: ignore[arg-type]


def migrate(
    vm: Annotated[str, typer.Argument(help="The VM to move.")],
    to: Annotated[str, typer.Option("--to", help="The host to move it to.")],
    broker: BrokerOpt,
    user: UserOpt = None,
    password_file: PasswordOpt = None,
    tls_ca: TlsOpt = None,
    fabric: FabricOpt = "lab",
) -> None:
    """Live-migrate a running VM to another host (vMotion / XenMotion): same MACs, the
    destination sends a RARP so every switch relearns; frames in flight are counted.

    Example: hvsim migrate app2 --to esx3 --broker mqtt://10.0.0.9:1883 --user vcenter
    --password-file broker/vcenter.password
    """
    from netsim.vds.multihost import migrate_vm

    lab = _lab(broker, user, password_file, tls_ca, fabric, None)
    asyncio.run(migrate_vm(vm, to, lab))  # type: ignore[arg-type]


def hosts(
    broker: BrokerOpt,
    user: UserOpt = None,
    password_file: PasswordOpt = None,
    tls_ca: TlsOpt = None,
    fabric: FabricOpt = "lab",
    every_row: Annotated[bool | None, typer.Option(
        "--all/--summary", help="A row per host, or counts (default: rows up to 20 hosts).")
    ] = None,
) -> None:
    """Show every host of a running fabric: presence (last will), vDS versions it runs, VLANs
    with ports, VMs; summarised above 20 hosts.

    Example: hvsim hosts --broker mqtt://10.0.0.9:1883 --user vcenter
    --password-file broker/vcenter.password
    """
    from netsim.vds.multihost import host_table

    lab = _lab(broker, user, password_file, tls_ca, fabric, None)
    console.print(asyncio.run(host_table(lab, every_row=every_row)))  # type: ignore[arg-type]


def multihost(
    topology: TopologyArg,
    broker: Annotated[
        str | None,
        typer.Option("--broker", help="Broker URL; without it the hosts share an in-process bus."),
    ] = None,
    user: UserOpt = None,
    password_file: PasswordOpt = None,
    tls_ca: TlsOpt = None,
    fabric: FabricOpt = "lab",
    switch: SwitchOpt = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write pings and counters here.")
    ] = None,
) -> None:
    """Run every host of a topology as a separate host agent in this process, joined by a
    distributed switch over the broker (what `hvsim run --broker` does), and ping every VM
    pair across hosts.

    Example: hvsim multihost topologies/three-hosts.yaml --broker mqtt://127.0.0.1:1883
    """
    from netsim.lab.topology import load_topology
    from netsim.vds.multihost import ping_table, run_local

    lab = _lab(broker, user, password_file, tls_ca, fabric, switch)
    result = asyncio.run(run_local(load_topology(topology), lab))  # type: ignore[arg-type]
    console.print(ping_table(result["pings"]))
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def run_with_broker(
    topology: Path,
    *,
    broker: str,
    out: Path | None = None,
    user: str | None = None,
    password_file: Path | None = None,
    tls_ca: Path | None = None,
    fabric: str = "lab",
    duration: float = 0.0,
    ping: bool = True,
) -> dict:
    """`hvsim run TOPOLOGY --broker URL`: every host as its own agent in this process, joined
    by a distributed switch through the broker; captures per host in OUT; ping matrix."""
    from netsim.lab.topology import load_topology
    from netsim.vds.multihost import ping_table, run_local

    lab = _lab(broker, user, password_file, tls_ca, fabric, None)
    result = asyncio.run(run_local(load_topology(topology), lab,  # type: ignore[arg-type]
                                   ping=ping, capture_dir=out, duration=duration))
    if ping:
        console.print(ping_table(result["pings"]))
        answered = sum(1 for p in result["pings"] if p["replied"])
        routed = [p for p in result["pings"] if not p["no_route"]]
        console.print(f"pingall across hosts: {answered}/{len(routed)} answered "
                      f"({len(result['pings']) - len(routed)} pairs have no route)")
    if out is not None:
        console.print(f"wrote {len(result['captures'])} capture file(s) in {out}")
    return result


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `hvsim` app."""
    app.command("broker-config")(broker_config)
    app.command("host")(host)
    app.command("vds-push")(vds_push)
    app.command("migrate")(migrate)
    app.command("hosts")(hosts)
    app.command("multihost")(multihost)
