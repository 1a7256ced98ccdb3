"""`hvsim nbd serve` / `hvsim vdi serve` against real NBD clients: qemu-img, qemu-io (QEMU's
NBD client) and libnbd's nbdinfo and nbdcopy."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from storage.devices.memdisk import RawFileDisk
from storage.diskspec import open_disk
from storage.lvm import VolumeGroup, pvcreate
from storage.sr.sr import SR
from storage.vhd import chain

pytestmark = pytest.mark.interop
MiB = 2**20


def run(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=check, capture_output=True, text=True,
                          timeout=120)


@contextmanager
def served(*args: object) -> Iterator[str]:
    """Run `hvsim ARGS --bind 127.0.0.1:0`, yield the nbd:// URI it prints, stop it with
    SIGTERM and require a clean exit."""
    proc = subprocess.Popen([sys.executable, "-m", "netsim", *map(str, args),
                             "--bind", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("serving "), (line, proc.stderr.read())  # type: ignore[union-attr]
        yield line.split()[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def our_bytes(spec: Path | str) -> bytes:
    dev = open_disk(str(spec), read_only=True)
    try:
        return dev.read(0, dev.size)
    finally:
        dev.close()


def make_sparse_vhd(path: Path, size: int, blocks: list[int], seed: int) -> bytes:
    """A dynamic VHD with 2 MiB blocks where only `blocks` hold (random) data; returns the
    expected raw contents."""
    rng = random.Random(seed)
    img = chain.create_image(path, size=size)
    for b in blocks:
        img.write(b * 2 * MiB, rng.randbytes(2 * MiB))
    expected = img.read(0, img.size)
    img.close()
    return expected


def test_qemu_img_reads_raw_file_and_compare_agrees(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(random.Random(1).randbytes(3 * MiB + 512))
    with served("nbd", "serve", raw, "--read-only", "--name", "d0") as uri:
        info = json.loads(run("qemu-img", "info", "--output=json", uri).stdout)
        assert info["virtual-size"] == raw.stat().st_size
        out = tmp_path / "out.raw"
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
        assert out.read_bytes() == raw.read_bytes()
        assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", uri, raw).returncode == 0
        out.write_bytes(b"x" + raw.read_bytes()[1:])
        assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", uri, out,
                   check=False).returncode == 1


def test_nbdinfo_map_shows_the_allocated_blocks_of_a_sparse_vhd(tmp_path: Path) -> None:
    vhd = tmp_path / "sparse.vhd"
    expected = make_sparse_vhd(vhd, 32 * MiB, [1, 2, 7, 15], seed=2)
    with served("nbd", "serve", vhd, "--read-only") as uri:
        extents = json.loads(run("nbdinfo", "--map", "--json", uri).stdout)
        data = [(e["offset"], e["length"]) for e in extents if e["type"] & 1 == 0]
        assert data == [(2 * MiB, 4 * MiB), (14 * MiB, 2 * MiB), (30 * MiB, 2 * MiB)]
        holes = [e for e in extents if e["type"] == 3]
        assert sum(e["length"] for e in holes) == len(expected) - 8 * MiB  # CHS-rounded size
        out = tmp_path / "out.raw"
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
        assert out.read_bytes() == expected


def test_differencing_chain_over_nbd_reads_as_our_chain(tmp_path: Path) -> None:
    """The one way QEMU can read a XenServer clone chain: qemu-img over NBD sees what we see."""
    base = tmp_path / "base.vhd"
    make_sparse_vhd(base, 16 * MiB, [0, 3, 5], seed=3)
    mid = tmp_path / "mid.vhd"
    chain.create_image(mid, parent_path=base).close()
    img = chain.open_chain(mid, read_only=False)
    img.write(2 * MiB + 4096, b"\x5a" * 12345)     # sector-granular, inside a parent block
    img.write(9 * MiB, b"\xa5" * MiB)              # where the base has a hole
    img.close()
    leaf = tmp_path / "leaf.vhd"
    chain.create_image(leaf, parent_path=mid).close()
    img = chain.open_chain(leaf, read_only=False)
    img.write(511, b"\x01\x02\x03")                 # unaligned, in the base's first block
    img.close()
    ours = our_bytes(leaf)
    assert ours[9 * MiB] == 0xA5 and ours[511:514] == b"\x01\x02\x03"
    with served("nbd", "serve", leaf, "--read-only") as uri:
        out = tmp_path / "qemu.raw"
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
        assert out.read_bytes() == ours
        ref = tmp_path / "ours.raw"
        ref.write_bytes(ours)
        assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", uri, ref).returncode == 0


def test_qemu_io_writes_copy_on_write_into_the_leaf(tmp_path: Path) -> None:
    base = tmp_path / "base.vhd"
    make_sparse_vhd(base, 8 * MiB, [0, 1], seed=4)
    base_sum = sha(base)
    leaf = tmp_path / "leaf.vhd"
    chain.create_image(leaf, parent_path=base).close()
    with served("nbd", "serve", leaf) as uri:
        r = run("qemu-io", "-f", "raw", "-c", "write -P 0x77 1000 70000",
                "-c", "read -P 0x77 1000 70000", "-c", "write -z 3M 64k",
                "-c", "read -P 0 3M 64k", "-c", "flush", uri)
        assert "Pattern verification failed" not in r.stdout + r.stderr
    assert sha(base) == base_sum                    # the parent is never written
    img = chain.open_chain(leaf)
    try:
        assert img.read(1000, 70000) == b"\x77" * 70000
        assert img.read(3 * MiB, 64 * 1024) == bytes(64 * 1024)
        parent_view = chain.open_chain(base)
        assert img.read(0, 1000) == parent_view.read(0, 1000)
        parent_view.close()
        assert img.allocated_blocks >= 2 and img.parent is not None
    finally:
        img.close()


def test_read_only_export_refuses_writes(tmp_path: Path) -> None:
    raw = tmp_path / "ro.raw"
    raw.write_bytes(bytes(MiB))
    with served("nbd", "serve", raw, "--read-only") as uri:
        r = run("qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", uri, check=False)
        assert "fail" in (r.stdout + r.stderr).lower() or r.returncode != 0
    assert raw.read_bytes() == bytes(MiB)


def test_nbdcopy_out_and_in(tmp_path: Path) -> None:
    vhd = tmp_path / "src.vhd"
    expected = make_sparse_vhd(vhd, 24 * MiB, [0, 4, 11], seed=5)
    dst = tmp_path / "dst.vhd"
    chain.create_image(dst, size=24 * MiB).close()
    with served("nbd", "serve", vhd, "--read-only") as uri:
        out = tmp_path / "out.raw"
        run("nbdcopy", uri, out)
        assert out.read_bytes() == expected
    with served("nbd", "serve", dst) as uri:
        run("nbdcopy", out, uri)
    img = chain.open_chain(dst)
    try:
        assert img.read(0, img.size) == expected
        # nbdcopy zeroes the holes of its source; a hole already reading zero stays a hole
        assert img.allocated_blocks == 3
    finally:
        img.close()


def test_several_clients_at_once(tmp_path: Path) -> None:
    vhd = tmp_path / "shared.vhd"
    chain.create_image(vhd, size=16 * MiB).close()
    with served("nbd", "serve", vhd) as uri:
        procs = [subprocess.Popen(
            ["qemu-io", "-f", "raw", "-c", f"write -P {i + 1} {i * 4}M 4M",
             "-c", f"read -P {i + 1} {i * 4}M 4M", uri],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        assert not any("verification failed" in o for o in outs), outs
        # nbdcopy opens several connections when the server offers multi-conn
        out = tmp_path / "all.raw"
        run("nbdcopy", "--connections=4", uri, out)
    got = out.read_bytes()
    assert got[:16 * MiB] == b"".join(bytes([i + 1]) * 4 * MiB for i in range(4))
    assert got[16 * MiB:] == bytes(len(got) - 16 * MiB)    # the CHS-rounded tail


def test_lv_and_memory_disks(tmp_path: Path) -> None:
    pv = tmp_path / "pv0.img"
    pvcreate(pv, size=64 * MiB, rng=random.Random(6))
    vg = VolumeGroup.create("vg0", [pv], rng=random.Random(7))
    vg.lvcreate("lv0", 8 * MiB)
    vg.close()
    with served("nbd", "serve", f"lvm:vg0/lv0:{pv}") as uri:
        run("qemu-io", "-f", "raw", "-c", "write -P 0x3c 1M 1M", uri)
        assert json.loads(run("qemu-img", "info", "--output=json", uri).stdout)[
            "virtual-size"] == 8 * MiB
    data = our_bytes(f"lvm:vg0/lv0:{pv}")
    assert data[MiB:2 * MiB] == b"\x3c" * MiB and data[:MiB] == bytes(MiB)
    with served("nbd", "serve", "mem:4M") as uri:
        r = run("qemu-io", "-f", "raw", "-c", "write -P 9 0 4M", "-c", "read -P 9 0 4M", uri)
        assert "verification failed" not in r.stdout


def test_vdi_serve_through_a_vbd(tmp_path: Path) -> None:
    sr = SR.create(tmp_path / "sr", type_name="file")
    vdi = sr.vdi_create("disk0", 8 * MiB)
    with served("vdi", "serve", "--sr", tmp_path / "sr", vdi.uuid, "--nbd") as uri:
        assert uri.endswith("/" + vdi.uuid)
        run("qemu-io", "-f", "raw", "-c", "write -P 0x42 2M 64k", uri)
        # served read-write: a second read-write attach is refused, as xapi refuses it
        with pytest.raises(Exception, match="already attached"):
            SR.open(tmp_path / "sr").vbd_plug(
                SR.open(tmp_path / "sr").vbd_create(vdi.uuid, "vm2").uuid)
    s = SR.open(tmp_path / "sr")
    assert not any(v.vm == "nbd-server" for v in s.vbds.values())
    dev = s.vdi_open(vdi.uuid, read_only=True)
    try:
        assert dev.read(2 * MiB, 64 * 1024) == b"\x42" * 64 * 1024
    finally:
        dev.close()


def test_non_loopback_bind_is_refused_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "netsim", "nbd", "serve", "mem:1M", "--bind",
                        "0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--allow-remote" in r.stderr
    assert "Traceback" not in r.stderr


def test_raw_file_holes_seen_by_nbdinfo(tmp_path: Path) -> None:
    raw = tmp_path / "sparse.raw"
    with open(raw, "wb") as f:
        f.truncate(16 * MiB)
        f.seek(8 * MiB)
        f.write(b"\xee" * MiB)
    assert RawFileDisk(str(raw)).size == 16 * MiB
    with served("nbd", "serve", raw, "--read-only") as uri:
        extents = json.loads(run("nbdinfo", "--map", "--json", uri).stdout)
    data = [(e["offset"], e["length"]) for e in extents if e["type"] & 1 == 0]
    # the filesystem may allocate in larger units; the data region covers the written MiB
    assert len(data) == 1 and data[0][0] <= 8 * MiB and sum(d[1] for d in data) < 16 * MiB
    if os.statvfs(tmp_path).f_bsize <= 4096:
        assert data[0][0] + data[0][1] >= 9 * MiB


def test_unix_socket_export(tmp_path: Path) -> None:
    sock = tmp_path / "nbd.sock"
    raw = tmp_path / "u.raw"
    raw.write_bytes(random.Random(8).randbytes(MiB))
    proc = subprocess.Popen([sys.executable, "-m", "netsim", "nbd", "serve", str(raw),
                             "--bind", f"unix:{sock}", "--name", "u"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        uri = line.split()[-1]
        assert uri == f"nbd+unix:///u?socket={sock}"
        out = tmp_path / "out.raw"
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
        assert out.read_bytes() == raw.read_bytes()
        assert "export-size: 1048576" in run("nbdinfo", uri).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not sock.exists()                          # the socket goes with the server
