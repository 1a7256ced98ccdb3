"""XenServer VIF locking (locking_mode, ipv4_allowed, ipv6_allowed, network default) and VIF QoS
(ratelimit kbps), on a Xen bridge."""
from __future__ import annotations

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Ether

from netsim.clock import ManualClock
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.dataplane.vifpolicy import LockingMode, VifLocking, VifQos
from netsim.errors import ConfigError
from netsim.wire import frame as fr

from .conftest import sent

MAC = "00:16:3e:00:00:0a"
OTHER = "00:16:3e:00:00:0f"
PEER = "02:00:00:00:00:99"
LOCK = VifLocking("locked", ipv4_allowed=("10.0.0.5",), ipv6_allowed=("2001:db8::5",))


def ip4(src: str = "10.0.0.5", smac: str = MAC) -> bytes:
    return bytes(Ether(dst=PEER, src=smac) / IP(src=src, dst="10.0.0.9") / UDP(dport=9))


def arp(psrc: str = "10.0.0.5", hwsrc: str = MAC, smac: str = MAC) -> bytes:
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=smac) /
                 ARP(hwsrc=hwsrc, psrc=psrc, pdst="10.0.0.9"))


def ip6(src: str = "2001:db8::5") -> bytes:
    return bytes(Ether(dst=PEER, src=MAC) / IPv6(src=src, dst="2001:db8::9") / UDP(dport=9))


def na(target: str) -> bytes:
    return bytes(Ether(dst=PEER, src=MAC) / IPv6(src="fe80::216:3eff:fe00:a", dst="ff02::1") /
                 ICMPv6ND_NA(tgt=target))


def dhcp() -> bytes:
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC) /
                 IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) /
                 BOOTP(chaddr=fr.mac_to_bytes(MAC)) / DHCP(options=[("message-type", "discover"),
                                                                     "end"]))


def bridge(locking: VifLocking | None = None, qos: VifQos | None = None,
           default: str = "unlocked", clock: ManualClock | None = None):
    sw = StandardSwitch("xenbr0", clock=clock or ManualClock())
    sw.add_port_group(PortGroup("Pool-wide network", default_locking_mode=default))
    vif = sw.attach(Vif(1, 0, mac=fr.mac_to_bytes(MAC)), "Pool-wide network")
    sw.set_vif_policy(vif, locking=locking, qos=qos)
    eth0 = sw.add_uplink(Pif("eth0"))
    return sw, vif, eth0


# (locking, network default, frame from the VM, passes?)
LOCK_CASES = [
    (LOCK, "unlocked", ip4(), True),
    (LOCK, "unlocked", ip4("10.0.0.6"), False),  # another source address
    (LOCK, "unlocked", ip4(smac=OTHER), False),  # another source MAC
    (LOCK, "unlocked", arp(), True),
    (LOCK, "unlocked", arp(psrc="10.0.0.6"), False),  # ARP for an address it may not use
    (LOCK, "unlocked", arp(hwsrc=OTHER), False),  # ARP sender MAC not the VIF's
    (LOCK, "unlocked", dhcp(), True),  # a locked VIF may still ask DHCP for its address
    (LOCK, "unlocked", ip6(), True),
    (LOCK, "unlocked", ip6("2001:db8::6"), False),
    (LOCK, "unlocked", na("2001:db8::5"), True),
    (LOCK, "unlocked", na("2001:db8::6"), False),
    (LOCK, "unlocked", fr.ethernet(fr.mac_to_bytes(PEER), fr.mac_to_bytes(MAC), 0x88B5,
                                   bytes(46)), False),  # any other ethertype
    (VifLocking("locked"), "unlocked", ip4(), False),  # no address listed: no IP at all
    (VifLocking("locked"), "unlocked", arp(), False),
    (VifLocking("unlocked"), "disabled", ip4("1.2.3.4", OTHER), True),
    (VifLocking("network_default"), "unlocked", ip4("1.2.3.4"), True),
    (VifLocking("network_default"), "disabled", ip4(), False),
    (None, "disabled", ip4(), False),
    (VifLocking("disabled"), "unlocked", ip4(), False),
]


