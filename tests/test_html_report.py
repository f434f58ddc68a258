"""The html report, opened in a real browser: headless Chromium (Debian's), driven by Playwright.

Screenshots are written to `test-output/` at the top of the project, for a person to look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import API_KEY, EXECUTABLE, start, urn, wait_for, write_campaign

OUTPUT = Path(__file__).parent.parent / "test-output"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# What a root CI machine needs to start Chromium quietly on a closed network.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip

if CHROMIUM is None:
    if os.environ.get("CI"):
        pytest.fail("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    pytest.skip("no chromium here: `make test` installs Debian's chromium when run as root", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium. Playwright's sync API runs an event loop in this thread while it is open,
    so a test makes everything with the CLI (`anyio.run`) first, then looks at it."""
    with sync_api.sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield found
        finally:
            found.close()


def open_page(browser, path: Path | None, url: str | None = None, ready: bool = True):
    """The page of `path` (or `url`), loaded, with what it logged and every URL it asked for."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    problems: list[str] = []
    asked: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("request", lambda request: asked.append(request.url))
    page.goto(url or path.as_uri())
    if ready:
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
    return page, problems, asked


@pytest.fixture
def campaigns(cli, serve_sandbox, tmp_path: Path) -> dict[str, dict]:
    """A database with a finished campaign (some refused) and an unfinished one; `status --json` of each."""
    box, url = serve_sandbox(non_members={urn(3), urn(7)})
    done = write_campaign(tmp_path, "done.yaml", name="done", accounts=["acc_1", "acc_2"],
                          recipients=[{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(24)])  # fmt: skip
    half = write_campaign(tmp_path, "half.yaml", name="half", accounts=["acc_3"], limit="3/hour",
                          recipients=[{"profile_urn": urn(100 + i)} for i in range(10)])  # fmt: skip
    code, out, err = cli("run", str(done), base_url=url)
    assert code == 0, err
    assert cli("run", str(half), "--no-wait", base_url=url)[0] == 0
    found = {}
    for name in ("done", "half"):
        code, out, _ = cli("status", name, "--json")
        found[name] = json.loads(out)["campaigns"][0]
    return found


def test_the_report_opens_offline_draws_every_chart_and_says_what_status_says(cli, campaigns, tmp_path: Path) -> None:
    OUTPUT.mkdir(exist_ok=True)
    for name in campaigns:
        path = tmp_path / f"{name}.html"
        code, out, err = cli("report", name, "--format", "html", "--output", str(path))
        assert code == 0 and out.strip() == str(path.resolve())
    with chromium() as browser:
        for name, status in campaigns.items():
            check_page(browser, tmp_path / f"{name}.html", name, status)


def check_page(browser, path: Path, name: str, status: dict) -> None:
    page, problems, asked = open_page(browser, path)
    assert problems == []
    assert [url for url in asked if not url.startswith("file:")] == []  # nothing from any other host
    drawn = page.evaluate(
        "[...document.querySelectorAll('canvas')].map(c => Boolean(Chart.getChart(c)) && c.width > 0)"
    )
    assert drawn == [True, True, True]
    headline = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#headline .card')]"
        ".map(c => [c.dataset.status, Number(c.querySelector('.n').textContent)]))"
    )
    assert headline == {key: status["counts"][key] for key in headline}
    total = sum(status["counts"].values())
    assert page.inner_text("#shown").startswith(f"{total} of {total} recipients")
    page.screenshot(path=str(OUTPUT / f"report-{name}.png"), full_page=True)
    page.close()


def test_the_recipients_table_searches_and_sorts(cli, campaigns, tmp_path: Path) -> None:
    path = tmp_path / "done.html"
    assert cli("report", "done", "--format", "html", "--output", str(path))[0] == 0
    with chromium() as browser:
        search_and_sort(browser, path)


def search_and_sort(browser, path: Path) -> None:
    page, problems, _ = open_page(browser, path)
    page.fill("#search", "failed")
    assert page.inner_text("#shown").startswith("2 of 24 recipients")
    rows = page.eval_on_selector_all("#recipients tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
    assert sorted(rows) == [urn(3), urn(7)]
    page.fill("#search", "")
    page.click("#recipients th[data-key='0']")
    page.click("#recipients th[data-key='0']")  # descending
    first = page.eval_on_selector("#recipients tbody tr", "row => row.cells[0].textContent")
    assert first == urn(23)
    assert problems == []
    page.close()


def test_a_hostile_value_stays_text(cli, serve_sandbox, tmp_path: Path) -> None:
    """A campaign name or an error the server sent cannot become markup or script in the page."""
    from campaign_runner.sandbox import Scripted

    hostile = "</script><script>document.title='pwned'</script>=HYPERLINK(\"x\")"
    box, url = serve_sandbox(scripted=[Scripted(400, {"success": False, "error": hostile})])
    path = write_campaign(tmp_path, recipients=[{"profile_urn": urn(1)}])
    assert cli("run", str(path), base_url=url)[0] == 0
    page_path = tmp_path / "r.html"
    assert cli("report", "test-campaign", "--format", "html", "--output", str(page_path))[0] == 0
    with chromium() as browser:
        page, problems, _ = open_page(browser, page_path)
        assert page.title() == "test-campaign: campaign report" and problems == []
        error = page.eval_on_selector("#recipients tbody tr", "row => row.cells[5].textContent")
        assert error.startswith("</script>")  # as the server wrote it: text, never markup
        page.close()


def until(page, done, seconds: float) -> None:
    """Wait for `done()`, looking every quarter second (the page's own policy forbids Playwright's
    wait_for_function, which evaluates a string)."""
    for _ in range(int(seconds * 4)):
        if done():
            return
        page.wait_for_timeout(250)
    raise AssertionError("timed out")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_dashboard(processes, db: Path, *extra: str) -> str:
    port = free_port()
    log = db.parent / f"dashboard-{port}.log"
    with log.open("wb") as out:
        processes.append(subprocess.Popen([EXECUTABLE, "dashboard", "--db", str(db), "--port", str(port), *extra],
                                          stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    wait_for(lambda: _answers(url), 20)
    return url


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


def test_the_dashboard_moves_while_a_campaign_runs_beside_it(serve_sandbox, processes, tmp_path: Path) -> None:
    box, url = serve_sandbox()
    path = write_campaign(tmp_path, accounts=["acc_1", "acc_2"], limit="1/1s",
                          recipients=[{"profile_urn": urn(i)} for i in range(30)])  # fmt: skip
    db, log = tmp_path / "live.db", tmp_path / "run.log"
    runner = start(processes, ["run", str(path)], db, url, log)
    wait_for(lambda: len(box.log) >= 2, 30)
    dashboard = start_dashboard(processes, db)
    OUTPUT.mkdir(exist_ok=True)
    with chromium() as browser:
        page, problems, asked = open_page(browser, None, dashboard + "campaign/test-campaign")
        sent = lambda: int(page.inner_text("#headline .card[data-status=sent] .n"))  # noqa: E731
        first = sent()
        until(page, lambda: sent() > first, 20)
        drawn = page.evaluate("[...document.querySelectorAll('canvas')].map(c => Boolean(Chart.getChart(c)))")
        assert drawn == [True, True, True]
        assert API_KEY not in page.content()  # the runner beside it has the key; the dashboard never does
        assert sent() > first  # the page moved without being reloaded
        page.screenshot(path=str(OUTPUT / "dashboard-campaign.png"), full_page=True)
        index, more, asked_index = open_page(browser, None, dashboard, ready=False)
        until(index, lambda: index.inner_text("#refreshed") != "now", 10)
        assert index.inner_text("#campaigns tbody tr td a") == "test-campaign"
        index.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)
        assert problems == [] and more == []
        assert all(u.startswith(dashboard) for u in asked + asked_index)  # nothing from any other host
    assert runner.wait(60) == 0, log.read_text()


def test_the_dashboard_refuses_a_wrong_token_and_needs_one_beyond_this_machine(processes, cli, tmp_path: Path) -> None:
    path = write_campaign(tmp_path, recipients=[{"profile_urn": urn(1)}])
    assert cli("run", str(path), "--sandbox")[0] == 0
    db = tmp_path / "runs.db"
    assert cli("dashboard", "--host", "0.0.0.0")[0] == 2
    token = "s3cret-token-0123456789"
    url = start_dashboard(processes, db, "--token", token)
    for wrong in (None, "nope", token + "x"):
        headers = {"Authorization": f"Bearer {wrong}"} if wrong else {}
        for where in ("", "api/status", "campaign/test-campaign", "api/campaign/test-campaign"):
            assert httpx.get(url + where, headers=headers).status_code == 401
    assert (
        httpx.get(url + "api/status", headers={"Authorization": f"Bearer {token}"}).json()["campaigns"][0]["counts"][
            "sent"
        ]
        == 1
    )
    with httpx.Client() as browser_like:
        answer = browser_like.get(url + f"campaign/test-campaign?token={token}", follow_redirects=True)
        assert (
            answer.status_code == 200 and token not in answer.text and str(answer.url) == url + "campaign/test-campaign"
        )
        assert browser_like.post(url + "api/status").status_code == 405  # read-only


@pytest.mark.parametrize("command", ["dashboard", "webhook"])
def test_a_server_on_any_free_port_says_where_and_stops_at_the_first_ctrl_c(cli, tmp_path: Path, command) -> None:
    import signal

    assert cli("block", urn(1))[0] == 0  # a database to serve
    env = {**os.environ, "CONNECTSAFELY_WEBHOOK_SECRET": "0123456789abcdef0123"}
    server = subprocess.Popen([EXECUTABLE, command, "--db", cli.db, "--port", "0"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        first = server.stdout.readline()
        url = first.split(" at ")[-1].split()[0]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/"), first
        assert httpx.get(url, timeout=5).status_code in (200, 401, 404, 405)
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode in (0, 130) and "Traceback" not in out, out
