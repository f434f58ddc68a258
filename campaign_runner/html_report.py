"""`report --format html`: one self-contained page of a campaign, made to be mailed and opened offline.

The page carries everything it shows: Chart.js (bundled from `static/`, never fetched), the
figures, and the recipients as gzip-compressed JSON that the page unpacks with the browser's own
`DecompressionStream`, so 100,000 recipients stay within a few megabytes. Its Content-Security-
Policy lets it load nothing from anywhere. Jinja2 escapes every text it writes into the HTML; the
data goes in a `<script type="application/json">`, with `<` escaped so no value can close it.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import datetime
from importlib import resources
from itertools import accumulate
from typing import Any, TextIO

import jinja2

from .clock import iso
from .display import describe_finish
from .outcome import Status
from .overview import overview
from .report import neutralise
from .schedule import local_time, zone
from .store import Store

STATUSES = [status.value for status in Status]
HEADLINE = ("sent", "replied", "failed", "unknown", "skipped", "suppressed", "pending", "in_flight")
URN_PREFIX = "urn:li:fsd_profile:"

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("campaign_runner", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)


def _reason(outcome: str | None, http_status: int | None) -> str:
    """An attempt's outcome in the words of the outcomes chart."""
    names = {
        "sent": "sent",
        "rejected": "refused",
        "rate_limited": "429 held",
        "unauthorized": "401 key refused",
        "misrouted": "wrong address",
        "server_error": "500 server error",
        "not_sent": "no connection",
        "unknown": "unknown outcome",
        None: "in flight",
    }
    word = names.get(outcome, outcome or "in flight")
    if outcome == "rejected" and http_status:
        return f"{http_status} refused"
    return word


async def write_html(store: Store, name: str, out: TextIO, now: float) -> int:
    """Write the page of campaign `name` as it stands at `now`; return how many recipients it lists."""
    page, figures = await gather(store, name, now)
    out.write(render(page, figures))
    return page["total"]


def render(page: dict[str, Any], figures: dict[str, Any], live: bool = False) -> str:
    """The page; `live`: served by the dashboard, which it asks for fresh figures as it goes."""
    return _ENVIRONMENT.get_template("report.html.j2").render(
        **page,
        live=live,
        chart_js=resources.files("campaign_runner").joinpath("static/chart.umd.min.js").read_text("utf-8"),
        data_json=json.dumps(figures, separators=(",", ":")).replace("<", "\\u003c"),
    )


async def gather(store: Store, name: str, now: float, recipients: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the page of campaign `name` shows at `now`: its text (headline, accounts) and its
    figures (the charts' data and, with `recipients`, every recipient, packed)."""
    async with store.snapshot():
        found = await overview(store, [name], now)
        (campaign,) = found.campaigns
        tz = campaign.settings.timezone
        local = zone(tz)
        per_day: dict[str, Counter[str]] = defaultdict(Counter)
        rows: list[list[Any]] = []
        errors: dict[str, int] = {}
        accounts: dict[str, int] = {}
        async for row in store.report_rows(name) if recipients else _nothing():
            account = row.account_id or ""  # none yet (or the key's default account)
            if row.status == Status.SENT and row.sent_at is not None:
                day = datetime.fromtimestamp(row.sent_at, local).strftime("%Y-%m-%d")
                per_day[day][account or "(default)"] += 1
            error = row.error or ""
            rows.append(
                [
                    (row.profile_urn or "").removeprefix(URN_PREFIX),
                    row.public_identifier or "",
                    STATUSES.index(row.status),
                    accounts.setdefault(account, len(accounts)),
                    int(row.sent_at) if row.sent_at else 0,  # to the second, as the report's times
                    errors.setdefault(neutralise(error), len(errors)),
                ]
            )
        outcomes = await store.attempt_outcomes(name)
        first = await store.first_forecast(name)
        # The first forecast counted only what was left to send: it starts from what was sent by then.
        sent_before = sum(1 for row in rows if row[4] and first and row[4] < first.made_at) if first else 0
        uses = {a.account_id: await store.account_use(a.account_id, now) for a in found.accounts}
    days = sorted(per_day)
    account_names = sorted({a for counts in per_day.values() for a in counts})
    reasons: Counter[str] = Counter()
    for outcome, http_status, count in outcomes:
        reasons[_reason(outcome, http_status)] += count
    forecast_days = sorted(first.per_day) if first else []
    # Without the recipients (the dashboard's frequent refresh), nothing that needs each of them.
    data: dict[str, Any] = {
        "days": days,
        "perDay": {a: [per_day[d][a] for d in days] for a in account_names},
        "cumulative": list(accumulate(sum(per_day[d].values()) for d in days)),
        "forecast": {
            "days": forecast_days,
            "cumulative": [sent_before + n for n in accumulate(first.per_day[d] for d in forecast_days)]
            if first
            else [],
            "madeAt": local_time(first.made_at, tz) if first else None,
        },
        "reasons": {"labels": list(reasons), "counts": list(reasons.values())},
        "statuses": STATUSES,
        "accounts": list(accounts),
        "errors": list(errors),
        "timezone": tz,
        "recipients": base64.b64encode(gzip.compress(_compact(rows), mtime=0)).decode("ascii") if recipients else None,
    }
    if not recipients:
        data |= {"days": None, "perDay": None, "cumulative": None}
    counts = {status: campaign.counts[status] for status in HEADLINE}
    finish = describe_finish(campaign.finish, campaign.forecast.result, tz) if campaign.forecast else None
    if campaign.forecast and campaign.finish is not None and campaign.overdue(now):  # as `status` says it
        made = local_time(campaign.forecast.made_at, tz)
        finish = f"the forecast of {made} saw the last send at {local_time(campaign.finish, tz)}, now past"
    if not campaign.counts[Status.PENDING]:
        finish = "finished" if not campaign.counts[Status.IN_FLIGHT] else None
    accounts = [_account_row(a, uses[a.account_id]) for a in found.accounts]
    data |= {
        "counts": counts,
        "finish": finish or "no forecast yet",
        "accountRows": accounts,
        "made": local_time(now, tz),
    }
    page = {
        "name": name,
        "made": local_time(now, tz),
        "made_utc": iso(now),
        "timezone": tz,
        "counts": counts,
        "total": sum(campaign.counts.values()),
        "finish": finish,
        "accounts": accounts,
    }
    return page, data


async def _nothing() -> AsyncIterator[Any]:
    return
    yield


def _compact(rows: list[list[Any]]) -> bytes:
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _account_row(view: Any, use: Any) -> dict[str, Any]:
    status = view.found
    health = use.health or {}
    flags = [str(health.get("status"))] if health else []
    if health.get("enabled") is False:
        flags.append("disabled")
    if health.get("hasTokens") is False:
        flags.append("no session")
    return {
        "id": view.account_id or "(default account)",
        "limits": str(status.pacing),
        "used": f"{status.window_used}/{status.window_cap}",
        "messages": use.messages,
        "state": view.state.value,
        "detail": view.detail,
        "hold": f"until {iso(use.hold_until)}: {use.hold_reason}" if use.hold_until else "",
        "stopped": use.stopped_reason or "",
        "health": " ".join(flags) if flags else "not asked",
    }
