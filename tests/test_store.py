"""The store's transactions on a real database of each engine (a SQLite file, a PostgreSQL server),
with explicit times."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from campaign_runner.config import load_campaign
from campaign_runner.errors import RunTakenError
from campaign_runner.guard import Judgement, Refused
from campaign_runner.outcome import Kind, Outcome
from campaign_runner.policy import settle
from campaign_runner.settings import CampaignSettings
from campaign_runner.store import DIED_IN_FLIGHT, Claimed, Drained, Store, Waiting

from conftest import LIMIT_TEXTS, parsed_or_none, query, urn, write_campaign

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0


@pytest.fixture
async def store(tmp_path: Path, database: str):
    store = await Store.open(database, T0)
    path = write_campaign(tmp_path, limit="10/1s", recipients=[{"profile_urn": urn(i)} for i in range(3)])
    await store.load([load_campaign(path)], T0)
    yield store
    await store.close()


async def run_of(store: Store, pid: int, host: str, started: float = T0) -> int:
    """A run of another process, written as that process would: through its own connection."""
    [(run_id,)] = query(
        store.target.text,
        "INSERT INTO runs (pid, pid_start, host, command, stale_after, started_at)"
        " VALUES (?, NULL, ?, 'test', 120, ?) RETURNING id",
        (pid, host, started),
    )
    return int(run_id)


async def claim(store: Store, run_id: int, now: float = T0) -> Claimed:
    decision = await store.claim(run_id, "acc_1", ["test-campaign"], now)
    assert isinstance(decision, Claimed)
    return decision


async def record(store: Store, claimed: Claimed, outcome: Outcome, at: float, judged: Judgement | None = None) -> str:
    """Settle `outcome` as the scheduler would (the backoff without jitter) and record it."""
    settled = settle(claimed, outcome, judged or Judgement(), started=at, now=at, draw=lambda low, high: low)
    return await store.record(claimed, settled)


async def status(store: Store, profile: str) -> str:
    async with contextlib.aclosing(store.report_rows("test-campaign")) as rows:
        async for row in rows:
            if row.profile_urn == profile:
                return row.status
    raise AssertionError(profile)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


async def test_claims_of_a_dead_process_become_unknown(store: Store) -> None:
    gone = await claim(store, await run_of(store, dead_pid(), socket.gethostname()))
    live = await claim(store, await run_of(store, os.getppid(), socket.gethostname()), T0 + 1)
    ours = await store.begin_run("test", T0 + 2, 60)
    lost = await store.recover(ours, T0 + 3)
    assert [(r.profile_urn, r.account_id) for r in lost] == [(gone.profile_urn, "acc_1")]
    assert await status(store, gone.profile_urn) == "unknown"
    # A live process's claim is left alone, however old: it will record its answer itself.
    assert await store.recover(ours, T0 + 10_000) == []
    assert await status(store, live.profile_urn) == "in_flight"


async def test_an_earlier_run_with_our_own_pid_is_dead(store: Store) -> None:
    old = await claim(store, await run_of(store, os.getpid(), socket.gethostname()))
    ours = await store.begin_run("test", T0 + 1, 60)
    assert [r.profile_urn for r in await store.recover(ours, T0 + 2)] == [old.profile_urn]


async def test_claims_from_another_host_are_given_up_only_when_stale(store: Store) -> None:
    remote = await claim(store, await run_of(store, 4242, "another-host"))
    ours = await store.begin_run("test", T0 + 1, 60)
    assert await store.recover(ours, T0 + 100) == []
    assert [r.profile_urn for r in await store.recover(ours, T0 + 121)] == [remote.profile_urn]


async def test_a_run_whose_lease_lapsed_is_taken_and_stops_claiming(store: Store, monkeypatch) -> None:
    monkeypatch.setenv("CAMPAIGN_RUNNER_HOST", "host-a")
    theirs = await store.begin_run("test", T0, 60, heartbeat=1)  # a lease of 63 s
    claimed = await claim(store, theirs)
    assert await store.renew(theirs, T0 + 30)  # alive: its lease now lasts until T0 + 93
    monkeypatch.setenv("CAMPAIGN_RUNNER_HOST", "host-b")
    ours = await store.begin_run("test", T0 + 31, 60)
    assert await store.recover(ours, T0 + 92) == []
    assert [r.profile_urn for r in await store.recover(ours, T0 + 94)] == [claimed.profile_urn]
    assert query(store.target.text, "SELECT taken_by FROM runs WHERE id = ?", (theirs,)) == [("host-b",)]
    # The run that was cut off (paused, or away from the database) finds out, and sends no more.
    monkeypatch.setenv("CAMPAIGN_RUNNER_HOST", "host-a")
    assert not await store.renew(theirs, T0 + 95)
    with pytest.raises(RunTakenError, match="another runner took this run's claims"):
        await store.claim(theirs, "acc_1", ["test-campaign"], T0 + 96)
    assert isinstance(await store.claim(ours, "acc_1", ["test-campaign"], T0 + 96), Claimed)


async def test_a_late_answer_replaces_the_unknown_of_a_recovery(store: Store) -> None:
    slow = await claim(store, await run_of(store, 4242, "another-host"))
    ours = await store.begin_run("test", T0 + 1, 60)
    await store.recover(ours, T0 + 200)
    assert await status(store, slow.profile_urn) == "unknown"
    result = await record(store, slow, Outcome(Kind.SENT, http_status=200), T0 + 201)
    assert result == "sent"


async def test_a_late_answer_never_overwrites_a_retry(store: Store) -> None:
    slow = await claim(store, await run_of(store, 4242, "another-host"))
    ours = await store.begin_run("test", T0 + 1, 60)
    await store.recover(ours, T0 + 200)
    assert await store.retry("test-campaign", ["unknown"], [], T0 + 201) == 1
    again = await claim(store, ours, T0 + 202)
    assert again.recipient_id == slow.recipient_id
    result = await record(store, slow, Outcome(Kind.REJECTED, http_status=403), T0 + 203)
    assert result == "in_flight"  # the new claim still holds it


async def test_a_late_answer_never_overwrites_a_later_claims_unknown(store: Store) -> None:
    slow = await claim(store, await run_of(store, 4242, "another-host"))
    ours = await store.begin_run("test", T0 + 1, 60)
    await store.recover(ours, T0 + 200)
    assert await store.retry("test-campaign", ["unknown"], [], T0 + 201) == 1
    # Another run claims it again, and that run is lost too: its claim becomes `unknown` in turn.
    again = await claim(store, await run_of(store, 4343, "yet-another-host", T0 + 202), T0 + 202)
    assert again.recipient_id == slow.recipient_id
    await store.recover(ours, T0 + 400)
    # The first run's late 500 must not hand the recipient back: the second request may have landed.
    result = await record(store, slow, Outcome(Kind.SERVER_ERROR, http_status=500), T0 + 401)
    assert result == "unknown"


async def test_release_undoes_a_claim(store: Store) -> None:
    run = await store.begin_run("test", T0, 60)
    claimed = await claim(store, run)
    await store.release(claimed, T0 + 0.1)
    again = await claim(store, run, T0 + 1)
    assert (again.recipient_id, again.attempt) == (claimed.recipient_id, 1)


async def test_a_stricter_campaign_loaded_later_binds_claims_at_once(store: Store, tmp_path: Path) -> None:
    run = await store.begin_run("test", T0, 60)
    first = await claim(store, run)
    await record(store, first, Outcome(Kind.SENT, http_status=200), T0 + 0.01)
    # Another process loads a campaign with a stricter limit on the same account.
    strict = write_campaign(tmp_path, "strict.yaml", name="strict", limit="1/1h", recipients=[{"profile_urn": urn(9)}])
    await store.load([load_campaign(strict)], T0 + 0.02)
    decision = await store.claim(run, "acc_1", ["test-campaign"], T0 + 0.5)
    assert isinstance(decision, Waiting)
    assert decision.until == pytest.approx(T0 + 0.01 + 3600, abs=0.01)


async def test_an_account_removed_from_the_file_has_nothing_to_send(store: Store, tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path, accounts=["acc_2"], limit="10/1s", recipients=[{"profile_urn": urn(i)} for i in range(3)]
    )
    await store.load([load_campaign(path)], T0)
    run = await store.begin_run("test", T0, 60)
    assert isinstance(await store.claim(run, "acc_1", ["test-campaign"], T0), Drained)


async def test_a_refused_change_in_a_second_file_loads_nothing(store: Store, tmp_path: Path) -> None:
    run = await store.begin_run("test", T0, 60)
    await claim(store, run)
    other = write_campaign(tmp_path, "other.yaml", name="other", recipients=[{"profile_urn": urn(5)}])
    changed = write_campaign(tmp_path, "changed.yaml", message="Different", limit="10/1s",
                             recipients=[{"profile_urn": urn(i)} for i in range(3)])  # fmt: skip
    with pytest.raises(Exception, match="already sent messages"):
        await store.load([load_campaign(other), load_campaign(changed)], T0 + 1)
    assert await store.campaign_names() == ["test-campaign"]


def test_recovery_reason_is_stable() -> None:
    # record() recognises a recovery's unknown by this text: changing it is a migration.
    assert DIED_IN_FLIGHT == "the process stopped while the request was in flight; it may have been delivered"


# --- every setting reads back from the database as it was loaded -----------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=LIMIT_TEXTS,
    account_limit=LIMIT_TEXTS,
    api=st.lists(LIMIT_TEXTS, min_size=1, max_size=3),
    backoff=st.sampled_from(["50ms", "2s", "1.5m", 0.25]),
    delay=st.sampled_from([None, "45s-180s", "0.5s"]),
)
def test_every_setting_round_trips_through_the_database(
    tmp_path: Path, database: str, limit, account_limit, api, backoff, delay
):
    assume(all(parsed_or_none(text) for text in [limit, account_limit, *api]))
    other = {"id": "acc_2", "limit": account_limit, "hours": "09:00-17:00", "timezone": "Asia/Kolkata"}
    path = write_campaign(
        tmp_path,
        limit=limit,
        api_limit=", ".join(api),
        retry={"attempts": 4, "backoff": backoff},
        accounts=["acc_1", other],
        schedule={"delay": delay} if delay else None,
        warmup={"start": 5, "increase": 2},
        breaker={"failures": 4, "cooldown": "1.5s", "pauses": 1, "forbidden": 7},
    )
    loaded = load_campaign(path)
    store = Store._open(database, T0, True)
    try:
        store._load([loaded], T0)
        read = store._campaign(loaded.name)
    finally:
        store._conn.close()
    for field in dataclasses.fields(CampaignSettings):
        assert getattr(read, field.name) == getattr(loaded, field.name), field.name


# --- a recipient removed from the file is never sent, whatever state it was in --------------------


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(Kind.RATE_LIMITED, http_status=429, error="Rate limit exceeded"),
        Outcome(Kind.SERVER_ERROR, http_status=500, error="Internal server error"),
        Outcome(Kind.NOT_SENT, error="no connection"),
        Outcome(Kind.UNAUTHORIZED, http_status=401, error="Unauthorized"),
        Outcome(Kind.MISROUTED, http_status=404, error="Not found"),
        None,  # the run was stopped between the claim and its request: the claim is released
    ],
    ids=["429", "500", "refused", "401", "404", "released"],
)
async def test_a_recipient_removed_while_in_flight_is_skipped_when_handed_back(
    store: Store, tmp_path: Path, outcome: Outcome | None
) -> None:
    run = await store.begin_run("test", T0, 60)
    claimed = await claim(store, run)
    # Another process loads the file without it while its request is on the wire.
    rest = write_campaign(tmp_path, "rest.yaml", limit="10/1s", recipients=[{"profile_urn": urn(i)} for i in (1, 2)])
    await store.load([load_campaign(rest)], T0 + 0.01)
    if outcome is None:
        await store.release(claimed, T0 + 0.02)
    else:
        status = await record(store, claimed, outcome, T0 + 0.02)
        assert status == "skipped"
    assert await status_of(store, claimed.profile_urn) == ("skipped", "removed from the campaign file")
    later = T0 + 7200
    claimed_next = [await claim(store, run, later + i) for i in range(2)]
    assert {c.profile_urn for c in claimed_next} == {urn(1), urn(2)}
    assert isinstance(await store.claim(run, "acc_1", ["test-campaign"], later + 5), Waiting | Drained)
    # Back in the file, it is pending again.
    await store.load([load_campaign(tmp_path / "campaign.yaml")], later + 6)
    assert await status_of(store, claimed.profile_urn) == ("pending", None)


async def test_retry_and_a_403_streak_never_put_back_a_removed_recipient(store: Store, tmp_path: Path) -> None:
    run = await store.begin_run("test", T0, 60)
    first, second = await claim(store, run), await claim(store, run, T0 + 1)
    refused = Outcome(Kind.REJECTED, http_status=403, error="Forbidden")
    await record(store, first, refused, T0 + 2)
    rest = write_campaign(tmp_path, "rest.yaml", limit="10/1s", recipients=[{"profile_urn": urn(2)}])
    await store.load([load_campaign(rest)], T0 + 3)
    # The 403 streak blames the account and puts its recipients back: not the one that left.
    streak = tuple(Refused(c.recipient_id, "test-campaign", 0) for c in (first, second))
    await record(store, second, refused, T0 + 4, Judgement(reason="a 403 streak", stop=True, put_back=streak))
    assert await status_of(store, first.profile_urn) == ("skipped", "removed from the campaign file")
    assert await status_of(store, second.profile_urn) == ("skipped", "removed from the campaign file")
    third = await claim(store, run, T0 + 5)
    await record(store, third, refused, T0 + 6)
    await store.load([load_campaign(tmp_path / "campaign.yaml")], T0 + 7)
    rest = write_campaign(tmp_path, "rest.yaml", limit="10/1s", recipients=[{"profile_urn": urn(0)}])
    await store.load([load_campaign(rest)], T0 + 8)
    assert await status_of(store, third.profile_urn) == ("failed", "Forbidden")
    assert await store.retry("test-campaign", ["failed"], [], T0 + 9) == 0  # it left the file: not revived


async def status_of(store: Store, profile: str) -> tuple[str, str | None]:
    async with contextlib.aclosing(store.report_rows("test-campaign")) as rows:
        async for row in rows:
            if row.profile_urn == profile:
                return row.status, row.error
    raise AssertionError(profile)


async def test_a_shorter_hold_never_replaces_the_reason_of_a_longer_one(store: Store) -> None:
    """The account keeps the longer hold, and with it the reason that goes with it (a block)."""
    run = await store.begin_run("test", T0, 60)
    first, second = await claim(store, run), await claim(store, run, T0 + 1)
    blocked = Outcome(Kind.RATE_LIMITED, http_status=429, error="Rate limit exceeded", hold_until=T0 + 10**8)
    await record(store, first, blocked, T0 + 2)
    short = Outcome(Kind.RATE_LIMITED, http_status=429, error="Slow down", hold_until=T0 + 60)
    await record(store, second, short, T0 + 3)
    [hold] = await store.holds(T0 + 4)
    assert hold.until == T0 + 2 + 7 * 86400
    assert hold.reason.startswith("blocked by the API")
