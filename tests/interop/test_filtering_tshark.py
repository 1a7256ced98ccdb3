"""Traffic filtering and marking, VIF locking and VIF QoS from topology files: the marked frames
as tshark dissects them (DSCP, 802.1p priority, IPv4 and UDP checksums good), `hvsim draw` and
`hvsim trace` naming the rule or policy that acted."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from netsim.errors import TopologyError
from netsim.lab.draw import to_dot
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology

pytestmark = pytest.mark.interop

ESX = """name: filters
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}}
    switches:
      dvs0: {uplinks: [vmnic0]}
    port_groups:
      App:
        switch: dvs0
        vlan: 10
        egress_shaping: {average: 10M, burst: 64K}
        traffic_rules:
          - {sequence: 10, description: voice, action: tag, dscp: 46, cos: 5,
             direction: incomingPackets, ip: {protocol: udp, dst_port: 5060}}
          - {sequence: 20, description: no telnet, action: drop, ip: {protocol: tcp,
             dst_port: 23}}
    vms:
      app1: {nics: [{network: App, ip: 10.0.10.1/24, mac: "00:50:56:00:00:01"}]}
physical:
  tor:
    ports:
      esx1.vmnic0: {mode: trunk, vlans: [10]}
"""

XEN = """name: locks
hosts:
  xen1:
    type: xen
    pifs: {eth0: {}}
    switches:
      xenbr0: {uplinks: [eth0]}
    networks:
      Pool: {switch: xenbr0, default_locking_mode: unlocked}
    vms:
      vm1:
        vifs:
          - {network: Pool, ip: 10.0.0.5/24, mac: "00:16:3e:00:00:05", locking_mode: locked,
             ipv4_allowed: [10.0.0.5], qos_algorithm_type: ratelimit,
             qos_algorithm_params: {kbps: 100}}
