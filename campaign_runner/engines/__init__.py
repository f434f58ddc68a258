"""Where the data lives: a SQLite file (the default) or a PostgreSQL database.

`Store` holds every decision and the SQL the two engines share; an engine holds only what differs
between them: how to connect, how a write transaction takes its turn, its migrations, and the few
fragments of SQL each spells its own way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class Target:
    """A database as the user named it: a file path, or a PostgreSQL URL (which may carry a password)."""

    text: str

    @property
    def is_postgres(self) -> bool:
        return self.text.startswith(SCHEMES)

    @property
    def path(self) -> Path:
        if self.is_postgres:
            raise ValueError("a PostgreSQL database has no path")
        return Path(self.text)

    @property
    def label(self) -> str:
        """What may be printed, logged or stored: the URL without its password."""
        return redact(self.text) if self.is_postgres else self.text

    def __str__(self) -> str:
        return self.label

    def __repr__(self) -> str:
        return f"Target({self.label!r})"


def target(where: str | os.PathLike[str] | Target) -> Target:
    return where if isinstance(where, Target) else Target(os.fspath(where))


_PASSWORD_IN_TEXT = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@")


def redact(text: str) -> str:
    """`postgresql://user:***@host/db`: a URL's password (and any in a query string) hidden."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return _PASSWORD_IN_TEXT.sub(r"\1***@", text)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(message: str, secret_source: str) -> str:
    """`message` with the password of `secret_source` (a URL) removed wherever it appears."""
    try:
        password = urlsplit(secret_source).password
    except ValueError:
        password = None
    message = _PASSWORD_IN_TEXT.sub(r"\1***@", message)
    return message.replace(password, "***") if password else message


class Engine(Protocol):
    """What `Store` asks of an engine. The connection it hands out behaves as `sqlite3.Connection`
    does for `execute` (qmark or named parameters), `in_transaction` and `close`."""

    name: str
    label: str
    errors: tuple[type[BaseException], ...]
    skip_locked: str  # appended to a SELECT that picks one row to claim

    def begin_write(self, conn: Any, account_id: str | None = None) -> None: ...
    def begin_read(self, conn: Any) -> None: ...
    def said(self, exc: BaseException) -> str: ...  # an error of the engine's, on one line, fit to print
    def database_now(self, conn: Any) -> float | None: ...
    def retryable(self, exc: BaseException) -> bool: ...
    def json_item(self, column: str, index: str) -> str: ...
    def json_array(self, value: str) -> str: ...
    def joined(self, value: str, separator: str) -> str: ...
