"""The runner against a misbehaving sandbox: account-level breakers, blocked accounts, odd answers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import by_urn, report, urn, write_campaign

FAST_BREAKER = {"failures": 2, "cooldown": "100ms", "pauses": 2, "forbidden": 3}


def recipients(n: int, start: int = 0) -> list[dict]:
    return [{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(start, start + n)]


def test_credentials_errors_pause_the_account_then_stop_it_and_fail_nobody(cli, serve_sandbox, tmp_path) -> None:
    box, url = serve_sandbox(credentials_error={"acc_1"})
    path = write_campaign(tmp_path, breaker=FAST_BREAKER, recipients=recipients(3))
    code, out, err = cli("run", str(path), base_url=url)
    assert code == 1
    assert err == (
        "error: acc_1 stopped: requests keep failing (2 pauses, then another failure; last: HTTP 500: Failed to"
        " get LinkedIn authentication credentials); its recipients stay pending. Fix the account, then resume:"
        f" `campaign-runner resume --db {tmp_path / 'runs.db'}`\n"
    )
    assert out.splitlines()[-1] == "test-campaign: 3 pending"
    assert "acc_1 paused until" in out and "acc_1 stopped for this run: requests keep failing" in out
    # Two failures open it; after each pause (100 ms, then 200 ms) one more reopens it; then it stops.
    times = [r.at for r in box.sends]
    assert len(times) == 4
    assert times[2] - times[1] >= 0.1 and times[3] - times[2] >= 0.2
    rows = report(cli)["recipients"]
    assert {r["status"] for r in rows} == {"pending"}
    assert box.log == []


def test_other_accounts_go_on_while_one_is_stopped(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox(credentials_error={"acc_bad"})
    accounts = [{"id": "acc_good", "limit": "1/0.1s"}, "acc_bad"]
    path = write_campaign(tmp_path, accounts=accounts, breaker=FAST_BREAKER, recipients=recipients(10))
    code, out, err = cli("run", str(path), base_url=url)
    assert code == 1
    assert err.startswith("error: acc_bad stopped: requests keep failing")
    assert out.splitlines()[-1] == "test-campaign: 10 sent"
    assert sorted(d.recipient for d in box.log) == [urn(i) for i in range(10)]
    assert {d.account_id for d in box.log} == {"acc_good"}
    assert [r.status for r in box.sends if r.account_id == "acc_bad"] == [500] * 4


def test_server_errors_across_recipients_fail_nobody_but_one_bad_recipient_fails(cli, serve_sandbox, tmp_path) -> None:
    # An outage: every request fails. Only the first failure of the streak is charged to its
    # recipient, so no one reaches the 3 attempts and the account stops with everyone pending.
    box, url = serve_sandbox(error_rate=1.0)
    path = write_campaign(tmp_path, breaker=FAST_BREAKER, recipients=recipients(4))
    assert cli("run", str(path), base_url=url)[0] == 1
    assert {r["status"] for r in report(cli)["recipients"]} == {"pending"}
    conn = sqlite3.connect(tmp_path / "runs.db")
    assert max(row[0] for row in conn.execute("SELECT retries FROM recipients")) == 1
    conn.close()

    # One bad recipient among good ones: its failures are its own, so it is retried and then
    # failed after its three attempts, while the others go out and the account is never stopped.
    box.config.error_rate = 0.0
    box.config.fail_500 = {urn(1): 10}
    code, out, err = cli("resume", base_url=url)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "test-campaign: 3 sent, 1 failed"
    row = by_urn(report(cli))[urn(1)]
    assert (row["status"], row["http_status"]) == ("failed", 500)
    assert [r.status for r in box.sends if r.recipient == urn(1)][-3:] == [500, 500, 500]


def test_a_403_streak_stops_the_account_and_puts_the_streak_back(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox(forbidden_after={"acc_1": 1})
    path = write_campaign(tmp_path, breaker=FAST_BREAKER, recipients=recipients(6))
    code, out, err = cli("run", str(path), base_url=url)
    assert code == 1
    assert err == (
        "error: acc_1 stopped: 3 recipients in a row refused with 403 (last: HTTP 403: Your trial has expired or"
        " you have no active subscription): the account or its subscription looks blocked; 3 of them put back to"
        f" pending. Fix the account, then resume: `campaign-runner resume --db {tmp_path / 'runs.db'}`\n"
    )
    assert out.splitlines()[-1] == "test-campaign: 6 pending"
    rows = by_urn(report(cli))
    assert rows[urn(0)]["error"].startswith("put back: 3 recipients in a row refused with 403")
    assert rows[urn(0)]["error"].endswith("another 403 fails it for good")
    assert rows[urn(4)]["error"] is None and rows[urn(4)]["attempts"] == 0

    # Still blocked: the three put back once are refused again, and now they fail for good.
    code, out, _ = cli("resume", base_url=url)
    assert code == 1
    assert out.splitlines()[-1] == "test-campaign: 3 pending, 3 failed"
    assert {u for u, r in by_urn(report(cli)).items() if r["status"] == "failed"} == {urn(0), urn(1), urn(2)}

    # The subscription is renewed: the rest go out.
    box.config.forbidden_after.clear()
    code, out, err = cli("resume", base_url=url)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "test-campaign: 3 sent, 3 failed"
    assert sorted(d.recipient for d in box.log) == [urn(3), urn(4), urn(5)]


def test_real_non_members_among_members_are_failed_and_the_account_goes_on(cli, serve_sandbox, tmp_path) -> None:
    gone = {urn(i) for i in (0, 1, 3, 4, 6, 7)}  # never 3 refusals in a row
    box, url = serve_sandbox(non_members=gone)
    path = write_campaign(tmp_path, breaker=FAST_BREAKER, recipients=recipients(9))
    code, out, _ = cli("run", str(path), base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 3 sent, 6 failed"


def test_html_502_and_mangled_headers_are_recorded_as_they_came(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox(bad_headers_rate=1.0, seed=5)
    path = write_campaign(tmp_path, recipients=recipients(6))
    assert cli("run", str(path), base_url=url)[0] == 0
    box.config.bad_gateway_rate = 1.0
    path = write_campaign(tmp_path, recipients=recipients(7))
    code, out, _ = cli("run", str(path), base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 6 sent, 1 unknown"
    conn = sqlite3.connect(tmp_path / "runs.db")
    rows = conn.execute(
        "SELECT outcome, http_status, rl_limit, rl_remaining, rl_reset, response_body FROM attempts ORDER BY id"
    ).fetchall()
    conn.close()
    assert {row[2:5] for row in rows[:6]} == {(None, None, None), ("unlimited", "n/a", "tomorrow")}
    assert rows[6][:5] == ("unknown", 502, None, None, None)
    assert rows[6][5].startswith("<html><head><title>502 Bad Gateway</title>")
    row = by_urn(report(cli))[urn(6)]
    assert row["error"] == "HTTP 502: Bad Gateway (an HTML page); the message may have been sent"
