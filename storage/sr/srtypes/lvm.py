"""The `lvm` SR type: each VDI is a raw logical volume `LV-<uuid>` in VG `VG_XenStorage-<sr>`.

This is XenServer's plain LVM SR (the seed's "a VDI ends up being a Logical Volume in a Volume
Group; supports resizing"). Snapshots and clones are LVM COW snapshots of the VDI's LV (their
COW store is sized so it can never fill); an LV with snapshots cannot be resized or destroyed
until they are gone, as in LVM2. There are no hidden base copies, so `gc` has nothing to do.

The VG's PVs are files (or block devices) named when the SR is created: `--size SIZE` makes
`pv0.img` in the SR directory; `--device-config device=PATH[,PATH...]` uses (and initialises)
the given ones. Where they are is kept in `lvm.json` next to `sr.json`.

`LvmBackedDriver` holds what the `lvhd` type shares: VG naming, PV setup, one VG handle per SR.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from storage.devices.blockdev import BlockDevice
from storage.errors import LvmError, SrError
from storage.lvm import VolumeGroup, pvcreate
from storage.lvm.cow import DEFAULT_CHUNK_SECTORS
from storage.lvm.units import parse_size
from storage.sr.sr import VDI, SRDriver, Volume, register_sr_type
from storage.vhd.chain import write_json_atomic

VG_PREFIX = "VG_XenStorage-"
CONFIG_FILE = "lvm.json"
PV_FILE = "pv0.img"
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class LvmBackedDriver(SRDriver):
    """Shared by `lvm` and `lvhd`: the SR's volume group and the PVs under it."""

    lv_prefix = "LV-"

    def __init__(self, sr: Any) -> None:
        super().__init__(sr)
        self._vg: VolumeGroup | None = None

    @property
    def vg_name(self) -> str:
        """`VG_XenStorage-<sr uuid>`, as XenServer names it."""
        return f"{VG_PREFIX}{self.sr.uuid}"

    def lv_name(self, vdi_uuid: str) -> str:
        """The LV that holds a VDI's volume."""
        return f"{self.lv_prefix}{vdi_uuid}"

    def in_use(self, vdis: list[VDI]) -> list[str]:
        """The VDIs whose LV a writer holds open (its LV write lock), here or in another
        process: sr scan's coalesce leaves them alone, as for file SRs' image locks."""
        out = []
        for v in vdis:
            if self.vg.meta.has_lv(v.location):
                why = self.vg.lv_writer_elsewhere(v.location)
                if why is not None:
                    out.append(why)
        return out

    def _devices(self) -> list[str]:
        cfg_path = Path(self.sr.path) / CONFIG_FILE
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            return [str(Path(self.sr.path) / d) for d in cfg["devices"]]
        except FileNotFoundError:
            raise SrError(f"{self.sr.path}: {CONFIG_FILE} is missing: the SR does not say where "
                          "its physical volumes are") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise SrError(f"{cfg_path}: malformed ({exc})") from exc

    def create_sr(self, device_config: dict[str, str]) -> None:
        """pvcreate the SR's devices (or a `pv0.img` of `size`) and vgcreate its VG."""
        base = Path(self.sr.path)
        if device_config.get("device"):
            paths = [p for p in device_config["device"].split(",") if p]
            for p in paths:
                pvcreate(p)
        elif device_config.get("size"):
            size = parse_size(device_config["size"], default_unit="b")
            paths = [str(base / PV_FILE)]
            pvcreate(paths[0], size=size)
        else:
            raise SrError(f"an {self.type_name} SR needs a size (--size 10G) or devices "
                          "(--device-config device=PATH[,PATH])")
        vg = VolumeGroup.create(self.vg_name, paths, description=f"hvsim sr create {base}")
        vg.close()
        rel = [os.path.relpath(os.path.abspath(p), os.path.abspath(base)) for p in paths]
        write_json_atomic(base / CONFIG_FILE, {"vg": self.vg_name, "devices": rel})

    def introduce_sr(self, device_config: dict[str, str]) -> None:
        """Use the SR's existing VG: its PVs from `device` (or the directory's `lvm.json`),
        checked to hold `VG_XenStorage-<sr uuid>`; nothing on them is changed."""
        base = Path(self.sr.path)
        if device_config.get("device"):
            paths = [p for p in device_config["device"].split(",") if p]
            rel = [os.path.relpath(os.path.abspath(p), os.path.abspath(base)) for p in paths]
            write_json_atomic(base / CONFIG_FILE, {"vg": self.vg_name, "devices": rel})
        self.close()
        try:
            _ = self.vg
        except (LvmError, SrError) as exc:
            raise SrError(f"{base}: cannot open VG {self.vg_name}: {exc}") from exc

    @property
    def vg(self) -> VolumeGroup:
        """The SR's VG, opened once per SR object (so open devices see every change) and
        re-read when another process (another SR object) committed to it since."""
        if self._vg is None:
            self._vg = VolumeGroup.open(self.vg_name, self._devices())
        else:
            self._vg.refresh()
        return self._vg

    def attach(self) -> None:
        """Check the VG opens on its PVs."""
        _ = self.vg

    def close(self) -> None:
        """Close the VG (its PV files); a later operation re-opens it."""
        if self._vg is not None:
            vg, self._vg = self._vg, None
            vg.close()

    def list_volumes(self) -> list[str]:
        """Every visible `<prefix><uuid>` LV of the SR's VG."""
        pat = re.compile(re.escape(self.lv_prefix) + UUID_RE)
        return sorted(n for n in self.vg.lv_names() if pat.fullmatch(n))

    def physical_utilisation(self, vdi: VDI) -> int:
        """The LV's size."""
        try:
            return self.vg.lv_size(vdi.location)
        except LvmError:
            return 0


