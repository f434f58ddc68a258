"""What a person reads: scheduler events as a live table on a terminal or log lines elsewhere,
an account's state, a forecast's finish."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from . import events
from .clock import Clock, iso
from .outcome import AccountEnd, Availability, Ending, Status, Wait
from .schedule import local_time
from .settings import account_label

if TYPE_CHECKING:
    from .store import AccountStatus

_WAITS = {
    Wait.READY: "ready",
    Wait.HOLD: "on hold",
    Wait.PACE: "pacing",
    Wait.WINDOW: "limit reached for this window",
    Wait.IN_FLIGHT: "another process is sending",
    Wait.BACKOFF: "retry backoff",
    Wait.ELSEWHERE: "waiting for other accounts",
    Wait.LOOKUP: "profile lookups: the daily budget is spent",
    Wait.DELAY: "random gap between sends",
    Wait.SERVER: "the server's remaining budget is used up until its reset",
    Wait.KEY: "the API key's own limit",
    Wait.SCHEDULE: "outside sending hours",
    Wait.REPLIES: "follow-ups wait for a fresh look at replies",
}


_LOOKED = {
    "profile": "profile of",
    "precheck": "conversation pre-check of",
    "status": "health of",
    "members": "members of",
}


def describe_wait(reason: Wait) -> str:
    return _WAITS[reason]


def describe_account(found: AccountStatus, now: float, timezone: str) -> tuple[Availability, str]:
    """An account's state at a glance, as (state, a line for people, times in `timezone`): stopped
    (and why), blocked or held by the API, paused by the breaker, sending, waiting (for what,
    until when), or ready."""

    def local(epoch: float) -> str:
        return local_time(epoch, timezone)

    hold = found.hold_reason or ""
    held = found.hold_until > now
    if held and hold.startswith("blocked by the API"):
        return Availability.BLOCKED, f"blocked by the API, held until {local(found.hold_until)} (`hold clear` lifts it)"
    if found.stopped_reason:
        when = local(found.stopped_at) if found.stopped_at else "its last run"
        return Availability.STOPPED, f"stopped at {when}: {found.stopped_reason}; `resume` tries it again"
    if held:
        until = local(found.hold_until)
        if hold.startswith("circuit breaker"):
            return Availability.PAUSED, f"paused by the breaker until {until}: {hold}"
        return Availability.HELD, f"held by the API until {until}: {hold}"
    if found.in_flight:
        return (
            Availability.SENDING,
            f"sending ({found.in_flight} request{'s' if found.in_flight > 1 else ''} in flight)",
        )
    if found.next_at > now:
        return Availability.WAITING, f"waiting until {local(found.next_at)} ({describe_wait(found.reason)})"
    return Availability.READY, "ready to send"


def counted(count: int, noun: str) -> str:
    """`1 recipient`, `2 recipients`, `0 duplicates`: a count and its noun, as people write them."""
    return f"{count} {noun if count == 1 else noun + 's'}"


def describe_finish(finish: float | None, result: Ending, timezone: str) -> str:
    """What a forecast says of a campaign's end, the same words in the live view and `status`."""
    if finish is not None and result == Ending.DONE:
        return f"projected finish {local_time(finish, timezone)}"
    if result == Ending.HORIZON:
        return "projected finish more than two years away"
    if result == Ending.ACCOUNTS_STOPPED:
        return "no projected finish: none of its accounts can send"
    return "no projected finish"


_FINISHED = {AccountEnd.DRAINED: "done", AccountEnd.DEFERRED: "more later (--no-wait)", AccountEnd.STOPPED: "stopped"}


