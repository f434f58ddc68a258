"""`campaign-runner webhook`: the receiver of the vendor's `message.received` events.

A plain ASGI app (served by uvicorn, as the dashboard is). Each event is checked before anything
is read from it: `X-Webhook-Signature` must be `sha256=` and the hex HMAC-SHA256 of the raw body
with the webhook's secret, compared in constant time; otherwise 401 and nothing is recorded. A
signed event's reply is recorded once however often it comes (its `message_urn`) and in any
order, and the answer goes at once (the vendor waits 15 s, tries three times, and never replays).
Polling stays on as the safety net for the events that never come.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from .asgi import Receive, Scope, Send, is_http
from .client import profile_urn_of
from .clock import Clock, parse_server_time
from .errors import StoreError
from .store import Reply, Store

MAX_EVENT = 256 * 1024  # bytes: a larger body is refused unread
SIGNATURE = b"x-webhook-signature"
DEFAULT_ACCOUNT_NAMES = ("", "default")  # what an event may call the key's default account


def signature(secret: bytes, body: bytes) -> str:
    """The header value the vendor signs a body with."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookReceiver:
    def __init__(self, store: Store, clock: Clock, secret: bytes, accounts: set[str]):
        self._store = store
        self._clock = clock
        self._secret = secret
        self._accounts = accounts  # the database's accounts: an event of another is matched on the person alone
        self.recorded = 0  # replies recorded (not duplicates)

    def __repr__(self) -> str:  # never the secret
        return f"WebhookReceiver(store={self._store!r}, recorded={self.recorded})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await is_http(scope, receive, send):
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"error": "POST the vendor's events here"})
            return
        body = await _body(receive)
        if body is None:
            await _answer(send, 413, {"error": "too large"})
            return
        given = dict(scope["headers"]).get(SIGNATURE, b"")
        if not hmac.compare_digest(given, signature(self._secret, body).encode()):
            await _answer(send, 401, {"error": "bad signature"})
            return
        reply, account = _reply(body)
        if reply is None:  # signed, but not a message we can use (another event, a malformed one)
            await _answer(send, 200, {"ok": True, "recorded": 0})
            return
        known = _known(account, self._accounts)
        try:
            found = await self._store.record_replies(known, [reply], "webhook", self._clock.now())
        except StoreError as exc:  # the vendor tries again; polling is the net if it does not
            await _answer(send, 503, {"error": str(exc)})
            return
        self.recorded += 1 if found else 0
        await _answer(send, 200, {"ok": True, "recorded": len(found)})


def _reply(body: bytes) -> tuple[Reply | None, str | None]:
    """The reply a `message.received` event carries, and the account it names; None if it is none."""
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    data = event.get("data") if isinstance(event, dict) and event.get("event") == "message.received" else None
    if not isinstance(data, dict):
        return None, None
    sender = data.get("sender")
    person = profile_urn_of(sender.get("id")) if isinstance(sender, dict) else None
    urn, text, at = data.get("message_urn"), data.get("body"), parse_server_time(data.get("timestamp"))
    if person is None or not isinstance(urn, str) or not urn or len(urn) > 2000 or at is None:
        return None, None
    account = data.get("account_id")
    reply = Reply(urn, person, text if isinstance(text, str) else "", at)
    return reply, account if isinstance(account, str) else None


def _known(account: str | None, accounts: set[str]) -> str | None:
    """The database's name of the account an event names; None (match on the person alone) for one
    it does not know."""
    if account in accounts:
        return account
    if account in DEFAULT_ACCOUNT_NAMES and "" in accounts:
        return ""
    return None


async def _body(receive: Receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_EVENT:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
