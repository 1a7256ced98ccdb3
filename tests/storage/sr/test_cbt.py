"""Changed block tracking on every SR type: the bitmap `list-changed-blocks` prints, frozen
copies in snapshots, data-destroy, and an incremental backup rebuilt from changed blocks only."""
from __future__ import annotations

import base64
import json
import random
from pathlib import Path

from storage.sr import cbt
from storage.sr.sr import SR
from tests.storage.sr.conftest import hv

MiB = 1 << 20
KiB = 1024
SIZE = 16 * MiB


def _write(sr: Path, uuid: str, off: int, data: bytes, tmp: Path) -> None:
    f = tmp / "payload.bin"
    f.write_bytes(data)
    hv("vdi", "write", "--sr", sr, uuid, "--offset", off, "--input", f)


def _blocks(text: str) -> set[int]:
    bm = base64.b64decode(text)
    return {i for i in range(len(bm) * 8) if bm[i // 8] & (0x80 >> (i % 8))}


def test_bitmap_marks_written_blocks_between_snapshots(sr_path: Path, tmp_path: Path) -> None:
    u = hv("vdi", "create", "--sr", sr_path, "--size", SIZE, "--name", "d").strip()
    hv("vdi", "enable-cbt", "--sr", sr_path, u)
    _write(sr_path, u, 0, b"a", tmp_path)                   # block 0, before any snapshot
    s1 = hv("vdi", "snapshot", "--sr", sr_path, u).strip()
    _write(sr_path, u, 64 * KiB - 1, b"xy", tmp_path)        # straddles blocks 0 and 1
    _write(sr_path, u, 10 * MiB, b"z" * 200 * KiB, tmp_path)  # blocks 160..163
    out = hv("vdi", "list-changed-blocks", "--sr", sr_path, s1, u).strip()
    nblocks = -(-SR.open(sr_path).vdi(u).virtual_size // (64 * KiB))
    assert len(base64.b64decode(out)) == -(-nblocks // 8)
    assert _blocks(out) == {0, 1, 160, 161, 162, 163}
    s2 = hv("vdi", "snapshot", "--sr", sr_path, u).strip()
    _write(sr_path, u, 5 * MiB, b"w", tmp_path)              # block 80, after s2
    assert _blocks(hv("vdi", "list-changed-blocks", "--sr", sr_path, s2, u)) == {80}
    assert _blocks(hv("vdi", "list-changed-blocks", "--sr", sr_path, s1, s2)) == \
        {0, 1, 160, 161, 162, 163}                            # s2's copy stayed frozen
    assert _blocks(hv("vdi", "list-changed-blocks", "--sr", sr_path, s1, u)) == \
        {0, 1, 80, 160, 161, 162, 163}
    js = json.loads(hv("vdi", "list-changed-blocks", "--sr", sr_path, s2, u, "--json"))
    assert js["ranges"] == [{"offset": 5 * MiB, "length": 64 * KiB}]
    # data-destroy keeps the log: s1 is still a FROM, but no longer readable
    hv("vdi", "data-destroy", "--sr", sr_path, s1)
    assert _blocks(hv("vdi", "list-changed-blocks", "--sr", sr_path, s1, u)) == \
        {0, 1, 80, 160, 161, 162, 163}
    err = hv("vdi", "export", "--sr", sr_path, s1, tmp_path / "x.raw", code=2)
    assert "CBT metadata" in err
    assert "0 records with no volume" in hv("sr", "scan", sr_path)   # the record stays
    err = hv("vdi", "list-changed-blocks", "--sr", sr_path, u, s2, code=2)
    assert "not an earlier snapshot" in err
    hv("vdi", "disable-cbt", "--sr", sr_path, u)
    err = hv("vdi", "list-changed-blocks", "--sr", sr_path, s2, u, code=2)
    assert "no CBT log" in err


def test_bitmap_bytes_are_what_xapi_returns(sr_path: Path, tmp_path: Path) -> None:
    """The base64 text is byte for byte what XenServer's `VDI.list_changed_blocks` returns for
    the same writes. xapi-project/sm (drivers/VDI.py, list_changed_blocks) reads blktap's
    on-disk bitmap (Linux bit order: block i is bit i % 8, LSB first, of byte i // 8) into a
    `bitarray`, calls `bytereverse()` and base64-encodes `tobytes()`; backup tools
    (XS-CBT-backup's cbt_bitmap.py) decode it MSB first. Both sides are modelled here with
    the same library sm uses."""
    from bitarray import bitarray

    rng = random.Random(2020)
    u = hv("vdi", "create", "--sr", sr_path, "--size", SIZE, "--name", "d").strip()
    hv("vdi", "enable-cbt", "--sr", sr_path, u)
    s1 = hv("vdi", "snapshot", "--sr", sr_path, u).strip()
    size = SR.open(sr_path).vdi(u).virtual_size
    nblocks = -(-size // (64 * KiB))
    written: set[int] = set()
    for _ in range(25):
        off = rng.randrange(size - 1)
        n = rng.randrange(1, min(200 * KiB, size - off) + 1)
        _write(sr_path, u, off, rng.randbytes(n), tmp_path)
        written |= set(range(off // (64 * KiB), (off + n - 1) // (64 * KiB) + 1))
    ours = hv("vdi", "list-changed-blocks", "--sr", sr_path, s1, u).strip()
    on_disk = bitarray(-(-nblocks // 8) * 8, endian="little")   # blktap's cbt log bitmap
    on_disk.setall(0)
    for b in written:
        on_disk[b] = 1
    xapi = bitarray()                                           # sm: frombytes, bytereverse
    xapi.frombytes(on_disk.tobytes())
    xapi.bytereverse()
    assert ours == base64.b64encode(xapi.tobytes()).decode()
    consumer = bitarray(endian="big")                           # what a backup tool reads
    consumer.frombytes(base64.b64decode(ours))
    assert set(consumer.search(bitarray("1"))) == written
    err = hv("vdi", "list-changed-blocks", "--sr", sr_path, s1, s1, code=2)
    assert "same" in err                                        # sm: "Source and target VDI
                                                                # are same"


def test_incremental_backup_from_changed_blocks(sr_path: Path, tmp_path: Path) -> None:
    rng = random.Random(11)
    u = hv("vdi", "create", "--sr", sr_path, "--size", SIZE, "--name", "d").strip()
    hv("vdi", "enable-cbt", "--sr", sr_path, u)
    for _ in range(5):
        _write(sr_path, u, rng.randrange(SIZE - MiB), rng.randbytes(rng.randrange(1, MiB)),
               tmp_path)
    full_snap = hv("vdi", "snapshot", "--sr", sr_path, u).strip()
    backup = tmp_path / "backup.raw"
    hv("vdi", "export", "--sr", sr_path, full_snap, backup)
    hv("vdi", "data-destroy", "--sr", sr_path, full_snap)     # the backup holds the data now
    for _ in range(8):
        _write(sr_path, u, rng.randrange(SIZE - 300 * KiB),
               rng.randbytes(rng.randrange(1, 300 * KiB)), tmp_path)
    _write(sr_path, u, 3 * MiB, bytes(70 * KiB), tmp_path)   # zeros are changes too
    inc_snap = hv("vdi", "snapshot", "--sr", sr_path, u).strip()
    js = json.loads(hv("vdi", "list-changed-blocks", "--sr", sr_path, full_snap, inc_snap,
                       "--json"))
    with open(backup, "r+b") as f:
        for r in js["ranges"]:
            data = hv_read(sr_path, inc_snap, r["offset"], r["length"])
            f.seek(r["offset"])
            f.write(data)
    s = SR.open(sr_path)
    dev = s.vdi_open(u, read_only=True)
    try:
        assert backup.read_bytes() == dev.read(0, dev.size)
    finally:
        dev.close()
        s.close()


def hv_read(sr: Path, uuid: str, off: int, n: int) -> bytes:
    from typer.testing import CliRunner

    from netsim.cli.app import app
    s = SR.open(sr)
    n = min(n, s.vdi(uuid).virtual_size - off)
    r = CliRunner().invoke(app, ["vdi", "read", "--sr", str(sr), uuid, "--offset", str(off),
                                 "--length", str(n)])
    assert r.exit_code == 0, r.output
    return r.stdout_bytes


def test_plugged_vbd_logs_writes_across_a_snapshot(sr_path: Path) -> None:
    s = SR.open(sr_path)
    v = s.vdi_create("d", SIZE)
    cbt.enable(s, v.uuid)
    vbd = s.vbd_create(v.uuid, "vm1")
    dev = s.vbd_plug(vbd.uuid)
    dev.write(0, b"before")
    snap = s.vdi_snapshot(v.uuid)            # the VBD is paused and reopened on the new log
    dev.write(2 * MiB, b"after")
    assert cbt.ranges(cbt.list_changed_blocks(s, snap.uuid, v.uuid)) == [(2 * MiB, 64 * KiB)]
    s.vbd_unplug(vbd.uuid)
    s.close()
