"""pytest plugin: test a VLAN plan in ten lines, on a virtual clock.

Installed with hvsim (entry point `pytest11`), it offers three fixtures:

- `fabric` — the running fabric of a topology, on a `VirtualClock`. Choose the topology with a
  marker `@pytest.mark.hvsim(topology="topologies/xen-vlans.yaml")` (paths relative to the
  rootdir), the ini option `hvsim_topology`, or by overriding the `hvsim_topology` fixture to
  return a path or a builder `fn(clock) -> Fabric`. `fabric["vif1.0"]` looks things up;
  `fabric.received("vif2.0", "udp")` returns the Scapy packets the switch sent out of a port.
- `send(port, frame, count=1, interval=None)` — a frame from a port into its switch: a Scapy
  packet, raw bytes, or a declarative spec dict (`{"eth": {"src": ...}, "vlan": 5, ...}`).
- `expect` — `await expect.arrives(port, match, within="50ms")` (returns the matching Scapy
  packets), `await expect.never(port, match, within="50ms")`, `await expect.counter(port,
  name)` (or without `await`: the value now),
  `await expect.ping("vm1", "vm2")` / `succeeds=False`.

```python
import pytest
from scapy.all import IP, UDP, Ether

@pytest.mark.hvsim(topology="topologies/xen-vlans.yaml")
async def test_vlan5_stays_in_vlan5(send, expect):
    await send("vif1.0", Ether(src="00:16:3e:00:05:01", dst="ff:ff:ff:ff:ff:ff")
               / IP(src="10.0.5.1", dst="10.0.5.255") / UDP(dport=9))
    [pkt] = await expect.arrives("vif2.0", "udp dst port 9")
    assert pkt[IP].src == "10.0.5.1"
    await expect.never("vif3.0", "udp dst port 9")
```

Frames are matched with the filter language of `netsim.wire.filters` on raw bytes; Scapy objects are
built only for what a test gets back.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from netsim.dataplane.vclock import VirtualClock
from netsim.errors import ScenarioError
from netsim.scenario.model import COUNTER_NAMES, parse_duration
from netsim.scenario.runner import PortRecorder
from netsim.wire.filters import compile_filter
from netsim.wire.framespec import parse_spec

DEFAULT_WAIT = "50ms"
_POLL_NS = 1_000_000


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Declare the `hvsim` marker; keep pytest-asyncio quiet about a default we do not use."""
    config.addinivalue_line(
        "markers", "hvsim(topology=PATH | builder=FN): the topology the `fabric` fixture runs")
    _keep_asyncio_fixture_loop_scope(config)


def _keep_asyncio_fixture_loop_scope(config: pytest.Config) -> None:
    """pytest-asyncio warns (PytestDeprecationWarning) on every run whose configuration leaves
    `asyncio_default_fixture_loop_scope` unset — in a user's project that only installed hvsim,
    that is every run. Our fixtures pin their loop scope, so the setting concerns only the
    project's own async fixtures; when it is unset we set the value pytest-asyncio names for
    "keep the current behaviour" (`fixture-scope`): nothing changes, nothing warns. A value the
    project sets (ini, `-o`) is left alone."""
    name = "asyncio_default_fixture_loop_scope"
    try:
        from pytest_asyncio import plugin as asyncio_plugin
        if config.getini(name):
            return
    except (ImportError, ValueError):
        return
    keep = getattr(asyncio_plugin, "_MATCH_FIXTURE_SCOPE", None)   # pytest-asyncio >= 1.0
    cache = getattr(config, "_inicache", None)
    if keep and isinstance(cache, dict):
        cache[name] = keep


def pytest_addoption(parser: pytest.Parser) -> None:
    """The `hvsim_topology` ini option."""
    parser.addini("hvsim_topology", "default topology file for the hvsim `fabric` fixture",
                  default="")


def _ns(value: str | float | int) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None


