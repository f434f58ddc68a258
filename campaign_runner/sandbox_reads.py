"""The sandbox's read endpoints: a group's members, profiles, conversation pre-checks, account health.

`People` is the sandbox's world of people: one seeded group (any group id or URL names it) of
`group_size` members, a few of them its owner and managers; a profile for every public identifier
(the members', and any other, under a URN derived from it); a conversation with a seeded share of
them, and with everyone an account has messaged through the sandbox; and each account's health.
It keeps the vendor's per-account budgets (members fetched, unique profiles looked up with a
six-hour cache) over sliding windows, answering 429 when one is spent. Requests are checked
against the OpenAPI schemas (no unknown fields, the documented types). The conversations
themselves, their messages and replies, are the inbox's (`sandbox_inbox`).
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from campaign_runner.clock import iso

READ_PATHS = ("/groups/members", "/groups/members-by-url", "/profile", "/account/status")
EXISTS_PREFIX = "/conversations/exists/"
MEMBER_STATUSES = ("OWNER", "MANAGER", "MEMBER")
GROUP_URL = re.compile(r"^https?://(?:www\.)?linkedin\.com/groups/(\d+)/?$")
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman")
PROFILE_CACHE = 6 * 3600.0  # a profile looked up this recently is served from cache, free


@dataclass(frozen=True)
class Answer:
    status: int
    payload: Any
    rate: tuple[str, int, int, float] | None = None  # action, limit, used, reset: the X-RateLimit-* headers


def member_urn(index: int) -> str:
    return f"urn:li:fsd_profile:ACoAAmember{index:06d}"


def member_slug(index: int) -> str:
    return f"member-{index:06d}"


def urn_of(slug: str) -> str:
    """The URN of the profile with this public identifier: a member's own, else one derived from it."""
    found = re.fullmatch(r"member-(\d{6})", slug)
    if found:
        return member_urn(int(found.group(1)))
    return "urn:li:fsd_profile:ACoAA" + hashlib.sha256(slug.encode()).hexdigest()[:24]


