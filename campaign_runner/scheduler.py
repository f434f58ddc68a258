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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from . import events, replies
from .audience import described, fetch_pages
from .client import ApiClient, ReadAnswer, ReadRequest, SendRequest
from .clock import Clock, SystemClock
from .config import member_renderer
from .errors import RunTakenError, StoreError
from .guard import AccountGuard, Judgement
from .limiter import KeyLine
from .outcome import AccountEnd, Ending, Kind, Outcome, Status, Wait
from .policy import Settlement, settle
from .settings import Breaker, CampaignSettings, account_label
from .store import ELSEWHERE_POLL, HEARTBEAT, RUN_TAKEN, Claimed, Drained, MemberFetch, Read, ReadAction, Store, Waiting

HEALTH_AT_ONCE = 16  # accounts whose health is checked together before any worker starts; the rest check in theirs
FEED_AHEAD = 100  # recipients of a campaign waiting to be sent: below this, its group's next page is fetched
FEED_LOOK = 60.0  # seconds between looks at whether a campaign needs its group's next page
KEY_LINE_RECHECK = 60.0  # seconds an account waits in line for the API key's limit before it looks again
REPLIES_WAIT = 60.0  # seconds a follow-up waits for a look at replies before it asks again
POLL_RETRY = 60.0  # seconds after a look at replies that did not complete before the next
ANNOUNCED_WAIT = 3.0  # seconds: a pause between two sends at least this long is reported as a wait
INTERRUPTED = "the request was interrupted in flight; it may have been delivered"
STOPPING = "stopping: no new sends; waiting for requests in flight"


