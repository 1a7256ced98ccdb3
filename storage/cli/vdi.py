"""CLI for moving data in and out of VDIs, as XenServer's `xe` does: `hvsim vdi export`,
`import`, `copy`, `resize`, `revert`, `read`, `write`, and changed block tracking
(`enable-cbt`, `disable-cbt`, `list-changed-blocks`, `data-destroy`).

These subcommands join the `vdi` group that `storage.cli.vhd` defines; this module mounts it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from storage.cli.vhd import SizeOpt, SrOpt, _human, _os_errors, console, parse_size, vdi_app
from storage.errors import StorageError
from storage.sr.sr import SR

UuidArg = Annotated[str, typer.Argument(help="The VDI.")]
FormatOpt = Annotated[str, typer.Option("--format", help="raw or vhd.")]


@vdi_app.command("export")
@_os_errors
def vdi_export(
    sr: SrOpt, uuid: UuidArg,
    file: Annotated[Path, typer.Argument(help="The file to write (replaced if it exists).")],
    format_: FormatOpt = "raw",
    base: Annotated[str | None, typer.Option(
        "--base", help="A snapshot of the VDI: write only what changed since it, as a "
                       "differencing VHD whose parent is <SNAPSHOT_UUID>.vhd (needs --format "
                       "vhd), as `xe vdi-export base=`.")] = None,
) -> None:
    """Export a VDI's content to a file: raw (sparse, holes where it reads zeros) or a dynamic
    VHD (zero blocks unallocated), as `xe vdi-export`.

    Example: hvsim vdi export --sr ./sr1 3f2a... disk.raw
    """
    from storage.sr import transfer

    s = SR.open(sr)
    n = transfer.vdi_export(s, uuid, file, fmt_name=format_, base=base)
    what = f"{n} changed bytes since {base}" if base else f"{n} bytes"
    console.print(f"exported {what} of VDI {uuid} to {file}", highlight=False, markup=False)


@vdi_app.command("import")
@_os_errors
def vdi_import(
    sr: SrOpt, uuid: UuidArg,
    file: Annotated[Path, typer.Argument(help="A raw image, or a VHD with --format vhd.")],
    format_: FormatOpt = "raw",
) -> None:
    """Replace a VDI's content with a file's (the VDI must be at least as large), as
    `xe vdi-import`; zero blocks are not allocated.

    Example: hvsim vdi import --sr ./sr1 3f2a... disk.raw
    """
    from storage.sr import transfer

    s = SR.open(sr)
    n = transfer.vdi_import(s, uuid, file, fmt_name=format_)
    console.print(f"imported {file} into VDI {uuid} ({n} bytes written)", highlight=False,
                  markup=False)


@vdi_app.command("copy")
@_os_errors
def vdi_copy(
    sr: SrOpt, uuid: UuidArg,
    to_sr: Annotated[Path | None, typer.Option("--to-sr", help="The SR to copy into (any "
                                               "type; default: the same SR).")] = None,
) -> None:
    """Make a full, independent copy of a VDI and print the copy's UUID (`xe vdi-copy`).

    Example: hvsim vdi copy --sr ./sr1 3f2a... --to-sr ./sr2
    """
    from storage.sr import transfer

    s = SR.open(sr)
    target = SR.open(to_sr) if to_sr is not None else None
    print(transfer.vdi_copy(s, uuid, target).uuid)


@vdi_app.command("resize")
@_os_errors
def vdi_resize(sr: SrOpt, uuid: UuidArg, size: SizeOpt) -> None:
    """Resize a VDI (grow; shrink only when nothing written is lost), as `xe vdi-resize`.

    Example: hvsim vdi resize --sr ./sr1 3f2a... --size 20G
    """
    new = SR.open(sr).vdi_resize(uuid, parse_size(size))
    console.print(f"VDI {uuid}: virtual size now {new} bytes ({_human(new)})", highlight=False)


@vdi_app.command("revert")
@_os_errors
def vdi_revert(
    sr: SrOpt, uuid: UuidArg,
    snapshot: Annotated[str, typer.Argument(help="A snapshot of the VDI.")],
) -> None:
    """Make a VDI's content its snapshot's, keeping the VDI's UUID (`xe snapshot-revert`).

    Example: hvsim vdi revert --sr ./sr1 3f2a... 9c1b...
    """
    from storage.sr import transfer

    n = transfer.vdi_revert(SR.open(sr), uuid, snapshot)
    console.print(f"VDI {uuid} reverted to snapshot {snapshot} ({n} bytes rewritten)",
                  highlight=False)


@vdi_app.command("read")
@_os_errors
def vdi_read(
    sr: SrOpt, uuid: UuidArg,
    offset: Annotated[str, typer.Option("--offset", help="Byte offset (K/M/G ok).")],
    length: Annotated[str, typer.Option("--length", help="Bytes to read (K/M/G ok).")],
    output: Annotated[str, typer.Option("--output", help="File to write, or - for "
                                        "stdout.")] = "-",
) -> None:
    """Read bytes of a VDI to a file or stdout.

    Example: hvsim vdi read --sr ./sr1 3f2a... --offset 1M --length 4K --output out.bin
    """
    off, ln = parse_size(offset), parse_size(length)
    dev = SR.open(sr).vdi_open(uuid, read_only=True)
    try:
        if off + ln > dev.size:
            raise StorageError(f"reading {ln} bytes at {off} runs past the end of the "
                               f"{dev.size}-byte VDI {uuid}")
        data = dev.read(off, ln)
    finally:
        dev.close()
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            Path(output).write_bytes(data)
        except OSError as exc:
            raise StorageError(f"{output}: cannot write: {exc.strerror}") from exc


@vdi_app.command("write")
@_os_errors
def vdi_write(
    sr: SrOpt, uuid: UuidArg,
    offset: Annotated[str, typer.Option("--offset", help="Byte offset (K/M/G ok).")],
    input_: Annotated[str, typer.Option("--input", help="File whose bytes to write, or - "
                                        "for stdin.")] = "-",
) -> None:
    """Write a file's (or stdin's) bytes into a VDI at an offset.

    Example: hvsim vdi write --sr ./sr1 3f2a... --offset 4096 --input data.bin
    """
    from storage.sr import transfer

    off = parse_size(offset)
    if input_ == "-":
        src = sys.stdin.buffer
    else:
        try:
            src = open(input_, "rb")
        except OSError as exc:
            raise StorageError(f"{input_}: {exc.strerror}") from exc
    try:
        dev = SR.open(sr).vdi_open(uuid)
        try:
            n = transfer.write_stream(dev, off, src.read)
        finally:
            dev.close()
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    console.print(f"wrote {n} bytes at offset {off} of VDI {uuid}", highlight=False)


# --- changed block tracking ---------------------------------------------------------------------


@vdi_app.command("enable-cbt")
@_os_errors
def vdi_enable_cbt(sr: SrOpt, uuid: UuidArg) -> None:
    """Start changed block tracking: every write marks its 64 KiB blocks in a log beside the
    VDI (`xe vdi-enable-cbt`).

    Example: hvsim vdi enable-cbt --sr ./sr1 3f2a...
    """
    from storage.sr import cbt

    cbt.enable(SR.open(sr), uuid)
    console.print(f"CBT enabled on VDI {uuid}", highlight=False)


@vdi_app.command("disable-cbt")
@_os_errors
def vdi_disable_cbt(sr: SrOpt, uuid: UuidArg) -> None:
    """Stop changed block tracking and delete the VDI's log (`xe vdi-disable-cbt`).

    Example: hvsim vdi disable-cbt --sr ./sr1 3f2a...
    """
    from storage.sr import cbt

    cbt.disable(SR.open(sr), uuid)
    console.print(f"CBT disabled on VDI {uuid}", highlight=False)


@vdi_app.command("list-changed-blocks")
@_os_errors
def vdi_list_changed_blocks(
    sr: SrOpt,
    from_uuid: Annotated[str, typer.Argument(help="A snapshot (the older side).")],
    to_uuid: Annotated[str, typer.Argument(help="A later snapshot, or the VDI itself.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the changed byte ranges as "
                                          "JSON instead.")] = False,
) -> None:
    """Print the 64 KiB blocks written between two CBT-enabled VDIs as the base64 bitmap
    `xe vdi-list-changed-blocks` prints (first block = most significant bit of byte 0).

    Example: hvsim vdi list-changed-blocks --sr ./sr1 SNAP_UUID VDI_UUID --json
    """
    from storage.sr import cbt

    bitmap = cbt.list_changed_blocks(SR.open(sr), from_uuid, to_uuid)
    if as_json:
        print(json.dumps({"block_size": cbt.BLOCK, "ranges": [
            {"offset": o, "length": n} for o, n in cbt.ranges(bitmap)]}))
    else:
        print(cbt.encode(bitmap))


@vdi_app.command("data-destroy")
@_os_errors
def vdi_data_destroy(sr: SrOpt, uuid: UuidArg) -> None:
    """Delete a CBT-enabled snapshot's data but keep its CBT log, so it can still be the FROM
    of `list-changed-blocks` (`xe vdi-data-destroy`).

    Example: hvsim vdi data-destroy --sr ./sr1 SNAP_UUID
    """
    from storage.sr import cbt

    cbt.data_destroy(SR.open(sr), uuid)
    console.print(f"destroyed the data of VDI {uuid}; its CBT log stays", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `vdi` command group (with these subcommands) to the root `hvsim` app."""
    app.add_typer(vdi_app, name="vdi")



