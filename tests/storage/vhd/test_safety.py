"""Issue 14 reproductions on VHD files and file SRs: each ran wrong before its fix.

Outputs that are inputs, files whose headers claim huge tables, 'vpc ' geometry beyond the BAT,
FIFOs and directories as disks, writes to parents, stale children after a coalesce, the size
libvhdi reads after a resize, and names `sr scan` skips.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import threading
import uuid as uuidlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netsim.cli.app import app
from storage.errors import StorageError, VhdFormatError
from storage.sr.sr import SR
from storage.vhd import chain
from storage.vhd import format as fmt

runner = CliRunner()
MiB = 2**20


def run(*args: object) -> tuple[int, str]:
    """In-process `hvsim ...`: (exit status, output); a StorageError is what `main()` prints as
    one line with status 2."""
    res = runner.invoke(app, [str(a) for a in args])
    if isinstance(res.exception, StorageError):
        return 2, res.output + str(res.exception)
    return res.exit_code, res.output


def cli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`hvsim ...` as its own process (memory, blocking and tracebacks are real there)."""
    return subprocess.run([sys.executable, "-m", "netsim", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def one_clean_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _base_and_child(tmp_path: Path) -> tuple[Path, Path]:
    base, child = tmp_path / "base.vhd", tmp_path / "c1.vhd"
    img = chain.create_image(base, size=8 * MiB)
    img.write(0, b"B" * 4096)
    img.close()
    chain.create_image(child, parent_path=base).close()
    return base, child


# --- 5: an output path that is an input ---------------------------------------------------------

def test_export_refuses_to_overwrite_a_parent_of_its_chain(tmp_path: Path) -> None:
    base, child = _base_and_child(tmp_path)
    before = base.read_bytes()
    code, out = run("vhd", "export", child, base)
    assert code == 2 and "refusing to write the output over a parent" in out
    assert base.read_bytes() == before                    # the shared parent is untouched
    link = tmp_path / "alias.raw"
    os.link(base, link)                                   # another name, same inode
    code, out = run("vhd", "export", child, link)
    assert code == 2 and "parent in its chain" in out and base.read_bytes() == before


def test_read_refuses_output_over_its_own_image(tmp_path: Path) -> None:
    _, child = _base_and_child(tmp_path)
    size = child.stat().st_size
    code, out = run("vhd", "read", child, "--offset", 0, "--length", 512, "--output", child)
    assert code == 2 and "the image itself" in out
    os.symlink(child, tmp_path / "sym.vhd")
    code, out = run("vhd", "read", child, "--offset", 0, "--length", 512,
                    "--output", tmp_path / "sym.vhd")
    assert code == 2 and child.stat().st_size == size
    assert chain.check(child) == []


# --- 9: memory from a small file ----------------------------------------------------------------

def _huge_bat_vhd(path: Path, entries: int, *, block_size: int = 2 * MiB) -> None:
    """A sparse dynamic VHD whose header claims `entries` BAT entries (a few KiB on disk)."""
    footer = fmt.Footer(disk_type=fmt.DISK_DYNAMIC, current_size=64 * MiB,
                        original_size=64 * MiB, geometry=fmt.round_to_geometry(64 * MiB)[1],
                        data_offset=fmt.HEADER_OFFSET, uuid=uuidlib.uuid4())
    header = fmt.DynamicHeader(table_offset=fmt.BAT_OFFSET, max_table_entries=entries,
                               block_size=block_size)
    end = fmt.BAT_OFFSET + fmt.bat_bytes(entries)
    with open(path, "wb") as f:
        f.write(footer.pack())
        f.write(header.pack())
        f.truncate(end)                                   # the BAT is a hole
        f.seek(end)
        f.write(footer.pack())


_HWM = """import atexit, os, runpy, sys
def _hwm():
    with open("/proc/self/status") as f, open(os.environ["HVSIM_HWM"], "w") as out:
        out.write(next(ln.split()[1] for ln in f if ln.startswith("VmHWM:")))
atexit.register(_hwm)
sys.argv[0] = "hvsim"
runpy.run_module("netsim", run_name="__main__")
"""


def cli_rss(*args: object) -> tuple[subprocess.CompletedProcess[str], float]:
    """`hvsim ...` as its own process, and its peak RSS in MiB (VmHWM of its own memory: the
    rusage of a child counts its parent's pages from before the exec)."""
    with tempfile.TemporaryDirectory() as d:
        hwm = Path(d) / "hwm"
        argv = [sys.executable, "-c", _HWM, *map(str, args)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HVSIM_HWM": str(hwm)})
        return proc, int(hwm.read_text()) / 1024


@pytest.mark.parametrize("entries", [2**30, 2**26])
def test_vhd_info_of_a_sparse_file_claiming_a_huge_bat_is_refused_small(
        tmp_path: Path, entries: int) -> None:
    p = tmp_path / "huge.vhd"
    _huge_bat_vhd(p, entries)
    assert p.stat().st_blocks * 512 < 64 * 1024          # a few KiB really on disk
    proc, peak = cli_rss("vhd", "info", p)
    # before: 2^30 entries took 5.8 GB RSS; 2^26 entries about 600 MB
    one_clean_line(proc, str(p), "BAT")
    assert peak < 200, f"peak RSS of a child {peak:.0f} MiB"


def test_bat_limits_are_qemus(tmp_path: Path) -> None:
    p = tmp_path / "over.vhd"
    _huge_bat_vhd(p, fmt.MAX_TABLE_ENTRIES + 1)
    with pytest.raises(VhdFormatError, match="Max Table Entries too large"):
        chain.open_image(p)


def test_create_beyond_the_table_limit_fails_fast_and_leaves_no_file(tmp_path: Path) -> None:
    p = tmp_path / "big.vhd"
    proc, peak = cli_rss("vhd", "create", p, "--size", "2040G", "--block-size", "512")
    # before: 16 GB RSS, then a 0-byte big.vhd
    one_clean_line(proc, "BAT entries", "QEMU")
    assert not p.exists()
    assert peak < 200, f"peak RSS {peak:.0f} MiB"
    code, out = run("vhd", "create", p, "--size", "1G", "--block-size", "512M")
    assert code == 2 and "block size" in out and not p.exists()


def test_a_large_legitimate_bat_still_opens(tmp_path: Path) -> None:
    """2040 GiB at 2 MiB blocks: 1,044,480 entries (4 MiB of BAT), as vhd-util makes them."""
    p = tmp_path / "max.vhd"
    chain.create_image(p, size=fmt.MAX_VIRTUAL_SIZE).close()
    img = chain.open_image(p)
    assert len(img.bat) == fmt.MAX_VIRTUAL_SIZE // (2 * MiB)
    img.close()
    out = subprocess.run(["qemu-img", "info", p], capture_output=True, text=True, check=True)
    assert f"({fmt.MAX_VIRTUAL_SIZE} bytes)" in out.stdout


# --- 10: a 'vpc ' creator whose CHS geometry exceeds its BAT ------------------------------------

def _vpc_geometry_beyond_bat(path: Path) -> None:
    img = chain.create_image(path, size=64 * MiB)
    img.close()
    raw = bytearray(path.read_bytes())
    end = len(raw) - fmt.FOOTER_SIZE
    foot = fmt.Footer.unpack(bytes(raw[end:]), source=str(path), offset=end)
    foot = dataclasses.replace(foot, creator_app=b"vpc ", geometry=(4000, 16, 63))  # ~1.9 GiB
    raw[0:512] = raw[end:] = foot.pack()
    path.write_bytes(bytes(raw))


def test_vpc_geometry_beyond_the_bat_is_reported_and_writes_refuse(tmp_path: Path) -> None:
    p = tmp_path / "vpc.vhd"
    _vpc_geometry_beyond_bat(p)
    q = subprocess.run(["qemu-img", "info", p], capture_output=True, text=True)
    assert q.returncode != 0 and "Page table too small" in q.stderr   # what qemu says
    proc = cli("vhd", "check", p)
    assert proc.returncode == 1 and "Page table too small" in proc.stdout  # before: "ok"
    (tmp_path / "d.bin").write_bytes(b"x" * 4096)
    proc = cli("vhd", "write", p, "--offset", "100M", "--input", tmp_path / "d.bin")
    one_clean_line(proc, "geometry")                        # before: IndexError


# --- 12: FIFOs and directories as disks ---------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("vhd", "info", "{p}"), ("vhd", "check", "{p}"),
    ("vhd", "write", "{p}", "--offset", "0", "--input", "{data}"),
    ("vhd", "export", "{p}", "{out}"), ("vhd", "resize", "{p}", "--size", "1M"),
])
@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_fifo_or_directory_as_a_disk_is_one_line(tmp_path: Path, args: tuple[str, ...],
                                                 kind: str) -> None:
    p = tmp_path / "disk.vhd"
    if kind == "fifo":
        os.mkfifo(p)
    else:
        p.mkdir()
    (tmp_path / "data.bin").write_bytes(b"x" * 512)
    argv = [a.format(p=p, data=tmp_path / "data.bin", out=tmp_path / "o.raw") for a in args]
    proc = cli(*argv, timeout=20)                           # before: blocked forever on a FIFO
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr
    text = proc.stderr + proc.stdout
    assert f"{p}: is a {'FIFO' if kind == 'fifo' else 'directory'}" in text, text


def test_raw_disk_spec_on_a_fifo_is_refused(tmp_path: Path) -> None:
    from storage.diskspec import open_disk

    p = tmp_path / "raw.img"
    os.mkfifo(p)
    done: list[BaseException] = []

    def attempt() -> None:
        try:
            open_disk(str(p), read_only=False)
        except BaseException as exc:   # handed to the asserting thread
            done.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    assert done and isinstance(done[0], StorageError) and "is a FIFO" in str(done[0])


# --- 13: parents with children, stale children after coalesce -----------------------------------

def test_write_or_resize_of_a_parent_is_refused_without_force(tmp_path: Path) -> None:
    base, child = _base_and_child(tmp_path)
    (tmp_path / "d.bin").write_bytes(b"N" * 4096)
    before = base.read_bytes()
    code, out = run("vhd", "write", base, "--offset", 0, "--input", tmp_path / "d.bin")
    assert code == 2 and "parent of" in out and str(child) in out
    code, out = run("vhd", "resize", base, "--size", "16M")
    assert code == 2 and "parent of" in out
    assert base.read_bytes() == before
    code, out = run("vhd", "write", base, "--offset", 0, "--input", tmp_path / "d.bin",
                    "--force")
    assert code == 0 and "warning" in out and str(child) in out


def test_a_parent_opened_under_a_live_child_cannot_be_written(tmp_path: Path) -> None:
    base, child = _base_and_child(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom storage.vhd import chain\n"
        f"img = chain.open_chain({str(child)!r}, read_only=False)\n"
        "print('open', flush=True)\ntime.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        (tmp_path / "d.bin").write_bytes(b"N" * 512)
        proc = cli("vhd", "write", base, "--offset", 0, "--input", tmp_path / "d.bin",
                   "--force")
        one_clean_line(proc, str(base), "write", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


def test_coalesce_leaves_no_stale_child_that_checks_ok(tmp_path: Path) -> None:
    base, child = _base_and_child(tmp_path)
    img = chain.open_chain(child, read_only=False)
    img.write(MiB, b"C" * 8192)
    img.close()
    code, out = run("vhd", "coalesce", child)
    assert code == 0 and f"removed {child}" in out
    assert run("vhd", "check", child)[0] != 0              # before: "c1.vhd: ok"
    assert chain.open_image(base).read(MiB, 8192) == b"C" * 8192


# --- 14: the size after a resize, as libvhdi and qemu-img read it ------------------------------

@pytest.mark.parametrize("disk_type", ["dynamic", "fixed"])
def test_resized_size_agrees_in_libvhdi_and_qemu_img(tmp_path: Path, disk_type: str) -> None:
    import pyvhdi

    p = tmp_path / "r.vhd"
    assert run("vhd", "create", p, "--size", "64M", "--type", disk_type)[0] == 0
    assert run("vhd", "resize", p, "--size", "128M")[0] == 0
    new = chain.open_image(p).size
    f = pyvhdi.file()
    f.open(str(p))
    try:
        assert f.get_media_size() == new                   # before: 67125248, the old size
    finally:
        f.close()
    q = subprocess.run(["qemu-img", "info", "-f", "vpc", "--output=json", p], capture_output=True,
                       text=True, check=True)
    assert f'"virtual-size": {new}' in q.stdout


# --- 15: sr scan says what it ignores -----------------------------------------------------------

def test_sr_scan_names_files_it_ignores(tmp_path: Path) -> None:
    sr = SR.create(tmp_path / "sr", type_name="file")
    sr.vdi_create("d", MiB)
    chain.create_image(tmp_path / "sr" / "orphan.vhd", size=MiB).close()
    code, out = run("sr", "scan", tmp_path / "sr")
    assert "ignored: orphan.vhd, not named <uuid>.vhd" in out     # before: silent
    assert code == 0                                              # and nothing else changed
    assert (tmp_path / "sr" / "orphan.vhd").exists()
