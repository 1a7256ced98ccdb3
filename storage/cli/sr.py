"""CLI for finding and (re)attaching SRs, as XenServer's `xe sr-probe`, `sr-introduce` and
`sr-forget` do: `hvsim sr probe`, `hvsim sr introduce`, `hvsim sr forget`.

These subcommands join the `sr` group that `storage.cli.vhd` defines; this module mounts it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from storage.cli.vhd import _os_errors, console, sr_app
from storage.sr.sr import SR


@sr_app.command("probe")
@_os_errors
def sr_probe(
    path: Annotated[Path, typer.Argument(help="A directory, a PV file or a block device.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_xml: Annotated[bool, typer.Option(
        "--xml", help="Print the <SRlist> XML `xe sr-probe` prints.")] = False,
) -> None:
    """Say what SR, if any, lives at PATH (`xe sr-probe`).

    Changes nothing. Exit 1 when there is none.

    Example: hvsim sr probe ./sr1; hvsim sr probe ./disks/pv0.img --xml
    """
    from storage.sr import probe

    found = probe.probe(path)
    if as_xml:
        print(probe.to_xml(found), end="")
    elif as_json:
        print(json.dumps(probe.to_json(found), indent=2))
    elif not found:
        console.print(f"{path}: no SR found", highlight=False, markup=False)
    for f in found if not (as_xml or as_json) else ():
        console.print(f.line(str(path)), highlight=False, markup=False)
    if not found:
        raise typer.Exit(1)


@sr_app.command("introduce")
@_os_errors
def sr_introduce(
    path: Annotated[Path, typer.Argument(help="The SR directory (exists; sr.json is made "
                                              "unless the SR was forgotten there).")],
    type_: Annotated[str | None, typer.Option(
        "--type", help="file, lvm or lvhd (default: what the volumes say).")] = None,
    uuid: Annotated[str | None, typer.Option(
        "--uuid", help="The SR's uuid (checked against an LVM SR's VG name; a file SR "
                       "without metadata gets a new one unless given).")] = None,
    name: Annotated[str, typer.Option("--name", help="name-label.")] = "",
    device_config: Annotated[list[str] | None, typer.Option(
        "--device-config", help="device=PATH[,PATH]: the PVs of an LVM SR.")] = None,
) -> None:
    """Use an SR whose storage already exists, formatting nothing (`xe sr-introduce`).

    Then plugs and scans it, as `pbd-plug` and `sr-scan` would: a forgotten SR comes back
    with its records; otherwise every volume becomes a VDI named after it. Prints its uuid.

    Example: hvsim sr forget ./sr1; hvsim sr introduce ./sr1
    """
    cfg: dict[str, str] = {}
    for item in device_config or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--device-config wants KEY=VALUE, got {item!r}")
        cfg[k] = v
    sr, report = SR.introduce(path, type_name=type_, uuid=uuid, name_label=name,
                              device_config=cfg)
    try:
        for line in report.unreadable:
            console.print(f"unreadable volume left alone: {line}", highlight=False,
                          markup=False)
        print(sr.uuid)
        console.print(f"{len(sr.vdis)} VDIs ({len(report.adopted)} introduced from volumes)",
                      highlight=False, markup=False)
    finally:
        sr.close()


@sr_app.command("forget")
@_os_errors
def sr_forget(path: Annotated[Path, typer.Argument(help="The SR directory.")]) -> None:
    """Stop using an SR, leaving its data and records in place (`xe sr-forget`).

    `hvsim sr introduce` brings it back. Refused while any of its VBDs or PBDs is plugged.

    Example: hvsim sr forget ./sr1
    """
    sr = SR.open(path)
    n = len(sr.vdis)
    sr.forget()
    console.print(f"forgot SR {sr.uuid} ({n} VDIs; data left in {path})", highlight=False,
                  markup=False)


def register(app: typer.Typer) -> None:
    """Add the `sr` command group (with these subcommands) to the root `hvsim` app."""
    app.add_typer(sr_app, name="sr")
