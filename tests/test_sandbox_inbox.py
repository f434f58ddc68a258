"""The sandbox's inbox over real HTTP on 127.0.0.1: replies drawn from the seed, the conversation
endpoints as the OpenAPI file describes them, and the signed message.received webhook."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.lowlevel
import httpx
import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_schema_validator import OAS30Validator
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response

from campaign_runner.clock import iso
from campaign_runner.sandbox import Sandbox
from campaign_runner.sandbox_inbox import OPT_OUT_TEXTS, REPLY_TEXTS, SandboxReply
from campaign_runner.sandbox_reads import member_urn

from conftest import API_KEY, EXECUTABLE, run_cli, wait_for

START = 1_800_000_000.0
CONTRACT = Path(__file__).parent.parent / "docs" / "connectsafely-openapi.yaml"
SECRET = "test-webhook-secret"

Serve = Callable[..., tuple[Sandbox, str]]


class HandClock:
    """A clock the test moves by hand: the sandbox only ever asks it the time."""

    def __init__(self, at: float = START):
        self.at = at

    def now(self) -> float:
        return self.at

    def worker(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def sleep_until(self, deadline: float, wake: anyio.Event | None = None) -> None:
        self.at = max(self.at, deadline)
        await anyio.lowlevel.checkpoint()


@pytest.fixture
def clock() -> HandClock:
    return HandClock()


@pytest.fixture
def connect() -> Iterator[Callable[[str], httpx.Client]]:
    """A client on a sandbox's base URL with its key; closed after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda url: stack.enter_context(
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10.0)
        )


def send(http: httpx.Client, person: int, account: str | None = None, message: str | None = None) -> None:
    body: dict[str, Any] = {
        "recipientProfileUrn": member_urn(person),
        "groupId": "12345678",
        "message": message or f"Hello {person}",
    }
    if account is not None:
        body["accountId"] = account
    response = http.post("/messaging/send-group", json=body)
    assert response.status_code == 200, response.text


def conversations(http: httpx.Client, **query: Any) -> httpx.Response:
    return http.get("/conversations", params=query)


def messages(http: httpx.Client, urn: str, **query: Any) -> httpx.Response:
    return http.get(f"/conversations/{quote(urn, safe='')}/messages", params=query)


def listed(http: httpx.Client, **query: Any) -> list[dict[str, Any]]:
    response = conversations(http, **query)
    assert response.status_code == 200, response.text
    return response.json()["conversations"]


def profile_id(person: int) -> str:
    return member_urn(person).removeprefix("urn:li:fsd_profile:")


def invalid(name: str) -> dict[str, Any]:
    issue = {"code": "invalid_type", "path": [name], "message": f"Invalid value for {name}"}
    return {"success": False, "error": {"issues": [issue]}}


# --- replies ------------------------------------------------------------------------------------


def test_one_seed_and_the_same_deliveries_give_the_same_replies(serve_sandbox: Serve, connect, clock) -> None:
    def replies(seed: int) -> list[SandboxReply]:
        box, url = serve_sandbox(clock, seed=seed, reply_rate=0.4, opt_out_rate=0.5)
        http = connect(url)
        for person in range(60):
            send(http, person, account="acc_1" if person % 2 else None)
        return box.replies()

    first = replies(7)
    assert first == replies(7)
    assert first != replies(8)
    assert 0 < len(first) < 60 and {r.account_id for r in first} == {None, "acc_1"}
    assert [r.arrives_at for r in first] == sorted(r.arrives_at for r in first)  # in order of arrival


