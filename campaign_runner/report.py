"""Reports streamed from store rows: who was sent what, who failed and why.

The CSV keeps each recipient's own columns from the campaign file (name, company...) beside its
outcome. CSV cells that a spreadsheet would run as a formula are neutralised with a leading quote.
`excel=True` starts the file with a UTF-8 byte-order mark and writes times in the campaign's time
zone (the one `status` shows them in) as Excel reads them, so Excel shows `Zoë` and dates as they are.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, TextIO

from .clock import iso
from .schedule import zone
from .store import REPORT_FIELDS, ReportRow, StepStats, Store

FORMATS = ("csv", "json")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def as_dict(row: ReportRow) -> dict[str, Any]:
    values = {name: getattr(row, name) for name in REPORT_FIELDS}
    values["sent_at"] = iso(row.sent_at)
    values["replied_at"] = iso(row.replied_at)
    return values


def spreadsheet_time(epoch: float | None, timezone: str) -> str | None:
    """A time as a spreadsheet reads it: in `timezone`, to the second."""
    return None if epoch is None else datetime.fromtimestamp(epoch, zone(timezone)).strftime("%Y-%m-%d %H:%M:%S")


async def write_report(
    store: Store, name: str, out: TextIO, fmt: str = "csv", status: str | None = None, excel: bool = False
) -> int:
    """Write the report of campaign `name` from one consistent view; return how many recipients it lists."""
    async with store.snapshot():
        settings = await store.campaign(name)  # an unknown name is an error, not an empty report
        counts = await store.counts(name)
        columns = await store.columns(name)
        async with contextlib.aclosing(store.report_rows(name, status)) as rows:
            if fmt == "csv":
                return await _csv(rows, out, columns, settings.timezone if excel else None)
            return await _json(name, counts, await store.step_stats(name), rows, out)


async def _csv(rows: AsyncIterator[ReportRow], out: TextIO, columns: list[str], excel: str | None) -> int:
    """`excel`: None, or the time zone for Excel's times."""
    # The file's own columns after the URN; one named like a report field keeps it apart.
    own = {column: f"file_{column}" if column in REPORT_FIELDS else column for column in columns}
    writer = csv.DictWriter(out, fieldnames=["profile_urn", *own.values(), *REPORT_FIELDS[1:]], lineterminator="\n")
    if excel:
        out.write("\ufeff")
    writer.writeheader()
    written = 0
    async for row in rows:
        values = as_dict(row)
        if excel:
            values["sent_at"] = spreadsheet_time(row.sent_at, excel)
            values["replied_at"] = spreadsheet_time(row.replied_at, excel)
        values |= {own[key]: value for key, value in row.variables.items() if key in own}
        writer.writerow({key: neutralise(value) for key, value in values.items()})
        written += 1
    return written


async def _json(
    name: str, counts: dict[str, int], steps: list[StepStats], rows: AsyncIterator[ReportRow], out: TextIO
) -> int:
    per_step = [
        {
            "step": s.step,
            "variant": s.variant,
            "sent": s.sent,
            "replied": s.replied,
            "reply_rate": round(s.reply_rate, 4),
        }
        for s in steps
    ]
    out.write(f'{{"campaign": {json.dumps(name)}, "counts": {json.dumps(counts)}, "steps": {json.dumps(per_step)},')
    out.write(' "recipients": [')
    written = 0
    async for row in rows:
        values = as_dict(row) | {"variables": row.variables}
        out.write(("," if written else "") + "\n  " + json.dumps(values, ensure_ascii=False))
        written += 1
    out.write("\n]}\n" if written else "]}\n")
    return written
