"""XenServer storage objects: SR, VDI, VBD, PBD, and the SR's garbage collector.

An SR (storage repository) is a directory holding `sr.json` (its metadata, always rewritten
atomically) and its volumes. What a volume is depends on the SR type: `file` keeps each VDI as
a VHD file `<uuid>.vhd`; other types (`lvm`, `lvhd`) are added by dropping a module into
`storage/sr/srtypes/` that registers an `SRDriver` subclass with `@register_sr_type`.

Snapshot and clone follow XenServer: the VDI's volume becomes a hidden, read-only "base copy",
the VDI continues as an empty child with the same UUID, and the snapshot (or clone) is a second
child with a new UUID. `SR.gc()` removes hidden base copies nobody uses and coalesces a hidden
parent with its only child, as XenServer's GC does.

Multi-step changes are made crash-safe by recording the operation in `sr.json` (`pending`)
before touching volumes; `SR.open` finishes or rolls back whatever a crash interrupted.

Several processes may use one SR (a backend serving a VBD while the CLI snapshots): every
operation runs under an exclusive `flock` on `.sr.lock` and first re-reads `sr.json` when its
`seqno` moved, updating the record objects in place, so no process saves stale records.
"""
from __future__ import annotations

import fcntl
import functools
import importlib
import json
import os
import uuid as uuidlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from storage.devices.blockdev import BlockDevice, DelegatingDisk
from storage.errors import SrError
from storage.vhd.chain import write_json_atomic

META_FILE = "sr.json"
LOCK_FILE = ".sr.lock"
META_VERSION = 1


@dataclass
class VDI:
    """A virtual disk image record."""

    uuid: str
    name_label: str
    virtual_size: int
    location: str = ""                  # the driver's name for the volume (a file name, an LV)
    read_only: bool = False
    sharable: bool = False
    hidden: bool = False                # a base copy: part of chains, not user-visible
    parent: str | None = None           # uuid of the VDI whose volume is this one's parent
    is_a_snapshot: bool = False
    snapshot_of: str | None = None
    name_description: str = ""
    missing: bool = False               # `sr scan` found no volume (kept: others depend on it)
    cbt_enabled: bool = False           # writes are logged in <uuid>.cbtlog (storage.sr.cbt)
    cbt_metadata: bool = False          # `vdi data-destroy`d: only the CBT log is left

    @property
    def managed(self) -> bool:
        """False for hidden base copies, which only the SR manages."""
        return not self.hidden


@dataclass
class VBD:
    """A VDI attached to a VM (a virtual block device)."""

    uuid: str
    vdi: str
    vm: str
    mode: str = "RW"                    # "RO" or "RW"
    device: str = "xvda"
    currently_attached: bool = False


@dataclass
class PBD:
    """An SR attached to a host."""

    uuid: str
    host: str
    device_config: dict[str, str] = field(default_factory=dict)
    currently_attached: bool = False


@dataclass
class GcReport:
    """What a garbage-collector run did."""

    removed: list[str] = field(default_factory=list)
    coalesced: list[tuple[str, str]] = field(default_factory=list)   # (child, into parent)
    skipped: list[str] = field(default_factory=list)


@dataclass
class Volume:
    """A volume a driver found in the SR's storage (`SRDriver.probe_volume`)."""

    location: str
    uuid: str                           # the uuid in the volume's name
    virtual_size: int = 0
    has_data: bool = True               # False only when provably empty (nothing to lose)
    parent: str | None = None           # uuid of the recorded VDI it is a differencing child of
    snapshot_of: str | None = None      # lvm: uuid of the recorded VDI it is a COW snapshot of
    read_only: bool = False
    error: str | None = None            # unreadable: what is wrong with it
    parent_unrecorded: bool = False     # its parent/origin is a volume no record names (yet)


@dataclass
class ScanReport:
    """What `SR.scan` found, and (unless a dry run) did."""

    adopted: list[str] = field(default_factory=list)     # volumes introduced as new VDIs
    removed_volumes: list[str] = field(default_factory=list)  # provably empty orphans
    unreadable: list[str] = field(default_factory=list)  # orphans left alone: "loc: why"
    forgotten: list[str] = field(default_factory=list)   # records dropped: volume missing
    marked_missing: list[str] = field(default_factory=list)  # kept (children/attached)
    ignored: list[str] = field(default_factory=list)     # "name, why": not a volume name
    dry_run: bool = False

    @property
    def clean(self) -> bool:
        """Metadata and storage already agreed."""
        return not (self.adopted or self.removed_volumes or self.unreadable or self.forgotten
                    or self.marked_missing)


