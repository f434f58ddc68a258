"""The `campaign-runner` command: parsing, wiring and exit codes; the rules live elsewhere.

Exit codes: 0 done, 1 stopped by a fatal API condition (401), 2 bad input or configuration,
130 interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import secrets
import shlex
import signal
import socket
import sys
import tempfile
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console

from . import __version__, client, events, sandbox
from .clock import SystemClock, iso
from .config import SAMPLE_MEMBER, Campaign, Messages, distinct_messages, load_campaign, member_renderer
from .display import LiveView, LogLines, counted, describe_finish
from .engines import Target, target
from .errors import CampaignFileError, CampaignRunnerError, ConfigError, StoreError
from .html_report import write_html
from .outcome import Ending, Status
from .overview import CampaignView, overview, status_json
from .plan import Forecaster, make_plan
from .report import FORMATS, write_report
from .schedule import local_time
from .scheduler import RunResult, Scheduler
from .settings import CampaignSettings, Limit, account_label
from .store import DEFAULT_DB, HEARTBEAT, SANDBOX_API, SANDBOX_DB, Store, data_folder

EXIT_OK, EXIT_FATAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
STATUS_NAMES = [status.value for status in Status]
RETRYABLE = (Status.UNKNOWN, Status.FAILED)  # what `retry` puts back
RETRYABLE_NAMES = [status.value for status in RETRYABLE]
F = TypeVar("F", bound=Callable[..., Any])


class _State:
    debug = False
    catch_sigterm = False  # only the real command installs handlers, never a test calling run_cli


# --- shared options ------------------------------------------------------------------------


def db_option(f: F) -> F:
    return click.option(
        "--db",
        "db",
        help=(
            "SQLite database file, or postgresql://user:password@host:5432/dbname (env CAMPAIGN_RUNNER_DB;"
            " default: one file in your data folder, see README)."
        ),
    )(f)


def sandbox_db_option(f: F) -> F:
    return click.option(
        "--sandbox", "use_sandbox", is_flag=True, help="Use the database of sandbox rehearsals (unless --db)."
    )(f)


def database_target(db: str | None, use_sandbox: bool) -> Target:
    """Which database a command uses: --db; else, for a sandbox rehearsal, the sandbox's own (so a
    rehearsal never uses up the real campaign); else CAMPAIGN_RUNNER_DB; else a
    ./campaign-runner.db that already exists here (said in a line, so no history silently
    disappears); else the one database in the user's data folder, wherever the command runs.
    A postgresql:// URL names a PostgreSQL database instead of a file."""
    if db:
        return target(db)
    if use_sandbox:
        return target(data_folder() / SANDBOX_DB)
    if os.environ.get("CAMPAIGN_RUNNER_DB"):
        return target(os.environ["CAMPAIGN_RUNNER_DB"])
    here, default = Path(DEFAULT_DB), data_folder() / DEFAULT_DB
    if here.is_file():
        if default.exists() and here.resolve() != default.resolve():
            # Two histories: using either one silently could message the other's people again.
            raise StoreError(
                f"there are two databases: {here.resolve()} in this folder and {default}; say which with"
                f" --db (or move {here.resolve()} to {default} if it is the one to keep)"
            )
        click.echo(f"using the database in this folder, {here.resolve()} (without it: {default})", err=True)
        return target(here)
    return target(default)


MAX_TIMEOUT = 3600  # seconds to wait for one answer, at most


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):  # nan passes FloatRange's comparisons
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


@dataclass(frozen=True)
class _SendingFlags:
    """The sending options as given; `_sending` checks them (after the campaign files, whose
    errors come first)."""

    base_url: str
    timeout: float
    use_sandbox: bool
    no_wait: bool
    allow_insecure: bool
    switch_api: bool
    api_limit: str | None


def base_url_option(f: F) -> F:
    return click.option(
        "--base-url",
        envvar="CONNECTSAFELY_BASE_URL",
        default=client.DEFAULT_BASE_URL,
        show_default=True,
        help="API base URL (env CONNECTSAFELY_BASE_URL).",
    )(f)


def timeout_option(f: F) -> F:
    return click.option(
        "--timeout",
        envvar="CONNECTSAFELY_TIMEOUT",
        type=click.FloatRange(min=1, max=MAX_TIMEOUT),
        callback=_finite,
        default=client.DEFAULT_TIMEOUT,
        show_default=True,
        help="Seconds to wait for one answer (env CONNECTSAFELY_TIMEOUT).",
    )(f)


def insecure_option(f: F) -> F:
    return click.option(
        "--allow-insecure", is_flag=True, help="Allow a plain http:// base URL on a host other than this machine."
    )(f)


def sending_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of the commands that send, handed to the command as one `flags` argument."""

    @functools.wraps(f)
    def command(*args: Any, **options: Any) -> Any:
        names = [field.name for field in dataclasses.fields(_SendingFlags)]
        flags = _SendingFlags(**{name: options.pop(name) for name in names})
        return f(*args, flags=flags, **options)

    for option in reversed(
        [
            base_url_option,
            timeout_option,
            click.option("--sandbox", "use_sandbox", is_flag=True, help="Send to a built-in sandbox in this process."),
            click.option("--no-wait", is_flag=True, help="Send what the limits allow now, then exit 0 (for cron)."),
            insecure_option,
            click.option(
                "--switch-api",
                is_flag=True,
                help="Go on with a campaign that was sent to another API (e.g. rehearsed on the sandbox) here.",
            ),
            click.option(
                "--api-limit",
                envvar="CONNECTSAFELY_API_LIMIT",
                metavar="LIMITS",
                help="The API key's own limit over all its accounts, e.g. '60/minute, 100/10s'"
                " (default: the campaign files'; env CONNECTSAFELY_API_LIMIT).",
            ),
        ]
    ):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="campaign-runner")
def cli(debug: bool) -> None:
    """Run LinkedIn group-outreach campaigns through the ConnectSafely API, at most once per recipient."""
    _State.debug = debug


# --- validate --------------------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--show", type=click.IntRange(min=0), default=0, metavar="N", help="Also print N recipients' messages.")
def validate(file: str, show: int) -> int:
    """Check a campaign file without sending or writing anything.

    Says how the CSV's columns became template variables, and warns of a variable no recipient
    has (every message takes its default) and of a column the message never uses.

    \b
    Example:
        campaign-runner validate campaigns/example.yaml --show 3
    """
    campaign = _load([file])[0]
    accounts = ", ".join(f"{account_label(a.id)} {a.limit}" for a in campaign.accounts)
    click.echo(
        f"{file}: ok: campaign {campaign.name}, {counted(len(campaign.recipients), 'recipient')}"
        f" ({counted(campaign.duplicates, 'duplicate')} dropped), group {campaign.group_id},"
        f" endpoint {campaign.endpoint}, accounts: {accounts}"
    )
    renamed = [f"{written} -> {name}" for written, name in campaign.recipients.columns if written != name]
    if renamed:
        click.echo(f"columns read as: {', '.join(renamed)}")
    for line in _lookups_and_audience(campaign):
        click.echo(line)
    if campaign.steps.count > 1 or any(count > 1 for count in distinct_messages(campaign)):
        click.echo(_steps_line(campaign))
    for advice in campaign.advice:
        click.echo(f"warning: {file}: {advice}", err=True)
    if show:
        _print_messages(campaign, show, ())
    return EXIT_OK


def _steps_line(campaign: Campaign) -> str:
    """What `validate` says of the steps: each one's wait, variants and distinct texts."""
    steps = campaign.steps
    parts = []
    for step, (after, variants, texts) in enumerate(
        zip(steps.afters, steps.messages, distinct_messages(campaign), strict=True)
    ):
        when = "first" if step == 0 else f"{_duration(after)} later"
        named = f", {len(variants)} variants" if len(variants) > 1 else ""
        parts.append(f"step {step + 1} ({when}{named}): {counted(texts, 'distinct text')}")
    tail = ""
    if steps.count > 1:
        stop = "stop on reply" if steps.stop_on_reply else "go on after a reply"
        tail = f"; {stop}, replies looked at every {_duration(steps.reply_poll)}"
    return "; ".join(parts) + tail


