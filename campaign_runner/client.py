"""The ConnectSafely client: one request in, one typed `Outcome` out, whatever happens.

It never raises for an HTTP status, never sleeps and never retries: deciding what an outcome means
for a recipient is the scheduler's job. httpx's errors are translated here and only here, split by
whether the request can have reached the server:

* it never left (`ConnectError`, `ConnectTimeout`, `PoolTimeout`): safe to try again;
* it may have arrived (read/write errors and timeouts, `RemoteProtocolError`, anything else):
  the outcome is `unknown`, because the API has no idempotency key to ask again with.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import anyio
import httpx

from .clock import iso, parse_server_time
from .errors import ConfigError
from .outcome import Kind, Outcome, RateLimitHeaders
from .settings import MEMBER_STATUSES

DEFAULT_BASE_URL = "https://api.connectsafely.ai/linkedin"
DEFAULT_TIMEOUT = 60.0  # seconds: the -with-typing endpoint types before it answers
CONNECT_TIMEOUT = 10.0
MAX_BODY_KEPT = 4000  # characters of a response body stored with an attempt
MAX_ERROR_CHARS = 500  # characters of the server's error text kept as a recipient's error
USER_AGENT = "campaign-runner"
# The status an API error text names, as in "Request failed with status code 403".
NAMED_STATUS = re.compile(r"\b(?:status(?:\s+code)?|HTTP)\s*:?\s*([1-5]\d\d)\b", re.IGNORECASE)


def rate_limit_headers(headers: httpx.Headers) -> RateLimitHeaders:
    return RateLimitHeaders(
        action=headers.get("x-ratelimit-action"),
        limit=headers.get("x-ratelimit-limit"),
        used=headers.get("x-ratelimit-used"),
        remaining=headers.get("x-ratelimit-remaining"),
        reset=headers.get("x-ratelimit-reset"),
        date=headers.get("date"),
    )


@dataclass(frozen=True)
class SendRequest:
    endpoint: str  # one of config.ENDPOINTS
    recipient: str
    group_id: str
    message: str
    account_id: str | None  # None: the API key's default account

    def body(self) -> dict[str, Any]:
        body = {"recipientProfileUrn": self.recipient, "groupId": self.group_id, "message": self.message}
        if self.account_id:
            body["accountId"] = self.account_id
        return body


@dataclass(frozen=True)
class ReadRequest:
    """A read: a profile lookup, a page of a group's members, a pre-check, an account's health."""

    method: str  # GET or POST
    path: str  # under the base URL, e.g. "profile", "conversations/exists/jane-doe"
    account_id: str | None
    json: dict[str, Any] | None = None  # the body of a POST (accountId is added)
    query: tuple[tuple[str, str], ...] = ()  # the query of a GET, besides accountId

    @classmethod
    def profile(cls, slug: str, account_id: str | None) -> ReadRequest:
        return cls("POST", "profile", account_id, {"profileId": slug})

    @classmethod
    def conversation_exists(cls, slug: str, account_id: str | None) -> ReadRequest:
        return cls("GET", f"conversations/exists/{quote(slug, safe='')}", account_id)

    @classmethod
    def account_status(cls, account_id: str | None) -> ReadRequest:
        return cls("GET", "account/status", account_id)

    @classmethod
    def conversations(cls, account_id: str | None, count: int = 50, cursor: str | None = None) -> ReadRequest:
        """A page of the account's conversations, most recent activity first."""
        query = (("count", str(count)),) + ((("nextCursor", cursor),) if cursor else ())
        return cls("GET", "conversations", account_id, query=query)

    @classmethod
    def messages(
        cls, conversation: str, account_id: str | None, since: float | None = None, cursor: str | None = None
    ) -> ReadRequest:
        """A page of one conversation's messages, newest first; `since`: only those after it."""
        query = (("count", str(MESSAGES_PAGE)),)
        if since is not None:
            query += (("since", iso(since) or ""),)
        if cursor:
            query += (("cursor", cursor),)
        return cls("GET", f"conversations/{quote(conversation, safe='')}/messages", account_id, query=query)

    @classmethod
    def group_members(
        cls, group: str, start: int, count: int, statuses: Sequence[str], query: str | None, account_id: str | None
    ) -> ReadRequest:
        """A page of members; `group` is the group's id or its URL (`/groups/members-by-url`)."""
        body: dict[str, Any] = {"start": start, "count": count, "membershipStatuses": [s.upper() for s in statuses]}
        if query:
            body["typeaheadQuery"] = query
        if group.isdigit():
            return cls("POST", "groups/members", account_id, {"groupId": group, **body})
        return cls("POST", "groups/members-by-url", account_id, {"groupUrl": group, **body})

    def body(self) -> dict[str, Any] | None:
        if self.json is None:
            return None
        return {**self.json, "accountId": self.account_id} if self.account_id else dict(self.json)

    def params(self) -> dict[str, str]:
        if self.method != "GET":
            return {}
        return {"accountId": self.account_id, **dict(self.query)} if self.account_id else dict(self.query)