"""

PEER = "02:00:00:00:00:99"


def tshark(*args: str) -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is installed by scripts/setup.sh"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _udp(dport: int, tos: int = 0) -> bytes:
    return bytes(Ether(dst=PEER, src="00:50:56:00:00:01") /
                 IP(src="10.0.10.1", dst="10.0.10.99", tos=tos) /
                 UDP(sport=5060, dport=dport) / (b"INVITE sip:x" * 4))


async def test_marked_frames_leave_with_dscp_pcp_and_good_checksums(tmp_path: Path) -> None:
    async with Lab(parse_topology(ESX)) as lab:
        (pcap,) = lab.capture(["esx1/vmnic0"], tmp_path)
        vnic = lab["app1"].vnic
        vnic.send(_udp(5060, tos=0x01))  # ECN bit set: kept
        vnic.send(_udp(5061))  # matches no rule: unchanged
        vnic.send(bytes(Ether(dst=PEER, src="00:50:56:00:00:01") /
                        IP(src="10.0.10.1", dst="10.0.10.99") / TCP(dport=23)))  # dropped
        await lab.fabric.settle()
        sw = lab.fabric["esx1/dvs0"]
        assert sw.rule_counters()["app1.eth0"]["in"] == {10: 1, 20: 1}
        assert lab["app1"].ports[0].counters.drops == {"filtered": 1}
        assert lab.fabric.counters()["esx1/app1.eth0"]["rules"] == {
            "in": {"10": 1, "20": 1}, "out": {"20": 0}}  # rule 10 looks at incoming only
    rows = tshark("-r", str(pcap), "-o", "udp.check_checksum:TRUE", "-o",
                  "ip.check_checksum:TRUE", "-Y", "udp", "-T", "fields", "-e", "udp.dstport",
                  "-e", "vlan.id", "-e", "vlan.priority", "-e", "ip.dsfield.dscp", "-e",
                  "ip.dsfield.ecn", "-e", "ip.checksum.status", "-e", "udp.checksum.status"
                  ).split("\n")
    got = [r for r in rows if r]
    # checksum status: 0 = Bad, 1 = Good, 2 = Unverified (Wireshark's proto_checksum_enum_e)
    assert got == ["5060\t10\t5\t46\t1\t1\t1", "5061\t10\t0\t0\t0\t1\t1"]


def test_trace_names_the_rule_that_marked_or_dropped() -> None:
    lab = Lab(parse_topology(ESX))
    t = lab.trace("app1", {"eth": {"dst": PEER}, "ipv4": {"src": "10.0.10.1", "dst": "10.0.10.99"},
                           "tcp": {"dport": 23}})
    assert [d.reason for d in t.drops] == ["filtered"]
    assert "traffic rule 20 'no telnet': drop" in t.drops[0].cause
    t = lab.trace("app1", _udp(5060))
    text = t.render()
    assert "traffic rule matched: app1.eth0 (from the VM): rule 10 'voice': tag dscp=46 cos=5" \
        in text
    assert lab.fabric["esx1/dvs0"].rule_counters()["app1.eth0"]["in"] == {10: 0, 20: 0}
    # toward the VM: rule 20 (both directions) drops telnet arriving from the network
    t = lab.trace("esx1/vmnic0", {"eth": {"dst": "00:50:56:00:00:01", "src": PEER},
                                  "vlan": 10, "ipv4": {"src": "10.0.10.99",
                                                       "dst": "10.0.10.1"}, "tcp": {"dport": 23}})
    assert [(d.port, d.reason) for d in t.drops] == [("app1.eth0", "filtered")]
    assert "app1.eth0 (to the VM): rule 20 'no telnet': drop" in t.render()


def test_draw_shows_the_policies() -> None:
    dot = to_dot(parse_topology(ESX))
    assert "2 traffic rules (drop, tag)" in dot and "egress shaped 10 Mbit/s" in dot
    dot = to_dot(parse_topology(XEN))
    assert "vif1.0 locked 10.0.0.5" in dot and "vif1.0 ratelimit 100 KB/s" in dot


async def test_locked_vif_in_a_xen_lab_and_trace_names_the_policy() -> None:
    async with Lab(parse_topology(XEN)) as lab:
        vif = lab["vm1"].ports[0]
        t = lab.trace("vm1", {"eth": {"dst": PEER}, "ipv4": {"src": "10.0.0.6",
                                                             "dst": "10.0.0.9"}, "udp": {}})
        assert [d.reason for d in t.drops] == ["vif-locked"]
        assert "locking_mode=locked ipv4_allowed=10.0.0.5" in t.drops[0].cause
        assert "qos_algorithm_type=ratelimit kbps=100" in t.render()
        vif.vnic.send(bytes(Ether(dst=PEER, src="00:16:3e:00:00:05") /
                            IP(src="10.0.0.6", dst="10.0.0.9") / UDP()))
        assert vif.counters.drops == {"vif-locked": 1}


@pytest.mark.parametrize(("old", "new", "msg"), [
    ("action: drop, ip:", "action: drop, cos: 1, ip:",
     r"topology.yaml:16: .*traffic_rules\[1\]: .*only go with action tag"),
    ("egress_shaping: {average: 10M, burst: 64K}", "egress_shaping: {peak: 1M}",
     "shaping needs `average:`"),
    ("sequence: 20", "sequence: 10", r"sequence number\(s\) \[10\] used twice"),
])
def test_bad_rules_in_a_topology_name_file_line_and_key(old: str, new: str, msg: str) -> None:
    with pytest.raises(TopologyError, match=msg) as exc:
        parse_topology(ESX.replace(old, new))
    assert "line" in str(exc.value) or ":" in str(exc.value).split(" ")[0]


@pytest.mark.parametrize(("text", "msg"), [
    (XEN.replace("locking_mode: locked", "locking_mode: sealed"), "locking_mode: 'sealed'"),
    (XEN.replace("[10.0.0.5]", "[10.0.0.500]"), "ipv4_allowed.*not an IPv4 address"),
    (XEN.replace("kbps: 100", "kbps: -1"), "kbps.*positive"),
    (XEN.replace("ratelimit", "htb"), "only VIF QoS algorithm is ratelimit"),
    (XEN.replace("default_locking_mode: unlocked", "default_locking_mode: locked"),
     "unlocked or disabled"),
    (ESX.replace("vlan: 10\n", "vlan: 10\n        default_locking_mode: disabled\n"),
     "XenServer network setting; host esx1 is esxi"),
    (XEN.replace("default_locking_mode: unlocked", "traffic_rules: []"),
     "vSphere port group setting; host xen1 is xen"),
])
def test_settings_of_the_other_hypervisor_or_bad_values_are_refused(text: str, msg: str) -> None:
    with pytest.raises(TopologyError, match=msg):
        parse_topology(text)
