"""Shared helpers of the benchmarks: fixtures on disk, child processes with their own resource use, sandboxes.

Every figure comes from a child process started here and reaped with `os.wait4`, so its CPU time
and peak RSS are its own (not a sum or a maximum over every child this process ever had).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TESTS = ROOT / "tests"  # holds pgserver.py, the throwaway PostgreSQL server
BIN = Path(sys.executable).parent
RUNNER = str(BIN / "campaign-runner")
API_KEY = "bench-key"
GROUP_ID = "12345678"
ENDPOINT = "send-group-with-typing"
TEMPLATE = "Hi {{ first_name | default('there') }}, glad to meet you in the group. -- {{ company | default('us') }}"
NO_LIMIT = "100000000/1s"
TIME = Path("/usr/bin/time")  # the "cap set out of the way"


def urn(n: int) -> str:
    return f"urn:li:fsd_profile:ACoAAbench{n:07d}"


def first_name(n: int) -> str:
    return f"Person{n}"


def company(n: int) -> str:
    return f"Company {n % 97}"


def message(n: int) -> str:
    """What TEMPLATE renders to for recipient n: the bare loops send exactly the runner's text."""
    return f"Hi {first_name(n)}, glad to meet you in the group. -- {company(n)}"


def account(n: int) -> str:
    return f"acc_{n:03d}"


# --- fixtures on disk --------------------------------------------------------------------------


def write_csv(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["profile_urn", "first_name", "company"])
        for n in range(count):
            writer.writerow([urn(n), first_name(n), company(n)])
    return path


def write_campaign(
    folder: Path,
    name: str,
    count: int,
    accounts: int,
    *,
    limit: str = NO_LIMIT,
    inline: bool = False,
    endpoint: str = ENDPOINT,
) -> Path:
    """A campaign of `count` recipients over `accounts` accounts, from a CSV file or an inline list."""
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "name": name,
        "group_id": GROUP_ID,
        "endpoint": endpoint,
        "accounts": [account(a) for a in range(accounts)],
        "limit": limit,
        "api_limit": NO_LIMIT,  # the API key's own limit (60/minute by default), out of the way too
        "retry": {"attempts": 3, "backoff": "1s"},
        "message": TEMPLATE,
    }
    if inline:
        spec["recipients"] = [
            {"profile_urn": urn(n), "first_name": first_name(n), "company": company(n)} for n in range(count)
        ]
    else:
        spec["recipients_file"] = write_csv(folder / f"{name}.csv", count).name
    path = folder / f"{name}.yaml"
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump(spec, Dumper=dumper, sort_keys=False), encoding="utf-8")
    return path


def preload(campaign_file: Path, db: Path | str) -> None:
    """Load a campaign into a fresh database with the runner's own code (what `run` does before it
    sends), so a later `resume` times the sending phase alone. `db`: a SQLite file (replaced), or
    the postgresql:// URL of an empty database."""
    import anyio

    anyio.run(preload_async, campaign_file, db)


async def preload_async(campaign_file: Path, db: Path | str) -> None:
    from campaign_runner.config import load_campaign
    from campaign_runner.store import Store

    if isinstance(db, Path):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = await Store.open(db, time.time())
    try:
        await store.load([load_campaign(campaign_file)], time.time())
    finally:
        await store.close()


def copy_db(source: Path, target: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)
    return target


# --- child processes ---------------------------------------------------------------------------


@dataclass
class Usage:
    """One child process: wall seconds, CPU seconds (user + system) and peak RSS in MB."""

    wall: float
    cpu: float
    rss_mb: float
    code: int
    stdout: str = ""
    stderr: str = ""
    marks: dict[str, float] = field(default_factory=dict)  # seconds from start to a line of output