@dataclass(frozen=True)
class Profile:
    urn: str
    slug: str | None
    first_name: str | None = None
    last_name: str | None = None
    headline: str | None = None


@dataclass(frozen=True)
class Member:
    profile: Profile
    membership_status: str | None  # member, manager, owner


@dataclass(frozen=True)
class MembersPage:
    members: tuple[Member, ...]  # those with a usable URN
    has_more: bool
    total: int | None
    group_id: str | None
    size: int = 0  # members in the page as it came (the next page starts that much further)


@dataclass(frozen=True)
class Health:
    status: str  # AVAILABLE, IN_USE, ERROR, WARMUP, UNKNOWN
    enabled: bool
    has_tokens: bool
    raw: dict[str, Any]

    @property
    def problem(self) -> str | None:
        """Why the account cannot send, if the API says it cannot."""
        if self.status == "ERROR":
            return "the API reports its status as ERROR (its calls fail until it is fixed)"
        if not self.enabled:
            return "the API reports it disabled"
        if not self.has_tokens:
            return "the API has no LinkedIn session for it (hasTokens: false): reconnect it"
        return None


@dataclass(frozen=True)
class Conversation:
    urn: str
    participants: tuple[str, ...]  # profile URNs
    last_activity: float | None


@dataclass(frozen=True)
class Message:
    urn: str | None
    text: str
    sent_at: float | None
    sender: str | None  # a profile URN
    by_owner: bool  # sent by the account itself


@dataclass(frozen=True)
class Listing:
    """A page of conversations or of one conversation's messages, and where the next page starts."""

    conversations: tuple[Conversation, ...] = ()
    messages: tuple[Message, ...] = ()
    cursor: str | None = None  # None: no more pages


@dataclass(frozen=True)
class ReadAnswer:
    """What a read brought: `outcome.kind` SENT means the API answered it, with what it said."""

    outcome: Outcome
    profile: Profile | None = None
    has_conversation: bool | None = None
    health: Health | None = None
    page: MembersPage | None = None
    listing: Listing | None = None


def check_base_url(base_url: str, allow_insecure: bool = False) -> str:
    """The base URL without a trailing slash. Unless `allow_insecure`, plain http:// is refused for
    any host but this machine's loopback: the API key would cross the network readable by anyone."""
    invalid = ConfigError(f"invalid base URL {base_url!r}: expected http(s)://host/path")
    try:
        parts = urlsplit(base_url)
        host = parts.hostname
        port = parts.port  # a port past 65535 raises here, not in the middle of a request
        httpx.URL(base_url)  # and an address such as 256.1.1.1 here
    except (ValueError, httpx.InvalidURL):  # e.g. an unclosed [ of an IPv6 address
        raise invalid from None
    if port == 0:
        raise invalid
    if parts.scheme not in ("http", "https") or not host:
        raise invalid
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError("invalid base URL: it must not carry a query, a fragment or credentials")
    if parts.scheme == "http" and not allow_insecure and not _is_loopback(host):
        raise ConfigError(
            f"refusing to send the API key over plain http:// to {host}: use https://, or --allow-insecure"
        )
    return base_url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_http_client(
    base_url: str,
    api_key: str,
    timeout: float,
    connections: int,
    verify: ssl.SSLContext | bool = True,
    allow_insecure: bool = False,
) -> httpx.AsyncClient:
    """An AsyncClient for the API. `connections`: how many requests may be in flight at once."""
    return httpx.AsyncClient(
        base_url=check_base_url(base_url, allow_insecure) + "/",
        headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
        timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
        limits=httpx.Limits(
            max_connections=max(connections, 1),
            max_keepalive_connections=max(connections, 1),
            keepalive_expiry=KEEPALIVE,
        ),
        follow_redirects=False,  # a redirected POST could be replayed elsewhere: treat as misrouted
        verify=verify,
    )


