"""The one place that reads the wall clock.

Everything else asks a `Clock` for the time (UTC epoch seconds, never monotonic: these values are
stored and compared across processes and restarts) and sleeps through it, so a test can hand in a
clock of its own.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Protocol

import anyio
import anyio.lowlevel


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch, UTC."""

    async def sleep_until(self, deadline: float, wake: anyio.Event | None = None) -> None:
        """Return at `deadline` (at once if it has passed), or as soon as `wake` is set. Cancellable."""

    def worker(self) -> AbstractContextManager[None]:
        """Mark the calling task as one whose sleeps the clock may skip (see VirtualClock)."""


SKEW = "CAMPAIGN_RUNNER_CLOCK_SKEW"  # seconds this host's clock is off by: set by tests of hosts whose clocks differ


class SystemClock:
    """The host's clock; or, once it `follow`s one, another's: the database's, carried forward by
    this host's monotonic clock, which no setting of the wall clock moves."""

    def __init__(self) -> None:
        try:
            self._skew = float(os.environ.get(SKEW) or 0)
        except ValueError:
            raise ValueError(f"{SKEW}: a number of seconds, not {os.environ[SKEW]!r}") from None
        self._anchor: tuple[float, float] | None = None  # (the other clock's time, our monotonic time then)

    def now(self) -> float:
        if self._anchor is not None:
            then, at = self._anchor
            return then + (time.monotonic() - at)
        return time.time() + self._skew

    def follow(self, reference_now: float) -> None:
        """Tell the time by a clock that read `reference_now` a moment ago (a round trip at most)."""
        self._anchor = (reference_now, time.monotonic())

    def worker(self) -> AbstractContextManager[None]:
        return nullcontext()

    async def sleep_until(self, deadline: float, wake: anyio.Event | None = None) -> None:
        # Sleep in bounded steps so a wall-clock jump (NTP, a laptop waking up) is noticed
        # within a minute instead of after the whole originally computed delay.
        while (delay := deadline - self.now()) > 0:
            if wake is None:
                await anyio.sleep(min(delay, 60.0))
                continue
            with anyio.move_on_after(min(delay, 60.0)):
                await wake.wait()
            if wake.is_set():
                return

    def __repr__(self) -> str:
        return f"SystemClock(now={iso(self.now())})"


class VirtualClock:
    """A clock for tests and simulations: time stands still until every worker sleeps, then jumps.

    Workers register with `with clock.worker():`. Only when each of them waits in `sleep_until`
    does time move, straight to the earliest deadline. A task that waits on anything else (the
    database thread, an HTTP exchange, an event) is busy, so time never runs ahead of work in
    progress. Days of sending run in seconds through the same code that runs for real.
    """

    def __init__(self, start: float):
        self._now = start
        self._workers = 0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    @contextmanager
    def worker(self) -> Iterator[None]:
        self._workers += 1
        try:
            yield
        finally:
            self._workers -= 1
            self._jump_if_idle()

    async def sleep_until(self, deadline: float, wake: anyio.Event | None = None) -> None:
        if deadline <= self._now or (wake is not None and wake.is_set()):
            await anyio.lowlevel.checkpoint()
            return
        entry = (deadline, next(self._order), wake or anyio.Event())
        heapq.heappush(self._sleepers, entry)
        try:
            self._jump_if_idle()
            await entry[2].wait()
        finally:
            if entry in self._sleepers:  # woken by `wake` or cancelled, not by time
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)
                self._jump_if_idle()

    def _jump_if_idle(self) -> None:
        if not self._sleepers or len(self._sleepers) < self._workers:
            return
        if any(wake.is_set() for _, _, wake in self._sleepers):  # woken, about to run: not idle
            return
        self._now = max(self._now, self._sleepers[0][0])
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()

    def __repr__(self) -> str:
        return f"VirtualClock(now={iso(self._now)}, workers={self._workers}, sleeping={len(self._sleepers)})"


def iso(epoch: float | None) -> str | None:
    """ISO 8601 in UTC with a Z, to the millisecond; None stays None. A time past what a date can
    show (only ever from a damaged or hand-edited database) is written as its number."""
    if epoch is None:
        return None
    try:
        moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{epoch:.0f}"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


EPOCH_SECONDS_FROM = 1e9  # a number from 1e9 on is epoch seconds (2001 onwards); below, no point in time
EPOCH_MILLISECONDS_FROM = 1e12  # from 1e12 on, epoch milliseconds (2001 onwards)


def parse_server_time(value: object) -> float | None:
    """A point in time as a server may write it: ISO 8601 (the documented form), or epoch seconds
    or milliseconds as a number or numeric text. None for anything else: a small number (no point
    in time), NaN or infinity, a bool, garbage. Never raises, whatever the value."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            return parse_iso(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    if not math.isfinite(number) or number < EPOCH_SECONDS_FROM:
        return None
    return number / 1000 if number >= EPOCH_MILLISECONDS_FROM else number


def parse_iso(text: str) -> float | None:
    """Epoch seconds from an ISO 8601 timestamp; None when it cannot be read.

    A timestamp without an offset is taken as UTC, as the API documents its times in UTC.
    """
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    except (ValueError, AttributeError, OverflowError):  # OverflowError: year 1 with a positive offset
        return None
