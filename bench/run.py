"""The benchmark suite of the issue (B1-B5), plus the cost of the two committed transactions per send.

    python bench/run.py [all|b1|b2|b3|b4|b5|txn ...] [--rounds N] [--quick] [--work DIR] [--json FILE]

Each figure comes from the real `campaign-runner` console script run as a child process against a
sandbox in a process of its own; each comparison alternates its contenders within one session,
`--rounds` times, and quotes medians. `--quick` divides every size by 10 (a smoke run, not the
issue's figures). Prints a Markdown table: one row per figure, with its target and PASS/MISS.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import fmt, median, verdict  # noqa: E402

BARE = str(common.BENCH / "bare_loop.py")
TXN = str(common.BENCH / "txn_cost.py")


@dataclass
class Row:
    key: str
    what: str
    target: str
    measured: str
    ratio: str = ""
    result: str = ""  # PASS, MISS, or empty for a figure reported without a target

    def markdown(self) -> str:
        return f"| {self.key} | {self.what} | {self.target} | {self.measured} | {self.ratio} | {self.result} |"


HEADER = "| # | what | target | measured (median) | ratio | result |\n| --- | --- | --- | --- | --- | --- |"


@dataclass
class Settings:
    work: Path
    rounds: int
    scale: float

    def size(self, n: int) -> int:
        return max(int(n * self.scale), 1)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- B1 / B2: the sending phase against bare httpx loops ------------------------------------------


@dataclass
class Send:
    """One sending measurement: the contender's process, and what the sandbox saw."""

    contender: str
    sent: int
    span: float  # first request received to last message delivered, in the sandbox's log
    wall: float  # the contender's process, start to exit
    cpu: float  # the contender's CPU seconds
    rss_mb: float
    sandbox_cpu: float  # the sandbox's CPU seconds meanwhile
    server_cpu: float = 0.0  # on PostgreSQL: the server's CPU seconds meanwhile
    hosts: str = ""  # on PostgreSQL: how the sends split over the runners' hosts, from the attempts table

    @property
    def rate(self) -> float:
        return self.sent / self.span if self.span > 0 else 0.0

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu / self.sent * 1000 if self.sent else float("inf")

    @property
    def server_cpu_per_1000(self) -> float:
        return self.server_cpu / self.sent * 1000 if self.sent else float("inf")

    @property
    def sandbox_busy(self) -> float:
        """Share of the sending span the sandbox spent on the CPU: near 1.0, it is the bottleneck."""
        return self.sandbox_cpu / self.span if self.span > 0 else 0.0


PG_HOSTS = {"runner-pg": 1, "runner-pg-3": 3}  # the runner on PostgreSQL: contender -> runners at once


@dataclass
class Postgres:
    """The throwaway PostgreSQL server of a benchmark, and the preloaded database each round copies."""

    server: Any  # tests/pgserver.py's PgServer, started
    template: str
    copies: int = 0

    def copy(self) -> tuple[str, str]:
        """A fresh copy of the template (CREATE DATABASE ... TEMPLATE): its name and URL."""
        self.copies += 1
        name = f"{self.template}_{self.copies}"
        return name, self.server.create_database(name, template=self.template)

    def sends_per_host(self, url: str) -> str:
        """The sent attempts per run host, e.g. `host-a 6,702 / host-b 6,650 / ...`."""
        import psycopg

        query = ("SELECT r.host, count(*) FROM attempts a JOIN runs r ON r.id = a.run_id WHERE a.outcome = 'sent'"
                 " GROUP BY r.host ORDER BY r.host")  # fmt: skip
        try:
            with psycopg.connect(url) as con:
                return " / ".join(f"{host} {n:,}" for host, n in con.execute(query))
        except psycopg.Error as error:
            return f"? ({error})"

    def diagnose(self, url: str, missing: list[str]) -> str:
        """What the database says of recipients the sandbox never received: recipients per status,
        then for some of them their row, their attempts, and how long their account had been idle
        before (its connection to the API, that is: one per account)."""
        import psycopg

        lines = []
        try:
            with psycopg.connect(url) as con:
                counts = con.execute("SELECT status, count(*) FROM recipients GROUP BY status ORDER BY status")
                lines.append("recipients: " + ", ".join(f"{status} {n:,}" for status, n in counts))
                for urn in missing[:5]:
                    row = con.execute("SELECT id, status, account_id, error FROM recipients WHERE profile_urn = %s",
                                      (urn,)).fetchone()  # fmt: skip
                    lines.append(f"{urn}: (id, status, account, error) = {row}")
                    tried = con.execute(
                        "SELECT a.run_id, a.outcome, a.error, a.started_at - (SELECT max(b.finished_at) FROM attempts b"
                        " WHERE b.account_id = a.account_id AND b.finished_at <= a.started_at) FROM attempts a"
                        " WHERE a.recipient_id = %s ORDER BY a.id", (row[0] if row else None,))  # fmt: skip
                    lines += [f"  attempt of run {r}: {outcome}, {error!r}, account idle {idle or 0:.2f} s before"
                              for r, outcome, error, idle in tried]  # fmt: skip
        except psycopg.Error as error:
            lines.append(f"? ({error})")
        return "\n".join(lines)


