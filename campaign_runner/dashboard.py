"""`campaign-runner dashboard`: every campaign of a database, live, read-only, on a local web page.

A plain ASGI app (served by uvicorn, as the sandbox is). It reads the database through a
read-only connection, so the runners writing to it are never held up, and each page is the html
report's, asking the dashboard for fresh figures every two seconds. It binds to loopback unless
told otherwise; on any other address a token is required, and it is checked on every request (a
`?token=` in a link is exchanged for an HttpOnly cookie, so it leaves the address bar). The
dashboard never knows the API key, so no page can show it.
"""

from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, unquote

import jinja2

from .asgi import Receive, Scope, Send, is_http
from .clock import Clock
from .errors import StoreError, UnknownCampaignError
from .html_report import gather, render
from .overview import overview, status_json
from .store import Store

COOKIE = "campaign_runner_token"

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("campaign_runner", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)


class Dashboard:
    def __init__(self, store: Store, clock: Clock, token: str | None = None):
        self._store = store
        self._clock = clock
        self._token = token

    def __repr__(self) -> str:  # never the token
        return f"Dashboard(store={self._store!r}, token={'set' if self._token else 'none'})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await is_http(scope, receive, send):
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = self._given_token(scope, query)
        if self._token is not None and not hmac.compare_digest(given.encode(), self._token.encode()):
            await _answer(send, 401, b"a token is required: open the address the dashboard printed", "text/plain")
            return
        if self._token is not None and "token" in query:  # into a cookie, out of the address bar
            cookie = f"{COOKIE}={self._token}; HttpOnly; SameSite=Strict; Path=/"
            await _answer(send, 303, b"", "text/plain", [(b"location", scope["path"].encode()),
                                                         (b"set-cookie", cookie.encode())])  # fmt: skip
            return
        if scope["method"] != "GET":
            await _answer(send, 405, b"read-only", "text/plain", [(b"allow", b"GET")])
            return
        try:
            status, body, kind = await self._route(scope["path"], query)
        except UnknownCampaignError as exc:
            status, body, kind = 404, str(exc).encode(), "text/plain"
        except StoreError as exc:
            status, body, kind = 503, str(exc).encode(), "text/plain"
        await _answer(send, status, body, kind)

    def _given_token(self, scope: Scope, query: dict[str, list[str]]) -> str:
        if "token" in query:
            return query["token"][0]
        headers = dict(scope["headers"])
        bearer = headers.get(b"authorization", b"").decode("latin-1")
        if bearer.startswith("Bearer "):
            return bearer[len("Bearer ") :]
        cookies = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        return cookies[COOKIE].value if COOKIE in cookies else ""

    async def _route(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes, str]:
        now = self._clock.now()
        if path == "/":
            names = await self._store.campaign_names()
            found = await overview(self._store, names, now)
            page = _ENVIRONMENT.get_template("dashboard.html.j2").render(status=status_json(found))
            return 200, page.encode(), "text/html; charset=utf-8"
        if path == "/api/status":
            names = await self._store.campaign_names()
            return 200, json.dumps(status_json(await overview(self._store, names, now))).encode(), "application/json"
        if path.startswith("/campaign/"):
            page, figures = await gather(self._store, unquote(path[len("/campaign/") :]), now)
            return 200, render(page, figures, live=True).encode(), "text/html; charset=utf-8"
        if path.startswith("/api/campaign/"):
            everyone = query.get("recipients") == ["1"]
            _, figures = await gather(self._store, unquote(path[len("/api/campaign/") :]), now, recipients=everyone)
            return 200, json.dumps(figures).encode(), "application/json"
        return 404, b"not found", "text/plain"


async def _answer(
    send: Send, status: int, body: bytes, kind: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [
        (b"content-type", kind.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
