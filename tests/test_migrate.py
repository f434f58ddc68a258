from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import anyio
import pytest

from campaign_runner.errors import SchemaTooNewError, StoreError
from campaign_runner.migrate import Migration, discover, migrate, statements
from campaign_runner.settings import Breaker
from campaign_runner.store import Store

pytestmark = pytest.mark.anyio


def test_shipped_migrations_are_numbered_from_one() -> None:
    versions = [m.version for m in discover()]
    assert versions == list(range(1, len(versions) + 1))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"001_a.sql": "", "README.txt": ""}, "stray file among migrations: README.txt"),
        ({"001_a.sql": "", "001_b.sql": ""}, "two migrations have version 001"),
        ({"001_a.sql": "", "003_c.sql": ""}, "migration 002 is missing"),
    ],
)
def test_discovery_is_strict(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(StoreError, match=message):
        discover(tmp_path)


def test_statements_split_on_complete_sql() -> None:
    sql = "-- a comment\nCREATE TABLE a (x TEXT DEFAULT ';');\nCREATE TABLE b (y);\n"
    assert statements(sql) == ["-- a comment\nCREATE TABLE a (x TEXT DEFAULT ';');", "CREATE TABLE b (y);"]


def test_each_migration_runs_once_and_is_recorded(tmp_path: Path) -> None:
    migrations = [Migration(1, "one", "CREATE TABLE one (x);"), Migration(2, "two", "INSERT INTO one VALUES (1);")]
    with contextlib.closing(sqlite3.connect(tmp_path / "m.db", isolation_level=None)) as db:
        assert migrate(db, 1.0, migrations) == [1, 2]
        assert migrate(db, 2.0, migrations) == []
        assert db.execute("SELECT count(*) FROM one").fetchone()[0] == 1
        assert db.execute("SELECT version, name, applied_at FROM schema_migrations").fetchall() == [
            (1, "one", 1.0),
            (2, "two", 1.0),
        ]


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    migrations = [Migration(1, "bad", "CREATE TABLE t (x);\nINSERT INTO missing VALUES (1);")]
    with contextlib.closing(sqlite3.connect(tmp_path / "m.db", isolation_level=None)) as db:
        with pytest.raises(sqlite3.OperationalError):
            migrate(db, 1.0, migrations)
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchall() == []


async def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    store = await Store.open(path, 1.0)
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (999, 'future', 2.0)")
    with pytest.raises(SchemaTooNewError, match="schema version 999, newer than this campaign-runner knows"):
        await Store.open(path, 3.0)


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot use the database"):
        await Store.open(path, 1.0)


async def test_database_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    store = await Store.open(path, 1.0)
    await store.close()
    assert path.stat().st_mode & 0o777 == 0o600


# Once a migration has shipped, databases out there have run it: it must never change. A new
# schema change is a new file. Add each new migration's digest here when it ships.
SHIPPED = {
    1: "8bbef63d7890b00ce924203c6b76653c3863b6552b077f6c73be2958112bd484",
    2: "91116326e4de39c7295a99808e2311dbcf2c629126b04aad90c6f02ae6dd9179",
    3: "3c7f9b611fc30d287e4d1a91499bdb080312ce5d483c81a818daa6c631030e99",
    4: "ddfb9c3c9c00a3459cef85bcf17eb6989f3389f06d7e68c3f15220598a4328c9",
    5: "f721183c0805a69d5c3e9631ccf5fba4429d9f7aaf8dc5d0b1c9556dd7d741e1",
    6: "02c502da8540a7a9b8caed3cc8f26900c02cf37bb7ee1a626314168258fa8a20",
    7: "15fc2e316dd94feea2141595f8ef0bd2071ef89ea7068e32ad4f76a769c68ed9",
    8: "57ec3724e48fa14802627e09f5999e23c392e1da6d2319272a9109cf8fecfbf9",
    9: "c0b6f19241e98f60a532bf44c3b025d086f8c18a87c4c7d817de921cd2c621d0",
    10: "2c094cc9d7fd38abe43f4faf7af9ec502f3079d717e07fffb05d9f46dbb5eda7",
    11: "8e17765106eac8a44bed326205d60c9d09007d42020c4beb8a1e2fa054c08dbf",
}
SHIPPED_POSTGRES = {
    1: "3b6b26db90f987cbb420da5f03d4371e1297459aff00832cf19ca63c7af4ad0c",
}


@pytest.mark.parametrize(("engine", "shipped"), [("sqlite", SHIPPED), ("postgres", SHIPPED_POSTGRES)])
def test_shipped_migrations_never_change(engine: str, shipped: dict[int, str]) -> None:
    import hashlib

    for migration in discover(engine=engine):
        digest = hashlib.sha256(migration.sql.encode()).hexdigest()
        assert shipped.get(migration.version) == digest, (
            f"migration {migration.version:03d} differs from what shipped; add a new migration instead"
            f" (or, for a new one, record its digest: {digest})"
        )


async def test_a_database_of_the_first_schema_is_upgraded_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        migrate(db, 1.0, discover()[:1])
        db.execute(
            "INSERT INTO campaigns (name, group_id, endpoint, message_template, limit_cap, limit_window,"
            " created_at, updated_at) VALUES ('old', '1', 'send-group', 'hi', 150, 86400, 1, 1)"
        )
        db.execute("INSERT INTO campaign_accounts VALUES ('old', 'acc_1', 150, 86400)")
    store = await Store.open(path, 2.0)
    try:
        settings = await store.campaign("old")
    finally:
        await store.close()
    assert settings.breaker == Breaker()
    assert settings.account_ids == ("acc_1",)


async def test_opening_an_up_to_date_database_takes_no_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    await (await Store.open(path, 1.0)).close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock (loading a big file)
        with anyio.fail_after(5):  # a migration's BEGIN IMMEDIATE would wait out the 15 s busy timeout
            store = await Store.open(path, 2.0)
        try:
            assert await store.campaign_names() == []  # and status, report or plan can read meanwhile
        finally:
            await store.close()
        writer.execute("ROLLBACK")
