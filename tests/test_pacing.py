"""Agreement with the server and the API key's own limit, on a virtual clock and over real HTTP."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from campaign_runner.clock import VirtualClock, iso
from campaign_runner.config import load_campaign
from campaign_runner.limiter import hold_for, reset_at
from campaign_runner.outcome import Kind, Outcome, RateLimitHeaders
from campaign_runner.sandbox import Sandbox, SandboxConfig
from campaign_runner.store import Store

from conftest import API_KEY, max_in_window, run_campaigns, urn, write_campaign

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
        assert (await run_campaigns(store, clock, app, seed=1))[0].reason == "done"  # type: ignore[arg-type]
    finally:
        await store.close()
    ours = [r for r in box.sends if r.recipient in {urn(i) for i in range(6)}]
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
        assert (await run_campaigns(store, clock, box, seed=2))[0].reason == "done"
    finally:
        await store.close()
    times = [r.at for r in box.sends]
    assert len(times) == 100
    assert max_in_window(times, 2.0) <= 10
    assert max(times) - min(times) >= 18  # 100 requests at 10 per 2 s
    order = [r.account_id for r in box.sends]
    assert Counter(order) == dict.fromkeys(accounts, 2)  # nobody starved, nobody hogged
    assert set(order[:50]) == set(accounts)  # each account had its first turn before any had a second


def test_api_limit_on_the_command_line_overrides_the_files(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox()
    path = write_campaign(tmp_path, accounts=["acc_1", "acc_2", "acc_3"], limit="1000/1s", recipients=recipients(6))
    code, out, _ = cli("run", str(path), "--api-limit", "2/1s", base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 6 sent"
    times = [r.at for r in box.sends]
    assert max_in_window(times, 1.0) <= 2
    assert max(times) - min(times) >= 2.0  # six requests, two a second
