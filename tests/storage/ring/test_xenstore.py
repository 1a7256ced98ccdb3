"""The xenstore key space: paths, watches, permissions, state helpers."""
from __future__ import annotations

import asyncio

import pytest

from storage.rings.xenstore import (
    XenbusState,
    XenStore,
    XenStoreError,
    parse_state,
    read_int,
    wait_for_state,
)


async def test_read_write_ls_rm() -> None:
    xs = XenStore()
    xs.write("/local/domain/1/device/vbd/51712/state", "1")
    assert xs.read("/local/domain/1/device/vbd/51712/state") == "1"
    assert xs.read("/local/domain/1/device") == ""  # parents exist as directories
    assert xs.ls("/local/domain/1/device/vbd") == ["51712"]
    xs.rm("/local/domain/1/device")
    assert xs.read("/local/domain/1/device/vbd/51712/state") is None
    for bad in ("relative", "/a//b", "/trailing/"):
        with pytest.raises(XenStoreError):
            xs.write(bad, "x")


async def test_watch_fires_on_set_and_on_changes_below() -> None:
    xs = XenStore()
    async with xs.watch("/local/domain/0/backend") as w:
        assert await w.next() == "/local/domain/0/backend"  # fires once when set
        xs.write("/local/domain/0/backend/vbd/1/51712/state", "2")
        xs.write("/local/domain/0/other", "x")  # not below: no event
        assert await asyncio.wait_for(w.next(), 10) == "/local/domain/0/backend/vbd/1/51712/state"
        xs.rm("/local/domain/0/backend/vbd")
        assert await asyncio.wait_for(w.next(), 10) == "/local/domain/0/backend/vbd"
    xs.write("/local/domain/0/backend/x", "1")  # closed watch: no queue growth, no error


async def test_guest_writes_confined_to_its_domain() -> None:
    store = XenStore()
    guest, dom0 = store.handle(3), store.handle(0)
    await guest.write("/local/domain/3/device/vbd/51712/state", "1")
    await dom0.write("/local/domain/0/backend/vbd/3/51712/state", "2")
    assert await guest.read("/local/domain/0/backend/vbd/3/51712/state") == "2"
    for path in ("/local/domain/0/backend/vbd/3/51712/state", "/local/domain/30/x",
                 "/local/domain/3x/y", "/tool"):
        with pytest.raises(XenStoreError):
            await guest.write(path, "4")
        with pytest.raises(XenStoreError):
            await guest.rm(path)


async def test_wait_for_state_and_hostile_values() -> None:
    store = XenStore()
    xs = store.handle(0)
    path = "/local/domain/1/device/vbd/51712/state"
    waiter = asyncio.create_task(wait_for_state(xs, path, {XenbusState.CONNECTED}))
    await asyncio.sleep(0)
    store.write(path, "3")
    await asyncio.sleep(0)
    assert not waiter.done()
    store.write(path, "4")
    assert await asyncio.wait_for(waiter, 10) == XenbusState.CONNECTED
    assert parse_state("garbage") == XenbusState.UNKNOWN
    assert parse_state("99") == XenbusState.UNKNOWN
    store.write("/n", "12")
    assert await read_int(xs, "/n", hi=20) == 12
    store.write("/n", "0x10")
    assert await read_int(xs, "/n") == 16
    for bad in ("-1", "21", "1e3", ""):
        store.write("/n", bad)
        with pytest.raises(XenStoreError):
            await read_int(xs, "/n", hi=20)
    assert await read_int(xs, "/missing", default=5) == 5