class AccountClients:
    """One AsyncClient (one connection) per sending account, made when first needed.

    Each account has at most one request in flight, so one connection each is all the concurrency
    there is. One shared pool would be slower: httpcore looks through every connection and queued
    request of its pool at each request's start and end, which with hundreds of accounts costs
    more than the requests. The clients share one TLS context, built once.
    """

    def __init__(self, base_url: str, api_key: str, timeout: float, allow_insecure: bool = False):
        self._base_url = check_base_url(base_url, allow_insecure)
        self._args = (api_key, timeout)
        self._allow_insecure = allow_insecure
        self._tls = httpx.create_ssl_context()  # what each client would build for itself, built once
        self._clients: dict[str, httpx.AsyncClient] = {}

    def __call__(self, account_id: str | None) -> httpx.AsyncClient:
        key = account_id or ""
        found = self._clients.get(key)
        if found is None:
            found = self._clients[key] = make_http_client(
                self._base_url, *self._args, 1, verify=self._tls, allow_insecure=self._allow_insecure
            )
        return found

    async def __aenter__(self) -> AccountClients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            async with contextlib.AsyncExitStack() as stack:  # every client is closed, whatever one raises
                for http in self._clients.values():
                    stack.push_async_callback(http.aclose)

    def __repr__(self) -> str:  # never the key
        return f"AccountClients(base_url={self._base_url!r}, clients={len(self._clients)})"


# Seconds an idle connection is kept for the next request. Well under the servers' own idle
# timeouts (5 s for uvicorn, the sandbox's server; 60 s and more for most proxies): a request sent
# on a connection the server is closing at that moment fails after it may have left, and becomes
# `unknown`. An account that sends more rarely than this opens a new connection, at no risk.
KEEPALIVE = 2.0


def deadline_for(timeout: float) -> float:
    """How long one request may take in all. httpx's timeouts bound each phase (and each read)
    separately, so an answer that trickles in could otherwise outlast `timeout` many times."""
    return timeout + CONNECT_TIMEOUT


