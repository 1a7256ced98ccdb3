"""NIC teaming beyond the originating port: hashing, notify switches, failback.

vSphere's `HostNicTeamingPolicy` (vSphere networking guide, "Load Balancing Algorithms"):
- `loadbalance_ip` (route based on IP hash): "the virtual switch takes the last octet of both
  source and destination IP addresses in the packet, puts them through a XOR operation" and
  takes the result modulo the number of uplinks; "for non-IP packets, the virtual switch takes
  two 32-bit binary values from the frame or packet from where the IP address would be
  located" - the same byte offsets, so one formula serves both. Needs an EtherChannel (LAG)
  upstream: without one the physical switch sees the VM's MAC flap between ports.
- `loadbalance_srcmac` (route based on source MAC hash): from the frame's source MAC and the
  number of uplinks - here its last octet modulo the uplink count (our choice of hash).
- `notifySwitches`: after a failover, one RARP (ethertype 0x8035) per affected vNIC, sourced
  from its MAC, leaves by its new uplink so the physical switches relearn it at once.
- `rollingOrder` true = failback off: a recovered uplink takes nothing back; ports stay where
  they failed over to until that uplink fails too.
Pure helpers; the switch (`StandardSwitch`) applies them.
"""
from __future__ import annotations

ETHERTYPE_RARP = 0x8035


def ip_hash_index(inner: bytes, n: int) -> int:
    """The team member (0..n-1) IP hash picks for an untagged frame `inner`: last octet of
    the source IP XOR last octet of the destination IP (bytes 29 and 33: for non-IP frames
    the same offsets), modulo `n`."""
    if len(inner) < 34:
        return 0
    return (inner[29] ^ inner[33]) % n


def src_mac_index(inner: bytes, n: int) -> int:
    """The team member (0..n-1) source MAC hash picks: the source MAC's last octet modulo
    `n`."""
    return inner[11] % n


def rarp_announce(mac: bytes) -> bytes:
    """The RARP request ESXi sends to notify the switches of a vNIC (after a failover or a
    vMotion): broadcast, source = the vNIC's MAC, op 3 (request reverse), padded to 60
    bytes."""
    body = (
        (1).to_bytes(2, "big")  # hardware: Ethernet
        + (0x0800).to_bytes(2, "big")  # protocol: IPv4
        + bytes((6, 4))
        + (3).to_bytes(2, "big")  # op 3: request reverse
        + mac + bytes(4) + mac + bytes(4)
    )
    frame = b"\xff" * 6 + mac + ETHERTYPE_RARP.to_bytes(2, "big") + body
    return frame + bytes(60 - len(frame))
