"""xenstore quotas against hostile guests (issue 14 item 8): oxenstored's defaults, its errors,
and a guest's entries gone when it goes.

Before: a guest of `hvsim ring serve` wrote 20,000 x 60 KB under its domain path; the host
grew from 40 MB to 1.2 GB and kept it after the guest left.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from storage.rings.hostlink import connect_guest
from storage.rings.hypervisor import Hypervisor
from storage.rings.xenstore import (
    QUOTA_MAXENTITY,
    QUOTA_MAXSIZE,
    QUOTA_MAXWATCH,
    XenStore,
    XenStoreError,
    XenStoreQuotaError,
)


async def test_guest_quotas_are_oxenstoreds_defaults() -> None:
    assert (QUOTA_MAXENTITY, QUOTA_MAXSIZE, QUOTA_MAXWATCH) == (1000, 2048, 100)
    store = XenStore()
    guest = store.handle(5)
    base = "/local/domain/5/data"
    await guest.write(f"{base}/ok", "x" * QUOTA_MAXSIZE)
    with pytest.raises(XenStoreQuotaError, match=r"^E2BIG"):
        await guest.write(f"{base}/big", "x" * (QUOTA_MAXSIZE + 1))
    assert store.read(f"{base}/big") is None
    while store.entries(5) < QUOTA_MAXENTITY:
        await guest.write(f"{base}/k{store.entries(5)}", "v")
    with pytest.raises(XenStoreQuotaError, match=r"^EQUOTA"):
        await guest.write(f"{base}/one-more", "v")
    await guest.write(f"{base}/k10", "rewriting an entry it owns is not a new entry")
    await guest.rm(f"{base}/k10")
    await guest.write(f"{base}/after-rm", "freed one")            # the quota follows rm
    watches = [guest.watch(f"{base}/w") for _ in range(QUOTA_MAXWATCH)]
    with pytest.raises(XenStoreQuotaError, match=r"^EQUOTA"):
        guest.watch(f"{base}/w")
    watches[0].close()
    guest.watch(f"{base}/w").close()
    dom0 = store.handle(0)                                        # dom0 is exempt
    await dom0.write("/local/domain/0/big", "x" * (QUOTA_MAXSIZE * 10))
    for i in range(QUOTA_MAXWATCH + 1):
        dom0.watch(f"/local/domain/0/w{i}")


async def test_a_guests_entries_go_with_it_and_a_destroyed_domain_leaves_nothing() -> None:
    async with Hypervisor() as hv:
        hv.create_domain(3)
        xs = hv.guest(3).xs
        for i in range(50):
            await xs.write(f"/local/domain/3/junk/{i}", "y" * 1000)
        assert hv.store.entries(3) == 51                          # junk/ and its 50 keys
        hv.store.forget_domain(3)
        assert hv.store.read("/local/domain/3/junk") is None and hv.store.entries(3) == 0
        assert hv.store.read("/local/domain/3/domid") == "3"      # the toolstack's stay
        await hv.destroy_domain(3)
        assert hv.store.ls("/local/domain") == [] and 3 not in hv.domains


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))


async def test_hostile_guest_of_ring_serve_cannot_grow_the_host(tmp_path: Path) -> None:
    sock = tmp_path / "host.sock"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsim", "ring", "serve", "mem:1M", "--socket", str(sock),
        "--ram", "1M", stderr=asyncio.subprocess.PIPE)
    try:
        assert server.stderr is not None
        await asyncio.wait_for(server.stderr.readline(), 30)
        rss0 = _rss_kib(server.pid)
        refused = {"E2BIG": 0, "EQUOTA": 0}
        async with connect_guest(sock, 1) as guest:
            for i in range(2000):                       # 60 KB values: 120 MB offered
                try:
                    await guest.xs.write(f"/local/domain/1/junk/{i}", "z" * 60_000)
                except XenStoreError as exc:
                    refused[str(exc).split(":")[0]] += 1
            for i in range(3000):                       # small values: entries offered
                try:
                    await guest.xs.write(f"/local/domain/1/many/{i}", "z" * 2000)
                except XenStoreError as exc:
                    refused[str(exc).split(":")[0]] += 1
            rss_full = _rss_kib(server.pid)
            assert await guest.xs.read("/local/domain/1/many/0") == "z" * 2000
        assert refused["E2BIG"] == 2000
        assert 2000 <= refused["EQUOTA"] < 3000          # about 1000 entries got in
        # before: +120 MB here (and +1.2 GB for 20,000 values); now at most the quota:
        # 1000 entries of 2 KB, with Python's overhead
        assert rss_full - rss0 < 16 * 1024, (rss0, rss_full)
        deadline = time.monotonic() + 30                 # the host removes them on disconnect
        while True:
            async with connect_guest(sock, 1) as again:
                if await again.xs.read("/local/domain/1/many") is None:
                    break
            if time.monotonic() > deadline:
                pytest.fail("the guest's entries outlived its connection")
            await asyncio.sleep(0.05)
    finally:
        server.terminate()
        await server.wait()
