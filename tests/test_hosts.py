"""Runners on several hosts sharing one PostgreSQL database.

Each runner is a real `campaign-runner` process with a host identity of its own
(CAMPAIGN_RUNNER_HOST), so that it cannot see the others' processes: a dead one's claims are
recovered through its lapsed lease, never through its pid. The sandbox's log says what really
went out, and when.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from campaign_runner.sandbox import SEND_PATHS
from campaign_runner.store import DIED_IN_FLIGHT

from conftest import max_in_window, query, start, statuses, urn, wait_for, write_campaign

pytestmark = pytest.mark.timeout(300)

HOSTS = ("host-a", "host-b", "host-c")
ACCOUNTS = [f"acc_{i:03d}" for i in range(200)]
RECIPIENTS, KILLS = 600, 6
CAP, WINDOW = 2, 2.0  # each account's limit
KEY_CAP, KEY_WINDOW = 60, 1.0  # the API key's, every account and host together
HEARTBEAT = "0.5"  # seconds: a dead runner's lease lapses within a few seconds, not half a minute
FAULTS = {
    "error_rate": 0.05,  # 500: retried with backoff
    "drop_rate": 0.02,  # delivered, no answer: unknown
    "storm_rate": 0.01,  # 429 storms: the account holds
    "storm_length": 0.5,
    "bad_headers_rate": 0.1,
}


def campaign(folder: Path, recipients: int = RECIPIENTS, accounts: list[str] = ACCOUNTS, **more) -> Path:
    return write_campaign(
        folder, accounts=accounts, **more, limit=f"{CAP}/{WINDOW:g}s", api_limit=f"{KEY_CAP}/{KEY_WINDOW:g}s",
        retry={"attempts": 3, "backoff": "50ms"}, breaker={"failures": 3, "cooldown": "100ms", "pauses": 20},
        recipients=[{"profile_urn": urn(i)} for i in range(recipients)],
    )  # fmt: skip


def host(name: str, **more: str) -> dict[str, str]:
    return {"CAMPAIGN_RUNNER_HOST": name, "CAMPAIGN_RUNNER_HEARTBEAT": HEARTBEAT, **more}


def in_flight(db: str, pid: int) -> int:
    """Requests on the wire of the runner with that pid."""
    return query(
        db,
        "SELECT count(*) FROM recipients r JOIN runs ON runs.id = r.run_id"
        " WHERE r.status = 'in_flight' AND runs.pid = ?",
        (pid,),
    )[0][0]


def check_windows(box, accounts: list[str], context: str) -> None:
    """No account over its cap in any window, nor the key over its own, by the sandbox's clock."""
    requests = [r for r in box.sends if r.endpoint in SEND_PATHS.values()]
    for account in accounts:
        assert max_in_window([r.at for r in requests if r.account_id == account], WINDOW) <= CAP, (context, account)
    assert max_in_window([r.at for r in box.requests], KEY_WINDOW) <= KEY_CAP, context


