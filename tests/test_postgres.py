"""Every command on PostgreSQL: what the SQLite suite proves of each, here run once end to end on a
PostgreSQL database (the store, scheduler, chaos, concurrency, bad-input and secrets tests run on
both engines in their own files)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from campaign_runner.cli import run_cli
from campaign_runner.engines import redact, scrub
from campaign_runner.engines.postgres import translate

from conftest import EXECUTABLE, PG_PASSWORD, query, urn, wait_for, write_campaign


@pytest.fixture
def cli_engine() -> str:
    return "postgresql"


@pytest.fixture
def cli_postgres(postgres) -> Iterator[str]:
    """A database with no tables yet: the first command makes them."""
    name = f"bare_{os.getpid()}_{next(_bare)}"
    yield postgres.create_database(name)
    postgres.drop_database(name)


_bare = itertools.count()


def test_every_command_works_on_postgresql(cli, serve_sandbox, tmp_path, processes) -> None:
    box, url = serve_sandbox(
        seed=3, drop_rate=0.2, reply_rate=1.0, reply_delay=(0.0, 0.01), group_size=40, conversation_rate=0.0
    )
    first = write_campaign(
        tmp_path, "first.yaml", accounts=["acc_1", "acc_2"], limit="1000/1s",
        recipients=[{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(20)],
    )  # fmt: skip
    assert run_cli(["validate", str(first)]) == 0
    code, out, err = cli("plan", str(first))
    assert code == 0 and "acc_1" in out, err

    code, out, err = cli("run", str(first), "--timeout", "1", base_url=url)
    assert code in (0, 1), err
    assert "created the campaign-runner tables in postgresql://campaign:***@" in out
    counts = dict(query(cli.db, "SELECT status, count(*) FROM recipients GROUP BY status"))
    assert sum(counts.values()) == 20 and counts.get("unknown"), counts  # the drops: unknown, never re-sent
    code, out, err = cli("status")
    assert code == 0 and "test-campaign" in out, err
    code, out, err = cli("status", "--json")
    assert code == 0 and json.loads(out), err
    code, out, err = cli("accounts", "--json")
    assert code == 0 and {a["account_id"] for a in json.loads(out)} >= {"acc_1", "acc_2"}, out
    for fmt in ("csv", "json"):
        code, out, err = cli("report", "test-campaign", "--format", fmt)
        assert code == 0 and urn(0) in out, err
    code, out, err = cli("report", "test-campaign", "--format", "html", "--output", str(tmp_path / "r.html"))
    assert code == 0 and (tmp_path / "r.html").stat().st_size > 1000, err

    # What is unknown is looked for in the conversations, then put back only if not found there.
    code, out, err = cli("reconcile", base_url=url)
    assert code == 0, err
    code, out, err = cli("retry", "test-campaign", "--status", "unknown", "--not-found")
    assert code == 0, err
    code, out, err = cli("replies", base_url=url)
    assert code in (0, 1) and "-> replied" in out, out + err  # 1: a dropped answer left a look unfinished

    code, out, err = cli("block", urn(25), urn(26), "--reason", "asked us to stop")
    assert code == 0, err
    code, out, err = cli("contacts", "--blocked", "--format", "json")
    assert code == 0 and {c["profile_urn"] for c in json.loads(out)} == {urn(25), urn(26)}, out
    code, out, err = cli("unblock", urn(26))
    assert code == 0, err
    code, out, err = cli("hold", "list")
    assert code == 0, err
    code, out, err = cli("members", "12345678", "--max", "5", base_url=url)
    assert code == 0 and len(out.splitlines()) == 6, err

    code, out, err = cli("resume", "--timeout", "1", base_url=url)
    assert code in (0, 1), err
    assert PG_PASSWORD not in out + err

    # The dashboard reads the same database, read-only.
    port = _free_port()
    log = tmp_path / "dashboard.log"
    with log.open("wb") as sink:
        processes.append(subprocess.Popen([EXECUTABLE, "dashboard", "--db", cli.db, "--port", str(port)],
                                          stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))  # fmt: skip
    wait_for(lambda: _answers(f"http://127.0.0.1:{port}/api/status"), 20)
    overview = httpx.get(f"http://127.0.0.1:{port}/api/status").json()
    assert "test-campaign" in json.dumps(overview)
    assert PG_PASSWORD not in log.read_text()


def test_a_database_that_cannot_be_reached_is_one_clear_line(capsys) -> None:
    closed = f"postgresql://campaign:{PG_PASSWORD}@127.0.0.1:{_free_port()}/nowhere"
    code = run_cli(["status", "--db", closed])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot connect to the database"), err
    assert len(err.splitlines()) == 1 and PG_PASSWORD not in err


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("mysql://ann:s3cret-pw@db/runs", "--db mysql://ann:***@db/runs: not a PostgreSQL URL"),
        ("jdbc:postgresql://db/runs?password=s3cret-pw", "--db jdbc:postgresql://db/runs?password=***: not a"),
        ("host=db password=s3cret-pw dbname=runs", "--db host=db password=*** dbname=runs: give PostgreSQL as a URL"),
        ("postgresql://ann:s3c@ret-pw@db/runs", "--db postgresql://ann:***@db/runs: a character of the password"),
        ("postgresql://ann:s3c#ret-pw@db/runs", "--db postgresql://ann:***@db/runs: a character of the password"),
    ],
)
def test_a_database_named_any_other_way_is_refused_without_its_password(given, said, capsys) -> None:
    assert run_cli(["status", "--db", given]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {said}") and len(err.splitlines()) == 1, err
    assert "s3c" not in err


def test_the_password_is_hidden_wherever_a_url_is_shown() -> None:
    assert redact("postgresql://ann:s3cret@db.example:5432/runs") == "postgresql://ann:***@db.example:5432/runs"
    assert redact("postgres://ann@db/runs?password=s3cret&sslmode=require") == (
        "postgres://ann@db/runs?password=***&sslmode=require"
    )
    assert redact("postgresql://db/runs") == "postgresql://db/runs"
    assert redact("postgresql:///runs") == "postgresql:///runs"
    assert scrub("could not connect to postgresql://ann:s3cret@db/x (s3cret)", "postgresql://ann:s3cret@db/x") == (
        "could not connect to postgresql://ann:***@db/x (***)"
    )


def test_sqlite_spelling_becomes_postgresqls() -> None:
    assert translate("SELECT a FROM t WHERE b IS ? AND c IS NOT d AND e IS NULL AND f = :name") == (
        "SELECT a FROM t WHERE b IS NOT DISTINCT FROM %s AND c IS DISTINCT FROM d AND e IS NULL AND f = %(name)s"
    )
    assert translate("SELECT min(max(a, ?)), max(b) FROM t WHERE s LIKE '50% off?'") == (
        "SELECT min(greatest(a, %s)), max(b) FROM t WHERE s LIKE '50%% off?'"
    )


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.1)
        return False


def test_runners_starting_at_once_on_a_new_database_migrate_it_once(postgres, cli_postgres: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from campaign_runner.store import Store

    def open_and_close(_: int) -> bool:
        store = Store._open(cli_postgres, 1.0)
        store._conn.close()
        return store.created

    with ThreadPoolExecutor(4) as pool:
        created = list(pool.map(open_and_close, range(4)))
    assert created.count(True) == 1
    assert query(cli_postgres, "SELECT version FROM schema_migrations") == [(1,)]


@pytest.mark.anyio
async def test_a_connection_dropped_between_operations_is_opened_again(cli_postgres: str, tmp_path) -> None:
    from campaign_runner.config import load_campaign
    from campaign_runner.errors import StoreError
    from campaign_runner.store import Store

    store = await Store.open(cli_postgres, 1.0)
    try:
        await store.load([load_campaign(write_campaign(tmp_path, recipients=[{"profile_urn": urn(1)}]))], 1.0)
        run = await store.begin_run("test", 2.0, 60)
        for _ in range(2):  # the server ends our session, as a restart or a proxy would
            query(cli_postgres, "SELECT pg_terminate_backend(?)", (store._conn._pg.info.backend_pid,))
            assert await store.campaign_names() == ["test-campaign"]
        query(cli_postgres, "SELECT pg_terminate_backend(?)", (store._conn._pg.info.backend_pid,))
        assert await store.renew(run, 3.0)  # a write transaction: its BEGIN found the session gone
        # Lost inside a transaction, the operation fails whole; the next one goes on.
        original = store._engine.begin_write

        def begin_then_drop(conn, account_id=None) -> None:
            original(conn, account_id)
            query(cli_postgres, "SELECT pg_terminate_backend(?)", (conn._pg.info.backend_pid,))

        store._engine.begin_write = begin_then_drop
        with pytest.raises(StoreError):
            await store.claim(run, "acc_1", ["test-campaign"], 4.0)
        store._engine.begin_write = original
        assert query(cli_postgres, "SELECT status FROM recipients") == [("pending",)]
        assert (await store.claim(run, "acc_1", ["test-campaign"], 5.0)).profile_urn == urn(1)
    finally:
        await store.close()


def test_a_reading_command_on_an_empty_database_makes_nothing(cli, capsys) -> None:
    code = run_cli(["status", "--db", cli.db])
    err = capsys.readouterr().err
    label = cli.db.replace(PG_PASSWORD, "***")
    assert (code, err) == (2, f"error: no campaign-runner tables in {label} (run a campaign on it first)\n")
    assert query(cli.db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
