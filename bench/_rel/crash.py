"""Power cuts at every step of a VHD write, an SR snapshot, an SR coalesce (gc), a chain
coalesce and an LVM metadata update; then reopen and check what survived.

`sweep(scenario, ...)` copies a prepared directory, runs the operation with the power failing at
step 1, 2, 3, ... (every `pwrite`, `truncate`, `flush`, `rename`, `replace`, `unlink` the code
under test issues — see `crashio.PowerPlan`) until a run completes, and after each cut runs the
recovery a user would (`SR.open`, `chain.recover`, opening the image read-write, `vhd check`) and
the scenario's checks: the image/VG opens, `vhd check` is clean, and every sector holds its old
or its new data — never anything else — with every acknowledged (flushed) write present.
"""
from __future__ import annotations

import contextlib
import gc
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._rel.crashio import CrashIO, PowerCut, PowerPlan
from storage.devices.rawio import FileIO

SECTOR = 512
MiB = 1 << 20


# --- patching the code under test so every container and file-system step goes through the plan

class _OsProxy:
    """The `os` module as seen by the code under test: rename/replace/unlink are plan steps."""

    def __init__(self, plan: PowerPlan) -> None:
        self._plan = plan

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def rename(self, a: Any, b: Any) -> None:
        self._plan.run_step(f"rename {Path(a).name} -> {Path(b).name}", lambda: os.rename(a, b))

    def replace(self, a: Any, b: Any) -> None:
        self._plan.run_step(f"replace {Path(a).name} -> {Path(b).name}",
                            lambda: os.replace(a, b))

    def unlink(self, a: Any, *args: Any, **kw: Any) -> None:
        self._plan.run_step(f"unlink {Path(a).name}", lambda: os.unlink(a, *args, **kw))

    def link(self, a: Any, b: Any) -> None:
        self._plan.run_step(f"link {Path(a).name} -> {Path(b).name}", lambda: os.link(a, b))


@contextlib.contextmanager
def powered_by(plan: PowerPlan) -> Iterator[None]:
    """Route the storage modules' FileIO and os calls through `plan` for the duration."""
    import storage.lvm.vg
    import storage.sr.sr
    import storage.sr.srtypes.file
    import storage.vhd.chain

    class CrashFileIO(FileIO):
        # A class (so `isinstance(x, FileIO)` in the code under test still works) whose
        # instances are CrashIO wrappers of a real FileIO: the LV data fast path, which
        # bypasses the RawIO with its own descriptor, stays off, so every write is a step.
        def __new__(cls, *args: Any, **kw: Any) -> CrashIO:  # type: ignore[misc]
            if plan.dead:
                raise PowerCut("power off")
            return CrashIO(FileIO(*args, **kw), plan)

    proxy = _OsProxy(plan)
    saved: list[tuple[Any, str, Any]] = []
    for mod in (storage.vhd.chain, storage.sr.srtypes.file, storage.lvm.vg):
        saved.append((mod, "FileIO", mod.FileIO))
        mod.FileIO = CrashFileIO  # type: ignore[attr-defined]
    if hasattr(storage.vhd.chain, "VhdFileIO"):
        vhd_file_io = storage.vhd.chain.VhdFileIO

        def crash_vhd_file_io(*args: Any, **kw: Any) -> CrashIO:
            if plan.dead:
                raise PowerCut("power off")
            return CrashIO(vhd_file_io(*args, **kw), plan)

        saved.append((storage.vhd.chain, "VhdFileIO", vhd_file_io))
        storage.vhd.chain.VhdFileIO = crash_vhd_file_io  # type: ignore[assignment]
    for mod in (storage.vhd.chain, storage.sr.srtypes.file, storage.sr.sr):
        saved.append((mod, "os", mod.os))
        mod.os = proxy  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


# --- the sweep -----------------------------------------------------------------------------------

class Broken(AssertionError):
    """What survived a power cut is not acceptable."""


