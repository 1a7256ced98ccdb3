"""`hvsim lvm ...`: LVM2's commands on files standing in for disks.

Names and options follow LVM2 (`pvcreate`, `vgcreate`, `lvcreate -L/-n/-s`, `lvextend -L +SIZE`,
`lvs --reportformat json`, `vgcfgbackup -f`...). Where LVM2 scans /dev, we scan `--devices`
(files, block devices or directories of PV files; also `$HVSIM_LVM_DEVICES`, default: the
current directory). Sizes take LVM2's units (b, s, k, m, g, t; binary; default m).
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from storage.cli.files import input_size, open_input, open_output
from storage.cli.progress import progress_bar
from storage.errors import LvmError
from storage.lvm import VolumeGroup, pvcreate, scan
from storage.lvm.alloc import free_areas, free_extents
from storage.lvm.units import human, parse_size
from storage.lvm.vg import PvDevice, list_vg_ids, prefer_duplicate, pv_metadata

lvm_app = typer.Typer(
    name="lvm",
    help="LVM2 on files: PVs, VGs, linear LVs, COW snapshots, LVM2 text metadata.\n\n"
         "Example: hvsim lvm pvcreate pv0.img --size 1g && hvsim lvm vgcreate vg0 pv0.img",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)  # long paths stay on one line (and greppable)

DevicesOpt = Annotated[
    list[str] | None,
    typer.Option("--devices", "-d",
                 help="PV files/dirs to scan (repeatable or comma-separated; default "
                      "$HVSIM_LVM_DEVICES or the current directory)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON report instead of a table.")]
ReportFmtOpt = Annotated[str, typer.Option("--reportformat",
                                           help="'basic' table or 'json' (as LVM2).")]


def _devices(devices: list[str] | None) -> list[str]:
    if devices:
        return [p for d in devices for p in d.split(",") if p]
    env = os.environ.get("HVSIM_LVM_DEVICES")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return ["."]


def _split_lv(path: str) -> tuple[str, str]:
    parts = path.strip("/").split("/")
    if parts[0] == "dev" and len(parts) == 3:
        parts = parts[1:]
    if len(parts) != 2 or not all(parts):
        raise LvmError(f"expected VG/LV, got {path!r}")
    return parts[0], parts[1]


def _warn(lines: list[str]) -> None:
    """LVM2's warnings, on stderr as LVM2 prints them."""
    for line in lines:
        sys.stderr.write(f"  WARNING: {line}\n")


@contextmanager
def _vg(name: str, devices: list[str] | None, *, vg_id: str | None = None,
        validate: bool = True) -> Iterator[VolumeGroup]:
    vg = VolumeGroup.open(name, _devices(devices), vg_id=vg_id, validate=validate)
    try:
        _warn(vg.warnings)
        yield vg
    finally:
        vg.close()


def _new_size(spec: str, current: int, *, sign_ok: str) -> int:
    sign = spec[:1] if spec[:1] in "+-" else ""
    if sign and sign not in sign_ok:
        raise LvmError(f"size {spec!r}: '{sign}' makes no sense for this command")
    n = parse_size(spec[1:] if sign else spec)
    return current + n if sign == "+" else current - n if sign == "-" else n


# ----------------------------------------------------------------------------- PV / VG

@lvm_app.command("pvcreate")
def pvcreate_cmd(
    files: Annotated[list[Path], typer.Argument(help="PV file(s) to initialise.")],
    size: Annotated[str | None, typer.Option(
        "--size", help="Create each file with this size (e.g. 1g); without it the file must "
                       "exist.")] = None,
    pvmetadatacopies: Annotated[int, typer.Option(
        help="Metadata areas per PV: 2 (start and end, default) or 1.")] = 2,
) -> None:
    """Initialise files as LVM2 physical volumes (label + metadata areas).

    Example: hvsim lvm pvcreate pv0.img pv1.img --size 1g
    """
    nbytes = parse_size(size) if size is not None else None
    for f in files:
        label = pvcreate(f, size=nbytes, metadata_copies=pvmetadatacopies)
        console.print(f'Physical volume "{f}" successfully created '
                      f'({human(label.device_size)}).')


