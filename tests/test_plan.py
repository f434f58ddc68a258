"""`plan`: the real scheduler on a virtual clock, set against real runs and against itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
import pytest

from campaign_runner.clock import parse_iso
from campaign_runner.config import load_campaign
from campaign_runner.plan import make_plan

from conftest import urn, write_campaign


def recipients(n: int) -> list[dict[str, str]]:
    return [{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(n)]


def test_plan_predicts_a_real_run_within_ten_percent(cli, serve_sandbox, tmp_path: Path) -> None:
    # Seconds between sends, so the real run's latency (a few ms each) stays well inside the 10%.
    path = write_campaign(tmp_path, accounts=["acc_1", "acc_2"], limit="1/1s", recipients=recipients(12))
    code, out, _ = cli("plan", str(path), "--json")
    assert code == 0
    forecast = json.loads(out)
    planned = _epoch(forecast["finish"]) - _epoch(forecast["start"])
    assert forecast["sent"] == 12
    assert sum(day["total"] for day in forecast["days"]) == 12
    box, url = serve_sandbox()
    assert cli("run", str(path), base_url=url)[0] == 0
    first = min(r.at for r in box.sends)
    real = max(r.at for r in box.sends) - first
    assert planned == pytest.approx(real, rel=0.10)


def test_plan_writes_nothing_and_starts_from_the_databases_state(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox()
    path = write_campaign(tmp_path, limit="1000/1s", recipients=recipients(5))
    assert cli("run", str(path), base_url=url)[0] == 0
    db = tmp_path / "runs.db"
    before = db.read_bytes()
    path = write_campaign(tmp_path, limit="1/1h", recipients=recipients(8))
    code, out, err = cli("plan", str(path), "--start", "2027-03-01T09:00")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "plan for test-campaign: 3 messages to send over 1 account, from 2027-03-01 09:00 UTC (UTC)"
    assert lines[1:] == [
        "date        day  acc_1  total",
        "2027-03-01  Mon      3      3",
        "projected finish: 2027-03-01 11:00 UTC, after 1 sending day (3 sent)",
    ]
    assert db.read_bytes() == before
    assert len(box.log) == 5


def _epoch(text: str) -> float:
    from campaign_runner.clock import parse_iso

    value = parse_iso(text)
    assert value is not None
    return value


def test_plan_of_an_older_database_writes_nothing_to_it(cli, tmp_path: Path) -> None:
    import contextlib
    import sqlite3

    from campaign_runner.migrate import discover, migrate

    db = tmp_path / "runs.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        migrate(conn, 1.0, discover()[:1])  # a database of the first schema
    before = db.read_bytes()
    code, out, _ = cli("plan", str(write_campaign(tmp_path, recipients=recipients(3))))
    assert code == 0 and "projected finish" in out
    assert db.read_bytes() == before


def test_a_plan_whose_schedules_never_meet_ends_and_says_so(cli, tmp_path: Path) -> None:
    # An unfinished campaign sends from acc_1 only 09:00-10:00; the new one only 13:00-14:00.
    morning = write_campaign(tmp_path, "a.yaml", name="morning", schedule={"hours": "09:00-10:00"},
                             recipients=recipients(3))  # fmt: skip
    assert cli("run", str(morning), "--sandbox", "--no-wait")[0] == 0
    afternoon = write_campaign(tmp_path, "b.yaml", name="afternoon", schedule={"hours": "13:00-14:00"},
                               recipients=recipients(3))  # fmt: skip
    code, out, err = cli("plan", str(afternoon))
    assert code == 0
    assert "3 recipients are still unsent two years ahead" in err


@pytest.mark.parametrize("warmup", [None, {"start": 3, "increase": 2}])
def test_a_long_plan_repeats_its_settled_week_exactly_as_the_full_simulation_runs(tmp_path: Path, warmup) -> None:
    """Once two weeks send alike day by day, `plan` repeats the last one instead of simulating the
    rest; what it predicts is what the full simulation predicts, day by day and to the second."""
    path = write_campaign(
        tmp_path, accounts=["acc_1", {"id": "acc_2", "limit": "7/day"}], limit="10/day", recipients=recipients(600),
        schedule={"hours": "09:00-17:00", "days": ["mon", "tue", "wed", "thu", "fri"], "timezone": "Europe/Berlin"},
        warmup=warmup,
    )  # fmt: skip
    campaign = load_campaign(path)
    start = parse_iso("2027-03-03T10:30:00+01:00")  # a Wednesday, mid-window: a partial first day
    quick = anyio.run(make_plan, campaign, start, None, True)
    full = anyio.run(make_plan, campaign, start, None, False)
    assert quick.settled_from is not None and full.settled_from is None
    assert (quick.per_day, quick.sent, quick.result) == (full.per_day, full.sent, full.result)
    assert quick.finish == pytest.approx(full.finish, abs=1.0)  # across a daylight-saving change, too


def test_plan_weekly_sums_the_days_by_week(cli, tmp_path) -> None:
    people = [{"profile_urn": urn(i)} for i in range(60)]
    path = write_campaign(tmp_path, accounts=["acc_1"], limit="10/day", recipients=people,
                          schedule={"hours": "09:00-17:00", "days": ["mon", "tue", "wed", "thu", "fri"]})  # fmt: skip
    code, out, _ = cli("plan", str(path), "--start", "2027-03-03T08:00", "--weekly")
    assert code == 0
    assert out.splitlines()[1:] == [
        "week of           acc_1  total",
        "2027-03-01   W09     30     30",
        "2027-03-08   W10     30     30",
        "projected finish: 2027-03-10 16:12 UTC, after 6 sending days (60 sent)",
    ]


def test_a_plan_sweeps_away_the_scratch_copies_of_processes_that_are_gone(cli, tmp_path: Path, monkeypatch) -> None:
    """A runner killed while it forecast leaves its copy of the database (recipients and messages)
    in the temporary folder: the next plan or forecast removes it, and never a live process's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = tmp_path / f"campaign-runner-plan-{gone.pid}-x1y2"
    left.mkdir()
    (left / "plan.db").write_bytes(b"a copy of someone's database")
    live = tmp_path / f"campaign-runner-plan-{os.getpid()}-z3w4"
    live.mkdir()
    unrelated = tmp_path / "campaign-runner-planner"
    unrelated.mkdir()
    code, _, _ = cli("plan", str(write_campaign(tmp_path, limit="10/day")))
    assert code == 0
    assert not left.exists() and live.exists() and unrelated.exists()
    assert {p.name for p in tmp_path.glob("campaign-runner-plan-*")} == {live.name}  # its own copy is gone too
