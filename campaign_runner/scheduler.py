"""The run loop: one worker per account, all accounts at once, inside one anyio task group.

A worker claims a recipient (store), sends it (client), records the outcome (store) and repeats,
sleeping through the clock when its account's limits or the backoff say so. Recipients are not
assigned to accounts up front: whichever account of a campaign has quota first claims the next one.
Each worker's `AccountGuard` reads its answers for trouble with the account itself: it pauses the
account, or stops it for the run while the other accounts go on.

Stopping: the first SIGINT/SIGTERM (or a fatal API answer) stops new claims, lets each request in
flight finish or time out and records it; a second signal cancels what is in flight, and those
outcomes are recorded as `unknown`.
"""

from __future__ import annotations

import random
import signal
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

import anyio
import anyio.abc

from . import events
from .client import ApiClient, SendRequest
from .clock import Clock, iso
from .errors import StoreError
from .guard import AccountGuard, Judgement
from .limiter import MAX_HOLD
from .outcome import Kind, Outcome
from .settings import Breaker, CampaignSettings, account_label
from .store import ELSEWHERE_POLL, Claimed, Drained, Store, Waiting

DEFAULT_HOLD = 3600.0  # a rate-limit answer that says nothing of when to come back: wait an hour
MIN_HOLD = 1.0  # never come straight back after a 429, whatever the server's clock says
MAX_SKEW = 86400.0  # a Date header further off than a day is no clock to correct by: ignored
SKEW_TOLERANCE = 2.0  # seconds: the Date header has whole seconds, and the answer took a while
NO_RESET = "no usable reset time in the answer: holding for an hour"
KEY_LINE_RECHECK = 60.0  # seconds an account waits in line for the API key's limit before it looks again
MAX_BACKOFF = 300.0
ANNOUNCED_WAIT = 3.0  # seconds: a pause between two sends at least this long is reported as a wait
INTERRUPTED = "the request was interrupted in flight; it may have been delivered"


@dataclass(frozen=True)
class RunResult:
    reason: str  # done, deferred (--no-wait left work for later), accounts_stopped, interrupted, fatal
    message: str | None = None


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


