"""A private Open vSwitch bridge (userspace datapath) in a network namespace of our own.

`OvsBridge(tmp, ports)` starts ovsdb-server and ovs-vswitchd with their database, sockets and
logs in `tmp`, inside a fresh netns, and plugs one veth pair per port into bridge `br0` with
`datapath_type=netdev` (no kernel module needed). `send_all([(port, frame), ...])` sends each
frame into the bridge from the outside end of `port` and returns what came out of every other
port. Everything it started is stopped, by pid, and the namespace deleted on exit.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

PROBE = Path(__file__).with_name("ovs_probe.py")


def _running(pid: int) -> bool:
    """Whether `pid` is alive (a zombie, waiting for its reaper, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class OvsBridge:
    """A bridge `br0` whose ports are configured with `ovs-vsctl set port` arguments."""

    def __init__(self, tmp: Path, ports: dict[str, list[str]]) -> None:
        self.tmp = tmp
        self.ports = ports
        self.ns = f"hvsimovs{os.getpid()}"
        self.version = ""

    def _ns(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        env = dict(os.environ, OVS_RUNDIR=str(self.tmp), OVS_LOGDIR=str(self.tmp),
                   OVS_DBDIR=str(self.tmp), OVS_SYSCONFDIR=str(self.tmp))
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], check=True,
                              capture_output=True, text=True, env=env, timeout=60, **kw)

    def vsctl(self, *args: str) -> str:
        """Run ovs-vsctl against this bridge's database."""
        return self._ns("ovs-vsctl", f"--db=unix:{self.tmp}/db.sock", "--timeout=20",
                        *args).stdout.strip()

    def __enter__(self) -> OvsBridge:
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        try:
            t = self.tmp
            self._ns("ip", "link", "set", "lo", "up")
            self._ns("ovsdb-tool", "create", f"{t}/conf.db",
                     "/usr/share/openvswitch/vswitch.ovsschema")
            self._ns("ovsdb-server", f"{t}/conf.db", f"--remote=punix:{t}/db.sock",
                     f"--pidfile={t}/ovsdb.pid", "--detach", f"--log-file={t}/ovsdb.log",
                     f"--unixctl={t}/ovsdb.ctl")
            self.vsctl("--no-wait", "init")
            self._ns("ovs-vswitchd", f"unix:{t}/db.sock", f"--pidfile={t}/vswitchd.pid",
                     "--detach", f"--log-file={t}/vswitchd.log", f"--unixctl={t}/vswitchd.ctl")
            self.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
            for name, settings in self.ports.items():
                o, h = f"o{name}", f"h{name}"
                self._ns("ip", "link", "add", o, "type", "veth", "peer", "name", h)
                for dev in (o, h):
                    self._ns("sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
                    self._ns("ip", "link", "set", dev, "up")
                self.vsctl("add-port", "br0", o)
                if settings:
                    self.vsctl("set", "port", o, *settings)
            self.version = self.vsctl("get", "open_vswitch", ".", "ovs_version").strip('"')
            if self.version in ("", "[]"):
                self.version = self._ns("ovs-vswitchd", "--version").stdout.split()[-1]
            for name in self.ports:  # vswitchd has opened every port before the first frame
                self.vsctl("wait-until", "Interface", f"o{name}", "link_state=up")
        except BaseException:
            self.close()
            raise
        return self

    def send_all(self, sends: list[tuple[str, bytes]],
                 by_source: bool = False) -> list[dict[str, list[bytes]]]:
        """Send each (port, frame) in turn; per send, the frames that left each other port.
        `by_source`: every frame has its own source MAC; send them all at once and tell what
        left by that MAC (see ovs_probe)."""
        req = {"ports": [f"h{p}" for p in self.ports], "by_source": by_source,
               "sends": [[f"h{p}", f.hex()] for p, f in sends]}
        out = self._ns(sys.executable, str(PROBE), input=json.dumps(req)).stdout
        return [{k[1:]: [bytes.fromhex(x) for x in v] for k, v in got.items()}
                for got in json.loads(out)]

    def close(self) -> None:
        """Stop the daemons we started (by their pid files) and delete the namespace."""
        pids = []
        for pidfile in ("vswitchd.pid", "ovsdb.pid"):
            p = self.tmp / pidfile
            if p.exists():
                try:
                    pid = int(p.read_text().strip())
                    os.kill(pid, signal.SIGTERM)
                    pids.append(pid)
                except (ProcessLookupError, ValueError):
                    pass
        deadline = time.monotonic() + 20  # they have left before their namespace goes
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _running(pid)]
            time.sleep(0.02)
        subprocess.run(["ip", "netns", "delete", self.ns], check=False, capture_output=True)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