def _lookups_and_audience(campaign: Campaign) -> list[str]:
    """What `validate` says of recipients given by URL, and of an audience from the group."""
    lines = []
    if campaign.to_resolve:
        budget, accounts = campaign.profiles_budget, len(campaign.accounts)
        days = math.ceil(campaign.to_resolve / (budget.cap * accounts)) * budget.window / 86400
        lines.append(
            f"{counted(campaign.to_resolve, 'recipient')} given by profile URL or public identifier: each is looked"
            f" up once (POST /profile) before its message, at most {budget} per account, so about"
            f" {days:g} day{'s' if days != 1 else ''} of lookups (fewer for people the database already knows)"
        )
    if campaign.audience is not None:
        audience = campaign.audience
        most = f", at most {audience.max}" if audience.max else ""
        lines.append(
            f"audience: the {'/'.join(audience.statuses)}s of group {campaign.group_id}{most}, fetched a page"
            f" at a time as the run needs them, at most {campaign.members_budget} per account"
        )
    return lines


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-n", "count", type=click.IntRange(min=1), default=5, show_default=True, help="How many recipients.")
@click.option("--recipient", "urns", multiple=True, metavar="URN", help="Show this recipient's message (repeatable).")
def preview(file: str, count: int, urns: tuple[str, ...]) -> int:
    """Print the messages a campaign would send to its first recipients; sends and writes nothing.

    \b
    Example:
        campaign-runner preview campaigns/example.yaml -n 3
    """
    campaign = _load([file])[0]
    _print_messages(campaign, count, urns)
    return EXIT_OK


def _print_messages(campaign: Campaign, count: int, urns: Sequence[str]) -> None:
    wanted = {urn.strip() for urn in urns}
    shown = 0
    for recipient in campaign.recipients:
        if (wanted and recipient.profile_urn not in wanted) or (not wanted and shown >= count):
            continue
        wanted.discard(recipient.profile_urn)
        click.echo(f"--- {recipient.key} ({recipient.place})")
        _print_steps(campaign, (recipient.message, *recipient.later), recipient.variants)
        shown += 1
        if not wanted and (urns or shown >= count):
            break
    if campaign.audience is not None and not urns and shown < count:
        sample = ", ".join(f"{name}={value!r}" for name, value in SAMPLE_MEMBER.items())
        click.echo(f"--- a member of group {campaign.group_id}, for example ({sample})")
        rendered, _ = member_renderer(campaign)("ada-lovelace", SAMPLE_MEMBER)
        if rendered is not None:
            _print_steps(campaign, *rendered)
    if wanted:
        raise ConfigError(f"not a recipient of {campaign.name}: {', '.join(sorted(wanted))}")


def _print_steps(campaign: Campaign, texts: Sequence[str], variants: Sequence[str]) -> None:
    """A recipient's messages: each step's, with its wait and variant, when there is more than one."""
    if len(texts) == 1 and not any(variants):
        click.echo(texts[0])
        return
    for step, text in enumerate(texts):
        after = campaign.steps.afters[step]
        when = "first" if step == 0 else f"{_duration(after)} later"
        variant = f", variant {variants[step]}" if step < len(variants) and variants[step] else ""
        click.echo(f"[step {step + 1}: {when}{variant}]")
        click.echo(text)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


# --- run / resume ----------------------------------------------------------------------------


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@db_option
@sending_options
@click.option("--accept-changes", is_flag=True, help="Apply a changed message/group/endpoint to unsent recipients.")
def run(files: tuple[str, ...], db: str | None, flags: _SendingFlags, accept_changes: bool) -> int:
    """Load campaign files and send until every recipient is done.

    Sleeps while the accounts' limits refill. Running the same file again adds new recipients
    and sends nothing twice.

    \b
    Example:
        export CONNECTSAFELY_API_KEY=...
        campaign-runner run campaigns/example.yaml
    """
    campaigns = _load(list(files))
    first_file: dict[str, str] = {}
    for campaign in campaigns:
        if campaign.name in first_file and Path(first_file[campaign.name]).resolve() == Path(campaign.source).resolve():
            raise ConfigError(f"{campaign.source} is given twice")
        if campaign.name in first_file:
            raise ConfigError(
                f"{first_file[campaign.name]} and {campaign.source} both name the campaign {campaign.name!r};"
                " give each campaign its own name"
            )
        first_file[campaign.name] = campaign.source
    sending = _sending(flags)
    return anyio.run(_run, db, campaigns, sending, flags.timeout, flags.no_wait, accept_changes)


@cli.command()
@click.argument("name", required=False)
@db_option
@sending_options
def resume(name: str | None, db: str | None, flags: _SendingFlags) -> int:
    """Continue a campaign from the database (all unfinished ones when NAME is left out).

    \b
    Example:
        campaign-runner resume spring-meetup-invite
    """
    return anyio.run(_resume, db, name, _sending(flags), flags.timeout, flags.no_wait)


