"""When an account may send: working hours on chosen days in its own time zone. Pure time math.

A sending window opens each allowed day at `start` local time and closes at `end`; an `end` at or
before `start` means the window crosses midnight and closes the next day. A window belongs to the
day it opens on. Local times become UTC through zoneinfo, so daylight-saving changes move the
windows with the clocks: a 09:00 start is 09:00 local on both sides of a change. A local time the
change skips (02:30 on a spring-forward night) is taken with the offset before the change, as
zoneinfo does: it falls half an hour after the jump.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["DAY_NAMES", "Schedule", "local_time", "next_open", "parse_hours"]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAY = (0, 1440)
_SEARCH_DAYS = 9  # a window opens within the next week, whatever the allowed days
_FIRST_DAY, _LAST_DAY = 86400.0 * 2, 253_402_300_799.0 - 86400.0 * 10  # 1970-01-03 to 9999-12-21, UTC


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin") from None


def local_time(epoch: float, timezone: str) -> str:
    """A moment as people read it: minutes, in a campaign's or an account's time zone."""
    return datetime.fromtimestamp(epoch, zone(timezone)).strftime("%Y-%m-%d %H:%M %Z")


def parse_hours(text: str) -> tuple[int, int]:
    """`"09:00-17:30"` -> minutes after midnight (540, 1050). `24:00` may end a window."""
    parts = str(text).replace(" ", "").split("-")
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not a range of hours: use HH:MM-HH:MM, e.g. 09:00-17:30")
    minutes = []
    for part in parts:
        hour, sep, minute = part.partition(":")
        if not (sep and hour.isdigit() and minute.isdigit() and len(minute) == 2):
            raise ValueError(f"{text!r} is not a range of hours: use HH:MM-HH:MM, e.g. 09:00-17:30")
        value = int(hour) * 60 + int(minute)
        if int(minute) > 59 or value > 1440:
            raise ValueError(f"{text!r}: {part} is not a time of day")
        minutes.append(value)
    if minutes[0] == minutes[1]:
        raise ValueError(f"{text!r}: the window is empty")
    if minutes[0] == 1440:
        raise ValueError(f"{text!r}: a window cannot open at 24:00")
    return minutes[0], minutes[1]


@dataclass(frozen=True)
class Schedule:
    timezone: str = "UTC"
    start: int = 0  # minutes after local midnight
    end: int = 1440  # minutes after the opening day's midnight; at or before `start`: the next day
    days: frozenset[int] = field(default_factory=lambda: frozenset(range(7)))  # 0 is Monday
    delay: tuple[float, float] = (0.0, 0.0)  # random gap between two sends, seconds (min, max)

    def __post_init__(self) -> None:
        zone(self.timezone)
        if not self.days:
            raise ValueError("a schedule needs at least one day")
        if not 0 <= self.delay[0] <= self.delay[1]:
            raise ValueError("a delay range runs from its smaller to its larger value")

    @property
    def always(self) -> bool:
        return (self.start, self.end) == ALL_DAY and len(self.days) == 7

    @property
    def open_seconds(self) -> float:
        """How long one day's window stays open (on a day without a clock change)."""
        return float(((self.end - self.start) % 1440 or 1440) * 60)

    def window(self, at: float) -> tuple[float, float]:
        """The sending window open at `at`, or else the next one to open: (opens, closes)."""
        if self.always or not _FIRST_DAY < at < _LAST_DAY:
            # Past the dates a calendar can show (a damaged database's time): no window to find.
            return at, float("inf")
        tz = zone(self.timezone)
        day = datetime.fromtimestamp(at, tz).date() - timedelta(days=1)  # a window of yesterday may still be open
        for offset in range(_SEARCH_DAYS):
            opening_day = day + timedelta(days=offset)
            if opening_day.weekday() not in self.days:
                continue
            opens = _local(opening_day, self.start, tz)
            closes = _local(opening_day + timedelta(days=1 if self.end <= self.start else 0), self.end, tz)
            if closes > at and closes > opens:
                return opens, closes
        raise AssertionError("unreachable: some allowed day opens within a week")  # pragma: no cover

    def is_open(self, at: float) -> bool:
        opens, _ = self.window(at)
        return opens <= at

    def local(self, at: float) -> datetime:
        """`at` in the schedule's time zone (a time past the calendar's end shows as its last days)."""
        return datetime.fromtimestamp(min(max(at, _FIRST_DAY), _LAST_DAY), zone(self.timezone))

    def to_json(self) -> str:
        return json.dumps(
            {
                "timezone": self.timezone,
                "start": self.start,
                "end": self.end,
                "days": sorted(self.days),
                "delay": list(self.delay),
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> Schedule:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(data["timezone"], data["start"], data["end"], frozenset(data["days"]), tuple(data["delay"]))

    def __str__(self) -> str:
        if self.always:
            hours = "any time"
        else:
            days = ",".join(DAY_NAMES[d] for d in sorted(self.days))
            hours = f"{_hhmm(self.start)}-{_hhmm(self.end)} {self.timezone} {days}"
        if self.delay[1]:
            hours += f", gaps {self.delay[0]:g}-{self.delay[1]:g}s"
        return hours


def next_open(schedules: tuple[Schedule, ...], at: float) -> float:
    """The first moment from `at` on when every schedule is open (an account shared by campaigns
    sends only when all of them allow it)."""
    for _ in range(64):
        moved = False
        for schedule in schedules:
            opens, _ = schedule.window(at)
            if opens > at:
                at, moved = opens, True
        if not moved:
            return at
    return at + 86400.0  # the schedules barely overlap: look again a day later


def _local(day: date, minutes: int, tz: ZoneInfo) -> float:
    extra, minutes = divmod(minutes, 1440)
    return datetime.combine(day + timedelta(days=extra), time(minutes // 60, minutes % 60), tz).timestamp()


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
