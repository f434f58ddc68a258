"""The real CLI against the sandbox over HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from conftest import API_KEY, by_urn, max_in_window, report, urn, write_campaign


def test_full_campaign_is_sent_once_and_a_second_run_sends_nothing(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox()
    path = write_campaign(tmp_path, accounts=["acc_1", "acc_2"])
    code, out, err = cli("run", str(path), base_url=url)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"created the database {tmp_path / 'runs.db'}"
    assert out.splitlines()[1] == (
        "loaded test-campaign: 5 new, 0 already known, 0 duplicates dropped, 0 no longer in the file"
        " (never sent again), 0 back in the file"
    )
    assert out.splitlines()[-1] == "test-campaign: 5 sent"
    assert sorted(d.recipient for d in box.log) == [urn(i) for i in range(5)]
    assert {d.account_id for d in box.log} == {"acc_1", "acc_2"}
    assert {d.recipient: d.message for d in box.log}[urn(3)] == "Hi Person3!"
    assert all(d.group_id == "12345678" and d.endpoint == "send-group" for d in box.log)

    data = report(cli)
    assert data["counts"] == {
        "pending": 0,
        "in_flight": 0,
        "sent": 5,
        "failed": 0,
        "unknown": 0,
        "skipped": 0,
        "suppressed": 0,
        "replied": 0,
    }
    for row in data["recipients"]:
        assert (row["status"], row["http_status"], row["attempts"], row["error"]) == ("sent", 200, 1, None)
        assert row["sent_at"].endswith("Z")
        assert row["account_id"] in ("acc_1", "acc_2")

    code, out, _ = cli("run", str(path), base_url=url)
    assert code == 0
    assert "0 new, 5 already known" in out
    assert len(box.log) == 5


def test_new_recipients_are_added_and_removed_ones_skipped(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox()
    first = [{"profile_urn": urn(i)} for i in range(3)]
    path = write_campaign(tmp_path, recipients=first, message="Hello", limit="4/1s")
    assert cli("run", str(path), "--no-wait", base_url=url)[0] == 0  # one send, then the pacing says wait
    assert len(box.log) == 1
    path = write_campaign(tmp_path, recipients=[first[0], first[1], {"profile_urn": urn(7)}], message="Hello",
                          limit="4/1s")  # fmt: skip
    code, out, _ = cli("run", str(path), base_url=url)
    assert code == 0
    assert "1 new, 2 already known, 0 duplicates dropped, 1 no longer in the file (never sent again)" in out
    assert sorted(d.recipient for d in box.log) == [urn(0), urn(1), urn(7)]
    rows = by_urn(report(cli))
    assert (rows[urn(2)]["status"], rows[urn(2)]["error"]) == ("skipped", "removed from the campaign file")


def test_400_and_403_fail_the_recipient_and_are_not_retried(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox(invalid={urn(1)}, non_members={urn(2)})
    code, out, _ = cli("run", str(write_campaign(tmp_path)), base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 3 sent, 2 failed"
    rows = by_urn(report(cli))
    assert (rows[urn(1)]["status"], rows[urn(1)]["http_status"], rows[urn(1)]["error"]) == (
        "failed",
        400,
        "recipientProfileUrn, groupId, and message are required",
    )
    assert (rows[urn(2)]["status"], rows[urn(2)]["http_status"], rows[urn(2)]["error"]) == (
        "failed",
        403,
        "Error sending group context message: Request failed with status code 403",
    )
    tries = Counter(r.recipient for r in box.sends)
    assert tries[urn(1)] == tries[urn(2)] == 1


def test_429_holds_the_account_until_then_continues(cli, serve_sandbox, tmp_path: Path, clock_now=None) -> None:
    from campaign_runner.clock import SystemClock

    until = SystemClock().now() + 1.5
    box, url = serve_sandbox(holds={"acc_1": until})
    code, out, _ = cli("run", str(write_campaign(tmp_path)), base_url=url)
    assert code == 0
    assert "acc_1 held by the API until" in out
    assert out.splitlines()[-1] == "test-campaign: 5 sent"
    refused = [r for r in box.sends if r.status == 429]
    assert len(refused) == 1  # it did not hammer through the hold
    assert all(r.at >= until for r in box.sends if r.status == 200)
    rows = by_urn(report(cli))
    assert rows[refused[0].recipient]["attempts"] == 2  # waited, then sent: not a failure


def test_remaining_zero_pauses_before_the_server_says_429(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox(quota=2, quota_window=1.0)
    code, out, _ = cli("run", str(write_campaign(tmp_path, limit="100/1s")), base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 5 sent"
    assert [r.status for r in box.sends] == [200] * 5
    assert max_in_window([d.delivered_at for d in box.log], 1.0) <= 2


def test_401_stops_the_run_and_marks_nothing_failed(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox(unauthorized_after=3)
    path = write_campaign(tmp_path, accounts=["acc_1"])
    code, out, err = cli("run", str(path), base_url=url)
    assert code == 1
    assert (
        err == "error: the API refused the key (401: Unauthorized - Invalid credentials); nothing was marked failed\n"
    )
    assert out.splitlines()[-1] == "test-campaign: 3 pending, 2 sent"
    assert len(box.log) == 2

    box.config.unauthorized_after = None  # a fixed key: resume finishes the job
    code, out, _ = cli("resume", base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 5 sent"
    assert sorted(d.recipient for d in box.log) == [urn(i) for i in range(5)]


def test_500_is_retried_with_backoff_then_failed(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox(fail_500={urn(1): 2, urn(2): 10})
    # Failures of two recipients back to back may look like the account's (test_faults.py);
    # here the breaker is kept out of the way to see the recipients' own retries.
    code, out, _ = cli("run", str(write_campaign(tmp_path, breaker={"failures": 10})), base_url=url)
    assert code == 0
    rows = by_urn(report(cli))
    assert (rows[urn(1)]["status"], rows[urn(1)]["attempts"]) == ("sent", 3)
    assert (rows[urn(2)]["status"], rows[urn(2)]["http_status"]) == ("failed", 500)
    # 3 attempts count against it; one that came straight after urn(1)'s failure was put down to
    # the account (see test_guard.py), so it may have taken more.
    assert rows[urn(2)]["attempts"] >= 3
    assert rows[urn(2)]["error"] == "Internal server error"
    times = [r.at for r in box.sends if r.recipient == urn(2)]
    # 50 ms backoff, doubling with each failure counted against it.
    assert times[1] - times[0] >= 0.05 and times[-1] - times[-2] >= 0.1


def test_refused_connections_are_retried_then_failed(cli, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write_campaign(tmp_path, recipients=[{"profile_urn": urn(0)}])
    code, out, _ = cli("run", str(path), base_url=f"http://127.0.0.1:{port}/linkedin")
    assert code == 0
    row = report(cli)["recipients"][0]
    assert (row["status"], row["attempts"], row["http_status"]) == ("failed", 3, None)
    assert row["error"].startswith("no connection: ConnectError")


def test_3_per_2s_holds_in_every_window_across_a_restart(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox()
    first = [{"profile_urn": urn(i)} for i in range(4)]
    path = write_campaign(tmp_path, limit="3/2s", recipients=first)
    assert cli("run", str(path), base_url=url)[0] == 0
    # A new process: nothing in memory, only the database remembers the last sends.
    path = write_campaign(tmp_path, limit="3/2s", recipients=first + [{"profile_urn": urn(i)} for i in range(4, 8)])
    assert cli("run", str(path), base_url=url)[0] == 0
    assert len(box.log) == 8
    assert max_in_window([d.received_at for d in box.log], 2.0) == 3


def test_campaigns_sharing_an_account_share_its_limit(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox()
    strict = write_campaign(tmp_path, "a.yaml", name="strict", limit="3/2s",
                            recipients=[{"profile_urn": urn(i)} for i in range(4)])  # fmt: skip
    loose = write_campaign(tmp_path, "b.yaml", name="loose", limit="1000/1s",
                           recipients=[{"profile_urn": urn(i)} for i in range(10, 14)])  # fmt: skip
    code, out, _ = cli("run", str(strict), str(loose), base_url=url)
    assert code == 0
    assert "accounts: acc_1 3/2s, 1000/second" in out
    assert len(box.log) == 8
    assert {d.recipient for d in box.log} == {urn(i) for i in (*range(4), *range(10, 14))}
    # The smallest limit holds for the account as a whole, across both campaigns.
    assert max_in_window([d.received_at for d in box.log], 2.0) == 3
    # They took turns instead of one draining first.
    order = ["strict" if d.recipient < urn(10) else "loose" for d in box.log]
    assert order[:4] in (["strict", "loose"] * 2, ["loose", "strict"] * 2)


def test_changed_message_is_refused_after_sending_began(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox()
    recipients = [{"profile_urn": urn(i)} for i in range(3)]
    path = write_campaign(tmp_path, recipients=recipients, message="First version", limit="4/1s")
    assert cli("run", str(path), "--no-wait", base_url=url)[0] == 0
    path = write_campaign(tmp_path, recipients=recipients, message="Second version", limit="4/1s")
    code, _, err = cli("run", str(path), base_url=url)
    assert code == 2
    assert err == (
        "error: campaign 'test-campaign' has already sent messages and its message changed; run again with"
        " --accept-changes to apply the change to unsent recipients only, or give the campaign a new name\n"
    )
    assert len(box.log) == 1
    code, out, _ = cli("run", str(path), "--accept-changes", base_url=url)
    assert code == 0
    assert "test-campaign: message changed: 2 unsent recipients take the new one" in out.splitlines()
    assert [d.message for d in box.log] == ["First version", "Second version", "Second version"]


def test_an_edited_variable_does_not_change_a_started_campaign_silently(cli, serve_sandbox, tmp_path: Path) -> None:
    box, url = serve_sandbox()
    people = [{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(3)]
    path = write_campaign(tmp_path, recipients=people, limit="4/1s")
    assert cli("run", str(path), "--no-wait", base_url=url)[0] == 0
    people[2]["first_name"] = "Corrected"
    path = write_campaign(tmp_path, recipients=people, limit="4/1s")
    code, _, err = cli("run", str(path), base_url=url)
    assert code == 0
    assert err == (
        "warning: test-campaign: 1 unsent recipients have a different message in the file now;"
        " they keep the stored one (--accept-changes applies the file's)\n"
    )
    assert [d.message for d in box.log] == ["Hi P0!", "Hi P1!", "Hi P2!"]


def test_the_run_ends_as_soon_as_the_last_request_does(cli, serve_sandbox, tmp_path: Path) -> None:
    """An account with nothing left waits for the others' last answers, not for a polling period."""
    import time

    from campaign_runner.store import ELSEWHERE_POLL

    box, url = serve_sandbox(typing_delay=0.5)
    path = write_campaign(tmp_path, endpoint="send-group-with-typing", accounts=["acc_1", "acc_2"],
                          recipients=[{"profile_urn": urn(i)} for i in range(3)])  # fmt: skip
    started = time.monotonic()
    assert cli("run", str(path), base_url=url)[0] == 0
    # About a second of work; a missed wake-up would add a whole polling period on top.
    assert time.monotonic() - started < ELSEWHERE_POLL
    assert len(box.log) == 3


