"""Physical volumes on files and the volume groups over them: scan, open, change, commit.

A PV is a file (or block device) in LVM2's own layout — label in sector 1, a metadata area from
4 KiB to `pe_start` (1 MiB), extents after it, and by default a second metadata area at the end
— so the real `pvs`/`vgs`/`lvs` read our PVs through a loop device, and we read theirs.

Every change goes through `VolumeGroup.commit`: seqno + 1, the raw text written into each
metadata area's circular buffer *beside* the committed copy, then that area's header pointed
at it — first every PV's first area, then every second one. A crash at any step leaves at least
one area whose header and text are intact; on open the valid copy with the highest seqno wins.
"""
from __future__ import annotations

import fcntl
import os
import random
import socket
import stat
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from storage.devices.imagelock import LockMode
from storage.devices.rawio import FileIO, RawIO
from storage.errors import LvmError, StorageError
from storage.lvm import alloc
from storage.lvm.cow import DEFAULT_CHUNK_SECTORS, CowStore
from storage.lvm.device import (
    ExtentMap,
    LogicalVolumeDevice,
    LvBinding,
    LvRawIO,
    LvWriteLock,
    Run,
    SnapshotDevice,
    _zero_io,
)
from storage.lvm.ondisk import (
    ID_LEN,
    LABEL_SCAN_SECTORS,
    MDA_HEADER_SIZE,
    PV_EXT_USED,
    SECTOR,
    DiskLocn,
    MdaHeader,
    PvLabel,
    RawLocn,
    circular_read_plan,
    format_id,
    lvm_crc,
    next_text_offset,
    pack_label,
    pack_mda_header,
    unpack_label,
    unpack_mda_header,
)
from storage.lvm.textfmt import (
    LogicalVolume,
    PhysicalVolume,
    Segment,
    TextHeader,
    VgMetadata,
    emit_text,
    parse_text,
)
from storage.lvm.thin import MAX_DEVICE_ID, ThinDevice, ThinPool

DEFAULT_EXTENT_SECTORS = 8192  # 4 MiB
DEFAULT_PE_START = 1 << 20
DEFAULT_MDA2_SIZE = 1 << 20
GENERATOR = "hvsim 0.1.0 (LVM2 text format)"
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def new_id(rng: random.Random | None = None) -> str:
    """A fresh LVM UUID in its dashed form."""
    r = rng or random.SystemRandom()
    return format_id("".join(r.choice(_ID_ALPHABET) for _ in range(ID_LEN)))


#: PVs of one VG are open in many handles and processes at once (LVM commits coordinate under
#: `_lock` and the seqno check), so they share write among themselves, as QEMU's share-rw=on,
#: while still refusing an exclusive writer (a raw `hvsim vhd`/qemu-io open of the PV file).
PV_LOCK = LockMode.SHARED_WRITE
PV_READ_LOCK = LockMode.SHARED_READ


def _name_ok(name: str, what: str) -> str:
    ok = name and all(c.isalnum() or c in "+_.-" for c in name) and name[0] != "-"
    if not ok or name in (".", "..") or (name.startswith("snapshot") and what == "LV"):
        raise LvmError(f"invalid {what} name {name!r} (use letters, digits, '+_.-'; "
                       "'snapshotN' is reserved)")
    return name