@contextmanager
def postgres_server() -> Iterator[Any]:
    """A started throwaway PostgreSQL server, stopped on the way out whatever happens; None, with a
    word on stderr, when the machine has no PostgreSQL binaries."""
    try:
        server = common.pg_server()
    except RuntimeError as error:
        log(f"no PostgreSQL rows: {error}")
        yield None
        return
    with server:
        log(f"PostgreSQL {server.version} at {server.url_for('postgres', hide_password=True)}")
        yield server


def send_once(
    s: Settings, contender: str, template_db: Path, count: int, accounts: int, delay: float, pg: Postgres | None = None
) -> Send:
    copy = pg.copy() if contender in PG_HOSTS and pg is not None else None
    try:
        with common.sandbox(delay) as box:
            before = box.cpu()
            server_before = common.pg_cpu(pg.server) if copy and pg else 0.0
            if contender == "runner":
                db = common.copy_db(template_db, s.work / "sending.db")
                argv = [common.RUNNER, "resume", "bench", "--db", str(db), "--base-url", box.url]
                usage = common.run_child(argv, env={"CONNECTSAFELY_API_KEY": common.API_KEY}, stdout_to_null=True)
            elif contender in PG_HOSTS:
                if copy is None:
                    raise RuntimeError(f"{contender}: no PostgreSQL server")
                argv = [common.RUNNER, "resume", "bench", "--db", copy[1], "--base-url", box.url]
                timeout = max(600, count / 10)  # slower than SQLite: allow down to 10 sends/s
                if PG_HOSTS[contender] == 1:
                    env = {"CONNECTSAFELY_API_KEY": common.API_KEY}
                    usage = common.run_child(argv, env=env, stdout_to_null=True, timeout=timeout)
                else:
                    usage = together(argv, PG_HOSTS[contender], timeout)
            else:
                argv = [sys.executable, BARE, box.url, "--count", str(count), "--accounts", str(accounts),
                        "--mode", contender, "--api-key", common.API_KEY]  # fmt: skip
                usage = common.run_child(argv)
            sandbox_cpu = box.cpu() - before
            server_cpu = common.pg_cpu(pg.server) - server_before if copy and pg else 0.0
            deliveries = box.log()
        if usage.stderr.strip():
            log(f"{contender} said on stderr (exit {usage.code}):\n{usage.stderr[-4000:]}")
        # Each recipient delivered exactly once, or the figure means nothing.
        times = Counter(d["recipient"] for d in deliveries)
        twice = sorted(r for r, n in times.items() if n > 1)
        never = [common.urn(n) for n in range(count) if common.urn(n) not in times]
        if usage.code != 0 or twice or never:
            state = f"\n{pg.diagnose(copy[1], never)}" if copy and pg else ""
            raise RuntimeError(f"{contender}: exit {usage.code}, {len(deliveries)} deliveries for {count} recipients:"
                               f" {len(twice)} delivered more than once {twice[:5]}, {len(never)} never {never[:5]};"
                               f" {usage.stderr}{state}")  # fmt: skip
        hosts = pg.sends_per_host(copy[1]) if copy and pg else ""
    finally:
        if copy and pg:
            pg.server.drop_database(copy[0])
    span = common.send_span(deliveries)
    sent = len(deliveries)
    return Send(contender, sent, span, usage.wall, usage.cpu, usage.rss_mb, sandbox_cpu, server_cpu, hosts)


