"""CLI for VHD images and XenServer storage objects: `hvsim vhd ...`, `hvsim sr ...`,
`hvsim vdi ...`. Sizes and offsets accept K/M/G/T suffixes (powers of 1024).
"""
from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from storage.cli.progress import progress_bar
from storage.devices.imagelock import ImageLockedError, LockMode
from storage.errors import StorageError
from storage.sr.sr import SR
from storage.units import parse_size as _parse_size
from storage.vhd import chain

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

def parse_size(text: str) -> int:
    """'64M' → 67108864. Accepts K, M, G, T (also KiB/KB forms, all powers of 1024)."""
    try:
        return _parse_size(text)
    except StorageError as exc:
        raise typer.BadParameter(str(exc)) from exc


SizeOpt = Annotated[str, typer.Option("--size", help="Size in bytes, or with K/M/G/T suffix.")]
ShareOpt = Annotated[bool, typer.Option(
    "--force-share", "-U", help="Open without the shared lock, as qemu-img -U: works while "
                                "another process writes the image (what you read may be in "
                                "flux).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Change a VHD even though differencing children beside it name it as "
                    "their parent (their contents change too).")]
SyncOpt = Annotated[bool, typer.Option(
    "--sync", help="fsync between the ordered steps of each block allocation: the image "
                   "survives a power loss mid-command with every sector old or new (slower). "
                   "Without it the image survives a crash of the process, and what the "
                   "command finished is fsynced at its end.")]


@contextmanager
def _progress(description: str, total: int | None):  # type: ignore[no-untyped-def]
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                  transient=False, disable=not err.is_terminal and not os.environ.get(
                      "HVSIM_PROGRESS")) as prog:
        task = prog.add_task(description, total=total)

        def advance(n: int) -> None:
            prog.advance(task, n)

        def set_total(n: int) -> None:
            prog.update(task, total=n)

        yield advance, set_total


def _os_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an OSError escaping a command (disk full, permission denied) into our one-line
    error, naming the file."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            where = exc.filename or "I/O"
            raise StorageError(f"{where}: {exc.strerror or exc}") from exc

    return wrapper


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# --- hvsim vhd ------------------------------------------------------------------------------------

vhd_app = typer.Typer(help="Create, inspect, check and change VHD images (fixed, dynamic, "
                           "differencing).\n\nExample: hvsim vhd create disk.vhd --size 10G",
                      no_args_is_help=True)


@vhd_app.command("create")
@_os_errors
def vhd_create(
    path: Annotated[Path, typer.Argument(help="The VHD file to create.")],
    size: Annotated[str | None, typer.Option("--size", help="Virtual size (K/M/G suffixes); "
                                             "rounded up to a whole CHS geometry like "
                                             "qemu-img.")] = None,
    type_: Annotated[str, typer.Option("--type", help="dynamic or fixed.")] = "dynamic",
    block_size: Annotated[str, typer.Option("--block-size", help="Block size of a dynamic "
                                            "VHD, a power of two (default 2M).")] = "2M",
    parent: Annotated[Path | None, typer.Option("--parent", help="Make a differencing child "
                                                "of this VHD.")] = None,
    sync: SyncOpt = False,
) -> None:
    """Create a VHD: dynamic (sparse) or fixed with --size, or a differencing child with --parent.

    Example: hvsim vhd create base.vhd --size 1G; hvsim vhd create child.vhd --parent base.vhd
    """
    if parent is None and size is None:
        raise typer.BadParameter("give --size (or --parent for a differencing VHD)")
    if parent is not None and size is not None:
        raise typer.BadParameter("a differencing VHD takes its size from --parent; drop --size")
    if type_ not in ("dynamic", "fixed"):
        raise typer.BadParameter(f"--type must be dynamic or fixed, not {type_!r}")
    img = chain.create_image(path, size=parse_size(size) if size else None, disk_type=type_,
                             block_size=parse_size(block_size), parent_path=parent,
                             barriers=sync)
    try:
        msg = f"created {img.disk_type} VHD {path}: {img.size} bytes ({_human(img.size)})"
        if size and img.size != parse_size(size):
            msg += f", rounded up from {parse_size(size)} to a whole CHS geometry"
        console.print(msg, highlight=False)
    finally:
        img.close()