def run_child(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout_to_null: bool = False,
    timeout: float = 600,
) -> Usage:
    """Run a child to completion; measure it alone (see `_timed`)."""
    full_env = {**os.environ, **(env or {})}
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.NamedTemporaryFile("r", suffix=".time") as peak,
    ):
        started = time.perf_counter()
        proc = subprocess.Popen(
            _timed(argv, peak.name), env=full_env, cwd=cwd, stdout=subprocess.DEVNULL if stdout_to_null else out,
            stderr=err, text=True,
        )  # fmt: skip
        _, status, usage = _wait4(proc, timeout)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        cpu = usage.ru_utime + usage.ru_stime
        return Usage(wall, cpu, _peak_mb(peak.name, usage), status, out.read(), err.read())


def run_children(commands: Sequence[tuple[Sequence[str], dict[str, str]]], *, timeout: float = 600) -> list[Usage]:
    """Start every (argv, env) child at once, stdout to /dev/null; reap each and measure it alone.
    A child's wall time runs to when it is reaped, in order: only the largest is exact."""
    with contextlib.ExitStack() as files:
        started = time.perf_counter()
        running = []
        for argv, env in commands:
            err = files.enter_context(tempfile.TemporaryFile("w+"))
            peak = files.enter_context(tempfile.NamedTemporaryFile("r", suffix=".time"))
            proc = subprocess.Popen(_timed(argv, peak.name), env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                    stderr=err, text=True)  # fmt: skip
            running.append((proc, err, peak))
        usages = []
        try:
            for proc, err, peak in running:
                _, status, usage = _wait4(proc, max(timeout - (time.perf_counter() - started), 0.0))
                err.seek(0)
                cpu = usage.ru_utime + usage.ru_stime
                wall = time.perf_counter() - started
                usages.append(Usage(wall, cpu, _peak_mb(peak.name, usage), status, "", err.read()))
        finally:
            for proc, _, _ in running:
                if proc.returncode is None:
                    proc.kill()
                    proc.wait()
    return usages


def _timed(argv: Sequence[str], output: str) -> list[str]:
    """`argv` under GNU time, which writes the child's peak RSS to `output`.

    Why not wait4's ru_maxrss alone: Linux carries a process's high-water RSS across exec, so a child
    forked from this (large) benchmark process would report at least this process's own RSS. GNU
    time is a small process when it forks, so the figure it reads is the child's. Without GNU time,
    wait4's figure is used (an upper bound)."""
    if not TIME.exists():
        return list(argv)
    return [str(TIME), "-f", "%M", "-o", output, *argv]


def _peak_mb(output: str, usage: Any) -> float:
    try:
        return int(Path(output).read_text().split()[-1]) / 1024
    except (OSError, ValueError, IndexError):
        return usage.ru_maxrss / 1024


