"""Pacing math for one account: state and `now` in, "go" or "wait until t" out. No I/O, no awaits.

These rules hold together for every account:

* a token bucket (GCRA form) refilling at cap/window with a small burst (default 1), so sends are
  spread across the window instead of bunched at its start. With a schedule the cap is spread
  over the hours the account may send (150 over 8.5 hours: one every 3.4 minutes), not the day;
* a sliding-window check: a bucket alone admits its burst on top of the rate, so it could pass
  cap + burst requests in one window. A new request is admitted only when the cap-th most recent
  request of the account lies more than `window` in the past, for every limit in force, and
  likewise for the API key's own limits over the requests of all its accounts;
* the random gap drawn after each send, on top of the bucket's interval (which is shortened by the
  gap's mean, so the cap still spreads over the hours), the server's holds and remaining budget
  (`hold_for`, `server_budget`: bounded, and read on our clock whatever the server's says);
* the schedule: whatever the rest allows happens only inside a sending window.

Invariant: for every limit (cap, window) in force and every closed interval of length `window`,
the account starts at most `cap` requests in it.

Request times are "slot times": when a request is claimed its slot time is `IN_FLIGHT`; when its
outcome is known it becomes the moment the response arrived (the latest moment the server can
have received it). Measuring windows from those moments keeps the invariant true as the server
sees it, whatever the latency.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .clock import iso
from .outcome import Kind, Outcome, Wait
from .schedule import Schedule, next_open
from .settings import Limit

EPSILON = 0.001  # seconds added past a window's edge, so two requests never share an edge
IN_FLIGHT = 1e18  # slot time of a request whose outcome is not known yet
IN_FLIGHT_POLL = 1.0  # how soon to look again when another process's request holds the window
# The longest hold kept as the server asked. LinkedIn's budgets run over a day or a week, so a
# longer one (up to 9999-12-31, say) is no rate limit: the account is taken as blocked by the API,
# stopped for the run, and held this long; `campaign-runner hold clear` lets it go sooner. Nothing
# longer is ever stored, so no time the server sends can reach the schedule's date arithmetic.
MAX_HOLD = 7 * 86400.0
DEFAULT_HOLD = 3600.0  # a rate-limit answer that says nothing of when to come back: wait an hour
MIN_HOLD = 1.0  # never come straight back after a 429, whatever the server's clock says
MAX_SKEW = 86400.0  # a Date header further off than a day is no clock to correct by: ignored
SKEW_TOLERANCE = 2.0  # seconds: the Date header has whole seconds, and the answer took a while
NO_RESET = "no usable reset time in the answer: holding for an hour"


@dataclass(frozen=True)
class Pacing:
    """Every limit in force on one account (the smallest of all campaigns that use it wins)."""

    limits: tuple[Limit, ...]
    burst: int = 1
    schedules: tuple[Schedule, ...] = ()  # all must allow a send (an account campaigns share)
    warmup_day: int | None = None  # with a warm-up: the account's day of sending (1 is its first)...
    warmup_cap: int | None = None  # ...and that day's cap, one of `limits`

    def __post_init__(self) -> None:
        if not self.limits:
            raise ValueError("an account needs at least one limit")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")

    @property
    def open_schedules(self) -> tuple[Schedule, ...]:
        return tuple(s for s in self.schedules if not s.always)

    @property
    def delay(self) -> tuple[float, float]:
        """The random gap after each send: the longest of every schedule's."""
        return max((s.delay for s in self.schedules), default=(0.0, 0.0))

    def span(self, window: float) -> float:
        """How much of a `window` the account may actually send in: all of it without a schedule;
        with one, the open hours of the days it covers (so a daily cap spreads over the hours)."""
        schedules = self.open_schedules
        if not schedules:
            return window
        daily = min(s.open_seconds for s in schedules)
        if window < 86400:
            return min(window, daily)
        days = min(len(s.days) for s in schedules)
        return daily * max(1.0, window / 86400 * days / 7)

    @property
    def slowest(self) -> Limit:
        """The limit with the lowest rate: the one that paces the account."""
        return max(self.limits, key=lambda limit: self.span(limit.window) / limit.cap)

    @property
    def spread(self) -> float:
        """Seconds between two sends on average: the slowest rate in force, over its span."""
        return max(self.span(limit.window) / limit.cap for limit in self.limits)

    @property
    def interval(self) -> float:
        """Seconds between two tokens: the spread, less the mean of the random gap drawn on top of
        each send, so that gaps vary around the spread instead of going out like clockwork."""
        low, high = self.delay
        return max(self.spread - (low + high) / 2, 0.0)

    def __str__(self) -> str:
        warmup = Limit(self.warmup_cap, 86400.0) if self.warmup_cap is not None else None
        text = ", ".join(str(limit) for limit in sorted(set(self.limits)) if limit != warmup)
        if warmup is not None:
            text += f"{', ' if text else ''}warm-up day {self.warmup_day}: at most {self.warmup_cap} today"
        shown = sorted({str(s) for s in self.schedules if not s.always or s.delay[1]})
        return f"{text} ({'; '.join(shown)})" if shown else text


