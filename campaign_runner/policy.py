"""What an answer means, decided once: (claim, outcome, the guard's judgement, now) in, a
`Settlement` out. No I/O, no awaits.

The settlement is everything that follows from one answer: the recipient's next status, its
retries and retry time, the hold on its account (the server's, or the breaker's pause, whichever
ends later), the server's remaining budget, the recipients a 403 streak puts back, whether the
account works, must stop, or the whole run must. `Store.record` writes it (bounding what it
stores once more, and keeping a recipient that left the file from going back to the queue); the
scheduler acts on it and reports it.

| answer | recipient | account |
| --- | --- | --- |
| 200 (`SENT`) | `sent` | whatever stopped it is over |
| 400, 403, other 4xx (`REJECTED`) | `failed` | a 403 streak stops it (guard) |
| `UNKNOWN` | `unknown`: never sent again by itself | counts towards the breaker |
| 500, no connection | `pending` after a backoff, `failed` after `max_attempts` | counts towards the breaker |
| 429, 401, 404 | `pending` (nothing is wrong with it) | 429: held until the server says |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .guard import Judgement, Refused
from .limiter import MAX_HOLD, Hold, hold_for, reset_at
from .outcome import Kind, Outcome, Status

if TYPE_CHECKING:
    from .store import Claimed

__all__ = ["MAX_BACKOFF", "Settlement", "backoff", "settle"]

MAX_BACKOFF = 300.0  # seconds: the longest wait before a retry


@dataclass(frozen=True)
class Settlement:
    """One answer, and all that follows from it."""

    outcome: Outcome
    answered_at: float  # when the answer came: the request's slot time in the windows
    latency: float
    status: Status  # the recipient's next status; a `pending` one that left the file is `skipped`
    retries: int  # its retryable failures so far, this one included when charged
    not_before: float  # a pending recipient is not claimed before then (0: at once)
    held: Hold | None = None  # the server's hold on the account (429, Remaining: 0)
    paused_until: float | None = None  # the breaker's pause of the account
    reason: str | None = None  # the guard's: why the account pauses or stops, or why recipients went back
    stop: str | None = None  # the account sends nothing more in this run: why
    server_reset: float | None = None  # X-RateLimit-Reset on our clock, when it can bound the server's budget
    put_back: tuple[Refused, ...] = ()  # recipients of a 403 streak, back to pending

    @property
    def sent_at(self) -> float | None:
        return self.answered_at if self.status is Status.SENT else None

    @property
    def account_hold(self) -> Hold | None:
        """The hold to write on the account: the server's or the breaker's, whichever ends later,
        never longer than MAX_HOLD (a database must not take even that on trust)."""
        held = self.held.until if self.held else 0.0
        pause = self.paused_until or 0.0
        if max(held, pause) <= self.answered_at:
            return None
        until = min(max(held, pause), self.answered_at + MAX_HOLD)
        if pause > held or self.held is None:
            return Hold(until, self.reason or "circuit breaker")
        return Hold(until, self.held.reason)

    @property
    def account_works(self) -> bool:
        """The answer shows the account can send: whatever stopped it before is over."""
        return self.outcome.kind is Kind.SENT

    @property
    def stops_run(self) -> str | None:
        """Why no account can go on (the key refused, the address wrong): the run stops."""
        if self.outcome.kind is Kind.UNAUTHORIZED:
            return f"the API refused the key (401: {self.outcome.error}); nothing was marked failed"
        if self.outcome.kind is Kind.MISROUTED:
            return f"the API address looks wrong ({self.outcome.error}); check --base-url"
        return None

    @property
    def put_back_note(self) -> str | None:
        return self.reason and f"put back: {self.reason}; another 403 fails it for good"


def backoff(failures: int, initial: float, draw: Callable[[float, float], float]) -> float:
    """Exponential backoff with jitter: initial, 2x, 4x... plus up to `initial` of noise, never
    more than MAX_BACKOFF in all (the clamp comes after the jitter, as in stamina)."""
    return min(MAX_BACKOFF, initial * 2 ** max(failures - 1, 0) + draw(0, initial))


def settle(
    claim: Claimed,
    outcome: Outcome,
    judgement: Judgement,
    *,
    started: float,
    now: float,
    draw: Callable[[float, float], float],
) -> Settlement:
    """What `outcome`, the answer to `claim`'s request (sent at `started`, answered at `now`),
    means for the recipient and its account. `draw(low, high)` picks the backoff's jitter."""
    retries, not_before = claim.retries, 0.0
    if outcome.kind is Kind.SENT:
        status = Status.SENT
    elif outcome.kind is Kind.REJECTED:
        status = Status.FAILED
    elif outcome.kind is Kind.UNKNOWN:
        status = Status.UNKNOWN
    elif outcome.kind in (Kind.SERVER_ERROR, Kind.NOT_SENT):
        retries += 1 if judgement.charged else 0  # not when its account is to blame
        status = Status.FAILED if retries >= claim.max_attempts else Status.PENDING
        if status is Status.PENDING:
            not_before = now + backoff(claim.retries + 1, claim.backoff, draw)
    else:  # rate limited, unauthorized, misrouted: nothing is wrong with the recipient
        status = Status.PENDING
    held = hold_for(outcome, now)
    stop = (judgement.reason or "stopped") if judgement.stop else None
    if held is not None and held.blocked:
        stop = f"{held.reason} (see `campaign-runner hold list`)"
    return Settlement(
        outcome=outcome,
        answered_at=now,
        latency=max(now - started, 0.0),
        status=status,
        retries=retries,
        not_before=not_before,
        held=held,
        paused_until=judgement.pause_until,
        reason=judgement.reason,
        stop=stop,
        server_reset=reset_at(outcome, now),
        put_back=judgement.put_back,
    )
