"""A newcomer's first campaign, through the real command line: no step gives a wrong result silently."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import shlex
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from campaign_runner import plan
from campaign_runner.cli import run_cli

from conftest import API_KEY, EXECUTABLE, by_urn, report, urn, write_campaign, write_text


def dump(db) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.iterdump())


def validate(capsys, *args: str) -> tuple[int, str, str]:
    code = run_cli(["validate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_group_url_is_sent_as_its_id_and_an_octal_looking_id_is_refused(cli, capsys, serve_sandbox, tmp_path):
    box, url = serve_sandbox()
    path = write_campaign(tmp_path, group_id="https://www.linkedin.com/groups/9876543/")
    code, out, _ = validate(capsys, str(path))
    assert code == 0 and ", group 9876543, " in out
    assert cli("run", str(path), base_url=url)[0] == 0
    assert {d.group_id for d in box.log} == {"9876543"}

    octal = write_text(
        tmp_path / "octal.yaml", f"name: x\ngroup_id: 0123\nmessage: Hi\nrecipients: [{{profile_urn: {urn(1)}}}]\n"
    )
    code, out, err = validate(capsys, str(octal))
    assert (code, err) == (
        2,
        f'error: {octal}: group_id: YAML reads 0123 as the number 83: quote it (group_id: "0123")\n',
    )


def test_a_sandbox_rehearsal_never_uses_up_the_real_campaign(cli, capsys, serve_sandbox, tmp_path, monkeypatch):
    """`run --sandbox` then `run` with a real key: the real run sends everyone, because the
    rehearsal kept its own database; and one database given to both refuses the switch."""
    box, url = serve_sandbox()
    path = write_campaign(tmp_path)
    data = tmp_path / "data" / "campaign-runner"
    assert run_cli(["run", str(path), "--sandbox"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"created the sandbox rehearsals’ database {data / 'sandbox.db'}"
    assert out.splitlines()[-1] == "test-campaign: 5 sent"
    assert run_cli(["status", "--sandbox"]) == 0
    assert "5 sent" in capsys.readouterr().out

    monkeypatch.setenv("CONNECTSAFELY_API_KEY", "real-key-123")
    box.config.api_key = "real-key-123"
    assert run_cli(["run", str(path), "--base-url", url]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"created the database {data / 'campaign-runner.db'}"
    assert out.splitlines()[-1] == "test-campaign: 5 sent"
    assert len(box.log) == 5  # the real API got every recipient

    # One database for both, named with --db: the switch is refused, and nothing is sent.
    shared = str(tmp_path / "shared.db")
    assert run_cli(["run", str(path), "--sandbox", "--db", shared]) == 0
    capsys.readouterr()
    before = dump(tmp_path / "shared.db")
    edited = write_campaign(tmp_path, "edited.yaml", limit="5/1s")
    assert run_cli(["run", str(edited), "--base-url", url, "--db", shared]) == 2
    assert capsys.readouterr().err == (
        f"error: campaign 'test-campaign' was sent to the built-in sandbox in {shared}, and this run sends to {url}:"
        " its recipients count as done there. To start it afresh, give it a new name or another --db; to go on"
        " with it here as it is, run again with --switch-api\n"
    )
    assert len(box.log) == 5
    assert dump(tmp_path / "shared.db") == before  # refused before the file was loaded


def test_one_database_wherever_you_run(cli, capsys, serve_sandbox, tmp_path, monkeypatch):
    """Run from two folders: the second run knows who the first sent, and says which database it uses."""
    box, url = serve_sandbox()
    monkeypatch.setenv("CONNECTSAFELY_API_KEY", "test-key-0123456789")
    box.config.api_key = "test-key-0123456789"
    path = write_campaign(tmp_path)
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        assert run_cli(["run", str(path), "--base-url", url]) == 0
    assert "0 new, 5 already known" in capsys.readouterr().out
    assert len(box.log) == 5

    # A database left in the working folder by an older version is still used, and said so...
    default = tmp_path / "data" / "campaign-runner" / "campaign-runner.db"
    legacy = tmp_path / "two" / "campaign-runner.db"
    legacy.write_bytes(default.read_bytes())
    default.rename(tmp_path / "moved.db")
    assert run_cli(["status"]) == 0
    err = capsys.readouterr().err
    assert err == f"using the database in this folder, {legacy} (without it: {default})\n"
    # ...but beside the default one it is refused: which history is the truth is the user's call.
    (tmp_path / "moved.db").rename(default)
    assert run_cli(["run", str(path), "--base-url", url]) == 2
    assert capsys.readouterr().err == (
        f"error: there are two databases: {legacy} in this folder and {default}; say which with --db (or move"
        f" {legacy} to {default} if it is the one to keep)\n"
    )
    assert len(box.log) == 5


def test_a_spreadsheet_export_just_works(capsys, tmp_path) -> None:
    """Semicolons, headers as a spreadsheet writes them, empty trailing columns, blank cells."""
    (tmp_path / "leads.csv").write_text(
        f"Profile URN;firstName;Company;;\n{urn(1)};Ada;Analytical Engines;;\n{urn(2)};Zoë;;;\n{urn(3)};;;;\n",
        encoding="utf-8-sig",
    )
    message = 'Hi {{ first_name | default("there") }}{% if company %} from {{ company }}{% endif %}!'
    path = write_campaign(tmp_path, recipients=None, recipients_file="leads.csv", message=message)
    code, out, err = validate(capsys, str(path), "--show", "3")
    assert (code, err) == (0, "")
    assert out.splitlines()[1:] == [
        "columns read as: Profile URN -> profile_urn, firstName -> first_name, Company -> company",
        f"--- {urn(1)} (leads.csv line 2)",
        "Hi Ada from Analytical Engines!",
        f"--- {urn(2)} (leads.csv line 3)",
        "Hi Zoë!",
        f"--- {urn(3)} (leads.csv line 4)",
        "Hi there!",
    ]
    code, out, err = run_preview(capsys, str(path), "--recipient", urn(2))
    assert (code, out, err) == (0, f"--- {urn(2)} (leads.csv line 3)\nHi Zoë!\n", "")


def run_preview(capsys, *args: str) -> tuple[int, str, str]:
    code = run_cli(["preview", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_warns_of_a_variable_no_recipient_has_and_a_column_never_used(capsys, tmp_path) -> None:
    (tmp_path / "leads.csv").write_text(f"profile_urn,first_name,company\n{urn(1)},Ada,AE\n", encoding="utf-8")
    message = 'Hi {{ frist_name | default("there") }}!'
    path = write_campaign(tmp_path, recipients=None, recipients_file="leads.csv", message=message)
    code, out, err = validate(capsys, str(path))
    assert code == 0
    assert err.splitlines() == [
        f"warning: {path}: message: no recipient has {{{{ frist_name }}}} (they have company, first_name), so every"
        " message takes its default",
        f"warning: {path}: recipients: the message never uses the column 'company'",
        f"warning: {path}: recipients: the message never uses the column 'first_name'",
    ]
    # The typo is said by every command that reads the file, not by validate alone.
    for command in (["preview", str(path)], ["run", str(path), "--sandbox", "--no-wait"]):
        run_cli(command)
        assert capsys.readouterr().err.splitlines()[0] == err.splitlines()[0]


def test_a_problem_on_many_rows_is_one_line(capsys, tmp_path) -> None:
    rows = "".join(f"{urn(i)},\n" for i in range(200))
    (tmp_path / "leads.csv").write_text(f"profile_urn,first_name\n{rows}", encoding="utf-8")
    path = write_campaign(tmp_path, recipients=None, recipients_file="leads.csv", message="Hi {{ first_name }}!")
    code, out, err = validate(capsys, str(path))
    assert (code, out) == (2, "")
    assert err == (
        f"error: {path}: leads.csv line 2, leads.csv line 3, leads.csv line 4 and 197 more: message does not render:"
        " 'first_name' is blank (give it a default(...), or test it with {% if %})\n"
    )


def test_a_retried_recipient_gets_the_message_that_was_accepted(cli, serve_sandbox, tmp_path) -> None:
    box, url = serve_sandbox(non_members={urn(1), urn(2)})
    people = [{"profile_urn": urn(i), "first_name": f"P{i}"} for i in range(3)]
    path = write_campaign(tmp_path, recipients=people, message="Old text, {{ first_name }}")
    assert cli("run", str(path), base_url=url)[0] == 0
    path = write_campaign(tmp_path, recipients=people, message="New text, {{ first_name }}")
    code, out, _ = cli("run", str(path), "--accept-changes", base_url=url)
    assert code == 0
    box.config.non_members.clear()
    code, out, _ = cli("retry", "test-campaign", "--urn", urn(1))
    assert (code, out) == (0, "test-campaign: 1 recipient put back to pending, with the campaign's current message\n")
    assert cli("resume", base_url=url)[0] == 0
    assert cli("retry", "test-campaign", "--status", "failed")[0] == 0
    assert cli("resume", base_url=url)[0] == 0
    assert [(d.recipient, d.message) for d in box.log] == [
        (urn(0), "Old text, P0"),
        (urn(1), "New text, P1"),
        (urn(2), "New text, P2"),
    ]


def test_the_report_keeps_the_files_columns_and_opens_in_excel(cli, serve_sandbox, tmp_path) -> None:
    box, url = serve_sandbox()
    (tmp_path / "leads.csv").write_text(
        f"Profile URN,First Name,Company,Status\n{urn(1)},Zoë,Café Ltd,VIP\n", encoding="utf-8"
    )
    path = write_campaign(tmp_path, recipients=None, recipients_file="leads.csv", message="Hi {{ first_name }}",
                          schedule={"timezone": "Asia/Tokyo"})  # fmt: skip
    assert cli("run", str(path), base_url=url)[0] == 0
    sent_at = by_urn(report(cli))[urn(1)]["sent_at"]
    target = tmp_path / "report.csv"
    assert cli("report", "test-campaign", "--excel", "--output", str(target))[0] == 0
    data = target.read_bytes()
    assert data.startswith(b"\xef\xbb\xbfprofile_urn,first_name,company,file_status,status,")
    row = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))[0]
    assert (row["first_name"], row["company"], row["file_status"], row["status"]) == ("Zoë", "Café Ltd", "VIP", "sent")
    # In the campaign's time zone, as `status` shows it, written as Excel reads a date.
    tokyo = datetime.fromisoformat(sent_at.replace("Z", "+00:00")).astimezone(ZoneInfo("Asia/Tokyo"))
    assert row["sent_at"] == tokyo.strftime("%Y-%m-%d %H:%M:%S")


def test_status_shows_each_accounts_state_at_a_glance(cli, serve_sandbox, tmp_path) -> None:
    """A stopped account is not shown as if it were fine; warm-up caps are labelled."""
    box, url = serve_sandbox(credentials_error={"acc_bad"}, forbidden_after={"acc_403": 1})
    accounts = [{"id": "acc_ok", "limit": "1/0.2s"}, "acc_bad", "acc_403"]
    breaker = {"failures": 2, "cooldown": "100ms", "pauses": 0, "forbidden": 2}
    recipients = [{"profile_urn": urn(i)} for i in range(8)]
    path = write_campaign(tmp_path, accounts=accounts, breaker=breaker, recipients=recipients)
    code, out, err = cli("run", str(path), base_url=url)
    assert code == 1 and out.splitlines()[-1] == "test-campaign: 8 sent"
    code, out, _ = cli("status")
    assert code == 0
    lines = {line.split(":", 1)[0]: line for line in out.splitlines()[1:]}
    assert lines["account acc_bad"].startswith("account acc_bad: stopped at ")
    assert "requests keep failing" in lines["account acc_bad"] and "`resume` tries it again" in lines["account acc_bad"]
    assert lines["account acc_403"].startswith("account acc_403: stopped at ")
    assert "refused with 403" in lines["account acc_403"]
    code, out, _ = cli("status", "--json")
    states = {a["account_id"]: a["state"] for a in json.loads(out)["accounts"]}
    assert states["acc_ok"] in ("ready", "waiting") and (states["acc_bad"], states["acc_403"]) == ("stopped",) * 2

    # A warm-up's cap of the day is labelled, and the wait is said in the campaign's time zone.
    warm = write_campaign(tmp_path, "warm.yaml", name="warm", accounts=["acc_w"], limit="150/day", recontact="always",
                          warmup={"start": 20, "increase": 10}, schedule={"timezone": "Europe/Berlin"})  # fmt: skip
    assert cli("run", str(warm), "--no-wait", base_url=url)[0] == 0
    code, out, _ = cli("status", "warm")
    line = out.splitlines()[1]
    assert line.startswith("account acc_w: waiting until ") and " (pacing); limits " in line
    assert re.search(r" \d\d:\d\d CES?T \(pacing\)", line)
    assert "; limits 150/day, warm-up day 1: at most 20 today; 1/20 used in the current window" in line


def test_retry_of_a_recipient_that_cannot_be_retried_says_why_and_writes_nothing(cli, serve_sandbox, tmp_path) -> None:
    box, url = serve_sandbox(non_members={urn(1)})
    assert cli("run", str(write_campaign(tmp_path)), base_url=url)[0] == 0
    code, out, err = cli(
        "retry", "test-campaign", "--urn", urn(0), "--urn", "urn:li:fsd_profile:nobody", "--urn", urn(1)
    )
    assert (code, out) == (2, "")
    assert err == (
        f"error: not put back, so nothing was: {urn(0)} (it is sent, neither failed nor unknown);"
        " urn:li:fsd_profile:nobody (not a recipient of this campaign)\n"
    )
    assert by_urn(report(cli))[urn(1)]["status"] == "failed"


def test_status_and_the_run_show_the_finish_plan_forecasts(cli, serve_sandbox, tmp_path) -> None:
    """One forecaster: the run forecasts when its accounts first wait, says so, and stores it;
    `status` shows that finish, in the campaign's time zone, and `plan` of the same state agrees."""
    box, url = serve_sandbox()
    people = [{"profile_urn": urn(i)} for i in range(40)]
    path = write_campaign(tmp_path, accounts=["acc_1", "acc_2"], limit="6/day", recipients=people,
                          schedule={"timezone": "Europe/Berlin", "hours": "09:00-17:00",
                                    "days": ["mon", "tue", "wed", "thu", "fri"]})  # fmt: skip
    code, out, _ = cli("run", str(path), "--no-wait", base_url=url)
    assert code == 0
    [announced] = [line for line in out.splitlines() if "(forecast)" in line]
    finish = re.search(r"test-campaign: projected finish (\d{4}-\d\d-\d\d \d\d:\d\d CES?T) \(forecast\)", announced)
    assert finish is not None, announced

    code, out, _ = cli("status")
    assert re.search(rf"; projected finish {finish[1]} \(forecast of \d{{4}}-\d\d-\d\d \d\d:\d\d CES?T\)$",
                     out.splitlines()[0]), out  # fmt: skip
    code, out, _ = cli("status", "--json")
    [campaign] = json.loads(out)["campaigns"]
    assert campaign["projected_finish_local"] == finish[1]
    assert campaign["forecast"]["pending"] == campaign["counts"]["pending"] == 40 - len(box.log)
    code, out, _ = cli("plan", str(path), "--json")
    assert code == 0 and json.loads(out)["finish_local"] == finish[1]


