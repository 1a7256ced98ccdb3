"""netem's statistics, proved from the models' math: delay distributions, loss models (random,
Gilbert, Gilbert-Elliott, 4-state), reordering, duplication, corruption and rate.

Every test draws from a fixed seed over >= 100k frames; every bound is a 99 % confidence bound
(z = 2.576) computed from the model (exact moments of netem's tables, stationary distributions
and asymptotic variances of the Markov chains), never from a previous run.
"""
from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pytest

from netsim.dataplane.impair import (
    FourState,
    GilbertElliott,
    Impairment,
    NetemModel,
    RandomLoss,
    Release,
    table,
    tabledist_value,
)

Z99 = 2.576
N = 100_000
MS = 1_000_000


def model(seed: int = 16, **kw: object) -> NetemModel:
    return NetemModel(Impairment(**kw), random.Random(seed))  # type: ignore[arg-type]


def spaced(m: NetemModel, n: int, gap_ns: int, frame: bytes = b"\0" * 60) -> list[Release]:
    """Offer `n` frames `gap_ns` apart with an empty queue; what leaves."""
    out: list[Release] = []
    for i in range(n):
        m.admit(i * gap_ns, frame, 0, out)
    return out


# ------------------------------------------------------------------------------------- delay
def _exact_moments(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, variance and 4th central moment of a uniform pick among `values`."""
    mean = values.mean()
    d = values - mean
    return float(mean), float((d ** 2).mean()), float((d ** 4).mean())


@pytest.mark.parametrize("dist", ["uniform", "normal", "pareto", "paretonormal"])
def test_delay_mean_and_stddev_per_distribution(dist: str) -> None:
    mu, sigma = 50 * MS, 5 * MS
    m = model(delay_ns=mu, jitter_ns=sigma, distribution=dist)
    out = spaced(m, N, 200 * MS)  # farther apart than any draw: FIFO never holds one back
    delays = np.array([tts - i * 200 * MS for i, (tts, _, _) in enumerate(out)], dtype=float)
    assert len(delays) == N
    if dist == "uniform":  # netem: (rnd % 2 sigma) + mu - sigma, every value equally likely
        support = np.arange(mu - sigma, mu + sigma, dtype=float)
    else:  # netem: tabledist over the 4096 entries of iproute2's table, each equally likely
        support = np.array([tabledist_value(mu, sigma, t) for t in table(dist)], dtype=float)
    mean, var, mu4 = _exact_moments(support)
    assert abs(delays.mean() - mean) <= Z99 * math.sqrt(var / N)
    s2 = delays.var()
    assert abs(s2 - var) <= Z99 * math.sqrt((mu4 - var ** 2) / N)
    if dist == "normal":  # the table is the normal's: mean mu, stddev sigma (to 0.1 %)
        assert abs(mean - mu) < 0.001 * sigma and abs(math.sqrt(var) - sigma) < 0.001 * sigma


def test_iproute2_tables_known_values() -> None:
    # first entries of iproute2's normal.dist and pareto.dist as the kernel loads them
    assert table("normal")[:8] == (-32768, -28307, -26871, -25967, -25298, -24765, -24320,
                                   -23937)
    assert table("pareto")[:2] == (-5461, -5460) and table("pareto")[-1] == 32767
    for name in ("normal", "pareto", "paretonormal"):
        t = table(name)
        assert len(t) == 4096 and list(t) == sorted(t)


def test_jitter_keeps_frames_in_order_and_never_below_zero() -> None:
    m = model(delay_ns=2 * MS, jitter_ns=5 * MS)  # jitter > delay and > the frame gap
    out = spaced(m, 10_000, MS // 2)
    times = [tts for tts, _, _ in out]
    assert times == sorted(times)
    assert all(tts >= i * (MS // 2) for i, tts in enumerate(times))


# -------------------------------------------------------------------------------------- loss
def _losses(m: NetemModel, n: int) -> np.ndarray:
    lost = np.zeros(n, dtype=bool)
    out: list[Release] = []
    for i in range(n):
        before = m.stats.lost
        m.admit(i, b"x" * 60, 0, out)
        lost[i] = m.stats.lost != before
        out.clear()
    return lost


def _bursts(lost: np.ndarray) -> np.ndarray:
    """Lengths of the runs of consecutive losses."""
    padded = np.concatenate(([0], lost.astype(np.int8), [0]))
    edges = np.diff(padded)
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def _stationary(t: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eig(t.T)
    pi = np.real(v[:, np.argmin(abs(w - 1))])
    return pi / pi.sum()


def _asym_var(t: np.ndarray, lp: np.ndarray, horizon: int = 5000) -> float:
    """Asymptotic variance (per frame) of the mean of X_n ~ Bernoulli(lp[S_n]) on the chain
    S with transition matrix t: Var + 2 * sum of autocovariances."""
    pi = _stationary(t)
    mean = pi @ lp
    var = float(pi @ (lp * (1 - lp)) + pi @ (lp - mean) ** 2)
    g = lp - mean
    acc, vec = 0.0, g.copy()
    for _ in range(horizon):
        vec = t @ vec
        acc += float(pi @ (g * vec))
    return var + 2 * acc


def _burst_moments(t: np.ndarray, lp: np.ndarray, horizon: int = 5000) -> tuple[float, float]:
    """Mean and variance of a loss burst's length: the first loss of a burst follows a
    received frame; the burst goes on while the chain keeps losing."""
    pi = _stationary(t)
    start = (pi * (1 - lp)) @ t * lp  # received at n-1, lost at n: state at n
    start = start / start.sum()
    keep = t * lp[None, :]  # move, then lose in the new state
    surv, vec, e1, e2 = 1.0, start, 0.0, 0.0
    for m in range(1, horizon):
        e1 += surv
        e2 += (2 * m - 1) * surv
        vec = vec @ keep
        surv = float(vec.sum())
        if surv < 1e-15:
            break
    return e1, e2 - e1 ** 2


def test_random_loss_rate() -> None:
    lost = _losses(model(loss=RandomLoss(0.03)), N)
    p = 0.03
    assert abs(lost.mean() - p) <= Z99 * math.sqrt(p * (1 - p) / N)


@pytest.mark.parametrize(("p", "r", "h", "k"), [(0.01, 0.30, 0.0, 1.0),  # simple Gilbert
                                                (0.02, 0.25, 0.20, 0.995)])  # Gilbert-Elliott
def test_gilbert_elliott_loss_rate_and_burst_length(p: float, r: float, h: float,
                                                    k: float) -> None:
    n = 200_000
    lost = _losses(model(seed=1, loss=GilbertElliott(p, r, h, k)), n)
    # netem loss_gilb_ell: the frame's fate follows the state it finds; then the state moves
    t = np.array([[1 - p, p], [r, 1 - r]])
    lp = np.array([1 - k, 1 - h])
    pi = _stationary(t)
    rate = float(pi @ lp)
    assert abs(rate - ((p / (p + r)) * (1 - h) + (r / (p + r)) * (1 - k))) < 1e-12
    assert abs(lost.mean() - rate) <= Z99 * math.sqrt(_asym_var(t, lp) / n)
    bursts = _bursts(lost)
    mean_b, var_b = _burst_moments(t, lp)
    if h == 0 and k == 1:
        assert abs(mean_b - 1 / r) < 1e-9  # Gilbert: bursts are the Bad sojourns, 1/r long
    assert abs(bursts.mean() - mean_b) <= Z99 * math.sqrt(var_b / len(bursts))


def test_four_state_loss_rate() -> None:
    p13, p31, p32, p23, p14 = 0.02, 0.40, 0.30, 0.20, 0.01
    n = 200_000
    lost = _losses(model(seed=2, loss=FourState(p13, p31, p32, p23, p14)), n)
    # netem loss_4state: one draw picks the next state; a frame is lost iff it lands in 3 or 4
    t = np.array([[1 - p13 - p14, 0, p13, p14],
                  [0, 1 - p23, p23, 0],
                  [p31, p32, 1 - p31 - p32, 0],
                  [1, 0, 0, 0]])
    lp = np.array([0.0, 0.0, 1.0, 1.0])  # the state *after* the frame says lost or not
    pi = _stationary(t)
    rate = float(pi @ lp)
    assert abs(lost.mean() - rate) <= Z99 * math.sqrt(_asym_var(t, lp) / n)


# -------------------------------------------------------------- reorder, duplicate, corrupt
@pytest.mark.parametrize(("prob", "gap"), [(0.25, 1), (0.25, 5)])
def test_reorder_share(prob: float, gap: int) -> None:
    m = model(delay_ns=10 * MS, reorder=prob, gap=gap)
    out = spaced(m, N, MS)
    sent_now = sum(1 for i, (tts, _, _) in enumerate(out) if tts == i * MS)
    # netem: after a frame sent at once, gap-1 frames are delayed, then each goes at once with
    # probability P: a renewal cycle of (gap - 1) + Geometric(P) frames, one sent at once
    e_c = (gap - 1) + 1 / prob
    var_c = (1 - prob) / prob ** 2
    assert m.stats.reordered == sent_now
    assert abs(sent_now / N - 1 / e_c) <= Z99 * math.sqrt(var_c / (e_c ** 3 * N))
    # and those frames really overtake: they leave before frames offered earlier
    times = [tts for tts, _, _ in out]
    assert any(times[i] < times[i - 1] for i in range(1, len(times)))


def test_duplicate_share() -> None:
    m = model(duplicate=0.10)
    out = spaced(m, N, 1000)
    extra = len(out) - N
    assert extra == m.stats.duplicated
    assert abs(extra / N - 0.10) <= Z99 * math.sqrt(0.10 * 0.90 / N)


def test_corrupt_flips_exactly_one_bit() -> None:
    frame = bytes(range(64))
    m = model(corrupt=0.05)
    out = spaced(m, N, 1000, frame)
    bad = [f for _, f, corrupted in out if corrupted]
    assert len(bad) == m.stats.corrupted
    assert abs(len(bad) / N - 0.05) <= Z99 * math.sqrt(0.05 * 0.95 / N)
    for f in bad:
        assert len(f) == len(frame)
        assert sum(bin(a ^ b).count("1") for a, b in zip(f, frame, strict=True)) == 1
    assert all(f == frame for _, f, corrupted in out if not corrupted)


# -------------------------------------------------------------------------------------- rate
def test_rate_throughput_of_a_saturating_flow_and_queueing_delay() -> None:
    rate = 10_000_000  # 10 Mbit/s
    frame = b"\0" * 1500
    m = model(rate_bps=rate, limit=10**6)
    out: list[Release] = []
    n = N
    # offered at twice the rate: 1500 B every 600 us, the link needs 1.2 ms per frame
    for i in range(n):
        m.admit(i * 600_000, frame, 0, out)
    tts = np.array([t for t, _, _ in out], dtype=float)
    throughput = len(out) * 1500 * 8 / (tts[-1] / 1e9)  # bits delivered by the last departure
    assert abs(throughput - rate) <= 0.01 * rate
    # queueing delay = backlog / rate: frame i waits for the i frames ahead of it
    per_frame = 1500 * 8 / rate * 1e9
    offered = np.arange(n) * 600_000.0
    backlog_bytes = (np.arange(n) + 1) * 1500 - (offered / 1e9) * rate / 8  # incl. itself
    assert np.all(abs((tts - offered) - backlog_bytes * 8 / rate * 1e9) <= per_frame + 1)


def test_rate_packet_overhead_and_cells() -> None:
    m = model(rate_bps=8_000_000, overhead=24)  # 1 MB/s: 1 us per byte
    assert m.packet_time_ns(1500) == 1524 * 1000
    m = model(rate_bps=8_000_000, cell_size=48, cell_overhead=5)  # ATM-like cells
    assert m.packet_time_ns(100) == 3 * 53 * 1000


def test_same_seed_same_draws_other_seed_others() -> None:
    kw = dict(delay_ns=20 * MS, jitter_ns=5 * MS, distribution="normal",
              loss=RandomLoss(0.05), duplicate=0.02, corrupt=0.01)
    a, b, c = (spaced(model(seed=s, **kw), 5000, MS) for s in (7, 7, 8))
    assert a == b
    assert a != c


def test_correlated_generator_is_netems_arithmetic() -> None:
    m = model(seed=9, loss=RandomLoss(0.5, 0.25))
    rng = random.Random(9)
    for _ in range(4):  # the draws `set` makes for the other generators' starting values
        rng.getrandbits(32)
    last = rng.getrandbits(32)  # the loss generator's starting value
    rho = round(0.25 * 0xFFFF_FFFF) + 1
    for _ in range(1000):
        value = rng.getrandbits(32)
        last = (value * ((1 << 32) - rho) + last * rho) >> 32  # get_crandom
        want_lost = round(0.5 * 0xFFFF_FFFF) >= last
        before = m.stats.lost
        m.admit(0, b"x", 0, [])
        assert (m.stats.lost != before) == want_lost


@pytest.mark.parametrize("imp", [
    Impairment(delay_ns=20 * MS, jitter_ns=5 * MS, loss=RandomLoss(0.1)),
    Impairment(delay_ns=20 * MS, jitter_ns=5 * MS, distribution="paretonormal"),
    Impairment(delay_ns=3 * MS, jitter_ns=5 * MS, duplicate=0.1, reorder=0.2, rate_bps=10**7),
    Impairment(delay_ns=5 * MS, jitter_ns=5 * MS, order="tfifo"),
    Impairment(delay_ns=5 * MS, jitter_ns=5 * MS, order="tfifo", corrupt=0.05, reorder=0.1),
])
async def test_the_path_on_a_clock_releases_what_the_model_plans(imp: Impairment) -> None:
    from netsim.dataplane.impair import ImpairedPath
    from netsim.dataplane.port import PortCounters
    from netsim.dataplane.vclock import VirtualClock

    clock = VirtualClock()
    got: list[tuple[int, bytes]] = []
    path = ImpairedPath("p", imp, seed=4, clock=clock, counters=PortCounters(),
                        deliver=lambda fs: got.extend((clock.now_ns(), f) for f in fs))
    ref = NetemModel(imp, random.Random(4))
    plan: list[Release] = []
    t0 = clock.now_ns()
    frames = [bytes([i % 256]) * 100 for i in range(3000)]
    for i, f in enumerate(frames):
        await clock.sleep_until(t0 + i * MS)
        path.offer(f)
        ref.admit(t0 + i * MS, f, path.held, plan)
    await clock.sleep(1)
    assert sorted(got) == sorted((t, f) for t, f, _ in plan if not _)
    assert [t for t, _ in got] == sorted(t for t, _ in got)  # released in time order
    ref.stats.delivered = len(plan)  # the model plans; the path counts what it released
    # (a corrupted frame is released to the FCS check, not to `deliver`)
    assert path.stats == ref.stats


def test_tfifo_lets_jitter_reorder_fifo_does_not() -> None:
    kw = dict(delay_ns=5 * MS, jitter_ns=5 * MS)
    fifo = spaced(model(**kw), 20_000, MS)
    tfifo_model = model(order="tfifo", **kw)
    tfifo = spaced(tfifo_model, 20_000, MS)
    assert [t for t, _, _ in fifo] == sorted(t for t, _, _ in fifo)
    times = [t for t, _, _ in tfifo]
    assert times != sorted(times)  # netem's default: frames overtake each other
    # and each frame keeps exactly its own delay: uniform over [mu - sigma, mu + sigma)
    d = np.array([t - i * MS for i, t in enumerate(times)], dtype=float)
    assert d.min() >= 0 and d.max() < 10 * MS
    var = ((2 * 5 * MS) ** 2 - 1) / 12
    assert abs(d.mean() - (5 * MS - 0.5)) <= Z99 * math.sqrt(var / len(d))


async def test_tfifo_wakes_the_release_task_for_a_new_head() -> None:
    from netsim.clock import ManualClock
    from netsim.dataplane.impair import ImpairedPath
    from netsim.dataplane.port import PortCounters

    clock = ManualClock()  # no timers, no sleep_until: the release task sleeps
    got: list[tuple[int, bytes]] = []
    t0 = clock.now_ns()
    path = ImpairedPath("p", Impairment(delay_ns=15 * MS, order="tfifo"), seed=1, clock=clock,
                        counters=PortCounters(),
                        deliver=lambda fs: got.extend((clock.now_ns() - t0, f) for f in fs))
    path.offer(b"A")  # leaves at 15 ms
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the release task is asleep until 15 ms
    path.set(Impairment(delay_ns=5 * MS, order="tfifo"))
    path.offer(b"B")  # leaves at 5 ms: the new head
    for _ in range(20):
        for _ in range(10):  # let every task run before time moves on
            await asyncio.sleep(0)
        clock.advance(0.001)
    assert got == [(5 * MS, b"B"), (15 * MS, b"A")]
