"""Interop with Debian's LVM2 tools (2.03.x): they read our metadata and PVs, we read theirs.

Two routes, both checked:
- without devices: `vgcfgrestore --list --file` parses our vgcfgbackup text with LVM2's own
  metadata importer, and `lvmconfig` (pointed at the file through LVM_SYSTEM_DIR) parses it with
  LVM2's config parser;
- with loop devices over our PV files (this needs root and /dev/loop-control; the kernel has
  no device-mapper here, so LVM2 runs with activation disabled — metadata only): `pvs/vgs/lvs`,
  `vgck`, `vgcfgrestore --test` on our PVs; `lvcreate/lvextend/lvrename/lvchange` by LVM2
  and our code reading the result, including where LVM2 put each extent.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.errors import LvmError
from storage.lvm import VolumeGroup, pvcreate
from storage.lvm.textfmt import emit_text, parse_text

pytestmark = pytest.mark.interop
MiB = 1 << 20


def _no_loop_device(stderr: str) -> None:
    """The suite runs as root (its setup installs Debian packages), and root attaches loop
    devices here: failing to is a failure, never a skip."""
    pytest.fail(f"cannot attach a loop device (needs root): {stderr}")


def lvm(*args: str, devices: list[str] | None = None, check: bool = True,
        system_dir: Path | None = None, config: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an lvm2 tool confined to `devices`, with activation and backups off, in UTC."""
    accept = "".join(f'"a|^{re.escape(d)}$|", ' for d in devices or [])
    settings = (f"devices {{ use_devicesfile=0 obtain_device_list_from_udev=0 "
              f'filter=[ {accept}"r|.*|" ] }} global {{ activation=0 }} '
              "backup { backup=0 archive=0 }")
    env = dict(os.environ, TZ="UTC", LVM_SUPPRESS_FD_WARNINGS="1")
    if system_dir is not None:
        env["LVM_SYSTEM_DIR"] = str(system_dir)
    cmd = [args[0], "--config", settings, *args[1:]] if config else list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return proc


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[VolumeGroup]:
    """A VG made by us: two PVs, a linear LV with data grown in two segments, a snapshot."""
    files = [tmp_path / "pv0.img", tmp_path / "pv1.img"]
    rng = random.Random(11)
    for f in files:
        pvcreate(f, size=64 * MiB, rng=rng)
    name = f"hv{uuid.uuid4().hex[:8]}"
    g = VolumeGroup.create(name, files, rng=rng)
    g.lvcreate("data", 12 * MiB)
    g.lvcreate("other", 4 * MiB)
    g.lvextend("data", 20 * MiB)
    g.open_lv("data").write(0, b"hello lvm2")
    g.lvcreate("snap", 8 * MiB, snapshot_of="data")
    yield g
    g.close()


def test_vgcfgrestore_reads_our_backup_file(ours: VolumeGroup, tmp_path: Path) -> None:
    backup = tmp_path / "vg.backup"
    backup.write_text(ours.backup_text("made by hvsim"))
    out = lvm("vgcfgrestore", "--list", "--file", str(backup), ours.name).stdout
    assert re.search(rf"VG name:\s+{ours.name}\n", out), out
    assert "Description:\tmade by hvsim" in out
    # the same tool refuses a damaged file, so the check above means something
    backup.write_text(backup.read_text().replace("seqno = ", "seqno = x"))
    proc = lvm("vgcfgrestore", "--list", "--file", str(backup), ours.name, check=False)
    assert "Unable to read archive file" in proc.stdout + proc.stderr


def test_lvm2_config_parser_reads_our_metadata_values(ours: VolumeGroup, tmp_path: Path) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "lvm.conf").write_text(ours.backup_text("x"))
    n = ours.name
    out = lvm("lvmconfig", f"{n}/seqno", f"{n}/extent_size",
              f"{n}/logical_volumes/data/segment2/stripes",
              f"{n}/logical_volumes/snapshot0/segment1/cow_store", system_dir=conf,
              config=False).stdout  # --config would replace the file being read
    seg2 = ours.meta.lv("data").segments[1]
    assert f"seqno={ours.meta.seqno}\n" in out
    assert "extent_size=8192\n" in out
    assert f'stripes=["{seg2.stripes[0][0]}",{seg2.stripes[0][1]}]' in out
    assert 'cow_store="snap"' in out


# ----------------------------------------------------------------------------- loop devices

