"""What the durable bookkeeping of one send costs: the claim and the outcome, each a committed transaction.

    python bench/txn_cost.py [--count N] [--folder DIR]

Measured in this one process, with no HTTP at all, on a database of N pending recipients and one
account whose limit is out of the way:

* `commit`: a bare sqlite3 `UPDATE` + `COMMIT` in WAL mode, with synchronous FULL, NORMAL and OFF:
  FULL minus OFF is the fsync of the WAL that makes a commit survive a power cut;
* `thread trip`: one `SELECT 1` through the store's worker thread (the hand-over and the event
  loop's wake-up), which every store operation (one claim, one record) pays once;
* `claim + record`: `Store.claim` then `Store.record` of the runner, the two transactions every
  send makes, again under FULL, NORMAL and OFF (the pragma set on the store's connection after it
  opened; only to split the cost, the runner always uses FULL).

Prints a JSON object of milliseconds per operation.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from campaign_runner.guard import Judgement  # noqa: E402
from campaign_runner.outcome import Kind, Outcome, RateLimitHeaders  # noqa: E402
from campaign_runner.policy import settle  # noqa: E402
from campaign_runner.store import Claimed, Store  # noqa: E402

MODES = ("FULL", "NORMAL", "OFF")


def bare_commits(folder: Path, count: int, mode: str) -> float:
    """Milliseconds per UPDATE + COMMIT with the sqlite3 module alone."""
    path = folder / f"bare-{mode}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {mode}")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, status TEXT, updated_at REAL)")
        db.executemany("INSERT INTO t VALUES (?, 'pending', 0)", [(i,) for i in range(count)])
        started = time.perf_counter()
        for i in range(count):
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE t SET status = 'sent', updated_at = ? WHERE id = ?", (time.time(), i))
            db.execute("COMMIT")
        return (time.perf_counter() - started) / count * 1000
    finally:
        db.close()


async def round_trips(folder: Path, count: int) -> float:
    """Milliseconds per `SELECT 1` sent through the store's worker thread, as each store operation is."""
    path = folder / "roundtrip.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = await Store.open(path, time.time())
    try:
        conn = store._conn  # noqa: SLF001 - the bench times the connection the runner uses
        started = time.perf_counter()
        for _ in range(count):
            await store._run(conn.execute, "SELECT 1")  # noqa: SLF001
        return (time.perf_counter() - started) / count * 1000
    finally:
        await store.close()


async def claim_record(campaign_file: Path, folder: Path, count: int, mode: str) -> float:
    """Milliseconds per claim + record cycle of the runner's Store, one account, no HTTP."""
    db_path = folder / f"claims-{mode}.db"
    await common.preload_async(campaign_file, db_path)
    store = await Store.open(db_path, time.time())
    try:
        await store._run(store._conn.execute, f"PRAGMA synchronous = {mode}")  # noqa: SLF001 - to split the cost
        run_id = await store.begin_run("bench", time.time(), 70.0)
        name = "txn"
        account = common.account(0)
        outcome = Outcome(Kind.SENT, http_status=200, body='{"success": true}', rate_limit=RateLimitHeaders())
        started = time.perf_counter()
        for _ in range(count):
            now = time.time()
            claim = await store.claim(run_id, account, [name], now)
            assert isinstance(claim, Claimed), claim
            answered = time.time()
            await store.record(
                claim, settle(claim, outcome, Judgement(), started=now, now=answered, draw=random.uniform)
            )
        return (time.perf_counter() - started) / count * 1000
    finally:
        await store.close()


def measure(count: int, folder: Path) -> dict[str, float]:
    campaign_file = common.write_campaign(folder, "txn", count, 1)
    result: dict[str, float] = {}
    for mode in MODES:
        result[f"commit_{mode.lower()}_ms"] = bare_commits(folder, count, mode)
    result["thread_trip_ms"] = anyio.run(round_trips, folder, count)
    for mode in MODES:
        result[f"claim_record_{mode.lower()}_ms"] = anyio.run(claim_record, campaign_file, folder, count, mode)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--folder", type=Path, help="where the databases go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.folder:
        args.folder.mkdir(parents=True, exist_ok=True)
        result = measure(args.count, args.folder)
    else:
        with tempfile.TemporaryDirectory(prefix="txn-cost-") as folder:
            result = measure(args.count, Path(folder))
    print(json.dumps({name: round(value, 4) for name, value in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
