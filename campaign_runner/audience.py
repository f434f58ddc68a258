"""A group's members, page by page: what `members` writes out and what feeds a campaign's audience.

Each page is one request, reserved in the database like a claim (within the API key's limit, the
account's rate of reads and its daily budget of members), and stored with where the next page
starts in one transaction: a fetch killed between two pages goes on at the page it stopped at, so
at most the page in flight is fetched twice. Accounts take turns: the first whose budget allows
fetches the next page.
"""

from __future__ import annotations

import csv
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from .client import ApiClient, ReadRequest
from .clock import Clock
from .errors import CampaignRunnerError
from .outcome import Kind
from .report import neutralise
from .settings import Limit, account_label
from .store import MemberFetch, Read, ReadAction, Store

PAGE = 100  # members per page: the most the API gives at once
MEMBER_COLUMNS = ("profile_urn", "public_identifier", "first_name", "last_name", "headline", "membership_status")
RETRY_AFTER = 30.0  # seconds before a page that got no answer (a 500, no connection) is asked again

Render = Callable[[str, dict[str, Any]], tuple[Any, str | None]]  # see config.member_renderer


class FetchError(CampaignRunnerError):
    """The API refused the fetch itself: the account is no member of the group, the key is refused."""

    exit_code = 1


@dataclass(frozen=True)
class Fetched:
    fetch: MemberFetch
    waiting_until: float | None = None  # the budget is spent until then (with `no_wait`)


async def fetch_pages(
    store: Store,
    api: ApiClient,
    clock: Clock,
    fetch: MemberFetch,
    accounts: Sequence[str],
    *,
    budget: Limit | None = None,
    render: Render | None = None,
    no_wait: bool = False,
    pages: int | None = None,
    progress: Callable[[str, MemberFetch], None] = lambda account, fetch: None,
    say: Callable[[str], None] = lambda line: None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> Fetched:
    """Fetch pages until the members are all in (or `pages` pages came, or with `no_wait` the
    budgets say wait, or `stopped()`). `progress(account, fetch)` follows each page, `say(line)`
    tells of a page that did not come; `sleep(until)` waits (default: the clock's). Raises
    FetchError when the API refuses the fetch itself."""

    async def wait(until: float) -> None:
        await (sleep(until) if sleep is not None else clock.sleep_until(until))

    got = 0
    while not stopped():
        fetch = await store.refresh_fetch(fetch)  # another process may fetch the same group
        if fetch.done or (pages is not None and got >= pages):
            break
        count = PAGE if fetch.max_members is None else max(min(PAGE, fetch.max_members - fetch.fetched), 1)
        now = clock.now()
        read: Read | None = None
        soonest = None
        for account in accounts:
            found = await store.reserve(
                account, ReadAction.MEMBERS, fetch.group, now, api.deadline, units=count, budget=budget
            )
            if isinstance(found, Read):
                read = found
                break
            soonest = found if soonest is None else min(soonest, found)
        if read is None:
            assert soonest is not None
            if no_wait:
                return Fetched(fetch, soonest)
            await wait(soonest)
            continue
        start = fetch.next_start
        request = ReadRequest.group_members(
            fetch.group, start, read.units, fetch.statuses, fetch.query, read.account_id or None
        )
        answer = await api.read(request)
        saved = await store.save_members(read, fetch, start, answer, clock.now(), render)
        outcome = answer.outcome
        if saved is not None:
            got += 1
            fetch = saved
            progress(read.account_id, fetch)
            continue
        if outcome.kind in (Kind.UNAUTHORIZED, Kind.MISROUTED, Kind.REJECTED):
            raise FetchError(
                f"the API refused the members of {fetch.group} for {account_label(read.account_id)}"
                f" (HTTP {outcome.http_status}: {outcome.error}); is the account a member of the group?"
            )
        say(f"members of {fetch.group}: page at {fetch.next_start} not fetched ({outcome.error}); asked again later")
        if outcome.kind is not Kind.RATE_LIMITED:  # a 429's hold is kept with the account's reads
            if no_wait:
                return Fetched(fetch, clock.now() + RETRY_AFTER)
            await wait(clock.now() + RETRY_AFTER)
    return Fetched(fetch)


def described(fetch: MemberFetch) -> str:
    """How far a fetch is: `200 of 2500 fetched`."""
    total = f" of {fetch.total}" if fetch.total is not None else ""
    return f"{fetch.fetched}{total} fetched" + (", done" if fetch.done else "")


def write_csv(rows: Sequence[tuple[Any, ...]], out: IO[str]) -> None:
    """The members as a CSV that is a campaign's `recipients_file` as it stands."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MEMBER_COLUMNS)
    for row in rows:
        writer.writerow(["" if value is None else neutralise(value) for value in row])