@pytest.fixture
def loops(ours: VolumeGroup) -> Iterator[list[str]]:
    """Loop devices over our VG's PV files (closed by us first so LVM2 sees committed data)."""
    files = [d.path for d in ours.devices.values()]
    ours.close()
    attached: list[str] = []
    try:
        for f in files:
            proc = subprocess.run(["losetup", "--find", "--show", f], capture_output=True,
                                  text=True, timeout=30)
            if proc.returncode != 0:
                _no_loop_device(proc.stderr)
            attached.append(proc.stdout.strip())
        yield attached
    finally:
        for dev in attached:
            subprocess.run(["losetup", "--detach", dev], capture_output=True, timeout=30)


def report(kind: str, *args: str, devices: list[str]) -> list[dict[str, str]]:
    out = lvm(kind, "--reportformat", "json", "--units", "b", "--nosuffix", *args,
              devices=devices).stdout
    return json.loads(out)["report"][0][kind[:2]]


def test_lvm2_reports_our_pvs_vg_and_lvs(ours: VolumeGroup, loops: list[str]) -> None:
    name = ours.name
    pvs = report("pvs", "-o", "pv_name,vg_name,pv_size,pv_free,pv_uuid", devices=loops)
    assert {p["pv_name"] for p in pvs} == set(loops)
    assert {p["vg_name"] for p in pvs} == {name}
    assert sorted(p["pv_uuid"] for p in pvs) == sorted(pv.id for pv in ours.meta.pvs)
    vgs = report("vgs", "-o", "vg_name,vg_size,vg_free,vg_seqno,lv_count,snap_count",
                 devices=loops)
    s = ours.summary()
    assert vgs == [{"vg_name": name, "vg_size": str(s.size), "vg_free": str(s.free),
                    "vg_seqno": str(s.seqno), "lv_count": "3", "snap_count": "1"}]
    lvs = {lv["lv_name"]: lv for lv in report("lvs", "-o", "lv_name,lv_size,lv_attr,origin,"
                                                          "seg_count", name, devices=loops)}
    assert lvs["data"]["lv_size"] == str(20 * MiB) and lvs["data"]["seg_count"] == "2"
    assert lvs["data"]["lv_attr"][0] == "o" and lvs["snap"]["lv_attr"][0] == "s"
    assert lvs["snap"]["origin"] == "data"
    lvm("vgck", name, devices=loops)
    for dev in loops:
        lvm("pvck", dev, devices=loops)


def test_lvm2_backup_of_our_vg_round_trips_through_our_codec(
        ours: VolumeGroup, loops: list[str], tmp_path: Path) -> None:
    out = tmp_path / "lvm2.backup"
    lvm("vgcfgbackup", "--file", str(out), ours.name, devices=loops)
    text = out.read_text()
    vg, header = parse_text(text)
    assert emit_text(vg, header, "file") == text
    assert [lv.name for lv in vg.lvs] == ["data", "other", "snap", "snapshot0"]
    lvm("vgcfgrestore", "--test", "--file", str(out), ours.name, devices=loops)


def test_we_open_what_lvm2_changed(ours: VolumeGroup, loops: list[str]) -> None:
    name, files = ours.name, [d.path for d in ours.devices.values()]
    lvm("lvcreate", "--activate", "n", "--zero", "n", "-L", "12m", "-n", "made_by_lvm2", name,
        devices=loops)
    lvm("lvextend", "-L", "+8m", f"{name}/other", devices=loops)
    lvm("lvrename", name, "made_by_lvm2", "lvm2lv", devices=loops)
    lvm("lvchange", "--addtag", "fromlvm2", f"{name}/lvm2lv", devices=loops)
    seqno = report("vgs", "-o", "vg_seqno", name, devices=loops)[0]["vg_seqno"]
    ranges = report("lvs", "-o", "lv_name,seg_pe_ranges", f"{name}/lvm2lv", devices=loops)
    g = VolumeGroup.open(name, files)
    try:
        assert str(g.meta.seqno) == seqno
        assert g.meta.lv("lvm2lv").tags == ["fromlvm2"]
        assert g.lv_size("other") == 12 * MiB
        assert g.open_lv("data").read(0, 10) == b"hello lvm2"
        assert g.open_lv("snap").read(0, 10) == b"hello lvm2"
        # our mapping of LVM2's LV agrees with where LVM2 says its extents are
        dev = g.open_lv("lvm2lv")
        dev.write(0, b"first extent")
        m = re.match(r"(/dev/loop\d+):(\d+)-(\d+)", ranges[0]["seg_pe_ranges"])
        assert m, ranges
        loop, pe = m.group(1), int(m.group(2))
        path = files[loops.index(loop)]
        pv_name = next(n for n, d in g.devices.items() if d.path == path)
        pv = g.meta.pv(pv_name)
        g.close()
        with open(path, "rb") as f:
            f.seek(pv.pe_start * 512 + pe * 4 * MiB)
            assert f.read(12) == b"first extent"
        g = VolumeGroup.open(name, files)
        g.lvcreate("after_lvm2", 4 * MiB)  # we commit on top of LVM2's metadata
    finally:
        g.close()
    names = {lv["lv_name"] for lv in report("lvs", "-o", "lv_name", name, devices=loops)}
    assert names == {"data", "other", "snap", "lvm2lv", "after_lvm2"}


