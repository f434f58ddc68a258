"""A newcomer's first campaign, through the real command line: no step gives a wrong result silently."""

from __future__ import annotations

from campaign_runner.cli import run_cli

from conftest import urn, write_campaign, write_text


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
        f'error: {octal}: group_id: YAML reads 0123 as the octal number 83: quote it (group_id: "0123")\n',
    )
