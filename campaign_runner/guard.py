"""What one account's own answers say about the account, apart from its recipients.

Pure logic: an outcome in, a `Judgement` out; the scheduler acts on it. Two rules, per account and
per run (a new run trusts the account again):

* Circuit breaker. Failed requests in a row (500, no connection, no answer) for different
  recipients, or the 500 whose text names the account's LinkedIn credentials, mean the account or
  the API is in trouble. After `failures` of them the account pauses for `cooldown`, doubling each
  time; after a pause one more failure reopens it at once (half-open). Once it has paused `pauses`
  times with no answer in between, the next opening stops the account for this run. Only a streak
  of one recipient alone counts against that recipient's attempts, so an outage cannot fail a list.
* Blocked account. 403s in a row for `forbidden` different recipients mean the account or its
  subscription is blocked, not the recipients: the account stops, and the recipients of the streak
  go back to pending. One that was put back before is failed for good by its next 403, so a list of
  real non-members cannot go round forever.

Any answer that shows the account works (a 200) clears both; a 400 or 403, which the API can only
give once it works, clears the breaker.
"""

from __future__ import annotations

from dataclasses import dataclass

from .outcome import Kind, Outcome
from .settings import Breaker

__all__ = ["AccountGuard", "Judgement", "Refused"]

FAILURES = (Kind.SERVER_ERROR, Kind.NOT_SENT, Kind.UNKNOWN)


@dataclass(frozen=True)
class Refused:
    """A recipient refused with 403 in the current streak."""

    recipient_id: int
    campaign: str
    requeued: int  # times it was put back before


@dataclass(frozen=True)
class Judgement:
    charged: bool = True  # a retryable failure counts against the recipient's attempts
    pause_until: float | None = None  # the breaker opened: send nothing until then
    reason: str | None = None  # why it paused or stopped
    stop: bool = False  # the account sends nothing more in this run
    put_back: tuple[Refused, ...] = ()  # recipients of a 403 streak, back to pending


class AccountGuard:
    def __init__(self, breaker: Breaker):
        self.breaker = breaker
        self._failures = 0  # failed requests in the current streak that count towards opening
        self._failed_recipient: int | None = None  # the recipient of the streak's last failure
        self._alone = True  # every failure of the streak was for that one recipient
        self._openings = 0  # since the last answer
        self._refused: list[Refused] = []

    def __repr__(self) -> str:
        return (
            f"AccountGuard(failures={self._failures}, openings={self._openings}, refused={len(self._refused)},"
            f" {self.breaker})"
        )

    def judge(self, recipient_id: int, campaign: str, requeued: int, outcome: Outcome, now: float) -> Judgement:
        kind = outcome.kind
        if kind is Kind.SENT:
            self._clear_failures()
            self._refused.clear()
            return Judgement()
        if kind is Kind.REJECTED:
            self._clear_failures()
            if outcome.http_status == 403:
                return self._forbidden(Refused(recipient_id, campaign, requeued), outcome)
            return Judgement()
        if kind in FAILURES:
            return self._failure(recipient_id, outcome, now)
        return Judgement()  # 429 and the run-stopping answers say nothing either way

    def _clear_failures(self) -> None:
        self._failures, self._failed_recipient, self._alone, self._openings = 0, None, True, 0

    def _failure(self, recipient_id: int, outcome: Outcome, now: float) -> Judgement:
        blames_account = outcome.blames_account
        another = self._failed_recipient != recipient_id  # also true for a streak's first failure
        if another and self._failed_recipient is not None:
            self._alone = False
        charged = self._alone and not blames_account
        # One recipient failing again and again is its own problem (its attempts are bounded);
        # failures across recipients, or the credentials error, are the account's.
        if another or blames_account or self._openings:
            self._failures += 1
        self._failed_recipient = recipient_id
        threshold = 1 if self._openings else self.breaker.failures  # half-open after a pause
        if self._failures < threshold:
            return Judgement(charged=charged)
        self._failures = 0
        self._openings += 1
        last = _describe(outcome)
        if self._openings > self.breaker.pauses:
            reason = (
                f"requests keep failing ({self.breaker.pauses} pauses, then another failure; last: {last});"
                " its recipients stay pending"
            )
            return Judgement(charged=charged, reason=reason, stop=True)
        pause = self.breaker.cooldown * 2 ** (self._openings - 1)
        step = f"{self._openings} of {self.breaker.pauses}"
        reason = f"circuit breaker, pause {step}: failed requests in a row (last: {last})"
        return Judgement(charged=charged, pause_until=now + pause, reason=reason)

    def _forbidden(self, refused: Refused, outcome: Outcome) -> Judgement:
        if all(r.recipient_id != refused.recipient_id for r in self._refused):
            self._refused.append(refused)
        if len(self._refused) < self.breaker.forbidden:
            return Judgement()
        streak, self._refused = tuple(self._refused), []
        put_back = tuple(r for r in streak if r.requeued == 0)
        reason = (
            f"{len(streak)} recipients in a row refused with 403 (last: {_describe(outcome)}): the account or its"
            f" subscription looks blocked; {len(put_back)} of them put back to pending"
        )
        return Judgement(reason=reason, stop=True, put_back=put_back)


def _describe(outcome: Outcome) -> str:
    status = f"HTTP {outcome.http_status}" if outcome.http_status else outcome.kind.value
    return f"{status}: {outcome.error}" if outcome.error else status
