from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import assume, given, settings

from campaign_runner.config import column_name, load_campaign, parse_duration
from campaign_runner.errors import CampaignFileError
from campaign_runner.settings import DEFAULT_ACCOUNT, Limit

from conftest import LIMIT_TEXTS, parsed_or_none, urn, write_campaign, write_text

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "cap", "window"),
    [
        ("150/day", 150, 86400),
        ("10/hour", 10, 3600),
        ("700/week", 700, 604800),
        ("60/minute", 60, 60),
        ("5/3s", 5, 3),
        ("3/2s", 3, 2),
        ("20/1.5m", 20, 90),
        ("1/2h", 1, 7200),
        (" 150 / 1d ", 150, 86400),
    ],
)
def test_limit_forms(text: str, cap: int, window: float) -> None:
    assert Limit.parse(text) == Limit(cap, window)


@pytest.mark.parametrize("text", ["150", "0/day", "150/fortnight", "5/0s", "-1/day", "5/3x", "many/day", ""])
def test_bad_limits(text: str) -> None:
    with pytest.raises(ValueError):
        Limit.parse(text)


def test_durations() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2s") == 2
    assert parse_duration("1.5m") == 90
    assert parse_duration(3) == 3
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_example_campaign_validates() -> None:
    campaign = load_campaign(REPO / "campaigns" / "example.yaml")
    assert campaign.name == "spring-meetup-invite"
    assert [(a.id, a.limit) for a in campaign.accounts] == [("acc_1", Limit(150, 86400)), ("acc_2", Limit(100, 86400))]
    assert len(campaign.recipients) == 5
    # Blank cells fall back to the template's defaults instead of rendering "Hi ,".
    nameless = next(r for r in campaign.recipients if "Nordic Data" in r.message)
    assert nameless.message.startswith("Hi there,")
    assert "spring meetup in town" in nameless.message
    assert all(r.message == r.message.strip() for r in campaign.recipients)


def test_demo_campaign_validates() -> None:
    campaign = load_campaign(REPO / "campaigns" / "demo.yaml")
    assert campaign.limit == Limit(5, 3)
    assert len(campaign.recipients) >= 10


def test_defaults(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, accounts=None, limit=None, endpoint=None, retry=None)
    campaign = load_campaign(path)
    assert campaign.endpoint == "send-group-with-typing"
    assert campaign.accounts[0].id == DEFAULT_ACCOUNT
    assert campaign.limit == Limit(150, 86400)
    assert (campaign.max_attempts, campaign.backoff) == (3, 2.0)
    assert list(campaign.recipients)[0].message == "Hi Person0!"


def test_numeric_account_ids_are_ids(tmp_path: Path) -> None:
    assert [a.id for a in load_campaign(write_campaign(tmp_path, accounts=[1234, "acc_2"])).accounts] == [
        "1234",
        "acc_2",
    ]


def test_numeric_group_id_becomes_its_decimal_string(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "c.yaml",
        f"""
        name: numeric
        group_id: 12345678
        message: hello
        recipients: [{{profile_urn: "{urn(1)}"}}]
        """,
    )
    assert load_campaign(path).group_id == "12345678"


def test_csv_with_bom_and_inline_recipients_merge(tmp_path: Path) -> None:
    (tmp_path / "leads.csv").write_bytes((f"\ufeffprofile_urn,first_name\r\n{urn(1)},Ada\r\n{urn(2)},\r\n").encode())
    path = write_campaign(tmp_path, recipients=[{"profile_urn": urn(0), "first_name": "Inline"}],
                          recipients_file="leads.csv")  # fmt: skip
    campaign = load_campaign(path)
    assert [(r.profile_urn, r.message) for r in campaign.recipients] == [
        (urn(0), "Hi Inline!"),
        (urn(1), "Hi Ada!"),
        (urn(2), "Hi there!"),
    ]
    assert list(campaign.recipients)[1].place == "leads.csv line 2"


def test_duplicates_are_warnings_and_kept_once(tmp_path: Path) -> None:
    (tmp_path / "leads.csv").write_text(f"profile_urn\n{urn(1)}\n{urn(2)}\n", encoding="utf-8")
    path = write_campaign(tmp_path, recipients=[{"profile_urn": urn(1)}, {"profile_urn": urn(1)}],
                          recipients_file="leads.csv")  # fmt: skip
    campaign = load_campaign(path)
    assert [r.profile_urn for r in campaign.recipients] == [urn(1), urn(2)]
    assert campaign.duplicates == 2
    assert [str(w) for w in campaign.warnings if "listed twice" in w.message] == [
        f"recipients[1]: {urn(1)} is listed twice (first at recipients[0]); kept once",
        f"leads.csv line 2: {urn(1)} is listed twice (first at recipients[0]); kept once",
    ]


