"""The `lvhd` SR type: XenServer's VHD-on-LVM. Each volume is a VHD inside an LV `VHD-<uuid>`.

The VHD code is the file SR's (`storage.vhd.image.VhdImage`), reached through a RawIO view of
the LV that behaves like the VHD's file: its length is the VHD's, and the LV grows under it
when a block is appended. As in XenServer:

- a writable leaf is *inflated*: its LV is sized for the fully allocated VHD, so guest writes
  never need an LVM metadata change;
- hidden base copies and snapshots nobody writes are *deflated*: the LV is cut to the extent
  holding the VHD's last byte (the footer);
- snapshot and clone rename the VDI's LV to the base copy (`VHD-<base>`), then create empty
  differencing children for the VDI (same uuid) and each copy; `gc` coalesces as in the file SR.

Inside a larger LV the VHD's end-of-file footer is not at the LV's end; the VHD code then reads
its footer copy at offset 0 (as blktap does for LVHD) and finds where the data ends.
Multi-step changes go through the SR's `pending` record; `recover` finishes or undoes them.
Space is checked before a snapshot, clone or coalesce starts (XenServer's LVHDSR refuses with
SRNoSpace, "There is insufficient space"); a snapshot that still runs out half-way is rolled
back, which needs no free extents, so a full VG never wedges the SR.
"""
from __future__ import annotations

import uuid as uuidlib
from dataclasses import asdict
from typing import Any

from storage.devices.blockdev import BlockDevice
from storage.errors import ChainError, LvmError, SrError, StorageError
from storage.lvm.alloc import InsufficientSpace, free_extents
from storage.lvm.device import LvRawIO
from storage.sr.sr import VDI, Volume, register_sr_type
from storage.sr.srtypes.lvm import LvmBackedDriver
from storage.vhd import format as fmt
from storage.vhd.chain import DEFAULT_MAX_DEPTH
from storage.vhd.image import VhdImage

LOCATOR_SLACK = 8 * 512  # room for a differencing VHD's parent locators


