"""The Bus protocol's behaviour, the same cases on the in-process bus and on mosquitto."""
from __future__ import annotations

import asyncio

import pytest

from netsim.errors import TransportError
from netsim.vds.transport.bus import (
    PRESENCE_OFFLINE,
    PRESENCE_ONLINE,
    Bus,
    DropPolicy,
    Subscription,
    topic_matches,
    validate_filter,
)

T = 15.0  # seconds to wait for a message that must arrive (generous: CI machines are loaded)


async def next_msg(sub: Subscription):
    return await asyncio.wait_for(sub.get(), T)


async def settle(sub: Subscription, count: int) -> None:
    """Wait until `sub` holds `count` messages."""
    async def wait() -> None:
        while len(sub) < count:  # noqa: ASYNC110 - polling a queue's length, in a test
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), T)


async def until_marker(pub: Bus, sub: Subscription, topic: str) -> list:
    """Publish a marker on `topic` (which `sub` matches) and return what `sub` got before it.

    Messages of one publisher reach one subscriber in order, so everything `pub` published
    earlier has arrived once the marker has.
    """
    await pub.publish(topic, b"marker", qos=1)
    got = []
    while True:
        m = await next_msg(sub)
        if m.topic == topic and m.payload == b"marker":
            return got
        got.append(m)


async def test_wildcards_route_to_matching_subscriptions_only(bus_kit) -> None:
    async with bus_kit.make("a") as a, bus_kit.make("b") as b:
        async with (
            b.subscribe("lab/host/+/data/to/h2") as uni,
            b.subscribe("lab/#") as everything,
            b.subscribe("lab/host/h1/presence") as exact,
        ):
            await a.publish("lab/host/h1/data/to/h2", b"frames")
            await a.publish("lab/host/h1/data/to/h3", b"not for h2")
            await a.publish("other/x", b"elsewhere")
            got = [m.payload for m in await until_marker(a, everything, "lab/zz")]
            assert got == [b"frames", b"not for h2"]
            assert [m.payload for m in uni.get_ready()] == [b"frames"]
            assert len(exact) == 0
            assert b.counters.rx_messages >= 3


async def test_retained_reaches_late_subscribers_and_empty_payload_clears_it(bus_kit) -> None:
    async with bus_kit.make("cfg") as a, bus_kit.make("late") as b:
        await a.publish("lab/vds/dvs1/config", b'{"version": 3}', qos=1, retain=True)
        async with b.subscribe("lab/vds/+/config", qos=1) as s:
            m = await next_msg(s)
            assert (m.payload, m.retain, m.qos) == (b'{"version": 3}', True, 1)
        await a.publish("lab/vds/dvs1/config", b"", qos=1, retain=True)
        async with b.subscribe("lab/vds/+/config", qos=1) as s:
            assert await until_marker(a, s, "lab/vds/zz/config") == []


async def test_presence_online_then_offline_on_clean_close(bus_kit) -> None:
    async with bus_kit.make("watcher") as w, w.subscribe("lab/host/+/presence", qos=1) as s:
        async with bus_kit.make("h1", presence_topic="lab/host/h1/presence"):
            m = await next_msg(s)
            assert (m.topic, m.payload) == ("lab/host/h1/presence", PRESENCE_ONLINE)
        m = await next_msg(s)
        assert m.payload == PRESENCE_OFFLINE


async def test_crashed_client_is_marked_offline_by_its_will(bus_kit) -> None:
    async with bus_kit.make("watcher") as w, w.subscribe("lab/host/+/presence", qos=1) as s:
        h1 = bus_kit.make("h1", presence_topic="lab/host/h1/presence")
        await h1.__aenter__()
        assert (await next_msg(s)).payload == PRESENCE_ONLINE
        await h1.abort()
        assert (await next_msg(s)).payload == PRESENCE_OFFLINE
        assert not h1.connected
    # and the retained state says so for whoever looks later
    async with bus_kit.make("later") as x, x.subscribe("lab/host/h1/presence") as s2:
        assert (await next_msg(s2)).payload == PRESENCE_OFFLINE


