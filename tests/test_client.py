"""The status table, through httpx.MockTransport; the network failures, for real on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

from campaign_runner.client import AccountClients, ApiClient, SendRequest, check_base_url, make_http_client
from campaign_runner.clock import parse_iso
from campaign_runner.errors import ConfigError
from campaign_runner.outcome import Kind

from conftest import API_KEY, urn

pytestmark = pytest.mark.anyio

HEADERS = {
    "X-RateLimit-Action": "MESSAGE",
    "X-RateLimit-Limit": "150",
    "X-RateLimit-Used": "12",
    "X-RateLimit-Remaining": "138",
    "X-RateLimit-Reset": "2026-11-27T00:00:00Z",
}
REQUEST = SendRequest("send-group", urn(1), "12345678", "Hello", None)


async def answer(status: int, body: object, headers: dict[str, str] | None = None, seen: list | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        content = body if isinstance(body, str) else json.dumps(body)
        return httpx.Response(status, text=content, headers=headers or HEADERS)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://api.test/linkedin/") as http:
        return await ApiClient(http, 30.0).send(REQUEST)


@pytest.mark.parametrize(
    ("status", "body", "kind", "error"),
    [
        (200, {"success": True, "message": "Group context message sent successfully"}, Kind.SENT, None),
        (400, {"success": False, "error": "recipientProfileUrn, groupId, and message are required"}, Kind.REJECTED,
         "recipientProfileUrn, groupId, and message are required"),
        (400, {"success": False, "error": {"issues": [{"path": "message"}]}}, Kind.REJECTED,
         '{"issues":[{"path":"message"}]}'),
        (401, {"error": "Unauthorized - Invalid credentials"}, Kind.UNAUTHORIZED, "Unauthorized - Invalid credentials"),
        (403, {"success": False, "message": "Error sending group context message: Request failed with status code 403"},
         Kind.REJECTED, "Error sending group context message: Request failed with status code 403"),
        (429, {"error": "Rate limit exceeded for MESSAGE: 150/150 used", "success": False}, Kind.RATE_LIMITED,
         "Rate limit exceeded for MESSAGE: 150/150 used"),
        (500, {"error": "Failed to get LinkedIn authentication credentials", "success": False}, Kind.SERVER_ERROR,
         "Failed to get LinkedIn authentication credentials"),
        (503, "<html>down for maintenance</html>", Kind.UNKNOWN,
         "HTTP 503: Service Unavailable (an HTML page); the message may have been sent"),
        (502, "<html><h1>502 Bad Gateway</h1></html>", Kind.UNKNOWN,
         "HTTP 502: Bad Gateway (an HTML page); the message may have been sent"),
        (504, "", Kind.UNKNOWN, "HTTP 504: Gateway Timeout; the message may have been sent"),
        (404, {"error": "Not found"}, Kind.MISROUTED, "HTTP 404 Not Found at http://api.test/linkedin/messaging/send-group"),
        (301, "", Kind.MISROUTED, "HTTP 301 Moved Permanently at http://api.test/linkedin/messaging/send-group"),
        (422, "not json", Kind.REJECTED, "not json"),
    ],
)  # fmt: skip
async def test_status_table(status: int, body: object, kind: Kind, error: str | None) -> None:
    outcome = await answer(status, body)
    assert (outcome.kind, outcome.http_status, outcome.error) == (kind, status, error)
    assert outcome.body == (body if isinstance(body, str) else json.dumps(body))
    assert outcome.rate_limit.remaining_count == 138


async def test_body_has_exactly_the_documented_fields() -> None:
    seen: list[httpx.Request] = []
    await answer(200, {"success": True}, seen=seen)
    assert json.loads(seen[0].content) == {"recipientProfileUrn": urn(1), "groupId": "12345678", "message": "Hello"}
    assert seen[0].url.path == "/linkedin/messaging/send-group"
    with_account = SendRequest("send-group-with-typing", urn(1), "1", "Hi", "acc_1")
    assert with_account.body()["accountId"] == "acc_1"


async def test_429_hold_until_and_headers() -> None:
    outcome = await answer(
        429,
        {"error": "Rate limit exceeded", "success": False, "holdUntil": "2026-11-27T10:00:00Z"},
        {**HEADERS, "X-RateLimit-Remaining": "0"},
    )
    assert outcome.hold_until == parse_iso("2026-11-27T10:00:00Z")
    assert outcome.rate_limit.remaining_count == 0
    assert outcome.rate_limit.reset_at == parse_iso("2026-11-27T00:00:00Z")


async def test_malformed_headers_are_kept_but_not_believed() -> None:
    outcome = await answer(200, {"success": True}, {"X-RateLimit-Remaining": "lots", "X-RateLimit-Reset": "soon"})
    assert outcome.rate_limit.remaining == "lots"
    assert outcome.rate_limit.remaining_count is None
    assert outcome.rate_limit.reset_at is None


async def test_an_undecodable_answer_is_unknown() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"not gzip at all", headers={"Content-Encoding": "gzip"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://api.test/linkedin/") as http:
        outcome = await ApiClient(http, 30.0).send(REQUEST)
    assert outcome.kind is Kind.UNKNOWN
    assert outcome.error.startswith("unreadable answer (DecodingError")


async def test_refused_connection_never_left() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with make_http_client(f"http://127.0.0.1:{port}/linkedin", API_KEY, 5, 1) as http:
        outcome = await ApiClient(http, 30.0).send(REQUEST)
    assert outcome.kind is Kind.NOT_SENT
    assert outcome.error.startswith("no connection: ConnectError")


async def test_read_timeout_is_unknown(serve_sandbox) -> None:
    box, url = serve_sandbox(typing_delay=3.0)
    async with make_http_client(url, API_KEY, 1.0, 1) as http:
        request = SendRequest("send-group-with-typing", urn(1), "12345678", "Hello", None)
        outcome = await ApiClient(http, 30.0).send(request)
    assert outcome.kind is Kind.UNKNOWN
    assert "may have been sent" in outcome.error


async def test_connection_cut_after_the_request_is_unknown() -> None:
    """A server that reads the whole request, then hangs up without answering."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def accept_and_close() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    try:
        async with make_http_client(f"http://127.0.0.1:{port}/linkedin", API_KEY, 5, 1) as http:
            outcome = await ApiClient(http, 30.0).send(REQUEST)
    finally:
        thread.join(5)
        server.close()
    assert outcome.kind is Kind.UNKNOWN
    assert outcome.error.startswith("connection lost (")


