"""What the plain ASGI apps (the sandbox, the dashboard, the webhook receiver) share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def is_http(scope: Scope, receive: Receive, send: Send) -> bool:
    """Whether `scope` is an HTTP request for the app to answer; the server's lifespan messages
    are answered here."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    return scope["type"] == "http"


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the server's startup and shutdown: these apps have nothing to set up."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
