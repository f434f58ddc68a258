"""Every bad input: one clear error line, the right exit code, nothing sent, the database unchanged.

Each case runs against a copy of a database that already holds a partly sent campaign, and
compares a full dump of it before and after; on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from campaign_runner.cli import run_cli
from campaign_runner.migrate import discover

from conftest import API_KEY, query, urn, write_campaign, write_text
from pgserver import PgServer

FILE = "c.yaml"
UNKNOWN = "error: no campaign named 'nope' in {db} (its campaigns: test-campaign)"
CSV_FILE = "leads.csv"


def good(**fields) -> dict:
    """The fields of a valid campaign file, with `fields` changed."""
    spec = {
        "name": "test-campaign",
        "group_id": "12345678",
        "endpoint": "send-group",
        "accounts": ["acc_1"],
        "limit": "1000/1s",
        "message": "Hi {{ first_name | default('there') }}!",
        "recipients": [{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(3)],
    }
    return spec | fields


def with_csv(text: str, **fields) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        (folder / CSV_FILE).write_bytes(text.encode("utf-8"))
        write_campaign(folder, FILE, **good(recipients=None, recipients_file=CSV_FILE, **fields))

    return make


def yaml_text(text: str) -> Callable[[Path], None]:
    return lambda folder: write_text(folder / FILE, text)


def fields(**changes) -> Callable[[Path], None]:
    return lambda folder: write_campaign(folder, FILE, **good(**changes))


def raw_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / FILE).write_bytes(data)


def corrupt_db(db: Path) -> None:
    db.write_bytes(b"this is not a database, just some text that happens to be long enough" * 100)


def newer_db(db: Path | str) -> None:
    query(db, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)")


FILE_ONLY = (corrupt_db, Path.unlink)  # what only a file can suffer


@dataclass
class Case:
    id: str
    args: list[str]
    message: str  # the whole of standard error; {file}, {db}, {dir} are filled in
    setup: Callable[[Path], None] | None = None  # writes the campaign file(s) into the folder
    env: dict[str, str] = field(default_factory=lambda: {"CONNECTSAFELY_API_KEY": API_KEY})
    db_setup: Callable[[Path], None] | None = None  # spoils the database first
    code: int = 2
    db_option: bool = True  # add --db (every command but `sandbox` takes it)


CASES = [
    Case("malformed-yaml", ["run", FILE], "error: {file}: line 4, column 1: YAML syntax: could not find expected ':'",
         yaml_text("name: x\ngroup_id: '1'\nmessage\n")),
    Case("unknown-key-typo", ["run", FILE], "error: {file}: recipents: unknown key (check its spelling)",
         fields(recipents=[])),
    Case("wrong-type-burst", ["run", FILE],
         "error: {file}: burst: Input should be a valid integer, unable to parse string as an integer",
         fields(burst="many")),
    Case("wrong-type-accounts", ["run", FILE], "error: {file}: accounts: Input should be a valid list",
         fields(accounts=5)),
    Case("wrong-type-recipients", ["run", FILE], "error: {file}: recipients: Input should be a valid list",
         fields(recipients="everyone")),
    Case("top-level-list", ["run", FILE], "error: {file}: expected a mapping of campaign settings at the top",
         yaml_text("- name: x\n")),
    Case("invalid-urn", ["run", FILE],
         "error: {file}: recipients[0].profile_urn: invalid profile_urn 'urn:li:person:123':"
         " expected urn:li:fsd_profile:<id>",
         fields(recipients=[{"profile_urn": "urn:li:person:123"}])),
    Case("empty-message", ["run", FILE], "error: {file}: message: the text is empty",
         fields(message="")),
    Case("message-renders-empty", ["run", FILE], "error: {file}: recipients[0]: message renders empty",
         fields(message="{{ ' ' }}", recipients=[{"profile_urn": urn(1)}])),
    Case("over-long-message", ["run", FILE],
         "error: {file}: recipients[0]: message renders to 9000 characters (at most 8000)",
         fields(message="x" * 9000, recipients=[{"profile_urn": urn(1)}])),
    Case("undefined-variable", ["run", FILE],
         "error: {file}: recipients[0]: message does not render: 'company' is undefined",
         fields(message="Hi from {{ company }}", recipients=[{"profile_urn": urn(1)}])),
    Case("template-reaches-internals", ["run", FILE],
         "error: {file}: recipients[0]: message does not render: access to attribute '__class__' of 'str'"
         " object is unsafe.",
         fields(message="{{ ''.__class__.__mro__ }}", recipients=[{"profile_urn": urn(1)}])),
    Case("template-syntax", ["run", FILE],
         "error: {file}: message line 1: template syntax: unexpected end of template, expected 'end of print"
         " statement'.",
         fields(message="Hi {{ first_name ")),
    Case("not-utf8", ["run", FILE], "error: {file}: not UTF-8 text (byte 34)",
         raw_bytes(b"name: x\ngroup_id: '1'\nmessage: caf\xe9\n")),
    Case("csv-without-urn-column", ["run", FILE],
         "error: {file}: leads.csv line 1: no profile_urn, profile_url or public_identifier column"
         " (columns: urn, first_name)",
         with_csv(f"urn,first_name\n{urn(1)},Ada\n")),
    Case("csv-duplicate-headers", ["run", FILE],
         "error: {file}: leads.csv line 1: duplicate column names: first_name",
         with_csv(f"profile_urn,first_name,first_name\n{urn(1)},Ada,Bea\n")),
    Case("csv-empty", ["run", FILE],
         "error: {file}: leads.csv: empty CSV: expected a header row with a profile_urn column", with_csv("")),
    Case("csv-header-only", ["run", FILE], "error: {file}: leads.csv: the CSV has a header but no recipients",
         with_csv("profile_urn,first_name\n")),
    Case("csv-missing", ["run", FILE],
         "error: {file}: recipients_file: cannot read leads.csv: No such file or directory",
         lambda folder: write_campaign(folder, FILE, **good(recipients=None, recipients_file=CSV_FILE))),
    Case("no-recipients", ["run", FILE],
         "error: {file}: recipients: no recipients: give `recipients`, `recipients_file`, `audience`, or several",
         fields(recipients=[])),
    Case("bad-limit", ["run", FILE],
         "error: {file}: limit: '150/fortnight' is not a limit: use N/day, N/hour, N/week, N/minute or"
         " N/<number><s|m|h|d>",
         fields(limit="150/fortnight")),
    Case("bad-endpoint", ["run", FILE],
         "error: {file}: endpoint: Input should be 'send-group', 'send-group-with-typing' or 'send-group-with-ack'",
         fields(endpoint="send-everyone")),
    Case("bad-name", ["run", FILE],
         "error: {file}: name: String should match pattern '^[a-z0-9_-]{{1,64}}$'", fields(name="Spring Meetup!")),
    Case("bad-backoff", ["run", FILE],
         "error: {file}: retry.backoff: 'soon' is not a duration: use a number of seconds or e.g. 500ms, 2s, 5m",
         fields(retry={"backoff": "soon"})),
    Case("bad-breaker", ["run", FILE],
         "error: {file}: breaker.failures: Input should be greater than or equal to 1",
         fields(breaker={"failures": 0})),
    Case("unknown-version", ["run", FILE], "error: {file}: version: Input should be 1", fields(version=2)),
    Case("same-name-twice", ["run", FILE, "b.yaml"],
         "error: c.yaml and b.yaml both name the campaign 'test-campaign'; give each campaign its own name",
         lambda folder: [write_campaign(folder, name, **good()) for name in (FILE, "b.yaml")]),
    Case("hold-clear-not-held", ["hold", "clear", "acc_9"],
         "error: account acc_9 is not held (see `campaign-runner hold list`; the key's default account is \"\")"),
    Case("hold-list-no-database", ["hold", "list", "--db", "{dir}/absent.db"],
         "error: no database at {dir}/absent.db (give --db, or run a campaign first)"),
    Case("plan-start-year-1", ["plan", FILE, "--start", "0001-01-01T00:00"],
         "error: --start: '0001-01-01T00:00' is not a time a campaign could start at (years 2000 to 2999)", fields()),
    Case("sandbox-foreign-host", ["sandbox", "--host", "192.0.2.1", "--port", "0"],
         "error: the sandbox cannot listen on 192.0.2.1:0: Cannot assign requested address", db_option=False),
    Case("missing-file", ["run", "absent.yaml"], "error: absent.yaml: cannot read the file: No such file or directory"),
    Case("no-api-key", ["run", FILE], "error: CONNECTSAFELY_API_KEY is not set: export your API key, or try --sandbox",
         fields(), env={}),
    Case("api-key-with-spaces", ["run", FILE],
         "error: CONNECTSAFELY_API_KEY contains spaces, control or non-ASCII characters",
         fields(), env={"CONNECTSAFELY_API_KEY": "two words"}),
    Case("api-key-non-ascii", ["run", FILE],
         "error: CONNECTSAFELY_API_KEY contains spaces, control or non-ASCII characters",
         fields(), env={"CONNECTSAFELY_API_KEY": "sk-pasted\u201cquote"}),
    Case("invalid-base-url", ["run", FILE, "--base-url", "api.connectsafely.ai"],
         "error: invalid base URL 'api.connectsafely.ai': expected http(s)://host/path", fields()),
    Case("base-url-bad-port", ["run", FILE, "--base-url", "http://127.0.0.1:99999/linkedin"],
         "error: invalid base URL 'http://127.0.0.1:99999/linkedin': expected http(s)://host/path", fields()),
    Case("base-url-bad-address", ["run", FILE, "--base-url", "https://256.1.1.1/linkedin"],
         "error: invalid base URL 'https://256.1.1.1/linkedin': expected http(s)://host/path", fields()),
    Case("timeout-nan", ["run", FILE, "--timeout", "nan"],
         "error: Invalid value for '--timeout': nan is not a number of seconds", fields()),
    Case("timeout-too-long", ["run", FILE, "--timeout", "1e308"],
         "error: Invalid value for '--timeout': 1e+308 is not in the range 1<=x<=3600.", fields()),
    Case("insecure-base-url", ["run", FILE, "--base-url", "http://api.example.com/linkedin"],
         "error: refusing to send the API key over plain http:// to api.example.com: use https://, or"
         " --allow-insecure", fields()),
    Case("bad-api-limit", ["run", FILE, "--api-limit", "lots"],
         "error: --api-limit: 'lots' is not a limit: use N/day, N/hour, N/week, N/minute or N/<number><s|m|h|d>",
         fields()),
    Case("timeout-zero", ["run", FILE, "--timeout", "0"],
         "error: Invalid value for '--timeout': 0.0 is not in the range 1<=x<=3600.", fields()),
    Case("unknown-option", ["run", FILE, "--frobnicate"], "error: No such option '--frobnicate'.", fields()),
    Case("changed-after-sending", ["run", FILE, "--sandbox"],
         "error: campaign 'test-campaign' has already sent messages and its message changed; run again with"
         " --accept-changes to apply the change to unsent recipients only, or give the campaign a new name",
         fields(message="A different message, {{ first_name }}")),
    Case("corrupt-db", ["run", FILE],
         "error: cannot use the database {db}: file is not a database (is it a campaign-runner database?)",
         fields(), db_setup=corrupt_db),
    Case("plan-corrupt-db", ["plan", FILE], "error: cannot read the database {db}: file is not a database",
         fields(), db_setup=corrupt_db),
    Case("newer-db", ["status"], "error: the database has schema version 999, newer than this"
         " campaign-runner knows ({latest}); upgrade campaign-runner to use it", db_setup=newer_db),
    Case("unwritable-db", ["run", FILE, "--db", "{dir}/no/such/folder/x.db"],
         "error: cannot create the database {dir}/no/such/folder/x.db: No such file or directory", fields()),
    Case("report-unknown-campaign", ["report", "nope"], UNKNOWN),
    Case("retry-unknown-campaign", ["retry", "nope", "--status", "failed"], UNKNOWN),
    Case("resume-unknown-campaign", ["resume", "nope"], UNKNOWN),
    Case("status-unknown-campaign", ["status", "nope"], UNKNOWN),
    Case("no-db-status", ["status"], "error: no database at {db} (give --db, or run a campaign first)",
         db_setup=Path.unlink),
    Case("no-db-resume", ["resume"], "error: no database at {db} (give --db, or run a campaign first)",
         db_setup=Path.unlink),
    Case("no-db-report", ["report", "test-campaign"], "error: no database at {db} (give --db, or run a campaign first)",
         db_setup=Path.unlink),
    Case("sandbox-bad-quota", ["sandbox", "--quota", "lots"],
         "error: --quota: 'lots' is not a limit: use N/day, N/hour, N/week, N/minute or N/<number><s|m|h|d>",
         db_option=False),
    Case("sandbox-bad-fault", ["sandbox", "--forbidden-after", "acc_1"],
         "error: --forbidden-after: expected ACCOUNT=N with N >= 1, got 'acc_1'", db_option=False),
    Case("retry-bad-status", ["retry", "test-campaign", "--status", "sent"],
         "error: Invalid value for '--status': 'sent' is not one of 'unknown', 'failed'."),
    # --- audience and contacts
    Case("members-not-a-group-url", ["members", "https://www.linkedin.com/company/acme/", "--sandbox"],
         "error: 'https://www.linkedin.com/company/acme/' is not a group id: give the group's numeric id"
         " (e.g. 12345678) or its URL (https://www.linkedin.com/groups/12345678/)"),
    Case("csv-profile-url-of-a-company", ["run", FILE],
         "error: c.yaml: leads.csv line 2: invalid profile_url: 'https://www.linkedin.com/company/acme/' is not"
         " a profile URL: expected https://www.linkedin.com/in/<name>/",
         with_csv("profile_url,first_name\nhttps://www.linkedin.com/company/acme/,Ada\n")),
    Case("csv-profile-url-of-a-post", ["validate", FILE],
         "error: c.yaml: leads.csv line 2: invalid profile_url: 'https://www.linkedin.com/posts/ada_x-123' is not"
         " a profile URL: expected https://www.linkedin.com/in/<name>/",
         with_csv("profile_url,first_name\nhttps://www.linkedin.com/posts/ada_x-123,Ada\n"), db_option=False),
    Case("csv-row-without-anyone", ["run", FILE],
         "error: c.yaml: leads.csv line 2: missing profile_urn (or profile_url, or public_identifier)",
         with_csv("profile_url,first_name\n,Ada\n")),
    Case("recontact-unknown", ["run", FILE],
         "error: c.yaml: recontact: 'sometimes': use never, always, or a duration in hours, days or weeks,"
         " such as 90d", fields(recontact="sometimes")),
    Case("recontact-in-minutes", ["run", FILE],
         "error: c.yaml: recontact: '3m': use never, always, or a duration in hours, days or weeks, such as 90d",
         fields(recontact="3m")),
    Case("recontact-a-bare-number", ["run", FILE],
         "error: c.yaml: recontact: 90: use never, always, or a duration in hours, days or weeks, such as 90d",
         fields(recontact=90)),
    Case("precheck-unknown", ["run", FILE],
         "error: c.yaml: precheck: 'profile': use conversation (skip people already in a conversation) or none",
         fields(precheck="profile")),
    Case("audience-unknown-status", ["run", FILE],
         "error: c.yaml: audience.group_members.statuses[0]: Input should be 'member', 'manager' or 'owner'",
         fields(audience={"group_members": {"statuses": ["admin"]}})),
    Case("block-nobody-known", ["block", "urn:li:member:123"],
         "error: 'urn:li:member:123' is not a profile URN: expected urn:li:fsd_profile:<id>"),
    Case("block-a-company", ["block", "https://www.linkedin.com/company/acme/"],
         "error: 'https://www.linkedin.com/company/acme/' is not a profile URL:"
         " expected https://www.linkedin.com/in/<name>/"),
    Case("block-garbage", ["block", "jane doe"],
         "error: 'jane doe' is none of a profile URN (urn:li:fsd_profile:...), a profile URL"
         " (https://www.linkedin.com/in/<name>/) or a public identifier"),
    Case("block-nothing", ["block"],
         "error: give at least one person: a URN, a profile URL or a public identifier (or --file)"),
]  # fmt: skip


def fill(db: str, folder: Path) -> None:
    """A campaign that has sent to some of its recipients."""
    path = write_campaign(folder, FILE, **good())
    assert run_cli(["run", str(path), "--sandbox", "--db", db]) == 0
    path = write_campaign(folder, FILE, **good(recipients=good()["recipients"] + [{"profile_urn": urn(9)}]))
    assert run_cli(["run", str(path), "--sandbox", "--db", db, "--no-wait"]) == 0


@pytest.fixture(scope="module")
def started_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("started")
    db = folder / "start.db"
    fill(str(db), folder)
    return db


@pytest.fixture(scope="module")
def started_postgres(tmp_path_factory: pytest.TempPathFactory, postgres: PgServer) -> Iterator[str]:
    name = f"started_{os.getpid()}"
    fill(postgres.create_database(name), tmp_path_factory.mktemp("started-pg"))
    yield name
    postgres.drop_database(name)


def dump(db: Path | str) -> list[Any] | bytes | None:
    if str(db).startswith("postgresql://"):
        tables = [t for (t,) in query(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        return [(t, sorted(map(repr, query(db, f"SELECT * FROM {t}")))) for t in tables]
    db = Path(db)
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return list(conn.iterdump())
    except sqlite3.DatabaseError:
        return db.read_bytes()


def _on_postgres(case: Case) -> bool:
    return case.db_setup not in FILE_ONLY and "--db" not in case.args  # the others are about files


ENGINE_CASES = [("sqlite", c) for c in CASES] + [("postgresql", c) for c in CASES if _on_postgres(c)]


@pytest.mark.parametrize(("engine", "case"), ENGINE_CASES, ids=[f"{c.id}-{e}" for e, c in ENGINE_CASES])
def test_bad_input(case: Case, engine: str, request, tmp_path: Path, monkeypatch, capsys) -> None:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if engine == "sqlite":
        db: Path | str = tmp_path / "campaigns.db"
        shutil.copy(request.getfixturevalue("started_db"), db)
        label = str(db)
    else:
        server: PgServer = request.getfixturevalue("postgres")
        db = server.create_database(f"case_{os.getpid()}_{case.id.replace('-', '_')}",
                                    template=request.getfixturevalue("started_postgres"))  # fmt: skip
        request.addfinalizer(lambda: server.drop_database(db.rsplit("/", 1)[1]))
        label = server.url_for(db.rsplit("/", 1)[1], hide_password=True)
    if case.db_setup:
        case.db_setup(db)
    if case.setup:
        case.setup(tmp_path)
    before = dump(db)
    files = sorted(p.name for p in tmp_path.iterdir())
    args = [a.format(dir=tmp_path) for a in case.args]
    code = run_cli([*args, "--db", str(db)] if case.db_option and "--db" not in args else args)
    out, err = capsys.readouterr()
    latest = discover(engine="sqlite" if engine == "sqlite" else "postgres")[-1].version
    message = case.message.format(file=FILE, db=label, dir=tmp_path, latest=latest)
    assert (code, err) == (case.code, message + "\n")
    assert "Traceback" not in out
    assert dump(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # nothing else written either


def test_there_are_at_least_thirty_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 30


def test_a_csv_starting_with_a_bom_loads_normally(started_db: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CONNECTSAFELY_API_KEY", API_KEY)
    with_csv(f"\ufeffprofile_urn,first_name\r\n{urn(1)},Ada\r\n", name="bom")(tmp_path)
    assert run_cli(["validate", FILE]) == 0
    assert capsys.readouterr().out == (
        f"{FILE}: ok: campaign bom, 1 recipient (0 duplicates dropped), group 12345678, endpoint send-group,"
        " accounts: acc_1 1000/second\n"
    )