@dataclass
class SweepResult:
    """Cut points tried, images that survived, and what went wrong at the others."""

    name: str
    cut_points: int = 0
    survived: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class Scenario:
    """setup(dir) -> state; op(dir, state, progress); verify(dir, state, progress)."""

    name: str
    setup: Callable[[Path], dict[str, Any]]
    op: Callable[[Path, dict[str, Any], dict[str, Any]], None]
    verify: Callable[[Path, dict[str, Any], dict[str, Any]], None]
    volatile: bool = False


def sweep(sc: Scenario, *, torn: bool = False, limit: int = 5000,
          stride: int = 1) -> SweepResult:
    """Cut the power at every `stride`-th step of `sc.op` (all of them by default)."""
    res = SweepResult(f"{sc.name}{' (torn)' if torn else ''}")
    # tmpfs when there is one: the sweep simulates durability, real fsyncs only cost time
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="hvsim-crash-", dir=shm))
    try:
        golden = root / "golden"
        golden.mkdir()
        state = sc.setup(golden)
        n = 1
        while n <= limit:
            work = root / f"cut{n}"
            shutil.copytree(golden, work)
            plan = PowerPlan(cut_at=n, torn=torn, volatile=sc.volatile, seed=n)
            progress: dict[str, Any] = {"plan": plan}
            completed = False
            with powered_by(plan):
                try:
                    sc.op(work, state, progress)
                    completed = True
                except PowerCut:
                    pass
            res.cut_points += 1
            try:
                sc.verify(work, state, progress)
                res.survived += 1
            except Exception as exc:  # any failure to recover is what we report
                where = plan.log[-1] if plan.log else "-"
                res.failures.append(f"cut at step {n} ({where}): {type(exc).__name__}: {exc}")
            shutil.rmtree(work, ignore_errors=True)
            # What the cut-off operation opened is reachable only through the PowerCut's
            # traceback cycle: collect it now, or every cut's deleted (tmpfs) images stay open.
            gc.collect()
            if completed:
                break
            n += stride
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return res


# --- checks shared by the VHD scenarios ----------------------------------------------------------

def _check_and_repair(path: Path) -> None:
    """`vhd check` must be clean, or clean after the repair opening read-write does."""
    from storage.vhd import chain

    problems = chain.check(path)
    if problems:
        if not all("footer at end of file missing" in p or "interrupted resize?" in p
                   for p in problems):
            raise Broken(f"vhd check {path.name}: {problems}")
        img = chain.open_chain(path, read_only=False)
        img.close()
        again = chain.check(path)
        if again:
            raise Broken(f"vhd check {path.name} after repair: {again}")


def _read_all(path: Path) -> bytes:
    from storage.vhd import chain

    img = chain.open_chain(path, read_only=True)
    try:
        return img.read(0, img.size)
    finally:
        img.close()


def _compare(got: bytes, before: bytes, after: bytes, what: str) -> None:
    """Each sector of `got` equals `before`'s or `after`'s (where they differ)."""
    if len(got) != len(before):
        raise Broken(f"{what}: size {len(got)} != {len(before)}")
    if got == before or got == after:
        return
    for s in range(0, len(got), SECTOR):
        g = got[s:s + SECTOR]
        if g != before[s:s + SECTOR] and g != after[s:s + SECTOR]:
            kind = "lost acknowledged data" if before[s:s + SECTOR] == after[s:s + SECTOR] \
                else "garbage (neither old nor new)"
            raise Broken(f"{what}: sector {s // SECTOR}: {kind}")


def _apply(model: bytearray, writes: list[tuple[int, bytes]]) -> bytearray:
    out = bytearray(model)
    for off, data in writes:
        out[off:off + len(data)] = data
    return out


# --- scenario: VHD writes ------------------------------------------------------------------------

def _nested_footer() -> bytes:
    """A valid VHD footer of another disk: what a guest storing VHD files writes to its disk."""
    import uuid as uuidlib

    from storage.vhd import format as fmt

    return fmt.Footer(disk_type=fmt.DISK_DYNAMIC, current_size=MiB, original_size=MiB,
                      geometry=(20, 4, 17), uuid=uuidlib.UUID(int=99)).pack()


