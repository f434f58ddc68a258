"""Whole outputs of the commands that do not send, and the exit codes."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click
import pytest

from campaign_runner.cli import cli as command_group
from campaign_runner.cli import run_cli

from conftest import API_KEY, urn, write_campaign, write_text

REPO = Path(__file__).resolve().parent.parent


def invoke(capsys, *args: str) -> tuple[int, str, str]:
    code = run_cli(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_lists_every_problem_with_its_place(capsys, tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "bad.yaml",
        f"""
        name: bad-file
        group_id: "1"
        message: "Hi {{{{ first_name }}}}"
        recipients:
          - {{profile_urn: "{urn(1)}", first_name: Ada}}
          - {{profile_urn: "urn:li:fsd_profile:not valid", first_name: Bob}}
          - {{profile_urn: "{urn(3)}"}}
          - {{profile_urn: "{urn(1)}", first_name: Ada}}
        """,
    )
    code, out, err = invoke(capsys, "validate", str(path))
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        f"error: {path}: recipients[1].profile_urn: invalid profile_urn 'urn:li:fsd_profile:not valid':"
        " expected urn:li:fsd_profile:<id>",
        f"error: {path}: recipients[2]: message does not render: 'first_name' is undefined",
        f"warning: {path}: recipients[3]: {urn(1)} is listed twice (first at recipients[0]); kept once",
        "error: 2 errors in campaign files; nothing was sent or written",
    ]
    assert list(tmp_path.glob("*.db")) == []


def test_validate_ok(capsys) -> None:
    code, out, err = invoke(capsys, "validate", str(REPO / "campaigns" / "example.yaml"))
    assert (code, err) == (0, "")
    assert out == (
        f"{REPO / 'campaigns' / 'example.yaml'}: ok: campaign spring-meetup-invite, 5 recipients"
        " (0 duplicates dropped), group 12345678, endpoint send-group-with-typing, accounts: acc_1 150/day,"
        " acc_2 100/day\n"
    )


def test_run_refuses_a_bad_file_before_writing_anything(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CONNECTSAFELY_API_KEY", API_KEY)
    path = write_campaign(tmp_path, recipents=[])
    code, _, err = invoke(capsys, "run", str(path), "--db", str(tmp_path / "x.db"))
    assert code == 2
    assert err.splitlines()[0] == f"error: {path}: recipents: unknown key (check its spelling)"
    assert not (tmp_path / "x.db").exists()


@pytest.fixture
def finished_db(capsys, tmp_path: Path, serve_sandbox, monkeypatch) -> Path:
    """A campaign with one of each outcome: sent, failed (403), a formula-looking message, a skip."""
    monkeypatch.setenv("CONNECTSAFELY_API_KEY", API_KEY)
    box, url = serve_sandbox(non_members={urn(1)})
    db = tmp_path / "done.db"
    path = write_campaign(
        tmp_path,
        message="{{ greeting }}",
        recipients=[
            {"profile_urn": urn(0), "greeting": "Hello"},
            {"profile_urn": urn(1), "greeting": "Hi"},
            {"profile_urn": urn(2), "greeting": '=HYPERLINK("http://x")'},
        ],
    )
    assert run_cli(["run", str(path), "--db", str(db), "--base-url", url]) == 0
    capsys.readouterr()
    return db


def test_report_csv_neutralises_formulas(capsys, finished_db: Path) -> None:
    code, out, err = invoke(capsys, "report", "test-campaign", "--db", str(finished_db))
    assert (code, err) == (0, "")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == [
        "profile_urn",
        "greeting",  # the file's own column, beside the outcome
        "status",
        "account_id",
        "http_status",
        "error",
        "attempts",
        "sent_at",
        "message",
        "public_identifier",  # from a profile URL or a group member: empty for a recipient given by URN
        "step",  # the step it is on (1 for a single message)
        "replied_at",
        "reply",
    ]
    assert [(r["profile_urn"], r["status"], r["http_status"]) for r in rows] == [
        (urn(0), "sent", "200"), (urn(1), "failed", "403"), (urn(2), "sent", "200"),
    ]  # fmt: skip
    assert rows[2]["message"] == rows[2]["greeting"] == '\'=HYPERLINK("http://x")'
    assert rows[1]["error"] == "Error sending group context message: Request failed with status code 403"


def test_report_json_to_a_file_and_filtered(capsys, finished_db: Path, tmp_path: Path) -> None:
    target = tmp_path / "failed.json"
    code, out, err = invoke(capsys, "report", "test-campaign", "--db", str(finished_db), "--format", "json",
                            "--status", "failed", "--output", str(target))  # fmt: skip
    assert (code, out, err) == (0, "", f"wrote 1 recipient to {target}\n")
    data = json.loads(target.read_text())
    assert data["campaign"] == "test-campaign"
    assert data["counts"]["sent"] == 2 and data["counts"]["failed"] == 1
    assert [
        (r["profile_urn"], r["status"], r["account_id"], r["attempts"], r["sent_at"]) for r in data["recipients"]
    ] == [(urn(1), "failed", "acc_1", 1, None)]


def test_report_of_an_unknown_campaign(capsys, finished_db: Path) -> None:
    code, out, err = invoke(capsys, "report", "nope", "--db", str(finished_db))
    assert (code, out) == (2, "")
    assert err == f"error: no campaign named 'nope' in {finished_db} (its campaigns: test-campaign)\n"


def test_status_text_and_json(capsys, finished_db: Path) -> None:
    code, out, _ = invoke(capsys, "status", "--db", str(finished_db))
    assert code == 0
    lines = out.splitlines()
    assert (
        lines[0]
        == "test-campaign: 3 recipients: 0 pending, 0 in_flight, 2 sent, 1 failed, 0 unknown, 0 skipped, 0 suppressed"
    )
    assert re.fullmatch(r"account acc_1: ready to send; limits 1000/second; \d/1000 used in the current window",
                        lines[1])  # fmt: skip
    code, out, _ = invoke(capsys, "status", "test-campaign", "--db", str(finished_db), "--json")
    data = json.loads(out)
    assert data["campaigns"] == [
        {
            "name": "test-campaign",
            "counts": {
                "pending": 0,
                "in_flight": 0,
                "sent": 2,
                "failed": 1,
                "unknown": 0,
                "skipped": 0,
                "suppressed": 0,
                "replied": 0,
            },
            "projected_finish": None,
            "projected_finish_local": None,
            "forecast": None,
            "steps": [{"step": 1, "variant": "", "sent": 2, "replied": 0, "reply_rate": 0.0}],
            "accounts_able": 1,
            "lookups_waiting": 0,
            "audience": None,
        }
    ]
    (account,) = data["accounts"]
    assert (account["account_id"], account["limits"], account["window_cap"]) == ("acc_1", "1000/second", 1000)


def test_retry_puts_failed_back_to_pending(capsys, finished_db: Path) -> None:
    code, out, err = invoke(capsys, "retry", "test-campaign", "--status", "failed", "--db", str(finished_db))
    assert (code, out, err) == (
        0,
        "test-campaign: 1 failed recipient put back to pending, with the campaign's current message\n",
        "",
    )
    with sqlite3.connect(finished_db) as db:
        assert db.execute("SELECT status FROM recipients WHERE profile_urn = ?", (urn(1),)).fetchone() == ("pending",)
    code, out, err = invoke(capsys, "retry", "nope", "--status", "unknown", "--db", str(finished_db))
    assert (code, err) == (2, f"error: no campaign named 'nope' in {finished_db} (its campaigns: test-campaign)\n")


def test_resume_with_nothing_left(capsys, finished_db: Path, monkeypatch) -> None:
    monkeypatch.setenv("CONNECTSAFELY_API_KEY", API_KEY)
    code, out, _ = invoke(capsys, "resume", "--db", str(finished_db))
    assert (code, out) == (0, "nothing to resume: every campaign is finished\n")


def test_debug_shows_the_traceback(capsys, tmp_path: Path) -> None:
    code, _, err = invoke(capsys, "--debug", "status", "--db", str(tmp_path / "absent.db"))
    assert code == 2
    assert "Traceback" in err and err.rstrip().endswith("(give --db, or run a campaign first)")


def test_every_command_has_help_with_an_example() -> None:
    commands = list(command_group.commands.items())
    while commands:
        name, command = commands.pop()
        text = command.get_help(click.Context(command, info_name=name))
        assert "Example:" in text, name
        assert command.help and command.help.strip(), name
        commands += [(f"{name} {sub}", c) for sub, c in getattr(command, "commands", {}).items()]


def test_version(capsys) -> None:
    code, out, _ = invoke(capsys, "--version")
    assert code == 0 and out.startswith("campaign-runner, version ")


def test_report_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    import subprocess
    import sys

    import anyio

    from campaign_runner.config import load_campaign
    from campaign_runner.store import Store

    db = tmp_path / "big.db"
    path = write_campaign(
        tmp_path, message="{{ 'x' * 200 }}", recipients=[{"profile_urn": urn(i)} for i in range(2000)]
    )

    async def load() -> None:
        store = await Store.open(db, 0.0)
        await store.load([load_campaign(path)], 0.0)
        await store.close()

    anyio.run(load)
    executable = str(Path(sys.executable).parent / "campaign-runner")
    # 400 KB of report into a reader that stops after 10 bytes: click ends it quietly.
    command = f"'{executable}' report test-campaign --db '{db}' | head -c 10"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.stdout == "profile_ur"
    assert result.stderr == ""


def test_report_output_into_a_missing_folder(capsys, finished_db: Path, tmp_path: Path) -> None:
    code, _, err = invoke(capsys, "report", "test-campaign", "--db", str(finished_db), "--output",
                          str(tmp_path / "nope" / "r.csv"))  # fmt: skip
    assert (code, err) == (2, f"error: --output: no folder {tmp_path / 'nope'}\n")


def test_status_shows_local_next_sends_and_a_projected_finish(capsys, tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path, accounts=["acc_1", {"id": "acc_2", "timezone": "America/New_York"}], limit="24/day",
        schedule={"timezone": "Europe/Berlin", "hours": "09:00-17:00", "days": ["mon", "tue", "wed", "thu", "fri"]},
        recipients=[{"profile_urn": urn(i)} for i in range(96)],
    )  # fmt: skip
    db = str(tmp_path / "s.db")
    assert run_cli(["run", str(path), "--sandbox", "--db", db, "--no-wait"]) == 0
    capsys.readouterr()
    code, out, _ = invoke(capsys, "status", "--db", db, "--json")
    data = json.loads(out)
    [campaign] = data["campaigns"]
    first, second = data["accounts"]
    assert first["next_send_local"].endswith(("CET", "CEST"))
    assert second["next_send_local"].endswith(("EST", "EDT"))
    # About 96 messages at 24 a weekday over two accounts: two working days, more over a weekend.
    finish = datetime.fromisoformat(campaign["projected_finish"].replace("Z", "+00:00"))
    assert timedelta(days=1) < finish - datetime.now(timezone.utc) < timedelta(days=5)
    code, out, _ = invoke(capsys, "status", "--db", db)
    assert "; projected finish 20" in out.splitlines()[0]
