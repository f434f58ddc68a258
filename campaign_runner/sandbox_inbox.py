"""The sandbox's inbox: who answered, through the conversation endpoints and the vendor's webhook.

Every message the sandbox delivers is the account's (the owner's) message in its conversation with
the recipient. On an account's first delivery to a person, a seeded draw decides whether that person
replies, when (a delay after that delivery), and whether the reply asks to stop (an opt-out). The
conversation endpoints show what the vendor's store would: our own messages only `message_lag`
seconds after they were sent (the store lags), a reply from the moment it arrives.

`GET /conversations` lists an account's conversations, most recent activity first;
`GET /conversations/{conversationUrn}/messages` lists one conversation's messages, newest first.
Both page with opaque cursors and answer as the OpenAPI file describes. `Inbox.flush_webhooks`
POSTs each reply that has arrived as the vendor's signed `message.received` event, with its
faults: events sent twice, never sent, or out of order; a failed POST is tried again on the next
flush, three attempts in all. It reads time only through the `now` it is given (the Sandbox's clock).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

import httpx

from campaign_runner.clock import iso, parse_iso
from campaign_runner.sandbox_reads import EXISTS_PREFIX, FIRST_NAMES, LAST_NAMES, Answer, invalid, member_slug

if TYPE_CHECKING:
    from campaign_runner.sandbox import SandboxConfig

__all__ = ["Inbox", "SandboxReply", "is_inbox_path", "signature"]

logger = logging.getLogger(__name__)

CONVERSATIONS = "/conversations"
MESSAGES = "/messages"
PROFILE_PREFIX = "urn:li:fsd_profile:"
MEMBER_URN = re.compile(r"^urn:li:fsd_profile:ACoAAmember(\d{6})$")
MAX_COUNT = 100  # the most conversations or messages one page holds
DEFAULT_CONVERSATIONS = 20
DEFAULT_MESSAGES = 50
WEBHOOK_ATTEMPTS = 3  # the vendor tries an event at most this many times
WEBHOOK_TIMEOUT = 15.0  # seconds the vendor gives a receiver to answer
REPLY_TEXTS = (
    "Thanks, happy to chat",
    "Hi! Sounds interesting, tell me more.",
    "Thanks for reaching out. What did you have in mind?",
    "Sure, let's talk next week.",
)
OPT_OUT_TEXTS = (
    "Please stop messaging me",
    "unsubscribe",
    "Not interested, thanks",
)
NOT_FOUND = Answer(404, {"success": False, "error": "Conversation not found"})

T = TypeVar("T")
Key = tuple[float, str]  # what pages are ordered by, newest first: (time, URN)


@dataclass(frozen=True)
class SandboxReply:
    """A person's reply to an account's first message: when it arrives, and what it says."""

    account_id: str | None
    recipient: str  # the person's profile URN
    arrives_at: float
    text: str
    message_urn: str
    opt_out: bool  # the text asks to stop


@dataclass(frozen=True)
class _Message:
    urn: str
    text: str
    sent_at: float  # to the millisecond, as the endpoints show it
    by_owner: bool

    @property
    def key(self) -> Key:
        return self.sent_at, self.urn


@dataclass
class _Thread:
    """The conversation of one account with one person."""

    account_id: str | None
    recipient: str
    id: str  # "2-...", as in its URN
    messages: list[_Message] = field(default_factory=list)

    @property
    def urn(self) -> str:
        return f"urn:li:msg_conversation:({PROFILE_PREFIX}{owner_id(self.account_id)},{self.id})"

    def visible(self, now: float, lag: float) -> list[_Message]:
        """What the vendor's store shows at `now`: our messages `lag` seconds late, replies once arrived."""
        return [m for m in self.messages if m.sent_at + (lag if m.by_owner else 0.0) <= now]


@dataclass(frozen=True)
class _View:
    """A conversation as the vendor's store shows it at one moment (listed once it shows a message)."""

    thread: _Thread
    shown: list[_Message]

    @property
    def latest(self) -> _Message:
        return max(self.shown, key=lambda m: m.key)

    @property
    def key(self) -> Key:
        return self.latest.sent_at, self.thread.urn

    @property
    def unread(self) -> int:
        """The person's messages since the account last wrote."""
        last_own = max((m.sent_at for m in self.shown if m.by_owner), default=float("-inf"))
        return sum(not m.by_owner and m.sent_at > last_own for m in self.shown)


