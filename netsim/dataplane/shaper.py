"""Traffic shaping as vSphere defines it, on the injected clock: average and peak bandwidth
(bits/s) and burst size (bytes), enforced frame by frame.

A `Shaper` is two token buckets: the committed bucket fills at the average rate and holds up to
`burst_bytes` (so a frame larger than the burst size never conforms); the peak bucket fills at
the peak rate and holds `PEAK_WINDOW_S` worth of peak-rate traffic (at least one maximum-size
frame). A frame conforms
when both hold enough, so an idle sender may send `burst_bytes` at up to the peak rate, and over
any long run never more than the average rate. Tokens are exact integers (bit-nanoseconds), so
long runs do not drift.

`conform(n, now)` polices (take the tokens if the frame conforms, else refuse: the switch drops
and counts `shaped`); `delay(n, now)` says how long a sender that queues must wait before `n`
bytes would conform.
"""
from __future__ import annotations

from netsim.dataplane.policy import ShapingPolicy

NS = 1_000_000_000
PEAK_WINDOW_S = 0.010  # the peak bucket holds 10 ms at peak rate (at least one big frame)
MAX_FRAME = 1522  # 1500 + Ethernet header + one 802.1Q tag


class Shaper:
    """Average + peak + burst policing of one direction of one port (see module docstring)."""

    __slots__ = ("_avg_rate", "_cap_avg", "_cap_peak", "_last", "_peak_rate", "_tok_avg",
                 "_tok_peak", "policy")

    def __init__(self, policy: ShapingPolicy, now_ns: int) -> None:
        self.policy = policy
        self._avg_rate = policy.average_bps
        self._peak_rate = policy.peak_bps
        self._cap_avg = policy.burst_bytes * 8 * NS
        peak_depth = max(MAX_FRAME, int(policy.peak_bps * PEAK_WINDOW_S / 8))
        self._cap_peak = peak_depth * 8 * NS
        self._tok_avg = self._cap_avg
        self._tok_peak = self._cap_peak
        self._last = now_ns

    def _refill(self, now_ns: int) -> None:
        elapsed = now_ns - self._last
        if elapsed > 0:
            self._tok_avg = min(self._cap_avg, self._tok_avg + elapsed * self._avg_rate)
            self._tok_peak = min(self._cap_peak, self._tok_peak + elapsed * self._peak_rate)
            self._last = now_ns

    def conform(self, nbytes: int, now_ns: int) -> bool:
        """True if a frame of `nbytes` may pass now (and charge both buckets); False otherwise."""
        self._refill(now_ns)
        need = nbytes * 8 * NS
        if self._tok_avg >= need and self._tok_peak >= need:
            self._tok_avg -= need
            self._tok_peak -= need
            return True
        return False

    def delay(self, nbytes: int, now_ns: int) -> float:
        """Seconds until a frame of `nbytes` would conform (0.0 when it does now)."""
        self._refill(now_ns)
        need = nbytes * 8 * NS
        wait_ns = 0
        for tokens, rate in ((self._tok_avg, self._avg_rate), (self._tok_peak, self._peak_rate)):
            if tokens < need:
                wait_ns = max(wait_ns, -(-(need - tokens) // rate))  # ceil, in ns
        return wait_ns / NS
