"""The periodic tasks a NIC team may need on a fabric: beacon probing (failure detection
`beacon`) and load-based teaming (`load-based`), started for a switch whose teaming (or a port
group's override) asks for them."""
from __future__ import annotations

from netsim.dataplane.beacon import BeaconProbe
from netsim.dataplane.lbt import LoadBasedTeaming
from netsim.dataplane.policy import FailureDetection, LoadBalancing, TeamingPolicy
from netsim.dataplane.switch import StandardSwitch
from netsim.lab.fabric import Fabric


def _policies(sw: StandardSwitch) -> list[TeamingPolicy]:
    return [sw.teaming, *(g.teaming for g in sw.port_groups.values() if g.teaming)]


def start_team_monitors(fab: Fabric, sw: StandardSwitch) -> None:
    """Spawn `sw`'s beacon prober and LBT checker on `fab` when its policies use them; they are
    kept as `sw.beacon_probe` / `sw.lbt` (None when not used)."""
    policies = _policies(sw)
    probe = lbt = None
    if len(sw.uplinks) > 1 and any(
            p.failure_detection is FailureDetection.BEACON for p in policies):
        probe = BeaconProbe(sw)
        fab.spawn(probe.run(), name=f"beacon probing {sw.name}")
    if any(p.load_balancing is LoadBalancing.LOAD_BASED for p in policies):
        lbt = LoadBasedTeaming(sw)
        fab.spawn(lbt.run(), name=f"load-based teaming {sw.name}")
    sw.beacon_probe = probe
    sw.lbt = lbt
