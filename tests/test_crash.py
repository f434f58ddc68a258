"""A real `campaign-runner` process, killed: nothing is sent twice, nothing is lost."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import start, statuses, urn, wait_for, write_campaign


def test_sigkill_mid_campaign_then_resume(serve_sandbox, processes, tmp_path: Path) -> None:
    box, url = serve_sandbox(typing_delay=0.1)
    accounts = ["acc_1", "acc_2"]
    path = write_campaign(
        tmp_path, endpoint="send-group-with-typing", accounts=accounts, limit="20/1s",
        recipients=[{"profile_urn": urn(i)} for i in range(40)],
    )  # fmt: skip
    db, log = tmp_path / "crash.db", tmp_path / "runner.log"
    rng = random.Random(7)
    kills = 0
    process = start(processes, ["run", str(path)], db, url, log)
    for _ in range(3):
        # Kill once this process is sending: a request is in flight most of the time (typing delay).
        sent_before = sum(s == "sent" for s in statuses(db).values())
        wait_for(
            lambda: sum(s == "sent" for s in statuses(db).values()) > sent_before or process.poll() is not None, 30
        )
        time.sleep(rng.uniform(0.05, 0.6))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        kills += 1
        process = start(processes, ["resume"], db, url, log)
    assert process.wait(60) == 0, log.read_text()
    assert kills >= 1

    final = statuses(db)
    delivered = Counter(d.recipient for d in box.log)
    assert [r for r, n in delivered.items() if n > 1] == []  # nobody messaged twice
    assert sorted(final) == [urn(i) for i in range(40)]
    assert set(final.values()) <= {"sent", "unknown"}  # none lost, none left pending
    unknown = [r for r, s in final.items() if s == "unknown"]
    assert len(unknown) <= len(accounts) * kills
    assert {r for r, s in final.items() if s == "sent"} <= set(delivered)
    assert set(delivered) <= {r for r, s in final.items() if s in ("sent", "unknown")}
    times = sorted(d.received_at for d in box.log)
    assert max(sum(1 for t in times[i:] if t <= start + 1.0) for i, start in enumerate(times)) <= 20 * len(accounts)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        per_account = conn.execute(
            "SELECT account_id, count(*) FROM recipients WHERE status = 'unknown' GROUP BY account_id"
        ).fetchall()
    assert all(count <= kills for _, count in per_account)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_the_request_in_flight_finish_and_records_it(serve_sandbox, processes, tmp_path: Path, sig) -> None:
    box, url = serve_sandbox(typing_delay=1.0)
    path = write_campaign(tmp_path, endpoint="send-group-with-typing", limit="100/1s")
    db, log = tmp_path / "term.db", tmp_path / "runner.log"
    process = start(processes, ["run", str(path)], db, url, log)
    wait_for(lambda: "in_flight" in statuses(db).values(), 30)
    process.send_signal(sig)
    assert process.wait(20) == 130, log.read_text()
    final = statuses(db)
    assert "in_flight" not in final.values() and "unknown" not in final.values()
    assert sorted(r for r, s in final.items() if s == "sent") == sorted(d.recipient for d in box.log)
    assert len(box.log) >= 1 and "pending" in final.values()
    text = log.read_text()
    assert "stopping: no new sends; waiting for requests in flight" in text
    assert "interrupted: run `campaign-runner resume` to continue" in text


def test_a_killed_runner_nobody_has_reaped_is_dead(serve_sandbox, processes, tmp_path: Path) -> None:
    """Under a supervisor that does not reap its children, a killed runner stays a zombie: `kill(pid,
    0)` succeeds and its start time is unchanged. Its claim must still be recovered as unknown."""
    box, url = serve_sandbox(typing_delay=30.0)
    path = write_campaign(tmp_path, endpoint="send-group-with-typing", limit="100/1s")
    db, log = tmp_path / "zombie.db", tmp_path / "runner.log"
    doomed = start(processes, ["run", str(path)], db, url, log)
    wait_for(lambda: "in_flight" in statuses(db).values(), 30)
    doomed.send_signal(signal.SIGKILL)
    # Not reaped: this test process is its parent and does not wait for it yet.
    wait_for(lambda: Path(f"/proc/{doomed.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 10)
    box.config.typing_delay = 0.0
    survivor = start(processes, ["resume"], db, url, log)
    assert survivor.wait(30) == 0, log.read_text()
    final = statuses(db)
    assert list(final.values()).count("unknown") == 1 and list(final.values()).count("sent") == 4
    doomed.wait(10)


def test_a_sequence_stops_promptly_and_a_killed_one_never_sends_a_step_twice(
    serve_sandbox, processes, tmp_path: Path
) -> None:
    """A campaign with follow-ups (so a look at replies runs beside the sends): SIGTERM ends it at
    once, not at the next look; SIGKILL mid-request, then resume, sends no step twice."""
    box, url = serve_sandbox(typing_delay=0.5)
    steps = [{"message": "Hello {{ first_name }}"}, {"after": "1s", "message": "Following up"}]
    path = write_campaign(tmp_path, endpoint="send-group-with-typing", limit="100/1s", message=None, steps=steps,
                          precheck="none")  # fmt: skip
    db, log = tmp_path / "seq.db", tmp_path / "runner.log"
    first = start(processes, ["run", str(path)], db, url, log)
    wait_for(lambda: "in_flight" in statuses(db).values(), 30)
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 130, log.read_text()
    second = start(processes, ["resume"], db, url, log)
    wait_for(lambda: "in_flight" in statuses(db).values(), 30)
    second.send_signal(signal.SIGKILL)
    second.wait(10)
    box.config.typing_delay = 0.0
    third = start(processes, ["resume"], db, url, log)
    assert third.wait(60) == 0, log.read_text()
    final = statuses(db)
    assert list(final.values()).count("unknown") <= 1 and "pending" not in final.values()
    per_person: dict[str, list[str]] = {}
    for delivery in box.log:
        per_person.setdefault(delivery.recipient, []).append(delivery.message)
    assert all(len(set(got)) == len(got) for got in per_person.values()), per_person
    assert sum(len(got) == 2 for got in per_person.values()) >= 4