def test_the_run_ends_when_the_work_does_not_when_a_slow_account_may_send_again(
    cli, serve_sandbox, tmp_path: Path
) -> None:
    import time

    box, url = serve_sandbox()
    accounts = [{"id": "fast", "limit": "100/10s"}, {"id": "slow", "limit": "1/90s"}]
    path = write_campaign(tmp_path, accounts=accounts, recipients=[{"profile_urn": urn(i)} for i in range(4)])
    started = time.monotonic()
    code, out, _ = cli("run", str(path), base_url=url)
    assert code == 0
    assert time.monotonic() - started < 30  # not the 90 s the slow account would have to wait
    assert out.splitlines()[-1] == "test-campaign: 4 sent"
    assert Counter(d.account_id for d in box.log) == {"fast": 3, "slow": 1}


def test_429_without_hold_until_waits_for_the_reset_header(cli, serve_sandbox, tmp_path: Path) -> None:
    """Another tool used up the account: the server's 429 and Reset win over the local count."""
    import httpx

    from campaign_runner.clock import parse_iso

    box, url = serve_sandbox(quota=3, quota_window=2.0)
    with httpx.Client(base_url=url + "/", headers={"Authorization": f"Bearer {API_KEY}"}) as other_tool:
        for i in range(3):
            body = {"recipientProfileUrn": urn(100 + i), "groupId": "1", "message": "hi", "accountId": "acc_1"}
            assert other_tool.post("messaging/send-group", json=body).status_code == 200
    code, out, _ = cli("run", str(write_campaign(tmp_path, limit="100/1s")), base_url=url)
    assert code == 0
    assert out.splitlines()[-1] == "test-campaign: 5 sent"
    (refused,) = [r for r in box.sends if r.status == 429]
    held = next(line for line in out.splitlines() if " held by the API until " in line)
    reset = parse_iso(held.split(" held by the API until ")[1].split()[0])
    assert reset >= refused.at
    later = [r.at for r in box.sends if r.at > refused.at]
    assert later and min(later) >= reset  # nothing before the reset the server named


def test_a_finished_run_ends_at_its_last_answer_not_at_the_next_allowed_send(cli, serve_sandbox, tmp_path) -> None:
    box, url = serve_sandbox()
    path = write_campaign(tmp_path, limit="1/20s", recipients=[{"profile_urn": urn(0)}])
    started = time.monotonic()
    code, out, _ = cli("run", str(path), base_url=url)
    assert (code, out.splitlines()[-1]) == (0, "test-campaign: 1 sent")
    assert time.monotonic() - started < 10  # not the 20 s until the account could send again


def test_a_pause_between_sends_is_said_while_it_lasts(cli, serve_sandbox, tmp_path) -> None:
    box, url = serve_sandbox()
    path = write_campaign(tmp_path, limit="1/5s", recipients=[{"profile_urn": urn(i)} for i in range(2)])
    code, out, _ = cli("run", str(path), base_url=url)
    assert code == 0
    lines = out.splitlines()
    sent = [i for i, line in enumerate(lines) if " test-campaign sent " in line]
    assert len(sent) == 2
    assert any("acc_1 pacing: next send at " in line for line in lines[sent[0] + 1 : sent[1]]), out
