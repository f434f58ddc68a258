"""Chaos: a faulty sandbox, a real runner killed with SIGKILL ten times, resumed until done.

Afterwards nobody was messaged twice, nobody was lost, no account went over its cap in any
window, each kill cost at most one `unknown` per account, the report agrees with what the sandbox
delivered, and the database is intact. On each engine.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from campaign_runner.sandbox import SEND_PATHS
from campaign_runner.store import DIED_IN_FLIGHT

from conftest import EXECUTABLE, max_in_window, query, start, statuses, urn, wait_for, write_campaign

RECIPIENTS, ACCOUNTS, KILLS = 200, ["acc_1", "acc_2", "acc_3", "acc_4"], 10
CAP, WINDOW = 20, 2.0
FAULTS = {
    "error_rate": 0.08,  # 500: retried with backoff
    "drop_rate": 0.03,  # delivered, no answer: unknown
    "slow_rate": 0.03,  # delivered, answered after the client's timeout: unknown
    "slow_delay": 2.0,
    "storm_rate": 0.02,  # 429 storms: the account holds
    "storm_length": 0.5,
    "bad_gateway_rate": 0.03,  # HTML 502: unknown
    "bad_headers_rate": 0.1,  # missing or mangled X-RateLimit-*: recorded as they came
    "portal_rate": 0.02,  # a 200 that is a captive portal's page: unknown, never sent
}


def test_kill_9_ten_times_under_faults(serve_sandbox, processes, tmp_path: Path, engine: str, database: str) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    context = f"seed {seed}"
    box, url = serve_sandbox(quota=CAP, quota_window=WINDOW, seed=seed, **FAULTS)
    path = write_campaign(
        tmp_path, accounts=ACCOUNTS, limit=f"{CAP}/{WINDOW:g}s",
        retry={"attempts": 3, "backoff": "50ms"},
        breaker={"failures": 3, "cooldown": "100ms", "pauses": 20},
        recipients=[{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(RECIPIENTS)],
    )  # fmt: skip
    db, log = database, tmp_path / "runner.log"
    args = ["--timeout", "1"]

    def done() -> int:
        return sum(s not in ("pending", "in_flight") for s in statuses(db).values())

    kills = 0
    process = start(processes, ["run", str(path), *args], db, url, log)
    while kills < KILLS:
        # Kill at a random moment once this process has recorded something, so every kill lands
        # while it sends (or, now and then, while it waits out a hold or a backoff).
        before = done()
        wait_for(lambda: done() > before or process.poll() is not None, 30)
        time.sleep(rng.uniform(0, 0.3))
        if process.poll() is not None:
            break
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        kills += 1
        process = start(processes, ["resume", *args], db, url, log)
    for _ in range(5):  # a paused or stopped account ends a run with work left: resume again
        code = process.wait(60)
        if code == 0 and "pending" not in statuses(db).values():
            break
        assert code in (0, 1), f"{context}\n{log.read_text()}"
        process = start(processes, ["resume", *args], db, url, log)
    assert kills == KILLS, context

    final = statuses(db)
    delivered = Counter(d.recipient for d in box.log)
    assert [r for r, n in delivered.items() if n > 1] == [], context  # nobody messaged twice
    assert sorted(final) == [urn(i) for i in range(RECIPIENTS)]
    assert set(final.values()) <= {"sent", "failed", "unknown", "skipped"}, context  # none lost
    assert set(delivered) <= {r for r, s in final.items() if s in ("sent", "unknown")}, context

    requests = [r for r in box.sends if r.endpoint in SEND_PATHS.values()]
    for account in ACCOUNTS:
        times = [r.at for r in requests if r.account_id == account]
        assert max_in_window(times, WINDOW) <= CAP, (context, account)
    # The only 429s are the storms': the runner never ran into the sandbox's own quota.
    assert {r.fault for r in requests if r.status == 429} <= {"storm"}, context
    faults = Counter(r.fault for r in requests if r.fault)
    assert faults.total() >= 20 and len(faults) >= 4, (context, faults)  # the faults were really on

    if engine == "sqlite":
        assert query(db, "PRAGMA integrity_check") == [("ok",)]
    died = query(
        db,
        "SELECT account_id, count(*) FROM recipients WHERE status = 'unknown' AND error = ? GROUP BY account_id",
        (DIED_IN_FLIGHT,),
    )
    assert all(count <= kills for _, count in died), (context, died)

    report = json.loads(
        subprocess.run(
            [EXECUTABLE, "report", "test-campaign", "--format", "json", "--db", db],
            capture_output=True, check=True, text=True,
        ).stdout
    )  # fmt: skip
    by_recipient = {d.recipient: d for d in box.log}
    sent = [row for row in report["recipients"] if row["status"] == "sent"]
    assert len(sent) == sum(s == "sent" for s in final.values())
    for row in sent:
        delivery = by_recipient[row["profile_urn"]]
        assert (row["account_id"], row["message"]) == (delivery.account_id, delivery.message), context
    assert len(sent) > RECIPIENTS / 2, context  # the faults are a minority: most went out
