"""Image locks between real processes (issue 14 item 1), and against qemu-img/qemu-io.

Before the locks, two `hvsim vhd write` processes on one image allocated blocks at the same
file offset and the image was lost; now the second writer gets one line naming the holder.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.devices.imagelock import ImageLockedError, LockMode
from storage.devices.rawio import FileIO
from storage.vhd import chain

MiB = 2**20


def hvsim(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netsim", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def locked(path: Path) -> bool:
    """Somebody holds an OFD lock on `path` (QEMU's bytes)."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return any(f":{ino} " in ln and "OFDLCK" in ln for ln in f)


def wait_locked(path: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 30
    while not locked(path):
        assert proc is None or proc.poll() is None, "holder exited early"
        assert time.monotonic() < deadline, "holder never locked the image"
        time.sleep(0.02)


def refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_two_vhd_write_processes_cannot_share_an_image(tmp_path: Path) -> None:
    """The reproduction: 96 MiB at offset 0 and at 128M, by two processes at once."""
    img = tmp_path / "disk.vhd"
    assert hvsim("vhd", "create", img, "--size", "256M").returncode == 0
    a_data = bytes(range(256)) * (96 * MiB // 256)
    (tmp_path / "b.bin").write_bytes(b"\xbb" * (96 * MiB))
    fifo = tmp_path / "a.fifo"
    os.mkfifo(fifo)                       # writer A reads its input slowly, from us
    a = subprocess.Popen([sys.executable, "-m", "netsim", "vhd", "write", str(img),
                          "--offset", "0", "--input", str(fifo)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with open(fifo, "wb") as feed:
            feed.write(a_data[:8 * MiB])
            feed.flush()
            wait_locked(img, a)
            b = hvsim("vhd", "write", img, "--offset", "128M", "--input", tmp_path / "b.bin")
            line = refused(b, str(img), 'Failed to get "write" lock', f"pid {a.pid}",
                           "vhd write")
            assert "disk.vhd" in line
            info = hvsim("vhd", "info", img)          # a reader refuses a live writer ...
            refused(info, 'Failed to get shared "write" lock', "--force-share")
            assert hvsim("vhd", "info", img, "-U").returncode == 0   # ... unless -U
            feed.write(a_data[8 * MiB:])
        _, err = a.communicate(timeout=120)
        assert a.returncode == 0, err
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert chain.check(img) == []
    got = chain.open_chain(img)
    try:
        assert got.read(0, len(a_data)) == a_data
        assert got.read(128 * MiB, MiB) == bytes(MiB)       # B wrote nothing
    finally:
        got.close()


def test_readers_share_and_a_writer_waits_for_none_of_them(tmp_path: Path) -> None:
    img = tmp_path / "d.vhd"
    chain.create_image(img, size=4 * MiB).close()
    r1 = FileIO(img, writable=False)
    r2 = FileIO(img, writable=False)                     # readers share
    with pytest.raises(ImageLockedError, match='Failed to get "write" lock'):
        FileIO(img)                                     # a writer does not
    r1.close()
    r2.close()
    w = FileIO(img)
    with pytest.raises(ImageLockedError, match='shared "write" lock'):
        FileIO(img, writable=False)
    FileIO(img, writable=False, lock=LockMode.NONE).close()   # force share
    w.close()
    FileIO(img).close()                                 # released on close


def test_a_sigkilled_holder_leaves_no_lock(tmp_path: Path) -> None:
    img = tmp_path / "d.vhd"
    chain.create_image(img, size=4 * MiB).close()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom storage.vhd import chain\n"
        f"img = chain.open_chain({str(img)!r}, read_only=False)\ntime.sleep(60)\n")])
    wait_locked(img, holder)
    holder.kill()
    holder.wait()
    (tmp_path / "x.bin").write_bytes(b"x" * 512)
    assert hvsim("vhd", "write", img, "--offset", 0, "--input", tmp_path / "x.bin"
                 ).returncode == 0


def test_qemu_and_hvsim_see_each_others_locks(tmp_path: Path) -> None:
    img = tmp_path / "q.vhd"
    chain.create_image(img, size=64 * MiB).close()
    w = chain.open_chain(img, read_only=False)           # hvsim writes ...
    try:
        q = subprocess.run(["qemu-img", "info", img], capture_output=True, text=True)
        assert q.returncode != 0 and 'Failed to get shared "write" lock' in q.stderr
        q = subprocess.run(["qemu-img", "info", "-U", img], capture_output=True, text=True)
        assert q.returncode == 0 and "file format: vpc" in q.stdout
    finally:
        w.close()
    qio = subprocess.Popen(["qemu-io", "-f", "vpc", "-c", "sleep 30000", str(img)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_locked(img, None)
        (tmp_path / "x.bin").write_bytes(b"x" * 512)     # ... and qemu-io writes
        out = hvsim("vhd", "write", img, "--offset", 0, "--input", tmp_path / "x.bin")
        refused(out, 'Failed to get "write" lock', f"pid {qio.pid}", "qemu-io")
        assert hvsim("vhd", "info", img, "--force-share").returncode == 0
    finally:
        qio.kill()
        qio.wait()


def test_ring_serve_holds_its_disk(tmp_path: Path) -> None:
    img = tmp_path / "served.vhd"
    chain.create_image(img, size=4 * MiB).close()
    server = subprocess.Popen([sys.executable, "-m", "netsim", "ring", "serve", str(img),
                               "--socket", str(tmp_path / "h.sock"), "--ram", "1M"],
                              stderr=subprocess.PIPE)
    try:
        assert server.stderr is not None
        assert b"serving" in server.stderr.readline()
        (tmp_path / "x.bin").write_bytes(b"x" * 512)
        out = hvsim("vhd", "write", img, "--offset", 0, "--input", tmp_path / "x.bin")
        refused(out, str(img), f"pid {server.pid}", "ring serve")
    finally:
        server.terminate()
        server.wait(30)


def test_lvm_handles_share_pvs_but_a_raw_writer_is_refused(tmp_path: Path) -> None:
    from storage.lvm.vg import VolumeGroup, pvcreate

    pv = tmp_path / "pv0.img"
    pvcreate(pv, size=16 * MiB)
    vg = VolumeGroup.create("vg0", [pv])
    other = VolumeGroup.open("vg0", [pv])                # LVM coordinates its own writers
    try:
        with pytest.raises(ImageLockedError, match=r"pv0\.img"):
            FileIO(pv)                                  # an exclusive raw writer may not
        out = hvsim("ring", "serve", pv, "--socket", tmp_path / "h.sock", "--ram", "1M")
        refused(out, str(pv), f"pid {os.getpid()}")      # a raw disk on the PV: exclusive
    finally:
        other.close()
        vg.close()