class ApiClient:
    """Sends through one AsyncClient, or through `AccountClients` (a client per account)."""

    def __init__(self, http: httpx.AsyncClient | AccountClients, deadline: float):
        self._http = http
        self.deadline = deadline

    async def send(self, request: SendRequest) -> Outcome:
        http = self._http if isinstance(self._http, httpx.AsyncClient) else self._http(request.account_id)
        try:
            with anyio.move_on_after(self.deadline) as scope:
                response = await http.post(f"messaging/{request.endpoint}", json=request.body())
            if scope.cancelled_caught:
                return Outcome(
                    Kind.UNKNOWN, error=f"no complete answer within {self.deadline:g}s; the message may have been sent"
                )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return Outcome(Kind.NOT_SENT, error=f"no connection: {_describe(exc)}")
        except httpx.TimeoutException as exc:
            return Outcome(Kind.UNKNOWN, error=f"no answer in time ({_describe(exc)}); the message may have been sent")
        except httpx.TransportError as exc:
            return Outcome(Kind.UNKNOWN, error=f"connection lost ({_describe(exc)}); the message may have been sent")
        except httpx.HTTPError as exc:  # e.g. an answer whose body cannot be decoded
            return Outcome(Kind.UNKNOWN, error=f"unreadable answer ({_describe(exc)}); the message may have been sent")
        return classify(response)

    async def read(self, request: ReadRequest) -> ReadAnswer:
        """A read request. Reads change nothing, so an unanswered one is simply asked again later."""
        http = self._http if isinstance(self._http, httpx.AsyncClient) else self._http(request.account_id)
        try:
            with anyio.move_on_after(self.deadline) as scope:
                response = await http.request(
                    request.method, request.path, json=request.body(), params=request.params()
                )
            if scope.cancelled_caught:
                return ReadAnswer(Outcome(Kind.UNKNOWN, error=f"no complete answer within {self.deadline:g}s"))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return ReadAnswer(Outcome(Kind.NOT_SENT, error=f"no connection: {_describe(exc)}"))
        except httpx.HTTPError as exc:
            return ReadAnswer(Outcome(Kind.UNKNOWN, error=f"no answer ({_describe(exc)})"))
        return classify_read(response, request)

    def __repr__(self) -> str:
        return (
            f"ApiClient({self._http!r})"
            if isinstance(self._http, AccountClients)
            else (f"ApiClient(base_url={str(self._http.base_url)!r})")
        )


def classify(response: httpx.Response) -> Outcome:
    status = response.status_code
    text = response.text
    payload = _json(text)
    common = {"body": text[:MAX_BODY_KEPT], "rate_limit": rate_limit_headers(response.headers)}
    if status == 200:
        return _classify_ok(payload, text, common)
    return _judge(status, payload, _error_text(payload, text, response.reason_phrase), response, common)


def classify_read(response: httpx.Response, request: ReadRequest) -> ReadAnswer:
    """A read's answer. A 404 whose JSON says `success: false` is the API's "not found" (an account
    or a profile), not a wrong address. A 200 whose body is not what the endpoint answers is
    unreadable: asked again later, never taken as an answer."""
    status, text = response.status_code, response.text
    payload = _json(text)
    common = {"body": text[:MAX_BODY_KEPT], "rate_limit": rate_limit_headers(response.headers)}
    if status != 200 or payload.get("success") is False:
        error = _error_text(payload, text, response.reason_phrase)
        if status == 404 and payload.get("success") is False:
            return ReadAnswer(Outcome(Kind.REJECTED, http_status=404, error=error, **common))
        judged = _judge(status if status != 200 else 400, payload, error, response, common)
        return ReadAnswer(judged if status != 200 else replace(judged, http_status=200))
    ok = Outcome(Kind.SENT, http_status=200, **common)
    try:
        if request.path == "profile":
            return ReadAnswer(ok, profile=_profile(payload["profile"]))
        if request.path.startswith("conversations/exists/"):
            found = payload["hasConversation"]
            if not isinstance(found, bool):
                raise TypeError("hasConversation")
            return ReadAnswer(ok, has_conversation=found)
        if request.path == "account/status":
            health = Health(
                str(payload["status"]),
                payload.get("enabled") is not False,
                payload.get("hasTokens") is not False,
                payload,
            )
            return ReadAnswer(ok, health=health)
        if request.path == "conversations":
            return ReadAnswer(ok, listing=_conversations(payload))
        if request.path.startswith("conversations/"):
            return ReadAnswer(ok, listing=_messages(payload))
        items = payload["members"]
        if not isinstance(items, list):
            raise TypeError("members is not a list")
        members = tuple(_member(item) for item in items if isinstance(item, dict))
        total = (payload.get("pagination") or {}).get("total")
        group_id = payload.get("groupId")
        page = MembersPage(
            tuple(m for m in members if m is not None),
            payload.get("hasMore") is True,
            total if isinstance(total, int) and not isinstance(total, bool) and 0 <= total <= MAX_MEMBERS else None,
            str(group_id) if isinstance(group_id, (str, int)) and _GROUP_ID.fullmatch(str(group_id)) else None,
            len(items),
        )
        return ReadAnswer(ok, page=page)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        snippet = " ".join(text.split())[:200]
        error = f"HTTP 200 that is not the API's answer ({type(exc).__name__}: {exc}; it began: {snippet})"
        return ReadAnswer(Outcome(Kind.UNKNOWN, http_status=200, error=error, **common))


