"""Token buckets on the injected clock, enforcing a `ShapingPolicy` frame by frame."""
from __future__ import annotations

from netsim.policy import ShapingPolicy

_NS = 1_000_000_000
PEAK_WINDOW_S = 0.010  # the peak bucket holds 10 ms at peak rate (at least one big frame)
MAX_FRAME = 1522


class TokenBucket:
    """Bytes accrue at `rate_bps / 8` per second up to `depth` bytes; `take(n, now)` spends n bytes
    if the bucket holds them. Starts full."""

    __slots__ = ("_last_ns", "depth", "level", "rate_bps")

    def __init__(self, rate_bps: int, depth: int, now_ns: int) -> None:
        self.rate_bps = rate_bps
        self.depth = depth
        self.level = float(depth)
        self._last_ns = now_ns

    def refill(self, now_ns: int) -> None:
        """Add the bytes earned since the last call."""
        dt = now_ns - self._last_ns
        if dt > 0:
            self.level = min(self.depth, self.level + dt * self.rate_bps / (8 * _NS))
            self._last_ns = now_ns

    def take(self, nbytes: int, now_ns: int) -> bool:
        """Spend `nbytes` if available; False (and nothing spent) if not."""
        self.refill(now_ns)
        if self.level >= nbytes:
            self.level -= nbytes
            return True
        return False


class Shaper:
    """Average + peak + burst policing of one direction of one port (vSphere semantics)."""

    __slots__ = ("_avg", "_peak", "policy")

    def __init__(self, policy: ShapingPolicy, now_ns: int) -> None:
        self.policy = policy
        self._avg = TokenBucket(policy.average_bps, policy.burst_bytes, now_ns)
        peak_depth = max(MAX_FRAME, int(policy.peak_bps * PEAK_WINDOW_S / 8))
        self._peak = TokenBucket(policy.peak_bps, peak_depth, now_ns)

    def conform(self, nbytes: int, now_ns: int) -> bool:
        """True if a frame of `nbytes` may pass now (and charge both buckets)."""
        avg, peak = self._avg, self._peak
        avg.refill(now_ns)
        peak.refill(now_ns)
        if avg.level >= nbytes and peak.level >= nbytes:
            avg.level -= nbytes
            peak.level -= nbytes
            return True
        return False
