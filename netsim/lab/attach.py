"""Real guests on emulated ports: vNICs wired to Linux network namespaces, TAP devices and
existing interfaces.

A vNIC with `attach:` in the topology is not served by the built-in guest stack; its frames go
to and come from a real Linux interface instead, so real programs (ping, iperf3, tcpdump, a QEMU
guest) run on the emulated vSwitch with everything it does — VLAN isolation, VST tagging toward
the uplinks, VGT, promiscuous mode, forged-transmit checks, MAC address changes (a namespace
guest's `ip link set eth0 address ...` is followed through netlink into the vNIC's effective
MAC), shaping, migration between hosts:

- `attach: netns` — hvsim creates the namespace `hv-LAB-VM` and a veth pair; the far end is the
  guest's NIC inside it (`eth0`, `eth1`, ... with the vNIC's MAC, IP, the VM's gateway and
  routes; `ethN.VID` for a guest that tags its frames on a VGT port group). Run programs there
  with `hvsim exec LAB VM -- CMD` or `ip netns exec hv-LAB-VM CMD`.
- `attach: {tap: NAME}` — a persistent TAP device NAME (made if missing) for
  `qemu ... -netdev tap,ifname=NAME,script=no`.
- `attach: {iface: NAME}` — an existing interface (a veth end of a container, ...).

The host side of each attachment is read and written through an AF_PACKET socket on the event
loop, in batches. VLAN tags the kernel took off into packet metadata (veth VLAN offload) are put
back from `PACKET_AUXDATA`, as libpcap does. The namespace side has TCP segmentation and
checksum offload turned off (`ethtool -K`), so every frame is a real, complete Ethernet frame.

Everything hvsim creates carries the lab's name (the namespace) or a name derived from it (veth
`hvHASH...`, with the alias `hvsim LAB VM ethN`), and is recorded in a state file
(`/run/hvsim/LAB.json`) before it is made. Leaving the lab removes it all; a lab killed with
SIGKILL is cleaned by its next start, which reports what it removed. Root and Linux only.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netsim.dataplane.port import VNic
from netsim.errors import TopologyError
from netsim.lab.topology import Topology, VifSpec, VmSpec
from netsim.wire.frame import mac_to_str

log = logging.getLogger(__name__)

#: where each lab records what it made (tmpfs: gone at reboot, like the namespaces themselves)
STATE_DIR = Path(os.environ.get("HVSIM_STATE_DIR", "/run/hvsim"))

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
_AUX = struct.Struct("IIIHHHH")
_AUX_SPACE = socket.CMSG_SPACE(_AUX.size)
#: frames taken per wake-up of a socket before yielding to the rest of the fabric
RX_BATCH = 64
_MAX_FRAME = 65536


class AttachError(TopologyError):
    """An attachment could not be made (not root, a name taken, an `ip` command failed)."""


def netns_name(lab: str, vm: str) -> str:
    """The namespace of VM `vm` of lab `lab`: `hv-LAB-VM`."""
    return f"hv-{lab}-{vm}"


def host_ifname(lab: str, vm: str, index: int) -> str:
    """The host end of a VM's veth (15 characters at most, so a hash of lab and VM)."""
    digest = hashlib.sha1(f"{lab}/{vm}".encode()).hexdigest()[:8]
    return f"hv{digest}n{index}"


def uses_attachments(topo: Topology) -> bool:
    """True when some vNIC of `topo` is wired to a real interface."""
    return any(f.attach is not None for f in topo.vifs)


def require_root_linux() -> None:
    """Raise a one-line AttachError unless this is Linux and we are root."""
    if not sys.platform.startswith("linux"):
        raise AttachError(f"attached vNICs (attach: netns/tap/iface) need Linux; this is "
                          f"{sys.platform}")
    if os.geteuid() != 0:
        raise AttachError("attached vNICs (attach: netns/tap/iface) need root (network "
                          "namespaces, veth and AF_PACKET sockets)")
    for tool in ("ip", "ethtool"):
        if shutil.which(tool) is None:
            raise AttachError(f"attached vNICs need the `{tool}` command (Debian: "
                              f"{'iproute2' if tool == 'ip' else 'ethtool'})")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=30)
    if check and r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise AttachError(f"{' '.join(args)}: {msg[-1] if msg else f'exit {r.returncode}'}")
    return r


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