class LiveFabric:
    """A running fabric under test: lookups, received frames, time."""

    def __init__(self, fabric: Any, clock: VirtualClock, lab: Any = None) -> None:
        self.fabric = fabric
        self.clock = clock
        self.lab = lab
        self.recorder = PortRecorder(clock, clock.now_ns())
        for port in fabric.ports():
            self.recorder.watch(port.path, port)

    def __getitem__(self, name: str) -> Any:
        return self.fabric[name]

    def port(self, name: str) -> Any:
        """The port called `name` (a VM name means its first NIC)."""
        from netsim.lab.fabric import Vm
        obj = self.fabric[name]
        return obj.ports[0] if isinstance(obj, Vm) else obj

    def frames(self, port: str, match: str = "") -> list[bytes]:
        """Raw frames the switch has sent out of `port` so far, optionally filtered."""
        flt = compile_filter(match)
        return [f for _, f in self.recorder.frames[self.port(port).path] if flt(f)]

    def received(self, port: str, match: str = "") -> list[Any]:
        """Like `frames`, as Scapy packets."""
        from netsim.wire.frame import to_scapy
        return [to_scapy(f) for f in self.frames(port, match)]

    async def run_for(self, seconds: float | str) -> None:
        """Let simulated time pass."""
        await self.clock.sleep_until(self.clock.now_ns() + _ns(seconds))

    async def settle(self) -> None:
        """Wait until every frame in flight has landed (time stands still)."""
        await self.clock.settle()
        self.fabric.check()


class Sender:
    """The `send` fixture: `await send(port, frame, count=1, interval=None)`."""

    def __init__(self, live: LiveFabric) -> None:
        self.live = live

    async def __call__(self, port: str, frame: Any, *, count: int = 1,
                       interval: float | str | None = None) -> bytes:
        raw = to_bytes(frame)
        p = self.live.port(port)
        gap = _ns(interval) if interval is not None else 0
        for k in range(count):
            if k and gap:
                await self.live.run_for(gap / 1e9)
            p.receive(raw)
        await self.live.settle()
        return raw


