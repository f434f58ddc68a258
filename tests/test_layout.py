"""The package's shape, checked: the pure modules stay pure, the formatter has the last word."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "campaign_runner"
PURE = ["limiter", "schedule", "guard", "policy", "outcome", "settings"]
HEAVY = ("pydantic", "yaml", "jinja2", "httpx", "sqlite3", "rich", "click")


def test_the_pure_modules_load_no_parser_template_engine_http_client_or_database() -> None:
    """Pacing, holds and the meaning of an answer are decided without I/O: importing them, in a
    fresh interpreter, loads none of the libraries that read files, render, talk HTTP or store."""
    imports = "; ".join(f"import campaign_runner.{name}" for name in PURE)
    code = f"import sys; {imports}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert not loaded & set(HEAVY), f"the pure modules load {sorted(loaded & set(HEAVY))}"


def test_the_formatter_decides_the_layout_almost_everywhere() -> None:
    skips = {path.name: path.read_text(encoding="utf-8").count("# fmt: skip") for path in PACKAGE.glob("*.py")}
    assert sum(skips.values()) <= 5, {name: count for name, count in skips.items() if count}


def test_every_package_of_the_source_is_installed() -> None:
    """A folder of modules left out of pyproject's packages works in the editable install every
    make target uses, and breaks every command of a plain `pip install .`."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(root).parts) for init in (root / "campaign_runner").rglob("__init__.py")}
    assert found <= listed, found - listed