def test_a_run_that_never_waits_makes_no_forecast_and_status_says_how_to_get_one(cli, serve_sandbox, tmp_path):
    box, url = serve_sandbox()
    code, out, _ = cli("run", str(write_campaign(tmp_path, limit="1000/second")), base_url=url)
    assert code == 0 and "forecast" not in out
    code, out, _ = cli("status", "--json")
    assert json.loads(out)["campaigns"][0]["forecast"] is None  # all sent: nothing to forecast

    slow = write_campaign(tmp_path, "slow.yaml", name="slow", limit="1/day", recontact="always")
    code, out, _ = cli("run", str(slow), "--no-wait", base_url=url)
    assert "slow: projected finish " in out
    with contextlib.closing(sqlite3.connect(tmp_path / "runs.db")) as conn, conn:  # as an older version left it
        conn.execute("DELETE FROM forecasts")
    code, out, _ = cli("status", "slow")
    assert out.splitlines()[0].endswith(
        "; no forecast yet (a run makes one when its accounts first wait; `plan FILE` shows one now)"
    )


def finishes(cli) -> dict[str, datetime]:
    code, out, _ = cli("status", "--json")
    assert code == 0
    return {
        c["name"]: datetime.fromisoformat(c["projected_finish"].replace("Z", "+00:00"))
        for c in json.loads(out)["campaigns"]
        if c["projected_finish"]
    }


