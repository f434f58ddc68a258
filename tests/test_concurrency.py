"""Two real runners on one database (each engine) and one campaign at once: they share the work safely."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

from campaign_runner.sandbox import SEND_PATHS
from campaign_runner.store import DIED_IN_FLIGHT

from conftest import max_in_window, query, start, statuses, urn, wait_for, write_campaign

ACCOUNTS, CAP, WINDOW = ["acc_1", "acc_2"], 10, 1.0


def campaign(tmp_path: Path, count: int) -> Path:
    return write_campaign(
        tmp_path, endpoint="send-group-with-typing", accounts=ACCOUNTS, limit=f"{CAP}/{WINDOW:g}s",
        recipients=[{"profile_urn": urn(i)} for i in range(count)],
    )  # fmt: skip


def check_shared_safely(box, db: str, count: int) -> None:
    delivered = Counter(d.recipient for d in box.log)
    assert [r for r, n in delivered.items() if n > 1] == []  # nobody twice
    final = statuses(db)
    assert sorted(final) == [urn(i) for i in range(count)]
    assert set(delivered) <= {r for r, s in final.items() if s in ("sent", "unknown")}
    requests = [r for r in box.sends if r.endpoint in SEND_PATHS.values()]
    for account in ACCOUNTS:  # the limit holds across both processes
        assert max_in_window([r.at for r in requests if r.account_id == account], WINDOW) <= CAP
    assert not [r for r in requests if r.status == 429]


def test_two_runs_at_once_share_the_work(serve_sandbox, processes, tmp_path: Path, database: str) -> None:
    box, url = serve_sandbox(typing_delay=0.05, quota=CAP, quota_window=WINDOW)
    path, db, log = campaign(tmp_path, 60), database, tmp_path / "runner.log"
    first = start(processes, ["run", str(path)], db, url, log)
    second = start(processes, ["run", str(path)], db, url, log)
    assert first.wait(60) == 0, log.read_text()
    assert second.wait(60) == 0, log.read_text()
    check_shared_safely(box, db, 60)
    assert set(statuses(db).values()) == {"sent"}
    runs = [row[0] for row in query(db, "SELECT DISTINCT run_id FROM attempts")]
    assert len(runs) == 2  # both did part of the work


def test_a_run_killed_beside_another_is_taken_over(serve_sandbox, processes, tmp_path: Path, database: str) -> None:
    box, url = serve_sandbox(typing_delay=0.2, quota=CAP, quota_window=WINDOW)
    path, db, log = campaign(tmp_path, 30), database, tmp_path / "runner.log"
    doomed = start(processes, ["run", str(path)], db, url, log)
    wait_for(lambda: "in_flight" in statuses(db).values(), 30)
    survivor = start(processes, ["run", str(path)], db, url, log)
    wait_for(lambda: list(statuses(db).values()).count("sent") >= 5, 30)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(10)
    # The survivor finishes the campaign and, finding the dead run's claims, marks them unknown.
    assert survivor.wait(60) == 0, log.read_text()
    check_shared_safely(box, db, 30)
    final = statuses(db)
    assert set(final.values()) <= {"sent", "unknown"}
    [(died,)] = query(db, "SELECT count(*) FROM recipients WHERE error = ?", (DIED_IN_FLIGHT,))
    assert died == list(final.values()).count("unknown") <= len(ACCOUNTS)


def test_the_keys_limit_holds_across_processes_whose_files_differ(
    serve_sandbox, processes, tmp_path: Path, database: str
) -> None:
    """A strict campaign in one process, a loose one in another: the strictest limit of every
    campaign with work left binds both, because each claim reads it from the database."""
    box, url = serve_sandbox(typing_delay=0.02)
    strict = write_campaign(
        tmp_path, "strict.yaml", name="strict", accounts=["acc_s1", "acc_s2"], api_limit="3/2s",
        recipients=[{"profile_urn": urn(i)} for i in range(15)],
    )  # fmt: skip
    loose = write_campaign(
        tmp_path, "loose.yaml", name="loose", accounts=["acc_l1", "acc_l2"], api_limit="1000/1s",
        recipients=[{"profile_urn": urn(i)} for i in range(100, 106)],
    )  # fmt: skip
    db, log = database, tmp_path / "runner.log"
    first = start(processes, ["run", str(strict)], db, url, log)
    wait_for(lambda: "sent" in statuses(db).values(), 30)  # the strict campaign is in the database
    second = start(processes, ["run", str(loose)], db, url, log)
    assert first.wait(60) == 0, log.read_text()
    assert second.wait(60) == 0, log.read_text()
    assert len(box.log) == 21
    # While the strict campaign has work left, its limit binds the loose one's requests too, the
    # reads (each account's health check) with the sends.
    strict_until = max(r.at for r in box.sends if r.account_id.startswith("acc_s"))
    during = [r for r in box.requests if r.at <= strict_until]
    assert any(r.account_id.startswith("acc_l") for r in during if r in box.sends)  # they did overlap
    assert max_in_window([r.at for r in during], 2.0) <= 3
