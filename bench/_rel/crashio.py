"""A RawIO that loses power: every durable step is counted, and at step N the machine stops.

`PowerPlan(cut_at=N)` is shared by every container (and file-system step) of one run; each
`CrashIO` wrapping a RawIO reports its `pwrite`, `truncate` and `flush` to it. Two models:

- ordered (default): steps land in the order issued; at the cut, step N is lost (or, with
  `torn=True`, lands partly: a prefix of its whole sectors — disks write a sector atomically —
  when it spans several) and nothing after it happens. This is a journaling file system with
  the writer's own ordering, the model `storage.vhd.image` states for its write order.
- volatile (`volatile=True`): writes sit in a write-back cache until `flush`; at the cut, the
  cached writes land as an arbitrary subset chosen by `seed` (the disk reorders freely), then
  the power is gone. Only flushed (acknowledged) writes are certain to be on disk.

After the cut every call raises `PowerCut`; the harness then reopens the real containers and
checks what survived.
"""
from __future__ import annotations

import random
from collections.abc import Callable

from storage.devices.rawio import RawIO

SECTOR = 512


class PowerCut(BaseException):
    """The simulated power failure (a BaseException so `except Exception` cleanups in the code
    under test don't swallow it, as they could not swallow a real one)."""


class PowerPlan:
    """Counts durable steps across containers; decides where the power fails."""

    def __init__(self, cut_at: int | None = None, *, torn: bool = False, volatile: bool = False,
                 seed: int = 0) -> None:
        self.cut_at = cut_at
        self.torn = torn
        self.volatile = volatile
        self.rng = random.Random(seed)
        self.steps = 0
        self.dead = False
        self.log: list[str] = []
        self._caches: list[CrashIO] = []

    def step(self, what: str) -> bool:
        """Count one step; True when it is the step the power fails on."""
        if self.dead:
            raise PowerCut(f"power already off ({what})")
        self.steps += 1
        self.log.append(what)
        if self.cut_at is not None and self.steps >= self.cut_at:
            self.dead = True
            return True
        return False

    def fail(self) -> None:
        """The power goes: land what the volatile caches let through, then stop."""
        for io in self._caches:
            io._lose_cache(self.rng)
        raise PowerCut(f"power cut at step {self.steps}: {self.log[-1] if self.log else ''}")

    def run_step(self, what: str, action: Callable[[], None],
                 partial: Callable[[], None] | None = None) -> None:
        """Do `action` unless the power fails on this step (then maybe `partial`, and stop)."""
        if self.step(what):
            if self.torn and partial is not None:
                partial()
            self.fail()
        action()


class CrashIO:
    """RawIO wrapper reporting every durable step to a `PowerPlan`."""

    def __init__(self, inner: RawIO, plan: PowerPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.name = inner.name
        self._cache: list[tuple[int, bytes]] = []  # volatile mode: unflushed writes
        if plan.volatile:
            plan._caches.append(self)

    # reads see the cache, as a real OS page cache would
    def pread(self, offset: int, length: int) -> bytes:
        if self.plan.dead:
            raise PowerCut("power off")
        if not self._cache:
            return self.inner.pread(offset, length)
        buf = bytearray(self.inner.pread(offset, length))
        end = offset + length
        for off, data in self._cache:
            lo, hi = max(off, offset), min(off + len(data), end)
            if lo >= hi:
                continue
            if hi - offset > len(buf):
                buf.extend(bytes(hi - offset - len(buf)))
            buf[lo - offset:hi - offset] = data[lo - off:hi - off]
        return bytes(buf)

    def preadinto(self, offset: int, buf: memoryview) -> int:
        data = self.pread(offset, len(buf))
        buf[:len(data)] = data
        return len(data)

    def pwrite(self, offset: int, data: bytes) -> None:
        data = bytes(data)
        if self.plan.volatile:
            if self.plan.step(f"write {self.name}@{offset}+{len(data)}"):
                self.plan.fail()
            self._cache.append((offset, data))
            return

        def partial() -> None:
            nsec = -(-len(data) // SECTOR)
            if nsec > 1:
                keep = self.plan.rng.randrange(1, nsec) * SECTOR
                self.inner.pwrite(offset, data[:keep])

        self.plan.run_step(f"write {self.name}@{offset}+{len(data)}",
                           lambda: self.inner.pwrite(offset, data), partial)

    def flush(self) -> None:
        if self.plan.step(f"flush {self.name}"):
            self.plan.fail()
        for off, data in self._cache:
            self.inner.pwrite(off, data)
        self._cache.clear()
        self.inner.flush()

    def size(self) -> int:
        if self.plan.dead:
            raise PowerCut("power off")
        end = max((off + len(d) for off, d in self._cache), default=0)
        return max(self.inner.size(), end)

    def truncate(self, size: int) -> None:
        if self.plan.volatile:
            # metadata change: apply the cache first so the order holds, then cut the file
            self.flush_cache_unsafely()
        self.plan.run_step(f"truncate {self.name} {size}", lambda: self.inner.truncate(size))

    def flush_cache_unsafely(self) -> None:
        """Land the cache (used before a truncate, which the file system orders after it)."""
        for off, data in self._cache:
            self.inner.pwrite(off, data)
        self._cache.clear()

    def close(self) -> None:
        # closing without a flush loses nothing in the model until the power fails
        if not self.plan.dead:
            self.flush_cache_unsafely()
        self.inner.close()

    def _lose_cache(self, rng: random.Random) -> None:
        kept = [w for w in self._cache if rng.random() < 0.5]
        for i, (off, data) in enumerate(kept):
            if self.plan.torn and i == len(kept) - 1 and len(data) > SECTOR:
                data = data[:rng.randrange(1, -(-len(data) // SECTOR)) * SECTOR]
            self.inner.pwrite(off, data)
        self._cache.clear()

    def __enter__(self) -> CrashIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
