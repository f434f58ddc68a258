"""Sequences that stop on reply, on the virtual clock through the sandbox: each step of each
recipient delivered at most once and not before its `after`, no follow-up after a reply the runner
could have seen, replies by webhook, and unknown outcomes confirmed from the conversation."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from campaign_runner import events
from campaign_runner.client import ApiClient
from campaign_runner.clock import VirtualClock
from campaign_runner.config import load_campaign
from campaign_runner.replies import poll, reconcile
from campaign_runner.sandbox import Sandbox, SandboxConfig, Scripted
from campaign_runner.store import Store
from campaign_runner.webhook import WebhookReceiver, signature

from conftest import API_KEY, run_campaigns, urn, write_campaign

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86400.0
STEPS = [
    {"message": "Hi {{ first_name }}, welcome to the group"},
    {"after": "3d", "message": "Just following up, {{ first_name }}"},
    {"after": "7d", "message": "Last note from me"},
]


def _campaign(tmp_path: Path, count: int, **fields: object) -> Path:
    people = [{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(count)]
    settings = {
        "message": None,
        "steps": STEPS,
        "recipients": people,
        "limit": "400/day",
        "precheck": "none",
        "reply_fresh": "30m",
        "reply_poll": "15m",
        **fields,
    }
    return write_campaign(tmp_path, **settings)


@asynccontextmanager
async def _api(box: Sandbox) -> AsyncIterator[ApiClient]:
    headers = {"Authorization": f"Bearer {box.config.api_key}"}
    transport = httpx.ASGITransport(app=box)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox/linkedin/", headers=headers) as http:
        yield ApiClient(http, 60.0)


def _sends(box: Sandbox) -> dict[str, list[tuple[float, str]]]:
    """Per recipient, every delivered message: when, and its text."""
    found: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for delivery in box.log:
        found[delivery.recipient].append((delivery.delivered_at, delivery.message))
    return found


@pytest.mark.anyio
async def test_every_step_once_no_follow_up_after_a_seen_reply(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    box = Sandbox(
        SandboxConfig(
            api_key=API_KEY, seed=7, reply_rate=0.2, reply_delay=(600.0, 12 * DAY), typing_delay=0.0, quota=400
        ),
        clock,
    )
    store = await Store.open(tmp_path / "c.db", START)
    try:
        await store.load([load_campaign(_campaign(tmp_path, 1000))], START)
        # Stopped four times along the way, each time after some more answers; then to the end.
        for stop_after in (150, 400, 700, 1200):
            result, _ = await run_campaigns(store, clock, box, stop_after=stop_after)
        result, seen = await run_campaigns(store, clock, box)
        assert result.reason.value == "done"
        # The last replies came after the last step: one more look records them.
        async with _api(box) as api:
            looked = await poll(store, api, clock, "acc_1")
        assert looked.error is None
        counts = await store.counts("test-campaign")
    finally:
        await store.close()

    replies = {r.recipient: r for r in box.replies(clock.now())}
    assert 150 <= len(replies) <= 250  # about 20% of 1,000
    sends = _sends(box)
    texts = [step["message"].split(",")[0].split("{{")[0] for step in STEPS]
    late_follow_ups = 0
    for i in range(1000):
        person = urn(i)
        got = sends[person]
        assert len({text for _, text in got}) == len(got), f"{person} got a step twice: {got}"
        steps = [next(k for k, prefix in enumerate(texts) if text.startswith(prefix)) for _, text in got]
        assert steps == list(range(len(got))), f"{person} got steps out of order: {steps}"
        reply = replies.get(person)
        for (at, _), step in zip(got, steps, strict=True):
            if step:
                # never before its `after`, counted from the step before it
                before = got[step - 1][0]
                assert at >= before + (3 * DAY if step == 1 else 7 * DAY) - 1
            if step and reply is not None and reply.arrives_at < at:
                # a follow-up after the reply: only if the reply was younger than reply_fresh
                assert at - reply.arrives_at <= 1800 + 120, (person, at, reply)
                late_follow_ups += 1
        if reply is None:
            assert len(got) == 3, f"{person} replied to nothing and got {len(got)} steps"
    assert late_follow_ups <= 5  # only a reply within the last 30 minutes before a follow-up can slip by
    assert counts["replied"] == len(replies)
    assert counts["sent"] == 1000 - len(replies)
    polls = [e for e in seen if isinstance(e, events.RepliesPolled)]
    assert polls and all(p.error is None for p in polls)


@pytest.mark.anyio
async def test_opt_out_reply_blocks_the_person(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    box = Sandbox(
        SandboxConfig(api_key=API_KEY, seed=3, reply_rate=1.0, opt_out_rate=1.0, reply_delay=(60.0, 120.0)), clock
    )
    store = await Store.open(tmp_path / "c.db", START)
    try:
        await store.load([load_campaign(_campaign(tmp_path, 5))], START)
        await run_campaigns(store, clock, box)
        blocked = await store.contacts(blocked_only=True)
        counts = await store.counts("test-campaign")
        stats = await store.step_stats("test-campaign")
        rows = [row async for row in store.report_rows("test-campaign")]
    finally:
        await store.close()
    assert counts["replied"] == 5
    assert [(s.step, s.sent, s.replied) for s in stats] == [(1, 5, 5)]
    assert all(row.step == 1 and row.message.startswith("Hi ") for row in rows)  # the step they were sent
    assert {c.profile_urn for c in blocked} == {urn(i) for i in range(5)}
    assert all(c.blocked_reason and c.blocked_reason.startswith("replied") for c in blocked)
    assert all(len(got) == 1 for got in _sends(box).values())


def _event(message_urn: str, sender: str, body: str, at: str = "2026-01-02T00:00:00Z") -> bytes:
    data = {
        "message_urn": message_urn,
        "account_id": "acc_1",
        "sender": {"id": sender, "name": "P"},
        "body": body,
        "timestamp": at,
        "conversation_id": "urn:li:messagingThread:1",
    }
    return json.dumps({"event": "message.received", "object": "event", "data": data}).encode()


@pytest.mark.anyio
async def test_webhook_refuses_bad_signatures_and_records_each_reply_once(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    box = Sandbox(SandboxConfig(api_key=API_KEY, seed=1), clock)
    store = await Store.open(tmp_path / "c.db", START)
    secret = b"s3cret-from-the-vendor"
    try:
        await store.load([load_campaign(_campaign(tmp_path, 3))], START)
        await run_campaigns(store, clock, box, stop_after=3)  # every first message sent
        receiver = WebhookReceiver(store, clock, secret, set(await store.known_accounts()))
        transport = httpx.ASGITransport(app=receiver)
        async with httpx.AsyncClient(transport=transport, base_url="http://hook") as http:

            async def post(body: bytes, sign: bytes = secret) -> httpx.Response:
                headers = {"X-Webhook-Signature": signature(sign, body), "Content-Type": "application/json"}
                return await http.post("/", content=body, headers=headers)

            forged = _event("urn:li:msg:1", urn(0), "yes!")
            assert (await post(forged, b"wrong")).status_code == 401
            assert (await http.post("/", content=forged)).status_code == 401  # no signature at all
            tampered = _event("urn:li:msg:1", urn(0), "yes!")
            headers = {"X-Webhook-Signature": signature(secret, tampered)}
            assert (await http.post("/", content=tampered.replace(b"yes", b"no!"), headers=headers)).status_code == 401
            assert (await store.counts("test-campaign"))["replied"] == 0

            # duplicated and out of order: each reply recorded once
            second = _event("urn:li:msg:2", urn(1), "Sounds good", "2026-01-02T01:00:00Z")
            first = _event("urn:li:msg:1", urn(0), "yes!", "2026-01-02T00:00:00Z")
            for body in (second, first, second, first, second):
                assert (await post(body)).status_code == 200
            assert receiver.recorded == 2
        counts = await store.counts("test-campaign")
    finally:
        await store.close()
    assert counts["replied"] == 2
    db = sqlite3.connect(tmp_path / "c.db")
    assert db.execute("SELECT count(*) FROM replies").fetchone()[0] == 2
    rows = dict(db.execute("SELECT profile_urn, reply FROM recipients WHERE replied_at IS NOT NULL").fetchall())
    assert rows == {urn(0): "yes!", urn(1): "Sounds good"}


@pytest.mark.anyio
async def test_reconcile_confirms_delivered_unknowns_and_puts_back_only_those_not_found(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    # A proxy's 502 page after the message went out, or before: both leave `unknown`s.
    page = "<html><body>502 Bad Gateway</body></html>"
    scripted = [Scripted(502, page, deliver=i % 3 == 0) for i in range(12)]
    config = SandboxConfig(api_key=API_KEY, seed=5, scripted=scripted, message_lag=30.0)
    box = Sandbox(config, clock)
    store = await Store.open(tmp_path / "c.db", START)
    try:
        await store.load(
            [
                load_campaign(
                    _campaign(tmp_path, 80, steps=None, message="Hello {{ first_name }}", breaker={"failures": 50})
                )
            ],
            START,
        )
        await run_campaigns(store, clock, box)
        unknowns = await store.unknowns("test-campaign")
        delivered = {d.recipient for d in box.log}
        lost = {u.profile_urn for u in unknowns if u.profile_urn in delivered}
        never = {u.profile_urn for u in unknowns if u.profile_urn not in delivered}
        assert lost and never

        async with _api(box) as api:
            # One claimed a moment ago may not show in the conversation yet: nothing is concluded.
            recent = replace(unknowns[-1], claimed_at=clock.now() - 60)
            assert [r.found for r in await reconcile(store, api, clock, [recent])] == [None]
            results = await reconcile(store, api, clock, unknowns)
        assert {r.unknown.profile_urn for r in results if r.found} == lost
        assert {r.unknown.profile_urn for r in results if r.found is False} == never
        counts = await store.counts("test-campaign")
        assert counts["unknown"] == len(never)
        put_back = await store.retry("test-campaign", ["unknown"], [], clock.now(), None, not_found=True)
        assert put_back == len(never)
        await run_campaigns(store, clock, box)
        counts = await store.counts("test-campaign")
    finally:
        await store.close()
    assert counts["sent"] == 80
    per_person = _sends(box)
    assert all(len(per_person[urn(i)]) == 1 for i in range(80))  # nobody got it twice
    db = sqlite3.connect(tmp_path / "c.db")
    notes = db.execute("SELECT count(*) FROM recipients WHERE error = 'confirmed from the conversation'").fetchone()
    assert notes[0] == len(lost)


@pytest.mark.anyio
async def test_variants_split_by_weight_and_spintax_survives_a_reload(tmp_path: Path) -> None:
    variants = [
        {"id": "a", "text": "{Hi|Hello|Hey} {{ first_name }}, {welcome|good to see you} here"},
        {"id": "b", "text": "Greetings {{ first_name }}", "weight": 3},
    ]
    path = _campaign(tmp_path, 2000, steps=[{"message": variants}, {"after": "2d", "message": "{Still|Just} me"}])
    store = await Store.open(tmp_path / "c.db", START)
    try:
        await store.load([load_campaign(path)], START)
        db = sqlite3.connect(tmp_path / "c.db")
        before = db.execute("SELECT profile_urn, message, messages, variants FROM recipients ORDER BY id").fetchall()
        await store.load([load_campaign(path)], START + 60)  # a reload
        await store.load([load_campaign(path)], START + 120, accept_changes=True)
        after = db.execute("SELECT profile_urn, message, messages, variants FROM recipients ORDER BY id").fetchall()
    finally:
        await store.close()
    assert before == after
    drawn = [json.loads(variants)[0] for _, _, _, variants in after]
    share_b = drawn.count("b") / len(drawn)
    assert 0.72 <= share_b <= 0.78  # weight 3 of 4, within about three standard deviations
    openings = {message.split(" ")[0] for _, message, _, variants in after if json.loads(variants)[0] == "a"}
    assert openings == {"Hi", "Hello", "Hey"}
    follow_ups = {json.loads(messages)[1] for _, _, messages, _ in after}
    assert follow_ups == {"Still me", "Just me"}
    assert all("{" not in message and "|" not in message for _, message, _, _ in after)


class _HangAt:
    """The sandbox, but the Nth send requests (of `at`) never get an answer: they are in flight
    when the run is cut off."""

    def __init__(self, app: Sandbox, at: set[int]):
        self.app, self.at, self.count, self.hung = app, at, 0, False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and "/messaging/" in scope["path"]:
            self.count += 1
            if self.count in self.at:
                self.hung = True
                await anyio.sleep_forever()
        await self.app(scope, receive, send)


@pytest.mark.anyio
async def test_cut_off_runs_then_reconcile_still_give_each_step_once(tmp_path: Path) -> None:
    """Runs cut off with a request on the wire (as a second Ctrl-C, or a kill, leaves them): it is
    `unknown`; `reconcile` and `retry --not-found` then complete every sequence, each step once."""
    clock = VirtualClock(START)
    config = SandboxConfig(api_key=API_KEY, seed=11, reply_rate=0.2, reply_delay=(600.0, 8 * DAY))
    box = Sandbox(config, clock)
    hanging = _HangAt(box, {40, 150, 300})
    path = _campaign(tmp_path, 200, accounts=["acc_1", "acc_2"], limit="1000/1s")
    store = await Store.open(tmp_path / "c.db", START)
    try:
        await store.load([load_campaign(path)], START)
        for _ in range(3):
            hanging.hung = False
            await run_campaigns(store, clock, hanging, halt_when=lambda seen: hanging.hung)
        assert len(await store.unknowns("test-campaign")) >= 3  # each cut left one (at least) on the wire
        async with _api(box) as api:
            for _ in range(10):
                result, _ = await run_campaigns(store, clock, box)
                unknowns = await store.unknowns("test-campaign")
                if not unknowns and result.reason.value == "done":
                    break
                clock._now += 3600  # the conversations show what was sent by then
                await reconcile(store, api, clock, unknowns)
                await store.retry("test-campaign", ["unknown"], [], clock.now(), None, not_found=True)
            await poll(store, api, clock, "acc_1")
            await poll(store, api, clock, "acc_2")
        counts = await store.counts("test-campaign")
    finally:
        await store.close()
    replies = {r.recipient for r in box.replies(clock.now())}
    sends = _sends(box)
    for i in range(200):
        got = [text for _, text in sends[urn(i)]]
        assert len(set(got)) == len(got), f"{urn(i)} got a step twice: {got}"
        if urn(i) not in replies:
            assert len(got) == 3, f"{urn(i)} never replied and got {got}"
    assert counts["sent"] + counts["replied"] == 200


def test_odd_conversation_answers_are_read_safely_never_taken_for_replies() -> None:
    from campaign_runner.client import ReadRequest, classify_read

    listing = ReadRequest.conversations("acc_1")
    conversations = [
        {"conversationUrn": "x" * 5000, "participants": [{"profileId": "ACoAAa"}]},  # no such URN
        {"conversationUrn": "c1", "participants": [{"profileId": "bad id!"}, "nonsense", {"profileId": 7}],
         "lastActivityAt": "garbage"},
        "not a conversation",
    ]  # fmt: skip
    answer = classify_read(httpx.Response(200, json={"conversations": conversations, "hasMore": True}), listing)
    assert answer.listing is not None and answer.listing.cursor is None  # more, but no cursor: the end
    assert [(c.urn, c.participants, c.last_activity) for c in answer.listing.conversations] == [("c1", (), None)]
    odd = classify_read(httpx.Response(200, json={"conversations": {"a": 1}, "hasMore": False}), listing)
    assert odd.outcome.kind == "unknown" and odd.listing is None

    request = ReadRequest.messages("urn:li:msg_conversation:(x,2-1)", "acc_1", START)
    messages = [
        {"messageUrn": "m1", "text": "hello", "sentAt": "2026-01-02T00:00:00Z"},  # whose? not said: left out
        {"messageUrn": "m2", "text": None, "sentAt": 10**30, "isSentByOwner": False, "senderProfileId": "x y"},
        {"messageUrn": "m" * 3000, "text": "t" * 100_000, "sentAt": "2026-01-02T00:00:00Z", "isSentByOwner": False},
    ]
    found = classify_read(httpx.Response(200, json={"messages": messages, "hasMore": False}), request).listing
    assert found is not None
    assert [(m.urn, m.text, m.sender) for m in found.messages[:1]] == [("m2", "", None)]  # its time: the store's care
    assert found.messages[1].urn is None and len(found.messages[1].text) == 8000


@pytest.mark.anyio
async def test_a_listing_that_pages_for_ever_is_an_incomplete_look(tmp_path: Path) -> None:
    """A server that gives the same cursor again: the look stops and does not count as complete."""
    clock = VirtualClock(START)
    store = await Store.open(tmp_path / "c.db", START)
    page = {"conversations": [], "hasMore": True, "nextCursor": "again"}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        body = json.dumps(page).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    try:
        await store.load([load_campaign(_campaign(tmp_path, 2))], START)
        box = Sandbox(SandboxConfig(api_key=API_KEY), clock)
        await run_campaigns(store, clock, box, stop_after=2)
        before = await store.replies_polled("acc_1")
        clock._now += 60
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x/linkedin/") as http:
            result = await poll(store, ApiClient(http, 60.0), clock, "acc_1")
        assert result.error is not None and "same page" in result.error
        assert await store.replies_polled("acc_1") == before  # not a complete look: follow-ups still wait
    finally:
        await store.close()
