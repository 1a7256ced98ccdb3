"""CLI: `hvsim nbd serve DISK` — serve any disk hvsim opens (raw, VHD chain, LV, mem:) over NBD.

`hvsim vdi serve --sr SR UUID --nbd` (in `storage.cli.vhd`) serves an SR's VDI with the same code.
"""
from __future__ import annotations

import asyncio
import ipaddress
import signal
from collections.abc import Callable
from typing import Annotated

import typer

from storage.devices.blockdev import BlockDevice
from storage.diskspec import open_disk
from storage.errors import StorageError
from storage.nbd.server import Export, NbdServer

DEFAULT_BIND = "127.0.0.1:10809"

nbd_app = typer.Typer(help="Serve disks over NBD (Network Block Device).\n\nExample: hvsim nbd "
                           "serve disk.vhd --bind 127.0.0.1:10809")

BindOpt = Annotated[str, typer.Option(
    "--bind", help="HOST:PORT to listen on (port 0 picks a free one), or unix:PATH.")]
ReadOnlyOpt = Annotated[bool, typer.Option("--read-only", help="Refuse writes.")]
NameOpt = Annotated[str, typer.Option(
    "--name", help="Export name (clients asking for the empty name get this export too).")]
RemoteOpt = Annotated[bool, typer.Option(
    "--allow-remote", help="Listen on a non-loopback address. NBD has no authentication: "
                           "anyone who reaches the port can read and write the disk.")]


def parse_bind(bind: str, *, allow_remote: bool) -> tuple[str, int] | str:
    """'127.0.0.1:10809' → (host, port); 'unix:/path' → '/path'. Non-loopback hosts need
    `allow_remote`, since NBD carries no credentials."""
    if bind.startswith("unix:"):
        if not bind[5:]:
            raise StorageError("--bind unix: needs a path")
        return bind[5:]
    host, sep, port_text = bind.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise StorageError(f"--bind {bind!r}: expected HOST:PORT (e.g. {DEFAULT_BIND}) or "
                           f"unix:PATH")
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        loopback = True
    else:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError as exc:
            raise StorageError(f"--bind {bind!r}: {host!r} is not an IP address") from exc
    if not loopback and not allow_remote:
        raise StorageError(f"--bind {bind}: refusing a non-loopback address: NBD has no "
                           f"authentication, so anyone who reaches it could read and write the "
                           f"disk; pass --allow-remote to serve it anyway")
    return host, int(port_text)


def _uri(where: tuple[str, int] | str, name: str) -> str:
    if isinstance(where, str):
        return f"nbd+unix:///{name}?socket={where}"
    host, port = where
    host = f"[{host}]" if ":" in host else host
    return f"nbd://{host}:{port}/{name}"


def serve_device(dev: BlockDevice, *, label: str, bind: str, name: str, read_only: bool,
                 allow_remote: bool, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve `dev` until SIGINT/SIGTERM; prints the URI clients use once listening."""
    where = parse_bind(bind, allow_remote=allow_remote)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        export = Export(name, dev, description=label, read_only=read_only)
        async with NbdServer([export]) as srv:
            if isinstance(where, str):
                bound: tuple[str, int] | str = await srv.listen_unix(where)
            else:
                bound = await srv.listen_tcp(*where)
            ro = ", read-only" if export.read_only else ""
            uri = _uri(bound, name)
            print(f"serving {label} ({dev.size} bytes{ro}) at {uri}", flush=True)
            if on_ready is not None:
                on_ready(uri)
            await stop.wait()

    asyncio.run(main())


@nbd_app.command("serve")
def nbd_serve(
    disk: Annotated[str, typer.Argument(
        help="The disk: a raw file, a .vhd (with its chain), lvm:VG/LV:PV[,PV...], or "
             "mem:SIZE.")],
    bind: BindOpt = DEFAULT_BIND,
    read_only: ReadOnlyOpt = False,
    name: NameOpt = "",
    allow_remote: RemoteOpt = False,
) -> None:
    """Serve a disk over NBD until interrupted; writes go into the disk as every hvsim write
    does (a VHD chain copies on write into its leaf).

    Example: hvsim nbd serve disk.vhd --bind 127.0.0.1:10809 --read-only
    """
    parse_bind(bind, allow_remote=allow_remote)      # refuse before opening anything
    try:
        dev = open_disk(disk, read_only=read_only)
    except OSError as exc:
        raise StorageError(f"{disk}: {exc.strerror or exc}") from exc
    try:
        serve_device(dev, label=disk, bind=bind, name=name, read_only=read_only,
                     allow_remote=allow_remote)
    finally:
        dev.close()


def register(app: typer.Typer) -> None:
    """Add the `nbd` command group to the root `hvsim` app."""
    app.add_typer(nbd_app, name="nbd")