def together(argv: list[str], hosts: int, timeout: float) -> common.Usage:
    """`hosts` runners started at once, each with a host name of its own (`CAMPAIGN_RUNNER_HOST`): as
    one contender, the longest wall time, the sum of their CPU, the largest peak RSS."""
    names = [f"host-{chr(ord('a') + h)}" for h in range(hosts)]
    env = {"CONNECTSAFELY_API_KEY": common.API_KEY}
    usages = common.run_children([(argv, {**env, "CAMPAIGN_RUNNER_HOST": name}) for name in names], timeout=timeout)
    failed = [(name, u) for name, u in zip(names, usages, strict=True) if u.code != 0]
    return common.Usage(
        max(u.wall for u in usages), sum(u.cpu for u in usages), max(u.rss_mb for u in usages),
        failed[0][1].code if failed else 0,
        stderr="".join(f"\n[{name}, exit {u.code}]\n{u.stderr}" for name, u in zip(names, usages, strict=True)
                       if u.code != 0 or u.stderr.strip()),
    )  # fmt: skip


def compare(
    s: Settings,
    name: str,
    count: int,
    accounts: int,
    delay: float,
    contenders: list[str],
    references: tuple[str, ...] = (),
    server: Any = None,
) -> dict[str, list[Send]]:
    """`contenders` alternate, `s.rounds` times; `references` (figures quoted for context, not
    judged) run once, in the first round. `server`: a started PostgreSQL server, for the contenders
    of PG_HOSTS; the campaign is preloaded into a database of its own there too."""
    campaign = common.write_campaign(s.work / name, "bench", count, accounts)
    template = s.work / name / "template.db"
    common.preload(campaign, template)
    pg = None
    if server is not None:
        pg = Postgres(server, f"{name}_template")
        common.preload(campaign, server.create_database(pg.template))
    results: dict[str, list[Send]] = {c: [] for c in [*contenders, *references]}
    for round_ in range(s.rounds):
        order = contenders if round_ % 2 == 0 else list(reversed(contenders))
        for contender in [*order, *(references if round_ == 0 else ())]:
            result = send_once(s, contender, template, count, accounts, delay, pg)
            on_pg = f", server cpu {result.server_cpu:.2f}s, sends per host: {result.hosts}" if result.hosts else ""
            log(f"{name} round {round_ + 1} {contender}: {result.rate:,.0f}/s, span {result.span:.2f}s,"
                f" wall {result.wall:.2f}s, cpu {result.cpu:.2f}s, rss {result.rss_mb:.0f} MB,"
                f" sandbox busy {result.sandbox_busy:.0%}{on_pg}")  # fmt: skip
            results[contender].append(result)
    return results


def med(sends: list[Send], field: Callable[[Send], float]) -> float:
    return median([field(x) for x in sends])


LABELS = {
    "runner": "`campaign-runner resume`",
    "async": "bare loop, one shared `httpx.AsyncClient`",
    "async-per-account": "bare loop, one `httpx.AsyncClient` per account",
    "sync": "naive synchronous `httpx.Client` loop",
    "runner-pg": "`campaign-runner resume` on PostgreSQL, one host",
    "runner-pg-3": "three `campaign-runner resume` at once on one PostgreSQL database, one host name each",
}


