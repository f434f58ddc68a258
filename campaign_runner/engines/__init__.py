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
from urllib.parse import unquote

from ..errors import ConfigError

SCHEMES = ("postgresql://", "postgres://")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.:-]*):(?=//)")  # jdbc:postgresql: too
# The userinfo of a PostgreSQL URL: everything up to the last "@" before the path, so that a
# password with an unencoded "@", ":" or "/" in it is still hidden whole.
_USERINFO = re.compile(r"(?i)^(postgres(?:ql)?://)(.*)@(?=[^@]*$)")
_URL_IN_TEXT = re.compile(r"(?i)(postgres(?:ql)?://[^:/@\s]*:)\S*@")
_ENCODE = "percent-encode it (@ as %40, : as %3A, / as %2F, # as %23, ? as %3F)"


@dataclass(frozen=True)
class Target:
    """A database as the user named it: a file path, or a PostgreSQL URL (which may carry a password)."""

    text: str

    @property
    def is_postgres(self) -> bool:
        return self.text.lower().startswith(SCHEMES)

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
    """`where` as a database: a postgresql:// URL (any case of the scheme), or a file path. What
    looks like another kind of URL, or like a libpq keyword string, is refused rather than taken
    for a file name (which every message would then show, password and all)."""
    if isinstance(where, Target):
        return where
    text = os.fspath(where)
    scheme = _SCHEME.match(text)
    if scheme:
        if not text.lower().startswith(SCHEMES):
            raise ConfigError(
                f"--db {redact_any(text)}: not a PostgreSQL URL (postgresql://user:password@host:5432/dbname)"
                " nor a file path"
            )
        text = text[: scheme.end()].lower() + text[scheme.end() :]
        userinfo = _USERINFO.match(text)
        secret = userinfo.group(2).partition(":")[2] if userinfo else ""
        if "#" in text or (userinfo and ("/" in userinfo.group(2) or "?" in userinfo.group(2))) or ("@" in secret):
            raise ConfigError(f"--db {redact(text)}: a character of the password needs encoding: {_ENCODE}")
        return Target(text)
    if " " in text and re.search(r"(?i)(^|\s)(password|host|dbname|user)\s*=", text):  # libpq's key=value form
        raise ConfigError(
            f"--db {redact_any(text)}: give PostgreSQL as a URL, postgresql://user:password@host:5432/dbname"
        )
    return Target(text)


def redact(text: str) -> str:
    """`postgresql://user:***@host/db`: a URL's password (and any in its query string) hidden."""
    userinfo = _USERINFO.match(text)
    if userinfo and ":" in userinfo.group(2):
        user = userinfo.group(2).partition(":")[0]
        text = f"{userinfo.group(1)}{user}:***@{text[userinfo.end() :]}"
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", text)


def redact_any(text: str) -> str:
    """What may be shown of a --db value that is not a PostgreSQL URL: any password in it hidden."""
    text = re.sub(r"^([A-Za-z][A-Za-z0-9+.:-]*://[^:/@\s]*:).*@(?=[^@]*$)", r"\1***@", text)
    return re.sub(r"(?i)(password\s*=\s*)\S+", r"\1***", redact(text))


def scrub(message: str, secret_source: str) -> str:
    """`message` with any PostgreSQL URL in it redacted, and the password of `secret_source` (a
    URL) wherever it appears, when it is long enough not to be mistaken for ordinary text."""
    message = _URL_IN_TEXT.sub(r"\1***@", message)
    userinfo = _USERINFO.match(secret_source)
    password = userinfo.group(2).partition(":")[2] if userinfo else ""
    for form in {password, unquote(password)}:
        if len(form) >= MIN_SCRUBBED:
            message = message.replace(form, "***")
    return message


MIN_SCRUBBED = 6  # a shorter password is not looked for in text (it would blank out words)


class Engine(Protocol):
    """What `Store` asks of an engine. The connection it hands out behaves as `sqlite3.Connection`
    does for `execute` (qmark or named parameters), `in_transaction` and `close`."""

    name: str
    label: str
    errors: tuple[type[BaseException], ...]
    skip_locked: str  # appended to a SELECT that picks one row to claim

    def connect(self, now: float, durable: bool, create: bool = True) -> Any: ...  # migrated
    def connect_read_only(self) -> Any: ...

    def begin_write(self, conn: Any, account_id: str | None = None) -> None: ...
    def begin_read(self, conn: Any) -> None: ...
    def said(self, exc: BaseException) -> str: ...  # an error of the engine's, on one line, fit to print
    def database_now(self, conn: Any) -> float | None: ...
    def retryable(self, exc: BaseException) -> bool: ...
    def json_item(self, column: str, index: str) -> str: ...
    def json_array(self, value: str) -> str: ...
    def joined(self, value: str, separator: str) -> str: ...