def test_campaigns_run_together_are_forecast_together(cli, serve_sandbox, tmp_path) -> None:
    """Two campaigns sharing one account at 2 a day: the 11 left take five days and a half together,
    not the three or less each would take alone."""
    box, url = serve_sandbox()
    files = [
        write_campaign(tmp_path, f"{name}.yaml", name=name, limit="2/day",
                       recipients=[{"profile_urn": urn(first + i)} for i in range(6)])
        for name, first in (("spring", 0), ("autumn", 100))
    ]  # fmt: skip
    assert cli("run", *map(str, files), "--no-wait", base_url=url)[0] == 0
    assert len(box.log) == 1  # the bucket spreads the two of a day: the next one is due in 12 hours
    found = finishes(cli)
    now = datetime.now(timezone.utc)
    assert set(found) == {"spring", "autumn"}
    assert all(finish - now > timedelta(days=3.5) for finish in found.values()), found  # alone: 2.5 days
    assert max(found.values()) - now > timedelta(days=4.5)


def test_an_account_stopped_during_the_run_is_left_out_of_its_forecast(cli, serve_sandbox, tmp_path) -> None:
    """A fast account is stopped by a 403 streak: the forecast the run leaves behind counts only
    the slow account that goes on, not the one that would have finished everything at once."""
    box, url = serve_sandbox(forbidden_after={"acc_fast": 0})
    accounts = ["acc_slow", {"id": "acc_fast", "limit": "100/1s"}]
    people = [{"profile_urn": urn(i)} for i in range(20)]
    # burst 2: --no-wait would defer acc_fast's second request on its 10 ms pacing, before the streak.
    path = write_campaign(tmp_path, accounts=accounts, limit="3/day", breaker={"forbidden": 2}, recipients=people,
                          burst=2)  # fmt: skip
    code, out, _ = cli("run", str(path), "--no-wait", base_url=url)
    assert "acc_fast stopped for this run" in out
    [finish] = finishes(cli).values()
    assert finish - datetime.now(timezone.utc) > timedelta(days=5)  # about 19 left at 3 a day


