"""SQLite: one file, WAL, one writer at a time (`BEGIN IMMEDIATE`), across processes."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from ..errors import StoreError
from ..migrate import discover, migrate

BUSY_TIMEOUT_MS = 15_000


class SqliteEngine:
    name = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    skip_locked = ""  # the write lock is the whole database's

    def __init__(self, path: Path):
        self.path = path
        self.label = str(path)

    def connect(self, now: float, durable: bool, create: bool = True) -> sqlite3.Connection:
        """Open (creating and migrating) the database. (`create`: the caller looks whether the file exists.)"""
        path = self.path
        _create_private(path)
        try:
            # check_same_thread: the connection moves between worker threads, one at a time.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {path}: {exc}") from None
        try:
            self._configure(conn, durable)
            migrate(conn, now)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot use the database {path}: {exc} (is it a campaign-runner database?)") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def connect_read_only(self) -> sqlite3.Connection:
        """A connection that takes no write lock: runners writing to the file are never held up,
        and it reads their commits as WAL readers do."""
        path = self.path
        if not path.is_file():
            raise StoreError(f"no database at {path}")
        try:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            (version,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the database {path}: {exc}") from None
        known = discover(engine="sqlite")[-1].version
        if version != known:
            conn.close()
            raise StoreError(
                f"the database {path} has schema version {version}, this campaign-runner {known}: run any"
                " other command on it first (it upgrades the database), or upgrade campaign-runner"
            )
        return conn

    def _configure(self, conn: sqlite3.Connection, durable: bool) -> None:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Turning a new file to WAL needs it alone, and SQLite may answer "locked" at once instead
        # of waiting when another process opens it at the same moment: try again for a while.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if mode != "wal":
            raise StoreError(f"the database {self.path} cannot use WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'OFF'}")
        conn.execute("PRAGMA foreign_keys = ON")
        # Reading the schema is what makes a file that is not a database fail here, clearly.
        conn.execute("SELECT count(*) FROM sqlite_master")

    def begin_write(self, conn: sqlite3.Connection, account_id: str | None = None) -> None:
        conn.execute("BEGIN IMMEDIATE")  # the lock up front: no upgrade deadlocks between processes

    def begin_read(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")

    def said(self, exc: BaseException) -> str:
        return str(exc)

    def database_now(self, conn: sqlite3.Connection) -> float | None:
        return None  # one host: its own clock

    def retryable(self, exc: BaseException) -> bool:
        return False  # busy_timeout already waits for the lock

    def json_item(self, column: str, index: str) -> str:
        return f"json_extract({column}, '$[' || ({index}) || ']')"

    def json_array(self, value: str) -> str:
        return f"json_array({value})"

    def joined(self, value: str, separator: str) -> str:
        return f"group_concat({value}, {separator})"


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (it holds messages and outcomes)."""
    if path.exists():
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot create the database {path}: {exc.strerror}") from None
    os.close(fd)


def copy_database(db: Path, target: Path) -> None:
    """A consistent copy of a database to `target` (for `plan` and forecasts), read through a
    read-only connection: the original is never written."""
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            conn.execute("VACUUM INTO ?", (str(target),))
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the database {db}: {exc}") from None
