"""LVM benchmark: a linear LV against the same I/O on a plain file, measured in one run.

Sequential 1 MiB and random 4 KiB reads and writes go through `LogicalVolumeDevice` and, as
the baseline, through `FileIO` on a plain file of the same size in the same directory. Both sit
in the page cache, so the ratio is the cost of our mapping layer, not of the disk. The two are
run alternately, best of 5 rounds each, so a busy machine slows both alike. Also shown: origin
writes while a COW snapshot exists (each first write to a 64 KiB chunk copies it into the
snapshot's store), and the same VDI workload on an lvhd SR (VHD inside an LV) against a file SR
(VHD file).
"""
from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from storage.devices.rawio import FileIO
from storage.lvm import VolumeGroup, pvcreate
from storage.sr.sr import SR

MiB = 1 << 20
Workload = Callable[[], int]


def _workloads(read: Callable[[int, int], bytes], write: Callable[[int, bytes], None],
               size: int, ops: int) -> dict[str, Workload]:
    """The four workloads on one device; each returns the bytes it moved."""
    block = b"\x5a" * MiB
    small = b"\xa5" * 4096
    offsets = [random.Random(42).randrange(size // 4096) * 4096 for _ in range(ops)]

    def seq_write() -> int:
        for off in range(0, size, MiB):
            write(off, block)
        return size

    def seq_read() -> int:
        for off in range(0, size, MiB):
            read(off, MiB)
        return size

    def rand_write() -> int:
        for off in offsets:
            write(off, small)
        return 4096 * ops

    def rand_read() -> int:
        for off in offsets:
            read(off, 4096)
        return 4096 * ops

    return {"seq_write": seq_write, "seq_read": seq_read, "rand4k_write": rand_write,
            "rand4k_read": rand_read}


def _compare(a: dict[str, Workload], b: dict[str, Workload], rounds: int
             ) -> tuple[dict[str, float], dict[str, float]]:
    """Best bytes/s of each workload on `a` and `b`, alternating a, b, a, b, ..."""
    best_a = dict.fromkeys(a, 0.0)
    best_b = dict.fromkeys(a, 0.0)
    for name in a:
        for _ in range(rounds):
            for fn, best in ((a[name], best_a), (b[name], best_b)):
                t0 = time.perf_counter()
                n = fn()
                best[name] = max(best[name], n / (time.perf_counter() - t0))
    return best_a, best_b


def _table(title: str, cols: tuple[str, str, str], a: dict[str, float],
           b: dict[str, float]) -> dict[str, float]:
    ratios = {k: b[k] / a[k] for k in a}
    table = Table(title=title)
    for col in ("workload", *cols):
        table.add_column(col, justify="left" if col == "workload" else "right")
    for k in a:
        table.add_row(k, f"{a[k] / MiB:,.1f}", f"{b[k] / MiB:,.1f}", f"{ratios[k]:.2f}×")
    Console().print(table)
    return ratios


def run(*, quick: bool) -> dict:
    """Measure and print; return the figures (bytes/s) and their ratios."""
    size = (32 if quick else 256) * MiB
    ops = 5_000 if quick else 50_000
    rounds = 2 if quick else 5
    with tempfile.TemporaryDirectory(prefix="hvsim-bench-lvm-") as tmp:
        d = Path(tmp)
        plain = FileIO(d / "plain.img", create=True)
        plain.truncate(size)
        pvcreate(d / "pv0.img", size=2 * size + 16 * MiB)
        vg = VolumeGroup.create("bench", [d / "pv0.img"])
        vg.lvcreate("lv", size)
        dev = vg.open_lv("lv")
        base, lv = _compare(_workloads(plain.pread, plain.pwrite, size, ops),
                            _workloads(dev.read, dev.write, size, ops), rounds)
        plain.close()

        vg.lvcreate("snap", size + 4 * MiB, snapshot_of="lv")
        block = b"\x11" * MiB
        t0 = time.perf_counter()
        for off in range(0, size, MiB):
            dev.write(off, block)
        cow_first = size / (time.perf_counter() - t0)
        vg.close()

        # the same VDI workload on a file SR (VHD file) and an lvhd SR (VHD inside an LV)
        vdi_size = size // 2
        disks = {}
        srs = []
        for kind, cfg in (("file", {}), ("lvhd", {"size": str(vdi_size * 2 + 64 * MiB)})):
            sr = SR.create(d / f"sr-{kind}", type_name=kind, device_config=cfg)
            v = sr.vdi_create("bench", vdi_size)
            disk = sr.vdi_open(v.uuid)
            disks[kind] = _workloads(disk.read, disk.write, vdi_size, ops // 2)
            srs.append((sr, disk))
        vdi_file, vdi_lvhd = _compare(disks["file"], disks["lvhd"], rounds)
        for sr, disk in srs:
            disk.close()
            sr.close()

    ratios = _table(f"LVM linear LV vs plain file ({size // MiB} MiB, {ops} random ops)",
                    ("plain file MiB/s", "linear LV MiB/s", "LV / file"), base, lv)
    Console().print(f"origin sequential write, first after a snapshot (COW copies): "
                    f"{cow_first / MiB:,.1f} MiB/s = {cow_first / base['seq_write']:.2f}× "
                    "the plain file's sequential write")
    vratio = _table(f"VDI in an lvhd SR vs a file SR ({vdi_size // MiB} MiB VHD, {ops // 2} "
                    "random ops)", ("file SR MiB/s", "lvhd SR MiB/s", "lvhd / file"),
                    vdi_file, vdi_lvhd)
    return {"size_bytes": size, "random_ops": ops,
            "file_bytes_per_s": base, "lv_bytes_per_s": lv, "ratio_lv_over_file": ratios,
            "cow_first_write_bytes_per_s": cow_first,
            "vdi_file_sr_bytes_per_s": vdi_file, "vdi_lvhd_sr_bytes_per_s": vdi_lvhd,
            "ratio_lvhd_over_file_sr": vratio, "target_ratio": 0.8,
            "meets_target": all(r >= 0.8 for r in ratios.values())}