URN_PREFIX = "urn:li:fsd_profile:"
# Matched whole (fullmatch: `$` would let a trailing newline through, and with it a second person).
_URN = re.compile(r"urn:li:fsd_profile:[A-Za-z0-9_-]{1,200}")
_SLUG = re.compile(r"[^\s/:?#%\x00-\x1f]{1,200}")  # as a file's public identifier must be
_GROUP_ID = re.compile(r"[1-9][0-9]{0,19}")
MAX_MEMBERS = 1_000_000_000  # a larger group total is no count: ignored
MESSAGES_PAGE = 50  # messages asked for per page
MAX_URN = 2000  # characters: a conversation's or message's URN (or a cursor) longer is no such thing
MAX_TEXT = 8000  # characters of a message's text kept (a LinkedIn message is far shorter)


def _text(value: object, limit: int = 500) -> str | None:
    return value.strip()[:limit] or None if isinstance(value, str) else None


def _profile(data: dict[str, Any]) -> Profile:
    """A profile or a member as the API gives it: `entityUrn`... or `profileId`, `fullName`..."""
    urn = data.get("entityUrn") or data.get("urn")
    if not urn and isinstance(data.get("profileId"), str):
        urn = URN_PREFIX + data["profileId"]
    if not isinstance(urn, str) or not _URN.fullmatch(urn):
        raise ValueError(f"no profile URN in {sorted(str(key)[:40] for key in data)[:8]}")
    slug = data.get("publicIdentifier")
    if not isinstance(slug, str) and isinstance(data.get("profileUrl"), str):
        found = re.search(r"linkedin\.com/in/([^/?#\s]+)", data["profileUrl"])
        slug = found.group(1) if found else None
    slug = unquote(slug.strip()) if isinstance(slug, str) else None
    if slug is not None and not _SLUG.fullmatch(slug):
        slug = None  # no identifier to keep: the person is known by URN
    first, last = _text(data.get("firstName")), _text(data.get("lastName"))
    if first is None and last is None and isinstance(data.get("fullName"), str):
        first, _, rest = data["fullName"].strip().partition(" ")
        first, last = first[:500] or None, rest.strip()[:500] or None
    return Profile(urn, slug.lower() if slug else None, first, last, _text(data.get("headline")))


def _next(payload: dict[str, Any], key: str) -> str | None:
    cursor = payload.get(key)
    if payload.get("hasMore") is not True or not isinstance(cursor, (str, int)) or isinstance(cursor, bool):
        return None
    return str(cursor)[:MAX_URN] or None


def profile_urn_of(value: object) -> str | None:
    """A profile's URN from its id (`ACoAA...`), or from a URN given whole."""
    if not isinstance(value, str):
        return None
    urn = value if value.startswith(URN_PREFIX) else URN_PREFIX + value
    return urn if _URN.fullmatch(urn) else None


def _conversations(payload: dict[str, Any]) -> Listing:
    """A page of conversations; one without a URN is left out, a participant without a usable id too."""
    items = payload["conversations"]
    if not isinstance(items, list):
        raise TypeError("conversations is not a list")
    found = []
    for item in items:
        urn = item.get("conversationUrn") if isinstance(item, dict) else None
        if not isinstance(urn, str) or not urn or len(urn) > MAX_URN:
            continue
        people = item.get("participants")
        ids = (p.get("profileId") for p in (people if isinstance(people, list) else []) if isinstance(p, dict))
        urns = tuple(urn for urn in map(profile_urn_of, ids) if urn is not None)
        found.append(Conversation(urn, urns, parse_server_time(item.get("lastActivityAt"))))
    return Listing(conversations=tuple(found), cursor=_next(payload, "nextCursor"))