@dataclass(frozen=True)
class _Sending:
    """Where and how this run sends: the API, the key (never shown), and the run's own settings."""

    base_url: str
    api_key: str = field(repr=False)
    use_sandbox: bool
    api_limits: tuple[Limit, ...] | None  # None: the campaigns' own
    allow_insecure: bool = False
    switch_api: bool = False

    @property
    def api(self) -> str:
        """What the database records as the API a campaign was sent to."""
        return SANDBOX_API if self.use_sandbox else self.base_url


def _sending(flags: _SendingFlags) -> _Sending:
    """Check the sending options, and read the API key."""
    _heartbeat()  # checked before anything is written
    api_limit, switch_api = flags.api_limit, flags.switch_api
    api_limits = None
    if api_limit is not None:
        try:
            api_limits = tuple(Limit.parse(text) for text in api_limit.split(",") if text.strip())
        except ValueError as exc:
            raise ConfigError(f"--api-limit: {exc}") from None
        if not api_limits:
            raise ConfigError("--api-limit: give at least one limit, e.g. 60/minute")
    if flags.use_sandbox:
        return _Sending("", secrets.token_urlsafe(16), True, api_limits, switch_api=switch_api)
    base_url = client.check_base_url(flags.base_url, flags.allow_insecure)
    key = os.environ.get("CONNECTSAFELY_API_KEY", "").strip()
    if not key:
        raise ConfigError("CONNECTSAFELY_API_KEY is not set: export your API key, or try --sandbox")
    if any(ch.isspace() for ch in key) or not key.isprintable() or not key.isascii():
        raise ConfigError("CONNECTSAFELY_API_KEY contains spaces, control or non-ASCII characters")
    return _Sending(base_url, key, False, api_limits, flags.allow_insecure, switch_api)


async def _run(
    db: str, campaigns: list[Campaign], sending: _Sending, timeout: float, no_wait: bool, accept_changes: bool
) -> int:
    clock = SystemClock()
    async with _open_store(db, clock, create=True, sandbox=sending.use_sandbox) as store:
        # A campaign that went to another API is refused before its file is loaded.
        await store.bind_api([c.name for c in campaigns], sending.api, sending.switch_api, clock.now())
        for summary in await store.load(campaigns, clock.now(), accept_changes):
            click.echo(
                f"loaded {summary.campaign}: {summary.added} new, {summary.known} already known,"
                f" {counted(summary.duplicates, 'duplicate')} dropped, {summary.removed} no longer in the file"
                f" (never sent again), {summary.restored} back in the file"
            )
            if summary.rewritten and summary.known:
                what = ", ".join(summary.changed) or "message"
                click.echo(
                    f"{summary.campaign}: {what} changed: {summary.rewritten} unsent recipients take the new one"
                )
            if summary.kept:
                click.echo(
                    f"warning: {summary.campaign}: {summary.kept} unsent recipients have a different message in"
                    " the file now; they keep the stored one (--accept-changes applies the file's)",
                    err=True,
                )
        # ...and the API is recorded for the campaigns new to the database.
        await store.bind_api([c.name for c in campaigns], sending.api, sending.switch_api, clock.now())
        settings = [await store.campaign(c.name) for c in campaigns]
        campaigns.clear()  # every recipient is in the database now: free the file's copy for the days of sending
        return await _send(store, clock, settings, sending, timeout, no_wait, "run")


async def _resume(db: str, name: str | None, sending: _Sending, timeout: float, no_wait: bool) -> int:
    clock = SystemClock()
    async with _open_store(db, clock, create=False, sandbox=sending.use_sandbox) as store:
        names = [name] if name else await store.campaign_names(unfinished_only=True)
        settings = [await store.campaign(n) for n in names]
        if not settings:
            click.echo("nothing to resume: every campaign is finished")
            return EXIT_OK
        await store.bind_api(names, sending.api, sending.switch_api, clock.now())
        return await _send(store, clock, settings, sending, timeout, no_wait, "resume")


async def _send(
    store: Store,
    clock: SystemClock,
    campaigns: list[CampaignSettings],
    sending: _Sending,
    timeout: float,
    no_wait: bool,
    command: str,
) -> int:
    deadline = client.deadline_for(timeout)
    if sending.api_limits is not None:
        await store.set_api_limits([c.name for c in campaigns], sending.api_limits, clock.now())
    async with _api(sending, clock, timeout) as http, _renderer(clock) as show:
        async with anyio.create_task_group() as forecasting:
            forecaster = Forecaster(store, [c.name for c in campaigns], clock, show)

            def emit(event: events.Event) -> None:
                forecaster.notice(event)
                show(event)

            api = client.ApiClient(http, deadline)
            options = {"emit": emit, "no_wait": no_wait, "handle_signals": True, "heartbeat": _heartbeat()}
            forecasting.start_soon(forecaster.run)
            try:
                async with Scheduler.begun(
                    store, api, clock, command=command, deadline=deadline, campaigns=campaigns, **options
                ) as scheduler:
                    try:
                        result = await scheduler.run()
                    finally:
                        _catch_sigterm()  # asyncio put back the default action when the scheduler let go
                if result.reason in (Ending.DEFERRED, Ending.ACCOUNTS_STOPPED):  # work is left: leave
                    try:  # a forecast behind for `status`
                        await _forecast_before_exit(forecaster)
                    finally:
                        _catch_sigterm()  # and again after the forecast's own signal receiver
            finally:
                forecaster.give_up()
                forecasting.cancel_scope.cancel()
    if scheduler.output_error is not None:
        click.echo(f"warning: progress output stopped: {scheduler.output_error!r}", err=True)
    for campaign in campaigns:
        counts = await store.counts(campaign.name)
        click.echo(f"{campaign.name}: " + ", ".join(f"{counts[s]} {s}" for s in Status if counts[s]))
    return _exit_code(result, _resume_command(store, sending))


BUILT_IN_GROUP = 250  # members of the built-in sandbox's group, for rehearsing an audience
BUILT_IN_CONVERSATIONS = 0.05  # share of its people already in a conversation


@contextlib.asynccontextmanager
async def _api(sending: _Sending, clock: SystemClock, timeout: float) -> AsyncIterator[client.AccountClients]:
    """A client per account for the API, or for a sandbox started in this process (--sandbox)."""
    async with anyio.create_task_group() as tg:
        base_url = sending.base_url
        if sending.use_sandbox:
            config = sandbox.SandboxConfig(
                api_key=sending.api_key,
                typing_delay=0.2,
                group_size=BUILT_IN_GROUP,
                conversation_rate=BUILT_IN_CONVERSATIONS,
            )
            base_url = await tg.start(sandbox.serve, sandbox.Sandbox(config, clock))
        async with client.AccountClients(base_url, sending.api_key, timeout, sending.allow_insecure) as http:
            yield http
        tg.cancel_scope.cancel()