def b1(s: Settings) -> list[Row]:
    count, accounts = s.size(20_000), min(s.size(200), 200)
    contenders = ["runner", "async", "async-per-account", "sync"]
    r = compare(s, "b1", count, accounts, 0.0, contenders[:2], references=tuple(contenders[2:]))
    rate = {c: med(r[c], lambda x: x.rate) for c in contenders}
    cpu = {c: med(r[c], lambda x: x.cpu_per_1000) for c in contenders}
    busy = {c: med(r[c], lambda x: x.sandbox_busy) for c in contenders}
    what = f"{count:,} recipients over {accounts} accounts, no typing delay"
    rows = [
        Row("B1", f"{what}: sends/s, runner vs bare shared-client loop", "≥ 0.8×",
            f"{fmt(rate['runner'], 0)}/s vs {fmt(rate['async'], 0)}/s", f"{rate['runner'] / rate['async']:.2f}×",
            verdict(rate["runner"] >= 0.8 * rate["async"])),
        Row("B1", "CPU s per 1,000 sends, runner vs bare shared-client loop", "≤ 1.5×",
            f"{fmt(cpu['runner'])} s vs {fmt(cpu['async'])} s", f"{cpu['runner'] / cpu['async']:.2f}×",
            verdict(cpu["runner"] <= 1.5 * cpu["async"])),
    ]  # fmt: skip
    for c in ("async-per-account", "sync"):
        rows.append(
            Row("B1", f"{LABELS[c]}: sends/s; CPU s per 1,000", "(reference)",
                f"{fmt(rate[c], 0)}/s; {fmt(cpu[c])} s", f"runner {rate['runner'] / rate[c]:.2f}×", "")
        )  # fmt: skip
    ceiling = max(contenders, key=lambda c: rate[c])
    rows.append(
        Row("B1", "sandbox: CPU busy share during each contender's sending span", "not the bottleneck",
            "; ".join(f"{c} {busy[c]:.0%}" for c in contenders),
            f"ceiling seen {fmt(rate[ceiling], 0)}/s ({ceiling})",
            verdict(busy["runner"] < 0.9 and busy["async"] < 0.9))
    )  # fmt: skip
    return rows


def b1_postgres(s: Settings) -> list[Row]:
    """B1's campaign on PostgreSQL, one host and three, beside the SQLite runner of the same session.
    Not in the default set: at full size it takes about half an hour (`bench/run.py b1pg`)."""
    count, accounts = s.size(20_000), min(s.size(200), 200)
    with postgres_server() as server:
        if server is None:
            return [
                Row("B1", "`campaign-runner resume` on PostgreSQL", "(reference)", "not run: no PostgreSQL", "", "")
            ]
        r = compare(s, "b1pg", count, accounts, 0.0, ["runner", *PG_HOSTS], server=server)
    rate = {c: med(sends, lambda x: x.rate) for c, sends in r.items()}
    cpu = {c: med(sends, lambda x: x.cpu_per_1000) for c, sends in r.items()}
    rows = [
        Row("B1", f"{count:,} recipients over {accounts} accounts: SQLite runner of the same session, sends/s;"
            " CPU s per 1,000", "(reference)", f"{fmt(rate['runner'], 0)}/s; {fmt(cpu['runner'])} s", "", "")
    ]  # fmt: skip
    for c in PG_HOSTS:
        server_cpu = med(r[c], lambda x: x.server_cpu_per_1000)
        rows.append(
            Row("B1", f"{LABELS[c]}: sends/s; CPU s per 1,000 sends (the runners'; the PostgreSQL server's)",
                "(reference)", f"{fmt(rate[c], 0)}/s; {fmt(cpu[c])} s; server {fmt(server_cpu)} s",
                f"{rate[c] / rate['runner']:.2f}×; {cpu[c] / cpu['runner']:.2f}× SQLite runner", "")
        )  # fmt: skip
    return rows


def b2(s: Settings) -> list[Row]:
    count, accounts, delay = s.size(2_000), min(s.size(200), 200), 0.2
    r = compare(s, "b2", count, accounts, delay, ["runner"], references=("async",))
    ideal = count / accounts * delay
    wall = med(r["runner"], lambda x: x.wall)
    span = med(r["runner"], lambda x: x.span)
    bare = med(r["async"], lambda x: x.span)
    return [
        Row("B2", f"{count:,} recipients over {accounts} accounts, 200 ms typing delay: `resume` wall time",
            f"≤ 1.3 × {ideal:.1f} s = {1.3 * ideal:.2f} s", f"{fmt(wall)} s (sending span {fmt(span)} s)",
            f"{wall / ideal:.2f}× ideal", verdict(wall <= 1.3 * ideal)),
        Row("B2", "bare shared-client loop, same requests: sending span", "(reference)", f"{fmt(bare)} s",
            f"{bare / ideal:.2f}× ideal", ""),
    ]  # fmt: skip


