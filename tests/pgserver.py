"""Throwaway PostgreSQL servers for the test suite and for demos.

Tests need a real PostgreSQL but must never touch one that matters, and should not need Docker: PgServer runs a
private server from the machine's own binaries in a fresh temporary directory and removes every trace of it on stop().

    with PgServer() as server:
        url = server.create_database("scratch")

As a script it wraps one command, for trying the CLI against PostgreSQL by hand:

    python tests/pgserver.py -- campaign-runner ...

starts a server, creates database ``demo``, runs the command with ``CAMPAIGN_RUNNER_DB`` set to that database's URL,
stops the server when the command ends, and exits with the command's exit code.
"""

from __future__ import annotations

import argparse
import atexit
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from urllib.parse import quote

REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")

SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}
"""Durability traded for speed: the data dies with the test run anyway."""

PG_HBA = """\
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  scram-sha-256
"""
"""Trust on the private unix socket for set-up; real password authentication over TCP, as the CLI will meet it."""

START_ATTEMPTS = 3
TIMEOUT_SECONDS = 30


def find_bindir() -> Path:
    """Return the directory holding the newest installed PostgreSQL's initdb, pg_ctl, postgres and psql.

    Debian-style packages keep the server off PATH, under /usr/lib/postgresql/<major>/bin, and allow several majors
    side by side; pg_config --bindir covers other layouts.
    """
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    searched = []
    for bindir in candidates:
        missing = [name for name in REQUIRED_BINARIES if not os.access(bindir / name, os.X_OK)]
        if not missing:
            return bindir
        searched.append(f"{bindir} lacks {', '.join(missing)}")
    where = "; ".join(searched) or "there is no /usr/lib/postgresql/*/bin and no pg_config on PATH"
    raise RuntimeError(
        f"PostgreSQL binaries not found (need {', '.join(REQUIRED_BINARIES)}): {where}. "
        "Install the server, e.g. `apt-get install postgresql-15`."
    )


