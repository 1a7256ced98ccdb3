"""The fast paths of `hvsim vhd export` and `hvsim vdi import` (issue 20's speed targets):
the output is still exactly qemu-img's, as sparse, and each shortcut is checked against a case
where taking it would be wrong.

- export preallocates each copied range (fallocate) before copy_file_range: holes stay exactly
  where no image holds data; a file system without fallocate still gets the same file; a full
  disk is one error line naming the output;
- import asks the target's block map whether a chunk reads zeros instead of reading it back
  (wrong for a block allocated earlier, a parent's data, a CBT-wrapped device), and leaves the
  data to writeback as qemu-img does, unless the SR is in sync mode.
"""
from __future__ import annotations

import ctypes
import errno
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from storage.devices import rawio
from storage.sr import cbt, transfer
from storage.sr.sr import SR
from storage.vhd import chain

MiB = 1 << 20
BLOCK = 512 * 1024


def hvsim(*args: object) -> subprocess.CompletedProcess[str]:
    """`hvsim ARGS` as a user runs it (a new process; the fast path when plain)."""
    return subprocess.run([sys.executable, "-m", "netsim", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def data_extents(path: Path) -> list[tuple[int, int]]:
    """The file's data extents, as SEEK_DATA/SEEK_HOLE report them."""
    out: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        pos, size = 0, os.fstat(fd).st_size
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


@pytest.fixture
def half(tmp_path: Path) -> tuple[Path, bytes, list[tuple[int, int]]]:
    """A 12 MiB dynamic VHD (512 KiB blocks): every other block allocated and filled, one
    block holding only its first 64 KiB (the rest of it a hole of the VHD file); its content
    and the byte ranges that hold data."""
    p = tmp_path / "half.vhd"
    img = chain.create_image(p, size=12 * MiB, block_size=BLOCK)
    rng = random.Random(20)
    want = bytearray(img.size)
    held: list[tuple[int, int]] = []
    for b in range(0, img.size // BLOCK, 2):
        n = 64 * 1024 if b == 6 else BLOCK
        data = rng.randbytes(n)
        img.write(b * BLOCK, data)
        want[b * BLOCK:b * BLOCK + n] = data
        held.append((b * BLOCK, b * BLOCK + n))
    img.close()
    return p, bytes(want), held


def test_export_process_equals_qemu_img_with_holes_exactly_where_unallocated(
        half: tuple[Path, bytes, list[tuple[int, int]]], tmp_path: Path) -> None:
    src, want, held = half
    ours, theirs = tmp_path / "ours.raw", tmp_path / "qemu.raw"
    r = hvsim("vhd", "export", src, ours)
    assert (r.returncode, r.stderr) == (0, "")
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", src, theirs], check=True)
    assert ours.read_bytes() == theirs.read_bytes() == want
    assert data_extents(ours) == held                 # the preallocation added no data range
    # allocated: the data, plus at most an extent-tree block or two of the file system's
    assert 0 <= ours.stat().st_blocks * 512 - sum(e - s for s, e in held) <= 8192


def _fake_fallocate(result_errno: int, calls: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
    def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
        calls.append((offset, length))
        ctypes.set_errno(result_errno)
        return -1
    return fallocate


def test_export_without_fallocate_writes_the_same_file_and_stops_asking(
        half: tuple[Path, bytes, list[tuple[int, int]]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    src, want, held = half
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(rawio, "_libc_fallocate", _fake_fallocate(errno.EOPNOTSUPP, calls))
    out = tmp_path / "out.raw"
    img = chain.open_chain(src)
    try:
        chain.export(img, out)
    finally:
        img.close()
    assert out.read_bytes() == want and data_extents(out) == held
    assert len(calls) == 1                  # one refusal turns preallocation off for the copy


@pytest.mark.parametrize("side", ["output", "input"])
def test_export_where_splice_cannot_move_the_data_copies_by_hand(
        half: tuple[Path, bytes, list[tuple[int, int]]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, side: str) -> None:
    """When the output refuses them, the first range's bytes are already in the pipe: they
    must be written from the file, not lost, and the pipe not reused with them inside."""
    src, want, held = half
    real, refused = os.splice, []

    def splice(fd_in: int, fd_out: int, count: int, offset_src: int | None = None,
               offset_dst: int | None = None, flags: int = 0) -> int:
        if (offset_dst if side == "output" else offset_src) is not None:
            refused.append(count)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd_in, fd_out, count, offset_src=offset_src, offset_dst=offset_dst,
                    flags=flags)

    monkeypatch.setattr(os, "splice", splice)
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(2):                      # a second export into the same file system too
        out = tmp_path / "out.raw"
        img = chain.open_chain(src)
        try:
            chain.export(img, out)
        finally:
            img.close()
        assert out.read_bytes() == want and data_extents(out) == held
    assert len(refused) == 2                # once per open image, then by hand throughout
    assert len(os.listdir("/proc/self/fd")) == fds     # the pipes were closed


def test_export_without_a_big_pipe_lets_the_kernel_copy(
        half: tuple[Path, bytes, list[tuple[int, int]]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Over pipe-user-pages-soft (root without CAP_SYS_RESOURCE shares it with every root
    process) a pipe cannot grow: the copy is then copy_file_range, not 8 KiB splices."""
    import fcntl

    src, want, held = half
    real_fcntl, real_cfr = fcntl.fcntl, os.copy_file_range
    copied: list[int] = []

    def no_big_pipes(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETPIPE_SZ:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real_fcntl(fd, cmd, arg)

    def cfr(fd_in: int, fd_out: int, count: int, offset_src: int | None = None,
            offset_dst: int | None = None) -> int:
        n = real_cfr(fd_in, fd_out, count, offset_src, offset_dst)
        copied.append(n)
        return n

    monkeypatch.setattr(fcntl, "fcntl", no_big_pipes)
    monkeypatch.setattr(os, "copy_file_range", cfr)
    monkeypatch.setattr(os, "splice", None)         # must not be called
    fds = len(os.listdir("/proc/self/fd"))
    out = tmp_path / "out.raw"
    img = chain.open_chain(src)
    try:
        chain.export(img, out)
    finally:
        img.close()
    assert out.read_bytes() == want and data_extents(out) == held
    assert sum(copied) == sum(e - s for s, e in held)
    assert len(os.listdir("/proc/self/fd")) == fds


def test_export_to_another_file_system_and_onto_a_full_one(
        half: tuple[Path, bytes, list[tuple[int, int]]], tmp_path: Path) -> None:
    src, want, held = half
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt], check=True)
    try:
        out = mnt / "out.raw"
        r = hvsim("vhd", "export", src, out)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr == f"error: {out}: No space left on device\n"
        # preallocation refused the range that did not fit: nothing was copied past it
        assert sum(e - s for s, e in data_extents(out)) < sum(e - s for s, e in held)
        # on another file system (no copy_file_range across them) with room, the same file
        subprocess.run(["mount", "-o", "remount,size=16m", mnt], check=True)
        r = hvsim("vhd", "export", src, out)
        assert (r.returncode, r.stderr) == (0, "")
        assert out.read_bytes() == want and data_extents(out) == held
    finally:
        subprocess.run(["umount", mnt], check=True)


@pytest.fixture
def sr(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SR.create(tmp_path / "sr")
    yield s
    s.close()


def _raw_input(path: Path, size: int, seed: int) -> bytes:
    """A raw file of `size` bytes: data, zero runs inside data, and holes."""
    rng = random.Random(seed)
    content = bytearray(size)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, MiB):
            kind = (off // MiB) % 3
            if kind == 0:
                piece = bytearray(rng.randbytes(MiB))
                piece[8192:8192 + 16384] = bytes(16384)       # zero pieces among data
                f.seek(off)
                f.write(piece)
                content[off:off + MiB] = piece
            elif kind == 1:
                f.seek(off)
                f.write(bytes(MiB))                           # written zeros, not a hole
    return bytes(content)


def test_import_read_back_by_qemu_img_equals_the_input(sr: SR, tmp_path: Path) -> None:
    raw = tmp_path / "in.raw"
    want = _raw_input(raw, 10 * MiB, 1)
    vdi = sr.vdi_create("imp", len(want))
    r = hvsim("vdi", "import", "--sr", sr.path, vdi.uuid, raw)
    assert (r.returncode, r.stderr) == (0, "")
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw",
                    sr.path / sr.vdi(vdi.uuid).location, back], check=True)
    assert back.read_bytes()[:len(want)] == want
    assert not any(back.read_bytes()[len(want):])
    qv = tmp_path / "q.vhd"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", raw, qv], check=True)
    assert (sr.path / sr.vdi(vdi.uuid).location).stat().st_blocks <= qv.stat().st_blocks + 16


def test_reads_zero_follows_the_live_block_map(sr: SR) -> None:
    vdi = sr.vdi_create("d", 8 * MiB)
    dev = sr.vdi_open(vdi.uuid)
    try:
        assert transfer.reads_zero(dev, 0, 4 * MiB)
        dev.write(3 * MiB, b"x" * 512)           # allocates the block: the answer changes
        assert not transfer.reads_zero(dev, 0, 4 * MiB)
        assert transfer.reads_zero(dev, 4 * MiB, 4 * MiB)
    finally:
        dev.close()
    # a snapshot's child holds nothing itself, but reads its parent's data there
    sr.vdi_snapshot(vdi.uuid)
    cbt.enable(sr, vdi.uuid)                    # and a CBT-logging wrapper in between
    dev = sr.vdi_open(vdi.uuid)
    try:
        assert type(dev).__name__ == "CbtDevice"
        assert not transfer.reads_zero(dev, 0, 4 * MiB)
        assert transfer.reads_zero(dev, 4 * MiB, 4 * MiB)
    finally:
        dev.close()
    assert not transfer.reads_zero(transfer._ZeroDevice(MiB), 0, MiB)   # not a VHD: unknown


@pytest.mark.parametrize("over", ["data", "parent"])
def test_import_zeros_replace_what_the_target_reads(sr: SR, tmp_path: Path, over: str) -> None:
    """Where the input has zeros and the target reads data (its own blocks, or a parent's
    after a snapshot), the import must write the zeros: a 'reads zero' shortcut taken there
    would leave the old data."""
    size = 6 * MiB
    vdi = sr.vdi_create("d", size)
    dev = sr.vdi_open(vdi.uuid)
    try:
        dev.write(0, b"\xee" * size)
    finally:
        dev.close()
    if over == "parent":
        sr.vdi_snapshot(vdi.uuid)
    raw = tmp_path / "in.raw"
    want = _raw_input(raw, size, 2)
    transfer.vdi_import(sr, vdi.uuid, raw)
    dev = sr.vdi_open(vdi.uuid, read_only=True)
    try:
        assert dev.read(0, size) == want
    finally:
        dev.close()


@pytest.mark.parametrize("sync", [False, True])
def test_import_fsyncs_the_vdi_only_in_a_sync_sr(sr: SR, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  sync: bool) -> None:
    sr.set_sync(sync)
    vdi = sr.vdi_create("d", 4 * MiB)
    raw = tmp_path / "in.raw"
    want = _raw_input(raw, 4 * MiB, 3)
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    transfer.vdi_import(sr, vdi.uuid, raw)
    target = str(sr.path / sr.vdi(vdi.uuid).location)
    assert (target in synced) is sync
    dev = sr.vdi_open(vdi.uuid, read_only=True)
    try:
        assert dev.read(0, len(want)) == want
    finally:
        dev.close()


def test_an_extending_block_write_is_preallocated_and_never_grows_the_file_further(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real = rawio.preallocate

    def preallocate(fd: int, off: int, n: int) -> bool:
        calls.append((off, n))
        return real(fd, off, n)

    monkeypatch.setattr(chain, "preallocate", preallocate)
    p = tmp_path / "d.vhd"
    img = chain.create_image(p, size=8 * MiB)
    data = random.Random(4).randbytes(2 * MiB)
    img.write(2 * MiB, data)
    img.write(2 * MiB + 4096, b"y" * 4096)    # inside an allocated block: nothing to reserve
    img.close()
    assert len(calls) == 1 and calls[0][1] == 2 * MiB
    img = chain.open_chain(p)
    try:
        assert img.read(2 * MiB, 2 * MiB) == data[:4096] + b"y" * 4096 + data[8192:]
        assert chain.check(p) == []
        # no space reserved beyond what the block and the metadata take (the file's last
        # 4 KiB block counts whole)
        assert p.stat().st_blocks * 512 <= p.stat().st_size + 4096
    finally:
        img.close()


def test_export_process_loads_no_json_pathlib_or_import_hook(
        half: tuple[Path, bytes, list[tuple[int, int]]], tmp_path: Path) -> None:
    """Start-up is part of what a user waits for (a 1 GiB export copies in ~0.15 s): the
    editable install is a plain path (pyproject's package-dir), not setuptools' import hook,
    and the export path imports json and pathlib only where it uses them."""
    src, want, _ = half
    out = tmp_path / "o.raw"
    probe = ("import sys\nfrom netsim.cli import main\nsys.argv = ['hvsim', 'vhd', 'export', "
             f"{str(src)!r}, {str(out)!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('json', 'pathlib') if m in sys.modules),\n"
             "      [type(f).__name__ for f in sys.meta_path if 'ditable' in repr(f)])")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=300)
    assert r.stderr == ""
    assert r.stdout.splitlines()[-1] == "[] []"
    assert out.read_bytes() == want
