"""The commands about people and accounts: `members`, `block`, `unblock`, `contacts`, `accounts`.

Registered on the `cli` group by `cli.py`; the parsing and printing conventions are its own.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import click

from . import client
from .audience import FetchError, described, fetch_pages, write_csv
from .cli import (
    EXIT_OK,
    _api,
    _open_store,
    _sending,
    _SendingFlags,
    base_url_option,
    cli,
    db_option,
    insecure_option,
    sandbox_db_option,
    timeout_option,
)
from .clock import SystemClock, iso
from .config import GROUP_URL, PERSON_COLUMNS, column_name, delimiter_of, group_id_of, person_of
from .errors import ConfigError
from .settings import MEMBER_STATUSES, Limit, account_label
from .store import Read, ReadAction, Store


def _api_options(f: Any) -> Any:
    """Where reads go: --base-url, --timeout, --sandbox (the built-in one), --allow-insecure."""
    sandbox = click.option("--sandbox", "use_sandbox", is_flag=True, help="Ask a built-in sandbox (its own database).")
    for option in reversed([base_url_option, timeout_option, sandbox, insecure_option]):
        f = option(f)
    return f


def _flags(base_url: str, timeout: float, use_sandbox: bool, allow_insecure: bool, no_wait: bool = False) -> Any:
    return _SendingFlags(base_url, timeout, use_sandbox, no_wait, allow_insecure, False, None)


# --- members ---------------------------------------------------------------------------------


@cli.command()
@click.argument("group")
@click.option("--account", default="", help="The account that fetches (a member of the group); default: the key's.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(MEMBER_STATUSES),
    help="Members of this standing (repeatable; default: member).",
)
@click.option("--query", help="Only members whose name matches (the API's typeahead search).")
@click.option("--max", "max_members", type=click.IntRange(min=1), help="At most this many members.")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the CSV here instead of standard output.")
@click.option("--budget", default="1000/day", show_default=True, help="Members fetched per account, at most.")
@click.option("--no-wait", is_flag=True, help="Fetch what the budget allows now, then stop (run again to go on).")
@db_option
@_api_options
def members(
    group: str,
    account: str,
    statuses: tuple[str, ...],
    query: str | None,
    max_members: int | None,
    output: str | None,
    budget: str,
    no_wait: bool,
    db: str | None,
    base_url: str,
    timeout: float,
    use_sandbox: bool,
    allow_insecure: bool,
) -> int:
    """Fetch a group's members into the database and write them as a CSV, ready to be a campaign's
    recipients_file. GROUP is the group's id or URL. A fetch killed or stopped goes on where it
    stopped when run again with the same arguments; the budget is kept across runs.

    \b
    Example:
        campaign-runner members 12345678 --account acc_1 --output members.csv
        campaign-runner members https://www.linkedin.com/groups/12345678/ --status member --status manager
    """
    ref = _group_ref(group)
    try:
        limit = Limit.parse(budget)
    except ValueError as exc:
        raise ConfigError(f"--budget: {exc}") from None
    sending = _sending(_flags(base_url, timeout, use_sandbox, allow_insecure))
    return anyio.run(
        _members,
        db,
        sending,
        timeout,
        ref,
        account,
        statuses or ("member",),
        query,
        max_members,
        output,
        limit,
        no_wait,
    )


def _group_ref(text: str) -> str:
    """The group as the API takes it: its id, or its URL (then `/groups/members-by-url`)."""
    text = text.strip()
    if GROUP_URL.match(text):
        found = GROUP_URL.match(text)
        assert found is not None
        return f"https://www.linkedin.com/groups/{found.group(1)}/"
    try:
        return group_id_of(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


async def _members(
    db: str | None,
    sending: Any,
    timeout: float,
    group: str,
    account: str,
    statuses: Sequence[str],
    query: str | None,
    max_members: int | None,
    output: str | None,
    budget: Limit,
    no_wait: bool,
) -> int:
    clock = SystemClock()
    async with _open_store(db, clock, create=True, sandbox=sending.use_sandbox, err=output is None) as store:
        fetch = await store.member_fetch(group, statuses, query, max_members, None, clock.now())
        async with _api(sending, clock, timeout) as http:
            api = client.ApiClient(http, client.deadline_for(timeout))
            try:
                fetched = await fetch_pages(
                    store,
                    api,
                    clock,
                    fetch,
                    [account],
                    budget=budget,
                    no_wait=no_wait,
                    progress=lambda account, fetch: click.echo(
                        f"members of {fetch.group}: {described(fetch)} (via {account_label(account)})", err=True
                    ),
                    say=lambda line: click.echo(line, err=True),
                )
            except FetchError as exc:
                raise ConfigError(str(exc)) from None
        rows = await store.fetched_members(fetched.fetch.id)
    if max_members is not None:
        rows = rows[:max_members]  # an earlier fetch of the group, with a larger --max, got more
    if output:
        with open(output, "w", encoding="utf-8", newline="") as out:
            write_csv(rows, out)
    else:
        write_csv(rows, sys.stdout)
    where = f" to {output}" if output else ""
    if fetched.waiting_until is not None:
        click.echo(
            f"{len(rows)} members so far{where}; the budget allows the next page at {iso(fetched.waiting_until)}:"
            " run the same command again then to go on",
            err=True,
        )
    else:
        click.echo(f"{len(rows)} members{where}", err=True)
    return EXIT_OK


# --- the do-not-contact list ------------------------------------------------------------------


def _people(items: Sequence[str], file: str | None) -> list[tuple[str | None, str | None]]:
    """Each item (and each row of `file`) as (URN, None) or (None, public identifier)."""
    texts = list(items)
    if file:
        texts += _file_people(Path(file))
    if not texts:
        raise ConfigError("give at least one person: a URN, a profile URL or a public identifier (or --file)")
    people = []
    for text in texts:
        try:
            people.append(person_of(text))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return people


def _file_people(path: Path) -> list[str]:
    """The people of a CSV: its profile_urn, profile_url or public_identifier column (the first
    there is; headers are matched as a campaign's are, and so is the delimiter)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            delimiter = delimiter_of(file.readline())
            file.seek(0)
            rows = [row for row in csv.reader(file, delimiter=delimiter) if row and any(c.strip() for c in row)]
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read {path} as a UTF-8 CSV: {exc}") from None
    header = [column_name(cell) for cell in rows[0]] if rows else []
    for name in PERSON_COLUMNS:
        if name in header:
            column = header.index(name)
            return [row[column].strip() for row in rows[1:] if len(row) > column and row[column].strip()]
    shown = ", ".join(rows[0]) if rows else "none"
    raise ConfigError(f"{path}: no profile_urn, profile_url or public_identifier column (columns: {shown})")


@cli.command()
@click.argument("people", nargs=-1)
@click.option("--file", type=click.Path(dir_okay=False), help="A CSV of people (a profile_urn/profile_url column).")
@click.option("--reason", help="Why (shown with every recipient it suppresses).")
@db_option
@sandbox_db_option
def block(people: tuple[str, ...], file: str | None, reason: str | None, db: str | None, use_sandbox: bool) -> int:
    """Put people on the do-not-contact list: no campaign of the database sends them, now or
    later. Each is a profile URN, a profile URL or a public identifier. Their pending recipients
    become `suppressed` at once, and every running process checks the list before each send.

    \b
    Example:
        campaign-runner block https://www.linkedin.com/in/jane-doe-123/ --reason "asked not to be contacted"
    """
    found = _people(people, file)
    return anyio.run(_block, db, use_sandbox, found, reason, True)


@cli.command()
@click.argument("people", nargs=-1)
@click.option("--file", type=click.Path(dir_okay=False), help="A CSV of people (a profile_urn/profile_url column).")
@db_option
@sandbox_db_option
def unblock(people: tuple[str, ...], file: str | None, db: str | None, use_sandbox: bool) -> int:
    """Take people off the do-not-contact list; their suppressed recipients are pending again.

    \b
    Example:
        campaign-runner unblock jane-doe-123
    """
    found = _people(people, file)
    return anyio.run(_block, db, use_sandbox, found, None, False)


async def _block(
    db: str | None, use_sandbox: bool, people: list[tuple[str | None, str | None]], reason: str | None, on: bool
) -> int:
    clock = SystemClock()
    async with _open_store(db, clock, create=on, sandbox=use_sandbox) as store:
        if on:
            done = await store.block(people, reason, clock.now())
            click.echo(
                f"blocked {done.changed} (already blocked: {done.unchanged});"
                f" {done.recipients} pending recipients suppressed"
            )
            if done.unresolved:
                who = "1 blocked person is" if done.unresolved == 1 else f"{done.unresolved} blocked people are"
                click.echo(
                    f"{who} known only by profile URL: the next run looks them up (POST /profile) before it"
                    " sends to anyone known by URN alone"
                )
        else:
            done = await store.unblock(people, clock.now())
            click.echo(
                f"unblocked {done.changed} (not blocked: {done.unchanged});"
                f" {done.recipients} suppressed recipients pending again"
            )
    return EXIT_OK


@cli.command()
@click.option("--blocked", "blocked_only", is_flag=True, help="Only the do-not-contact list.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@db_option
@sandbox_db_option
def contacts(blocked_only: bool, fmt: str, db: str | None, use_sandbox: bool) -> int:
    """Every person the database knows (one row each, whatever campaigns list them), with where
    they came from, whether they are blocked, and their status in each campaign.

    \b
    Example:
        campaign-runner contacts --blocked
    """
    return anyio.run(_contacts, db, use_sandbox, blocked_only, fmt)


CONTACT_FIELDS = (
    "profile_urn",
    "public_identifier",
    "first_name",
    "last_name",
    "headline",
    "source",
    "blocked_at",
    "blocked_reason",
    "not_found",
    "campaigns",
)


async def _contacts(db: str | None, use_sandbox: bool, blocked_only: bool, fmt: str) -> int:
    from .report import neutralise

    clock = SystemClock()
    async with _open_store(db, clock, create=False, sandbox=use_sandbox) as store:
        found = await store.contacts(blocked_only)
    rows = [{name: getattr(c, name) for name in CONTACT_FIELDS} | {"blocked_at": iso(c.blocked_at)} for c in found]
    if fmt == "json":
        click.echo(json.dumps(rows, ensure_ascii=False, indent=1))
        return EXIT_OK
    writer = csv.DictWriter(sys.stdout, fieldnames=CONTACT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: neutralise(value) for key, value in row.items()})
    return EXIT_OK


# --- accounts --------------------------------------------------------------------------------


@cli.command()
@click.option("--check", is_flag=True, help="Also ask the API for each account's health now.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@db_option
@_api_options
def accounts(
    check: bool, as_json: bool, db: str | None, base_url: str, timeout: float, use_sandbox: bool, allow_insecure: bool
) -> int:
    """Every account the database knows: its use of each daily budget (messages, members,
    profiles) over the last 24 hours, its hold, whether a run stopped it, and its health as the
    API last said (with --check, asked now).

    \b
    Example:
        campaign-runner accounts --check
    """
    sending = _sending(_flags(base_url, timeout, use_sandbox, allow_insecure)) if check else None
    return anyio.run(_accounts, db, use_sandbox, sending, timeout, as_json)


async def _accounts(db: str | None, use_sandbox: bool, sending: Any, timeout: float, as_json: bool) -> int:
    clock = SystemClock()
    async with _open_store(db, clock, create=False, sandbox=use_sandbox) as store:
        ids = await store.known_accounts()
        if sending is not None:
            async with _api(sending, clock, timeout) as http:
                api = client.ApiClient(http, client.deadline_for(timeout))
                for account in ids:
                    await _check(store, api, clock, account)
        found = [await store.account_use(account, clock.now()) for account in ids]
    if as_json:
        click.echo(json.dumps([_account_json(use) for use in found], indent=1))
        return EXIT_OK
    if not found:
        click.echo("no account yet")
    for use in found:
        click.echo(_account_line(use, clock.now()))
    return EXIT_OK


async def _check(store: Store, api: client.ApiClient, clock: SystemClock, account: str) -> None:
    while True:
        read = await store.reserve(account, ReadAction.STATUS, account, clock.now(), api.deadline)
        if isinstance(read, Read):
            break
        await clock.sleep_until(read)
    answer = await api.read(client.ReadRequest.account_status(account or None))
    await store.finish_read(read, answer, clock.now())
    if answer.health is None:
        outcome = answer.outcome
        click.echo(f"{account_label(account)}: no health from the API (HTTP {outcome.http_status}: {outcome.error})")


def _account_json(use: Any) -> dict[str, Any]:
    return {
        "account_id": use.account_id,
        "messages_24h": use.messages,
        "members_24h": use.members,
        "members_budget": str(use.members_budget),
        "profiles_24h": use.profiles,
        "profiles_budget": str(use.profiles_budget),
        "hold_until": iso(use.hold_until) if use.hold_until else None,
        "hold_reason": use.hold_reason,
        "stopped_reason": use.stopped_reason,
        "health": use.health,
        "health_at": iso(use.health_at),
    }


def _account_line(use: Any, now: float) -> str:
    parts = [
        f"{use.messages} messages",
        f"{use.members} members (budget {use.members_budget})",
        f"{use.profiles} profiles (budget {use.profiles_budget}) in the last 24 h",
    ]
    if use.hold_until:
        parts.append(f"held until {iso(use.hold_until)}: {use.hold_reason}")
    if use.stopped_reason:
        parts.append(f"stopped by a run: {use.stopped_reason}")
    if use.health is not None:
        health = use.health
        flags = [str(health.get("status"))]
        if health.get("enabled") is False:
            flags.append("disabled")
        if health.get("hasTokens") is False:
            flags.append("no LinkedIn session")
        parts.append(f"health {' '.join(flags)} (asked {iso(use.health_at)})")
    else:
        parts.append("health never asked (--check)")
    return f"{account_label(use.account_id)}: " + "; ".join(parts)