def test_replies_come_from_a_share_of_people_once_each_within_the_delay(serve_sandbox: Serve, connect, clock) -> None:
    box, url = serve_sandbox(clock, seed=1, quota=5000, reply_rate=0.3, reply_delay=(600.0, 7200.0), opt_out_rate=0.25)
    http = connect(url)
    for person in range(1000):
        send(http, person)
    drawn = box.replies()
    assert 250 <= len(drawn) <= 350  # 300 expected; the binomial's deviation is 14.5
    for person in range(200):  # a second message draws nothing more
        send(http, person, message="A follow-up")
    assert box.replies() == drawn
    assert len({r.recipient for r in drawn}) == len(drawn)
    assert all(START + 600 <= r.arrives_at <= START + 7200 for r in drawn)
    opt_outs = [r for r in drawn if r.opt_out]
    assert 0.15 <= len(opt_outs) / len(drawn) <= 0.35
    assert {r.text for r in opt_outs} <= set(OPT_OUT_TEXTS)
    assert {r.text for r in drawn if not r.opt_out} <= set(REPLY_TEXTS)
    assert box.replies(START + 3600) == [r for r in drawn if r.arrives_at <= START + 3600]
    page = conversations(http).json()
    assert (len(page["conversations"]), page["hasMore"]) == (20, True)  # 20 a page unless asked
    assert len(listed(http, count=100)) == 100


def test_nobody_replies_by_default(serve_sandbox: Serve, connect, clock) -> None:
    box, url = serve_sandbox(clock, seed=1)
    http = connect(url)
    for person in range(20):
        send(http, person)
    assert box.replies() == []


# --- GET /conversations -------------------------------------------------------------------------


def test_conversations_are_listed_most_recent_first_a_page_at_a_time(serve_sandbox: Serve, connect, clock) -> None:
    _, url = serve_sandbox(clock)
    http = connect(url)
    for person in range(5):
        clock.at = START + 10 * person
        send(http, person)
    send(http, 9, account="acc_2")
    clock.at = START + 100
    seen, query = [], {"count": 2}
    while True:
        response = conversations(http, **query)
        assert response.status_code == 200
        page = response.json()
        seen.append([c["participants"][0]["profileId"] for c in page["conversations"]])
        assert page["hasMore"] == (page["nextCursor"] is not None)
        if not page["hasMore"]:
            break
        query["nextCursor"] = page["nextCursor"]
    ids = [profile_id(person) for person in range(5)]
    assert seen == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]]]
    assert [c["participants"][0]["profileId"] for c in listed(http)] == ids[::-1]
    assert [c["participants"][0]["profileId"] for c in listed(http, accountId="acc_2")] == [profile_id(9)]
    assert listed(http, accountId="acc_3") == []
    [latest] = listed(http, count=1)
    assert latest == {
        "conversationUrn": latest["conversationUrn"],
        "conversationId": latest["conversationId"],
        "lastActivityAt": iso(START + 40),
        "unreadCount": 0,
        "participants": [
            {"profileId": ids[4], "name": "Barbara Liskov", "profileUrl": "https://www.linkedin.com/in/member-000004/"}
        ],
        "latestMessage": {"text": "Hello 4", "sentAt": iso(START + 40), "senderName": "Sandbox default"},
    }
    assert (
        latest["conversationUrn"] == f"urn:li:msg_conversation:(urn:li:fsd_profile:default,{latest['conversationId']})"
    )


def test_a_bad_count_or_cursor_is_a_400_and_unknown_parameters_are_ignored(serve_sandbox: Serve, connect) -> None:
    _, url = serve_sandbox()
    http = connect(url)
    send(http, 1)
    for count in ("0", "101", "ten", "-1", "2.5", "9" * 5000):
        response = conversations(http, count=count)
        assert (response.status_code, response.json()) == (400, invalid("count")), count
    deep = base64.urlsafe_b64encode(b"[" * 20_000).decode()
    for cursor in ("garbage", "bm90IGpzb24=", "WzEsMiwzXQ==", "é", deep):
        response = conversations(http, nextCursor=cursor)
        assert (response.status_code, response.json()) == (400, invalid("nextCursor")), cursor
    assert conversations(http, unreadOnly="yes").json() == invalid("unreadOnly")
    assert len(listed(http, count=100, linkedinAccountIds="a,b", color="blue")) == 1
    assert http.post("/conversations", json={}).status_code == 405


