"""XenServer's link discovery against a real Open vSwitch (userspace datapath, tests/interop/
ovs.py): its bridge keeps LLDP and CDP off the other ports and sends nothing until an
Interface gets `lldp:enable=true`; then its LLDPDU has the TLVs, TTL and capabilities that
hvsim's XenServer uplink sends (Open vSwitch adds an Avaya Fabric Attach TLV we leave out)."""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.discovery import DiscoveryConfig, Identity, LinkDiscovery
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.lab.discovery import PLATFORMS, XEN_DEFAULT
from netsim.wire.discovery import cdp_frame, lldp_frame

from .ovs import OvsBridge

pytestmark = pytest.mark.interop
MAC = bytes.fromhex("020000000001")
BCAST = b"\xff" * 6 + MAC + b"\x08\x00" + bytes(46)


def tlvs(frame: bytes) -> list[tuple[int, bytes]]:
    """(type, value) of each LLDP TLV, without the End."""
    out, i, b = [], 0, frame[14:]
    while i + 2 <= len(b):
        (h,) = struct.unpack_from("!H", b, i)
        t, n = h >> 9, h & 0x1FF
        if t == 0:
            break
        out.append((t, b[i + 2:i + 2 + n]))
        i += 2 + n
    return out


def shape(frame: bytes) -> list[tuple[int, int | bytes]]:
    """The TLV layout: type with subtype (chassis, port) or OUI+subtype (127); the Avaya
    Fabric Attach TLV of Open vSwitch's Auto Attach left out."""
    out: list[tuple[int, int | bytes]] = []
    for t, v in tlvs(frame):
        if t in (1, 2):
            out.append((t, v[0]))
        elif t == 127:
            if v[:3] != bytes.fromhex("00040d"):
                out.append((t, v[:4]))
        else:
            out.append((t, 0))
    return out


def hvsim_xen_uplink() -> tuple[StandardSwitch, Pif, Vif, LinkDiscovery]:
    clock = ManualClock()
    sw = StandardSwitch("xenbr0", clock=clock)
    sw.add_port_group(PortGroup("xenbr0"))
    pif = sw.add_uplink(Pif("eth0"))
    vif = Vif(1, 0)
    sw.attach(vif, "xenbr0")
    agent = LinkDiscovery(pif, Identity("", "eth0", MAC, platform=PLATFORMS["xen"]),
                          XEN_DEFAULT, clock)
    sw.set_discovery(pif, agent.receive)
    return sw, pif, vif, agent


@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("ovs")
    with OvsBridge(tmp, {"up": [], "vif": []}) as br:
        forwarded = br.send_all([("up", lldp_frame(MAC, system="core", port="Gi1/0/7")),
                                 ("up", cdp_frame(MAC, system="core", port="Gi1/0/7")),
                                 ("up", BCAST)])
        silent = subprocess.run(["ip", "netns", "exec", br.ns, "timeout", "8", "tcpdump", "-i",
                                 "hup", "-c", "1", "ether proto 0x88cc"], capture_output=True,
                                text=True)
        br.vsctl("set", "Interface", "oup", "lldp:enable=true")
        pcap = tmp / "lldp.pcap"
        subprocess.run(["ip", "netns", "exec", br.ns, "timeout", "60", "tcpdump", "-i", "hup",
                        "-c", "1", "-w", str(pcap), "ether proto 0x88cc"], capture_output=True,
                       check=True)
        version = br.version
    frame = _first_frame(pcap)
    yield forwarded, silent, frame, version


def _first_frame(pcap: Path) -> bytes:
    data = pcap.read_bytes()
    endian = "<" if data[:4] == bytes.fromhex("d4c3b2a1") else ">"
    incl = struct.unpack_from(f"{endian}I", data, 24 + 8)[0]
    return data[24 + 16:24 + 16 + incl]


def test_the_bridge_never_forwards_lldp_or_cdp_like_open_vswitch(ovs) -> None:
    forwarded, _, _, _ = ovs
    assert [{k: len(v) for k, v in got.items()} for got in forwarded] == [{}, {}, {"vif": 1}]
    _, pif, vif, agent = hvsim_xen_uplink()
    for f in (lldp_frame(MAC, system="core", port="Gi1/0/7"),
              cdp_frame(MAC, system="core", port="Gi1/0/7"), BCAST):
        pif.receive(f)
    assert [f for f in vif.queue.items] == [BCAST]
    assert agent.stats.ignored == 2 and agent.current() == []


def test_nothing_is_sent_until_lldp_is_enabled_like_open_vswitch(ovs) -> None:
    _, silent, _, _ = ovs
    assert "0 packets captured" in silent.stderr, silent.stderr
    _, pif, _, agent = hvsim_xen_uplink()
    agent.start()  # operation none: nothing to send
    assert not pif.queue.items and not agent.config.advertises


def test_our_xen_lldpdu_has_open_vswitchs_tlvs(ovs) -> None:
    _, _, theirs, version = ovs
    _, _, _, agent = hvsim_xen_uplink()
    agent.configure(DiscoveryConfig(("lldp",), "both"))
    (ours,) = agent.frames()
    assert shape(ours) == shape(theirs), (tlvs(theirs), tlvs(ours))
    t, o = dict(tlvs(theirs)), dict(tlvs(ours))
    assert o[3] == t[3] == struct.pack("!H", 120)  # TTL
    assert o[7] == t[7] == struct.pack("!HH", 4, 4)  # bridge, enabled
    assert 5 not in t and 5 not in o  # no System Name
    assert t[6].decode().startswith("openvswitch") and o[6] == b"openvswitch"
    assert t[6].decode() == f"openvswitch {version}"  # the real one names its version
