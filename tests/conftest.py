from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from hypothesis import strategies as st

from campaign_runner import events
from campaign_runner.cli import run_cli
from campaign_runner.client import ApiClient
from campaign_runner.clock import Clock
from campaign_runner.engines.postgres import translate
from campaign_runner.sandbox import Sandbox, SandboxConfig, serve_in_thread
from campaign_runner.scheduler import RunResult, Scheduler
from campaign_runner.settings import Limit
from campaign_runner.store import Store

from pgserver import PgServer, find_bindir

API_KEY = "test-key-0123456789"
PG_PASSWORD = "pg-Secret-4b1d9e"  # must never appear in the database, a log, a report or a message
ENGINES = ("sqlite", "postgresql")
_TEMPLATE = "campaign_template"
_databases = itertools.count(1)


# --- both engines ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the whole session (started the first time a test asks),
    with a template database migrated as the runner would, for each test to copy."""
    try:
        find_bindir()
    except RuntimeError as exc:
        if os.environ.get("REQUIRE_POSTGRES"):  # CI: the PostgreSQL half of the suite must run
            raise
        pytest.skip(f"no PostgreSQL here ({exc}): `make postgres`, or apt-get install postgresql")
    server = PgServer(password=PG_PASSWORD)
    server.start()
    try:
        url = server.create_database(_TEMPLATE)
        Store._open(url, 1.0)._conn.close()
        yield server
    finally:
        server.stop()


CLI_ENGINE = os.environ.get("CLI_ENGINE", "sqlite")


@pytest.fixture
def cli_postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with new_database(request, "postgresql", tmp_path) as url:
        yield url


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty database of `engine`, as `--db` takes it: a file path, or a PostgreSQL URL."""
    with new_database(request, engine, tmp_path) as where:
        yield where


@contextlib.contextmanager
def new_database(request: pytest.FixtureRequest, engine: str, folder: Path) -> Iterator[str]:
    """A new, empty database of `engine` (a file in `folder`), removed afterwards (for a test that
    needs several, one per example of a property, say)."""
    if engine == "sqlite":
        yield str(folder / f"campaigns-{next(_databases)}.db")
        return
    server: PgServer = request.getfixturevalue("postgres")
    name = f"test_{os.getpid()}_{next(_databases)}"
    url = server.create_database(name, template=_TEMPLATE)
    try:
        yield url
    finally:
        server.drop_database(name)