@lvm_app.command("pvs")
def pvs_cmd(devices: DevicesOpt = None, json_out: JsonOpt = False,
            reportformat: ReportFmtOpt = "basic") -> None:
    """List physical volumes: VG, size and free space.

    Example: hvsim lvm pvs -d ./disks
    """
    rows = []
    found = scan(_devices(devices), writable=False)
    by_uuid: dict[str, list[PvDevice]] = {}
    for dev in found:
        by_uuid.setdefault(dev.uuid, []).append(dev)
    for dev in found:
        best, errors = pv_metadata(dev)
        cands = by_uuid[dev.uuid]
        if len(cands) > 1:  # a copied PV: LVM2's pvs shows the device it uses, and warns
            hint = next((p for m in (pv_metadata(c)[0] for c in cands) if m
                         for p in m.pvs if p.id == dev.uuid), None)
            chosen, reason = prefer_duplicate(hint, cands) if hint else (cands[0], None)
            if chosen is not dev:
                _warn([f"Not using device {dev.path} for PV {dev.uuid}."])
                dev.io.close()
                continue
            _warn([f"PV {dev.uuid} prefers device {dev.path} because {reason}." if reason
                   else f"PV {dev.uuid} is on duplicate devices; none has the name its "
                   "metadata remembers."])
        vg_name, psize, pfree = "", dev.label.device_size, dev.label.device_size
        if best is None and any("damaged header" not in e for e in errors):
            # it may hold a VG we cannot read: never shown as free space
            vg_name, pfree = "[unparsable]", ""
            _warn([e for e in errors if "damaged header" not in e][:1])
        if best is not None:
            vg_name = best.name
            pv = next((p for p in best.pvs if p.id == dev.uuid), None)
            if pv is not None:
                ext = best.extent_size * 512
                psize = pv.pe_count * ext
                pfree = sum(a.count for a in free_areas(best) if a.pv == pv.name) * ext
        rows.append({"pv_name": dev.path, "vg_name": vg_name, "pv_fmt": "lvm2",
                     "pv_size": str(psize), "pv_free": str(pfree), "pv_uuid": dev.uuid})
        dev.io.close()
    _report("pv", rows, ["pv_name", "vg_name", "pv_fmt", "pv_size", "pv_free"],
            json_out or reportformat == "json")


@lvm_app.command("vgcreate")
def vgcreate_cmd(
    vg: Annotated[str, typer.Argument(help="New volume group name.")],
    pvs: Annotated[list[str], typer.Argument(help="Physical volumes (from pvcreate).")],
    physicalextentsize: Annotated[str, typer.Option(
        "--physicalextentsize", "-s", help="Extent size (default 4m).")] = "4m",
) -> None:
    """Create a volume group over physical volumes.

    Example: hvsim lvm vgcreate vg0 pv0.img pv1.img
    """
    with VolumeGroup.create(vg, [str(p) for p in pvs],
                            extent_size=parse_size(physicalextentsize)) as g:
        s = g.summary()
    console.print(f'Volume group "{vg}" successfully created ({human(s.size)}, '
                  f"{s.extent_size >> 20} MiB extents).")


@lvm_app.command("vgs")
def vgs_cmd(vg: Annotated[str | None, typer.Argument(help="Only this VG.")] = None,
            devices: DevicesOpt = None, json_out: JsonOpt = False,
            reportformat: ReportFmtOpt = "basic") -> None:
    """List volume groups: PVs, LVs, snapshots, size, free.

    Example: hvsim lvm vgs --json
    """
    found = list_vg_ids(_devices(devices))
    pairs: list[tuple[str, str | None]] = [(n, i) for n, i in found if vg in (None, n)]
    if vg and not pairs:
        pairs = [(vg, None)]  # not found: say so as the open says it
    rows = []
    for name, vg_uuid in pairs:
        with _vg(name, devices, vg_id=vg_uuid) as g:  # each VG of a shared name, by its UUID
            s = g.summary()
        rows.append({"vg_uuid": g.meta.id, "vg_name": s.name, "pv_count": str(s.pv_count),
                     "lv_count": str(s.lv_count),
                     "snap_count": str(s.snap_count), "vg_attr": "wz--n-",
                     "vg_size": str(s.size), "vg_free": str(s.free), "vg_seqno": str(s.seqno),
                     "vg_extent_size": str(s.extent_size)})
    _report("vg", rows, ["vg_name", "pv_count", "lv_count", "snap_count", "vg_attr", "vg_size",
                         "vg_free"], json_out or reportformat == "json")


