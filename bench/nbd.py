"""NBD benchmark: `hvsim nbd serve` against `qemu-nbd` serving the same dynamic VHD.

Figures (same machine, same page-cache-warm file, servers run as real processes):
- `nbdcopy` of a dynamic VHD (1 GiB, half its 2 MiB blocks allocated) out of each server to
  `null:`; target ≥ 1.0× qemu-nbd's throughput.
- 4 KiB random reads by one `qemu-io` process (one request in flight, so this is latency per
  request), reads per second against qemu-nbd.
"""
from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from storage.vhd import chain

MiB = 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}")


@contextlib.contextmanager
def _server(kind: str, path: Path) -> Iterator[str]:
    port = _free_port()
    if kind == "hvsim":
        cmd = [sys.executable, "-m", "netsim", "nbd", "serve", str(path), "--read-only",
               "--bind", f"127.0.0.1:{port}"]
    else:
        cmd = ["qemu-nbd", "-f", "vpc", "-r", "-t", "-e", "8", "-b", "127.0.0.1",
               "-p", str(port), str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, proc)
        yield f"nbd://127.0.0.1:{port}/"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _best(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(*, quick: bool) -> dict:
    """Run the NBD benchmark; prints a table and returns the figures."""
    size = 128 * MiB if quick else 1024 * MiB
    reads = 500 if quick else 5000
    runs = 2 if quick else 3
    block = 2 * MiB
    rng = random.Random(18)
    tmp = Path(tempfile.mkdtemp(prefix="hvsim-bench-nbd-"))
    res: dict = {"image_size": size, "block_size": block, "random_reads": reads}
    try:
        src = tmp / "half.vhd"
        img = chain.create_image(src, size=size, block_size=block)
        pattern = rng.randbytes(block)
        for b in range(0, img.size // block, 2):
            img.write(b * block, pattern)
        img.close()
        res["allocated_fraction"] = 0.5
        offs = [rng.randrange(size // 4096) * 4096 for _ in range(reads)]
        script = [a for o in offs for a in ("-c", f"read {o} 4k")]
        for kind in ("qemu-nbd", "hvsim"):
            with _server(kind, src) as uri:
                t_copy = _best(lambda u=uri: subprocess.run(
                    ["nbdcopy", u, "null:"], check=True), runs)
                t_reads = _best(lambda u=uri: subprocess.run(
                    ["qemu-io", "-r", "-f", "raw", *script, u], check=True,
                    stdout=subprocess.DEVNULL), runs)
            res[kind] = {"nbdcopy_MiB_s": size / MiB / t_copy, "reads_per_s": reads / t_reads}
        res["ratio_nbdcopy"] = res["hvsim"]["nbdcopy_MiB_s"] / res["qemu-nbd"]["nbdcopy_MiB_s"]
        res["ratio_reads"] = res["hvsim"]["reads_per_s"] / res["qemu-nbd"]["reads_per_s"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _print(res)
    return res


def _print(res: dict) -> None:
    t = Table(title=f"hvsim nbd bench ({res['image_size'] // MiB} MiB dynamic VHD, "
                    f"{res['allocated_fraction']:.0%} allocated)")
    t.add_column("figure")
    t.add_column("hvsim nbd serve", justify="right")
    t.add_column("qemu-nbd", justify="right")
    t.add_column("ratio", justify="right")
    h, q = res["hvsim"], res["qemu-nbd"]
    t.add_row("nbdcopy to null:", f"{h['nbdcopy_MiB_s']:.0f} MiB/s",
              f"{q['nbdcopy_MiB_s']:.0f} MiB/s", f"{res['ratio_nbdcopy']:.2f}× (target ≥1.0)")
    t.add_row(f"qemu-io 4 KiB random reads ({res['random_reads']})",
              f"{h['reads_per_s']:.0f}/s", f"{q['reads_per_s']:.0f}/s",
              f"{res['ratio_reads']:.2f}×")
    Console().print(t)