# --- what a lab made, on disk ---------------------------------------------------------------

@dataclass
class Made:
    """Namespaces and links a lab created (and so must remove)."""

    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        """True when nothing is recorded."""
        return not self.netns and not self.links


class StateFile:
    """`STATE_DIR/LAB.json`: the owner's pid and what it made, written before each creation."""

    def __init__(self, lab: str, directory: Path | None = None) -> None:
        self.lab = lab
        self.path = (directory or STATE_DIR) / f"{lab}.json"

    def read(self) -> tuple[int | None, Made] | None:
        """(pid, made) from the file, or None if there is none."""
        try:
            data = json.loads(self.path.read_text())
            return data.get("pid"), Made(list(data.get("netns", [])), list(data.get("links", [])))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as exc:
            raise AttachError(f"{self.path}: unreadable state file ({exc}); remove it after "
                              f"checking `ip netns` and `ip link`") from exc

    def write(self, made: Made) -> None:
        """Record `made` (atomically) with this process as the owner."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"lab": self.lab, "pid": os.getpid(), "netns": made.netns,
                                   "links": made.links}))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        """Delete the file (nothing left to clean)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _alive(pid: int | None) -> bool:
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_made(made: Made) -> list[str]:
    """Delete every recorded link and namespace that still exists; returns what was removed."""
    removed = []
    for link in made.links:
        if _link_exists(link) and _run("ip", "link", "del", link, check=False).returncode == 0:
            removed.append(link)
    for ns in made.netns:
        if _netns_exists(ns) and _run("ip", "netns", "del", ns, check=False).returncode == 0:
            removed.append(f"netns {ns}")
    return removed


def clean_leftovers(lab: str, directory: Path | None = None) -> list[str]:
    """Remove what an earlier run of `lab` left behind (killed before it could clean up).
    Refuses when that run is still alive."""
    state = StateFile(lab, directory)
    found = state.read()
    if found is None:
        return []
    pid, made = found
    if _alive(pid):
        raise AttachError(f"lab {lab} is already running (pid {pid}, state file {state.path})")
    removed = remove_made(made)
    state.remove()
    return removed


# --- the data path ----------------------------------------------------------------------------