def _lock(force_share: bool) -> LockMode | None:
    return LockMode.NONE if force_share else None


def _info(path: Path, force_share: bool = False) -> dict:
    try:
        img = chain.open_chain(path, read_only=True, lock=_lock(force_share))
        chain_error = None
    except ImageLockedError:
        raise
    except StorageError as exc:
        img = chain.open_image(path, read_only=True, lock=_lock(force_share))
        chain_error = str(exc)
    try:
        f = img.footer
        return {
            "path": str(path), "type": img.disk_type, "virtual_size": img.size,
            "block_size": img.block_size, "uuid": str(img.uuid),
            "parent_uuid": str(img.parent_uuid) if img.parent_uuid else None,
            "parent_path": img.parent.name if img.parent else None,
            "allocated_blocks": img.allocated_blocks,
            "total_blocks": len(img.bat), "chain_depth": img.depth if not chain_error else None,
            "chain": [im.name for im in chain.iter_chain(img)],
            "file_size": os.path.getsize(path),
            "creator": f.creator_app.decode("latin-1").rstrip("\0"),
            "geometry": list(f.geometry), "current_size": f.current_size,
            "timestamp": f.timestamp, **({"chain_error": chain_error} if chain_error else {}),
        }
    finally:
        img.close()


@vhd_app.command("info")
@_os_errors
def vhd_info(
    path: Annotated[Path, typer.Argument(help="A VHD file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    force_share: ShareOpt = False,
) -> None:
    """Show a VHD's type, sizes, uuid, parent, allocation and chain depth.

    Example: hvsim vhd info child.vhd --json
    """
    info = _info(path, force_share)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        if k == "chain":
            v = " <- ".join(v)
        console.print(f"{k:17} {v}", highlight=False)


@vhd_app.command("check")
@_os_errors
def vhd_check(path: Annotated[Path, typer.Argument(help="A VHD file.")],
              force_share: ShareOpt = False) -> None:
    """Check a VHD and its chain; exit 0 when consistent, else 1 with one line per problem.

    Example: hvsim vhd check disk.vhd
    """
    problems = chain.check(path, lock=_lock(force_share))
    for p in problems:
        print(p)
    if problems:
        raise typer.Exit(1)
    console.print(f"{path}: ok", highlight=False)


@vhd_app.command("read")
@_os_errors
def vhd_read(
    path: Annotated[Path, typer.Argument(help="A VHD file (its chain is followed).")],
    offset: Annotated[str, typer.Option("--offset", help="Byte offset (K/M/G ok).")],
    length: Annotated[str, typer.Option("--length", help="Bytes to read (K/M/G ok).")],
    output: Annotated[str, typer.Option("--output", help="File to write, or - for stdout.")],
    force_share: ShareOpt = False,
) -> None:
    """Read bytes from a VHD (through its parents) into a file.

    Example: hvsim vhd read disk.vhd --offset 1M --length 4K --output out.bin
    """
    img = chain.open_chain(path, read_only=True, lock=_lock(force_share))
    try:
        off, n = parse_size(offset), parse_size(length)
        if off + n > img.size:
            raise StorageError(f"{path}: range {off}+{n} outside the disk (size {img.size})")
        if output != "-":
            chain.refuse_output_in_chain(img, output)
        try:
            sink = sys.stdout.buffer if output == "-" else open(output, "wb")
        except OSError as exc:
            raise StorageError(f"{output}: cannot write: {exc.strerror}") from exc
        try:                        # in pieces: --length is not bounded by memory
            step = 8 * 1024 * 1024
            for pos in range(off, off + n, step):
                sink.write(img.read(pos, min(step, off + n - pos)))
            sink.flush()
        finally:
            if sink is not sys.stdout.buffer:
                sink.close()
    finally:
        img.close()


@vhd_app.command("write")
@_os_errors
def vhd_write(
    path: Annotated[Path, typer.Argument(help="A VHD file; a differencing one keeps its "
                                        "parents untouched.")],
    offset: Annotated[str, typer.Option("--offset", help="Byte offset (K/M/G ok).")],
    input_: Annotated[Path, typer.Option("--input", help="File whose bytes to write.")],
    sync: SyncOpt = False,
    force: ForceOpt = False,
) -> None:
    """Write a file's bytes into a VHD at an offset (any alignment).

    Refused when differencing VHDs beside it name it as their parent (writing a parent
    changes every child's contents) unless --force.
    Example: hvsim vhd write disk.vhd --offset 4096 --input data.bin --sync
    """
    off = parse_size(offset)
    try:
        src = open(input_, "rb")
    except OSError as exc:
        raise StorageError(f"{input_}: {exc.strerror}") from exc
    try:
        img = chain.open_chain(path, read_only=False, barriers=sync)
    except BaseException:
        src.close()
        raise
    try:
        _refuse_parent(img, "write to", force)
        total = 0
        while chunk := src.read(8 * 1024 * 1024):
            img.write(off + total, chunk)
            total += len(chunk)
        img.flush()
    finally:
        src.close()
        img.close()
    console.print(f"wrote {total} bytes at offset {off}", highlight=False)


@vhd_app.command("export")
@_os_errors
def vhd_export(
    path: Annotated[Path, typer.Argument(help="A VHD file (its whole chain is flattened).")],
    out: Annotated[Path, typer.Argument(help="The raw image to write.")],
    force_share: ShareOpt = False,
) -> None:
    """Flatten a VHD and its parents into a raw image (sparse where it reads zeros).

    The output may not be the image or one of its parents (compared by device and inode).
    Example: hvsim vhd export child.vhd disk.raw
    """
    img = chain.open_chain(path, read_only=True, lock=_lock(force_share))
    try:
        with _progress(f"export {path.name}", img.size) as (advance, _):
            chain.export(img, out, progress=advance)
    finally:
        img.close()
    console.print(f"exported {img.size} bytes to {out}", highlight=False)


@vhd_app.command("coalesce")
@_os_errors
def vhd_coalesce(
    child: Annotated[Path, typer.Argument(help="The differencing VHD to merge into its "
                                         "parent.")],
    force: Annotated[bool, typer.Option("--force", help="Coalesce even if the parent has "
                                        "other children (their contents change).")] = False,
    sync: SyncOpt = False,
) -> None:
    """Merge a child into its parent and relink the child's children to the parent.

    Crash-safe (journaled); an interrupted coalesce is finished by running it again. The
    merged child is deleted at the end (its data now lives in the parent).
    Example: hvsim vhd coalesce snap1.vhd
    """
    parent_dir = Path(child).resolve().parent
    for res in chain.recover(parent_dir):
        err.print(f"finished an interrupted coalesce of {res.child} into {res.parent}")
    with _progress(f"coalesce {child.name}", None) as (advance, set_total):
        res = chain.coalesce(child, force=force, progress=advance, on_total=set_total,
                             barriers=sync)
    console.print(f"merged {res.bytes_copied} bytes of {res.child} into {res.parent}"
                  + (f"; relinked {', '.join(res.relinked)}" if res.relinked else "")
                  + (f"; removed {res.child}" if res.removed_child else ""),
                  highlight=False)


@vhd_app.command("resize")
@_os_errors
def vhd_resize(
    path: Annotated[Path, typer.Argument(help="A VHD file (a leaf).")],
    size: SizeOpt,
    sync: SyncOpt = False,
    force: ForceOpt = False,
) -> None:
    """Grow a VHD (or shrink it when nothing written would be lost).

    Refused for a VHD that differencing VHDs beside it name as their parent, unless --force.
    Example: hvsim vhd resize disk.vhd --size 20G
    """
    img = chain.open_chain(path, read_only=False, barriers=sync)
    try:
        _refuse_parent(img, "resize", force)
        new = img.resize(parse_size(size))
    finally:
        img.close()
    console.print(f"{path}: virtual size now {new} bytes ({_human(new)})", highlight=False)


def _refuse_parent(img: Any, verb: str, force: bool) -> None:
    """Refuse to change a VHD that children beside it name as parent (XenServer never writes
    a parent once it has children); with --force, warn naming them."""
    kids = chain.children_beside(img)
    if not kids:
        return
    names = ", ".join(kids)
    if not force:
        raise StorageError(f"{img.name}: refusing to {verb} a VHD that is the parent of "
                           f"{names} (their contents would change); --force to do it anyway")
    err.print(f"warning: {img.name} is the parent of {names}; their contents change too",
              highlight=False)


# --- hvsim sr / vdi -------------------------------------------------------------------------------

sr_app = typer.Typer(help="Storage repositories (XenServer SRs).\n\nExample: hvsim sr create "
                          "./sr1 --type file", no_args_is_help=True)
vdi_app = typer.Typer(help="Virtual disk images in an SR.\n\nExample: hvsim vdi create --sr ./sr1 "
                           "--size 10G --name disk0", no_args_is_help=True)


@sr_app.command("create")
@_os_errors
def sr_create(
    path: Annotated[Path, typer.Argument(help="Directory for the SR (created if missing).")],
    type_: Annotated[str, typer.Option("--type", help="SR type: file (VHD files); others "
                                       "as installed (lvm, lvhd).")] = "file",
    name: Annotated[str, typer.Option("--name", help="name-label.")] = "",
    device_config: Annotated[list[str] | None, typer.Option(
        "--device-config", help="KEY=VALUE passed to the SR type (repeatable).")] = None,
    size: Annotated[str | None, typer.Option(
        "--size", help="lvm/lvhd: size of the PV file made in the SR directory (e.g. 10G); "
                       "same as --device-config size=SIZE.")] = None,
    sync: Annotated[bool, typer.Option(
        "--sync", help="file/lvhd: VHD writes fsync between allocation steps, so VDIs "
                       "survive a power loss, not only a process crash (slower); change "
                       "later with `hvsim sr set`.")] = False,
) -> None:
    """Create an SR and print its UUID.

    Example: hvsim sr create ./sr1 --type file; hvsim sr create ./sr2 --type lvhd --size 10G
    """
    cfg: dict[str, str] = {"size": str(parse_size(size))} if size else {}
    for item in device_config or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--device-config wants KEY=VALUE, got {item!r}")
        cfg[k] = v
    sr = SR.create(path, type_name=type_, name_label=name, device_config=cfg, sync=sync)
    print(sr.uuid)


@sr_app.command("set")
@_os_errors
def sr_set(
    path: Annotated[Path, typer.Argument(help="The SR directory.")],
    sync: Annotated[bool | None, typer.Option(
        "--sync/--no-sync", help="Power-loss-safe VHD writes (fsync between allocation "
                                 "steps) for VDIs opened from now on.")] = None,
) -> None:
    """Change an SR's settings and print them.

    Example: hvsim sr set ./sr1 --sync
    """
    sr = SR.open(path)
    if sync is not None:
        sr.set_sync(sync)
    console.print(f"{path}: sync={'on' if sr.sync else 'off'}", highlight=False)


@sr_app.command("gc")
@_os_errors
def sr_gc(path: Annotated[Path, typer.Argument(help="The SR directory.")]) -> None:
    """Remove unused base copies and coalesce base copies that have a single child.

    Example: hvsim sr gc ./sr1
    """
    sr = SR.open(path)
    with progress_bar(console=err, count=True) as bar:
        hidden = sum(1 for v in sr.vdis.values() if v.hidden)
        task = bar.add_task("sr gc", total=hidden or None)

        def step(msg: str) -> None:
            if bar.disable:   # logs and pipes: one line per step, as before
                err.print(msg, highlight=False, markup=False)
            else:
                bar.update(task, description=escape(msg))
                bar.advance(task)

        report = sr.gc(progress=step)
    console.print(f"removed {len(report.removed)} base copies, coalesced "
                  f"{len(report.coalesced)}, skipped {len(report.skipped)} attached",
                  highlight=False)


@sr_app.command("scan")
@_os_errors
def sr_scan(
    path: Annotated[Path, typer.Argument(help="The SR directory.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report only; change "
                                          "nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Reconcile the SR's records with its volumes (XenServer's sr-scan).

    A volume no VDI names (left by a crash before sr.json was saved) is introduced as a VDI
    named "recovered ..." when it may hold data, removed when provably empty, and reported
    and left alone when unreadable. A VDI whose volume is gone is forgotten (or marked
    missing while other VDIs chain through it). Exit 1 when anything was out of step.
    Example: hvsim sr scan ./sr1 --dry-run
    """
    sr = SR.open(path)
    report = sr.scan(dry_run=dry_run, progress=lambda msg: err.print(msg, highlight=False))
    if as_json:
        print(json.dumps({k: getattr(report, k) for k in (
            "adopted", "removed_volumes", "unreadable", "forgotten", "marked_missing",
            "ignored", "dry_run")}, indent=2))
    else:
        for line in report.ignored:
            console.print(f"ignored: {line}", highlight=False)
        verb = "would be " if dry_run else ""
        console.print(f"{len(report.adopted)} orphan volumes {verb}introduced as VDIs, "
                      f"{len(report.removed_volumes)} empty ones {verb}removed, "
                      f"{len(report.unreadable)} unreadable left alone; "
                      f"{len(report.forgotten)} records with no volume {verb}forgotten, "
                      f"{len(report.marked_missing)} {verb}marked missing", highlight=False)
    if not report.clean:
        raise typer.Exit(1)


SrOpt = Annotated[Path, typer.Option("--sr", help="The SR directory.")]


@vdi_app.command("create")
@_os_errors
def vdi_create(sr: SrOpt, size: SizeOpt,
               name: Annotated[str, typer.Option("--name", help="name-label.")]) -> None:
    """Create an empty VDI and print its UUID.

    Example: hvsim vdi create --sr ./sr1 --size 10G --name disk0
    """
    print(SR.open(sr).vdi_create(name, parse_size(size)).uuid)


@vdi_app.command("snapshot")
@_os_errors
def vdi_snapshot(sr: SrOpt, uuid: Annotated[str, typer.Argument(help="The VDI.")]) -> None:
    """Snapshot a VDI (O(1)) and print the snapshot's UUID; the VDI keeps its UUID.

    Example: hvsim vdi snapshot --sr ./sr1 3f2a...
    """
    print(SR.open(sr).vdi_snapshot(uuid).uuid)


@vdi_app.command("clone")
@_os_errors
def vdi_clone(sr: SrOpt, uuid: Annotated[str, typer.Argument(help="The VDI.")]) -> None:
    """Clone a VDI (O(1), writable) and print the clone's UUID.

    Example: hvsim vdi clone --sr ./sr1 3f2a...
    """
    print(SR.open(sr).vdi_clone(uuid).uuid)


@vdi_app.command("destroy")
@_os_errors
def vdi_destroy(sr: SrOpt, uuid: Annotated[str, typer.Argument(help="The VDI.")]) -> None:
    """Destroy a VDI (its base copies go at the next `hvsim sr gc`).

    Example: hvsim vdi destroy --sr ./sr1 3f2a...
    """
    s = SR.open(sr)
    vdi = s.vdi(uuid)
    name, size, parent = vdi.name_label, vdi.virtual_size, vdi.parent
    s.vdi_destroy(vdi.uuid)
    left = (f"; its parent {parent} stays until `hvsim sr gc` finds it unused"
            if parent else "")
    console.print(f"destroyed VDI {vdi.uuid} ({name!r}, {_human(size)}){left}",
                  highlight=False, markup=False)


@vdi_app.command("list")
@_os_errors
def vdi_list(sr: SrOpt,
             as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the SR's VDIs with their parents (hidden base copies included).

    Example: hvsim vdi list --sr ./sr1 --json
    """
    s = SR.open(sr)
    rows = []
    for v in sorted(s.vdis.values(), key=lambda v: (v.hidden, v.name_label, v.uuid)):
        rows.append({"uuid": v.uuid, "name_label": v.name_label,
                     "virtual_size": v.virtual_size,
                     "physical_utilisation": s.physical_utilisation(v.uuid),
                     "parent": v.parent, "hidden": v.hidden, "read_only": v.read_only,
                     "sharable": v.sharable, "is_a_snapshot": v.is_a_snapshot,
                     "snapshot_of": v.snapshot_of, "location": v.location,
                     "chain_depth": s.chain_depth(v.uuid)})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    def flags(r: dict) -> str:
        return ",".join(f for f, on in (("hidden", r["hidden"]), ("ro", r["read_only"]),
                                        ("snapshot", r["is_a_snapshot"])) if on) or "-"

    if not console.is_terminal:
        print(f"{'uuid':36}  {'parent':36}  {'virtual':>14}  {'physical':>14}  {'flags':20}  "
              "name")
        for r in rows:
            print(f"{r['uuid']}  {r['parent'] or '-':36}  {r['virtual_size']:>14}  "
                  f"{r['physical_utilisation']:>14}  {flags(r):20}  {r['name_label']}")
        return
    t = Table("uuid", "parent", "virtual", "physical", "flags", "name")
    for r in rows:
        t.add_row(r["uuid"], r["parent"] or "-", _human(r["virtual_size"]),
                  _human(r["physical_utilisation"]), flags(r), r["name_label"])
    console.print(t)


@vdi_app.command("serve")
@_os_errors
def vdi_serve(
    sr: SrOpt,
    uuid: Annotated[str, typer.Argument(help="The VDI.")],
    nbd: Annotated[bool, typer.Option("--nbd", help="Serve over NBD (the only protocol).")] = True,
    bind: Annotated[str, typer.Option(
        "--bind", help="HOST:PORT or unix:PATH.")] = "127.0.0.1:10809",
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse writes.")] = False,
    name: Annotated[str, typer.Option("--name", help="Export name (default: the UUID).")] = "",
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Listen on a non-loopback address (NBD has no authentication).")]
        = False,
) -> None:
    """Serve a VDI over NBD through a VBD (so a second read-write attach is refused, as xapi
    does); the VBD is unplugged and removed when the server stops.

    Example: hvsim vdi serve --sr ./sr1 3f2a... --nbd --bind 127.0.0.1:10809
    """
    from storage.cli.nbd import parse_bind, serve_device

    if not nbd:
        raise StorageError("vdi serve: only --nbd is available")
    parse_bind(bind, allow_remote=allow_remote)
    s = SR.open(sr)
    vbd = s.vbd_create(uuid, "nbd-server", mode="RO" if read_only else "RW")
    try:
        dev = s.vbd_plug(vbd.uuid)
        try:
            serve_device(dev, label=f"VDI {uuid}", bind=bind, name=name or uuid,
                         read_only=read_only, allow_remote=allow_remote)
        finally:
            s.vbd_unplug(vbd.uuid)
    finally:
        s.vbd_destroy(vbd.uuid)


def register(app: typer.Typer) -> None:
    """Add the `vhd` command group to the root `hvsim` app (`storage.cli.sr` mounts `sr_app`
    and `storage.cli.vdi` mounts `vdi_app`, each adding its own subcommands)."""
    app.add_typer(vhd_app, name="vhd")
