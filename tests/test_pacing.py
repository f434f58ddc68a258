"""Agreement with the server and the API key's own limit, on a virtual clock and over real HTTP;
and `plan` against a real run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_schedule import send

from campaign_runner.clock import VirtualClock, iso
from campaign_runner.config import load_campaign
from campaign_runner.limiter import hold_for, reset_at
from campaign_runner.outcome import Kind, Outcome, RateLimitHeaders
from campaign_runner.sandbox import Sandbox, SandboxConfig
from campaign_runner.store import Store

from conftest import API_KEY, max_in_window, urn, write_campaign

START = 1_800_000_000.0


def recipients(n: int) -> list[dict[str, str]]:
    return [{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(n)]


class FirstHeadersOnly:
    """The sandbox, but only its first answer carries X-RateLimit-* headers: from then on the
    runner has nothing but what it adopted from that one to go by."""

    def __init__(self, app: Sandbox):
        self.app = app
        self.answers = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def strip(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and scope.get("path", "").startswith("/linkedin/messaging"):
                self.answers += 1
                if self.answers > 1:
                    message["headers"] = [(k, v) for k, v in message["headers"] if not k.startswith(b"X-RateLimit")]
            await send(message)

        await self.app(scope, receive, strip)


@pytest.mark.anyio
async def test_a_lower_remaining_from_the_server_is_adopted_until_its_reset(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    box = Sandbox(SandboxConfig(api_key=API_KEY, quota=10, quota_window=60.0), clock)
    # Another tool (or a person) used 7 of the account's 10 in this window.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box), base_url="http://s/linkedin/",
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as other:  # fmt: skip
        for i in range(7):
            body = {"recipientProfileUrn": urn(100 + i), "groupId": "1", "message": "hi", "accountId": "acc_1"}
            assert (await other.post("messaging/send-group", json=body)).status_code == 200
    app = FirstHeadersOnly(box)
    path = write_campaign(tmp_path, limit="100/1m", recipients=recipients(6))
    store = await Store.open(tmp_path / "agree.db", START)
    try:
        await store.load([load_campaign(path)], START)
        assert await send(store, clock, app, seed=1) == "done"  # type: ignore[arg-type]
    finally:
        await store.close()
    ours = [r for r in box.requests if r.recipient in {urn(i) for i in range(6)}]
    assert [r.status for r in ours] == [200] * 6  # never a 429, though only the first answer said anything
    # The first answer said 2 remain until the window resets (the other tool's first message + 60 s):
    # the runner sent 2 more, then waited for the reset although its own limit allowed 100.
    reset = box.log[0].delivered_at + 60.0
    assert sum(r.at < reset for r in ours) == 3
    assert min(r.at for r in ours[3:]) >= reset


def test_reset_times_are_read_on_our_clock() -> None:
    now = START
    behind = RateLimitHeaders(remaining="0", reset=iso(now - 300 + 30), date=_http_date(now - 300))
    ahead = RateLimitHeaders(remaining="0", reset=iso(now + 600 + 30), date=_http_date(now + 600))
    for headers in (behind, ahead):
        outcome = Outcome(Kind.SENT, 200, rate_limit=headers)
        # The server's clock is 5 minutes behind, or 10 minutes ahead: its reset is 30 s away either way.
        assert reset_at(outcome, now) == pytest.approx(now + 30, abs=1)
        assert hold_for(outcome, now).until == pytest.approx(now + 30, abs=1)
    limited = Outcome(Kind.RATE_LIMITED, 429, rate_limit=RateLimitHeaders(reset="soon"))
    assert hold_for(limited, now).until == now + 3600  # no usable reset: a conservative hour


def _http_date(epoch: float) -> str:
    from email.utils import formatdate

    return formatdate(epoch, usegmt=True)


@pytest.mark.anyio
async def test_the_api_keys_limit_holds_over_50_accounts_and_each_gets_its_turn(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    box = Sandbox(SandboxConfig(api_key=API_KEY, quota=10**6, quota_window=1.0), clock)
    accounts = [f"acc_{i:02d}" for i in range(50)]
    path = write_campaign(tmp_path, accounts=accounts, limit="1000/1s", api_limit="10/2s", recipients=recipients(100))
    store = await Store.open(tmp_path / "key.db", START)
    try:
        await store.load([load_campaign(path)], START)
        assert await send(store, clock, box, seed=2) == "done"
    finally:
        await store.close()
    times = [r.at for r in box.requests]
    assert len(times) == 100
    assert max_in_window(times, 2.0) <= 10
    assert max(times) - min(times) >= 18  # 100 requests at 10 per 2 s
    order = [r.account_id for r in box.requests]
    assert Counter(order) == dict.fromkeys(accounts, 2)  # nobody starved, nobody hogged
    assert set(order[:50]) == set(accounts)  # each account had its first turn before any had a second


def test_plan_predicts_a_real_run_within_ten_percent(cli, serve_sandbox, tmp_path: Path) -> None:
    # Seconds between sends, so the real run's latency (a few ms each) stays well inside the 10%.
    path = write_campaign(tmp_path, accounts=["acc_1", "acc_2"], limit="1/1s", recipients=recipients(12))
    code, out, _ = cli("plan", str(path), "--json")
    assert code == 0
    forecast = json.loads(out)
    planned = _epoch(forecast["finish"]) - _epoch(forecast["start"])
    assert forecast["sent"] == 12
    assert sum(day["total"] for day in forecast["days"]) == 12
    box, url = serve_sandbox()
    assert cli("run", str(path), base_url=url)[0] == 0
    first = min(r.at for r in box.requests)
    real = max(r.at for r in box.requests) - first
    assert planned == pytest.approx(real, rel=0.10)


def test_plan_writes_nothing_and_starts_from_the_databases_state(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox()
    path = write_campaign(tmp_path, limit="1000/1s", recipients=recipients(5))
    assert cli("run", str(path), base_url=url)[0] == 0
    db = tmp_path / "runs.db"
    before = db.read_bytes()
    path = write_campaign(tmp_path, limit="1/1h", recipients=recipients(8))
    code, out, err = cli("plan", str(path), "--start", "2027-03-01T09:00")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "plan for test-campaign: 3 recipients to send over 1 account, from 2027-03-01 09:00 UTC (UTC)"
    assert lines[1:] == [
        "date        day  acc_1  total",
        "2027-03-01  Mon      3      3",
        "projected finish: 2027-03-01 11:00 UTC, after 1 sending day (3 sent)",
    ]
    assert db.read_bytes() == before
    assert len(box.log) == 5


def _epoch(text: str) -> float:
    from campaign_runner.clock import parse_iso

    value = parse_iso(text)
    assert value is not None
    return value


def test_api_limit_on_the_command_line_overrides_the_files(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox()
    path = write_campaign(tmp_path, accounts=["acc_1", "acc_2", "acc_3"], limit="1000/1s", recipients=recipients(6))
    code, out, _ = cli("run", str(path), "--api-limit", "2/1s", base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 6 sent"
    times = [r.at for r in box.requests]
    assert max_in_window(times, 1.0) <= 2
    assert max(times) - min(times) >= 2.0  # six requests, two a second


def test_plan_of_an_older_database_writes_nothing_to_it(cli, tmp_path: Path) -> None:
    import contextlib
    import sqlite3

    from campaign_runner.migrate import discover, migrate

    db = tmp_path / "runs.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        migrate(conn, 1.0, discover()[:1])  # a database of the first schema
    before = db.read_bytes()
    code, out, _ = cli("plan", str(write_campaign(tmp_path, recipients=recipients(3))))
    assert code == 0 and "projected finish" in out
    assert db.read_bytes() == before


def test_a_plan_whose_schedules_never_meet_ends_and_says_so(cli, tmp_path: Path) -> None:
    # An unfinished campaign sends from acc_1 only 09:00-10:00; the new one only 13:00-14:00.
    morning = write_campaign(tmp_path, "a.yaml", name="morning", schedule={"hours": "09:00-10:00"},
                             recipients=recipients(3))  # fmt: skip
    assert cli("run", str(morning), "--sandbox", "--no-wait")[0] == 0
    afternoon = write_campaign(tmp_path, "b.yaml", name="afternoon", schedule={"hours": "13:00-14:00"},
                               recipients=recipients(3))  # fmt: skip
    code, out, err = cli("plan", str(afternoon))
    assert code == 0
    assert "3 recipients are still unsent two years ahead" in err


@pytest.mark.parametrize("warmup", [None, {"start": 3, "increase": 2}])
def test_a_long_plan_repeats_its_settled_week_exactly_as_the_full_simulation_runs(tmp_path: Path, warmup) -> None:
    """Once two weeks send alike day by day, `plan` repeats the last one instead of simulating the
    rest; what it predicts is what the full simulation predicts, day by day and to the second."""
    import anyio

    from campaign_runner.clock import parse_iso
    from campaign_runner.plan import make_plan

    path = write_campaign(
        tmp_path, accounts=["acc_1", {"id": "acc_2", "limit": "7/day"}], limit="10/day", recipients=recipients(600),
        schedule={"hours": "09:00-17:00", "days": ["mon", "tue", "wed", "thu", "fri"], "timezone": "Europe/Berlin"},
        warmup=warmup,
    )  # fmt: skip
    campaign = load_campaign(path)
    start = parse_iso("2027-03-03T10:30:00+01:00")  # a Wednesday, mid-window: a partial first day
    quick = anyio.run(make_plan, campaign, start, None, True)
    full = anyio.run(make_plan, campaign, start, None, False)
    assert quick.settled_from is not None and full.settled_from is None
    assert (quick.per_day, quick.sent, quick.result) == (full.per_day, full.sent, full.result)
    assert quick.finish == pytest.approx(full.finish, abs=1.0)  # across a daylight-saving change, too
