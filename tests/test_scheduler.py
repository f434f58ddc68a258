"""Days of sending in seconds: the real scheduler, store (each engine) and sandbox on a virtual clock."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from campaign_runner import events
from campaign_runner.client import ApiClient
from campaign_runner.clock import VirtualClock
from campaign_runner.config import load_campaign
from campaign_runner.sandbox import Sandbox, SandboxConfig
from campaign_runner.scheduler import Scheduler
from campaign_runner.store import Store

from conftest import API_KEY, max_in_window, run_campaigns, urn, write_campaign

pytestmark = pytest.mark.anyio

START = 1_800_000_000.0  # a Friday in January 2027, UTC
DAY = 86400.0


async def test_150_a_day_for_days_across_a_restart(tmp_path: Path, database: str) -> None:
    clock = VirtualClock(START)
    box = Sandbox(SandboxConfig(api_key=API_KEY, quota=150, quota_window=DAY), clock)
    path = write_campaign(tmp_path, accounts=["acc_1", "acc_2"], limit="150/day",
                          recipients=[{"profile_urn": urn(i)} for i in range(700)])  # fmt: skip
    store = await Store.open(database, clock.now())
    try:
        await store.load([load_campaign(path)], clock.now())
        result, _ = await run_campaigns(store, clock, box, stop_after=250)
        assert result.reason == "interrupted"
    finally:
        await store.close()
    # A new process some hours later: only the database remembers.
    clock = VirtualClock(clock.now() + 3 * 3600)
    box.clock = clock
    store = await Store.open(database, clock.now())
    try:
        result, seen = await run_campaigns(store, clock, box)
        assert result.reason == "done"
        assert (await store.counts("test-campaign"))["sent"] == 700
    finally:
        await store.close()

    assert sorted(d.recipient for d in box.log) == sorted(urn(i) for i in range(700))
    assert all(r.status == 200 for r in box.sends)  # the server never had to say 429
    for account in ("acc_1", "acc_2"):
        times = sorted(d.delivered_at for d in box.log if d.account_id == account)
        assert max_in_window(times, DAY) == 150
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert min(gaps) >= DAY / 150 - 0.01  # spread out, never bunched at the start of a day
    # 350 messages per account at one every 9.6 minutes, plus the three-hour break.
    elapsed = max(d.delivered_at for d in box.log) - START
    assert elapsed == pytest.approx(349 * DAY / 150 + 3 * 3600, rel=0.02)


async def test_output_that_fails_never_stops_sending(tmp_path: Path, database: str) -> None:
    """A closed pipe under `run | head` must not cancel requests in flight into `unknown`."""
    clock = VirtualClock(START)
    box = Sandbox(SandboxConfig(api_key=API_KEY), clock)
    path = write_campaign(tmp_path, accounts=["acc_1", "acc_2"], limit="10/1m",
                          recipients=[{"profile_urn": urn(i)} for i in range(20)])  # fmt: skip
    store = await Store.open(database, clock.now())
    try:
        await store.load([load_campaign(path)], clock.now())
        campaigns = [await store.campaign("test-campaign")]
        calls = 0

        def broken(event: events.Event) -> None:
            nonlocal calls
            calls += 1
            raise BrokenPipeError(32, "Broken pipe")

        transport = httpx.ASGITransport(app=box)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox/linkedin/", headers=headers) as http:
            api = ApiClient(http, 60.0)
            async with Scheduler.begun(
                store, api, clock, command="test", deadline=60.0, campaigns=campaigns, emit=broken
            ) as scheduler:
                result = await scheduler.run()
        assert result.reason == "done"
        assert isinstance(scheduler.output_error, BrokenPipeError)
        assert calls == 1  # switched off after the first failure
        assert (await store.counts("test-campaign"))["sent"] == 20
    finally:
        await store.close()


async def test_what_a_request_carries_is_read_with_its_claim_not_cached_at_start(tmp_path: Path, database: str) -> None:
    """Another process loads the campaign with --accept-changes while this one runs: the very next
    request goes to the new group, through the new endpoint, with the new message, and its answer
    is judged by the new retry policy."""
    clock = VirtualClock(START)
    box = Sandbox(SandboxConfig(api_key=API_KEY, fail_500={urn(3): 5}), clock)
    fields = {"limit": "1/1s", "recipients": [{"profile_urn": urn(i)} for i in range(4)]}
    path = write_campaign(tmp_path, **fields)
    store = await Store.open(database, START)
    changed = write_campaign(
        tmp_path, "changed.yaml", group_id="99999", endpoint="send-group-with-ack", message="New text",
        retry={"attempts": 1, "backoff": "50ms"}, **fields,
    )  # fmt: skip
    other = Store._open(store.target, START, False)  # another process's connection to the same file

    def reload_after_first_send(event: events.Event) -> None:
        if isinstance(event, events.Attempted) and event.profile_urn == urn(0):
            other._load([load_campaign(changed)], clock.now(), True)

    try:
        await store.load([load_campaign(path)], START)
        result, _ = await run_campaigns(store, clock, box, emit=reload_after_first_send)
        assert result.reason == "done"
        counts = await store.counts("test-campaign")
    finally:
        other._conn.close()
        await store.close()
    sent = [(d.recipient, d.group_id, d.endpoint, d.message) for d in box.log]
    assert sent == [
        (urn(0), "12345678", "send-group", "Hi there!"),
        (urn(1), "99999", "send-group-with-ack", "New text"),
        (urn(2), "99999", "send-group-with-ack", "New text"),
    ]
    # One attempt now, not the three the run started with: the 500 failed it at once.
    assert [r.status for r in box.sends if r.recipient == urn(3)] == [500]
    assert (counts["sent"], counts["failed"]) == (3, 1)
