"""Real Linux network stacks on emulated ports: namespaces, TAPs and existing interfaces wired to
vNICs, with ping, iperf3 and tcpdump running in them (root, Linux)."""
from __future__ import annotations

import asyncio
import fcntl
import inspect
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from netsim.clock import ManualClock
from netsim.errors import TopologyError
from netsim.lab import attach
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology
from netsim.wire.frame import parse
from netsim.wire.pcapread import read_capture

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setattr(attach, "STATE_DIR", d)
    return d


@pytest.fixture
def lab_name(request: pytest.FixtureRequest) -> str:
    # unique per test and per process (parallel workers), short enough for a netns name
    return f"t{os.getpid() % 100000}{abs(hash(request.node.name)) % 1000}"


def two_hosts(name: str, *, extra_esx2: str = "", v10_security: str = "",
              attach_kind: str = "netns") -> str:
    """Two ESXi hosts trunked through a physical switch; a on esx1 and b on esx2 in VLAN 10,
    c on esx2 in VLAN 20 with the same subnet."""
    return textwrap.dedent(f"""\
        name: {name}
        hosts:
          esx1:
            type: esxi
            pifs: {{vmnic0: {{}}}}
            switches: {{vSwitch0: {{uplinks: [vmnic0]}}}}
            port_groups:
              V10: {{vlan: 10}}
              V20: {{vlan: 20}}
            vms:
              a: {{nics: [{{network: V10, ip: 10.0.0.1/24, attach: {attach_kind}}}]}}
          esx2:
            type: esxi
            pifs: {{vmnic0: {{}}}}
            switches: {{vSwitch0: {{uplinks: [vmnic0]}}}}
            port_groups:
              V10: {{vlan: 10{v10_security}}}
              V20: {{vlan: 20}}
              Trunk: {{vlan: 4095}}
            vms:
              b: {{nics: [{{network: V10, ip: 10.0.0.2/24, attach: netns}}]}}
              c: {{nics: [{{network: V20, ip: 10.0.0.3/24, attach: netns}}]}}
        {extra_esx2}
        physical:
          core:
            ports:
              esx1.vmnic0: {{mode: trunk, vlans: [10, 20]}}
              esx2.vmnic0: {{mode: trunk, vlans: [10, 20]}}
        """)


def in_ns(lab: str, vm: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", attach.netns_name(lab, vm), *cmd],
                          capture_output=True, text=True, timeout=timeout)


async def ping(lab: str, vm: str, dst: str, count: int = 3) -> bool:
    r = await asyncio.to_thread(in_ns, lab, vm, "ping", "-c", str(count), "-i", "0.2", "-W",
                                "1", dst)
    return r.returncode == 0