@dataclass(frozen=True)
class AccountState:
    tat: float = 0.0  # GCRA "theoretical arrival time" of the next token
    hold_until: float = 0.0  # the server asked us to pause until then (429, Remaining: 0)
    # Per limit of the Pacing, in the same order: slot time of the cap-th most recent request,
    # or None when the account has fewer than cap requests on record.
    kth_recent: tuple[float | None, ...] = ()
    gap_until: float = 0.0  # the random gap drawn after the last send ends then
    server_until: float = 0.0  # the server's X-RateLimit-Remaining is used up until its reset
    # The API key's limits, over the requests of every account: (limit, cap-th most recent slot).
    key_recent: tuple[tuple[Limit, float | None], ...] = ()


@dataclass(frozen=True)
class Verdict:
    at: float  # earliest moment a request may start; <= now means "go"
    reason: Wait

    def go(self, now: float) -> bool:
        return self.at <= now


def decide(pacing: Pacing, state: AccountState, now: float) -> Verdict:
    candidates = [
        (now, Wait.READY),
        (state.hold_until, Wait.HOLD),
        (state.tat - (pacing.burst - 1) * pacing.interval, Wait.PACE),
        (state.gap_until, Wait.DELAY),
        (state.server_until, Wait.SERVER),
    ]
    windows = [(limit, kth, Wait.WINDOW) for limit, kth in zip(pacing.limits, state.kth_recent, strict=True)]
    windows += [(limit, kth, Wait.KEY) for limit, kth in state.key_recent]
    for limit, kth, why in windows:
        if kth is None:
            continue
        if kth >= IN_FLIGHT:
            # `cap` requests are on the wire (another process's, or for the key's limit, other
            # accounts'): their times are not known yet, so look again shortly.
            candidates.append((now + IN_FLIGHT_POLL, Wait.IN_FLIGHT if why is Wait.WINDOW else why))
        else:
            candidates.append((kth + limit.window + EPSILON, why))
    at, reason = max(candidates, key=lambda item: item[0])
    schedules = pacing.open_schedules
    if schedules:
        opens = next_open(schedules, at)
        if opens > at:
            at, reason = opens, Wait.SCHEDULE
    return Verdict(at, reason if at > now else Wait.READY)


def advance(pacing: Pacing, tat: float, now: float) -> float:
    """The bucket's state after a request starts at `now`."""
    return max(tat, now) + pacing.interval


def after_send(pacing: Pacing, tat: float, now: float, draw: Callable[[float, float], float]) -> tuple[float, float]:
    """The bucket's state after a request starts at `now`, and when the random gap drawn after it
    ends (0 without a gap): `draw(low, high)` picks within the schedule's delay."""
    low, high = pacing.delay
    return advance(pacing, tat, now), (now + pacing.interval + draw(low, high) if high else 0.0)


