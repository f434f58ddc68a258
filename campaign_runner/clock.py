"""The one place that reads the wall clock.

Everything else asks a `Clock` for the time (UTC epoch seconds, never monotonic: these values are
stored and compared across processes and restarts) and sleeps through it, so a test can hand in a
clock of its own.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch, UTC."""

    async def sleep_until(self, deadline: float) -> None:
        """Return at `deadline` (at once if it has passed). Cancellable."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        # Sleep in bounded steps so a wall-clock jump (NTP, a laptop waking up) is noticed
        # within a minute instead of after the whole originally computed delay.
        while (delay := deadline - time.time()) > 0:
            await anyio.sleep(min(delay, 60.0))

    def __repr__(self) -> str:
        return f"SystemClock(now={iso(self.now())})"


def iso(epoch: float | None) -> str | None:
    """ISO 8601 in UTC with a Z, to the millisecond; None stays None."""
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float | None:
    """Epoch seconds from an ISO 8601 timestamp; None when it cannot be read.

    A timestamp without an offset is taken as UTC, as the API documents its times in UTC.
    """
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
