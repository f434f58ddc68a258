"""One memory of people across campaigns, and the do-not-contact list: nobody contacted twice by
two campaigns, nobody blocked ever sent after the block commits, across processes."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from campaign_runner.cli import run_cli
from campaign_runner.clock import VirtualClock
from campaign_runner.config import load_campaign
from campaign_runner.migrate import discover, migrate
from campaign_runner.sandbox import Sandbox, SandboxConfig
from campaign_runner.sandbox_reads import urn_of
from campaign_runner.store import Store

from conftest import API_KEY, run_campaigns, start, urn, wait_for, write_campaign

START = 1_800_000_000.0
DAY = 86400.0


def recipient_states(db: Path) -> dict[tuple[str, str], tuple[str, str | None]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT campaign, profile_urn, status, error FROM recipients").fetchall()
    return {(c, u): (s, e) for c, u, s, e in rows}


def test_two_campaigns_in_two_processes_never_both_message_one_person(serve_sandbox, processes, tmp_path) -> None:
    box, url = serve_sandbox(typing_delay=0.02)
    people = [{"profile_urn": urn(i)} for i in range(60)]
    first = write_campaign(tmp_path, "a.yaml", name="a", accounts=["acc_1"], limit="20/1s", recipients=people)
    second = write_campaign(tmp_path, "b.yaml", name="b", accounts=["acc_2"], limit="20/1s", recipients=people[::-1])
    db, log = tmp_path / "shared.db", tmp_path / "runs.log"
    runs = [start(processes, ["run", str(path)], db, url, log) for path in (first, second)]
    assert [run.wait(60) for run in runs] == [0, 0], log.read_text()
    delivered = Counter(d.recipient for d in box.log)
    assert sorted(delivered) == sorted(p["profile_urn"] for p in people)  # everyone, once, by one campaign
    assert set(delivered.values()) == {1}
    final = recipient_states(db)
    for person in people:
        a, b = final[("a", person["profile_urn"])], final[("b", person["profile_urn"])]
        assert sorted((a[0], b[0])) == ["sent", "skipped"]
        skipped = a if a[0] == "skipped" else b
        assert skipped[1].startswith("already contacted by ")


def test_a_person_blocked_while_two_processes_run_is_never_sent_after_the_block_commits(
    serve_sandbox, processes, tmp_path
) -> None:
    box, url = serve_sandbox()
    people = [{"profile_urn": urn(i)} for i in range(40)]
    first = write_campaign(tmp_path, "a.yaml", name="a", accounts=["acc_1"], limit="4/1s", recipients=people,
                           recontact="always")  # fmt: skip
    second = write_campaign(tmp_path, "b.yaml", name="b", accounts=["acc_2"], limit="4/1s", recipients=people,
                            recontact="always")  # fmt: skip
    db, log = tmp_path / "shared.db", tmp_path / "runs.log"
    runs = [start(processes, ["run", str(path)], db, url, log) for path in (first, second)]
    wait_for(lambda: len(box.log) >= 6, 30)
    blocked = [urn(i) for i in range(30, 40)] + [urn(3)]  # mostly still to send; one sent already
    assert run_cli(["block", *blocked, "--reason", "asked us to stop", "--db", str(db)]) == 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (committed,) = conn.execute("SELECT max(blocked_at) FROM contacts").fetchone()
    assert [run.wait(60) for run in runs] == [0, 0], log.read_text()
    late = [d for d in box.log if d.recipient in blocked and d.received_at > committed]
    assert late == []
    final = recipient_states(db)
    for name in ("a", "b"):
        for person in blocked[:-1]:
            assert final[(name, person)] == ("suppressed", "do not contact: asked us to stop")
    # Taking someone off the list lets them be sent again; the list shows who is on it.
    assert run_cli(["unblock", urn(35), "--db", str(db)]) == 0
    assert recipient_states(db)[("a", urn(35))] == ("pending", None)


def test_block_and_unblock_take_urns_urls_and_identifiers(tmp_path, capsys) -> None:
    path = write_campaign(tmp_path, recipients=[{"profile_urn": urn(i)} for i in range(3)]
                          + [{"profile_url": "https://www.linkedin.com/in/jane-doe/"}])  # fmt: skip
    (tmp_path / "list.csv").write_text("Profile URL\nhttps://de.linkedin.com/in/Jane-Doe?trk=1\n", encoding="utf-8")
    assert run_cli(["block", urn(1), "--file", str(tmp_path / "list.csv"), "--db", str(tmp_path / "c.db")]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "blocked 2 (already blocked: 0); 0 pending recipients suppressed",
        "1 blocked person is known only by profile URL: the next run looks them up (POST /profile) before it"
        " sends to anyone known by URN alone",
    ]
    assert run_cli(["run", str(path), "--sandbox", "--db", str(tmp_path / "c.db")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "test-campaign: 2 sent, 2 suppressed"
    assert run_cli(["contacts", "--blocked", "--format", "json", "--db", str(tmp_path / "c.db")]) == 0
    found = json.loads(capsys.readouterr().out)
    # Blocked by URL, jane-doe was looked up before anyone known by URN alone was sent.
    assert {(c["profile_urn"], c["public_identifier"]) for c in found} == {
        (urn(1), None),
        (urn_of("jane-doe"), "jane-doe"),
    }
    assert all(c["campaigns"] == "test-campaign:suppressed" for c in found)
    assert run_cli(["unblock", "jane-doe", urn(1), urn(2), "--db", str(tmp_path / "c.db")]) == 0
    assert capsys.readouterr().out == "unblocked 2 (not blocked: 1); 2 suppressed recipients pending again\n"


@pytest.mark.anyio
async def test_recontact_never_skips_and_a_duration_waits_that_long(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    box = Sandbox(SandboxConfig(api_key=API_KEY), clock)
    people = [{"profile_urn": urn(i)} for i in range(5)]
    first = write_campaign(tmp_path, "a.yaml", name="a", recipients=people)
    never = write_campaign(tmp_path, "b.yaml", name="b", recipients=people + [{"profile_urn": urn(99)}])
    later = write_campaign(tmp_path, "c.yaml", name="c", recipients=people, recontact="90d")
    store = await Store.open(tmp_path / "r.db", START)
    try:
        await store.load([load_campaign(first)], clock.now())
        assert (await run_campaigns(store, clock, box, ["a"]))[0].reason == "done"
        sent_a = {d.recipient: d.delivered_at for d in box.log}
        clock = VirtualClock(clock.now() + 10 * DAY)  # ten days later, another run
        box.clock = clock
        await store.load([load_campaign(never), load_campaign(later)], clock.now())
        result, _ = await run_campaigns(store, clock, box, ["b", "c"])
        assert result.reason == "done"
        rows = {row.profile_urn: row async for row in store.report_rows("b")}
        assert rows[urn(99)].status == "sent"
        day = time_day(START)
        assert {rows[p["profile_urn"]].error for p in people} == {f"already contacted by a on {day}"}
        assert (await store.counts("c"))["sent"] == 5
    finally:
        await store.close()
    again = [d for d in box.log if d.recipient in sent_a and d.delivered_at > sent_a[d.recipient]]
    assert len(again) == 5
    assert all(d.delivered_at >= sent_a[d.recipient] + 90 * DAY for d in again)  # not one day sooner


def time_day(epoch: float) -> str:
    from campaign_runner.clock import iso

    return (iso(epoch) or "")[:10]


async def _upgraded_keeps_every_attempt(tmp_path: Path) -> None:
    path = tmp_path / "v8.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        migrate(db, 1.0, discover()[:8])
        db.execute("PRAGMA foreign_keys = ON")
        db.execute(
            "INSERT INTO campaigns (name, group_id, endpoint, message_template, limit_cap, limit_window,"
            " created_at, updated_at) VALUES ('old', '1', 'send-group', 'hi', 150, 86400, 1, 1)"
        )
        db.execute(
            "INSERT INTO recipients (campaign, profile_urn, message, status, sent_at, updated_at)"
            f" VALUES ('old', '{urn(1)}', 'hi', 'sent', 5, 5), ('old', '{urn(2)}', 'hi', 'pending', NULL, 5)"
        )
        db.execute(
            "INSERT INTO attempts (recipient_id, run_id, account_id, endpoint, started_at, slot_at, outcome)"
            " VALUES (1, 1, 'acc_1', 'send-group', 4, 5, 'sent')"
        )
    store = await Store.open(path, 10.0)
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM attempts").fetchone() == (1,)  # not cascaded away
        assert db.execute("SELECT profile_urn, status FROM recipients ORDER BY id").fetchall() == [
            (urn(1), "sent"),
            (urn(2), "pending"),
        ]
        assert db.execute("SELECT profile_urn, source FROM contacts ORDER BY id").fetchall() == [
            (urn(1), "campaign old"),
            (urn(2), "campaign old"),
        ]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.anyio
async def test_a_database_of_the_last_schema_keeps_its_recipients_and_attempts(tmp_path: Path) -> None:
    await _upgraded_keeps_every_attempt(tmp_path)


def test_a_block_by_url_stops_a_campaign_that_knows_the_person_by_urn(tmp_path, capsys) -> None:
    """Nobody can tell a URL from a URN without asking: the block is looked up before anyone known
    by URN alone is sent."""
    from campaign_runner.sandbox_reads import member_urn

    db = str(tmp_path / "c.db")
    assert run_cli(["block", "https://www.linkedin.com/in/member-000201/", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "the next run looks them up (POST /profile) before it sends to anyone known by URN alone" in out
    people = [{"profile_urn": member_urn(i)} for i in range(199, 204)]
    path = write_campaign(tmp_path, recipients=people)
    assert run_cli(["run", str(path), "--sandbox", "--db", db]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "test-campaign: 4 sent, 1 suppressed"
    final = recipient_states(Path(db))
    assert final[("test-campaign", member_urn(201))] == ("suppressed", "do not contact: blocked")


def test_block_file_needs_a_column_that_says_who(tmp_path, capsys) -> None:
    db = str(tmp_path / "c.db")
    (tmp_path / "names.csv").write_text("name,email\nJane,j@example.com\n", encoding="utf-8")
    assert run_cli(["block", "--file", str(tmp_path / "names.csv"), "--db", db]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'names.csv'}: no profile_urn, profile_url or public_identifier column"
        " (columns: name, email)\n"
    )
    (tmp_path / "semi.csv").write_text("Profile URL;First name\nlinkedin.com/in/ada-l;Ada\n", encoding="utf-8")
    assert run_cli(["block", "--file", str(tmp_path / "semi.csv"), "--db", db]) == 0
    assert run_cli(["contacts", "--blocked", "--format", "json", "--db", db]) == 0
    out = capsys.readouterr().out
    assert [c["public_identifier"] for c in json.loads(out[out.index("[") :])] == ["ada-l"]


def test_running_an_audience_campaign_again_keeps_its_members(tmp_path, capsys) -> None:
    """A campaign whose recipients come from its group is run again from cron: the members fetched
    are not "no longer in the file"."""
    db = str(tmp_path / "c.db")
    path = write_campaign(tmp_path, recipients=None, limit="5/hour", audience={"group_members": {"max": 50}},
                          message="Hi {{ first_name }}")  # fmt: skip
    for _ in range(2):
        assert run_cli(["run", str(path), "--sandbox", "--no-wait", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "0 no longer in the file" in out and "50 no longer" not in out
    assert out.splitlines()[-2] == "test-campaign: 49 pending, 1 sent"  # one a run: the 5/hour spread


@pytest.mark.anyio
async def test_a_refused_lookup_never_lifts_a_block(tmp_path: Path) -> None:
    """A lookup answered with a refusal that is not "not found" (an account busy, a 200 with
    success: false) settles nothing: the block keeps holding back whoever is known by URN alone."""
    from test_audience import Recording

    from campaign_runner import events

    clock = VirtualClock(START)
    box = Sandbox(SandboxConfig(api_key=API_KEY), clock)
    app = Recording(box, answer=lambda path: (200, {"success": False, "error": "account busy, try later"})
                    if path.endswith("/profile") else None)  # fmt: skip
    path = write_campaign(
        tmp_path, recipients=[{"profile_urn": urn(1)}, {"profile_urn": urn(2), "public_identifier": "known"}]
    )
    store = await Store.open(tmp_path / "c.db", START)
    try:
        await store.load([load_campaign(path)], START)
        await store.block([(None, "jane-doe")], "asked", START)
        lookups = lambda seen: sum(isinstance(e, events.Looked) and e.action == "profile" for e in seen)  # noqa: E731
        await run_campaigns(store, clock, app, stop_when=lambda seen: lookups(seen) >= 4)
        rows = {row.profile_urn: row.status async for row in store.report_rows("test-campaign")}
        (blocked,) = await store.contacts(blocked_only=True)
    finally:
        await store.close()
    assert rows == {urn(1): "pending", urn(2): "sent"}  # the one known by identifier too can be told apart
    assert (blocked.not_found, blocked.profile_urn) == (None, None)  # no verdict: still unsure
    assert [d.recipient for d in box.log] == [urn(2)]


@pytest.mark.anyio
async def test_two_processes_fetching_one_group_skip_no_member(tmp_path: Path) -> None:
    from campaign_runner.client import Member, MembersPage, Profile, ReadAnswer
    from campaign_runner.config import member_renderer
    from campaign_runner.outcome import Kind, Outcome
    from campaign_runner.store import ReadAction

    def page(start: int) -> ReadAnswer:
        people = tuple(Member(Profile(f"urn:li:fsd_profile:M{i:04d}", f"m{i}", "A"), "member")
                       for i in range(start, start + 100))  # fmt: skip
        return ReadAnswer(Outcome(Kind.SENT, http_status=200), page=MembersPage(people, True, 1000, "1", 100))

    path = write_campaign(tmp_path, recipients=None, message="Hi {{ first_name }}", audience={"group_members": {}})
    one, two = await Store.open(tmp_path / "c.db", START), await Store.open(tmp_path / "c.db", START)
    try:
        campaign = load_campaign(path)
        await one.load([campaign], START)
        render = member_renderer(campaign)
        first = await one.member_fetch("12345678", ["member"], None, None, "test-campaign", START)
        second = await two.member_fetch("12345678", ["member"], None, None, "test-campaign", START)
        reads = [
            await store.reserve("acc_1", ReadAction.MEMBERS, "12345678", START, 60, units=100) for store in (one, two)
        ]
        # Both asked for the page at 0 before either stored it.
        await one.save_members(reads[0], first, 0, page(0), START + 2, render)
        after = await two.save_members(reads[1], second, 0, page(0), START + 3, render)
        assert (after.next_start, after.fetched) == (100, 100)
        read = await one.reserve("acc_1", ReadAction.MEMBERS, "12345678", START + 4, 60, units=100)
        fresh = await one.refresh_fetch(first)
        final = await one.save_members(read, fresh, fresh.next_start, page(fresh.next_start), START + 5, render)
        assert (final.next_start, final.fetched) == (200, 200)
        assert (await one.counts("test-campaign"))["pending"] == 200
    finally:
        await one.close()
        await two.close()


@pytest.mark.anyio
async def test_every_budget_of_an_account_holds_and_the_keys_limit_holds_with_nothing_to_send(tmp_path: Path) -> None:
    from campaign_runner.settings import Limit
    from campaign_runner.store import Read, ReadAction

    hourly = write_campaign(tmp_path, "h.yaml", name="h", budgets={"profiles": "10/hour"}, api_limit="1000/1s")
    daily = write_campaign(tmp_path, "d.yaml", name="d", budgets={"profiles": "120/day"}, api_limit="3/1h")
    store = await Store.open(tmp_path / "b.db", START)
    try:
        await store.load([load_campaign(hourly), load_campaign(daily)], START)
        allowed = 0
        for i in range(30):
            found = await store.reserve("acc_1", ReadAction.PROFILE, f"p{i}", START + i, 60)
            if isinstance(found, Read):
                allowed += 1
                await store.finish_read(found, _ok(), START + i)
        assert allowed == 3  # the key's 3/1h binds first
        # No campaign has work: a health check still keeps the key's limits (every campaign's).
        for store_campaign in ("h", "d"):
            assert (await store.campaign(store_campaign)).api_limits
        found = await store.reserve("acc_2", ReadAction.STATUS, "acc_2", START + 40, 60)
        assert not isinstance(found, Read)
        found = await store.reserve("acc_1", ReadAction.MEMBERS, "g", START + 3600 * 2, 60, units=100,
                                    budget=Limit(30, 86400.0))  # fmt: skip
        assert isinstance(found, Read) and found.units == 30  # members --budget tightens, and caps a page
    finally:
        await store.close()


def _ok():
    from campaign_runner.client import ReadAnswer
    from campaign_runner.outcome import Kind, Outcome

    return ReadAnswer(Outcome(Kind.SENT, http_status=200))
