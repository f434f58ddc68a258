"""Errors the runner reports to its user, each with the exit code the CLI gives it.

    CampaignRunnerError               exit 2 unless stated
    ├── ConfigError                   a bad flag, environment variable or base URL
    │   └── CampaignFileError         a campaign file that does not validate (carries every problem)
    ├── StoreError                    the database cannot be used (unwritable, corrupt)
    │   ├── SchemaTooNewError         the database was written by a newer campaign-runner
    │   └── RunTakenError             another runner took this run's claims (its lease had lapsed)
    ├── UnknownCampaignError          no campaign of that name in the database
    └── ChangeRefusedError            message/group/endpoint changed after sending began

Expected outcomes of a request (sent, refused, rate limited, unknown...) are not errors: they are
values (`campaign_runner.outcome.Outcome`). A run the API stops (the key refused, a wrong address)
or whose accounts all stop ends with exit 1 (`Ending.FATAL`, `Ending.ACCOUNTS_STOPPED`); an
interrupted run exits 130. Neither is an exception.
"""

from __future__ import annotations

from dataclasses import dataclass


class CampaignRunnerError(Exception):
    exit_code = 2


class ConfigError(CampaignRunnerError):
    pass


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a campaign file, with where it is."""

    place: str
    message: str

    def __str__(self) -> str:
        return f"{self.place}: {self.message}" if self.place else self.message


class CampaignFileError(ConfigError):
    def __init__(self, path: str, errors: list[Problem], warnings: list[Problem] | None = None):
        self.path = path
        self.errors = errors
        self.warnings = warnings or []
        noun = "error" if len(errors) == 1 else "errors"
        super().__init__(f"{path}: {len(errors)} {noun}")


class StoreError(CampaignRunnerError):
    pass


class SchemaTooNewError(StoreError):
    pass


class RunTakenError(StoreError):
    pass


class UnknownCampaignError(CampaignRunnerError):
    pass


class ChangeRefusedError(CampaignRunnerError):
    pass