def test_what_shows_follows_the_message_lag_and_when_a_reply_arrives(serve_sandbox: Serve, connect, clock) -> None:
    box, url = serve_sandbox(clock, seed=3, reply_rate=1.0, reply_delay=(300.0, 300.0), message_lag=60.0)
    http = connect(url)
    send(http, 1)
    [reply] = box.replies()
    assert (reply.arrives_at, reply.recipient, reply.account_id) == (START + 300, member_urn(1), None)
    clock.at = START + 59.9
    assert listed(http) == [] and box.replies(clock.at) == []
    clock.at = START + 60
    [conversation] = listed(http)
    assert (conversation["unreadCount"], conversation["latestMessage"]["text"]) == (0, "Hello 1")
    assert listed(http, unreadOnly="true") == []
    clock.at = START + 300
    [conversation] = listed(http, unreadOnly="true")
    assert conversation["unreadCount"] == 1
    assert conversation["lastActivityAt"] == iso(START + 300)
    assert conversation["latestMessage"] == {
        "text": reply.text,
        "sentAt": iso(START + 300),
        "senderName": "Grace Hopper",
    }
    assert box.replies(clock.at) == [reply]
    # A message sent later shows only after the lag again; the person's reply stays unread until then.
    clock.at = START + 400
    send(http, 1, message="Glad to hear it")
    assert (listed(http)[0]["latestMessage"]["text"], listed(http)[0]["unreadCount"]) == (reply.text, 1)
    clock.at = START + 460
    assert (listed(http)[0]["latestMessage"]["text"], listed(http)[0]["unreadCount"]) == ("Glad to hear it", 0)


def test_a_reply_before_the_lag_has_passed_shows_alone(serve_sandbox: Serve, connect, clock) -> None:
    _, url = serve_sandbox(clock, reply_rate=1.0, reply_delay=(30.0, 30.0), message_lag=600.0)
    http = connect(url)
    send(http, 2)
    clock.at = START + 30
    [conversation] = listed(http)
    assert conversation["latestMessage"]["senderName"] == "Alan Turing"
    [only] = messages(http, conversation["conversationUrn"]).json()["messages"]
    assert only["isSentByOwner"] is False


# --- GET /conversations/{conversationUrn}/messages ------------------------------------------------


def test_messages_newest_first_since_a_time_and_a_page_at_a_time(serve_sandbox: Serve, connect, clock) -> None:
    account = "team/acc 1"  # a '/' and a space in the URN: they arrive percent-encoded
    box, url = serve_sandbox(clock, reply_rate=1.0, reply_delay=(15.0, 15.0))
    http = connect(url)
    for step in range(3):
        clock.at = START + 10 * step
        send(http, 5, account=account, message=f"message {step}")
    [reply] = box.replies()
    clock.at = START + 100
    [conversation] = listed(http, accountId=account)
    urn = conversation["conversationUrn"]
    assert "team/acc 1" in urn
    response = messages(http, urn, accountId=account)
    assert response.status_code == 200
    body = response.json()
    assert (body["success"], body["hasMore"], body["cursor"]) == (True, False, None)
    own = {"senderProfileId": account, "senderName": f"Sandbox {account}", "isSentByOwner": True}
    theirs = {"senderProfileId": profile_id(5), "senderName": "Donald Knuth", "isSentByOwner": False}
    expected = [
        {"text": "message 2", "sentAt": iso(START + 20), **own},
        {"text": reply.text, "sentAt": iso(START + 15), **theirs},
        {"text": "message 1", "sentAt": iso(START + 10), **own},
        {"text": "message 0", "sentAt": iso(START), **own},
    ]
    assert [{k: v for k, v in m.items() if k != "messageUrn"} for m in body["messages"]] == expected
    assert body["messages"][1]["messageUrn"] == reply.message_urn
    assert len({m["messageUrn"] for m in body["messages"]}) == 4
    first = messages(http, urn, accountId=account, count=3).json()
    assert (len(first["messages"]), first["hasMore"]) == (3, True)
    rest = messages(http, urn, accountId=account, count=3, cursor=first["cursor"]).json()
    assert (rest["messages"], rest["hasMore"], rest["cursor"]) == (body["messages"][3:], False, None)
    newer = messages(http, urn, accountId=account, since=iso(START + 10)).json()["messages"]
    assert [m["text"] for m in newer] == ["message 2", reply.text]  # strictly newer than `since`
    assert messages(http, urn, accountId=account, since=newer[0]["sentAt"]).json()["messages"] == []
    assert messages(http, urn, accountId=account, since="last week").json() == invalid("since")
    assert messages(http, urn, accountId=account, cursor="nope").json() == invalid("cursor")
    assert messages(http, urn, accountId=account, count=500).json() == invalid("count")