@lvm_app.command("vgcfgbackup")
def vgcfgbackup_cmd(
    vg: Annotated[str, typer.Argument(help="Volume group.")],
    file_arg: Annotated[Path | None, typer.Argument(metavar="[FILE]", help="Output file.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Output file.")] = None,
    devices: DevicesOpt = None,
) -> None:
    """Write the VG's metadata as LVM2 text (the format vgcfgbackup/vgcfgrestore use).

    Example: hvsim lvm vgcfgbackup vg0 -f vg0.backup
    """
    out = file or file_arg
    with _vg(vg, devices) as g:
        text = g.backup_text(f"hvsim lvm vgcfgbackup {vg}")
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text)
    console.print(f'Volume group "{vg}" successfully backed up to {out}.')


@lvm_app.command("vgcfgrestore")
def vgcfgrestore_cmd(
    vg: Annotated[str, typer.Argument(help="Volume group.")],
    file: Annotated[Path, typer.Option("--file", "-f", help="Backup file (vgcfgbackup's).")],
    test: Annotated[bool, typer.Option("--test", "-t",
                                       help="Check the file against the PVs; change nothing.")]
    = False,
    devices: DevicesOpt = None,
) -> None:
    """Restore a VG's metadata from a vgcfgbackup file (LV data is not touched).

    Example: hvsim lvm vgcfgrestore vg0 -f vg0.backup
    """
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise LvmError(f"{file}: cannot read ({exc.strerror})") from exc
    try:
        opened = VolumeGroup.open(vg, _devices(devices), validate=False)  # may be what is broken
    except LvmError as exc:
        if "not found" not in str(exc):
            raise
        # no readable copy of the VG's metadata at all: find its PVs by their labels' UUIDs
        opened = VolumeGroup.restore_onto(text, _devices(devices), source=str(file), test=test)
        if opened.name != vg:
            opened.close()
            raise LvmError(f"{file}: describes VG {opened.name}, not {vg}") from exc
    else:
        _warn(opened.warnings)
        try:
            opened.restore(text, source=str(file), test=test)
        except BaseException:
            opened.close()
            raise
    with opened as g:
        if test:
            console.print(f"{file}: valid metadata for VG {vg} on its PVs; nothing changed "
                          "(--test).")
            return
        console.print(f"Restored volume group {vg} (seqno {g.meta.seqno}).")


@lvm_app.command("vgextend")
def vgextend_cmd(
    vg: Annotated[str, typer.Argument(help="Volume group.")],
    pvs: Annotated[list[Path], typer.Argument(help="Physical volumes to add (from pvcreate).")],
    devices: DevicesOpt = None,
) -> None:
    """Add physical volumes to a volume group.

    Example: hvsim lvm vgextend vg0 pv2.img
    """
    with _vg(vg, devices) as g:
        for p in pvs:
            g.vgextend(str(p))
        s = g.summary()
    console.print(f'Volume group "{vg}" successfully extended ({human(s.size)}).')


# ----------------------------------------------------------------------------- LVs