async def test_full_queue_drops_newest_and_counts(bus_kit) -> None:
    async with bus_kit.make("a") as a, bus_kit.make("b") as b:
        async with b.subscribe("q/data", maxsize=4) as s, b.subscribe("q/#", maxsize=100) as all_:
            for i in range(10):
                await a.publish("q/data", bytes([i]))
            await settle(all_, 10)
            assert [m.payload[0] for m in s.get_ready()] == [0, 1, 2, 3]
            assert s.dropped == 6
            assert b.counters.rx_dropped_queue_full == 6


async def test_drop_oldest_keeps_the_latest_state(bus_kit) -> None:
    async with bus_kit.make("a") as a, bus_kit.make("b") as b:
        async with (
            b.subscribe("q/cfg", maxsize=2, policy=DropPolicy.DROP_OLDEST) as s,
            b.subscribe("q/#", maxsize=100) as all_,
        ):
            for i in range(5):
                await a.publish("q/cfg", bytes([i]), qos=1)
            await settle(all_, 5)
            assert [m.payload[0] for m in s.get_ready()] == [3, 4]
            assert s.dropped == 3


async def test_broker_restart_recovers_subscriptions_and_retained_state(bus_kit) -> None:
    async with (
        bus_kit.make("owner", presence_topic="lab/host/owner/presence") as a,
        bus_kit.make("b") as b,
        b.subscribe("lab/#", qos=1) as s,
    ):
        await a.publish("lab/vds/dvs1/config", b"v7", qos=1, retain=True)
        await settle(s, 2)  # presence + config
        s.get_ready()
        bus_kit.restart()
        await a.wait_connected(T)
        await b.wait_connected(T)
        # the owner re-published its retained config and presence; b re-subscribed
        want = {("lab/vds/dvs1/config", b"v7"), ("lab/host/owner/presence", PRESENCE_ONLINE)}
        got: set[tuple[str, bytes]] = set()
        while not want <= got:
            m = await next_msg(s)
            got.add((m.topic, m.payload))
        await a.publish("lab/data", b"after")
        while (await next_msg(s)).payload != b"after":
            pass
        assert a.counters.connects == 2 and a.counters.disconnects == 1


async def test_nothing_leaves_a_disconnected_client_and_qos0_losses_are_counted(bus_kit) -> None:
    async with bus_kit.make("a") as a, bus_kit.make("b") as b, b.subscribe("z/#", qos=1) as s:
        await a.abort()  # a is now disconnected and will not come back
        await a.publish("z/data", b"lost")
        await a.publish("z/cmd", b"parked", qos=1)
        assert a.counters.tx_dropped_disconnected == 1
        assert a.counters.tx_messages == 0
        assert await until_marker(b, s, "z/marker") == []


async def test_invalid_topics_are_refused(bus_kit) -> None:
    async with bus_kit.make("a") as a:
        with pytest.raises(TransportError, match="wildcard"):
            await a.publish("lab/+/x", b"")
        with pytest.raises(TransportError, match="QoS"):
            await a.publish("lab/x", b"", qos=2)
        with pytest.raises(TransportError, match="'#' must be the last"):
            a.subscribe("lab/#/x")


def test_topic_matching_follows_mqtt() -> None:
    assert topic_matches("a/+/c", "a/b/c")
    assert not topic_matches("a/+/c", "a/b/d/c")
    assert topic_matches("a/#", "a")  # '#' also matches the parent level
    assert topic_matches("a/#", "a/b/c")
    assert not topic_matches("a/b", "a/b/c")
    assert not topic_matches("#", "$SYS/broker/load")
    assert topic_matches("+/+", "/x")
    with pytest.raises(TransportError):
        validate_filter("a/b+")


def test_outbox_is_bounded_drops_oldest_and_replays_own_retained_first() -> None:
    from netsim.vds.transport.bus import BusCounters, BusState

    c = BusCounters()
    st = BusState(c, outbox_size=2)
    st.remember("cfg", b"v1", 1, True)
    for i in range(4):
        st.park(f"cmd/{i}", b"c", 1, False)
    st.park("data", b"d", 0, False)
    assert c.tx_dropped_outbox_full == 2 and c.tx_dropped_disconnected == 1
    assert [t for t, *_ in st.replay()] == ["cfg", "cmd/2", "cmd/3"]
    assert [t for t, *_ in st.replay()] == ["cfg"]  # the outbox is sent once, retained always