def problems(path: Path) -> list[str]:
    with pytest.raises(CampaignFileError) as caught:
        load_campaign(path)
    return [str(p) for p in caught.value.errors]


def test_every_problem_is_listed_with_its_place(tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path,
        message="Hi {{ first_name }} from {{ company }}",
        recipients=[
            {"profile_urn": urn(0), "first_name": "A", "company": "C"},
            {"profile_urn": "urn:li:member:123", "first_name": "B", "company": "C"},
            {"profile_urn": urn(2), "first_name": "C"},
        ],
    )
    assert problems(path) == [
        "recipients[1].profile_urn: invalid profile_urn 'urn:li:member:123': expected urn:li:fsd_profile:<id>",
        "recipients[2]: message does not render: 'company' is undefined",
    ]


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, recipents=[{"profile_urn": urn(0)}])
    assert problems(path) == ["recipents: unknown key (check its spelling)"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "Bad Name"}, "name: String should match pattern '^[a-z0-9_-]{1,64}$'"),
        ({"name": None}, "name: required"),
        ({"limit": "lots"}, "limit: 'lots' is not a limit"),
        ({"endpoint": "send-inmail"}, "endpoint: Input should be 'send-group', 'send-group-with-typing' or"),
        ({"accounts": ["a", "a"]}, "accounts[1]: account 'a' is listed twice"),
        ({"accounts": [{"id": "a", "limt": "1/day"}]}, "accounts[0].limt: unknown key"),
        ({"accounts": [""]}, "accounts[0].id: String should have at least 1 character"),
        ({"message": "   "}, "message: the text is empty"),
        (
            {"message": "{% if false %}x{% endif %}"},
            "recipients[0], recipients[1], recipients[2] and 2 more: message renders empty",
        ),
        (
            {"message": "x" * 8001},
            "recipients[0], recipients[1], recipients[2] and 2 more: message renders to 8001 characters (at most 8000)",
        ),
        (
            {"message": "{{ ''.__class__.__mro__ }}"},
            "recipients[0], recipients[1], recipients[2] and 2 more: message does not render: access to attribute",
        ),
        ({"message": "{% if %}"}, "message line 1: template syntax"),
        ({"recipients": []}, "recipients: no recipients"),
        ({"recipients": [{"first_name": "x"}]}, "recipients[0].profile_urn: missing profile_urn"),
        ({"group_id": True}, "group_id: Input should be a valid string"),
        ({"retry": {"backoff": float("nan")}}, "retry.backoff: nan is not a duration"),
        ({"retry": {"backoff": "2h"}}, "retry.backoff: Input should be less than or equal to 3600"),
        ({"limit": "99999999999999999999/day"}, "limit: '99999999999999999999/day': at most 1000000000 requests"),
        ({"burst": 10**6}, "burst: Input should be less than or equal to 1000"),
        ({"accounts": ["acc 1"]}, "accounts[0].id: String should match pattern"),
        ({"recipients_file": ""}, "recipients_file: String should have at least 1 character"),
    ],
)
def test_schema_problems(tmp_path: Path, fields: dict, expected: str) -> None:
    found = problems(write_campaign(tmp_path, **fields))
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"first_name\nAda\n",
            "leads.csv line 1: no profile_urn, profile_url or public_identifier column (columns: first_name)",
        ),
        (b"profile_urn,x,x\n", "leads.csv line 1: duplicate column names: x"),
        (b"", "leads.csv: empty CSV"),
        (b"profile_urn\n", "leads.csv: the CSV has a header but no recipients"),
        ("profile_urn,name\nurn:li:fsd_profile:A,J\xf6rg\n".encode("latin-1"), "leads.csv: not UTF-8 text"),
        (b"profile_urn,name\nurn:li:fsd_profile:A,a,b\n", "leads.csv line 2: 3 fields where the header has 2"),
        (b"profile_urn,2nd contact\n", "leads.csv line 1: column names must be identifiers"),
    ],
)
def test_csv_problems(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "leads.csv").write_bytes(content)
    found = problems(write_campaign(tmp_path, recipients=None, recipients_file="leads.csv"))
    assert any(p.startswith(expected) for p in found), found


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write_text(tmp_path / "c.yaml", "name: x\nmessage: [unclosed\n")
    (found,) = problems(path)
    assert found.startswith("line 3, column 1: YAML syntax")


