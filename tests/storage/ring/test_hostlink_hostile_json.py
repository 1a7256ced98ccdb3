"""`hvsim ring serve` facing a guest process that sends numbers JSON does not have: the
connection is refused (or the request answered with an error), never an unretrieved task
exception, and the next guest is served."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from storage.devices.memdisk import MemoryDisk
from storage.rings.hostlink import HostServer, connect_guest
from storage.rings.hypervisor import Hypervisor


async def _exchange(path: str, *lines: bytes) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(path)
    for line in lines:
        writer.write(line)
    await writer.drain()
    got = []
    try:
        while line := await asyncio.wait_for(reader.readline(), 5):
            got.append(line)
            if len(got) == len(lines):
                break
    finally:
        writer.close()
    return got


async def test_infinite_domid_in_hello_is_refused_cleanly(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    sock = str(tmp_path / "host.sock")
    async with Hypervisor() as hv:
        hv.create_domain(1, ram_pages=256, shared=True)
        await hv.attach_vbd(1, MemoryDisk(1 << 20))
        async with HostServer(hv, sock) as srv:
            for hello in (b'{"id": 1, "op": "hello", "domid": Infinity}\n',
                          b'{"id": 1, "op": "evtchn", "domid": -Infinity, "port": 1}\n',
                          b'{"id": 1, "op": "hello", "domid": NaN}\n',
                          b'{"id": 1, "op": "hello", "domid": 1e400}\n'):
                assert await _exchange(sock, hello) == []    # closed, no answer
                event = await asyncio.wait_for(srv.events.get(), 5)
                assert event.startswith("refused a connection"), event
            # inside a session, a line that is not JSON ends the session, as any such line
            got = await _exchange(sock, b'{"id": 1, "op": "hello", "domid": 1}\n',
                                  b'{"id": 2, "op": "unwatch", "token": Infinity}\n')
            assert len(got) == 1 and json.loads(got[0])["ok"] is True
            assert await asyncio.wait_for(srv.events.get(), 5) == "domain 1 connected"
            assert await asyncio.wait_for(srv.events.get(), 5) == "domain 1 disconnected"
            # a well-behaved guest is still served
            async with connect_guest(sock, 1) as guest:
                assert await guest.xs.read("/local/domain/1/device/vbd/51712/backend")
    await asyncio.sleep(0)
    import gc
    gc.collect()   # "Task exception was never retrieved" is reported when the task is freed
    await asyncio.sleep(0)
    assert not unhandled, unhandled
