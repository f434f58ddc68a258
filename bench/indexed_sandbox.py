"""The project's sandbox with its quota window counted from a per-account index, for benchmarks.

`campaign_runner.sandbox.Sandbox._window` builds, for every send (twice: the quota check and the
X-RateLimit headers), a list of every delivery in its log. With N messages delivered that is O(N)
per request and O(N^2) per campaign, so the emulator's ceiling falls as a benchmark proceeds
(BENCHMARKS.md gives the figures). This subclass keeps the same answers (same ASGI app, same
checks, same headers, same log) and only replaces that scan with a deque of delivery times per
account, pruned as they leave the window.

Usage, like `campaign-runner sandbox`:
    python bench/indexed_sandbox.py --port 0 --typing-delay 0 --quota 100000000/1s --api-key K
"""

from __future__ import annotations

import argparse
import sys
from collections import deque

import anyio

from campaign_runner import sandbox
from campaign_runner.config import Limit


class IndexedSandbox(sandbox.Sandbox):
    def __init__(self, config: sandbox.SandboxConfig | None = None) -> None:
        super().__init__(config)
        self._indexed = 0  # deliveries of the log already in self._times
        self._times: dict[str | None, deque[float]] = {}

    def _window(self, account: str | None, now: float) -> tuple[int, float]:
        window = self.config.quota_window
        with self._lock:
            for delivery in self._log[self._indexed :]:
                self._times.setdefault(delivery.account_id, deque()).append(delivery.delivered_at)
            self._indexed = len(self._log)
            times = self._times.get(account, deque())
            while times and times[0] + window <= now:
                times.popleft()
            used = len(times) + self._pending.get(account, 0)
            oldest = times[0] if times else now
        return used, oldest + window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="sandbox-key")
    parser.add_argument("--typing-delay", type=float, default=0.0)
    parser.add_argument("--quota", default="150/day")
    args = parser.parse_args(argv)
    limit = Limit.parse(args.quota)
    config = sandbox.SandboxConfig(
        api_key=args.api_key, typing_delay=args.typing_delay, quota=limit.cap, quota_window=limit.window
    )

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            url = await tg.start(sandbox.serve, IndexedSandbox(config), args.host, args.port)
            print(f"sandbox listening on {url} (indexed quota window)", file=sys.stderr, flush=True)

    try:
        anyio.run(serve)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