# --- B3: loading ------------------------------------------------------------------------------


def b3(s: Settings) -> list[Row]:
    count = s.size(100_000)
    folder = s.work / "b3"
    files = {
        "csv": common.write_campaign(folder, "loadcsv", count, 1, limit="1/day"),
        "yaml": common.write_campaign(folder, "loadyaml", count, 1, limit="1/day", inline=True),
    }
    runs: dict[str, list[common.Usage]] = {"csv": [], "yaml": [], "validate-csv": []}
    with common.sandbox() as box:
        for round_ in range(s.rounds):
            order = ["csv", "yaml", "validate-csv"]
            for kind in order if round_ % 2 == 0 else reversed(order):
                if kind == "validate-csv":
                    usage = common.run_child([common.RUNNER, "validate", str(files["csv"])])
                else:
                    db = folder / f"{kind}.db"
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{db}{suffix}").unlink(missing_ok=True)
                    # --no-wait with limit 1/day: load everything, send one message, stop.
                    argv = [common.RUNNER, "run", str(files[kind]), "--db", str(db), "--base-url", box.url, "--no-wait"]
                    usage = common.run_child(argv, env={"CONNECTSAFELY_API_KEY": common.API_KEY})
                    if f"loaded {files[kind].stem}: {count} new" not in usage.stdout:
                        raise RuntimeError(f"b3 {kind}: {usage.stdout} {usage.stderr}")
                if usage.code != 0:
                    raise RuntimeError(f"b3 {kind}: exit {usage.code}: {usage.stderr}")
                log(f"b3 round {round_ + 1} {kind}: {usage.wall:.2f}s, cpu {usage.cpu:.2f}s, rss {usage.rss_mb:.0f} MB")
                runs[kind].append(usage)
    wall = {k: median([u.wall for u in v]) for k, v in runs.items()}
    rss = {k: median([u.rss_mb for u in v]) for k, v in runs.items()}
    return [
        Row("B3", f"load {count:,} recipients from CSV (`run --no-wait`, 1 send): wall; peak RSS",
            "≤ 5 s; ≤ 150 MB", f"{fmt(wall['csv'])} s; {fmt(rss['csv'], 0)} MB", "",
            verdict(wall["csv"] <= 5 and rss["csv"] <= 150)),
        Row("B3", f"load {count:,} recipients from an inline YAML list (libyaml): wall; peak RSS", "(reported)",
            f"{fmt(wall['yaml'])} s; {fmt(rss['yaml'], 0)} MB", f"{wall['yaml'] / wall['csv']:.2f}× CSV", ""),
        Row("B3", f"`validate` of the {count:,}-row CSV campaign (parse + render, no database): wall; peak RSS",
            "(reference)", f"{fmt(wall['validate-csv'])} s; {fmt(rss['validate-csv'], 0)} MB", "", ""),
    ]  # fmt: skip


# --- B4: a big campaign nearly done -----------------------------------------------------------


