"""PostgreSQL: several runners, on several hosts, sharing one database.

Writes take turns on the API key's row (`SELECT ... FOR UPDATE`), as SQLite's writers take turns
on its file: the key's limit makes any two claims depend on each other, so nothing is lost by it,
and every decision `Store` makes on SQLite holds here unchanged. A claim takes the account's row
first, then the key's, and picks its recipient `FOR UPDATE SKIP LOCKED`.

Queries are written once, as SQLite reads them (`?` and `:name` parameters, `IS` for null-safe
equality); `translate` turns them into PostgreSQL's. Parameters are bound on the client
(`ClientCursor`), so a parameter takes whatever type its place asks for, as on SQLite.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..migrate import Migration, discover, too_new
from . import Target, redact, scrub

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.adapt import Dumper, Loader
    from psycopg.pq import TransactionStatus
    from psycopg.types.string import StrDumper
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]

INSTALL = "PostgreSQL needs psycopg: pip install 'campaign-runner[postgres]'"
MIGRATION_LOCK = 0x63726D67  # pg_advisory_xact_lock key: one process migrates at a time
CONNECT_TIMEOUT = 10  # seconds


# --- SQL as SQLite reads it, for PostgreSQL ---------------------------------------------------

_TOKENS = re.compile(
    r"""('(?:[^']|'')*')"""  # a string literal: left as it is
    r"""|(\?)"""  # a positional parameter
    r"""|(?<!:):([A-Za-z_][A-Za-z0-9_]*)"""  # a named one
    r"""|(%)"""  # a literal percent sign
    r"""|\bIS\s+NOT\s+(?!NULL\b|DISTINCT\b|TRUE\b|FALSE\b)"""  # null-safe inequality
    r"""|\bIS\s+(?!NOT\b|NULL\b|DISTINCT\b|TRUE\b|FALSE\b)"""  # null-safe equality
)


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    return _extrema(_TOKENS.sub(_token, sql))


def _token(match: re.Match[str]) -> str:
    literal, positional, named, percent = match.groups()
    if literal is not None:
        return literal.replace("%", "%%")
    if positional:
        return "%s"
    if named:
        return f"%({named})s"
    if percent:
        return "%%"
    return "IS DISTINCT FROM " if "NOT" in match.group(0) else "IS NOT DISTINCT FROM "


_EXTREMUM = re.compile(r"\b(max|min)\(", re.IGNORECASE)


def _extrema(sql: str) -> str:
    """SQLite's max(a, b) and min(a, b) of several arguments are PostgreSQL's greatest and least
    (max and min of one argument are the aggregates, the same in both)."""
    out, at = [], 0
    for match in _EXTREMUM.finditer(sql):
        depth, arguments = 0, 1
        for char in sql[match.end() :]:
            if char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    break
                depth -= 1
            elif char == "," and depth == 0:
                arguments += 1
        if arguments > 1:
            out += [sql[at : match.start()], "greatest(" if match.group(1).lower() == "max" else "least("]
            at = match.end()
    return "".join([*out, sql[at:]])


if psycopg is not None:

    class _FlagDumper(Dumper):
        """Python's bools go in as the integers the schema keeps flags as (as SQLite takes them)."""

        oid = psycopg.adapters.types["int4"].oid

        def dump(self, obj: bool) -> bytes:
            return b"1" if obj else b"0"

        def quote(self, obj: bool) -> bytes:
            return self.dump(obj)

    class _TextDumper(StrDumper):
        """Text the server sent may hold NUL, which PostgreSQL's text cannot: it is kept as U+FFFD."""

        def dump(self, obj: str) -> bytes:
            return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)

    class _NumberLoader(Loader):
        """numeric (a sum of bigints, an average) comes back as int or float, as from SQLite."""

        def load(self, data: Any) -> int | float:
            value = Decimal(bytes(data).decode())
            return int(value) if value == value.to_integral_value() and abs(value) < 2**63 else float(value)


def said(exc: BaseException, url: str) -> str:
    """What the server or libpq said, on one line, without the URL's password."""
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    text = primary or " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return scrub(text, url)