@lvm_app.command("lvcreate")
def lvcreate_cmd(
    vg: Annotated[str, typer.Argument(help="Volume group.")],
    name_arg: Annotated[str | None, typer.Argument(metavar="[NAME]", help="New LV name.")] = None,
    size: Annotated[str, typer.Option("--size", "-L", help="Size (default unit m); for a "
                                      "snapshot, the size of its COW store.")] = "",
    name: Annotated[str | None, typer.Option("--name", "-n", help="New LV name.")] = None,
    extents: Annotated[str, typer.Option(
        "--extents", "-l", help="Size in extents: N, N%FREE, N%VG (or N%ORIGIN with -s).")] = "",
    snapshot: Annotated[str | None, typer.Option(
        "--snapshot", "-s", help="Snapshot this origin LV: COW (needs -L), or thin for a thin "
                                 "origin (no size).")] = None,
    lv_type: Annotated[str, typer.Option(
        "--type", help="linear (default) or thin-pool (with -L).")] = "linear",
    thinpool: Annotated[str | None, typer.Option(
        "--thinpool", "-T", help="Create a thin LV in this pool (with -V).")] = None,
    virtualsize: Annotated[str, typer.Option(
        "--virtualsize", "-V", help="Size of a thin LV (may exceed the pool).")] = "",
    chunksize: Annotated[str, typer.Option(
        "--chunksize", "-c", help="Snapshot chunk size (default 64k).")] = "64k",
    permission: Annotated[str, typer.Option("--permission", "-p", help="rw or r.")] = "rw",
    stripes: Annotated[int, typer.Option("--stripes", "-i",
                                         help="Stripe over this many PVs.")] = 1,
    stripesize: Annotated[str, typer.Option("--stripesize", "-I",
                                            help="Stripe unit (default 64k).")] = "64k",
    devices: DevicesOpt = None,
) -> None:
    """Create a linear LV, a COW or thin snapshot (-s ORIGIN), a thin pool or a thin LV.

    Example: hvsim lvm lvcreate vg0 data -L 100m; hvsim lvm lvcreate vg0 snap -L 20m -s data;
    hvsim lvm lvcreate vg0 pool --type thin-pool -L 1g; hvsim lvm lvcreate vg0 t1 -V 10g -T pool
    """
    lv = name or name_arg
    if permission not in ("rw", "r"):
        raise LvmError("--permission must be rw or r")
    if not lv:
        raise LvmError("lvcreate needs an LV name (NAME or -n)")
    if lv_type not in ("linear", "thin-pool"):
        raise LvmError(f"--type {lv_type}: only linear and thin-pool are supported")
    thin_origin = False
    if snapshot and not size and not extents:
        thin_origin = True
    elif lv_type == "linear" and not thinpool and bool(size) == bool(extents):
        raise LvmError("lvcreate needs one of -L SIZE / -l EXTENTS (or -V SIZE -T POOL)")
    with _vg(vg, devices) as g:
        if thin_origin or thinpool or lv_type == "thin-pool":
            if thinpool:
                if not virtualsize:
                    raise LvmError("a thin LV needs --virtualsize/-V")
                g.lvcreate_thin(lv, parse_size(virtualsize), thinpool.split("/")[-1],
                                read_only=permission == "r")
            elif lv_type == "thin-pool":
                if not size:
                    raise LvmError("a thin pool needs -L SIZE")
                g.lvcreate_thin_pool(lv, parse_size(size), chunk_size=parse_size(chunksize))
            else:
                if g.thin_segment(snapshot) is None:  # type: ignore[arg-type]
                    raise LvmError(f"{vg}/{snapshot} is not a thin LV: a COW snapshot needs -L")
                g.lvcreate(lv, 0, snapshot_of=snapshot)
            console.print(f'Logical volume "{lv}" created ({human(g.lv_size(lv))}).')
            return
        want = parse_size(size) if size else _extents(g, extents, snapshot)
        g.lvcreate(lv, want, snapshot_of=snapshot,
                   chunk_size=parse_size(chunksize), read_only=permission == "r",
                   stripes=stripes, stripe_size=parse_size(stripesize, default_unit="k"))
        actual = g.lv_size(lv)
    if actual != want:
        console.print(f"Rounding up size to full physical extent {human(actual)}.")
    console.print(f'Logical volume "{lv}" created ({human(actual)}).')


@lvm_app.command("lvextend")
def lvextend_cmd(
    lv: Annotated[str, typer.Argument(help="VG/LV")],
    size: Annotated[str, typer.Option("--size", "-L", help="New size, or +SIZE to add.")],
    devices: DevicesOpt = None,
) -> None:
    """Grow a logical volume (contiguously when the next extents are free).

    Example: hvsim lvm lvextend vg0/data -L +50m
    """
    vg, name = _split_lv(lv)
    with _vg(vg, devices) as g:
        old = g.lv_size(name)
        want = _new_size(size, old, sign_ok="+")
        g.lvextend(name, want)
        new = g.lv_size(name)
    if new != want:
        console.print(f"Rounding size to boundary between physical extents: {human(new)}.")
    console.print(f"Size of logical volume {vg}/{name} changed from {human(old)} to "
                  f"{human(new)}.")