def _messages(payload: dict[str, Any]) -> Listing:
    """A page of messages. Whose a message is must be said (`isSentByOwner` true or false): one
    that does not say is left out, never taken for a reply."""
    items = payload["messages"]
    if not isinstance(items, list):
        raise TypeError("messages is not a list")
    found = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("isSentByOwner"), bool):
            continue
        sender = profile_urn_of(item.get("senderProfileId"))
        urn = item.get("messageUrn")
        text = item.get("text")
        found.append(
            Message(
                urn if isinstance(urn, str) and 0 < len(urn) <= MAX_URN else None,
                text[:MAX_TEXT] if isinstance(text, str) else "",
                parse_server_time(item.get("sentAt")),
                sender,
                item["isSentByOwner"],
            )
        )
    return Listing(messages=tuple(found), cursor=_next(payload, "cursor"))


def _member(data: dict[str, Any]) -> Member | None:
    try:
        profile = _profile(data)
    except ValueError:
        return None  # a member without a usable URN cannot be messaged: left out
    status = data.get("membershipStatus")
    status = status.lower() if isinstance(status, str) else None
    return Member(profile, status if status in MEMBER_STATUSES else None)


def _classify_ok(payload: dict[str, Any], text: str, common: dict[str, Any]) -> Outcome:
    """A 200 is a send only when it is the API's answer: JSON with `"success": true`. Anything else
    (a captive portal's page, a wrong base URL that answers 200) may or may not have gone through."""
    success = payload.get("success")
    if success is True:
        return Outcome(Kind.SENT, http_status=200, **common)
    if success is False:
        error = _error_text(payload, text, "")
        named = NAMED_STATUS.search(error)
        if named and named.group(1) != "200":
            judged = _judge(int(named.group(1)), payload, error, None, common)
            return replace(judged, error=f"{judged.error} (answered as HTTP 200 with success: false)")
        return Outcome(
            Kind.UNKNOWN,
            http_status=200,
            error=f"HTTP 200 with success: false ({error or 'no error given'}); the message may have been sent",
            **common,
        )
    snippet = " ".join(text.split())[:200] or "an empty body"
    error = f"HTTP 200 that is not the API's answer (it began: {snippet}); the message may have been sent"
    return Outcome(Kind.UNKNOWN, http_status=200, error=error, **common)


def _judge(
    status: int, payload: dict[str, Any], error: str, response: httpx.Response | None, common: dict[str, Any]
) -> Outcome:
    """What a refusal with `status` means (also a 200 whose `success: false` names a status)."""
    common = {**common, "http_status": status}
    if status == 429:
        return Outcome(Kind.RATE_LIMITED, error=error, hold_until=parse_server_time(payload.get("holdUntil")), **common)
    if status == 401:
        return Outcome(Kind.UNAUTHORIZED, error=error, **common)
    if status in (404, 405) or 300 <= status < 400:
        where = f"HTTP {status} {response.reason_phrase} at {response.url}" if response is not None else error
        return Outcome(Kind.MISROUTED, error=where, **common)
    if status == 500:
        return Outcome(Kind.SERVER_ERROR, error=error, **common)
    if 400 <= status < 500:
        return Outcome(Kind.REJECTED, error=error, **common)
    # 502, 503, 504 and other answers from something in between (a proxy, a load balancer): the
    # API behind it may have sent the message before the answer was lost.
    return Outcome(Kind.UNKNOWN, error=f"HTTP {status}: {error}; the message may have been sent", **common)


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON; or nested deeper than a parser should follow
        return {}
    return value if isinstance(value, dict) else {}


def _error_text(payload: dict[str, Any], text: str, reason: str) -> str:
    for key in ("error", "message"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value[:MAX_ERROR_CHARS]
        if value:
            return json.dumps(value, separators=(",", ":"))[:MAX_ERROR_CHARS]
    if text.lstrip().startswith("<"):  # a proxy's or server's HTML page: its markup is no message
        return f"{reason} (an HTML page)" if reason else "an HTML page"
    snippet = " ".join(text.split())[:200]
    return snippet or reason


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