@pytest.mark.parametrize(("locking", "default", "frame", "passes"), LOCK_CASES)
def test_vif_locking_cases(locking, default: str, frame: bytes, passes: bool) -> None:
    _, vif, eth0 = bridge(locking, default=default)
    vif.vnic.send(frame)
    assert len(sent(eth0)) == int(passes)
    mode = locking.effective(LockingMode(default)) if locking else LockingMode(default)
    reason = "vif-disabled" if mode is LockingMode.DISABLED else "vif-locked"
    assert vif.counters.drops == ({} if passes else {reason: 1})


@pytest.mark.parametrize(("locking", "default", "delivered"), [
    (LOCK, "unlocked", True),  # traffic to a locked VM is not filtered
    (VifLocking("disabled"), "unlocked", False),
    (None, "disabled", False),
])
def test_traffic_to_the_vm(locking, default: str, delivered: bool) -> None:
    _, vif, eth0 = bridge(locking, default=default)
    eth0.receive(bytes(Ether(dst=MAC, src=PEER) / IP(src="10.9.9.9", dst="10.0.0.77")))
    assert len(sent(vif)) == int(delivered)
    assert vif.counters.drops == ({} if delivered else {"vif-disabled": 1})


def test_unlocking_at_run_time_lets_traffic_through_again() -> None:
    sw, vif, eth0 = bridge(VifLocking("locked"))
    vif.vnic.send(ip4())
    sw.set_vif_policy(vif, locking=VifLocking("unlocked"))
    vif.vnic.send(ip4())
    assert len(sent(eth0)) == 1 and vif.counters.drops == {"vif-locked": 1}


def test_qos_ratelimit_polices_what_the_guest_sends_at_kbps() -> None:
    clock = ManualClock()
    _, vif, eth0 = bridge(qos=VifQos(100), clock=clock)  # 100 KiB/s: 5120 B per 50 ms
    frame = fr.ethernet(fr.mac_to_bytes(PEER), fr.mac_to_bytes(MAC), 0x0800, bytes(1010))
    for _ in range(10):
        vif.vnic.send(frame)  # 1024 B each
    assert len(sent(eth0)) == 5 and vif.counters.drops == {"vif-qos": 5}
    total = 0
    for _ in range(100):  # 1 s more at full offered load: 100 KiB get through
        clock.advance(0.01)
        for _ in range(5):
            vif.vnic.send(frame)
        total += len(sent(eth0))
    assert total == 100  # 102,400 B/s / 1024 B
    eth0.receive(frame[6:12] + frame[0:6] + frame[12:])  # the other way is not limited
    eth0.receive(frame[6:12] + frame[0:6] + frame[12:])
    assert len(sent(vif)) == 2


@pytest.mark.parametrize(("make", "msg"), [
    (lambda: VifLocking("sealed"), "locking_mode: 'sealed' is not one of"),
    (lambda: VifLocking("locked", ipv4_allowed=("10.0.0.300",)), "not an IPv4 address"),
    (lambda: VifLocking("locked", ipv6_allowed=("10.0.0.1",)), "not an IPv6 address"),
    (lambda: VifQos(0), "kbps: 0 must be a positive"),
    (lambda: PortGroup("n", default_locking_mode="locked"), "unlocked or disabled"),
])
def test_bad_vif_policy_is_refused(make, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        make()


def test_ns_is_not_an_na() -> None:
    _, vif, eth0 = bridge(LOCK)
    vif.vnic.send(bytes(Ether(dst=PEER, src=MAC) / IPv6(src="2001:db8::6", dst="ff02::1") /
                        ICMPv6ND_NS(tgt="2001:db8::5")))
    assert sent(eth0) == [] and vif.counters.drops == {"vif-locked": 1}