@lvm_app.command("lvreduce")
def lvreduce_cmd(
    lv: Annotated[str, typer.Argument(help="VG/LV")],
    size: Annotated[str, typer.Option("--size", "-L", help="New size, or -SIZE to remove.")],
    force: Annotated[bool, typer.Option("--force", "-f",
                                        help="Cut even if the removed part holds data.")] = False,
    devices: DevicesOpt = None,
) -> None:
    """Shrink a logical volume; refused when the cut-off part holds data unless --force.

    Example: hvsim lvm lvreduce vg0/data -L -50m --force
    """
    vg, name = _split_lv(lv)
    with _vg(vg, devices) as g:
        old = g.lv_size(name)
        g.lvreduce(name, _new_size(size, old, sign_ok="-"), force=force)
        new = g.lv_size(name)
    console.print(f"Size of logical volume {vg}/{name} changed from {human(old)} to "
                  f"{human(new)}.")


@lvm_app.command("lvrename")
def lvrename_cmd(
    vg: Annotated[str, typer.Argument(help="Volume group.")],
    old: Annotated[str, typer.Argument(help="Current LV name.")],
    new: Annotated[str, typer.Argument(help="New LV name.")],
    devices: DevicesOpt = None,
) -> None:
    """Rename a logical volume.

    Example: hvsim lvm lvrename vg0 data data2
    """
    with _vg(vg, devices) as g:
        g.lvrename(old, new)
    console.print(f'Renamed "{old}" to "{new}" in volume group "{vg}".')


@lvm_app.command("lvremove")
def lvremove_cmd(
    lvs: Annotated[list[str], typer.Argument(help="VG/LV ...")],
    force: Annotated[bool, typer.Option("--force", "-f",
                                        help="Also remove an origin's snapshots.")] = False,
    devices: DevicesOpt = None,
) -> None:
    """Remove logical volumes (extents freed; zeroed when reused, so vgcfgrestore can undo).

    Example: hvsim lvm lvremove vg0/snap
    """
    for path in lvs:
        vg, name = _split_lv(path)
        with _vg(vg, devices) as g:
            g.lvremove(name, force=force)
        console.print(f'Logical volume "{name}" successfully removed.')


@lvm_app.command("lvconvert")
def lvconvert_cmd(
    lv: Annotated[str, typer.Argument(help="VG/SNAPSHOT")],
    merge: Annotated[bool, typer.Option("--merge", help="Merge the snapshot into its origin.")]
    = False,
    devices: DevicesOpt = None,
) -> None:
    """Merge a COW snapshot back into its origin (the origin returns to the snapshot's view).

    Example: hvsim lvm lvconvert --merge vg0/snap
    """
    if not merge:
        raise LvmError("only lvconvert --merge is supported")
    vg, name = _split_lv(lv)
    with _vg(vg, devices) as g:
        n = g.merge_snapshot(name)
    console.print(f"Merged {n} chunks of {vg}/{name} into its origin; snapshot removed.")


def _extents(g: VolumeGroup, spec: str, origin: str | None) -> int:
    """`-l` as LVM2 reads it: N extents, or N% of FREE / VG / ORIGIN; returns bytes."""
    m = re.fullmatch(r"(\d+)(?:%(FREE|VG|ORIGIN))?", spec.strip().upper())
    if not m:
        raise LvmError(f"invalid extents {spec!r} (examples: 25, 100%FREE, 50%VG, 20%ORIGIN)")
    n, base = int(m.group(1)), m.group(2)
    if base is None:
        return n * g.extent_bytes
    if base == "ORIGIN" and origin is None:
        raise LvmError("-l N%ORIGIN needs --snapshot ORIGIN")
    total = {"FREE": free_extents(g.meta), "VG": sum(p.pe_count for p in g.meta.pvs),
             "ORIGIN": g.meta.lv(origin).extent_count if origin else 0}[base]
    count = total * n // 100
    if count < 1:
        raise LvmError(f"-l {spec}: that is less than one extent")
    return count * g.extent_bytes