def _vhd_writes(size: int, block: int) -> list[tuple[int, bytes]]:
    rng = random.Random(5)
    nb = size // block
    return [
        (3 * block + 1000, rng.randbytes(3000)),                  # new block, unaligned
        (block - 2048, rng.randbytes(6000)),                      # allocated + new block
        (100, rng.randbytes(700)),                                # inside an allocated block
        (5 * block, bytes(4096)),                                 # zeros into a new block
        ((nb - 2) * block + block - SECTOR, _nested_footer()),    # a VHD footer ends a block
        (7 * block + 512, rng.randbytes(2 * block)),              # several new blocks
        ((nb - 1) * block, _nested_footer() * 2),
    ]


def vhd_write_scenario(kind: str, *, volatile: bool = False) -> Scenario:
    """Writes (each followed by a flush) into a dynamic or differencing VHD."""
    from storage.vhd import chain
    from storage.vhd.image import VhdImage

    size, block = 4 * MiB, 64 << 10

    def setup(d: Path) -> dict[str, Any]:
        rng = random.Random(1)
        if kind == "differencing":
            base = chain.create_image(d / "base.vhd", size=size, block_size=block)
            base.write(0, rng.randbytes(size // 2))
            base.close()
            chain.create_image(d / "disk.vhd", parent_path=d / "base.vhd").close()
            img = chain.open_chain(d / "disk.vhd", read_only=False)
        else:
            img = chain.create_image(d / "disk.vhd", size=size, block_size=block)
        img.write(0, rng.randbytes(3 * block))
        img.write(block * 20, rng.randbytes(block // 2))
        img.close()
        old = _read_all(d / "disk.vhd")
        return {"old": old, "writes": _vhd_writes(len(old), block)}

    def op(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        from storage.devices.rawio import FileIO as PlainIO

        io = CrashIO(PlainIO(d / "disk.vhd"), progress["plan"])
        img = VhdImage.open(io, barriers=volatile)
        if kind == "differencing":
            img.parent = chain.open_chain(d / "base.vhd", read_only=True)
        try:
            progress["acked"] = 0
            for i, (off, data) in enumerate(st["writes"]):
                img.write(off, data)
                img.flush()
                progress["acked"] = i + 1
        finally:
            img.close()

    def verify(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        _check_and_repair(d / "disk.vhd")
        acked = progress.get("acked", 0)
        writes = st["writes"]
        before = _apply(bytearray(st["old"]), writes[:acked])
        after = _apply(before, writes[acked:acked + 1])
        _compare(_read_all(d / "disk.vhd"), bytes(before), bytes(after), "disk.vhd")

    return Scenario(f"VHD write ({kind}{', write-back cache' if volatile else ''})", setup, op,
                    verify, volatile=volatile)


# --- scenario: resize -------------------------------------------------------------------------

def vhd_resize_scenario() -> Scenario:
    """`chain.resize` of a dynamic VHD: grow (moving the BAT), then shrink back."""
    from storage.vhd import chain

    def setup(d: Path) -> dict[str, Any]:
        img = chain.create_image(d / "disk.vhd", size=2 * MiB, block_size=64 << 10)
        img.write(0, random.Random(8).randbytes(MiB))
        img.close()
        return {"old": _read_all(d / "disk.vhd")}

    def op(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        chain.resize(d / "disk.vhd", 16 * MiB)
        chain.resize(d / "disk.vhd", 3 * MiB)

    def verify(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        _check_and_repair(d / "disk.vhd")
        got = _read_all(d / "disk.vhd")
        old = st["old"]
        if got[:len(old)] != old or got[len(old):].count(0) != len(got) - len(old):
            raise Broken(f"data changed by an interrupted resize (size {len(got)})")

    return Scenario("VHD resize", setup, op, verify)


# --- scenario: chain coalesce --------------------------------------------------------------------

def chain_coalesce_scenario() -> Scenario:
    """`chain.coalesce` of the middle of base <- mid <- leaf, then `chain.recover`."""
    from storage.vhd import chain

    size, block = 4 * MiB, 64 << 10

    def setup(d: Path) -> dict[str, Any]:
        rng = random.Random(2)
        base = chain.create_image(d / "base.vhd", size=size, block_size=block)
        base.write(0, rng.randbytes(size // 2))
        base.close()
        mid = chain.create_image(d / "mid.vhd", parent_path=d / "base.vhd")
        mid.write(block * 2 + 512, rng.randbytes(block * 3))
        mid.write(size - block, rng.randbytes(block))
        mid.close()
        leaf = chain.create_image(d / "leaf.vhd", parent_path=d / "mid.vhd")
        leaf.write(block * 3, rng.randbytes(1024))
        leaf.close()
        return {"leaf": _read_all(d / "leaf.vhd"), "mid": _read_all(d / "mid.vhd")}

    def op(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        chain.coalesce(d / "mid.vhd")

    def verify(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        chain.recover(d)
        for name in ("leaf.vhd", "mid.vhd", "base.vhd"):
            if name != "mid.vhd" or (d / name).exists():
                _check_and_repair(d / name)
        _compare(_read_all(d / "leaf.vhd"), st["leaf"], st["leaf"], "leaf.vhd")
        if (d / "mid.vhd").exists():     # deleted once merged; intact until then
            _compare(_read_all(d / "mid.vhd"), st["mid"], st["mid"], "mid.vhd")

    return Scenario("chain coalesce", setup, op, verify)


# --- scenarios: SR snapshot and SR gc (coalesce) -------------------------------------------------

def _sr_vdi_bytes(sr: Any, uuid: str) -> bytes:
    dev = sr.vdi_open(uuid, read_only=True)
    try:
        return dev.read(0, dev.size)
    finally:
        dev.close()


def _sr_check_files(d: Path) -> None:
    for p in sorted(d.glob("*.vhd")):
        _check_and_repair(p)


def _new_sr(path: Path, kind: str) -> Any:
    from storage.sr.sr import SR

    cfg = {"size": str(48 * MiB)} if kind != "file" else None
    return SR.create(path, type_name=kind, name_label="crash",
                     **({"device_config": cfg} if cfg else {}))


def sr_snapshot_scenario(kind: str = "file") -> Scenario:
    """`SR.vdi_snapshot` (hidden base copy + new leaf), then `SR.open` recovery."""
    from storage.sr.sr import SR

    def setup(d: Path) -> dict[str, Any]:
        sr = _new_sr(d / "sr", kind)
        v = sr.vdi_create("disk0", 2 * MiB)
        dev = sr.vdi_open(v.uuid)
        dev.write(4096, random.Random(3).randbytes(300_000))
        dev.close()
        data = _sr_vdi_bytes(sr, v.uuid)
        sr.close()
        return {"uuid": v.uuid, "data": data}

    def op(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        sr = SR.open(d / "sr")
        sr.vdi_snapshot(st["uuid"])

    def verify(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        sr = SR.open(d / "sr")
        try:
            _sr_check_files(d / "sr")
            for uuid, vdi in sr.vdis.items():
                if uuid == st["uuid"] or vdi.is_a_snapshot:
                    _compare(_sr_vdi_bytes(sr, uuid), st["data"], st["data"], f"VDI {uuid[:8]}")
            if st["uuid"] not in sr.vdis:
                raise Broken("the snapshotted VDI vanished from the SR")
        finally:
            sr.close()

    return Scenario(f"SR snapshot ({kind})", setup, op, verify)


def sr_gc_scenario(kind: str = "file") -> Scenario:
    """`SR.gc` coalescing a leaf into its hidden parent after the snapshot was deleted."""
    from storage.sr.sr import SR

    def setup(d: Path) -> dict[str, Any]:
        rng = random.Random(4)
        sr = _new_sr(d / "sr", kind)
        v = sr.vdi_create("disk0", 2 * MiB)
        dev = sr.vdi_open(v.uuid)
        dev.write(0, rng.randbytes(600_000))
        dev.close()
        snap = sr.vdi_snapshot(v.uuid)
        dev = sr.vdi_open(v.uuid)
        dev.write(200_000, rng.randbytes(500_000))
        dev.close()
        sr.vdi_destroy(snap.uuid)
        data = _sr_vdi_bytes(sr, v.uuid)
        sr.close()
        return {"uuid": v.uuid, "data": data}

    def op(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        sr = SR.open(d / "sr")
        sr.gc()

    def verify(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        sr = SR.open(d / "sr")
        try:
            _sr_check_files(d / "sr")
            _compare(_sr_vdi_bytes(sr, st["uuid"]), st["data"], st["data"], "VDI")
        finally:
            sr.close()

    return Scenario(f"SR gc ({kind})", setup, op, verify)


# --- scenario: LVM metadata update ---------------------------------------------------------------

def lvm_scenario() -> Scenario:
    """lvcreate + lvextend + lvremove on a 2-PV VG (two metadata copies per PV)."""
    from storage.lvm.vg import VolumeGroup, pvcreate

    def setup(d: Path) -> dict[str, Any]:
        rng = random.Random(6)
        paths = [d / "pv0.img", d / "pv1.img"]
        for p in paths:
            pvcreate(p, size=24 * MiB, rng=rng)
        vg = VolumeGroup.create("vgc", paths, rng=rng)
        vg.lvcreate("data", 8 * MiB)
        vg.lvcreate("tmp", 4 * MiB)
        dev = vg.open_lv("data")
        payload = rng.randbytes(8 * MiB)
        dev.write(0, payload)
        dev.close()
        seq = vg.meta.seqno
        vg.close()
        return {"payload": payload, "seqno": seq}

    def op(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        vg = VolumeGroup.open("vgc", [d / "pv0.img", d / "pv1.img"],
                              rng=random.Random(7))
        try:
            vg.lvcreate("new", 4 * MiB)
            vg.lvextend("data", 12 * MiB)
            vg.lvremove("tmp")
        finally:
            with contextlib.suppress(PowerCut):
                vg.close()

    def verify(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        vg = VolumeGroup.open("vgc", [d / "pv0.img", d / "pv1.img"])
        try:
            seq = vg.meta.seqno
            if not st["seqno"] <= seq <= st["seqno"] + 3:
                raise Broken(f"metadata seqno {seq} is neither old nor a step of the update")
            names = set(vg.lv_names())
            expect = [{"data", "tmp"}, {"data", "tmp", "new"}, {"data", "tmp", "new"},
                      {"data", "new"}][seq - st["seqno"]]
            if names != expect:
                raise Broken(f"seqno {seq}: LVs {sorted(names)}, expected {sorted(expect)}")
            dev = vg.open_lv("data")
            got = dev.read(0, 8 * MiB)
            if got != st["payload"]:
                raise Broken("LV data changed by a metadata update")
            if seq >= st["seqno"] + 2 and dev.size != 12 * MiB:
                raise Broken(f"extended LV has size {dev.size}")
            dev.close()
        finally:
            vg.close()

    return Scenario("LVM metadata update", setup, op, verify)


def scenarios() -> list[Scenario]:
    """Every crash scenario."""
    return [vhd_write_scenario("dynamic"), vhd_write_scenario("differencing"),
            vhd_write_scenario("dynamic", volatile=True),
            vhd_write_scenario("differencing", volatile=True),
            vhd_resize_scenario(), sr_snapshot_scenario(), sr_gc_scenario(),
            sr_snapshot_scenario("lvhd"), sr_gc_scenario("lvhd"), sr_snapshot_scenario("lvm"),
            chain_coalesce_scenario(), lvm_scenario()]
