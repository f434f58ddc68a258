"""The audience: a group's members, profile URLs looked up, pre-checks, account health; and every
request the client makes checked against the vendor's OpenAPI file."""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest
from werkzeug.test import EnvironBuilder

from campaign_runner import events
from campaign_runner.clock import VirtualClock
from campaign_runner.config import load_campaign
from campaign_runner.sandbox import Sandbox, SandboxConfig
from campaign_runner.sandbox_reads import member_urn, urn_of
from campaign_runner.store import Store

from conftest import API_KEY, EXECUTABLE, max_in_window, run_campaigns, urn, wait_for, write_campaign, write_text

pytestmark = pytest.mark.anyio

START = 1_800_000_000.0
DAY = 86400.0
CONTRACT = Path(__file__).parent.parent / "docs" / "connectsafely-openapi.yaml"


class Recording:
    """An ASGI app in front of the sandbox that keeps every request as it came."""

    def __init__(self, app: Any, answer: Any = None):
        self.app = app
        self.seen: list[dict[str, Any]] = []
        self.answer = answer  # (path) -> (status, body) to answer instead of the sandbox, or None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "body": body,
        }
        self.seen.append(request)
        instead = self.answer(scope["path"]) if self.answer else None
        if instead is not None:
            status, payload = instead
            data = json.dumps(payload).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json")]})  # fmt: skip
            await send({"type": "http.response.body", "body": data})
            return None
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def check_against_contract(requests: list[dict[str, Any]]) -> set[str]:
    """Validate each request with openapi-core; return the operations seen (method and path template)."""
    # The file is kept as the vendor's reference has it, whose Message schema a stray comma spoils
    # (it touches no request): the requests are checked, not the file itself.
    spec = OpenAPI.from_file_path(str(CONTRACT), config=Config(spec_validator_cls=None))
    seen = set()
    for request in requests:
        builder = EnvironBuilder(
            method=request["method"],
            base_url="http://127.0.0.1:8765/",
            path=request["path"],
            query_string=request["query"],
            headers={k: v for k, v in request["headers"].items() if k != "host"},  # served as the spec's server
            data=request["body"] or None,
        )
        spec.validate_request(WerkzeugOpenAPIRequest(builder.get_request()))
        path = request["path"].removeprefix("/linkedin")
        if "/exists/" in path:
            path = path.split("/exists/")[0] + "/exists/{profileId}"
        elif path.startswith("/conversations/") and path.endswith("/messages"):
            path = "/conversations/{conversationUrn}/messages"
        seen.add(f"{request['method']} {path}")
    return seen


async def test_every_request_the_client_makes_is_valid_against_the_openapi_file(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    box = Sandbox(
        SandboxConfig(api_key=API_KEY, group_size=150, conversations={"member-000007"}, reply_rate=0.5,
                      reply_delay=(60.0, 7200.0), seed=2),
        clock,
    )  # fmt: skip
    app = Recording(box)
    write_text(tmp_path / "urls.csv", "profile_url,first_name\nhttps://www.linkedin.com/in/jane-doe-1/,Jane\n"
               "https://www.linkedin.com/in/member-000009/,Alan\n")  # fmt: skip
    urls = write_campaign(tmp_path, "urls.yaml", name="urls", recipients=None, recipients_file="urls.csv",
                          accounts=["acc_1", "acc_2"])  # fmt: skip
    group = write_campaign(tmp_path, "group.yaml", name="group", recipients=None, endpoint="send-group-with-typing",
                           message="Hi {{ first_name }}", audience={"group_members": {"max": 120}},
                           accounts=["acc_1"])  # fmt: skip
    # A sequence: its replies are looked for in the conversations and their messages.
    sequence = write_campaign(tmp_path, "seq.yaml", name="seq", message=None, accounts=["acc_3"], precheck="none",
                              steps=[{"message": "Hi"}, {"after": "3h", "message": "Again"}])  # fmt: skip
    store = await Store.open(tmp_path / "c.db", START)
    try:
        await store.load([load_campaign(urls), load_campaign(group), load_campaign(sequence)], START)
        result, seen = await run_campaigns(store, clock, app, ["urls", "group", "seq"])
        assert result.reason == "done"
        counts = await store.counts("group")
        # Member 7 is in a conversation already; member 9 was sent by `urns` (as a profile URL).
        assert (counts["sent"], counts["skipped"]) == (118, 2)
    finally:
        await store.close()
    operations = check_against_contract(app.seen)
    assert operations >= {
        "POST /profile",
        "GET /conversations/exists/{profileId}",
        "GET /account/status",
        "POST /groups/members",
        "POST /messaging/send-group",
        "POST /messaging/send-group-with-typing",
        "GET /conversations",
        "GET /conversations/{conversationUrn}/messages",
    }
    # A group given by URL goes to /groups/members-by-url, and is as valid.
    by_url = Recording(Sandbox(SandboxConfig(api_key=API_KEY, group_size=30), clock))
    import httpx

    from campaign_runner.audience import fetch_pages
    from campaign_runner.client import ApiClient

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=by_url), base_url="http://sandbox/linkedin/",
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as http:  # fmt: skip
        store = await Store.open(tmp_path / "m.db", START)
        try:
            fetch = await store.member_fetch("https://www.linkedin.com/groups/12345678/", ["member", "manager"],
                                             "Ada", None, None, START)  # fmt: skip
            with clock.worker():
                done = await fetch_pages(store, ApiClient(http, 60.0), clock, fetch, ["acc_1"])
            assert done.fetch.done and done.fetch.fetched > 0
        finally:
            await store.close()
    assert check_against_contract(by_url.seen) == {"POST /groups/members-by-url"}