def test_the_finish_is_shown_in_the_same_zone_by_run_status_and_plan(cli, serve_sandbox, tmp_path) -> None:
    """Only the accounts name a time zone: the campaign takes its first account's, everywhere."""
    box, url = serve_sandbox()
    accounts = [{"id": "acc_1", "timezone": "Asia/Tokyo"}, {"id": "acc_2", "timezone": "America/Los_Angeles"}]
    path = write_campaign(tmp_path, accounts=accounts, limit="3/day",
                          recipients=[{"profile_urn": urn(i)} for i in range(12)])  # fmt: skip
    code, out, _ = cli("run", str(path), "--no-wait", base_url=url)
    announced = re.search(r"projected finish (\d{4}-\d\d-\d\d \d\d:\d\d JST) \(forecast\)", out)
    assert announced is not None, out
    code, out, _ = cli("status", "--json")
    assert json.loads(out)["campaigns"][0]["projected_finish_local"] == announced[1]
    code, out, _ = cli("plan", str(path), "--json")
    assert json.loads(out)["finish_local"] == announced[1]


def test_a_forecast_that_fails_is_reported_and_never_stops_the_run(cli, serve_sandbox, tmp_path, monkeypatch) -> None:
    """A full temporary folder (or a bug in the simulation) costs the forecast, never a send."""

    def full_disk(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plan, "_forecast_in_thread", full_disk)
    box, url = serve_sandbox()
    path = write_campaign(tmp_path, limit="4/1s", recipients=[{"profile_urn": urn(i)} for i in range(20)])
    code, out, _ = cli("run", str(path), base_url=url)
    assert code == 0
    assert "test-campaign: no forecast: OSError: [Errno 28] No space left on device" in out
    assert out.splitlines()[-1] == "test-campaign: 20 sent"
    assert len(box.log) == 20