@dataclass
class _Hook:
    """One POST of a `message.received` event still to make (a duplicated event has two)."""

    message_urn: str
    body: bytes
    attempts: int = 0
    busy: bool = False  # a flush is posting it


class _BadParameter(Exception):
    """A query parameter that is not what the endpoint takes: a 400 naming it."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class Inbox:
    """Conversations and replies of every account. `config` is the Sandbox's (read on every request)."""

    def __init__(self, config: SandboxConfig, now: Callable[[], float]):
        self.config = config
        self._now = now
        self._lock = threading.Lock()  # deliveries on the server's loop, reads by tests from another thread
        # Separate generators, so that when webhooks are flushed never changes who replies.
        self._random = random.Random(None if config.seed is None else f"{config.seed}:replies")
        self._hooks_random = random.Random(None if config.seed is None else f"{config.seed}:webhooks")
        self._threads: dict[tuple[str | None, str], _Thread] = {}
        self._by_urn: dict[str, _Thread] = {}
        self._replies: list[SandboxReply] = []
        self._announced: set[str] = set()  # message URNs whose webhook events were decided on
        self._hooks: list[_Hook] = []

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"Inbox(conversations={len(self._threads)}, replies={len(self._replies)},"
                f" webhooks_pending={len(self._hooks)})"
            )

    # --- the world ------------------------------------------------------------------------

    def delivered(self, account: str | None, recipient: str, text: str, delivered_at: float) -> None:
        """An accepted message: the owner's in the conversation of (account, recipient)."""
        at = _ms(delivered_at)
        with self._lock:
            thread = self._threads.get((account, recipient))
            if thread is None:
                thread = _Thread(account, recipient, "2-" + _digest("thread", account, recipient))
                self._threads[(account, recipient)] = self._by_urn[thread.urn] = thread
                reply = self._draw(account, recipient, at)
                if reply is not None:
                    self._replies.append(reply)
                    thread.messages.append(_Message(reply.message_urn, reply.text, reply.arrives_at, False))
            sent = sum(m.by_owner for m in thread.messages)
            thread.messages.append(_Message(message_urn(account, recipient, str(sent)), text, at, True))

    def replies(self, now: float | None = None) -> list[SandboxReply]:
        """Every reply drawn so far in order of arrival; with `now`, those arrived by then."""
        with self._lock:
            found = [r for r in self._replies if now is None or r.arrives_at <= now]
        return sorted(found, key=lambda r: (r.arrives_at, r.message_urn))

    def _draw(self, account: str | None, recipient: str, first_at: float) -> SandboxReply | None:
        # As many draws whatever the shares, so one seed gives the same people the same fate.
        config, rng = self.config, self._random
        replies, delay, opts_out, pick = rng.random(), rng.uniform(*config.reply_delay), rng.random(), rng.random()
        if replies >= config.reply_rate:
            return None
        opt_out = opts_out < config.opt_out_rate
        texts = OPT_OUT_TEXTS if opt_out else REPLY_TEXTS
        return SandboxReply(
            account_id=account,
            recipient=recipient,
            arrives_at=_ms(first_at + delay),
            text=texts[int(pick * len(texts))],
            message_urn=message_urn(account, recipient, "reply"),
            opt_out=opt_out,
        )

    # --- the endpoints --------------------------------------------------------------------

    def answer(self, method: str, path: str, query: dict[str, str]) -> Answer:
        """The answer to a request for `path` (below /linkedin, still percent-encoded)."""
        if method != "GET":
            return Answer(405, {"error": "Method not allowed"})
        account = query.get("accountId") or None
        try:
            if path == CONVERSATIONS:
                return self._conversations(account, query)
            return self._messages(account, unquote(path[len(CONVERSATIONS) + 1 : -len(MESSAGES)]), query)
        except _BadParameter as bad:
            return invalid(bad.name)

    def _conversations(self, account: str | None, query: dict[str, str]) -> Answer:
        count = _count(query, "count", DEFAULT_CONVERSATIONS)
        after = _position(query, "nextCursor")
        unread_only = _flag(query, "unreadOnly")
        now, lag = self._now(), self.config.message_lag
        with self._lock:
            views = [_View(t, t.visible(now, lag)) for t in self._threads.values() if t.account_id == account]
        views = [view for view in views if view.shown and (view.unread or not unread_only)]
        page, cursor = _page(views, lambda view: view.key, after, count)
        conversations = [_conversation_json(view) for view in page]
        payload = {"success": True, "conversations": conversations, "nextCursor": cursor, "hasMore": cursor is not None}
        return Answer(200, payload)

    def _messages(self, account: str | None, urn: str, query: dict[str, str]) -> Answer:
        count = _count(query, "count", DEFAULT_MESSAGES)
        after = _position(query, "cursor")
        since = _since(query, "since")
        now, lag = self._now(), self.config.message_lag
        with self._lock:
            thread = self._by_urn.get(urn)
            shown = [] if thread is None or thread.account_id != account else thread.visible(now, lag)
        if thread is None or not shown:  # the store knows a conversation once it shows a message of it
            return NOT_FOUND
        newer = [m for m in shown if since is None or m.sent_at > since]
        page, cursor = _page(newer, lambda m: m.key, after, count)
        messages = [_message_json(thread, message) for message in page]
        return Answer(200, {"success": True, "messages": messages, "hasMore": cursor is not None, "cursor": cursor})

    # --- the webhook ----------------------------------------------------------------------

    async def flush_webhooks(self, now: float) -> int:
        """POST the `message.received` event of each reply arrived by `now` and not yet sent to
        `config.webhook_url`; a failed POST waits for the next flush. How many POSTs succeeded."""
        url = self.config.webhook_url
        if not url:
            return 0
        hooks = self._due(now)
        if not hooks:
            return 0
        succeeded = 0
        try:
            async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT) as http:
                for hook in hooks:
                    ok = await self._post(http, url, hook)
                    self._settle(hook, ok)
                    if ok:
                        succeeded += 1
        finally:
            with self._lock:
                for hook in hooks:
                    hook.busy = False
        return succeeded

    def _due(self, now: float) -> list[_Hook]:
        """The POSTs this flush makes: those left over, and the events of newly arrived replies."""
        config, rng = self.config, self._hooks_random
        arrived = self.replies(now)
        with self._lock:
            for reply in arrived:
                if reply.message_urn in self._announced:
                    continue
                self._announced.add(reply.message_urn)
                dropped, twice = rng.random() < config.webhook_drop_rate, rng.random() < config.webhook_duplicate_rate
                if not dropped:
                    body = _event_body(reply, self._threads[(reply.account_id, reply.recipient)])
                    self._hooks.extend(_Hook(reply.message_urn, body) for _ in range(2 if twice else 1))
            due = [hook for hook in self._hooks if not hook.busy]
            for hook in due:
                hook.busy = True
            if config.webhook_shuffle:
                rng.shuffle(due)
        return due

    async def _post(self, http: httpx.AsyncClient, url: str, hook: _Hook) -> bool:
        signed = signature(self.config.webhook_secret, hook.body)
        headers = {"Content-Type": "application/json", "X-Webhook-Signature": signed}
        try:
            response = await http.post(url, content=hook.body, headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            logger.warning("sandbox webhook of %s to %s failed: %s", hook.message_urn, url, exc)
            return False
        if not response.is_success:
            logger.warning("sandbox webhook of %s to %s answered %s", hook.message_urn, url, response.status_code)
        return response.is_success

    def _settle(self, hook: _Hook, ok: bool) -> None:
        with self._lock:
            hook.attempts += 1
            if ok or hook.attempts >= WEBHOOK_ATTEMPTS:
                self._hooks.remove(hook)


def is_inbox_path(sub: str) -> bool:
    """Whether `sub` (a path below /linkedin) is one of the inbox's endpoints."""
    if sub == CONVERSATIONS:
        return True
    inner = sub.startswith(CONVERSATIONS + "/") and not sub.startswith(EXISTS_PREFIX)
    return inner and sub.endswith(MESSAGES) and len(sub) > len(CONVERSATIONS) + len(MESSAGES) + 1


def signature(secret: str, body: bytes) -> str:
    """The X-Webhook-Signature of `body`: the hex HMAC-SHA256 of its exact bytes, keyed by `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def owner_id(account: str | None) -> str:
    """The profile id of the account's own LinkedIn member (the key's default account: "default")."""
    return account or "default"


def message_urn(account: str | None, recipient: str, which: str) -> str:
    return f"urn:li:msg_message:({PROFILE_PREFIX}{owner_id(account)},2-{_digest(which, account, recipient)})"


def person(urn: str) -> tuple[str, str]:
    """The name and profile URL of the person with this URN: a member's own, else made up from it."""
    found = MEMBER_URN.match(urn)
    index = int(found.group(1)) if found else int(_digest("name", None, urn)[:8], 16)
    name = f"{FIRST_NAMES[index % len(FIRST_NAMES)]} {LAST_NAMES[index % len(LAST_NAMES)]}"
    slug = member_slug(index) if found else urn.removeprefix(PROFILE_PREFIX)
    return name, f"https://www.linkedin.com/in/{slug}/"


