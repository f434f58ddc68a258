"""`plan`: run a campaign on a virtual clock against the in-process sandbox, and count what goes out when.

The plan is the real thing, sped up: the same store, limiter, scheduler and client, a sandbox
reached without a network (httpx's ASGI transport), and a `VirtualClock` that jumps whenever every
account waits. It works on a scratch copy of the database, so the existing state (what was sent,
the accounts' windows, holds and warm-up days) counts and nothing of the user's is written.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import tempfile
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx

from . import events
from .client import ApiClient
from .clock import Clock, VirtualClock
from .config import Campaign
from .engines import Target
from .engines.sqlite import copy_database
from .errors import CampaignRunnerError
from .outcome import Ending, Status
from .sandbox import Sandbox, SandboxConfig
from .schedule import local_time, zone
from .scheduler import Scheduler
from .store import Forecast, Store, process_alive

__all__ = ["Plan", "as_forecast", "forecast", "make_plan"]

SETTLED_WEEKS = 2  # weeks alike, day by day, before the rest of a plan is the last one repeated
PLAN_DEADLINE = 60.0  # seconds a request may take; the sandbox answers at once on the virtual clock
PLAN_HORIZON = 2 * 366 * 86400.0  # a plan looks this far ahead at most (schedules that never meet...)
SCRATCH_PREFIX = "campaign-runner-plan-"  # + the pid of the process the copy belongs to
REFORECAST = 3600.0  # a run forecasts again after a hold, a pause or a stop, at most this often


@dataclass
class Plan:
    campaign: str
    timezone: str
    start: float
    finish: float | None  # the last send; None when nothing is left to send
    to_send: int  # messages left when the plan starts: every step of the recipients pending (fewer, by the reply rate)
    sent: int
    per_day: dict[date, dict[str, int]] = field(default_factory=dict)  # local day -> account -> messages
    accounts: tuple[str, ...] = ()
    result: Ending = Ending.DONE  # or ACCOUNTS_STOPPED, HORIZON (two years were not enough), GIVEN_UP
    settled_from: date | None = None  # from this day on, the last settled week repeated (see `_Days`)

    def per_week(self) -> dict[date, dict[str, int]]:
        """`per_day` added up by week: the Monday that starts it -> account -> messages."""
        weeks: dict[date, dict[str, int]] = {}
        for day, counts in self.per_day.items():
            week = weeks.setdefault(day - timedelta(days=day.weekday()), {})
            for account, count in counts.items():
                week[account] = week.get(account, 0) + count
        return weeks

    def local(self, epoch: float) -> str:
        return local_time(epoch, self.timezone)


async def make_plan(
    campaign: Campaign, start: float, db: Target | None = None, settle: bool = True, reply_rate: float = 0.0
) -> Plan:
    """Simulate sending `campaign` from `start` (epoch seconds), on top of `db`'s state if given.
    Once sending has settled into a weekly pattern (`settle`), the rest is that week repeated.
    Follow-ups assume nobody replies, unless `reply_rate` (0 to 1) of the recipients do (each at a
    random moment in the sandbox's reply delay), ending their sequence."""
    async with _scratch(db, start) as store:
        await store.load([campaign], start, accept_changes=True)
        plans = await _simulate(store, VirtualClock(start), [campaign.name], settle, reply_rate=reply_rate)
    return plans[campaign.name]


async def forecast(
    db: Target,
    names: Sequence[str],
    start: float,
    give_up: threading.Event | None = None,
    leave_out: Collection[str] = (),
) -> dict[str, Plan]:
    """The plans of campaigns already in `db`, sent together (as one run sends them: accounts they
    share are shared) from the database as it stands at `start`, without the accounts in
    `leave_out` (those a run has stopped): what `run` forecasts, and `status` shows. Setting
    `give_up` (from another thread) ends the simulation early, its plans cut short (GIVEN_UP)."""
    async with _scratch(db, start) as store:
        return await _simulate(store, VirtualClock(start), names, give_up=give_up, leave_out=leave_out)


def as_forecast(plan: Plan, made_at: float) -> Forecast:
    """What the database keeps of a plan."""
    per_day = {day.isoformat(): sum(counts.values()) for day, counts in plan.per_day.items()}
    return Forecast(plan.campaign, made_at, plan.finish, plan.result, plan.to_send, per_day)


@contextlib.asynccontextmanager
async def _scratch(db: Target | None, start: float) -> AsyncIterator[Store]:
    """A throwaway SQLite copy of `db` (an empty database without one) that the simulation may change."""
    await anyio.to_thread.run_sync(_sweep_scratch)
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as folder:
        scratch = Path(folder) / "plan.db"
        if db is not None and db.is_postgres:
            from .engines.postgres import copy_to_sqlite

            await anyio.to_thread.run_sync(copy_to_sqlite, db, scratch, start)
        elif db is not None and db.path.exists():
            await anyio.to_thread.run_sync(copy_database, db.path, scratch)
        store = await Store.open(scratch, start, scratch=True)
        try:
            await store.settle_in_flight(start)
            yield store
        finally:
            await store.close()


async def _simulate(
    store: Store,
    clock: VirtualClock,
    names: Sequence[str],
    settle: bool = True,
    give_up: threading.Event | None = None,
    leave_out: Collection[str] = (),
    reply_rate: float = 0.0,
) -> dict[str, Plan]:
    """Send `names` together on the virtual clock; one plan per campaign. Once every campaign with
    recipients left has settled into a weekly pattern, the simulation stops and the rest of each
    is its own last week repeated. (A campaign that then finishes leaves its share of the accounts
    to the others in reality, not in the repeated weeks: with several, a finish comes no earlier
    than forecast.)"""
    start = clock.now()
    settings = []
    plans: dict[str, Plan] = {}
    for name in names:
        found = await store.campaign(name)
        found = replace(found, accounts=tuple(a for a in found.accounts if a.id not in leave_out))
        first, later = await store.messages_left(name)
        pending = first + round(later * (1 - reply_rate))
        plans[name] = Plan(name, found.timezone, start, None, pending, 0, accounts=found.account_ids)
        if found.accounts:
            settings.append(found)
        else:
            plans[name].result = Ending.ACCOUNTS_STOPPED
    if not settings:
        return plans
    days = {c.name: _Days(zone(c.timezone), start) for c in settings}
    settled_at: float | None = None  # when the simulation stopped to repeat the weekly patterns

    def unfinished() -> list[str]:
        return [name for name in days if plans[name].sent < plans[name].to_send]

    def everyone_settled(now: float) -> bool:
        return all(days[n].settled(days[n].day_of(now) - timedelta(days=1)) for n in unfinished())

    def record(event: events.Event) -> None:
        nonlocal settled_at
        if settled_at is not None:
            return  # the run is stopping: what is left comes from the weekly patterns
        now = clock.now()
        if give_up is not None and give_up.is_set():
            scheduler.stop(Ending.GIVEN_UP, "the forecast is no longer wanted")
            return
        if now > start + PLAN_HORIZON:  # schedules that never meet would wait forever
            scheduler.stop(Ending.HORIZON, "the plan looked two years ahead")
        if isinstance(event, events.AccountHeld | events.AccountPaused | events.AccountStopped):
            for found in days.values():
                found.disturbed.add(found.day_of(now))
        if isinstance(event, events.Attempted) and event.status is Status.SENT:
            plan, found = plans[event.campaign], days[event.campaign]
            day = found.day_of(now)
            if settle and day > found.last and everyone_settled(now):
                settled_at = now  # the sends from today on are taken from the patterns
                scheduler.stop(Ending.SETTLED, "sending has settled into a weekly pattern")
                return
            found.add(day, now, event.account_id)
            plan.sent += 1
            plan.finish = now

    key = secrets.token_urlsafe(16)
    box = Sandbox(SandboxConfig(api_key=key, quota=10**9, quota_window=1.0, seed=0, reply_rate=reply_rate), clock)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        transport=_InProcess(box), base_url="http://sandbox/linkedin/", headers=headers
    ) as http:
        api = ApiClient(http, PLAN_DEADLINE)
        options = {"emit": record, "rng": random.Random(0)}
        async with Scheduler.begun(
            store, api, clock, command="plan", deadline=PLAN_DEADLINE, campaigns=settings, **options
        ) as scheduler:
            result = await scheduler.run()
    left = unfinished()
    for name, found in days.items():
        plan = plans[name]
        plan.result = result.reason if name in left else Ending.DONE
        if settled_at is not None and name in left:
            first = found.day_of(settled_at)
            plan.sent -= sum(found.counts.pop(first, {}).values())  # today is repeated whole, not half
            found.offsets.pop(first, None)
            plan.settled_from = first
        plan.per_day = {day: dict(by_account) for day, by_account in sorted(found.counts.items())}
        if plan.settled_from is not None:
            _repeat_weeks(plan, found, plan.settled_from)
    return plans


