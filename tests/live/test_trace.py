"""The frame tracer: its verdict is what the data plane really does (same delivered set and
frames, same drops by port and reason) over random topologies and frames; it leaves the live lab
untouched; it explains each hop (classification, lookup, the setting behind a drop)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from netsim.clock import ManualClock
from netsim.dataplane.policy import SecurityPolicy, TeamingPolicy, VlanPolicy
from netsim.dataplane.port import VmPort
from netsim.dataplane.switch import PortGroup
from netsim.lab.fabric import Fabric
from netsim.lab.lab import Lab
from netsim.lab.topology import load_topology
from netsim.lab.trace import trace_frame
from netsim.wire import frame as fr
from netsim.wire.capture import PcapngWriter
from netsim.wire.framespec import build_frame

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
VIDS = (0, 5, 7, 4095)

groups_st = st.lists(st.tuples(st.sampled_from(VIDS), st.booleans(), st.booleans(),
                               st.booleans()), min_size=1, max_size=3)
host_st = st.fixed_dictionaries({
    "groups": groups_st,
    "vms": st.lists(st.integers(0, 2), min_size=1, max_size=4),  # index into groups
    "uplinks": st.integers(0, 2),
    "xen_vlan": st.sampled_from((None, 5, 7)),  # a Xen VLAN bridge on eth0.<vid>
})
phys_mode_st = st.sampled_from(("trunk", "trunk57", "access5", "native7", "down"))
topo_st = st.fixed_dictionaries({
    "hosts": st.lists(host_st, min_size=1, max_size=3),
    "modes": st.lists(phys_mode_st, min_size=4, max_size=4),
})


def build(spec: dict) -> tuple[Fabric, list[VmPort]]:
    fab = Fabric(clock=ManualClock(start_ns=10**15))
    phys = fab.add_physical_switch("phys")
    vms: list[VmPort] = []
    k = 0
    for h, hs in enumerate(spec["hosts"]):
        host = fab.add_host(f"h{h}")
        sw = host.add_switch("vs")
        for g, (vid, promisc, forged, macchg) in enumerate(hs["groups"]):
            sw.add_port_group(PortGroup(f"g{g}", vlan=vid, security=SecurityPolicy(
                promiscuous=promisc, forged_transmits=forged, mac_changes=macchg)))
        pifs = []
        for u in range(hs["uplinks"]):
            pif = host.add_pif(f"eth{u}")
            pifs.append(pif)
            if not (u == 0 and hs["xen_vlan"] is not None):
                sw.add_uplink(pif)
        if len(sw.uplinks) == 2:
            sw.teaming = TeamingPolicy(standby=(sw.uplinks[1].name,))
        if hs["xen_vlan"] is not None and pifs:
            br = host.add_bridge("xapi", uplink=host.vlan_pif(pifs[0], hs["xen_vlan"]))
            vm = host.add_vm(f"x{h}")
            vms.append(vm.add_vif(br))
        for i, g in enumerate(hs["vms"]):
            vm = host.add_vm(f"v{h}_{i}")
            vms.append(vm.add_nic(sw, f"g{min(g, len(hs['groups']) - 1)}"))
        for pif in pifs:
            mode = spec["modes"][k % 4]
            k += 1
            vlan = {"trunk": VlanPolicy.trunk(), "trunk57": VlanPolicy.trunk(5, 7),
                    "access5": VlanPolicy.access(5), "native7": VlanPolicy.native_untagged(7),
                    "down": VlanPolicy.trunk()}[mode]
            port = fab.add_port(phys, f"p{k}", vlan)
            fab.link(pif, port)
            if mode == "down":
                pif.set_link(False)
    return fab, vms


frame_st = st.fixed_dictionaries({
    "sender": st.integers(0, 50),
    "dst": st.one_of(st.integers(0, 50), st.sampled_from(("bcast", "unknown"))),
    "forge": st.booleans(),
    "vid": st.sampled_from((None, None, None, None, 0, 5, 7, 9)),
    "runt": st.sampled_from((False,) * 9 + (True,)),
})


def make_frame(vms: list[VmPort], fs: dict) -> tuple[VmPort, bytes]:
    sender = vms[fs["sender"] % len(vms)]
    if fs["dst"] == "bcast":
        dst = fr.BROADCAST
    elif fs["dst"] == "unknown":
        dst = fr.mac_to_bytes("00:16:3e:7f:7f:7f")
    else:
        other = [p for p in vms if p is not sender] or vms
        dst = other[fs["dst"] % len(other)].mac
    src = fr.mac_to_bytes("00:16:3e:66:66:66") if fs["forge"] else sender.mac
    f = fr.ethernet(dst, src, 0x0800, bytes(46))
    if fs["vid"] is not None:
        f = fr.push_tag(f, fs["vid"])
    if fs["runt"]:
        f = f[:10]
    return sender, f


async def real(fab: Fabric, vms: list[VmPort], sender: VmPort, f: bytes
               ) -> tuple[dict[str, bytes], Counter]:
    before = {p.path: dict(p.counters.drops) for p in fab.ports()}
    sender.vnic.send(f)
    await fab.settle()
    delivered = {}
    for p in vms:
        got = p.vnic.drain()
        assert len(got) <= 1
        if got:
            delivered[fab.short_name(p)] = got[0]
    drops: Counter = Counter()
    for p in fab.ports():
        for reason, n in p.counters.drops.items():
            d = n - before[p.path].get(reason, 0)
            if d:
                drops[(fab.short_name(p), reason)] += d
    return delivered, drops


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topo_st, st.lists(frame_st, min_size=0, max_size=6), frame_st)
def test_trace_verdict_is_what_the_data_plane_does(spec, warmup, probe) -> None:
    async def go() -> None:
        fab, vms = build(spec)
        async with fab:
            # frames the lab sends by itself at start (a team whose active uplink starts down
            # fails over and notifies the switches with a RARP per vNIC) arrive now, not
            # during the probe's settle, where they were counted as the probe's doing
            await fab.settle()
            for fs in warmup:  # learn some MACs first
                sender, f = make_frame(vms, fs)
                sender.vnic.send(f)
                await fab.settle()
            for p in vms:
                p.vnic.drain()
            sender, f = make_frame(vms, probe)
            t = trace_frame(fab, sender, f)
            delivered, drops = await real(fab, vms, sender, f)
            assert t.delivered == delivered, t.render()
            assert Counter((d.port, d.reason) for d in t.drops) == drops, t.render()
    asyncio.run(go())


def _lab_state(lab: Lab) -> tuple:
    fab = lab.fabric
    macs = []
    for sw in [*fab.switches.values(), *(s for h in fab.hosts.values()
                                         for s in h.switches.values())]:
        macs.append([(k, e.port.path, e.last_ns) for k, e in sw.mac_table._table.items()])
    queues = {p.path: list(p.queue.items) for p in fab.ports()}
    return fab.counters(), macs, queues


def test_trace_explains_and_leaves_the_lab_alone() -> None:
    async def go() -> None:
        lab = Lab(load_topology(TOPOLOGIES / "xen-vlans.yaml"))
        async with lab:
            await lab.pingall()
            state = _lab_state(lab)
            # vm4 -> vm3, same VLAN 65 network: a MAC table hit, delivered untagged
            t = lab.trace("vm4", {"eth": {"dst": "00:16:3e:00:41:03"}})
            assert set(t.delivered) == {"vif3.0"} and not t.drops
            assert "hit VLAN 0 00:16:3e:00:41:03 -> vif3.0" in t.render()
            # vm1 (VLAN 5) sends its own tag 65: VLAN hopping refused at its access port
            t = lab.trace("vif1.0", {"eth": {"dst": "00:16:3e:00:41:03"}, "vlan": 65})
            assert not t.delivered
            assert [(d.port, d.reason) for d in t.drops] == [("vif1.0", "tagged-on-access")]
            # a broadcast from vm4 goes to vm3 and out eth0 tagged 65 to the physical trunk
            t = lab.trace("vm4", {"eth": {"dst": "ff:ff:ff:ff:ff:ff"}})
            assert set(t.delivered) == {"vif3.0"}
            outs = [(o.port, o.tag) for h in t.hops for o in h.outputs]
            assert ("eth0", 65) in outs
            assert [h.switch for h in t.hops] == ["xapi1", "trunk"]
            assert _lab_state(lab) == state  # nothing learned, counted or queued by tracing
    asyncio.run(go())


def test_not_promiscuous_names_the_port_group_setting() -> None:
    async def go() -> None:
        fab = Fabric(clock=ManualClock())
        host = fab.add_host("esx1")
        sw = host.add_switch("vSwitch0")
        sw.add_port_group(PortGroup("vlan65", vlan=65))
        a = host.add_vm("a").add_nic(sw, "vlan65", mac="00:50:56:00:00:01")
        host.add_vm("b").add_nic(sw, "vlan65", mac="00:50:56:00:00:02")
        async with fab:
            t = trace_frame(fab, a, build_frame({"eth": {"src": "00:50:56:00:00:01",
                                                         "dst": "00:50:56:00:00:99"}}))
            assert [(d.port, d.reason, d.cause) for d in t.drops] == [
                ("b.eth0", "not-promiscuous", "b.eth0: port group 'vlan65' promiscuous=Reject")]
            assert "miss for VLAN 65 00:50:56:00:00:99: flood VLAN 65" in t.render()
    asyncio.run(go())


def test_cli_trace_text_json_and_bad_input(tmp_path: Path) -> None:
    from netsim.cli.app import load_commands

    app = load_commands()
    topo = str(TOPOLOGIES / "xen-vlans.yaml")
    r = CliRunner().invoke(app, ["trace", topo, "--from", "vif1.0", "--frame",
                                 "{eth: {dst: 00:16:3e:00:41:03}, vlan: 65}"])
    assert r.exit_code == 0, r.output
    assert "tagged-on-access" in r.output and "Final: dropped at vif1.0" in r.output
    r = CliRunner().invoke(app, ["trace", topo, "--from", "vm3", "--json", "--frame",
                                 "{eth: {dst: ff:ff:ff:ff:ff:ff}}"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert set(doc["delivered"]) == {"vif4.0"}
    hexframe = build_frame({"eth": {"src": "00:16:3e:00:41:04", "dst": "00:16:3e:00:41:03"}})
    r = CliRunner().invoke(app, ["trace", topo, "--from", "vm4", "--json", "--frame",
                                 hexframe.hex()])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["frame"] == hexframe.hex()
    pcap = tmp_path / "one.pcapng"
    w = PcapngWriter(pcap, clock=ManualClock())
    i = w.add_interface("vif1.0")
    w.write(i, 1, build_frame({"eth": {"src": "00:16:3e:00:05:01", "dst": "00:16:3e:00:05:02"}}))
    w.write(i, 2, hexframe)
    w.close()
    r = CliRunner().invoke(app, ["trace", topo, "--from", "vm1", "--json", "--pcap", str(pcap)])
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.output)["delivered"]) == {"vif2.0"}
    r = CliRunner().invoke(app, ["trace", topo, "--from", "vm4", "--json", "--pcap", str(pcap),
                                 "--record", "2"])
    assert set(json.loads(r.output)["delivered"]) == {"vif3.0"}
    for args, what in ((["--from", "vm1", "--pcap", str(pcap), "--record", "3"],
                        "fewer than 3"),
                       (["--from", "nosuch", "--frame", "{eth: {}}"], "no 'nosuch'"),
                       (["--from", "vm1", "--frame", "{eth: {dst: zz}}"], "eth.dst"),
                       (["--from", "vm1", "--frame", "[1, 2]"], "neither hex nor")):
        p = subprocess.run([sys.executable, "-m", "netsim", "trace", topo, *args],
                           capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == 2, p.stderr
        assert what in p.stderr and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