def _digest(kind: str, account: str | None, recipient: str) -> str:
    return hashlib.sha256(f"{kind}\n{account}\n{recipient}".encode()).hexdigest()[:32]


def _ms(at: float) -> float:
    """`at` to the millisecond, as ISO 8601 shows it, so a time read back compares equal to itself."""
    shown = parse_iso(iso(at) or "")
    return at if shown is None else shown


def _sender(thread: _Thread, message: _Message) -> tuple[str, str]:
    """The profile id and name of who wrote `message`."""
    if message.by_owner:
        return owner_id(thread.account_id), f"Sandbox {owner_id(thread.account_id)}"
    return thread.recipient.removeprefix(PROFILE_PREFIX), person(thread.recipient)[0]


def _conversation_json(view: _View) -> dict[str, Any]:
    thread, latest = view.thread, view.latest
    name, profile_url = person(thread.recipient)
    participant = {"profileId": thread.recipient.removeprefix(PROFILE_PREFIX), "name": name, "profileUrl": profile_url}
    return {
        "conversationUrn": thread.urn,
        "conversationId": thread.id,
        "lastActivityAt": iso(latest.sent_at),
        "unreadCount": view.unread,
        "participants": [participant],
        "latestMessage": {"text": latest.text, "sentAt": iso(latest.sent_at), "senderName": _sender(thread, latest)[1]},
    }