def test_an_unknown_conversation_or_another_accounts_is_a_404(serve_sandbox: Serve, connect, clock) -> None:
    _, url = serve_sandbox(clock, message_lag=60.0)
    http = connect(url)
    send(http, 1, account="acc_1")
    clock.at = START + 60
    [conversation] = listed(http, accountId="acc_1")
    urn = conversation["conversationUrn"]
    not_found = {"success": False, "error": "Conversation not found"}
    for response in (
        messages(http, urn),  # the key's default account's: not this one
        messages(http, urn, accountId="acc_2"),
        messages(http, "urn:li:msg_conversation:(urn:li:fsd_profile:acc_1,2-0000)", accountId="acc_1"),
    ):
        assert (response.status_code, response.json()) == (404, not_found)
    assert messages(http, urn, accountId="acc_1").status_code == 200
    send(http, 2, account="acc_1")
    assert len(listed(http, accountId="acc_1")) == 1  # not shown yet: the store does not know it
    clock.at = START + 120
    [later] = [c["conversationUrn"] for c in listed(http, accountId="acc_1") if c["conversationUrn"] != urn]
    clock.at = START + 60  # back to before it showed
    assert messages(http, later, accountId="acc_1").status_code == 404
    assert http.get("/conversations/exists/member-000001", params={"accountId": "acc_1"}).json()["hasConversation"]


# --- the OpenAPI file ---------------------------------------------------------------------------


def check_exchange(spec: OpenAPI, response: httpx.Response) -> None:
    """Validate one request and its answer with openapi-core against the vendor's file."""
    request = response.request
    builder = EnvironBuilder(
        method=request.method,
        base_url="http://127.0.0.1:8765/",  # served as the spec's server
        path=request.url.raw_path.decode("ascii").partition("?")[0],
        query_string=request.url.query.decode("ascii"),
        headers={k: v for k, v in request.headers.items() if k != "host"},
    )
    openapi_request = WerkzeugOpenAPIRequest(builder.get_request())
    spec.validate_request(openapi_request)
    answer = Response(response.content, status=response.status_code, headers=dict(response.headers))
    spec.validate_response(openapi_request, WerkzeugOpenAPIResponse(answer))


def test_the_inbox_answers_as_the_openapi_file_describes(serve_sandbox: Serve, connect, clock) -> None:
    # The file is kept as the vendor's reference has it, stray comma in Message and all (see
    # test_audience): checked for what it describes, not itself validated.
    spec = OpenAPI.from_file_path(str(CONTRACT), config=Config(spec_validator_cls=None))
    box, url = serve_sandbox(clock, seed=2, reply_rate=0.5, reply_delay=(5.0, 50.0))
    http = connect(url)
    for person in range(6):
        send(http, person, account="acc_1")
    clock.at = START + 30
    first = conversations(http, accountId="acc_1", count=4)
    [urn, *_] = [c["conversationUrn"] for c in first.json()["conversations"]]
    exchanges = [
        first,
        conversations(http, accountId="acc_1", count=4, nextCursor=first.json()["nextCursor"]),
        conversations(http, unreadOnly="true"),
        messages(http, urn, accountId="acc_1", count=1),
        messages(http, urn, accountId="acc_1", since=iso(START)),
        messages(http, urn),  # a 404
    ]
    assert [e.status_code for e in exchanges] == [200, 200, 200, 200, 200, 404]
    for exchange in exchanges:
        check_exchange(spec, exchange)


# --- the webhook --------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.1: keeps every POST (headers and exact body); answers `statuses`."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # answers to give, in turn; then 200
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.posts]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    thread = threading.Thread(target=found.server.serve_forever, daemon=True)
    thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()
    thread.join()


