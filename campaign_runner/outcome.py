"""The words every module shares: what an answer was (`Kind`, `Outcome`), what a recipient is
(`Status`), why an account waits (`Wait`), and how a run ended (`Ending`).

Plain data, no I/O: the client makes outcomes, the policy reads them, the store writes them, the
display shows them. The enums are `StrEnum`s, so they are stored, printed and compared as the
strings they always were.
"""

from __future__ import annotations

import email.utils
import enum
from dataclasses import dataclass, field

from .clock import parse_server_time

__all__ = ["AccountEnd", "Availability", "Ending", "Kind", "Outcome", "RateLimitHeaders", "Status", "Wait"]

CREDENTIALS_ERROR = "failed to get linkedin authentication credentials"  # a 500 that names the account
MAX_REMAINING = 1_000_000_000  # a larger X-RateLimit-Remaining is taken as this (SQLite's integers end at 2**63)


class Kind(enum.StrEnum):
    """What one answer (or the lack of one) was."""

    SENT = "sent"  # 200
    REJECTED = "rejected"  # 400, 403, other 4xx: this recipient failed, never retried
    RATE_LIMITED = "rate_limited"  # 429: not a failure, the account pauses
    UNAUTHORIZED = "unauthorized"  # 401: the key is refused; stop the run
    MISROUTED = "misrouted"  # 404, 405, 3xx: the base URL is wrong; stop the run
    SERVER_ERROR = "server_error"  # 500: the API's own error, documented as not sent; retry with backoff
    NOT_SENT = "not_sent"  # the request never left: retry with backoff
    UNKNOWN = "unknown"  # may have been delivered: never re-sent by itself


class Status(enum.StrEnum):
    """A recipient's status (README: Recipient statuses)."""

    PENDING = "pending"  # waiting to be claimed (after a retryable failure: not before `not_before`)
    IN_FLIGHT = "in_flight"  # claimed; its request may be on the wire
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"  # may have been delivered: never sent again by itself
    SKIPPED = "skipped"  # no longer in the campaign's file, contacted by another campaign, in a conversation
    SUPPRESSED = "suppressed"  # on the do-not-contact list: never sent while it stays there
    REPLIED = "replied"  # the person answered: no further step


class Wait(enum.StrEnum):
    """Why an account sends nothing yet (or, READY, that it may)."""

    READY = "ready"
    HOLD = "hold"  # the server asked for a pause (429, Remaining: 0), or the breaker paused it
    PACE = "pace"  # the token bucket: the cap spread over its window
    WINDOW = "window"  # the cap is reached for the current window
    IN_FLIGHT = "in_flight"  # the account's cap is on the wire (another process's requests)
    DELAY = "delay"  # the random gap after a send
    SERVER = "server"  # the server's remaining budget is used up until its reset
    KEY = "key"  # the API key's own limit, shared by its accounts
    SCHEDULE = "schedule"  # outside sending hours
    BACKOFF = "backoff"  # the only recipients left wait for their retry time
    ELSEWHERE = "elsewhere"  # the only recipients left are other workers' requests in flight
    LOOKUP = "lookup"  # the only recipients left need a profile lookup, and the account's budget is spent
    REPLIES = "replies"  # follow-ups are due, but the account's replies must be looked at first


class Ending(enum.StrEnum):
    """How a run (or a plan's simulation) ended."""

    DONE = "done"  # every recipient done
    DEFERRED = "deferred"  # --no-wait: the rest must wait for the limits
    ACCOUNTS_STOPPED = "accounts_stopped"  # every account that could send was stopped
    INTERRUPTED = "interrupted"  # a signal
    FATAL = "fatal"  # the key refused, the address wrong, a worker failed
    HORIZON = "horizon"  # a plan: two years were not enough
    SETTLED = "settled"  # a plan: sending settled into a weekly pattern, the rest is that week repeated
    GIVEN_UP = "given_up"  # a forecast no longer wanted


class AccountEnd(enum.StrEnum):
    """Why an account's worker ended in a run."""

    DRAINED = "drained"  # nothing left to send
    DEFERRED = "deferred"  # --no-wait, and its next send must wait
    STOPPED = "stopped"  # the run stops, or the account was stopped for it


class Availability(enum.StrEnum):
    """An account's state at a glance, as `status` shows it."""

    READY = "ready"
    SENDING = "sending"  # requests on the wire
    WAITING = "waiting"  # for its limits, the schedule, the gap
    HELD = "held"  # by the API (429, Remaining: 0)
    PAUSED = "paused"  # by the circuit breaker
    STOPPED = "stopped"  # by a run: credentials, a 403 streak, failures
    BLOCKED = "blocked"  # the API asked for a hold longer than a week


@dataclass(frozen=True)
class RateLimitHeaders:
    """The X-RateLimit-* headers exactly as they came (None when absent)."""

    action: str | None = None
    limit: str | None = None
    used: str | None = None
    remaining: str | None = None
    reset: str | None = None
    date: str | None = None  # the response's Date header: the server's clock, to the second

    @property
    def server_now(self) -> float | None:
        """The server's clock when it answered, from the Date header."""
        try:
            return email.utils.parsedate_to_datetime(self.date).timestamp() if self.date else None
        except (TypeError, ValueError, IndexError, OverflowError):
            return None

    @property
    def remaining_count(self) -> int | None:
        """X-RateLimit-Remaining as a count a database can hold (0 to MAX_REMAINING), or None."""
        try:
            count = int(self.remaining) if self.remaining is not None else None
        except ValueError:
            return None
        return None if count is None else min(max(count, 0), MAX_REMAINING)

    @property
    def reset_at(self) -> float | None:
        return parse_server_time(self.reset) if self.reset else None


@dataclass(frozen=True)
class Outcome:
    """One answer, as the client read it."""

    kind: Kind
    http_status: int | None = None
    error: str | None = None  # one readable line
    body: str | None = None  # the response body as it came, truncated
    rate_limit: RateLimitHeaders = field(default_factory=RateLimitHeaders)
    hold_until: float | None = None  # the 429 body's holdUntil, when given

    @property
    def blames_account(self) -> bool:
        """A 500 whose text says the sending account's LinkedIn credentials are the trouble."""
        return self.kind is Kind.SERVER_ERROR and CREDENTIALS_ERROR in (self.error or "").lower()
