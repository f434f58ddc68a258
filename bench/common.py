"""Shared helpers of the benchmarks: fixtures on disk, child processes with their own resource use, sandboxes.

Every figure comes from a child process started here and reaped with `os.wait4`, so its CPU time
and peak RSS are its own (not a sum or a maximum over every child this process ever had).
"""

from __future__ import annotations

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


def preload(campaign_file: Path, db: Path) -> None:
    """Load a campaign into a fresh database with the runner's own code (what `run` does before it
    sends), so a later `resume` times the sending phase alone."""
    import anyio

    anyio.run(preload_async, campaign_file, db)


async def preload_async(campaign_file: Path, db: Path) -> None:
    from campaign_runner.config import load_campaign
    from campaign_runner.store import Store

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
    }
