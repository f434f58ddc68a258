"""The sandbox over real HTTP on 127.0.0.1: documented bodies and headers, faults, quota, serving."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import anyio
import httpx
import pytest

from campaign_runner.clock import iso
from campaign_runner.sandbox import Delivery, RequestRecord, Sandbox, SandboxConfig, serve, serve_in_thread

AUTH = {"Authorization": "Bearer sandbox-key"}
URN = "urn:li:fsd_profile:ACoAAFpqSoMB8vTqRbg4mN_wbabO8w0gjgFu-6o"
BODY = {"recipientProfileUrn": URN, "groupId": "12345678", "message": "Hello fellow group member!"}
RATE_HEADERS = (
    "x-ratelimit-action",
    "x-ratelimit-limit",
    "x-ratelimit-used",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
)
ENDPOINTS = ("send-group", "send-group-with-typing", "send-group-with-ack")
REQUIRED_ERROR = {"success": False, "error": "recipientProfileUrn, groupId, and message are required"}

Start = Callable[..., tuple[Sandbox, httpx.Client]]


@pytest.fixture
def start() -> Iterator[Start]:
    """Serve a fresh sandbox (config fields as keywords) and return it with a client on its URL."""
    with contextlib.ExitStack() as stack:

        def _start(**config: Any) -> tuple[Sandbox, httpx.Client]:
            sandbox = Sandbox(SandboxConfig(**config))
            base_url = stack.enter_context(serve_in_thread(sandbox))
            client = stack.enter_context(httpx.Client(base_url=base_url, headers=AUTH, timeout=5.0))
            return sandbox, client

        yield _start


def send(client: httpx.Client, endpoint: str = "send-group", **fields: Any) -> httpx.Response:
    return client.post(f"/messaging/{endpoint}", json=BODY | fields)


def used(response: httpx.Response) -> int:
    return int(response.headers["x-ratelimit-used"])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_accepted_send_has_documented_body_and_headers(start: Start, endpoint: str) -> None:
    sandbox, client = start(quota=150)
    response = send(client, endpoint)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    expected = {
        "success": True,
        "message": "Group context message sent successfully",
        "recipientProfileUrn": URN,
        "groupId": "12345678",
    }
    if endpoint == "send-group-with-typing":
        expected["typingIndicatorSent"] = True
    if endpoint == "send-group-with-ack":
        expected["acknowledgmentSent"] = True
    assert response.json() == expected
    [delivery] = sandbox.log
    assert {name: response.headers[name] for name in RATE_HEADERS} == {
        "x-ratelimit-action": "MESSAGE",
        "x-ratelimit-limit": "150",
        "x-ratelimit-used": "1",
        "x-ratelimit-remaining": "149",
        "x-ratelimit-reset": iso(delivery.delivered_at + 86400.0),
    }
    assert delivery.endpoint == endpoint
    assert (delivery.account_id, delivery.recipient, delivery.group_id, delivery.message) == (
        None,
        URN,
        "12345678",
        "Hello fellow group member!",
    )
    assert delivery.received_at <= delivery.delivered_at


def test_log_in_order_and_served_over_http(start: Start) -> None:
    sandbox, client = start()
    send(client, message="one")
    send(client, "send-group-with-ack", accountId="acct-2", message="two", messageUrns=["urn:li:msg:1"])
    send(client, "send-group-with-typing", message="three", conversationUrn="urn:li:conv:1")
    log = sandbox.log
    assert [(d.message, d.account_id, d.endpoint) for d in log] == [
        ("one", None, "send-group"),
        ("two", "acct-2", "send-group-with-ack"),
        ("three", None, "send-group-with-typing"),
    ]
    assert all(isinstance(d, Delivery) for d in log)
    response = client.get("/_sandbox/log")
    assert response.status_code == 200
    assert response.json() == [asdict(d) for d in log]
    assert [(r.endpoint, r.status) for r in sandbox.requests] == [
        ("send-group", 200),
        ("send-group-with-ack", 200),
        ("send-group-with-typing", 200),
        ("/linkedin/_sandbox/log", 200),
    ]


def test_each_account_has_its_own_quota(start: Start) -> None:
    sandbox, client = start(quota=1)
    assert send(client).status_code == 200
    assert send(client).status_code == 429  # the key's default account is spent
    other = send(client, accountId="acct-2")
    assert other.status_code == 200
    assert (used(other), other.headers["x-ratelimit-remaining"]) == (1, "0")
    assert [d.account_id for d in sandbox.log] == [None, "acct-2"]
    assert sandbox.requests[-1] == RequestRecord(
        at=sandbox.requests[-1].at, endpoint="send-group", account_id="acct-2", recipient=URN, status=200
    )


def test_wrong_or_missing_key_is_401_without_rate_headers(start: Start) -> None:
    sandbox, client = start()
    client.headers.pop("Authorization")
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "bearer sandbox-key"},
        {"Authorization": "sandbox-key"},
        {"Authorization": "Bearer sandbox-key2"},
    ):
        response = client.post("/messaging/send-group", json=BODY, headers=headers)
        assert response.status_code == 401, headers
        assert response.json() == {"error": "Unauthorized - Invalid credentials"}
        assert not any(name in response.headers for name in RATE_HEADERS)
    assert sandbox.log == []


def test_unauthorized_after_counts_every_send_request(start: Start) -> None:
    sandbox, client = start(unauthorized_after=3, non_members={"urn:li:fsd_profile:gone"})
    assert send(client).status_code == 200
    assert send(client, recipientProfileUrn="urn:li:fsd_profile:gone").status_code == 403
    assert [send(client).status_code for _ in range(2)] == [401, 401]
    assert len(sandbox.log) == 1


def test_missing_required_field_is_documented_400(start: Start) -> None:
    sandbox, client = start()
    for fields in (
        {"recipientProfileUrn": None},
        {"groupId": None},
        {"message": None},
        {"message": ""},
        {"groupId": 12345678},
    ):
        body = {k: v for k, v in (BODY | fields).items() if v is not None}
        response = client.post("/messaging/send-group", json=body)
        assert response.status_code == 400, fields
        assert response.json() == REQUIRED_ERROR
        assert all(name in response.headers for name in RATE_HEADERS)
    assert sandbox.log == []


def test_field_not_in_schema_is_400_with_issues(start: Start) -> None:
    sandbox, client = start()
    for endpoint, fields, path in (
        ("send-group", {"conversationUrn": "urn:li:conv:1"}, []),
        ("send-group-with-ack", {"conversationUrn": "urn:li:conv:1"}, []),
        ("send-group-with-typing", {"messageUrns": []}, []),
        ("send-group", {"accountId": ""}, ["accountId"]),
        ("send-group", {"accountId": 7}, ["accountId"]),
        ("send-group-with-ack", {"messageUrns": "urn:li:msg:1"}, ["messageUrns"]),
    ):
        response = send(client, endpoint, **fields)
        assert response.status_code == 400, (endpoint, fields)
        body = response.json()
        assert body["success"] is False
        [issue] = body["error"]["issues"]
        assert issue["path"] == path
        if not path:
            assert issue["keys"] == list(fields)
        assert used(response) == 0
    assert sandbox.log == []


def test_body_that_is_not_a_json_object_is_400(start: Start) -> None:
    sandbox, client = start()
    huge = b'{"message": "' + b"x" * 200_000 + b'"}'
    for content in (b"{not json", b"[1, 2]", b"\xff\xfe", b"", b"[" * 30_000, huge):
        response = client.post("/messaging/send-group", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400, content[:20]
        assert response.json() == {"success": False, "error": "Request body must be a JSON object"}
    assert send(client).status_code == 200  # and it keeps serving
    assert [r.status for r in sandbox.requests] == [400] * 6 + [200]


def test_invalid_recipient_is_documented_400(start: Start) -> None:
    sandbox, client = start(invalid={URN})
    response = send(client)
    assert (response.status_code, response.json()) == (400, REQUIRED_ERROR)
    assert sandbox.log == []


def test_non_member_is_documented_403_and_uses_no_quota(start: Start) -> None:
    sandbox, client = start()
    assert send(client, recipientProfileUrn="urn:li:fsd_profile:other").status_code == 200
    sandbox.config.non_members.add(URN)  # the config may change while it serves
    for endpoint in ENDPOINTS:
        response = send(client, endpoint)
        assert response.status_code == 403, endpoint
        assert response.json() == {
            "success": False,
            "message": "Error sending group context message: Request failed with status code 403",
            "recipientProfileUrn": URN,
            "groupId": "12345678",
            "typingIndicatorSent": False,
        }
        assert (used(response), response.headers["x-ratelimit-remaining"]) == (1, "149")
    assert len(sandbox.log) == 1


def test_fail_500_counts_down_then_delivers(start: Start) -> None:
    sandbox, client = start(fail_500={URN: 2})
    first, second = send(client), send(client)
    for response in (first, second):
        assert response.status_code == 500
        assert response.json() == {"error": "Internal server error", "success": False}
        assert all(name in response.headers for name in RATE_HEADERS)
    assert send(client).status_code == 200
    assert sandbox.config.fail_500 == {URN: 0}
    assert len(sandbox.log) == 1


def test_quota_exhausted_is_429_until_the_window_slides(start: Start) -> None:
    sandbox, client = start(quota=2, quota_window=0.5, non_members={"urn:li:fsd_profile:gone"})
    assert [used(send(client)) for _ in range(2)] == [1, 2]
    refused = send(client)
    oldest = sandbox.log[0].delivered_at
    assert refused.status_code == 429
    assert refused.json() == {"error": "Rate limit exceeded for MESSAGE: 2/2 used", "success": False}
    assert refused.headers["x-ratelimit-used"] == "2"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-reset"] == iso(oldest + 0.5)
    # A refusal of any kind uses no quota; the window counts delivered messages only.
    assert send(client, recipientProfileUrn="urn:li:fsd_profile:gone").status_code == 429
    time.sleep(max(oldest + 0.55 - time.time(), 0))
    again = send(client)
    assert again.status_code == 200
    assert used(again) <= 2
    assert len(sandbox.log) == 3


def test_hold_is_429_with_hold_until_for_that_account_only(start: Start) -> None:
    until = time.time() + 60
    sandbox, client = start(holds={"acct-1": until, "acct-2": time.time() - 1})
    held = send(client, accountId="acct-1")
    assert held.status_code == 429
    assert held.json() == {
        "error": "Rate limit exceeded for MESSAGE: 0/150 used",
        "success": False,
        "holdUntil": iso(until),
    }
    assert all(name in held.headers for name in RATE_HEADERS)
    assert send(client, accountId="acct-2").status_code == 200  # a hold in the past is over
    assert send(client).status_code == 200
    sandbox.config.holds[None] = until  # the key's default account can be held too
    assert send(client).json()["holdUntil"] == iso(until)
    assert [d.account_id for d in sandbox.log] == ["acct-2", None]


def test_typing_delay_applies_to_the_typing_endpoint_only(start: Start) -> None:
    sandbox, client = start(typing_delay=0.2)
    assert send(client, "send-group-with-typing").status_code == 200
    assert send(client, "send-group").status_code == 200
    typed, plain = sandbox.log
    assert typed.delivered_at - typed.received_at >= 0.2
    assert plain.delivered_at - plain.received_at < 0.2


def test_client_that_gives_up_during_typing_still_gets_delivered(start: Start) -> None:
    # The case the runner must record as "unknown": the response was lost, the message was sent.
    sandbox, client = start(typing_delay=0.3)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/messaging/send-group-with-typing", json=BODY, timeout=0.05)
    deadline = time.monotonic() + 2
    while not sandbox.log and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [d.recipient for d in sandbox.log] == [URN]


def test_unknown_path_is_404_and_wrong_method_405(start: Start) -> None:
    sandbox, client = start()
    cases = [
        ("GET", "/linkedin/messaging/nope", 404),
        ("POST", "/messaging/send-group", 404),
        ("GET", "/linkedin/messaging/send-group", 405),
        ("PUT", "/linkedin/messaging/send-group-with-ack", 405),
        ("POST", "/linkedin/_sandbox/log", 405),
    ]
    for method, path, status in cases:
        response = client.request(method, client.base_url.copy_with(path=path), json=BODY)
        assert response.status_code == status, (method, path)
        assert response.headers["content-type"] == "application/json"
        assert response.json() == ({"error": "Not found"} if status == 404 else {"error": "Method not allowed"})
        assert not any(name in response.headers for name in RATE_HEADERS)
    assert sandbox.log == []
    assert [(r.endpoint, r.status) for r in sandbox.requests][-2:] == [
        ("send-group-with-ack", 405),
        ("/linkedin/_sandbox/log", 405),
    ]


def test_unexpected_error_is_500_and_it_keeps_serving(start: Start) -> None:
    sandbox, client = start()
    sandbox.config.quota = None  # type: ignore[assignment]  # a broken switch, not a crash
    response = send(client)
    assert response.status_code == 500
    assert response.json()["success"] is False
    sandbox.config.quota = 150
    assert send(client).status_code == 200


@pytest.mark.anyio
async def test_serve_in_a_task_group_never_overshoots_the_quota() -> None:
    sandbox = Sandbox(SandboxConfig(quota=2, typing_delay=0.3))
    handler = signal.getsignal(signal.SIGINT)
    async with anyio.create_task_group() as tg:
        base_url = await tg.start(serve, sandbox)
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/linkedin")
        assert signal.getsignal(signal.SIGINT) is handler  # serve() leaves signals to its caller
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=5.0) as client:

            async def post() -> None:
                response = await client.post("/messaging/send-group-with-typing", json=BODY)
                statuses.append(response.status_code)

            # Sends still typing count against the quota, so concurrency cannot pass it.
            async with anyio.create_task_group() as senders:
                for _ in range(4):
                    senders.start_soon(post)
        tg.cancel_scope.cancel()
    assert sorted(statuses) == [200, 200, 429, 429]
    assert len(sandbox.log) == 2


# --- fault switches ------------------------------------------------------------------------


def test_credentials_error_and_forbidden_after_hit_only_their_account(start: Start) -> None:
    sandbox, client = start(credentials_error={"acc-bad"}, forbidden_after={"acc-blocked": 2})
    bad = send(client, accountId="acc-bad")
    assert (bad.status_code, bad.json()) == (
        500,
        {"error": "Failed to get LinkedIn authentication credentials", "success": False},
    )
    assert send(client, accountId="acc-blocked").status_code == 200  # its first request goes through
    for other in ("urn:li:fsd_profile:a", "urn:li:fsd_profile:b"):  # from the 2nd on, everyone is refused
        refused = send(client, accountId="acc-blocked", recipientProfileUrn=other)
        assert refused.status_code == 403
        assert refused.json() == {
            "success": False,
            "error": "Your trial has expired or you have no active subscription",
            "typingIndicatorSent": False,
        }
    assert send(client).status_code == 200
    assert [d.account_id for d in sandbox.log] == ["acc-blocked", None]


def test_a_dropped_request_is_delivered_and_the_connection_closed_without_an_answer(start: Start) -> None:
    sandbox, client = start(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        send(client)
    assert [d.recipient for d in sandbox.log] == [URN]
    assert [r.status for r in sandbox.requests] == [0]


def test_a_slow_answer_comes_after_the_clients_timeout_but_the_message_is_delivered(start: Start) -> None:
    sandbox, client = start(slow_rate=1.0, slow_delay=1.0)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/messaging/send-group", json=BODY, timeout=0.3)
    assert [d.recipient for d in sandbox.log] == [URN]


def test_a_429_storm_refuses_the_account_until_it_ends(start: Start) -> None:
    sandbox, client = start(storm_rate=1.0, storm_length=0.5, seed=1)
    answers = [send(client) for _ in range(6)]
    assert {a.status_code for a in answers} == {429}
    resets = {a.headers["x-ratelimit-reset"] for a in answers}
    assert len(resets) == 1  # one storm, one end
    holds = [a.json().get("holdUntil") for a in answers]
    assert set(holds) == {None, resets.pop()}  # some say it in the body too, some only in the header
    assert sandbox.log == []


def test_bad_gateway_is_an_html_page_without_rate_headers(start: Start) -> None:
    sandbox, client = start(bad_gateway_rate=1.0)
    answer = send(client)
    assert (answer.status_code, answer.headers["content-type"]) == (502, "text/html")
    assert answer.text.startswith("<html>")
    assert not any(name in answer.headers for name in RATE_HEADERS)
    assert sandbox.log == []


def test_bad_headers_are_missing_or_malformed(start: Start) -> None:
    sandbox, client = start(bad_headers_rate=1.0, seed=3)
    answers = [send(client, recipientProfileUrn=f"urn:li:fsd_profile:{n}") for n in range(12)]
    assert {a.status_code for a in answers} == {200}
    shapes = {tuple(a.headers.get(name) for name in RATE_HEADERS) for a in answers}
    assert shapes == {(None,) * 5, ("MESSAGE", "unlimited", "-", "n/a", "tomorrow")}
    assert len(sandbox.log) == 12


def test_shares_are_drawn_from_the_seed(start: Start) -> None:
    def statuses(seed: int) -> list[int]:
        _, client = start(error_rate=0.5, seed=seed)
        return [send(client, recipientProfileUrn=f"urn:li:fsd_profile:{n}").status_code for n in range(30)]

    first = statuses(7)
    assert first == statuses(7)
    assert set(first) == {200, 500}
    assert first != statuses(8)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_sandbox_command_stops_quietly_on_a_signal(sig, tmp_path) -> None:
    import subprocess

    from conftest import EXECUTABLE

    log = tmp_path / "sandbox.err"
    with log.open("wb") as err:
        process = subprocess.Popen([EXECUTABLE, "sandbox", "--port", "0"], stderr=err, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while "listening" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(sig)
        assert process.wait(20) == 130
    finally:
        process.kill()
        process.wait()
    assert "Traceback" not in log.read_text()
