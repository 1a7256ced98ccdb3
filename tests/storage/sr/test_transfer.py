"""`hvsim vdi export/import/copy/resize/revert/read/write` on every SR type, checked against
the bytes written and, for VHD output, against libvhdi (an independent VHD reader)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import pyvhdi

from storage.sr.sr import SR
from storage.vhd import chain
from tests.storage.sr.conftest import SR_TYPES, hv, make_sr

MiB = 1 << 20
SIZE = 16 * MiB


def _vdi(sr: Path, size: int = SIZE) -> str:
    return hv("vdi", "create", "--sr", sr, "--size", size, "--name", "d").strip()


def _write(sr: Path, uuid: str, off: int, data: bytes, tmp: Path) -> None:
    f = tmp / "payload.bin"
    f.write_bytes(data)
    hv("vdi", "write", "--sr", sr, uuid, "--offset", off, "--input", f)


def _content(sr: Path, uuid: str) -> bytes:
    s = SR.open(sr)
    dev = s.vdi_open(uuid, read_only=True)
    try:
        return dev.read(0, dev.size)
    finally:
        dev.close()
        s.close()


def _fill(sr: Path, uuid: str, tmp: Path, seed: int) -> bytearray:
    """A few scattered writes; returns the whole expected content."""
    rng = random.Random(seed)
    model = bytearray(len(_content(sr, uuid)))
    for _ in range(6):
        off = rng.randrange(0, SIZE - 300_000)
        data = rng.randbytes(rng.randrange(1, 300_000))
        _write(sr, uuid, off, data, tmp)
        model[off:off + len(data)] = data
    return model


def _vhdi_read(path: Path, parent: Path | None = None) -> bytes:
    f = pyvhdi.file()
    f.open(str(path))
    p = None
    if parent is not None:
        p = pyvhdi.file()
        p.open(str(parent))
        f.set_parent(p)
    try:
        return f.read_buffer_at_offset(f.get_media_size(), 0)
    finally:
        f.close()
        if p is not None:
            p.close()


def test_export_raw_is_sparse_and_exact(sr_path: Path, tmp_path: Path) -> None:
    u = _vdi(sr_path)
    model = _fill(sr_path, u, tmp_path, 1)
    out = tmp_path / "disk.raw"
    hv("vdi", "export", "--sr", sr_path, u, out)
    assert out.read_bytes() == model
    assert out.stat().st_blocks * 512 < SIZE // 2      # holes where nothing was written


def test_export_vhd_reads_back_in_libvhdi(sr_path: Path, tmp_path: Path) -> None:
    u = _vdi(sr_path)
    model = _fill(sr_path, u, tmp_path, 2)
    out = tmp_path / "disk.vhd"
    hv("vdi", "export", "--sr", sr_path, u, out, "--format", "vhd")
    data = _vhdi_read(out)
    assert data[:len(model)] == model and not any(data[len(model):])
    assert out.stat().st_size < SIZE // 2               # zero blocks not allocated


def test_delta_export_applied_by_libvhdi_equals_the_vdi(sr_path: Path, tmp_path: Path) -> None:
    u = _vdi(sr_path)
    _fill(sr_path, u, tmp_path, 3)
    snap = hv("vdi", "snapshot", "--sr", sr_path, u).strip()
    _write(sr_path, u, 5 * MiB + 7, b"after the snapshot" * 100, tmp_path)
    _write(sr_path, u, 0, bytes(4096), tmp_path)        # zeros over data are a change too
    base = tmp_path / f"{snap}.vhd"
    delta = tmp_path / "delta.vhd"
    hv("vdi", "export", "--sr", sr_path, snap, base, "--format", "vhd")
    out = hv("vdi", "export", "--sr", sr_path, u, delta, "--format", "vhd", "--base", snap)
    assert "changed bytes" in out
    want = _content(sr_path, u)
    assert _vhdi_read(delta, parent=base)[:len(want)] == want
    img = chain.open_chain(delta)                       # our reader finds <snap>.vhd itself
    try:
        assert img.read(0, len(want)) == want
        assert img.allocated_blocks <= 2                 # only the changed pieces are held
    finally:
        img.close()


def test_import_raw_overwrites_and_stays_sparse(sr_path: Path, tmp_path: Path) -> None:
    u = _vdi(sr_path)
    _write(sr_path, u, 8 * MiB, b"old data" * 1000, tmp_path)
    rng = random.Random(4)
    img = bytearray(12 * MiB)                           # smaller than the VDI: the tail zeroes
    img[:MiB] = rng.randbytes(MiB)
    img[10 * MiB:10 * MiB + 5000] = rng.randbytes(5000)
    src = tmp_path / "in.raw"
    src.write_bytes(img)
    hv("vdi", "import", "--sr", sr_path, u, src)
    got = _content(sr_path, u)
    assert got[:len(img)] == img and not any(got[len(img):])


def test_import_vhd_and_too_large_file(sr_path: Path, tmp_path: Path) -> None:
    u = _vdi(sr_path)
    vhd = tmp_path / "in.vhd"
    hv("vhd", "create", vhd, "--size", "4M")
    hv("vhd", "write", vhd, "--offset", "1M", "--input", __file__)
    hv("vdi", "import", "--sr", sr_path, u, vhd, "--format", "vhd")
    want = Path(__file__).read_bytes()
    assert _content(sr_path, u)[MiB:MiB + len(want)] == want
    big = tmp_path / "big.raw"
    big.write_bytes(b"x" * (SIZE + MiB))
    out = hv("vdi", "import", "--sr", sr_path, u, big, code=2)
    assert "do not fit" in out and "Traceback" not in out
    out = hv("vdi", "import", "--sr", sr_path, u, tmp_path / "missing.raw", code=2)
    assert "missing.raw" in out


@pytest.mark.parametrize("dst_kind", SR_TYPES)
def test_copy_is_independent_across_sr_types(sr_path: Path, tmp_path: Path,
                                             dst_kind: str) -> None:
    u = _vdi(sr_path)
    model = _fill(sr_path, u, tmp_path, 5)
    dst = make_sr(tmp_path / "dst", dst_kind)
    new = hv("vdi", "copy", "--sr", sr_path, u, "--to-sr", dst).strip()
    assert _content(dst, new)[:len(model)] == model
    _write(sr_path, u, 0, b"source changes", tmp_path)
    assert _content(dst, new)[:len(model)] == model     # the copy does not follow


def test_revert_keeps_uuid_and_takes_the_snapshots_content(sr_path: Path,
                                                           tmp_path: Path) -> None:
    u = _vdi(sr_path)
    model = _fill(sr_path, u, tmp_path, 6)
    snap = hv("vdi", "snapshot", "--sr", sr_path, u).strip()
    _fill(sr_path, u, tmp_path, 7)
    hv("vdi", "revert", "--sr", sr_path, u, snap)
    assert _content(sr_path, u) == model
    assert _content(sr_path, snap) == model
    out = hv("vdi", "revert", "--sr", sr_path, snap, u, code=2)
    assert "not a snapshot" in out


def test_resize_read_write_via_stdio(sr_path: Path, tmp_path: Path) -> None:
    u = _vdi(sr_path)
    out = hv("vdi", "resize", "--sr", sr_path, u, "--size", "32M")
    assert "virtual size now" in out
    new_size = SR.open(sr_path).vdi(u).virtual_size
    assert new_size >= 32 * MiB
    payload = os.urandom(3000)
    from typer.testing import CliRunner

    from netsim.cli.app import app
    r = CliRunner().invoke(app, ["vdi", "write", "--sr", str(sr_path), u, "--offset", "20M"],
                           input=payload)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["vdi", "read", "--sr", str(sr_path), u, "--offset", "20M",
                                 "--length", "3000"])
    assert r.exit_code == 0 and r.stdout_bytes == payload
    out = hv("vdi", "read", "--sr", sr_path, u, "--offset", new_size - 10, "--length", 20,
             code=2)
    assert "past the end" in out


@pytest.mark.parametrize("kind", ["file", "lvm", "lvhd"])
def test_a_second_writer_is_refused_while_a_vbd_is_plugged(tmp_path: Path, kind: str) -> None:
    """Two writers never share a disk: `vdi write` from elsewhere (another SR handle, as
    another process has) is refused while a VBD has the VDI open read-write, on every SR
    type; once unplugged the write goes through."""
    sr = make_sr(tmp_path / "sr", kind)
    u = hv("vdi", "create", "--sr", sr, "--size", "8M", "--name", "d").strip()
    s = SR.open(sr)
    vbd = s.vbd_create(u, "vm1")
    dev = s.vbd_plug(vbd.uuid)
    dev.write(0, b"A" * 4096)
    payload = tmp_path / "x"
    payload.write_bytes(b"xy")
    try:
        err = hv("vdi", "write", "--sr", sr, u, "--offset", 0, "--input", payload, code=2)
        assert "lock" in err or "open for writing elsewhere" in err
        if kind == "file":   # QEMU's lock bytes: a reader needs -U beside a writer
            assert "--force-share" in hv("vdi", "read", "--sr", sr, u, "--offset", 0,
                                         "--length", 2, code=2)
        else:                # an LV has one writer lock; readers go through
            assert hv("vdi", "read", "--sr", sr, u, "--offset", 0, "--length", 2) == "AA"
    finally:
        s.vbd_unplug(vbd.uuid)
        s.close()
    hv("vdi", "write", "--sr", sr, u, "--offset", 0, "--input", payload)
    assert hv("vdi", "read", "--sr", sr, u, "--offset", 0, "--length", 4) == "xyAA"
