"""Token-bucket shaping on an injected clock: average, peak and burst as vSphere defines them."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsim.errors import ConfigError
from netsim.shaper import TokenBucket
from tests.topology.conftest import StepClock


def test_peak_below_average_is_refused(step_clock) -> None:
    with pytest.raises(ConfigError, match="peak"):
        TokenBucket(average_bps=10_000_000, peak_bps=1_000_000, burst_bytes=10_000,
                    clock=step_clock)


def test_burst_goes_out_at_once_then_average_rate(step_clock) -> None:
    tb = TokenBucket(average_bps=8_000_000, peak_bps=80_000_000, burst_bytes=15_000,
                     clock=step_clock)
    sent = 0
    while tb.admit(1000):
        sent += 1
    assert sent == 1  # the peak bucket holds one frame: peak limits the burst's pace
    # pace at exactly what delay() says, for 10 simulated seconds
    start, total = step_clock.now_ns(), 1000
    while step_clock.now_ns() - start < 10 * 10**9:
        step_clock.advance(tb.delay(1000))
        assert tb.admit(1000)
        total += 1000
    rate = total * 8 / ((step_clock.now_ns() - start) / 1e9)
    # burst + 10 s at 8 Mbit/s: within 2 % of the average once the burst is spent
    assert rate == pytest.approx(8_000_000 + 15_000 * 8 / 10, rel=0.02)


def test_policing_drops_what_exceeds_the_rate(step_clock) -> None:
    tb = TokenBucket(average_bps=1_000_000, burst_bytes=2000, clock=step_clock)
    passed = dropped = 0
    for _ in range(10_000):  # offer 1000-byte frames at 8 Mbit/s for 10 s
        step_clock.advance(0.001)
        if tb.admit(1000):
            passed += 1
        else:
            dropped += 1
    assert passed * 1000 * 8 / 10 == pytest.approx(1_000_000, rel=0.02)
    assert dropped > 0


@settings(max_examples=40, deadline=None)
@given(avg=st.integers(64_000, 10**9), ratio=st.integers(1, 10),
       burst=st.integers(1600, 10**6), size=st.integers(64, 1518))
def test_long_run_never_beats_average_plus_burst(avg: int, ratio: int, burst: int,
                                                 size: int) -> None:
    clock = StepClock()
    tb = TokenBucket(average_bps=avg, peak_bps=avg * ratio, burst_bytes=burst, clock=clock)
    start = clock.now_ns()
    sent = 0
    for _ in range(300):
        clock.advance(tb.delay(size))
        assert tb.admit(size)
        sent += size
    elapsed = (clock.now_ns() - start) / 1e9
    assert sent * 8 <= avg * elapsed + max(burst, 1522) * 8 + 8
    assert sent * 8 <= avg * ratio * elapsed + 1522 * 8 + 8
