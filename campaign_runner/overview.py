"""Where every campaign and account of a database stands now: what `status` prints (and what a
dashboard would show). Assembled here from the store, so that the CLI only chooses the words."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .clock import iso
from .display import describe_account, describe_wait
from .outcome import Availability, Ending, Status, Wait
from .schedule import local_time
from .settings import CampaignSettings
from .store import AccountStatus, Forecast, Preparing, StepStats, Store

__all__ = ["AccountView", "CampaignView", "Overview", "overview", "status_json"]

CANNOT_SEND = (Availability.STOPPED, Availability.BLOCKED)  # until someone acts


@dataclass(frozen=True)
class AccountView:
    account_id: str
    found: AccountStatus  # the store's account status: limits, window use, holds
    state: Availability
    detail: str  # the state in words, times in the account's time zone
    timezone: str
    next_at: float  # its next send may go then (now, when it may go now)


@dataclass(frozen=True)
class CampaignView:
    settings: CampaignSettings
    counts: dict[Status, int]
    able: tuple[str, ...]  # its accounts that can send (not stopped, not blocked)
    forecast: Forecast | None  # the latest a run made, while recipients are pending
    preparing: Preparing = Preparing(0)  # lookups waiting, the group's members fetched
    steps: tuple[StepStats, ...] = ()  # per step and variant: sent, replied

    @property
    def finish(self) -> float | None:
        """The projected finish: the latest forecast's, while one of its accounts can send."""
        found = self.forecast
        if found is None or found.result != Ending.DONE or not self.able:
            return None
        return found.finish

    def overdue(self, now: float) -> bool:
        """The forecast's finish has passed with recipients still pending."""
        return self.finish is not None and self.finish < now


@dataclass(frozen=True)
class Overview:
    now: float
    campaigns: list[CampaignView]
    accounts: list[AccountView]


async def overview(store: Store, names: Sequence[str], now: float) -> Overview:
    """Campaigns `names` and every account they use, as they stand at `now`."""
    settings = [await store.campaign(name) for name in names]
    account_ids = sorted({a for c in settings for a in c.account_ids})
    # The limits in force now: those of the campaigns with work left, as the next run would see
    # them (a finished campaign's stricter limit binds nobody); an account of finished campaigns
    # only is shown with theirs.
    pacing = await store.pacing(account_ids, [], now)
    idle = [a for a in account_ids if a not in pacing]
    pacing |= await store.pacing(idle, names, now) if idle else {}
    accounts = []
    for account_id in account_ids:
        found = await store.account_status(account_id, pacing[account_id], now)
        schedules = found.pacing.schedules
        timezone = schedules[0].timezone if schedules else "UTC"
        state, detail = describe_account(found, now, timezone)
        accounts.append(AccountView(account_id, found, state, detail, timezone, max(found.next_at, now)))
    state_of = {a.account_id: a.state for a in accounts}
    campaigns = []
    for c in settings:
        counts = await store.counts(c.name)
        able = tuple(a for a in c.account_ids if a in pacing and state_of.get(a) not in CANNOT_SEND)
        forecast = await store.latest_forecast(c.name) if counts[Status.PENDING] else None
        steps = tuple(await store.step_stats(c.name))
        campaigns.append(CampaignView(c, counts, able, forecast, await store.preparing(c.name), steps))
    return Overview(now, campaigns, accounts)


def status_json(found: Overview) -> dict[str, Any]:
    """What `status --json` prints (and the dashboard serves): every campaign and account."""
    now = found.now
    campaigns = []
    for c in found.campaigns:
        tz, forecast = c.settings.timezone, c.forecast
        campaigns.append(
            {
                "name": c.settings.name,
                "counts": c.counts,
                "projected_finish": iso(c.finish),
                "projected_finish_local": local_time(c.finish, tz) if c.finish else None,
                "forecast": {
                    "made_at": iso(forecast.made_at),
                    "made_at_local": local_time(forecast.made_at, tz),
                    "result": forecast.result,
                    "pending": forecast.pending,
                    "overdue": c.overdue(now),
                }
                if forecast
                else None,
                "steps": [
                    {
                        "step": s.step,
                        "variant": s.variant,
                        "sent": s.sent,
                        "replied": s.replied,
                        "reply_rate": round(s.reply_rate, 4),
                    }
                    for s in c.steps
                ],
                "accounts_able": len(c.able),
                "lookups_waiting": c.preparing.lookups,
                "audience": {
                    "fetched": c.preparing.fetched,
                    "wanted": c.preparing.wanted,
                    "group_total": c.preparing.total,
                    "done": c.preparing.done,
                }
                if c.preparing.audience
                else None,
            }
        )
    accounts = []
    for a in found.accounts:
        status = a.found
        accounts.append(
            {
                "account_id": a.account_id or None,
                "state": a.state,
                "detail": a.detail,
                "limits": str(status.pacing),
                "warmup_day": status.pacing.warmup_day,
                "warmup_cap_today": status.pacing.warmup_cap,
                "window_used": status.window_used,
                "window_cap": status.window_cap,
                "next_send_at": iso(a.next_at),
                "next_send_local": local_time(a.next_at, a.timezone),
                "waiting_for": None if status.reason is Wait.READY else describe_wait(status.reason),
                "hold_until": iso(status.hold_until) if status.hold_until > now else None,
                "stopped_reason": status.stopped_reason,
            }
        )
    return {"campaigns": campaigns, "accounts": accounts}
