"""A host's proxy switch follows the vDS document: policies, shaping both ways, teaming."""
from __future__ import annotations

import pytest

from netsim.dswitch import ProxySwitch
from netsim.errors import ConfigError
from netsim.fabric import Fabric
from netsim.policy import LoadBalancing
from netsim.vdsconfig import DvPortGroup, DvSecurity, DvShaping, DvTeaming, VdsConfig

SHAPE_IN = DvShaping(1_000_000, 2_000_000, 10_000)
SHAPE_OUT = DvShaping(5_000_000, 5_000_000, 20_000)


def cfg(version: int, *pgs: DvPortGroup) -> VdsConfig:
    return VdsConfig("dvs1", version, uplinks=("uplink1", "uplink2"), portgroups=pgs,
                     hosts={"esx1": {"uplink1": "vmnic0", "uplink2": "vmnic1"}})


def test_document_maps_onto_the_standard_switch() -> None:
    fab = Fabric()
    host = fab.add_host("esx1")
    proxy = ProxySwitch(host, "dvs1")
    app = DvPortGroup("App", 100, DvSecurity(promiscuous=True), shaping_in=SHAPE_IN,
                      shaping_out=SHAPE_OUT,
                      teaming=DvTeaming("failover", ("uplink2",), ("uplink1",)))
    assert proxy.apply(cfg(1, app, DvPortGroup("DB", 200))) == frozenset()
    sw = proxy.switch
    assert sorted(sw.port_groups) == ["App", "DB"]
    group = sw.port_groups["App"]
    assert group.vlan == 100 and group.security.promiscuous
    assert not group.security.forged_transmits  # vDS default: Reject
    assert group.shaping.average_bps == SHAPE_OUT.average_bps  # from the VM
    assert [u.name for u in sw.uplinks] == ["vmnic0", "vmnic1"]
    assert sw.teaming.active == ("vmnic1",) and sw.teaming.standby == ("vmnic0",)
    assert sw.teaming.load_balancing is LoadBalancing.EXPLICIT_FAILOVER
    vm = host.add_vm("web")
    port = vm.add_nic(sw, "App")
    assert proxy.vlans() == {100}
    # v2: App moves to VLAN 300 and loses its inbound shaping; DB is removed (no ports)
    proxy.apply(cfg(2, DvPortGroup("App", 300, shaping_in=None)))
    assert port.sw_group.vlan == 300 and sorted(sw.port_groups) == ["App"]
    assert port.sw_egress_shaper is None
    proxy.apply(cfg(3, DvPortGroup("App", 300, shaping_in=SHAPE_IN)))
    assert port.sw_egress_shaper is not None  # toward the VM
    assert proxy.vlans() == {300}


def test_refusals_change_nothing() -> None:
    fab = Fabric()
    host = fab.add_host("esx1")
    proxy = ProxySwitch(host, "dvs1")
    proxy.apply(cfg(1, DvPortGroup("App", 100)))
    host.add_vm("web").add_nic(proxy.switch, "App")
    with pytest.raises(ConfigError, match=r"port group\(s\) \['App'\] still have ports on esx1"):
        proxy.apply(cfg(2, DvPortGroup("Other", 5)))
    assert sorted(proxy.switch.port_groups) == ["App"] and proxy.config.version == 1
    other = VdsConfig("dvs1", 3, hosts={"esx9": {"uplink1": "vmnic0"}})
    with pytest.raises(ConfigError, match="host esx1 is not a member"):
        proxy.apply(other)
    second = ProxySwitch(host, "dvs2")
    with pytest.raises(ConfigError, match=r"vmnic0 \(for uplink1\) already belongs to switch dvs1"):
        second.apply(VdsConfig("dvs2", 1, hosts={"esx1": {"uplink1": "vmnic0"}}))
