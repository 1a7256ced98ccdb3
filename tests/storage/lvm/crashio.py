"""A RawIO wrapper that simulates a crash at a chosen I/O step (test helper)."""
from __future__ import annotations

from typing import Literal

from storage.devices.rawio import MemoryIO

Mode = Literal["done", "lost", "torn"]


class Crash(Exception):
    """Raised when the simulated machine dies."""


class StepCounter:
    """Counts pwrite/flush steps across several PVs; crashes at `crash_at` (None = never)."""

    def __init__(self, crash_at: int | None, mode: Mode = "done") -> None:
        self.crash_at = crash_at
        self.mode = mode
        self.steps = 0
        self.ios: list[CrashIO] = []

    def step(self) -> bool:
        """True if this step is the one that crashes."""
        hit = self.crash_at is not None and self.steps == self.crash_at
        self.steps += 1
        return hit

    def die(self) -> None:
        """The crash: in `lost` mode writes not yet flushed never reached the disk."""
        if self.mode == "lost":
            for io in self.ios:
                io.undo_unflushed()
        raise Crash


class CrashIO:
    """RawIO over a MemoryIO; every pwrite and flush is a numbered step that may crash."""

    def __init__(self, target: MemoryIO, counter: StepCounter) -> None:
        self.target = target
        self.name = target.name
        self.counter = counter
        self.undo: list[tuple[int, bytes]] = []
        counter.ios.append(self)

    def pread(self, offset: int, length: int) -> bytes:
        return self.target.pread(offset, length)

    def pwrite(self, offset: int, data: bytes) -> None:
        if self.counter.step():
            if self.counter.mode == "torn":  # the first sectors made it, the rest did not
                half = (len(data) // 2) // 512 * 512 or len(data) // 2
                self.target.pwrite(offset, data[:half])
            self.counter.die()
        self.undo.append((offset, self.target.pread(offset, len(data))))
        self.target.pwrite(offset, data)

    def flush(self) -> None:
        if self.counter.step():
            self.counter.die()
        self.undo.clear()

    def undo_unflushed(self) -> None:
        for offset, old in reversed(self.undo):
            self.target.pwrite(offset, old)
        self.undo.clear()

    def size(self) -> int:
        return self.target.size()

    def truncate(self, size: int) -> None:
        self.target.truncate(size)

    def close(self) -> None:
        pass
