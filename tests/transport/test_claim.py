"""One live process per host name: a second `hvsim host` with the same name is refused."""
from __future__ import annotations

import asyncio

import pytest

from netsim.vds.transport.claim import ClaimWatch, HostClaim, HostConflictError, check_host_free
from netsim.vds.transport.topics import Topics

T = Topics("lab")


async def test_a_second_instance_is_refused_and_the_first_keeps_running(bus_kit) -> None:
    first = HostClaim.new()
    async with bus_kit.make("probe-a") as probe:
        await check_host_free(probe, T, "esx1", first)
    async with bus_kit.make(f"esx1-{first.instance}", T.presence("esx1")) as live:
        async with ClaimWatch(live, T, "esx1", first) as watch:
            second = HostClaim.new()
            async with bus_kit.make(f"probe-{second.instance}") as probe:
                with pytest.raises(HostConflictError) as err:
                    await check_host_free(probe, T, "esx1", second, stale_after_s=7.5)
            msg = str(err.value)
            assert "host esx1 is already running in fabric lab" in msg
            assert f"pid {first.pid}" in msg and first.instance in msg
            assert "within 8 s" in msg
            await asyncio.sleep(0.2)
            # nobody was kicked off the broker, nothing marked the live host down
            assert live.connected and live.counters.disconnects == 0
            assert not watch.superseded.is_set()


async def test_a_crashed_host_can_restart_at_once(bus_kit) -> None:
    old = HostClaim.new()
    crashed = bus_kit.make(f"esx1-{old.instance}", T.presence("esx1"))
    await crashed.__aenter__()
    async with ClaimWatch(crashed, T, "esx1", old):
        await asyncio.sleep(0.1)
    await crashed.abort()  # the broker publishes the last will: presence offline
    new = HostClaim.new()
    async def check() -> None:
        async with bus_kit.make(f"probe-{new.instance}") as probe:
            await check_host_free(probe, T, "esx1", new)
    for _ in range(50):  # the will reaches the retained presence right after the abort
        try:
            await check()
            break
        except HostConflictError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("stale claim of a crashed host blocks its restart")
    # a host that left cleanly does not block either; another host name never did
    async with bus_kit.make("probe-x") as probe:
        await check_host_free(probe, T, "esx2", HostClaim.new())


@pytest.mark.parametrize("b_first", [False, True])
async def test_the_later_started_of_two_racing_instances_wins(bus_kit, b_first: bool) -> None:
    a = HostClaim("a" * 12, 1, "m1", 1000.0)
    b = HostClaim("b" * 12, 2, "m2", 1001.0)
    async with (
        bus_kit.make(f"esx1-{a.instance}", T.presence("esx1")) as bus_a,
        bus_kit.make(f"esx1-{b.instance}", T.presence("esx1")) as bus_b,
    ):
        # whichever claims first on the broker, the one started later keeps the host
        first, second = (bus_b, b), (bus_a, a)
        if not b_first:
            first, second = second, first
        async with ClaimWatch(first[0], T, "esx1", first[1]) as w1:
            await asyncio.sleep(0.1)
            async with ClaimWatch(second[0], T, "esx1", second[1]) as w2:
                wa, wb = (w1, w2) if first[1] is a else (w2, w1)
                await asyncio.wait_for(wa.superseded.wait(), 15)
                await asyncio.sleep(0.1)
                assert not wb.superseded.is_set()
                assert wa.superseded_by == b
                assert "host esx1 of fabric lab was taken over by pid 2 on m2" in str(wa.error())
                assert bus_a.connected and bus_b.connected  # distinct client ids: no takeover