def _lv_attr(g: VolumeGroup, name: str) -> tuple[str, str, str]:
    lv = g.meta.lv(name)
    perm = "w" if "WRITE" in lv.status else "r"
    if g.pool_segment(name) is not None:
        tp = g.pool(name)
        return f"t{perm}i-a-tz--", "", f"{100 * tp.used_chunks / max(1, tp.total_chunks):.2f}"
    tseg = g.thin_segment(name)
    if tseg is not None:
        tp = g.pool(tseg.thin_pool)
        virt = -(-g.lv_size(name) // tp.chunk)
        pct = 100 * tp.mapped_chunks(tseg.device_id) / max(1, virt)
        return f"V{perm}i-a-tz--", tseg.origin, f"{pct:.2f}"
    seg = g.snapshot_segment(name)
    if seg is not None:
        valid, pct = g.snapshot_status(name)
        return (f"s{perm}i-{'a' if valid else 'I'}-s---", seg.origin, f"{pct:.2f}")
    if g.snapshots_of(name):
        return f"o{perm}i-a-s---", "", ""
    return f"-{perm}i-a-----", "", ""


@lvm_app.command("lvs")
def lvs_cmd(vg: Annotated[str | None, typer.Argument(help="Only this VG.")] = None,
            devices: DevicesOpt = None, json_out: JsonOpt = False,
            reportformat: ReportFmtOpt = "basic",
            all_lvs: Annotated[bool, typer.Option(
                "--all", "-a", help="Also internal LVs, in \\[brackets] (snapshotN).")] = False,
            ) -> None:
    """List logical volumes: attributes, size, snapshot origin and fullness (Data%).

    Example: hvsim lvm lvs vg0 --json
    """
    pairs: list[tuple[str, str | None]] = [
        (n, i) for n, i in list_vg_ids(_devices(devices)) if vg in (None, n)] or \
        ([(vg, None)] if vg else [])
    rows = []
    for vname, vg_uuid in pairs:
        with _vg(vname, devices, vg_id=vg_uuid) as g:
            for lv in g.meta.lvs:
                name = lv.name
                if not g.meta.lv_visible(lv):
                    if all_lvs:
                        rows.append({"lv_name": f"[{name}]", "vg_name": vname,
                                     "lv_attr": "vwi-a-----" if "snapshot" in
                                     {s.type for s in lv.segments} else "-wi-a-----",
                                     "lv_size": str(lv.extent_count * g.extent_bytes),
                                     "origin": "", "pool_lv": "", "data_percent": "",
                                     "lv_uuid": lv.id, "seg_count": str(len(lv.segments))})
                    continue
                attr, origin, pct = _lv_attr(g, name)
                tseg = g.thin_segment(name)
                rows.append({"lv_name": name, "vg_name": vname, "lv_attr": attr,
                             "lv_size": str(g.lv_size(name)), "origin": origin,
                             "pool_lv": tseg.thin_pool if tseg else "",
                             "data_percent": pct, "lv_uuid": g.meta.lv(name).id,
                             "seg_count": str(len(g.meta.lv(name).segments))})
    _report("lv", rows, ["lv_name", "vg_name", "lv_attr", "lv_size", "pool_lv", "origin",
                         "data_percent"],
            json_out or reportformat == "json")


_HEADINGS = {"pv_name": "PV", "vg_name": "VG", "pv_fmt": "Fmt", "pv_size": "PSize",
             "pv_free": "PFree", "pv_count": "#PV", "lv_count": "#LV", "snap_count": "#SN",
             "vg_attr": "Attr", "vg_size": "VSize", "vg_free": "VFree", "lv_name": "LV",
             "lv_attr": "Attr", "lv_size": "LSize", "origin": "Origin", "data_percent": "Data%",
             "pool_lv": "Pool"}
_SIZES = {"pv_size", "pv_free", "vg_size", "vg_free", "lv_size"}


def _report(kind: str, rows: list[dict[str, str]], cols: list[str], as_json: bool) -> None:
    """LVM2-shaped report: `{"report": [{"lv": [...]}]}` with sizes in bytes, or a table."""
    if as_json:
        sys.stdout.write(json.dumps({"report": [{kind: rows}]}, indent=2) + "\n")
        return
    cells = [[human(int(r[c])) if c in _SIZES and r[c] else r[c] for c in cols] for r in rows]
    if not console.is_terminal:  # plain aligned text: nothing cut, easy to grep and awk
        heads = [_HEADINGS[c] for c in cols]
        widths = [max(len(x) for x in [h] + [row[i] for row in cells])
                  for i, h in enumerate(heads)]
        for line in [heads, *cells]:
            sys.stdout.write("  ".join(x.rjust(w) if c in _SIZES else x.ljust(w)
                                       for x, w, c in zip(line, widths, cols, strict=True))
                             .rstrip() + "\n")
        return
    table = Table(box=None, pad_edge=False)
    for c in cols:
        table.add_column(_HEADINGS[c], justify="right" if c in _SIZES else "left",
                         no_wrap=True)
    for row in cells:
        table.add_row(*row)
    console.print(table)


# ----------------------------------------------------------------------------- data

_COPY = 4 << 20


@lvm_app.command("lvread")
def lvread_cmd(
    lv: Annotated[str, typer.Argument(help="VG/LV")],
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="File to write (default stdout).")] = None,
    offset: Annotated[str, typer.Option(help="Start (bytes, or with a unit).")] = "0b",
    length: Annotated[str | None, typer.Option(help="How much (default: to the end).")] = None,
    devices: DevicesOpt = None,
) -> None:
    """Read an LV's contents (a snapshot reads its frozen view).

    Example: hvsim lvm lvread vg0/snap -o snap.raw
    """
    vg, name = _split_lv(lv)
    start = parse_size(offset, default_unit="b")
    with _vg(vg, devices) as g:
        dev = g.open_lv(name)
        n = dev.size - start if length is None else parse_size(length, default_unit="b")
        if start < 0 or n < 0 or start + n > dev.size:
            raise LvmError(f"{vg}/{name}: range {start}+{n} outside the LV's {dev.size} bytes")
        with open_output(output) as sink, progress_bar(disable=n < (64 << 20)) as prog:
            task = prog.add_task(f"reading {vg}/{name}", total=n)
            pos = 0
            while pos < n:
                k = min(_COPY, n - pos)
                sink.write(dev.read(start + pos, k))
                pos += k
                prog.advance(task, k)