def build_b4(s: Settings, count: int, done: int, accounts: int) -> Path:
    """A `count`-recipient campaign, 150/day per account, with its first `done` recipients sent two
    days ago or more (each with its attempt row, as a real run leaves them)."""
    folder = s.work / "b4"
    campaign = common.write_campaign(folder, "bench", count, accounts, limit="150/day")
    db = folder / "template.db"
    common.preload(campaign, db)
    now = time.time()
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("BEGIN")
        ids = [row[0] for row in con.execute("SELECT id FROM recipients ORDER BY id LIMIT ?", (done,))]
        start = now - 2 * 86400 - len(ids) * 2.0  # one send every 2 s, ending two days ago
        rows = []
        for i, rid in enumerate(ids):
            at = start + i * 2.0
            rows.append((rid, common.account(i % accounts), at))
        con.execute("INSERT INTO runs (id, pid, host, command, stale_after, started_at, ended_at)"
                    " VALUES (1, 1, 'bench', 'run', 130, ?, ?)", (start, start + len(ids) * 2.0))  # fmt: skip
        con.executemany(
            "UPDATE recipients SET status = 'sent', account_id = ?, attempts = 1, http_status = 200, sent_at = ?,"
            " updated_at = ? WHERE id = ?",
            [(acc, at, at, rid) for rid, acc, at in rows],
        )
        con.executemany(
            "INSERT INTO attempts (recipient_id, run_id, account_id, endpoint, started_at, finished_at, slot_at,"
            " outcome, http_status, latency, response_body) VALUES (?, 1, ?, ?, ?, ?, ?, 'sent', 200, 0.2, ?)",
            [(rid, acc, common.ENDPOINT, at - 0.2, at, at, '{"success":true}') for rid, acc, at in rows],
        )
        con.executemany(
            "INSERT INTO accounts (id, tat) VALUES (?, ?)", [(common.account(a), start) for a in range(accounts)]
        )
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return db


def b4(s: Settings) -> list[Row]:
    count, accounts = s.size(100_000), min(s.size(200), 200)
    done = count - count // 100
    template = build_b4(s, count, done, accounts)
    db = s.work / "b4" / "measured.db"
    first: list[float] = []
    first_sandbox: list[float] = []
    status: list[float] = []
    report: list[float] = []
    html: list[float] = []
    html_size: list[float] = []
    page = s.work / "b4" / "report.html"
    with common.sandbox() as box:
        env = common.runner_env(box.url)
        for round_ in range(s.rounds):
            seen = len(box.log())
            common.copy_db(template, db)
            started = time.time()
            usage = common.run_until_line([common.RUNNER, "resume", "--db", str(db)], r" sent urn:", env=env)
            deliveries = box.log()[seen:]
            if "line" not in usage.marks or not deliveries:
                raise RuntimeError(f"b4 resume: {usage.stdout} {usage.stderr}")
            first.append(usage.marks["line"])
            first_sandbox.append(min(d["received_at"] for d in deliveries) - started)
            st = common.run_child([common.RUNNER, "status", "bench", "--db", str(db)])
            rep = common.run_child([common.RUNNER, "report", "bench", "--db", str(db), "--format", "csv"],
                                   stdout_to_null=True)  # fmt: skip
            web = common.run_child([common.RUNNER, "report", "bench", "--db", str(db), "--format", "html",
                                    "--output", str(page)], stdout_to_null=True)  # fmt: skip
            if st.code or rep.code or web.code:
                raise RuntimeError(f"b4: status {st.code} {st.stderr}; report {rep.code} {rep.stderr} {web.stderr}")
            status.append(st.wall)
            report.append(rep.wall)
            html.append(web.wall)
            html_size.append(page.stat().st_size / 1e6)
            log(f"b4 round {round_ + 1}: first send {usage.marks['line']:.2f}s (sandbox {first_sandbox[-1]:.2f}s),"
                f" status {st.wall:.2f}s, report {rep.wall:.2f}s (rss {rep.rss_mb:.0f} MB),"
                f" html {web.wall:.2f}s, {html_size[-1]:.2f} MB")  # fmt: skip
    what = f"{count:,} recipients, {done:,} done, {accounts} accounts"
    return [
        Row("B4", f"{what}: `resume` start to first send (its request reaching the sandbox)", "≤ 1 s",
            f"{fmt(median(first_sandbox))} s (its `sent` line printed at {fmt(median(first))} s)", "",
            verdict(median(first_sandbox) <= 1)),
        Row("B4", "`status`", "≤ 1 s", f"{fmt(median(status))} s", "", verdict(median(status) <= 1)),
        Row("B4", "`report --format csv` to /dev/null", "≤ 3 s", f"{fmt(median(report))} s", "",
            verdict(median(report) <= 3)),
        Row("R", f"`report --format html` of {count:,} recipients: wall; file size", "< 5 s; < 5 MB",
            f"{fmt(median(html))} s; {median(html_size):.2f} MB", "",
            verdict(median(html) < 5 and median(html_size) < 5)),
    ]  # fmt: skip