class People:
    """What the read endpoints answer from. `config` is the Sandbox's (read on every request)."""

    def __init__(self, config: Any, now: Callable[[], float], talked: Callable[[str | None, str], bool]):
        self.config = config
        self._now = now
        self._talked = talked  # whether an account has messaged a URN: their conversation exists since
        self._lock = threading.Lock()
        self._members: dict[str | None, deque[tuple[float, int]]] = {}  # account -> (at, members) fetched
        self._profiles: dict[str | None, dict[str, float]] = {}  # account -> slug -> when it counted
        self.served: list[tuple[float, int]] = []  # (when, members) of every page of members given

    # --- the world ------------------------------------------------------------------------

    def member(self, index: int) -> dict[str, Any]:
        status = "OWNER" if index == 0 else "MANAGER" if index % 100 == 1 else "MEMBER"
        first, last = FIRST_NAMES[index % len(FIRST_NAMES)], LAST_NAMES[index % len(LAST_NAMES)]
        if self.config.member_shape == "profile" or (self.config.member_shape == "mixed" and index % 2):
            return {
                "profileId": member_urn(index).rsplit(":", 1)[1],
                "fullName": f"{first} {last}",
                "profileUrl": f"https://www.linkedin.com/in/{member_slug(index)}/",
                "headline": f"Member {index}",
                "membershipStatus": status,
            }
        return {
            "entityUrn": member_urn(index),
            "publicIdentifier": member_slug(index),
            "firstName": first,
            "lastName": last,
            "headline": f"Member {index}",
            "profilePicture": None,
            "membershipStatus": status,
        }

    def has_conversation(self, slug: str, account: str | None = None) -> bool:
        if slug in self.config.conversations or self._talked(account, urn_of(slug)):
            return True
        share = self.config.conversation_rate
        return share > 0 and random.Random(f"{self.config.seed}:{slug}").random() < share

    # --- the endpoints --------------------------------------------------------------------

    def answer(self, method: str, path: str, query: dict[str, str], body: dict[str, Any] | None) -> Answer:
        if path.startswith(EXISTS_PREFIX):
            if method != "GET":
                return Answer(405, {"error": "Method not allowed"})
            return self._exists(unquote(path[len(EXISTS_PREFIX) :]), query)
        if path == "/account/status":
            if method != "GET":
                return Answer(405, {"error": "Method not allowed"})
            return self._status(query)
        if method != "POST":
            return Answer(405, {"error": "Method not allowed"})
        if body is None:
            return Answer(400, {"success": False, "error": "Request body must be a JSON object"})
        if path == "/profile":
            return self._profile(body)
        return self._group_members(body, by_url=path.endswith("-by-url"))

    def _account(self, value: object) -> tuple[str | None, Answer | None]:
        if value is None:
            return None, None
        if not isinstance(value, str) or not value:
            return None, invalid("accountId")
        return value, None

    def _status(self, query: dict[str, str]) -> Answer:
        account, bad = self._account(query.get("accountId"))
        if bad:
            return bad
        config = self.config
        if account is not None and account in config.unknown_accounts:
            return Answer(404, {"success": False, "error": "Account not found"})
        status = config.account_status.get(account, "AVAILABLE")
        return Answer(
            200,
            {
                "id": account or "default-account",
                "firstName": "Sandbox",
                "lastName": account or "default",
                "publicId": f"sandbox-{account or 'default'}",
                "status": status,
                "enabled": account not in config.disabled_accounts,
                "hasTokens": account not in config.no_tokens,
                "lastUsed": None,
            },
        )

    def _exists(self, slug: str, query: dict[str, str]) -> Answer:
        account, bad = self._account(query.get("accountId"))
        if bad:
            return bad
        if not slug:
            return Answer(404, {"success": False, "error": "Account or profile not found"})
        if slug in self.config.missing_profiles:
            return Answer(404, {"success": False, "error": "Account or profile not found"})
        found = self.has_conversation(slug, account)
        return Answer(
            200,
            {
                "success": True,
                "hasConversation": found,
                "conversationUrn": f"urn:li:fsd_conversation:{hashlib.sha256(slug.encode()).hexdigest()[:16]}"
                if found
                else None,
                "profileUrn": urn_of(slug),
                "accountId": account or "default-account",
            },
        )

    def _profile(self, body: dict[str, Any]) -> Answer:
        unknown = sorted(set(body) - {"accountId", "profileId"})
        if unknown:
            return _unknown_keys(unknown)
        account, bad = self._account(body.get("accountId"))
        if bad:
            return bad
        slug = body.get("profileId")
        if not isinstance(slug, str) or not slug:
            return Answer(400, {"success": False, "error": "profileId is required"})
        config, now = self.config, self._now()
        with self._lock:
            seen = self._profiles.setdefault(account, {})
            for old in [s for s, at in seen.items() if at + config.profile_quota_window <= now]:
                del seen[old]
            used = len(seen)
            cached = slug in seen and seen[slug] + PROFILE_CACHE > now
            rate = ("PROFILE", config.profile_quota, used, now + config.profile_quota_window)
            if not cached:
                if used >= config.profile_quota:
                    return _spent(
                        "PROFILE", used, config.profile_quota, min(seen.values()) + config.profile_quota_window
                    )
                seen[slug] = now
                rate = ("PROFILE", config.profile_quota, used + 1, min(seen.values()) + config.profile_quota_window)
        if slug in config.missing_profiles:
            return Answer(400, {"success": False, "error": f"Profile {slug} not found"}, rate)
        index = re.fullmatch(r"member-(\d{6})", slug)
        if index:
            member = self.member(int(index.group(1)))
            first, last = member.get("firstName"), member.get("lastName")
        else:
            first, last = slug.split("-")[0].title(), "Example"
        profile = {
            "entityUrn": urn_of(slug),
            "publicIdentifier": slug,
            "firstName": first or "Member",
            "lastName": last or "Example",
            "headline": "Sandbox profile",
            "connectionDegree": "DISTANCE_2",
        }
        return Answer(
            200,
            {
                "success": True,
                "profileId": slug,
                "accountId": account or "default-account",
                "cached": cached,
                "profile": profile,
            },
            rate,
        )

    def _group_members(self, body: dict[str, Any], by_url: bool) -> Answer:
        ref = "groupUrl" if by_url else "groupId"
        allowed = {"accountId", ref, "count", "start", "membershipStatuses", "typeaheadQuery"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            return _unknown_keys(unknown)
        account, bad = self._account(body.get("accountId"))
        if bad:
            return bad
        group = body.get(ref)
        if not isinstance(group, str) or not group:
            return Answer(400, {"success": False, "error": f"{ref} is required"})
        if by_url:
            found = GROUP_URL.match(group)
            if not found:
                return Answer(400, {"success": False, "error": "groupUrl is not a LinkedIn group URL"})
            group = found.group(1)
        count, start = body.get("count", 50), body.get("start", 0)
        statuses = body.get("membershipStatuses", list(MEMBER_STATUSES))
        query = body.get("typeaheadQuery")
        if not _integer(count) or not 1 <= count <= 100:
            return invalid("count")
        if not _integer(start) or start < 0:
            return invalid("start")
        if not isinstance(statuses, list) or not all(s in MEMBER_STATUSES for s in statuses):
            return invalid("membershipStatuses")
        if query is not None and not isinstance(query, str):
            return invalid("typeaheadQuery")
        config, now = self.config, self._now()
        matching = [
            i
            for i in range(config.group_size)
            if self.member(i)["membershipStatus"] in statuses
            and (not query or query.lower() in f"{self.member(i).get('firstName', '')} {i}".lower())
        ]
        page = matching[start : start + count]
        with self._lock:
            fetched = self._members.setdefault(account, deque())
            while fetched and fetched[0][0] + config.members_quota_window <= now:
                fetched.popleft()
            used = sum(n for _, n in fetched)
            reset = (fetched[0][0] if fetched else now) + config.members_quota_window
            if page and used + len(page) > config.members_quota:
                return _spent("GROUP_MEMBERS", used, config.members_quota, reset)
            if page:
                fetched.append((now, len(page)))
                self.served.append((now, len(page)))
            used += len(page)
        return Answer(
            200,
            {
                "success": True,
                "accountId": account or "default-account",
                "groupId": group,
                "members": [self.member(i) for i in page],
                "pagination": {"start": start, "count": len(page), "total": len(matching)},
                "hasMore": start + len(page) < len(matching),
                "count": len(page),
            },
            ("GROUP_MEMBERS", config.members_quota, used, reset),
        )


def _spent(action: str, used: int, limit: int, reset: float) -> Answer:
    """The 429 of a spent budget, as the vendor words it, with when it frees up."""
    error = f"Rate limit exceeded for {action}: {used}/{limit} used"
    return Answer(429, {"success": False, "error": error, "holdUntil": iso(reset)}, (action, limit, used, reset))


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def invalid(name: str) -> Answer:
    """The 400 of a field or parameter of the wrong type or value, in the API's (zod) validation shape."""
    issue = {"code": "invalid_type", "path": [name], "message": f"Invalid value for {name}"}
    return Answer(400, {"success": False, "error": {"issues": [issue]}})


def _unknown_keys(keys: list[str]) -> Answer:
    names = ", ".join(f"'{key}'" for key in keys)
    issue = {
        "code": "unrecognized_keys",
        "keys": keys,
        "path": [],
        "message": f"Unrecognized key(s) in object: {names}",
    }
    return Answer(400, {"success": False, "error": {"issues": [issue]}})
