"""LLDP and CDP frames as ESXi sends them: tshark's `lldp` and `cdp` dissectors read the host
name and port; our parser reads them back; cut frames are refused."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from netsim.clock import ManualClock
from netsim.errors import FrameError
from netsim.wire.capture import PcapngWriter
from netsim.wire.discovery import Neighbour, cdp_frame, lldp_frame, parse_neighbour

pytestmark = pytest.mark.interop
NIC = bytes.fromhex("005056aa0001")


def tshark(*args: str) -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is installed by scripts/setup.sh"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def write(path: Path, frames: list[bytes]) -> Path:
    w = PcapngWriter(path, clock=ManualClock())
    tap = w.tap(w.add_interface("vmnic0"))
    for f in frames:
        tap(f, True)
    w.close()
    return path


@pytest.mark.parametrize(("host", "port"), [("esx1.lab", "vmnic0"), ("esx-02", "vmnic13")])
def test_tshark_dissects_lldp_with_host_name_and_port(tmp_path: Path, host: str,
                                                      port: str) -> None:
    pcap = write(tmp_path / "l.pcapng", [lldp_frame(NIC, system=host, port=port)])
    out = tshark("-r", str(pcap), "-Y", "lldp", "-T", "fields", "-e", "lldp.tlv.system.name",
                 "-e", "lldp.port.id", "-e", "lldp.chassis.id.mac", "-e", "lldp.time_to_live",
                 "-e", "_ws.expert").strip()
    assert out.split("\t")[:4] == [host, port, "00:50:56:aa:00:01", "120"], out
    assert parse_neighbour(lldp_frame(NIC, system=host, port=port)) == Neighbour(
        "lldp", host, port, 120, chassis="00:50:56:aa:00:01", capabilities=4)


@pytest.mark.parametrize(("host", "port"), [("esx1.lab", "vmnic0"), ("esx-02", "vmnic13")])
def test_tshark_dissects_cdp_with_device_id_port_and_a_good_checksum(
        tmp_path: Path, host: str, port: str) -> None:
    pcap = write(tmp_path / "c.pcapng", [cdp_frame(NIC, system=host, port=port)])
    out = tshark("-r", str(pcap), "-Y", "cdp",
                 "-T", "fields", "-e", "cdp.deviceid", "-e", "cdp.portid", "-e", "cdp.platform",
                 "-e", "cdp.checksum.status", "-e", "cdp.ttl").strip()
    dev, p, platform, status, ttl = out.split("\t")
    assert (dev, p, platform.strip(), ttl) == (host, port, "VMware ESX", "180"), out
    assert status == "1", f"checksum status {status} (1 = good)"
    n = parse_neighbour(cdp_frame(NIC, system=host, port=port))
    assert (n.protocol, n.system, n.port, n.ttl, n.platform) == ("cdp", host, port, 180,
                                                                  "VMware ESX")


def test_tshark_reads_what_a_physical_switch_advertises_over_cdp(tmp_path: Path) -> None:
    """The switch side: native VLAN, MTU, management address and S I capabilities."""
    f = cdp_frame(NIC, system="core-sw1", port="GigabitEthernet1/0/7", platform="cisco WS-C3850",
                  software="Cisco IOS Software", capabilities=0x28, mgmt="192.0.2.2", vlan=10,
                  mtu=9000)
    out = tshark("-r", str(write(tmp_path / "c.pcapng", [f])), "-Y", "cdp", "-T", "fields",
                 "-e", "cdp.deviceid", "-e", "cdp.portid", "-e", "cdp.native_vlan",
                 "-e", "cdp.mtu", "-e", "cdp.capabilities.switch",
                 "-e", "cdp.capabilities.igmp_capable", "-e", "cdp.checksum.status",
                 "-e", "cdp.platform", "-e", "_ws.expert").strip()
    dev, port, vlan, mtu, sw, igmp, status, platform, *expert = out.split("\t")
    assert (dev, port, vlan, mtu, sw, igmp, status) == (
        "core-sw1", "GigabitEthernet1/0/7", "10", "9000", "1", "1", "1"), out
    assert platform.strip() == "cisco WS-C3850" and not any(expert), out
    addrs = tshark("-r", str(tmp_path / "c.pcapng"), "-V")
    assert "IP Address: 192.0.2.2" in addrs.split("Management Addresses")[1], addrs
    assert parse_neighbour(f) == Neighbour(
        "cdp", "core-sw1", "GigabitEthernet1/0/7", 180, "cisco WS-C3850", "00:50:56:aa:00:01",
        10, 9000, "192.0.2.2", 0x28)


def test_tshark_reads_what_a_physical_switch_advertises_over_lldp(tmp_path: Path) -> None:
    """Port VLAN ID, maximum frame size (MTU + 18), management address, bridge capability."""
    f = lldp_frame(NIC, system="core-sw1", port="Gi1/0/7", description="GigabitEthernet1/0/7",
                   system_description="hvsim 802.1Q switch", mgmt="192.0.2.2", vlan=10,
                   mtu=1500)
    out = tshark("-r", str(write(tmp_path / "l.pcapng", [f])), "-Y", "lldp", "-T", "fields",
                 "-e", "lldp.tlv.system.name", "-e", "lldp.port.id", "-e", "lldp.port.desc",
                 "-e", "lldp.ieee.802_1.port_vlan.id", "-e", "lldp.ieee.802_3.max_frame_size",
                 "-e", "lldp.mgn.addr.ip4", "-e", "lldp.tlv.enable_system_cap.bridge",
                 "-e", "_ws.expert").strip()
    assert out.split("\t") == ["core-sw1", "Gi1/0/7", "GigabitEthernet1/0/7", "10", "1518",
                               "192.0.2.2", "1"], out  # and no expert info (last, empty)
    n = parse_neighbour(f)
    assert n is not None and (n.vlan, n.mtu, n.mgmt, n.platform, n.port_description) == (
        10, 1500, "192.0.2.2", "hvsim 802.1Q switch", "GigabitEthernet1/0/7")


@pytest.mark.parametrize("cut", [15, 20, 25])
def test_cut_discovery_frames_are_refused(cut: int) -> None:
    for f in (lldp_frame(NIC, system="h", port="p"), cdp_frame(NIC, system="h", port="p")):
        with pytest.raises(FrameError):
            parse_neighbour(f[:cut])


def test_other_frames_are_not_discovery() -> None:
    assert parse_neighbour(b"\xff" * 6 + NIC + b"\x08\x00" + bytes(46)) is None


LAB = """name: cdp-capture
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}}
    switches:
      vSwitch0: {uplinks: [vmnic0], discovery: {protocol: cdp, operation: both}}