class Connection:
    """A psycopg connection that speaks as `sqlite3.Connection` does to `Store`."""

    def __init__(self, url: str, read_only: bool = False):
        self._url = url
        self._read_only = read_only
        self._began = False  # a transaction of ours is open
        self._pg = self._connect()

    def _connect(self) -> Any:
        try:
            pg = psycopg.connect(
                self._url,
                autocommit=True,
                cursor_factory=psycopg.ClientCursor,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="campaign-runner",
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the database {redact(self._url)}: {said(exc, self._url)}") from None
        pg.adapters.register_dumper(bool, _FlagDumper)
        pg.adapters.register_dumper(str, _TextDumper)
        pg.adapters.register_loader("numeric", _NumberLoader)
        if self._read_only:
            pg.execute("SET default_transaction_read_only = on")
        return pg

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        """Run one statement. A connection lost between operations (the server restarted, a proxy
        dropped it) is opened again for the next one's first statement, a BEGIN or a lone read,
        which then runs as if nothing happened: nothing of ours was under way. Lost inside a
        transaction, it fails that transaction (the server rolls it back): never resumed."""
        if sql.startswith(("COMMIT", "ROLLBACK")):
            self._began = False
            return self._pg.execute(sql)
        first = not self._began and sql.startswith(("BEGIN", "SELECT"))
        if first and self._pg.closed:
            self._pg = self._connect()
        try:
            cursor = self._pg.execute(translate(sql), params)
        except psycopg.OperationalError:
            if not (first and self._pg.closed):
                raise
            self._pg = self._connect()
            cursor = self._pg.execute(translate(sql), params)
        if sql.startswith("BEGIN"):
            self._began = True
        return cursor

    def executemany(self, sql: str, rows: Any) -> Any:
        cursor = self._pg.cursor()
        cursor.executemany(translate(sql), rows)
        return cursor

    def executescript(self, sql: str) -> None:
        self._pg.execute(sql)  # no parameters: sent as it is, several statements at once

    @property
    def in_transaction(self) -> bool:
        if self._pg.closed:
            return self._began
        return self._pg.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self._pg.close()


class PostgresEngine:
    name = "postgresql"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, label: str):
        if psycopg is None:
            raise StoreError(INSTALL)
        self.url = url
        self.label = label
        self.created = False  # whether connecting made the tables
        self.errors: tuple[type[BaseException], ...] = (psycopg.Error,)

    def connect(self, now: float, durable: bool = True, create: bool = True) -> Connection:
        """Connect, and migrate; `create`: make the tables in a database that has none yet."""
        conn = Connection(self.url)
        try:
            if not create and _newest(conn) == 0:
                raise StoreError(f"no campaign-runner tables in {self.label} (run a campaign on it first)")
            self.created = 1 in migrate(conn, now)
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"cannot use the database {self.label}: {said(exc, self.url)}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def connect_read_only(self, empty_ok: bool = False) -> Connection:
        """A connection that writes nothing. `empty_ok`: a database without the tables yet is
        fine (it is read as having no campaigns)."""
        conn = Connection(self.url, read_only=True)
        version = _newest(conn)
        known = discover(engine="postgres")[-1].version
        if version != known and not (empty_ok and version == 0):
            conn.close()
            raise StoreError(
                f"the database {self.label} has schema version {version}, this campaign-runner {known}: run any"
                " other command on it first (it upgrades the database), or upgrade campaign-runner"
            )
        return conn

    def begin_write(self, conn: Connection, account_id: str | None = None) -> None:
        conn.execute("BEGIN")
        if account_id is not None:  # a claim: the account's row (made at its first claim), then the key's
            lock = "SELECT id FROM accounts WHERE id = ? FOR UPDATE"
            if conn.execute(lock, (account_id,)).fetchone() is None:
                conn.execute("INSERT INTO accounts (id) VALUES (?) ON CONFLICT (id) DO NOTHING", (account_id,))
                conn.execute(lock, (account_id,))
        conn.execute("SELECT id FROM api_key WHERE id = 1 FOR UPDATE")

    def begin_read(self, conn: Connection) -> None:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def said(self, exc: BaseException) -> str:
        return said(exc, self.url)

    def database_now(self, conn: Connection) -> float | None:
        """The database's clock, the one clock of every host."""
        return float(conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0])

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected)

    def json_item(self, column: str, index: str) -> str:
        return f"(({column})::json ->> ({index}))"

    def json_array(self, value: str) -> str:
        return f"json_build_array({value})::text"

    def joined(self, value: str, separator: str) -> str:
        return f"string_agg({value}, {separator})"


# --- migrations: the same rules as SQLite's ---------------------------------------------------


def migrate(conn: Connection, now: float, migrations: list[Migration] | None = None) -> list[int]:
    migrations = discover(engine="postgres") if migrations is None else migrations
    known = migrations[-1].version if migrations else 0
    newest = _newest(conn)
    if newest > known:
        raise too_new(newest, known)
    if newest == known:
        return []  # up to date: no lock taken
    applied: list[int] = []
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))  # another process may be migrating
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        newest = _newest(conn)
        if newest > known:
            raise too_new(newest, known)
        for migration in migrations:
            if migration.version > newest:
                conn.executescript(migration.sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, now),
                )
                applied.append(migration.version)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return applied


def _newest(conn: Connection) -> int:
    (exists,) = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists:
        return 0
    (newest,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(newest)


# --- a SQLite copy, for `plan` --------------------------------------------------------------


def copy_to_sqlite(where: Target, scratch: Path, now: float) -> None:
    """The campaigns' state, copied into a new SQLite database at `scratch` (the simulation `plan`
    runs on a throwaway copy, and its scratch store is SQLite's whatever the real one is)."""
    from .sqlite import SqliteEngine

    engine = PostgresEngine(where.text, where.label)
    source = engine.connect_read_only(empty_ok=True)
    target = SqliteEngine(scratch).connect(now, durable=False)
    try:
        if _newest(source) == 0:
            return
        tables = [
            name
            for (name,) in target.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
                " AND name != 'schema_migrations'"
            )
        ]
        engine.begin_read(source)
        target.execute("PRAGMA foreign_keys = OFF")
        target.execute("BEGIN")
        for table in tables:
            columns = [row[1] for row in target.execute(f"PRAGMA table_info({table})")]
            listed = ", ".join(columns)
            order = " ORDER BY rowid" if table == "campaign_accounts" else ""  # the order the file lists them in
            cursor = source.execute(f"SELECT {listed} FROM {table}{order}")
            marks = ", ".join("?" * len(columns))
            while rows := cursor.fetchmany(1000):
                target.executemany(f"INSERT INTO {table} ({listed}) VALUES ({marks})", rows)
        target.execute("COMMIT")
        source.execute("COMMIT")
    except (psycopg.Error, sqlite3.Error) as exc:
        raise StoreError(f"cannot copy the database {engine.label}: {said(exc, engine.url)}") from None
    finally:
        source.close()
        target.close()
