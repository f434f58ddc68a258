"""All SQL but the migrations: one aiosqlite connection, one transaction per decision.

The two transactions that carry the guarantees:

* `claim`: under `BEGIN IMMEDIATE` (one writer at a time, across processes), reads the account's
  limiter state, and only if a request may start now marks one pending recipient `in_flight`,
  inserts its attempt (the limiter's window slot) and advances the token bucket, then commits.
  Nothing leaves for the API before that commit.
* `record`: writes the outcome, the attempt's headers and any hold the server asked for.

Durability: WAL with `synchronous=FULL`, so a committed claim survives even a power loss. A claim
that is lost would let a recipient be messaged twice.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from . import config
from .client import Kind, Outcome
from .config import Limit
from .errors import ChangeRefusedError, StoreError, UnknownCampaignError
from .limiter import IN_FLIGHT, AccountState, Pacing, Verdict, advance, decide
from .migrate import migrate

DEFAULT_DB = "campaign-runner.db"
BUSY_TIMEOUT_MS = 15_000
STATUSES = ("pending", "in_flight", "sent", "failed", "unknown", "skipped")
FINAL = ("sent", "failed", "unknown", "skipped")
REMOVED_FROM_FILE = "removed from the campaign file"
DIED_IN_FLIGHT = "the process stopped while the request was in flight; it may have been delivered"
ELSEWHERE_POLL = 5.0  # seconds between looks when only another process's requests remain


@dataclass(frozen=True)
class CampaignSettings:
    name: str
    group_id: str
    endpoint: str
    message_template: str
    limit: Limit
    burst: int
    max_attempts: int
    backoff: float
    accounts: tuple[str, ...]


@dataclass(frozen=True)
class LoadSummary:
    campaign: str
    added: int
    known: int
    duplicates: int
    skipped: int  # pending recipients no longer in the file
    restored: int  # skipped recipients back in the file
    rewritten: int  # pending messages re-rendered after --accept-changes
    changed: tuple[str, ...]


@dataclass(frozen=True)
class Claimed:
    recipient_id: int
    attempt_id: int
    campaign: str
    profile_urn: str
    message: str
    account_id: str
    attempt: int  # 1 for the first request to this recipient
    retries: int  # retryable failures so far
    window_used: int  # requests of the account in its tightest window, this one included
    window_cap: int


@dataclass(frozen=True)
class Waiting:
    until: float
    reason: str  # hold, pace, window, in_flight, backoff, elsewhere


@dataclass(frozen=True)
class Drained:
    pass


@dataclass(frozen=True)
class Recovered:
    campaign: str
    profile_urn: str
    account_id: str


@dataclass(frozen=True)
class AccountStatus:
    account_id: str
    pacing: Pacing
    window_used: int  # in the tightest limit's window
    window_cap: int
    next_at: float
    reason: str
    hold_until: float


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


REPORT_FIELDS = ("profile_urn", "status", "account_id", "http_status", "error", "attempts", "sent_at", "message")


def resolve_db_path(path: str | os.PathLike[str] | None) -> Path:
    return Path(path or os.environ.get("CAMPAIGN_RUNNER_DB") or DEFAULT_DB)


class Store:
    def __init__(self, db: aiosqlite.Connection, path: Path):
        self._db = db
        self.path = path
        # Workers share the one connection: their transactions must take turns.
        self._lock = anyio.Lock()

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | os.PathLike[str], now: float) -> Store:
        path = Path(path)
        _create_private(path)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {path}: {exc}") from None
        store = cls(db, path)
        try:
            await store._configure()
            await migrate(db, now)
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise StoreError(f"cannot use the database {path}: {exc} (is it a campaign-runner database?)") from None
        except BaseException:
            await db.close()
            raise
        return store

    async def _configure(self) -> None:
        await self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        async with self._db.execute("PRAGMA journal_mode = WAL") as cursor:
            mode = (await cursor.fetchone())[0]
        if mode != "wal":
            raise StoreError(f"the database {self.path} cannot use WAL mode (got {mode})")
        await self._db.execute("PRAGMA synchronous = FULL")
        await self._db.execute("PRAGMA foreign_keys = ON")
        async with self._db.execute("PRAGMA quick_check") as cursor:
            verdict = (await cursor.fetchone())[0]
        if verdict != "ok":
            raise StoreError(f"the database {self.path} is damaged: {verdict}")

    async def close(self) -> None:
        await self._db.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction that takes the lock up front (no upgrade deadlocks between processes)."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._db.execute("ROLLBACK")
                raise
            else:
                with anyio.CancelScope(shield=True):
                    await self._db.execute("COMMIT")

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._db.execute(sql, params) as cursor:
            return await cursor.fetchone()

    # --- runs and recovery -----------------------------------------------------------------

    async def begin_run(self, command: str, now: float) -> int:
        async with self.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO runs (pid, host, command, started_at) VALUES (?, ?, ?, ?)",
                (os.getpid(), socket.gethostname(), command, now),
            )
            return int(cursor.lastrowid)

    async def end_run(self, run_id: int, now: float) -> None:
        async with self.transaction() as db:
            await db.execute("UPDATE runs SET ended_at = ? WHERE id = ?", (now, run_id))

    async def recover(self, run_id: int, now: float) -> list[Recovered]:
        """Mark `unknown` what dead runs left in flight: their requests may have been delivered."""
        async with self.transaction() as db:
            rows = await self._all(
                "SELECT DISTINCT r.run_id, runs.pid, runs.host, runs.ended_at FROM recipients r"
                " LEFT JOIN runs ON runs.id = r.run_id WHERE r.status = 'in_flight'"
            )
            dead = [row[0] for row in rows if row[0] != run_id and _run_is_dead(row[1], row[2], row[3])]
            recovered: list[Recovered] = []
            for dead_run in dead:
                found = await self._all(
                    "SELECT id, campaign, profile_urn, account_id FROM recipients"
                    " WHERE status = 'in_flight' AND run_id IS ?",
                    (dead_run,),
                )
                recovered += [Recovered(row[1], row[2], row[3] or "") for row in found]
                await db.execute(
                    "UPDATE recipients SET status = 'unknown', error = ?, run_id = NULL, updated_at = ?"
                    " WHERE status = 'in_flight' AND run_id IS ?",
                    (DIED_IN_FLIGHT, now, dead_run),
                )
                # The dead request reached the server, if at all, before now: count it from now.
                await db.execute(
                    "UPDATE attempts SET outcome = 'unknown', error = ?, finished_at = ?, slot_at = ?"
                    " WHERE run_id IS ? AND slot_at >= ?",
                    (DIED_IN_FLIGHT, now, now, dead_run, IN_FLIGHT),
                )
                await db.execute(
                    "UPDATE runs SET ended_at = coalesce(ended_at, ?) WHERE id = ?", (now, dead_run)
                )
            return recovered

    # --- campaigns -------------------------------------------------------------------------

    async def load(self, campaign: config.Campaign, now: float, accept_changes: bool = False) -> LoadSummary:
        """Upsert a campaign: new recipients are added, known ones are left as they are."""
        async with self.transaction() as db:
            existing = await self._one(
                "SELECT group_id, endpoint, message_template FROM campaigns WHERE name = ?", (campaign.name,)
            )
            changed: tuple[str, ...] = ()
            if existing:
                changed = tuple(
                    name
                    for name, old, new in (
                        ("message", existing[2], campaign.message_template),
                        ("group_id", existing[0], campaign.group_id),
                        ("endpoint", existing[1], campaign.endpoint),
                    )
                    if old != new
                )
                if changed and not accept_changes and await self._has_started(campaign.name):
                    raise ChangeRefusedError(
                        f"campaign {campaign.name!r} has already sent messages and its {', '.join(changed)}"
                        " changed; run again with --accept-changes to apply the change to unsent"
                        " recipients only, or give the campaign a new name"
                    )
            await db.execute(
                "INSERT INTO campaigns (name, group_id, endpoint, message_template, limit_cap, limit_window,"
                " burst, max_attempts, backoff, source, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET group_id = excluded.group_id, endpoint = excluded.endpoint,"
                " message_template = excluded.message_template, limit_cap = excluded.limit_cap,"
                " limit_window = excluded.limit_window, burst = excluded.burst,"
                " max_attempts = excluded.max_attempts, backoff = excluded.backoff,"
                " source = excluded.source, updated_at = excluded.updated_at",
                (
                    campaign.name, campaign.group_id, campaign.endpoint, campaign.message_template,
                    campaign.limit.cap, campaign.limit.window, campaign.burst, campaign.retry.attempts,
                    campaign.retry.backoff, campaign.source, now, now,
                ),
            )  # fmt: skip
            await db.execute("DELETE FROM campaign_accounts WHERE campaign = ?", (campaign.name,))
            await db.executemany(
                "INSERT INTO campaign_accounts (campaign, account_id, limit_cap, limit_window) VALUES (?, ?, ?, ?)",
                [(campaign.name, a.id, a.limit.cap, a.limit.window) for a in campaign.accounts],
            )
            known = {
                row[0]: row[1]
                for row in await self._all(
                    "SELECT profile_urn, status FROM recipients WHERE campaign = ?", (campaign.name,)
                )
            }
            new = [r for r in campaign.recipients if r.profile_urn not in known]
            await db.executemany(
                "INSERT INTO recipients (campaign, profile_urn, message, updated_at) VALUES (?, ?, ?, ?)",
                [(campaign.name, r.profile_urn, r.message, now) for r in new],
            )
            in_file = {r.profile_urn for r in campaign.recipients}
            gone = [urn for urn, status in known.items() if status == "pending" and urn not in in_file]
            await db.executemany(
                "UPDATE recipients SET status = 'skipped', error = ?, updated_at = ? WHERE campaign = ? AND profile_urn = ?",
                [(REMOVED_FROM_FILE, now, campaign.name, urn) for urn in gone],
            )
            back = [urn for urn, status in known.items() if status == "skipped" and urn in in_file]
            await db.executemany(
                "UPDATE recipients SET status = 'pending', error = NULL, updated_at = ? WHERE campaign = ? AND profile_urn = ?",
                [(now, campaign.name, urn) for urn in back],
            )
            rewritten = 0
            if changed:
                # Only what has not been sent takes the new message.
                unsent = [
                    (r.message, now, campaign.name, r.profile_urn)
                    for r in campaign.recipients
                    if known.get(r.profile_urn) in ("pending", "skipped")
                ]
                await db.executemany(
                    "UPDATE recipients SET message = ?, updated_at = ? WHERE campaign = ? AND profile_urn = ?"
                    " AND status = 'pending'",
                    unsent,
                )
                rewritten = len(unsent)
            return LoadSummary(
                campaign=campaign.name,
                added=len(new),
                known=len(campaign.recipients) - len(new),
                duplicates=campaign.duplicates,
                skipped=len(gone),
                restored=len(back),
                rewritten=rewritten,
                changed=changed,
            )

    async def _has_started(self, name: str) -> bool:
        row = await self._one(
            "SELECT 1 FROM recipients WHERE campaign = ? AND (status != 'pending' OR attempts > 0) LIMIT 1",
            (name,),
        )
        return row is not None

    async def campaign(self, name: str) -> CampaignSettings:
        row = await self._one(
            "SELECT name, group_id, endpoint, message_template, limit_cap, limit_window, burst,"
            " max_attempts, backoff FROM campaigns WHERE name = ?",
            (name,),
        )
        if row is None:
            raise UnknownCampaignError(f"no campaign named {name!r} in {self.path}")
        accounts = await self._all(
            "SELECT account_id FROM campaign_accounts WHERE campaign = ? ORDER BY rowid", (name,)
        )
        return CampaignSettings(
            name=row[0], group_id=row[1], endpoint=row[2], message_template=row[3],
            limit=Limit(row[4], row[5]), burst=row[6], max_attempts=row[7], backoff=row[8],
            accounts=tuple(a[0] for a in accounts),
        )  # fmt: skip

    async def campaign_names(self, unfinished_only: bool = False) -> list[str]:
        if unfinished_only:
            rows = await self._all(
                "SELECT name FROM campaigns c WHERE EXISTS (SELECT 1 FROM recipients r"
                " WHERE r.campaign = c.name AND r.status IN ('pending', 'in_flight')) ORDER BY created_at, name"
            )
        else:
            rows = await self._all("SELECT name FROM campaigns ORDER BY created_at, name")
        return [row[0] for row in rows]

    async def pacing(self, accounts: Sequence[str], running: Sequence[str]) -> dict[str, Pacing]:
        """Limits in force per account: those of the campaigns running now and of every other
        campaign with work left that uses the account. Every one of them holds at once."""
        if not accounts:
            return {}
        marks = ",".join("?" * len(accounts))
        run_marks = ",".join("?" * len(running)) or "NULL"
        rows = await self._all(
            "SELECT ca.account_id, ca.limit_cap, ca.limit_window, c.burst FROM campaign_accounts ca"
            " JOIN campaigns c ON c.name = ca.campaign"
            f" WHERE ca.account_id IN ({marks}) AND (c.name IN ({run_marks}) OR EXISTS ("
            "  SELECT 1 FROM recipients r WHERE r.campaign = c.name AND r.status IN ('pending', 'in_flight')))",
            (*accounts, *running),
        )
        limits: dict[str, set[Limit]] = {}
        bursts: dict[str, int] = {}
        for account_id, cap, window, burst in rows:
            limits.setdefault(account_id, set()).add(Limit(cap, window))
            bursts[account_id] = min(burst, bursts.get(account_id, burst))
        return {
            account: Pacing(tuple(sorted(limits[account])), bursts[account]) for account in accounts if account in limits
        }

    # --- sending ---------------------------------------------------------------------------

    async def _account_state(self, account_id: str, pacing: Pacing) -> AccountState:
        row = await self._one("SELECT tat, hold_until FROM accounts WHERE id = ?", (account_id,))
        kth: list[float | None] = []
        for limit in pacing.limits:
            found = await self._one(
                "SELECT slot_at FROM attempts WHERE account_id = ? ORDER BY slot_at DESC LIMIT 1 OFFSET ?",
                (account_id, limit.cap - 1),
            )
            kth.append(found[0] if found else None)
        tat, hold = (row[0], row[1]) if row else (0.0, 0.0)
        return AccountState(tat=tat, hold_until=hold, kth_recent=tuple(kth))

    async def _window_used(self, account_id: str, limit: Limit, now: float) -> int:
        row = await self._one(
            "SELECT count(*) FROM attempts WHERE account_id = ? AND slot_at > ?", (account_id, now - limit.window)
        )
        return int(row[0])

    async def claim(
        self, run_id: int, account_id: str, campaigns: Sequence[str], pacing: Pacing, endpoint_of: dict[str, str], now: float
    ) -> Claimed | Waiting | Drained:
        """Claim one recipient for `account_id` if its limits allow a request now."""
        async with self.transaction() as db:
            verdict = decide(pacing, await self._account_state(account_id, pacing), now)
            found = None
            if verdict.go(now):
                for name in campaigns:
                    found = await self._one(
                        "SELECT id, profile_urn, message, attempts, retries FROM recipients"
                        " WHERE campaign = ? AND status = 'pending' AND not_before <= ? ORDER BY id LIMIT 1",
                        (name, now),
                    )
                    if found:
                        found = (name, *found)
                        break
            if found is None:
                return await self._why_not(campaigns, verdict, now)
            name, recipient_id, urn, message, attempts, retries = found
            await db.execute(
                "UPDATE recipients SET status = 'in_flight', account_id = ?, attempts = attempts + 1,"
                " run_id = ?, updated_at = ? WHERE id = ?",
                (account_id, run_id, now, recipient_id),
            )
            cursor = await db.execute(
                "INSERT INTO attempts (recipient_id, run_id, account_id, endpoint, started_at, slot_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (recipient_id, run_id, account_id, endpoint_of[name], now, IN_FLIGHT),
            )
            tat_row = await self._one("SELECT tat FROM accounts WHERE id = ?", (account_id,))
            await db.execute(
                "INSERT INTO accounts (id, tat) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET tat = excluded.tat",
                (account_id, advance(pacing, tat_row[0] if tat_row else 0.0, now)),
            )
            tightest = pacing.limits[0]
            return Claimed(
                recipient_id=recipient_id,
                attempt_id=int(cursor.lastrowid),
                campaign=name,
                profile_urn=urn,
                message=message,
                account_id=account_id,
                attempt=attempts + 1,
                retries=retries,
                window_used=await self._window_used(account_id, tightest, now),
                window_cap=tightest.cap,
            )

    async def _why_not(self, campaigns: Sequence[str], verdict: Verdict, now: float) -> Waiting | Drained:
        marks = ",".join("?" * len(campaigns))
        ready = await self._one(
            f"SELECT 1 FROM recipients WHERE campaign IN ({marks}) AND status = 'pending' AND not_before <= ? LIMIT 1",
            (*campaigns, now),
        )
        if ready:
            return Waiting(verdict.at, verdict.reason)
        (next_work,) = await self._one(
            f"SELECT min(not_before) FROM recipients WHERE campaign IN ({marks}) AND status = 'pending'",
            tuple(campaigns),
        )
        if next_work is not None:
            return Waiting(max(next_work, verdict.at), "backoff" if next_work > verdict.at else verdict.reason)
        in_flight = await self._one(
            f"SELECT 1 FROM recipients WHERE campaign IN ({marks}) AND status = 'in_flight' LIMIT 1", tuple(campaigns)
        )
        if in_flight:
            # Other workers (or processes) may hand work back (429, 500): look again then.
            return Waiting(now + ELSEWHERE_POLL, "elsewhere")
        return Drained()

    async def record(
        self, claim: Claimed, outcome: Outcome, now: float, *, latency: float, max_attempts: int,
        retry_at: float, hold_until: float | None,
    ) -> str:  # fmt: skip
        """Write an outcome; return the recipient's status after it."""
        retries = claim.retries
        sent_at = None
        if outcome.kind is Kind.SENT:
            status, sent_at, not_before = "sent", now, 0.0
        elif outcome.kind is Kind.REJECTED:
            status, not_before = "failed", 0.0
        elif outcome.kind is Kind.UNKNOWN:
            status, not_before = "unknown", 0.0
        elif outcome.kind in (Kind.SERVER_ERROR, Kind.NOT_SENT):
            retries += 1
            status = "failed" if retries >= max_attempts else "pending"
            not_before = retry_at if status == "pending" else 0.0
        else:  # rate limited, unauthorized, misrouted: nothing is wrong with the recipient
            status, not_before = "pending", 0.0
        headers = outcome.rate_limit
        async with self.transaction() as db:
            await db.execute(
                "UPDATE recipients SET status = ?, http_status = ?, error = ?, retries = ?, not_before = ?,"
                " sent_at = coalesce(?, sent_at), run_id = NULL, updated_at = ? WHERE id = ?",
                (status, outcome.http_status, outcome.error, retries, not_before, sent_at, now, claim.recipient_id),
            )
            await db.execute(
                "UPDATE attempts SET finished_at = ?, slot_at = ?, outcome = ?, http_status = ?, error = ?,"
                " response_body = ?, latency = ?, rl_action = ?, rl_limit = ?, rl_used = ?, rl_remaining = ?,"
                " rl_reset = ? WHERE id = ?",
                (
                    now, now, outcome.kind.value, outcome.http_status, outcome.error, outcome.body, latency,
                    headers.action, headers.limit, headers.used, headers.remaining, headers.reset, claim.attempt_id,
                ),
            )  # fmt: skip
            if hold_until is not None and hold_until > now:
                await db.execute(
                    "INSERT INTO accounts (id, hold_until, hold_reason) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE"
                    " SET hold_until = max(hold_until, excluded.hold_until), hold_reason = excluded.hold_reason",
                    (claim.account_id, hold_until, outcome.error or outcome.kind.value),
                )
        return status

    # --- reading ---------------------------------------------------------------------------

    async def counts(self, name: str) -> dict[str, int]:
        rows = await self._all("SELECT status, count(*) FROM recipients WHERE campaign = ? GROUP BY status", (name,))
        found = dict(rows)
        return {status: int(found.get(status, 0)) for status in STATUSES}

    async def account_status(self, account_id: str, pacing: Pacing, now: float) -> AccountStatus:
        state = await self._account_state(account_id, pacing)
        verdict = decide(pacing, state, now)
        tightest = pacing.limits[0]
        return AccountStatus(
            account_id=account_id,
            pacing=pacing,
            window_used=await self._window_used(account_id, tightest, now),
            window_cap=tightest.cap,
            next_at=verdict.at,
            reason=verdict.reason,
            hold_until=state.hold_until,
        )

    async def report_rows(self, name: str, status: str | None = None) -> AsyncIterator[ReportRow]:
        sql = (
            "SELECT profile_urn, status, account_id, http_status, error, attempts, sent_at, message"
            " FROM recipients WHERE campaign = ?"
        )
        params: tuple[Any, ...] = (name,)
        if status:
            sql += " AND status = ?"
            params += (status,)
        async with self._db.execute(sql + " ORDER BY id", params) as cursor:
            async for row in cursor:
                account = row[2]
                yield ReportRow(
                    profile_urn=row[0], status=row[1], account_id=None if account in (None, "") else account,
                    http_status=row[3], error=row[4], attempts=row[5], sent_at=row[6], message=row[7],
                )  # fmt: skip

    async def retry(self, name: str, status: str, now: float) -> int:
        if status not in ("unknown", "failed"):
            raise ValueError(status)
        await self.campaign(name)
        async with self.transaction() as db:
            cursor = await db.execute(
                "UPDATE recipients SET status = 'pending', retries = 0, not_before = 0, updated_at = ?"
                " WHERE campaign = ? AND status = ?",
                (now, name, status),
            )
            return cursor.rowcount


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (it holds messages and outcomes)."""
    if path.exists():
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot create the database {path}: {exc.strerror}") from None
    os.close(fd)


def _run_is_dead(pid: int | None, host: str | None, ended_at: float | None) -> bool:
    if pid is None or ended_at is not None:
        return True
    if host != socket.gethostname():
        return False  # another machine's process: we cannot tell, so we do not touch its claims
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