def _resume_command(store: Store, sending: _Sending) -> str:
    """The command that goes on with this run's database and API."""
    words = ["campaign-runner", "resume"]
    if sending.use_sandbox:
        words.append("--sandbox")
    default = target(data_folder() / (SANDBOX_DB if sending.use_sandbox else DEFAULT_DB))
    chosen = None if sending.use_sandbox else os.environ.get("CAMPAIGN_RUNNER_DB")
    if store.target != default and store.target.text != chosen:
        words += ["--db", shlex.quote(store.label)]  # a URL's password stays out of it
    return " ".join(words)


async def _forecast_before_exit(forecaster: Forecaster) -> None:
    """Wait for a forecast of this run, unless Ctrl-C or SIGTERM says not to: everything is
    recorded already, so a signal only skips the forecast."""
    async with anyio.create_task_group() as tg:

        async def skip_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    forecaster.give_up()
                    tg.cancel_scope.cancel()

        tg.start_soon(skip_on_signal)
        await forecaster.made()
        tg.cancel_scope.cancel()


def _exit_code(result: RunResult, resume: str) -> int:
    if result.reason is Ending.ACCOUNTS_STOPPED and result.work_left:
        click.echo(f"error: {result.message}: `{resume}`", err=True)
        return EXIT_FATAL
    if result.reason in (Ending.FATAL, Ending.ACCOUNTS_STOPPED):
        click.echo(f"error: {result.message}", err=True)
        return EXIT_FATAL
    if result.reason is Ending.INTERRUPTED:
        click.echo(f"interrupted: run `{resume}` to continue", err=True)
        return EXIT_INTERRUPTED
    if result.reason is Ending.DEFERRED:
        click.echo("stopped for now (--no-wait): the limits allow nothing more yet; run again later")
    return EXIT_OK


@contextlib.asynccontextmanager
async def _renderer(clock: SystemClock) -> AsyncIterator[Callable[..., None]]:
    if sys.stdout.isatty():
        with LiveView(Console(), clock) as view:
            yield view
    else:
        yield LogLines(sys.stdout, clock)


@contextlib.asynccontextmanager
async def _open_store(
    db: str | None, clock: SystemClock, *, create: bool, sandbox: bool = False, err: bool = False
) -> AsyncIterator[Store]:
    """The database (see `database_target`); `err`: say that it was created on standard error,
    for a command whose standard output is data. `create`: make it (its tables, on PostgreSQL)
    when it is not there yet."""
    where = database_target(db, sandbox)
    if where.is_postgres:
        store = await Store.open(where, clock.now(), create=create)
        if store.created:
            click.echo(f"created the campaign-runner tables in {where.label}", err=err)
        await _follow_database_clock(store, clock)
        try:
            yield store
        finally:
            with anyio.CancelScope(shield=True):
                await store.close()
        return
    path = where.path
    new = not path.exists()
    if new and not create:
        rehearsals = data_folder() / SANDBOX_DB
        if not sandbox and not db and rehearsals.exists():
            raise StoreError(
                f"no database at {path}: nothing was sent for real yet (the sandbox rehearsals’ one is"
                f" {rehearsals}: add --sandbox)"
            )
        raise StoreError(f"no database at {path} (give --db, or run a campaign first)")
    if new and path.parent == data_folder():  # a folder of ours; one that --db names must exist
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder {path.parent}: {exc.strerror}") from None
    store = await Store.open(path, clock.now())
    if new:
        click.echo(f"created the {'sandbox rehearsals’ ' if sandbox and not db else ''}database {path}", err=err)
    try:
        yield store
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


def _heartbeat() -> float:
    """Seconds between renewals of a run's lease (CAMPAIGN_RUNNER_HEARTBEAT, for tests that kill runners)."""
    text = os.environ.get("CAMPAIGN_RUNNER_HEARTBEAT", "")
    try:
        every = float(text) if text else HEARTBEAT
    except ValueError:
        raise ConfigError(f"CAMPAIGN_RUNNER_HEARTBEAT: a number of seconds, not {text!r}") from None
    if not 0.1 <= every <= 3600:
        raise ConfigError("CAMPAIGN_RUNNER_HEARTBEAT: between 0.1 and 3600 seconds")
    return every


async def _follow_database_clock(store: Store, clock: SystemClock) -> None:
    """On PostgreSQL every host tells the time by the database's clock, so that one host's clock,
    however wrong, never stretches or shrinks a window that runners on other hosts share."""
    database_now = await store.database_now()
    if database_now is not None:
        clock.follow(database_now)
        store.database_clock = True


# --- plan ------------------------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@db_option
@click.option("--start", help="When sending would begin (ISO 8601; without an offset, the campaign's time zone).")
@click.option("--weekly", is_flag=True, help="One row per week instead of per day.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--reply-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    help="Share of recipients who reply (0 to 1), ending their follow-ups; default: nobody.",
)
def plan(file: str, db: str | None, start: str | None, weekly: bool, as_json: bool, reply_rate: float) -> int:
    """Predict, per account and per day, what a campaign sends and when it finishes.

    Runs the campaign on a virtual clock against the built-in sandbox: nothing is sent, and the
    database (whose state it starts from, if it exists) is not written.

    \b
    Example:
        campaign-runner plan campaigns/example.yaml --start 2027-03-01T09:00
        campaign-runner plan campaigns/big.yaml --weekly
    """
    campaign = _load([file])[0]
    begin = _parse_start(start, campaign.timezone) if start else SystemClock().now()
    result = anyio.run(make_plan, campaign, begin, database_target(db, False), True, reply_rate)
    rows = result.per_week() if weekly else result.per_day
    if as_json:
        click.echo(json.dumps(_plan_json(result, rows, weekly), indent=2))
        return EXIT_OK
    accounts = result.accounts
    click.echo(
        f"plan for {result.campaign}: {counted(result.to_send, 'message')} to send over {len(accounts)}"
        f" account{'s' if len(accounts) != 1 else ''}, from {result.local(result.start)} ({result.timezone})"
    )
    labels = [account_label(a) for a in accounts]
    widths = [max(len(label), 5) for label in labels]
    first = ["week of    ", "   "] if weekly else ["date      ", "day"]
    click.echo("  ".join([*first, *(f"{label:>{w}}" for label, w in zip(labels, widths, strict=True)), "total"]))
    for day, counts in rows.items():
        cells = [f"{counts.get(a, 0):>{w}}" for a, w in zip(accounts, widths, strict=True)]
        lead = [day.isoformat() + " ", day.strftime("W%V")] if weekly else [day.isoformat(), day.strftime("%a")]
        click.echo("  ".join([*lead, *cells, f"{sum(counts.values()):>5}"]))
    if result.finish is None:
        click.echo("nothing to send")
    else:
        click.echo(
            f"projected finish: {result.local(result.finish)}, after {len(result.per_day)} sending"
            f" day{'s' if len(result.per_day) != 1 else ''} ({result.sent} sent)"
        )
    if result.result is Ending.ACCOUNTS_STOPPED:
        click.echo("warning: the plan ended with accounts stopped; see `campaign-runner status`", err=True)
    elif result.result is Ending.HORIZON:
        click.echo(
            f"warning: {result.to_send - result.sent} recipients are still unsent two years ahead: do the"
            " accounts' schedules (in every campaign that shares them) ever meet?",
            err=True,
        )
    return EXIT_OK