def test_non_utf8_campaign_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert problems(path) == ["not UTF-8 text (byte 9)"]


def test_recipients_are_read_from_the_file_as_they_are_used(tmp_path: Path) -> None:
    """A big list is never held in memory: the campaign reads its CSV again when iterated, and a
    file that changed since it was checked fails loudly instead of loading something unchecked."""
    (tmp_path / "leads.csv").write_text(f"profile_urn,first_name\n{urn(1)},Ada\n{urn(2)},Bob\n{urn(1)},Ada\n")
    campaign = load_campaign(write_campaign(tmp_path, recipients=None, recipients_file="leads.csv"))
    assert (len(campaign.recipients), campaign.duplicates) == (2, 1)
    assert [w.place for w in campaign.warnings] == ["leads.csv line 4"]
    assert [(r.profile_urn, r.message) for r in campaign.recipients] == [(urn(1), "Hi Ada!"), (urn(2), "Hi Bob!")]
    (tmp_path / "leads.csv").write_text(f"profile_urn,first_name\n{urn(1)},Ada\nurn:li:nobody,Eve\n")
    with pytest.raises(CampaignFileError) as raised:
        list(campaign.recipients)
    assert [p.message for p in raised.value.errors][0] == "the file changed while it was being loaded"


# --- every limit round-trips: parse -> str (what the database stores) -> parse ----------------


@settings(max_examples=300, deadline=None)
@given(LIMIT_TEXTS)
def test_every_valid_limit_reads_back_as_itself(text: str) -> None:
    limit = parsed_or_none(text)
    assume(limit is not None)
    stored = str(limit)
    assert re.fullmatch(r"\d+/(second|minute|hour|day|week|\d+[dhm]|\d+(\.\d+)?s)", stored)  # no exponent
    assert Limit.parse(stored) == limit


def test_a_limit_stored_with_an_exponent_by_an_older_version_still_reads() -> None:
    assert Limit.parse("10000/2.592e+06s") == Limit(10000, 2_592_000.0)
    assert str(Limit.parse("60/minute, 100/10s, 10000/30d".split(",")[2])) == "10000/30d"


@pytest.mark.parametrize(
    "given",
    [
        "https://www.linkedin.com/groups/9876543/",
        "linkedin.com/groups/9876543",
        "http://linkedin.com/groups/9876543/members?x=1",
        " 9876543 ",
    ],
)
def test_a_group_url_becomes_its_id(tmp_path: Path, given: str) -> None:
    assert load_campaign(write_campaign(tmp_path, group_id=given)).group_id == "9876543"


def test_group_ids_that_are_not_ids_are_refused(tmp_path: Path) -> None:
    write_text(
        tmp_path / "octal.yaml", f"name: x\ngroup_id: 0123\nmessage: Hi\nrecipients: [{{profile_urn: {urn(1)}}}]\n"
    )
    assert problems(tmp_path / "octal.yaml") == [
        'group_id: YAML reads 0123 as the number 83: quote it (group_id: "0123")'
    ]
    for written, number in (("0x1F", 31), ("12:30", 750), ("1_000", 1000), ("+123", 123), ("-5", -5)):
        write_text(
            tmp_path / "n.yaml", f"name: x\ngroup_id: {written}\nmessage: Hi\nrecipients: [{{profile_urn: {urn(1)}}}]\n"
        )
        assert problems(tmp_path / "n.yaml") == [
            f'group_id: YAML reads {written} as the number {number}: quote it (group_id: "{written}")'
        ]
    for bad in ("https://www.linkedin.com/company/acme/", "my group", "12 34", "0", "-5"):
        assert problems(write_campaign(tmp_path, group_id=bad)) == [
            f"group_id: {bad!r} is not a group id: give the group's numeric id (e.g. 12345678) or its URL"
            " (https://www.linkedin.com/groups/12345678/)"
        ]


@pytest.mark.parametrize(
    ("header", "name"),
    [("Profile URN", "profile_urn"), ("profileUrn", "profile_urn"), ("First Name", "first_name"),
     ("firstName", "first_name"), ("E-mail", "e_mail"), ("Prénom", "prénom"), ("Straße Nr.", "straße_nr")],
)  # fmt: skip
def test_spreadsheet_headers_become_variables(header: str, name: str) -> None:
    assert column_name(header) == name  # letters of every script are kept, only their case is not
