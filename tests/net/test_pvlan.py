"""Private VLANs (`VMwareDVSPvlanMapEntry`): who reaches whom, on the vSwitch, on the physical
trunk (tagged with the secondary ID) and through a PVLAN-aware physical switch."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsim.clock import ManualClock
from netsim.dataplane.policy import SecurityPolicy, VlanPolicy
from netsim.dataplane.port import Pif, Port, VmPort
from netsim.dataplane.pvlan import PvlanEntry, PvlanMap, PvlanType
from netsim.dataplane.switch import PhysicalSwitch, PortGroup, StandardSwitch
from netsim.errors import ConfigError

from .conftest import BCAST, make, sent, tag_of

PMAP = PvlanMap.from_mapping({100: {101: "isolated", 102: "community", 103: "community"}})


def mac(i: int) -> bytes:
    return bytes((0x00, 0x50, 0x56, 0x00, 0x01, i))


# --------------------------------------------------------------------------- the map itself
@pytest.mark.parametrize(
    ("entries", "error"),
    [
        ([(100, 101, "isolated")], "primary 100 has no promiscuous entry"),
        ([(100, 100, "promiscuous"), (100, 101, "isolated"), (100, 102, "isolated")],
         "already has isolated secondary 101"),
        ([(100, 100, "promiscuous"), (100, 101, "community"), (100, 101, "isolated")],
         "listed twice"),
        ([(100, 101, "promiscuous")], "only the promiscuous secondary has the primary's ID"),
        ([(100, 100, "isolated")], "only the promiscuous secondary"),
        ([(100, 100, "promiscuous"), (200, 200, "promiscuous"), (200, 100, "community")],
         "listed twice"),
        ([(100, 100, "promiscuous"), (100, 4095, "community")], "out of range"),
        ([(100, 100, "promiscuous"), (100, 101, "guest")], "not one of"),
        ([(100, 100, "promiscuous"), (100, 101, "community"), (101, 102, "community")],
         "is itself a community secondary"),
    ],
)
def test_bad_maps_are_refused_naming_the_vlan(entries: list, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        PvlanMap(PvlanEntry(*e) for e in entries)


def test_map_describe_and_reach_table() -> None:
    assert PMAP.describe() == ("100: 100 promiscuous, 101 isolated, 102 community, "
                               "103 community")
    assert PMAP.entry(101) == PvlanEntry(100, 101, PvlanType.ISOLATED)
    assert 5 not in PMAP and PMAP.entry(5) is None
    assert PMAP.receives(100) == {100, 101, 102, 103}
    assert PMAP.receives(101) == {100}
    assert PMAP.receives(102) == {100, 102}


# ------------------------------------------------------------------ one vSwitch, table-driven
def vds_with_pvlans() -> tuple[StandardSwitch, dict[str, VmPort], Pif]:
    sw = StandardSwitch("dvs", clock=ManualClock())
    sw.pvlan = PMAP
    ports: dict[str, VmPort] = {}
    for n, (name, vid) in enumerate([("p1", 100), ("p2", 100), ("i1", 101), ("i2", 101),
                                     ("c1", 102), ("c2", 102), ("d1", 103)]):
        if f"pg{vid}" not in sw.port_groups:
            sw.add_port_group(PortGroup(f"pg{vid}", vlan=vid))
        ports[name] = sw.attach(VmPort(name, mac=mac(n + 1)), f"pg{vid}")
    up = sw.add_uplink(Pif("vmnic0"))
    return sw, ports, up


REACH = {  # sender → the VM ports that get its broadcast
    "p1": {"p2", "i1", "i2", "c1", "c2", "d1"},
    "i1": {"p1", "p2"},
    "c1": {"p1", "p2", "c2"},
    "d1": {"p1", "p2"},
}
UPLINK_TAG = {"p1": 100, "i1": 101, "c1": 102, "d1": 103}


@pytest.mark.parametrize("sender", sorted(REACH))
def test_broadcast_reaches_what_the_pvlan_type_allows(sender: str) -> None:
    _, ports, up = vds_with_pvlans()
    ports[sender].vnic.send(make(BCAST, ports[sender].mac))
    got = {n for n, p in ports.items() if sent(p)}
    assert got == REACH[sender]
    out = sent(up)
    assert [tag_of(f) for f in out] == [(UPLINK_TAG[sender], 0)]  # the secondary's ID


@pytest.mark.parametrize(
    ("src", "dst", "delivered"),
    [
        ("p1", "i1", True), ("p1", "c1", True), ("p1", "p2", True),
        ("i1", "p1", True), ("i1", "i2", False), ("i1", "c1", False),
        ("c1", "c2", True), ("c1", "p2", True), ("c1", "d1", False), ("c1", "i1", False),
        ("d1", "c1", False), ("d1", "p1", True),
    ],
)
def test_known_unicast_follows_the_reach_rules(src: str, dst: str, delivered: bool) -> None:
    _, ports, up = vds_with_pvlans()
    for p in ports.values():  # everyone is learned (shared learning across the primary)
        p.vnic.send(make(BCAST, p.mac))
    for p in (*ports.values(), up):
        sent(p)
    ports[src].vnic.send(make(ports[dst].mac, ports[src].mac))
    frames = sent(ports[dst])
    assert len(frames) == int(delivered)
    assert all(tag_of(f) is None for f in frames)  # host ports receive untagged
    assert ports[dst].counters.drops.get("pvlan", 0) == int(not delivered)
    assert sent(up) == []  # known locally: never flooded to the physical network
    others = [n for n, p in ports.items() if n != dst and sent(p)]
    assert others == []


@pytest.mark.parametrize(
    ("vid", "to", "delivered"),
    [(100, "i1", True), (101, "p1", True), (101, "i1", False), (102, "c2", True),
     (103, "c2", False), (102, "p2", True), (101, "c1", False)],
)
def test_frames_from_the_trunk_are_judged_by_their_secondary_tag(
        vid: int, to: str, delivered: bool) -> None:
    _, ports, up = vds_with_pvlans()
    for p in ports.values():
        p.vnic.send(make(BCAST, p.mac))
    for p in (*ports.values(), up):
        sent(p)
    up.receive(make(ports[to].mac, mac(200), vid=vid))
    assert len(sent(ports[to])) == int(delivered)


def test_a_promiscuous_reply_is_unicast_to_the_isolated_host_not_flooded() -> None:
    # shared VLAN learning: i1 was learned in 101, p1 answers in 100 and still finds it
    sw, ports, up = vds_with_pvlans()
    ports["i1"].vnic.send(make(BCAST, ports["i1"].mac))
    for p in (*ports.values(), up):
        sent(p)
    ports["p1"].vnic.send(make(ports["i1"].mac, ports["p1"].mac))
    assert len(sent(ports["i1"])) == 1 and sent(up) == []
    assert [e.vlan for e in sw.mac_entries()] == [100, 100]


def test_a_promiscuous_security_policy_does_not_break_isolation() -> None:
    sw, ports, up = vds_with_pvlans()
    sw.update_port_group(PortGroup("pg101", vlan=101,
                                   security=SecurityPolicy(promiscuous=True)))
    for p in ports.values():
        p.vnic.send(make(BCAST, p.mac))
    for p in (*ports.values(), up):
        sent(p)
    ports["c1"].vnic.send(make(ports["c2"].mac, ports["c1"].mac))
    assert sent(ports["i1"]) == [] and sent(ports["i2"]) == []
    assert len(sent(ports["c2"])) == 1


def test_setting_the_map_rejects_non_maps() -> None:
    sw = StandardSwitch("dvs")
    with pytest.raises(ConfigError, match="PvlanMap"):
        sw.pvlan = {100: {101: "isolated"}}  # type: ignore[assignment]


# ------------------------------------------- property: vDS + PVLAN-aware physical switch
@st.composite
def pvlan_labs(draw: st.DrawFn) -> tuple[PvlanMap, list[int], list[int]]:
    """A random PVLAN map, and the private VLAN of each VM on the vDS and of each host port on
    the physical switch."""
    primaries = draw(st.lists(st.integers(2, 60), min_size=1, max_size=3, unique=True))
    free = iter(range(1000, 1100))
    entries = []
    for p in primaries:
        entries.append(PvlanEntry(p, p, PvlanType.PROMISCUOUS))
        if draw(st.booleans()):
            entries.append(PvlanEntry(p, next(free), PvlanType.ISOLATED))
        for _ in range(draw(st.integers(0, 3))):
            entries.append(PvlanEntry(p, next(free), PvlanType.COMMUNITY))
    pmap = PvlanMap(entries)
    vids = [e.secondary for e in pmap.entries]
    vms = draw(st.lists(st.sampled_from(vids), min_size=1, max_size=6))
    hosts = draw(st.lists(st.sampled_from(vids), min_size=0, max_size=4))
    return pmap, vms, hosts


def allowed(pmap: PvlanMap, src: int, dst: int) -> bool:
    """The oracle, from the types alone (RFC 5517 §2)."""
    s, d = pmap.entry(src), pmap.entry(dst)
    assert s is not None and d is not None
    if s.primary != d.primary:
        return False
    if PvlanType.PROMISCUOUS in (s.type, d.type):
        return True
    return s.type is d.type is PvlanType.COMMUNITY and s.secondary == d.secondary


def pump(pairs: list[tuple[Port, Port]]) -> None:
    """Carry frames across cables (a, b) both ways until nothing is in flight."""
    moved = True
    while moved:
        moved = False
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                for f in sent(x):
                    y.receive(f)
                    moved = True


@settings(max_examples=60, deadline=None)
@given(pvlan_labs(), st.data())
def test_property_no_forbidden_delivery_and_every_allowed_one_delivered(
        lab: tuple[PvlanMap, list[int], list[int]], data: st.DataObject) -> None:
    pmap, vm_vids, host_vids = lab
    clock = ManualClock()
    vds = StandardSwitch("dvs", clock=clock)
    vds.pvlan = pmap
    phys = PhysicalSwitch("tor", clock=clock)
    phys.pvlan = pmap
    stations: list[tuple[Port, bytes, int]] = []  # (where it receives, MAC, private VLAN)
    for i, vid in enumerate(vm_vids):
        if f"pg{vid}" not in vds.port_groups:
            vds.add_port_group(PortGroup(f"pg{vid}", vlan=vid))
        stations.append((vds.attach(VmPort(f"vm{i}", mac=mac(i + 1)), f"pg{vid}"), mac(i + 1),
                         vid))
    for j, vid in enumerate(host_vids):
        m = mac(100 + j)
        stations.append((phys.add_port(f"h{j}", VlanPolicy.access(vid)), m, vid))
    up = vds.add_uplink(Pif("vmnic0"))
    trunk = phys.add_port("to-esx", VlanPolicy.trunk())  # carries the secondary IDs as tagged
    cable = [(up, trunk)]

    def send(st_: tuple[Port, bytes, int], dst: bytes) -> None:
        port, m, _ = st_
        if isinstance(port, VmPort):
            port.vnic.send(make(dst, m))
        else:
            port.receive(make(dst, m))
        pump(cable)

    def drain() -> list[int]:
        return [k for k, (p, _, _) in enumerate(stations) if len(sent(p)) > 0]

    order = data.draw(st.permutations(range(len(stations))))
    for k in order:  # broadcasts: reach exactly the allowed stations (and learn everyone)
        send(stations[k], BCAST)
        got = drain()
        want = [n for n, s in enumerate(stations)
                if n != k and allowed(pmap, stations[k][2], s[2])]
        assert got == want, (k, stations[k][2])
    for k, src in enumerate(stations):  # known unicast to everyone
        for n, dst in enumerate(stations):
            if n == k:
                continue
            send(src, dst[1])
            got = drain()
            # the destination gets it iff allowed; anyone else only as a flood of a MAC
            # unknown in the sender's primary (the destination is in another one), and only
            # if the sender may reach them
            assert (n in got) == allowed(pmap, src[2], dst[2]), (src[2], dst[2])
            assert all(allowed(pmap, src[2], stations[o][2]) for o in got), (src[2], got)
            if pmap.entry(src[2]).primary == pmap.entry(dst[2]).primary:  # type: ignore
                assert got in ([n], []), "a MAC known in the primary is never flooded"
