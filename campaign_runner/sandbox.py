"""A local emulator of the ConnectSafely group-messaging API, with fault switches.

It answers the three send endpoints under `/linkedin` as the API contract documents them: bearer
auth, the documented 200/400/401/403/429/500 bodies, the five `X-RateLimit-*` headers, schema checks
(no unknown fields), and a MESSAGE quota per account (`accountId`, or the key's default account)
over a sliding window of delivered messages. `SandboxConfig` switches on the faults a runner must
survive: non-members (403), invalid recipients (400), server errors (500, and the "credentials" 500
for an account), a revoked key (401 from the Nth request), a blocked subscription (403 for every
recipient of an account from its Nth request), account holds and 429 storms, messages delivered
whose answer is lost (connection closed) or late (after the client's timeout), HTML 502 pages,
missing or malformed X-RateLimit-* headers, and 200s that are a captive portal's HTML page; and
`scripted` answers, given as written (far-future or garbage times, odd 200 bodies). Shares of
requests are drawn from a seeded random generator. Each accepted message is kept as a `Delivery`;
`GET /linkedin/_sandbox/log` serves them to other processes. The read endpoints are `People`'s
(sandbox_reads); the conversations, the replies people send and the webhook that announces them
are the `Inbox`'s (sandbox_inbox).

A plain ASGI app, served by uvicorn via `serve()` (an anyio task group on asyncio) or
`serve_in_thread()` (tests). It reads time only through its `Clock`.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import random
import socket
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import uvicorn

from campaign_runner.asgi import Receive, Scope, Send, is_http
from campaign_runner.clock import Clock, SystemClock, iso
from campaign_runner.sandbox_inbox import Inbox, SandboxReply, is_inbox_path
from campaign_runner.sandbox_reads import EXISTS_PREFIX, READ_PATHS, People

__all__ = [
    "Delivery",
    "RequestRecord",
    "Sandbox",
    "SandboxConfig",
    "SandboxReply",
    "Scripted",
    "serve",
    "serve_in_thread",
]

logger = logging.getLogger(__name__)

PREFIX = "/linkedin"
MAX_BODY = 64 * 1024  # a larger body is drained and refused with a 400, never buffered
SHUTDOWN_GRACE = 2  # seconds in-flight requests (a long typing delay) may take once serving stops
WEBHOOK_SECRET = "sandbox-webhook-secret"  # the secret webhook events are signed with, unless given one
WEBHOOK_EVERY = 1.0  # seconds (real time) between two flushes of the webhook events while serving
REQUIRED = ("recipientProfileUrn", "groupId", "message")
REQUIRED_ERROR = {"success": False, "error": "recipientProfileUrn, groupId, and message are required"}
CREDENTIALS_ERROR = "Failed to get LinkedIn authentication credentials"
SUBSCRIPTION_ERROR = "Your trial has expired or you have no active subscription"
BAD_GATEWAY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
PORTAL_PAGE = b"<!DOCTYPE html><html><head><title>Sign in to the network</title></head><body>Sign in</body></html>"
NO_ANSWER = 0  # RequestRecord.status of a request whose connection was closed without an answer
LOG_PATH = f"{PREFIX}/_sandbox/log"
SEND_PATHS = {
    f"{PREFIX}/messaging/{name}": name for name in ("send-group", "send-group-with-typing", "send-group-with-ack")
}


def _is_text(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _is_text_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# Optional fields per endpoint, with their type check (the OpenAPI schemas forbid any other field).
OPTIONAL: dict[str, dict[str, Callable[[object], bool]]] = {
    "send-group": {"accountId": _is_text},
    "send-group-with-typing": {"accountId": _is_text, "conversationUrn": _is_text},
    "send-group-with-ack": {"accountId": _is_text, "messageUrns": _is_text_list},
}


@dataclass
class SandboxConfig:
    api_key: str = "sandbox-key"
    typing_delay: float = 0.0  # seconds send-group-with-typing waits before it delivers (real time)
    quota: int = 150  # accepted messages per account in any sliding window of quota_window seconds
    quota_window: float = 86400.0
    non_members: set[str] = field(default_factory=set)  # recipient URNs answered 403
    invalid: set[str] = field(default_factory=set)  # recipient URNs answered 400
    fail_500: dict[str, int] = field(default_factory=dict)  # URN -> 500s left before it behaves
    unauthorized_after: int | None = None  # from the Nth send request on (1-based), answer 401
    holds: dict[str | None, float] = field(default_factory=dict)  # account key -> 429 until epoch
    # Faults by account (None: the key's default account).
    credentials_error: set[str | None] = field(default_factory=set)  # every request: the "credentials" 500
    forbidden_after: dict[str | None, int] = field(default_factory=dict)  # from its Nth request on: 403 for all
    # Faults on a share (0..1) of the send requests that pass the checks, drawn from `seed`.
    seed: int | None = None
    error_rate: float = 0.0  # answered 500, not delivered
    drop_rate: float = 0.0  # delivered, then the connection is closed with no answer
    slow_rate: float = 0.0  # delivered, answered only after `slow_delay` seconds (beyond a client's timeout)
    slow_delay: float = 90.0
    storm_rate: float = 0.0  # starts a 429 storm: the account is refused for `storm_length` seconds
    storm_length: float = 5.0
    bad_gateway_rate: float = 0.0  # an HTML 502 page from "a proxy", not delivered
    bad_headers_rate: float = 0.0  # X-RateLimit-* headers missing or malformed on the answer
    portal_rate: float = 0.0  # a 200 with an HTML page (a captive portal, a wrong host), not delivered
    # Answers given, one each, to the next send requests that pass the documented checks: any
    # status, body and headers, however absurd (far-future or garbage times, odd 200 bodies).
    scripted: list[Scripted] = field(default_factory=list)
    # The read endpoints (see sandbox_reads): one group of `group_size` members, profiles, conversations,
    # each account's health, and the vendor's read budgets per account.
    group_size: int = 0
    member_shape: str = "entity"  # entity ({entityUrn, firstName...}), profile ({profileId, fullName...}), mixed
    members_quota: int = 1000  # members fetched per account per window
    members_quota_window: float = 86400.0
    profile_quota: int = 120  # unique profiles looked up per account per window (one within 6 h is free)
    profile_quota_window: float = 86400.0
    missing_profiles: set[str] = field(default_factory=set)  # public identifiers with no profile
    conversation_rate: float = 0.0  # share of people already in a conversation (drawn per person from `seed`)
    conversations: set[str] = field(default_factory=set)  # public identifiers already in a conversation
    account_status: dict[str | None, str] = field(default_factory=dict)  # account -> AVAILABLE, ERROR...
    disabled_accounts: set[str | None] = field(default_factory=set)
    no_tokens: set[str | None] = field(default_factory=set)
    unknown_accounts: set[str] = field(default_factory=set)  # 404 from /account/status
    read_faults: bool = True  # the fault shares above apply to reads too
    # The inbox (see sandbox_inbox): replies to an account's first message to a person, drawn once per
    # (account, recipient URN) from `seed`; the conversation endpoints; the message.received webhook.
    reply_rate: float = 0.0  # share of people who reply
    reply_delay: tuple[float, float] = (600.0, 3 * 86400.0)  # seconds after that first message, uniform
    opt_out_rate: float = 0.0  # share of the replies that ask to stop ("Please stop messaging me")
    message_lag: float = 0.0  # seconds before a message we sent shows in the conversation endpoints
    webhook_url: str | None = None  # where replies are POSTed as message.received events
    webhook_secret: str = WEBHOOK_SECRET  # signs them (X-Webhook-Signature)
    webhook_duplicate_rate: float = 0.0  # share of the events sent twice
    webhook_drop_rate: float = 0.0  # share of the events never sent
    webhook_shuffle: bool = False  # the events due at one flush are sent in a random order

    def __repr__(self) -> str:  # the key stays out of reprs
        return f"SandboxConfig(quota={self.quota}, quota_window={self.quota_window})"


@dataclass(frozen=True)
class Scripted:
    """One answer to give as it is written, instead of the usual one."""

    status: int
    body: object = None  # a JSON payload; a str is sent as it is, as text/html
    headers: dict[str, str] = field(default_factory=dict)  # given: these instead of the X-RateLimit-* headers
    deliver: bool = False  # deliver the message as well (otherwise it is not)


@dataclass(frozen=True)
class Delivery:
    """One accepted (200) message."""

    received_at: float
    delivered_at: float
    endpoint: str  # "send-group" | "send-group-with-typing" | "send-group-with-ack"
    account_id: str | None
    recipient: str
    group_id: str
    message: str


@dataclass(frozen=True)
class RequestRecord:
    """One request the sandbox answered; `endpoint` is the request path when it is not a send."""

    at: float
    endpoint: str
    account_id: str | None
    recipient: str | None
    status: int  # NO_ANSWER when the connection was closed instead
    fault: str | None = None  # the injected fault: error, drop, slow, storm, bad_gateway, bad_headers, portal, scripted


@dataclass
class _Reply:
    status: int
    payload: object
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    raw: bytes | None = None  # a body sent as it is (not JSON), with a text/html type
    after: float = 0.0  # seconds to wait before answering
    dropped: bool = False  # close the connection instead of answering


class _Disconnected(Exception):
    pass


class Sandbox:
    """The ASGI app. `config` may be changed while it serves; `log` and `requests` are copies."""

    def __init__(self, config: SandboxConfig | None = None, clock: Clock | None = None):
        self.config = config if config is not None else SandboxConfig()
        self.clock: Clock = clock if clock is not None else SystemClock()
        # Served on an event loop in one thread, read by tests from another.
        self._lock = threading.Lock()
        self._log: list[Delivery] = []
        self._requests: list[RequestRecord] = []
        self._pending: dict[str | None, int] = {}  # accepted sends still in their typing delay
        self._windows: dict[str | None, deque[float]] = {}  # delivered_at per account, oldest first
        self._count = 0
        self._by_account: dict[str | None, int] = {}  # send requests per account
        self._storms: dict[str | None, float] = {}  # account -> end of its 429 storm
        self._random = random.Random(self.config.seed)
        self._talked: set[tuple[str | None, str]] = set()  # (account, recipient URN) of every delivery
        self.people = People(self.config, self.clock.now, lambda account, urn: (account, urn) in self._talked)
        self.inbox = Inbox(self.config, lambda: self.clock.now())  # the clock may be swapped (a new process)

    @property
    def log(self) -> list[Delivery]:
        with self._lock:
            return list(self._log)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def sends(self) -> list[RequestRecord]:
        """The requests to the three send endpoints (not the reads)."""
        names = set(SEND_PATHS.values())
        return [record for record in self.requests if record.endpoint in names]

    def replies(self, now: float | None = None) -> list[SandboxReply]:
        """The replies people send to the accounts' first messages; with `now`, those arrived by then."""
        return self.inbox.replies(now)

    async def flush_webhooks(self, now: float) -> int:
        """POST the webhook events of the replies arrived by `now` (see Inbox.flush_webhooks)."""
        return await self.inbox.flush_webhooks(now)

    def __repr__(self) -> str:
        with self._lock:
            return f"Sandbox(requests={len(self._requests)}, delivered={len(self._log)}, config={self.config!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await is_http(scope, receive, send):
            return
        at = self.clock.now()
        path, method = scope["path"], scope["method"]
        endpoint = SEND_PATHS.get(path)
        record: dict[str, Any] = {"endpoint": endpoint or path, "account_id": None, "recipient": None}
        sub = path[len(PREFIX) :] if path.startswith(PREFIX + "/") else ""
        try:
            if sub in READ_PATHS or sub.startswith(EXISTS_PREFIX) or is_inbox_path(sub):
                reply = await self._read(sub, method, receive, scope, record)
            elif endpoint is None and path != LOG_PATH:
                reply = _Reply(404, {"error": "Not found"})
            elif method != ("GET" if endpoint is None else "POST"):
                allow = b"GET" if endpoint is None else b"POST"
                reply = _Reply(405, {"error": "Method not allowed"}, [(b"allow", allow)])
            elif endpoint is None:
                reply = _Reply(200, [asdict(delivery) for delivery in self.log])
            else:
                reply = await self._send(endpoint, receive, scope, at, record)
        except _Disconnected:
            return
        except Exception:  # one request's bug must not stop the emulator (it keeps serving)
            logger.exception("sandbox failed on %s %s", method, path)
            reply = _Reply(500, {"error": "Sandbox internal error", "success": False})
        with self._lock:
            self._requests.append(RequestRecord(at=at, status=NO_ANSWER if reply.dropped else reply.status, **record))
        if reply.dropped:
            await _hang_up(send)
            return
        if reply.after:
            await anyio.sleep(reply.after)
        await _respond(send, reply)

    async def _send(self, endpoint: str, receive: Receive, scope: Scope, at: float, record: dict[str, Any]) -> _Reply:
        with self._lock:
            self._count += 1
            count = self._count
        # The body is read in full first so the connection stays usable; checks still go in order.
        raw = await _read_body(receive)
        config = self.config
        token = dict(scope["headers"]).get(b"authorization", b"")
        expected = b"Bearer " + config.api_key.encode()
        revoked = config.unauthorized_after is not None and count >= config.unauthorized_after
        if not hmac.compare_digest(token, expected) or revoked:
            return _Reply(401, {"error": "Unauthorized - Invalid credentials"})
        body = _parse_object(raw)
        account = body.get("accountId") if body is not None and _is_text(body.get("accountId")) else None
        record["account_id"] = account
        with self._lock:
            self._by_account[account] = self._by_account.get(account, 0) + 1
        reply = self._check(endpoint, body, account, record)
        if reply is None:
            reply = await self._scripted(endpoint, body, account, at, record)
        if reply is None:
            reply = self._fault(account, record)
        if reply is None:
            assert body is not None  # _check refuses a missing body
            reply = await self._deliver(endpoint, body, account, at)
            if self._chance(config.drop_rate):
                reply.dropped, record["fault"] = True, "drop"
            elif self._chance(config.slow_rate):
                reply.after, record["fault"] = config.slow_delay, "slow"
        if reply.raw is None and not reply.headers:  # a storm's 429 already says when it ends
            reply.headers = self._rate_headers(account, record=record)
        return reply

    async def _read(self, sub: str, method: str, receive: Receive, scope: Scope, record: dict[str, Any]) -> _Reply:
        raw = await _read_body(receive)
        token = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(token, b"Bearer " + self.config.api_key.encode()):
            return _Reply(401, {"error": "Unauthorized - Invalid credentials"})
        query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        body = _parse_object(raw) if method == "POST" else None
        account = query.get("accountId") if method == "GET" else (body or {}).get("accountId")
        account = account if _is_text(account) else None
        record["account_id"] = account
        record["recipient"] = sub.rsplit("/", 1)[-1] if sub.startswith(EXISTS_PREFIX) else None
        if method == "GET" and raw:
            return _Reply(400, {"success": False, "error": "A GET takes no body"})
        reply = self._fault(account, record) if self.config.read_faults else None
        if reply is None:
            if is_inbox_path(sub):
                answer = self.inbox.answer(method, _raw_sub(scope), query)
            else:
                answer = self.people.answer(method, sub, query, body)
            reply = _Reply(answer.status, answer.payload)
            if answer.rate is not None:
                action, limit, used, reset = answer.rate
                reply.headers = [
                    (f"X-RateLimit-{name}".encode(), str(value).encode())
                    for name, value in (
                        ("Action", action),
                        ("Limit", limit),
                        ("Used", used),
                        ("Remaining", max(limit - used, 0)),
                        ("Reset", iso(reset)),
                    )
                ]
            if self.config.read_faults and self._chance(self.config.drop_rate):
                reply.dropped, record["fault"] = True, "drop"
            elif self.config.read_faults and self._chance(self.config.slow_rate):
                reply.after, record["fault"] = self.config.slow_delay, "slow"
        return reply

    async def _scripted(
        self, endpoint: str, body: dict[str, Any] | None, account: str | None, at: float, record: dict[str, Any]
    ) -> _Reply | None:
        with self._lock:
            if not self.config.scripted:
                return None
            script = self.config.scripted.pop(0)
        record["fault"] = "scripted"
        if script.deliver:
            assert body is not None  # _check refuses a missing body
            await self._deliver(endpoint, body, account, at)
        headers = [(f"{name}".encode(), str(value).encode()) for name, value in script.headers.items()]
        if isinstance(script.body, str):
            return _Reply(script.status, None, headers or self._rate_headers(account), raw=script.body.encode())
        return _Reply(script.status, script.body, headers or self._rate_headers(account))

    def _chance(self, share: float) -> bool:
        return share > 0 and self._random.random() < share

    def _fault(self, account: str | None, record: dict[str, Any]) -> _Reply | None:
        """A refusal drawn from the configured shares, after the documented checks passed."""
        config, now = self.config, self.clock.now()
        used, _ = self._window(account, now)
        storm_end = self._storms.get(account, 0.0)
        if storm_end <= now and self._chance(config.storm_rate):
            storm_end = self._storms[account] = now + config.storm_length
        if storm_end > now:
            # Half of a storm's answers carry holdUntil; the rest say when only in X-RateLimit-Reset.
            payload = _limit_body(used, config.quota)
            if self._random.random() < 0.5:
                payload["holdUntil"] = iso(storm_end)
            reply = _Reply(429, payload)
            reply.headers = self._rate_headers(account, reset=storm_end)
            record["fault"] = "storm"
            return reply
        if self._chance(config.error_rate):
            record["fault"] = "error"
            return _Reply(500, {"error": "Internal server error", "success": False})
        if self._chance(config.bad_gateway_rate):
            record["fault"] = "bad_gateway"
            return _Reply(502, None, raw=BAD_GATEWAY_PAGE)
        if self._chance(config.portal_rate):
            record["fault"] = "portal"
            return _Reply(200, None, raw=PORTAL_PAGE)
        return None

    def _check(
        self, endpoint: str, body: dict[str, Any] | None, account: str | None, record: dict[str, Any]
    ) -> _Reply | None:
        """The refusal for this send, or None when it is to be delivered."""
        if body is None:
            return _Reply(400, {"success": False, "error": "Request body must be a JSON object"})
        if not all(_is_text(body.get(name)) for name in REQUIRED):
            return _Reply(400, REQUIRED_ERROR)
        urn, group = body["recipientProfileUrn"], body["groupId"]
        record["recipient"] = urn
        issues = _issues(endpoint, body)
        if issues:
            return _Reply(400, {"success": False, "error": {"issues": issues}})
        config, now = self.config, self.clock.now()
        used, _ = self._window(account, now)
        hold = config.holds.get(account)
        if hold is not None and hold > now:
            return _Reply(429, _limit_body(used, config.quota) | {"holdUntil": iso(hold)})
        if used >= config.quota:
            return _Reply(429, _limit_body(used, config.quota))
        if account in config.credentials_error:
            return _Reply(500, {"error": CREDENTIALS_ERROR, "success": False})
        if config.fail_500.get(urn, 0) > 0:
            config.fail_500[urn] -= 1
            return _Reply(500, {"error": "Internal server error", "success": False})
        if urn in config.invalid:
            return _Reply(400, REQUIRED_ERROR)
        blocked_from = config.forbidden_after.get(account)
        if blocked_from is not None and self._by_account.get(account, 0) >= blocked_from:
            return _Reply(403, {"success": False, "error": SUBSCRIPTION_ERROR, "typingIndicatorSent": False})
        if urn in config.non_members:
            message = "Error sending group context message: Request failed with status code 403"
            return _Reply(
                403,
                {
                    "success": False,
                    "message": message,
                    "recipientProfileUrn": urn,
                    "groupId": group,
                    "typingIndicatorSent": False,
                },
            )
        return None

    async def _deliver(self, endpoint: str, body: dict[str, Any], account: str | None, at: float) -> _Reply:
        # Count the send against the quota while it types, so concurrent sends cannot overshoot it.
        with self._lock:
            self._pending[account] = self._pending.get(account, 0) + 1
        delivered = False
        try:
            if endpoint == "send-group-with-typing" and self.config.typing_delay > 0:
                await anyio.sleep(self.config.typing_delay)
            delivered = True
        finally:
            with self._lock:
                self._pending[account] -= 1
                if delivered:  # read the time under the lock, so each account's times stay in order
                    delivery = Delivery(
                        received_at=at,
                        delivered_at=self.clock.now(),
                        endpoint=endpoint,
                        account_id=account,
                        recipient=body["recipientProfileUrn"],
                        group_id=body["groupId"],
                        message=body["message"],
                    )
                    self._log.append(delivery)
                    self._talked.add((account, delivery.recipient))
                    self.inbox.delivered(account, delivery.recipient, delivery.message, delivery.delivered_at)
                    self._windows.setdefault(account, deque()).append(delivery.delivered_at)
        payload: dict[str, Any] = {
            "success": True,
            "message": "Group context message sent successfully",
            "recipientProfileUrn": delivery.recipient,
            "groupId": delivery.group_id,
        }
        if endpoint == "send-group-with-typing":
            payload["typingIndicatorSent"] = True
        elif endpoint == "send-group-with-ack":
            payload["acknowledgmentSent"] = True
        return _Reply(200, payload)

    def _window(self, account: str | None, now: float) -> tuple[int, float]:
        """Messages of `account` counted in the window ending at `now`, and when the oldest leaves it."""
        window = self.config.quota_window
        with self._lock:
            times = self._windows.get(account)
            if times is None:
                return self._pending.get(account, 0), now + window
            # Only ever asked about the present, so what has left the window can be dropped for good.
            while times and times[0] + window <= now:
                times.popleft()
            used = len(times) + self._pending.get(account, 0)
            return used, (times[0] if times else now) + window

    def _rate_headers(
        self, account: str | None, reset: float | None = None, record: dict[str, Any] | None = None
    ) -> list[tuple[bytes, bytes]]:
        """The five headers; mangled by `bad_headers_rate` when `record` (the request's) is given."""
        used, window_reset = self._window(account, self.clock.now())
        limit = self.config.quota
        values: dict[str, object] = {
            "Action": "MESSAGE",
            "Limit": limit,
            "Used": used,
            "Remaining": max(limit - used, 0),
            "Reset": iso(reset if reset is not None else window_reset),
        }
        if record is not None and self._chance(self.config.bad_headers_rate):
            record["fault"] = record.get("fault") or "bad_headers"
            # One of the ways a proxy or a bug can mangle them: gone, or not numbers and dates.
            if self._random.random() < 0.5:
                return []
            values |= {"Limit": "unlimited", "Used": "-", "Remaining": "n/a", "Reset": "tomorrow"}
        return [(f"X-RateLimit-{name}".encode(), str(value).encode()) for name, value in values.items()]


