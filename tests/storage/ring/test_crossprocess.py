"""Guests in their own processes: `hvsim guest ...` against a host serving a disk."""
from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest

from storage.devices.memdisk import MemoryDisk
from storage.rings.hostlink import HostLinkError, HostServer, connect_guest
from storage.rings.hypervisor import Hypervisor
from storage.rings.xenstore import XenStoreError


async def hvsim(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsim", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_guest_process_writes_and_reads_through_the_ring(tmp_path: Path) -> None:
    sock = str(tmp_path / "host.sock")
    disk = MemoryDisk(4 << 20)
    async with Hypervisor() as hv:
        hv.create_domain(1, ram_pages=1024, shared=True)
        back = await hv.attach_vbd(1, disk)
        async with HostServer(hv, sock):
            rc, out, err = await hvsim("guest", "write", "--socket", sock, "1000",
                                       "--data", "hello from the guest")
            assert rc == 0, err
            assert out == "wrote 20 bytes at 1000\n" and err == ""  # results on stdout
            assert disk.read(1000, 20) == b"hello from the guest"
            assert disk.flushes == 1
            out_file = tmp_path / "back.bin"
            rc, _, err = await hvsim("guest", "read", "--socket", sock, "990", "40",
                                     "--out", str(out_file))
            assert rc == 0, err
            assert out_file.read_bytes() == bytes(10) + b"hello from the guest" + bytes(10)
            rc, out, err = await hvsim("guest", "xenstore-ls", "--socket", sock)
            assert rc == 0, err
            assert "/local/domain/0/backend/vbd/1/51712/sectors = '8192'" in out
            assert "/local/domain/0/backend/vbd/1/51712/state = '4'" in out
            assert "/local/domain/1/device/vbd/51712/ring-ref = " in out
            rc, out, err = await hvsim("guest", "selftest", "--socket", sock,
                                       "--bytes", str(3 << 20))
            assert rc == 0, err
            assert "verified=True" in out
        assert back.stats.connections == 4
        assert not back.stats.errors


async def test_read_only_vbd_refuses_a_guest_process_write(tmp_path: Path) -> None:
    sock = str(tmp_path / "host.sock")
    disk = MemoryDisk(1 << 20)
    async with Hypervisor() as hv:
        hv.create_domain(1, ram_pages=512, shared=True)
        back = await hv.attach_vbd(1, disk, read_only=True)
        async with HostServer(hv, sock):
            rc, _, err = await hvsim("guest", "write", "--socket", sock, "0", "--data", "x")
        assert rc == 2
        assert "read-only" in err and "Traceback" not in err
        assert back.stats.errors["read-only"] == 1
        assert disk.read(0, 1) == b"\0"


async def test_ring_serve_command_serves_a_raw_file(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(1 << 20))
    sock = tmp_path / "host.sock"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsim", "ring", "serve", str(raw), "--socket", str(sock),
        "--ram", "2M", stderr=asyncio.subprocess.PIPE)
    try:
        assert server.stderr is not None
        line = await asyncio.wait_for(server.stderr.readline(), 30)
        assert b"serving 1,048,576 bytes" in line
        rc, _, err = await hvsim("guest", "write", "--socket", str(sock), "513",
                                 "--data", "on disk")
        assert rc == 0, err
        rc, out, err = await hvsim("guest", "info", "--socket", str(sock))
        assert rc == 0 and "sectors: 2048" in out and "mode: w" in out
    finally:
        server.terminate()
        await server.wait()
    assert raw.read_bytes()[513:520] == b"on disk"


async def test_host_refuses_foreign_writes_and_double_attach(tmp_path: Path) -> None:
    sock = str(tmp_path / "host.sock")
    async with Hypervisor() as hv:
        hv.create_domain(1, ram_pages=64, shared=True)
        hv.create_domain(2, ram_pages=64, shared=True)
        await hv.attach_vbd(2, MemoryDisk(1 << 20))
        async with HostServer(hv, sock):
            async with connect_guest(sock, 1) as guest:
                with pytest.raises(XenStoreError, match="may not write"):
                    await guest.xs.write("/local/domain/2/device/vbd/51712/ring-ref", "8")
                with pytest.raises(XenStoreError, match="may not write"):
                    await guest.xs.write("/local/domain/0/backend/vbd/2/51712/mode", "w")
                with pytest.raises(HostLinkError, match="already attached"):
                    async with connect_guest(sock, 1):
                        pass
            with pytest.raises(HostLinkError, match="no such domain"):
                async with connect_guest(sock, 9):
                    pass
            # garbage on the socket is refused without hurting the host
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.sendall(b"\xff\xfe not json\n")
            s.close()
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.sendall(json.dumps({"op": "evtchn", "domid": 2, "port": 1}).encode() + b"\n")
            s.close()
            async with connect_guest(sock, 2) as guest:
                assert await guest.xs.read("/local/domain/0/backend/vbd/2/51712/mode") == "w"
                with pytest.raises(XenStoreError, match="unknown op"):
                    await guest.xs.call("format-disk")
                guest.xs._writer.write(b"[1, 2]\n")  # not an object: answered, not fatal
                assert await guest.xs.ls("/local/domain/2/device/vbd") == ["51712"]


async def test_ring_serve_cleans_up_on_sigterm(tmp_path: Path) -> None:
    sock = tmp_path / "host.sock"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsim", "ring", "serve", "mem:1M", "--socket", str(sock),
        "--ram", "1M", stderr=asyncio.subprocess.PIPE)
    assert server.stderr is not None
    await asyncio.wait_for(server.stderr.readline(), 30)
    assert sock.exists()
    server.terminate()
    assert await asyncio.wait_for(server.wait(), 30) == 0
    assert not sock.exists()


async def test_second_host_on_a_live_socket_is_refused_stale_one_replaced(tmp_path: Path) -> None:
    sock = tmp_path / "host.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))  # bound, never listening: what a killed host leaves behind
    stale.close()
    async with Hypervisor() as hv:
        async with HostServer(hv, sock):
            with pytest.raises(HostLinkError, match="another host"):
                async with HostServer(Hypervisor(), sock):
                    pass
            assert sock.exists()