@dataclass(frozen=True)
class RunResult:
    reason: Ending
    message: str | None = None
    work_left: bool = False  # accounts stopped with recipients still to send: resuming goes on


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
        heartbeat: float | None = None,
    ):
        self._store = store
        self._heartbeat_every = heartbeat  # renew the run's lease this often (None: a simulation, no lease)
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
        self._key_line = KeyLine()  # accounts waiting for the API key's limit
        self._key_wakes: dict[str, anyio.Event] = {}  # how to wake each, when it comes to the head
        self._workers_scope: anyio.CancelScope | None = None
        # Campaigns whose group still brings recipients: their accounts wait for them, not end.
        self._feeding = {c.name for c in campaigns if c.audience is not None}
        self._audience_deferred = False  # --no-wait: a group's next page must wait for a budget
        self._healthy: set[str] = set()  # accounts whose health the API confirmed (or could not tell) this run
        # Each account's look at replies: woken when a follow-up waits for it, or its worker ends.
        self._poll_wakes: dict[str, anyio.Event] = {}
        self._polls_failed: set[str] = set()  # accounts whose last look at replies did not complete
        self._finished: set[str] = set()  # accounts whose worker has ended
        self._polled_at: dict[str, float] = {}  # when each account's last look at replies began

    @classmethod
    @asynccontextmanager
    async def begun(
        cls,
        store: Store,
        api: ApiClient,
        clock: Clock,
        *,
        command: str,
        deadline: float,
        campaigns: Sequence[CampaignSettings],
        **options: Any,
    ) -> AsyncIterator[Scheduler]:
        """A scheduler for one run of `command`: the run is recorded as begun before anything is
        sent (so that a later run can recover its claims if this process dies), and as ended
        afterwards, whatever happens in between. `options` are the constructor's."""
        heartbeat = options.get("heartbeat") or HEARTBEAT
        run_id = await store.begin_run(command, clock.now(), deadline, heartbeat)
        try:
            yield cls(store, api, clock, run_id=run_id, campaigns=campaigns, **options)
        finally:
            with anyio.CancelScope(shield=True):
                await store.end_run(run_id, clock.now())

    def accounts(self) -> dict[str, list[str]]:
        """Account id -> the campaigns it sends for, in the order given."""
        found: dict[str, list[str]] = {}
        for campaign in self._campaigns.values():
            for account in campaign.account_ids:
                found.setdefault(account, []).append(campaign.name)
        return found

    def stop(self, reason: Ending = Ending.INTERRUPTED, message: str = STOPPING) -> None:
        first = self._result is None
        if first:
            self._result = RunResult(reason, message)
        self._stop.set()
        self._wake(self._on_progress | self._on_drained | set(self._poll_wakes.values()))
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
        await self._check_health_at_once(list(accounts))
        async with anyio.create_task_group() as outer:
            if self._handle_signals:
                await outer.start(self._watch_signals)
            if self._heartbeat_every:
                outer.start_soon(self._heartbeat, self._heartbeat_every)
            with anyio.CancelScope() as scope:
                self._workers_scope = scope
                async with anyio.create_task_group() as workers:
                    for name in list(self._feeding):
                        workers.start_soon(self._feeder, self._campaigns[name])
                    for account, names in accounts.items():
                        workers.start_soon(self._worker, account, names)
                        if any(self._campaigns[name].steps.watches_replies for name in names):
                            workers.start_soon(self._poller, account, names)
            outer.cancel_scope.cancel()
        if self._errors:
            raise self._errors[0]
        if self._result is not None:
            return self._result
        if self._stopped:
            stopped = "; ".join(f"{account_label(a)} stopped: {why}" for a, why in self._stopped.items())
            counts = [await self._store.counts(name) for name in self._campaigns]
            if not any(c[Status.PENDING] or c[Status.IN_FLIGHT] for c in counts):  # the others sent everything
                return RunResult(
                    Ending.ACCOUNTS_STOPPED,
                    f"{stopped}. The other accounts sent everything; fix the account before it sends again",
                )
            return RunResult(Ending.ACCOUNTS_STOPPED, f"{stopped}. Fix the account, then resume", work_left=True)
        if self._deferred:  # an account had to wait; but the last answers may have ended the work
            counts = [await self._store.counts(name) for name in self._campaigns]
            if self._audience_deferred or any(c[Status.PENDING] or c[Status.IN_FLIGHT] for c in counts):
                return RunResult(Ending.DEFERRED)
        return RunResult(Ending.DONE)

    async def _watch_signals(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                if not self._stop.is_set():
                    self.stop()
                else:
                    self.halt()

    def halt(self) -> None:
        """Stop now, as a second Ctrl-C does: the requests in flight are cut off and recorded as
        `unknown` (they may have been delivered)."""
        self.stop()
        if self._workers_scope is not None:
            self._emit(events.Stopping(Ending.INTERRUPTED, "stopping now: requests in flight are recorded as unknown"))
            self._workers_scope.cancel()

    async def _heartbeat(self, every: float) -> None:
        """Renew the run's lease, so runners on other hosts leave its claims alone. A run whose
        lease another runner took (it lapsed: this process was paused, or cut off from the
        database) stops at once: its requests in flight are someone else's `unknown` already."""
        while True:
            await anyio.sleep(every)
            if self._store.database_clock and isinstance(self._clock, SystemClock):
                database_now = await self._store.database_now()
                if database_now is not None:
                    self._clock.follow(database_now)  # keep step with the database's clock
            if not await self._store.renew(self._run_id, self._clock.now()):
                self._errors.append(RunTakenError(RUN_TAKEN))
                self.halt()
                return
            await self._recover()  # a dead runner's claims hold its accounts' windows until then

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
                self.stop(Ending.FATAL, f"{account_label(account)} stopped: {exc}")
            finally:
                self._leave_key_line(account)
                self._finished.add(account)
                self._wake_poller(account)

    def _wake_poller(self, account: str) -> None:
        wake = self._poll_wakes.get(account)
        if wake is not None:
            wake.set()

    async def _poller(self, account: str, names: list[str]) -> None:
        """Look at the account's conversations for replies every `reply_poll` (the shortest of its
        campaigns'), and at once when a follow-up waits for a fresh look, until its worker ends."""
        interval = min(self._campaigns[name].steps.reply_poll for name in names)
        with self._clock.worker():
            try:
                while not self._stop.is_set() and account not in self._finished:
                    wake = self._poll_wakes[account] = anyio.Event()
                    last = await self._store.replies_polled(account)
                    due = last + interval if last is not None else self._clock.now()
                    if account in self._polls_failed:
                        due = min(due, self._polled_at.get(account, 0.0) + POLL_RETRY)
                    if due > self._clock.now():
                        await self._sleep(due, wake)
                        if account in self._finished or self._stop.is_set():
                            return
                        if not wake.is_set() and self._clock.now() < due:
                            continue
                    await self._poll(account)
            except Exception as exc:  # noqa: BLE001 - stop the others gently; run() raises it
                self._errors.append(exc)
                self.stop(Ending.FATAL, f"{account_label(account)} replies: {exc}")

    async def _poll(self, account: str) -> None:
        self._polled_at[account] = self._clock.now()

        async def sleep(until: float) -> None:
            wake = anyio.Event()
            self._on_drained.add(wake)
            await self._sleep(until, wake)

        result = await replies.poll(self._store, self._api, self._clock, account, sleep)
        if result.error is not None:
            self._polls_failed.add(account)
        else:
            self._polls_failed.discard(account)
        opted = sum(1 for r in result.replied if r.opt_out)
        self._emit(events.RepliesPolled(account, len(result.replied), opted, result.error))
        self._set_progress()  # follow-ups waiting for this look may go now, or never

    async def _work(self, account: str, names: list[str]) -> None:
        order = deque(names)
        guard = AccountGuard(Breaker.strictest(self._campaigns[name].breaker for name in names))
        announced: tuple[float, Wait] | None = None
        next_recovery = 0.0
        if account in self._stopped:
            return
        if account not in self._healthy and not await self._check_health(account):
            return
        while not self._stop.is_set():
            await self._wait_in_key_line(account)
            # Registered before the claim, so a change in between is not missed.
            wake = anyio.Event()
            self._on_progress.add(wake)
            self._on_drained.add(wake)
            with anyio.CancelScope(shield=True):
                now = self._clock.now()
                decision = await self._store.claim(
                    self._run_id, account, list(order), now, draw=self._rng.uniform, deadline=self._api.deadline
                )
            if isinstance(decision, Waiting) and decision.reason is Wait.KEY:
                self._key_line.join(account)
            else:
                self._leave_key_line(account)
            if isinstance(decision, Drained) and self._feeding.intersection(order):
                # Its group brings more recipients: wait for the next page (or the fetch's end).
                self._on_progress.add(wake)
                await self._sleep(now + FEED_LOOK, wake)
                continue
            if isinstance(decision, Drained):
                self._forget(wake)
                self._emit(events.AccountFinished(account, AccountEnd.DRAINED))
                self._set_drained()  # others waiting on their own quota may have nothing left either
                return
            if isinstance(decision, Waiting) and decision.reason is Wait.REPLIES and account not in self._polls_failed:
                # Due follow-ups wait for a look at replies: ask for one now, and go on once it is done
                # (with --no-wait too: it is work to do now, not a wait).
                self._wake_poller(account)
                self._on_drained.discard(wake)
                await self._sleep(now + REPLIES_WAIT, wake)
                continue
            if isinstance(decision, Waiting):
                if self._no_wait:
                    self._forget(wake)
                    self._deferred = True
                    if decision.reason is not Wait.ELSEWHERE:  # say when the next send may go
                        self._emit(events.AccountWaiting(account, decision.until, decision.reason))
                    self._emit(events.AccountFinished(account, AccountEnd.DEFERRED))
                    return
                if decision.reason is Wait.ELSEWHERE:
                    if now >= next_recovery:  # what we wait for may belong to a process that is gone
                        await self._recover()
                        next_recovery = now + ELSEWHERE_POLL
                elif announced != (decision.until, decision.reason):
                    self._emit(events.AccountWaiting(account, decision.until, decision.reason))
                announced = (decision.until, decision.reason)
                # Waiting for work, any recorded outcome may bring it (handed back, or the last one
                # ending); waiting for the account's own quota, only the end of all work matters.
                if decision.reason not in (Wait.ELSEWHERE, Wait.BACKOFF):
                    self._on_progress.discard(wake)
                await self._sleep(decision.until, wake)
                await self._wait_in_key_line(account)
                continue
            self._forget(wake)
            if isinstance(decision, Read):  # a lookup or pre-check, counted: made even when stopping
                await self._read(decision)
                announced = None
                continue
            if self._stop.is_set():  # stopped while the claim was being made: it never left
                with anyio.CancelScope(shield=True):
                    await self._store.release(decision, self._clock.now())
                break
            announced = None
            settled = await self._send(decision, guard)
            order.rotate(-1)  # campaigns sharing an account take turns
            self._set_progress()
            if settled.stop:
                await self._stop_account(account, settled)
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
        self._emit(events.AccountFinished(account, AccountEnd.STOPPED))

    async def _feeder(self, campaign: CampaignSettings) -> None:
        """Fetch a campaign's audience from its group as it is needed: a page when fewer than
        FEED_AHEAD recipients wait, through whichever of its accounts has budget for it."""
        with self._clock.worker():
            try:
                await self._feed(campaign)
            except Exception as exc:  # noqa: BLE001 - stop the others gently; run() raises it
                self._errors.append(exc)
                self.stop(Ending.FATAL, f"{campaign.name}: {exc}")
            finally:
                self._feeding.discard(campaign.name)
                self._set_progress()
                self._set_drained()

    async def _feed(self, campaign: CampaignSettings) -> None:
        audience = campaign.audience
        assert audience is not None
        fetch = await self._store.member_fetch(
            campaign.group_id, audience.statuses, None, audience.max, campaign.name, self._clock.now()
        )
        render = member_renderer(campaign)

        async def sleep(until: float) -> None:
            wake = anyio.Event()
            self._on_drained.add(wake)
            await self._sleep(until, wake)

        def progress(account: str, fetch: MemberFetch) -> None:
            self._emit(
                events.Looked(
                    account, ReadAction.MEMBERS, campaign.group_id, Kind.SENT, described(fetch), campaign.name
                )
            )

        def say(line: str) -> None:
            self._emit(
                events.Looked(campaign.account_ids[0], ReadAction.MEMBERS, campaign.group_id, Kind.UNKNOWN, line)
            )

        while not self._stop.is_set() and not fetch.done:
            if await self._store.ready_count(campaign.name) >= FEED_AHEAD:
                wake = anyio.Event()
                self._on_progress.add(wake)
                await self._sleep(self._clock.now() + FEED_LOOK, wake)
                continue
            accounts = [a for a in campaign.account_ids if a in self._healthy and a not in self._stopped]
            if not accounts:
                if all(a in self._stopped for a in campaign.account_ids):
                    return
                wake = anyio.Event()  # its accounts' health checks are still on their way
                self._on_progress.add(wake)
                await self._sleep(self._clock.now() + FEED_LOOK, wake)
                continue
            fetched = await fetch_pages(
                self._store,
                self._api,
                self._clock,
                fetch,
                accounts,
                render=render,
                no_wait=self._no_wait,
                pages=1,
                progress=progress,
                say=say,
                sleep=sleep,
                stopped=self._stop.is_set,
            )
            fetch = fetched.fetch
            self._set_progress()
            if fetched.waiting_until is not None:  # --no-wait: the budgets allow no page now
                self._audience_deferred = self._deferred = True
                return

    async def _check_health_at_once(self, accounts: list[str]) -> None:
        """The health checks of the first accounts (as many as the API key's limit allows now), in
        one trip to the database each way and concurrent requests, so the first sends are not held
        up behind hundreds of checks. The rest check in their worker (`_check_health`)."""
        first = accounts[:HEALTH_AT_ONCE]
        reads = await self._store.reserve_many(first, ReadAction.STATUS, self._clock.now(), self._api.deadline)
        answers: dict[int, ReadAnswer] = {}

        async def ask(read: Read) -> None:
            answers[read.read_id] = await self._api.read(ReadRequest.account_status(read.account_id or None))

        try:
            async with anyio.create_task_group() as tg:
                for read in reads:
                    tg.start_soon(ask, read)
        finally:
            unanswered = ReadAnswer(Outcome(Kind.UNKNOWN, error=INTERRUPTED))
            answered = [(read, answers.get(read.read_id, unanswered)) for read in reads]
            await self._store.finish_reads(answered, self._clock.now())
        for read, answer in answered:
            self._answered(read, answer, None)
            await self._judge_health(read, answer)

    async def _check_health(self, account: str) -> bool:
        """Before an account's first send: its health, from the API (`GET /account/status`). An
        account the API reports in ERROR, disabled or without its LinkedIn session is stopped for
        the run, before any recipient is spent on it. A check that cannot be made lets the account
        go on: its sends are watched by the breaker as always."""
        while not self._stop.is_set():
            await self._wait_in_key_line(account)
            read = await self._store.reserve(account, ReadAction.STATUS, account, self._clock.now(), self._api.deadline)
            if isinstance(read, Read):
                break  # keeping its place in line: the check is not the account's turn, its send is
            self._key_line.join(account)  # only the API key's limit holds a health check back
            wake = anyio.Event()
            self._on_drained.add(wake)
            await self._sleep(read, wake)
        else:
            return False
        return await self._judge_health(read, await self._read(read))

    async def _judge_health(self, read: Read, answer: ReadAnswer) -> bool:
        """Whether the account may send, from its health check; stops it for the run if not."""
        account = read.account_id
        problem = None
        if answer.health is not None:
            problem = answer.health.problem
        elif answer.outcome.kind is Kind.REJECTED:
            problem = f"the API does not know it ({answer.outcome.error})"
        if problem is None:
            self._healthy.add(account)
            self._set_progress()
            return True
        self._stopped[account] = problem
        with anyio.CancelScope(shield=True):
            await self._store.stop_account(account, problem, self._clock.now())
        self._emit(events.AccountStopped(account, problem, {}))
        self._set_drained()
        return False

    async def _read(self, read: Read) -> ReadAnswer:
        """Make a reserved read and record what it settles, whatever happens to this task."""
        account = read.account_id or None
        if read.action is ReadAction.PROFILE:
            request = ReadRequest.profile(read.subject, account)
        elif read.action is ReadAction.PRECHECK:
            request = ReadRequest.conversation_exists(read.subject, account)
        else:
            request = ReadRequest.account_status(account)
        try:
            answer = await self._api.read(request)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._store.finish_read(
                    read, ReadAnswer(Outcome(Kind.UNKNOWN, error=INTERRUPTED)), self._clock.now()
                )
            raise
        status = await self._store.finish_read(read, answer, self._clock.now())
        self._answered(read, answer, status)
        return answer

    def _answered(self, read: Read, answer: ReadAnswer, status: str | None) -> None:
        """Say what a read found; a refused key or a wrong address stops the run, as for a send."""
        outcome = answer.outcome
        if outcome.kind in (Kind.UNAUTHORIZED, Kind.MISROUTED):
            self.stop(Ending.FATAL, f"{outcome.error} (HTTP {outcome.http_status})")
        self._emit(
            events.Looked(
                account_id=read.account_id,
                action=read.action,
                subject=read.subject,
                outcome=outcome.kind,
                detail=_found(answer),
                campaign=read.campaign,
                status=Status(status) if status else None,
            )
        )
        if status:
            self._set_progress()

    async def _wait_in_key_line(self, account: str) -> None:
        """While other accounts are ahead in line for the API key's limit, wait behind them."""
        self._key_line.join_if_busy(account)
        while not self._stop.is_set() and self._key_line.behind(account):
            wake = self._key_wakes[account] = anyio.Event()
            self._on_drained.add(wake)
            await self._sleep(self._clock.now() + KEY_LINE_RECHECK, wake)

    def _leave_key_line(self, account: str) -> None:
        head = self._key_line.leave(account)
        if head is not None and (wake := self._key_wakes.pop(head, None)):
            wake.set()

    async def _stop_account(self, account: str, settled: Settlement) -> None:
        reason = settled.stop or "stopped"
        self._stopped[account] = reason
        with anyio.CancelScope(shield=True):
            await self._store.stop_account(account, reason, self._clock.now())
        put_back: dict[str, int] = {}
        for refused in settled.put_back:
            put_back[refused.campaign] = put_back.get(refused.campaign, 0) + 1
        self._emit(events.AccountStopped(account, reason, put_back))
        self._set_drained()  # the campaigns it sent for may have nothing left for the others

    async def _send(self, claim: Claimed, guard: AccountGuard) -> Settlement:
        """Send one claimed recipient and record what its answer settles, whatever happens to this task."""
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
            settled = await self._record(claim, outcome, started, judgement)
        if settled.stops_run:
            self.stop(Ending.FATAL, settled.stops_run)
        return settled

    async def _record(self, claim: Claimed, outcome: Outcome, started: float, judgement: Judgement) -> Settlement:
        """Settle an answer (see `policy`), record it, and say what happened."""
        settled = settle(claim, outcome, judgement, started=started, now=self._clock.now(), draw=self._rng.uniform)
        try:
            status = await self._store.record(claim, settled)
        except StoreError as exc:
            # Say what was lost: the recipient stays in_flight, and the next run marks it unknown.
            raise StoreError(
                f"{exc}; the answer for {claim.profile_urn} ({outcome.kind.value}, HTTP {outcome.http_status})"
                " could not be recorded"
            ) from exc
        if status is Status.PENDING and settled.status is Status.SENT:
            status = Status.SENT  # this step was sent; the recipient waits for its next one
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
                latency=settled.latency,
                window_used=claim.window_used,
                window_cap=claim.window_cap,
                step=claim.step,
            )
        )
        if settled.held is not None:
            self._emit(events.AccountHeld(claim.account_id, settled.held.until, settled.held.reason))
        if settled.paused_until is not None:
            reason = settled.reason or "circuit breaker"
            self._emit(events.AccountPaused(claim.account_id, settled.paused_until, reason))
        return settled

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


def _found(answer: ReadAnswer) -> str:
    """What a read found, in a few words."""
    outcome = answer.outcome
    if answer.profile is not None:
        return answer.profile.urn
    if answer.has_conversation is not None:
        return "in a conversation already" if answer.has_conversation else "no conversation"
    if answer.health is not None:
        return answer.health.problem or answer.health.status[:40]  # as the API said it, however long
    detail = f"HTTP {outcome.http_status}" if outcome.http_status else outcome.kind.value
    return f"{detail}: {outcome.error}" if outcome.error else detail