def backoff(failures: int, initial: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: initial, 2x, 4x... plus up to `initial` of noise, never
    more than MAX_BACKOFF in all (the clamp comes after the jitter, as in stamina)."""
    return min(MAX_BACKOFF, initial * 2 ** max(failures - 1, 0) + rng.uniform(0, initial))


class Scheduler:
    def __init__(
        self,
        store: Store,
        api: ApiClient,
        clock: Clock,
        *,
        run_id: int,
        campaigns: Sequence[CampaignSettings],
        emit: events.EventSink = events.ignore,
        no_wait: bool = False,
        handle_signals: bool = False,
        rng: random.Random | None = None,
    ):
        self._store = store
        self._api = api
        self._clock = clock
        self._run_id = run_id
        self._campaigns = {c.name: c for c in campaigns}
        self._sink = emit
        self.output_error: Exception | None = None  # why progress output stopped, if it did
        self._no_wait = no_wait
        self._handle_signals = handle_signals
        self._rng = rng or random.Random()
        self._stop = anyio.Event()
        # Sleeping workers to wake when an outcome is recorded, or when an account has nothing left.
        self._on_progress: set[anyio.Event] = set()
        self._on_drained: set[anyio.Event] = set()
        self._result: RunResult | None = None
        self._errors: list[Exception] = []
        self._deferred = False
        self._stopped: dict[str, str] = {}  # account -> why its guard stopped it
        # Accounts waiting for the API key's limit, in the order they first had to. Only the head
        # asks for a slot; the others wait behind it, so a busy account cannot starve the rest.
        self._key_line: deque[str] = deque()
        self._key_wakes: dict[str, anyio.Event] = {}
        self._workers_scope: anyio.CancelScope | None = None

    def accounts(self) -> dict[str, list[str]]:
        """Account id -> the campaigns it sends for, in the order given."""
        found: dict[str, list[str]] = {}
        for campaign in self._campaigns.values():
            for account in campaign.account_ids:
                found.setdefault(account, []).append(campaign.name)
        return found

    def stop(
        self, reason: str = "interrupted", message: str = "stopping: no new sends; waiting for requests in flight"
    ) -> None:
        first = self._result is None
        if first:
            self._result = RunResult(reason, message)
        self._stop.set()
        self._wake(self._on_progress | self._on_drained)
        if first:
            self._emit(events.Stopping(reason, message))

    def _emit(self, event: events.Event) -> None:
        """Report an event. Output that fails (a closed pipe, a full disk) must never stop the
        sending or the recording of outcomes: it is switched off instead, and kept for the caller."""
        try:
            self._sink(event)
        except Exception as exc:  # noqa: BLE001 - any failure of the sink, see above
            self._sink = events.ignore
            self.output_error = exc

    async def run(self) -> RunResult:
        """Send until every recipient is done, the run is stopped, or (--no-wait) it must wait.

        A worker that fails (the database gone, a bug) stops the others gently, so their
        requests in flight finish and are recorded; its error is raised at the end.
        """
        accounts = self.accounts()
        await self._recover()
        counts = {name: await self._store.counts(name) for name in self._campaigns}
        pacing = await self._store.pacing(list(accounts), list(self._campaigns), self._clock.now())
        self._emit(events.RunStarted(counts, {a: str(pacing[a]) for a in accounts if a in pacing}))
        async with anyio.create_task_group() as outer:
            if self._handle_signals:
                await outer.start(self._watch_signals)
            with anyio.CancelScope() as scope:
                self._workers_scope = scope
                async with anyio.create_task_group() as workers:
                    for account, names in accounts.items():
                        workers.start_soon(self._worker, account, names)
            outer.cancel_scope.cancel()
        if self._errors:
            raise self._errors[0]
        if self._result is not None:
            return self._result
        if self._stopped:
            stopped = "; ".join(f"{account_label(a)} stopped: {why}" for a, why in self._stopped.items())
            counts = [await self._store.counts(name) for name in self._campaigns]
            if not any(c["pending"] or c["in_flight"] for c in counts):  # the others sent everything
                return RunResult(
                    "accounts_stopped",
                    f"{stopped}. The other accounts sent everything; fix the account before it sends again",
                )
            return RunResult("accounts_stopped", f"{stopped}. Fix the account, then run `campaign-runner resume`")
        return RunResult("deferred") if self._deferred else RunResult("done")

    async def _watch_signals(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                if not self._stop.is_set():
                    self.stop()
                elif self._workers_scope is not None:
                    self._emit(
                        events.Stopping("interrupted", "stopping now: requests in flight are recorded as unknown")
                    )
                    self._workers_scope.cancel()

    async def _recover(self) -> None:
        with anyio.CancelScope(shield=True):
            lost = await self._store.recover(self._run_id, self._clock.now())
        for item in lost:
            self._emit(item)

    def _set_progress(self) -> None:
        self._wake(self._on_progress)

    def _set_drained(self) -> None:
        self._wake(self._on_drained)

    @staticmethod
    def _wake(sleepers: set[anyio.Event]) -> None:
        for wake in list(sleepers):
            wake.set()

    async def _worker(self, account: str, names: list[str]) -> None:
        with self._clock.worker():
            try:
                await self._work(account, names)
            except Exception as exc:  # noqa: BLE001 - stop the others gently; run() raises it
                self._errors.append(exc)
                self.stop("fatal", f"{account_label(account)} stopped: {exc}")
            finally:
                self._leave_key_line(account)

    async def _work(self, account: str, names: list[str]) -> None:
        order = deque(names)
        guard = AccountGuard(Breaker.strictest(self._campaigns[name].breaker for name in names))
        announced: tuple[float, str] | None = None
        next_recovery = 0.0
        while not self._stop.is_set():
            await self._wait_in_key_line(account)
            # Registered before the claim, so a change in between is not missed.
            wake = anyio.Event()
            self._on_progress.add(wake)
            self._on_drained.add(wake)
            with anyio.CancelScope(shield=True):
                now = self._clock.now()
                decision = await self._store.claim(self._run_id, account, list(order), now, draw=self._rng.uniform)
            if isinstance(decision, Waiting) and decision.reason == "key":
                if account not in self._key_line:
                    self._key_line.append(account)
            else:
                self._leave_key_line(account)
            if isinstance(decision, Drained):
                self._forget(wake)
                self._emit(events.AccountFinished(account, "drained"))
                self._set_drained()  # others waiting on their own quota may have nothing left either
                return
            if isinstance(decision, Waiting):
                if self._no_wait:
                    self._forget(wake)
                    self._deferred = True
                    if decision.reason != "elsewhere":  # say when the next send may go
                        self._emit(events.AccountWaiting(account, decision.until, decision.reason))
                    self._emit(events.AccountFinished(account, "deferred"))
                    return
                if decision.reason == "elsewhere":
                    if now >= next_recovery:  # what we wait for may belong to a process that is gone
                        await self._recover()
                        next_recovery = now + ELSEWHERE_POLL
                elif announced != (decision.until, decision.reason):
                    self._emit(events.AccountWaiting(account, decision.until, decision.reason))
                announced = (decision.until, decision.reason)
                # Waiting for work, any recorded outcome may bring it (handed back, or the last one
                # ending); waiting for the account's own quota, only the end of all work matters.
                if decision.reason not in ("elsewhere", "backoff"):
                    self._on_progress.discard(wake)
                await self._sleep(decision.until, wake)
                await self._wait_in_key_line(account)
                continue
            self._forget(wake)
            if self._stop.is_set():  # stopped while the claim was being made: it never left
                with anyio.CancelScope(shield=True):
                    await self._store.release(decision, self._clock.now())
                break
            announced = None
            judgement = await self._send(decision, guard)
            order.rotate(-1)  # campaigns sharing an account take turns
            self._set_progress()
            if judgement.stop:
                await self._stop_account(account, judgement)
                return
            if decision.more and decision.next_at > self._clock.now() and not self._no_wait:
                # The account's own pacing rules out another send before then: sleep now
                # instead of asking the database to be told so. With nothing left to claim, ask
                # at once instead, so a finished run ends when its last answer comes.
                if decision.next_at - self._clock.now() >= ANNOUNCED_WAIT:  # say what it waits for
                    self._emit(events.AccountWaiting(account, decision.next_at, decision.next_reason))
                wake = anyio.Event()
                self._on_drained.add(wake)
                await self._sleep(decision.next_at, wake)
        self._emit(events.AccountFinished(account, "stopped"))

    async def _wait_in_key_line(self, account: str) -> None:
        """While other accounts are ahead in line for the API key's limit, wait behind them."""
        if self._key_line and account not in self._key_line:
            self._key_line.append(account)
        while not self._stop.is_set() and account in self._key_line and self._key_line[0] != account:
            wake = self._key_wakes[account] = anyio.Event()
            self._on_drained.add(wake)
            await self._sleep(self._clock.now() + KEY_LINE_RECHECK, wake)

    def _leave_key_line(self, account: str) -> None:
        if account not in self._key_line:
            return
        was_head = self._key_line[0] == account
        self._key_line.remove(account)
        if was_head and self._key_line and (wake := self._key_wakes.pop(self._key_line[0], None)):
            wake.set()

    async def _stop_account(self, account: str, judgement: Judgement) -> None:
        reason = judgement.reason or "stopped"
        self._stopped[account] = reason
        with anyio.CancelScope(shield=True):
            await self._store.stop_account(account, reason, self._clock.now())
        put_back: dict[str, int] = {}
        for refused in judgement.put_back:
            put_back[refused.campaign] = put_back.get(refused.campaign, 0) + 1
        self._emit(events.AccountStopped(account, reason, put_back))
        self._set_drained()  # the campaigns it sent for may have nothing left for the others

    async def _send(self, claim: Claimed, guard: AccountGuard) -> Judgement:
        """Send one claimed recipient and record the outcome, whatever happens to this task."""
        request = SendRequest(
            endpoint=claim.endpoint,
            recipient=claim.profile_urn,
            group_id=claim.group_id,
            message=claim.message,
            account_id=claim.account_id or None,
        )
        started = self._clock.now()
        try:
            outcome = await self._api.send(request)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._record(claim, Outcome(Kind.UNKNOWN, error=INTERRUPTED), started, Judgement())
            raise
        except Exception as exc:  # a bug below the client: record the claim before the worker stops
            with anyio.CancelScope(shield=True):
                error = f"the request failed unexpectedly ({type(exc).__name__}); it may have been delivered"
                await self._record(claim, Outcome(Kind.UNKNOWN, error=error), started, Judgement())
            raise
        judgement = guard.judge(claim.recipient_id, claim.campaign, claim.requeued, outcome, self._clock.now())
        with anyio.CancelScope(shield=True):
            judgement = await self._record(claim, outcome, started, judgement)
        if outcome.kind is Kind.UNAUTHORIZED:
            self.stop("fatal", f"the API refused the key (401: {outcome.error}); nothing was marked failed")
        elif outcome.kind is Kind.MISROUTED:
            self.stop("fatal", f"the API address looks wrong ({outcome.error}); check --base-url")
        return judgement

    async def _record(self, claim: Claimed, outcome: Outcome, started: float, judgement: Judgement) -> Judgement:
        """Record an outcome; return the judgement on the account, which a hold asking for longer
        than MAX_HOLD turns into a stop."""
        now = self._clock.now()
        hold = hold_for(outcome, now)
        held = hold.until if hold else 0.0
        pause = judgement.pause_until
        try:
            status = await self._store.record(
                claim,
                outcome,
                now,
                latency=max(now - started, 0.0),
                max_attempts=claim.max_attempts,
                retry_at=now + backoff(claim.retries + 1, claim.backoff, self._rng),
                hold_until=max(held, pause or 0.0) or None,
                hold_reason=judgement.reason if pause and pause > held else (hold.reason if hold else None),
                server_reset=reset_at(outcome, now),
                charged=judgement.charged,
                put_back=[r.recipient_id for r in judgement.put_back],
                put_back_note=judgement.reason and f"put back: {judgement.reason}; another 403 fails it for good",
            )
        except StoreError as exc:
            # Say what was lost: the recipient stays in_flight, and the next run marks it unknown.
            raise StoreError(
                f"{exc}; the answer for {claim.profile_urn} ({outcome.kind.value}, HTTP {outcome.http_status})"
                " could not be recorded"
            ) from exc
        self._emit(
            events.Attempted(
                campaign=claim.campaign,
                account_id=claim.account_id,
                profile_urn=claim.profile_urn,
                attempt=claim.attempt,
                outcome=outcome.kind,
                http_status=outcome.http_status,
                error=outcome.error,
                status=status,
                latency=max(now - started, 0.0),
                window_used=claim.window_used,
                window_cap=claim.window_cap,
            )
        )
        if hold is not None:
            self._emit(events.AccountHeld(claim.account_id, hold.until, hold.reason))
            if hold.blocked:
                return replace(judgement, stop=True, reason=f"{hold.reason} (see `campaign-runner hold list`)")
        if pause is not None:
            self._emit(events.AccountPaused(claim.account_id, pause, judgement.reason or "circuit breaker"))
        return judgement

    def _forget(self, wake: anyio.Event) -> None:
        self._on_progress.discard(wake)
        self._on_drained.discard(wake)

    async def _sleep(self, until: float, wake: anyio.Event) -> None:
        """Sleep until `until`, or until `wake` is set (stopping sets every one)."""
        try:
            if not self._stop.is_set():
                await self._clock.sleep_until(until, wake)
        finally:
            self._forget(wake)