class LogLines:
    """One plain line per event, for logs, cron mail and pipes."""

    def __init__(self, out: TextIO, clock: Clock):
        self._out = out
        self._clock = clock

    def __call__(self, event: events.Event) -> None:
        line = self.line(event)
        if line:
            print(f"{iso(self._clock.now())} {line}", file=self._out, flush=True)

    @staticmethod
    def line(event: events.Event) -> str | None:
        match event:
            case events.RunStarted(counts=counts, accounts=accounts):
                parts = [f"{name}: {c[Status.PENDING]} pending of {sum(c.values())}" for name, c in counts.items()]
                limits = [f"{account_label(a)} {limits}" for a, limits in accounts.items()]
                return f"run started; {'; '.join(parts)}; accounts: {', '.join(limits)}"
            case events.Attempted() as e:
                detail = f"HTTP {e.http_status}" if e.http_status else e.outcome.value
                if e.error and e.status is not Status.SENT:
                    detail += f": {e.error}"
                step = f" step {e.step + 1}" if e.step else ""
                return (
                    f"{e.campaign} {e.status}{step} {e.profile_urn} via {account_label(e.account_id)}"
                    f" (attempt {e.attempt}, {detail}, {e.latency:.2f}s, window {e.window_used}/{e.window_cap})"
                )
            case events.RepliesPolled(account_id=account, error=str(error)):
                return f"{account_label(account)} replies not looked at: {error}"
            case events.RepliesPolled(account_id=account, replies=replies, opted_out=opted) if replies:
                blocked = f", {opted} asked not to be contacted (blocked)" if opted else ""
                return f"{account_label(account)} {replies} new {'reply' if replies == 1 else 'replies'}{blocked}"
            case events.Looked() as e:
                where = f"{e.campaign} " if e.campaign else ""
                became = f" -> {e.status}" if e.status else ""
                return f"{where}{_LOOKED[e.action]} {e.subject} via {account_label(e.account_id)}: {e.detail}{became}"
            case events.AccountWaiting(account_id=account, until=until, reason=reason):
                return f"{account_label(account)} {describe_wait(reason)}: next send at {iso(until)}"
            case events.AccountHeld(account_id=account, until=until, reason=reason):
                return f"{account_label(account)} held by the API until {iso(until)} ({reason})"
            case events.AccountPaused(account_id=account, until=until, reason=reason):
                return f"{account_label(account)} paused until {iso(until)} ({reason})"
            case events.AccountStopped(account_id=account, reason=reason):
                return f"{account_label(account)} stopped for this run: {reason}"
            case events.AccountFinished(account_id=account, reason=reason):
                return f"{account_label(account)}: {_FINISHED[reason]}"
            case events.Recovered(campaign=campaign, profile_urn=urn):
                return (
                    f"{campaign}: {urn} was in flight when an earlier run stopped; marked unknown"
                    " (`reconcile` looks for it in the conversation)"
                )
            case events.Forecast(campaign=campaign, problem=str(problem)):
                return f"{campaign}: no forecast: {problem}"
            case events.Forecast() as e:
                return f"{e.campaign}: {describe_finish(e.finish, e.result, e.timezone)} (forecast)"
            case events.Stopping(message=message):
                return message
        return None


@dataclass
class _AccountRow:
    sent: int = 0
    failed: int = 0
    other: int = 0
    window: str = ""
    state: str = "starting"


