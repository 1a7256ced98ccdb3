"""Moving a VM between hosts of one fabric (the scenario step), over a physical switch."""
from __future__ import annotations

import pytest

from netsim.dataplane.policy import VlanPolicy
from netsim.dataplane.switch import PortGroup
from netsim.dataplane.teaming import ETHERTYPE_RARP
from netsim.errors import ConfigError
from netsim.lab.fabric import Fabric
from netsim.vds.host import migrate_in_fabric

BCAST = b"\xff" * 6


def lab() -> Fabric:
    fab = Fabric()
    phys = fab.add_physical_switch("core")
    for h in ("esx1", "esx2", "esx3"):
        host = fab.add_host(h)
        pif = host.add_pif("vmnic0")
        sw = host.add_switch("dvs1")
        sw.add_port_group(PortGroup("App", vlan=100))
        sw.add_uplink(pif)
        fab.link(pif, fab.add_port(phys, f"{h}.vmnic0", VlanPolicy.trunk(100)))
    return fab


async def test_vm_moves_keeps_its_mac_and_everyone_relearns_by_rarp() -> None:
    fab = lab()
    client = fab["esx1"].add_vm("client")
    client.add_nic("dvs1", "App", mac="00:50:56:00:00:01")
    web = fab["esx2"].add_vm("web")
    web.add_nic("dvs1", "App", mac="00:50:56:00:00:02")
    async with fab:
        c, w = client.vnic, web.vnic
        w.send(BCAST + w.mac + b"\x08\x00" + bytes(46))  # everyone learns web behind esx2
        await fab.settle()
        c.drain()
        result = migrate_in_fabric(fab, "web", "esx3")
        await fab.settle()
        assert (result.source, result.destination, result.nics) == ("esx2", "esx3", 1)
        assert fab["web"].host.name == "esx3" and "web" not in fab["esx2"].vms
        assert fab["esx3/web.eth0"].vnic is w and w.mac == bytes.fromhex("005056000002")
        rarp = c.drain()
        assert len(rarp) == 1 and rarp[0][12:14] == ETHERTYPE_RARP.to_bytes(2, "big")
        # the physical switch and esx1 now send web's frames to esx3 only
        c.send(w.mac + c.mac + b"\x08\x00" + bytes(46))
        await fab.settle()
        assert len(w.drain()) == 1
        assert fab["core"].mac_table.lookup(100, w.mac, fab.clock.now_ns()) is fab[
            "core/esx3.vmnic0"]


def test_refuses_a_destination_without_the_network() -> None:
    fab = lab()
    fab["esx3"].switches["dvs1"].port_groups.pop("App")
    vm = fab["esx1"].add_vm("v")
    vm.add_nic("dvs1", "App")
    with pytest.raises(ConfigError, match="esx3 has no switch 'dvs1' with port group 'App'"):
        migrate_in_fabric(fab, "v", "esx3")
    with pytest.raises(ConfigError, match="already on esx1"):
        migrate_in_fabric(fab, "v", "esx1")
