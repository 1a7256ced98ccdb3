"""`hvsim ring ...` (inspect the blkif ring, serve a disk to guests, demo) and `hvsim guest ...`
(a guest's frontend in its own process, talking to a host started with `hvsim ring serve`).

Shapes:
    hvsim ring layout                                   wire layouts and slots per ring size
    hvsim ring serve DISK [--socket S] [--read-only]    host: serve DISK to guest domain 1 as xvda
    hvsim ring demo [--disk FILE] [--cross-process]     write, read back, verify; show counters
    hvsim guest info|read|write|flush|discard --socket S ...   one guest operation through the ring
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from storage import diskspec
from storage.cli.files import is_std, open_input, open_output
from storage.devices.blockdev import BlockDevice
from storage.errors import StorageError
from storage.rings import blkif

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DEFAULT_SOCKET = os.environ.get("HVSIM_HOST_SOCKET", "hvsim-host.sock")

ring_app = typer.Typer(
    help="Xen blkif split-driver rings: show the layout, serve a disk to guest processes, "
         "run a demo.\n\nExample: hvsim ring serve disk.raw --socket /tmp/host.sock",
    no_args_is_help=True)
guest_app = typer.Typer(
    help="Be a guest: connect to a host (`hvsim ring serve`) and do one block operation through "
         "blkfront.\n\nExample: hvsim guest write --socket /tmp/host.sock 4096 --data hello",
    no_args_is_help=True)

SocketOpt = Annotated[Path, typer.Option("--socket", "-s",
                                         help="The host's unix socket (env HVSIM_HOST_SOCKET).")]
DomOpt = Annotated[int, typer.Option("--domid", help="Guest domain id.", min=1, max=0x7FEF)]
DevOpt = Annotated[int, typer.Option("--devid", help="Virtual device number (51712 = xvda).")]

def parse_size(text: str) -> int:
    """'64M' → 67108864, as a CLI parameter error when malformed."""
    try:
        return diskspec.parse_size(text)
    except StorageError as exc:
        raise typer.BadParameter(str(exc)) from exc


def open_disk(spec: str, *, read_only: bool) -> BlockDevice:
    """The disk a command line names (see `storage.diskspec.open_disk`)."""
    return diskspec.open_disk(spec, read_only=read_only)


# --- hvsim ring ---------------------------------------------------------------------------------
@ring_app.command("layout")
def ring_layout() -> None:
    """Print the blkif wire layouts (x86-64) and how many slots a ring of N pages has.

    Example: hvsim ring layout
    """
    t = Table(title="blkif structures (x86-64, io/blkif.h + io/ring.h)")
    for col in ("structure", "bytes", "fields (offset)"):
        t.add_column(col)
    t.add_row("ring header", str(blkif.HEADER_SIZE),
              "req_prod 0, req_event 4, rsp_prod 8, rsp_event 12, padding 16-63")
    t.add_row("request", str(blkif.REQUEST.size),
              "op 0, nr_segments 1, handle 2, id 8, sector 16, seg[11] 24 (8 bytes each)")
    t.add_row("segment", str(blkif.SEGMENT.size), "gref 0, first_sect 4, last_sect 5")
    t.add_row("discard request", str(blkif.DISCARD.size),
              "op 0, flag 1, handle 2, id 8, sector 16, nr_sectors 24")
    t.add_row("indirect request", str(blkif.INDIRECT.size),
              "op 0, indirect_op 1, nr_segments 2, id 8, sector 16, handle 24, grefs[8] 28")
    t.add_row("response", str(blkif.RESPONSE.size), "id 0, op 8, status 10")
    t.add_row("slot", str(blkif.SLOT_SIZE), "union of request and response")
    out.print(t)
    s = Table(title="ring sizes")
    for col in ("ring-page-order", "pages", "slots", "max in flight (bytes, 11 segs)"):
        s.add_column(col, justify="right")
    for order in range(0, 5):
        slots = blkif.ring_slots(1 << order)
        s.add_row(str(order), str(1 << order), str(slots), f"{slots * 11 * 4096:,}")
    out.print(s)
    ops = ", ".join(f"{op.name} {op.value}" for op in blkif.Op)
    out.print(f"ops: {ops}; status: OKAY 0, ERROR -1, EOPNOTSUPP -2")


@ring_app.command("serve")
def ring_serve(
    disk: Annotated[str, typer.Argument(
        help="Raw file, .vhd file (with its chain), lvm:VG/LV:PV\\[,PV...], or mem:SIZE.")],
    socket_path: SocketOpt = Path(DEFAULT_SOCKET),
    domid: DomOpt = 1,
    devid: DevOpt = 51712,
    read_only: Annotated[bool, typer.Option("--read-only", help="Serve a read-only VBD.")] = False,
    ram: Annotated[str, typer.Option(help="Guest RAM shared with the host.")] = "16M",
) -> None:
    """Be the host: serve DISK to guest domain DOMID as a blkif VBD until Ctrl-C.

    Guests connect with `hvsim guest ... --socket SOCKET`; each connection is logged with the
    backend's counters when it ends.

    Example: hvsim ring serve disk.raw --socket /tmp/host.sock
    """
    dev = open_disk(disk, read_only=read_only)
    try:
        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
            asyncio.run(_serve(dev, str(socket_path), domid, devid, read_only,
                               parse_size(ram) // 4096))
    finally:
        dev.close()


async def _serve(dev: BlockDevice, path: str, domid: int, devid: int, read_only: bool,
                 ram_pages: int) -> None:
    import signal

    from storage.rings.hostlink import HostServer
    from storage.rings.hypervisor import Hypervisor

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)  # clean up socket and shm on kill
    async with Hypervisor() as hv:
        hv.create_domain(domid, ram_pages=ram_pages, shared=True)
        back = await hv.attach_vbd(domid, dev, devid=devid, read_only=read_only)
        async with HostServer(hv, path) as srv:
            mode = "read-only" if back.read_only else "read-write"
            err.print(f"serving {dev.size:,} bytes ({mode}) to domain {domid} device {devid} "
                      f"on {path}; Ctrl-C to stop", highlight=False)
            while True:
                event = await srv.events.get()
                s = back.stats
                err.print(f"{event}; requests {dict(s.requests)} errors {dict(s.errors)} "
                          f"disconnects {dict(s.disconnects)}", highlight=False)


@ring_app.command("demo")
def ring_demo(
    disk: Annotated[str, typer.Option(help="Raw file, .vhd or mem:SIZE to use.")] = "mem:64M",
    megabytes: Annotated[int, typer.Option("--mb", help="Data to write and read back.",
                                           min=1)] = 16,
    cross_process: Annotated[bool, typer.Option(
        "--cross-process", help="Run the frontend in a separate guest process.")] = False,
) -> None:
    """Write random data through blkfront → ring → blkback, read it back and verify; print
    the request, notification and error counters of both ends.

    Example: hvsim ring demo --mb 32 --cross-process
    """
    dev = open_disk(disk, read_only=False)
    try:
        result = asyncio.run(_demo(dev, megabytes << 20, cross_process))
    finally:
        dev.close()
    t = Table(title=f"ring demo ({'cross-process' if cross_process else 'in-process'})")
    t.add_column("counter")
    t.add_column("value", justify="right")
    for k, v in result.items():
        t.add_row(k, str(v))
    out.print(t)
    if not result["verified"]:
        raise StorageError("data read back through the ring differs from what was written")


async def _demo(dev: BlockDevice, nbytes: int, cross: bool) -> dict[str, object]:
    from storage.rings.hypervisor import Hypervisor

    nbytes = min(nbytes, dev.size)
    async with Hypervisor() as hv:
        hv.create_domain(1, shared=cross)
        back = await hv.attach_vbd(1, dev)
        if cross:
            from storage.rings.hostlink import HostServer

            with tempfile.TemporaryDirectory() as tmp:
                sock = os.path.join(tmp, "host.sock")
                async with HostServer(hv, sock):
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "netsim", "guest", "selftest", "--socket", sock,
                        "--bytes", str(nbytes), stdout=asyncio.subprocess.PIPE)
                    stdout, _ = await proc.communicate()
                    if proc.returncode != 0:
                        raise StorageError(f"guest process failed (exit {proc.returncode})")
                    front = _parse_kv(stdout.decode())
        else:
            front = await _selftest(hv.guest(1), nbytes)
        s = back.stats
        return {**front, "backend requests": sum(s.requests.values()),
                "backend notifications sent": s.notifications_sent,
                "backend wake-ups": s.wakeups, "backend errors": sum(s.errors.values())}


def _parse_kv(text: str) -> dict[str, object]:
    result: dict[str, object] = {}
    for line in text.splitlines():
        k, _, v = line.partition("=")
        result[k] = v == "True" if v in ("True", "False") else v
    return result


async def _selftest(guest: object, nbytes: int) -> dict[str, object]:
    """Write a seeded random pattern in 1 MiB pieces at odd offsets, read back, compare."""
    import random

    from storage.rings.blkfront import BlkFront

    rng = random.Random(1)
    data = rng.randbytes(nbytes)
    async with BlkFront(guest, 51712) as front:  # type: ignore[arg-type]
        start = 7 if nbytes + 7 <= front.size else 0
        step = 1 << 20
        await asyncio.gather(*(front.write(start + i, data[i:i + step])
                               for i in range(0, nbytes, step)))
        await front.flush()
        back = b"".join(await asyncio.gather(*(front.read(start + i, min(step, nbytes - i))
                                                for i in range(0, nbytes, step))))
        st = front.stats
        return {"bytes": nbytes, "verified": back == data, "frontend requests": st.requests,
                "indirect requests": st.indirect_requests,
                "frontend notifications sent": st.notifications_sent,
                "frontend wake-ups": st.wakeups,
                "notifications per request": round(st.notifications_sent / st.requests, 3)}


# --- hvsim guest --------------------------------------------------------------------------------
async def _with_front(socket_path: Path, domid: int, devid: int, action):  # type: ignore[no-untyped-def]
    from storage.rings.blkfront import BlkFront
    from storage.rings.hostlink import connect_guest

    async with connect_guest(socket_path, domid) as guest, BlkFront(guest, devid) as front:
        return await action(front)


@guest_app.command("info")
def guest_info(socket_path: SocketOpt = Path(DEFAULT_SOCKET), domid: DomOpt = 1,
               devid: DevOpt = 51712) -> None:
    """Connect, negotiate, and print what the backend offers.

    Example: hvsim guest info --socket /tmp/host.sock
    """
    async def info(front):  # type: ignore[no-untyped-def]
        return {"size": front.size, "sectors": front.sectors, "sector-size": front.sector_size,
                "mode": "r" if front.read_only else "w", "feature-flush-cache":
                front.feature_flush, "feature-discard": front.feature_discard,
                "segments per request": front.max_segments,
                "requests in flight": front.max_in_flight}

    for k, v in asyncio.run(_with_front(socket_path, domid, devid, info)).items():
        out.print(f"{k}: {v}", highlight=False)


@guest_app.command("read")
def guest_read(
    offset: Annotated[int, typer.Argument(help="Byte offset (any alignment).", min=0)],
    length: Annotated[int, typer.Argument(help="Bytes to read.", min=0)],
    output: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write the bytes here (else hexdump).")] = None,
    socket_path: SocketOpt = Path(DEFAULT_SOCKET), domid: DomOpt = 1, devid: DevOpt = 51712,
) -> None:
    """Read LENGTH bytes at OFFSET through the ring.

    Example: hvsim guest read --socket /tmp/host.sock 0 512 --out sector0.bin
    """
    data: bytes = asyncio.run(_with_front(socket_path, domid, devid,
                                          lambda f: f.read(offset, length)))
    if output is not None:
        with open_output(output) as fh:
            fh.write(data)
        if not is_std(output):
            out.print(f"wrote {len(data):,} bytes to {output}", highlight=False, markup=False)
        return
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.print(f"{offset + i:012x}  {chunk.hex(' '):<47}  {text}", highlight=False,
                  markup=False)


@guest_app.command("write")
def guest_write(
    offset: Annotated[int, typer.Argument(help="Byte offset (any alignment).", min=0)],
    data: Annotated[str | None, typer.Option("--data", help="Text to write (UTF-8).")] = None,
    infile: Annotated[Path | None, typer.Option("--in", help="File whose bytes to write.")] = None,
    flush: Annotated[bool, typer.Option(help="Flush after writing.")] = True,
    socket_path: SocketOpt = Path(DEFAULT_SOCKET), domid: DomOpt = 1, devid: DevOpt = 51712,
) -> None:
    """Write --data or the contents of --in at OFFSET through the ring (then flush).

    Example: hvsim guest write --socket /tmp/host.sock 4096 --data "hello from the guest"
    """
    if (data is None) == (infile is None):
        raise typer.BadParameter("give exactly one of --data and --in")
    if data is not None:
        payload = data.encode()
    else:
        with open_input(infile) as fh:
            payload = fh.read()

    async def act(front):  # type: ignore[no-untyped-def]
        await front.write(offset, payload)
        if flush and front.feature_flush:
            await front.flush()

    asyncio.run(_with_front(socket_path, domid, devid, act))
    out.print(f"wrote {len(payload)} bytes at {offset}", highlight=False)  # a result: stdout


@guest_app.command("flush")
def guest_flush(socket_path: SocketOpt = Path(DEFAULT_SOCKET), domid: DomOpt = 1,
                devid: DevOpt = 51712) -> None:
    """Send FLUSH_DISKCACHE.

    Example: hvsim guest flush --socket /tmp/host.sock
    """
    asyncio.run(_with_front(socket_path, domid, devid, lambda f: f.flush()))


@guest_app.command("discard")
def guest_discard(
    offset: Annotated[int, typer.Argument(help="Byte offset.", min=0)],
    length: Annotated[int, typer.Argument(help="Bytes (whole sectors inside are discarded).",
                                          min=0)],
    socket_path: SocketOpt = Path(DEFAULT_SOCKET), domid: DomOpt = 1, devid: DevOpt = 51712,
) -> None:
    """Send DISCARD for the whole sectors inside the range.

    Example: hvsim guest discard --socket /tmp/host.sock 0 1048576
    """
    first, count = asyncio.run(_with_front(socket_path, domid, devid,
                                           lambda f: f.discard(offset, length)))
    if count:
        out.print(f"discarded {count:,} sectors ({count * 512:,} bytes) at sector {first} "
                  f"(byte {first * 512})", highlight=False)
    else:
        out.print(f"discarded nothing: bytes {offset}+{length} hold no whole 512-byte sector",
                  highlight=False)


@guest_app.command("xenstore-ls")
def guest_xenstore_ls(
    path: Annotated[str | None, typer.Argument(
        help="Subtree to list (default: this domain's device and its backend).")] = None,
    socket_path: SocketOpt = Path(DEFAULT_SOCKET), domid: DomOpt = 1, devid: DevOpt = 51712,
    connect: Annotated[bool, typer.Option(
        help="Run the blkfront handshake first, so the Connected-state keys are there.")] = True,
) -> None:
    """List xenstore keys and values as the guest sees them (like xenstore-ls).

    Example: hvsim guest xenstore-ls --socket /tmp/host.sock
    """
    from storage.rings.blkfront import BlkFront
    from storage.rings.hostlink import connect_guest

    async def walk(xs, top: str, lines: list[str]) -> None:  # type: ignore[no-untyped-def]
        value = await xs.read(top)
        if value:
            lines.append(f"{top} = {value!r}")
        for child in await xs.ls(top):
            await walk(xs, f"{top.rstrip('/')}/{child}", lines)

    async def run() -> list[str]:
        async with connect_guest(socket_path, domid) as guest:
            front = BlkFront(guest, devid)
            lines: list[str] = []
            try:
                if connect:
                    await front.connect()
                tops = [path] if path else [
                    f"/local/domain/{domid}/device/vbd/{devid}",
                    await guest.xs.read(f"/local/domain/{domid}/device/vbd/{devid}/backend")
                    or f"/local/domain/0/backend/vbd/{domid}/{devid}"]
                for top in tops:
                    await walk(guest.xs, top, lines)
            finally:
                if connect:
                    await front.close()
            return lines

    for line in asyncio.run(run()):
        out.print(line, highlight=False, markup=False)


@guest_app.command("selftest")
def guest_selftest(
    nbytes: Annotated[int, typer.Option("--bytes", help="Bytes to write and verify.")] = 1 << 20,
    socket_path: SocketOpt = Path(DEFAULT_SOCKET), domid: DomOpt = 1,
) -> None:
    """Write a seeded pattern, read it back, verify; print counters as key=value lines.

    Example: hvsim guest selftest --socket /tmp/host.sock --bytes 4194304
    """
    from storage.rings.hostlink import connect_guest

    async def run() -> dict[str, object]:
        async with connect_guest(socket_path, domid) as guest:
            return await _selftest(guest, nbytes)

    result = asyncio.run(run())
    for k, v in result.items():
        print(f"{k}={v}")
    if not result["verified"]:
        raise StorageError("data read back through the ring differs from what was written")


def register(app: typer.Typer) -> None:
    """Add `hvsim ring` and `hvsim guest` to the root app."""
    app.add_typer(ring_app, name="ring")
    app.add_typer(guest_app, name="guest")