class Forecaster:
    """Forecasts a run's campaigns while its accounts wait, so that forecasting never delays a send.

    The first forecast is made when an account first has to wait, or is held or paused (a run
    that never waits is over before a forecast could matter); another at once after an account
    stops, and after a hold or a pause, at most every REFORECAST seconds. Each is `forecast` of
    all the run's campaigns in a worker thread, on a copy of the database; it is stored for
    `status`, and told to `emit` for the live view. Whatever goes wrong in a forecast, or in
    showing it, is reported if it can be and never stops the run.
    """

    def __init__(self, store: Store, names: Sequence[str], clock: Clock, emit: events.EventSink):
        self._store = store
        self._names = list(names)
        self._clock = clock
        self._emit = emit
        self._wanted = anyio.Event()  # a forecast is asked for
        self._hurry = anyio.Event()  # ...now, not after REFORECAST
        self._served = anyio.Event()  # the last forecast asked for is made
        self._last: float | None = None  # when the last forecast of this run was made
        self._asked = False  # a forecast was asked for in this run
        self._changed = False  # an account was held, paused or stopped since the last forecast
        self._give_up = threading.Event()
        self._stopped: set[str] = set()  # accounts the run has stopped: the forecast leaves them out

    def notice(self, event: events.Event) -> None:
        """Hear one of the run's events: a first wait, a hold, a pause or a stop asks for a forecast."""
        if isinstance(event, events.AccountStopped):
            self._stopped.add(event.account_id)
            self._ask(at_once=True, changed=True)
        elif isinstance(event, events.AccountHeld | events.AccountPaused):
            self._ask(changed=True)
        elif isinstance(event, events.AccountWaiting) and not self._asked:
            self._ask()

    def _ask(self, at_once: bool = False, changed: bool = False) -> None:
        self._asked = True
        self._changed |= changed
        self._wanted.set()
        if at_once:
            self._hurry.set()
        if self._served.is_set():
            self._served = anyio.Event()

    async def run(self) -> None:
        """Forecast whenever asked to, until cancelled. A first forecast is skipped when every
        campaign has one younger than REFORECAST and nothing has changed (a run every few
        minutes from cron does not forecast every time)."""
        while True:
            await self._wanted.wait()
            if self._last is not None:
                await self._clock.sleep_until(self._last + REFORECAST, self._hurry)
            self._wanted, self._hurry = anyio.Event(), anyio.Event()
            changed, self._changed = self._changed, False
            if changed or self._last is not None or not await self._fresh():
                await self._forecast()
            if not self._wanted.is_set():
                self._served.set()

    async def made(self) -> None:
        """Wait until the run's circumstances are forecast (or, see `run`, were lately): a
        `--no-wait` run leaves a forecast behind for `status`."""
        if not self._asked:
            self._ask(at_once=True)
        elif self._wanted.is_set():  # a newer one waits for REFORECAST: make it now
            self._hurry.set()
        await self._served.wait()

    async def _fresh(self) -> bool:
        """Every campaign with recipients left has a forecast younger than REFORECAST, made when
        no fewer were left (none were added since)."""
        for name in self._names:
            pending = (await self._store.counts(name))[Status.PENDING]
            found = await self._store.latest_forecast(name) if pending else None
            if pending and (found is None or found.made_at < self._clock.now() - REFORECAST or found.pending < pending):
                return False
        return True

    def give_up(self) -> None:
        """End a forecast in progress: the run is over."""
        self._give_up.set()

    async def _forecast(self) -> None:
        made_at = self._clock.now()
        try:
            names = [name for name in self._names if (await self._store.counts(name))[Status.PENDING]]
            plans: dict[str, Plan] = {}
            if names:
                args = (self._store.target, names, made_at, self._give_up, frozenset(self._stopped))
                plans = await anyio.to_thread.run_sync(_forecast_in_thread, *args)
            if any(plan.result is Ending.GIVEN_UP for plan in plans.values()):
                return
            for plan in plans.values():
                await self._store.save_forecast(as_forecast(plan, made_at))
        except Exception as exc:  # noqa: BLE001 - a forecast is worth less than the run: say so, go on
            problem = str(exc) if isinstance(exc, CampaignRunnerError) else f"{type(exc).__name__}: {exc}"
            for name in self._names:
                self._say(events.Forecast(name, made_at, None, "UTC", problem=problem))
        else:
            for plan in plans.values():
                self._say(events.Forecast(plan.campaign, made_at, plan.finish, plan.timezone, plan.result))
        self._last = made_at

    def _say(self, event: events.Event) -> None:
        """Report a forecast; output that fails (a closed pipe) is switched off, never the run."""
        try:
            self._emit(event)
        except Exception:  # noqa: BLE001 - any failure of the sink, as the scheduler's own
            self._emit = events.ignore


