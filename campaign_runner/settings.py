"""The settings the runtime works with: limits, accounts, the breaker, warm-ups, a campaign.

Plain frozen dataclasses, whether they come from a campaign file (`config`) or the database
(`store`). Nothing here reads a file: the pure modules (limiter, guard, policy) import this, not
the file schema, so they load neither pydantic, PyYAML nor Jinja2.
"""

from __future__ import annotations

import decimal
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .schedule import Schedule
from .variants import Variant

__all__ = [
    "DEFAULT_ACCOUNT",
    "MEMBERS_BUDGET",
    "PROFILES_BUDGET",
    "Account",
    "Audience",
    "Breaker",
    "CampaignSettings",
    "Limit",
    "Warmup",
    "account_label",
]

DEFAULT_ACCOUNT = ""  # stored id of "the API key's default account": no accountId is sent
MAX_CAP = 1_000_000_000
MAX_WINDOW = 366 * 86400.0
MIN_WINDOW = 0.001  # seconds: a shorter one is no limit the API could mean
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAMED_WINDOWS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0, "week": 604800.0}
# A window's number may carry an exponent: databases written before limits were stored in plain
# decimals hold texts such as `10000/2.592e+06s`, and they must still read.
_LIMIT = re.compile(
    r"^\s*(\d+)\s*/\s*(?:(second|minute|hour|day|week)|(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*([smhd]))\s*$"
)


@dataclass(frozen=True, order=True)
class Limit:
    """At most `cap` requests in any window of `window` seconds."""

    cap: int
    window: float

    @classmethod
    def parse(cls, text: str) -> Limit:
        match = _LIMIT.match(str(text))
        if not match:
            raise ValueError(f"{text!r} is not a limit: use N/day, N/hour, N/week, N/minute or N/<number><s|m|h|d>")
        cap = int(match.group(1))
        if match.group(2):
            window = _NAMED_WINDOWS[match.group(2)]
        else:
            window = float(match.group(3)) * UNITS[match.group(4)]
        if cap < 1 or window <= 0:
            raise ValueError(f"{text!r}: the count and the window must both be above zero")
        if window < MIN_WINDOW:
            raise ValueError(f"{text!r}: a window of at least {MIN_WINDOW * 1000:g} ms")
        if cap > MAX_CAP or window > MAX_WINDOW:
            raise ValueError(f"{text!r}: at most {MAX_CAP} requests and a window of at most 366 days")
        return cls(cap, window)

    def __str__(self) -> str:
        """The limit as `parse` reads it back, exactly: named windows by name, others in the largest
        unit that divides them, else in seconds as a plain decimal (never an exponent)."""
        for name, seconds in _NAMED_WINDOWS.items():
            if self.window == seconds:
                return f"{self.cap}/{name}"
        for unit in "dhm":
            count = self.window / UNITS[unit]
            if count.is_integer() and count * UNITS[unit] == self.window:
                return f"{self.cap}/{int(count)}{unit}"
        return f"{self.cap}/{_decimal(self.window)}s"


def _decimal(value: float) -> str:
    """The shortest decimal that reads back as `value`, written out without an exponent."""
    text = format(decimal.Decimal(repr(value)), "f")
    return text[:-2] if text.endswith(".0") else text


MEMBERS_BUDGET = Limit(1000, 86400.0)  # the vendor's: group members fetched per account per day
PROFILES_BUDGET = Limit(120, 86400.0)  # the vendor's: unique profiles looked up per account per day
READ_RATE = Limit(30, 60.0)  # the vendor's: reads (profiles, members, pre-checks) per account per minute


@dataclass(frozen=True)
class Warmup:
    """A new account's daily cap: `start` on its first day of sending, `increase` more each day."""

    start: int
    increase: int

    def cap(self, day: int) -> int:
        """The cap on the account's `day`-th day of sending (1 is the first)."""
        return self.start + self.increase * max(day - 1, 0)


@dataclass(frozen=True)
class Account:
    id: str  # DEFAULT_ACCOUNT for the key's default account
    limit: Limit
    schedule: Schedule = field(default_factory=Schedule)


@dataclass(frozen=True)
class Breaker:
    """When an account's own answers say the trouble is the account, not its recipients."""

    failures: int = 3  # failed requests in a row (500, no connection, no answer) that pause the account
    cooldown: float = 30.0  # seconds of the first pause; each further one doubles
    pauses: int = 3  # pauses with no success in between; the next opening stops the account for the run
    forbidden: int = 5  # 403s in a row, each for a different recipient: the account is blocked

    @classmethod
    def strictest(cls, breakers: Iterable[Breaker]) -> Breaker:
        """For an account several campaigns share: every campaign's caution holds at once."""
        found = list(breakers) or [cls()]
        return cls(
            failures=min(b.failures for b in found),
            cooldown=max(b.cooldown for b in found),
            pauses=min(b.pauses for b in found),
            forbidden=min(b.forbidden for b in found),
        )


