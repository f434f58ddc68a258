"""The account guard's rules, outcome by outcome (pure logic, no I/O)."""

from __future__ import annotations

from campaign_runner.guard import AccountGuard, Judgement, Refused
from campaign_runner.outcome import Kind, Outcome
from campaign_runner.settings import Breaker

SENT = Outcome(Kind.SENT, http_status=200)
ERROR_500 = Outcome(Kind.SERVER_ERROR, http_status=500, error="Internal server error")
CREDENTIALS = Outcome(Kind.SERVER_ERROR, http_status=500, error="Failed to get LinkedIn authentication credentials")
NO_CONNECTION = Outcome(Kind.NOT_SENT, error="no connection: ConnectError")
LOST = Outcome(Kind.UNKNOWN, error="connection lost")
FORBIDDEN = Outcome(Kind.REJECTED, http_status=403, error="no active subscription")
INVALID = Outcome(Kind.REJECTED, http_status=400, error="bad")
LIMITED = Outcome(Kind.RATE_LIMITED, http_status=429, error="Rate limit exceeded")


def judge(guard: AccountGuard, recipient: int, outcome: Outcome, now: float = 0.0, requeued: int = 0) -> Judgement:
    return guard.judge(recipient, "c", requeued, outcome, now)


def test_failures_across_recipients_open_the_breaker_with_doubling_pauses_then_stop() -> None:
    guard = AccountGuard(Breaker(failures=3, cooldown=10, pauses=2))
    assert judge(guard, 1, ERROR_500) == Judgement(charged=True)  # the streak's first: its recipient's fault?
    assert judge(guard, 2, NO_CONNECTION) == Judgement(charged=False)  # another recipient: the account's
    first = judge(guard, 3, LOST, now=100)
    assert (first.pause_until, first.stop) == (110, False)
    assert first.reason == "circuit breaker, pause 1 of 2: failed requests in a row (last: unknown: connection lost)"
    second = judge(guard, 1, ERROR_500, now=200)  # half-open: one more failure reopens it
    assert (second.charged, second.pause_until, second.stop) == (False, 220, False)
    assert judge(guard, 4, LIMITED, now=230) == Judgement()  # a 429 says nothing either way
    last = judge(guard, 4, ERROR_500, now=300)
    assert (last.pause_until, last.stop) == (None, True)
    assert last.reason == (
        "requests keep failing (2 pauses, then another failure; last: HTTP 500: Internal server error);"
        " its recipients stay pending"
    )


def test_one_recipient_failing_again_and_again_is_its_own_problem() -> None:
    guard = AccountGuard(Breaker(failures=2))
    for _ in range(10):
        assert judge(guard, 7, ERROR_500) == Judgement(charged=True)


def test_the_credentials_error_blames_the_account_even_for_one_recipient() -> None:
    guard = AccountGuard(Breaker(failures=3, cooldown=5))
    assert judge(guard, 7, CREDENTIALS) == Judgement(charged=False)
    assert judge(guard, 7, CREDENTIALS) == Judgement(charged=False)
    assert judge(guard, 7, CREDENTIALS, now=1).pause_until == 6


def test_an_answer_closes_the_breaker() -> None:
    for answer in (SENT, INVALID, FORBIDDEN):
        guard = AccountGuard(Breaker(failures=2, cooldown=5, pauses=1))
        judge(guard, 1, ERROR_500)
        assert judge(guard, 2, ERROR_500).pause_until == 5
        judge(guard, 3, answer)
        assert judge(guard, 4, ERROR_500) == Judgement(charged=True)  # a new streak, not half-open
        assert judge(guard, 5, ERROR_500).stop is False  # opens again, first pause again


def test_a_403_streak_across_recipients_stops_the_account_and_puts_the_streak_back() -> None:
    guard = AccountGuard(Breaker(forbidden=3))
    assert judge(guard, 1, FORBIDDEN) == Judgement()
    assert judge(guard, 1, FORBIDDEN) == Judgement()  # the same recipient twice is one of the streak
    assert judge(guard, 2, FORBIDDEN, requeued=1) == Judgement()
    verdict = judge(guard, 3, FORBIDDEN)
    assert verdict.stop
    # Recipient 2 was put back once before: its 403 now fails it for good.
    assert verdict.put_back == (Refused(1, "c", 0), Refused(3, "c", 0))
    assert verdict.reason == (
        "3 recipients in a row refused with 403 (last: HTTP 403: no active subscription): the account or its"
        " subscription looks blocked; 2 of them put back to pending"
    )


def test_a_sent_message_ends_a_403_streak_but_other_answers_do_not() -> None:
    guard = AccountGuard(Breaker(forbidden=2))
    judge(guard, 1, FORBIDDEN)
    judge(guard, 2, SENT)
    assert judge(guard, 3, FORBIDDEN) == Judgement()  # the streak began again
    for neutral in (INVALID, ERROR_500, LIMITED, LOST):
        judge(guard, 4, neutral)
    assert judge(guard, 5, FORBIDDEN).stop


def test_strictest_breaker_takes_every_campaigns_caution() -> None:
    a, b = Breaker(failures=5, cooldown=10, pauses=1, forbidden=9), Breaker(failures=2, cooldown=60, pauses=4)
    assert Breaker.strictest([a, b]) == Breaker(failures=2, cooldown=60, pauses=1, forbidden=5)
    assert Breaker.strictest([]) == Breaker()