@dataclass
class PumpCounters:
    """Frames moved by one attachment, and why any were dropped."""

    rx_frames: int = 0          # from the real interface into the vSwitch
    tx_frames: int = 0          # from the vSwitch out to the real interface
    drops: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count `n` frames dropped for `reason`."""
        self.drops[reason] = self.drops.get(reason, 0) + n


class PacketPump:
    """Moves frames both ways between a vNIC and a Linux interface through AF_PACKET."""

    def __init__(self, ifname: str, vnic: VNic | None = None) -> None:
        self.vnic: VNic = vnic  # type: ignore[assignment]  # set by Attachments.bind
        self.ifname = ifname
        self.counters = PumpCounters()
        self.reading = False
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        """Bind the socket (before any frame can flow, so nothing from other interfaces gets
        in: the socket starts with protocol 0 and binds with ETH_P_ALL)."""
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            with contextlib.suppress(OSError):       # Linux ≥ 4.20
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            for opt, size in ((socket.SO_RCVBUF, 4 << 20), (socket.SO_SNDBUF, 4 << 20)):
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, opt, size)
            s.bind((self.ifname, ETH_P_ALL))
            ifindex = socket.if_nametoindex(self.ifname)
            s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                         struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b""))
            s.setblocking(False)
        except OSError as exc:
            s.close()
            raise AttachError(f"{self.ifname}: cannot open an AF_PACKET socket: "
                              f"{exc.strerror or exc}") from exc
        self._sock = s

    def start(self) -> None:
        """Start moving frames (inside the running loop)."""
        if self._sock is None:
            self.open()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._readable)  # type: ignore[union-attr]
        self.reading = True
        self._task = self._loop.create_task(self._transmit(), name=f"attach {self.ifname}")

    async def stop(self) -> None:
        """Stop and close the socket."""
        if self._loop is not None and self._sock is not None and self.reading:
            self._loop.remove_reader(self._sock.fileno())
        self.reading = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        batch: list[bytes] = []
        for _ in range(RX_BATCH):
            try:
                data, anc, flags, _addr = sock.recvmsg(_MAX_FRAME, _AUX_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.counters.drop(f"rx-{errno.errorcode.get(exc.errno or 0, exc.errno)}")
                if exc.errno in (errno.ENODEV, errno.ENXIO):   # the interface is gone
                    log.warning("attach %s: interface gone; no longer reading it", self.ifname)
                    self.reading = False
                    if self._loop is not None:
                        self._loop.remove_reader(sock.fileno())
                break
            if flags & socket.MSG_TRUNC:
                self.counters.drop("rx-oversize")
                continue
            for level, kind, raw in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(raw) >= _AUX.size:
                    status, _l, _s, _m, _n, tci, tpid = _AUX.unpack_from(raw)
                    if status & TP_STATUS_VLAN_VALID:
                        if not status & TP_STATUS_VLAN_TPID_VALID:
                            tpid = 0x8100
                        data = data[:12] + struct.pack(">HH", tpid, tci) + data[12:]
            if len(data) >= 14:
                batch.append(data)
        if batch:
            self.counters.rx_frames += len(batch)
            if len(batch) == 1:
                self.vnic.send(batch[0])
            else:
                self.vnic.send_many(batch)

    async def _transmit(self) -> None:
        sock = self._sock
        assert sock is not None
        recv_batch = self.vnic.recv_batch
        c = self.counters
        while True:
            for frame in await recv_batch():
                try:
                    sock.send(frame)
                    c.tx_frames += 1
                except (BlockingIOError, InterruptedError):
                    c.drop("tx-busy")             # the kernel's queue is full: tail drop
                except OSError as exc:         # ENETDOWN, EMSGSIZE, ENOBUFS, ...
                    c.drop(f"tx-{errno.errorcode.get(exc.errno or 0, exc.errno)}")


CLONE_NEWNET = 0x40000000
RTMGRP_LINK = 1
RTM_NEWLINK = 16
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_RTA = struct.Struct("=HH")


def netlink_socket_in(ns: str) -> socket.socket:
    """A NETLINK_ROUTE socket living in namespace `ns`, subscribed to link changes (made in a
    short-lived thread that enters the namespace; the socket stays there)."""
    out: dict[str, Any] = {}

    def enter_and_open() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.bind((0, RTMGRP_LINK))
            s.setblocking(False)
            out["sock"] = s
        except OSError as exc:
            out["error"] = exc

    t = threading.Thread(target=enter_and_open, name=f"netns {ns}")
    t.start()
    t.join()
    if "error" in out:
        raise AttachError(f"{ns}: cannot watch its interfaces: {out['error']}")
    return out["sock"]


def parse_link_messages(data: bytes) -> list[tuple[str, bytes]]:
    """(interface name, MAC) of every RTM_NEWLINK in a netlink datagram."""
    found = []
    pos = 0
    while pos + _NLMSG.size <= len(data):
        length, mtype, _f, _seq, _pid = _NLMSG.unpack_from(data, pos)
        if length < _NLMSG.size or pos + length > len(data):
            break
        if mtype == RTM_NEWLINK and length >= _NLMSG.size + _IFINFO.size:
            name, mac = None, None
            a = pos + _NLMSG.size + _IFINFO.size
            end = pos + length
            while a + _RTA.size <= end:
                alen, atype = _RTA.unpack_from(data, a)
                if alen < _RTA.size:
                    break
                value = data[a + _RTA.size:a + alen]
                if atype == IFLA_IFNAME:
                    name = value.rstrip(b"\0").decode(errors="replace")
                elif atype == IFLA_ADDRESS and len(value) == 6:
                    mac = value
                a += (alen + 3) & ~3
            if name is not None and mac is not None:
                found.append((name, mac))
        pos += (length + 3) & ~3
    return found


class MacWatcher:
    """Follows the MAC a namespace guest gives its NICs (`ip link set eth0 address ...`) into
    each vNIC's effective MAC, so the port group's MAC-changes policy applies as on vSphere."""

    def __init__(self, ns: str, nics: dict[str, VNic]) -> None:
        self.ns = ns
        self.nics = nics        # name inside the namespace (eth0) -> vNIC
        self.changes: list[tuple[str, str]] = []
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start watching (inside the running loop)."""
        self._sock = netlink_socket_in(self.ns)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:       # ENOBUFS: we fell behind; the next change resyncs
                log.warning("netns %s: link watch: %s", self.ns, exc)
                return
            for name, mac in parse_link_messages(data):
                vnic = self.nics.get(name)
                if vnic is not None and mac != vnic.effective_mac:
                    vnic.set_effective_mac(mac)
                    self.changes.append((name, mac_to_str(mac)))

    def stop(self) -> None:
        """Stop watching."""
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None