def _parse_start(text: str, timezone: str) -> float:
    from datetime import datetime

    from .schedule import zone

    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--start: {text!r} is not an ISO 8601 time, e.g. 2027-03-01T09:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone(timezone))
    if not 2000 <= moment.year <= 2999:
        raise ConfigError(f"--start: {text!r} is not a time a campaign could start at (years 2000 to 2999)")
    return moment.timestamp()


def _plan_json(result: Any, rows: dict[Any, dict[str, int]], weekly: bool) -> dict[str, Any]:
    return {
        "campaign": result.campaign,
        "timezone": result.timezone,
        "start": iso(result.start),
        "finish": iso(result.finish),
        "finish_local": result.local(result.finish) if result.finish is not None else None,
        "to_send": result.to_send,
        "sent": result.sent,
        "weeks" if weekly else "days": [
            {
                "week_of" if weekly else "date": day.isoformat(),
                "accounts": {a or None: n for a, n in counts.items()},
                "total": sum(counts.values()),
            }
            for day, counts in rows.items()
        ],
    }


# --- status / report / retry -----------------------------------------------------------------


@cli.command()
@click.argument("name", required=False)
@db_option
@sandbox_db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(name: str | None, db: str | None, use_sandbox: bool, as_json: bool) -> int:
    """Counts by status per campaign, and per account its window and next allowed send.

    \b
    Example:
        campaign-runner status spring-meetup-invite --json
    """
    return anyio.run(_status, db, use_sandbox, name, as_json)


async def _status(db: str | None, use_sandbox: bool, name: str | None, as_json: bool) -> int:
    clock = SystemClock()
    async with _open_store(db, clock, create=False, sandbox=use_sandbox) as store:
        names = [name] if name else await store.campaign_names()
        found = await overview(store, names, clock.now())
    if as_json:
        click.echo(json.dumps(status_json(found), indent=2))
        return EXIT_OK
    for c in found.campaigns:
        total = sum(c.counts.values())
        tally = ", ".join(f"{c.counts[s]} {s}" for s in Status if s is not Status.REPLIED or c.counts[s])
        click.echo(
            f"{c.settings.name}: {counted(total, 'recipient')}: {tally}{_preparing_line(c)}{_finish_line(c, found.now)}"
        )
        if c.settings.steps.count > 1 or any(s.variant for s in c.steps):
            for s in c.steps:
                variant = f" variant {s.variant}" if s.variant else ""
                click.echo(
                    f"  step {s.step}{variant}: {s.sent} sent, {s.replied} replied ({s.reply_rate:.1%} reply rate)"
                )
    for a in found.accounts:
        click.echo(
            f"account {account_label(a.account_id)}: {a.detail}; limits {a.found.pacing};"
            f" {a.found.window_used}/{a.found.window_cap} used in the current window"
        )
    return EXIT_OK


def _preparing_line(c: CampaignView) -> str:
    found, parts = c.preparing, []
    if found.lookups:
        parts.append(f"{found.lookups} of them waiting for a profile lookup")
    if found.audience and not found.done:
        group = f"{found.total} in the group" if found.total is not None else ""
        wanted = f"{found.wanted} wanted" if found.wanted is not None else ""
        told = ", ".join(part for part in (wanted, group) if part)
        parts.append(f"{found.fetched} group members fetched so far{f' ({told})' if told else ''}")
    return "".join(f"; {part}" for part in parts)


def _finish_line(c: CampaignView, now: float) -> str:
    """The end of a campaign's line in `status`: the projected finish, from the latest forecast."""
    if not c.counts[Status.PENDING]:
        return ""
    if not c.able:
        return "; no account of it can send now (see below)"
    found, tz = c.forecast, c.settings.timezone
    if found is None:
        return "; no forecast yet (a run makes one when its accounts first wait; `plan FILE` shows one now)"
    made = local_time(found.made_at, tz)
    if c.finish is not None and c.overdue(now):
        return f"; the forecast of {made} saw the last send at {local_time(c.finish, tz)}, now past"
    return f"; {describe_finish(found.finish, found.result, tz)} (forecast of {made})"


@cli.command()
@click.argument("name")
@db_option
@click.option("--format", "fmt", type=click.Choice([*FORMATS, "html"]), default="csv", show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Write to this file instead of standard output (html: NAME-report.html unless given).",
)
@click.option("--status", "only", type=click.Choice(STATUS_NAMES), help="Only recipients with this status.")
@click.option("--excel", is_flag=True, help="CSV for Excel: a UTF-8 byte-order mark, times in the campaign's zone.")
@sandbox_db_option
def report(
    name: str, db: str | None, fmt: str, output: str | None, only: str | None, excel: bool, use_sandbox: bool
) -> int:
    """Who was sent what, and who failed and why. `--format html` writes one page with charts that
    opens offline, to look at or to mail.

    \b
    Example:
        campaign-runner report spring-meetup-invite --format json --output report.json
        campaign-runner report spring-meetup-invite --format html
    """
    if excel and fmt != "csv":
        raise click.UsageError("--excel is for --format csv")
    if fmt == "html":
        if only:
            raise click.UsageError("--status is for csv and json: the html page lists everyone, with a search box")
        output = output or f"{name}-report.html"
    return anyio.run(_report, db, use_sandbox, name, fmt, output, only, excel)


async def _report(
    db: str | None, use_sandbox: bool, name: str, fmt: str, output: str | None, only: str | None, excel: bool
) -> int:
    async with _open_store(db, SystemClock(), create=False, sandbox=use_sandbox) as store:
        if output is None:
            await write_report(store, name, sys.stdout, fmt, only, excel)
            return EXIT_OK
        target = Path(output)
        if not target.parent.is_dir():
            raise ConfigError(f"--output: no folder {target.parent}")
        # Write beside the target and rename, so a failure never leaves half a report behind.
        fd, temp = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
                if fmt == "html":
                    count = await write_html(store, name, out, SystemClock().now())
                else:
                    count = await write_report(store, name, out, fmt, only, excel)
            os.replace(temp, target)
        except BaseException:
            os.unlink(temp)
            raise
    click.echo(f"wrote {counted(count, 'recipient')} to {target}", err=True)
    if fmt == "html":
        click.echo(str(target.resolve()))
    return EXIT_OK