class SRDriver(ABC):
    """How an SR type stores volumes. Small on purpose: the SR keeps records and lifecycle.

    A driver is built with its `SR` and works only on VDI records it is handed. Methods that
    create volumes return nothing; they fill in `vdi.location` and `vdi.virtual_size`.
    """

    type_name: ClassVar[str] = ""

    def __init__(self, sr: SR) -> None:
        self.sr = sr

    def create_sr(self, device_config: dict[str, str]) -> None:
        """Prepare storage for a new, empty SR."""
        return None

    def introduce_sr(self, device_config: dict[str, str]) -> None:
        """Take over storage that already holds this SR's volumes (`sr introduce`)."""
        return None

    def attach(self) -> None:
        """Make the SR's storage reachable (PBD plug); idempotent."""
        return None

    def close(self) -> None:
        """Release what `attach` or any operation opened (files, volume groups); idempotent."""
        return None

    @abstractmethod
    def vdi_create(self, vdi: VDI, size: int) -> None:
        """Create an empty volume of at least `size` bytes for `vdi`."""

    @abstractmethod
    def vdi_open(self, vdi: VDI, *, read_only: bool) -> BlockDevice:
        """Open the VDI (with its whole chain) as a block device."""

    @abstractmethod
    def vdi_snapshot(self, vdi: VDI, copies: list[VDI]) -> list[VDI]:
        """Give each of `copies` `vdi`'s current contents, in O(1).

        Returns the new hidden VDIs (base copies) the SR must record; the driver sets
        `parent` of `vdi` and of every copy.
        """

    @abstractmethod
    def vdi_destroy(self, vdi: VDI) -> None:
        """Delete the VDI's volume."""

    @abstractmethod
    def vdi_resize(self, vdi: VDI, size: int) -> int:
        """Resize the VDI's volume; returns the new virtual size."""

    @abstractmethod
    def vdi_coalesce(self, parent: VDI, child: VDI, grandchildren: list[VDI]) -> None:
        """Merge `child` into `parent`, relinking `grandchildren` to `parent`.

        If `child` is a leaf (not hidden) the merged volume then takes `child`'s place
        (`child.location` ends up naming it) and `parent`'s volume is gone.
        """

    def coalesce_blocker(self, parent: VDI, child: VDI) -> str | None:
        """Why `child` cannot be coalesced into `parent` now (None: it can); gc skips it."""
        return None

    @abstractmethod
    def physical_utilisation(self, vdi: VDI) -> int:
        """Bytes the VDI's volume occupies."""

    def recover(self, pending: dict[str, Any]) -> None:
        """Finish or roll back the operation `pending` that a crash interrupted."""
        return None

    def list_volumes(self) -> list[str]:
        """Locations of every VDI volume in the SR's storage (by name; cheap)."""
        raise SrError(f"SR type {self.type_name!r} does not support scan")

    def in_use(self, vdis: list[VDI]) -> list[str]:
        """Why any of these VDIs' volumes is open elsewhere (one line each; [] = free)."""
        return []

    def ignored_volumes(self) -> list[str]:
        """Things that look like volumes but are not named as this SR type names them
        ("name, why"); XenServer's scan skips them, we say so."""
        return []

    def probe_volume(self, location: str) -> Volume:
        """Look inside a volume no record names: size, whether it holds data, its parent."""
        raise SrError(f"SR type {self.type_name!r} does not support scan")


SR_TYPES: dict[str, type[SRDriver]] = {}


def register_sr_type(cls: type[SRDriver]) -> type[SRDriver]:
    """Class decorator: make `cls` available as `hvsim sr create --type <cls.type_name>`."""
    SR_TYPES[cls.type_name] = cls
    return cls


