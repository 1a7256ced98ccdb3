"""The fabric: building, lookups, links and their tasks, VLAN PIFs, captures, supervision."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsim.clock import ManualClock
from netsim.dataplane.policy import VlanPolicy as V
from netsim.dataplane.port import Pif, Vif
from netsim.errors import ConfigError, NetsimError, TopologyError
from netsim.lab.fabric import Fabric, NotFound
from netsim.wire import frame as fr
from netsim.wire.capture import read_pcapng

from .conftest import BCAST, make


def xen(fab: Fabric):
    h = fab.add_host("xen1")
    eth0 = h.add_pif("eth0")
    xenbr0 = h.add_bridge("xenbr0", uplink=eth0)
    xapi1 = h.add_bridge("xapi1", uplink=h.vlan_pif(eth0, 5))
    phys = fab.add_physical_switch("phys")
    ge1 = fab.add_port(phys, "ge1", V.trunk())
    ge2 = fab.add_port(phys, "ge2", V.access(5))
    fab.link(eth0, ge1)
    vm1 = h.add_vm("vm1")
    vm1.add_vif(xapi1)
    vm2 = h.add_vm("vm2")
    vm2.add_vif(xenbr0)
    return h, eth0, ge1, ge2, vm1, vm2


def test_lookups_by_full_and_short_name() -> None:
    fab = Fabric(clock=ManualClock())
    h, eth0, ge1, _, vm1, _ = xen(fab)
    assert fab["xen1"] is h and fab["vm1"] is vm1
    assert fab["xen1/eth0"] is eth0 and fab["eth0"] is eth0
    assert fab["vif1.0"] is vm1.ports[0] and fab["xen1/vif1.0"] is vm1.ports[0]
    assert fab["xen1/eth0.5"].vid == 5 and fab["phys/ge1"] is ge1
    assert isinstance(fab["xapi1"], object) and "xen1/xapi1" in fab
    h2 = fab.add_host("xen2")
    h2.add_pif("eth0")
    with pytest.raises(NotFound, match="'eth0' is ambiguous; use one of xen1/eth0, xen2/eth0"):
        fab["eth0"]
    with pytest.raises(KeyError):
        fab["nope"]
    with pytest.raises(TopologyError, match="no 'vm9' in this fabric"):
        fab["vm9"]


def test_duplicate_and_bad_names_are_refused() -> None:
    fab = Fabric(clock=ManualClock())
    xen(fab)
    with pytest.raises(ConfigError, match="already used"):
        fab.add_host("xen1")
    with pytest.raises(ConfigError, match="already used"):
        fab["xen1"].add_vm("vm1")
    with pytest.raises(ConfigError, match="bad name"):
        fab.add_host("has space")
    with pytest.raises(ConfigError, match="VLAN PIF; link its parent"):
        fab.link(fab["eth0.5"], fab.add_port("phys", "ge9"))
    with pytest.raises(ConfigError, match="already linked"):
        fab.link("eth0", "ge2")


async def test_frames_cross_links_with_vlan_pif_tagging() -> None:
    fab = Fabric(clock=ManualClock())
    _, eth0, ge1, ge2, vm1, vm2 = xen(fab)
    async with fab:
        vm1.vnic.send(make(BCAST, vm1.vnic.mac))
        await fab.settle()
        (f,) = ge2.queue.items  # access 5 on the physical switch: untagged, VLAN 5
        assert fr.parse(f).tags == 0
        assert eth0.counters.tx_frames == 1 and ge1.counters.rx_frames == 1
        assert vm2.vnic.drain() == []  # other network
        # and back: a station on ge2 answers vm1
        ge2.receive(make(vm1.vnic.mac, fr.mac_to_bytes("02:00:00:00:00:01")))
        await fab.settle()
        assert len(vm1.vnic.drain()) == 1
        # untagged from the wire reaches xenbr0's VM, tag 7 (no VLAN PIF) is dropped at eth0
        ge1.transmit(make(BCAST, fr.mac_to_bytes("02:00:00:00:00:02")))
        ge1.transmit(make(BCAST, fr.mac_to_bytes("02:00:00:00:00:02"), vid=7))
        await fab.settle()
        assert len(vm2.vnic.drain()) == 1
        assert eth0.counters.drops == {"vlan-not-allowed": 1}


async def test_link_down_drops_and_counts_then_recovers() -> None:
    fab = Fabric(clock=ManualClock())
    _, eth0, _ge1, ge2, vm1, _ = xen(fab)
    async with fab:
        link = eth0.link
        link.set_up(False)
        assert not fab["eth0.5"].link_up
        vm1.vnic.send(make(BCAST, vm1.vnic.mac))
        await fab.settle()
        assert len(ge2.queue) == 0
        assert vm1.ports[0].counters.drops == {"link-down": 1}  # no uplink up
        link.set_up(True)
        vm1.vnic.send(make(BCAST, vm1.vnic.mac))
        await fab.settle()
        assert len(ge2.queue) == 1


async def test_capture_one_file_per_port_and_single_file(tmp_path: Path) -> None:
    clock = ManualClock(start_ns=1_700_000_000_123_456_789)
    fab = Fabric(clock=clock)
    _, _eth0, _, _, vm1, _ = xen(fab)
    paths = fab.capture(["eth0", "vif1.0"], tmp_path)
    (single,) = fab.capture("eth0,eth0.5", tmp_path, single_file="both.pcapng")
    async with fab:
        vm1.vnic.send(make(BCAST, vm1.vnic.mac))
        await fab.settle()
    assert [p.name for p in paths] == ["eth0.pcapng", "vif1.0.pcapng"]
    names, recs = read_pcapng(tmp_path / "eth0.pcapng")
    assert names == ["eth0"]
    ((if_id, ts, frame, flags),) = recs
    assert (if_id, ts, flags) == (0, 1_700_000_000_123_456_789, 2)
    assert fr.parse(frame).vid == 5
    names, recs = read_pcapng(tmp_path / "vif1.0.pcapng")
    assert names == ["vif1.0"] and recs[0][3] == 1  # inbound from the guest
    names, recs = read_pcapng(single)
    assert names == ["eth0", "eth0.5"]
    assert sorted(r[0] for r in recs) == [0, 1]


def test_capture_errors(tmp_path: Path) -> None:
    fab = Fabric(clock=ManualClock())
    xen(fab)
    with pytest.raises(NetsimError, match="not a port or link"):
        fab.capture(["vm1"], tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NetsimError, match="cannot create capture directory"):
        fab.capture(["eth0"], blocker / "sub")


async def test_a_crashed_task_is_reported_on_exit() -> None:
    fab = Fabric(clock=ManualClock())

    async def boom() -> None:
        raise RuntimeError("bug")

    with pytest.raises(NetsimError, match="fabric task 'boom' crashed: RuntimeError"):
        async with fab:
            fab.spawn(boom(), name="boom")
            await asyncio.sleep(0.01)


async def test_on_receive_runs_a_guest_callback() -> None:
    fab = Fabric(clock=ManualClock())
    _, _, _, ge2, _vm1, _ = xen(fab)
    got: list[bytes] = []
    fab.on_receive("vm1", got.append)
    async with fab:
        ge2.receive(make(BCAST, fr.mac_to_bytes("02:00:00:00:00:01")))
        await fab.settle()
        await asyncio.sleep(0)
    assert len(got) == 1


async def test_vnic_recv_waits_for_a_frame() -> None:
    fab = Fabric(clock=ManualClock())
    _, _, _, ge2, vm1, _ = xen(fab)
    async with fab:
        waiter = asyncio.create_task(vm1.vnic.recv())
        await asyncio.sleep(0)
        assert not waiter.done()
        ge2.receive(make(BCAST, fr.mac_to_bytes("02:00:00:00:00:01")))
        frame = await asyncio.wait_for(waiter, 10)
        assert frame[:6] == BCAST


def test_vm_with_several_port_groups_must_name_one() -> None:
    fab = Fabric(clock=ManualClock())
    h = fab.add_host("esx1")
    vs = h.add_switch("vSwitch0")
    from netsim.dataplane.switch import PortGroup

    vs.add_port_group(PortGroup("VM Network"))
    vs.add_port_group(PortGroup("VLAN 5", vlan=5))
    vm = h.add_vm("web")
    with pytest.raises(ConfigError, match="has 2 port groups; name the one"):
        vm.add_nic(vs)
    nic = vm.add_nic("vSwitch0", "VLAN 5")
    assert nic.name == "web.eth0" and fab["esx1/web.eth0"] is nic
    assert fr.mac_to_str(nic.mac).startswith("00:50:56")
    assert isinstance(Pif("eth0"), Pif) and isinstance(vm.ports[0], type(nic))
    assert not isinstance(nic, Vif)


async def test_settle_waits_for_guests_that_answer() -> None:
    fab = Fabric(clock=ManualClock())
    _, _, _, ge2, vm1, _ = xen(fab)
    station = fr.mac_to_bytes("02:00:00:00:00:01")

    def echo(frame: bytes) -> None:  # vm1 answers every frame addressed to it
        if frame[:6] == vm1.vnic.mac:
            vm1.vnic.send(frame[6:12] + frame[0:6] + frame[12:])

    fab.on_receive(vm1, echo)
    async with fab:
        ge2.receive(make(vm1.vnic.mac, station))
        await fab.settle()
        (answer,) = ge2.queue.items
        assert answer[:6] == station


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=80)), min_size=1, max_size=20))
def test_garbage_from_guests_and_the_wire_never_crashes_a_task(frames) -> None:
    async def scenario() -> None:
        fab = Fabric(clock=ManualClock())
        _, eth0, ge1, _, vm1, _ = xen(fab)
        async with fab:
            for from_wire, data in frames:
                if from_wire:
                    ge1.transmit(data)  # arrives at eth0: VLAN PIF demux, then xenbr0
                else:
                    vm1.vnic.send(data)
            await fab.settle()
        seen = eth0.counters.rx_frames + vm1.ports[0].counters.rx_frames
        assert seen == len(frames)

    asyncio.run(scenario())


def test_taps_added_as_a_list_still_see_every_frame() -> None:
    fab = Fabric(clock=ManualClock())
    _, _, _, ge2, vm1, _ = xen(fab)
    seen: list[bool] = []
    port = vm1.ports[0]
    port.taps.append(lambda f, outbound: seen.append(outbound))  # not add_tap: still counted
    assert not port.tx_plain
    ge2.receive(make(BCAST, fr.mac_to_bytes("02:00:00:00:00:01")))
    assert seen == []  # the link pump has not run: nothing crossed vif1.0 yet
    vm1.vnic.send(make(BCAST, vm1.vnic.mac))
    port.transmit(make(BCAST, fr.mac_to_bytes("02:00:00:00:00:01")))
    assert seen == [False, True]
    port.taps.clear()
    assert port.tx_plain
