"""The virtual clock that lets days of sending run in seconds: time moves only when every worker sleeps."""

from __future__ import annotations

import anyio
import pytest

from campaign_runner.clock import VirtualClock

pytestmark = pytest.mark.anyio
START = 1_800_000_000.0


async def test_time_stands_still_while_a_worker_is_busy_then_jumps_to_the_earliest_deadline() -> None:
    clock = VirtualClock(START)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, until: float, busy_steps: int = 0) -> None:
        with clock.worker():
            for _ in range(busy_steps):  # work that is not sleeping: the clock must wait for it
                await anyio.sleep(0)
                assert clock.now() == START
            await clock.sleep_until(until)
            woke.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "busy", START + 5, 20)  # registers first, then yields at once
        tg.start_soon(sleeper, "late", START + 3600)  # sleeps while "busy" still works
    assert woke == [("busy", START + 5), ("late", START + 3600)]


async def test_a_wake_ends_a_sleep_early_without_moving_time() -> None:
    clock = VirtualClock(START)
    wake = anyio.Event()

    async def waiter() -> None:
        with clock.worker():
            await clock.sleep_until(START + 86400, wake)

    async with anyio.create_task_group() as tg:
        with clock.worker():  # a second worker that stays busy, so time cannot jump
            tg.start_soon(waiter)
            await anyio.sleep(0)
            wake.set()
            await anyio.sleep(0)
    assert clock.now() == START


async def test_a_deadline_already_past_returns_at_once() -> None:
    clock = VirtualClock(START)
    with clock.worker():
        await clock.sleep_until(START - 10)
        await clock.sleep_until(START)
    assert clock.now() == START


async def test_a_cancelled_sleeper_no_longer_holds_time_back() -> None:
    clock = VirtualClock(START)
    times: list[float] = []

    async def cancelled() -> None:
        with clock.worker():
            await clock.sleep_until(START + 10)

    async def steady() -> None:
        with clock.worker():
            await clock.sleep_until(START + 100)
            times.append(clock.now())

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            tg.start_soon(steady)
            async with anyio.create_task_group() as inner:
                inner.start_soon(cancelled)
                await anyio.sleep(0)
                scope.cancel()
    assert times == [START + 100]  # the cancelled worker's earlier deadline never came