def _forecast_in_thread(
    db: Target, names: list[str], start: float, give_up: threading.Event, leave_out: frozenset[str]
) -> dict[str, Plan]:
    return anyio.run(forecast, db, names, start, give_up, leave_out)


class _Days:
    """What each local day sent, to see when sending has settled into a weekly pattern: then the
    rest of a long campaign is that week repeated, and the simulation need not send it all."""

    def __init__(self, tz: Any, start: float):
        self.tz = tz
        self.last = self.day_of(start)
        self.counts: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.offsets: dict[date, list[tuple[float, str]]] = defaultdict(list)  # seconds after midnight, account
        self.disturbed: set[date] = set()  # days with a hold, a pause or a stop

    def day_of(self, epoch: float) -> date:
        return datetime.fromtimestamp(epoch, self.tz).date()

    def midnight(self, day: date) -> float:
        return datetime.combine(day, time(0), self.tz).timestamp()

    def add(self, day: date, epoch: float, account: str) -> None:
        self.counts[day][account] += 1
        self.offsets[day].append((epoch - self.midnight(day), account))
        self.last = max(self.last, day)

    def settled(self, last: date) -> bool:
        """The SETTLED_WEEKS weeks up to `last` are whole, undisturbed, and each day sent what the
        same weekday of the week before did, account by account: warm-ups are over, nothing holds."""
        span = 7 * SETTLED_WEEKS
        days = [last - timedelta(days=i) for i in range(span)]
        if self.disturbed & set(days):  # (a partial first day differs from its weekday after: not alike)
            return False
        same = all(self.counts.get(d, {}) == self.counts.get(d - timedelta(days=7), {}) for d in days[: span - 7])
        return same and any(self.counts.get(d) for d in days[:7])