def _device_size(io: RawIO) -> int:
    if not isinstance(io, FileIO):
        return io.size()
    fd = os.open(io.name, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"))


def disk_path(path: str | os.PathLike[str]) -> os.stat_result:
    """Stat a path meant as a PV; LvmError (one line) unless it is a regular file or block
    device. Checked before opening: opening a FIFO blocks, reading a directory fails."""
    p = str(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise LvmError(f"{p}: no such file") from None
    except OSError as exc:
        raise LvmError(f"{p}: cannot use it ({exc.strerror})") from exc
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
        raise LvmError(f"{p}: is {kind}, not a disk (a physical volume is a regular file or a "
                       "block device)")
    return st


def _identity(st: os.stat_result) -> tuple[int, int]:
    """What makes two paths one device: LVM2 compares devices (major:minor), not names; for
    files that is (st_dev, st_ino), for block devices the device number."""
    return (-1, st.st_rdev) if stat.S_ISBLK(st.st_mode) else (st.st_dev, st.st_ino)


def refuse_repeats(paths: Iterable[str]) -> None:
    """LvmError if two of `paths` are the same device (`p.img` and `./p.img`, hard links)."""
    seen: dict[tuple[int, int], str] = {}
    for p in paths:
        key = _identity(disk_path(p))
        if key in seen:
            raise LvmError(f"{seen[key]} and {p} are the same device; a physical volume may be "
                           "listed only once")
        seen[key] = p


# ----------------------------------------------------------------------------- PVs

@dataclass
class PvDevice:
    """An opened PV: its I/O, label and metadata-area headers."""

    path: str
    io: RawIO
    label: PvLabel
    mdas: list[MdaHeader] = field(default_factory=list)

    @property
    def uuid(self) -> str:
        """Dashed PV UUID."""
        return format_id(self.label.pv_uuid)

    fd: int = -1  # our own descriptor on the PV file, for the LV data fast path

    def fast_fd(self) -> int | None:
        """A raw descriptor on the PV when it is a plain FileIO (None for other RawIOs)."""
        if self.fd < 0 and isinstance(self.io, FileIO):
            self.fd = os.open(self.io.name, os.O_RDWR if self.io.writable else os.O_RDONLY)
        return self.fd if self.fd >= 0 else None

    def close(self) -> None:
        """Flush and close the PV."""
        self.io.flush()
        self.io.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def pe_start(self) -> int:
        """Byte offset of the first extent."""
        return self.label.data_areas[0].offset if self.label.data_areas else DEFAULT_PE_START


def pvcreate(path: str | os.PathLike[str], *, size: int | None = None, metadata_copies: int = 2,
             rng: random.Random | None = None, io: RawIO | None = None) -> PvLabel:
    """Write a fresh PV label and empty metadata areas; create the file when `size` is given."""
    path = str(path)
    if metadata_copies not in (1, 2):
        raise LvmError("--pvmetadatacopies must be 1 or 2")
    own = io is None
    if io is None:
        if size is not None:
            if os.path.lexists(path):
                raise LvmError(f"{path}: already exists (pvcreate without --size uses it as is)")
            io = FileIO(path, create=True)
            io.truncate(size)
        else:
            disk_path(path)
            io = FileIO(path)
    try:
        if size is None:
            _refuse_to_relabel(io, path)
        dev_size = size if size is not None else _device_size(io)
        min_size = DEFAULT_PE_START + DEFAULT_MDA2_SIZE * (metadata_copies - 1) + (1 << 20)
        if dev_size < min_size:
            raise LvmError(f"{path}: {dev_size} bytes is too small for a PV (need {min_size})")
        mdas = [DiskLocn(4096, DEFAULT_PE_START - 4096)]
        if metadata_copies == 2:
            start = (dev_size - DEFAULT_MDA2_SIZE) // DEFAULT_MDA2_SIZE * DEFAULT_MDA2_SIZE
            mdas.append(DiskLocn(start, dev_size - start))
        uuid = new_id(rng).replace("-", "")
        label = PvLabel(pv_uuid=uuid, device_size=dev_size,
                        data_areas=[DiskLocn(DEFAULT_PE_START, 0)], metadata_areas=mdas)
        io.pwrite(0, bytes(SECTOR) + pack_label(label) + bytes(4096 - 2 * SECTOR))
        for m in mdas:
            io.pwrite(m.offset, pack_mda_header(MdaHeader(start=m.offset, size=m.size)))
        io.flush()
        return label
    finally:
        if own:
            io.close()


def _refuse_to_relabel(io: RawIO, path: str) -> None:
    """pvcreate over a PV that belongs to a VG (or whose metadata we cannot read) would erase
    that VG's label and metadata: refused, as LVM2 refuses it without -ff."""
    try:
        dev = read_pv(io, path)
    except LvmError:
        return  # not a PV: free to initialise
    meta, errors = pv_metadata(dev)
    if meta is not None:
        raise LvmError(f'Can\'t initialize physical volume "{path}" of volume group '
                       f'"{meta.name}" without -ff (it belongs to that VG; vgreduce it first)')
    unreadable = [e for e in errors if "damaged header" not in e]
    if unreadable:
        raise LvmError(f"{path}: holds VG metadata that cannot be read, so it may belong to a "
                       f"VG; not initialising it ({unreadable[0]})")


def read_pv(io: RawIO, path: str) -> PvDevice:
    """Read the label and metadata-area headers of a PV; LvmError if it is not one."""
    head = io.pread(0, SECTOR * LABEL_SCAN_SECTORS)
    for s in range(LABEL_SCAN_SECTORS):
        if head[s * SECTOR:s * SECTOR + 8] == b"LABELONE":
            label = unpack_label(head[s * SECTOR:(s + 1) * SECTOR], path)
            break
    else:
        raise LvmError(f"{path}: not a physical volume (no LVM2 label in the first 4 sectors)")
    dev = PvDevice(path=path, io=io, label=label)
    for m in label.metadata_areas:
        try:
            dev.mdas.append(unpack_mda_header(io.pread(m.offset, MDA_HEADER_SIZE),
                                              f"{path}@{m.offset}"))
        except LvmError:
            dev.mdas.append(MdaHeader(start=m.offset, size=m.size, version=0))  # unusable copy
    return dev


def read_mda(dev: PvDevice, h: MdaHeader
             ) -> tuple[tuple[VgMetadata, TextHeader, bytes] | None, str | None]:
    """(the committed VG in one metadata area, None) or (None, why it cannot be read); both
    None when the area holds no metadata (a PV in no VG)."""
    where = f"{dev.path}: metadata area at {h.start}"
    if h.version == 0:
        return None, f"{where}: damaged header"
    if not h.locns or h.locns[0].size == 0:
        return None, None
    loc = h.locns[0]
    try:
        text = b"".join(dev.io.pread(off, n) for off, n in circular_read_plan(h, loc))
    except (LvmError, OSError) as exc:
        return None, f"{where}: {exc}"
    if len(text) != loc.size:
        return None, f"{where}: text cut short ({len(text)} of {loc.size} bytes)"
    if lvm_crc(text) != loc.checksum:
        return None, f"{where}: checksum mismatch"
    try:
        vg, header = parse_text(text, f"{dev.path}@{h.start}")
    except LvmError as exc:
        return None, f"metadata cannot be parsed: {exc}"
    return (vg, header, text), None


def read_mda_text(dev: PvDevice, h: MdaHeader) -> tuple[VgMetadata, TextHeader, bytes] | None:
    """The committed VG in one metadata area, or None if absent or damaged."""
    return read_mda(dev, h)[0]


def pv_metadata(dev: PvDevice) -> tuple[VgMetadata | None, list[str]]:
    """The newest VG metadata on a PV (None: none readable) and why other copies were not."""
    best: VgMetadata | None = None
    errors: list[str] = []
    for h in dev.mdas:
        got, err = read_mda(dev, h)
        if err:
            errors.append(err)
        if got is not None and (best is None or got[0].seqno > best.seqno):
            best = got[0]
    return best, errors


def _refuse_if_used(dev: PvDevice) -> None:
    """vgcreate/vgextend: a PV that holds VG metadata (or metadata we cannot read, which may
    be a VG) is never taken."""
    meta, errors = pv_metadata(dev)
    if meta is not None:
        raise LvmError(f"{dev.path}: physical volume already belongs to VG {meta.name}")
    unreadable = [e for e in errors if "damaged header" not in e]
    if unreadable:
        raise LvmError(f"{dev.path}: holds VG metadata that cannot be read, so it may belong to "
                       f"a VG; not using it ({unreadable[0]})")


def _candidates(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files to scan: named files and block devices, and the files in named directories; one
    path per device (a file named twice, or also found in its directory, is read once)."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    for p in paths:
        p = str(p)
        try:
            st = os.stat(p)
        except OSError as exc:
            raise LvmError(f"{p}: cannot scan ({exc.strerror})") from exc
        if stat.S_ISDIR(st.st_mode):
            for child in sorted(Path(p).iterdir()):
                try:
                    cst = child.stat()
                except OSError:
                    continue
                if stat.S_ISREG(cst.st_mode) and cst.st_size >= 2 << 20 and \
                        _identity(cst) not in seen:
                    seen.add(_identity(cst))
                    out.append(str(child))
        else:
            disk_path(p)  # a FIFO or socket named explicitly is an error, not a silent skip
            if _identity(st) not in seen:
                seen.add(_identity(st))
                out.append(p)
    return out


def scan(paths: Iterable[str | os.PathLike[str]], *, writable: bool = True) -> list[PvDevice]:
    """Every PV among `paths` (files, block devices, or directories of files)."""
    found = []
    for p in _candidates(paths):
        try:
            io = FileIO(p, writable=writable, lock=PV_LOCK if writable else PV_READ_LOCK)
        except StorageError:  # unreadable candidates are skipped, like LVM2's filter
            continue
        try:
            found.append(read_pv(io, p))
        except LvmError:
            io.close()
    return found


def prefer_duplicate(pv: PhysicalVolume, cands: list[PvDevice]) -> tuple[PvDevice, str | None]:
    """Which of the devices carrying one PV UUID to use, and why (None: cannot tell).

    LVM2's rules (lvmcache.c, _choose_duplicates), for what exists here: the device whose name
    the metadata remembers ("device name matches previous"), then the one whose size is what
    the metadata says ("device size is correct").
    """
    if len(cands) == 1:
        return cands[0], ""
    for same in (lambda c: os.path.abspath(c.path) == os.path.abspath(pv.device),
                 lambda c: os.path.basename(c.path) == os.path.basename(pv.device)):
        hit = [c for c in cands if same(c)]
        if len(hit) == 1:
            return hit[0], "device name matches previous"
    sized = []
    for c in cands:
        try:
            if _device_size(c.io) // SECTOR == pv.dev_size:
                sized.append(c)
        except OSError:
            continue
    if len(sized) == 1:
        return sized[0], "device size is correct"
    return cands[0], None


# ----------------------------------------------------------------------------- VGs

@dataclass
class VgSummary:
    """What `vgs` shows for one VG."""

    name: str
    pv_count: int
    lv_count: int
    snap_count: int
    seqno: int
    size: int
    free: int
    extent_size: int


class VolumeGroup:
    """A VG open on its PVs: query, change and commit its metadata; open its LVs."""

    def __init__(self, meta: VgMetadata, header: TextHeader, devices: dict[str, PvDevice], *,
                 rng: random.Random | None = None, host: str | None = None,
                 now: Callable[[], int] | None = None) -> None:
        self.meta = meta
        self.header = header
        self.devices = devices  # pv name in metadata -> device
        self.rng = rng or random.SystemRandom()
        self.host = host or socket.gethostname()
        self._now = now or (lambda: int(time.time()))  # seconds, for creation_time fields
        self._stores: dict[str, CowStore] = {}
        self._pools: dict[str, ThinPool] = {}
        self._closed = False
        self.warnings: list[str] = []  # what LVM2 prints as WARNING: when it opens the VG
        self.duplicate_devices: list[str] = []  # PV copies seen: metadata changes refused
        self.write_block: str | None = None  # why LV data may not be written (or None)
        self._short: dict[str, tuple[int, int]] = {}  # pv -> (usable extents, sectors)
        self._spare: list[PvDevice] = []  # scanned PVs outside the metadata (repair opens)
        self.generation = 0  # bumped by every commit; open LV devices re-resolve on change
        self._watchers: weakref.WeakSet[object] = weakref.WeakSet()

    # ------------------------------------------------------------- open / create
    @classmethod
    def create(cls, name: str, paths: Iterable[str | os.PathLike[str] | RawIO], *,
               extent_size: int = DEFAULT_EXTENT_SECTORS * SECTOR,
               rng: random.Random | None = None, description: str = "",
               now: Callable[[], int] | None = None) -> VolumeGroup:
        """vgcreate: a new VG over PVs (paths, or RawIOs) that belong to no VG yet."""
        _name_ok(name, "VG")
        if extent_size < 4096 or extent_size & (extent_size - 1) or extent_size % SECTOR:
            raise LvmError(f"extent size {extent_size} must be a power of two ≥ 4 KiB")
        sources = [p if hasattr(p, "pread") else str(p) for p in paths]  # type: ignore[misc]
        if not sources:
            raise LvmError("vgcreate needs at least one physical volume")
        # one device twice would be two PVs on one disk (and flock would wait on itself)
        refuse_repeats([s for s in sources if isinstance(s, str)])
        devs: dict[str, PvDevice] = {}
        meta = VgMetadata(name=name, id=new_id(rng), seqno=0,
                          extent_size=extent_size // SECTOR)
        for i, src in enumerate(sources):
            io = src if not isinstance(src, str) else FileIO(src, lock=PV_LOCK)
            p = io.name
            try:
                dev = read_pv(io, p)
            except LvmError as exc:
                io.close()
                raise LvmError(f"{p}: not a physical volume; run pvcreate first ({exc})") from exc
            try:
                _refuse_if_used(dev)
            except LvmError:
                dev.io.close()
                for d in devs.values():
                    d.io.close()
                raise
            dev_bytes = dev.label.device_size
            end = min((m.offset for m in dev.label.metadata_areas if m.offset > dev.pe_start),
                      default=dev_bytes)
            pe_count = (end - dev.pe_start) // extent_size
            if pe_count < 1:
                raise LvmError(f"{p}: too small for one {extent_size}-byte extent")
            pv_name = f"pv{i}"
            meta.pvs.append(PhysicalVolume(
                name=pv_name, id=dev.uuid, device=p, dev_size=dev_bytes // SECTOR,
                pe_start=dev.pe_start // SECTOR, pe_count=pe_count))
            dev.label.ext_flags |= PV_EXT_USED
            dev.io.pwrite(dev.label.sector * SECTOR, pack_label(dev.label))
            devs[pv_name] = dev
        vg = cls(meta, TextHeader(), devs, rng=rng, now=now)
        vg.commit(description or f"vgcreate {name}")
        return vg

    @classmethod
    def open(cls, name: str, paths: Iterable[str | os.PathLike[str]], *,
             rng: random.Random | None = None, writable: bool = True,
             now: Callable[[], int] | None = None, vg_id: str | None = None,
             validate: bool = True) -> VolumeGroup:
        """Find VG `name` among the PVs in `paths`; the newest valid metadata copy wins.

        `vg_id` picks one of several VGs that share the name; `validate=False` opens metadata
        that fails LVM2's checks (duplicate ids...) so that vgcfgrestore can replace it.
        """
        return cls.from_devices(name, scan(paths, writable=writable), rng=rng, now=now,
                                vg_id=vg_id, validate=validate)

    @classmethod
    def open_ios(cls, name: str, ios: Iterable[RawIO], *, rng: random.Random | None = None,
                 now: Callable[[], int] | None = None) -> VolumeGroup:
        """Open VG `name` on PVs given as RawIOs (memory, wrapped files); non-PVs are skipped."""
        devs = []
        for io in ios:
            try:
                devs.append(read_pv(io, io.name))
            except LvmError:
                continue
        return cls.from_devices(name, devs, rng=rng, now=now)

    @classmethod
    def from_devices(cls, name: str, devs: list[PvDevice], *, rng: random.Random | None = None,
                     now: Callable[[], int] | None = None, vg_id: str | None = None,
                     validate: bool = True) -> VolumeGroup:
        """Open VG `name` from scanned PVs; the newest valid metadata copy wins.

        As LVM2 does (lib/cache/lvmcache.c, lib/metadata/metadata.c): metadata is grouped by
        VG UUID, never by name, and two VGs with one name are refused ("Multiple VGs found
        with the same name"); of two devices with one PV UUID (a copied PV file) the one whose
        name the metadata remembers is used, the other never ("Not using device ..."), and the
        VG's metadata is not changed while the duplicate is visible.
        """
        try:
            return cls._from_devices(name, devs, rng=rng, now=now, vg_id=vg_id,
                                     validate=validate)
        except BaseException:
            for d in devs:
                d.io.close()
            raise

    @classmethod
    def _from_devices(cls, name: str, devs: list[PvDevice], *, rng: random.Random | None,
                      now: Callable[[], int] | None, vg_id: str | None,
                      validate: bool) -> VolumeGroup:
        by_uuid: dict[str, list[PvDevice]] = {}
        for d in devs:
            by_uuid.setdefault(d.uuid, []).append(d)
        groups: dict[str, tuple[VgMetadata, TextHeader]] = {}  # VG id -> newest copy
        holders: dict[str, list[str]] = {}
        unreadable: list[str] = []
        for dev in devs:
            for h in dev.mdas:
                got, err = read_mda(dev, h)
                if err and "damaged header" not in err:
                    unreadable.append(err)
                if got is None or got[0].name != name:
                    continue
                meta = got[0]
                if dev.path not in holders.setdefault(meta.id, []):
                    holders[meta.id].append(dev.path)
                if meta.id not in groups or meta.seqno > groups[meta.id][0].seqno:
                    groups[meta.id] = (meta, got[1])
        if vg_id is not None:
            groups = {k: v for k, v in groups.items() if k == vg_id}
        if len(groups) > 1:
            which = " and ".join(f"{i} (on {', '.join(holders[i])})" for i in sorted(groups))
            raise LvmError(f"Multiple VGs found with the same name: skipping {name}: VG name "
                           f"{name} is used by VGs {which}; name the PVs of the one you mean "
                           "with --devices (as LVM2 refuses, lib/metadata/metadata.c)")
        if not groups:
            why = f"; {unreadable[0]}" if unreadable else ""
            raise LvmError(f"volume group {name!r} not found (scanned "
                           f"{len(devs)} PVs; use --devices to say where its PVs are){why}")
        meta, header = next(iter(groups.values()))
        warnings: list[str] = []
        used: dict[str, PvDevice] = {}
        dup_paths: list[str] = []
        ambiguous: list[str] = []
        for pv in meta.pvs:
            cands = by_uuid.get(pv.id, [])
            if not cands:
                raise LvmError(f"VG {name}: physical volume {pv.id} ({pv.device}) is missing")
            dev, reason = prefer_duplicate(pv, cands)
            if len(cands) > 1:
                for other in cands:
                    if other is not dev:
                        warnings.append(f"Not using device {other.path} for PV {pv.id}.")
                dup_paths += [c.path for c in cands]
                if reason is None:
                    ambiguous.append(f"PV {pv.id} is on {' and '.join(c.path for c in cands)}")
                    warnings.append(f"PV {pv.id} is on duplicate devices and none has the name "
                                    f"the metadata remembers ({pv.device}).")
                else:
                    warnings.append(f"PV {pv.id} prefers device {dev.path} because {reason}.")
            used[pv.name] = dev
        spare = [d for d in devs if all(d is not u for u in used.values())]
        if validate:
            alloc.check_consistency(meta)
        vg = cls(meta, header, used, rng=rng, now=now)
        if not validate:  # a repair (vgcfgrestore) may need PVs the damaged metadata lost
            mine = [d for d in spare if d.uuid not in {u.uuid for u in used.values()}
                    and (pv_metadata(d)[0] or VgMetadata("", "", 0, 0)).id == meta.id]
            vg._spare = mine
            spare = [d for d in spare if all(d is not m for m in mine)]
        for d in spare:
            d.io.close()
        vg.warnings = warnings
        vg.duplicate_devices = dup_paths
        if ambiguous:
            vg.write_block = (f"VG {name}: duplicate PV devices, cannot tell which is real: "
                              f"{'; '.join(ambiguous)}; refusing to write (remove or hide the "
                              "copies with --devices)")
        vg._check_sizes()
        return vg

    def _check_sizes(self) -> None:
        """PV files shorter than the metadata says: LVM2's warning; their missing extents are
        never read, written or allocated ("device is too small")."""
        for pv in self.meta.pvs:
            dev = self.devices[pv.name]
            try:
                have = _device_size(dev.io) // SECTOR
            except OSError:
                continue
            if have < pv.dev_size:
                self.warnings.append(
                    f"Device {dev.path} has size of {have} sectors which is smaller than "
                    f"corresponding PV size of {pv.dev_size} sectors. Was device resized?")
                usable = max(0, (have - pv.pe_start) // self.meta.extent_size)
                self._short[pv.name] = (usable, have)

    def _check_extents(self, pv_name: str, pe: int, count: int, what: str) -> None:
        short = self._short.get(pv_name)
        if short is not None and pe + count > short[0]:
            dev = self.devices[pv_name]
            raise LvmError(f"{what}: extents {pe}..{pe + count} of {pv_name} lie beyond the end "
                           f"of {dev.path}: device is too small ({short[1]} sectors, the PV "
                           f"says {self.meta.pv(pv_name).dev_size})")

    def close(self) -> None:
        """Flush and close every PV (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for pool in self._pools.values():
            pool.commit()
        for d in {id(d): d for d in [*self.devices.values(), *self._spare]}.values():
            d.close()

    def __enter__(self) -> VolumeGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- commit
    def _lock(self) -> list[int]:
        """flock every PV file (in path order), so commits of two processes never interleave."""
        fds = []
        try:
            for dev in sorted(self.devices.values(), key=lambda d: d.path):
                fd = dev.fast_fd()
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    fds.append(fd)
        except BaseException:
            for fd in fds:
                fcntl.flock(fd, fcntl.LOCK_UN)
            raise
        return fds

    def _changed_on_disk(self) -> str | None:
        """Where another process committed since we read the metadata (None: nowhere)."""
        for dev in self.devices.values():
            for h in dev.mdas:
                if h.version == 0:
                    continue
                try:
                    on_disk = unpack_mda_header(dev.io.pread(h.start, MDA_HEADER_SIZE))
                except LvmError:
                    continue  # damaged since: the next commit rewrites it
                if on_disk.locns[:1] != h.locns[:1]:
                    return f"{dev.path}@{h.start}"
        return None

    def _check_unchanged(self) -> None:
        """Refuse to commit over metadata another process committed since we read it."""
        where = self._changed_on_disk()
        if where is not None:
            raise LvmError(f"VG {self.name} was changed by another process since it was "
                           f"opened (metadata area {where}); open it again")

    def refresh(self) -> bool:
        """Re-read the metadata if another process committed since; True if it changed.

        Open LV devices follow (as after our own commits). Refused when the other process
        changed which PVs make up the VG: reopen the VG then.
        """
        if self._changed_on_disk() is None:
            return False
        for pool in self._pools.values():
            pool.commit()
        best: tuple[VgMetadata, TextHeader] | None = None
        for dev in self.devices.values():
            for i, m in enumerate(dev.label.metadata_areas):
                try:
                    dev.mdas[i] = unpack_mda_header(dev.io.pread(m.offset, MDA_HEADER_SIZE))
                except LvmError:
                    dev.mdas[i] = MdaHeader(start=m.offset, size=m.size, version=0)
                    continue
                got = read_mda_text(dev, dev.mdas[i])
                if got and got[0].id == self.meta.id and (best is None or
                                                         got[0].seqno > best[0].seqno):
                    best = (got[0], got[1])
        if best is None:
            raise LvmError(f"VG {self.name}: no valid metadata left on its PVs")
        meta, header = best
        ids = {pv.name: pv.id for pv in self.meta.pvs}
        if {pv.name: pv.id for pv in meta.pvs} != ids:
            raise LvmError(f"VG {self.name}: another process changed its physical volumes; "
                           "open it again")
        alloc.check_consistency(meta)
        self.meta, self.header = meta, header
        self._stores.clear()
        self._pools.clear()
        self.generation += 1
        for dev in list(self._watchers):
            dev.invalidate()  # type: ignore[attr-defined]
        return True

    def commit(self, description: str = "") -> None:
        """Write the metadata with seqno + 1 into every metadata area, copy by copy."""
        if self.duplicate_devices:  # LVM2's vg_write() refuses the same way
            raise LvmError(f"Cannot update volume group {self.name} with duplicate PV devices "
                           f"({', '.join(self.duplicate_devices)}); remove the copies or leave "
                           "them out of --devices")
        alloc.check_consistency(self.meta)
        fds = self._lock()
        try:
            self._check_unchanged()
            self._write_metadata(description)
        finally:
            for fd in fds:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _write_metadata(self, description: str) -> None:
        self.meta.seqno += 1
        self.header = TextHeader(description="", creation_host=self.host,
                                 host_info=_host_info(self.host), creation_time=self._now(),
                                 generator=GENERATOR)
        text = emit_text(self.meta, self.header, "raw").encode() + b"\0"
        crc = lvm_crc(text)
        rounds = max(len(d.mdas) for d in self.devices.values())
        for i in range(rounds):
            for pv_name, dev in self.devices.items():
                if i >= len(dev.mdas):
                    continue
                h = dev.mdas[i]
                short = self._short.get(pv_name)
                if short is not None and h.start + h.size > short[1] * SECTOR:
                    continue  # that area was cut off with the file's end: never grow the file
                if h.version == 0:  # damaged header: rewrite it from the label
                    loc = dev.label.metadata_areas[i]
                    h = MdaHeader(start=loc.offset, size=loc.size)
                off = next_text_offset(h, len(text))
                dev.io.pwrite(h.start + off, text)
                dev.io.flush()
                new = MdaHeader(start=h.start, size=h.size,
                                locns=[RawLocn(off, len(text), crc, 0)])
                dev.io.pwrite(h.start, pack_mda_header(new))
                dev.io.flush()
                dev.mdas[i] = new
        self.header.description = description
        self.generation += 1
        for dev in list(self._watchers):
            dev.invalidate()  # type: ignore[attr-defined]

    def backup_text(self, description: str = "") -> str:
        """The metadata as `vgcfgbackup` writes it."""
        header = TextHeader(description=description, creation_host=self.host,
                            host_info=_host_info(self.host), creation_time=self._now(),
                            generator=GENERATOR)
        return emit_text(self.meta, header, "file")

    def restore(self, text: str, *, source: str = "<backup>", test: bool = False) -> None:
        """vgcfgrestore: make a backup's metadata current (seqno continues from ours).

        The backup must describe this VG (same name and id) over these PVs (same UUIDs);
        LV data is not touched — extents map again as the backup says. With `test`, only
        check.
        """
        meta, _ = parse_text(text, source)
        if meta.name != self.name or meta.id != self.meta.id:
            raise LvmError(f"{source}: describes VG {meta.name} ({meta.id}), not {self.name} "
                           f"({self.meta.id})")
        alloc.check_consistency(meta)  # LVM2's vg_validate: duplicate PV/LV ids and names
        have = {pv.id: pv for pv in self.meta.pvs}
        # the devices' own labels decide which file is which PV (the current metadata may be
        # the damaged thing being replaced)
        by_id = {d.uuid: d for d in [*self.devices.values(), *self._spare]}
        for pv in meta.pvs:
            dev = by_id.get(pv.id)
            if dev is None:
                raise LvmError(f"{source}: physical volume {pv.id} is not in VG {self.name}")
            cur = have.get(pv.id)
            if meta.extent_size != self.meta.extent_size or pv.pe_start * SECTOR != \
                    dev.pe_start or (cur is not None and pv.pe_count != cur.pe_count):
                raise LvmError(f"{source}: extent layout of {pv.id} differs from the PV's")
        if test:
            return
        devices = {pv.name: by_id[pv.id] for pv in meta.pvs}
        meta.seqno = self.meta.seqno
        self.meta = meta
        self.devices = devices
        self._stores.clear()
        self.commit(f"vgcfgrestore {self.name}")

    @classmethod
    def restore_onto(cls, text: str, paths: Iterable[str | os.PathLike[str]], *,
                     source: str = "<backup>", test: bool = False) -> VolumeGroup:
        """vgcfgrestore when the VG's current metadata cannot be read at all: find the
        backup's PVs by the UUIDs in their labels (as LVM2 does) and write the backup to them.
        Returns the VG, open (with `test`: checked, nothing written)."""
        meta, _ = parse_text(text, source)
        alloc.check_consistency(meta)
        devs = scan(paths)
        try:
            by_uuid: dict[str, list[PvDevice]] = {}
            for d in devs:
                by_uuid.setdefault(d.uuid, []).append(d)
            used: dict[str, PvDevice] = {}
            seqno = meta.seqno
            for pv in meta.pvs:
                cands = by_uuid.get(pv.id, [])
                if not cands:
                    raise LvmError(f"{source}: physical volume {pv.id} ({pv.device}) not found")
                if len(cands) > 1:
                    raise LvmError(f"{source}: physical volume {pv.id} is on "
                                   f"{' and '.join(c.path for c in cands)}; leave the copies "
                                   "out of --devices")
                dev = cands[0]
                end = pv.pe_start * SECTOR + pv.pe_count * meta.extent_size * SECTOR
                if pv.pe_start * SECTOR != dev.pe_start or end > dev.label.device_size:
                    raise LvmError(f"{source}: extent layout of {pv.id} does not fit {dev.path}")
                on_disk, _ = pv_metadata(dev)
                if on_disk is not None:
                    seqno = max(seqno, on_disk.seqno)
                used[pv.name] = dev
        except BaseException:
            for d in devs:
                d.io.close()
            raise
        for d in devs:
            if all(d is not u for u in used.values()):
                d.io.close()
        meta.seqno = seqno
        vg = cls(meta, TextHeader(), used)
        if not test:
            vg.commit(f"vgcfgrestore {meta.name}")
        return vg

    def vgextend(self, path: str | os.PathLike[str] | RawIO) -> str:
        """Add a PV (from pvcreate, in no VG) to this VG; returns its name in the metadata."""
        if not hasattr(path, "pread"):
            key = _identity(disk_path(path))  # type: ignore[arg-type]
            for d in self.devices.values():
                if isinstance(d.io, FileIO) and _identity(os.stat(d.io.name)) == key:
                    raise LvmError(f"{path}: already in VG {self.name} (as {d.path})")
        io = (path if hasattr(path, "pread")
              else FileIO(str(path), lock=PV_LOCK))  # type: ignore[arg-type]
        dev = read_pv(io, io.name)  # type: ignore[arg-type]
        if any(d.uuid == dev.uuid for d in self.devices.values()):
            io.close()  # type: ignore[union-attr]
            raise LvmError(f"{io.name}: already in VG {self.name}")  # type: ignore[union-attr]
        try:
            _refuse_if_used(dev)
        except LvmError:
            io.close()  # type: ignore[union-attr]
            raise
        end = min((m.offset for m in dev.label.metadata_areas if m.offset > dev.pe_start),
                  default=dev.label.device_size)
        pe_count = (end - dev.pe_start) // self.extent_bytes
        if pe_count < 1:
            raise LvmError(f"{dev.path}: too small for one extent of VG {self.name}")
        n = 0
        while any(p.name == f"pv{n}" for p in self.meta.pvs):
            n += 1
        name = f"pv{n}"
        self.meta.pvs.append(PhysicalVolume(
            name=name, id=dev.uuid, device=dev.path, dev_size=dev.label.device_size // SECTOR,
            pe_start=dev.pe_start // SECTOR, pe_count=pe_count))
        dev.label.ext_flags |= PV_EXT_USED
        dev.io.pwrite(dev.label.sector * SECTOR, pack_label(dev.label))
        self.devices[name] = dev
        self.commit(f"vgextend {self.name} {dev.path}")
        return name

    # ------------------------------------------------------------- queries
    @property
    def name(self) -> str:
        """VG name."""
        return self.meta.name

    @property
    def extent_bytes(self) -> int:
        """Extent size in bytes."""
        return self.meta.extent_size * SECTOR

    def summary(self) -> VgSummary:
        """Figures for `vgs`."""
        total = sum(p.pe_count for p in self.meta.pvs)
        free = alloc.free_extents(self.meta)
        visible = [lv for lv in self.meta.lvs if self.meta.lv_visible(lv)]
        return VgSummary(name=self.name, pv_count=len(self.meta.pvs), lv_count=len(visible),
                         snap_count=sum(1 for lv in visible if self.snapshot_segment(lv.name)),
                         seqno=self.meta.seqno, size=total * self.extent_bytes,
                         free=free * self.extent_bytes, extent_size=self.extent_bytes)

    def lv_names(self) -> list[str]:
        """Visible LVs."""
        return [lv.name for lv in self.meta.lvs if self.meta.lv_visible(lv)]

    def lv_size(self, name: str) -> int:
        """Size in bytes a user sees (a snapshot shows its COW store size, as `lvs` does)."""
        return self.meta.lv(name).extent_count * self.extent_bytes

    def snapshot_segment(self, cow_name: str) -> Segment | None:
        """The `snapshot` segment whose COW store is LV `cow_name`, if it is a snapshot."""
        for lv in self.meta.lvs:
            for seg in lv.segments:
                if seg.type == "snapshot" and seg.cow_store == cow_name:
                    return seg
        return None

    def snapshots_of(self, origin: str) -> list[str]:
        """COW LV names of the snapshots of `origin`."""
        return [seg.cow_store for lv in self.meta.lvs for seg in lv.segments
                if seg.type == "snapshot" and seg.origin == origin]

    def _hidden_snapshot_lv(self, cow_name: str) -> LogicalVolume:
        for lv in self.meta.lvs:
            if any(s.type == "snapshot" and s.cow_store == cow_name for s in lv.segments):
                return lv
        raise LvmError(f"{self.name}/{cow_name} is not a snapshot")

    def store(self, cow_name: str) -> CowStore:
        """The exception store of snapshot `cow_name` (loaded once per VG handle)."""
        st = self._stores.get(cow_name)
        if st is None:
            seg = self.snapshot_segment(cow_name)
            if seg is None:
                raise LvmError(f"{self.name}/{cow_name} is not a snapshot")
            st = CowStore.load(self._extent_map(cow_name), seg.chunk_size,
                               name=f"{self.name}/{cow_name}")
            self._stores[cow_name] = st
        return st

    # ------------------------------------------------------------- data access
    def _extent_map(self, name: str) -> ExtentMap:
        lv = self.meta.lv(name)
        ext = self.extent_bytes
        runs: list[Run] = []
        striped = []
        for seg in lv.segments:
            if seg.type != "striped":
                raise LvmError(f"{self.name}/{name}: {seg.type} segments hold no data extents")
            lv_off = seg.start_extent * ext
            per = seg.extent_count // max(1, len(seg.stripes))
            for pv_name, pe in seg.stripes:
                self._check_extents(pv_name, pe, per, f"{self.name}/{name}")
            if len(seg.stripes) == 1:
                pv_name, pe = seg.stripes[0]
                dev = self.devices[pv_name]
                pv = self.meta.pv(pv_name)
                runs.append(Run(lv_off, seg.extent_count * ext, dev.io,
                                pv.pe_start * SECTOR + pe * ext))
            else:
                areas = [(self.devices[pv].io, self.meta.pv(pv).pe_start * SECTOR + pe * ext)
                         for pv, pe in seg.stripes]
                striped.append((lv_off, seg.extent_count * ext, areas, seg.stripe_size * SECTOR))
        runs.sort(key=lambda r: r.lv_offset)
        return ExtentMap(f"{self.name}/{name}", runs, lv.extent_count * ext, striped)

    def watch(self, dev: object) -> None:
        """Tell `dev` (an open LV device) when the metadata changes."""
        self._watchers.add(dev)

    def lv_binding(self, lv_id: str) -> LvBinding:
        """The current mapping of the LV with this id (used by open LV devices)."""
        lv = next((v for v in self.meta.lvs if v.id == lv_id), None)
        if lv is None:
            raise LvmError(f"{self.name}: logical volume {lv_id} no longer exists")
        read_only = "WRITE" not in lv.status or self.write_block is not None
        seg = self.snapshot_segment(lv.name)
        if seg is not None:
            return LvBinding(f"{self.name}/{lv.name}", self._extent_map(seg.origin), read_only,
                             [self.store(lv.name)])
        emap = self._extent_map(lv.name)
        fast = None
        if emap.single is not None and not emap.striped:
            dev = next(d for d in self.devices.values() if d.io is emap.single.io)
            fd = dev.fast_fd()
            if fd is not None:
                fast = (fd, emap.single.phys_offset)
        return LvBinding(f"{self.name}/{lv.name}", emap, read_only,
                         [self.store(s) for s in self.snapshots_of(lv.name)], fast)

    def open_lv(self, name: str, *, write_lock: bool = False
                ) -> LogicalVolumeDevice | SnapshotDevice:
        """The LV as a BlockDevice (a snapshot's frozen view for snapshots).

        The device follows later changes made through this VG handle (resize, rename, new
        snapshots of it); it fails cleanly once the LV is removed. `write_lock`: the caller
        will write; refused (LvmError) while another open device, here or in another
        process, holds the LV's write lock, which is released on close.
        """
        lv = self.meta.lv(name)
        if not self.meta.lv_visible(lv):
            raise LvmError(f"{self.name}/{name} is an internal LV")
        if self.pool_segment(name) is not None:
            raise LvmError(f"{self.name}/{name} is a thin pool; create thin LVs in it "
                           "(lvcreate -V SIZE -T POOL)")
        lock = self._lv_write_lock(lv.id, name) if write_lock else None
        try:
            if self.snapshot_segment(name) is not None:
                dev: LogicalVolumeDevice | SnapshotDevice = SnapshotDevice(self, lv.id)
            elif self.thin_segment(name) is not None:
                dev = ThinDevice(self, lv.id)  # type: ignore[assignment]
            else:
                dev = LogicalVolumeDevice(self, lv.id)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        dev.write_lock = lock
        return dev

    def _lv_write_lock(self, lv_id: str, name: str) -> LvWriteLock | None:
        """The LV's cross-process writer lock, on the VG's first PV file (None for PVs that
        are not files or devices: in-memory VGs have one user)."""
        first = next((self.devices.get(pv.name) for pv in self.meta.pvs
                      if self.devices.get(pv.name) is not None), None)   # same PV everywhere
        if first is None or not isinstance(first.io, FileIO):
            return None
        return LvWriteLock(first.io.name, lv_id, f"{self.name}/{name}")

    def lv_writer_elsewhere(self, name: str) -> str | None:
        """Why LV `name` cannot be written now (its write lock is held by an open device
        here or in another process), or None when no writer holds it."""
        lv = self.meta.lv(name)
        try:
            lock = self._lv_write_lock(lv.id, name)
        except LvmError as exc:
            return str(exc)
        if lock is not None:
            lock.release()
        return None

    def raw_io(self, name: str, *, resizable: bool = False,
               length: int | None = None, write_lock: bool = False) -> LvRawIO:
        """A RawIO view of LV `name`.

        `resizable`: truncate()/writes past the end run lvextend (and, without `length`,
        lvreduce). `length`: present a file of that length inside the LV (see LvRawIO).
        `write_lock`: as for `open_lv`.
        """
        dev = self.open_lv(name, write_lock=write_lock)
        lv_id = self.meta.lv(name).id

        def resize(size: int) -> None:
            current = next(v.name for v in self.meta.lvs if v.id == lv_id)
            cur = self.lv_size(current)
            if size > cur:
                self.lvextend(current, size)
            elif length is None and size <= cur - self.extent_bytes:
                self.lvreduce(current, size, force=True)

        return LvRawIO(dev, resize if resizable else None, length=length)

    def _zero_areas(self, areas: list[alloc.Area]) -> None:
        ext = self.extent_bytes
        for a in areas:  # every allocation passes here first: nothing past a short PV's end
            self._check_extents(a.pv, a.pe, a.count, f"VG {self.name}: allocation")
        for a in areas:
            dev = self.devices[a.pv]
            pv = self.meta.pv(a.pv)
            _zero_io(dev.io, pv.pe_start * SECTOR + a.pe * ext, a.count * ext)

    # ------------------------------------------------------------- changes
    def _extents_for(self, size: int) -> int:
        if size <= 0:
            raise LvmError(f"size {size} must be positive")
        return -(-size // self.extent_bytes)

    def lvcreate(self, name: str, size: int, *, snapshot_of: str | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SECTORS * SECTOR,
                 read_only: bool = False, stripes: int = 1,
                 stripe_size: int = 64 << 10) -> None:
        """Create a linear LV of `size` bytes (rounded up to extents), or a COW snapshot.

        A snapshot of a thin LV is a thin snapshot (it shares the pool's chunks; `size` is
        ignored).
        """
        _name_ok(name, "LV")
        if self.meta.has_lv(name):
            raise LvmError(f"logical volume {self.name}/{name} already exists")
        if snapshot_of is not None and self.thin_segment(snapshot_of) is not None:
            self._thin_create(name, 0, origin=snapshot_of, read_only=read_only)
            return
        count = self._extents_for(size)
        if snapshot_of is not None:
            if self.pool_segment(snapshot_of) is not None:
                raise LvmError(f"{self.name}/{snapshot_of} is a thin pool; snapshot its thin "
                               "LVs instead")
            origin = self.meta.lv(snapshot_of)
            if not self.meta.lv_visible(origin) or self.snapshot_segment(snapshot_of) is not None:
                raise LvmError(f"{self.name}/{snapshot_of}: snapshots of snapshots are not "
                               "supported (as in LVM2 for COW snapshots)")
            if chunk_size < 4096 or chunk_size > 512 << 10 or chunk_size & (chunk_size - 1):
                raise LvmError(f"chunk size {chunk_size} must be a power of two 4 KiB..512 KiB")
        lv = LogicalVolume(name=name, id=new_id(self.rng), creation_time=self._now(),
                           creation_host=self.host)
        if stripes > 1:
            if snapshot_of is not None:
                raise LvmError("a COW snapshot's store is linear (no --stripes)")
            if stripe_size < 4096 or stripe_size & (stripe_size - 1) or \
                    stripe_size > self.extent_bytes:
                raise LvmError(f"stripe size {stripe_size} must be a power of two from 4 KiB "
                               "to the extent size")
            count = -(-count // stripes) * stripes  # as LVM2 rounds up to full stripes
            plan = alloc.plan_striped(self.meta, count, stripes)
            alloc.append_striped(lv, plan, stripe_size // SECTOR)
        else:
            plan = alloc.plan_allocation(self.meta, count)
            alloc.append_areas(lv, plan)
        if read_only:
            lv.status = ["READ", "VISIBLE"]
        if snapshot_of is not None:  # LVM2 keeps a COW store's flags without VISIBLE
            lv.status = [f for f in lv.status if f != "VISIBLE"]
        self._zero_areas(plan)
        self.meta.lvs.append(lv)
        if snapshot_of is not None:
            origin = self.meta.lv(snapshot_of)
            n = 0
            while self.meta.has_lv(f"snapshot{n}"):
                n += 1
            hidden = LogicalVolume(
                name=f"snapshot{n}", id=new_id(self.rng), status=["READ", "WRITE"],
                creation_time=lv.creation_time, creation_host=self.host,
                segments=[Segment(start_extent=0, extent_count=origin.extent_count,
                                  type="snapshot", chunk_size=chunk_size // SECTOR,
                                  origin=snapshot_of, cow_store=name)])
            self.meta.lvs.append(hidden)
            try:
                CowStore.initialise(self._extent_map(name), chunk_size // SECTOR,
                                    name=f"{self.name}/{name}")
            except LvmError:
                self.meta.lvs.remove(hidden)
                self.meta.lvs.remove(lv)
                raise
            # the header must be durable before metadata says the snapshot exists
            for a in plan:
                self.devices[a.pv].io.flush()
        self.commit(f"lvcreate {self.name}/{name}")

    # ------------------------------------------------------------- thin provisioning
    def pool_segment(self, name: str) -> Segment | None:
        """The `thin-pool` segment of LV `name`, if it is a thin pool."""
        lv = self.meta.lv(name)
        return lv.segments[0] if lv.segments and lv.segments[0].type == "thin-pool" else None

    def thin_segment(self, name: str) -> Segment | None:
        """The `thin` segment of LV `name`, if it is a thin LV."""
        lv = self.meta.lv(name)
        return lv.segments[0] if lv.segments and lv.segments[0].type == "thin" else None

    def thins_of(self, pool: str) -> list[str]:
        """Thin LVs in pool `pool`."""
        return [lv.name for lv in self.meta.lvs for s in lv.segments
                if s.type == "thin" and s.thin_pool == pool]

    def pool(self, name: str) -> ThinPool:
        """The thin pool `name` (loaded once per VG handle; orphaned devices are dropped)."""
        tp = self._pools.get(name)
        if tp is None:
            seg = self.pool_segment(name)
            if seg is None:
                raise LvmError(f"{self.name}/{name} is not a thin pool")
            tp = ThinPool.load(f"{self.name}/{name}", self._extent_map(seg.pool),
                               self._extent_map(seg.metadata), seg.chunk_size,
                               zero_new_blocks=seg.zero_new_blocks)
            known = {self.thin_segment(t).device_id for t in self.thins_of(name)}  # type: ignore[union-attr]
            tp.retain(known)
            self._pools[name] = tp
        return tp

    def lvcreate_thin_pool(self, name: str, size: int, *, chunk_size: int = 64 << 10,
                           metadata_size: int | None = None, zero: bool = True) -> None:
        """A thin pool: `<name>_tdata` (data) and `<name>_tmeta` (mappings) under LV `name`."""
        _name_ok(name, "LV")
        for n in (name, f"{name}_tdata", f"{name}_tmeta"):
            if self.meta.has_lv(n):
                raise LvmError(f"logical volume {self.name}/{n} already exists")
        if chunk_size < 64 << 10 or chunk_size > 1 << 30 or chunk_size % (64 << 10):
            raise LvmError(f"thin pool chunk size {chunk_size} must be a multiple of 64 KiB "
                           "up to 1 GiB")
        data_count = self._extents_for(size)
        chunks = data_count * self.extent_bytes // chunk_size
        if metadata_size is None:  # room for the table of ~8 devices mapping every chunk, x2
            metadata_size = max(2 << 20, chunks * 16 * 8 * 2 + 8192)
        meta_count = self._extents_for(metadata_size)
        plan = alloc.plan_allocation(self.meta, data_count + meta_count)
        now = self._now()
        data = LogicalVolume(name=f"{name}_tdata", id=new_id(self.rng), status=["READ", "WRITE"],
                             creation_time=now, creation_host=self.host)
        meta = LogicalVolume(name=f"{name}_tmeta", id=new_id(self.rng), status=["READ", "WRITE"],
                             creation_time=now, creation_host=self.host)
        # the plan covers both LVs: give the metadata LV the first extents, data the rest
        first, rest = _split_plan(plan, meta_count)
        alloc.append_areas(meta, first)
        alloc.append_areas(data, rest)
        self._zero_areas(plan)
        pool = LogicalVolume(name=name, id=new_id(self.rng), creation_time=now,
                             creation_host=self.host,
                             segments=[Segment(start_extent=0, extent_count=data_count,
                                               type="thin-pool", metadata=meta.name,
                                               pool=data.name, transaction_id=0,
                                               chunk_size=chunk_size // SECTOR,
                                               discards="passdown", zero_new_blocks=zero)])
        self.meta.lvs += [pool, data, meta]
        try:
            tp = ThinPool.format(f"{self.name}/{name}", self._extent_map(data.name),
                                 self._extent_map(meta.name), chunk_size // SECTOR,
                                 zero_new_blocks=zero)
        except LvmError:
            for lv in (pool, data, meta):
                self.meta.lvs.remove(lv)
            raise
        self._pools[name] = tp
        self.commit(f"lvcreate --type thin-pool {self.name}/{name}")

    def lvcreate_thin(self, name: str, virtual_size: int, pool: str, *,
                      read_only: bool = False) -> None:
        """A thin LV of `virtual_size` in `pool` (may exceed the pool: overprovisioning)."""
        _name_ok(name, "LV")
        if self.meta.has_lv(name):
            raise LvmError(f"logical volume {self.name}/{name} already exists")
        if self.pool_segment(pool) is None:
            raise LvmError(f"{self.name}/{pool} is not a thin pool")
        self._thin_create(name, self._extents_for(virtual_size), pool=pool, read_only=read_only)

    def _thin_create(self, name: str, count: int, *, pool: str = "", origin: str = "",
                     read_only: bool = False) -> None:
        if origin:
            oseg = self.thin_segment(origin)
            assert oseg is not None
            pool, count = oseg.thin_pool, self.meta.lv(origin).extent_count
        pseg = self.pool_segment(pool)
        assert pseg is not None
        tp = self.pool(pool)
        used = {s.device_id for lv in self.meta.lvs for s in lv.segments if s.type == "thin"}
        dev_id = max(used | set(tp.maps) | {0}) + 1
        if dev_id > MAX_DEVICE_ID:
            raise LvmError(f"thin pool {pool}: no device id left")
        if origin:
            tp.snapshot(self.thin_segment(origin).device_id, dev_id)  # type: ignore[union-attr]
        else:
            tp.create(dev_id)
        pseg.transaction_id += 1
        lv = LogicalVolume(name=name, id=new_id(self.rng), creation_time=self._now(),
                           creation_host=self.host,
                           status=["READ", "VISIBLE"] if read_only else
                           ["READ", "WRITE", "VISIBLE"],
                           segments=[Segment(start_extent=0, extent_count=count, type="thin",
                                             thin_pool=pool,
                                             transaction_id=pseg.transaction_id,
                                             origin=origin, device_id=dev_id)])
        self.meta.lvs.append(lv)
        self.commit(f"lvcreate {'-s ' if origin else ''}{self.name}/{name}")

    def thin_binding(self, lv_id: str) -> tuple[str, ThinPool, int, int, bool]:
        """(name, pool, device id, size, read-only) of the thin LV with this id."""
        lv = next((v for v in self.meta.lvs if v.id == lv_id), None)
        if lv is None:
            raise LvmError(f"{self.name}: logical volume {lv_id} no longer exists")
        seg = lv.segments[0]
        return (f"{self.name}/{lv.name}", self.pool(seg.thin_pool), seg.device_id,
                lv.extent_count * self.extent_bytes, "WRITE" not in lv.status)

    def lvextend(self, name: str, size: int) -> None:
        """Grow LV `name` to `size` bytes (rounded up to extents), contiguously when possible."""
        lv = self.meta.lv(name)
        count = self._extents_for(size)
        if count < lv.extent_count:
            raise LvmError(f"{self.name}/{name}: new size is smaller than the current "
                           f"{lv.extent_count * self.extent_bytes} bytes (use lvreduce)")
        if count == lv.extent_count:
            raise LvmError(f"{self.name}/{name}: new size equals the current size "
                           f"({count} extents)")
        if self.snapshots_of(name):
            raise LvmError(f"{self.name}/{name}: cannot resize a snapshot origin while it has "
                           "snapshots")
        if self.thin_segment(name) is not None:  # virtual size only: nothing to allocate
            lv.segments[0].extent_count = count
            self.commit(f"lvextend {self.name}/{name}")
            return
        pseg = self.pool_segment(name)
        if pseg is not None:  # a pool grows by its data LV
            data = self.meta.lv(pseg.pool)
            plan = alloc.plan_allocation(self.meta, count - lv.extent_count,
                                         after=alloc.last_physical_end(data))
            self._zero_areas(plan)
            alloc.append_areas(data, plan)
            pseg.extent_count = count
            self.commit(f"lvextend {self.name}/{name}")
            tp = self._pools.get(name)
            if tp is not None:
                tp.data = self._extent_map(pseg.pool)
                tp.grown()
            return
        last = lv.segments[-1] if lv.segments else None
        is_cow = self.snapshot_segment(name) is not None
        if last is not None and last.type == "striped" and len(last.stripes) > 1:
            n = len(last.stripes)  # a striped LV grows by another segment of as many stripes
            add = -(-(count - lv.extent_count) // n) * n
            plan = alloc.plan_striped(self.meta, add, n)
            self._zero_areas(plan)
            alloc.append_striped(lv, plan, last.stripe_size)
        else:
            plan = alloc.plan_allocation(self.meta, count - lv.extent_count,
                                         after=alloc.last_physical_end(lv))
            self._zero_areas(plan)
            alloc.append_areas(lv, plan)
        if is_cow:
            self._stores.pop(name, None)
        self.commit(f"lvextend {self.name}/{name}")

    def lvreduce(self, name: str, size: int, *, force: bool = False) -> None:
        """Shrink LV `name`; refused if the cut part holds data (nonzero bytes) unless forced."""
        lv = self.meta.lv(name)
        count = self._extents_for(size)
        if count >= lv.extent_count:
            raise LvmError(f"{self.name}/{name}: new size is not smaller than the current "
                           f"{lv.extent_count} extents (use lvextend)")
        if self.snapshot_segment(name) is not None or self.snapshots_of(name):
            raise LvmError(f"{self.name}/{name}: cannot reduce a snapshot or snapshot origin")
        if self.pool_segment(name) is not None:
            raise LvmError(f"{self.name}/{name}: thin pools cannot be reduced (as in LVM2)")
        tseg = self.thin_segment(name)
        if tseg is not None:
            dev = self.open_lv(name)
            new_size = count * self.extent_bytes
            if not force:
                pos = new_size
                while pos < dev.size:
                    n = min(1 << 20, dev.size - pos)
                    buf = dev.read(pos, n)
                    if buf.count(0) != n:
                        raise LvmError(f"{self.name}/{name}: reducing to {count} extents would "
                                       f"destroy data at byte {pos + n - len(buf.lstrip(bytes(1)))}"
                                       " (use --force)")
                    pos += n
            tseg.extent_count = count
            self.commit(f"lvreduce {self.name}/{name}")
            tp = self.pool(tseg.thin_pool)
            tp.truncate(tseg.device_id, new_size)
            tp.commit()
            return
        if not force:
            emap = self._extent_map(name)
            pos, end = count * self.extent_bytes, lv.extent_count * self.extent_bytes
            while pos < end:
                n = min(1 << 20, end - pos)
                buf = emap.pread(pos, n)
                if buf.count(0) != n:
                    first = pos + n - len(buf.lstrip(b"\0"))
                    raise LvmError(f"{self.name}/{name}: reducing to {count} extents would "
                                   f"destroy data at byte {first} (use --force)")
                pos += n
        alloc.truncate_extents(lv, count)
        self.commit(f"lvreduce {self.name}/{name}")

    def lvrename(self, old: str, new: str) -> None:
        """Rename an LV (snapshot references follow)."""
        _name_ok(new, "LV")
        lv = self.meta.lv(old)
        if not self.meta.lv_visible(lv):
            raise LvmError(f"{self.name}/{old} is an internal LV")
        if self.meta.has_lv(new):
            raise LvmError(f"logical volume {self.name}/{new} already exists")
        lv.name = new
        for other in self.meta.lvs:
            for seg in other.segments:
                if seg.type == "snapshot":
                    if seg.origin == old:
                        seg.origin = new
                    if seg.cow_store == old:
                        seg.cow_store = new
                if seg.type == "thin":
                    if seg.thin_pool == old:
                        seg.thin_pool = new
                    if seg.origin == old:
                        seg.origin = new
        if old in self._stores:
            self._stores[new] = self._stores.pop(old)
        if old in self._pools:
            self._pools[new] = self._pools.pop(old)
        self.commit(f"lvrename {self.name}/{old} {new}")

    def _drop(self, name: str) -> None:
        """Remove LV `name` (and a snapshot's hidden LV) from the metadata."""
        lv = self.meta.lv(name)
        if self.snapshot_segment(name) is not None:
            self.meta.lvs.remove(self._hidden_snapshot_lv(name))
        pseg = self.pool_segment(name)
        if pseg is not None:
            self.meta.lvs.remove(self.meta.lv(pseg.pool))
            self.meta.lvs.remove(self.meta.lv(pseg.metadata))
            self._pools.pop(name, None)
        self.meta.lvs.remove(lv)
        self._stores.pop(name, None)
        for other in self.meta.lvs:  # thin snapshots outlive their origin, as in LVM2
            for seg in other.segments:
                if seg.type == "thin" and seg.origin == name:
                    seg.origin = ""

    def lvremove(self, name: str, *, force: bool = False) -> None:
        """Remove an LV; an origin with snapshots needs `force` (its snapshots go too)."""
        lv = self.meta.lv(name)
        if not self.meta.lv_visible(lv):
            raise LvmError(f"{self.name}/{name} is an internal LV")
        snaps = self.snapshots_of(name)
        if snaps and not force:
            raise LvmError(f"{self.name}/{name} has snapshots ({', '.join(snaps)}); remove them "
                           "first or use --force")
        thins = self.thins_of(name) if self.pool_segment(name) is not None else []
        if thins and not force:
            raise LvmError(f"{self.name}/{name} is a thin pool holding {', '.join(thins)}; "
                           "remove them first or use --force")
        tseg = self.thin_segment(name)
        for s in snaps + thins:
            self._drop(s)
        self._drop(name)
        # The extents keep their data (as in LVM2, so vgcfgrestore can undo a removal); they
        # are zeroed when allocated again, so nothing leaks into another LV.
        self.commit(f"lvremove {self.name}/{name}")
        if tseg is not None and self.meta.has_lv(tseg.thin_pool):
            self.pool(tseg.thin_pool).delete(tseg.device_id)  # after: a crash leaves an orphan

    def merge_snapshot(self, name: str) -> int:
        """lvconvert --merge: copy the snapshot's chunks back into its origin; remove it.

        Returns the number of chunks merged. Other snapshots of the origin keep their view.
        """
        seg = self.snapshot_segment(name)
        if seg is None:
            raise LvmError(f"{self.name}/{name} is not a snapshot")
        st = self.store(name)
        st.check()
        origin = self.open_lv(seg.origin)
        assert isinstance(origin, LogicalVolumeDevice)
        size = origin.size
        for old, new in sorted(st.exceptions.items()):
            start = old * st.chunk
            if start >= size:
                continue
            n = min(st.chunk, size - start)
            origin.write(start, st.read_chunk(new, 0, n), _skip=st)
        origin.flush()
        merged = len(st.exceptions)
        self._drop(name)
        self.commit(f"lvconvert --merge {self.name}/{name}")
        return merged

    def snapshot_status(self, name: str) -> tuple[bool, float]:
        """(valid, Data%) of snapshot `name`."""
        st = self.store(name)
        return st.valid, st.data_percent


def _split_plan(plan: list[alloc.Area], first: int) -> tuple[list[alloc.Area],
                                                              list[alloc.Area]]:
    """Cut an allocation plan after its first `first` extents."""
    a: list[alloc.Area] = []
    b: list[alloc.Area] = []
    need = first
    for area in plan:
        take = min(need, area.count)
        if take:
            a.append(alloc.Area(area.pv, area.pe, take))
        if area.count > take:
            b.append(alloc.Area(area.pv, area.pe + take, area.count - take))
        need -= take
    return a, b


def _host_info(host: str) -> str:
    u = os.uname()
    return f"{u.sysname} {host} {u.release} {u.version} {u.machine}"


def list_vgs(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Names of the VGs whose metadata is on the PVs in `paths`."""
    return sorted({name for name, _ in list_vg_ids(paths)})


def list_vg_ids(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[str, str]]:
    """(name, VG UUID) of every VG whose metadata is on the PVs in `paths` (a name may appear
    with two UUIDs: two different VGs, as LVM2's `vgs` lists them)."""
    found: set[tuple[str, str]] = set()
    for dev in scan(paths, writable=False):
        for h in dev.mdas:
            got = read_mda_text(dev, h)
            if got is not None:
                found.add((got[0].name, got[0].id))
        dev.io.close()
    return sorted(found)