physical:
  core:
    discovery: {protocols: [lldp], mgmt: 192.0.2.2}
    ports:
      esx1.vmnic0: {mode: trunk, native: 10, mode: native-untagged, ifname: Gi1/0/7}
"""


async def test_a_captured_uplink_shows_esxi_cdp_every_60s_and_the_switch_lldp_every_30s(
        tmp_path: Path) -> None:
    from netsim.lab.lab import Lab
    from netsim.lab.topology import parse_topology

    lab = Lab(parse_topology(LAB.replace("mode: trunk, ", ""), "t.yaml"))
    (pcap,) = lab.capture(["esx1/vmnic0"], tmp_path)
    async with lab:
        await lab.run_for(61)
    out = tshark("-r", str(pcap), "-Y", "cdp or lldp", "-T", "fields", "-e", "frame.time_relative",
                 "-e", "cdp.deviceid", "-e", "cdp.portid", "-e", "cdp.platform",
                 "-e", "lldp.tlv.system.name", "-e", "lldp.port.id",
                 "-e", "lldp.ieee.802_1.port_vlan.id", "-e", "lldp.mgn.addr.ip4")
    rows = sorted((round(float(t)), rest) for t, *rest in
                  (line.split("\t") for line in out.strip().splitlines()))
    cdp = [(t, r[:2]) for t, r in rows if r[0]]
    lldp = [(t, r[3:]) for t, r in rows if r[3]]
    assert cdp == [(0, ["esx1", "vmnic0"]), (60, ["esx1", "vmnic0"])], out
    assert lldp == [(t, ["core", "Gi1/0/7", "10", "192.0.2.2"]) for t in (0, 30, 60)], out