def _repeat_weeks(plan: Plan, days: _Days, first: date) -> None:
    """Fill the plan from `first` on with the last settled week, day by day, until all are sent."""
    pattern = {d.weekday(): sorted(days.offsets.get(d, [])) for d in (first - timedelta(days=i) for i in range(1, 8))}
    remaining, day = plan.to_send - plan.sent, first
    horizon = days.day_of(plan.start + PLAN_HORIZON)
    while remaining > 0 and day <= horizon:
        sends = pattern[day.weekday()][:remaining]
        if sends:
            per_account: dict[str, int] = defaultdict(int)
            for _, account in sends:
                per_account[account] += 1
            plan.per_day[day] = dict(per_account)
            plan.sent += len(sends)
            remaining -= len(sends)
            plan.finish = days.midnight(day) + sends[-1][0]
        day += timedelta(days=1)
    plan.result = Ending.DONE if remaining == 0 else Ending.HORIZON


def _sweep_scratch() -> None:
    """Remove the scratch copies left by plans and forecasts of processes that are gone (killed,
    a power cut): each is a copy of a database, recipients and messages included."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


class _InProcess(httpx.AsyncBaseTransport):
    """Requests handed straight to the sandbox app: httpx's ASGITransport, less its per-request
    search for trio, which costs more than the sandbox's own answer."""

    def __init__(self, app: Sandbox):
        self._app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "root_path": "",
            "server": ("sandbox", 80),
            "client": ("127.0.0.1", 0),
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
        }
        received = False
        status, headers, chunks = 500, [], []

        async def receive() -> dict[str, Any]:
            nonlocal received
            if received:
                return {"type": "http.disconnect"}
            received = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], message.get("headers", [])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self._app(scope, receive, send)
        return httpx.Response(status, headers=headers, content=b"".join(chunks), request=request)