# --- B5: memory while sending -----------------------------------------------------------------


def b5(s: Settings) -> list[Row]:
    """`run` of a 10,000- and a 100,000-recipient campaign (load, then send), each stopped gently
    after the same number of sends, so the difference is what the campaign's size costs."""
    sizes = (s.size(10_000), s.size(100_000))
    accounts = min(s.size(200), 200)
    sends = s.size(5_000)
    files = {n: common.write_campaign(s.work / "b5", f"mem{n}", n, accounts) for n in sizes}
    rss: dict[int, list[float]] = {n: [] for n in sizes}
    with common.sandbox() as box:
        env = common.runner_env(box.url)
        for round_ in range(max(s.rounds - 1, 1)):
            for n in sizes if round_ % 2 == 0 else reversed(sizes):
                db = s.work / "b5" / f"mem{n}.db"
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
                usage = common.run_until_line([common.RUNNER, "run", str(files[n]), "--db", str(db)], r" sent urn:",
                                              count=sends, env=env)  # fmt: skip
                if "line" not in usage.marks:
                    raise RuntimeError(f"b5 {n}: {usage.stdout[-2000:]} {usage.stderr}")
                took = usage.marks["line"]
                log(f"b5 round {round_ + 1} {n}: rss {usage.rss_mb:.0f} MB, {sends} sends in {took:.1f}s")
                rss[n].append(usage.rss_mb)
    small, large = (median(rss[n]) for n in sizes)
    return [
        Row("B5", f"peak RSS of `run`, {sizes[0]:,} vs {sizes[1]:,} recipients, each stopped after {sends:,} sends",
            "≤ 200 MB; larger ≤ 1.2× smaller", f"{fmt(small, 0)} MB vs {fmt(large, 0)} MB", f"{large / small:.2f}×",
            verdict(max(small, large) <= 200 and large <= 1.2 * small)),
    ]  # fmt: skip


# --- the cost of the transactions -------------------------------------------------------------


def txn(s: Settings) -> list[Row]:
    count = s.size(2_000)
    runs = []
    for _ in range(s.rounds):
        usage = common.run_child([sys.executable, TXN, "--count", str(count), "--folder", str(s.work / "txn")])
        if usage.code:
            raise RuntimeError(f"txn: {usage.stderr}")
        runs.append(json.loads(usage.stdout))
    m = {key: median([r[key] for r in runs]) for key in runs[0]}
    log(f"txn: {m}")
    fsync = m["commit_full_ms"] - m["commit_off_ms"]
    return [
        Row("T", "one bare sqlite3 UPDATE + COMMIT, WAL: synchronous FULL / NORMAL / OFF", "(reported)",
            f"{m['commit_full_ms']:.3f} / {m['commit_normal_ms']:.3f} / {m['commit_off_ms']:.3f} ms",
            f"fsync ≈ {fsync:.3f} ms", ""),
        Row("T", "one trip to the store's worker thread (`SELECT 1`)", "(reported)",
            f"{m['thread_trip_ms']:.3f} ms", "", ""),
        Row("T", "`Store.claim` + `Store.record` per send (no HTTP), synchronous FULL / NORMAL / OFF", "(reported)",
            f"{m['claim_record_full_ms']:.3f} / {m['claim_record_normal_ms']:.3f} / {m['claim_record_off_ms']:.3f} ms",
            f"durability {m['claim_record_full_ms'] - m['claim_record_off_ms']:.3f} ms of it", ""),
    ]  # fmt: skip