def _message_json(thread: _Thread, message: _Message) -> dict[str, Any]:
    profile_id, name = _sender(thread, message)
    return {
        "messageUrn": message.urn,
        "text": message.text,
        "sentAt": iso(message.sent_at),
        "senderProfileId": profile_id,
        "senderName": name,
        "isSentByOwner": message.by_owner,
    }


def _event_body(reply: SandboxReply, thread: _Thread) -> bytes:
    """The vendor's `message.received` event of a reply, as the exact bytes signed and sent."""
    name, profile_url = person(reply.recipient)
    # The webhook names the thread in another form than the REST conversationUrn (match on sender.id).
    thread_id = f"urn:li:messagingThread:2-{_digest('webhook-thread', thread.account_id, thread.recipient)}"
    event = {
        "event": "message.received",
        "object": "event",
        "data": {
            "id": "evt_" + _digest("event", reply.account_id, reply.message_urn)[:24],
            "message_urn": reply.message_urn,
            "account_id": owner_id(reply.account_id),
            "provider": "LINKEDIN",
            "sender": {"id": reply.recipient, "name": name, "profile_url": profile_url},
            "body": reply.text,
            "timestamp": iso(reply.arrives_at),
            "conversation_id": thread_id,
        },
    }
    return json.dumps(event).encode()


# --- query parameters: each parser raises _BadParameter for a value the endpoint does not take ---


def _count(query: dict[str, str], name: str, default: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 9 or not 1 <= int(value) <= MAX_COUNT:
        raise _BadParameter(name)
    return int(value)


def _flag(query: dict[str, str], name: str) -> bool:
    value = query.get(name, "false")
    if value not in ("true", "false"):
        raise _BadParameter(name)
    return value == "true"


def _since(query: dict[str, str], name: str) -> float | None:
    value = query.get(name)
    if value is None:
        return None
    since = parse_iso(value)
    if since is None:
        raise _BadParameter(name)
    return since


def _position(query: dict[str, str], name: str) -> Key | None:
    """Where the page a cursor asks for starts (after this key); None without a cursor."""
    value = query.get(name)
    if value is None:
        return None
    try:
        at, urn = json.loads(base64.urlsafe_b64decode(value.encode("ascii")))
    except (ValueError, TypeError, RecursionError, binascii.Error):  # UnicodeError, JSON errors: ValueErrors
        raise _BadParameter(name) from None
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not isinstance(urn, str):
        raise _BadParameter(name)
    return float(at), urn


def _cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode("ascii")


def _page(items: list[T], key: Callable[[T], Key], after: Key | None, count: int) -> tuple[list[T], str | None]:
    """Up to `count` of `items`, newest first, after the position `after`; and the next page's cursor."""
    ordered = sorted(items, key=key, reverse=True)
    if after is not None:
        ordered = [item for item in ordered if key(item) < after]
    page = ordered[:count]
    return page, _cursor(key(page[-1])) if len(ordered) > count else None
