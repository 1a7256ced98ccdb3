"""Frames leaving a proxy switch for other hosts go out in batches per destination host and
flood group, gathered over loop turns, bounded in size and in waiting time — on both buses."""
from __future__ import annotations

import asyncio

from netsim.clock import ManualClock
from netsim.vds.dswitch import Peers, ProxyLink
from netsim.vds.host import NicSpec
from netsim.vds.transport.memory import MemoryBroker, MemoryBus
from tests.dswitch.test_host import BCAST, TOPICS, echo, lab, sees


async def _stream(bus_kit, n: int, *, dst: bytes | None, batch_frames: int = 256):
    """app1 on esx1 sends `n` frames, one per loop turn (as a guest answering one by one
    does); returns (frames app2 on esx2 got, messages esx1's link published, esx1's link)."""
    async with lab(bus_kit, ["esx1", "esx2"]) as (_, ag):
        ag["esx1"].links["dvs1"].sender.max_frames = batch_frames
        app1 = await ag["esx1"].add_vm("app1", [NicSpec("dvs1", "App", "00:50:56:00:00:01")])
        app2 = await ag["esx2"].add_vm("app2", [NicSpec("dvs1", "App", "00:50:56:00:00:02")])
        await sees(ag["esx1"], "esx2", 100)
        await sees(ag["esx2"], "esx1", 100)
        a1, a2 = app1.ports[0], app2.ports[0]
        link = ag["esx1"].links["dvs1"]
        if dst is not None:  # esx1 learns where app2 is: unicast goes to esx2 only
            a2.vnic.send(echo(BCAST, a2.mac, 0, 0))
            await asyncio.wait_for(a1.vnic.recv(), 10)
        before = link.sender.counters.batches
        for i in range(n):
            a1.vnic.send(echo(dst or BCAST, a1.mac, 1, i))
            await asyncio.sleep(0)
        got: list[bytes] = []
        while len(got) < n:
            got += await asyncio.wait_for(a2.vnic.recv_batch(), 10)
        return got, link.sender.counters.batches - before, link


async def test_frames_sent_one_per_loop_turn_share_messages_per_host(bus_kit) -> None:
    got, messages, link = await _stream(bus_kit, 200, dst=bytes.fromhex("005056000002"))
    seqs = [int.from_bytes(f[15:19], "big") for f in got]
    assert seqs == list(range(200))  # all of them, in order
    assert link.counters.tx_unicast >= 200 and link.counters.tx_flood <= 2
    assert messages <= 20, f"{messages} messages for 200 frames: not batched"
    assert link.receiver.counters.lost_frames == 0


async def test_flood_batches_are_per_vlan_group_and_bounded(bus_kit) -> None:
    got, messages, link = await _stream(bus_kit, 200, dst=None, batch_frames=16)
    assert [int.from_bytes(f[15:19], "big") for f in got] == list(range(200))
    assert link.counters.tx_flood >= 200
    # never more than 16 frames in one message, and still far fewer messages than frames
    assert 13 <= messages <= 40, messages


async def test_a_partly_filled_batch_waits_at_most_the_linger_time() -> None:
    clock = ManualClock(0)
    broker = MemoryBroker()
    async with MemoryBus(broker, client_id="h1") as bus:
        peers = Peers(TOPICS)
        link = ProxyLink(bus, TOPICS, host="h1", vds="dvs1", peers=peers, clock=clock,
                         deliver=lambda vid, f: None, session=1, linger_s=0.002)
        peers._online.add("h2")
        link.remote.learn(0, b"\x00\x50\x56\x00\x00\x02", "h2")
        frame = b"\x00\x50\x56\x00\x00\x02" + b"\x00\x50\x56\x00\x00\x01" + b"\x08\x00" + bytes(46)
        await link.send(frame)
        assert link.sender.pending == 1 and not link.linger_over()
        clock.advance(0.001)
        assert not link.linger_over()
        clock.advance(0.0015)
        assert link.linger_over()
        await link.flush()
        assert link.sender.pending == 0 and not link.linger_over()
