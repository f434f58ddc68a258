from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaign_runner.limiter import IN_FLIGHT, AccountState, Pacing, advance, decide
from campaign_runner.settings import Limit


def kth_recent(slots: list[float], cap: int) -> float | None:
    """What the store's `ORDER BY slot_at DESC LIMIT 1 OFFSET cap-1` returns."""
    ordered = sorted(slots, reverse=True)
    return ordered[cap - 1] if len(ordered) >= cap else None


def state_of(pacing: Pacing, tat: float, hold: float, slots: list[float]) -> AccountState:
    return AccountState(tat, hold, tuple(kth_recent(slots, limit.cap) for limit in pacing.limits))


def max_in_closed_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best = 0
    for i, start in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t <= start + window))
    return best


limits = st.builds(Limit, st.integers(1, 8), st.sampled_from([0.5, 1.0, 2.0, 3.0, 10.0]))


@settings(max_examples=300, deadline=None)
@given(
    pacing=st.builds(Pacing, st.lists(limits, min_size=1, max_size=3, unique=True).map(tuple), st.integers(1, 3)),
    steps=st.lists(
        st.tuples(st.floats(0, 3), st.floats(0, 0.5), st.one_of(st.none(), st.floats(0.1, 5))),
        min_size=1,
        max_size=60,
    ),
)
def test_never_more_than_cap_in_any_window_and_nothing_during_a_hold(pacing, steps) -> None:
    """A worker that asks at random moments, with random latencies and random server holds."""
    now, tat, hold = 1000.0, 0.0, 0.0
    started: list[float] = []
    finished: list[float] = []
    holds: list[tuple[float, float]] = []
    for gap, latency, hold_for in steps:
        now += gap
        verdict = decide(pacing, state_of(pacing, tat, hold, finished), now)
        if not verdict.go(now):
            assert verdict.at > now
            # Coming back at the moment it names is enough: the limiter never moves its own goalposts.
            assert decide(pacing, state_of(pacing, tat, hold, finished), verdict.at).go(verdict.at)
            continue
        assert now >= hold
        started.append(now)
        tat = advance(pacing, tat, now)
        now += latency  # one request in flight per account: the next question comes after the answer
        finished.append(now)
        if hold_for is not None:  # the answer carried a 429 or Remaining: 0
            hold = max(hold, now + hold_for)
            holds.append((now, hold))
    for limit in pacing.limits:
        assert max_in_closed_window(started, limit.window) <= limit.cap
        assert max_in_closed_window(finished, limit.window) <= limit.cap
    for since, until in holds:
        assert not [t for t in started if since < t < until]


@given(cap=st.integers(1, 200), window=st.floats(1, 86400 * 7))
def test_burst_one_spreads_sends_evenly(cap: int, window: float) -> None:
    pacing = Pacing((Limit(cap, window),))
    now, tat, slots = 0.0, 0.0, []
    for _ in range(min(cap, 20)):
        verdict = decide(pacing, state_of(pacing, tat, 0.0, slots), now)
        now = max(now, verdict.at)
        tat = advance(pacing, tat, now)
        slots.append(now)
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert all(gap == pytest.approx(window / cap) for gap in gaps)


def test_smallest_rate_wins() -> None:
    pacing = Pacing((Limit(150, 86400), Limit(3, 2)))
    assert pacing.interval == pytest.approx(86400 / 150)


def test_request_in_flight_elsewhere_means_look_again_soon() -> None:
    pacing = Pacing((Limit(1, 10),))
    verdict = decide(pacing, AccountState(0.0, 0.0, (IN_FLIGHT,)), 50.0)
    assert verdict.reason == "in_flight"
    assert 50.0 < verdict.at <= 60.0


def test_impossible_pacing_is_refused() -> None:
    with pytest.raises(ValueError):
        Pacing(())
    with pytest.raises(ValueError):
        Pacing((Limit(1, 1),), burst=0)
