"""Profile the runner's sending phase (B1's setting, smaller) with pyinstrument.

    python bench/profile_runner.py [--count N] [--accounts A] [--output FILE]

Loads a campaign into a fresh database, starts the sandbox in its own process, and runs
`campaign-runner resume` under `python -m pyinstrument`, which writes a text profile of the main
thread (the event loop; SQLite's own work runs on the store's worker thread and shows up as
waiting), with httpcore's connection pool frames kept visible.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4_000)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--output", type=Path, default=Path("runner-profile.txt"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="campaign-profile-") as temp:
        folder = Path(temp)
        campaign = common.write_campaign(folder, "bench", args.count, args.accounts)
        db = folder / "profile.db"
        common.preload(campaign, db)
        with common.sandbox() as box:
            command = [
                sys.executable, "-m", "pyinstrument", "--renderer", "text", "--outfile", str(args.output),
                "--show", "*/httpcore/_async/connection_pool.py",
                common.RUNNER, "resume", "bench", "--db", str(db), "--base-url", box.url,
            ]  # fmt: skip
            env = {**os.environ, "CONNECTSAFELY_API_KEY": common.API_KEY}
            subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
            delivered = len(box.log())
    print(f"{delivered} sends profiled; profile in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
