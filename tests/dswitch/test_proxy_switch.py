"""A host's proxy switch follows the vDS document: policies, shaping both ways, teaming."""
from __future__ import annotations

import pytest

from netsim.dataplane.policy import LoadBalancing
from netsim.errors import ConfigError
from netsim.lab.fabric import Fabric
from netsim.vds.dswitch import ProxySwitch
from netsim.vds.vdsconfig import DvPortGroup, DvSecurity, DvShaping, DvTeaming, VdsConfig

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
    # App's teaming is App's alone (over this host's NICs); DB and the switch keep the vDS
    # default: every uplink active, route based on originating port
    assert group.teaming.active == ("vmnic1",) and group.teaming.standby == ("vmnic0",)
    assert group.teaming.load_balancing is LoadBalancing.EXPLICIT_FAILOVER
    assert sw.port_groups["DB"].teaming is None
    assert sw.teaming.active == () and sw.teaming.load_balancing is LoadBalancing.PORT_ID
    vm = host.add_vm("web")
    port = vm.add_nic(sw, "App")
    db = [vm.add_nic(sw, "DB") for _ in range(2)]
    assert sw.uplink_for(port).name == "vmnic1"
    assert {sw.uplink_for(p).name for p in db} == {"vmnic0", "vmnic1"}  # spread by port id
    proxy.apply(cfg(2, app, DvPortGroup("DB", 200)))  # same document again: nothing moves
    assert sw.uplink_for(port).name == "vmnic1"
    for p in db:
        vm.ports.remove(p)
        sw.detach(p)
    assert proxy.vlans() == {100}
    # v3: App moves to VLAN 300, loses its inbound shaping and its teaming override; DB is
    # removed (no ports left)
    proxy.apply(cfg(3, DvPortGroup("App", 300, shaping_in=None)))
    assert port.sw_group.teaming is None
    assert port.sw_group.vlan == 300 and sorted(sw.port_groups) == ["App"]
    assert port.sw_egress_shaper is None
    proxy.apply(cfg(4, DvPortGroup("App", 300, shaping_in=SHAPE_IN)))
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


def test_frames_from_other_hosts_enter_in_order_as_one_batch_or_by_pinning() -> None:
    fab = Fabric()
    host = fab.add_host("esx1")
    proxy = ProxySwitch(host, "dvs1")
    one = VdsConfig("dvs1", 1, portgroups=(DvPortGroup("App", 100),),
                    hosts={"esx1": {"uplink1": "vmnic0"}})
    proxy.apply(one)
    vm = host.add_vm("web").add_nic(proxy.switch, "App", mac="00:50:56:00:00:01")
    peer = bytes.fromhex("020000000009")
    frames = [vm.mac + peer + b"\x81\x00\x00\x64\x08\x00" + bytes([i]) * 46 for i in range(5)]
    proxy.deliver_batch([(100, f) for f in frames])
    got = vm.vnic.drain()
    assert [g[14] for g in got] == list(range(5)) and all(len(g) == 60 for g in got)
    up = proxy.uplinks["uplink1"]
    assert up.counters.rx_frames == 5 and up.counters.drops == {}
    # two uplinks in use (App pinned to uplink2, DB to uplink1): a broadcast batch reaches
    # each group's VM once, through its own uplink
    two = cfg(2, DvPortGroup("App", 100, teaming=DvTeaming("failover", ("uplink2",), ())),
              DvPortGroup("DB", 100, teaming=DvTeaming("failover", ("uplink1",), ())))
    proxy.apply(two)
    db = host.add_vm("db").add_nic(proxy.switch, "DB", mac="00:50:56:00:00:02")
    bcast = b"\xff" * 6 + peer + b"\x81\x00\x00\x64\x08\x00" + bytes(46)
    proxy.deliver_batch([(100, bcast)] * 3)
    assert len(vm.vnic.drain()) == 3 and len(db.vnic.drain()) == 3