# --- the plumbing ---------------------------------------------------------------------------

@dataclass
class Plan:
    """One vNIC's attachment: which interface the pump uses and how it is made."""

    vm: VmSpec
    vif: VifSpec
    ifname: str                 # the host-side interface the AF_PACKET socket binds
    netns: str | None = None    # for attach: netns


class Attachments:
    """Every attachment of a lab: made on `setup`, pumped while running, removed on `teardown`.
    """

    def __init__(self, topo: Topology, *, state_dir: Path | None = None) -> None:
        self.topo = topo
        self.lab = topo.name
        self.state = StateFile(self.lab, state_dir)
        self.made = Made()
        self.pumps: dict[str, PacketPump] = {}       # port name -> pump
        self.watchers: list[MacWatcher] = []
        self.cleaned: list[str] = []                 # leftovers of an earlier run, removed
        self.plans: list[Plan] = []
        for vm in topo.vms:
            for f in vm.vifs:
                if f.attach is None:
                    continue
                if f.attach.kind == "netns":
                    self.plans.append(Plan(vm, f, host_ifname(self.lab, vm.name, f.index),
                                           netns_name(self.lab, vm.name)))
                else:
                    self.plans.append(Plan(vm, f, f.attach.name or ""))
        names = [p.ifname for p in self.plans]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise AttachError(f"{topo.source}: interface {sorted(dup)[0]} is attached to more "
                              f"than one vNIC")

    @property
    def vms(self) -> set[str]:
        """Names of the VMs whose vNICs are attached."""
        return {p.vm.name for p in self.plans}

    # -- make and remove ---------------------------------------------------------------------
    def setup(self) -> None:
        """Clean leftovers of an earlier run, then make every namespace, veth and TAP (blocking;
        call it in a thread). On failure, what was made is removed again."""
        require_root_linux()
        self.cleaned = clean_leftovers(self.lab, self.state.path.parent)
        try:
            for plan in self.plans:
                self._make(plan)
            self.state.write(self.made)
            for plan in self.plans:
                pump = PacketPump(plan.ifname)
                pump.open()
                self.pumps[plan.vif.port] = pump
        except BaseException:
            self.teardown()
            raise

    def _record(self, *, netns: str | None = None, link: str | None = None) -> None:
        if netns:
            self.made.netns.append(netns)
        if link:
            self.made.links.append(link)
        self.state.write(self.made)      # before the thing exists: a crash cannot orphan it

    def _make(self, plan: Plan) -> None:
        kind = plan.vif.attach.kind  # type: ignore[union-attr]
        if kind == "iface":
            if not _link_exists(plan.ifname):
                raise AttachError(f"{self.topo.source}: {plan.vm.name}: no interface "
                                  f"{plan.ifname} to attach")
            _run("ip", "link", "set", plan.ifname, "up")
            return
        if kind == "tap":
            if not _link_exists(plan.ifname):
                self._record(link=plan.ifname)
                _run("ip", "tuntap", "add", "dev", plan.ifname, "mode", "tap")
                _run("ip", "link", "set", plan.ifname, "alias",
                     f"hvsim {self.lab} {plan.vm.name} tap")
            _disable_ipv6(plan.ifname)
            _run("ip", "link", "set", plan.ifname, "up")
            return
        self._make_netns(plan)

    def _make_netns(self, plan: Plan) -> None:
        ns, host = plan.netns, plan.ifname
        assert ns is not None
        vm, f = plan.vm, plan.vif
        if ns not in self.made.netns:
            if _netns_exists(ns):
                raise AttachError(f"network namespace {ns} already exists and is not recorded "
                                  f"as this lab's; remove it (ip netns del {ns}) or rename "
                                  f"the lab")
            self._record(netns=ns)
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            if vm.router:
                _run("ip", "netns", "exec", ns, "sh", "-c",
                     "echo 1 > /proc/sys/net/ipv4/ip_forward")
        if _link_exists(host):
            raise AttachError(f"interface {host} already exists; remove it (ip link del {host})")
        guest = f"eth{f.index}"
        tmp = host[:host.rindex("n")] + f"p{f.index}"     # renamed once inside
        self._record(link=host)
        _run("ip", "link", "add", host, "type", "veth", "peer", "name", tmp)
        _run("ip", "link", "set", host, "alias", f"hvsim {self.lab} {vm.name} {guest}")
        _run("ip", "link", "set", tmp, "netns", ns)
        _run("ip", "-n", ns, "link", "set", tmp, "name", guest)
        _run("ip", "-n", ns, "link", "set", guest, "address", f.mac)
        # complete frames only: no segmentation or checksum offload on the guest's side
        _run("ip", "netns", "exec", ns, "ethtool", "-K", guest, "tx", "off", "tso", "off",
             "gso", "off", check=False)
        _run("ip", "-n", ns, "link", "set", guest, "up")
        dev = guest
        if f.vlan is not None:  # the guest tags (VGT): ethN.VID carries the address
            dev = f"{guest}.{f.vlan}"
            try:
                _run("ip", "-n", ns, "link", "add", "link", guest, "name", dev, "type", "vlan",
                     "id", str(f.vlan))
            except AttachError as exc:
                raise AttachError(f"{vm.name}: cannot make {dev} for the guest's VLAN {f.vlan} "
                                  f"(does this kernel have 802.1Q support, module 8021q?): "
                                  f"{exc}") from exc
            _run("ip", "-n", ns, "link", "set", dev, "up")
        if f.ip is not None:
            _run("ip", "-n", ns, "addr", "add", str(f.ip), "dev", dev)
        _disable_ipv6(host)
        _run("ethtool", "-K", host, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
             check=False)
        _run("ip", "link", "set", host, "up")
        last = max(v.index for v in vm.vifs)
        if f.index == last:   # every address is there: now the routes can point at them
            if vm.gateway is not None:
                _run("ip", "-n", ns, "route", "replace", "default", "via", str(vm.gateway))
            for r in vm.routes:
                _run("ip", "-n", ns, "route", "replace", str(r.to), "via", str(r.via))

    def teardown(self) -> list[str]:
        """Remove everything this run made (idempotent); returns what was removed."""
        for pump in self.pumps.values():
            if pump._sock is not None:
                pump._sock.close()
                pump._sock = None
        removed = remove_made(self.made)
        self.made = Made()
        self.state.remove()
        return removed

    # -- run -----------------------------------------------------------------------------------
    def bind(self, vnics: dict[str, VNic]) -> None:
        """Give each pump the vNIC of its port (port name -> guest side)."""
        for port, pump in self.pumps.items():
            pump.vnic = vnics[port]
        by_ns: dict[str, dict[str, VNic]] = {}
        for plan in self.plans:
            if plan.netns is not None:
                by_ns.setdefault(plan.netns, {})[f"eth{plan.vif.index}"] = vnics[plan.vif.port]
        self.watchers = [MacWatcher(ns, nics) for ns, nics in by_ns.items()]

    def start(self) -> None:
        """Start every pump (inside the running loop)."""
        for pump in self.pumps.values():
            pump.start()
        for w in self.watchers:
            w.start()

    async def stop(self) -> None:
        """Stop every pump."""
        for w in self.watchers:
            w.stop()
        for pump in self.pumps.values():
            await pump.stop()

    def counters(self) -> dict[str, dict[str, Any]]:
        """Per attached port: frames each way and drops."""
        return {port: {"interface": p.ifname, "rx_frames": p.counters.rx_frames,
                       "tx_frames": p.counters.tx_frames, "drops": dict(p.counters.drops)}
                for port, p in self.pumps.items()}


def _disable_ipv6(ifname: str) -> None:
    # our plumbing ends have no business sending router solicitations into the lab
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")


def exec_argv(lab: str, vm: str, command: Iterable[str]) -> list[str]:
    """The argv that runs `command` inside VM `vm` of the running lab `lab`."""
    ns = netns_name(lab, vm)
    if not _netns_exists(ns):
        raise AttachError(f"no namespace {ns}: is lab {lab} running with VM {vm} attached "
                          f"(attach: netns)?")
    cmd = list(command)
    if not cmd:
        raise AttachError("give the command to run after --")
    return ["ip", "netns", "exec", ns, *cmd]