def _limit_body(used: int, limit: int) -> dict[str, Any]:
    return {"error": f"Rate limit exceeded for MESSAGE: {used}/{limit} used", "success": False}


def _issues(endpoint: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Validation issues in the shape of the API's (zod) errors: unknown keys, then wrong types."""
    optional = OPTIONAL[endpoint]
    unknown = [key for key in body if key not in REQUIRED and key not in optional]
    issues: list[dict[str, Any]] = []
    if unknown:
        names = ", ".join(f"'{key}'" for key in unknown)
        issues.append(
            {
                "code": "unrecognized_keys",
                "keys": unknown,
                "path": [],
                "message": f"Unrecognized key(s) in object: {names}",
            }
        )
    for name, valid in optional.items():
        if name in body and not valid(body[name]):
            issues.append({"code": "invalid_type", "path": [name], "message": f"Invalid value for {name}"})
    return issues


def _parse_object(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return body if isinstance(body, dict) else None


def _raw_sub(scope: Scope) -> str:
    """The path below PREFIX as the client wrote it, still percent-encoded: a URN in it may hold a '/'."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1").partition("?")[0] if raw else urllib.parse.quote(scope["path"])
    return path[len(PREFIX) :]


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when it exceeds MAX_BODY (the rest is read and dropped)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if size <= MAX_BODY else None


async def _respond(send: Send, reply: _Reply) -> None:
    if reply.raw is not None:
        body, kind = reply.raw, b"text/html"
    else:
        body, kind = json.dumps(reply.payload).encode(), b"application/json"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers + reply.headers})
    await send({"type": "http.response.body", "body": body})


async def _hang_up(send: Send) -> None:
    """Close the connection without a byte of answer, as a proxy or a crashed server would.

    ASGI has no message for it, so this reaches for the server's transport (uvicorn's h11 cycle
    keeps it). If that is not there, it starts an answer and never finishes it: the client gets
    no complete response either way.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None:
        transport.close()
        await anyio.sleep(0)  # let the server see the connection is gone before the app returns
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})


