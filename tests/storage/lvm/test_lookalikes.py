"""Issue 14 (LVM half): copies of PVs, same-named VGs, hostile backups, real LVM2 metadata,
short PV files, a PV listed twice, and paths that are not disks."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from storage.errors import LvmError
from storage.lvm import VolumeGroup, pvcreate
from storage.lvm.textfmt import emit_text, parse_text

MiB = 1 << 20
DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parents[3]
runner = CliRunner()


def hv(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `hvsim lvm ...` as a user does (own process, cwd = the PV directory)."""
    env = dict(os.environ, HVSIM_LVM_DEVICES=str(cwd), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "netsim", "lvm", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    """The command failed the way bad input must: status 2, one line, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def vg0(tmp_path: Path) -> Path:
    """`vg0` over pv0.img + pv1.img with LV `a` (8 MiB) holding a known pattern."""
    rng = random.Random(14)
    for n in ("pv0.img", "pv1.img"):
        pvcreate(tmp_path / n, size=64 * MiB, rng=rng)
    g = VolumeGroup.create("vg0", [tmp_path / "pv0.img", tmp_path / "pv1.img"], rng=rng)
    g.lvcreate("a", 8 * MiB)
    g.open_lv("a").write(0, b"A" * 4096)
    g.close()
    return tmp_path


# ----------------------------------------------------------------------------- item 2

def test_a_copy_of_a_pv_is_never_the_write_target(vg0: Path) -> None:
    shutil.copyfile(vg0 / "pv0.img", vg0 / "pv0.img.bak")
    before = (vg0 / "pv0.img.bak").read_bytes()
    src = vg0 / "new.bin"
    src.write_bytes(b"N" * 4096)
    proc = hv(vg0, "lvwrite", "vg0/a", "-i", str(src))
    ok(proc)
    # LVM2 2.03's words (lib/cache/lvmcache.c), naming both devices
    assert "WARNING: Not using device" in proc.stderr and "pv0.img.bak" in proc.stderr
    assert "prefers device" in proc.stderr and "pv0.img because device name matches" \
        in proc.stderr
    assert (vg0 / "pv0.img.bak").read_bytes() == before  # the copy is untouched
    g = VolumeGroup.open("vg0", [vg0 / "pv0.img", vg0 / "pv1.img"])
    assert g.open_lv("a").read(0, 4096) == b"N" * 4096
    g.close()
    # pvs shows the device in use, as LVM2's pvs does, and names the copy it does not use
    pvs = hv(vg0, "pvs")
    assert "pv0.img.bak" not in ok(pvs) and "Not using device" in pvs.stderr
    assert "pv0.img.bak" in pvs.stderr
    # metadata changes are refused while the duplicate is visible, as LVM2 refuses them
    line = refused(hv(vg0, "lvcreate", "vg0", "b", "-L", "4m"))
    assert "Cannot update volume group vg0 with duplicate PV devices" in line


def test_ambiguous_duplicates_refuse_writes(vg0: Path) -> None:
    """Neither copy has the name the metadata remembers: which is real cannot be told."""
    os.rename(vg0 / "pv0.img", vg0 / "disk-a.img")
    shutil.copyfile(vg0 / "disk-a.img", vg0 / "disk-b.img")
    before = [(vg0 / n).read_bytes() for n in ("disk-a.img", "disk-b.img")]
    src = vg0 / "new.bin"
    src.write_bytes(b"N" * 4096)
    line = refused(hv(vg0, "lvwrite", "vg0/a", "-i", str(src)))
    assert "duplicate" in line and "disk-a.img" in line and "disk-b.img" in line
    assert [(vg0 / n).read_bytes() for n in ("disk-a.img", "disk-b.img")] == before
    assert ok(hv(vg0, "lvread", "vg0/a", "--length", "4096")) == "A" * 4096  # reads still work


# ----------------------------------------------------------------------------- item 3

def test_a_foreign_vg_with_the_same_name_is_refused_not_merged(vg0: Path) -> None:
    foreign = vg0 / "foreign"
    foreign.mkdir()
    pvcreate(foreign / "pv9.img", size=64 * MiB, rng=random.Random(99))
    g = VolumeGroup.create("vg0", [foreign / "pv9.img"], rng=random.Random(98))
    for n in range(5):  # a higher seqno than the user's vg0
        g.lvcreate(f"x{n}", 4 * MiB)
    g.close()
    shutil.move(str(foreign / "pv9.img"), vg0 / "pv9.img")
    before = (vg0 / "pv9.img").read_bytes()
    src = vg0 / "new.bin"
    src.write_bytes(b"N" * 4096)
    line = refused(hv(vg0, "lvwrite", "vg0/a", "-i", str(src)))
    assert "Multiple VGs found with the same name" in line and "vg0" in line
    assert (vg0 / "pv9.img").read_bytes() == before
    with pytest.raises(LvmError, match="Multiple VGs found with the same name"):
        VolumeGroup.open("vg0", [vg0])
    # naming the PVs of the one meant still works, and reports the user's own VG
    g = VolumeGroup.open("vg0", [vg0 / "pv0.img", vg0 / "pv1.img"])
    assert g.lv_names() == ["a"]
    g.close()
    vgs = ok(hv(vg0, "vgs", "--reportformat", "json"))
    assert vgs.count('"vg_name": "vg0"') == 2  # both listed, as LVM2's vgs lists both


# ----------------------------------------------------------------------------- item 4

def _backup(vg0: Path) -> str:
    return ok(hv(vg0, "vgcfgbackup", "vg0"))


def test_vgcfgrestore_refuses_duplicate_lv_ids(vg0: Path) -> None:
    ok(hv(vg0, "lvcreate", "vg0", "b", "-L", "4m"))
    text = _backup(vg0)
    meta, _ = parse_text(text)
    bad = text.replace(meta.lv("b").id, meta.lv("a").id)
    (vg0 / "bad.vg").write_text(bad)
    line = refused(hv(vg0, "vgcfgrestore", "vg0", "-f", "bad.vg"))
    assert f"Duplicate LV id {meta.lv('a').id} detected for b in vg0" in line


def test_vgcfgrestore_refuses_duplicate_pv_ids_and_a_good_backup_restores(vg0: Path) -> None:
    good = _backup(vg0)
    (vg0 / "good.vg").write_text(good)
    meta, _ = parse_text(good)
    bad = good.replace(meta.pv("pv1").id, meta.pv("pv0").id)
    (vg0 / "bad.vg").write_text(bad)
    line = refused(hv(vg0, "vgcfgrestore", "vg0", "-f", "bad.vg"))
    assert f"Duplicate PV id {meta.pv('pv0').id} detected" in line
    ok(hv(vg0, "lvs"))
    # metadata with a duplicate PV id already on disk (written by an older hvsim): every command
    # says so in one line, and restoring a good backup repairs it
    g = VolumeGroup.open("vg0", [vg0 / "pv0.img", vg0 / "pv1.img"])
    g.meta.pvs[1].id = g.meta.pvs[0].id
    g._write_metadata("simulated damage")  # bypasses validation, as the old code did
    g.close()
    assert "Duplicate PV id" in refused(hv(vg0, "lvs"))
    ok(hv(vg0, "vgcfgrestore", "vg0", "-f", "good.vg"))
    assert "a" in ok(hv(vg0, "lvs"))
    assert ok(hv(vg0, "lvread", "vg0/a", "--length", "4096")) == "A" * 4096


# ----------------------------------------------------------------------------- item 6

REAL = "lvm2-2.03.16-devices-file-vgcfgbackup.txt"


def test_a_good_backup_restores_over_metadata_that_cannot_be_read_at_all(vg0: Path) -> None:
    (vg0 / "good.vg").write_text(_backup(vg0))
    for n in ("pv0.img", "pv1.img"):
        _rewrite_metadata(vg0 / n, lambda t: t.replace(b'type = "striped"', b'type = "raid6"  '))
    assert "not found" in refused(hv(vg0, "lvs", "vg0"))
    ok(hv(vg0, "vgcfgrestore", "vg0", "-f", "good.vg", "--test"))
    assert "not found" in refused(hv(vg0, "lvs", "vg0"))  # --test wrote nothing
    ok(hv(vg0, "vgcfgrestore", "vg0", "-f", "good.vg"))
    assert ok(hv(vg0, "lvread", "vg0/a", "--length", "4096")) == "A" * 4096


def test_real_lvm2_names_that_start_with_digits_and_device_id_keys_round_trip() -> None:
    text = (DATA / REAL).read_text()
    vg, header = parse_text(text)
    assert vg.name == "12vg"
    assert [lv.name for lv in vg.lvs] == ["608dec48-a7f6-4c1f-9f0e-1b2c3d4e5f60", "12abc", "1.2.3"]
    assert emit_text(vg, header, "file") == text
    raw = emit_text(vg, header, "raw")
    vg2, header2 = parse_text(raw)
    assert emit_text(vg2, header2, "raw") == raw
    assert 'device_id_type = "loop_file"\n' in raw
    assert vg.pvs[0].device_id == "/tmp/i14lvm/p2.img"
    assert emit_text(vg2, header2, "file") == text  # raw to file: where LVM2 puts each key


def test_unknown_keys_survive_a_round_trip_in_both_layouts() -> None:
    text = (DATA / "lvm2-2.03.16-vgcfgbackup.txt").read_text()
    odd = (text.replace("\tmax_lv = 0\n", "\tmax_lv = 0\n\tfuture_vg_key = \"x y\"\n", 1)
           .replace('\t\t\tstatus = ["ALLOCATABLE"]\n',
                    '\t\t\tdevice_id_type = "sys_wwid"\n\t\t\tdevice_id = "naa.5000c5"\n'
                    '\t\t\tstatus = ["ALLOCATABLE"]\n', 1)
           .replace("\t\t\tsegment_count = 1\n",
                    '\t\t\tlock_args = "1.0.0:70254592"\n\t\t\tsegment_count = 1\n', 1))
    assert odd != text
    vg, header = parse_text(odd)
    assert emit_text(vg, header, "file") == odd
    raw = emit_text(vg, header, "raw")
    assert 'future_vg_key = "x y"\n' in raw and 'lock_args = "1.0.0:70254592"\n' in raw
    assert emit_text(*parse_text(raw), "raw") == raw  # type: ignore[arg-type]


def test_unknown_keys_after_lists_and_sections_stay_after_them() -> None:
    """Found by the fuzzer: a kept key after a multi-line value went inside it."""
    text = (DATA / "lvm2-2.03.16-vgcfgbackup.txt").read_text()
    odd = (text.replace('\t\t\t\t\t"pv0", 6\n\t\t\t\t]\n',
                        '\t\t\t\t\t"pv0", 6\n\t\t\t\t]\ncontents = "x"\n', 1)
           .replace("\t\t\t}\n\t\t}\n\n\t\tother {",
                    "\t\t\t}\n\t\t\tafter_seg = [1, 2]\n\t\t}\n\n\t\tother {", 1)
           .replace("\t\t}\n\t}\n\n\tlogical_volumes",
                    '\t\t}\n\t\tpvx = "y"\n\t}\n\tafter_pvs = 3\n\n\tlogical_volumes', 1))
    assert odd.count("\n") == text.count("\n") + 4
    vg, header = parse_text(odd)
    assert emit_text(vg, header, "file") == odd
    raw = emit_text(vg, header, "raw")
    assert parse_text(raw)[0] == vg


def test_a_header_field_of_the_wrong_type_is_one_clean_error() -> None:
    """Found by the fuzzer: `creation_time = "text"` raised a bare ValueError."""
    text = (DATA / "lvm2-2.03.16-vgcfgbackup.txt").read_text()
    bad = text.replace("\ncreation_time = ", '\ncreation_time = "x"\t# ', 1)
    with pytest.raises(LvmError, match="field 'creation_time' has the wrong type"):
        parse_text(bad)


def test_only_ba_start_is_kept_too() -> None:
    text = (DATA / "lvm2-2.03.16-vgcfgbackup.txt").read_text()
    odd = text.replace("\t\t\tpe_count = ", "\t\t\tba_start = 0\n\t\t\tpe_count = ", 1)
    vg, header = parse_text(odd)
    assert emit_text(vg, header, "file") == odd


def test_a_pv_with_metadata_we_cannot_parse_is_never_free(vg0: Path) -> None:
    # a segment type a newer LVM2 writes (raid6) in both PVs' areas: checksummed, but not
    # something we can parse
    for n in ("pv0.img", "pv1.img"):
        _rewrite_metadata(vg0 / n, lambda t: t.replace(b"type = \"striped\"",
                                                       b"type = \"raid6\"  "))
    out = hv(vg0, "pvs", "--reportformat", "json")
    assert "<no VG>" not in out.stdout
    import json
    rows = json.loads(out.stdout)["report"][0]["pv"]
    assert rows and all(r["pv_free"] == "" and r["vg_name"] == "[unparsable]" for r in rows)
    assert "raid6" in out.stderr
    before = (vg0 / "pv0.img").read_bytes()[:1 << 20]
    line = refused(hv(vg0, "pvcreate", "pv0.img"))  # would erase what may be a VG
    assert "cannot be read" in line and (vg0 / "pv0.img").read_bytes()[:1 << 20] == before
    line = refused(hv(vg0, "vgcreate", "vgnew", "pv0.img"))
    assert "cannot be parsed" in line or "cannot parse" in line
    refused(hv(vg0, "vgextend", "vg0", "pv1.img"))


def _rewrite_metadata(pv: Path, change: object) -> None:
    """Apply `change` to the committed text of every metadata area, fixing the checksums."""
    from storage.devices.rawio import FileIO
    from storage.lvm.ondisk import (
        MDA_HEADER_SIZE,
        MdaHeader,
        RawLocn,
        lvm_crc,
        pack_mda_header,
        unpack_mda_header,
    )
    from storage.lvm.vg import read_pv
    io = FileIO(pv)
    dev = read_pv(io, str(pv))
    for h in dev.mdas:
        loc = h.locns[0]
        text = io.pread(h.start + loc.offset, loc.size)
        new = change(text)  # type: ignore[operator]
        assert len(new) == len(text)
        io.pwrite(h.start + loc.offset, new)
        io.pwrite(h.start, pack_mda_header(MdaHeader(
            start=h.start, size=h.size, locns=[RawLocn(loc.offset, len(new), lvm_crc(new), 0)])))
        unpack_mda_header(io.pread(h.start, MDA_HEADER_SIZE))
    io.close()


def test_pvcreate_never_relabels_a_pv_of_a_vg(vg0: Path) -> None:
    """LVM2: Can't initialize physical volume "..." of volume group "vg0" without -ff."""
    before = (vg0 / "pv1.img").read_bytes()[:1 << 20]
    line = refused(hv(vg0, "pvcreate", "pv1.img"))
    assert 'Can\'t initialize physical volume "pv1.img" of volume group "vg0"' in line
    assert (vg0 / "pv1.img").read_bytes()[:1 << 20] == before


def test_a_pv_file_shorter_than_its_header_says_is_refused(vg0: Path) -> None:
    ok(hv(vg0, "lvcreate", "vg0", "big", "-L", "100m"))  # 12 extents on pv1
    with open(vg0 / "pv1.img", "r+b") as f:
        f.truncate(32 * MiB)
    proc = hv(vg0, "lvread", "vg0/big", "-o", "out.raw")
    line = refused(proc)
    assert "device is too small" in line and "pv1.img" in line
    assert "has size of 65536 sectors which is smaller than corresponding PV size of 131072" \
        in proc.stderr
    # an LV wholly on the intact PV still reads; nothing is allocated past the file's end
    assert ok(hv(vg0, "lvread", "vg0/a", "--length", "4096")) == "A" * 4096
    ok(hv(vg0, "lvremove", "vg0/big"))
    size = (vg0 / "pv1.img").stat().st_size
    assert "device is too small" in refused(hv(vg0, "lvcreate", "vg0", "more", "-L", "60m"))
    assert (vg0 / "pv1.img").stat().st_size == size


# ----------------------------------------------------------------------------- item 11, 12

def test_a_pv_listed_twice_is_refused_not_a_hang(tmp_path: Path) -> None:
    pvcreate(tmp_path / "p.img", size=16 * MiB)
    line = refused(hv(tmp_path, "vgcreate", "vg6", "p.img", "./p.img", timeout=20))
    assert "p.img" in line and "./p.img" in line and "same device" in line
    os.link(tmp_path / "p.img", tmp_path / "hard.img")
    line = refused(hv(tmp_path, "vgcreate", "vg6", "p.img", "hard.img", timeout=20))
    assert "same device" in line


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_a_pv_path_that_is_a_fifo_or_a_directory_is_refused(tmp_path: Path, kind: str) -> None:
    p = tmp_path / "p.img"
    if kind == "fifo":
        os.mkfifo(p)
    else:
        p.mkdir()
    for args in (["pvcreate", "p.img"], ["vgcreate", "vg7", "p.img"]):
        line = refused(hv(tmp_path, *args, timeout=20))
        assert "p.img" in line and ("FIFO" in line or "directory" in line)
    pvcreate(tmp_path / "q.img", size=16 * MiB)
    ok(hv(tmp_path, "vgcreate", "vg7", "q.img"))
    line = refused(hv(tmp_path, "vgextend", "vg7", "p.img", timeout=20))
    assert "p.img" in line
    if kind == "fifo":  # named explicitly to scan: said, not silently skipped, not a hang
        line = refused(hv(tmp_path, "vgs", "-d", "q.img,p.img", timeout=20))
        assert "p.img" in line and "FIFO" in line