@cli.command()
@click.argument("name")
@click.option("--status", "which", type=click.Choice(RETRYABLE_NAMES), help="Every recipient with this status.")
@click.option("--urn", "urns", multiple=True, metavar="URN", help="This recipient (failed or unknown; repeatable).")
@click.option(
    "--not-found",
    is_flag=True,
    help="With --status unknown: only those `reconcile` looked for in the conversation and did not find.",
)
@db_option
@sandbox_db_option
def retry(
    name: str, which: str | None, urns: tuple[str, ...], not_found: bool, db: str | None, use_sandbox: bool
) -> int:
    """Put a campaign's unknown or failed recipients back to pending, with its current message.

    An unknown recipient may already have received the message: retrying it risks a second one.
    Run `reconcile` first: it confirms those the conversation shows, and `--not-found` then puts
    back only those it looked for and did not find.

    \b
    Example:
        campaign-runner retry spring-meetup-invite --status failed
        campaign-runner retry spring-meetup-invite --status unknown --not-found
        campaign-runner retry spring-meetup-invite --urn urn:li:fsd_profile:ACoAAFpqSoMB8vTqRbg4mN_wbabO8w0gjgFu-6o
    """
    if not which and not urns:
        raise click.UsageError("give --status unknown|failed, or --urn URN")
    if not_found and which != Status.UNKNOWN:
        raise click.UsageError("--not-found goes with --status unknown")
    return anyio.run(_retry, db, use_sandbox, name, which, urns, not_found)


def _why_not_retried(state: tuple[str, bool] | None, which: str | None) -> str:
    if state is None:
        return "not a recipient of this campaign"
    if state[1]:
        return "no longer in the campaign file"
    return f"it is {state[0]}" + (f", not {which}" if which else ", neither failed nor unknown")


async def _retry(
    db: str | None, use_sandbox: bool, name: str, which: str | None, urns: tuple[str, ...], not_found: bool = False
) -> int:
    clock = SystemClock()
    async with _open_store(db, clock, create=False, sandbox=use_sandbox) as store:
        settings = await store.campaign(name)
        wanted = [u.strip() for u in urns]
        states = await store.states(name, wanted) if wanted else {}
        refused = [
            f"{urn} ({_why_not_retried(states.get(urn), which)})"
            for urn in wanted
            if urn not in states or states[urn][1] or states[urn][0] not in ((which,) if which else RETRYABLE)
        ]
        if refused:
            raise ConfigError(f"not put back, so nothing was: {'; '.join(refused)}")
        render = Messages(name, settings.steps.messages).render_step
        count = await store.retry(name, [which] if which else [], wanted, clock.now(), render, not_found)
    what = f"{which} " if which else ""
    if not_found:
        what = "unknown (not found in the conversation) "
    click.echo(f"{name}: {counted(count, what + 'recipient')} put back to pending, with the campaign's current message")
    if which != Status.FAILED and count:
        click.echo("warning: unknown recipients may already have received the message", err=True)
    return EXIT_OK


# --- dashboard ----------------------------------------------------------------------------------


@cli.command()
@db_option
@sandbox_db_option
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Where to listen (another than this machine needs --token)."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8780, show_default=True)
@click.option(
    "--token",
    envvar="CAMPAIGN_RUNNER_DASHBOARD_TOKEN",
    help="Required on every request (env CAMPAIGN_RUNNER_DASHBOARD_TOKEN); needed to listen beyond this machine.",
)
def dashboard(db: str | None, use_sandbox: bool, host: str, port: int, token: str | None) -> int:
    """Every campaign of the database on a local web page, live and read-only: the html report of
    each, refreshing as runs send. It never writes to the database nor holds up a runner.

    \b
    Example:
        campaign-runner dashboard            # then open http://127.0.0.1:8780/
        CAMPAIGN_RUNNER_DASHBOARD_TOKEN=$(openssl rand -hex 16) campaign-runner dashboard --host 0.0.0.0
    """
    if not client._is_loopback(host) and not token:
        raise ConfigError(
            f"--host {host} lets other machines in: give --token (or CAMPAIGN_RUNNER_DASHBOARD_TOKEN) as well"
        )
    if token is not None and (len(token) < 16 or not token.isprintable() or any(c.isspace() for c in token)):
        raise ConfigError("--token: at least 16 printable characters, no spaces")
    _check_listen(host, port, "the dashboard")
    return anyio.run(_dashboard, database_target(db, use_sandbox), host, port, token)


async def _dashboard(path: Target, host: str, port: int, token: str | None) -> int:
    from .dashboard import Dashboard

    store = await Store.open_read_only(path)
    try:
        async with anyio.create_task_group() as tg:
            app = Dashboard(store, SystemClock(), token)
            url = (await tg.start(sandbox.serve, app, host, port)).removesuffix(sandbox.PREFIX) + "/"
            click.echo(f"dashboard of {path} at {url}" + (f"?token={token}" if token else ""))
            click.echo("Ctrl-C stops it", err=True)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
    return EXIT_OK


# --- hold ------------------------------------------------------------------------------------


@cli.group()
def hold() -> None:
    """See and lift the holds that keep accounts from sending (429s, breaker pauses, blocks).

    \b
    Example:
        campaign-runner hold list
        campaign-runner hold clear acc_1
    """


@hold.command(name="list")
@db_option
@sandbox_db_option
def hold_list(db: str | None, use_sandbox: bool) -> int:
    """List every account held back now, until when and why.

    \b
    Example:
        campaign-runner hold list
    """
    return anyio.run(_hold_list, db, use_sandbox)


async def _hold_list(db: str | None, use_sandbox: bool) -> int:
    clock = SystemClock()
    async with _open_store(db, clock, create=False, sandbox=use_sandbox) as store:
        holds = await store.holds(clock.now())
    if not holds:
        click.echo("no account is held")
    for found in holds:
        click.echo(f"{account_label(found.account_id)}: held until {iso(found.until)}: {found.reason}")
    return EXIT_OK


@hold.command(name="clear")
@click.argument("account")
@db_option
@sandbox_db_option
def hold_clear(account: str, db: str | None, use_sandbox: bool) -> int:
    """Lift an account's hold, so it may send at its next run (use "" for the key's default account).

    Pushing through a real rate limit can extend it: clear a hold only when you know why it was set.

    \b
    Example:
        campaign-runner hold clear acc_1
    """
    return anyio.run(_hold_clear, db, use_sandbox, account)