def full_vhd_size(virtual_size: int, block_size: int = fmt.DEFAULT_BLOCK_SIZE) -> int:
    """Bytes a dynamic/differencing VHD of `virtual_size` takes when every block is allocated."""
    vsize = fmt.round_to_geometry(virtual_size)[0]
    blocks = -(-vsize // block_size)
    bitmap = -(-(-(-block_size // 512) // 8) // 512) * 512
    return (fmt.BAT_OFFSET + fmt.bat_bytes(blocks) + LOCATOR_SLACK
            + blocks * (bitmap + block_size) + 512)


class LvhdDevice:
    """The opened chain of an LVHD VDI; closing a snapshot VDI deflates it again.

    When a snapshot or coalesce changes the VDI's chain while it is open (a plugged VBD), the
    driver pauses it and swaps in the new chain, as XenServer pauses and reopens a tapdisk.
    """

    def __init__(self, vdi_uuid: str, image: VhdImage, on_close: Any = None) -> None:
        self.vdi_uuid = vdi_uuid
        self.image = image
        self._on_close = on_close
        self.closed = False

    def swap(self, image: VhdImage) -> None:
        """Continue on a freshly opened chain (the old one was flushed before the change)."""
        old, self.image = self.image, image
        old.close()

    @property
    def size(self) -> int:
        """Virtual size."""
        return self.image.size

    @property
    def read_only(self) -> bool:
        """Whether writes are refused."""
        return self.image.read_only

    def read(self, offset: int, length: int) -> bytes:
        """Read through the chain."""
        return self.image.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        """Write into the leaf VHD."""
        self.image.write(offset, data)

    def flush(self) -> None:
        """Flush the leaf."""
        self.image.flush()

    def discard(self, offset: int, length: int) -> None:
        """Discard in the leaf VHD."""
        self.image.discard(offset, length)

    def close(self) -> None:
        """Close the chain (and deflate an unused snapshot); idempotent."""
        self.closed = True
        try:
            self.image.close()
        finally:
            if self._on_close is not None:
                cb, self._on_close = self._on_close, None
                cb()


@register_sr_type
class LvhdSRDriver(LvmBackedDriver):
    """VDIs as VHDs inside LVs, with XenServer's inflate/deflate rules."""

    type_name = "lvhd"
    lv_prefix = "VHD-"
    block_size = fmt.DEFAULT_BLOCK_SIZE
    max_depth = DEFAULT_MAX_DEPTH

    def __init__(self, sr: Any) -> None:
        super().__init__(sr)
        self._open_devices: list[LvhdDevice] = []

    def _live(self, vdi_uuid: str | None = None) -> list[LvhdDevice]:
        self._open_devices = [d for d in self._open_devices if not d.closed]
        return [d for d in self._open_devices if vdi_uuid is None or d.vdi_uuid == vdi_uuid]

    def _pause(self, devices: list[LvhdDevice]) -> None:
        for d in devices:
            d.flush()

    def _unpause(self, devices: list[LvhdDevice], extra: dict[str, VDI] | None = None) -> None:
        """Reopen each paused device on its VDI's current chain (`extra`: records the SR adds
        when the driver returns)."""
        for d in devices:
            vdi = self.sr.vdis.get(d.vdi_uuid)
            if vdi is not None:
                d.swap(self._open_chain(vdi, read_only=d.read_only, extra=extra))

    # ------------------------------------------------------------------ VHD in an LV
    def _io(self, lv: str, *, length: int | None = None, write_lock: bool = False) -> LvRawIO:
        if length is None:
            length = self.vg.lv_size(lv)
        return self.vg.raw_io(lv, resizable=True, length=length, write_lock=write_lock)

    def _open_one(self, lv: str, *, read_only: bool, write_lock: bool = False) -> VhdImage:
        """Open one LV's VHD. `write_lock`: a VDI's data path (one writer per LV across
        processes); the SR's own maintenance (coalesce, relinking) runs under the SR lock
        and does without."""
        try:
            io = self._io(lv, write_lock=write_lock)
        except LvmError as exc:
            msg = str(exc)
            raise SrError(msg if msg.startswith(f"{self.vg_name}/") else
                          f"{self.vg_name}/{lv}: {msg}") from exc
        try:
            return VhdImage.open(io, read_only=read_only,
                                 barriers=self.sr.sync and not read_only)
        except BaseException as exc:
            io.close()
            if isinstance(exc, LvmError):
                raise SrError(f"{self.vg_name}/{lv}: {exc}") from exc
            raise

    def _vhd_end(self, lv: str) -> int:
        img = self._open_one(lv, read_only=True)
        try:
            return max(e.end for e in img.extents())
        finally:
            img.close()

    def _set_lv_size(self, lv: str, want: int) -> None:
        """Resize the LV to hold `want` bytes, never below the VHD's end."""
        want = max(want, self._vhd_end(lv))
        ext = self.vg.extent_bytes
        target = -(-want // ext) * ext
        cur = self.vg.lv_size(lv)
        if target > cur:
            self.vg.lvextend(lv, target)
        elif target < cur:
            self.vg.lvreduce(lv, target, force=True)  # only space past the VHD's footer goes

    def inflate(self, vdi: VDI) -> None:
        """Size the LV for a fully allocated VHD (a writable leaf)."""
        self._set_lv_size(vdi.location, full_vhd_size(vdi.virtual_size, self.block_size))

    def deflate(self, vdi: VDI) -> None:
        """Cut the LV to the VHD's current end (base copies, unused snapshots)."""
        self._set_lv_size(vdi.location, 0)

    def _open_chain(self, vdi: VDI, *, read_only: bool,
                    extra: dict[str, VDI] | None = None) -> VhdImage:
        records = {**self.sr.vdis, **(extra or {})}
        leaf = self._open_one(vdi.location, read_only=read_only, write_lock=not read_only)
        try:
            cur, rec, depth = leaf, vdi, 1
            while cur.parent_uuid is not None:
                if rec.parent is None or rec.parent not in records:
                    raise ChainError(f"{self.vg_name}/{rec.location}: differencing VHD but the "
                                     f"SR records no parent for VDI {rec.uuid}")
                if depth >= self.max_depth:
                    raise ChainError(f"VDI {vdi.uuid}: chain deeper than {self.max_depth}")
                prec = records[rec.parent]
                parent = self._open_one(prec.location, read_only=True)
                cur.parent = parent
                if parent.uuid != cur.parent_uuid:
                    raise ChainError(f"{self.vg_name}/{rec.location}: parent UUID mismatch: it "
                                     f"expects {cur.parent_uuid}, {prec.location} has "
                                     f"{parent.uuid}")
                cur, rec, depth = parent, prec, depth + 1
            return leaf
        except BaseException:
            leaf.close()
            raise

    def _lv_bytes(self, vsize: int, *, inflated: bool) -> int:
        """LV size for a new VHD: fully allocated, or an empty one (headers, BAT, footer)."""
        if inflated:
            return full_vhd_size(vsize, self.block_size)
        return fmt.BAT_OFFSET + fmt.bat_bytes(-(-vsize // self.block_size)) + LOCATOR_SLACK + 512

    def _extents(self, nbytes: int) -> int:
        return -(-nbytes // self.vg.extent_bytes)

    def _no_space(self, what: str, need: int, free: int) -> SrError:
        ext = self.vg.extent_bytes
        return SrError(f"SR {self.sr.uuid}: insufficient space: {what} needs {need * ext} bytes "
                       f"({need} extents), {free * ext} available (XenServer: SRNoSpace)")

    def _check_space(self, vdi: VDI, copies: list[VDI]) -> None:
        """Before a snapshot/clone: room for the VDI's new inflated leaf and, for a clone, for
        inflating the clone when it is written (a snapshot is read-only: deflated), counting
        what deflating the base copy gives back (as LVHDSR._snapshot sizes its request)."""
        vg = self.vg
        base_now = vg.meta.lv(vdi.location).extent_count
        base_after = self._extents(self._vhd_end(vdi.location))
        need = self._extents(self._lv_bytes(vdi.virtual_size, inflated=True))
        for c in copies:
            need += self._extents(self._lv_bytes(vdi.virtual_size,
                                                 inflated=not c.is_a_snapshot))
        free = free_extents(vg.meta) + max(0, base_now - base_after)
        if need > free:
            kind = "a snapshot" if all(c.is_a_snapshot for c in copies) else "a clone"
            raise self._no_space(f"{kind} of VDI {vdi.uuid}", need, free)

    def coalesce_blocker(self, parent: VDI, child: VDI) -> str | None:
        """The parent is inflated to hold the merge: is there room? (checked before gc starts
        it, so a pending coalesce never needs space it cannot get)."""
        want = self._extents(full_vhd_size(max(parent.virtual_size, child.virtual_size),
                                           self.block_size))
        have = self.vg.meta.lv(parent.location).extent_count
        free = free_extents(self.vg.meta)
        if want - have > free:
            return str(self._no_space(f"inflating {parent.uuid} to coalesce", want - have,
                                      free))
        return None

    def _create_vhd(self, lv: str, *, size: int | None = None, parent: VDI | None = None,
                    uuid: uuidlib.UUID | None = None, inflated: bool = True) -> VhdImage:
        """Create LV `lv` holding a new dynamic VHD, or a differencing child of `parent`."""
        vsize = size if parent is None else parent.virtual_size
        assert vsize is not None
        self.vg.lvcreate(lv, self._lv_bytes(vsize, inflated=inflated))
        try:
            pimg = self._open_one(parent.location, read_only=True) if parent else None
            try:
                img = VhdImage.create(
                    self._io(lv, length=0), size=size if parent is None else None,
                    disk_type="dynamic" if parent is None else "differencing",
                    block_size=self.block_size, parent=pimg,
                    parent_path=parent.location if parent else None, path=lv, uuid=uuid)
            finally:
                if pimg is not None:
                    pimg.close()
            img.parent = None
            return img
        except BaseException:
            self.vg.lvremove(lv)
            raise

    # ------------------------------------------------------------------ SRDriver
    def vdi_create(self, vdi: VDI, size: int) -> None:
        """An inflated LV holding an empty dynamic VHD (its uuid is the VDI's)."""
        vdi.location = self.lv_name(vdi.uuid)
        img = self._create_vhd(vdi.location, size=size, uuid=uuidlib.UUID(vdi.uuid))
        vdi.virtual_size = img.size
        img.close()

    def vdi_open(self, vdi: VDI, *, read_only: bool) -> BlockDevice:
        """The VDI's chain; a writable open inflates the leaf first."""
        on_close = None
        if not read_only:
            self.inflate(vdi)
            if vdi.is_a_snapshot:
                def on_close() -> None:
                    self.deflate(vdi)
        dev = LvhdDevice(vdi.uuid, self._open_chain(vdi, read_only=read_only), on_close)
        self._open_devices.append(dev)
        return dev

    def vdi_snapshot(self, vdi: VDI, copies: list[VDI]) -> list[VDI]:
        """Rename the VDI's LV to a hidden, deflated base copy; re-create the VDI and copies
        as its empty differencing children (the VDI's inflated, the copies deflated)."""
        depth = self.sr.chain_depth(vdi.uuid) + 1
        if depth > self.max_depth:
            raise SrError(f"VDI {vdi.uuid}: a snapshot would make its chain {depth} deep (limit "
                          f"{self.max_depth}); run `hvsim sr gc` first")
        base = VDI(uuid=str(uuidlib.uuid4()), name_label="base copy",
                   virtual_size=vdi.virtual_size, read_only=True, hidden=True,
                   parent=vdi.parent)
        base.location = self.lv_name(base.uuid)
        for c in copies:
            c.location = self.lv_name(c.uuid)
            c.parent = base.uuid
        self._check_space(vdi, copies)
        paused = self._live(vdi.uuid)
        self._pause(paused)
        self.sr.begin({"op": "snapshot", "vdi": vdi.uuid, "base": asdict(base),
                       "copies": [asdict(c) for c in copies]})
        self.vg.lvrename(vdi.location, base.location)
        try:
            self._finish_snapshot(vdi, base, copies)
        except InsufficientSpace as exc:  # another writer took the space since the check
            self._roll_back_snapshot(vdi, base, copies)
            self.sr.commit()
            self._unpause(paused)
            raise SrError(f"SR {self.sr.uuid}: insufficient space for the snapshot of VDI "
                          f"{vdi.uuid}; nothing changed ({exc})") from exc
        self._unpause(paused, {base.uuid: base})  # an attached VDI goes on in its new leaf
        return [base]

    def _roll_back_snapshot(self, vdi: VDI, base: VDI, copies: list[VDI]) -> None:
        """Undo a snapshot after the rename: drop the new children, give the base copy the
        VDI's name back. Only removes and renames LVs: needs no free extents."""
        for rec in [vdi, *copies]:
            if rec.location != base.location and self.vg.meta.has_lv(rec.location):
                self.vg.lvremove(rec.location)
        if self.vg.meta.has_lv(base.location):
            self.vg.lvrename(base.location, vdi.location)

    def _finish_snapshot(self, vdi: VDI, base: VDI, copies: list[VDI]) -> None:
        """After the rename: deflate the base, (re)create the children. Idempotent."""
        self.deflate(base)
        bimg = self._open_one(base.location, read_only=True)
        base_vhd = bimg.uuid
        bimg.close()
        # the VDI goes on writing: inflated; the copies are not written yet: deflated
        targets = [(vdi, True, uuidlib.uuid4())] + \
            [(c, False, uuidlib.UUID(c.uuid)) for c in copies]
        for rec, inflated, vhd_uuid in targets:
            if self.vg.meta.has_lv(rec.location):
                try:
                    img = self._open_one(rec.location, read_only=True)
                    ok = img.parent_uuid == base_vhd
                    img.close()
                    if ok:
                        continue
                except StorageError:
                    pass
                self.vg.lvremove(rec.location)  # half-made by an interrupted snapshot
            self._create_vhd(rec.location, parent=base, uuid=vhd_uuid,
                             inflated=inflated).close()
        vdi.parent = base.uuid
        for c in copies:
            c.parent = base.uuid

    def _all_zero(self, location: str) -> bool:
        """The LV reads zeros from start to end (stops at the first byte that is not)."""
        try:
            dev = self.vg.open_lv(location)
        except LvmError:
            return False
        try:
            step = 4 << 20
            return not any(dev.read(off, min(step, dev.size - off)).strip(b"\0")
                           for off in range(0, dev.size, step))
        finally:
            dev.close()

    def probe_volume(self, location: str) -> Volume:
        """Open the LV's VHD; a differencing one's parent is the recorded VDI whose VHD has
        the uuid it names."""
        vol = Volume(location=location, uuid=location[len(self.lv_prefix):])
        try:
            img = self._open_one(location, read_only=True)
        except StorageError as exc:
            if self._all_zero(location):   # created, killed before its VHD was written:
                vol.has_data = False       # provably nothing in it (new extents are zeroed)
            else:
                vol.error = str(exc)
            return vol
        try:
            vol.virtual_size = img.size
            vol.has_data = img.allocated_blocks > 0
            want = img.parent_uuid
        finally:
            img.close()
        if want is not None:
            for v in self.sr.vdis.values():
                try:
                    p = self._open_one(v.location, read_only=True)
                except StorageError:
                    continue
                try:
                    if p.uuid == want:
                        vol.parent = v.uuid
                        break
                finally:
                    p.close()
            else:
                vol.error = f"its parent VHD {want} is not a VDI of this SR"
                vol.parent_unrecorded = True
        return vol

    def vdi_destroy(self, vdi: VDI) -> None:
        """lvremove the VDI's LV."""
        if self.vg.meta.has_lv(vdi.location):
            self.vg.lvremove(vdi.location)

    def vdi_resize(self, vdi: VDI, size: int) -> int:
        """Resize the leaf VHD (inflating its LV to the new full size first)."""
        self._set_lv_size(vdi.location, full_vhd_size(max(size, vdi.virtual_size),
                                                      self.block_size))
        img = self._open_chain(vdi, read_only=False)
        try:
            new = img.resize(size)
        finally:
            img.close()
        vdi.virtual_size = new
        self.inflate(vdi)
        return new

    def vdi_coalesce(self, parent: VDI, child: VDI, grandchildren: list[VDI]) -> None:
        """Copy the child's blocks into the (inflated) parent, relink, then swap the LVs."""
        paused = self._live()
        self._pause(paused)
        self._merge(parent, child, grandchildren)
        assert self.sr.pending is not None
        self.sr.pending["phase"] = "merged"
        self.sr.save()
        self._finish_coalesce(parent.location, child.location, leaf=not child.hidden)
        if not child.hidden:
            child.parent = parent.parent  # what the SR records next; the reopen needs it now
        else:
            for g in grandchildren:
                g.parent = parent.uuid
        self._unpause([d for d in paused if d.vdi_uuid != parent.uuid])

    def _merge(self, parent: VDI, child: VDI, grandchildren: list[VDI]) -> None:
        """Idempotent: copying the child's sectors again gives the same parent."""
        self._set_lv_size(parent.location, full_vhd_size(max(parent.virtual_size,
                                                             child.virtual_size),
                                                         self.block_size))
        pimg = self._open_chain(parent, read_only=False)
        cimg = self._open_one(child.location, read_only=True)
        try:
            if cimg.size > pimg.size:
                pimg.resize(cimg.size)
            cimg.copy_into(pimg)
            if cimg.size < pimg.size:
                pimg.resize(cimg.size)
            pimg.flush()
        finally:
            cimg.close()
            pimg.close()
        parent.virtual_size = child.virtual_size
        pro = self._open_one(parent.location, read_only=True)
        try:
            for g in grandchildren:
                gimg = self._open_one(g.location, read_only=False)
                try:
                    gimg.set_parent(pro, parent_path=parent.location, path=g.location)
                finally:
                    gimg.parent = None
                    gimg.close()
        finally:
            pro.close()

    def _finish_coalesce(self, parent_lv: str, child_lv: str, *, leaf: bool) -> None:
        vg = self.vg
        if leaf:
            if vg.meta.has_lv(parent_lv):
                if vg.meta.has_lv(child_lv):
                    vg.lvremove(child_lv)
                vg.lvrename(parent_lv, child_lv)  # the merged volume takes the leaf's place
        else:
            if vg.meta.has_lv(child_lv):
                vg.lvremove(child_lv)
            if vg.meta.has_lv(parent_lv):
                self._set_lv_size(parent_lv, 0)  # a base copy again: deflated

    def recover(self, pending: dict[str, Any]) -> None:
        """Finish (or, before the first LV changed, undo) an interrupted snapshot/coalesce."""
        sr = self.sr
        if pending.get("op") == "snapshot":
            vdi = sr.vdis[pending["vdi"]]
            base = VDI(**pending["base"])
            copies = [VDI(**c) for c in pending["copies"]]
            if not self.vg.meta.has_lv(base.location):  # the rename never happened
                for c in copies:
                    if self.vg.meta.has_lv(c.location):
                        self.vg.lvremove(c.location)
                return
            try:
                self._finish_snapshot(vdi, base, copies)
            except InsufficientSpace:  # finishing needs space the VG no longer has: undo
                self._roll_back_snapshot(vdi, base, copies)
                return
            sr.vdis[base.uuid] = base
            for c in copies:
                sr.vdis[c.uuid] = c
        elif pending.get("op") == "coalesce":
            parent, child = sr.vdis.get(pending["parent"]), sr.vdis.get(pending["child"])
            if pending.get("phase") != "merged" and parent is not None and child is not None:
                grandchildren = [sr.vdis[g] for g in pending["grandchildren"] if g in sr.vdis]
                try:
                    self._merge(parent, child, grandchildren)
                except InsufficientSpace:
                    # the parent could not be inflated: nothing was copied or relinked yet;
                    # leave both as they are (gc tries again when there is room)
                    return
            self._finish_coalesce(pending["parent_location"], pending["child_location"],
                                  leaf=pending["leaf"])
            sr.finish_coalesce(pending["parent"], pending["child"])
