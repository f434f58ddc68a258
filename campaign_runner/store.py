"""All SQL but the migrations: one connection, one transaction per decision, one thread trip each.

The SQL is written once, for both engines (SQLite's spelling; `engines.postgres` translates it).
The two transactions that carry the guarantees:

* `claim`: with the database's write turn (SQLite's `BEGIN IMMEDIATE`; on PostgreSQL the account's
  row, then the API key's, `FOR UPDATE`), across processes and hosts, reads the account's
  limiter state, and only if a request may start now marks one pending recipient `in_flight`,
  inserts its attempt (the limiter's window slot) and advances the token bucket, then commits.
  Nothing leaves for the API before that commit.
* `record`: writes the outcome, the attempt's headers and any hold the server asked for.

Durability: SQLite runs WAL with `synchronous=FULL`, PostgreSQL commits durably, so a committed
claim survives even a power loss. A claim that is lost would let a recipient be messaged twice.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import os
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import platformdirs

from .clock import iso
from .engines import Engine, Target, target
from .errors import ChangeRefusedError, RunTakenError, StoreError, UnknownCampaignError
from .events import Recovered
from .limiter import (
    EPSILON,
    IN_FLIGHT,
    IN_FLIGHT_POLL,
    MAX_HOLD,
    AccountState,
    Pacing,
    Verdict,
    after_send,
    decide,
    hold_for,
    next_after_send,
    server_until,
)
from .outcome import Ending, Kind, Status, Wait
from .policy import Settlement
from .schedule import Schedule
from .settings import (
    MEMBERS_BUDGET,
    PROFILES_BUDGET,
    READ_RATE,
    Account,
    Audience,
    Breaker,
    CampaignSettings,
    Limit,
    Steps,
    Warmup,
)
from .variants import Variant

if TYPE_CHECKING:
    from . import config
    from .client import ReadAnswer

T = TypeVar("T")
DEFAULT_DB = "campaign-runner.db"
SANDBOX_DB = "sandbox.db"  # the sandbox rehearsals' own database, beside the default one
REPORT_BATCH = 1000  # report rows fetched per trip to the worker thread
RECORD_PATIENCE = 600.0  # seconds an outcome keeps waiting for a database another process holds
RETRIES = 8  # times a transaction the engine gave up (a deadlock) is run again
REMOVED_FROM_FILE = "removed from the campaign file"
# A recipient handed back to the queue goes back only while its file still lists it.
_PENDING_UNLESS_REMOVED = "CASE WHEN removed = 1 THEN 'skipped' ELSE 'pending' END"
_ERROR_IF_REMOVED = f"CASE WHEN removed = 1 THEN '{REMOVED_FROM_FILE}' ELSE {{}} END"  # {}: the error otherwise
DIED_IN_FLIGHT = "the process stopped while the request was in flight; it may have been delivered"
ELSEWHERE_POLL = 5.0  # seconds between looks when only other workers' requests remain
RUN_TAKEN = (
    "another runner took this run's claims: its lease lapsed (was this process paused, or cut off from the"
    " database?); it stops sending"
)
HEARTBEAT = 10.0  # seconds between renewals of a run's lease, which lasts three of them and a request's deadline
LOOKUP_REFUSALS = 3  # a profile lookup refused this often (not "not found") fails its recipients
PRECHECK_FRESH = 3600.0  # seconds a pre-check's "no conversation" stands for a send by the same account
READ_RETRY = 300.0  # seconds before a recipient whose lookup or pre-check went unanswered is tried again
IN_CONVERSATION = "already in a conversation with the account"
CONFIRMED = "confirmed from the conversation"
CLOCK_SKEW = 120.0  # seconds a reply's time (the server's clock) may seem to precede our first message
REPLY_KEPT = 200  # characters of a reply kept with its recipient
REPLY_STORED = 4000  # characters of a reply kept in the log of replies
SAME_PERSON = "the same person as {urn}, listed twice in this campaign"
DEFAULT_API_LIMITS = "60/minute,100/10s"  # the vendor's allowance per key (as campaigns store it)
# The reads LinkedIn itself serves, which count against the account's rate of reads (inbox reads
# such as the pre-check are served from the vendor's store: only the API key's limit holds).
RATED = ("profile", "members")
BUDGETED = {"members": "members_budget", "profile": "profiles_budget"}  # action -> its campaigns column
HEALTH_KEYS = ("id", "firstName", "lastName", "publicId", "status", "enabled", "hasTokens", "lastUsed")


def _health_kept(raw: dict[str, Any]) -> dict[str, Any]:
    """What is kept of an account's health: its documented fields, each short."""
    return {
        key: value if isinstance(value, (bool, int, float)) or value is None else str(value)[:200]
        for key, value in raw.items()
        if key in HEALTH_KEYS
    }


# SQL: campaign `c` takes its recipients from its group, and their fetch is not done yet.
_AUDIENCE_LEFT = (
    "(c.audience IS NOT NULL AND NOT EXISTS (SELECT 1 FROM member_fetches f WHERE f.campaign = c.name AND f.done = 1))"
)


def _blocked_error(reason: str | None) -> str:
    return f"do not contact: {reason or 'blocked'}"


@dataclass(frozen=True)
class LoadSummary:
    campaign: str
    added: int
    known: int
    duplicates: int
    removed: int  # recipients no longer in the file (pending ones are skipped), never sent again
    restored: int  # skipped recipients back in the file
    rewritten: int  # pending recipients whose message was updated from the file
    kept: int  # pending recipients whose stored message differs from the file, kept as it was
    changed: tuple[str, ...]  # message, group_id, endpoint: what changed since the last load


@dataclass(frozen=True)
class Claimed:
    recipient_id: int
    attempt_id: int
    run_id: int
    campaign: str
    profile_urn: str
    message: str
    account_id: str
    # What the request carries and how its answer is judged, read in the claim's transaction: a
    # campaign reloaded by another process (--accept-changes) takes effect at the next claim.
    group_id: str
    endpoint: str
    max_attempts: int
    backoff: float
    attempt: int  # 1 for the first request to this recipient
    retries: int  # retryable failures so far
    requeued: int  # times put back after a 403 streak blamed its account
    window_used: int  # requests of the account in the window of its slowest limit, this one included
    window_cap: int
    next_at: float = 0.0  # the account's own pacing allows no other request before then
    next_reason: Wait = Wait.READY  # what holds it back until then (pace, delay, schedule...)
    more: bool = True  # other recipients of its campaigns were still pending when it was claimed
    step: int = 0  # which step of its campaign this is (0: the first message)


class ReadAction(enum.StrEnum):
    """A read request: each counts against the API key's limit; some against a budget of the account."""

    PROFILE = "profile"  # POST /profile: a public identifier's URN (the profiles budget)
    PRECHECK = "precheck"  # GET /conversations/exists: already in a conversation?
    MEMBERS = "members"  # POST /groups/members: a page of a group's members (the members budget)
    STATUS = "status"  # GET /account/status: the account's health
    CONVERSATIONS = "conversations"  # GET /conversations: a page of the account's conversations
    MESSAGES = "messages"  # GET /conversations/{urn}/messages: a page of one conversation


@dataclass(frozen=True)
class Read:
    """A read request reserved (counted against the limits) before it leaves, like a claim."""

    read_id: int
    action: ReadAction
    account_id: str
    subject: str  # the public identifier, or the group
    recipient_id: int | None = None  # the recipient it is for (a pre-check, a lookup)
    campaign: str | None = None
    units: int = 1  # what it may spend of its budget (the members a page asks for)


@dataclass(frozen=True)
class Reply:
    """A message from the other person of a conversation."""

    message_urn: str
    sender: str  # their profile URN
    text: str
    sent_at: float


@dataclass(frozen=True)
class Replied:
    """A recipient whose reply was recorded; `opt_out`: the phrase that put them on the list."""

    campaign: str
    profile_urn: str
    opt_out: str | None
    status: Status


@dataclass(frozen=True)
class StepStats:
    step: int  # 1: the first message
    variant: str  # "" where the step has one message
    sent: int
    replied: int

    @property
    def reply_rate(self) -> float:
        return self.replied / self.sent if self.sent else 0.0


@dataclass(frozen=True)
class Unknown:
    """A delivery whose outcome nobody knows, to look for in the account's conversation."""

    recipient_id: int
    campaign: str
    account_id: str
    profile_urn: str
    message: str
    step: int
    claimed_at: float


@dataclass(frozen=True)
class Blocked:
    changed: int  # people put on (or taken off) the list
    unchanged: int  # already there (or not there)
    recipients: int  # pending recipients suppressed (or suppressed ones pending again)
    unresolved: int = 0  # blocked people known by public identifier alone (looked up before URN-only sends)


@dataclass(frozen=True)
class Contact:
    profile_urn: str | None
    public_identifier: str | None
    first_name: str | None
    last_name: str | None
    headline: str | None
    source: str
    blocked_at: float | None
    blocked_reason: str | None
    not_found: str | None
    campaigns: str | None  # "name:status ..." of every campaign that lists the person


@dataclass(frozen=True)
class MemberFetch:
    """Where fetching a group's members stands: the next page starts at `next_start`."""

    id: int
    group: str  # the group id, or its URL
    statuses: tuple[str, ...]
    query: str | None
    max_members: int | None
    next_start: int
    fetched: int  # members stored so far
    total: int | None
    done: bool


@dataclass(frozen=True)
class AccountUse:
    """An account's use of its budgets over the last day, and its health as the API last said."""

    account_id: str
    messages: int  # requests to the send endpoints in the last 24 hours
    members: int  # group members fetched in the last 24 hours
    members_budget: Limit
    profiles: int  # profiles looked up in the last 24 hours
    profiles_budget: Limit
    health: dict[str, Any] | None  # GET /account/status's answer, when it was last asked
    health_at: float | None
    hold_until: float
    hold_reason: str | None
    stopped_reason: str | None


@dataclass(frozen=True)
class Preparing:
    lookups: int  # pending recipients waiting for their profile's URN
    audience: bool = False  # recipients come from the group's members...
    fetched: int = 0  # ...this many fetched so far
    total: int | None = None  # of this many, as the API last said
    done: bool = False
    wanted: int | None = None  # the audience's `max`


@dataclass(frozen=True)
class Waiting:
    until: float
    reason: Wait


@dataclass(frozen=True)
class Drained:
    pass


@dataclass(frozen=True)
class AccountStatus:
    account_id: str
    pacing: Pacing
    window_used: int  # in the window of the slowest limit
    window_cap: int
    next_at: float
    reason: Wait
    hold_until: float
    hold_reason: str | None = None
    in_flight: int = 0  # its requests on the wire now, from any process
    stopped_reason: str | None = None  # why a run last stopped it, until it sends again
    stopped_at: float | None = None


@dataclass(frozen=True)
class AccountHold:
    account_id: str
    until: float  # at most MAX_HOLD after it was set
    reason: str


@dataclass(frozen=True)
class Forecast:
    """What a forecast (`plan`'s simulation, made by a run) said of a campaign when it was made."""

    campaign: str
    made_at: float
    finish: float | None  # the last send; None when it lies beyond the forecast's horizon
    result: Ending  # DONE, HORIZON, ACCOUNTS_STOPPED
    pending: int  # recipients left to send when it was made
    per_day: dict[str, int]  # local day (YYYY-MM-DD) -> messages


@dataclass
class ReportRow:
    profile_urn: str
    status: str
    account_id: str | None
    http_status: int | None
    error: str | None
    attempts: int
    sent_at: float | None
    message: str
    variables: dict[str, Any] = field(default_factory=dict)  # the recipient's own values from the file
    public_identifier: str | None = None  # from its profile URL, or the group member's
    step: int = 1  # the step it is on (1: the first message)
    replied_at: float | None = None
    reply: str | None = None  # the reply's first 200 characters


REPORT_FIELDS = (
    "profile_urn",
    "status",
    "account_id",
    "http_status",
    "error",
    "attempts",
    "sent_at",
    "message",
    "public_identifier",
    "step",
    "replied_at",
    "reply",
)


@functools.lru_cache(maxsize=64)
def _steps(stored: str | None) -> Steps:
    """A campaign's steps as stored (parsed once per text: claims read them every time)."""
    return Steps.from_json(stored)


def _steps_of(template: str, stored: str | None) -> Steps:
    """A campaign's steps as stored; one loaded before steps were kept has its one message."""
    steps = _steps(stored)
    return steps if steps.messages else replace(steps, messages=((Variant("", template),),))


def _messages_of(template: str, stored: str | None) -> tuple[tuple[Variant, ...], ...]:
    return _steps_of(template, stored).messages


def _limits(text: str) -> tuple[Limit, ...]:
    """Limits as the database stores them: `60/minute,100/10s`."""
    return tuple(Limit.parse(part) for part in text.split(",") if part.strip())


SANDBOX_API = "sandbox"  # campaigns.api of a campaign sent to the built-in sandbox


def _api_label(api: str) -> str:
    return "the built-in sandbox" if api == SANDBOX_API else api


def _engine(where: Target) -> Engine:
    if where.is_postgres:
        from .engines.postgres import PostgresEngine

        return PostgresEngine(where.text, where.label)
    from .engines.sqlite import SqliteEngine

    return SqliteEngine(where.path)


def data_folder() -> Path:
    """Where the default databases live: the user's data folder (on Linux $XDG_DATA_HOME, else
    ~/.local/share), so every run of a user shares one memory of recipients and one set of caps."""
    return Path(platformdirs.user_data_dir("campaign-runner", appauthor=False))