def driver_class(type_name: str) -> type[SRDriver]:
    """The driver for an SR type, importing `storage.sr.srtypes.<type_name>` on first use."""
    if type_name not in SR_TYPES:
        try:
            importlib.import_module(f"storage.sr.srtypes.{type_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"storage.sr.srtypes.{type_name}":
                raise
        if type_name not in SR_TYPES:
            known = sorted({*SR_TYPES, *_available_types()})
            raise SrError(f"unknown SR type {type_name!r} (known: {', '.join(known)})")
    return SR_TYPES[type_name]


def _available_types() -> list[str]:
    import pkgutil

    import storage.sr.srtypes as pkg

    return [m.name for m in pkgutil.iter_modules(pkg.__path__)]


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class VbdDevice(DelegatingDisk):
    """The block device a plugged VBD serves: its VDI's chain, re-opened in place by the SR
    when a snapshot, clone or resize changes which volume is the VDI's leaf (XenServer pauses
    and unpauses the tapdisk for this). Implements `BlockDevice`."""

    def pause(self) -> None:
        """Flush and release the volume before the SR changes the chain under it."""
        self._dev.close()

    def unpause(self, dev: BlockDevice) -> None:
        """Continue on the (re-opened) VDI."""
        self._dev = dev


def _merge(current: dict[str, Any], raw: dict[str, Any], cls: type) -> dict[str, Any]:
    """Records from `raw`, reusing (and updating) the objects already in `current`."""
    names = [f.name for f in fields(cls)]
    out: dict[str, Any] = {}
    for key, data in raw.items():
        obj = current.get(key)
        if obj is None:
            obj = _from_dict(cls, data)
        else:
            for n in names:
                if n in data:
                    setattr(obj, n, data[n])
        out[key] = obj
    return out


def _mutating(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an SR method under the SR lock, on records as they are on disk."""

    @functools.wraps(fn)
    def wrapper(self: SR, *args: Any, **kwargs: Any) -> Any:
        with self.locked():
            return fn(self, *args, **kwargs)

    return wrapper


class SR:
    """A storage repository. Open with `SR.create(...)` or `SR.open(path)`."""

    def __init__(self, path: Path, *, uuid: str, type_name: str, name_label: str) -> None:
        self.path = path
        self.uuid = uuid
        self.type = type_name
        self.name_label = name_label
        self.vdis: dict[str, VDI] = {}
        self.vbds: dict[str, VBD] = {}
        self.pbds: dict[str, PBD] = {}
        self.pending: dict[str, Any] | None = None
        self.sync = False          # VHD writes fsync between allocation steps (power-loss safe)
        self.driver = driver_class(type_name)(self)
        self.seqno = 0
        self._devices: dict[str, VbdDevice] = {}
        self._lock_depth = 0

    # --- persistence -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, type_name: str = "file",
               name_label: str = "", device_config: dict[str, str] | None = None,
               uuid: str | None = None, sync: bool = False) -> SR:
        """Create a new, empty SR in directory `path` (created if missing, must be empty).

        `sync`: VHD volumes fsync between the ordered steps of a block allocation, so a power
        loss (not only a crash of the process) leaves every sector old or new; slower."""
        p = Path(path)
        if (p / META_FILE).exists():
            raise SrError(f"{p}: already an SR (found {META_FILE})")
        if p.exists() and not p.is_dir():
            raise SrError(f"{p}: not a directory")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SrError(f"{p}: cannot create the SR directory: {exc.strerror}") from exc
        sr = cls(p, uuid=uuid or str(uuidlib.uuid4()), type_name=type_name,
                 name_label=name_label or p.name)
        sr.sync = sync
        sr.driver.create_sr(device_config or {})
        sr.save()
        return sr

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SR:
        """Load the SR in `path`, finishing any operation a crash interrupted."""
        p = Path(path)
        data = cls._read_meta(p)
        try:
            sr = cls(p, uuid=data["uuid"], type_name=data["type"],
                     name_label=data.get("name_label", ""))
        except (KeyError, TypeError) as exc:
            raise SrError(f"{p / META_FILE}: malformed SR metadata: {exc}") from exc
        sr.seqno = -1
        with sr.locked():          # loads the records and recovers a pending operation
            pass
        return sr

    @classmethod
    def introduce(cls, path: str | os.PathLike[str], *, type_name: str | None = None,
                  uuid: str | None = None, name_label: str = "",
                  device_config: dict[str, str] | None = None) -> tuple[SR, ScanReport]:
        """`xe sr-introduce` + `pbd-plug` + `sr-scan`: make the SR whose storage is at `path`
        (or on `device_config["device"]`) usable again, without formatting anything.

        A forgotten SR (`forget`) comes back with its records, then is scanned. Otherwise the
        SR's type and uuid come from what is there (`storage.sr.probe`: the VG
        `VG_XenStorage-<uuid>` of an lvm/lvhd SR; VHD files `<uuid>.vhd` of a file SR, whose
        uuid is new unless given) and every volume becomes a VDI: its uuid from its name,
        parents before children, volumes with children hidden base copies, CBT on where a
        `<uuid>.cbtlog` is beside it. Names and snapshot links are not on the volumes, so
        they are not restored (as for XenServer's file SRs)."""
        from storage.sr import probe

        p = Path(path)
        cfg = dict(device_config or {})
        if not p.exists():
            raise SrError(f"{p}: no such directory (introduce names the SR's directory)")
        if not p.is_dir():
            raise SrError(f"{p}: not a directory (introduce names the SR's directory; an LVM "
                          "SR's devices go in --device-config device=PATH[,PATH])")
        lock_fd = os.open(p / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            meta = p / META_FILE
            if meta.exists():
                data = json.loads(meta.read_text(encoding="utf-8"))
                if not data.get("forgotten"):
                    raise SrError(f"{p}: SR {data.get('uuid')} is already introduced")
                for what, want, have in (("type", type_name, data.get("type")),
                                         ("uuid", uuid, data.get("uuid"))):
                    if want and want != have:
                        raise SrError(f"{p}: the forgotten SR's {what} is {have}, not {want}")
                del data["forgotten"]
                data["seqno"] = data.get("seqno", 0) + 1
                write_json_atomic(meta, data)
                fresh = False
            else:
                found = (probe.vgs_on(cfg["device"].split(",")) if cfg.get("device")
                         else probe.probe(p))
                if type_name:
                    found = [f for f in found if f.type in (type_name, None)]
                if not found and type_name not in (None, "file"):
                    raise SrError(f"{p}: no {type_name} SR volume group (VG_XenStorage-<uuid>) "
                                  "found; name its PVs with --device-config device=PATH")
                if len(found) > 1:
                    raise SrError(f"{p}: {len(found)} SRs found ("
                                  f"{'; '.join(f.line(str(p)) for f in found)}); pick one "
                                  "with --type or --device-config device=")
                f = found[0] if found else None
                kind = type_name or (f.type if f else None) or "file"
                if f is not None and f.uuid and uuid and uuid != f.uuid:
                    raise SrError(f"{p}: the volumes belong to SR {f.uuid}, not {uuid}")
                sr_uuid = (f.uuid if f and f.uuid else None) or uuid or str(uuidlib.uuid4())
                sr = cls(p, uuid=sr_uuid, type_name=kind, name_label=name_label or p.name)
                if f is not None and f.devices:
                    cfg["device"] = ",".join(f.devices)
                sr.driver.introduce_sr(cfg)
                sr.save()
                fresh = True
        finally:
            os.close(lock_fd)
        sr = cls.open(p)
        return sr, sr.scan(adopt_all=fresh)

    @_mutating
    def forget(self) -> None:
        """`xe sr-forget`: stop using this SR, leaving its volumes and records on its storage
        (`introduce` brings it back). Refused while a VBD or PBD of it is plugged."""
        for v in self.vbds.values():
            if v.currently_attached:
                raise SrError(f"SR {self.uuid}: VDI {v.vdi} is attached to VM {v.vm} (VBD "
                              f"{v.uuid}); unplug it first")
        for pbd in self.pbds.values():
            if pbd.currently_attached:
                raise SrError(f"SR {self.uuid}: PBD {pbd.uuid} of host {pbd.host} is "
                              "plugged; unplug it first")
        self.seqno += 1
        write_json_atomic(self.path / META_FILE, {**self.to_dict(), "forgotten": True})
        self.close()

    @staticmethod
    def _read_meta(p: Path) -> dict[str, Any]:
        meta = p / META_FILE
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SrError(f"{p}: not an SR (no {META_FILE}; create one with "
                          "`hvsim sr create`)") from exc
        except (OSError, ValueError) as exc:
            raise SrError(f"{meta}: unreadable SR metadata: {exc}") from exc
        if not isinstance(data, dict):
            raise SrError(f"{meta}: malformed SR metadata: not a JSON object")
        if data.get("forgotten"):
            raise SrError(f"{p}: SR {data.get('uuid')} was forgotten (`hvsim sr forget`); "
                          f"`hvsim sr introduce {p}` brings it back")
        return data

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the SR's exclusive lock (across processes), with records fresh from disk."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth = 1
            self._refresh()
            yield
        finally:
            self._lock_depth = 0
            os.close(fd)           # releases the flock

    def _refresh(self) -> None:
        data = self._read_meta(self.path)
        if data.get("seqno", 0) != self.seqno:
            try:
                self.vdis = _merge(self.vdis, data.get("vdis", {}), VDI)
                self.vbds = _merge(self.vbds, data.get("vbds", {}), VBD)
                self.pbds = _merge(self.pbds, data.get("pbds", {}), PBD)
            except (TypeError, AttributeError) as exc:
                raise SrError(f"{self.path / META_FILE}: malformed SR metadata: {exc}") from exc
            self.pending = data.get("pending")
            self.sync = bool(data.get("sync", False))
            self.seqno = data.get("seqno", 0)
        if self.pending:
            self.driver.recover(self.pending)
            self.pending = None
            self.save()

    def to_dict(self) -> dict[str, Any]:
        """The metadata as stored in sr.json."""
        return {"version": META_VERSION, "uuid": self.uuid, "type": self.type,
                "name_label": self.name_label, "seqno": self.seqno, "sync": self.sync,
                "vdis": {k: asdict(v) for k, v in sorted(self.vdis.items())},
                "vbds": {k: asdict(v) for k, v in sorted(self.vbds.items())},
                "pbds": {k: asdict(v) for k, v in sorted(self.pbds.items())},
                "pending": self.pending}

    def save(self) -> None:
        """Write sr.json atomically (bumping its seqno)."""
        self.seqno += 1
        write_json_atomic(self.path / META_FILE, self.to_dict())

    def begin(self, op: dict[str, Any]) -> None:
        """Record an operation as pending (the driver's `recover` handles an interruption)."""
        self.pending = op
        self.save()

    def commit(self) -> None:
        """Clear the pending operation and save the records."""
        self.pending = None
        self.save()

    @_mutating
    def set_sync(self, on: bool) -> None:
        """Turn power-loss-safe VHD writes on or off (for VDIs opened from now on)."""
        self.sync = on
        self.save()

    # --- VDIs --------------------------------------------------------------------------------

    def vdi(self, uuid: str) -> VDI:
        """The VDI with this uuid (a unique prefix of at least 4 characters also works)."""
        if uuid in self.vdis:
            return self.vdis[uuid]
        matches = [v for k, v in self.vdis.items() if len(uuid) >= 4 and k.startswith(uuid)]
        if len(matches) == 1:
            return matches[0]
        raise SrError(f"SR {self.path}: no VDI {uuid!r}" if not matches else
                      f"SR {self.path}: VDI prefix {uuid!r} is ambiguous")

    def children(self, uuid: str) -> list[VDI]:
        """VDIs whose parent is `uuid`."""
        return [v for v in self.vdis.values() if v.parent == uuid]

    def chain_depth(self, uuid: str) -> int:
        """Volumes from this VDI down to its base."""
        n, cur = 1, self.vdis[uuid].parent
        while cur is not None:
            n, cur = n + 1, self.vdis[cur].parent
        return n

    @_mutating
    def vdi_create(self, name_label: str, size: int, *, read_only: bool = False,
                   sharable: bool = False, uuid: str | None = None) -> VDI:
        """Create an empty VDI of at least `size` bytes."""
        if size <= 0:
            raise SrError(f"VDI size must be positive, got {size}")
        vdi = VDI(uuid=uuid or str(uuidlib.uuid4()), name_label=name_label, virtual_size=size,
                  read_only=read_only, sharable=sharable)
        self.driver.vdi_create(vdi, size)
        self.vdis[vdi.uuid] = vdi
        self.save()
        return vdi

    @_mutating
    def _snapshot(self, uuid: str, *, clone: bool) -> VDI:
        vdi = self.vdi(uuid)
        if vdi.hidden:
            raise SrError(f"VDI {vdi.uuid} is a hidden base copy; snapshot its children instead")
        new = VDI(uuid=str(uuidlib.uuid4()), name_label=vdi.name_label,
                  virtual_size=vdi.virtual_size, sharable=vdi.sharable,
                  is_a_snapshot=not clone, snapshot_of=None if clone else vdi.uuid,
                  name_description=vdi.name_description)
        with self._paused(vdi):
            bases = self.driver.vdi_snapshot(vdi, [new])
            for b in bases:
                self.vdis[b.uuid] = b
            self.vdis[new.uuid] = new
            if vdi.cbt_enabled and not clone:
                from storage.sr import cbt
                cbt.on_snapshot(self, vdi, new)
            self.commit()
        return new

    def _attached(self, vdi_uuid: str) -> list[VBD]:
        return [v for v in self.vbds.values() if v.vdi == vdi_uuid and v.currently_attached]

    @contextmanager
    def _paused(self, vdi: VDI) -> Iterator[None]:
        """Pause this process's VBDs of `vdi` around a change of its leaf volume.

        VBDs plugged by another process cannot be paused from here, so the change is refused.
        """
        vbds = self._attached(vdi.uuid)
        foreign = [v for v in vbds if v.uuid not in self._devices]
        if foreign:
            raise SrError(f"VDI {vdi.uuid} is attached to VM {foreign[0].vm} (VBD "
                          f"{foreign[0].uuid}) by another process; unplug it there first")
        for v in vbds:
            self._devices[v.uuid].pause()
        try:
            yield
        finally:
            for v in vbds:
                self._devices[v.uuid].unpause(
                    self._open(self.vdis[vdi.uuid], read_only=v.mode == "RO"))

    def vdi_snapshot(self, uuid: str) -> VDI:
        """Snapshot a VDI as XenServer does; returns the snapshot VDI (a new uuid)."""
        return self._snapshot(uuid, clone=False)

    def vdi_clone(self, uuid: str) -> VDI:
        """Clone a VDI (a writable copy sharing the base copy); returns the clone."""
        return self._snapshot(uuid, clone=True)

    @_mutating
    def vdi_destroy(self, uuid: str) -> None:
        """Destroy a user-visible VDI; its base copies are left for `gc`."""
        vdi = self.vdi(uuid)
        if vdi.hidden:
            raise SrError(f"VDI {vdi.uuid} is a hidden base copy; `hvsim sr gc` removes it once "
                          "nothing uses it")
        if self.children(vdi.uuid):
            raise SrError(f"VDI {vdi.uuid} has children; destroy them first")
        for vbd in self.vbds.values():
            if vbd.vdi == vdi.uuid and vbd.currently_attached:
                raise SrError(f"VDI {vdi.uuid} is attached to VM {vbd.vm} (VBD {vbd.uuid}); "
                              "unplug it first")
        if not vdi.cbt_metadata:
            self.driver.vdi_destroy(vdi)
        (self.path / f"{vdi.uuid}.cbtlog").unlink(missing_ok=True)
        del self.vdis[vdi.uuid]
        self.vbds = {k: v for k, v in self.vbds.items() if v.vdi != vdi.uuid}
        for v in self.vdis.values():
            if v.snapshot_of == vdi.uuid:
                v.snapshot_of = None
        self.save()

    @_mutating
    def vdi_resize(self, uuid: str, size: int) -> int:
        """Resize a VDI (grow; shrink only when no data is lost); returns its new size."""
        vdi = self.vdi(uuid)
        if vdi.hidden or vdi.read_only:
            raise SrError(f"VDI {vdi.uuid} is read-only")
        with self._paused(vdi):
            vdi.virtual_size = self.driver.vdi_resize(vdi, size)
            if vdi.cbt_enabled:
                from storage.sr import cbt
                cbt.on_resize(self, vdi)
            self.save()
        return vdi.virtual_size

    @_mutating
    def vdi_open(self, uuid: str, *, read_only: bool = False) -> BlockDevice:
        """Open a VDI as a block device (hidden and read-only VDIs open read-only)."""
        vdi = self.vdi(uuid)
        if (vdi.hidden or vdi.read_only) and not read_only:
            raise SrError(f"VDI {vdi.uuid} is read-only")
        return self._open(vdi, read_only=read_only)

    def _open(self, vdi: VDI, *, read_only: bool) -> BlockDevice:
        if vdi.cbt_metadata:
            raise SrError(f"VDI {vdi.uuid} holds only CBT metadata (its data was destroyed)")
        from storage.sr import cbt
        return cbt.wrap(self, vdi, self.driver.vdi_open(vdi, read_only=read_only),
                        read_only=read_only)

    def physical_utilisation(self, uuid: str) -> int:
        """Bytes the VDI's own volume occupies."""
        return self.driver.physical_utilisation(self.vdi(uuid))

    # --- VBDs and PBDs -----------------------------------------------------------------------

    @_mutating
    def vbd_create(self, vdi_uuid: str, vm: str, *, mode: str = "RW",
                   device: str = "xvda") -> VBD:
        """Record that VM `vm` uses the VDI (not yet plugged)."""
        vdi = self.vdi(vdi_uuid)
        if mode not in ("RO", "RW"):
            raise SrError(f"VBD mode must be RO or RW, not {mode!r}")
        if vdi.hidden:
            raise SrError(f"VDI {vdi.uuid} is a hidden base copy and cannot be attached")
        if mode == "RW" and vdi.read_only:
            raise SrError(f"VDI {vdi.uuid} is read-only; attach it with mode RO")
        vbd = VBD(uuid=str(uuidlib.uuid4()), vdi=vdi.uuid, vm=vm, mode=mode, device=device)
        self.vbds[vbd.uuid] = vbd
        self.save()
        return vbd

    @_mutating
    def vbd_plug(self, vbd_uuid: str) -> VbdDevice:
        """Attach the VBD: open its VDI and return the block device the backend serves."""
        vbd = self._vbd(vbd_uuid)
        if vbd.currently_attached and vbd.uuid in self._devices:
            return self._devices[vbd.uuid]
        vdi = self.vdi(vbd.vdi)
        if vbd.mode == "RW" and not vdi.sharable:
            for other in self.vbds.values():
                if other.uuid != vbd.uuid and other.vdi == vdi.uuid and \
                        other.currently_attached and other.mode == "RW":
                    raise SrError(f"VDI {vdi.uuid} is already attached read-write to VM "
                                  f"{other.vm} and is not sharable")
        dev = VbdDevice(self._open(vdi, read_only=vbd.mode == "RO"))
        self._devices[vbd.uuid] = dev
        vbd.currently_attached = True
        self.save()
        return dev

    @_mutating
    def vbd_unplug(self, vbd_uuid: str) -> None:
        """Detach the VBD, flushing and closing its device."""
        vbd = self._vbd(vbd_uuid)
        dev = self._devices.pop(vbd.uuid, None)
        if dev is not None:
            dev.close()
        vbd.currently_attached = False
        self.save()

    @_mutating
    def vbd_destroy(self, vbd_uuid: str) -> None:
        """Forget an unplugged VBD."""
        vbd = self._vbd(vbd_uuid)
        if vbd.currently_attached:
            raise SrError(f"VBD {vbd.uuid} is plugged; unplug it first")
        del self.vbds[vbd.uuid]
        self.save()

    def _vbd(self, uuid: str) -> VBD:
        try:
            return self.vbds[uuid]
        except KeyError:
            raise SrError(f"SR {self.path}: no VBD {uuid!r}") from None

    @_mutating
    def pbd_create(self, host: str, device_config: dict[str, str] | None = None) -> PBD:
        """Record that `host` may attach this SR."""
        pbd = PBD(uuid=str(uuidlib.uuid4()), host=host, device_config=device_config or {})
        self.pbds[pbd.uuid] = pbd
        self.save()
        return pbd

    @_mutating
    def pbd_plug(self, pbd_uuid: str) -> None:
        """Attach the SR on the PBD's host."""
        pbd = self._pbd(pbd_uuid)
        self.driver.attach()
        pbd.currently_attached = True
        self.save()

    @_mutating
    def pbd_unplug(self, pbd_uuid: str) -> None:
        """Detach the SR from the PBD's host (refused while its VBDs are plugged)."""
        pbd = self._pbd(pbd_uuid)
        if any(v.currently_attached for v in self.vbds.values()):
            raise SrError(f"SR {self.path} has plugged VBDs; unplug them first")
        pbd.currently_attached = False
        self.save()

    def _pbd(self, uuid: str) -> PBD:
        try:
            return self.pbds[uuid]
        except KeyError:
            raise SrError(f"SR {self.path}: no PBD {uuid!r}") from None

    def close(self) -> None:
        """Close every block device this process plugged (their VBDs stay recorded as plugged),
        then release the SR's own storage (an LVM SR's volume group and its PV files)."""
        try:
            for dev in self._devices.values():
                dev.close()
            self._devices.clear()
        finally:
            self.driver.close()

    # --- scan ----------------------------------------------------------------------------------

    @_mutating
    def scan(self, *, dry_run: bool = False,
             progress: Callable[[str], None] | None = None,
             adopt_all: bool = False) -> ScanReport:
        """Reconcile the records with the volumes really in the SR (XenServer's sr-scan).

        A volume no VDI names (a crash between creating it and saving sr.json) is introduced
        as a VDI, as XenServer's sr-scan does, when it may hold data; one that provably holds
        nothing (an empty dynamic VHD, an all-zero LV) is removed; one that cannot be read is
        reported and left alone. A record whose volume is gone is forgotten, or, when other
        VDIs chain through it or a VBD is plugged on it, marked `missing`. Orphans are
        introduced parents first, so a chain of them is recovered whole; one that has
        children becomes a hidden base copy.

        `adopt_all` (`sr introduce`): every volume belongs to a VDI, empty ones too.
        """
        report = ScanReport(dry_run=dry_run)
        say = progress or (lambda msg: None)
        report.ignored = self.driver.ignored_volumes()
        present = set(self.driver.list_volumes())
        known = {v.location for v in self.vdis.values()}
        changed = False
        adopted: list[VDI] = []
        orphans = sorted(present - known)
        while orphans:
            waiting: list[tuple[str, Volume]] = []
            for loc in orphans:
                vol = self.driver.probe_volume(loc)
                if vol.parent_unrecorded:
                    waiting.append((loc, vol))
                    continue
                changed |= self._scan_one(loc, vol, report, say, adopted,
                                          dry_run=dry_run, adopt_all=adopt_all)
            if len(waiting) == len(orphans):   # no progress: their parents are not coming
                for loc, vol in waiting:
                    changed |= self._scan_one(loc, vol, report, say, adopted,
                                              dry_run=dry_run, adopt_all=adopt_all)
                break
            orphans = [loc for loc, _ in waiting]
        for vdi in adopted:
            if self.children(vdi.uuid):
                vdi.hidden = vdi.read_only = True
        if dry_run:
            for vdi in adopted:
                del self.vdis[vdi.uuid]
        attached = {v.vdi for v in self.vbds.values() if v.currently_attached}
        for vdi in sorted(self.vdis.values(), key=lambda v: v.uuid):
            if vdi.cbt_metadata:        # no volume by design (`vdi data-destroy`)
                continue
            if vdi.location in present:
                if vdi.missing and not dry_run:
                    vdi.missing, changed = False, True
                continue
            if self.children(vdi.uuid) or vdi.uuid in attached:
                if not vdi.missing:
                    report.marked_missing.append(vdi.uuid)
                    say(f"VDI {vdi.uuid}: volume {vdi.location} is missing; marked")
                    if not dry_run:
                        vdi.missing, changed = True, True
                continue
            report.forgotten.append(vdi.uuid)
            say(f"VDI {vdi.uuid}: volume {vdi.location} is missing; forget the record")
        if not dry_run:
            for u in report.forgotten:
                del self.vdis[u]
                self.vbds = {k: v for k, v in self.vbds.items() if v.vdi != u}
                for v in self.vdis.values():
                    if v.snapshot_of == u:
                        v.snapshot_of = None
                changed = True
            if changed:
                self.save()
        return report

    def _scan_one(self, loc: str, vol: Volume, report: ScanReport,
                  say: Callable[[str], None], adopted: list[VDI], *, dry_run: bool,
                  adopt_all: bool) -> bool:
        """Decide about one orphan volume; True when the records changed."""
        if vol.error is not None:
            report.unreadable.append(f"{loc}: {vol.error}")
            say(f"unreadable volume {loc} left alone: {vol.error}")
        elif (not adopt_all and not vol.has_data and vol.parent is None
              and vol.snapshot_of is None and not vol.parent_unrecorded):
            report.removed_volumes.append(loc)
            say(f"remove empty orphan volume {loc}")
            if not dry_run:
                self.driver.vdi_destroy(VDI(uuid=vol.uuid, name_label="", virtual_size=0,
                                            location=loc))
        elif vol.uuid in self.vdis:
            report.unreadable.append(f"{loc}: its uuid is already a VDI's")
        else:
            report.adopted.append(vol.uuid)
            say(f"introduce orphan volume {loc} as VDI {vol.uuid}")
            why = ("found by `hvsim sr introduce`" if adopt_all
                   else "found by `hvsim sr scan`: no record named it")
            vdi = VDI(uuid=vol.uuid, name_label=f"{'introduced' if adopt_all else 'recovered'} "
                      f"{loc}", virtual_size=vol.virtual_size, location=loc,
                      read_only=vol.read_only, parent=vol.parent,
                      is_a_snapshot=vol.snapshot_of is not None,
                      snapshot_of=vol.snapshot_of, name_description=why,
                      cbt_enabled=(self.path / f"{vol.uuid}.cbtlog").exists())
            self.vdis[vol.uuid] = vdi      # now a parent its children can find
            adopted.append(vdi)
            return not dry_run
        return False

    # --- garbage collection ------------------------------------------------------------------

    @_mutating
    def gc(self, *, progress: Callable[[str], None] | None = None) -> GcReport:
        """Remove unused base copies; coalesce each base copy that has a single child."""
        report = GcReport()
        attached = {v.vdi for v in self.vbds.values() if v.currently_attached}
        changed = True
        while changed:
            changed = False
            for vdi in sorted(self.vdis.values(), key=lambda v: v.uuid):
                if not vdi.hidden:
                    continue
                kids = self.children(vdi.uuid)
                if not kids:
                    if progress:
                        progress(f"remove unused base copy {vdi.uuid}")
                    self.driver.vdi_destroy(vdi)
                    del self.vdis[vdi.uuid]
                    self.save()
                    report.removed.append(vdi.uuid)
                    changed = True
                    break
                if len(kids) != 1:
                    continue
                child = kids[0]
                # A leaf in use, or the leaves whose headers a relink would rewrite, stay put.
                busy = [child] if not child.hidden else self.children(child.uuid)
                if any(b.uuid in attached for b in busy):
                    for b in busy:
                        if b.uuid in attached and b.uuid not in report.skipped:
                            report.skipped.append(b.uuid)
                    continue
                why = self.driver.coalesce_blocker(vdi, child)
                if why is None:           # open in another process (image locks): not now
                    held = self.driver.in_use([vdi, child, *self.children(child.uuid)])
                    why = held[0] if held else None
                if why is not None:  # checked before anything starts: nothing to recover
                    if child.uuid not in report.skipped:
                        report.skipped.append(child.uuid)
                        if progress:
                            progress(f"not coalescing {child.uuid} into {vdi.uuid}: {why}")
                    continue
                if progress:
                    progress(f"coalesce {child.uuid} into {vdi.uuid}")
                self._coalesce(vdi, child)
                report.coalesced.append((child.uuid, vdi.uuid))
                changed = True
                break
        return report

    def _coalesce(self, parent: VDI, child: VDI) -> None:
        grandchildren = self.children(child.uuid)
        self.begin({"op": "coalesce", "parent": parent.uuid, "child": child.uuid,
                    "leaf": not child.hidden,
                    "parent_location": parent.location, "child_location": child.location,
                    "grandchildren": [g.uuid for g in grandchildren]})
        self.driver.vdi_coalesce(parent, child, grandchildren)
        self.finish_coalesce(parent.uuid, child.uuid)
        self.commit()

    def finish_coalesce(self, parent_uuid: str, child_uuid: str) -> None:
        """Update the records after `child` was merged into `parent` (idempotent)."""
        parent = self.vdis.get(parent_uuid)
        child = self.vdis.get(child_uuid)
        if parent is None or child is None:
            return
        if child.hidden:
            for g in self.children(child.uuid):
                g.parent = parent.uuid
            del self.vdis[child.uuid]
        else:
            child.parent = parent.parent
            del self.vdis[parent.uuid]
