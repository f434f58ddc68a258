"""Who answered, and what became of an unknown outcome: read from the account's conversations.

`poll` reads an account's conversations, newest activity first and only as far back as its last
complete look, and the messages of those with someone the account messaged: a message from them
after our first one is a reply (`Store.record_replies`). Only a look that read every page it
needed counts as complete, and only a complete one lets follow-ups go (`reply_fresh`).

`reconcile` looks for each `unknown` delivery in its account's conversation with the recipient:
our message (the same text, sent after the claim) found means it was sent.

Every request is reserved against the API key's limit first, like any other read.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .client import ApiClient, Conversation, Listing, Message, ReadAnswer, ReadRequest
from .clock import Clock
from .outcome import Kind, Outcome
from .store import Read, ReadAction, Replied, Reply, Store, Unknown

POLL_OVERLAP = 300.0  # seconds a look reaches back before the last one began (clocks, the vendor's store)
PAGE = 50  # conversations per page
MAX_PAGES = 200  # pages of one listing read in one look: a server that never stops paging is not followed
SETTLE = 600.0  # seconds after its claim before a message missing from the conversation counts as not sent
INTERRUPTED = "the request was interrupted in flight"
TOO_RECENT = "claimed less than 10 minutes ago, the conversation may not show it yet: look again later"

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class PollResult:
    replied: list[Replied] = field(default_factory=list)
    error: str | None = None  # why the look is not complete (the next one reads that far back again)


class _Unanswered(Exception):
    def __init__(self, outcome: Outcome):
        super().__init__(f"{outcome.kind.value}: {outcome.error or f'HTTP {outcome.http_status}'}")
        self.outcome = outcome


class Reader:
    """Reads of one account's inbox, each reserved against the API key's limit before it leaves."""

    def __init__(self, store: Store, api: ApiClient, clock: Clock, account_id: str, sleep: Sleep | None = None):
        self._store = store
        self._api = api
        self._clock = clock
        self.account_id = account_id
        self._sleep = sleep or (lambda until: clock.sleep_until(until))

    async def ask(self, action: ReadAction, request: ReadRequest, subject: str) -> Listing:
        while True:
            read = await self._store.reserve(self.account_id, action, subject, self._clock.now(), self._api.deadline)
            if isinstance(read, Read):
                break
            await self._sleep(read)
        try:
            answer = await self._api.read(request)
        except BaseException:
            await self._store.finish_read(read, ReadAnswer(Outcome(Kind.UNKNOWN, error=INTERRUPTED)), self._clock.now())
            raise
        await self._store.finish_read(read, answer, self._clock.now())
        if answer.outcome.kind is not Kind.SENT or answer.listing is None:
            raise _Unanswered(answer.outcome)
        return answer.listing

    async def conversations(self, since: float) -> list[Conversation]:
        """The account's conversations active since `since`, newest activity first (one whose time
        the API does not say is read too)."""
        found: list[Conversation] = []
        account = self.account_id or None
        pages = self._pages(ReadAction.CONVERSATIONS, "inbox", lambda c: ReadRequest.conversations(account, PAGE, c))
        async with contextlib.aclosing(pages):
            async for page in pages:
                for conversation in page.conversations:
                    if conversation.last_activity is not None and conversation.last_activity < since:
                        return found
                    found.append(conversation)
        return found

    async def messages(self, conversation: str, since: float) -> list[Message]:
        """A conversation's messages sent after `since` (a little before: clocks differ)."""
        account = self.account_id or None
        found: list[Message] = []
        pages = self._pages(
            ReadAction.MESSAGES,
            conversation,
            lambda c: ReadRequest.messages(conversation, account, since - POLL_OVERLAP, c),
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                found.extend(page.messages)
        return found

    async def _pages(
        self, action: ReadAction, subject: str, request: Callable[[str | None], ReadRequest]
    ) -> AsyncIterator[Listing]:
        """Each page of a listing, while the API gives a cursor. An answer that would page for ever
        (a cursor given twice, more than MAX_PAGES pages) is not followed: the look is incomplete."""
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page = await self.ask(action, request(cursor), subject)
            yield page
            cursor = page.cursor
            if cursor is None:
                return
            if cursor in seen:
                raise _Unanswered(Outcome(Kind.UNKNOWN, error="the API gave the same page twice"))
            seen.add(cursor)
        raise _Unanswered(Outcome(Kind.UNKNOWN, error=f"more than {MAX_PAGES} pages; the rest is read next time"))


async def poll(store: Store, api: ApiClient, clock: Clock, account_id: str, sleep: Sleep | None = None) -> PollResult:
    """Look once at an account's conversations for replies; see the module's docstring."""
    started = clock.now()
    awaiting = await store.awaiting_replies(account_id)
    if not awaiting:  # nobody to hear from: nothing to read, and nothing missed
        await store.polled(account_id, started)
        return PollResult()
    last = await store.replies_polled(account_id)
    horizon = (last if last is not None else min(awaiting.values())) - POLL_OVERLAP
    reader = Reader(store, api, clock, account_id, sleep)
    replies: list[Reply] = []
    try:
        conversations = await reader.conversations(horizon)
        for conversation in conversations:
            for person in conversation.participants:
                if person not in awaiting:
                    continue
                first = awaiting[person]
                for message in await reader.messages(conversation.urn, first):
                    if message.by_owner or message.sent_at is None or not message.urn:
                        continue
                    if message.sender not in (None, person):
                        continue
                    replies.append(Reply(message.urn, person, message.text, message.sent_at))
    except _Unanswered as exc:
        replied = await store.record_replies(account_id, replies, "poll", clock.now()) if replies else []
        return PollResult(replied, str(exc))
    replied = await store.record_replies(account_id, replies, "poll", clock.now())
    await store.polled(account_id, started)
    return PollResult(replied)


@dataclass(frozen=True)
class Reconciled:
    unknown: Unknown
    found: bool | None  # None: too recent to tell, or the conversation could not be read
    detail: str


async def reconcile(
    store: Store, api: ApiClient, clock: Clock, unknowns: Sequence[Unknown], sleep: Sleep | None = None
) -> list[Reconciled]:
    """Look for each unknown delivery in its account's conversation with the recipient."""
    results: list[Reconciled] = []
    by_account: dict[str, list[Unknown]] = {}
    for unknown in unknowns:
        by_account.setdefault(unknown.account_id, []).append(unknown)
    for account_id, theirs in by_account.items():
        now = clock.now()
        ready = [u for u in theirs if u.claimed_at <= now - SETTLE]
        results += [Reconciled(u, None, TOO_RECENT) for u in theirs if u not in ready]
        if not ready:
            continue
        reader = Reader(store, api, clock, account_id, sleep)
        earliest = min(u.claimed_at for u in ready) - POLL_OVERLAP
        try:
            conversations = await reader.conversations(earliest)
            threads = {person: c.urn for c in conversations for person in c.participants}
            for unknown in ready:
                results.append(await _look_for(store, reader, clock, unknown, threads.get(unknown.profile_urn)))
        except _Unanswered as exc:
            done = {r.unknown for r in results}
            results += [Reconciled(u, None, f"conversations not read ({exc})") for u in ready if u not in done]
    return results


async def _look_for(store: Store, reader: Reader, clock: Clock, unknown: Unknown, thread: str | None) -> Reconciled:
    if thread is not None:
        for message in await reader.messages(thread, unknown.claimed_at):
            ours = message.by_owner and _same(message.text, unknown.message)
            if ours and message.sent_at is not None and message.sent_at >= unknown.claimed_at - POLL_OVERLAP:
                status = await store.confirm(unknown, message.sent_at, clock.now())
                return Reconciled(unknown, True, f"found: {status}")
    now = clock.now()
    await store.not_found(unknown, now)
    return Reconciled(unknown, False, "not in the conversation" if thread else "no conversation with them")


def _same(text: str, sent: str) -> bool:
    """The same message, whatever the API did to its whitespace."""
    return " ".join(text.split()) == " ".join(sent.split())
