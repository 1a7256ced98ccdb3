"""hvsim's network half: frames, ports, switches, capture, topologies, scenarios, the vDS.

The public API, in one import (`from netsim import Lab, load_topology, VlanPolicy`). Names are
loaded on first use, so `import netsim` stays cheap and lower layers never import this module.
Layers (DESIGN.md section 1; `tests/test_layers.py` enforces them): `wire` (pure codecs) <
`dataplane` < `lab` < `vds` < `scenario` < `live` < `cli`.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # wire
    "from_scapy": "netsim.wire.frame",
    "to_scapy": "netsim.wire.frame",
    "build_frame": "netsim.wire.framespec",
    "compile_filter": "netsim.wire.filters",
    "PcapngWriter": "netsim.wire.capture",
    # data plane
    "Port": "netsim.dataplane.port",
    "VNic": "netsim.dataplane.port",
    "VmPort": "netsim.dataplane.port",
    "Vif": "netsim.dataplane.port",
    "Pif": "netsim.dataplane.port",
    "VlanPif": "netsim.dataplane.port",
    "PhysicalSwitch": "netsim.dataplane.switch",
    "StandardSwitch": "netsim.dataplane.switch",
    "PortGroup": "netsim.dataplane.switch",
    "VlanPolicy": "netsim.dataplane.policy",
    "VlanMode": "netsim.dataplane.policy",
    "SecurityPolicy": "netsim.dataplane.policy",
    "ShapingPolicy": "netsim.dataplane.policy",
    "TeamingPolicy": "netsim.dataplane.policy",
    "LoadBalancing": "netsim.dataplane.policy",
    "Guest": "netsim.dataplane.guest",
    "VirtualClock": "netsim.dataplane.vclock",
    "PacedClock": "netsim.dataplane.vclock",
    "Impairment": "netsim.dataplane.impair",
    "RandomLoss": "netsim.dataplane.impair",
    "GilbertElliott": "netsim.dataplane.impair",
    "FourState": "netsim.dataplane.impair",
    # lab
    "Fabric": "netsim.lab.fabric",
    "Host": "netsim.lab.fabric",
    "Vm": "netsim.lab.fabric",
    "Link": "netsim.lab.fabric",
    "Lab": "netsim.lab.lab",
    "build_fabric": "netsim.lab.lab",
    "Topology": "netsim.lab.topology",
    "TopologyBuilder": "netsim.lab.topology",
    "load_topology": "netsim.lab.topology",
    "parse_topology": "netsim.lab.topology",
    "to_graph": "netsim.lab.topology",
    "Trace": "netsim.lab.trace",
    "trace_frame": "netsim.lab.trace",
    # vds
    "ProxySwitch": "netsim.vds.dswitch",
    "VdsConfig": "netsim.vds.vdsconfig",
    "HostAgent": "netsim.vds.host",
    # scenario
    "Scenario": "netsim.scenario.model",
    "load_scenario": "netsim.scenario.model",
    "parse_scenario": "netsim.scenario.model",
    "run_scenario": "netsim.scenario.runner",
    "Report": "netsim.scenario.runner",
    # live
    "DropCapture": "netsim.live.drops",
    "CaptureStream": "netsim.live.stream",
    "LiveServer": "netsim.live.server",
    # errors and clocks (ground floor)
    "NetsimError": "netsim.errors",
    "FrameError": "netsim.errors",
    "TopologyError": "netsim.errors",
    "ConfigError": "netsim.errors",
    "ScenarioError": "netsim.errors",
    "CaptureError": "netsim.errors",
    "Clock": "netsim.clock",
    "RealClock": "netsim.clock",
    "ManualClock": "netsim.clock",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'netsim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from netsim.clock import Clock, ManualClock, RealClock
    from netsim.dataplane.guest import Guest
    from netsim.dataplane.impair import FourState, GilbertElliott, Impairment, RandomLoss
    from netsim.dataplane.policy import (
        LoadBalancing,
        SecurityPolicy,
        ShapingPolicy,
        TeamingPolicy,
        VlanMode,
        VlanPolicy,
    )
    from netsim.dataplane.port import Pif, Port, Vif, VlanPif, VmPort, VNic
    from netsim.dataplane.switch import PhysicalSwitch, PortGroup, StandardSwitch
    from netsim.dataplane.vclock import PacedClock, VirtualClock
    from netsim.errors import (
        CaptureError,
        ConfigError,
        FrameError,
        NetsimError,
        ScenarioError,
        TopologyError,
    )
    from netsim.lab.fabric import Fabric, Host, Link, Vm
    from netsim.lab.lab import Lab, build_fabric
    from netsim.lab.topology import (
        Topology,
        TopologyBuilder,
        load_topology,
        parse_topology,
        to_graph,
    )
    from netsim.lab.trace import Trace, trace_frame
    from netsim.live.drops import DropCapture
    from netsim.live.server import LiveServer
    from netsim.live.stream import CaptureStream
    from netsim.scenario.model import Scenario, load_scenario, parse_scenario
    from netsim.scenario.runner import Report, run_scenario
    from netsim.vds.dswitch import ProxySwitch
    from netsim.vds.host import HostAgent
    from netsim.vds.vdsconfig import VdsConfig
    from netsim.wire.capture import PcapngWriter
    from netsim.wire.filters import compile_filter
    from netsim.wire.frame import from_scapy, to_scapy
    from netsim.wire.framespec import build_frame
