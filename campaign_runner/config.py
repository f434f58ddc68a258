"""Campaign files: the schema (v1), limit and duration parsing, YAML/CSV loading, message rendering.

`load_campaign(path)` returns a `Campaign` ready to store, or raises `CampaignFileError` listing
every problem it found, each with its place (a field path, `recipients[i]`, or `file.csv line n`).
Nothing here touches the database, the network or the clock.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jinja2.meta
import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import CampaignFileError, ConfigError, Problem
from .schedule import DAY_NAMES, Schedule, parse_hours, zone
from .settings import (
    DEFAULT_ACCOUNT,
    DEFAULT_OPT_OUT,
    MAX_CAP,
    MEMBER_STATUSES,
    MEMBERS_BUDGET,
    PROFILES_BUDGET,
    REPLY_FRESH,
    REPLY_POLL,
    UNITS,
    Account,
    Audience,
    Breaker,
    CampaignSettings,
    Limit,
    Steps,
    Warmup,
)
from .variants import Variant, distinct_texts, parse_message, pick, spin

ENDPOINTS = ("send-group", "send-group-with-typing", "send-group-with-ack")
DEFAULT_ENDPOINT = "send-group-with-typing"
DEFAULT_LIMIT = "150/day"
DEFAULT_API_LIMITS = ("60/minute", "100/10s")  # the vendor's allowance per API key, shared by its accounts
MAX_MESSAGE_CHARS = 8000
MAX_STEPS = 10
URN_PATTERN = re.compile(r"^urn:li:fsd_profile:[A-Za-z0-9_-]+$")
URN_COLUMN = "profile_urn"
URL_COLUMN = "profile_url"
SLUG_COLUMN = "public_identifier"
PERSON_COLUMNS = (URN_COLUMN, URL_COLUMN, SLUG_COLUMN)  # who a row is: any one of them
# The variables a group member brings to the message (`audience: group_members`).
MEMBER_VARIABLES = ("first_name", "last_name", "headline", "public_identifier", "membership_status")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|[smhd])?\s*$")

GROUP_URL = re.compile(r"^(?:https?://)?(?:[a-z0-9-]+\.)?linkedin\.com/groups/(\d+)(?:[/?#].*)?$", re.IGNORECASE)
# A profile's URL: the slug after /in/ (as the vendor's own clients take it), percent-decoded.
PROFILE_URL = re.compile(r"^(?:https?://)?(?:[a-z0-9-]+\.)?linkedin\.com/in/([^/?#\s]+)(?:[/?#].*)?$", re.IGNORECASE)
SLUG = re.compile(r"^[^\s/:?#%]{1,200}$")


class WrittenInt(int):
    """An integer YAML read from anything but plain decimal digits: `0123` (octal 83), `0x1F`,
    `12:30` (base 60: 750), `1_000`, `+5`, `-5`. As an id, what was written is not what it means."""

    text: str


class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader (several times faster on big inline recipient lists, same semantics),
    which remembers when an integer was written as anything but plain digits, so that an id such as
    `group_id: 0123` is refused with a hint instead of being sent as "83"."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value = yaml.SafeLoader.construct_yaml_int(loader, node)
    if _PLAIN_INT.fullmatch(str(node.value)):
        return value
    found = WrittenInt(value)
    found.text = str(node.value)
    return found


_PLAIN_INT = re.compile(r"0|[1-9][0-9]*")
_YamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def group_id_of(text: str) -> str:
    """A group's numeric id, from the id itself or from the group's URL
    (`https://www.linkedin.com/groups/9876543/` -> `9876543`)."""
    text = text.strip()
    if text.isdigit() and text.isascii() and int(text) > 0:
        return text
    found = GROUP_URL.match(text)
    if found:
        return found.group(1)
    raise ValueError(
        f"{text!r} is not a group id: give the group's numeric id (e.g. 12345678) or its URL"
        " (https://www.linkedin.com/groups/12345678/)"
    )


def slug_of(text: str) -> str:
    """A profile's public identifier, from itself or from its URL
    (`https://www.linkedin.com/in/jane-doe-123/?trk=x` -> `jane-doe-123`)."""
    text = text.strip()
    if text.startswith("urn:"):
        raise ValueError(f"{text!r} is a URN, not a profile URL: give it in a profile_urn column")
    if "/" in text or text.lower().startswith(("http:", "https:", "www.", "linkedin.")):
        found = PROFILE_URL.match(text)
        if not found:
            raise ValueError(f"{text!r} is not a profile URL: expected https://www.linkedin.com/in/<name>/")
        text = urllib.parse.unquote(found.group(1))
    if not SLUG.match(text):
        raise ValueError(f"{text!r} is not a public identifier (the part after linkedin.com/in/ in a profile URL)")
    return text.lower()  # LinkedIn's are case-insensitive: one person, one identifier


def person_of(text: str) -> tuple[str | None, str | None]:
    """(URN, None) or (None, public identifier) for a URN, a profile URL or a bare identifier."""
    text = text.strip()
    if text.startswith("urn:"):
        if not URN_PATTERN.match(text):
            raise ValueError(f"{text!r} is not a profile URN: expected urn:li:fsd_profile:<id>")
        return text, None
    try:
        return None, slug_of(text)
    except ValueError:
        if "/" in text or "linkedin." in text.lower():
            raise  # meant as a URL: say what is wrong with it
        raise ValueError(
            f"{text!r} is none of a profile URN (urn:li:fsd_profile:...), a profile URL"
            " (https://www.linkedin.com/in/<name>/) or a public identifier"
        ) from None


_RECONTACT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([hdw])\s*$")
_RECONTACT_UNITS = {"h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_recontact(value: Any) -> float | None:
    """`never` -> None, `always` -> 0, a duration in hours, days or weeks (`90d`) -> its seconds.
    Minutes and bare numbers are refused: `3m` would read as minutes to us and as months to many."""
    if value == "never":
        return None
    if value == "always":
        return 0.0
    found = _RECONTACT.match(value) if isinstance(value, str) else None
    if not found or float(found.group(1)) <= 0:
        raise ValueError(f"{value!r}: use never, always, or a duration in hours, days or weeks, such as 90d")
    return float(found.group(1)) * _RECONTACT_UNITS[found.group(2)]


def parse_delay(value: Any) -> tuple[float, float]:
    """`45s-180s` -> (45.0, 180.0); a single duration is a fixed gap."""
    low, sep, high = str(value).partition("-")
    first = parse_duration(low)
    second = parse_duration(high) if sep else first
    if second < first:
        raise ValueError(f"{value!r}: the range runs from the shorter gap to the longer")
    if second > 86400:
        raise ValueError(f"{value!r}: a gap of at most a day")
    return first, second


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as `500ms`, `2s`, `1.5m`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"{value!r} is not a duration")
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration: use a number of seconds or e.g. 500ms, 2s, 5m")
        unit = match.group(2) or "s"
        seconds = float(match.group(1)) * (0.001 if unit == "ms" else UNITS[unit])
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


# --- the file schema ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ScheduleFields(_Strict):
    """The schedule keys; a campaign's `schedule:` and each account entry may set any of them."""

    timezone: str | None = None
    hours: str | None = None
    days: list[str] | None = None
    delay: str | None = None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is not None:
            parse_hours(value)
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            names = [str(day).strip().lower()[:3] for day in value]
            unknown = [day for day, name in zip(value, names, strict=True) if name not in DAY_NAMES]
            if unknown or not names:
                raise ValueError(f"expected a list of days from mon to sun, got {value!r}")
            return names
        return value

    @field_validator("delay", mode="before")
    @classmethod
    def _delay(cls, value: Any) -> str | None:
        if value is not None:
            parse_delay(value)
            return str(value)
        return value


