"""What the scheduler tells the outside world while it runs. The CLI renders these; tests read them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .outcome import AccountEnd, Ending, Kind, Status, Wait


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
    status: Status  # the recipient's status after this attempt
    latency: float
    window_used: int
    window_cap: int
    step: int = 0  # the step of its campaign this was (0: the first message)


@dataclass(frozen=True)
class RepliesPolled:
    """An account's conversations were looked at for replies."""

    account_id: str
    replies: int  # new replies recorded
    opted_out: int  # of which asked not to be contacted again
    error: str | None = None  # why the look did not complete


@dataclass(frozen=True)
class Looked:
    """A read made for the outreach: a profile lookup, a conversation pre-check, an account's health."""

    account_id: str
    action: str  # profile, precheck, status (store.ReadAction)
    subject: str  # the public identifier, or the account
    outcome: Kind
    detail: str  # what it found, or why it could not
    campaign: str | None = None
    status: Status | None = None  # what became of the recipient, when it was settled by this


@dataclass(frozen=True)
class AccountWaiting:
    account_id: str
    until: float
    reason: Wait


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
    reason: AccountEnd


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
    result: Ending = Ending.DONE  # or HORIZON (beyond two years), ACCOUNTS_STOPPED (none of them can send)
    problem: str | None = None  # why no forecast could be made


@dataclass(frozen=True)
class Stopping:
    reason: Ending  # interrupted, fatal
    message: str


Event = (
    RunStarted
    | Attempted
    | Looked
    | RepliesPolled
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
