"""The fabric sweeps every switch's MAC table on its clock: entries of stations that went quiet
leave memory without any lookup touching them."""
from __future__ import annotations

import asyncio

from netsim.clock import ManualClock
from netsim.dataplane.switch import PortGroup
from netsim.dataplane.vclock import VirtualClock
from netsim.lab.fabric import AGING_SWEEPS, Fabric

from .conftest import BCAST, make


def lab(clock) -> tuple[Fabric, object, list]:
    fab = Fabric(clock=clock)
    sw = fab.add_host("esx1").add_switch("vs", aging_s=60)
    sw.add_port_group(PortGroup("pg"))
    vm = fab["esx1"].add_vm("vm")
    ports = [vm.add_nic(sw, "pg") for _ in range(3)]
    return fab, sw, ports


def hello(port) -> None:
    port.vnic.send(make(BCAST, port.vnic.mac))


async def test_entries_leave_the_table_on_the_sweep_not_on_lookup() -> None:
    clock = ManualClock()
    fab, sw, (a, b, c) = lab(clock)
    step = 60 / AGING_SWEEPS

    async def tick(n: int = 1) -> None:
        for _ in range(n):
            clock.advance(step)
            for _ in range(3):
                await asyncio.sleep(0)  # the sweep wakes, sweeps and sleeps again

    async with fab:
        hello(a)
        hello(b)  # t=0: a, b learned
        await tick(2)
        hello(a)
        hello(c)  # t=30: a refreshed, c learned
        assert len(sw.mac_table) == 3
        await tick(3)  # t=75: b is 75 s old, gone; a and c are 45 s old
        assert len(sw.mac_table) == 2 and sw.mac_table.expirations == 1
        assert sw.mac_table.count(b) == 0 and sw.mac_table.count(a) == 1
        await tick(1)  # t=90: a and c exactly 60 s old: still live
        assert len(sw.mac_table) == 2
        await tick(1)  # t=105: 75 s old, gone
        assert len(sw.mac_table) == 0 and sw.mac_table.expirations == 3
        # a switch added while running is swept too
        late = fab["esx1"].add_switch("late", aging_s=60)
        late.add_port_group(PortGroup("pg"))
        d = fab["esx1"].add_vm("d").add_nic(late, "pg")
        hello(d)
        await asyncio.sleep(0)  # its sweep task starts sleeping
        await tick(5)
        assert len(late.mac_table) == 0


async def test_virtual_time_sweeps_deterministically() -> None:
    clock = VirtualClock()
    fab, sw, (a, b, _) = lab(clock)
    async with fab:
        hello(a)
        await clock.sleep(50)
        hello(b)
        await clock.sleep(30)  # t=80: the t=75 sweep removed a; b is 30 s old
        assert [e.port for e in sw.mac_entries()] == [b] and sw.mac_table.expirations == 1
        await clock.sleep(60)  # t=140: b 90 s old, removed by the t=135 sweep
        assert len(sw.mac_table) == 0