class AccountEntry(ScheduleFields):
    id: str = Field(min_length=1, max_length=200, pattern=r"^[^\s\x00-\x1f]+$")
    limit: str | None = None

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: str | None) -> str | None:
        if value is not None:
            Limit.parse(value)
        return value


class RetryPolicy(_Strict):
    attempts: int = Field(default=3, ge=1, le=20)
    backoff: float = Field(default=2.0, le=3600)

    @field_validator("backoff", mode="before")
    @classmethod
    def _backoff(cls, value: Any) -> float:
        return parse_duration(value)


class WarmupPolicy(_Strict):
    start: int = Field(ge=1, le=MAX_CAP)
    increase: int = Field(ge=0, le=MAX_CAP)


class BreakerPolicy(_Strict):
    failures: int = Field(default=3, ge=1, le=100)
    cooldown: float = Field(default=30.0, le=86400)
    pauses: int = Field(default=3, ge=0, le=20)
    forbidden: int = Field(default=5, ge=2, le=1000)

    @field_validator("cooldown", mode="before")
    @classmethod
    def _cooldown(cls, value: Any) -> float:
        return parse_duration(value)


class GroupMembersSpec(_Strict):
    statuses: list[Literal["member", "manager", "owner"]] = Field(default_factory=lambda: ["member"], min_length=1)
    max: int | None = Field(default=None, ge=1, le=1_000_000)


class AudienceSpec(_Strict):
    group_members: GroupMembersSpec


class BudgetsSpec(_Strict):
    members: str = str(MEMBERS_BUDGET)  # group members fetched per account
    profiles: str = str(PROFILES_BUDGET)  # profiles looked up per account

    @field_validator("members", "profiles")
    @classmethod
    def _limit(cls, value: str) -> str:
        Limit.parse(value)
        return value


class StepSpec(_Strict):
    """One message of a sequence: sent `after` the previous one was sent to the same recipient."""

    after: float | None = None
    message: Any

    @field_validator("after", mode="before")
    @classmethod
    def _after(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)


