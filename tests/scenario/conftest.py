"""Fixtures for the scenario tests: a two-host vSphere fabric built with the Python API."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from netsim.dataplane.policy import VlanPolicy
from netsim.dataplane.switch import PortGroup
from netsim.lab.fabric import Fabric

MAC_A, MAC_B, MAC_C = "00:50:56:00:00:0a", "00:50:56:00:00:0b", "00:50:56:00:00:0c"


def two_esx(clock: Any, *, mac_table_size: int = 8192) -> Fabric:
    """esx1 (VM a on vlan10) and esx2 (b on vlan10, c on vlan20), vmnic0 of each on a trunk of
    the physical switch `phys` carrying VLANs 10 and 20."""
    fab = Fabric(clock=clock)
    for h in ("esx1", "esx2"):
        host = fab.add_host(h)
        pif = host.add_pif("vmnic0")
        sw = host.add_switch("vSwitch0", mac_table_size=mac_table_size)
        sw.add_port_group(PortGroup("vlan10", vlan=10))
        sw.add_port_group(PortGroup("vlan20", vlan=20))
        sw.add_uplink(pif)
    fab.add_physical_switch("phys")
    for h in ("esx1", "esx2"):
        fab.link(f"{h}/vmnic0", fab.add_port("phys", h, VlanPolicy.trunk(10, 20)))
    fab["esx1"].add_vm("a").add_nic("vSwitch0", "vlan10", mac=MAC_A)
    fab["esx2"].add_vm("b").add_nic("vSwitch0", "vlan10", mac=MAC_B)
    fab["esx2"].add_vm("c").add_nic("vSwitch0", "vlan20", mac=MAC_C)
    return fab


def write_pcap_ns(path: Path, records: list[tuple[int, bytes]]) -> None:
    """A classic nanosecond pcap with exact integer timestamps (no float rounding)."""
    out = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)]
    for ts, frame in records:
        out.append(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(frame), len(frame)))
        out.append(frame)
    path.write_bytes(b"".join(out))
