"""Token-bucket shaping on an injected clock: average, peak and burst as vSphere defines them."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsim.dataplane.policy import ShapingPolicy
from netsim.dataplane.shaper import MAX_FRAME, PEAK_WINDOW_S, Shaper
from netsim.errors import ConfigError
from tests.topology.conftest import StepClock


def shaper(clock: StepClock, avg: int, burst: int, peak: int | None = None) -> Shaper:
    policy = ShapingPolicy(average_bps=avg, peak_bps=peak or avg, burst_bytes=burst)
    return Shaper(policy, clock.now_ns())


def test_peak_below_average_is_refused() -> None:
    with pytest.raises(ConfigError, match="peak"):
        ShapingPolicy(average_bps=10_000_000, peak_bps=1_000_000, burst_bytes=10_000)


def test_burst_goes_out_at_once_then_average_rate(step_clock: StepClock) -> None:
    sh = shaper(step_clock, 8_000_000, 15_000, peak=80_000_000)
    now = step_clock.now_ns
    sent = 0
    while sh.conform(1000, now()):
        sent += 1
    # an idle sender may burst: as much as both buckets hold at once
    assert sent == min(15_000, int(80_000_000 * PEAK_WINDOW_S / 8)) // 1000
    # pace at exactly what delay() says, for 10 simulated seconds
    start, total = now(), sent * 1000
    while now() - start < 10 * 10**9:
        step_clock.advance(sh.delay(1000, now()))
        assert sh.conform(1000, now())
        total += 1000
    rate = total * 8 / ((now() - start) / 1e9)
    # burst + 10 s at 8 Mbit/s: within 2 % of the average once the burst is spent
    assert rate == pytest.approx(8_000_000 + 15_000 * 8 / 10, rel=0.02)


def test_policing_drops_what_exceeds_the_rate(step_clock: StepClock) -> None:
    sh = shaper(step_clock, 1_000_000, 2000)
    passed = dropped = 0
    for _ in range(10_000):  # offer 1000-byte frames at 8 Mbit/s for 10 s
        step_clock.advance(0.001)
        if sh.conform(1000, step_clock.now_ns()):
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
    sh = shaper(clock, avg, burst, peak=avg * ratio)
    start = clock.now_ns()
    sent = 0
    for _ in range(300):
        clock.advance(sh.delay(size, clock.now_ns()))
        assert sh.conform(size, clock.now_ns())
        sent += size
    elapsed = (clock.now_ns() - start) / 1e9
    peak_depth = max(MAX_FRAME, int(avg * ratio * PEAK_WINDOW_S / 8))
    assert sent * 8 <= avg * elapsed + burst * 8 + 8
    assert sent * 8 <= avg * ratio * elapsed + peak_depth * 8 + 8
