"""Dropped frames, with their reason: every frame a switch or port of a fabric drops, written to
a pcapng whose interface is the port where the frame died and whose packet comment says why
(`dropped at vif2.0: not-promiscuous`; the reason alone in a custom option), so Wireshark's
`frame.comment` column explains each loss. No kernel-interface capture can see these frames.

How: every drop is counted by `PortCounters.drop`; this module sets that counter's `on_drop`
hook on each port, so a frame that is not dropped costs nothing more. The callers in the port
pass the frame they hold; the switch pipeline counts its drops without it, so while recording,
each switch's `ingress` is wrapped to remember the frame in flight, and that frame (as it
entered the switch where it died) is recorded. Batched ingress is switched frame by frame
while recording, which is what `ingress_batch` promises to be equivalent to.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from netsim.dataplane.port import Port
from netsim.errors import CaptureError
from netsim.live.pcapng import (
    enhanced_packet,
    interface_description,
    interface_statistics,
    section_header,
)

FLUSH_BYTES = 1 << 20


def fabric_switches(fab: Any) -> list[Any]:
    """Every switch of a fabric: the physical ones and each host's."""
    out = list(fab.switches.values())
    for h in fab.hosts.values():
        out.extend(h.switches.values())
    return out


class DropWatch:
    """Calls `sink(port, reason, frame)` for every frame dropped on the fabric's ports (frame None
    when the drop was counted without one, e.g. a whole queue discarded when a VM left).

    `start()` installs the hooks, `stop()` removes them; `async with`-free on purpose: the hooks
    are synchronous and a `DropCapture` or live server owns the watch."""

    def __init__(self, fab: Any, sink: Callable[[Port, str, bytes | None], None]) -> None:
        self.fab = fab
        self.sink = sink
        self._current: bytes | None = None
        self._ports: list[Port] = []
        self._switches: list[Any] = []
        self.active = False

    def start(self) -> None:
        """Hook every port and switch of the fabric as it is now."""
        if self.active:
            return
        self.active = True
        for port in self.fab.ports():
            if port.counters.on_drop is not None:
                raise CaptureError(f"{port.path}: another drop recorder is already attached")
            port.counters.on_drop = self._hook(port)
            self._ports.append(port)
        for sw in fabric_switches(self.fab):
            self._wrap(sw)
            self._switches.append(sw)

    def stop(self) -> None:
        """Remove every hook (idempotent)."""
        for port in self._ports:
            port.counters.on_drop = None
        for sw in self._switches:
            for attr in ("ingress", "ingress_batch"):
                sw.__dict__.pop(attr, None)
        self._ports.clear()
        self._switches.clear()
        self.active = False

    def _hook(self, port: Port) -> Callable[[str, int, bytes | None], None]:
        sink = self.sink

        def on_drop(reason: str, n: int, frame: bytes | None) -> None:
            if frame is None:
                frame = self._current
                if frame is None:
                    for _ in range(n):
                        sink(port, reason, None)
                    return
            for _ in range(n):
                sink(port, reason, frame)

        return on_drop

    def _wrap(self, sw: Any) -> None:
        inner = sw.ingress  # the class's pipeline, bound
        now_ns = sw.clock.now_ns

        def ingress(port: Port, frame: bytes, now: int | None = None) -> Any:
            before = self._current
            self._current = frame
            try:
                return inner(port, frame, now)
            finally:
                self._current = before

        def ingress_batch(port: Port, frames: Sequence[bytes]) -> None:
            now = now_ns()  # one clock reading per batch, as Bridge.ingress_batch does
            for f in frames:
                ingress(port, f, now)

        sw.ingress = ingress
        sw.ingress_batch = ingress_batch


class DropCapture:
    """Writes every dropped frame of a fabric to one pcapng (`drops.pcapng`).

    One interface per port where something died (added when its first drop comes; pcapng allows
    an IDB anywhere before the records that use it), one record per counted drop, comment
    `dropped at PORT: REASON`. Drops counted without a frame are in `unrecorded` and in an
    interface statistics block (`isb_ifdrop`) per port at close.
    """

    def __init__(self, fab: Any, target: str | Path | BinaryIO) -> None:
        self.fab = fab
        self.clock = fab.clock
        if isinstance(target, str | Path):
            self.path: Path | None = Path(target)
            try:
                self._file: BinaryIO = open(self.path, "wb")
            except OSError as exc:
                raise CaptureError(f"cannot write drop capture {self.path}: "
                                   f"{exc.strerror}") from exc
            self._owns = True
        else:
            self.path, self._file, self._owns = None, target, False
        self._chunks: list[bytes] = [section_header()]
        self._buffered = 0
        self._ifaces: dict[Port, int] = {}
        self._unrecorded: Counter[Port] = Counter()
        self._recorded: Counter[Port] = Counter()
        self.by_reason: Counter[str] = Counter()
        self.records = 0
        self.error: CaptureError | None = None
        self.closed = False
        self.watch = DropWatch(fab, self._record)

    @property
    def unrecorded(self) -> int:
        """Drops counted without a frame to write."""
        return sum(self._unrecorded.values())

    def start(self) -> DropCapture:
        """Start recording (returns self)."""
        self.watch.start()
        return self

    def _iface(self, port: Port) -> int:
        i = self._ifaces.get(port)
        if i is None:
            i = self._ifaces[port] = len(self._ifaces)
            self._chunks.append(interface_description(
                self.fab.short_name(port), description=f"drops at {port.path}"))
        return i

    def _record(self, port: Port, reason: str, frame: bytes | None) -> None:
        self.by_reason[reason] += 1
        i = self._iface(port)
        if frame is None:
            self._unrecorded[port] += 1
            return
        name = self.fab.short_name(port)
        block = enhanced_packet(i, self.clock.now_ns(), frame,
                                comment=f"dropped at {name}: {reason}", custom=reason)
        self._chunks.append(block)
        self._recorded[port] += 1
        self.records += 1
        self._buffered += len(block)
        if self._buffered >= FLUSH_BYTES:
            try:
                self.flush()
            except CaptureError as exc:  # never raise into the switch: keep the error
                self.error = exc

    def flush(self) -> None:
        """Write what is buffered."""
        if self.closed or not self._chunks or self.error is not None:
            return
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            raise CaptureError(f"cannot write drop capture {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        """Stop recording, write the per-port statistics, flush and close (idempotent)."""
        if self.closed:
            return
        self.watch.stop()
        now = self.clock.now_ns()
        for port, i in self._ifaces.items():
            self._chunks.append(interface_statistics(
                i, now, received=self._recorded[port], dropped=self._unrecorded[port]))
        try:
            self.flush()
        finally:
            self.closed = True
            if self._owns:
                self._file.close()
        if self.error is not None:
            raise self.error

    def summary(self) -> str:
        """One line: how many dropped frames were written, by reason."""
        parts = ", ".join(f"{r} {n}" for r, n in sorted(self.by_reason.items()))
        extra = f" ({self.unrecorded} counted without a frame)" if self.unrecorded else ""
        return f"{self.records} dropped frame(s){': ' + parts if parts else ''}{extra}"
