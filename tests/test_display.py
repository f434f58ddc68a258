"""How events are shown: the live table fits an 80-column terminal, whatever the names and states."""

from __future__ import annotations

import io

from rich.console import Console

from campaign_runner import events
from campaign_runner.clock import VirtualClock
from campaign_runner.display import LiveView
from campaign_runner.outcome import Kind

from conftest import urn

START = 1_800_000_000.0


def test_the_live_table_fits_80_columns() -> None:
    clock = VirtualClock(START)
    console = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    view = LiveView(console, clock)
    accounts = {f"account-with-a-rather-long-name-{i}": "150/day (09:00-17:30 Europe/Berlin mon,tue)" for i in range(3)}
    counts = {"spring-meetup-invite-for-the-berlin-group": dict.fromkeys(["pending"], 12_345) | {"sent": 99_999}}
    view(events.RunStarted(counts, accounts))
    first, second, third = accounts
    view(events.Attempted("spring-meetup-invite-for-the-berlin-group", first, urn(1), 1, Kind.SENT, 200, None,
                          "sent", 0.1, 149, 150))  # fmt: skip
    view(events.AccountHeld(second, START + 3 * 86400, "Rate limit exceeded for MESSAGE: 150/150 used"))
    view(events.AccountWaiting(third, START + 200, "schedule"))
    console.print(view)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    # One line per account: nothing wrapped.
    assert sum(line.startswith("│ account-with") for line in lines) == 3
    assert any("held until 2027-01-18 08:00" in line for line in lines)


def test_the_live_table_shows_each_campaigns_forecast_in_its_time_zone() -> None:
    clock = VirtualClock(START)
    console = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    view = LiveView(console, clock)
    view(events.RunStarted({"meetup": {"pending": 40}, "webinar": {"pending": 9}}, {"acc_1": "3/day"}))
    view(events.Forecast("meetup", START, START + 5 * 86400, "Europe/Berlin"))
    view(events.Forecast("webinar", START, None, "UTC", "horizon"))
    console.print(view)
    lines = console.export_text().splitlines()
    assert "meetup: projected finish 2027-01-20 09:00 CET" in lines
    assert "webinar: projected finish more than two years away" in lines
    assert max(len(line) for line in lines) <= 80