def plan(s: Settings) -> list[Row]:
    """`campaign-runner plan` of the human-pacing issue's case: 10,000 recipients over 5 accounts
    at 150/day, Monday to Friday 09:00-17:00 (the whole command, reading the file included)."""
    count = s.size(10_000)
    folder = s.work / "plan"
    campaign = common.write_campaign(folder, "plan", count, 5, limit="150/day")
    spec = campaign.read_text(encoding="utf-8")
    schedule = 'schedule: {timezone: Europe/Berlin, hours: "09:00-17:00", days: [mon, tue, wed, thu, fri]}\n'
    campaign.write_text(spec + schedule, encoding="utf-8")
    runs = []
    for round_ in range(s.rounds):
        argv = [common.RUNNER, "plan", str(campaign), "--start", "2027-03-01T08:00", "--db", str(folder / "none.db")]
        usage = common.run_child(argv)
        if usage.code != 0 or "projected finish" not in usage.stdout:
            raise RuntimeError(f"plan failed: {usage.stderr}")
        log(f"plan round {round_ + 1}: {usage.wall:.2f}s, rss {usage.rss_mb:.0f} MB")
        runs.append(usage)
    wall = median([u.wall for u in runs])
    return [
        Row("P", f"`plan` of {count:,} recipients over 5 accounts at 150/day, Mon-Fri 09:00-17:00", "< 10 s",
            f"{fmt(wall)} s", "", verdict(wall < 10))
    ]  # fmt: skip


def sandbox_ceiling(s: Settings) -> list[Row]:
    """The naive synchronous loop (the fastest client here) against the sandbox: how fast it can
    answer, and how busy it is meanwhile. Not part of `all`."""
    count = s.size(10_000)
    sends = []
    for _ in range(s.rounds):
        with common.sandbox() as box:
            before = box.cpu()
            argv = [sys.executable, BARE, box.url, "--count", str(count), "--accounts", "200", "--mode", "sync",
                    "--api-key", common.API_KEY]  # fmt: skip
            usage = common.run_child(argv)
            cpu = box.cpu() - before
            span = common.send_span(box.log())
        sends.append(Send("sync", count, span, usage.wall, usage.cpu, usage.rss_mb, cpu))
        log(f"sandbox: {sends[-1].rate:,.0f}/s, busy {sends[-1].sandbox_busy:.0%}")
    return [
        Row("S", f"`campaign-runner sandbox`, {count:,} sends by the synchronous loop: sends/s; sandbox CPU busy share",
            "(reference)", f"{fmt(med(sends, lambda x: x.rate), 0)}/s; {med(sends, lambda x: x.sandbox_busy):.0%}",
            f"{fmt(med(sends, lambda x: x.sandbox_cpu / x.sent * 1000), 2)} ms CPU per request", "")
    ]  # fmt: skip


BENCHES: dict[str, Callable[[Settings], list[Row]]] = {
    "txn": txn, "b1": b1, "b2": b2, "b3": b3, "b4": b4, "b5": b5, "plan": plan,
}  # fmt: skip
EXTRA: dict[str, Callable[[Settings], list[Row]]] = {"sandbox": sandbox_ceiling, "b1pg": b1_postgres}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", help=f"all (default) or some of: {', '.join([*BENCHES, *EXTRA])}")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per comparison (default 2)")
    parser.add_argument("--quick", action="store_true", help="every size divided by 10 (smoke run)")
    parser.add_argument("--work", type=Path, help="folder for files and databases (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the rows and the machine to this file")
    args = parser.parse_args(argv)
    which = list(BENCHES) if not args.which or "all" in args.which else args.which
    known = {**BENCHES, **EXTRA}
    unknown = [name for name in which if name not in known]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (choose from all, {', '.join(known)})")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="campaign-bench-") as temp:
        work = args.work or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        settings = Settings(work, args.rounds, 0.1 if args.quick else 1.0)
        rows: list[Row] = []
        for name in which:
            log(f"--- {name}")
            rows.extend(known[name](settings))
    elapsed = time.perf_counter() - started
    machine = common.machine()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']},"
          f" SQLite {machine['sqlite']}, PostgreSQL {machine['postgresql']}, Linux {machine['kernel']};"
          f" {args.rounds} rounds;"
          f" {'quick sizes; ' if args.quick else ''}took {elapsed:.0f} s\n")  # fmt: skip
    print(HEADER)
    for row in rows:
        print(row.markdown())
    if args.json:
        payload: dict[str, Any] = {"machine": machine, "rounds": args.rounds, "quick": args.quick,
                                   "seconds": elapsed, "rows": [row.__dict__ for row in rows]}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