@dataclass
class LiveView:
    """A table of campaigns and accounts, redrawn as events arrive."""

    console: Console
    clock: Clock
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    accounts: dict[str, _AccountRow] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    forecasts: dict[str, str] = field(default_factory=dict)  # campaign -> its projected finish, in words
    _live: Live | None = None

    def __enter__(self) -> LiveView:
        self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, event: events.Event) -> None:
        match event:
            case events.RunStarted(counts=counts, accounts=limits):
                self.counts = {name: dict(c) for name, c in counts.items()}
                self.accounts = {a: _AccountRow() for a in limits}
            case events.Attempted() as e:
                row = self.accounts.setdefault(e.account_id, _AccountRow())
                counts = self.counts.setdefault(e.campaign, dict.fromkeys(Status, 0))
                if e.status is not Status.PENDING:
                    counts[Status.PENDING] -= 1
                    counts[e.status] = counts.get(e.status, 0) + 1
                if e.status is Status.SENT:
                    row.sent += 1
                elif e.status is Status.FAILED:
                    row.failed += 1
                else:
                    row.other += 1
                row.window = f"{e.window_used}/{e.window_cap}"
                row.state = f"{e.status} {e.profile_urn.rsplit(':', 1)[-1]}"
            case events.Looked(campaign=str(campaign), status=Status() as status) as e:
                counts = self.counts.setdefault(campaign, dict.fromkeys(Status, 0))
                counts[Status.PENDING] -= 1
                counts[status] = counts.get(status, 0) + 1
                self.accounts.setdefault(e.account_id, _AccountRow()).state = f"{status} {e.subject}"
            case events.AccountWaiting(account_id=account, until=until, reason=reason):
                self.accounts.setdefault(
                    account, _AccountRow()
                ).state = f"{describe_wait(reason)}, next {self._short(until)}"
            case events.AccountHeld(account_id=account, until=until):
                self.accounts.setdefault(account, _AccountRow()).state = f"held until {self._short(until)}"
            case events.AccountPaused(account_id=account, until=until):
                self.accounts.setdefault(account, _AccountRow()).state = f"paused until {self._short(until)}"
            case events.AccountStopped(account_id=account, put_back=put_back):
                self.accounts.setdefault(account, _AccountRow()).state = "stopped"
                for name, count in put_back.items():
                    counts = self.counts.setdefault(name, dict.fromkeys(Status, 0))
                    counts[Status.FAILED] -= count
                    counts[Status.PENDING] += count
                self.notes.append(LogLines.line(event))  # type: ignore[arg-type]
            case events.AccountFinished(account_id=account, reason=reason):
                self.accounts.setdefault(account, _AccountRow()).state = _FINISHED[reason]
            case events.Forecast(campaign=campaign, problem=None) as e:
                self.forecasts[campaign] = describe_finish(e.finish, e.result, e.timezone)
            case events.Recovered() | events.Stopping() | events.Forecast():
                self.notes.append(LogLines.line(event))  # type: ignore[arg-type]
        if self._live is not None:
            self._live.refresh()

    def _short(self, epoch: float) -> str:
        """A time in the table: the time of day (UTC) within 12 hours, else the date and time."""
        text = iso(epoch) or ""
        return text[11:19] if abs(epoch - self.clock.now()) < 43200 else f"{text[:10]} {text[11:16]}"

    def __rich__(self) -> Group:
        campaigns = Table(title="campaigns", title_justify="left")
        campaigns.add_column("campaign", max_width=24, no_wrap=True, overflow="ellipsis")
        shown = (Status.SENT, Status.FAILED, Status.UNKNOWN, Status.SKIPPED, Status.PENDING)
        for status in shown:
            campaigns.add_column(status, justify="right")
        campaigns.add_column("done", justify="right")
        for name, counts in self.counts.items():
            total = sum(counts.values()) or 1
            done = total - counts.get(Status.PENDING, 0) - counts.get(Status.IN_FLIGHT, 0)
            campaigns.add_row(
                name,
                *(str(counts.get(s, 0)) for s in shown),
                f"{100 * done / total:.0f}%",
            )
        # Fits an 80-column terminal: long names and states are cut short (`status` has them whole).
        accounts = Table(title=f"accounts at {iso(self.clock.now())[11:19]} UTC", title_justify="left")
        accounts.add_column("account", max_width=20, no_wrap=True, overflow="ellipsis")
        for column in (Status.SENT, Status.FAILED, "other"):
            accounts.add_column(column, justify="right")
        accounts.add_column("window", no_wrap=True)
        accounts.add_column("state", max_width=30, no_wrap=True, overflow="ellipsis")
        for account, row in self.accounts.items():
            accounts.add_row(
                account_label(account), str(row.sent), str(row.failed), str(row.other), row.window, row.state
            )
        forecasts = [f"{name}: {text}" for name, text in self.forecasts.items()]
        return Group(campaigns, *forecasts, accounts, *self.notes)