MEMBER_STATUSES = ("member", "manager", "owner")


@dataclass(frozen=True)
class Audience:
    """A campaign's recipients straight from its group: the members of these statuses, at most `max`."""

    statuses: tuple[str, ...] = ("member",)  # of MEMBER_STATUSES
    max: int | None = None

    def to_json(self) -> str:
        return json.dumps({"statuses": list(self.statuses), "max": self.max})

    @classmethod
    def from_json(cls, text: str) -> Audience:
        data = json.loads(text)
        return cls(tuple(data["statuses"]), data.get("max"))


DEFAULT_OPT_OUT = ("stop", "unsubscribe", "not interested")  # replies with one of these block the person
REPLY_POLL = 900.0  # seconds between two looks at an account's conversations for replies
REPLY_FRESH = 1800.0  # a follow-up goes only if the account's replies were looked at this recently


@dataclass(frozen=True)
class Steps:
    """What happens after the first message: follow-ups `after` seconds each (index 0 is the first
    message, after 0), stopped by a reply; a reply with an opt-out phrase also blocks the person."""

    afters: tuple[float, ...] = (0.0,)
    # Each step's message: one variant (id "") or several, drawn by weight per recipient.
    messages: tuple[tuple[Variant, ...], ...] = ()
    stop_on_reply: bool = True
    opt_out: tuple[str, ...] = DEFAULT_OPT_OUT
    reply_poll: float = REPLY_POLL
    reply_fresh: float = REPLY_FRESH

    @property
    def count(self) -> int:
        return len(self.afters)

    @property
    def watches_replies(self) -> bool:
        """Whether a run looks at replies: for follow-ups to stop on, or variants to compare."""
        return self.count > 1 or any(len(variants) > 1 for variants in self.messages)

    def opted_out(self, text: str) -> str | None:
        """The opt-out phrase a reply says, as whole words in any case and spacing; else None."""
        for phrase in self.opt_out:
            words = r"\s+".join(re.escape(word) for word in phrase.split())
            if re.search(rf"(?<!\w){words}(?!\w)", text, re.IGNORECASE):
                return phrase
        return None

    def to_json(self) -> str:
        return json.dumps(
            {
                "afters": list(self.afters),
                "messages": [[[v.id, v.text, v.weight] for v in step] for step in self.messages],
                "stop_on_reply": self.stop_on_reply,
                "opt_out": list(self.opt_out),
                "reply_poll": self.reply_poll,
                "reply_fresh": self.reply_fresh,
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> Steps:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            tuple(data["afters"]),
            tuple(tuple(Variant(*v) for v in step) for step in data["messages"]),
            data["stop_on_reply"],
            tuple(data["opt_out"]),
            data["reply_poll"],
            data["reply_fresh"],
        )


@dataclass(frozen=True)
class CampaignSettings:
    """What a campaign is, whether read from its file or from the database."""

    name: str
    group_id: str
    endpoint: str
    message_template: str
    limit: Limit  # the default for accounts listed without a limit of their own
    burst: int
    max_attempts: int
    backoff: float
    breaker: Breaker
    accounts: tuple[Account, ...]
    warmup: Warmup | None
    api_limits: tuple[Limit, ...]  # the API key's own allowance, shared by every account it drives
    timezone: str  # its times are shown in this zone: its schedule's, else its first account's
    # A person another campaign of the database sent (or may have sent) to: None, never messaged;
    # 0, always; else messaged once that many seconds have passed since.
    recontact_after: float | None = field(default=None, kw_only=True)
    precheck: str = field(default="conversation", kw_only=True)  # conversation | none
    audience: Audience | None = field(default=None, kw_only=True)  # the group's members
    members_budget: Limit = field(default_factory=lambda: MEMBERS_BUDGET, kw_only=True)  # members fetched per account
    profiles_budget: Limit = field(default_factory=lambda: PROFILES_BUDGET, kw_only=True)  # profiles looked up
    steps: Steps = field(default_factory=Steps, kw_only=True)  # follow-ups, and what a reply does

    @property
    def account_ids(self) -> tuple[str, ...]:
        return tuple(account.id for account in self.accounts)


def account_label(account_id: str) -> str:
    return account_id or "(default account)"
