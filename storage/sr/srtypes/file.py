"""The `file` SR type: each VDI is a VHD file `<uuid>.vhd` in the SR directory (XenServer's
"ext"/"nfs" SRs). Base copies are the hidden parents of differencing VHDs.
"""
from __future__ import annotations

import contextlib
import os
import re
import uuid as uuidlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from storage.devices.blockdev import BlockDevice
from storage.devices.imagelock import ImageLockedError
from storage.devices.rawio import FileIO
from storage.errors import SrError, StorageError
from storage.sr.sr import VDI, SRDriver, Volume, register_sr_type
from storage.vhd import chain
from storage.vhd import format as fmt
from storage.vhd.image import VhdImage

VOLUME_RE = re.compile(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.vhd")


@register_sr_type
class FileSRDriver(SRDriver):
    """VDIs as VHD files in a directory."""

    type_name = "file"
    max_depth = chain.DEFAULT_MAX_DEPTH
    block_size = fmt.DEFAULT_BLOCK_SIZE

    def _path(self, location: str) -> Path:
        return self.sr.path / location

    def vdi_create(self, vdi: VDI, size: int) -> None:
        """A dynamic VHD of `size` (rounded up to a CHS geometry, like qemu-img)."""
        vdi.location = f"{vdi.uuid}.vhd"
        img = chain.create_image(self._path(vdi.location), size=size,
                                 block_size=self.block_size, barriers=self.sr.sync)
        vdi.virtual_size = img.size
        img.close()

    def vdi_open(self, vdi: VDI, *, read_only: bool) -> BlockDevice:
        """The VDI's chain, opened through its locators."""
        return chain.open_chain(self._path(vdi.location), read_only=read_only,
                                max_depth=self.max_depth, barriers=self.sr.sync)

    def vdi_snapshot(self, vdi: VDI, copies: list[VDI]) -> list[VDI]:
        """Rename the VDI's file to a hidden base copy; the VDI and the copies become children."""
        depth = self.sr.chain_depth(vdi.uuid) + 1
        if depth > self.max_depth:
            raise SrError(f"VDI {vdi.uuid}: a snapshot would make its chain {depth} deep (limit "
                          f"{self.max_depth}); run `hvsim sr gc` first")
        base = VDI(uuid=str(uuidlib.uuid4()), name_label="base copy",
                   virtual_size=vdi.virtual_size, read_only=True, hidden=True,
                   parent=vdi.parent)
        base.location = f"{base.uuid}.vhd"
        for c in copies:
            c.location = f"{c.uuid}.vhd"
            c.parent = base.uuid
        self.sr.begin({"op": "snapshot", "vdi": vdi.uuid, "base": asdict(base),
                       "copies": [asdict(c) for c in copies]})
        vpath, bpath = self._path(vdi.location), self._path(base.location)
        staged = [(Path(f"{vpath}.new"), vpath)] + [(self._path(c.location),) * 2 for c in copies]
        src = chain.open_image(vpath, read_only=True)   # the leaf alone: O(1) in chain depth
        try:
            for tmp, final in staged:
                img = VhdImage.create(FileIO(tmp, create=True), disk_type="differencing",
                                      parent=src, parent_path=str(bpath), path=str(final))
                img.parent = None
                img.close()
        finally:
            src.close()
        os.rename(vpath, bpath)
        os.rename(f"{vpath}.new", vpath)
        vdi.parent = base.uuid
        return [base]

    def vdi_destroy(self, vdi: VDI) -> None:
        """Delete the VDI's file."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(vdi.location))

    def vdi_resize(self, vdi: VDI, size: int) -> int:
        """Resize the leaf VHD."""
        return chain.resize(self._path(vdi.location), size, barriers=self.sr.sync)

    def vdi_coalesce(self, parent: VDI, child: VDI, grandchildren: list[VDI]) -> None:
        """Merge the child VHD into the parent VHD (journaled), then drop the redundant file."""
        ppath, cpath = self._path(parent.location), self._path(child.location)
        chain.coalesce(cpath, children=[str(self._path(g.location)) for g in grandchildren],
                       siblings=[], force=True, barriers=self.sr.sync,
                       remove_child=False)
        assert self.sr.pending is not None
        self.sr.pending["phase"] = "merged"
        self.sr.save()
        self._finish_coalesce_files(ppath, cpath, leaf=not child.hidden)

    @staticmethod
    def _finish_coalesce_files(ppath: Path, cpath: Path, *, leaf: bool) -> None:
        if leaf:
            if ppath.exists():
                os.replace(ppath, cpath)      # the merged parent takes the leaf's name
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cpath)

    def physical_utilisation(self, vdi: VDI) -> int:
        """The VHD file's size."""
        try:
            return os.stat(self._path(vdi.location)).st_size
        except FileNotFoundError:
            return 0

    def recover(self, pending: dict[str, Any]) -> None:
        """Finish (or, before any file changed, roll back) an interrupted snapshot/coalesce."""
        sr = self.sr
        if pending.get("op") == "snapshot":
            vdi = sr.vdis[pending["vdi"]]
            base = VDI(**pending["base"])
            copies = [VDI(**c) for c in pending["copies"]]
            vpath, bpath = self._path(vdi.location), self._path(base.location)
            if not bpath.exists():            # the rename never happened: undo the staging
                for p in [Path(f"{vpath}.new")] + [self._path(c.location) for c in copies]:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
                return
            if Path(f"{vpath}.new").exists():
                os.rename(f"{vpath}.new", vpath)
            vdi.parent = base.uuid
            sr.vdis[base.uuid] = base
            for c in copies:
                sr.vdis[c.uuid] = c
        elif pending.get("op") == "coalesce":
            ppath = self._path(pending["parent_location"])
            cpath = self._path(pending["child_location"])
            journal_was_there = os.path.exists(chain._journal_path(str(ppath)))
            chain.recover(sr.path)
            if pending.get("phase") == "merged" or journal_was_there:
                self._finish_coalesce_files(ppath, cpath, leaf=pending["leaf"])
                sr.finish_coalesce(pending["parent"], pending["child"])

    def list_volumes(self) -> list[str]:
        """Every `<uuid>.vhd` file in the SR directory."""
        return sorted(p.name for p in self.sr.path.iterdir() if VOLUME_RE.fullmatch(p.name))

    def in_use(self, vdis: list[VDI]) -> list[str]:
        """VHD files another process has open (a writer's lock, or a reader's: a child's
        writer holds its parents for reading), probed with a writer's image lock."""
        out = []
        for v in vdis:
            try:
                FileIO(self._path(v.location), writable=True).close()
            except ImageLockedError as exc:
                out.append(str(exc))
            except StorageError:
                continue
        return out

    def ignored_volumes(self) -> list[str]:
        """VHD files in the SR directory not named `<uuid>.vhd` (XenServer's file SRs ignore
        them too: a VDI's uuid is its file name)."""
        return [f"{p.name}, not named <uuid>.vhd" for p in sorted(self.sr.path.iterdir())
                if p.name.lower().endswith(".vhd") and not VOLUME_RE.fullmatch(p.name)]

    def probe_volume(self, location: str) -> Volume:
        """Open the VHD (with its chain, to find its parent's record)."""
        m = VOLUME_RE.fullmatch(location)
        assert m is not None
        vol = Volume(location=location, uuid=m.group(1))
        try:
            img = chain.open_chain(self._path(location), read_only=True,
                                   max_depth=self.max_depth)
        except (StorageError, OSError) as exc:
            vol.error = str(exc)
            return vol
        try:
            vol.virtual_size = img.size
            vol.has_data = img.disk_type == "fixed" or img.allocated_blocks > 0
            if img.parent is not None:
                ploc = Path(img.parent.name).name
                owners = [v.uuid for v in self.sr.vdis.values() if v.location == ploc]
                if not owners:
                    vol.error = f"its parent {ploc} is not a VDI of this SR"
                    vol.parent_unrecorded = True
                else:
                    vol.parent = owners[0]
        finally:
            img.close()
        return vol
