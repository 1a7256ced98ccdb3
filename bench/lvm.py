"""LVM benchmark: a linear LV against the same I/O on a plain file, measured in one run.

Sequential 1 MiB and random 4 KiB reads and writes go through `LogicalVolumeDevice` (extent
lookup, bounds check, PV RawIO) and, as the baseline, through `FileIO` on a plain file of the
same size in the same directory. Both sit in the page cache, so the ratio is the cost of our
mapping layer, not of the disk. Also shown: origin writes while a COW snapshot exists (each
first write to a 64 KiB chunk copies it into the snapshot's store).
"""
from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from storage.lvm import VolumeGroup, pvcreate
from storage.rawio import FileIO

MiB = 1 << 20


def _rate(fn: Callable[[], int]) -> float:
    """Bytes per second of `fn` (which returns the bytes it moved); best of 3 runs."""
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        n = fn()
        dt = time.perf_counter() - t0
        best = max(best, n / dt)
    return best


def _workloads(read: Callable[[int, int], bytes], write: Callable[[int, bytes], None],
               size: int, ops: int) -> dict[str, float]:
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

    return {"seq_write": _rate(seq_write), "seq_read": _rate(seq_read),
            "rand4k_write": _rate(rand_write), "rand4k_read": _rate(rand_read)}


def run(*, quick: bool) -> dict:
    """Measure and print; return the figures (bytes/s) and LV/file ratios."""
    size = (32 if quick else 256) * MiB
    ops = 5_000 if quick else 50_000
    with tempfile.TemporaryDirectory(prefix="hvsim-bench-lvm-") as tmp:
        d = Path(tmp)
        plain = FileIO(d / "plain.img", create=True)
        plain.truncate(size)
        base = _workloads(plain.pread, plain.pwrite, size, ops)
        plain.close()

        pvcreate(d / "pv0.img", size=2 * size + 16 * MiB)
        vg = VolumeGroup.create("bench", [d / "pv0.img"])
        vg.lvcreate("lv", size)
        dev = vg.open_lv("lv")
        lv = _workloads(dev.read, dev.write, size, ops)

        vg.lvcreate("snap", size + 4 * MiB, snapshot_of="lv")
        origin = vg.open_lv("lv")
        block = b"\x11" * MiB
        t0 = time.perf_counter()
        for off in range(0, size, MiB):
            origin.write(off, block)
        cow_first = size / (time.perf_counter() - t0)
        vg.close()

    ratios = {k: lv[k] / base[k] for k in base}
    table = Table(title=f"LVM linear LV vs plain file ({size // MiB} MiB, {ops} random ops)")
    for col in ("workload", "plain file MiB/s", "linear LV MiB/s", "LV / file"):
        table.add_column(col, justify="right" if col != "workload" else "left")
    for k in base:
        table.add_row(k, f"{base[k] / MiB:,.1f}", f"{lv[k] / MiB:,.1f}", f"{ratios[k]:.2f}×")
    table.add_row("origin seq write, 1st after snapshot (COW)", "", f"{cow_first / MiB:,.1f}",
                  f"{cow_first / base['seq_write']:.2f}×")
    Console().print(table)
    return {"size_bytes": size, "random_ops": ops,
            "file_bytes_per_s": base, "lv_bytes_per_s": lv, "ratio_lv_over_file": ratios,
            "cow_first_write_bytes_per_s": cow_first, "target_ratio": 0.8,
            "meets_target": all(r >= 0.8 for r in ratios.values())}