def query(db: str | Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a database of either engine, through a connection of the test's own
    (as another process would), in SQLite's spelling; return its rows (none for a write)."""
    where = str(db)
    if where.startswith("postgresql://"):
        with psycopg.connect(where, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cursor = conn.execute(translate(sql), params)
            return cursor.fetchall() if cursor.description else []
    conn = sqlite3.connect(where, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn (the sandbox) runs on asyncio only


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("CONNECTSAFELY_", "CAMPAIGN_RUNNER_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    # The default databases live in the user's data folder: here, a folder of the test's own.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


@pytest.fixture
def serve_sandbox() -> Iterator[Callable[..., tuple[Sandbox, str]]]:
    """Start sandboxes on 127.0.0.1 (each in its own thread, on `clock` if given); all are stopped after the test."""
    with_stops: list[Any] = []

    def start(clock: Clock | None = None, **config: Any) -> tuple[Sandbox, str]:
        config.setdefault("api_key", API_KEY)
        box = Sandbox(SandboxConfig(**config), clock)
        server = serve_in_thread(box)
        url = server.__enter__()
        with_stops.append(server)
        return box, url

    yield start
    for server in reversed(with_stops):
        server.__exit__(None, None, None)


def urn(n: int) -> str:
    return f"urn:li:fsd_profile:ACoAAtest{n:05d}"


def write_campaign(folder: Path, filename: str = "campaign.yaml", **fields: Any) -> Path:
    """A campaign file with sensible test defaults; any field can be overridden (None drops it)."""
    spec: dict[str, Any] = {
        "name": "test-campaign",
        "group_id": "12345678",
        "endpoint": "send-group",
        "accounts": ["acc_1"],
        "limit": "1000/1s",
        "retry": {"attempts": 3, "backoff": "50ms"},
        "api_limit": "1000000/1s",  # the API key's own limit, out of the way unless a test sets it
        "message": "Hi {{ first_name | default('there') }}!",
        "recipients": [{"profile_urn": urn(i), "first_name": f"Person{i}"} for i in range(5)],
    }
    spec.update(fields)
    spec = {k: v for k, v in spec.items() if v is not None}
    path = folder / filename
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture
def cli_engine() -> str:
    """The engine of the `cli` fixture's database: SQLite, unless CLI_ENGINE=postgresql (to run
    every CLI test on PostgreSQL, on demand). A module overrides it to run on both."""
    return CLI_ENGINE


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path, request, cli_engine: str):
    """Run the CLI in this process against one database: `cli(*args, base_url=...)` -> (code, out, err);
    `cli.db` is that database, as `--db` takes it."""
    monkeypatch.setenv("CONNECTSAFELY_API_KEY", API_KEY)
    db = str(tmp_path / "runs.db")
    if cli_engine == "postgresql":
        db = request.getfixturevalue("cli_postgres")

    def invoke(*args: str, base_url: str | None = None) -> tuple[int, str, str]:
        extra = ["--db", db]
        if base_url is not None:
            extra += ["--base-url", base_url]
        code = run_cli([*args, *extra])
        out, err = capsys.readouterr()
        return code, out, err

    invoke.db = db
    return invoke


def report(cli, name: str = "test-campaign") -> dict:
    code, out, _ = cli("report", name, "--format", "json")
    assert code == 0
    return json.loads(out)


def by_urn(data: dict) -> dict[str, dict]:
    return {r["profile_urn"]: r for r in data["recipients"]}


# Every form of limit a campaign file may give (some invalid: keep those `parsed_or_none` reads).
_window_numbers = st.one_of(
    st.integers(1, 400).map(str),
    st.tuples(st.integers(0, 400), st.integers(1, 999_999)).map(lambda t: f"{t[0]}.{t[1]}"),
    st.tuples(st.integers(1, 99), st.integers(-6, 7)).map(lambda t: f"{t[0]}e{t[1]:+d}"),
)
LIMIT_TEXTS = st.one_of(
    st.tuples(st.integers(1, 10**9), st.sampled_from(["second", "minute", "hour", "day", "week"])).map(
        lambda t: f"{t[0]}/{t[1]}"
    ),
    st.tuples(st.integers(1, 10**9), _window_numbers, st.sampled_from("smhd")).map(lambda t: f"{t[0]}/{t[1]}{t[2]}"),
)


def parsed_or_none(text: str) -> Limit | None:
    try:
        return Limit.parse(text)
    except ValueError:
        return None


def max_in_window(times: list[float], window: float) -> int:
    """The most of `times` in any closed interval of length `window` (a sweep over the sorted times)."""
    times = sorted(times)
    j, best = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] <= start + window:
            j += 1
        best = max(best, j - i)
    return best


# --- the real scheduler, in process ---------------------------------------------------------


async def run_campaigns(
    store: Store,
    clock: Clock,
    app: Any,
    names: Sequence[str] = ("test-campaign",),
    *,
    seed: int = 1,
    stop_after: int | None = None,
    emit: Callable[[events.Event], None] | None = None,
    stop_when: Callable[[list[events.Event]], bool] | None = None,
    halt_when: Callable[[list[events.Event]], bool] | None = None,
) -> tuple[RunResult, list[events.Event]]:
    """Run campaigns of `store` with the real scheduler and client against `app` (the sandbox, or a
    wrapper of it) reached in process, as `run` would; stop after `stop_after` answers, or once
    `stop_when(events so far)`, if given; or cut it off at once when `halt_when(events so far)`.
    Returns how the run ended and every event it reported."""
    campaigns = [await store.campaign(name) for name in names]
    seen: list[events.Event] = []

    def sink(event: events.Event) -> None:
        seen.append(event)
        if emit is not None:
            emit(event)
        if stop_after is not None and sum(isinstance(e, events.Attempted) for e in seen) >= stop_after:
            scheduler.stop()
        if stop_when is not None and stop_when(seen):
            scheduler.stop()
        if halt_when is not None and halt_when(seen):
            scheduler.halt()  # as a second Ctrl-C: what is in flight is cut off, `unknown`

    headers = {"Authorization": f"Bearer {API_KEY}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox/linkedin/", headers=headers) as http:
        async with Scheduler.begun(
            store, ApiClient(http, 60.0), clock, command="test", deadline=60.0, campaigns=campaigns, emit=sink,
            rng=random.Random(seed),
        ) as scheduler:  # fmt: skip
            return await scheduler.run(), seen


# --- real runner processes ------------------------------------------------------------------

EXECUTABLE = str(Path(sys.executable).parent / "campaign-runner")


def start(
    started: list, args: list[str], db: str | Path, url: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    env = {**os.environ, "CONNECTSAFELY_API_KEY": API_KEY, "CAMPAIGN_RUNNER_DB": str(db), "CONNECTSAFELY_BASE_URL": url,
           **(env or {})}  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen([EXECUTABLE, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)  # fmt: skip
    started.append(process)
    return process


def statuses(db: str | Path) -> dict[str, str]:
    if not str(db).startswith("postgresql://") and not Path(db).exists():
        return {}
    try:
        return dict(query(db, "SELECT profile_urn, status FROM recipients"))
    except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):  # not migrated yet
        return {}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Every runner a test starts is gone when it ends, whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)
