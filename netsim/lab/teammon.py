"""The periodic tasks a NIC team may need on a fabric: beacon probing (failure detection
`beacon`) and load-based teaming (`load-based`), started for a switch whose teaming (or a port
group's override) asks for them, stopped when a reconfiguration (a vDS config push) drops
them."""
from __future__ import annotations

from netsim.dataplane.beacon import BeaconProbe
from netsim.dataplane.lbt import LoadBasedTeaming
from netsim.dataplane.policy import FailureDetection, LoadBalancing, TeamingPolicy
from netsim.dataplane.switch import StandardSwitch
from netsim.lab.fabric import Fabric


def _policies(sw: StandardSwitch) -> list[TeamingPolicy]:
    return [sw.teaming, *(g.teaming for g in sw.port_groups.values() if g.teaming)]


def start_team_monitors(fab: Fabric, sw: StandardSwitch) -> None:
    """Make `sw`'s beacon prober and LBT checker match its policies: spawned on `fab` when
    wanted and not running, stopped when running and no longer wanted. They are kept as
    `sw.beacon_probe` / `sw.lbt` (None when not used)."""
    policies = _policies(sw)
    want_probe = len(sw.uplinks) > 1 and any(
        p.failure_detection is FailureDetection.BEACON for p in policies)
    want_lbt = any(p.load_balancing is LoadBalancing.LOAD_BASED for p in policies)
    if want_probe and sw.beacon_probe is None:
        sw.beacon_probe = BeaconProbe(sw)
        fab.spawn(sw.beacon_probe.run(), name=f"beacon probing {sw.name}")
    elif not want_probe and sw.beacon_probe is not None:
        sw.beacon_probe.close()
        sw.beacon_probe = None
    if want_lbt and sw.lbt is None:
        sw.lbt = LoadBasedTeaming(sw)
        fab.spawn(sw.lbt.run(), name=f"load-based teaming {sw.name}")
    elif not want_lbt and sw.lbt is not None:
        sw.lbt.close()
        sw.lbt = None
