"""Files named on storage command lines: a missing input or an unwritable output is one line
and exit status 2 (no traceback); `-` is stdin/stdout; commands say what they did."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.devices.memdisk import MemoryDisk
from storage.rings.hostlink import HostServer
from storage.rings.hypervisor import Hypervisor

ROOT = Path(__file__).resolve().parents[2]


def hvsim(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HVSIM_LVM_DEVICES": str(cwd)}
    return subprocess.run([sys.executable, "-m", "netsim", *args], cwd=cwd, input=stdin,
                          capture_output=True, timeout=120, env=env)


def one_line_exit_2(res: subprocess.CompletedProcess, expect: str) -> None:
    err = res.stderr.decode().strip()
    assert res.returncode == 2, (res.stdout, err)
    assert "\n" not in err and "Traceback" not in err, err
    assert expect in err, err


@pytest.fixture
def vg(tmp_path: Path) -> Path:
    for args in (("pvcreate", "pv0.img", "--size", "16m"), ("vgcreate", "vg0", "pv0.img"),
                 ("lvcreate", "vg0", "data", "-L", "4m")):
        res = hvsim("lvm", *args, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    return tmp_path


def test_lvwrite_missing_input_and_lvread_unwritable_output(vg: Path) -> None:
    one_line_exit_2(hvsim("lvm", "lvwrite", "vg0/data", "-i", "missing", cwd=vg),
                    "missing: cannot read: No such file or directory")
    one_line_exit_2(hvsim("lvm", "lvread", "vg0/data", "-o", "/nodir/x", cwd=vg),
                    "/nodir/x: cannot write: No such file or directory")


def test_lvread_dash_is_stdout_and_lvwrite_dash_is_stdin(vg: Path) -> None:
    data = os.urandom(5000)
    res = hvsim("lvm", "lvwrite", "vg0/data", "-i", "-", "--offset", "512", cwd=vg, stdin=data)
    assert res.returncode == 0, res.stderr
    res = hvsim("lvm", "lvread", "vg0/data", "-o", "-", "--offset", "512", "--length", "5000",
                cwd=vg)
    assert res.returncode == 0, res.stderr
    assert res.stdout == data
    assert not (vg / "-").exists()


def test_draw_into_a_missing_directory(tmp_path: Path) -> None:
    for suffix in ("dot", "svg"):
        one_line_exit_2(hvsim("draw", str(ROOT / "topologies" / "xen-vlans.yaml"), "-o",
                              f"nodir/x.{suffix}", cwd=tmp_path),
                        f"nodir/x.{suffix}: cannot write: no directory 'nodir'")


def test_vdi_list_has_a_header_and_destroy_says_what_it_did(tmp_path: Path) -> None:
    assert hvsim("sr", "create", "sr", "--type", "file", cwd=tmp_path).returncode == 0
    uuid = hvsim("vdi", "create", "--sr", "sr", "--size", "8M", "--name", "disk0",
                 cwd=tmp_path).stdout.decode().strip()
    snap = hvsim("vdi", "snapshot", "--sr", "sr", uuid, cwd=tmp_path).stdout.decode().strip()
    lines = hvsim("vdi", "list", "--sr", "sr", cwd=tmp_path).stdout.decode().splitlines()
    assert lines[0].split() == ["uuid", "parent", "virtual", "physical", "flags", "name"]
    assert len(lines) == 4 and any(line.startswith(snap) for line in lines)
    res = hvsim("vdi", "destroy", "--sr", "sr", snap, cwd=tmp_path)
    assert res.returncode == 0
    out = res.stdout.decode()
    assert out.startswith(f"destroyed VDI {snap} ('disk0', 8.00 MiB)"), out
    assert "hvsim sr gc" in out


async def _guest(*args: str, cwd: Path) -> tuple[int, str, str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsim", "guest", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_guest_files_and_discard(tmp_path: Path) -> None:
    sock = str(tmp_path / "host.sock")
    disk = MemoryDisk(1 << 20)
    async with Hypervisor() as hv:
        hv.create_domain(1, ram_pages=512, shared=True)
        await hv.attach_vbd(1, disk)
        async with HostServer(hv, sock):
            rc, out, err = await _guest("read", "--socket", sock, "0", "512", "--out",
                                        "/nodir/x", cwd=tmp_path)
            assert rc == 2 and err.strip() == "error: /nodir/x: cannot write: No such file " \
                "or directory", err
            rc, out, err = await _guest("write", "--socket", sock, "0", "--in", "missing.bin",
                                        cwd=tmp_path)
            assert rc == 2 and err.strip() == "error: missing.bin: cannot read: No such " \
                "file or directory", err
            disk.write(0, b"\xff" * 4096)
            rc, out, err = await _guest("discard", "--socket", sock, "100", "4000",
                                        cwd=tmp_path)
            assert rc == 0, err
            assert out.strip() == "discarded 7 sectors (3,584 bytes) at sector 1 (byte 512)"
            assert disk.read(512, 3584) == bytes(3584) and disk.read(0, 1) == b"\xff"
            rc, out, err = await _guest("discard", "--socket", sock, "1", "100", cwd=tmp_path)
            assert rc == 0 and "discarded nothing" in out, err