async def iperf3_server(lab: str, vm: str, port: int) -> asyncio.subprocess.Process:
    """`iperf3 -s -1` in `vm`'s namespace, returned once its socket listens (a fixed sleep
    raced the server's start on a loaded machine)."""
    server = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", attach.netns_name(lab, vm), "iperf3", "-s", "-1", "-p",
        str(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async def listening() -> bool:
            r = await asyncio.to_thread(in_ns, lab, vm, "ss", "-Hltn", f"sport = :{port}")
            return bool(r.stdout.strip()) or server.returncode is not None

        await until(listening, f"iperf3 listening on {vm}:{port}")
        assert server.returncode is None, f"iperf3 -s in {vm} exited {server.returncode}"
    except BaseException:
        if server.returncode is None:
            server.kill()
        await server.wait()
        raise
    return server


async def until(cond, what: str, within_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Poll `cond` (a function, or a coroutine function) until it holds; fail after
    `within_s` naming `what`. The deadline is generous: it only bounds a hang."""
    deadline = time.monotonic() + within_s
    while not (await ok if inspect.isawaitable(ok := cond()) else ok):
        assert time.monotonic() < deadline, f"{what}: not within {within_s:.0f} s"
        await asyncio.sleep(0.05)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def state_file_exists(state_dir: Path, lab: str) -> bool:
    return (state_dir / f"{lab}.json").exists()


def leftovers(lab: str) -> list[str]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in ns.splitlines() if f"hv-{lab}-" in line]
    found += [line for line in links.splitlines() if f"hvsim {lab} " in line]
    return found


async def test_vlan_10_reaches_across_trunk_vlan_20_does_not_and_uplink_shows_tags(
        tmp_path: Path, lab_name: str) -> None:
    lab = Lab(parse_topology(two_hosts(lab_name)))
    [uplink_pcap] = lab.capture("esx2/vmnic0", tmp_path)
    async with lab:
        assert await ping(lab_name, "a", "10.0.0.2")
        assert not await ping(lab_name, "c", "10.0.0.1", count=2)
        assert not await ping(lab_name, "a", "10.0.0.3", count=2)
        r = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "netsim", "exec", lab_name, "b", "--", "ip", "-br", "addr",
            "show", "eth0"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "10.0.0.2/24" in r.stdout, r.stderr
    assert leftovers(lab_name) == []
    vids = {parse(f).vid for _ts, f, _c in read_capture(uplink_pcap)}
    assert {10, 20} <= vids


async def test_iperf3_tcp_between_namespaces(lab_name: str) -> None:
    lab = Lab(parse_topology(two_hosts(lab_name)))
    async with lab:
        server = await iperf3_server(lab_name, "b", 5201)
        try:
            r = await asyncio.to_thread(in_ns, lab_name, "a", "iperf3", "-c", "10.0.0.2", "-p",
                                        "5201", "-t", "2", "-J")
        finally:
            if server.returncode is None:
                server.kill()
            await server.wait()
        assert r.returncode == 0, r.stdout[-500:]
        result = json.loads(r.stdout)
        bps = result["end"]["sum_received"]["bits_per_second"]
        assert bps > 1e6                          # completes and moves real data
        assert lab.fabric["esx1/vmnic0"].counters.tx_frames > 1000


VGT_GUEST = """
import sys
from scapy.all import ARP, ICMP, IP, Dot1Q, Ether, conf, srp1
conf.verb = 0
mac = sys.argv[1]
tag = Dot1Q(vlan=10)
who = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / tag / ARP(hwsrc=mac, psrc="10.0.0.7",
                                                       pdst="10.0.0.1")
ans = srp1(who, iface="eth0", timeout=3)
assert ans is not None and ans[Dot1Q].vlan == 10 and ans[ARP].psrc == "10.0.0.1", ans
echo = Ether(src=mac, dst=ans[ARP].hwsrc) / tag / IP(src="10.0.0.7", dst="10.0.0.1") / ICMP()
for i in range(3):
    rep = srp1(echo, iface="eth0", timeout=3)
    assert rep is not None and rep[Dot1Q].vlan == 10 and rep[ICMP].type == 0, rep
print("ok")
"""


async def test_vgt_guest_tags_and_promiscuous_sees_only_its_vlan(tmp_path: Path,
                                                                 lab_name: str) -> None:
    """A guest on a VLAN 4095 (VGT) port group sends and receives 802.1Q-tagged frames itself
    (scapy in its namespace: this kernel has no 8021q module for eth0.10); a promiscuous VM on
    VLAN 10 of the same vSwitch sees that conversation, one on VLAN 20 sees nothing."""
    extra = textwrap.indent(textwrap.dedent("""\
          esx3:
            type: esxi
            pifs: {vmnic0: {}}
            switches: {vSwitch0: {uplinks: [vmnic0]}}
            port_groups:
              Trunk: {vlan: 4095}
              V10: {vlan: 10, security: {promiscuous: true}}
              V20: {vlan: 20, security: {promiscuous: true}}
            vms:
              g: {nics: [{network: Trunk, attach: netns}]}
              spy10: {nics: [{network: V10, attach: netns}]}
              spy20: {nics: [{network: V20, attach: netns}]}
        """), "  ")
    text = two_hosts(lab_name).replace("physical:", extra + "physical:").replace(
        "esx2.vmnic0: {mode: trunk, vlans: [10, 20]}",
        "esx2.vmnic0: {mode: trunk, vlans: [10, 20]}\n      esx3.vmnic0: {mode: trunk, "
        "vlans: [10, 20]}")
    lab = Lab(parse_topology(text))
    async with lab:
        spies = {}
        for spy in ("spy10", "spy20"):
            spies[spy] = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", attach.netns_name(lab_name, spy), "tcpdump", "-i",
                "eth0", "-n", "-U", *(["-c", "6"] if spy == "spy10" else []), "-w",
                str(tmp_path / f"{spy}.pcap"), "icmp",
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for spy, p in spies.items():
            # tcpdump prints "listening on eth0" once its socket is bound; a fixed sleep lost
            # the whole conversation on a loaded CI machine (0 of 6 frames captured)
            line = await asyncio.wait_for(p.stderr.readline(), 30)
            assert b"listening on" in line, (spy, line)
        mac = lab.topo.vm("g").vifs[0].mac
        r = await asyncio.to_thread(in_ns, lab_name, "g", sys.executable, "-c", VGT_GUEST, mac)
        assert r.stdout.strip() == "ok", r.stderr[-800:]
        # spy10 stops by itself after the 6 frames it must see (-c 6), however slow the machine
        await asyncio.wait_for(spies["spy10"].wait(), 20)
        await asyncio.sleep(0.3)                  # anything leaking to VLAN 20 arrives with them
        spies["spy20"].send_signal(signal.SIGINT)
        await asyncio.wait_for(spies["spy20"].wait(), 10)
    seen10 = [f for _t, f, _c in read_capture(tmp_path / "spy10.pcap")]
    seen20 = [f for _t, f, _c in read_capture(tmp_path / "spy20.pcap")]
    # 3 echo requests and 3 replies between g and a, delivered untagged to the VST spy
    assert len(seen10) == 6 and all(f[12:14] == b"\x08\x00" for f in seen10)
    assert seen20 == []


async def test_forged_transmits_reject_applies_to_a_real_guest(lab_name: str) -> None:
    text = two_hosts(lab_name, v10_security=", security: {forged_transmits: false}")
    lab = Lab(parse_topology(text))
    async with lab:
        assert await ping(lab_name, "b", "10.0.0.1")
        in_ns(lab_name, "b", "ip", "link", "set", "eth0", "address", "02:00:00:00:00:99")
        in_ns(lab_name, "b", "ip", "neigh", "flush", "all")
        assert not await ping(lab_name, "b", "10.0.0.1", count=2)
        drops = lab.fabric["esx2/b.eth0"].counters.as_dict()["drops"]
        assert any("forged" in k for k in drops), drops


async def test_tap_attachment_as_qemu_uses_it(lab_name: str) -> None:
    tap = f"hvt{lab_name[-8:]}"
    lab = Lab(parse_topology(two_hosts(lab_name, attach_kind=f"{{tap: {tap}}}")))
    async with lab:
        # open the TAP's character side exactly as QEMU's -netdev tap,ifname=...,script=no does
        fd = os.open("/dev/net/tun", os.O_RDWR)
        try:
            fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", tap.encode(), 0x0002 | 0x1000))
            mac = bytes.fromhex(lab.topo.vm("a").vifs[0].mac.replace(":", ""))
            arp = (b"\xff" * 6 + mac + b"\x08\x06" + bytes.fromhex("0001080006040001") + mac
                   + bytes([10, 0, 0, 1]) + bytes(6) + bytes([10, 0, 0, 2]))
            os.set_blocking(fd, False)
            reply = None
            deadline = time.monotonic() + 10
            next_try = 0.0
            while reply is None and time.monotonic() < deadline:
                if time.monotonic() >= next_try:      # a guest retransmits its ARP request
                    os.write(fd, arp.ljust(60, b"\0"))
                    next_try = time.monotonic() + 1.0
                try:
                    f = os.read(fd, 2048)
                except BlockingIOError:
                    await asyncio.sleep(0.05)
                    continue
                if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02":
                    reply = f
            assert reply is not None, lab.attachments.counters()  # type: ignore[union-attr]
            assert reply[28:32] == bytes([10, 0, 0, 2])
            assert reply[:6] == mac
        finally:
            os.close(fd)
    assert not link_exists(tap)                     # hvsim made it, hvsim removed it


@pytest.fixture
def container_veth(lab_name: str):  # type: ignore[no-untyped-def]
    """A 'container': its own namespace with one end of a veth (10.0.0.1/24, a fixed MAC);
    yields (namespace, the outer end's name)."""
    ns, outer, inner = f"hvtest-{lab_name}", f"hvo{lab_name[-8:]}", f"hvi{lab_name[-8:]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
                       check=True)
        subprocess.run(["ip", "link", "set", inner, "netns", ns], check=True)
        for cmd in (["link", "set", inner, "address", "02:11:22:33:44:55"],
                    ["addr", "add", "10.0.0.1/24", "dev", inner], ["link", "set", inner, "up"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        yield ns, outer
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


async def test_existing_interface_is_used_and_left_in_place(lab_name: str,
                                                            container_veth) -> None:
    ns, outer = container_veth
    text = two_hosts(lab_name, attach_kind=f"{{iface: {outer}}}").replace(
        "ip: 10.0.0.1/24, attach", "mac: '02:11:22:33:44:55', ip: 10.0.0.1/24, attach")
    async with Lab(parse_topology(text)):
        r = await asyncio.to_thread(subprocess.run, [
            "ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "10.0.0.2"],
            capture_output=True, text=True)
        assert r.returncode == 0, r.stdout
    assert link_exists(outer)


async def test_sigkilled_lab_is_cleaned_by_the_next_start(tmp_path: Path, lab_name: str,
                                                          state_dir: Path) -> None:
    topo = tmp_path / "lab.yaml"
    topo.write_text(two_hosts(lab_name))
    script = textwrap.dedent(f"""\
        import asyncio, pathlib
        from netsim.lab import attach
        from netsim.lab.lab import Lab
        from netsim.lab.topology import load_topology
        attach.STATE_DIR = pathlib.Path({str(state_dir)!r})
        async def main():
            async with Lab(load_topology({str(topo)!r})):
                print("ready", flush=True)
                await asyncio.sleep(600)
        asyncio.run(main())
        """)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script,
                                                stdout=subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)  # type: ignore[union-attr]
        assert line.strip() == b"ready"
    finally:
        proc.kill()                                   # SIGKILL: no cleanup can run
        await proc.wait()
    left = leftovers(lab_name)
    assert len(left) >= 3 and state_file_exists(state_dir, lab_name)
    lab = Lab(parse_topology(two_hosts(lab_name)))
    async with lab:
        cleaned = lab.attachments.cleaned  # type: ignore[union-attr]
        assert {f"netns hv-{lab_name}-{v}" for v in "abc"} <= set(cleaned)
        assert await ping(lab_name, "a", "10.0.0.2")
    assert leftovers(lab_name) == []
    assert not state_file_exists(state_dir, lab_name)


def test_a_live_owner_is_never_cleaned_up_under(lab_name: str, state_dir: Path) -> None:
    state_dir.mkdir()
    made = {"lab": lab_name, "pid": os.getppid(), "netns": [f"hv-{lab_name}-a"], "links": []}
    (state_dir / f"{lab_name}.json").write_text(json.dumps(made))
    with pytest.raises(attach.AttachError, match=f"already running \\(pid {os.getppid()}"):
        attach.clean_leftovers(lab_name)
    assert (state_dir / f"{lab_name}.json").exists()


def test_not_root_is_one_line(monkeypatch: pytest.MonkeyPatch, lab_name: str) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(attach.AttachError) as exc:
        attach.require_root_linux()
    assert "\n" not in str(exc.value) and "root" in str(exc.value)
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(attach.AttachError, match="need Linux"):
        attach.require_root_linux()


def test_attached_labs_refuse_the_virtual_clock(lab_name: str) -> None:
    with pytest.raises(TopologyError, match="real clock"):
        Lab(parse_topology(two_hosts(lab_name)), clock=ManualClock())


@pytest.mark.parametrize(("value", "message"), [
    ("bridge", "attach must be netns"),
    ("{tap: 'a name too long for linux'}", "not a Linux interface name"),
    ("{tap: x, iface: y}", "attach must be"),
])
def test_bad_attach_values_name_the_place(value: str, message: str, lab_name: str) -> None:
    text = two_hosts(lab_name).replace("ip: 10.0.0.1/24, attach: netns", f"attach: {value}")
    with pytest.raises(TopologyError, match=message) as exc:
        parse_topology(text, source="lab.yaml")
    assert "lab.yaml" in str(exc.value)


def test_mixing_attached_and_builtin_nics_in_one_vm_is_refused(lab_name: str) -> None:
    text = two_hosts(lab_name).replace(
        "a: {nics: [{network: V10, ip: 10.0.0.1/24, attach: netns}]}",
        "a: {nics: [{network: V10, ip: 10.0.0.1/24, attach: netns}, {network: V20}]}")
    with pytest.raises(TopologyError, match="all of a VM's vNICs"):
        parse_topology(text)


async def test_migration_keeps_the_namespace_and_its_mac(lab_name: str) -> None:
    lab = Lab(parse_topology(two_hosts(lab_name)))
    async with lab:
        assert await ping(lab_name, "a", "10.0.0.2")
        before = in_ns(lab_name, "a", "cat", "/sys/class/net/eth0/address").stdout
        lab.fabric.move_vm("a", "esx2")               # the live migration's switch-over
        assert lab.fabric["esx2/a.eth0"].vnic is lab.fabric["a"].ports[0].vnic
        assert await ping(lab_name, "a", "10.0.0.2")  # now on b's own vSwitch
        assert lab.fabric["esx2/a.eth0"].counters.rx_frames >= 3
        assert "esx1/a.eth0" not in lab.fabric
        assert in_ns(lab_name, "a", "cat", "/sys/class/net/eth0/address").stdout == before


@pytest.mark.parametrize("mac_changes", [True, False])
async def test_guest_mac_change_follows_the_mac_changes_policy(lab_name: str,
                                                              mac_changes: bool) -> None:
    """`ip link set eth0 address ...` inside the namespace becomes the vNIC's effective MAC:
    Accept keeps the guest reachable at its new MAC; Reject drops every frame toward it."""
    sec = f", security: {{mac_changes: {str(mac_changes).lower()}}}"
    lab = Lab(parse_topology(two_hosts(lab_name, v10_security=sec)))
    async with lab:
        assert await ping(lab_name, "b", "10.0.0.1")
        in_ns(lab_name, "b", "ip", "link", "set", "eth0", "address", "02:00:00:00:00:42")
        vnic = lab.fabric["esx2/b.eth0"].vnic
        # the lab hears of the change from the kernel; wait for it, not a fixed 0.3 s
        await until(lambda: vnic.effective_mac == bytes.fromhex("020000000042"),
                    "the vNIC takes the guest's new MAC")
        in_ns(lab_name, "a", "ip", "neigh", "flush", "all")
        assert await ping(lab_name, "b", "10.0.0.1", count=2) is mac_changes
        drops = lab.fabric["esx2/b.eth0"].counters.as_dict()["drops"]
        assert ("mac-changed" in drops) is not mac_changes


async def test_builtin_and_real_guests_share_a_lab(lab_name: str) -> None:
    """A topology mixing the built-in guest stack and namespaces: each answers the other."""
    text = two_hosts(lab_name).replace(
        "      a: {nics: [{network: V10, ip: 10.0.0.1/24, attach: netns}]}",
        "      a: {nics: [{network: V10, ip: 10.0.0.1/24, attach: netns}]}\n"
        "      x: {nics: [{network: V10, ip: 10.0.0.5/24}]}")
    lab = Lab(parse_topology(text))
    async with lab:
        assert "x" in lab.agents and "a" not in lab.agents
        assert (await lab.ping("x", "b")).replied          # built-in → namespace on esx2
        assert await ping(lab_name, "a", "10.0.0.5")       # namespace → built-in guest


async def test_traffic_shaping_limits_a_real_tcp_flow(lab_name: str) -> None:
    """vSS shaping (egress from the VM) holds iperf3's TCP to the token bucket's bound: over T
    seconds at most average·T + burst bits pass."""
    avg, burst, secs = 20_000_000, 1024 * 1024, 3
    text = two_hosts(lab_name).replace(
        "V10: {vlan: 10}\n      V20: {vlan: 20}\n    vms:\n      a:",
        "V10: {vlan: 10, shaping: {average: 20M, peak: 100M, burst: 1MiB}}\n      V20: {vlan: 20}\n"
        "    vms:\n      a:", 1)
    assert "shaping" in text
    lab = Lab(parse_topology(text))
    async with lab:
        server = await iperf3_server(lab_name, "b", 5202)
        try:
            r = await asyncio.to_thread(in_ns, lab_name, "a", "iperf3", "-c", "10.0.0.2", "-p",
                                        "5202", "-t", str(secs), "-J")
        finally:
            if server.returncode is None:
                server.kill()
            await server.wait()
    assert r.returncode == 0, r.stdout[-500:]
    end = json.loads(r.stdout)["end"]["sum_received"]
    bound = (avg * end["seconds"] + burst * 8) / end["seconds"]
    assert end["bits_per_second"] <= bound * 1.02       # 2 %: sender/receiver clock skew
    # a policer costs TCP some of the rate (drops, then backoff); it must still get through
    assert end["bits_per_second"] > avg * 0.25, end["bits_per_second"]


async def test_an_interface_removed_under_the_lab_stops_its_pump_only(
        lab_name: str, container_veth) -> None:
    _ns, outer = container_veth
    text = two_hosts(lab_name, attach_kind=f"{{iface: {outer}}}").replace(
        "    vms:\n      a:",
        "    vms:\n      x: {nics: [{network: V10, ip: 10.0.0.5/24}]}\n      a:", 1)
    lab = Lab(parse_topology(text))
    async with lab:
        pump = lab.attachments.pumps["a.eth0"]  # type: ignore[union-attr]
        assert pump.reading
        await asyncio.to_thread(subprocess.run, ["ip", "link", "del", outer], check=True)

        def rx_errors() -> int:
            return sum(n for k, n in pump.counters.drops.items() if k.startswith("rx-"))

        # the pump sees the loss when the loop next runs it: wait for that, not a fixed 0.5 s
        await until(lambda: rx_errors() >= 1, "the pump counts the interface's loss")
        first = rx_errors()
        await asyncio.sleep(0.5)
        # the kernel reports the loss once (ENETDOWN); the socket is then quiet, no busy loop;
        # frames toward the gone interface are counted (tx-ENXIO) and dropped
        assert 1 <= first <= 2 and rx_errors() == first, pump.counters.drops
        assert await ping(lab_name, "b", "10.0.0.5")   # the rest of the lab carries on
        lab.fabric.check()
