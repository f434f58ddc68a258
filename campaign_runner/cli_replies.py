"""The commands about what came back: `replies`, `reconcile`, `webhook`.

Registered on the `cli` group by `cli.py`; the parsing and printing conventions are its own.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import anyio
import click

from . import client, sandbox
from .cli import EXIT_OK, _api, _check_listen, _open_store, _Sending, _sending, cli, database_target, db_option
from .cli_people import _api_options, _flags
from .clock import SystemClock, iso
from .engines import Target
from .errors import ConfigError
from .outcome import Status
from .replies import poll, reconcile
from .settings import account_label
from .store import Store

SECRET_ENV = "CONNECTSAFELY_WEBHOOK_SECRET"


async def _accounts_of(store: Store, name: str | None) -> list[str]:
    """The accounts of one campaign, or of every campaign of the database."""
    names = [name] if name else await store.campaign_names()
    found: dict[str, None] = {}
    for each in names:
        found.update(dict.fromkeys((await store.campaign(each)).account_ids))
    return list(found)


# --- replies -----------------------------------------------------------------------------------


@cli.command()
@click.argument("name", required=False)
@db_option
@_api_options
def replies(
    name: str | None, db: str | None, base_url: str, timeout: float, use_sandbox: bool, allow_insecure: bool
) -> int:
    """Look at the accounts' conversations for replies once, now (a running `run` does it every
    `reply_poll` by itself). NAME: only that campaign's accounts.

    \b
    Example:
        campaign-runner replies spring-meetup-invite
    """
    sending = _sending(_flags(base_url, timeout, use_sandbox, allow_insecure))
    return anyio.run(_replies, db, sending, timeout, name)


async def _replies(db: str | None, sending: _Sending, timeout: float, name: str | None) -> int:
    clock = SystemClock()
    async with _open_store(db, clock, create=False, sandbox=sending.use_sandbox) as store:
        names = [name] if name else await store.campaign_names()
        await store.bind_api(names, sending.api, False, clock.now())  # the conversations of the API it sent to
        accounts = await _accounts_of(store, name)
        async with _api(sending, clock, timeout) as http:
            api = client.ApiClient(http, client.deadline_for(timeout))
            failed = 0
            for account in accounts:
                result = await poll(store, api, clock, account)
                opted = sum(1 for r in result.replied if r.opt_out)
                line = f"{account_label(account)}: {len(result.replied)} new {_plural(len(result.replied), 'reply')}"
                if opted:
                    line += f", {opted} asked not to be contacted (blocked)"
                if result.error:
                    failed += 1
                    line += f"; not every conversation was read ({result.error}): run it again later"
                click.echo(line)
                for found in result.replied:
                    click.echo(f"  {found.campaign} {found.profile_urn} -> {found.status}")
    return EXIT_OK if not failed else 1


def _plural(count: int, word: str) -> str:
    return word if count == 1 else ("replies" if word == "reply" else word + "s")


# --- reconcile ---------------------------------------------------------------------------------


@cli.command(name="reconcile")
@click.argument("name", required=False)
@db_option
@_api_options
def reconcile_command(
    name: str | None, db: str | None, base_url: str, timeout: float, use_sandbox: bool, allow_insecure: bool
) -> int:
    """Look for each `unknown` delivery in its account's conversation with the recipient: our
    message there (the same text, sent after the claim) makes it `sent`, noted "confirmed from the
    conversation"; otherwise it is noted not found, with when it was looked for, and
    `retry NAME --status unknown --not-found` puts back only those.

    \b
    Example:
        campaign-runner reconcile spring-meetup-invite
        campaign-runner retry spring-meetup-invite --status unknown --not-found
    """
    sending = _sending(_flags(base_url, timeout, use_sandbox, allow_insecure))
    return anyio.run(_reconcile, db, sending, timeout, name)


async def _reconcile(db: str | None, sending: _Sending, timeout: float, name: str | None) -> int:
    clock = SystemClock()
    async with _open_store(db, clock, create=False, sandbox=sending.use_sandbox) as store:
        if name:
            await store.campaign(name)  # an unknown name says so
        unknowns = await store.unknowns(name)
        # Only the API a campaign sent to can say what it delivered: asked elsewhere, all would be "not found".
        await store.bind_api(sorted({u.campaign for u in unknowns}), sending.api, False, clock.now())
        if not unknowns:
            click.echo("no unknown outcome to look for")
            return EXIT_OK
        async with _api(sending, clock, timeout) as http:
            api = client.ApiClient(http, client.deadline_for(timeout))
            results = await reconcile(store, api, clock, unknowns)
    counts = {True: 0, False: 0, None: 0}
    for result in results:
        counts[result.found] += 1
        u = result.unknown
        click.echo(f"{u.campaign} {u.profile_urn} (step {u.step + 1}): {result.detail}")
    click.echo(
        f"{counts[True]} confirmed sent, {counts[False]} not found (looked for at {iso(clock.now())}),"
        f" {counts[None]} left for later"
    )
    if counts[False]:
        names = sorted({r.unknown.campaign for r in results if r.found is False})
        for each in names:
            click.echo(f"to send those again: campaign-runner retry {each} --status {Status.UNKNOWN} --not-found")
    return EXIT_OK


# --- webhook -----------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Where to listen.")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True)
@db_option
def webhook(host: str, port: int, db: str | None) -> int:
    """Receive the vendor's message.received events and record each reply at once (polling in
    `run` stays on for the events that never come). Every event must be signed with the secret in
    CONNECTSAFELY_WEBHOOK_SECRET; one that is not is refused (401) and changes nothing.

    \b
    Example:
        CONNECTSAFELY_WEBHOOK_SECRET=... campaign-runner webhook --port 8787
    """
    secret = os.environ.get(SECRET_ENV, "")
    if not secret.strip():
        raise ConfigError(f"{SECRET_ENV} is not set: export the secret the vendor showed when the webhook was made")
    _check_listen(host, port, "the webhook receiver")
    return anyio.run(_webhook, database_target(db, False), host, port, secret.encode())


async def _webhook(path: Target, host: str, port: int, secret: bytes) -> int:
    from .webhook import WebhookReceiver

    clock = SystemClock()
    async with _open_store(path.text, clock, create=False) as store:
        known = set(await store.known_accounts())
        app = WebhookReceiver(store, clock, secret, known)
        async with anyio.create_task_group() as tg:
            url = (await tg.start(sandbox.serve, app, host, port)).removesuffix(sandbox.PREFIX) + "/"
            click.echo(f"receiving events at {url} into {path}")
            click.echo("Ctrl-C stops it", err=True)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            tg.cancel_scope.cancel()
    click.echo(f"{app.recorded} {_plural(app.recorded, 'reply')} recorded", err=True)
    return EXIT_OK


__all__: Sequence[str] = ()
