"""Schema migrations: `migrations/<engine>/NNN_name.sql`, applied in order, each exactly once.

Strict on purpose: a stray file, a duplicate or missing version, or a database that has seen a
newer version than this code knows is an error, never something to skip past.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

from .errors import SchemaTooNewError, StoreError

FILENAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def discover(folder: Traversable | None = None, engine: str = "sqlite") -> list[Migration]:
    """The migrations of `engine` (its folder: sqlite, postgres), or of `folder`."""
    folder = folder or resources.files("campaign_runner").joinpath("migrations", engine)
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if entry.name.startswith(("__", ".")) or entry.name.endswith(".py"):
            continue
        match = FILENAME.match(entry.name)
        if not match:
            raise StoreError(f"stray file among migrations: {entry.name} (expected NNN_name.sql)")
        version = int(match.group(1))
        if version in found:
            raise StoreError(f"two migrations have version {version:03d}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    migrations = [found[v] for v in sorted(found)]
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise StoreError(f"migration {expected:03d} is missing (found {migration.version:03d})")
    return migrations


def statements(sql: str) -> list[str]:
    """Split a script into complete statements (so they run inside our own transaction)."""
    out: list[str] = []
    current = ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip() and not all(part.strip().startswith("--") or not part.strip() for part in current.splitlines()):
        raise StoreError(f"unterminated SQL statement in a migration: {current.strip()[:60]}")
    return out


def migrate(db: sqlite3.Connection, now: float, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is missing to a SQLite database; return the versions applied. `db` must be in
    autocommit mode. (PostgreSQL's are applied by `engines.postgres`, by the same rules.)"""
    migrations = discover() if migrations is None else migrations
    known = migrations[-1].version if migrations else 0
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    applied: list[int] = []
    newest = _newest(db)
    if newest > known:
        raise too_new(newest, known)
    pending = [migration for migration in migrations if migration.version > newest]
    if not pending:
        return applied  # up to date: no write lock taken, so a read-only database can be read
    # Foreign keys are off while migrations run (it cannot change inside a transaction), as SQLite
    # asks for rebuilding a table: dropping the old one must not cascade to the rows that refer to
    # it. Each migration is checked for dangling references before it commits.
    (enforced,) = db.execute("PRAGMA foreign_keys").fetchone()
    db.execute("PRAGMA foreign_keys = OFF")
    try:
        applied = _apply(db, pending, known, now)
    finally:
        db.execute(f"PRAGMA foreign_keys = {'ON' if enforced else 'OFF'}")
    newest = _newest(db)
    if newest > known:
        raise too_new(newest, known)
    return applied


def _apply(db: sqlite3.Connection, migrations: list[Migration], known: int, now: float) -> list[int]:
    applied: list[int] = []
    for migration in migrations:
        # One transaction per migration, re-checking inside it: another process may be
        # migrating the same file at the same moment.
        db.execute("BEGIN IMMEDIATE")
        try:
            newest = _newest(db)
            if newest > known:
                raise too_new(newest, known)
            if migration.version > newest:
                # A reference left dangling before (by hand, by an old bug) is not this migration's.
                dangling_before = set(db.execute("PRAGMA foreign_key_check").fetchall())
                for statement in statements(migration.sql):
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, now),
                )
                dangling = set(db.execute("PRAGMA foreign_key_check").fetchall()) - dangling_before
                if dangling:
                    table = sorted(dangling)[0][0]
                    raise StoreError(f"migration {migration.version:03d} left a dangling reference in {table}")
                applied.append(migration.version)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return applied


def too_new(newest: int, known: int) -> SchemaTooNewError:
    return SchemaTooNewError(
        f"the database has schema version {newest}, newer than this campaign-runner knows ({known});"
        " upgrade campaign-runner to use it"
    )


def _newest(db: sqlite3.Connection) -> int:
    (newest,) = db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(newest)
