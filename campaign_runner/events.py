"""What the scheduler tells the outside world while it runs. The CLI renders these; tests read them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .outcome import Kind


@dataclass(frozen=True)
class RunStarted:
    counts: dict[str, dict[str, int]]  # campaign -> status -> recipients
    accounts: dict[str, str]  # account id -> the limits in force, as text


@dataclass(frozen=True)
class Attempted:
    campaign: str
    account_id: str
    profile_urn: str
    attempt: int
    outcome: Kind
    http_status: int | None
    error: str | None
    status: str  # the recipient's status after this attempt
    latency: float
    window_used: int
    window_cap: int


@dataclass(frozen=True)
class AccountWaiting:
    account_id: str
    until: float
    reason: str  # hold, pace, window, in_flight, delay, server, key, schedule, backoff, elsewhere


@dataclass(frozen=True)
class AccountHeld:
    account_id: str
    until: float
    reason: str


@dataclass(frozen=True)
class AccountPaused:
    """The circuit breaker opened: the account's requests keep failing."""

    account_id: str
    until: float
    reason: str


@dataclass(frozen=True)
class AccountStopped:
    """The account sends nothing more in this run (its requests keep failing, or it looks blocked)."""

    account_id: str
    reason: str
    put_back: dict[str, int]  # campaign -> recipients of a 403 streak put back to pending


@dataclass(frozen=True)
class AccountFinished:
    account_id: str
    reason: str  # drained: nothing left; deferred: --no-wait and the next send must wait; stopped


@dataclass(frozen=True)
class Recovered:
    """A request left in flight by a process that is gone: its recipient is now `unknown`."""

    campaign: str
    account_id: str
    profile_urn: str


@dataclass(frozen=True)
class Forecast:
    """A forecast of a campaign (`plan`'s simulation of the database as it stood), made and stored."""

    campaign: str
    made_at: float
    finish: float | None  # the last send; None when none is in sight (see `result`) or it failed
    timezone: str  # the campaign's, to show the finish in
    result: str = "done"  # done, horizon (beyond two years), accounts_stopped (none of them can send)
    problem: str | None = None  # why no forecast could be made


@dataclass(frozen=True)
class Stopping:
    reason: str  # interrupted, fatal
    message: str


Event = (
    RunStarted
    | Attempted
    | AccountWaiting
    | AccountHeld
    | AccountPaused
    | AccountStopped
    | AccountFinished
    | Recovered
    | Forecast
    | Stopping
)
EventSink = Callable[[Event], None]


def ignore(event: Event) -> None:
    pass
