"""`hvsim bench ring`: 4 KiB random reads through the blkif ring vs. direct reads of the same disk.

Measured in one run, against a disk whose file sits in the page cache:
- direct: `disk.read` in a loop (the floor the ring adds to);
- in-process: blkfront and blkback on one asyncio loop, 32 reads in flight;
- cross-process: blkfront in a spawned guest process attached over the host socket, blkback
  in this process, 32 reads in flight;
plus notifications per request in each direction (event suppression at work) and where the
time goes (backend request handling, the disk read inside it, the rest = frontend + loop).
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import tempfile
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from storage.devices.blockdev import BlockDevice

BLOCK = 4096
QUEUE_DEPTH = 32
DISK_BYTES = 64 << 20


class _TimedDisk:
    """Wraps a BlockDevice, accumulating the time spent in `read`."""

    def __init__(self, disk: BlockDevice) -> None:
        self.disk = disk
        self.read_s = 0.0
        self.size = disk.size
        self.read_only = disk.read_only

    def read(self, offset: int, length: int) -> bytes:
        t = time.perf_counter()
        data = self.disk.read(offset, length)
        self.read_s += time.perf_counter() - t
        return data

    def write(self, offset: int, data: bytes) -> None:
        self.disk.write(offset, data)

    def flush(self) -> None:
        self.disk.flush()

    def discard(self, offset: int, length: int) -> None:
        self.disk.discard(offset, length)

    def close(self) -> None:
        self.disk.close()


def _make_disk(tmp: str) -> tuple[BlockDevice, str]:
    """A disk file full of data, read once so it is in the page cache: a VHD if this build has
    VHD support, else a raw file."""
    data = random.Random(7).randbytes(DISK_BYTES)
    try:
        from storage.vhd.chain import create_image, open_chain
    except ImportError:
        from storage.devices.memdisk import RawFileDisk

        path = os.path.join(tmp, "disk.raw")
        with open(path, "wb") as f:
            f.write(data)
        disk: BlockDevice = RawFileDisk(path)
        kind = "raw file"
    else:
        path = os.path.join(tmp, "disk.vhd")
        img = create_image(path, size=DISK_BYTES)
        img.write(0, data)
        img.close()
        disk = open_chain(path, read_only=False)
        kind = "dynamic VHD"
    disk.read(0, DISK_BYTES)  # warm the page cache
    return disk, kind


def _offsets(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    blocks = DISK_BYTES // BLOCK
    return [rng.randrange(blocks) * BLOCK for _ in range(n)]


async def _drive(front: Any, offsets: list[int]) -> float:
    """Issue the reads with QUEUE_DEPTH in flight; returns elapsed seconds."""
    per = len(offsets) // QUEUE_DEPTH

    async def worker(k: int) -> None:
        for off in offsets[k * per:(k + 1) * per]:
            await front.read(off, BLOCK)

    t = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(QUEUE_DEPTH)))
    return time.perf_counter() - t


def _guest_main(sock: str, n: int, conn: Any) -> None:
    """The guest process: attach, read, report."""
    from storage.rings.blkfront import BlkFront
    from storage.rings.hostlink import connect_guest

    async def run() -> dict[str, Any]:
        async with connect_guest(sock, 1) as guest, BlkFront(guest, 51712) as front:
            offsets = _offsets(n, 2)
            cpu = time.process_time()
            elapsed = await _drive(front, offsets)
            cpu = time.process_time() - cpu
            done = (n // QUEUE_DEPTH) * QUEUE_DEPTH
            return {"iops": done / elapsed, "requests": front.stats.requests,
                    "notifications_sent": front.stats.notifications_sent,
                    "wakeups": front.stats.wakeups, "elapsed_s": elapsed, "cpu_s": cpu}

    try:
        conn.send(asyncio.run(run()))
    except Exception as exc:  # report, don't hang the parent
        conn.send({"error": repr(exc)})
    finally:
        conn.close()


async def _in_process(disk: _TimedDisk, n: int) -> dict[str, Any]:
    from storage.rings.blkfront import BlkFront
    from storage.rings.hypervisor import Hypervisor

    async with Hypervisor() as hv:
        hv.create_domain(1)
        back = await hv.attach_vbd(1, disk)  # type: ignore[arg-type]
        handle_s = 0.0
        inner = back.handle

        def timed(raw: bytes) -> Any:
            nonlocal handle_s
            t = time.perf_counter()
            rsp = inner(raw)
            handle_s += time.perf_counter() - t
            return rsp

        back.handle = timed  # type: ignore[method-assign]
        async with BlkFront(hv.guest(1), 51712) as front:
            await _drive(front, _offsets(QUEUE_DEPTH * 4, 3))  # warm-up
            handle_s, disk.read_s = 0.0, 0.0
            f0, b0 = front.stats.notifications_sent, back.stats.notifications_sent
            r0 = front.stats.requests
            cpu = time.process_time()
            elapsed = await _drive(front, _offsets(n, 1))
            cpu = time.process_time() - cpu
            reqs = front.stats.requests - r0
            return {"iops": reqs / elapsed, "requests": reqs, "elapsed_s": elapsed,
                    "iops_per_cpu_s": reqs / cpu,
                    "notify_front_per_req": (front.stats.notifications_sent - f0) / reqs,
                    "notify_back_per_req": (back.stats.notifications_sent - b0) / reqs,
                    "us_per_req": elapsed / reqs * 1e6,
                    "us_backend_handle": handle_s / reqs * 1e6,
                    "us_disk_read": disk.read_s / reqs * 1e6}


async def _cross_process(disk: _TimedDisk, n: int, tmp: str) -> dict[str, Any]:
    from storage.rings.hostlink import HostServer
    from storage.rings.hypervisor import Hypervisor

    sock = os.path.join(tmp, "host.sock")
    async with Hypervisor() as hv:
        hv.create_domain(1, shared=True)
        back = await hv.attach_vbd(1, disk)  # type: ignore[arg-type]
        async with HostServer(hv, sock):
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_guest_main, args=(sock, n, child), daemon=True)
            cpu = time.process_time()
            proc.start()
            child.close()
            while not parent.poll():
                if not proc.is_alive():
                    raise RuntimeError(f"guest process died (exit {proc.exitcode})")
                await asyncio.sleep(0.01)
            result = parent.recv()
            host_cpu = time.process_time() - cpu
            proc.join(10)
            if "error" in result:
                raise RuntimeError(f"guest process failed: {result['error']}")
            reqs = result["requests"]
            result["notify_front_per_req"] = result["notifications_sent"] / reqs
            result["notify_back_per_req"] = back.stats.notifications_sent / reqs
            result["host_cpu_s"] = host_cpu
            result["iops_per_cpu_s"] = reqs / max(result["cpu_s"], host_cpu)
            return result


def run(*, quick: bool) -> dict:
    """Measure and print; returns the figures as a dict."""
    n = 4096 if quick else 64_000
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hvsim-bench-ring-") as tmp:
        raw, kind = _make_disk(tmp)
        disk = _TimedDisk(raw)
        try:
            offsets = _offsets(n, 1)
            t = time.perf_counter()
            for off in offsets:
                raw.read(off, BLOCK)
            direct = n / (time.perf_counter() - t)
            inproc = asyncio.run(_in_process(disk, n))
            cross = asyncio.run(_cross_process(disk, n, tmp))
        finally:
            raw.close()

    result = {
        "disk": kind, "block_bytes": BLOCK, "queue_depth": QUEUE_DEPTH, "reads": n,
        "direct_iops": round(direct),
        "in_process_iops": round(inproc["iops"]),
        "cross_process_iops": round(cross["iops"]),
        "in_process_iops_per_cpu_second": round(inproc["iops_per_cpu_s"]),
        "cross_process_iops_per_busiest_cpu_second": round(cross["iops_per_cpu_s"]),
        "load_average_1m": round(load, 2),
        "cpus": os.cpu_count(),
        "in_process_vs_direct": round(inproc["iops"] / direct, 4),
        "cross_process_vs_direct": round(cross["iops"] / direct, 4),
        "in_process_notifications_per_request": {
            "front_to_back": round(inproc["notify_front_per_req"], 4),
            "back_to_front": round(inproc["notify_back_per_req"], 4)},
        "cross_process_notifications_per_request": {
            "front_to_back": round(cross["notify_front_per_req"], 4),
            "back_to_front": round(cross["notify_back_per_req"], 4)},
        "in_process_us_per_request": {
            "total": round(inproc["us_per_req"], 2),
            "backend_handle": round(inproc["us_backend_handle"], 2),
            "of_which_disk_read": round(inproc["us_disk_read"], 2),
            "frontend_and_loop": round(inproc["us_per_req"] - inproc["us_backend_handle"], 2)},
        "cross_process_cpu_s": {"guest": round(cross["cpu_s"], 3),
                                "host": round(cross["host_cpu_s"], 3),
                                "elapsed": round(cross["elapsed_s"], 3)},
        "targets": {"in_process_iops": 50_000, "cross_process_iops": 20_000},
    }
    _print(result)
    return result


def _print(r: dict) -> None:
    t = Table(title=f"ring: {r['reads']:,} random {r['block_bytes']} B reads, "
                    f"queue depth {r['queue_depth']}, {r['disk']} in page cache")
    for col in ("path", "IOPS", "per CPU-s", "×direct", "f→b/req", "b→f/req", "target"):
        t.add_column(col, justify="right")
    t.add_row("direct read", f"{r['direct_iops']:,}", "", "1.00", "", "", "")
    ip, cp = r["in_process_notifications_per_request"], r["cross_process_notifications_per_request"]
    t.add_row("ring in-proc", f"{r['in_process_iops']:,}",
              f"{r['in_process_iops_per_cpu_second']:,}", f"{r['in_process_vs_direct']:.3f}",
              f"{ip['front_to_back']:.3f}", f"{ip['back_to_front']:.3f}", "≥ 50,000")
    t.add_row("ring cross-proc", f"{r['cross_process_iops']:,}",
              f"{r['cross_process_iops_per_busiest_cpu_second']:,}",
              f"{r['cross_process_vs_direct']:.3f}", f"{cp['front_to_back']:.3f}",
              f"{cp['back_to_front']:.3f}", "≥ 20,000")
    Console().print(t)
    us = r["in_process_us_per_request"]
    cpu = r["cross_process_cpu_s"]
    Console().print(
        f"in-process µs/request: total {us['total']}, backend handling {us['backend_handle']} "
        f"(disk read {us['of_which_disk_read']}), frontend + asyncio {us['frontend_and_loop']}; "
        f"cross-process CPU s: guest {cpu['guest']}, host {cpu['host']} in {cpu['elapsed']} s "
        f"elapsed; load average {r['load_average_1m']} on {r['cpus']} CPUs (IOPS per CPU-s = "
        f"what one unshared core per process would give)", highlight=False)