class Store:
    """The database, for async callers. Every operation is one plain function run in a worker
    thread, in one trip: a claim or a record is a single hop, not a dozen round trips. What differs
    between SQLite and PostgreSQL is the engine's (`engines`); what each operation decides is here.

    A trip is never abandoned: a cancelled caller waits for its thread to finish, so a
    transaction always ends in its COMMIT or ROLLBACK (the shield the guarantees need).
    """

    def __init__(self, conn: Any, engine: Engine, where: Target, scratch: bool = False):
        self._conn = conn
        self._engine = engine
        self.target = where  # prints without its password
        self.label = where.label  # where the data is, fit to print: a path, or a URL without its password
        self.engine = engine.name
        self.created = getattr(engine, "created", False)  # PostgreSQL: this open made the tables
        self._scratch = scratch
        self._errors = engine.errors
        # On PostgreSQL with several hosts, a claim's moment is the database's clock (`database_clock`).
        self.database_clock = False
        # Tasks share the one connection: their operations take turns, and a read must not run
        # inside another task's open transaction. `snapshot()` holds the turn across several.
        self._lock = anyio.Lock()
        self._owner: int | None = None  # the task holding the lock
        self._thread = anyio.CapacityLimiter(1)

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    async def open_read_only(cls, where: str | os.PathLike[str] | Target) -> Store:
        """Open an existing database to read only (the dashboard): it takes no write lock, so the
        runners writing to it are never held up."""
        where = target(where)
        engine = _engine(where)
        return cls(await anyio.to_thread.run_sync(engine.connect_read_only), engine, where)

    @classmethod
    async def open(
        cls, where: str | os.PathLike[str] | Target, now: float, *, scratch: bool = False, create: bool = True
    ) -> Store:
        """Open (creating and migrating) the database: a path is a SQLite file, a postgresql:// URL
        a PostgreSQL database. `scratch` is for a throwaway SQLite copy that one task uses alone
        (`plan`): commits skip the fsync that makes them survive a power cut, and operations run on
        the event loop's own thread, which is faster when nothing else waits. `create`: a
        PostgreSQL database without the tables gets them (else it is an error; for a SQLite file,
        the caller looks whether it exists)."""
        return await anyio.to_thread.run_sync(cls._open, where, now, scratch, create)

    @classmethod
    def _open(
        cls, where: str | os.PathLike[str] | Target, now: float, scratch: bool = False, create: bool = True
    ) -> Store:
        where = target(where)
        engine = _engine(where)
        conn = engine.connect(now, not scratch, create)
        return cls(conn, engine, where, scratch and engine.name == "sqlite")

    async def close(self) -> None:
        await self._run(self._conn.close)

    def __repr__(self) -> str:
        return f"Store({self.label!r})"

    # --- taking turns ----------------------------------------------------------------------

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[bool]:
        """Hold the connection; yields False when this task already holds it (nested use)."""
        task = anyio.get_current_task().id
        if self._owner == task:
            yield False
            return
        async with self._lock:
            self._owner = task
            try:
                yield True
            finally:
                self._owner = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the worker thread (inline for a scratch store), in this task's turn.
        A transaction the engine gave up to break a deadlock is run again, whole."""
        async with self._locked():
            for attempt in range(RETRIES):
                try:
                    if self._scratch:
                        return fn(*args)
                    return await anyio.to_thread.run_sync(fn, *args, limiter=self._thread)
                except StoreError as exc:
                    if exc.__cause__ is None or not self._engine.retryable(exc.__cause__) or attempt == RETRIES - 1:
                        raise
                await anyio.sleep(random.uniform(0, 0.01 * 2**attempt))
            raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _transaction(self, account_id: str | None = None) -> Iterator[Any]:
        """A write transaction that takes its turn up front (no upgrade deadlocks between
        processes). `account_id`: a claim's, whose account row it locks first."""
        if self._conn.in_transaction:
            raise RuntimeError("transactions do not nest")
        try:
            self._engine.begin_write(self._conn, account_id)
        except self._errors as exc:
            self._rollback()
            raise self._failed(exc) from exc
        try:
            yield self._conn
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, self._errors):
                raise self._failed(exc) from exc
            raise
        try:
            self._conn.execute("COMMIT")
        except self._errors as exc:
            self._rollback()
            raise self._failed(exc) from exc

    def _rollback(self) -> None:
        with contextlib.suppress(*self._errors):  # the engine may have rolled back already
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def _failed(self, exc: BaseException) -> StoreError:
        return StoreError(f"database error in {self.label}: {self._engine.said(exc)}")

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read transaction, unless one is open already (inside `snapshot()`)."""
        if self._conn.in_transaction:
            yield
            return
        self._begin_read()
        try:
            yield
        except self._errors as exc:
            raise self._failed(exc) from exc
        finally:
            self._end_read()

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[None]:
        """A read transaction across several operations of this task: every one sees one state."""
        async with self._locked() as outermost:
            if not outermost:
                yield
                return
            await self._run(self._begin_read)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await self._run(self._end_read)

    def _begin_read(self) -> None:
        try:
            self._engine.begin_read(self._conn)
        except self._errors as exc:
            raise self._failed(exc) from exc

    def _end_read(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except self._errors:
            self._rollback()  # never leave a read open: it would pin old data

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, params).fetchone()

    # --- runs and recovery -----------------------------------------------------------------

    def _begin_run(self, command: str, now: float, lease: float) -> int:
        """Record this process as a run, holding a lease of `lease` seconds (three heartbeats and
        the longest a request can take) that `renew` extends while the run lives."""
        with self._transaction():
            (run_id,) = self._one(
                "INSERT INTO runs (pid, pid_start, host, command, stale_after, started_at, lease_until)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (os.getpid(), _process_start(os.getpid()), host_name(), command, lease, now, now + lease),
            )
            return int(run_id)

    def _renew(self, run_id: int, now: float) -> bool:
        """Extend the run's lease; False when another runner has taken the run (its lease had
        lapsed: this process was stopped, or cut off from the database, for too long)."""
        with self._transaction():
            row = self._one(
                "UPDATE runs SET lease_until = ? + stale_after WHERE id = ? AND taken_at IS NULL AND ended_at IS NULL"
                " RETURNING id",
                (now, run_id),
            )
            return row is not None

    def _end_run(self, run_id: int, now: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET ended_at = ? WHERE id = ?", (now, run_id))

    def _recover(self, run_id: int, now: float) -> list[Recovered]:
        """Mark `unknown` what gone processes left in flight: their requests may have been delivered.

        On this host a run is gone when it ended, when its pid is free, or when the pid now
        belongs to a process that started later; a live run's claims are never touched. A run on
        another host is gone once its lease has lapsed: it is marked taken, so that, should it
        still be alive, it stops sending at its next heartbeat or claim.
        """
        with self._transaction() as db:
            rows = self._all(
                "SELECT r.id, r.campaign, r.profile_urn, r.account_id, r.run_id, runs.pid, runs.pid_start,"
                " runs.host, runs.ended_at, coalesce(runs.lease_until, a.started_at + runs.stale_after), a.started_at"
                " FROM recipients r"
                " LEFT JOIN runs ON runs.id = r.run_id"
                " LEFT JOIN attempts a ON a.recipient_id = r.id AND a.run_id = r.run_id AND a.slot_at >= ?"
                " WHERE r.status = 'in_flight' AND r.run_id IS NOT ?",
                (IN_FLIGHT, run_id),
            )
            recovered: list[Recovered] = []
            for rid, campaign, urn, account, owner, pid, pid_start, host, ended_at, lease_until, started in rows:
                if _claim_may_be_live(pid, pid_start, host, ended_at, lease_until, started, now):
                    continue
                if owner is not None:
                    db.execute(
                        "UPDATE runs SET taken_at = ?, taken_by = ? WHERE id = ? AND ended_at IS NULL",
                        (now, host_name(), owner),
                    )
                recovered.append(Recovered(campaign, account or "", urn))
                db.execute(
                    "UPDATE recipients SET status = 'unknown', error = ?, run_id = NULL, updated_at = ? WHERE id = ?",
                    (DIED_IN_FLIGHT, now, rid),
                )
                # The lost request reached the server, if at all, before now: count it from now.
                db.execute(
                    "UPDATE attempts SET outcome = 'unknown', error = ?, finished_at = ?, slot_at = ?"
                    " WHERE recipient_id = ? AND run_id IS ? AND slot_at >= ?",
                    (DIED_IN_FLIGHT, now, now, rid, owner, IN_FLIGHT),
                )
            return recovered

    # --- campaigns -------------------------------------------------------------------------

    def _load(
        self, campaigns: Sequence[config.Campaign], now: float, accept_changes: bool = False
    ) -> list[LoadSummary]:
        """Upsert campaigns, all or none: new recipients are added, known ones keep their state."""
        with self._transaction():
            return [self._load_one(campaign, now, accept_changes) for campaign in campaigns]

    def _load_one(self, campaign: config.Campaign, now: float, accept_changes: bool) -> LoadSummary:
        db = self._conn
        existing = self._one(
            "SELECT group_id, endpoint, message_template, steps FROM campaigns WHERE name = ?", (campaign.name,)
        )
        started = existing is not None and self._has_started(campaign.name)
        changed: tuple[str, ...] = ()
        if existing:
            changed = tuple(
                name
                for name, old, new in (
                    ("message", _messages_of(existing[2], existing[3]), campaign.steps.messages),
                    ("group_id", existing[0], campaign.group_id),
                    ("endpoint", existing[1], campaign.endpoint),
                )
                if old != new
            )
            if changed and started and not accept_changes:
                raise ChangeRefusedError(
                    f"campaign {campaign.name!r} has already sent messages and its {', '.join(changed)}"
                    " changed; run again with --accept-changes to apply the change to unsent"
                    " recipients only, or give the campaign a new name"
                )
        db.execute(
            "INSERT INTO campaigns (name, group_id, endpoint, message_template, limit_cap, limit_window,"
            " burst, max_attempts, backoff, breaker_failures, breaker_cooldown, breaker_pauses,"
            " breaker_forbidden, warmup_start, warmup_increase, api_limits, source, columns, timezone,"
            " recontact_after, precheck, audience, members_budget, profiles_budget, steps, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET group_id = excluded.group_id, endpoint = excluded.endpoint,"
            " message_template = excluded.message_template, limit_cap = excluded.limit_cap,"
            " limit_window = excluded.limit_window, burst = excluded.burst,"
            " max_attempts = excluded.max_attempts, backoff = excluded.backoff,"
            " breaker_failures = excluded.breaker_failures, breaker_cooldown = excluded.breaker_cooldown,"
            " breaker_pauses = excluded.breaker_pauses, breaker_forbidden = excluded.breaker_forbidden,"
            " warmup_start = excluded.warmup_start, warmup_increase = excluded.warmup_increase,"
            " api_limits = excluded.api_limits, source = excluded.source, columns = excluded.columns,"
            " timezone = excluded.timezone, recontact_after = excluded.recontact_after,"
            " precheck = excluded.precheck, audience = excluded.audience,"
            " members_budget = excluded.members_budget, profiles_budget = excluded.profiles_budget,"
            " steps = excluded.steps, updated_at = excluded.updated_at",
            (
                campaign.name,
                campaign.group_id,
                campaign.endpoint,
                campaign.message_template,
                campaign.limit.cap,
                campaign.limit.window,
                campaign.burst,
                campaign.max_attempts,
                campaign.backoff,
                campaign.breaker.failures,
                campaign.breaker.cooldown,
                campaign.breaker.pauses,
                campaign.breaker.forbidden,
                campaign.warmup.start if campaign.warmup else None,
                campaign.warmup.increase if campaign.warmup else None,
                ",".join(str(limit) for limit in campaign.api_limits),
                campaign.source,
                json.dumps(campaign.columns),
                campaign.timezone,
                campaign.recontact_after,
                campaign.precheck,
                campaign.audience.to_json() if campaign.audience else None,
                str(campaign.members_budget),
                str(campaign.profiles_budget),
                campaign.steps.to_json(),
                now,
                now,
            ),
        )
        db.execute("DELETE FROM campaign_accounts WHERE campaign = ?", (campaign.name,))
        db.executemany(
            "INSERT INTO campaign_accounts (campaign, account_id, limit_cap, limit_window, schedule)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                (
                    campaign.name,
                    a.id,
                    a.limit.cap,
                    a.limit.window,
                    None if a.schedule == Schedule() else a.schedule.to_json(),
                )
                for a in campaign.accounts
            ],
        )
        # Stored recipients by id: (status, messages, removed, variables, origin, step); and each
        # one's id by its URN and by its public identifier (one given by profile URL may be looked up since).
        known: dict[int, tuple[str, str, int, str, str, int]] = {}
        by_key: dict[str, int] = {}
        for rid, urn, slug, *rest in self._all(
            "SELECT id, profile_urn, public_identifier, status,"
            f" coalesce(messages, {self._engine.json_array('message')}), removed,"
            " variables, origin, step FROM recipients WHERE campaign = ?",
            (campaign.name,),
        ):
            known[rid] = tuple(rest)  # type: ignore[assignment]
            for key in (urn, slug):
                if key:
                    by_key.setdefault(key, rid)
        # One pass over the file (it is read as it goes, never held whole): new recipients go
        # in as they come; what is known is compared with the file.
        added = in_file_known = 0
        in_file: set[int] = set()
        differing: list[tuple[str, str | None, str, float, int]] = []
        values_only: list[tuple[str, float, int]] = []
        source = f"campaign {campaign.name}"
        both: list[tuple[str, str]] = []  # (URN, identifier) of rows that give both: one contact

        def fresh() -> Iterator[tuple[str, str | None, str | None, str, str, float]]:
            nonlocal added, in_file_known
            for r in campaign.recipients:
                rid = by_key.get(r.profile_urn or "") or by_key.get(r.public_identifier or "")
                variables = r.variables_json()
                if rid is None:
                    added += 1
                    if r.profile_urn and r.public_identifier:
                        both.append((r.profile_urn, r.public_identifier))
                    yield (
                        campaign.name,
                        r.profile_urn,
                        r.public_identifier,
                        r.message,
                        r.messages_json(),
                        r.variants_json(),
                        variables,
                        now,
                    )
                    continue
                in_file_known += 1
                in_file.add(rid)
                found = known[rid]
                # Unsent recipients whose message (or values) in the file is not the stored one (a
                # new template, or an edited CSV cell). Before anything was sent, or with
                # --accept-changes, the file wins; otherwise the stored message stays and the
                # summary says how many differ.
                texts = [r.message, *r.later]
                if found[0] in (Status.PENDING, Status.SKIPPED) and json.loads(found[1]) != texts:
                    current = texts[found[5]] if found[5] < len(texts) else texts[-1]
                    differing.append((current, r.messages_json(), variables, now, rid))
                elif found[3] != variables:  # values the message does not show (or a first load's)
                    values_only.append((variables, now, rid))

        (last_id,) = self._one("SELECT coalesce(max(id), 0) FROM recipients")
        db.executemany(
            "INSERT INTO recipients (campaign, profile_urn, public_identifier, message, messages, variants, variables,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            fresh(),
        )
        # Every person new to the campaign is a contact, shared by all campaigns (the others are already).
        db.execute(
            "INSERT INTO contacts (profile_urn, public_identifier, source, created_at, updated_at)"
            " SELECT profile_urn, CASE WHEN profile_urn IS NULL THEN public_identifier END, ?, ?, ? FROM recipients"
            " WHERE campaign = ? AND id > ? ON CONFLICT DO NOTHING",
            (source, now, now, campaign.name, last_id),
        )
        for urn, slug in both:
            self._remember(urn, slug, source, now)
        self._fill_known_urns(campaign.name, now)
        # Whoever left the file is never sent again (a pending one is skipped at once; one in
        # flight is skipped if its answer hands it back) until it returns to the file. A recipient
        # from the group's members was never in the file: it stays.
        gone = [
            rid
            for rid, (_, _, removed, _, origin, _) in known.items()
            if not removed and rid not in in_file and origin == "file"
        ]
        db.executemany(
            "UPDATE recipients SET removed = 1, status = CASE status WHEN 'pending' THEN 'skipped' ELSE status END,"
            " error = CASE status WHEN 'pending' THEN ? ELSE error END, updated_at = ? WHERE id = ?",
            [(REMOVED_FROM_FILE, now, rid) for rid in gone],
        )
        back = [rid for rid, (_, _, removed, _, _, _) in known.items() if removed and rid in in_file]
        db.executemany(
            "UPDATE recipients SET removed = 0, status = CASE status WHEN 'skipped' THEN 'pending' ELSE status END,"
            " error = CASE status WHEN 'skipped' THEN NULL ELSE error END, updated_at = ? WHERE id = ?",
            [(now, rid) for rid in back],
        )
        rewrite = accept_changes or not started
        if rewrite:
            db.executemany(
                "UPDATE recipients SET message = ?, messages = ?, variables = ?, updated_at = ? WHERE id = ?"
                " AND status = 'pending'",
                differing,
            )
        db.executemany("UPDATE recipients SET variables = ?, updated_at = ? WHERE id = ?", values_only)
        self._suppress_blocked(now, campaign.name)
        return LoadSummary(
            campaign=campaign.name,
            added=added,
            known=in_file_known,
            duplicates=campaign.duplicates,
            removed=len(gone),
            restored=sum(1 for rid in back if known[rid][0] == Status.SKIPPED),
            rewritten=len(differing) if rewrite else 0,
            kept=0 if rewrite else len(differing),
            changed=changed,
        )

    def _has_started(self, name: str) -> bool:
        row = self._one(
            "SELECT 1 FROM recipients WHERE campaign = ? AND (status NOT IN ('pending', 'skipped') OR attempts > 0)"
            " LIMIT 1",
            (name,),
        )
        return row is not None

    def _campaign(self, name: str) -> CampaignSettings:
        with self._snapshot():
            row = self._one(
                "SELECT name, group_id, endpoint, message_template, limit_cap, limit_window, burst,"
                " max_attempts, backoff, breaker_failures, breaker_cooldown, breaker_pauses, breaker_forbidden,"
                " warmup_start, warmup_increase, api_limits, timezone, recontact_after, precheck, audience,"
                " members_budget, profiles_budget, steps FROM campaigns WHERE name = ?",
                (name,),
            )
            if row is None:
                known = [found for (found,) in self._all("SELECT name FROM campaigns ORDER BY created_at, name")]
                there = f" (its campaigns: {', '.join(known)})" if known else " (it has no campaign yet)"
                raise UnknownCampaignError(f"no campaign named {name!r} in {self.label}{there}")
            accounts = self._all(
                "SELECT account_id, limit_cap, limit_window, schedule FROM campaign_accounts WHERE campaign = ?"
                " ORDER BY rowid",
                (name,),
            )
        schedules = tuple(Schedule.from_json(a[3]) for a in accounts)
        return CampaignSettings(
            name=row[0],
            group_id=row[1],
            endpoint=row[2],
            message_template=row[3],
            limit=Limit(row[4], row[5]),
            burst=row[6],
            max_attempts=row[7],
            backoff=row[8],
            breaker=Breaker(failures=row[9], cooldown=row[10], pauses=row[11], forbidden=row[12]),
            accounts=tuple(Account(a[0], Limit(a[1], a[2]), s) for a, s in zip(accounts, schedules, strict=True)),
            warmup=Warmup(row[13], row[14]) if row[13] is not None else None,
            api_limits=_limits(row[15]),
            # Loaded before the zone was kept: its first account's (the campaign's, unless overridden).
            timezone=row[16] or (schedules[0].timezone if schedules else "UTC"),
            recontact_after=row[17],
            precheck=row[18],
            audience=Audience.from_json(row[19]) if row[19] else None,
            members_budget=Limit.parse(row[20]),
            profiles_budget=Limit.parse(row[21]),
            steps=_steps_of(row[3], row[22]),
        )

    def _states(self, name: str, urns: Sequence[str]) -> dict[str, tuple[str, bool]]:
        """Status, and whether it left the file, of those of `urns` that are recipients of `name`."""
        with self._snapshot():
            rows = self._all(
                f"SELECT profile_urn, status, removed FROM recipients WHERE campaign = ?"
                f" AND profile_urn IN ({','.join('?' * len(urns))})",
                (name, *urns),
            )
        return {urn: (status, bool(removed)) for urn, status, removed in rows}

    def _columns(self, name: str) -> list[str]:
        """A campaign's own columns (its recipients' variables), in file order."""
        with self._snapshot():
            row = self._one("SELECT columns FROM campaigns WHERE name = ?", (name,))
        return json.loads(row[0]) if row and row[0] else []

    def _save_forecast(self, forecast: Forecast) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO forecasts (campaign, made_at, finish, result, pending, per_day) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (campaign, made_at) DO UPDATE SET finish = excluded.finish, result = excluded.result,"
                " pending = excluded.pending, per_day = excluded.per_day",
                (
                    forecast.campaign,
                    forecast.made_at,
                    forecast.finish,
                    forecast.result,
                    forecast.pending,
                    json.dumps(forecast.per_day),
                ),
            )

    def _latest_forecast(self, name: str) -> Forecast | None:
        return self._forecast(name, latest=True)

    def _first_forecast(self, name: str) -> Forecast | None:
        """The first forecast a run made of the campaign: what it was expected to do."""
        return self._forecast(name, latest=False)

    def _forecast(self, name: str, latest: bool) -> Forecast | None:
        with self._snapshot():
            row = self._one(
                "SELECT made_at, finish, result, pending, per_day FROM forecasts WHERE campaign = ?"
                f" ORDER BY made_at {'DESC' if latest else 'ASC'} LIMIT 1",
                (name,),
            )
        if row is None:
            return None
        made_at, finish, result, pending, per_day = row
        return Forecast(name, made_at, finish, Ending(result), pending, json.loads(per_day))

    def _attempt_outcomes(self, name: str) -> list[tuple[str | None, int | None, int]]:
        """Every request of a campaign's recipients by what it came to: (outcome, HTTP status, count)."""
        with self._snapshot():
            return self._all(
                "SELECT a.outcome, a.http_status, count(*) FROM attempts a JOIN recipients r ON r.id = a.recipient_id"
                " WHERE r.campaign = ? GROUP BY 1, 2 ORDER BY 3 DESC",
                (name,),
            )

    def _campaign_names(self, unfinished_only: bool = False) -> list[str]:
        sql = "SELECT name FROM campaigns c"
        if unfinished_only:
            sql += (
                " WHERE EXISTS (SELECT 1 FROM recipients r"
                f" WHERE r.campaign = c.name AND r.status IN ('pending', 'in_flight')) OR {_AUDIENCE_LEFT}"
            )
        with self._snapshot():
            rows = self._all(sql + " ORDER BY created_at, name")
        return [row[0] for row in rows]

    def _pacing(self, accounts: Sequence[str], running: Sequence[str], now: float) -> dict[str, Pacing]:
        """Limits in force per account (see `_account_pacing`)."""
        with self._snapshot():
            return {account: pacing for account in accounts if (pacing := self._account_pacing(account, running, now))}

    def _account_pacing(self, account_id: str, running: Sequence[str], now: float) -> Pacing | None:
        """The limits and schedules of the campaigns running now and of every other campaign with
        work left that uses the account. Every one of them holds at once, so the smallest wins.
        A warm-up adds a daily limit that grows with the account's days of sending."""
        run_marks = ",".join("?" * len(running)) or "NULL"
        rows = self._all(
            "SELECT ca.limit_cap, ca.limit_window, c.burst, ca.schedule, c.warmup_start, c.warmup_increase"
            " FROM campaign_accounts ca JOIN campaigns c ON c.name = ca.campaign"
            f" WHERE ca.account_id = ? AND (c.name IN ({run_marks}) OR EXISTS ("
            "  SELECT 1 FROM recipients r WHERE r.campaign = c.name AND r.status IN ('pending', 'in_flight')))",
            (account_id, *running),
        )
        if not rows:
            return None
        limits = {Limit(cap, window) for cap, window, *_ in rows}
        schedules = tuple(sorted({Schedule.from_json(row[3]) for row in rows}, key=str))
        warmups = [Warmup(row[4], row[5]) for row in rows if row[4] is not None]
        day = cap = None
        if warmups:
            day = self._sending_day(account_id, schedules[0], now)
            cap = min(w.cap(day) for w in warmups)
            limits.add(Limit(cap, 86400.0))
        return Pacing(tuple(sorted(limits)), min(row[2] for row in rows), schedules, day, cap)

    def _sending_day(self, account_id: str, schedule: Schedule, now: float) -> int:
        """Which day of sending this is for the account (1 on its first), in its own time zone,
        counted from its first request on record: a restart does not begin the warm-up again."""
        row = self._one(
            "SELECT coalesce((SELECT first_at FROM accounts WHERE id = ?),"
            " (SELECT min(started_at) FROM attempts WHERE account_id = ?))",
            (account_id, account_id),
        )
        first = row[0] if row and row[0] is not None else now
        return (schedule.local(now).date() - schedule.local(first).date()).days + 1

    # --- sending ---------------------------------------------------------------------------

    def _account_state(
        self, account_id: str, pacing: Pacing, now: float, key_limits: Sequence[Limit] = ()
    ) -> AccountState:
        row = self._one(
            "SELECT tat, hold_until, gap_until, server_remaining, server_reset, server_seen_at FROM accounts"
            " WHERE id = ?",
            (account_id,),
        )
        # The cap-th most recent request, looked for only where it can still hold the account back
        # (`decide` waits until it is `window + EPSILON` old), so a huge cap never walks the
        # account's whole history.
        kth: list[float | None] = []
        for limit in pacing.limits:
            found = self._one(
                "SELECT slot_at FROM attempts WHERE account_id = ? AND slot_at > ?"
                " ORDER BY slot_at DESC LIMIT 1 OFFSET ?",
                (account_id, now - limit.window - EPSILON, limit.cap - 1),
            )
            kth.append(found[0] if found else None)
        key = self._key_recent(key_limits, now)
        if row is None:
            return AccountState(kth_recent=tuple(kth), key_recent=tuple(key))
        tat, hold, gap, remaining, reset, seen = row

        def sent_since() -> int:
            return self._one(
                "SELECT count(*) FROM attempts WHERE account_id = ? AND slot_at > ? AND started_at > ?",
                (account_id, seen, seen),
            )[0]

        return AccountState(
            tat=tat,
            hold_until=hold,
            kth_recent=tuple(kth),
            gap_until=gap,
            server_until=server_until(remaining, reset, now, sent_since),
            key_recent=tuple(key),
        )

    def _key_recent(self, key_limits: Sequence[Limit], now: float) -> tuple[tuple[Limit, float | None], ...]:
        """Per limit of the API key, the cap-th most recent of all requests (sends and reads)."""
        key: list[tuple[Limit, float | None]] = []
        for limit in key_limits:
            since = now - limit.window - EPSILON
            found = self._one(
                "SELECT slot_at FROM (SELECT slot_at FROM attempts WHERE slot_at > ? UNION ALL"
                " SELECT slot_at FROM reads WHERE slot_at > ?) AS requests ORDER BY slot_at DESC LIMIT 1 OFFSET ?",
                (since, since, limit.cap - 1),
            )
            # A read not answered yet counts until the latest it can be answered; like a send in
            # flight, its moment is not known yet: look again shortly rather than wait that out.
            key.append((limit, None if found is None else found[0] if found[0] <= now else IN_FLIGHT))
        return tuple(key)

    # --- reads: lookups, pre-checks, members, health ----------------------------------------

    def _budgets(self, account_id: str, action: ReadAction, given: Limit | None = None) -> list[Limit]:
        """The account's budgets for `action`: every one of the campaigns that use it, and `given`
        (`members --budget`); the vendor's when there is none. All of them hold at once."""
        column = BUDGETED.get(action)
        if column is None:
            return [given] if given else []
        rows = self._all(
            f"SELECT DISTINCT c.{column} FROM campaigns c JOIN campaign_accounts ca ON ca.campaign = c.name"
            " WHERE ca.account_id = ?",
            (account_id,),
        )
        limits = {Limit.parse(text) for (text,) in rows}
        if given is not None:
            limits.add(given)
        if not limits:  # no campaign uses the account, and nothing was given: the vendor's
            limits.add(MEMBERS_BUDGET if action is ReadAction.MEMBERS else PROFILES_BUDGET)
        return sorted(limits)

    def _read_allowed(
        self,
        account_id: str,
        action: ReadAction,
        units: int,
        key_limits: Sequence[Limit],
        now: float,
        budgets: Sequence[Limit] | None = None,
    ) -> float:
        """The earliest moment a read of `action` spending `units` may start: within the API key's
        limits (over sends and reads), the account's rate of reads, its daily budget for the action
        (spent by every read of it in the window, answered or not), and a hold a 429 set. A read
        counts from when it was answered, the latest moment the server can have counted it."""
        at = now

        def leaves(slot: float, window: float) -> float:
            """When a read at `slot` leaves a window; shortly, to look again, when still unanswered."""
            return slot + window + EPSILON if slot <= now else now + IN_FLIGHT_POLL

        for limit, kth in self._key_recent(key_limits, now):
            if kth is not None:
                at = max(at, leaves(kth, limit.window))
        if action in RATED:
            found = self._one(
                "SELECT slot_at FROM reads WHERE account_id = ? AND action IN ('profile', 'members')"
                " AND slot_at > ? ORDER BY slot_at DESC LIMIT 1 OFFSET ?",
                (account_id, now - READ_RATE.window - EPSILON, READ_RATE.cap - 1),
            )
            if found:
                at = max(at, leaves(found[0], READ_RATE.window))
        (hold,) = self._one(
            "SELECT max(hold_until) FROM reads WHERE account_id = ? AND action = ? AND hold_until > ?",
            (account_id, action, now),
        )
        if hold is not None:
            at = max(at, hold)
        for budget in self._budgets(account_id, action) if budgets is None else budgets:
            # Each read counts from when it was answered (until then, from the latest it can be):
            # the server's window can have counted it no later.
            spent = self._all(
                "SELECT slot_at, units FROM reads WHERE account_id = ? AND action = ? AND slot_at > ? ORDER BY slot_at",
                (account_id, action, now - budget.window - EPSILON),
            )
            used = sum(units for _, units in spent)
            for started, spent_units in spent:  # wait for the oldest to leave the window, as needed
                if used + units <= budget.cap:
                    break
                used -= spent_units
                at = max(at, leaves(started, budget.window))
        return at

    def _reserve_read(
        self,
        account_id: str,
        action: ReadAction,
        subject: str,
        now: float,
        deadline: float,
        recipient_id: int | None = None,
        campaign: str | None = None,
        units: int = 1,
    ) -> Read:
        """Count a read before it leaves (in the caller's transaction). Until it is answered its
        slot is the latest moment the server can receive it, so a read lost with its process still
        counts for the API key's windows, without anyone having to recover it."""
        (read_id,) = self._one(
            "INSERT INTO reads (account_id, action, units, subject, started_at, slot_at) VALUES (?, ?, ?, ?, ?, ?)"
            " RETURNING id",
            (account_id, action, units, subject, now, now + deadline),
        )
        return Read(int(read_id), action, account_id, subject, recipient_id, campaign, units)

    def _reserve_many(self, accounts: Sequence[str], action: ReadAction, now: float, deadline: float) -> list[Read]:
        """One read of `action` for each account, as many as the limits allow now, in order, in one
        transaction (a run's health checks: one trip for them all, not one each)."""
        with self._transaction():
            found = []
            key_limits = self._key_limits(())
            for account in accounts:
                if self._read_allowed(account, action, 1, key_limits, now) > now:
                    break
                found.append(self._reserve_read(account, action, account, now, deadline))
            return found

    def _reserve(
        self,
        account_id: str,
        action: ReadAction,
        subject: str,
        now: float,
        deadline: float,
        units: int = 1,
        budget: Limit | None = None,
    ) -> Read | float:
        """A read not tied to a recipient (health, a page of members), reserved if the limits allow
        it now; else when they will."""
        with self._transaction():
            budgets = self._budgets(account_id, action, budget)
            if budgets:
                units = min(units, *(b.cap for b in budgets))  # a page larger than a whole budget never fits
            at = self._read_allowed(account_id, action, units, self._key_limits(()), now, budgets)
            if at > now:
                return at
            return self._reserve_read(account_id, action, subject, now, deadline, units=units)

    def _finish_read(self, read: Read, answer: ReadAnswer, now: float) -> str | None:
        """Record a read's answer and what it settles; return what became of its recipient, if any
        (its new status, or None while it waits or is to be sent)."""
        with self._transaction():
            return self._settle_read(read, answer, now)

    def _finish_reads(self, answered: Sequence[tuple[Read, ReadAnswer]], now: float) -> None:
        """Record several reads' answers in one transaction (a run's health checks)."""
        with self._transaction():
            for read, answer in answered:
                self._settle_read(read, answer, now)

    def _settle_read(self, read: Read, answer: ReadAnswer, now: float) -> str | None:
        db = self._conn
        outcome = answer.outcome
        hold = hold_for(outcome, now) if outcome.kind is Kind.RATE_LIMITED else None
        db.execute(
            "UPDATE reads SET slot_at = ?, http_status = ?, error = ?, hold_until = ? WHERE id = ?",
            (now, outcome.http_status, outcome.error, hold.until if hold else None, read.read_id),
        )
        if read.action is ReadAction.STATUS and answer.health is not None:
            db.execute(
                "INSERT INTO accounts (id, health, health_at) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE"
                " SET health = excluded.health, health_at = excluded.health_at",
                (read.account_id, json.dumps(_health_kept(answer.health.raw)), now),
            )
        if outcome.kind is Kind.SENT and read.action is ReadAction.PROFILE and answer.profile is not None:
            profile = answer.profile
            source = f"profile lookup ({read.campaign or 'blocked'})"
            self._remember(profile.urn, read.subject, source, now, profile)
            db.execute("UPDATE contacts SET resolved_at = ? WHERE profile_urn = ?", (now, profile.urn))
            self._fill_known_urns(None, now, read.subject)
            self._suppress_blocked(now, people=[(profile.urn, read.subject)])
            return None
        if outcome.kind is Kind.REJECTED and read.action is ReadAction.PROFILE:
            said = outcome.error or f"HTTP {outcome.http_status}"
            if outcome.http_status == 404 or "not found" in said.lower():
                # The API says there is no such profile: for good (a block by it binds nobody).
                db.execute(
                    "UPDATE contacts SET not_found = ?, updated_at = ? WHERE public_identifier = ?",
                    (f"no such profile: {said}", now, read.subject),
                )
                self._fill_known_urns(None, now, read.subject)
                return Status.FAILED if read.recipient_id is not None else None
            # Refused for another reason (the account, the request): asked again later, and
            # only after LOOKUP_REFUSALS refusals are its recipients failed. The contact keeps
            # no verdict, so a block by it goes on holding back recipients known by URN alone.
            (refusals,) = self._one(
                "SELECT count(*) FROM reads WHERE subject = ? AND action = 'profile' AND error IS NOT NULL"
                " AND (http_status BETWEEN 400 AND 499 OR http_status = 200) AND http_status <> 429",
                (read.subject,),
            )
            if refusals >= LOOKUP_REFUSALS:
                db.execute(
                    "UPDATE recipients SET status = 'failed', error = ?, reading_until = 0, updated_at = ?"
                    " WHERE public_identifier = ? AND profile_urn IS NULL AND status = 'pending'",
                    (f"profile lookup refused {refusals} times: {said}", now, read.subject),
                )
                return Status.FAILED if read.recipient_id is not None else None
        if read.recipient_id is None:
            return None
        if outcome.kind is Kind.SENT and read.action is ReadAction.PRECHECK:
            if answer.has_conversation:
                db.execute(
                    "UPDATE recipients SET status = 'skipped', error = ?, reading_until = 0, updated_at = ?"
                    " WHERE id = ? AND status = 'pending'",
                    (IN_CONVERSATION, now, read.recipient_id),
                )
                return Status.SKIPPED
            db.execute(
                "UPDATE recipients SET checked_by = ?, checked_at = ?, reading_until = 0 WHERE id = ?",
                (read.account_id, now, read.recipient_id),
            )
            return None
        if outcome.kind is Kind.REJECTED and read.action is ReadAction.PRECHECK:  # its send would be refused too
            error = f"conversation pre-check refused: {outcome.error or f'HTTP {outcome.http_status}'}"
            db.execute(
                "UPDATE recipients SET status = 'failed', error = ?, http_status = ?, reading_until = 0,"
                " updated_at = ? WHERE id = ? AND status = 'pending'",
                (error, outcome.http_status, now, read.recipient_id),
            )
            return Status.FAILED
        # Unanswered (a 429, a 500, no connection, an unreadable answer): asked again later,
        # never taken as an answer; a pre-check that cannot be made is never a blind send.
        retry_at = max(now + READ_RETRY, hold.until if hold else 0.0)
        column = "public_identifier = ? AND profile_urn IS NULL" if read.action is ReadAction.PROFILE else "id = ?"
        db.execute(
            f"UPDATE recipients SET reading_until = 0, not_before = max(not_before, ?) WHERE {column}",
            (retry_at, read.subject if read.action is ReadAction.PROFILE else read.recipient_id),
        )
        return None

    # --- accounts ------------------------------------------------------------------------------

    def _known_accounts(self) -> list[str]:
        """Every account the database knows: of a campaign, with a state, or that made a read."""
        with self._snapshot():
            rows = self._all(
                "SELECT account_id FROM campaign_accounts UNION SELECT id FROM accounts"
                " UNION SELECT account_id FROM reads ORDER BY 1"
            )
        return [row[0] for row in rows]

    def _account_use(self, account_id: str, now: float) -> AccountUse:
        with self._snapshot():
            day = now - 86400.0
            (messages,) = self._one(
                "SELECT count(*) FROM attempts WHERE account_id = ? AND started_at > ?", (account_id, day)
            )
            spent = dict(
                self._all(
                    "SELECT action, sum(units) FROM reads WHERE account_id = ? AND started_at > ? GROUP BY action",
                    (account_id, day),
                )
            )
            row = self._one(
                "SELECT health, health_at, hold_until, hold_reason, stopped_reason FROM accounts WHERE id = ?",
                (account_id,),
            )
            members_budget = min(self._budgets(account_id, ReadAction.MEMBERS), key=lambda b: b.cap / b.window)
            profiles_budget = min(self._budgets(account_id, ReadAction.PROFILE), key=lambda b: b.cap / b.window)
        health, health_at, hold_until, hold_reason, stopped = row or (None, None, 0.0, None, None)
        return AccountUse(
            account_id,
            messages,
            spent.get(ReadAction.MEMBERS.value, 0),
            members_budget,
            spent.get(ReadAction.PROFILE.value, 0),
            profiles_budget,
            json.loads(health) if health else None,
            health_at,
            hold_until if hold_until > now else 0.0,
            hold_reason if hold_until > now else None,
            stopped,
        )

    # --- a group's members -------------------------------------------------------------------

    def _member_fetch(
        self,
        group: str,
        statuses: Sequence[str],
        query: str | None,
        max_members: int | None,
        campaign: str | None,
        now: float,
    ) -> MemberFetch:
        """The fetch of these members (begun if new): one per group, statuses, query and campaign,
        so running the same again goes on where it stopped."""
        # A group by its URL and by its id is one group: one fetch.
        named = re.search(r"/groups/(\d+)", group)
        key = json.dumps([named.group(1) if named else group, sorted(statuses), query, campaign or ""])
        with self._transaction() as db:
            db.execute(
                "INSERT INTO member_fetches (key, campaign, group_ref, statuses, query, max_members, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET max_members = excluded.max_members,"
                " done = CASE WHEN excluded.max_members IS NOT member_fetches.max_members THEN 0"
                " ELSE member_fetches.done END",
                (key, campaign, group, json.dumps(list(statuses)), query, max_members, now),
            )
            return self._fetch_state(key)

    def _fetch_state(self, key: str) -> MemberFetch:
        row = self._one(
            "SELECT f.id, f.group_ref, f.statuses, f.query, f.max_members, f.next_start, f.total, f.done,"
            " (SELECT count(*) FROM group_members m WHERE m.fetch_id = f.id) FROM member_fetches f WHERE f.key = ?",
            (key,),
        )
        fid, group, statuses, query, max_members, next_start, total, done, fetched = row
        done = bool(done) or (max_members is not None and fetched >= max_members)
        return MemberFetch(
            fid, group, tuple(json.loads(statuses)), query, max_members, next_start, fetched, total, done
        )

    def _save_members(
        self,
        read: Read,
        fetch: MemberFetch,
        start: int,
        answer: ReadAnswer,
        now: float,
        render: Callable[[str, dict[str, Any]], tuple[Any, str | None]] | None = None,
    ) -> MemberFetch | None:
        """Record a page of members (each a contact, and for a campaign a recipient with its
        message) and where the next page starts, in one transaction with the read's answer: a
        fetch killed between two pages fetches at most the page in flight again. `start`: where
        the page began, as asked (another process may have moved the fetch on since: the next
        page starts after the furthest page stored). None when the page did not come."""
        page = answer.page
        with self._transaction() as db:
            self._settle_read(read, answer, now)
            if answer.outcome.kind is not Kind.SENT or page is None:
                return None
            db.execute("UPDATE reads SET units = ? WHERE id = ?", (page.size, read.read_id))
            key, campaign = self._one("SELECT key, campaign FROM member_fetches WHERE id = ?", (fetch.id,))
            fetch = self._fetch_state(key)  # as it stands now, whoever moved it
            position = start
            source = f"group {page.group_id or fetch.group} members"
            room = None if fetch.max_members is None else max(fetch.max_members - fetch.fetched, 0)
            members = page.members if room is None else page.members[:room]
            for member in members:
                profile = member.profile
                contact = self._remember(profile.urn, profile.slug, source, now, profile)
                added = db.execute(
                    "INSERT INTO group_members (fetch_id, contact_id, position, membership_status)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (fetch.id, contact, position, member.membership_status),
                ).rowcount
                position += 1
                if campaign is None or render is None or not added:
                    continue
                variables = {
                    "first_name": profile.first_name,
                    "last_name": profile.last_name,
                    "headline": profile.headline,
                    "public_identifier": profile.slug,
                    "membership_status": member.membership_status,
                }
                rendered, problem = render(profile.slug or profile.urn, variables)
                texts, ids = rendered or (("",), ())
                db.execute(
                    "INSERT INTO recipients (campaign, profile_urn, public_identifier, message, messages, variants,"
                    " variables, status, error, updated_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'group')"
                    " ON CONFLICT DO NOTHING",
                    (
                        campaign,
                        profile.urn,
                        profile.slug,
                        texts[0],
                        json.dumps(texts, ensure_ascii=False) if len(texts) > 1 else None,
                        json.dumps(ids) if any(ids) else None,
                        json.dumps(variables, ensure_ascii=False),
                        "pending" if rendered else "failed",
                        None if rendered else f"message does not render for this member: {problem}",
                        now,
                    ),
                )
            fetched = fetch.fetched + len(members)
            done = (
                not page.has_more or page.size == 0 or (fetch.max_members is not None and fetched >= fetch.max_members)
            )
            db.execute(
                "UPDATE member_fetches SET next_start = max(next_start, ?), total = coalesce(?, total),"
                " done = CASE WHEN ? = 1 THEN 1 ELSE done END, updated_at = ? WHERE id = ?",
                (start + page.size, page.total, done, now, fetch.id),
            )
            self._fill_known_urns(None, now)  # recipients known by identifier that a member here is
            if campaign is not None:
                self._suppress_blocked(now, campaign, [(m.profile.urn, m.profile.slug) for m in members])
            return self._fetch_state(key)

    def _refresh_fetch(self, fetch: MemberFetch) -> MemberFetch:
        with self._snapshot():
            (key,) = self._one("SELECT key FROM member_fetches WHERE id = ?", (fetch.id,))
            return self._fetch_state(key)

    def _fetched_members(self, fetch_id: int) -> list[tuple[Any, ...]]:
        """The members a fetch stored, in the group's order: URN, identifier, names, headline, status."""
        with self._snapshot():
            return self._all(
                "SELECT c.profile_urn, c.public_identifier, c.first_name, c.last_name, c.headline,"
                " m.membership_status FROM group_members m JOIN contacts c ON c.id = m.contact_id"
                " WHERE m.fetch_id = ? ORDER BY m.position",
                (fetch_id,),
            )

    def _preparing(self, campaign: str) -> Preparing:
        """What stands between a campaign and some of its sends: lookups, its group's members."""
        with self._snapshot():
            (lookups,) = self._one(
                "SELECT count(*) FROM recipients WHERE campaign = ? AND status = 'pending' AND profile_urn IS NULL",
                (campaign,),
            )
            fetch = self._one(
                "SELECT f.done, f.total, (SELECT count(*) FROM group_members m WHERE m.fetch_id = f.id)"
                " FROM member_fetches f WHERE f.campaign = ?",
                (campaign,),
            )
            (audience,) = self._one("SELECT audience FROM campaigns WHERE name = ?", (campaign,))
        if not audience:
            return Preparing(lookups)
        done, total, fetched = fetch or (False, None, 0)
        return Preparing(lookups, True, fetched, total, bool(done), Audience.from_json(audience).max)

    def _ready_count(self, campaign: str) -> int:
        with self._snapshot():
            return self._one("SELECT count(*) FROM recipients WHERE campaign = ? AND status = 'pending'", (campaign,))[
                0
            ]

    # --- contacts and the do-not-contact list ------------------------------------------------

    def _remember(self, urn: str | None, slug: str | None, source: str, now: float, names: Any = None) -> int:
        """The contact of a person known by `urn`, `slug` or both (made if new). When a person
        known two ways turns out to be one (a lookup joined the identifier to a URN), the two rows
        become one, keeping the do-not-contact mark of either. `names`: first_name, last_name and
        headline attributes to keep."""
        db = self._conn
        by_urn = self._one("SELECT id, public_identifier FROM contacts WHERE profile_urn = ?", (urn,)) if urn else None
        by_slug = (
            self._one("SELECT id, profile_urn FROM contacts WHERE public_identifier = ?", (slug,)) if slug else None
        )
        if by_urn and by_slug and by_urn[0] != by_slug[0]:
            if by_slug[1] is None:  # one person, known two ways
                self._merge_contacts(keep=by_urn[0], gone=by_slug[0], now=now)
            else:  # the identifier moved to another profile: the newest word wins
                db.execute("UPDATE contacts SET public_identifier = NULL WHERE id = ?", (by_slug[0],))
            by_slug = None
        if by_urn:
            contact = by_urn[0]
            if slug:
                db.execute("UPDATE contacts SET public_identifier = ? WHERE id = ?", (slug, contact))
        elif by_slug:
            contact = by_slug[0]
            if urn:
                if by_slug[1] is not None and by_slug[1] != urn:
                    db.execute("UPDATE contacts SET public_identifier = NULL WHERE id = ?", (contact,))
                    return self._remember(urn, slug, source, now, names)
                db.execute("UPDATE contacts SET profile_urn = ? WHERE id = ?", (urn, contact))
        else:
            contact = int(
                self._one(
                    "INSERT INTO contacts (profile_urn, public_identifier, source, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?) RETURNING id",
                    (urn, slug, source, now, now),
                )[0]
            )
        if names is not None:
            db.execute(
                "UPDATE contacts SET first_name = coalesce(?, first_name), last_name = coalesce(?, last_name),"
                " headline = coalesce(?, headline), updated_at = ? WHERE id = ?",
                (names.first_name, names.last_name, names.headline, now, contact),
            )
        return contact

    def _merge_contacts(self, keep: int, gone: int, now: float) -> None:
        db = self._conn
        old = self._one(
            "SELECT first_name, last_name, headline, blocked_at, blocked_reason FROM contacts WHERE id = ?", (gone,)
        )
        db.execute(
            "UPDATE group_members SET contact_id = ? WHERE contact_id = ? AND NOT EXISTS (SELECT 1 FROM group_members"
            " g WHERE g.fetch_id = group_members.fetch_id AND g.contact_id = ?)",
            (keep, gone, keep),
        )
        db.execute("DELETE FROM contacts WHERE id = ?", (gone,))
        db.execute(
            "UPDATE contacts SET first_name = coalesce(first_name, ?), last_name = coalesce(last_name, ?),"
            " headline = coalesce(headline, ?), blocked_at = coalesce(blocked_at, ?),"
            " blocked_reason = coalesce(blocked_reason, ?), updated_at = ? WHERE id = ?",
            (*old, now, keep),
        )

    def _fill_known_urns(self, campaign: str | None, now: float, slug: str | None = None) -> None:
        """Recipients given by public identifier whose person is known now: they take the URN (or
        fail, when the API said there is no such profile). In `campaign`, or for `slug`, or all."""
        if campaign is not None:
            where, params = "r.campaign = ?", (campaign,)
        elif slug is not None:
            where, params = "r.public_identifier = ?", (slug,)
        else:
            where, params = "r.public_identifier IS NOT NULL", ()
        rows = self._all(
            "SELECT r.id, r.campaign, c.profile_urn, c.not_found FROM recipients r JOIN contacts c"
            " ON c.public_identifier = r.public_identifier WHERE r.profile_urn IS NULL"
            f" AND (c.profile_urn IS NOT NULL OR c.not_found IS NOT NULL) AND {where}",
            params,
        )
        db = self._conn
        for rid, name, urn, not_found in rows:
            if urn is None:
                db.execute(
                    "UPDATE recipients SET status = 'failed', error = ?, reading_until = 0, updated_at = ?"
                    " WHERE id = ? AND status = 'pending'",
                    (not_found, now, rid),
                )
            elif self._one("SELECT 1 FROM recipients WHERE campaign = ? AND profile_urn = ?", (name, urn)):
                db.execute(
                    "UPDATE recipients SET status = CASE status WHEN 'pending' THEN 'skipped' ELSE status END,"
                    " error = CASE status WHEN 'pending' THEN ? ELSE error END, reading_until = 0, updated_at = ?"
                    " WHERE id = ?",
                    (SAME_PERSON.format(urn=urn), now, rid),
                )
            else:
                db.execute(
                    "UPDATE recipients SET profile_urn = ?, reading_until = 0, updated_at = ? WHERE id = ?",
                    (urn, now, rid),
                )

    def _suppress_blocked(
        self, now: float, campaign: str | None = None, people: Sequence[tuple[str | None, str | None]] | None = None
    ) -> int:
        """Pending recipients (of `campaign`, or all; of `people` (URN, identifier), or anyone)
        whose person is on the do-not-contact list become `suppressed`, with its reason."""
        if self._one("SELECT 1 FROM contacts WHERE blocked_at IS NOT NULL LIMIT 1") is None:
            return 0  # nobody is on the list: no recipient to look at
        whom, named = "", []
        if people is not None:  # only these: not a scan of every pending recipient
            urns = [urn for urn, _ in people if urn]
            slugs = [slug for _, slug in people if slug]
            whom = (
                f" AND (profile_urn IN ({','.join('?' * len(urns)) or 'NULL'})"
                f" OR public_identifier IN ({','.join('?' * len(slugs)) or 'NULL'}))"
            )
            named = [*urns, *slugs]
        cursor = self._conn.execute(
            "UPDATE recipients SET status = 'suppressed', updated_at = ?, error = ("
            " SELECT 'do not contact: ' || coalesce(c.blocked_reason, 'blocked') FROM contacts c"
            "  WHERE c.blocked_at IS NOT NULL AND (c.profile_urn = recipients.profile_urn"
            "  OR c.public_identifier = recipients.public_identifier) LIMIT 1)"
            " WHERE status = 'pending' AND (? IS NULL OR campaign = ?) AND EXISTS (SELECT 1 FROM contacts c"
            "  WHERE c.blocked_at IS NOT NULL AND (c.profile_urn = recipients.profile_urn"
            "  OR c.public_identifier = recipients.public_identifier))" + whom,
            (now, campaign, campaign, *named),
        )
        return cursor.rowcount

    def _block(self, people: Sequence[tuple[str | None, str | None]], reason: str | None, now: float) -> Blocked:
        """Put people on the do-not-contact list: no campaign sends them, now or later. Their
        pending recipients become `suppressed` at once; every claim checks the list too."""
        with self._transaction():
            return self._put_on_list(people, reason, now)

    def _put_on_list(self, people: Sequence[tuple[str | None, str | None]], reason: str | None, now: float) -> Blocked:
        """`_block`, inside the caller's transaction."""
        added = 0
        for urn, slug in people:
            contact = self._remember(urn, slug, "block", now)
            added += self._conn.execute(
                "UPDATE contacts SET blocked_at = ?, blocked_reason = ?, updated_at = ? WHERE id = ?"
                " AND blocked_at IS NULL",
                (now, reason, now, contact),
            ).rowcount
        (unresolved,) = self._one(
            "SELECT count(*) FROM contacts WHERE blocked_at IS NOT NULL AND profile_urn IS NULL AND not_found IS NULL"
        )
        return Blocked(added, len(people) - added, self._suppress_blocked(now), unresolved)

    def _unblock(self, people: Sequence[tuple[str | None, str | None]], now: float) -> Blocked:
        """Take people off the list; their suppressed recipients are pending again (skipped if
        they have left their campaign's file)."""
        with self._transaction() as db:
            changed = restored = 0
            for urn, slug in people:
                row = self._one(
                    "SELECT id, profile_urn, public_identifier FROM contacts WHERE blocked_at IS NOT NULL AND"
                    " (profile_urn = ? OR public_identifier = ?)",
                    (urn, slug),
                )
                if row is None:
                    continue
                changed += 1
                db.execute(
                    "UPDATE contacts SET blocked_at = NULL, blocked_reason = NULL, updated_at = ? WHERE id = ?",
                    (now, row[0]),
                )
                restored += db.execute(
                    f"UPDATE recipients SET status = {_PENDING_UNLESS_REMOVED},"
                    f" error = {_ERROR_IF_REMOVED.format('NULL')}, updated_at = ?"
                    " WHERE status = 'suppressed' AND (profile_urn = ? OR public_identifier = ?)",
                    (now, row[1], row[2]),
                ).rowcount
            return Blocked(changed, len(people) - changed, restored)

    def _contacts(self, blocked_only: bool) -> list[Contact]:
        campaigns = self._engine.joined("r.campaign || ':' || r.status", "' '")
        with self._snapshot():
            rows = self._all(
                "SELECT c.profile_urn, c.public_identifier, c.first_name, c.last_name, c.headline, c.source,"
                f" c.blocked_at, c.blocked_reason, c.not_found, (SELECT {campaigns}"
                "  FROM recipients r WHERE r.profile_urn = c.profile_urn OR (r.profile_urn IS NULL"
                "  AND r.public_identifier = c.public_identifier)) FROM contacts c"
                + (" WHERE c.blocked_at IS NOT NULL" if blocked_only else "")
                + " ORDER BY c.id"
            )
        return [Contact(*row) for row in rows]

    def _window_used(self, account_id: str, limit: Limit, now: float) -> int:
        row = self._one(
            "SELECT count(*) FROM attempts WHERE account_id = ? AND slot_at > ?", (account_id, now - limit.window)
        )
        return int(row[0])

    def _claim(
        self,
        run_id: int,
        account_id: str,
        campaigns: Sequence[str],
        now: float,
        draw: Callable[[float, float], float] = random.uniform,
        deadline: float = 70.0,
    ) -> Claimed | Read | Waiting | Drained:
        """Claim one recipient of `campaigns` for `account_id`, if every limit in force allows a
        request now. Everything the decision and the request use (the limits, the API key's limit,
        the campaign's group, endpoint and retry policy, the recipient's message, the do-not-contact
        list, what other campaigns sent) is read inside the transaction, so what another process
        wrote a moment ago counts too.

        Before a send, what must come first: a recipient's conversation pre-check (a `Read`, made
        when the send itself could go), or a profile lookup for one given by its URL (a `Read`,
        within the account's daily budget of lookups). `deadline`: the longest a request takes."""
        with self._transaction(account_id) as db:
            if self.database_clock:  # every host's claims in the one clock the windows are kept in
                now = self._engine.database_now(db) or now
            taken = self._one("SELECT taken_at FROM runs WHERE id = ?", (run_id,))
            if taken is not None and taken[0] is not None:
                raise RunTakenError(RUN_TAKEN)
            # Only campaigns whose file still lists the account (another process may have
            # reloaded one without it since this run started).
            marks = ",".join("?" * len(campaigns))
            settings = {
                row[0]: row[1:]
                for row in self._all(
                    "SELECT c.name, c.group_id, c.endpoint, c.max_attempts, c.backoff, c.recontact_after, c.precheck,"
                    " c.steps FROM campaigns c JOIN campaign_accounts ca ON ca.campaign = c.name"
                    f" WHERE ca.account_id = ? AND c.name IN ({marks})",
                    (account_id, *campaigns),
                )
            }
            campaigns = [name for name in campaigns if name in settings]
            pacing = self._account_pacing(account_id, campaigns, now)
            if pacing is None or not campaigns:
                return Drained()
            key_limits = self._key_limits(campaigns)
            # Someone blocked by URL whose URN nobody knows yet could be any recipient known by URN
            # alone: such a block is looked up first, and those recipients wait for it.
            unsure = self._one(
                "SELECT public_identifier FROM contacts WHERE blocked_at IS NOT NULL AND profile_urn IS NULL"
                " AND not_found IS NULL LIMIT 1"
            )
            unsure_at = None  # when that lookup may go, as far as this account's budget says
            if unsure is not None:
                lookup = self._blocked_lookup(account_id, key_limits, now, deadline)
                if isinstance(lookup, Read):
                    return lookup
                unsure_at = lookup
            state = self._account_state(account_id, pacing, now, key_limits)
            verdict = decide(pacing, state, now)
            fresh = self._replies_fresh(account_id, settings, now)
            found: Any = None
            if verdict.go(now):
                found = self._next_to_send(account_id, campaigns, settings, now, deadline, unsure is not None, fresh)
                if isinstance(found, Read):
                    return found
                if isinstance(found, float):  # its pre-check must wait (a 429 held the account's pre-checks)
                    return Waiting(found, Wait.HOLD)
            if found is None:
                lookup = self._next_lookup(account_id, campaigns, key_limits, now, deadline)
                if isinstance(lookup, Read):
                    return lookup
                return self._why_not(account_id, campaigns, verdict, lookup, now, unsure is not None, unsure_at, fresh)
            name, recipient_id, urn, message, attempts, retries, requeued, step = found
            group_id, endpoint, max_attempts, backoff, *_ = settings[name]
            db.execute(
                "UPDATE recipients SET status = 'in_flight', account_id = ?, attempts = attempts + 1,"
                " run_id = ?, updated_at = ? WHERE id = ?",
                (account_id, run_id, now, recipient_id),
            )
            (attempt_id,) = self._one(
                "INSERT INTO attempts (recipient_id, run_id, account_id, endpoint, started_at, slot_at)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (recipient_id, run_id, account_id, endpoint, now, IN_FLIGHT),
            )
            tat, gap_until = after_send(pacing, state.tat, now, draw)
            db.execute(
                "INSERT INTO accounts (id, tat, gap_until, first_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
                " SET tat = excluded.tat, gap_until = excluded.gap_until, first_at = coalesce(accounts.first_at,"
                "  (SELECT min(started_at) FROM attempts WHERE account_id = ?), ?)",
                (account_id, tat, gap_until, now, account_id, now),
            )
            more = self._one(
                f"SELECT 1 FROM recipients WHERE campaign IN ({','.join('?' * len(campaigns))})"
                " AND status = 'pending' AND removed = 0 AND (step = 0 OR account_id = ?) LIMIT 1",
                (*campaigns, account_id),
            )
            upcoming = next_after_send(pacing, state, tat, gap_until, now)
            return Claimed(
                recipient_id=recipient_id,
                attempt_id=int(attempt_id),
                run_id=run_id,
                campaign=name,
                profile_urn=urn,
                message=message,
                account_id=account_id,
                group_id=group_id,
                endpoint=endpoint,
                max_attempts=max_attempts,
                backoff=backoff,
                attempt=attempts + 1,
                retries=retries,
                requeued=requeued,
                step=step,
                window_used=self._window_used(account_id, pacing.slowest, now),
                window_cap=pacing.slowest.cap,
                next_at=upcoming.at,
                next_reason=upcoming.reason,
                more=more is not None,
            )

    def _key_limits(self, running: Sequence[str]) -> tuple[Limit, ...]:
        """The API key's limits in force: every one of the campaigns running now and of every other
        campaign with work left, whichever process runs it (one key per database). All hold."""
        marks = ",".join("?" * len(running)) or "NULL"
        rows = self._all(
            f"SELECT DISTINCT api_limits FROM campaigns c WHERE c.name IN ({marks}) OR EXISTS ("
            " SELECT 1 FROM recipients r WHERE r.campaign = c.name AND r.status IN ('pending', 'in_flight'))",
            tuple(running),
        )
        if not rows:  # nothing is sending (a health check, `members`): every campaign's limits, or the vendor's
            rows = self._all("SELECT DISTINCT api_limits FROM campaigns") or [(DEFAULT_API_LIMITS,)]
        return tuple(sorted({limit for (text,) in rows for limit in _limits(text)}))

    def _replies_fresh(self, account_id: str, settings: dict[str, Any], now: float) -> set[str]:
        """The campaigns whose follow-ups `account_id` may send now: those that do not stop on a
        reply, and those whose `reply_fresh` the account's last complete look at replies is within."""
        sequences = {name: _steps(values[-1]) for name, values in settings.items()}
        if all(steps.count == 1 for steps in sequences.values()):
            return set()  # no follow-ups: nothing to look at
        row = self._one("SELECT replies_polled_at FROM accounts WHERE id = ?", (account_id,))
        polled = row[0] if row and row[0] is not None else None
        fresh = set()
        for name, steps in sequences.items():
            # A look that is due comes first: a follow-up never goes out just before it.
            if not steps.stop_on_reply or (
                polled is not None and polled > now - min(steps.reply_fresh, steps.reply_poll)
            ):
                fresh.add(name)
        return fresh

    def _next_to_send(
        self,
        account_id: str,
        campaigns: Sequence[str],
        settings: dict[str, Any],
        now: float,
        deadline: float,
        unsure: bool = False,
        fresh: set[str] | frozenset[str] = frozenset(),
    ) -> tuple[Any, ...] | Read | float | None:
        """The next recipient `account_id` may send now, in campaign order: a follow-up that is due
        first (from the account that sent the steps before it, and only while its replies were
        looked at within `reply_fresh`: `fresh`), else a first message; or the pre-check a first
        message needs. On the way, whoever is on the do-not-contact list is `suppressed`, and
        whoever another campaign contacted is skipped (`recontact: never`) or waits (a duration).
        `unsure`: a block by URL is not looked up yet, so recipients known by URN alone wait."""
        for name in campaigns:
            while name in fresh:
                row = self._one(
                    "SELECT id, profile_urn, public_identifier, message, attempts, retries, requeued, step, replied_at"
                    " FROM recipients WHERE campaign = ? AND status = 'pending' AND step > 0 AND account_id = ?"
                    f" AND not_before <= ? AND removed = 0 ORDER BY not_before LIMIT 1{self._engine.skip_locked}",
                    (name, account_id, now),
                )
                if row is None:
                    break
                rid, urn, slug, *rest, replied_at = row
                if replied_at is not None and _steps(settings[name][-1]).stop_on_reply:
                    # It replied while its follow-up was in flight, and that request was handed back.
                    self._conn.execute("UPDATE recipients SET status = 'replied' WHERE id = ?", (rid,))
                    self._back_to_last_sent(rid)
                    continue
                if self._is_blocked(rid, urn, slug, now):
                    continue
                return (name, rid, urn, *rest)
        for name in campaigns:
            recontact_after, precheck = settings[name][4:6]
            while True:
                row = self._one(
                    "SELECT id, profile_urn, public_identifier, message, attempts, retries, requeued, checked_by,"
                    " checked_at FROM recipients WHERE campaign = ? AND status = 'pending' AND step = 0"
                    " AND removed = 0 AND not_before <= ? AND profile_urn IS NOT NULL AND reading_until <= ?"
                    f" AND (public_identifier IS NOT NULL OR ? = 0) ORDER BY id LIMIT 1{self._engine.skip_locked}",
                    (name, now, now, unsure),
                )
                if row is None:
                    break
                rid, urn, slug, message, attempts, retries, requeued, checked_by, checked_at = row
                contacted = self._may_contact(rid, name, urn, slug, recontact_after, now)
                if contacted is None:
                    continue
                # Someone messaged before, whom `recontact` lets us message again, is in a
                # conversation with us: the pre-check is for people in a conversation with others.
                fresh_check = checked_by == account_id and checked_at is not None and checked_at > now - PRECHECK_FRESH
                if precheck == "conversation" and slug and not fresh_check and not contacted:
                    at = self._read_allowed(account_id, ReadAction.PRECHECK, 1, (), now)
                    if at > now:
                        return at
                    self._conn.execute("UPDATE recipients SET reading_until = ? WHERE id = ?", (now + deadline, rid))
                    return self._reserve_read(account_id, ReadAction.PRECHECK, slug, now, deadline, rid, name)
                return (name, rid, urn, message, attempts, retries, requeued, 0)
        return None

    def _is_blocked(self, rid: int, urn: str, slug: str | None, now: float) -> bool:
        """Whether the person is on the do-not-contact list; if so the recipient is `suppressed`."""
        blocked = self._one(
            "SELECT blocked_reason FROM contacts WHERE blocked_at IS NOT NULL AND (profile_urn = ?"
            " OR public_identifier = ?) LIMIT 1",
            (urn, slug),
        )
        if blocked is None:
            return False
        self._conn.execute(
            "UPDATE recipients SET status = 'suppressed', error = ?, updated_at = ? WHERE id = ?",
            (_blocked_error(blocked[0]), now, rid),
        )
        return True

    def _may_contact(
        self, rid: int, campaign: str, urn: str, slug: str | None, recontact_after: float | None, now: float
    ) -> bool | None:
        """None when this recipient may not be sent now: on the do-not-contact list (`suppressed`),
        contacted by another campaign (`skipped`, or for `recontact: <duration>` a wait). Else
        whether another campaign contacted the person before."""
        if self._is_blocked(rid, urn, slug, now):
            return None
        other = self._one(
            "SELECT campaign, status, coalesce(sent_at, updated_at) AS at FROM recipients WHERE profile_urn = ?"
            " AND campaign <> ? AND (status IN ('sent', 'unknown', 'in_flight', 'replied') OR sent_at IS NOT NULL)"
            " ORDER BY status = 'in_flight' DESC, at DESC LIMIT 1",
            (urn, campaign),
        )
        if other is None:
            return False
        by, status, at = other
        if recontact_after == 0:
            return True
        if status == Status.IN_FLIGHT:  # its answer decides: wait for it
            until = now + ELSEWHERE_POLL
        elif recontact_after is None:
            self._conn.execute(
                "UPDATE recipients SET status = 'skipped', error = ?, updated_at = ? WHERE id = ?",
                (f"already contacted by {by} on {(iso(at) or '')[:10]}", now, rid),
            )
            return None
        else:
            until = at + recontact_after
        if until <= now:
            return True
        self._conn.execute("UPDATE recipients SET not_before = ?, updated_at = ? WHERE id = ?", (until, now, rid))
        return None

    def _next_lookup(
        self, account_id: str, campaigns: Sequence[str], key_limits: Sequence[Limit], now: float, deadline: float
    ) -> Read | float | None:
        """A profile lookup for the next recipient given only by its URL, reserved if the account's
        budget allows it now; else when it will (None: nobody needs one)."""
        marks = ",".join("?" * len(campaigns))
        row = self._one(
            f"SELECT id, campaign, public_identifier FROM recipients WHERE campaign IN ({marks})"
            " AND status = 'pending' AND removed = 0 AND profile_urn IS NULL AND reading_until <= ?"
            " AND not_before <= ? ORDER BY id LIMIT 1",
            (*campaigns, now, now),
        )
        if row is None:
            return None
        rid, name, slug = row
        at = self._read_allowed(account_id, ReadAction.PROFILE, 1, key_limits, now)
        if at > now:
            return at
        self._conn.execute(
            "UPDATE recipients SET reading_until = ? WHERE public_identifier = ? AND profile_urn IS NULL",
            (now + deadline, slug),
        )
        return self._reserve_read(account_id, ReadAction.PROFILE, slug, now, deadline, rid, name)

    def _blocked_lookup(
        self, account_id: str, key_limits: Sequence[Limit], now: float, deadline: float
    ) -> Read | float | None:
        """A lookup of someone blocked by URL whose URN is not known, if the account's budget allows
        it now; else when it will (None: each was asked in the last READ_RETRY seconds, and an
        unanswered one waits that long)."""
        row = self._one(
            "SELECT c.public_identifier FROM contacts c WHERE c.blocked_at IS NOT NULL AND c.profile_urn IS NULL"
            " AND c.not_found IS NULL AND NOT EXISTS (SELECT 1 FROM reads r WHERE r.subject = c.public_identifier"
            " AND r.action = 'profile' AND r.slot_at > ?) LIMIT 1",
            (now - READ_RETRY,),
        )
        if row is None:
            return None
        at = self._read_allowed(account_id, ReadAction.PROFILE, 1, key_limits, now)
        if at > now:
            return at
        return self._reserve_read(account_id, ReadAction.PROFILE, row[0], now, deadline)

    def _why_not(
        self,
        account_id: str,
        campaigns: Sequence[str],
        verdict: Verdict,
        lookup_at: float | None,
        now: float,
        unsure: bool = False,
        unsure_at: float | None = None,
        fresh: set[str] | frozenset[str] = frozenset(),
    ) -> Waiting | Drained:
        """Why `account_id` sends nothing now, and until when; or that it has nothing left. Another
        account's follow-ups are its own (the conversation is on that account)."""
        marks = ",".join("?" * len(campaigns))
        mine = f"campaign IN ({marks}) AND status = 'pending' AND (step = 0 OR account_id = ?)"
        ready = self._one(
            f"SELECT 1 FROM recipients WHERE campaign IN ({marks}) AND status = 'pending' AND step = 0"
            " AND not_before <= ? AND profile_urn IS NOT NULL AND reading_until <= ?"
            " AND (public_identifier IS NOT NULL OR ? = 0) LIMIT 1",
            (*campaigns, now, now, unsure),
        )
        due = self._all(
            f"SELECT DISTINCT campaign FROM recipients WHERE campaign IN ({marks}) AND status = 'pending'"
            " AND step > 0 AND account_id = ? AND not_before <= ?",
            (*campaigns, account_id, now),
        )  # the campaigns with follow-ups of this account due now
        waits = [(verdict.at, verdict.reason)] if ready else []
        if due:
            stale = any(name not in fresh for (name,) in due)
            waits.append((now + ELSEWHERE_POLL, Wait.REPLIES) if stale else (verdict.at, verdict.reason))
        if unsure and not ready:  # recipients known by URN alone wait for a block's lookup
            waiting = self._one(
                f"SELECT 1 FROM recipients WHERE campaign IN ({marks}) AND status = 'pending'"
                " AND public_identifier IS NULL LIMIT 1",
                tuple(campaigns),
            )
            if waiting:
                waits.append((unsure_at or now + ELSEWHERE_POLL, Wait.LOOKUP))
        if lookup_at is not None:
            waits.append((lookup_at, Wait.LOOKUP))
        if waits:
            return Waiting(*min(waits, key=lambda wait: wait[0]))
        (next_work,) = self._one(
            f"SELECT min(max(not_before, reading_until)) FROM recipients WHERE {mine}", (*campaigns, account_id)
        )
        if next_work is not None:
            return Waiting(max(next_work, verdict.at), Wait.BACKOFF if next_work > verdict.at else verdict.reason)
        in_flight = self._one(
            f"SELECT 1 FROM recipients WHERE campaign IN ({marks}) AND status = 'in_flight' LIMIT 1", tuple(campaigns)
        )
        if in_flight:
            # Other workers (or processes) may hand work back (429, 500): look again then.
            return Waiting(now + ELSEWHERE_POLL, Wait.ELSEWHERE)
        return Drained()

    def _release(self, claim: Claimed, now: float) -> None:
        """Undo a claim whose request never started (the run was stopped in between)."""
        with self._transaction() as db:
            db.execute(
                f"UPDATE recipients SET status = {_PENDING_UNLESS_REMOVED},"
                f" error = {_ERROR_IF_REMOVED.format('error')}, attempts = attempts - 1, run_id = NULL,"
                " account_id = (SELECT a.account_id FROM attempts a WHERE a.recipient_id = recipients.id"
                "  AND a.id <> ? ORDER BY a.id DESC LIMIT 1),"
                " updated_at = ? WHERE id = ? AND status = 'in_flight' AND run_id = ?",
                (claim.attempt_id, now, claim.recipient_id, claim.run_id),
            )
            db.execute("DELETE FROM attempts WHERE id = ?", (claim.attempt_id,))

    def _record(self, claim: Claimed, settled: Settlement) -> Status:
        """Write what an answer settled (see `policy`); return the recipient's status after it.

        The attempt row always gets the truth. The recipient takes it while our claim holds, or
        over the `unknown` a recovery gave it if this process was taken for dead; never over a
        state someone else gave it since (a retry, another run's claim). A recipient handed back
        (a 429, a 500) after it left the file is `skipped`, not sent again."""
        outcome, now = settled.outcome, settled.answered_at
        headers = outcome.rate_limit
        pending = settled.status is Status.PENDING
        with self._transaction() as db:
            row = db.execute(
                "UPDATE recipients SET"
                " status = CASE WHEN :pending = 1 AND removed = 1 THEN 'skipped' ELSE :status END,"
                " error = CASE WHEN :pending = 1 AND removed = 1 THEN :removed ELSE :error END,"
                " not_before = CASE WHEN :pending = 1 AND removed = 1 THEN 0 ELSE :not_before END,"
                " http_status = :http_status, retries = :retries, sent_at = coalesce(:sent_at, sent_at),"
                " run_id = NULL, updated_at = :now"
                " WHERE id = :id AND ((status = 'in_flight' AND run_id = :run_id) OR (status = 'unknown'"
                "  AND error = :died AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.recipient_id = recipients.id"
                "  AND a.id > :attempt_id)))"
                " RETURNING status",
                {
                    "pending": pending,
                    "status": settled.status.value,
                    "removed": REMOVED_FROM_FILE,
                    "error": outcome.error,
                    "not_before": settled.not_before,
                    "http_status": outcome.http_status,
                    "retries": settled.retries,
                    "sent_at": settled.sent_at,
                    "now": now,
                    "id": claim.recipient_id,
                    "run_id": claim.run_id,
                    "died": DIED_IN_FLIGHT,
                    "attempt_id": claim.attempt_id,
                },
            ).fetchone()
            ours = row is not None  # the claim held: this answer decides the recipient
            if row is None:
                row = self._one("SELECT status FROM recipients WHERE id = ?", (claim.recipient_id,))
            status = Status(row[0])
            if ours and status is Status.SENT and settled.sent_at is not None:
                status = self._step_sent(claim.recipient_id, claim.account_id, settled.sent_at, now)
            db.execute(
                "UPDATE attempts SET finished_at = ?, slot_at = ?, outcome = ?, http_status = ?, error = ?,"
                " response_body = ?, latency = ?, rl_action = ?, rl_limit = ?, rl_used = ?, rl_remaining = ?,"
                " rl_reset = ? WHERE id = ?",
                (
                    now,
                    now,
                    outcome.kind.value,
                    outcome.http_status,
                    outcome.error,
                    outcome.body,
                    settled.latency,
                    headers.action,
                    headers.limit,
                    headers.used,
                    headers.remaining,
                    headers.reset,
                    claim.attempt_id,
                ),
            )
            if settled.account_works:  # whatever stopped it is over
                db.execute(
                    "UPDATE accounts SET stopped_reason = NULL, stopped_at = NULL WHERE id = ?", (claim.account_id,)
                )
            hold = settled.account_hold
            if hold is not None:
                db.execute(
                    "INSERT INTO accounts (id, hold_until, hold_reason) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE"
                    " SET hold_until = max(accounts.hold_until, excluded.hold_until), hold_reason = CASE"
                    "  WHEN excluded.hold_until >= accounts.hold_until THEN excluded.hold_reason"
                    "  ELSE accounts.hold_reason END",
                    (claim.account_id, hold.until, hold.reason),
                )
            remaining, reset = headers.remaining_count, settled.server_reset
            # The policy bounds the reset; a database must not take even that on trust.
            if remaining is not None and reset is not None and now < reset <= now + MAX_HOLD:
                db.execute(
                    "INSERT INTO accounts (id, server_remaining, server_reset, server_seen_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET server_remaining = excluded.server_remaining,"
                    " server_reset = excluded.server_reset, server_seen_at = excluded.server_seen_at",
                    (claim.account_id, remaining, reset, now),
                )
            put_back = [refused.recipient_id for refused in settled.put_back]
            if put_back:
                marks = ",".join("?" * len(put_back))
                db.execute(
                    f"UPDATE recipients SET status = {_PENDING_UNLESS_REMOVED},"
                    f" error = {_ERROR_IF_REMOVED.format('?')}, requeued = requeued + 1, updated_at = ?"
                    f" WHERE id IN ({marks}) AND status = 'failed' AND http_status = 403",
                    (settled.put_back_note, now, *put_back),
                )
                if claim.recipient_id in put_back and status is Status.FAILED:
                    (found,) = self._one("SELECT status FROM recipients WHERE id = ?", (claim.recipient_id,))
                    status = Status(found)
        return status

    def _step_sent(self, rid: int, account_id: str, sent_at: float, now: float, confirmed: bool = False) -> Status:
        """Keep the step a recipient was just sent, and move it on: to its next step (not before
        that step's `after`, from the same account), to `replied` if the person answered while it
        was on its way, or leave it `sent` after its last step. Returns its status."""
        campaign, step, messages, variants, replied_at = self._one(
            "SELECT campaign, step, messages, variants, replied_at FROM recipients WHERE id = ?", (rid,)
        )
        variant = json.loads(variants)[step] if variants else ""
        self._conn.execute(
            "INSERT INTO step_sends (recipient_id, step, variant, account_id, sent_at, confirmed)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (rid, step, variant, account_id, sent_at, confirmed),
        )
        (stored,) = self._one("SELECT steps FROM campaigns WHERE name = ?", (campaign,))
        steps = _steps(stored)
        if replied_at is not None and steps.stop_on_reply:
            self._conn.execute("UPDATE recipients SET status = 'replied' WHERE id = ?", (rid,))
            return Status.REPLIED
        if messages is None or step + 1 >= steps.count:
            return Status.SENT
        texts = json.loads(messages)
        following = step + 1
        self._conn.execute(
            "UPDATE recipients SET status = 'pending', step = ?, message = ?, not_before = ?, retries = 0,"
            " http_status = NULL, error = NULL, updated_at = ? WHERE id = ?",
            (following, texts[min(following, len(texts) - 1)], sent_at + steps.afters[following], now, rid),
        )
        return Status.PENDING

    def _settle_in_flight(self, now: float) -> int:
        """Take every request still in flight as answered now, outcome unknown. Only for a scratch
        copy (`plan`): the process that sent them may still be alive."""
        with self._transaction() as db:
            db.execute("UPDATE attempts SET slot_at = ?, outcome = 'unknown' WHERE slot_at >= ?", (now, IN_FLIGHT))
            cursor = db.execute("UPDATE recipients SET status = 'unknown', run_id = NULL WHERE status = 'in_flight'")
            return cursor.rowcount

    # --- reading ---------------------------------------------------------------------------

    def _counts(self, name: str) -> dict[str, int]:
        with self._snapshot():
            rows = self._all("SELECT status, count(*) FROM recipients WHERE campaign = ? GROUP BY status", (name,))
        found = dict(rows)
        return {status: int(found.get(status, 0)) for status in Status}

    def _account_status(self, account_id: str, pacing: Pacing, now: float) -> AccountStatus:
        with self._snapshot():
            state = self._account_state(account_id, pacing, now, self._key_limits(()))
            used = self._window_used(account_id, pacing.slowest, now)
            row = self._one("SELECT hold_reason, stopped_reason, stopped_at FROM accounts WHERE id = ?", (account_id,))
            (in_flight,) = self._one(
                "SELECT count(*) FROM attempts WHERE account_id = ? AND slot_at >= ?", (account_id, IN_FLIGHT)
            )
        hold_reason, stopped_reason, stopped_at = row or (None, None, None)
        verdict = decide(pacing, state, now)
        return AccountStatus(
            account_id=account_id,
            pacing=pacing,
            window_used=used,
            window_cap=pacing.slowest.cap,
            next_at=verdict.at,
            reason=verdict.reason,
            hold_until=state.hold_until,
            hold_reason=hold_reason,
            in_flight=in_flight,
            stopped_reason=stopped_reason,
            stopped_at=stopped_at,
        )

    async def report_rows(self, name: str, status: str | None = None) -> AsyncIterator[ReportRow]:
        """Rows in load order, streamed in batches. Inside `snapshot()` they pair with `counts`."""
        sql = (
            "SELECT profile_urn, status, account_id, http_status, error, attempts, sent_at, message, variables,"
            " public_identifier, step, replied_at, reply FROM recipients WHERE campaign = ?"
        )
        params: tuple[Any, ...] = (name,)
        if status:
            sql += " AND status = ?"
            params += (status,)
        async with self.snapshot():
            cursor = await self._run(self._conn.execute, sql + " ORDER BY id", params)
            try:
                while rows := await self._run(cursor.fetchmany, REPORT_BATCH):
                    for row in rows:
                        account = row[2]
                        yield ReportRow(
                            profile_urn=row[0],
                            status=row[1],
                            account_id=None if account in (None, "") else account,
                            http_status=row[3],
                            error=row[4],
                            attempts=row[5],
                            sent_at=row[6],
                            message=row[7],
                            variables=json.loads(row[8]) if row[8] else {},
                            public_identifier=row[9],
                            step=row[10] + 1,
                            replied_at=row[11],
                            reply=row[12],
                        )
            finally:
                with anyio.CancelScope(shield=True):
                    await self._run(cursor.close)

    def _retry(
        self,
        name: str,
        statuses: Sequence[str],
        urns: Sequence[str],
        now: float,
        render: Callable[[str, int, dict[str, Any]], str] | None = None,
        not_found: bool = False,
    ) -> int:
        """Put recipients back to pending with a fresh retry budget: those `unknown` or `failed`
        with one of `statuses`, and (or) those of `urns` (failed or unknown); with `not_found`, only
        unknown ones `reconcile` looked for in their conversation and did not find. `render` gives
        each the message of its step from its own values (its variant and spintax as drawn); one
        loaded before values were kept keeps its message. Whoever left the file stays as it is."""
        if not set(statuses) <= {Status.UNKNOWN, Status.FAILED}:
            raise ValueError(statuses)
        self._campaign(name)
        where = "campaign = ? AND removed = 0 AND status IN ('unknown', 'failed')"
        params: list[Any] = [name]
        if statuses:
            where += f" AND status IN ({','.join('?' * len(statuses))})"
            params += statuses
        if urns:
            where += f" AND profile_urn IN ({','.join('?' * len(urns))})"
            params += urns
        if not_found:
            where += " AND status = 'unknown' AND looked_at IS NOT NULL"
        with self._transaction() as db:
            rows = self._all(
                "SELECT id, message, variables, step, coalesce(public_identifier, profile_urn)"
                f" FROM recipients WHERE {where}",
                params,
            )
            db.executemany(
                "UPDATE recipients SET status = 'pending', retries = 0, not_before = 0, http_status = NULL,"
                " error = NULL, looked_at = NULL, message = ?, updated_at = ? WHERE id = ?",
                [
                    (
                        render(seed, step, json.loads(variables)) if render and variables is not None else message,
                        now,
                        rid,
                    )
                    for rid, message, variables, step, seed in rows
                ],
            )
            return len(rows)

    def _bind_api(self, names: Sequence[str], api: str, switch: bool, now: float) -> None:
        """Record that these campaigns are sent to `api` ('sandbox' or a base URL). A campaign that
        has already sent to another one is refused unless `switch`: its recipients' state belongs
        to that API (a rehearsal must never use up the real campaign)."""
        with self._transaction() as db:
            for name in names:
                row = self._one("SELECT api FROM campaigns WHERE name = ?", (name,))
                if row is None:
                    continue  # not loaded yet: recorded at its first run
                (old,) = row
                if old not in (None, api) and not switch and self._has_started(name):
                    raise ChangeRefusedError(
                        f"campaign {name!r} was sent to {_api_label(old)} in {self.label}, and this run sends to"
                        f" {_api_label(api)}: its recipients count as done there. To start it afresh, give it a"
                        " new name or another --db; to go on with it here as it is, run again with --switch-api"
                    )
                if old != api:  # written only when it changes: a refused run writes nothing
                    db.execute("UPDATE campaigns SET api = ?, updated_at = ? WHERE name = ?", (api, now, name))

    def _stop_account(self, account_id: str, reason: str, now: float) -> None:
        """Remember why a run stopped the account, for `status` (cleared when it sends again)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO accounts (id, stopped_reason, stopped_at) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE"
                " SET stopped_reason = excluded.stopped_reason, stopped_at = excluded.stopped_at",
                (account_id, reason, now),
            )

    def _set_api_limits(self, names: Sequence[str], limits: Sequence[Limit], now: float) -> None:
        """The API key's limit for these campaigns (`--api-limit`): every claim of every process
        reads it from here while they have work left."""
        text = ",".join(str(limit) for limit in limits)
        with self._transaction() as db:
            db.executemany(
                "UPDATE campaigns SET api_limits = ?, updated_at = ? WHERE name = ?", [(text, now, n) for n in names]
            )

    def _holds(self, now: float) -> list[AccountHold]:
        """Every account the server (or the breaker) holds back now."""
        with self._snapshot():
            rows = self._all(
                "SELECT id, hold_until, hold_reason FROM accounts WHERE hold_until > ? ORDER BY id", (now,)
            )
        return [AccountHold(account, until, reason or "held") for account, until, reason in rows]

    def _clear_hold(self, account_id: str, now: float) -> bool:
        """Lift an account's hold and the server's last word on its budget; False if it has none."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE accounts SET hold_until = 0, hold_reason = NULL, server_remaining = NULL, server_reset = NULL"
                " WHERE id = ? AND (hold_until > ? OR server_reset > ?)",
                (account_id, now, now),
            )
            return cursor.rowcount > 0

    # --- replies, and unknown outcomes looked for in the conversation ------------------------------

    def _awaiting_replies(self, account_id: str) -> dict[str, float]:
        """The people `account_id` messaged whose reply is not recorded yet: URN -> our first message."""
        with self._snapshot():
            rows = self._all(
                "SELECT r.profile_urn, min(s.sent_at) FROM step_sends s JOIN recipients r ON r.id = s.recipient_id"
                " WHERE s.account_id = ? AND r.replied_at IS NULL GROUP BY r.profile_urn",
                (account_id,),
            )
        return {urn: first for urn, first in rows if urn}

    def _replies_polled(self, account_id: str) -> float | None:
        with self._snapshot():
            row = self._one("SELECT replies_polled_at FROM accounts WHERE id = ?", (account_id,))
        return row[0] if row else None

    def _polled(self, account_id: str, started_at: float) -> None:
        """An account's conversations were read in full, as they stood at `started_at`."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO accounts (id, replies_polled_at) VALUES (?, ?) ON CONFLICT (id) DO UPDATE"
                " SET replies_polled_at = max(coalesce(accounts.replies_polled_at, 0), excluded.replies_polled_at)",
                (account_id, started_at),
            )

    def _record_replies(self, account_id: str | None, replies: Sequence[Reply], via: str, now: float) -> list[Replied]:
        """Record replies, each message once however often it comes. The person's recipients that
        the account messaged before the reply (any account when `account_id` is None, as for an
        event that names an account this database does not know) become `replied`: a pending
        follow-up is not sent when its campaign stops on reply. A reply with an opt-out phrase of
        such a campaign also puts the person on the do-not-contact list."""
        found: list[Replied] = []
        with self._transaction() as db:
            for reply in replies:
                sent_at = min(reply.sent_at, now)  # a time from the future is no time a reply was sent
                added = db.execute(
                    "INSERT INTO replies (message_urn, account_id, sender_urn, body, sent_at, seen_at, via)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (reply.message_urn, account_id or "", reply.sender, reply.text[:REPLY_STORED], sent_at, now, via),
                ).rowcount
                if not added:
                    continue
                reply = replace(reply, sent_at=sent_at)
                rows = self._all(
                    "SELECT r.id, r.campaign, r.status, c.steps FROM recipients r"
                    " JOIN campaigns c ON c.name = r.campaign WHERE r.profile_urn = ? AND r.replied_at IS NULL"
                    " AND (? IS NULL OR r.account_id = ?)"
                    " AND EXISTS (SELECT 1 FROM step_sends s WHERE s.recipient_id = r.id AND s.sent_at <= ?)",
                    (reply.sender, account_id, account_id, reply.sent_at + CLOCK_SKEW),
                )
                opt_out = None
                for rid, campaign, status, stored in rows:
                    steps = _steps(stored)
                    ends = status == Status.SENT or (status == Status.PENDING and steps.stop_on_reply)
                    db.execute(
                        "UPDATE recipients SET replied_at = ?, reply = ?, status = ?, updated_at = ? WHERE id = ?",
                        (reply.sent_at, reply.text[:REPLY_KEPT], Status.REPLIED if ends else status, now, rid),
                    )
                    if ends and status == Status.PENDING:
                        self._back_to_last_sent(rid)
                    phrase = steps.opted_out(reply.text)
                    opt_out = opt_out or phrase
                    found.append(Replied(campaign, reply.sender, phrase, Status.REPLIED if ends else Status(status)))
                if opt_out:
                    self._put_on_list([(reply.sender, None)], f"replied {reply.text[:REPLY_KEPT]!r}", now)
        return found

    def _messages_left(self, name: str) -> tuple[int, int]:
        """A campaign's pending recipients, and the later steps they have left after this one."""
        with self._snapshot():
            (stored,) = self._one("SELECT steps FROM campaigns WHERE name = ?", (name,))
            count = _steps(stored).count
            row = self._one(
                "SELECT count(*), coalesce(sum(max(? - 1 - step, 0)), 0) FROM recipients"
                " WHERE campaign = ? AND status = 'pending'",
                (count, name),
            )
        return int(row[0]), int(row[1])

    def _step_stats(self, name: str) -> list[StepStats]:
        """Per step and variant of a campaign: how many were sent it, and how many replied to it (a
        reply counts for the last step sent before it)."""
        with self._snapshot():
            rows = self._all(
                "SELECT s.step, s.variant, count(*), sum(CASE WHEN r.replied_at IS NOT NULL"
                " AND r.replied_at >= s.sent_at AND NOT EXISTS (SELECT 1 FROM step_sends n"
                "  WHERE n.recipient_id = s.recipient_id AND n.step > s.step"
                "  AND n.sent_at <= r.replied_at) THEN 1 ELSE 0 END)"
                " FROM step_sends s JOIN recipients r ON r.id = s.recipient_id WHERE r.campaign = ?"
                " GROUP BY s.step, s.variant ORDER BY s.step, s.variant",
                (name,),
            )
        return [StepStats(step + 1, variant, sent, replied or 0) for step, variant, sent, replied in rows]

    def _back_to_last_sent(self, rid: int) -> None:
        """A sequence ended by a reply before its next step: it shows the step it was last sent."""
        self._conn.execute(
            "UPDATE recipients SET step = step - 1, not_before = 0,"
            f" message = coalesce({self._engine.json_item('messages', 'step - 1')}, message) WHERE id = ? AND step > 0",
            (rid,),
        )

    def _unknowns(self, campaign: str | None) -> list[Unknown]:
        """Every `unknown` delivery (of `campaign`), with what it sent and when it was claimed."""
        with self._snapshot():
            rows = self._all(
                "SELECT r.id, r.campaign, coalesce(r.account_id, ''), r.profile_urn, r.message, r.step,"
                " (SELECT max(a.started_at) FROM attempts a WHERE a.recipient_id = r.id)"
                " FROM recipients r WHERE r.status = 'unknown' AND r.profile_urn IS NOT NULL"
                " AND (? IS NULL OR r.campaign = ?) ORDER BY r.id",
                (campaign, campaign),
            )
        return [Unknown(*row[:6], claimed_at=row[6] or 0.0) for row in rows]

    def _confirm(self, unknown: Unknown, sent_at: float, now: float) -> Status:
        """An unknown delivery found in the conversation: `sent`, and on to its next step."""
        sent_at = min(sent_at, now)  # a time from the future is no time it was sent
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE recipients SET status = 'sent', sent_at = ?, error = ?, looked_at = NULL, updated_at = ?"
                " WHERE id = ? AND status = 'unknown' AND step = ?",
                (sent_at, CONFIRMED, now, unknown.recipient_id, unknown.step),
            ).rowcount
            if not changed:
                (status,) = self._one("SELECT status FROM recipients WHERE id = ?", (unknown.recipient_id,))
                return Status(status)
            return self._step_sent(unknown.recipient_id, unknown.account_id, sent_at, now, confirmed=True)

    def _not_found(self, unknown: Unknown, now: float) -> None:
        """An unknown delivery looked for in the conversation, and not there at `now`."""
        with self._transaction() as db:
            db.execute(
                "UPDATE recipients SET looked_at = ?, updated_at = ? WHERE id = ? AND status = 'unknown' AND step = ?",
                (now, now, unknown.recipient_id, unknown.step),
            )

    # --- the async face: one trip to the worker thread each ------------------------------------

    async def begin_run(self, command: str, now: float, deadline: float, heartbeat: float = HEARTBEAT) -> int:
        """Record this process as a run; `deadline`: the longest one of its requests can take."""
        return await self._run(self._begin_run, command, now, 3 * heartbeat + deadline)

    async def renew(self, run_id: int, now: float) -> bool:
        return await self._run(self._renew, run_id, now)

    async def database_now(self) -> float | None:
        """The database's clock (PostgreSQL), for every host to tell the time by; None for SQLite."""
        return await self._run(self._engine.database_now, self._conn)

    async def end_run(self, run_id: int, now: float) -> None:
        await self._run(self._end_run, run_id, now)

    async def recover(self, run_id: int, now: float) -> list[Recovered]:
        """Mark `unknown` what gone processes left in flight (see `_recover`)."""
        return await self._run(self._recover, run_id, now)

    async def load(
        self, campaigns: Sequence[config.Campaign], now: float, accept_changes: bool = False
    ) -> list[LoadSummary]:
        """Upsert campaigns, all or none: new recipients are added, known ones keep their state."""
        return await self._run(self._load, campaigns, now, accept_changes)

    async def campaign(self, name: str) -> CampaignSettings:
        return await self._run(self._campaign, name)

    async def states(self, name: str, urns: Sequence[str]) -> dict[str, tuple[str, bool]]:
        return await self._run(self._states, name, urns)

    async def columns(self, name: str) -> list[str]:
        return await self._run(self._columns, name)

    async def save_forecast(self, forecast: Forecast) -> None:
        await self._run(self._save_forecast, forecast)

    async def latest_forecast(self, name: str) -> Forecast | None:
        return await self._run(self._latest_forecast, name)

    async def first_forecast(self, name: str) -> Forecast | None:
        return await self._run(self._first_forecast, name)

    async def attempt_outcomes(self, name: str) -> list[tuple[str | None, int | None, int]]:
        return await self._run(self._attempt_outcomes, name)

    async def campaign_names(self, unfinished_only: bool = False) -> list[str]:
        return await self._run(self._campaign_names, unfinished_only)

    async def pacing(self, accounts: Sequence[str], running: Sequence[str], now: float) -> dict[str, Pacing]:
        """Limits in force per account (see `_account_pacing`)."""
        return await self._run(self._pacing, accounts, running, now)

    async def claim(
        self,
        run_id: int,
        account_id: str,
        campaigns: Sequence[str],
        now: float,
        *,
        draw: Callable[[float, float], float] = random.uniform,
        deadline: float = 70.0,
    ) -> Claimed | Read | Waiting | Drained:
        """Claim one recipient for `account_id` if every limit in force allows a request now, or
        the read it needs first (see `_claim`)."""
        return await self._run(self._claim, run_id, account_id, campaigns, now, draw, deadline)

    async def reserve(
        self,
        account_id: str,
        action: ReadAction,
        subject: str,
        now: float,
        deadline: float,
        units: int = 1,
        budget: Limit | None = None,
    ) -> Read | float:
        return await self._run(self._reserve, account_id, action, subject, now, deadline, units, budget)

    async def reserve_many(
        self, accounts: Sequence[str], action: ReadAction, now: float, deadline: float
    ) -> list[Read]:
        return await self._run(self._reserve_many, accounts, action, now, deadline)

    async def finish_reads(self, answered: Sequence[tuple[Read, ReadAnswer]], now: float) -> None:
        with anyio.CancelScope(shield=True):
            await self._run(self._finish_reads, answered, now)

    async def finish_read(self, read: Read, answer: ReadAnswer, now: float) -> str | None:
        with anyio.CancelScope(shield=True):
            return await self._run(self._finish_read, read, answer, now)

    async def awaiting_replies(self, account_id: str) -> dict[str, float]:
        return await self._run(self._awaiting_replies, account_id)

    async def replies_polled(self, account_id: str) -> float | None:
        return await self._run(self._replies_polled, account_id)

    async def polled(self, account_id: str, started_at: float) -> None:
        await self._run(self._polled, account_id, started_at)

    async def record_replies(
        self, account_id: str | None, replies: Sequence[Reply], via: str, now: float
    ) -> list[Replied]:
        with anyio.CancelScope(shield=True):
            return await self._run(self._record_replies, account_id, replies, via, now)

    async def messages_left(self, name: str) -> tuple[int, int]:
        return await self._run(self._messages_left, name)

    async def step_stats(self, name: str) -> list[StepStats]:
        return await self._run(self._step_stats, name)

    async def unknowns(self, campaign: str | None) -> list[Unknown]:
        return await self._run(self._unknowns, campaign)

    async def confirm(self, unknown: Unknown, sent_at: float, now: float) -> Status:
        return await self._run(self._confirm, unknown, sent_at, now)

    async def not_found(self, unknown: Unknown, now: float) -> None:
        await self._run(self._not_found, unknown, now)

    async def known_accounts(self) -> list[str]:
        return await self._run(self._known_accounts)

    async def account_use(self, account_id: str, now: float) -> AccountUse:
        return await self._run(self._account_use, account_id, now)

    async def member_fetch(
        self,
        group: str,
        statuses: Sequence[str],
        query: str | None,
        max_members: int | None,
        campaign: str | None,
        now: float,
    ) -> MemberFetch:
        return await self._run(self._member_fetch, group, statuses, query, max_members, campaign, now)

    async def save_members(
        self,
        read: Read,
        fetch: MemberFetch,
        start: int,
        answer: ReadAnswer,
        now: float,
        render: Callable[[str, dict[str, Any]], tuple[Any, str | None]] | None = None,
    ) -> MemberFetch | None:
        with anyio.CancelScope(shield=True):
            return await self._run(self._save_members, read, fetch, start, answer, now, render)

    async def refresh_fetch(self, fetch: MemberFetch) -> MemberFetch:
        return await self._run(self._refresh_fetch, fetch)

    async def fetched_members(self, fetch_id: int) -> list[tuple[Any, ...]]:
        return await self._run(self._fetched_members, fetch_id)

    async def preparing(self, campaign: str) -> Preparing:
        return await self._run(self._preparing, campaign)

    async def ready_count(self, campaign: str) -> int:
        return await self._run(self._ready_count, campaign)

    async def block(self, people: Sequence[tuple[str | None, str | None]], reason: str | None, now: float) -> Blocked:
        return await self._run(self._block, people, reason, now)

    async def unblock(self, people: Sequence[tuple[str | None, str | None]], now: float) -> Blocked:
        return await self._run(self._unblock, people, now)

    async def contacts(self, blocked_only: bool = False) -> list[Contact]:
        return await self._run(self._contacts, blocked_only)

    async def release(self, claim: Claimed, now: float) -> None:
        """Undo a claim whose request never started (the run was stopped in between)."""
        await self._run(self._release, claim, now)

    async def record(self, claim: Claimed, settled: Settlement) -> Status:
        """Write what an answer settled; return the recipient's status after it (see `_record`)."""
        # The answer is known only here, in memory: while another process holds the database (a
        # big file loading), keep trying rather than lose it.
        deadline = time.monotonic() + RECORD_PATIENCE
        while True:
            try:
                return await self._run(self._record, claim, settled)
            except StoreError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise

    async def bind_api(self, names: Sequence[str], api: str, switch: bool, now: float) -> None:
        """Record the API these campaigns are sent to; refuse a switch unless asked (see `_bind_api`)."""
        await self._run(self._bind_api, names, api, switch, now)

    async def stop_account(self, account_id: str, reason: str, now: float) -> None:
        await self._run(self._stop_account, account_id, reason, now)

    async def set_api_limits(self, names: Sequence[str], limits: Sequence[Limit], now: float) -> None:
        await self._run(self._set_api_limits, names, limits, now)

    async def holds(self, now: float) -> list[AccountHold]:
        return await self._run(self._holds, now)

    async def clear_hold(self, account_id: str, now: float) -> bool:
        """Lift an account's hold and the server's last word on its budget; False if it has none."""
        return await self._run(self._clear_hold, account_id, now)

    async def settle_in_flight(self, now: float) -> int:
        """Take every request still in flight as answered now, outcome unknown. Only for a scratch
        copy (`plan`): the process that sent them may still be alive."""
        return await self._run(self._settle_in_flight, now)

    async def counts(self, name: str) -> dict[str, int]:
        return await self._run(self._counts, name)

    async def account_status(self, account_id: str, pacing: Pacing, now: float) -> AccountStatus:
        return await self._run(self._account_status, account_id, pacing, now)

    async def retry(
        self,
        name: str,
        statuses: Sequence[str],
        urns: Sequence[str],
        now: float,
        render: Callable[[str, int, dict[str, Any]], str] | None = None,
        not_found: bool = False,
    ) -> int:
        """Put recipients back to pending, with a fresh retry budget (see `_retry`)."""
        return await self._run(self._retry, name, statuses, urns, now, render, not_found)