def flush(box: Sandbox, now: float) -> int:
    return anyio.run(box.flush_webhooks, now)


def replied(serve_sandbox: Serve, connect, clock: HandClock, people: int, **config: Any) -> Sandbox:
    """A sandbox where each of `people` replies, one every 10 s from START + 100."""
    return replied_with_client(serve_sandbox, connect, clock, people, **config)[0]


def replied_with_client(
    serve_sandbox: Serve, connect, clock: HandClock, people: int, **config: Any
) -> tuple[Sandbox, httpx.Client]:
    config = {"reply_rate": 1.0, "reply_delay": (100.0, 100.0), "webhook_secret": SECRET} | config
    webhook_url = config.pop("webhook_url")
    box, url = serve_sandbox(clock, **config)
    # Given once served, so serve() starts no flusher of its own: the test flushes, at the times it says.
    box.config.webhook_url = webhook_url
    http = connect(url)
    for person in range(people):
        clock.at = START + 10 * person
        send(http, person, account="acc_1" if person % 2 else None)
    return box, http


def test_each_reply_is_posted_once_signed_as_a_message_received_event(
    serve_sandbox: Serve, connect, clock, receiver: Receiver
) -> None:
    box, http = replied_with_client(serve_sandbox, connect, clock, 3, webhook_url=receiver.url)
    assert flush(box, START + 99) == 0 and receiver.posts == []
    assert flush(box, START + 110) == 2
    assert flush(box, START + 500) == 1
    assert flush(box, START + 900) == 0
    schema = yaml.safe_load(CONTRACT.read_text(encoding="utf-8"))["components"]["schemas"]["MessageReceivedEvent"]
    replies = box.replies()
    for (headers, body), reply in zip(receiver.posts, replies, strict=True):
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-webhook-signature"], expected)
        assert headers["content-type"] == "application/json"
        event = json.loads(body)
        OAS30Validator(schema).validate(event)
        data = event["data"]
        assert (event["event"], event["object"], data["provider"]) == ("message.received", "event", "LINKEDIN")
        assert data["message_urn"] == reply.message_urn and data["body"] == reply.text
        assert data["account_id"] == (reply.account_id or "default")
        assert data["sender"]["id"] == reply.recipient and data["timestamp"] == iso(reply.arrives_at)
        assert data["conversation_id"].startswith("urn:li:messagingThread:")
    assert {e["data"]["account_id"] for e in receiver.events} == {"default", "acc_1"}
    clock.at = START + 900
    rest_urns = {c["conversationUrn"] for c in listed(http) + listed(http, accountId="acc_1")}
    assert len(rest_urns) == 3 and not rest_urns & {e["data"]["conversation_id"] for e in receiver.events}


def test_events_may_come_twice_never_or_out_of_order(serve_sandbox: Serve, connect, clock, receiver: Receiver) -> None:
    twice = replied(serve_sandbox, connect, clock, 4, webhook_url=receiver.url, webhook_duplicate_rate=1.0)
    assert flush(twice, START + 1000) == 8
    urns = [e["data"]["message_urn"] for e in receiver.events]
    assert sorted(urns) == sorted(2 * [r.message_urn for r in twice.replies()])
    by_urn: dict[str, set[bytes]] = {}
    for _, body in receiver.posts:
        by_urn.setdefault(json.loads(body)["data"]["message_urn"], set()).add(body)
    assert all(len(bodies) == 1 for bodies in by_urn.values())  # the same bytes twice

    receiver.posts.clear()
    clock.at = START
    dropped = replied(serve_sandbox, connect, clock, 4, webhook_url=receiver.url, webhook_drop_rate=1.0)
    assert [flush(dropped, START + 1000), flush(dropped, START + 2000)] == [0, 0] and receiver.posts == []

    def order(shuffle: bool) -> tuple[list[str], list[str]]:
        """The events' order as received, and the replies' order of arrival."""
        receiver.posts.clear()
        clock.at = START
        box = replied(serve_sandbox, connect, clock, 30, seed=5, webhook_url=receiver.url, webhook_shuffle=shuffle)
        assert flush(box, START + 1000) == 30
        return [e["data"]["message_urn"] for e in receiver.events], [r.message_urn for r in box.replies()]

    in_order, arrival = order(False)
    shuffled, same_arrival = order(True)
    assert in_order == arrival == same_arrival
    assert sorted(shuffled) == sorted(arrival) and shuffled != arrival
    assert shuffled == order(True)[0]  # drawn from the seed


