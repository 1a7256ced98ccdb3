"""MAC moves counted as Open vSwitch counts them: the same frames into a real OVS bridge and
into our physical switch; `ovs-appctl fdb/stats-show` "moved" equals our `moves`.

Each frame goes to its own unknown unicast destination, so OVS translates every one afresh
(an upcall, where it learns) instead of forwarding it by a datapath flow cached for an earlier
frame from the same port and MAC - which would skip learning, and the count, until OVS
revalidates its flows: an artefact of its cache, not of its MAC learning."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.port import Port
from netsim.dataplane.switch import PhysicalSwitch
from netsim.wire import frame as fr

from .ovs import OvsBridge

pytestmark = pytest.mark.interop
HOPPER = bytes.fromhex("020000000a01")  # a MAC that flaps between p1 and p2
STAY = bytes.fromhex("020000000b02")


def test_moved_mac_count_matches_ovs(tmp_path: Path) -> None:
    sends = [(port, fr.ethernet(bytes.fromhex("0200000c00") + bytes([i]), mac, 0x88B5,
                                bytes(46)))
             for i, (port, mac) in enumerate([
                 ("p1", HOPPER), ("p3", STAY), ("p2", HOPPER), ("p2", HOPPER), ("p1", HOPPER),
                 ("p3", STAY), ("p2", HOPPER), ("p1", HOPPER)])]
    with OvsBridge(tmp_path, {"p1": [], "p2": [], "p3": []}) as br:
        br.send_all(sends)
        stats = br._ns("ovs-appctl", "-t", f"{tmp_path}/vswitchd.ctl", "fdb/stats-show",
                       "br0").stdout
    m = re.search(r"moved MAC entries\s*:\s*(\d+)", stats)
    assert m, stats
    clock = ManualClock()
    sw = PhysicalSwitch("core", clock=clock)
    ports = {n: sw.add_port(Port(n)) for n in ("p1", "p2", "p3")}
    for name, f in sends:
        clock.advance(0.01)
        ports[name].receive(f)
    assert sw.mac_table.moves == int(m.group(1)) == 4, stats
    (row,) = sw.mac_flaps.as_list()
    assert row["moves"] == 4 and row["ports"] == ["p1", "p2"]