def test_lvm2_reads_an_lvhd_sr(tmp_path: Path) -> None:
    """The SR's PV is an LVM2 PV: `lvs` lists the VHD-<uuid> LVs at their inflated sizes."""
    from storage.sr.sr import SR

    sr = SR.create(tmp_path / "sr", type_name="lvhd", device_config={"size": "256M"})
    v = sr.vdi_create("disk0", 40 << 20)
    snap = sr.vdi_snapshot(v.uuid)
    sizes = {x.location: sr.physical_utilisation(u) for u, x in sr.vdis.items()}
    sr.close()
    proc = subprocess.run(["losetup", "--find", "--show", str(tmp_path / "sr" / "pv0.img")],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        _no_loop_device(proc.stderr)
    loop = proc.stdout.strip()
    try:
        rows = report("lvs", "-o", "lv_name,lv_size", f"VG_XenStorage-{sr.uuid}",
                      devices=[loop])
    finally:
        subprocess.run(["losetup", "--detach", loop], capture_output=True, timeout=30)
    assert {r["lv_name"]: int(r["lv_size"]) for r in rows} == sizes
    assert f"VHD-{snap.uuid}" in sizes and len(sizes) == 3


def test_lvm2_reads_our_thin_pool_metadata(tmp_path: Path) -> None:
    """`lvs` sees our pool, its hidden data/metadata LVs and thin LVs with their device ids
    (the mapping table inside _tmeta is ours, which LVM2 does not read without activation)."""
    pv = tmp_path / "pv0.img"
    pvcreate(pv, size=128 * MiB, rng=random.Random(4))
    name = f"hv{uuid.uuid4().hex[:8]}"
    g = VolumeGroup.create(name, [pv], rng=random.Random(5))
    g.lvcreate_thin_pool("pool", 32 * MiB)
    g.lvcreate_thin("t1", 200 * MiB, "pool")
    g.open_lv("t1").write(0, b"thin data")
    g.lvcreate("s1", 0, snapshot_of="t1")
    g.close()
    proc = subprocess.run(["losetup", "--find", "--show", str(pv)], capture_output=True,
                          text=True, timeout=30)
    if proc.returncode != 0:
        _no_loop_device(proc.stderr)
    loop = proc.stdout.strip()
    try:
        rows = report("lvs", "-a", "-o", "lv_name,lv_size,segtype,thin_id,pool_lv,origin",
                      name, devices=[loop])
        lvm("vgck", name, devices=[loop])
    finally:
        subprocess.run(["losetup", "--detach", loop], capture_output=True, timeout=30)
    by = {r["lv_name"]: r for r in rows}
    assert by["pool"]["segtype"] == "thin-pool" and by["pool"]["lv_size"] == str(32 * MiB)
    assert by["[pool_tdata]"]["segtype"] == "linear" and "[pool_tmeta]" in by
    assert by["t1"]["segtype"] == "thin" and by["t1"]["thin_id"] == "1"
    assert by["t1"]["lv_size"] == str(200 * MiB) and by["t1"]["pool_lv"] == "pool"
    assert by["s1"]["thin_id"] == "2" and by["s1"]["origin"] == "t1"


def test_we_read_and_write_a_striped_lv_lvm2_created(ours: VolumeGroup, loops: list[str]) -> None:
    """LVM2 lays out `-i 2 -I 64k`; our writes land in the stripe LVM2 says, 64 KiB apart."""
    name, files = ours.name, [d.path for d in ours.devices.values()]
    lvm("lvcreate", "--activate", "n", "--zero", "n", "-i", "2", "-I", "64k", "-L", "16m",
        "-n", "wide", name, devices=loops)
    ranges = report("lvs", "-o", "seg_pe_ranges", f"{name}/wide", devices=loops)[0]
    stripes = re.findall(r"(/dev/loop\d+):(\d+)-\d+", ranges["seg_pe_ranges"])
    assert len(stripes) == 2, ranges
    g = VolumeGroup.open(name, files)
    try:
        seg = g.meta.lv("wide").segments[0]
        assert len(seg.stripes) == 2 and seg.stripe_size == 128
        dev = g.open_lv("wide")
        units = [bytes([65 + i]) * (64 << 10) for i in range(4)]  # A, B, C, D: one per unit
        dev.write(0, b"".join(units))
        assert dev.read(0, 4 * (64 << 10)) == b"".join(units)
        pe_start = {d.path: g.meta.pv(n).pe_start * 512 for n, d in g.devices.items()}
    finally:
        g.close()
    # unit k goes to stripe k % 2, row k // 2
    for k, unit in enumerate(units):
        loop, pe = stripes[k % 2]
        path = files[loops.index(loop)]
        with open(path, "rb") as f:
            f.seek(pe_start[path] + int(pe) * 4 * MiB + (k // 2) * (64 << 10))
            assert f.read(64 << 10) == unit, f"stripe unit {k}"


def test_lvm2_reads_a_striped_lv_we_created(tmp_path: Path) -> None:
    files = [tmp_path / "a.img", tmp_path / "b.img"]
    rng = random.Random(6)
    for f in files:
        pvcreate(f, size=64 * MiB, rng=rng)
    name = f"hv{uuid.uuid4().hex[:8]}"
    g = VolumeGroup.create(name, files, rng=rng)
    g.lvcreate("wide", 16 * MiB, stripes=2, stripe_size=128 << 10)
    g.close()
    attached = []
    try:
        for f in files:
            proc = subprocess.run(["losetup", "--find", "--show", str(f)], capture_output=True,
                                  text=True, timeout=30)
            if proc.returncode != 0:
                _no_loop_device(proc.stderr)
            attached.append(proc.stdout.strip())
        rows = report("lvs", "-o", "lv_name,lv_size,stripes,stripe_size,segtype", name,
                      devices=attached)
        lvm("vgck", name, devices=attached)
    finally:
        for dev in attached:
            subprocess.run(["losetup", "--detach", dev], capture_output=True, timeout=30)
    assert rows == [{"lv_name": "wide", "lv_size": str(16 * MiB), "stripes": "2",
                     "stripe_size": str(128 << 10), "segtype": "striped"}]


# ----------------------------------------------------------------------------- issue 14

@pytest.fixture
def loop_files(tmp_path: Path) -> Iterator[tuple[list[Path], list[str]]]:
    """Three blank 64 MiB files on loop devices (for VGs LVM2 itself creates)."""
    files = [tmp_path / f"disk{i}.img" for i in range(3)]
    attached: list[str] = []
    try:
        for f in files:
            with open(f, "wb") as fh:
                fh.truncate(64 * MiB)
            proc = subprocess.run(["losetup", "--find", "--show", str(f)], capture_output=True,
                                  text=True, timeout=30)
            if proc.returncode != 0:
                _no_loop_device(proc.stderr)
            attached.append(proc.stdout.strip())
        yield files, attached
    finally:
        for dev in attached:
            subprocess.run(["losetup", "--detach", dev], capture_output=True, timeout=30)


def test_real_lvm2_metadata_with_digit_names_and_device_ids_parses_and_round_trips(
        loop_files: tuple[list[Path], list[str]], tmp_path: Path) -> None:
    """LVM2 2.03 with a devices file writes `device_id_type`/`device_id` into each PV; LV names
    may start with digits. We read its on-disk metadata, re-emit it byte for byte, and keep
    those keys when we commit on top of it (LVM2 then still reads the VG)."""
    from storage.lvm.vg import read_mda, scan
    files, loops = loop_files
    devfile = f"hvsim-{uuid.uuid4().hex[:8]}.devices"
    settings = (f'devices {{ use_devicesfile=1 devicesfile="{devfile}" '
                "obtain_device_list_from_udev=0 } global { activation=0 } "
                "backup { backup=0 archive=0 }")
    names = ["608dec48-a7f6-4c1f-9f0e-1b2c3d4e5f60", "12abc", "1.2.3"]
    vg = f"1{uuid.uuid4().hex[:6]}"

    def run(*args: str) -> str:
        return lvm(args[0], "--config", settings, *args[1:], config=False).stdout

    try:
        lvm("lvm", "lvmdevices", "--config", settings, "--adddev", loops[0], config=False)
        run("pvcreate", loops[0])
        run("vgcreate", vg, loops[0])
        for n in names:
            run("lvcreate", "--activate", "n", "--zero", "n", "-L", "4m", "-n", n, vg)
        run("vgcfgbackup", "-f", str(tmp_path / "lvm2.backup"), vg)
        text = (tmp_path / "lvm2.backup").read_text()
        assert 'device_id_type = "loop_file"' in text
        meta, header = parse_text(text)
        assert [lv.name for lv in meta.lvs] == names
        assert emit_text(meta, header, "file") == text
        [dev] = scan([files[0]], writable=False)
        raw_meta, err = read_mda(dev, dev.mdas[0])
        dev.io.close()
        assert err is None and raw_meta is not None
        raw = raw_meta[2].rstrip(b"\0").decode()
        assert f'device_id = "{files[0]}"' in raw
        assert emit_text(*parse_text(raw), "raw") == raw  # type: ignore[arg-type]
        g = VolumeGroup.open(vg, [files[0]])
        g.open_lv("12abc").write(0, b"ours")
        g.lvcreate("9lives", 4 * MiB)
        g.close()
        out = run("lvs", "--reportformat", "json", "-o", "lv_name", vg)
        assert {r["lv_name"] for r in json.loads(out)["report"][0]["lv"]} == {*names, "9lives"}
        run("vgcfgbackup", "-f", str(tmp_path / "after.backup"), vg)
        assert f'device_id = "{files[0]}"' in (tmp_path / "after.backup").read_text()
    finally:
        Path(f"/etc/lvm/devices/{devfile}").unlink(missing_ok=True)


def test_lvm2_and_we_both_refuse_to_change_a_vg_seen_through_a_copied_pv(
        ours: VolumeGroup, loops: list[str], tmp_path: Path) -> None:
    """A copy of a PV: LVM2 uses the device whose name the metadata remembers, warns about
    the other, and refuses metadata changes; so do we."""
    name = ours.name
    files = [d.path for d in ours.devices.values()]
    copy = tmp_path / "copy.img"
    shutil.copyfile(files[0], copy)
    proc = subprocess.run(["losetup", "--find", "--show", str(copy)], capture_output=True,
                          text=True, timeout=30)
    if proc.returncode != 0:
        _no_loop_device(proc.stderr)
    dup = proc.stdout.strip()
    try:
        every = [*loops, dup]
        got = lvm("lvs", name, devices=every)
        assert f"Not using device {dup}" in got.stderr  # (its hint names the file, not the
        assert "prefers device" in got.stderr          # loop device: LVM2 takes the first)
        bad = lvm("lvcreate", "--activate", "n", "--zero", "n", "-L", "4m", "-n", "x", name,
                  devices=every, check=False)
        assert bad.returncode != 0
        assert f"Cannot update volume group {name} with duplicate PV devices" in bad.stderr
        g = VolumeGroup.open(name, [*files, copy])
        try:
            assert any(f"Not using device {copy}" in w for w in g.warnings)
            assert g.devices["pv0"].path == files[0]
            with pytest.raises(LvmError, match=r"Cannot update volume group \S+ with duplicate PV"):
                g.lvcreate("x", 4 * MiB)
        finally:
            g.close()
    finally:
        subprocess.run(["losetup", "--detach", dup], capture_output=True, timeout=30)


def test_lvm2_and_we_both_refuse_a_name_two_vgs_share(
        loop_files: tuple[list[Path], list[str]]) -> None:
    files, loops = loop_files
    name = f"hv{uuid.uuid4().hex[:6]}"
    for f in files[:2]:
        pvcreate(f, size=None)
    VolumeGroup.create(name, [files[0]]).close()
    VolumeGroup.create(name, [files[1]]).close()  # a second, different VG of that name
    bad = lvm("lvcreate", "--activate", "n", "--zero", "n", "-L", "4m", "-n", "x", name,
              devices=loops[:2], check=False)
    assert bad.returncode != 0 and "Multiple VGs found with the same name" in bad.stderr
    with pytest.raises(LvmError, match="Multiple VGs found with the same name"):
        VolumeGroup.open(name, files[:2])
