"""Disks named by a short text, as command lines and topology files name them.

    mem:64M                      a MemoryDisk of that size
    lvm:VG/LV:PV[,PV...]         a logical volume (or COW snapshot) of a VG on those PV files
    path/to/disk.vhd             a VHD with its whole chain of parents
    path/to/disk.raw             any other file: a raw image

Relative paths resolve against `base_dir` when one is given (a topology file's directory).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from storage.devices.blockdev import BlockDevice, DelegatingDisk
from storage.errors import StorageError
from storage.units import parse_size as _parse_size


def parse_size(text: str) -> int:
    """'64M' → 67108864 (K/M/G/T are powers of 1024)."""
    return _parse_size(text)


class LvDisk(DelegatingDisk):
    """An LV as a BlockDevice that also closes its volume group."""

    def __init__(self, vg: object, dev: BlockDevice) -> None:
        super().__init__(dev)
        self._vg = vg
        self.name = getattr(dev, "name", "lv")

    def close(self) -> None:
        """Close the LV, then its VG."""
        try:
            self._dev.close()
        finally:
            self._vg.close()  # type: ignore[attr-defined]


def _path(text: str, base_dir: str | os.PathLike[str] | None) -> str:
    p = Path(text).expanduser()
    if base_dir is not None and not p.is_absolute():
        p = Path(base_dir) / p
    return str(p)


def open_disk(spec: str, *, read_only: bool,
              base_dir: str | os.PathLike[str] | None = None) -> BlockDevice:
    """Open the disk `spec` names (see the module docstring)."""
    from storage.devices.memdisk import MemoryDisk, RawFileDisk

    if spec.startswith("mem:"):
        return MemoryDisk(parse_size(spec[4:]), read_only=read_only, name=spec)
    if spec.startswith("lvm:"):
        from storage.lvm.vg import VolumeGroup

        m = re.fullmatch(r"lvm:([^/:]+)/([^/:]+):(.+)", spec)
        if not m:
            raise StorageError(f"{spec}: expected lvm:VG/LV:PV[,PV...]")
        pvs = [_path(p, base_dir) for p in m.group(3).split(",")]
        vg = VolumeGroup.open(m.group(1), pvs, writable=not read_only)
        try:
            return LvDisk(vg, vg.open_lv(m.group(2), write_lock=not read_only))
        except BaseException:
            vg.close()
            raise
    path = _path(spec, base_dir)
    if spec.lower().endswith(".vhd"):
        from storage.vhd.chain import open_chain

        return open_chain(path, read_only=read_only)
    if not Path(path).exists():
        raise StorageError(f"{path}: no such file (use mem:64M for a memory disk)")
    return RawFileDisk(path, read_only=read_only)
