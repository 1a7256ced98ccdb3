"""Our LAG against a real LACP speaker: Open vSwitch (userspace datapath) with a bond
`lacp=active`, `other_config:lacp-time=fast`, whose two members are veths into the two NICs of
an emulated ESXi host whose vDS uplink is a LAG (fast, active). On real time:

- the bond negotiates: `ovs-appctl lacp/show` says the LACP status is negotiated, names our
  system id as the partner, and shows both members current and attached, collecting and
  distributing - and our LAG distributes over both;
- frames pass through it both ways (OVS learns the VM's MAC on the bond; a broadcast from
  the OVS side reaches the VM once);
- a member going down (its veth) leaves one member carrying the LAG on both sides.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from netsim.clock import RealClock
from netsim.dataplane.lag import LagConfig
from netsim.dataplane.port import Pif
from netsim.dataplane.switch import PortGroup
from netsim.lab.attach import PacketPump
from netsim.lab.fabric import Fabric
from netsim.wire import frame as fr

from .ovs import OvsBridge

pytestmark = pytest.mark.interop
VM_MAC = bytes.fromhex("005056000042")


class PifEnd:
    """What `PacketPump` needs of its far side, for a PIF: frames from the wire enter the PIF,
    frames the PIF sends leave by the socket."""

    def __init__(self, pif: Pif) -> None:
        self.pif = pif

    def send(self, frame: bytes) -> None:
        self.pif.receive(frame)

    def send_many(self, frames: list[bytes]) -> None:
        self.pif.receive_batch(frames)

    async def recv_batch(self, limit: int = 0) -> list[bytes]:
        return await self.pif.queue.get_batch(limit)


def _members(text: str) -> dict[str, str]:
    """`lacp/show` member sections: name → the section's text."""
    parts = re.split(r"\n\s*member: ", text)
    return {p.split(":", 1)[0].strip(): p for p in parts[1:]}


@pytest.fixture()
def ovs(tmp_path: Path):
    with OvsBridge(tmp_path, {}) as br:
        tag = f"{os.getpid() % 100000}"
        outside = []
        for i in range(2):
            o, h = f"lo{i}", f"hvl{tag}x{i}"
            br._ns("ip", "link", "add", o, "type", "veth", "peer", "name", h)
            br._ns("ip", "link", "set", h, "netns", "1")
            outside.append(h)
            for cmd in (["ip", "link", "set", o, "up"],
                        ["sysctl", "-qw", f"net.ipv6.conf.{o}.disable_ipv6=1"]):
                br._ns(*cmd)
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{h}.disable_ipv6=1"], check=True)
            subprocess.run(["ip", "link", "set", h, "up"], check=True)
        br.vsctl("add-bond", "br0", "bond0", "lo0", "lo1", "lacp=active",
                 "bond_mode=balance-tcp", "other_config:lacp-time=fast")
        br._ns("ip", "link", "set", "br0", "up")
        try:
            yield br, outside
        finally:
            for h in outside:
                subprocess.run(["ip", "link", "delete", h], check=False, capture_output=True)


def appctl(br: OvsBridge, *args: str) -> str:
    return br._ns("ovs-appctl", "-t", f"{br.tmp}/vswitchd.ctl", *args).stdout


async def wait_for(cond, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        await asyncio.sleep(0.2)
    return cond()


async def test_ovs_bond_negotiates_with_our_vds_lag_and_survives_a_member_down(ovs) -> None:
    br, outside = ovs
    t_start = time.monotonic()
    fab = Fabric(clock=RealClock())
    esx = fab.add_host("esx1")
    nics = [esx.add_pif(f"vmnic{i}") for i in range(2)]
    lagp = esx.add_bond("lag1", nics, LagConfig(rate="fast", lacp="active"))
    lag = fab.lags["esx1/lag1"]
    vds = esx.add_switch("dvs")
    vds.add_uplink(lagp)
    vds.add_port_group(PortGroup("pg", vlan=0))
    vm = esx.add_vm("vm1")
    vnic = vm.add_nic(vds, "pg", mac=VM_MAC).vnic
    pumps = [PacketPump(h, PifEnd(n)) for h, n in zip(outside, nics, strict=True)]  # type: ignore[arg-type]
    async with fab:
        for p in pumps:
            p.start()
        try:
            ok = await wait_for(lambda: len(lag.distributing) == 2 and
                                "negotiated" in appctl(br, "lacp/show", "bond0"), 15)
            show = appctl(br, "lacp/show", "bond0")
            assert ok, (show, lag.status())
            sysid = ":".join(f"{b:02x}" for b in lag.system)
            assert re.search(rf"partner sys_id\s*:\s*{sysid}", show), show
            members = _members(show)
            assert set(members) == {"lo0", "lo1"}, show
            for name, text in members.items():
                assert "current attached" in text, (name, text)
                for flag in ("activity", "timeout", "aggregation", "synchronized",
                             "collecting", "distributing"):
                    assert re.search(rf"partner state:.*\b{flag}\b", text), (flag, text)

            # data both ways: OVS learns the VM on the bond; its broadcast reaches the VM once
            vnic.send(fr.ethernet(fr.BROADCAST, VM_MAC, 0x88B5, bytes(46)))
            mac = "00:50:56:00:00:42"
            assert await wait_for(lambda: mac in appctl(br, "fdb/show", "br0"), 5)
            fdb = appctl(br, "fdb/show", "br0")
            assert re.search(rf"\d+\s+0\s+{mac}", fdb), fdb
            br._ns("python3", "-c",
                   "import socket;s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW);"
                   "s.bind(('br0',0));s.send(b'\\xff'*6+bytes.fromhex('02000000aa01')"
                   "+b'\\x88\\xb5'+bytes(46))")
            got: list[bytes] = []

            def arrived() -> bool:
                while (f := vnic.recv_nowait()) is not None:
                    got.append(f)
                return any(f[6:12] == bytes.fromhex("02000000aa01") for f in got)

            assert await wait_for(arrived, 5)
            await asyncio.sleep(0.5)
            arrived()
            assert sum(f[6:12] == bytes.fromhex("02000000aa01") for f in got) == 1

            # a member goes down: both ends carry on over the other one
            await asyncio.to_thread(subprocess.run, ["ip", "link", "set", outside[0], "down"],
                                    check=True)
            nics[0].set_link(False)  # our NIC sees its carrier go
            ok = await wait_for(lambda: [p.name for p in lag.distributing] == ["vmnic1"] and
                                "current attached" not in
                                _members(appctl(br, "lacp/show", "bond0")).get("lo0", ""), 10)
            assert ok, (appctl(br, "lacp/show", "bond0"), lag.status())
            assert "current attached" in _members(appctl(br, "lacp/show", "bond0"))["lo1"]
            assert lagp.link_up
        finally:
            for p in pumps:
                await p.stop()
    assert time.monotonic() - t_start < 30
