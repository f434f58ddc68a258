"""The API key never lands anywhere: not in the database, the output, a report or an error; nor does
the password of a PostgreSQL database's URL."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

from conftest import EXECUTABLE, PG_PASSWORD, query, urn, write_campaign


def test_the_key_is_in_no_byte_written(serve_sandbox, tmp_path: Path, engine: str, database: str) -> None:
    key = f"sk-live-{secrets.token_hex(16)}"
    box, url = serve_sandbox(
        api_key=key, seed=11, error_rate=0.1, drop_rate=0.1, bad_gateway_rate=0.1, bad_headers_rate=0.2,
        non_members={urn(3)}, invalid={urn(4)}, unauthorized_after=25,
    )  # fmt: skip
    path = write_campaign(
        tmp_path, accounts=["acc_1", "acc_2"], retry={"attempts": 2, "backoff": "10ms"},
        breaker={"cooldown": "10ms", "pauses": 20},
        recipients=[{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(30)],
    )  # fmt: skip
    env = {**os.environ, "CONNECTSAFELY_API_KEY": key, "CAMPAIGN_RUNNER_DB": database}
    outputs: list[str] = []

    def runner(*args: str) -> int:
        done = subprocess.run([EXECUTABLE, *args], env=env, capture_output=True, text=True, timeout=60)
        outputs.extend([done.stdout, done.stderr])
        return done.returncode

    assert runner("run", str(path), "--base-url", url, "--timeout", "1") == 1  # ends on the 401
    assert "error: the API refused the key (401: Unauthorized - Invalid credentials)" in outputs[-1]
    assert len(box.log) > 5  # it did send, through the faults, before the 401
    assert runner("--debug", "resume", "--base-url", url + "/wrong", "--switch-api") == 1  # 404s: wrong address
    assert runner("--debug", "resume", "--base-url", "http://example.com/linkedin") == 2  # refused: plain http
    assert runner("report", "test-campaign", "--format", "csv", "--output", str(tmp_path / "r.csv")) == 0
    assert runner("report", "test-campaign", "--format", "json", "--output", str(tmp_path / "r.json")) == 0
    assert runner("status", "--json") == 0
    assert runner("--debug", "status", "--db", str(tmp_path / "missing.db")) == 2  # a traceback, with --debug
    assert "Traceback" in outputs[-1]
    secrets_ = [key]
    if engine == "postgresql":
        secrets_.append(PG_PASSWORD)
        # A database that is not there, and a wrong password: the error names the URL without it.
        wrong = database.rsplit("/", 1)[0] + "/no_such_database"
        assert runner("--debug", "status", "--db", wrong) == 2
        assert "no_such_database" in outputs[-1] and "Traceback" in outputs[-1]
        assert runner("status", "--db", wrong.replace(PG_PASSWORD, "not-the-password")) == 2
        assert "password authentication failed" in outputs[-1]

    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert {p.name for p in written} >= {"r.csv", "r.json"}
    for place in written:
        for secret in secrets_:
            assert secret.encode() not in place.read_bytes(), place
    for text in outputs:
        for secret in secrets_:
            assert secret not in text
    stored = repr(dump(database))
    for secret in secrets_:
        assert secret not in stored
    assert [r for r in box.sends if r.status == 401]  # the key did reach the server, and only there


def dump(db: str) -> list[tuple]:
    """Every row of every table."""
    if db.startswith("postgresql://"):
        tables = [t for (t,) in query(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    else:
        tables = [t for (t,) in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    return [row for table in tables for row in query(db, f"SELECT * FROM {table}")]