@pytest.mark.parametrize(
    "url", ["ftp://x/y", "api.connectsafely.ai", "http://", "https://h/p?key=1", "https://u:p@h/", "http://[::1/x"]
)
def test_bad_base_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="invalid base URL"):
        check_base_url(url)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "[::1]", "localhost"])
def test_plain_http_is_allowed_to_this_machine(host: str) -> None:
    assert check_base_url(f"http://{host}:8765/linkedin/", allow_insecure=False) == f"http://{host}:8765/linkedin"


@pytest.mark.parametrize("host", ["api.connectsafely.ai", "10.0.0.5", "[2001:db8::1]", "localhost.example.com"])
def test_plain_http_elsewhere_needs_allow_insecure(host: str) -> None:
    url = f"http://{host}/linkedin"
    with pytest.raises(ConfigError, match=r"refusing to send the API key over plain http:// to .*--allow-insecure"):
        check_base_url(url, allow_insecure=False)
    assert check_base_url(url, allow_insecure=True) == url
    assert check_base_url(f"https://{host}/linkedin", allow_insecure=False) == f"https://{host}/linkedin"


async def test_key_is_not_in_the_repr() -> None:
    async with make_http_client("https://api.test/linkedin", API_KEY, 5, 1) as http:
        assert API_KEY not in repr(ApiClient(http, 30.0))


async def test_an_answer_slower_than_the_overall_deadline_is_unknown(serve_sandbox) -> None:
    box, url = serve_sandbox(typing_delay=2.0)
    async with make_http_client(url, API_KEY, 30.0, 1) as http:
        request = SendRequest("send-group-with-typing", urn(1), "12345678", "Hello", None)
        outcome = await ApiClient(http, 0.3).send(request)
    assert (outcome.kind, outcome.error) == (
        Kind.UNKNOWN,
        "no complete answer within 0.3s; the message may have been sent",
    )


async def test_each_account_gets_its_own_connection(serve_sandbox) -> None:
    box, url = serve_sandbox()
    async with AccountClients(url, API_KEY, 5.0) as clients:
        api = ApiClient(clients, 30.0)
        for account in ("acc_1", "acc_2", "acc_1", None):
            request = SendRequest("send-group", urn(len(box.log)), "12345678", "Hello", account)
            assert (await api.send(request)).kind is Kind.SENT
        assert clients("acc_1") is clients("acc_1") and clients("acc_1") is not clients("acc_2")
        assert API_KEY not in repr(api)
    assert [d.account_id for d in box.log] == ["acc_1", "acc_2", "acc_1", None]