def test_what_to_type_next_names_the_database_it_is_about(cli, capsys, serve_sandbox, tmp_path) -> None:
    """After a rehearsal, `status` without --sandbox says where the rehearsal is; the command a
    stopped run suggests goes on with the same database; a --no-wait run whose last answers end
    the work says it is done, not "run again later"."""
    assert run_cli(["run", str(write_campaign(tmp_path)), "--sandbox"]) == 0
    capsys.readouterr()
    assert run_cli(["status"]) == 2
    rehearsals = tmp_path / "data" / "campaign-runner" / "sandbox.db"
    assert capsys.readouterr().err.endswith(f"(the sandbox rehearsals’ one is {rehearsals}: add --sandbox)\n")

    box, url = serve_sandbox(forbidden_after={"acc_1": 1})
    path = write_campaign(tmp_path, "blocked.yaml", name="blocked", breaker={"forbidden": 2})
    code, _, err = cli("run", str(path), base_url=url)
    assert code == 1 and err.endswith(f"then resume: `campaign-runner resume --db {tmp_path / 'runs.db'}`\n")

    # One account has nothing left to claim while the other's request is still on the wire.
    box, url = serve_sandbox(non_members={urn(1)}, typing_delay=0.3)
    two = [{"profile_urn": urn(i)} for i in range(2)]
    quick = write_campaign(tmp_path, "quick.yaml", name="quick", accounts=["acc_3", "acc_4"], limit="100/1s",
                           endpoint="send-group-with-typing", recipients=two)  # fmt: skip
    code, out, _ = cli("run", str(quick), "--no-wait", base_url=url)
    assert code == 0 and "run again later" not in out, out
    assert out.splitlines()[-1] == "quick: 1 sent, 1 failed"