def host_name() -> str:
    """This host, as runs record it: CAMPAIGN_RUNNER_HOST when set (a container whose hostname
    changes at each start, or several runners in a test, each its own host), else its hostname."""
    return os.environ.get("CAMPAIGN_RUNNER_HOST") or socket.gethostname()


def _process_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (Linux), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()


def _process_start(pid: int) -> str | None:
    """When a process started (Linux: clock ticks since boot), to tell it from a later one with its pid."""
    fields = _process_stat(pid)
    return fields[19] if fields else None  # field 22, counted after the command name


def _is_dead(pid: int) -> bool:
    """A zombie (Z, killed but not yet reaped by its parent) or a dying process (X) is gone, though
    `kill(pid, 0)` still succeeds: under a supervisor or a container whose first process does not
    reap children, it stays so for good."""
    fields = _process_stat(pid)
    return fields is not None and fields[0] in ("Z", "X", "x")


def _claim_may_be_live(
    pid: int | None,
    pid_start: str | None,
    host: str | None,
    ended_at: float | None,
    lease_until: float | None,
    started: float | None,
    now: float,
) -> bool:
    if pid is None or ended_at is not None:
        return False
    if host != host_name():
        return lease_until is None or now < lease_until
    if pid == os.getpid():
        return False  # this process has one run; an older run with our pid is a dead one's
    if not process_alive(pid):
        return False
    return pid_start is None or _process_start(pid) in (None, pid_start)


def process_alive(pid: int) -> bool:
    """A process of this host with that pid runs (another user's counts; a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _is_dead(pid)