class PgServer:
    """A private PostgreSQL server in a temporary directory, listening on 127.0.0.1 only.

    It has a login role (superuser, so tests can CREATE DATABASE) that connects with a password over TCP, like the
    CLI against a real server; set-up goes through a unix socket inside the temporary directory as the bootstrap
    superuser. Since PostgreSQL refuses to run as root, under root the server runs as the ``postgres`` system user.
    """

    host = "127.0.0.1"

    def __init__(self, *, user: str = "campaign", password: str = "secret-pass", bindir: Path | None = None) -> None:
        self.user = user
        self.password = password
        self.port = 0
        self.version = ""
        self._bindir = bindir
        self._root: Path | None = None
        self._account = _server_account()

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """URL of the ``postgres`` database, as the login role."""
        return self.url_for("postgres")

    def url_for(self, dbname: str, *, hide_password: bool = False) -> str:
        """URL of database ``dbname`` as the login role; ``hide_password`` gives one fit for printing."""
        if not self.port:
            raise RuntimeError("PgServer is not started")
        password = "***" if hide_password else quote(self.password, safe="")
        return f"postgresql://{quote(self.user, safe='')}:{password}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    @property
    def data_dir(self) -> Path:
        """The cluster's directory; its ``../postgres.log`` holds the server log, worth a look when a test fails."""
        if self._root is None:
            raise RuntimeError("PgServer is not started")
        return self._root / "data"

    def start(self) -> PgServer:
        """Create the cluster, start the server, wait until it accepts connections, and create the login role.

        Whatever fails on the way, nothing is left behind: no server, no temporary directory.
        """
        if self._root is not None:
            raise RuntimeError("PgServer is already started")
        self._bindir = self._bindir or find_bindir()
        self._root = Path(tempfile.mkdtemp(prefix="pgserver-"))
        atexit.register(self.stop)
        try:
            if self._account.pw_uid != os.geteuid():
                os.chown(self._root, self._account.pw_uid, self._account.pw_gid)
            self._initdb()
            self._launch()
            self._psql(f"CREATE ROLE {_identifier(self.user)} LOGIN SUPERUSER PASSWORD {_literal(self.password)}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server at once (``-m immediate``: nothing is worth saving) and remove its directory; idempotent."""
        if self._root is None:
            return
        atexit.unregister(self.stop)
        try:
            self._halt()
        finally:
            root, self._root, self.port = self._root, None, 0
            shutil.rmtree(root)

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name``, owned by the login role, and return its URL."""
        sql = f"CREATE DATABASE {_identifier(name)} OWNER {_identifier(self.user)}"
        if template is not None:
            sql += f" TEMPLATE {_identifier(template)}"
        self._psql(sql)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, even while a test still holds connections to it."""
        self._psql(f"DROP DATABASE IF EXISTS {_identifier(name)} WITH (FORCE)")

    @property
    def _superuser(self) -> str:
        """initdb names the bootstrap superuser after the OS user running it; keeping that avoids peer-name puzzles."""
        return self._account.pw_name

    def _bin(self, name: str) -> Path:
        assert self._bindir is not None
        return self._bindir / name

    @property
    def _log(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def _initdb(self) -> None:
        self._run(
            [
                self._bin("initdb"),
                "--pgdata",
                self.data_dir,
                "--username",
                self._superuser,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            as_server=True,
        )
        (self.data_dir / "pg_hba.conf").write_text(PG_HBA)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/pgserver.py: a throwaway server\n")
            conf.writelines(f"{name} = '{value}'\n" for name, value in SERVER_SETTINGS.items())
        self.version = (self.data_dir / "PG_VERSION").read_text().strip()

    def _launch(self) -> None:
        """Start the server on a free port, trying another port if one is taken between choosing and binding it.

        ``pg_ctl start -w`` returns once the server reports itself ready, that is, accepting connections. It runs in
        a session of its own so that a Ctrl-C meant for the test run does not shut the server down under it.
        """
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = _free_port(self.host)
            log_start = self._log.stat().st_size if self._log.exists() else 0
            options = shlex.join(["-h", self.host, "-p", str(self.port), "-k", str(self._root)])
            command: list[str | Path] = ["start", "-D", self.data_dir, "-l", self._log, "-o", options]
            started = self._run(
                [self._bin("pg_ctl"), *command, "-w", "-t", str(TIMEOUT_SECONDS), "-s"],
                as_server=True,
                check=False,
                new_session=True,
            )
            if started.returncode == 0:
                return
            with self._log.open(errors="replace") as log:
                log.seek(log_start)
                log_text = log.read()
            if "Address already in use" not in log_text or attempt == START_ATTEMPTS:
                raise RuntimeError(
                    f"PostgreSQL did not start on port {self.port}:\n{started.stderr or started.stdout}\n"
                    f"{self._log}:\n{log_text[-4000:]}"
                )

    def _halt(self) -> None:
        """Stop the server if one runs; SIGKILL the postmaster should ``pg_ctl stop`` fail, so none outlives us."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        stop = [self._bin("pg_ctl"), "stop", "-D", self.data_dir, "-m", "immediate", "-w", "-s"]
        stopped = self._run([*stop, "-t", str(TIMEOUT_SECONDS)], as_server=True, check=False)
        if stopped.returncode != 0 and pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass

    def _psql(self, sql: str) -> None:
        """Run ``sql`` as the bootstrap superuser over the unix socket, which needs no password and no psycopg."""
        socket_dir = str(self.data_dir.parent)
        target = ["-h", socket_dir, "-p", str(self.port), "-U", self._superuser, "-d", "postgres"]
        self._run([self._bin("psql"), "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", *target], sql=sql)

    def _run(
        self,
        args: Sequence[str | Path],
        *,
        as_server: bool = False,
        sql: str | None = None,
        check: bool = True,
        new_session: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool with PG* variables cleared, so the caller's PGHOST or PGDATA cannot redirect it.

        ``as_server`` runs it as the server's account, from the temporary directory that account can enter.
        """
        env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
        switch = as_server and self._account.pw_uid != os.geteuid()
        if switch:
            env.update(HOME=self._account.pw_dir, USER=self._superuser, LOGNAME=self._superuser)
        result = subprocess.run(
            [str(arg) for arg in args],
            input=sql,
            capture_output=True,
            text=True,
            cwd=self._root,
            env=env,
            user=self._account.pw_uid if switch else None,
            group=self._account.pw_gid if switch else None,
            extra_groups=[] if switch else None,
            start_new_session=new_session,
            timeout=2 * TIMEOUT_SECONDS,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(str(arg) for arg in args)} failed with exit code {result.returncode}:\n"
                f"{result.stderr or result.stdout}"
            )
        return result


def _server_account() -> pwd.struct_passwd:
    """The account to run the server as: ourselves, unless we are root, which PostgreSQL refuses to run as."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "PostgreSQL refuses to run as root, and there is no 'postgres' system user to run it as"
        ) from None


def _version_key(bindir: Path) -> tuple[int, ...]:
    """Order /usr/lib/postgresql/<major>/bin numerically, so 15 beats 9.6; unparsable names sort last."""
    try:
        return tuple(int(part) for part in bindir.parent.name.split("."))
    except ValueError:
        return ()


def _free_port(host: str) -> int:
    """A port nobody listens on right now; another process may still take it before the server binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM and SIGHUP into SystemExit, so that the server is stopped on the way out."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command against a throwaway server's database ``demo``; return the command's exit code."""
    parser = argparse.ArgumentParser(
        prog="python tests/pgserver.py",
        usage="%(prog)s [-h] -- CMD [ARGS...]",
        description="Run CMD with CAMPAIGN_RUNNER_DB pointing at database 'demo' of a throwaway PostgreSQL server.",
    )
    parser.add_argument("command", nargs="+", metavar="CMD", help="the command to run, and its arguments")
    command = parser.parse_args(argv).command
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    try:
        with PgServer() as server:
            url = server.create_database("demo")
            print(
                f"pgserver: started a throwaway PostgreSQL {server.version} at "
                f"{server.url_for('demo', hide_password=True)} (data in {server.data_dir}); "
                "it stops when the command ends",
                file=sys.stderr,
            )
            try:
                returncode = subprocess.run(command, env={**os.environ, "CAMPAIGN_RUNNER_DB": url}).returncode
            except OSError as error:
                print(f"pgserver: cannot run {command[0]}: {error.strerror}", file=sys.stderr)
                return 127
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    sys.exit(main())