def test_three_hosts_killed_at_random_message_nobody_twice(
    serve_sandbox, processes, tmp_path: Path, postgres, cli_postgres: str
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    context = f"seed {seed}"
    # Each message takes 0.2 s to deliver, so that a kill always finds requests on the wire.
    box, url = serve_sandbox(quota=CAP, quota_window=WINDOW, seed=seed, typing_delay=0.2, **FAULTS)
    path, log = campaign(tmp_path, endpoint="send-group-with-typing"), tmp_path / "runners.log"
    db = cli_postgres
    args = ["--timeout", "1"]

    def done() -> int:
        return sum(s not in ("pending", "in_flight") for s in statuses(db).values())

    # The first runner loads the campaign; the others join it (`resume` names no file).
    runners = {HOSTS[0]: start(processes, ["run", str(path), *args], db, url, log, host(HOSTS[0]))}
    wait_for(lambda: done() > 0, 60)
    for name in HOSTS[1:]:
        runners[name] = start(processes, ["resume", *args], db, url, log, host(name))
    killed: list[int] = []  # pids
    lease_taken = False
    while len(killed) < KILLS:
        before = done()
        wait_for(lambda: done() > before + 10 or all(p.poll() is not None for p in runners.values()), 60)
        if all(p.poll() is not None for p in runners.values()):
            break
        time.sleep(rng.uniform(0, 0.5))
        name = rng.choice([n for n, p in runners.items() if p.poll() is None] or list(runners))
        victim = runners[name]
        # Once, half-way: a runner killed while it has requests on the wire is left dead until its
        # lease lapses and another host takes its claims.
        left_dead = not lease_taken and len(killed) >= KILLS // 2
        if left_dead:
            wait_for(lambda: in_flight(db, victim.pid) > 0 or victim.poll() is not None, 60)
        if victim.poll() is None:
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(10)
            killed.append(victim.pid)
            if left_dead and in_flight(db, victim.pid) > 0:
                taken = "SELECT count(*) FROM runs WHERE pid = ? AND taken_by IS NOT NULL AND taken_by != host"
                wait_for(lambda: query(db, taken, (victim.pid,))[0][0] > 0, 60)
                lease_taken = True
        runners[name] = start(processes, ["resume", *args], db, url, log, host(name))
    for _ in range(6):  # a paused or stopped account ends a run with work left: resume again
        codes = {name: process.wait(120) for name, process in runners.items()}
        if "pending" not in statuses(db).values() and "in_flight" not in statuses(db).values():
            break
        assert set(codes.values()) <= {0, 1}, f"{context}\n{log.read_text()[-3000:]}"
        runners = {name: start(processes, ["resume", *args], db, url, log, host(name)) for name in HOSTS}
    assert len(killed) >= KILLS // 2, context

    final = statuses(db)
    delivered = Counter(d.recipient for d in box.log)
    assert [r for r, n in delivered.items() if n > 1] == [], context  # nobody messaged twice
    assert sorted(final) == sorted(urn(i) for i in range(RECIPIENTS)), context
    assert set(final.values()) <= {"sent", "failed", "unknown"}, (context, Counter(final.values()))
    assert set(delivered) <= {r for r, s in final.items() if s in ("sent", "unknown")}, context
    check_windows(box, ACCOUNTS, context)
    assert {r.fault for r in box.sends if r.status == 429} <= {"storm"}, context  # never the sandbox's own quota

    # Each kill cost at most one `unknown` per account the dead run held, and only a dead run's.
    lost = query(
        db,
        "SELECT runs.pid, a.account_id, count(*) FROM attempts a JOIN runs ON runs.id = a.run_id"
        " WHERE a.error = ? GROUP BY runs.pid, a.account_id",
        (DIED_IN_FLIGHT,),
    )
    assert all(count <= 1 for _, _, count in lost), (context, lost)
    assert lost, context  # the kills did cut requests off
    # The runner left dead for longer than its lease: the other hosts took its claims.
    assert query(db, "SELECT count(*) FROM runs WHERE taken_by != host")[0][0] >= 1, context
    assert {pid for pid, _, _ in lost} <= set(killed), (context, lost)
    hosts = {name for (name,) in query(db, "SELECT DISTINCT host FROM runs")}
    assert hosts == set(HOSTS), hosts
    shares = Counter(h for (h,) in query(db, "SELECT runs.host FROM attempts a JOIN runs ON runs.id = a.run_id"))
    assert all(shares[name] > 0 for name in HOSTS), shares  # every host did part of the work


@pytest.mark.parametrize("skews", [("30", "-30"), ("-30", "0")], ids=["fast-and-slow", "slow"])
def test_a_host_whose_clock_is_30s_off_keeps_every_window(
    serve_sandbox, processes, tmp_path: Path, postgres, cli_postgres: str, skews: tuple[str, str]
) -> None:
    """Every claim is timed by the database's clock: a host 30 s ahead does not see the others'
    sends as half a minute old, nor does one 30 s behind see its own as not yet made."""
    accounts = ["acc_1", "acc_2"]
    box, url = serve_sandbox(quota=CAP, quota_window=WINDOW)
    path, db, log = campaign(tmp_path, 40, accounts), cli_postgres, tmp_path / "runners.log"
    first = start(processes, ["run", str(path)], db, url, log, host("fast", CAMPAIGN_RUNNER_CLOCK_SKEW=skews[0]))
    wait_for(lambda: "sent" in statuses(db).values(), 60)
    second = start(processes, ["resume"], db, url, log, host("slow", CAMPAIGN_RUNNER_CLOCK_SKEW=skews[1]))
    assert first.wait(120) == 0, log.read_text()
    assert second.wait(120) == 0, log.read_text()
    assert set(statuses(db).values()) == {"sent"}
    assert len(box.log) == 40
    check_windows(box, accounts, f"skews {skews}")
    assert not [r for r in box.sends if r.status == 429]  # the sandbox never had to refuse one
    both = Counter(h for (h,) in query(db, "SELECT runs.host FROM attempts a JOIN runs ON runs.id = a.run_id"))
    assert both["fast"] > 0 and both["slow"] > 0, both  # they did overlap
