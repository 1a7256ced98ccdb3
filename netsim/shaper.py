"""Traffic shaping as vSphere defines it: average and peak bandwidth (bits/s), burst size (bytes).

`TokenBucket` is two buckets on the injected clock: a committed bucket filling at the average
rate and holding up to `burst` bytes, and a peak bucket filling at the peak rate and holding one
maximum-size frame. A frame conforms when both hold enough tokens, so a sender that was idle may
send `burst` bytes at the peak rate, and over any long run never more than the average rate.
Tokens are kept as exact integers (bit·nanoseconds), so a long run does not drift.

`admit(n)` polices (take the tokens if the frame conforms, else refuse: the caller drops and
counts `shaped`); `delay(n)` says how long to wait before `n` bytes would conform (a shaper
that queues sleeps that long on the clock, then calls `admit`).
"""
from __future__ import annotations

from typing import Protocol

from netsim.errors import ConfigError

NS = 1_000_000_000
MAX_FRAME = 1522  # 1500 + Ethernet header + one 802.1Q tag + FCS-less slack


class _Clock(Protocol):
    def now_ns(self) -> int: ...


class TokenBucket:
    """Average/peak/burst token bucket on a clock (see module docstring)."""

    def __init__(self, *, average_bps: int, peak_bps: int | None = None, burst_bytes: int,
                 clock: _Clock, max_frame: int = MAX_FRAME) -> None:
        peak_bps = average_bps if peak_bps is None else peak_bps
        if average_bps <= 0:
            raise ConfigError(f"shaping: average {average_bps} bit/s must be positive")
        if peak_bps < average_bps:
            raise ConfigError(f"shaping: peak {peak_bps} bit/s is below average "
                              f"{average_bps} bit/s (peak must be >= average)")
        if burst_bytes <= 0:
            raise ConfigError(f"shaping: burst {burst_bytes} bytes must be positive")
        self.average_bps = average_bps
        self.peak_bps = peak_bps
        self.burst_bytes = burst_bytes
        self.clock = clock
        # A frame larger than the burst could never conform; let one frame through at a time.
        self._cap_c = max(burst_bytes, max_frame) * 8 * NS
        self._cap_p = max_frame * 8 * NS
        self._tok_c = self._cap_c
        self._tok_p = self._cap_p
        self._last = clock.now_ns()

    def _refill(self) -> None:
        now = self.clock.now_ns()
        elapsed = now - self._last
        if elapsed > 0:
            self._tok_c = min(self._cap_c, self._tok_c + elapsed * self.average_bps)
            self._tok_p = min(self._cap_p, self._tok_p + elapsed * self.peak_bps)
            self._last = now

    def admit(self, nbytes: int) -> bool:
        """Take the tokens for an `nbytes` frame if it conforms now; False if it does not."""
        self._refill()
        need = nbytes * 8 * NS
        if self._tok_c >= need and self._tok_p >= need:
            self._tok_c -= need
            self._tok_p -= need
            return True
        return False

    def delay(self, nbytes: int) -> float:
        """Seconds to wait until an `nbytes` frame conforms (0.0 when it does now)."""
        self._refill()
        need = nbytes * 8 * NS
        wait_ns = 0
        for tokens, rate in ((self._tok_c, self.average_bps), (self._tok_p, self.peak_bps)):
            if tokens < need:
                wait_ns = max(wait_ns, -(-(need - tokens) // rate))  # ceil, in ns
        return wait_ns / NS