def next_after_send(pacing: Pacing, state: AccountState, tat: float, gap_until: float, now: float) -> Verdict:
    """A lower bound for an account's next request after one starts at `now` (the bucket at `tat`,
    the gap until `gap_until`, holds and the schedule): its windows are looked at again by the
    next claim, so a worker can sleep until then rather than ask."""
    after = AccountState(
        tat=tat, hold_until=state.hold_until, gap_until=gap_until, kth_recent=tuple(None for _ in state.kth_recent)
    )
    return decide(pacing, after, now)


def server_until(remaining: int | None, reset: float | None, now: float, sent_since: Callable[[], int]) -> float:
    """Until when the server's own budget (X-RateLimit-Remaining, last seen with its reset) rules
    the account out: the server knows better when another tool, or a person, used it too. Local
    limits still hold on top. `sent_since` counts the requests made since it was seen."""
    if remaining is None or reset is None or reset <= now:
        return 0.0
    return reset if sent_since() >= remaining else 0.0


class KeyLine:
    """The accounts waiting for the API key's own limit, in the order they first had to. Only the
    head asks for a slot; the others wait behind it, so a busy account cannot starve the rest."""

    def __init__(self) -> None:
        self._line: deque[str] = deque()

    def join(self, account: str) -> None:
        if account not in self._line:
            self._line.append(account)

    def join_if_busy(self, account: str) -> None:
        """Join at the back when others already wait: nobody jumps the line."""
        if self._line:
            self.join(account)

    def behind(self, account: str) -> bool:
        """In line, and not at its head."""
        return account in self._line and self._line[0] != account

    def leave(self, account: str) -> str | None:
        """Leave the line; the account now at its head, if this one was the head (to wake it)."""
        if account not in self._line:
            return None
        was_head = self._line[0] == account
        self._line.remove(account)
        return self._line[0] if was_head and self._line else None


@dataclass(frozen=True)
class Hold:
    """The server's word that an account must send nothing until `until` (always within MAX_HOLD)."""

    until: float
    reason: str
    blocked: bool = False  # it asked for longer than MAX_HOLD: the account is stopped for the run


def server_skew(outcome: Outcome, now: float) -> float:
    """How far the server's clock runs ahead of ours (its Date header), when that is clear."""
    server_now = outcome.rate_limit.server_now
    if server_now is None or abs(server_now - now) <= SKEW_TOLERANCE or abs(server_now - now) > MAX_SKEW:
        return 0.0
    return server_now - now


def reset_at(outcome: Outcome, now: float) -> float | None:
    """X-RateLimit-Reset on our clock: a server whose clock runs behind would otherwise have us
    come back early, one running ahead have us wait too long. None when absent, unreadable, or
    further away than MAX_HOLD (no budget resets that late)."""
    reset = outcome.rate_limit.reset_at
    if reset is None:
        return None
    reset -= server_skew(outcome, now)
    return reset if reset <= now + MAX_HOLD else None


def hold_for(outcome: Outcome, now: float) -> Hold | None:
    """Until when the account must send nothing, from a 429 or a `Remaining: 0` header; None when
    the answer asks for no hold. Whatever times the answer carries, the hold ends between
    `now + MIN_HOLD` and `now + MAX_HOLD`."""
    headers = outcome.rate_limit
    if outcome.kind is Kind.RATE_LIMITED:
        asked = outcome.hold_until if outcome.hold_until is not None else headers.reset_at
        reason = outcome.error or "rate limited"
    elif headers.remaining_count == 0:
        asked, reason = headers.reset_at, "X-RateLimit-Remaining: 0"
    else:
        return None
    if asked is None:
        return Hold(now + DEFAULT_HOLD, f"{reason} ({NO_RESET})")
    until = asked - server_skew(outcome, now)
    if until > now + MAX_HOLD:
        return Hold(
            now + MAX_HOLD,
            f"blocked by the API: it asked for a hold until {iso(asked)} ({reason});"
            f" held for {MAX_HOLD / 86400:g} days",
            blocked=True,
        )
    return Hold(max(until, now + MIN_HOLD), reason)
