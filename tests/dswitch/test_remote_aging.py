"""The remote MAC table (MAC → host behind it) is swept on the link's clock like a switch's."""
from __future__ import annotations

import asyncio

from netsim.clock import ManualClock
from netsim.vds.dswitch import Peers, ProxyLink, RemoteMacTable
from netsim.vds.transport.memory import MemoryBroker, MemoryBus
from netsim.vds.transport.topics import Topics

TOPICS = Topics("lab")


def mac(i: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, i])


def test_expire_removes_only_what_aged_out_oldest_first() -> None:
    clock = ManualClock()
    t = RemoteMacTable(clock, aging_s=300)
    t.learn(1, mac(1), "esx2")
    t.learn(1, mac(2), "esx3")
    clock.advance(200)
    t.learn(1, mac(3), "esx2")
    t.learn(1, mac(1), "esx2")  # heard again: young again
    clock.advance(150)  # mac(2) is 350 s old; mac(1) and mac(3) 150 s
    assert t.expire() == 1 and t.expirations == 1
    assert t.entries() == [(1, mac(1).hex(":"), "esx2"), (1, mac(3).hex(":"), "esx2")]
    clock.advance(151)
    assert t.expire() == 2 and len(t) == 0
    t.learn(1, mac(4), "esx3")  # the table still works after emptying
    assert t.lookup(1, mac(4)) == "esx3"


async def test_a_running_link_sweeps_its_remote_table() -> None:
    clock = ManualClock()
    broker = MemoryBroker()
    async with MemoryBus(broker, client_id="esx1") as bus, ProxyLink(
        bus, TOPICS, host="esx1", vds="dvs1", peers=Peers(TOPICS), clock=clock,
        deliver=lambda vid, frame: None, session=1, aging_s=60,
    ) as link:
        link.remote.learn(5, mac(1), "esx2")
        link.remote.learn(5, mac(2), "esx3")
        for _ in range(5):  # 75 s in steps of one sweep interval (15 s)
            await asyncio.sleep(0)
            clock.advance(15)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(link.remote) == 0 and link.remote.expirations == 2