async def test_a_campaign_of_profile_urls_looks_each_up_once_within_the_budget(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    box = Sandbox(SandboxConfig(api_key=API_KEY, missing_profiles={"gone-404"}), clock)
    rows = [f"https://www.linkedin.com/in/person-{i}/" for i in range(300)] + ["linkedin.com/in/gone-404"]
    write_text(tmp_path / "urls.csv", "profile_url\n" + "\n".join(rows) + "\n")
    path = write_campaign(tmp_path, recipients=None, recipients_file="urls.csv", limit="150/day", message="Hello!",
                          accounts=["acc_1", "acc_2"], precheck="none")  # fmt: skip
    store = await Store.open(tmp_path / "p.db", START)
    try:
        await store.load([load_campaign(path)], START)
        result, seen = await run_campaigns(store, clock, box)
        assert result.reason == "done"
        counts = await store.counts("test-campaign")
        assert (counts["sent"], counts["failed"]) == (300, 1)
        reports = {row.public_identifier: row async for row in store.report_rows("test-campaign")}
        assert reports["gone-404"].error.startswith("no such profile: ")
        assert reports["person-7"].profile_urn == urn_of("person-7")
    finally:
        await store.close()
    lookups = [r for r in box.requests if r.endpoint == "/linkedin/profile"]
    assert all(r.status == 200 or r.status == 400 for r in lookups)  # never a 429: the budget was kept
    for account in ("acc_1", "acc_2"):
        times = sorted(r.at for r in lookups if r.account_id == account)
        assert max_in_window(times, DAY) <= 120
    assert len(lookups) == 301  # each profile looked up once
    assert sorted(d.recipient for d in box.log) == sorted(urn_of(f"person-{i}") for i in range(300))
    # 301 lookups at 120 a day over two accounts: the third day's.
    assert max(d.delivered_at for d in box.log) - START > DAY

    # Another campaign of the same URLs looks nobody up again: the contacts remember.
    again = write_campaign(tmp_path, "again.yaml", name="again", recipients=None, recipients_file="urls.csv",
                           message="Hello again!", recontact="always", precheck="none")  # fmt: skip
    before = len(box.requests)
    store = await Store.open(tmp_path / "p.db", clock.now())
    try:
        await store.load([load_campaign(again)], clock.now())
        assert (await store.preparing("again")).lookups == 0
        result, _ = await run_campaigns(store, clock, box, ["again"])
        assert (await store.counts("again"))["sent"] == 300
    finally:
        await store.close()
    assert not [r for r in box.requests[before:] if r.endpoint == "/linkedin/profile"]


async def test_people_in_a_conversation_are_skipped_and_a_failing_precheck_sends_nobody(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    talking = {f"p-{i}" for i in range(0, 20, 4)}
    box = Sandbox(SandboxConfig(api_key=API_KEY, conversations=talking), clock)
    recipients = [{"profile_urn": urn(i), "public_identifier": f"p-{i}"} for i in range(20)]
    path = write_campaign(tmp_path, recipients=recipients)
    store = await Store.open(tmp_path / "c.db", START)
    try:
        await store.load([load_campaign(path)], START)
        result, _ = await run_campaigns(store, clock, box)
        assert result.reason == "done"
        rows = [row async for row in store.report_rows("test-campaign")]
        skipped = {row.public_identifier for row in rows if row.status == "skipped"}
        assert skipped == talking
        assert {row.error for row in rows if row.status == "skipped"} == {"already in a conversation with the account"}
    finally:
        await store.close()
    assert {d.recipient for d in box.log} == {urn(i) for i in range(20) if f"p-{i}" not in talking}

    # A pre-check that gets no answer is asked again later; it never becomes a blind send.
    box = Sandbox(SandboxConfig(api_key=API_KEY), clock)
    app = Recording(box, answer=lambda path: (500, {"success": False, "error": "upstream"})
                    if "/conversations/exists/" in path else None)  # fmt: skip
    path = write_campaign(tmp_path, "b.yaml", name="b", recipients=[{"profile_urn": urn(100 + i),
                          "public_identifier": f"q-{i}"} for i in range(5)])  # fmt: skip
    store = await Store.open(tmp_path / "c.db", clock.now())
    try:
        await store.load([load_campaign(path)], clock.now())
        prechecks = lambda seen: sum(isinstance(e, events.Looked) and e.action == "precheck" for e in seen)  # noqa: E731
        result, seen = await run_campaigns(store, clock, app, ["b"], stop_when=lambda seen: prechecks(seen) >= 15)
        assert (await store.counts("b"))["pending"] == 5
    finally:
        await store.close()
    assert not box.log and not box.sends  # nobody was sent
    assert clock.now() - START > 2 * 300  # each asked again after a while, not in a tight loop


def test_an_account_in_error_sends_nothing_and_spends_nobody(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox(account_status={"acc_bad": "ERROR"}, no_tokens={"acc_nosession"})
    path = write_campaign(tmp_path, accounts=["acc_bad", "acc_ok", "acc_nosession"],
                          recipients=[{"profile_urn": urn(i)} for i in range(12)])  # fmt: skip
    code, out, err = cli("run", str(path), base_url=url)
    assert code == 1
    assert "acc_bad stopped: the API reports its status as ERROR" in err
    assert "acc_nosession stopped: the API has no LinkedIn session for it" in err
    assert out.splitlines()[-1] == "test-campaign: 12 sent"
    assert {r.account_id for r in box.sends} == {"acc_ok"}
    code, out, _ = cli("accounts", "--json")
    found = {a["account_id"]: a for a in json.loads(out)}
    assert found["acc_bad"]["health"]["status"] == "ERROR" and found["acc_bad"]["messages_24h"] == 0
    assert found["acc_ok"]["messages_24h"] == 12
    assert "ERROR" in found["acc_bad"]["stopped_reason"]


def test_members_of_a_2500_group_over_three_windows_of_budget_killed_and_resumed(
    serve_sandbox, processes, tmp_path
) -> None:
    """The vendor's 1,000 members a day, as 1,000 per 3 s here: a 2,500-member group takes three
    windows. The fetch is killed in the middle and run again until it is done."""
    box, url = serve_sandbox(group_size=2500, members_quota=1000, members_quota_window=3.0)
    db, out = tmp_path / "m.db", tmp_path / "members.csv"
    statuses = ["--status", "member", "--status", "manager", "--status", "owner"]
    # A page in flight when the process is killed may have reached the server: it counts against
    # the budget until the request's deadline (--timeout plus 10 s) has passed.
    args = [EXECUTABLE, "members", "12345678", "--account", "acc_1", *statuses, "--budget", "1000/3s",
            "--timeout", "3", "--output", str(out), "--db", str(db), "--base-url", url]  # fmt: skip
    env = {"CONNECTSAFELY_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"}
    kills = 0
    log = tmp_path / "members.log"
    for _ in range(3):
        with log.open("ab") as errors:
            process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        processes.append(process)  # killed at the end whatever happens
        if kills < 2:
            # Kill it once it has fetched a page or more (and mostly while it waits for the budget).
            wait_for(lambda: _fetched(db) >= 300 * (kills + 1), timeout=30)
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            continue
        assert process.wait(timeout=60) == 0, log.read_text()
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [row["profile_urn"] for row in rows] == [member_urn(i) for i in range(2500)]  # all, once, in order
    assert list(rows[0]) == ["profile_urn", "public_identifier", "first_name", "last_name", "headline",
                             "membership_status"]  # fmt: skip
    pages = [r for r in box.requests if r.endpoint == "/linkedin/groups/members" and r.status == 200]
    assert len(pages) <= 25 + kills  # at most the page in flight fetched again per kill
    assert not [r for r in box.requests if r.status == 429]  # the budget was kept: never refused
    served = sorted(box.people.served)
    assert max_in_window([at for at, n in served for _ in range(n)], 3.0) <= 1000


def _fetched(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM group_members").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_members_with_no_wait_stops_when_the_budget_is_spent_and_goes_on_next_time(cli, serve_sandbox,
                                                                                   tmp_path) -> None:  # fmt: skip
    box, url = serve_sandbox(group_size=250)
    code, out, err = cli("members", "12345678", "--budget", "100/hour", "--no-wait", base_url=url)
    assert code == 0
    assert len(out.splitlines()) == 101 and "100 members so far; the budget allows the next page at" in err
    # The next run goes on at member 100 (with a larger budget here, instead of an hour later).
    code, out, err = cli("members", "12345678", "--budget", "200/hour", "--no-wait", base_url=url)
    assert len(out.splitlines()) == 201
    assert [line.split(",")[1] for line in out.splitlines()[1:3]] == ["member-000002", "member-000003"]


def test_members_keeps_a_budget_smaller_than_a_page_and_a_smaller_max(cli, serve_sandbox, tmp_path) -> None:
    box, url = serve_sandbox(group_size=250)
    code, out, err = cli("members", "12345678", "--budget", "30/day", "--no-wait", base_url=url)
    assert code == 0 and len(out.splitlines()) == 31  # a page of 30, not of 100
    code, out, err = cli("members", "https://www.linkedin.com/groups/12345678/", "--max", "5", base_url=url)
    assert len(out.splitlines()) == 6  # the group by its URL is the same fetch; five of what it has
    pages = [r for r in box.requests if "/groups/" in r.endpoint and r.status == 200]
    assert len(pages) == 1  # nothing fetched twice


def test_an_audience_is_never_fetched_by_an_account_the_run_stopped(cli, serve_sandbox, tmp_path) -> None:
    box, url = serve_sandbox(group_size=120, account_status={"acc_bad": "ERROR"})
    path = write_campaign(tmp_path, recipients=None, accounts=["acc_bad", "acc_ok"], message="Hi {{ first_name }}",
                          audience={"group_members": {"max": 60}})  # fmt: skip
    code, out, err = cli("run", str(path), base_url=url)
    assert code == 1 and out.splitlines()[-1] == "test-campaign: 60 sent"
    assert {r.account_id for r in box.requests if r.account_id == "acc_bad"} == {"acc_bad"}
    assert [r.endpoint for r in box.requests if r.account_id == "acc_bad"] == ["/linkedin/account/status"]


def test_odd_member_pages_never_make_two_people_of_one_nor_poison_the_database() -> None:
    import httpx

    from campaign_runner.client import ReadRequest, classify_read

    request = ReadRequest.group_members("12345678", 0, 100, ["member"], None, "acc_1")
    members = [
        {"entityUrn": urn(1) + "\n", "publicIdentifier": "ann"},  # a trailing newline: no such URN
        {"profileId": "ACoAAx", "fullName": "Bea Smith", "profileUrl": "https://www.linkedin.com/in/B%C3%A9a/"},
        {"entityUrn": urn(3), "publicIdentifier": "has space/slash", "membershipStatus": "x" * 10_000},
    ]
    body = {"success": True, "hasMore": True, "members": members, "groupId": "9" * 4000,
            "pagination": {"total": 10**20}}  # fmt: skip
    answer = classify_read(httpx.Response(200, json=body), request)
    page = answer.page
    assert page is not None and page.size == 3
    assert [m.profile.urn for m in page.members] == ["urn:li:fsd_profile:ACoAAx", urn(3)]
    assert page.members[0].profile.slug == "béa" and page.members[0].profile.first_name == "Bea"
    assert page.members[1].profile.slug is None and page.members[1].membership_status is None
    assert (page.total, page.group_id) == (None, None)
    deep = classify_read(httpx.Response(200, text="[" * 200_000), request)
    assert deep.outcome.kind == "unknown" and deep.page is None
