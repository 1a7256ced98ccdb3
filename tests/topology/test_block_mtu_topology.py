"""MTU and port blocking from topology YAML: checked, built, drawn, and in effect hop by hop."""
from __future__ import annotations

import asyncio

import pytest

from netsim.errors import TopologyError
from netsim.lab.draw import to_dot
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology
from netsim.wire import frame as fr

LAB = """name: jumbo
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {mtu: PIF}}
    switches:
      vSwitch0: {uplinks: [vmnic0], mtu: SWITCH}
    port_groups:
      storage: {switch: vSwitch0, vlan: 30}
      parked: {switch: vSwitch0, vlan: 30, blocked: true}
    vms:
      nfs: {nics: [{network: storage, ip: 10.3.0.1/24, mtu: 9000}]}
      old: {nics: [{network: parked, ip: 10.3.0.2/24}]}
physical:
  tor:
    ports:
      esx1.vmnic0: {mode: trunk, vlans: [30], mtu: TOR}
"""


def topo(pif: int = 9000, switch: int = 9000, tor: int = 9000):
    return parse_topology(LAB.replace("PIF", str(pif)).replace("SWITCH", str(switch))
                          .replace("TOR", str(tor)), "t.yaml")


@pytest.mark.parametrize(
    ("pif", "switch", "tor", "dropped_at"),
    [
        (9000, 9000, 9000, None),  # jumbo end to end: the ToR floods it on (no one to get it)
        (9000, 9000, 1500, "tor/esx1.vmnic0"),  # the physical port is standard
        (1500, 9000, 9000, "esx1/vmnic0"),  # the PIF is standard
        (9000, 1500, 9000, "esx1/nfs.eth0"),  # the vSwitch is standard: its ports are too
    ],
)
async def test_a_jumbo_frame_stops_at_the_first_hop_with_a_smaller_mtu(
        pif: int, switch: int, tor: int, dropped_at: str | None) -> None:
    async with Lab(topo(pif, switch, tor)) as lab:
        nic = lab.fabric["esx1/nfs.eth0"]
        frame = fr.ethernet(fr.BROADCAST, nic.mac, fr.ETHERTYPE_IPV4, bytes(9000))
        ports = ("esx1/nfs.eth0", "esx1/vmnic0", "tor/esx1.vmnic0")
        before = {p: lab.fabric[p].counters.drops.get("oversize", 0) for p in ports}
        nic.vnic.send(frame)
        for _ in range(20):  # let the frame cross every queue
            await asyncio.sleep(0)
        after = {p: lab.fabric[p].counters.drops.get("oversize", 0) - before[p] for p in ports}
        assert after == {p: int(p == dropped_at) for p in ports}
        if dropped_at is None:
            assert lab.fabric["tor/esx1.vmnic0"].counters.rx_frames >= 1


async def test_a_blocked_port_group_from_the_file_passes_nothing() -> None:
    async with Lab(topo()) as lab:
        r = await lab.pingall(wait_s=0.5)
        assert not r.reachable("nfs", "old") and not r.reachable("old", "nfs")
        assert lab.fabric["esx1/old.eth0"].counters.drops.get("blocked", 0) > 0


@pytest.mark.parametrize(
    ("slot", "value", "error"),
    [
        ("TOR", "9217", r"t\.yaml:17: physical\.tor\.ports\.esx1\.vmnic0\.mtu: MTU 9217 "
                        r"out of range 68-9216"),
        ("SWITCH", "jumbo", r"t\.yaml:7: .*vSwitch0\.mtu: MTU must be an integer"),
        ("PIF", "0", r"t\.yaml:5: hosts\.esx1\.pifs\.vmnic0\.mtu: MTU 0 out of range"),
    ],
)
def test_bad_mtu_values_name_file_line_and_key(slot: str, value: str, error: str) -> None:
    text = LAB.replace(slot, value)
    for other in ("PIF", "SWITCH", "TOR"):
        text = text.replace(other, "9000")
    with pytest.raises(TopologyError, match=error):
        parse_topology(text, "t.yaml")


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("blocked: true", "blocked: maybe", r"t\.yaml:10: .*parked\.blocked"),
        ("mtu: 9000}]}", "mtu: 0}]}", r"t\.yaml:12: .*nics\[0\]\.mtu: MTU 0 out of range"),
    ],
)
def test_bad_port_group_and_vnic_values(old: str, new: str, error: str) -> None:
    text = LAB.replace("PIF", "9000").replace("SWITCH", "9000").replace("TOR", "9000")
    assert text.count(old) == 1
    with pytest.raises(TopologyError, match=error):
        parse_topology(text.replace(old, new), "t.yaml")


def test_draw_shows_mtu_and_blocking() -> None:
    dot = to_dot(topo())
    assert 'label="vSwitch0\\nMTU 9000"' in dot
    assert 'label="parked\\nVLAN 30\\nBLOCKED"' in dot