@lvm_app.command("lvwrite")
def lvwrite_cmd(
    lv: Annotated[str, typer.Argument(help="VG/LV")],
    input_file: Annotated[Path | None, typer.Option(
        "--input", "-i", help="File to write into the LV (default stdin).")] = None,
    offset: Annotated[str, typer.Option(help="Where to write (bytes, or with a unit).")] = "0b",
    devices: DevicesOpt = None,
) -> None:
    """Write data into an LV at an offset (origin writes preserve its snapshots' view).

    Example: hvsim lvm lvwrite vg0/data -i disk.raw --offset 1m
    """
    vg, name = _split_lv(lv)
    start = parse_size(offset, default_unit="b")
    total = input_size(input_file)
    with open_input(input_file) as src, _vg(vg, devices) as g:
        if g.write_block:  # duplicate PVs and none can be told to be the real one
            raise LvmError(g.write_block)
        dev = g.open_lv(name, write_lock=True)
        if total is not None and start + total > dev.size:
            raise LvmError(f"{vg}/{name}: {total} bytes at {start} do not fit in the LV's "
                           f"{dev.size} bytes")
        pos = start
        with progress_bar(disable=(total or 0) < (64 << 20)) as prog:
            task = prog.add_task(f"writing {vg}/{name}", total=total)
            while chunk := src.read(_COPY):
                dev.write(pos, chunk)
                pos += len(chunk)
                prog.advance(task, len(chunk))
        dev.close()
    console.print(f"Wrote {pos - start} bytes to {vg}/{name} at offset {start}.")


def register(app: typer.Typer) -> None:
    """Add `hvsim lvm ...` to the root app."""
    app.add_typer(lvm_app, name="lvm")
