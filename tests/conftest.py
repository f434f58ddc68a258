from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from campaign_runner.sandbox import Sandbox, SandboxConfig, serve_in_thread

API_KEY = "test-key-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite runs on asyncio


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("CONNECTSAFELY_", "CAMPAIGN_RUNNER_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # the default database lands here, never in the repository


@pytest.fixture
def serve_sandbox() -> Iterator[Callable[..., tuple[Sandbox, str]]]:
    """Start sandboxes on 127.0.0.1 (each in its own thread); all are stopped after the test."""
    with_stops: list[Any] = []

    def start(**config: Any) -> tuple[Sandbox, str]:
        config.setdefault("api_key", API_KEY)
        box = Sandbox(SandboxConfig(**config))
        server = serve_in_thread(box)
        url = server.__enter__()
        with_stops.append(server)
        return box, url

    yield start
    for server in reversed(with_stops):
        server.__exit__(None, None, None)


def urn(n: int) -> str:
    return f"urn:li:fsd_profile:ACoAAtest{n:05d}"


def write_campaign(folder: Path, filename: str = "campaign.yaml", **fields: Any) -> Path:
    """A campaign file with sensible test defaults; any field can be overridden (None drops it)."""
    spec: dict[str, Any] = {
        "name": "test-campaign",
        "group_id": "12345678",
        "endpoint": "send-group",
        "accounts": ["acc_1"],
        "limit": "1000/1s",
        "retry": {"attempts": 3, "backoff": "50ms"},
        "message": "Hi {{ first_name | default('there') }}!",
        "recipients": [{"profile_urn": urn(i), "first_name": f"Person{i}"} for i in range(5)],
    }
    spec.update(fields)
    spec = {k: v for k, v in spec.items() if v is not None}
    path = folder / filename
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path