async def _hold_clear(db: str | None, use_sandbox: bool, account: str) -> int:
    account = "" if account == account_label("") else account  # as `hold list` shows the default account
    clock = SystemClock()
    async with _open_store(db, clock, create=False, sandbox=use_sandbox) as store:
        cleared = await store.clear_hold(account, clock.now())
    if not cleared:
        raise ConfigError(
            f"account {account_label(account)} is not held (see `campaign-runner hold list`;"
            ' the key\'s default account is "")'
        )
    click.echo(f"{account_label(account)}: hold cleared")
    return EXIT_OK


# --- sandbox ---------------------------------------------------------------------------------


def _share(name: str, what: str, of: str = "requests") -> Callable[[F], F]:
    return click.option(name, type=click.FloatRange(0, 1), default=0.0, help=f"Share (0-1) of {of} {what}.")


def _by_account(values: tuple[str, ...], option: str) -> dict[str | None, int]:
    """`ACCOUNT=N` pairs; an empty ACCOUNT is the key's default account."""
    found: dict[str | None, int] = {}
    for value in values:
        account, sep, count = value.rpartition("=")
        if not sep or not count.isdigit() or int(count) < 1:
            raise ConfigError(f"{option}: expected ACCOUNT=N with N >= 1, got {value!r}")
        found[account or None] = int(count)
    return found


def _seconds(text: str, option: str) -> float:
    """A duration (`90`, `30s`, `10m`, `3d`) in seconds, as campaign files write them."""
    from .config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None


def _seconds_range(text: str, option: str) -> tuple[float, float]:
    """`MIN,MAX` durations (`10m,3d`) in seconds."""
    low, sep, high = text.partition(",")
    if not sep:
        raise ConfigError(f"{option}: expected MIN,MAX such as 10m,3d, got {text!r}")
    first, second = _seconds(low, option), _seconds(high, option)
    if second < first:
        raise ConfigError(f"{option}: MIN is more than MAX in {text!r}")
    return first, second


def _webhook_url(url: str | None) -> str | None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"--webhook-url: expected an http:// or https:// URL, got {url!r}")
    return url