def test_a_failing_receiver_gets_three_attempts_an_event(
    serve_sandbox: Serve, connect, clock, receiver: Receiver
) -> None:
    box = replied(serve_sandbox, connect, clock, 1, webhook_url=receiver.url)
    receiver.statuses = [500, 503]
    assert [flush(box, START + 200) for _ in range(4)] == [0, 0, 1, 0]  # the third attempt gets through
    assert len(receiver.posts) == 3 and len({body for _, body in receiver.posts}) == 1

    receiver.posts.clear()
    receiver.statuses = [500] * 10
    clock.at = START
    box = replied(serve_sandbox, connect, clock, 2, webhook_url=receiver.url)
    assert [flush(box, START + 500) for _ in range(5)] == [0, 0, 0, 0, 0]
    assert len(receiver.posts) == 6  # three an event, then given up

    with socket.socket() as closed:  # a port nobody listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}/hooks"
    clock.at = START
    box = replied(serve_sandbox, connect, clock, 1, webhook_url=refused)
    assert [flush(box, START + 500) for _ in range(4)] == [0, 0, 0, 0]
    box.config.webhook_url = receiver.url
    assert flush(box, START + 500) == 0 and len(receiver.posts) == 6  # given up after three attempts


def test_served_with_a_webhook_url_it_posts_replies_every_second(
    serve_sandbox: Serve, connect, receiver: Receiver
) -> None:
    box, url = serve_sandbox(reply_rate=1.0, reply_delay=(0.0, 0.0), webhook_url=receiver.url)
    send(connect(url), 1)
    wait_for(lambda: len(receiver.posts) == 1, timeout=10)
    assert receiver.events[0]["data"]["message_urn"] == box.replies()[0].message_urn


def test_the_sandbox_command_makes_people_reply_and_signs_with_the_secret_from_the_environment(
    receiver: Receiver, processes: list[subprocess.Popen], tmp_path: Path
) -> None:
    log = tmp_path / "sandbox.err"
    options = ["--reply-rate", "1", "--reply-delay", "0s,1s", "--message-lag", "2m", "--webhook-url", receiver.url]
    env = {**os.environ, "CONNECTSAFELY_WEBHOOK_SECRET": SECRET}
    with log.open("wb") as err:
        process = subprocess.Popen(
            [EXECUTABLE, "sandbox", "--port", "0", "--api-key", API_KEY, *options],
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    processes.append(process)  # killed at the end whatever happens
    wait_for(lambda: "listening on" in log.read_text(), timeout=20)
    url = log.read_text().split("listening on ")[1].split()[0]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        send(http, 1)
        wait_for(lambda: len(receiver.posts) == 1, timeout=10)
        [conversation] = listed(http)
        # The reply shows; our message only two minutes after it was sent.
        [only] = messages(http, conversation["conversationUrn"]).json()["messages"]
        assert only["isSentByOwner"] is False
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 130
    headers, body = receiver.posts[0]
    assert headers["x-webhook-signature"] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    text = log.read_text()
    assert "sandbox POSTs replies to " + receiver.url in text and "Traceback" not in text


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--reply-delay", "5m"], "--reply-delay: expected MIN,MAX such as 10m,3d, got '5m'"),
        (["--reply-delay", "1h,5m"], "--reply-delay: MIN is more than MAX in '1h,5m'"),
        (["--message-lag", "soon"], "--message-lag: 'soon' is not a duration"),
        (["--webhook-url", "127.0.0.1:9000"], "--webhook-url: expected an http:// or https:// URL"),
    ],
)
def test_the_sandbox_command_refuses_options_it_cannot_read(args: list[str], error: str, capsys) -> None:
    assert run_cli(["sandbox", "--port", "0", *args]) == 2
    assert error in capsys.readouterr().err
