"""Fabric.remove_vm and Fabric.move_vm: names, switch ports, queued frames, refusals."""
from __future__ import annotations

import pytest

from netsim.dataplane.policy import VlanPolicy
from netsim.dataplane.switch import PortGroup
from netsim.errors import ConfigError
from netsim.lab.fabric import Fabric, NotFound

from .conftest import BCAST, make


def two_xen_hosts() -> Fabric:
    fab = Fabric()
    phys = fab.add_physical_switch("core")
    for h in ("xen1", "xen2"):
        host = fab.add_host(h)
        pif = host.add_pif("eth0")
        host.add_bridge("xenbr0", uplink=pif)
        fab.link(pif, fab.add_port(phys, f"{h}.eth0", VlanPolicy.trunk()))
    return fab


def test_remove_vm_unplugs_counts_queued_frames_and_frees_its_names() -> None:
    fab = two_xen_hosts()
    a = fab["xen1"].add_vm("a")
    a.add_vif("xenbr0")
    a.add_vif("xenbr0")
    b = fab["xen1"].add_vm("b")
    b.add_vif("xenbr0")
    other = fab["xen2"].add_vm("other")
    other.add_vif("xenbr0")  # vif1.0 on xen2 too: the short name is ambiguous
    with pytest.raises(NotFound, match="ambiguous"):
        fab["vif1.0"]
    sw = fab["xen1/xenbr0"]
    a.ports[0].vnic.send(make(BCAST, a.ports[0].mac))  # learned; b and a's 2nd NIC get a copy
    assert len(sw.mac_table) == 1 and len(a.ports[1].queue) == 1
    assert fab.remove_vm("a") == 1
    assert a.ports[1].counters.drops == {"link-down": 1}
    assert "a" not in fab and "a" not in fab["xen1"].vms
    assert "xen1/vif1.0" not in fab and "xen1/vif1.1" not in fab
    assert fab["vif1.0"] is other.ports[0]  # no longer ambiguous
    assert all(p.switch is None for p in a.ports) and len(sw.ports) == 2  # uplink + b
    assert len(sw.mac_table) == 0
    again = fab["xen1"].add_vm("a", domid=1)  # the names are free again
    assert again.add_vif("xenbr0").path == "xen1/vif1.0"
    with pytest.raises(ConfigError, match="is not a VM of this fabric"):
        fab.remove_vm(a)  # the old object is gone


async def test_move_vm_replugs_the_same_ports_and_renames_vifs_on_a_domid_clash() -> None:
    fab = two_xen_hosts()
    web = fab["xen1"].add_vm("web", domid=3)
    port = web.add_vif("xenbr0")
    vnic = port.vnic
    fab["xen2"].add_vm("db", domid=3).add_vif("xenbr0")
    peer = fab["xen1"].add_vm("peer")
    peer.add_vif("xenbr0")
    async with fab:
        assert fab.move_vm("web", "xen2") == 0
        assert web.host is fab["xen2"] and web.domid == 4
        assert port.name == "vif4.0" and fab["xen2/vif4.0"] is port and "xen1/vif3.0" not in fab
        assert web.vnic is vnic and port.switch is fab["xen2/xenbr0"]
        vnic.send(make(BCAST, vnic.mac))  # announce: the physical switch relearns
        await fab.settle()
        peer.vnic.drain()
        peer.vnic.send(make(vnic.mac, peer.vnic.mac))
        await fab.settle()
        assert len(vnic.drain()) == 1  # reached it on xen2


def test_a_refused_move_changes_nothing() -> None:
    fab = two_xen_hosts()
    fab["xen2"].add_switch("internal").add_port_group(PortGroup("internal"))
    vm = fab["xen1"].add_vm("v")
    vm.add_vif("xenbr0")
    fab["xen1"].add_switch("internal").add_port_group(PortGroup("priv"))
    vm.add_vif("internal", "priv")  # xen2's "internal" has no port group "priv"
    with pytest.raises(ConfigError, match="xen2 has no switch 'internal' with port group 'priv'"):
        fab.move_vm(vm, "xen2")
    assert vm.host is fab["xen1"] and all(p.switch is not None for p in vm.ports)
    assert fab["xen1/vif1.1"] is vm.ports[1]
    with pytest.raises(ConfigError, match="already on xen1"):
        fab.move_vm(vm, "xen1")
    with pytest.raises(ConfigError, match="no host 'xen9'"):
        fab.move_vm(vm, "xen9")