def _wait4(proc: subprocess.Popen[str], timeout: float) -> tuple[int, int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            proc.returncode = code  # reaped here, so Popen must not wait for it again
            return pid, code, usage
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{proc.args} did not finish in {timeout}s")
        time.sleep(0.005)


def run_until_line(argv: Sequence[str], pattern: str, *, count: int = 1, env: dict[str, str] | None = None,
                   timeout: float = 600) -> Usage:  # fmt: skip
    """Run a child until `count` lines of its stdout matched `pattern`; then SIGTERM it (it stops
    gently) and reap it. `marks["line"]`: seconds from the start to the count-th matching line."""
    full_env = {**os.environ, **(env or {})}
    regex = re.compile(pattern)
    lines: list[str] = []
    marks: dict[str, float] = {}
    seen = 0
    with tempfile.NamedTemporaryFile("r", suffix=".time") as peak:
        started = time.perf_counter()
        proc = subprocess.Popen(
            _timed(argv, peak.name), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            for line in proc.stdout:
                lines.append(line)
                if regex.search(line):
                    seen += 1
                    if seen >= count:
                        marks["line"] = time.perf_counter() - started
                        _terminate(proc)
                        break
            lines.extend(proc.stdout.read().splitlines(keepends=True))
            err = proc.stderr.read()
            _, status, usage = _wait4(proc, timeout)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        wall = time.perf_counter() - started
        peak_mb = _peak_mb(peak.name, usage)
    cpu = usage.ru_utime + usage.ru_stime
    return Usage(wall, cpu, peak_mb, status, "".join(lines), err, marks)


def _terminate(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the measured program: under GNU time, that is time's child, not time itself."""
    target = proc.pid
    if proc.args[0] == str(TIME):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        target = int(children[0]) if children else proc.pid
    os.kill(target, signal.SIGTERM)


# --- the sandbox in its own process ------------------------------------------------------------


@dataclass
class SandboxProcess:
    url: str
    proc: subprocess.Popen[str]

    def cpu(self) -> float:
        """CPU seconds (user + system) the sandbox process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/_sandbox/log", timeout=120) as answer:
            return json.loads(answer.read())


@contextmanager
def sandbox(typing_delay: float = 0.0) -> Iterator[SandboxProcess]:
    """`campaign-runner sandbox` in a process of its own, on a free port, stopped on exit."""
    args = ["--port", "0", "--typing-delay", str(typing_delay), "--quota", NO_LIMIT, "--api-key", API_KEY]
    argv = [RUNNER, "sandbox", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()
        found = re.search(r"listening on (\S+)", line)
        if not found:
            raise RuntimeError(f"the sandbox did not start: {line!r}")
        yield SandboxProcess(found.group(1), proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def send_span(deliveries: list[dict[str, Any]]) -> float:
    """Seconds from the first request received to the last message delivered, as the sandbox saw them."""
    return max(d["delivered_at"] for d in deliveries) - min(d["received_at"] for d in deliveries)


def runner_env(url: str) -> dict[str, str]:
    return {"CONNECTSAFELY_API_KEY": API_KEY, "CONNECTSAFELY_BASE_URL": url}


# --- a throwaway PostgreSQL server --------------------------------------------------------------


def _pgserver() -> Any:
    """tests/pgserver.py, as a module."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import pgserver

    return pgserver


def pg_server() -> Any:
    """A `PgServer` of tests/pgserver.py, not started yet: a private server from the machine's own
    PostgreSQL binaries, in a temporary directory. Raises RuntimeError when there are none."""
    pgserver = _pgserver()
    return pgserver.PgServer(bindir=pgserver.find_bindir())  # no binaries: fails here, with its advice


def postgres_version() -> str:
    """The version of the PostgreSQL binaries pg_server() runs, e.g. `15.18 (Debian 15.18-0+deb12u1)`."""
    try:
        postgres = _pgserver().find_bindir() / "postgres"
        answer = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, check=True).stdout
    except (RuntimeError, OSError, subprocess.CalledProcessError):
        return "none"
    return answer.split(")", 1)[-1].strip()


def _proc_times(pid: int) -> tuple[int, int]:
    """(own, reaped children's) CPU clock ticks of a process, user + system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def pg_cpu(server: Any, settle: float = 5.0) -> float:
    """CPU seconds the PostgreSQL server has used so far: the postmaster's own, its live children's
    (background processes, backends) and those of the children it has reaped (Linux adds them to its
    own at reaping). Waits up to `settle` s for backends whose client has gone to exit and be reaped
    first, so that their time is counted once, and not lost with them."""
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    deadline = time.monotonic() + settle
    while any(_is_backend(c) for c in _children(postmaster)) and time.monotonic() < deadline:
        time.sleep(0.02)
    own, reaped = _proc_times(postmaster)
    total = own + reaped
    for child in _children(postmaster):
        try:
            total += _proc_times(child)[0]
        except (OSError, IndexError, ValueError):
            pass  # it ended meanwhile: its time is in the postmaster's reaped share, or about to be
    return total / os.sysconf("SC_CLK_TCK")


def _is_backend(pid: int) -> bool:
    """Whether a child of the postmaster serves a client: its title names the client's address,
    `postgres: user db 127.0.0.1(51592) idle` or `... [local] ...`."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return re.search(r"\(\d+\)|\[local\]", title) is not None


# --- figures -----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def machine() -> dict[str, str]:
    import platform
    import sqlite3

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "postgresql": postgres_version(),
    }