def test_a_closed_pipe_stops_the_forecasts_output_never_the_run(serve_sandbox, tmp_path) -> None:
    """`run ... | head -3`: the forecast's line meets a closed pipe, and every recipient is still sent."""
    box, url = serve_sandbox()
    # Three a second: the fourth waits for the window, and that first wait asks for a forecast.
    people = [{"profile_urn": urn(i)} for i in range(12)]
    path = write_campaign(tmp_path, accounts=["acc_1", "acc_2"], limit="3/1s", recipients=people)
    env = {**os.environ, "CONNECTSAFELY_API_KEY": API_KEY}
    command = f"{shlex.quote(EXECUTABLE)} run {shlex.quote(str(path))} --db {tmp_path / 'runs.db'} --base-url {url}"
    pipeline = f"{command} | head -3; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", pipeline], env=env, capture_output=True, text=True, timeout=60)
    assert len(done.stdout.splitlines()) == 3
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr, done.stderr
    assert len(box.log) == 12


def test_status_shows_the_limits_the_next_run_keeps_not_a_finished_campaigns(cli, serve_sandbox, tmp_path) -> None:
    """A strict campaign that is done binds nobody: the account shows the looser limit of the
    campaign with work left and its use of it, not `9/3 used`."""
    box, url = serve_sandbox()
    strict = write_campaign(tmp_path, "strict.yaml", name="strict", limit="3/day", recipients=[{"profile_urn": urn(0)}])
    assert cli("run", str(strict), base_url=url)[0] == 0
    loose = write_campaign(tmp_path, "loose.yaml", name="loose", limit="20/day",
                           recipients=[{"profile_urn": urn(i)} for i in range(1, 40)])  # fmt: skip
    assert cli("run", str(loose), "--no-wait", base_url=url)[0] == 0
    code, out, _ = cli("status", "--json")
    [account] = json.loads(out)["accounts"]
    assert account["limits"] == "20/day"
    assert (account["window_used"], account["window_cap"]) == (len(box.log), 20)