def to_bytes(frame: Any) -> bytes:
    """A Scapy packet, bytes, or a declarative spec mapping → frame bytes."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return bytes(frame)
    if isinstance(frame, Mapping):
        return parse_spec(frame).build()
    from netsim.wire.frame import from_scapy
    return from_scapy(frame)


class Expect:
    """The `expect` fixture (see the module docstring)."""

    def __init__(self, live: LiveFabric) -> None:
        self.live = live

    async def arrives(self, port: str, match: str = "", *, within: float | str = DEFAULT_WAIT,
                      count: int | None = None) -> list[Any]:
        """Wait up to `within` for frames matching `match` out of `port` (since the test began);
        assert there are `count` of them (or at least one); return them as Scapy packets."""
        live = self.live
        deadline = live.clock.now_ns() + _ns(within)
        while True:
            await live.settle()
            got = live.frames(port, match)
            if (count is None and got) or (count is not None and len(got) >= count):
                break
            if live.clock.now_ns() >= deadline:
                break
            await live.clock.sleep_until(min(deadline, live.clock.now_ns() + _POLL_NS))
        want = "at least 1" if count is None else str(count)
        assert (len(got) == count) if count is not None else got, (
            f"{port}: expected {want} frame(s) matching {match!r} within {within}, got "
            f"{len(got)} ({len(live.frames(port))} frame(s) of any kind left through {port})")
        from netsim.wire.frame import to_scapy
        return [to_scapy(f) for f in got]

    async def never(self, port: str, match: str = "", *, within: float | str = DEFAULT_WAIT
                    ) -> None:
        """Let `within` pass and assert no frame matching `match` came out of `port`."""
        await self.live.run_for(within)
        await self.live.settle()
        got = self.live.frames(port, match)
        assert not got, (f"{port}: expected no frame matching {match!r}, got {len(got)}: "
                         f"{[to_summary(f) for f in got[:3]]}")

    def counter(self, port: str, name: str) -> CounterValue:
        """A port counter: rx_frames, tx_bytes, drops, drops.<reason>... Use it as a number now
        (`expect.counter(p, n) == 3`) or await it like the other expectations (`await
        expect.counter(p, n)`), which first lets every frame in flight land."""
        def read() -> int:
            c = self.live.port(port).counters
            if name == "drops":
                return int(c.dropped)
            if name.startswith("drops."):
                return int(c.drops.get(name[6:], 0))
            if name not in COUNTER_NAMES:
                raise ScenarioError(f"unknown counter {name!r} (use {', '.join(COUNTER_NAMES)} "
                                    "or drops.<reason>)")
            return int(getattr(c, name))

        return CounterValue(read(), read, self.live)

    async def ping(self, src: str, dst: str, *, succeeds: bool = True,
                   wait: float | str = "1s") -> Any:
        """Ping from VM `src` to `dst` (a VM or an address); assert it is (not) answered."""
        lab = self.live.lab
        if lab is None:
            raise ScenarioError("expect.ping needs a topology file (VMs with addresses)")
        import ipaddress
        try:
            target = ipaddress.IPv4Address(dst)
        except ValueError:
            target = lab.address_of(dst, toward=src)
        result = await lab.agents[src].ping(target, wait_s=_ns(wait) / 1e9)
        assert result.replied == succeeds, (
            f"ping {src} -> {dst} ({target}): {'answered' if result.replied else 'no answer'}, "
            f"expected {'an answer' if succeeds else 'none'}")
        return result


class CounterValue(int):
    """A counter's value now, which can also be awaited for its value once the fabric has
    settled (what `expect.counter` returns)."""

    def __new__(cls, value: int, read: Callable[[], int], live: LiveFabric) -> CounterValue:
        obj = super().__new__(cls, value)
        obj._read = read  # type: ignore[attr-defined]
        obj._live = live  # type: ignore[attr-defined]
        return obj

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._settled().__await__()

    async def _settled(self) -> int:
        await self._live.settle()  # type: ignore[attr-defined]
        return int(self._read())   # type: ignore[attr-defined]


def to_summary(frame: bytes) -> str:
    """One line about a frame, for assertion messages."""
    from netsim.wire.frame import to_scapy
    return str(to_scapy(frame).summary())


@pytest.fixture
def hvsim_topology(request: pytest.FixtureRequest) -> str | Path | Callable[[Any], Any]:
    """What `fabric` runs: a topology path or a builder `fn(clock) -> Fabric` (override me)."""
    marker = request.node.get_closest_marker("hvsim")
    if marker is not None:
        if "builder" in marker.kwargs:
            return marker.kwargs["builder"]
        if "topology" in marker.kwargs:
            return marker.kwargs["topology"]
        if marker.args:
            return marker.args[0]
    ini = request.config.getini("hvsim_topology")
    if ini:
        return str(ini)
    raise pytest.UsageError("hvsim: say which topology the `fabric` fixture runs: "
                            "@pytest.mark.hvsim(topology=...), ini hvsim_topology, or override "
                            "the hvsim_topology fixture")


@pytest.fixture
def hvsim_clock() -> VirtualClock:
    """The virtual clock the fabric runs on."""
    return VirtualClock()


@pytest_asyncio.fixture(loop_scope="function")
async def fabric(request: pytest.FixtureRequest, hvsim_topology: Any,
                 hvsim_clock: VirtualClock) -> AsyncIterator[LiveFabric]:
    """The running fabric (see the module docstring)."""
    lab = None
    if callable(hvsim_topology):
        fab = hvsim_topology(hvsim_clock)
        from netsim.dataplane.port import VmPort
        for p in list(fab.ports()):
            if isinstance(p, VmPort):
                fab.on_receive(p.vnic, _discard)
        ctx = fab
    else:
        path = Path(hvsim_topology)
        if not path.is_absolute():
            path = Path(str(request.config.rootpath)) / path
        from netsim.lab.lab import Lab
        from netsim.lab.topology import load_topology
        lab = Lab(load_topology(path), clock=hvsim_clock)
        fab = lab.fabric
        ctx = lab
    live = LiveFabric(fab, hvsim_clock, lab)
    async with ctx:
        yield live


@pytest.fixture
def send(fabric: LiveFabric) -> Sender:
    """`await send(port, frame, count=1, interval=None)`."""
    return Sender(fabric)


@pytest.fixture
def expect(fabric: LiveFabric) -> Expect:
    """`await expect.arrives(...)`, `expect.never(...)`, `expect.counter(...)`, `expect.ping`."""
    return Expect(fabric)


def _discard(frame: bytes) -> None:
    """A guest that ignores what it receives."""