class ReadOnlyDevice:
    """A BlockDevice view that refuses writes (a writable LV attached RO)."""

    def __init__(self, dev: BlockDevice) -> None:
        self._dev = dev

    @property
    def size(self) -> int:
        """The underlying size."""
        return self._dev.size

    @property
    def read_only(self) -> bool:
        """Always True."""
        return True

    def read(self, offset: int, length: int) -> bytes:
        """Read through."""
        return self._dev.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        """Refused."""
        raise SrError("VDI is attached read-only")

    def flush(self) -> None:
        """Nothing to flush."""

    def discard(self, offset: int, length: int) -> None:
        """Refused."""
        raise SrError("VDI is attached read-only")

    def close(self) -> None:
        """Close the underlying device."""
        self._dev.close()


def cow_store_size(origin_size: int, chunk: int = DEFAULT_CHUNK_SECTORS * 512) -> int:
    """A COW store that holds a copy of every origin chunk: it can never overflow."""
    chunks = -(-origin_size // chunk)
    per_area = chunk // 16
    areas = -(-chunks // per_area)
    return (1 + areas + chunks) * chunk


@register_sr_type
class LvmSRDriver(LvmBackedDriver):
    """VDIs as raw LVs; snapshots and clones as LVM COW snapshots."""

    type_name = "lvm"

    def vdi_create(self, vdi: VDI, size: int) -> None:
        """A linear LV of `size` rounded up to whole extents."""
        vdi.location = self.lv_name(vdi.uuid)
        self.vg.lvcreate(vdi.location, size)
        vdi.virtual_size = self.vg.lv_size(vdi.location)

    def vdi_open(self, vdi: VDI, *, read_only: bool) -> BlockDevice:
        """The LV (a snapshot's frozen view for snapshot VDIs)."""
        dev = self.vg.open_lv(vdi.location, write_lock=not read_only)
        return ReadOnlyDevice(dev) if read_only and not dev.read_only else dev

    def vdi_snapshot(self, vdi: VDI, copies: list[VDI]) -> list[VDI]:
        """Each copy is a COW snapshot LV of the VDI's LV (no base copies)."""
        if self.vg.snapshot_segment(vdi.location) is not None:
            raise SrError(f"VDI {vdi.uuid} is itself an LVM snapshot; LVM cannot snapshot a "
                          "snapshot (use an lvhd SR for snapshot chains)")
        done: list[str] = []
        try:
            for c in copies:
                c.location = self.lv_name(c.uuid)
                self.vg.lvcreate(c.location, cow_store_size(vdi.virtual_size),
                                 snapshot_of=vdi.location)
                done.append(c.location)
        except BaseException:
            for name in done:
                self.vg.lvremove(name)
            raise
        return []

    def _snapshot_vdis(self, vdi: VDI) -> list[str]:
        names = set(self.vg.snapshots_of(vdi.location))
        return [v.uuid for v in self.sr.vdis.values() if v.location in names]

    def vdi_destroy(self, vdi: VDI) -> None:
        """lvremove (refused while LVM snapshots of it exist: they read through it)."""
        if not self.vg.meta.has_lv(vdi.location):
            return
        snaps = self._snapshot_vdis(vdi)
        if snaps:
            raise SrError(f"VDI {vdi.uuid} has LVM snapshots that read through it "
                          f"({', '.join(snaps)}); destroy them first")
        self.vg.lvremove(vdi.location)

    def vdi_resize(self, vdi: VDI, size: int) -> int:
        """lvextend, or lvreduce when the cut part holds no data; returns the LV size."""
        cur = self.vg.lv_size(vdi.location)
        want = -(-size // self.vg.extent_bytes) * self.vg.extent_bytes
        try:
            if want > cur:
                self.vg.lvextend(vdi.location, size)
            elif want < cur:
                self.vg.lvreduce(vdi.location, size)
        except LvmError as exc:
            raise SrError(f"VDI {vdi.uuid}: {exc}") from exc
        return self.vg.lv_size(vdi.location)

    def probe_volume(self, location: str) -> Volume:
        """A snapshot LV names its origin; a plain LV holds data unless it reads all zeros
        (LVM does not zero new extents, so that takes reading it, stopping at the first data)."""
        vol = Volume(location=location, uuid=location[len(self.lv_prefix):])
        try:
            seg = self.vg.snapshot_segment(location)
            if seg is not None:
                origin = next((o for o in self.vg.lv_names()
                               if location in self.vg.snapshots_of(o)), None)
                owners = [v.uuid for v in self.sr.vdis.values() if v.location == origin]
                vol.snapshot_of = owners[0] if owners else None
                vol.parent_unrecorded = origin is not None and not owners
            dev = self.vg.open_lv(location)
            try:
                vol.virtual_size, vol.read_only = dev.size, dev.read_only
                if seg is None:
                    vol.has_data = False
                    step = 4 << 20
                    for off in range(0, dev.size, step):
                        if dev.read(off, min(step, dev.size - off)).strip(b"\0"):
                            vol.has_data = True
                            break
            finally:
                dev.close()
        except (LvmError, SrError, OSError) as exc:
            vol.error = str(exc)
        return vol

    def vdi_coalesce(self, parent: VDI, child: VDI, grandchildren: list[VDI]) -> None:
        """Never needed: an lvm SR has no base copies."""
        raise SrError("an lvm SR has no base copies to coalesce")
