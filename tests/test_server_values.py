"""No answer from the server, however absurd, crashes a run or poisons the database.

Times in bodies and headers (`holdUntil`, `X-RateLimit-Reset`, `Date`) may be far past, far
future, numbers, or garbage; counts may be huge or negative; a 200 may be no answer of the API at
all. Each such answer goes through the real client, scheduler and store (the sandbox's scripted
answers), and every command must still work on the database afterwards.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign_runner.client import classify
from campaign_runner.config import load_campaign
from campaign_runner.guard import Judgement
from campaign_runner.limiter import MAX_HOLD, MIN_HOLD, decide, hold_for, reset_at
from campaign_runner.policy import settle
from campaign_runner.sandbox import Scripted
from campaign_runner.store import Claimed, Store

from conftest import ENGINES, by_urn, query, report, urn, write_campaign

LIMITED = {"error": "Rate limit exceeded for MESSAGE: 150/150 used", "success": False}
FAR_FUTURE = "9999-12-31T23:59:59Z"


def open_hours() -> str:
    """Sending hours around the present hour (UTC), so the schedule's window arithmetic runs."""
    hour = datetime.now(timezone.utc).hour
    return f"{(hour - 1) % 24:02d}:00-{(hour + 2) % 24:02d}:00"


def campaign(tmp_path: Path, n: int = 3) -> Path:
    return write_campaign(
        tmp_path,
        schedule={"hours": open_hours(), "timezone": "UTC"},
        recipients=[{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(n)],
    )


@pytest.fixture(params=ENGINES)
def cli_engine(request: pytest.FixtureRequest) -> str:
    return request.param  # what the server says reaches each engine's column types alike


def stored_holds(db: str) -> list[tuple]:
    return query(db, "SELECT hold_until, server_reset, server_remaining FROM accounts")


def test_a_hold_until_the_end_of_time_stops_the_account_and_every_command_still_works(
    cli, serve_sandbox, tmp_path: Path
) -> None:
    box, url = serve_sandbox(scripted=[Scripted(429, {**LIMITED, "holdUntil": FAR_FUTURE})])
    path = campaign(tmp_path)
    before = time.time()
    code, out, err = cli("run", str(path), base_url=url)
    assert code == 1
    assert err.startswith(
        "error: acc_1 stopped: blocked by the API: it asked for a hold until 9999-12-31T23:59:59.000Z (Rate limit"
        " exceeded for MESSAGE: 150/150 used); held for 7 days (see `campaign-runner hold list`)."
    )
    assert out.splitlines()[-1] == "test-campaign: 3 pending"
    [(hold, _, _)] = stored_holds(cli.db)
    assert before + MAX_HOLD - 5 < hold <= time.time() + MAX_HOLD  # bounded, not year 9999

    # Every command still works on this database, and the hold can be seen and lifted.
    for args in (("status",), ("status", "--json"), ("report", "test-campaign"), ("resume", "--no-wait")):
        code, out, err = cli(*args, base_url=url) if args[0] == "resume" else cli(*args)
        assert code == 0, (args, err)
    code, out, _ = cli("status")
    assert out.splitlines()[0].endswith("; no account of it can send now (see below)")
    assert out.splitlines()[1].startswith("account acc_1: blocked by the API, held until ")
    code, out, _ = cli("hold", "list")
    assert code == 0 and out.startswith("acc_1: held until ") and "blocked by the API" in out
    assert "hold list" not in out
    assert cli("hold", "clear", "acc_1") == (0, "acc_1: hold cleared\n", "")
    assert cli("hold", "clear", "acc_1") == (
        2,
        "",
        'error: account acc_1 is not held (see `campaign-runner hold list`; the key\'s default account is "")\n',
    )
    assert cli("hold", "list")[1] == "no account is held\n"
    code, out, _ = cli("resume", base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 3 sent"
    assert sorted(d.recipient for d in box.log) == [urn(i) for i in range(3)]


ABSURD_TIMES = [
    pytest.param(FAR_FUTURE, None, id="far-future-holdUntil"),
    pytest.param("1970-01-01T00:00:00Z", None, id="far-past-holdUntil"),
    pytest.param(253402300799, None, id="far-future-epoch-number"),
    pytest.param(1e300, None, id="huge-number"),
    pytest.param(-5, None, id="negative-number"),
    pytest.param("soon", "later", id="garbage-both"),
    pytest.param(None, "99999-01-01T00:00:00Z", id="reset-past-year-9999"),
    pytest.param(None, "0001-01-01T00:00:00+01:00", id="reset-before-year-1"),
    pytest.param(None, "1e400", id="reset-infinite-number"),
    pytest.param({"nested": [1]}, "253402300799000", id="object-and-epoch-ms"),
]


@pytest.mark.parametrize(("hold_until", "reset"), ABSURD_TIMES)
def test_absurd_times_in_a_429_never_crash_a_command_nor_get_stored(
    cli, serve_sandbox, tmp_path: Path, hold_until, reset
) -> None:
    body = {**LIMITED} if hold_until is None else {**LIMITED, "holdUntil": hold_until}
    headers = {
        "X-RateLimit-Action": "MESSAGE",
        "X-RateLimit-Limit": "150",
        "X-RateLimit-Used": "150",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": reset or "",
    }
    box, url = serve_sandbox(scripted=[Scripted(429, body, headers)])
    start = time.time()
    code, _, err = cli("run", str(campaign(tmp_path, 2)), "--no-wait", base_url=url)
    assert code in (0, 1), err
    for hold, server_reset, _ in stored_holds(cli.db):
        assert hold <= time.time() + MAX_HOLD
        assert server_reset is None or server_reset <= time.time() + MAX_HOLD
        assert hold >= start + MIN_HOLD  # never straight back after a 429, whatever it said
    for args in (("status",), ("status", "--json"), ("hold", "list"), ("report", "test-campaign")):
        code, _, err = cli(*args)
        assert code == 0, (args, err)
    cli("hold", "clear", "acc_1")
    code, out, _ = cli("resume", base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 2 sent"


def test_no_request_goes_out_within_a_second_of_a_429_that_says_come_back_now(
    cli, serve_sandbox, tmp_path: Path
) -> None:
    box, url = serve_sandbox(scripted=[Scripted(429, {**LIMITED, "holdUntil": "2000-01-01T00:00:00Z"})])
    code, out, _ = cli("run", str(write_campaign(tmp_path, recipients=[{"profile_urn": urn(0)}])), base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 1 sent"
    refused, sent = box.sends
    assert (refused.status, sent.status) == (429, 200)
    assert sent.at - refused.at >= MIN_HOLD


# --- the class: any value in any of these places, through the policy and the store ---------------

JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from([FAR_FUTURE, "0001-01-01T00:00:00Z", "2026-11-27T10:00:00", "1700000000", "1e999"]),
    st.lists(st.integers(), max_size=2),
)
HEADER_TEXT = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.sampled_from(["9999-12-31T23:59:59Z", "-1", "99999999999999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)
T0 = 1_800_000_000.0
WEEKS = itertools.count()


@pytest.fixture(scope="module")
def scheduled_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("absurd")
    path = write_campaign(
        folder,
        accounts=[{"id": "acc_1", "hours": "22:00-06:00", "timezone": "Pacific/Kiritimati", "days": ["mon", "fri"]}],
        warmup={"start": 5, "increase": 5},
        recipients=[{"profile_urn": urn(i)} for i in range(3)],
    )
    store = Store._open(folder / "absurd.db", T0, False)
    store._load([load_campaign(path)], T0)
    yield store
    store._conn.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    status=st.sampled_from([200, 403, 429, 500]),
    hold_until=JSON_VALUES,
    headers=st.dictionaries(
        st.sampled_from(["X-RateLimit-Reset", "X-RateLimit-Remaining", "X-RateLimit-Limit", "Date"]), HEADER_TEXT
    ),
    success=st.sampled_from([True, False, None, "yes"]),
    error=st.one_of(st.none(), st.text(max_size=30), st.just("x" * 100_000)),
)
def test_any_times_and_counts_are_bounded_before_they_are_stored(
    scheduled_store: Store, status, hold_until, headers, success, error
) -> None:
    store = scheduled_store
    body = {"success": success, "error": error, "holdUntil": hold_until}
    response = httpx.Response(
        status,
        content=json.dumps(body, allow_nan=True).encode(),
        headers=headers,
        request=httpx.Request("POST", "http://api.test/linkedin/messaging/send-group"),
    )
    outcome = classify(response)
    assert outcome.error is None or len(outcome.error) < 1000
    now = T0 + 3600 + 7 * 86400 * next(WEEKS)  # a Friday 23:00 in Kiritimati, inside the window, each example
    hold = hold_for(outcome, now)
    if hold is not None:
        assert now + MIN_HOLD <= hold.until <= now + MAX_HOLD
    server_reset = reset_at(outcome, now)
    assert server_reset is None or (math.isfinite(server_reset) and server_reset <= now + MAX_HOLD)

    with store._transaction() as db:  # a recipient to answer for, claimed as the scheduler would
        db.execute("UPDATE recipients SET status = 'pending'")
        db.execute("UPDATE accounts SET hold_until = 0, server_remaining = NULL")
    claim = store._claim(1, "acc_1", ["test-campaign"], now)
    assert isinstance(claim, Claimed)
    settled = settle(claim, outcome, Judgement(), started=now - 0.1, now=now, draw=lambda low, high: low)
    assert settled.held == hold and settled.server_reset == server_reset
    store._record(claim, settled)
    with store._snapshot():
        stored = store._all("SELECT hold_until, server_reset, server_remaining FROM accounts")
    for held, reset, remaining in stored:
        assert held <= now + MAX_HOLD and (reset is None or reset <= now + MAX_HOLD)
        assert remaining is None or 0 <= remaining <= 10**9
    pacing = store._pacing(["acc_1"], ["test-campaign"], now)["acc_1"]
    status_now = store._account_status("acc_1", pacing, now)
    assert decide(pacing, store._account_state("acc_1", pacing, now), now).at >= now
    assert status_now.next_at < 253402300799


# --- a 200 is a send only when it is the API's own success answer -------------------------------


@pytest.mark.parametrize(
    ("scripted", "status", "error"),
    [
        pytest.param(
            Scripted(200, "<html><title>Sign in to the network</title></html>", deliver=False),
            "unknown",
            "HTTP 200 that is not the API's answer (it began: <html><title>Sign in to the network</title></html>);"
            " the message may have been sent",
            id="captive-portal",
        ),
        pytest.param(
            Scripted(200, {"ok": 1}),
            "unknown",
            'HTTP 200 that is not the API\'s answer (it began: {"ok": 1}); the message may have been sent',
            id="other-json",
        ),
        pytest.param(
            Scripted(200, {"success": False, "message": "Request failed with status code 403"}),
            "failed",
            "Request failed with status code 403 (answered as HTTP 200 with success: false)",
            id="success-false-403",
        ),
        pytest.param(
            Scripted(200, {"success": False, "error": "something odd"}),
            "unknown",
            "HTTP 200 with success: false (something odd); the message may have been sent",
            id="success-false-unnamed",
        ),
    ],
)
def test_a_200_that_is_not_the_apis_success_is_not_sent(cli, serve_sandbox, tmp_path, scripted, status, error) -> None:
    box, url = serve_sandbox(scripted=[scripted])
    code, out, _ = cli("run", str(write_campaign(tmp_path, recipients=[{"profile_urn": urn(0)}])), base_url=url)
    assert code == 0
    row = by_urn(report(cli))[urn(0)]
    assert (row["status"], row["error"]) == (status, error)
    assert box.log == []


def test_a_200_with_success_false_naming_500_is_retried(cli, serve_sandbox, tmp_path) -> None:
    box, url = serve_sandbox(scripted=[Scripted(200, {"success": False, "error": "upstream status code 500"})])
    code, out, _ = cli("run", str(write_campaign(tmp_path, recipients=[{"profile_urn": urn(0)}])), base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 1 sent"
    assert [r.status for r in box.sends] == [200, 200] and len(box.log) == 1


def test_a_portal_share_in_the_sandbox_marks_nobody_sent_who_was_not(cli, serve_sandbox, tmp_path) -> None:
    box, url = serve_sandbox(portal_rate=0.5, seed=os.getpid())
    code, _, _ = cli("run", str(write_campaign(tmp_path)), base_url=url)
    assert code == 0
    rows = report(cli)["recipients"]
    delivered = {d.recipient for d in box.log}
    assert {r["profile_urn"] for r in rows if r["status"] == "sent"} == delivered
    assert {r["status"] for r in rows} <= {"sent", "unknown"}
