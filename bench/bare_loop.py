"""The baselines of B1/B2: the runner's requests sent with httpx alone, no database, no limiter.

    python bench/bare_loop.py URL --count N --accounts A [--mode async|sync] [--api-key K]

`async`: one `httpx.AsyncClient` (as configured by the runner: A connections, same headers and
timeouts) and one task per account, each sending its share of the recipients one after the other,
which is the runner's concurrency: at most one request in flight per account. `sync`: a naive
`httpx.Client` loop, one request at a time. Recipient n, its message and its account are the ones
the benchmark's campaign file gives the runner. Prints one JSON line: sent, errors, wall seconds.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ENDPOINT, GROUP_ID, account, message, urn  # noqa: E402


def body(n: int, accounts: int) -> dict[str, str]:
    return {
        "recipientProfileUrn": urn(n),
        "groupId": GROUP_ID,
        "message": message(n),
        "accountId": account(n % accounts),
    }


def headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": "campaign-runner"}


def async_client(url: str, api_key: str, connections: int, verify: ssl.SSLContext) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx.Timeout(60.0, connect=10.0)
    return httpx.AsyncClient(
        base_url=url + "/", headers=headers(api_key), limits=limits, timeout=timeout, verify=verify
    )


async def send_async(
    url: str, api_key: str, count: int, accounts: int, endpoint: str, per_account: bool
) -> tuple[int, int]:
    """`per_account`: one AsyncClient (one connection) per account instead of one shared pool."""
    sent = errors = 0
    verify = ssl.create_default_context()  # one context: building one per client costs ~25 ms each
    clients = [async_client(url, api_key, 1, verify) for _ in range(accounts)] if per_account else []
    shared = async_client(url, api_key, accounts, verify)

    async def worker(a: int) -> None:
        nonlocal sent, errors
        http = clients[a] if per_account else shared
        for n in range(a, count, accounts):
            response = await http.post(f"messaging/{endpoint}", json=body(n, accounts))
            if response.status_code == 200:
                sent += 1
            else:
                errors += 1

    try:
        async with anyio.create_task_group() as tg:
            for a in range(accounts):
                tg.start_soon(worker, a)
    finally:
        for http in (shared, *clients):
            await http.aclose()
    return sent, errors


def send_sync(url: str, api_key: str, count: int, accounts: int, endpoint: str) -> tuple[int, int]:
    sent = errors = 0
    timeout = httpx.Timeout(60.0, connect=10.0)
    with httpx.Client(base_url=url + "/", headers=headers(api_key), timeout=timeout) as http:
        for n in range(count):
            response = http.post(f"messaging/{endpoint}", json=body(n, accounts))
            if response.status_code == 200:
                sent += 1
            else:
                errors += 1
    return sent, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="base URL, e.g. http://127.0.0.1:8765/linkedin")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--mode", choices=("async", "sync", "async-per-account"), default="async")
    parser.add_argument("--api-key", default="bench-key")
    parser.add_argument("--endpoint", default=ENDPOINT)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.mode.startswith("async"):
        per_account = args.mode == "async-per-account"
        sent, errors = anyio.run(
            send_async, args.url, args.api_key, args.count, args.accounts, args.endpoint, per_account
        )
    else:
        sent, errors = send_sync(args.url, args.api_key, args.count, args.accounts, args.endpoint)
    print(json.dumps({"sent": sent, "errors": errors, "wall": time.perf_counter() - started}))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