class _Server(uvicorn.Server):
    # uvicorn.Server.serve() would take over SIGINT/SIGTERM; the CLI owns signals.
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


async def serve(
    sandbox: Sandbox,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `sandbox` until cancelled; report the base URL (".../linkedin") through task_status.

    Asyncio only (uvicorn). On cancellation it stops accepting, lets in-flight requests finish for
    up to SHUTDOWN_GRACE seconds, then returns control by re-raising the cancellation. With a
    `webhook_url` configured, it also POSTs the replies' webhook events every WEBHOOK_EVERY seconds.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on such sockets, and without
    # it every response (headers, then body) stalls ~40 ms on the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()  # connections queue from here on, so the URL is usable at once
        sock.setblocking(False)
        bound_port = sock.getsockname()[1]
        url_host = f"[{host}]" if family == socket.AF_INET6 else host
        # log_config=None: uvicorn must not replace the process's logging setup with its own.
        config = uvicorn.Config(
            sandbox,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            http="h11",
            ws="none",
            interface="asgi3",
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
        )
        server = _Server(config)

        async def run(done: anyio.CancelScope) -> None:
            # Shielded so a cancelled serve() still closes every connection before it returns.
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=[sock])
            done.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, tg.cancel_scope)
            if getattr(getattr(sandbox, "config", None), "webhook_url", None):  # the sandbox's, not another app's
                tg.start_soon(_send_webhooks, sandbox)
            task_status.started(f"http://{url_host}:{bound_port}{PREFIX}")
            try:
                await anyio.sleep_forever()
            finally:
                server.should_exit = True


async def _send_webhooks(sandbox: Sandbox) -> None:
    """Flush the webhook events every WEBHOOK_EVERY seconds of real time, at the sandbox clock's now."""
    while True:
        await anyio.sleep(WEBHOOK_EVERY)
        await sandbox.flush_webhooks(sandbox.clock.now())


@contextlib.contextmanager
def serve_in_thread(sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `sandbox` on an event loop in a daemon thread; yield its base URL; stop and join on exit."""
    with anyio.from_thread.start_blocking_portal("asyncio", name="sandbox") as portal:
        future, base_url = portal.start_task(serve, sandbox, host, port)
        try:
            yield base_url
        finally:
            future.cancel()  # the portal then waits for serve() to shut down and joins its thread
