"""Quick versions of benchmarks B1 and B3 (BENCHMARKS.md), so a bad performance regression fails CI.

The bounds are loose, for a noisy 2-core machine, yet each fails if the runner gets a few times
slower than it is today: B1 compares the runner with a bare httpx loop timed in the same test
(the machine's noise hits both), B3 bounds the cost per recipient of loading, startup excluded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import common
from bench.run import BARE

COUNT, ACCOUNTS = 1_000, 20


def send_rate(contender: str, template: Path, folder: Path) -> tuple[float, float]:
    """Sends per second over the sandbox's span, and CPU seconds per 1,000 sends."""
    with common.sandbox() as box:
        if contender == "runner":
            db = common.copy_db(template, folder / "sending.db")
            argv = [common.RUNNER, "resume", "bench", "--db", str(db), "--base-url", box.url]
            usage = common.run_child(argv, env={"CONNECTSAFELY_API_KEY": common.API_KEY}, stdout_to_null=True)
        else:
            argv = [sys.executable, BARE, box.url, "--count", str(COUNT), "--accounts", str(ACCOUNTS)]
            usage = common.run_child(argv + ["--api-key", common.API_KEY])
        deliveries = box.log()
    assert usage.code == 0, usage.stderr
    assert len(deliveries) == COUNT
    assert len({d["recipient"] for d in deliveries}) == COUNT  # each recipient once
    return COUNT / common.send_span(deliveries), usage.cpu / COUNT * 1000


def test_quick_b1_runner_keeps_up_with_a_bare_httpx_loop(tmp_path: Path) -> None:
    campaign = common.write_campaign(tmp_path, "bench", COUNT, ACCOUNTS)
    template = tmp_path / "template.db"
    common.preload(campaign, template)
    ratios: list[tuple[float, float]] = []
    for _ in range(2):  # a second round only when the first one misses (a noisy neighbour)
        runner_rate, runner_cpu = send_rate("runner", template, tmp_path)
        bare_rate, bare_cpu = send_rate("async", template, tmp_path)
        ratios.append((runner_rate / bare_rate, runner_cpu / bare_cpu))
        if ratios[-1][0] >= 0.5 and ratios[-1][1] <= 2.0:
            break
    rate_ratio, cpu_ratio = max(r[0] for r in ratios), min(r[1] for r in ratios)
    # Measured at about 0.9x the bare loop's rate and 1.0x its CPU at this size (BENCHMARKS.md).
    assert rate_ratio >= 0.5, f"runner sends at {rate_ratio:.2f}x the bare loop's rate"
    assert cpu_ratio <= 2.0, f"runner uses {cpu_ratio:.2f}x the bare loop's CPU per send"


def load(folder: Path, box_url: str, count: int) -> common.Usage:
    """`run --no-wait` of a fresh campaign of `count` CSV rows at 1/day: it loads them all and sends one."""
    campaign = common.write_campaign(folder, f"load{count}", count, 1, limit="1/day")
    db = common.copy_db(Path("/dev/null"), folder / f"load{count}.db")  # a new, empty file each time
    argv = [common.RUNNER, "run", str(campaign), "--db", str(db), "--no-wait"]
    usage = common.run_child(argv + ["--base-url", box_url], env={"CONNECTSAFELY_API_KEY": common.API_KEY})
    assert usage.code == 0, usage.stderr
    assert f"loaded load{count}: {count} new" in usage.stdout
    return usage


@pytest.mark.parametrize("rows", [20_000])
def test_quick_b3_loading_a_csv_costs_little_per_recipient(tmp_path: Path, rows: int) -> None:
    with common.sandbox() as box:
        small = min((load(tmp_path, box.url, 1_000) for _ in range(2)), key=lambda u: u.wall)
        large = min((load(tmp_path, box.url, rows) for _ in range(2)), key=lambda u: u.wall)
    per_row_us = (large.wall - small.wall) / (rows - 1_000) * 1e6
    per_1000_mb = (large.rss_mb - small.rss_mb) / (rows - 1_000) * 1000
    # B3's target, 100,000 rows in 5 s, allows ~45 us per row over startup. Memory: the file is
    # read as it goes, so a row costs only its URN in the set of those seen (~0.1 MB per 1,000;
    # holding every row, as loading once did, cost ~0.9 MB). Figures in BENCHMARKS.md; the bounds
    # leave room for a noisy machine.
    assert per_row_us <= 100, f"loading costs {per_row_us:.0f} us per CSV row"
    assert per_1000_mb <= 0.5, f"loading takes {per_1000_mb:.2f} MB per 1,000 CSV rows"