class CampaignFile(_Strict):
    """Schema v1 of a campaign file."""

    version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    group_id: str = Field(min_length=1)
    endpoint: Literal["send-group", "send-group-with-typing", "send-group-with-ack"] = DEFAULT_ENDPOINT
    accounts: list[AccountEntry] = Field(default_factory=list)
    limit: str = DEFAULT_LIMIT
    burst: int = Field(default=1, ge=1, le=1000)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = Field(default_factory=BreakerPolicy)
    schedule: ScheduleFields = Field(default_factory=ScheduleFields)
    warmup: WarmupPolicy | None = None
    api_limit: list[str] | None = None
    message: Any = None  # a text, or a list of variants; or else `steps`
    steps: list[StepSpec] | None = Field(default=None, min_length=1, max_length=MAX_STEPS)
    stop_on_reply: bool = True
    opt_out: list[str] = Field(default_factory=lambda: list(DEFAULT_OPT_OUT), max_length=100)
    reply_poll: float = REPLY_POLL
    reply_fresh: float = REPLY_FRESH
    recipients: list[dict[str, Any]] = Field(default_factory=list)
    recipients_file: str | None = Field(default=None, min_length=1)
    audience: AudienceSpec | None = None
    recontact: str = "never"
    precheck: Literal["conversation", "none"] = "conversation"
    budgets: BudgetsSpec = Field(default_factory=BudgetsSpec)

    @field_validator("reply_poll", "reply_fresh", mode="before")
    @classmethod
    def _reply_times(cls, value: Any) -> float:
        seconds = parse_duration(value)
        if not 60 <= seconds <= 7 * 86400:
            raise ValueError(f"{value!r}: between a minute (1m) and a week (7d)")
        return seconds

    @field_validator("opt_out")
    @classmethod
    def _opt_out(cls, value: list[str]) -> list[str]:
        phrases = [" ".join(str(phrase).split()).lower() for phrase in value]
        if not all(phrases):
            raise ValueError("an opt-out phrase cannot be empty")
        return phrases

    @model_validator(mode="after")
    def _one_way_to_say_it(self) -> CampaignFile:
        if self.message is not None and self.steps is not None:
            raise ValueError("give `message` (one message) or `steps` (a sequence), not both")
        if self.message is None and self.steps is None:
            raise ValueError("missing `message` (or `steps`)")
        return self

    @field_validator("recontact", mode="before")
    @classmethod
    def _recontact(cls, value: Any) -> Any:
        parse_recontact(value)
        return value

    @field_validator("precheck", mode="before")
    @classmethod
    def _precheck(cls, value: Any) -> Any:
        if value not in ("conversation", "none"):
            raise ValueError(f"{value!r}: use conversation (skip people already in a conversation) or none")
        return value

    @field_validator("accounts", mode="before")
    @classmethod
    def _account_ids(cls, value: Any) -> Any:
        # `accounts: [acc_1, {id: acc_2, limit: 50/day}]`: a bare string is an id.
        if isinstance(value, list):
            for item in value:
                written = item.get("id") if isinstance(item, dict) else item
                if isinstance(written, WrittenInt):
                    raise ValueError(f"YAML reads the account id {written.text} as the number {int(written)}: quote it")
            return [
                {"id": str(item)} if isinstance(item, (str, int)) and not isinstance(item, bool) else item
                for item in value
            ]
        return value

    @field_validator("group_id", mode="before")
    @classmethod
    def _group_id(cls, value: Any) -> Any:
        # YAML reads `group_id: 12345678` as a number; the API wants its decimal string.
        if isinstance(value, WrittenInt):
            raise ValueError(f'YAML reads {value.text} as the number {int(value)}: quote it (group_id: "{value.text}")')
        if isinstance(value, int) and not isinstance(value, bool):
            return group_id_of(str(value))
        if isinstance(value, str):
            return group_id_of(value)
        return value

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: str) -> str:
        Limit.parse(value)
        return value

    @field_validator("api_limit", mode="before")
    @classmethod
    def _api_limit(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for item in value:
                Limit.parse(item)
        return value


# --- what the rest of the program uses ------------------------------------------------------


class Person(NamedTuple):
    """Who a row is: its URN, its public identifier (from a profile URL), or both."""

    urn: str | None
    slug: str | None

    @property
    def key(self) -> str:
        """What tells two rows of a file apart: the URN, else the public identifier."""
        return self.urn or self.slug or ""

    @property
    def seed(self) -> str:
        """Whom a variant and spintax are drawn for: as a stored recipient is known for good (its
        identifier, else its URN; a URN looked up later does not change it)."""
        return self.slug or self.urn or ""


@dataclass(frozen=True)
class Recipient:
    profile_urn: str | None  # None until its public identifier is looked up
    message: str  # rendered
    place: str  # where it came from, for messages
    variables: dict[str, Any] = field(default_factory=dict)  # its own values from the file
    public_identifier: str | None = None
    later: tuple[str, ...] = ()  # the follow-ups' messages, rendered
    variants: tuple[str, ...] = ()  # the variant drawn for each step ("" where a step has one)

    def messages_json(self) -> str | None:
        """Every step's message as stored: None for a single message."""
        return json.dumps([self.message, *self.later], ensure_ascii=False) if self.later else None

    def variants_json(self) -> str | None:
        return json.dumps(self.variants) if any(self.variants) else None

    @property
    def key(self) -> str:
        return self.profile_urn or self.public_identifier or ""

    def variables_json(self) -> str:
        """Its values as stored: JSON, a blank one as null, whatever else YAML gave that JSON has not
        (a date) as text."""
        return _VARIABLES_JSON.encode(self.variables)


def _json_value(value: Any) -> Any:
    return None if isinstance(value, BlankCell) else str(value)


_VARIABLES_JSON = json.JSONEncoder(ensure_ascii=False, default=_json_value)  # one, not one per row


class Recipients:
    """A campaign's recipients, read and rendered from its file each time they are iterated, so a
    list of 100,000 is never held in memory at once. `load_campaign` has checked every row; if the
    file changed since, iterating raises CampaignFileError at the end (a loading transaction then
    rolls back)."""

    def __init__(
        self,
        source: str,
        items: list[dict[str, Any]],
        csv_path: Path | None,
        csv_shown: str,
        messages: Messages,
        count: int,
    ):
        self._source = source
        self._items = items
        self._csv = csv_path
        self._shown = csv_shown
        self._messages = messages
        self._count = count
        self.columns: list[tuple[str, str]] = []  # the CSV's headers as written, and the variable each became

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"Recipients({self._source!r}, count={self._count})"

    def rows(self, problems: list[Problem]) -> Iterator[Row]:
        """Every row of the file, in order, before duplicates are dropped."""
        yield from _inline_rows(self._items, problems)
        if self._csv is not None:
            yield from _csv_rows(self._csv, self._shown, problems, self.columns)

    def __iter__(self) -> Iterator[Recipient]:
        problems: list[Problem] = []
        seen: set[str] = set()
        for place, person, values in self.rows(problems):
            if person.key in seen:
                continue
            seen.add(person.key)
            rendered = self._messages.render(person.seed, values, place, problems)
            if rendered is not None:
                texts, variants = rendered
                yield Recipient(person.urn, texts[0], place, values, person.slug, texts[1:], variants)
        if problems:
            changed = Problem("", "the file changed while it was being loaded")
            raise CampaignFileError(self._source, [changed, *problems])


@dataclass(frozen=True)
class Campaign(CampaignSettings):
    """A campaign file, validated: its settings and its recipients (read from the file on demand)."""

    recipients: Recipients
    source: str
    duplicates: int = 0
    warnings: tuple[Problem, ...] = ()
    advice: tuple[Problem, ...] = ()  # what `validate` also points out: columns the message never uses
    columns: tuple[str, ...] = ()  # the recipients' variables, in file order
    to_resolve: int = 0  # recipients given by profile URL or public identifier: looked up before sending


class BlankCell(StrictUndefined):
    """A recipient's blank cell (or null): false in `{% if %}`, replaced by `default()`, `is
    defined` false; but printed as it is, it is an error, so nobody is greeted "Hi ,"."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    @property
    def _undefined_message(self) -> str:
        return f"{self._undefined_name!r} is blank (give it a default(...), or test it with {{% if %}})"


def make_environment() -> SandboxedEnvironment:
    # The sandbox refuses attribute access to Python internals from templates; StrictUndefined
    # makes a missing variable an error instead of an empty string in someone's inbox.
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


def render(template: Any, variables: dict[str, Any]) -> str:
    """The message a recipient receives; surrounding whitespace is dropped."""
    return template.render(**variables).strip()


def renderer(source: str) -> Callable[[dict[str, Any]], str]:
    """The message of a template for a recipient's stored values (a blank value is None)."""
    template = make_environment().from_string(source)
    return lambda values: render(template, _present(values))


class Messages:
    """Every step's message for one recipient. Per step, its variant is drawn by weight and its
    spintax spun, both from the campaign's name, the person and the step: the same on every load.
    Spinning works on the template's text, so a recipient's values never pass through it."""

    def __init__(self, campaign: str, steps: tuple[tuple[Variant, ...], ...]):
        self.campaign = campaign
        self.steps = steps
        env = make_environment()
        self._compile = functools.lru_cache(maxsize=1024)(env.from_string)

    def choose(self, key: str, step: int) -> tuple[Variant, str]:
        """The variant of `step` for the person `key`, and its text with the spintax spun."""
        seed = f"{self.campaign}\x00{key}\x00{step}"
        variants = self.steps[step]
        chosen = variants[0] if len(variants) == 1 else pick(variants, seed)
        return chosen, spin(chosen.text, seed)

    def render_step(self, key: str, step: int, values: dict[str, Any]) -> str:
        """One step's message from stored values (a blank value is None); raises what Jinja raises."""
        return render(self._compile(self.choose(key, step)[1]), _present(values))

    def render(
        self, key: str, values: dict[str, Any], place: str, problems: list[Problem]
    ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """Each step's message and variant id, or None with the problems said."""
        texts, ids = [], []
        for step in range(len(self.steps)):
            variant, source = self.choose(key, step)
            where = place if len(self.steps) == 1 else f"{place} (step {step + 1})".strip()
            text = _render_checked(self._compile(source), values, where, problems)
            if text is None:
                return None
            texts.append(text)
            ids.append(variant.id)
        return tuple(texts), tuple(ids)


def load_campaign(path: str | Path) -> Campaign:
    path = Path(path)
    problems: list[Problem] = []
    raw = _read_yaml(path)
    try:
        spec = CampaignFile.model_validate(raw)
    except ValidationError as exc:
        raise CampaignFileError(str(path), [_pydantic_problem(err) for err in exc.errors()]) from None

    limit = Limit.parse(spec.limit)
    accounts = _accounts(spec, limit, problems)
    api_limits = tuple(sorted({Limit.parse(text) for text in (spec.api_limit or DEFAULT_API_LIMITS)}))

    env = make_environment()
    steps = _steps(spec, str(path))
    for index, variants in enumerate(steps.messages):
        for variant in variants:
            try:
                env.parse(variant.text)
            except TemplateError as exc:
                line = getattr(exc, "lineno", None)
                place = _message_place(index, variant, len(steps.messages))
                place = f"{place} line {line}" if line else place
                raise CampaignFileError(str(path), [Problem(place, f"template syntax: {exc}")]) from None
    messages = Messages(spec.name, steps.messages)

    csv_path = path.parent / spec.recipients_file if spec.recipients_file else None
    recipients = Recipients(str(path), spec.recipients, csv_path, spec.recipients_file or "", messages, 0)
    # One pass that checks and renders every row and keeps nothing of it but the URNs seen.
    seen: set[str] = set()
    keys: dict[str, None] = {}  # every variable some recipient has (a column, an inline key), in file order
    repeated: list[tuple[str, str]] = []  # (place, urn) of each repeat
    count = rows = to_resolve = 0
    for place, person, values in recipients.rows(problems):
        rows += 1
        keys.update(dict.fromkeys(values))
        if person.key in seen:
            repeated.append((place, person.key))
            continue
        seen.add(person.key)
        if person.urn is None:
            to_resolve += 1
        if messages.render(person.seed, values, place, problems) is not None:
            count += 1
    available = dict(keys)  # what a message may use: the file's columns, and a group member's
    if spec.audience is not None:
        available.update(dict.fromkeys(MEMBER_VARIABLES))
        _check_member_template(messages, problems)
    elif not rows and not problems:
        problems.append(
            Problem("recipients", "no recipients: give `recipients`, `recipients_file`, `audience`, or several")
        )
    del seen
    warnings = _repeat_warnings(recipients, repeated)
    sources = "\n".join(v.text for step in steps.messages for v in step)
    missing, advice = _variable_warnings(env, sources, available, keys, recipients) if not problems else ([], [])
    warnings += missing  # a typo in the message: every command that reads the file says so

    if problems:
        raise CampaignFileError(str(path), grouped(problems), warnings)
    recipients._count = count
    return Campaign(
        name=spec.name,
        group_id=spec.group_id,
        endpoint=spec.endpoint,
        message_template=steps.messages[0][0].text,
        limit=limit,
        burst=spec.burst,
        max_attempts=spec.retry.attempts,
        backoff=spec.retry.backoff,
        breaker=Breaker(**spec.breaker.model_dump()),
        accounts=tuple(accounts),
        warmup=Warmup(spec.warmup.start, spec.warmup.increase) if spec.warmup else None,
        api_limits=api_limits,
        recipients=recipients,
        source=str(path),
        duplicates=len(repeated),
        warnings=tuple(warnings),
        advice=tuple(advice),
        columns=_report_columns(keys, spec.audience is not None),
        timezone=spec.schedule.timezone or (accounts[0].schedule.timezone if accounts else "UTC"),
        to_resolve=to_resolve,
        recontact_after=parse_recontact(spec.recontact),
        precheck=spec.precheck,
        audience=(
            Audience(
                tuple(sorted(set(spec.audience.group_members.statuses), key=MEMBER_STATUSES.index)),
                spec.audience.group_members.max,
            )
            if spec.audience
            else None
        ),
        members_budget=Limit.parse(spec.budgets.members),
        profiles_budget=Limit.parse(spec.budgets.profiles),
        steps=steps,
    )


def _message_place(step: int, variant: Variant, steps: int) -> str:
    place = "message" if steps == 1 else f"steps[{step}].message"
    return f"{place} variant {variant.id!r}" if variant.id else place


def _steps(spec: CampaignFile, source: str) -> Steps:
    """The messages of each step (a top-level `message` is one step) and what replies do."""
    given = spec.steps if spec.steps is not None else [StepSpec(message=spec.message)]
    problems = []
    afters, messages = [], []
    for index, step in enumerate(given):
        where = "message" if spec.steps is None else f"steps[{index}]"
        if index == 0 and step.after:
            problems.append(Problem(f"{where}.after", "the first step goes first: it takes no `after`"))
        elif index > 0 and not step.after:
            problems.append(
                Problem(f"{where}.after", "a follow-up needs `after` (e.g. 3d): the wait since the last step")
            )
        try:
            messages.append(parse_message(step.message, where if spec.steps is None else f"{where}.message"))
        except ConfigError as exc:
            problems.append(Problem("", str(exc)))
        afters.append(step.after or 0.0)
    if problems:
        raise CampaignFileError(source, problems)
    return Steps(
        tuple(afters),
        tuple(messages),
        stop_on_reply=spec.stop_on_reply,
        opt_out=tuple(spec.opt_out),
        reply_poll=spec.reply_poll,
        reply_fresh=spec.reply_fresh,
    )


def distinct_messages(campaign: CampaignSettings) -> list[int]:
    """Per step, how many different texts its variants and spintax can give."""
    return [distinct_texts(step) for step in campaign.steps.messages]


def _report_columns(keys: dict[str, None], audience: bool) -> tuple[str, ...]:
    """The recipients' own values a report shows: the file's columns, and a group member's."""
    names = [*keys, *(MEMBER_VARIABLES if audience else ())]
    return tuple(name for name in dict.fromkeys(names) if name != SLUG_COLUMN)  # the report has its own


SAMPLE_MEMBER = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "headline": "Engineer",
    "public_identifier": "ada-lovelace",
    "membership_status": "member",
}


def _check_member_template(messages: Messages, problems: list[Problem]) -> None:
    """The message must render for a group member (who brings MEMBER_VARIABLES, and nothing else)."""
    messages.render("", SAMPLE_MEMBER, "message (for a group member)", problems)


MemberMessages = tuple[tuple[str, ...], tuple[str, ...]]  # each step's message, each step's variant


def member_renderer(
    campaign: CampaignSettings,
) -> Callable[[str, dict[str, Any]], tuple[MemberMessages | None, str | None]]:
    """A group member's messages from a campaign's steps: (messages, None), or (None, why not)
    when they do not render (a blank name printed bare)."""
    messages = Messages(campaign.name, campaign.steps.messages)

    def member(key: str, variables: dict[str, Any]) -> tuple[MemberMessages | None, str | None]:
        problems: list[Problem] = []
        rendered = messages.render(key, _present(variables), "", problems)
        return rendered, (problems[0].message if problems else None)

    return member


def _variable_warnings(
    env: SandboxedEnvironment, source: str, available: dict[str, None], keys: dict[str, None], recipients: Recipients
) -> tuple[list[Problem], list[Problem]]:
    """The message's variables that no recipient has (a typo, or a column named otherwise: every
    message then takes its `default()`), and the columns (`keys`) the message never uses."""
    used = jinja2.meta.find_undeclared_variables(env.parse(source)) - set(env.globals)
    shown = dict((name, written) for written, name in recipients.columns)
    have = f"they have {', '.join(sorted(available))}" if available else "they have no variables"
    missing = [
        Problem("message", f"no recipient has {{{{ {name} }}}} ({have}), so every message takes its default")
        for name in sorted(used - set(available))
    ]
    unused = []
    for name in sorted(set(keys) - used - set(PERSON_COLUMNS)):
        column = f"column {shown[name]!r}" if name in shown else f"variable {name!r}"
        unused.append(Problem("recipients", f"the message never uses the {column}"))
    return missing, unused


def grouped(problems: list[Problem], shown: int = 3) -> list[Problem]:
    """One line per kind of problem: the same message on many rows is one problem with the count
    and the first few places, in the order they were found."""
    places: dict[str, list[str]] = {}
    for problem in problems:
        places.setdefault(problem.message, []).append(problem.place)
    result = []
    for message, where in places.items():
        if len(where) > shown:
            place = f"{', '.join(where[:shown])} and {len(where) - shown} more"
        else:
            place = ", ".join(where)
        result.append(Problem(place, message))
    return result


def _repeat_warnings(recipients: Recipients, repeated: list[tuple[str, str]]) -> list[Problem]:
    """A warning per repeated URN, with where it was first listed (found by a second look, so the
    first pass need not remember every row's place)."""
    if not repeated:
        return []
    wanted = {urn for _, urn in repeated}
    first: dict[str, str] = {}
    for place, person, _ in recipients.rows([]):
        if person.key in wanted and person.key not in first:
            first[person.key] = place
    return [Problem(place, f"{urn} is listed twice (first at {first[urn]}); kept once") for place, urn in repeated]


def _read_yaml(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CampaignFileError(str(path), [Problem("", f"cannot read the file: {exc.strerror}")]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CampaignFileError(str(path), [Problem("", f"not UTF-8 text (byte {exc.start})")]) from None
    try:
        raw = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise CampaignFileError(str(path), [Problem(place, f"YAML syntax: {reason}")]) from None
    if not isinstance(raw, dict):
        raise CampaignFileError(str(path), [Problem("", "expected a mapping of campaign settings at the top")])
    return raw


def _pydantic_problem(err: Any) -> Problem:
    place = ".".join(str(part) if not isinstance(part, int) else f"[{part}]" for part in err["loc"])
    place = place.replace(".[", "[")
    kind = err["type"]
    if kind == "extra_forbidden":
        return Problem(place, "unknown key (check its spelling)")
    if kind == "missing":
        return Problem(place, "required")
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return Problem(place, message)


def _accounts(spec: CampaignFile, limit: Limit, problems: list[Problem]) -> list[Account]:
    if not spec.accounts:
        return [Account(DEFAULT_ACCOUNT, limit, _schedule(spec.schedule, ScheduleFields()))]
    accounts: list[Account] = []
    seen: set[str] = set()
    for index, entry in enumerate(spec.accounts):
        if entry.id in seen:
            problems.append(Problem(f"accounts[{index}]", f"account {entry.id!r} is listed twice"))
            continue
        seen.add(entry.id)
        schedule = _schedule(spec.schedule, entry)
        accounts.append(Account(entry.id, Limit.parse(entry.limit) if entry.limit else limit, schedule))
    return accounts


def _schedule(campaign: ScheduleFields, account: ScheduleFields) -> Schedule:
    """The campaign's schedule with the account's own keys over it."""

    def pick(name: str) -> Any:
        value = getattr(account, name)
        return value if value is not None else getattr(campaign, name)

    hours, days, delay = pick("hours"), pick("days"), pick("delay")
    start, end = parse_hours(hours) if hours else (0, 1440)
    return Schedule(
        timezone=pick("timezone") or "UTC",
        start=start,
        end=end,
        days=frozenset(DAY_NAMES.index(day) for day in days) if days else frozenset(range(7)),
        delay=parse_delay(delay) if delay else (0.0, 0.0),
    )


Row = tuple[str, Person, dict[str, Any]]  # place, who, template variables


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _person(values: dict[str, Any], place: str, problems: list[Problem], inline: bool = False) -> Person | None:
    """Who a row is, from its profile_urn, profile_url or public_identifier (taken out of `values`)."""
    # The URL stays a value of the row (the report shows it beside the outcome, to join it back to
    # the spreadsheet); the URN and the identifier are the report's own columns.
    urn_cell, url_cell, slug_cell = values.pop(URN_COLUMN, None), values.get(URL_COLUMN), values.pop(SLUG_COLUMN, None)
    urn = slug = None
    if not _blank(urn_cell):
        text = str(urn_cell).strip()
        if not URN_PATTERN.match(text):
            place = f"{place}.{URN_COLUMN}" if inline else place
            problems.append(Problem(place, f"invalid {URN_COLUMN} {text!r}: expected urn:li:fsd_profile:<id>"))
            return None
        urn = text
        if url_cell is None and slug_cell is None:  # the common case, a URN alone: nothing more to read
            return Person(urn, None)
    where = (lambda name: f"{place}.{name}") if inline else (lambda name: place)
    for name, cell in ((URL_COLUMN, url_cell), (SLUG_COLUMN, slug_cell)):
        if slug is None and not _blank(cell):
            try:
                slug = slug_of(str(cell))
            except ValueError as exc:
                problems.append(Problem(where(name), f"invalid {name}: {exc}"))
                return None
    if urn is None and slug is None:
        problems.append(Problem(where(URN_COLUMN), f"missing {URN_COLUMN} (or {URL_COLUMN}, or {SLUG_COLUMN})"))
        return None
    return Person(urn, slug)


def _present(values: dict[str, Any]) -> dict[str, Any]:
    # A blank cell or a null is "no value": false in `{% if %}`, `default(...)` applies, and a
    # variable the template prints without a default is reported instead of rendering "Hi ,".
    return {
        key: BlankCell(name=key) if value is None or (isinstance(value, str) and not value.strip()) else value
        for key, value in values.items()
    }


def _inline_rows(items: list[dict[str, Any]], problems: list[Problem]) -> Iterator[Row]:
    for index, item in enumerate(items):
        place = f"recipients[{index}]"
        values = dict(item)
        person = _person(values, place, problems, inline=True)
        bad_keys = [key for key in values if not isinstance(key, str) or not key.isidentifier()]
        if bad_keys:
            problems.append(Problem(place, f"variable names must be identifiers: {bad_keys!r}"))
            continue
        if person:
            yield place, person, _present(values)


def _csv_rows(
    path: Path, shown: str, problems: list[Problem], columns: list[tuple[str, str]] | None = None
) -> Iterator[Row]:
    """The rows of a CSV file, read as they go (spreadsheets start UTF-8 CSVs with a BOM). The
    delimiter (`,` `;` or tab) is the one the header line uses most; `columns` receives each
    header as written and the variable name it became."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            delimiter = delimiter_of(file.readline())
            file.seek(0)  # the decoder starts afresh, and drops the byte-order mark again
            reader = csv.reader(file, delimiter=delimiter)
            yield from _csv_reader_rows(reader, shown, problems, columns)
    except OSError as exc:
        problems.append(Problem("recipients_file", f"cannot read {shown}: {exc.strerror}"))
    except UnicodeDecodeError:
        problems.append(Problem(shown, "not UTF-8 text; save the CSV as UTF-8"))


def delimiter_of(line: str) -> str:
    """The delimiter a CSV's header line uses most: `,` `;` or tab."""
    counts = {d: line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def column_name(header: str) -> str:
    """A spreadsheet's column header as a template variable: `Profile URN`, `profileUrn` and
    `profile-urn` all become `profile_urn`, `First Name` and `firstName` become `first_name`.
    Letters of any script stay (`Prénom` -> `prénom`)."""
    text = re.sub(r"(?<=[^\W_A-Z])(?=[A-Z])", "_", header.strip())
    return re.sub(r"[\W_]+", "_", text).strip("_").lower()


def _csv_reader_rows(
    reader: Any, shown: str, problems: list[Problem], columns: list[tuple[str, str]] | None = None
) -> Iterator[Row]:
    try:
        header = next(reader, None)
    except csv.Error as exc:
        problems.append(Problem(f"{shown} line 1", f"CSV: {exc}"))
        return
    if not header or not any(cell.strip() for cell in header):
        problems.append(Problem(shown, "empty CSV: expected a header row with a profile_urn column"))
        return
    written = [cell.strip() for cell in header]
    while written and not written[-1]:  # the empty columns a spreadsheet leaves at the end
        written.pop()
    width = len(written)
    header = [column_name(cell) or cell for cell in written]
    if columns is not None:
        columns[:] = list(zip(written, header, strict=True))
    repeated = sorted({cell for cell in header if header.count(cell) > 1})
    if repeated:
        problems.append(Problem(f"{shown} line 1", f"duplicate column names: {', '.join(repeated)}"))
        return
    if not set(PERSON_COLUMNS) & set(header):
        problems.append(
            Problem(
                f"{shown} line 1",
                f"no {URN_COLUMN}, {URL_COLUMN} or {SLUG_COLUMN} column (columns: {', '.join(written)})",
            )
        )
        return
    bad = [cell for cell, name in zip(written, header, strict=True) if not name.isidentifier()]
    if bad:
        problems.append(Problem(f"{shown} line 1", f"column names must be identifiers to use in templates: {bad!r}"))
        return
    rows = 0
    try:
        for cells in reader:
            place = f"{shown} line {reader.line_num}"
            if not cells or not any(cell.strip() for cell in cells):
                continue
            if len(cells) > width and not any(cell.strip() for cell in cells[width:]):
                cells = cells[:width]
            if len(cells) != len(header):
                problems.append(Problem(place, f"{len(cells)} fields where the header has {len(header)}"))
                continue
            values = dict(zip(header, cells, strict=True))
            person = _person(values, place, problems)
            rows += 1
            if person:
                yield place, person, _present(values)
    except csv.Error as exc:
        problems.append(Problem(f"{shown} line {reader.line_num}", f"CSV: {exc}"))
    if not rows and not problems:
        problems.append(Problem(shown, "the CSV has a header but no recipients"))


def _render_checked(template: Any, values: dict[str, Any], place: str, problems: list[Problem]) -> str | None:
    try:
        message = render(template, values)
    except TemplateError as exc:
        # UndefinedError, SecurityError (sandbox) and friends all carry a readable message.
        problems.append(Problem(place, f"message does not render: {exc.message or exc}"))
        return None
    except Exception as exc:  # noqa: BLE001 - a template can raise anything (e.g. 1/0); report it here
        problems.append(Problem(place, f"message does not render: {type(exc).__name__}: {exc}"))
        return None
    if not message:
        problems.append(Problem(place, "message renders empty"))
        return None
    if len(message) > MAX_MESSAGE_CHARS:
        problems.append(Problem(place, f"message renders to {len(message)} characters (at most {MAX_MESSAGE_CHARS})"))
        return None
    return message