@cli.command(name="sandbox")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--api-key", default="sandbox-key", show_default=True, help="The key it accepts.")
@click.option(
    "--typing-delay",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds the -with-typing endpoint takes.",
)
@click.option("--quota", default="150/day", show_default=True, help="Messages per account, e.g. 150/day or 5/3s.")
@click.option("--non-member", multiple=True, help="A recipient URN to refuse with 403 (repeatable).")
@click.option("--seed", type=int, help="Seed for the shares below, to repeat a run exactly.")
@_share("--error-rate", "answered 500")
@_share("--drop-rate", "delivered, then closed with no answer")
@_share("--slow-rate", "delivered, then answered after --slow-delay")
@click.option("--slow-delay", type=click.FloatRange(min=0), default=90.0, show_default=True)
@_share("--storm-rate", "starting a 429 storm on their account")
@click.option(
    "--storm-length", type=click.FloatRange(min=0), default=5.0, show_default=True, help="Seconds a 429 storm lasts."
)
@_share("--bad-gateway-rate", "answered with an HTML 502 page")
@_share("--bad-headers-rate", "answered with missing or malformed X-RateLimit-* headers")
@_share("--portal-rate", "answered 200 with an HTML page (a captive portal), not delivered")
@click.option(
    "--credentials-error",
    multiple=True,
    metavar="ACCOUNT",
    help="Answer this account's every request with the credentials 500 (repeatable).",
)
@click.option(
    "--forbidden-after",
    multiple=True,
    metavar="ACCOUNT=N",
    help="Refuse every recipient of ACCOUNT with 403 from its Nth request on (repeatable).",
)
@click.option(
    "--unauthorized-after", type=click.IntRange(min=1), metavar="N", help="Answer 401 from the Nth request on."
)
@click.option(
    "--group-size", type=click.IntRange(min=0), default=BUILT_IN_GROUP, show_default=True, help="Members of its group."
)
@click.option("--members-quota", default="1000/day", show_default=True, help="Group members fetched per account.")
@click.option("--profile-quota", default="120/day", show_default=True, help="Unique profiles looked up per account.")
@click.option(
    "--conversation-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share (0-1) of people already in a conversation (the pre-check skips them).",
)
@click.option("--missing-profile", multiple=True, metavar="SLUG", help="A public identifier with no profile.")
@click.option(
    "--account-status",
    multiple=True,
    metavar="ACCOUNT=STATUS",
    help="What /account/status says of ACCOUNT: ERROR, WARMUP... (repeatable; default AVAILABLE).",
)
@_share("--reply-rate", "who reply to an account's first message", of="people")
@click.option(
    "--reply-delay",
    default="10m,3d",
    show_default=True,
    metavar="MIN,MAX",
    help="When a reply arrives after that first message: uniform between MIN and MAX (90, 30s, 10m, 3d).",
)
@_share("--opt-out-rate", 'that ask to stop ("Please stop messaging me")', of="the replies")
@click.option(
    "--message-lag",
    default="0s",
    metavar="DURATION",
    show_default=True,
    help="How long a sent message takes to show in /conversations (the vendor's store lags).",
)
@click.option("--webhook-url", metavar="URL", help="POST each reply there as a signed message.received event.")
@click.option(
    "--webhook-secret",
    envvar="CONNECTSAFELY_WEBHOOK_SECRET",
    show_envvar=True,
    default=sandbox.WEBHOOK_SECRET,
    show_default=True,
    help="The secret the events' X-Webhook-Signature is made with.",
)
@_share("--webhook-duplicate-rate", "sent twice", of="the events")
@_share("--webhook-drop-rate", "never sent", of="the events")
@click.option("--webhook-shuffle", is_flag=True, help="Send the events due at once in a random order.")
def sandbox_command(
    host: str,
    port: int,
    api_key: str,
    typing_delay: float,
    quota: str,
    non_member: tuple[str, ...],
    seed: int | None,
    error_rate: float,
    drop_rate: float,
    slow_rate: float,
    slow_delay: float,
    storm_rate: float,
    storm_length: float,
    bad_gateway_rate: float,
    bad_headers_rate: float,
    portal_rate: float,
    credentials_error: tuple[str, ...],
    forbidden_after: tuple[str, ...],
    unauthorized_after: int | None,
    group_size: int,
    members_quota: str,
    profile_quota: str,
    conversation_rate: float,
    missing_profile: tuple[str, ...],
    account_status: tuple[str, ...],
    reply_rate: float,
    reply_delay: str,
    opt_out_rate: float,
    message_lag: str,
    webhook_url: str | None,
    webhook_secret: str,
    webhook_duplicate_rate: float,
    webhook_drop_rate: float,
    webhook_shuffle: bool,
) -> int:
    """Serve a local emulator of the ConnectSafely API, for trying campaigns without sending.

    Fault options make it misbehave the ways the real API and the network can. An empty ACCOUNT
    means the key's default account. Reply options make people answer: in /conversations and,
    with --webhook-url, as the vendor's webhook events (flushed every second).

    \b
    Example:
        campaign-runner sandbox --port 8765 &
        CONNECTSAFELY_API_KEY=sandbox-key campaign-runner run campaigns/demo.yaml \\
            --base-url http://127.0.0.1:8765/linkedin
        campaign-runner sandbox --error-rate 0.1 --drop-rate 0.05 --forbidden-after acc_2=20
        campaign-runner sandbox --reply-rate 0.2 --reply-delay 10s,2m --opt-out-rate 0.1 \\
            --webhook-url http://127.0.0.1:9000/hooks
    """
    limits = {}
    for name, text in (("--quota", quota), ("--members-quota", members_quota), ("--profile-quota", profile_quota)):
        try:
            limits[name] = Limit.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    limit = limits["--quota"]
    statuses: dict[str | None, str] = {}
    for item in account_status:
        account, sep, value = item.rpartition("=")
        if not sep or not value:
            raise ConfigError(f"--account-status: expected ACCOUNT=STATUS, got {item!r}")
        statuses[account or None] = value.upper()
    config = sandbox.SandboxConfig(
        api_key=api_key,
        typing_delay=typing_delay,
        quota=limit.cap,
        quota_window=limit.window,
        non_members=set(non_member),
        seed=seed,
        error_rate=error_rate,
        drop_rate=drop_rate,
        slow_rate=slow_rate,
        slow_delay=slow_delay,
        storm_rate=storm_rate,
        storm_length=storm_length,
        bad_gateway_rate=bad_gateway_rate,
        bad_headers_rate=bad_headers_rate,
        portal_rate=portal_rate,
        credentials_error={a or None for a in credentials_error},
        forbidden_after=_by_account(forbidden_after, "--forbidden-after"),
        unauthorized_after=unauthorized_after,
        group_size=group_size,
        members_quota=limits["--members-quota"].cap,
        members_quota_window=limits["--members-quota"].window,
        profile_quota=limits["--profile-quota"].cap,
        profile_quota_window=limits["--profile-quota"].window,
        conversation_rate=conversation_rate,
        missing_profiles=set(missing_profile),
        account_status=statuses,
        reply_rate=reply_rate,
        reply_delay=_seconds_range(reply_delay, "--reply-delay"),
        opt_out_rate=opt_out_rate,
        message_lag=_seconds(message_lag, "--message-lag"),
        webhook_url=_webhook_url(webhook_url),
        webhook_secret=webhook_secret,
        webhook_duplicate_rate=webhook_duplicate_rate,
        webhook_drop_rate=webhook_drop_rate,
        webhook_shuffle=webhook_shuffle,
    )

    async def serve() -> int:
        async with anyio.create_task_group() as tg:
            # Ctrl-C and `kill` (SIGTERM) both stop it quietly, letting requests finish first.
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                url = await tg.start(sandbox.serve, sandbox.Sandbox(config), host, port)
                click.echo(f"sandbox listening on {url} (API key {api_key!r}); Ctrl-C stops it", err=True)
                if webhook_url:
                    click.echo(f"sandbox POSTs replies to {webhook_url}", err=True)
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break
        return EXIT_INTERRUPTED

    _check_listen(host, port)
    try:
        return anyio.run(serve)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _check_listen(host: str, port: int, what: str = "the sandbox") -> None:
    """One clear line when `what` cannot listen there (not this machine's address, a port taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"{what} cannot listen on {host}:{port}: {exc.strerror or exc}") from None


# --- entry point -----------------------------------------------------------------------------


def _load(files: Sequence[str]) -> list[Campaign]:
    campaigns: list[Campaign] = []
    failures: list[CampaignFileError] = []
    for file in files:
        try:
            campaign = load_campaign(file)
        except CampaignFileError as exc:
            failures.append(exc)
            continue
        for warning in campaign.warnings:
            click.echo(f"warning: {file}: {warning}", err=True)
        campaigns.append(campaign)
    if len(failures) == 1 and len(failures[0].errors) == 1 and not failures[0].warnings:
        raise ConfigError(f"{failures[0].path}: {failures[0].errors[0]}")
    if failures:
        for failure in failures:
            for problem in failure.errors:
                click.echo(f"error: {failure.path}: {problem}", err=True)
            for warning in failure.warnings:
                click.echo(f"warning: {failure.path}: {warning}", err=True)
        count = sum(len(f.errors) for f in failures)
        raise ConfigError(f"{count} error{'s' if count != 1 else ''} in campaign files; nothing was sent or written")
    return campaigns


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code instead of exiting (tests call this)."""
    _State.debug = False
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name="campaign-runner", standalone_mode=False
        )
    except BaseException as raised:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        exc = _unwrap(raised)
        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        if isinstance(exc, (click.exceptions.Abort, KeyboardInterrupt)):
            click.echo("interrupted", err=True)
            return EXIT_INTERRUPTED
        if isinstance(exc, click.ClickException):
            # One line, like every other error; --help shows the usage.
            click.echo(f"error: {exc.format_message()}", err=True)
            return exc.exit_code
        if not isinstance(exc, Exception):
            raise
        if _State.debug:
            traceback.print_exception(raised)
        if isinstance(exc, CampaignRunnerError):
            click.echo(f"error: {exc}", err=True)
            return exc.exit_code
        if not _State.debug:
            click.echo(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for details)", err=True)
        return EXIT_FATAL
    return result if isinstance(result, int) else EXIT_OK


def _unwrap(exc: BaseException) -> BaseException:
    """The error inside task-group exception groups, so it is reported as itself (ours first)."""
    while isinstance(exc, BaseExceptionGroup):
        inner = exc.exceptions
        exc = next((e for e in inner if isinstance(e, CampaignRunnerError)), inner[0])
    return exc


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _catch_sigterm() -> None:
    """SIGTERM outside the sending phase (loading a big file, say) ends like Ctrl-C: exit 130.
    While sending, the scheduler takes both signals over and stops gently."""
    if _State.catch_sigterm:
        signal.signal(signal.SIGTERM, _interrupt)


# The commands about people and accounts live beside: registering them needs `cli` defined above.
from . import cli_people, cli_replies  # noqa: E402, F401


def main() -> None:
    _State.catch_sigterm = True
    _catch_sigterm()
    sys.exit(run_cli())
