"""Reports streamed from store rows: who was sent what, who failed and why.

CSV cells that a spreadsheet would run as a formula are neutralised with a leading quote.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import AsyncIterator
from typing import Any, TextIO

from .clock import iso
from .store import REPORT_FIELDS, ReportRow, Store

FORMATS = ("csv", "json")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def as_dict(row: ReportRow) -> dict[str, Any]:
    values = {name: getattr(row, name) for name in REPORT_FIELDS}
    values["sent_at"] = iso(row.sent_at)
    return values


async def write_report(store: Store, name: str, out: TextIO, fmt: str = "csv", status: str | None = None) -> int:
    """Write the report of campaign `name` from one consistent view; return how many recipients it lists."""
    async with store.snapshot():
        await store.campaign(name)  # an unknown name is an error, not an empty report
        counts = await store.counts(name)
        async with contextlib.aclosing(store.report_rows(name, status)) as rows:
            if fmt == "csv":
                return await _csv(rows, out)
            return await _json(name, counts, rows, out)


async def _csv(rows: AsyncIterator[ReportRow], out: TextIO) -> int:
    writer = csv.DictWriter(out, fieldnames=REPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    written = 0
    async for row in rows:
        writer.writerow({key: neutralise(value) for key, value in as_dict(row).items()})
        written += 1
    return written


async def _json(name: str, counts: dict[str, int], rows: AsyncIterator[ReportRow], out: TextIO) -> int:
    out.write(f'{{"campaign": {json.dumps(name)}, "counts": {json.dumps(counts)}, "recipients": [')
    written = 0
    async for row in rows:
        out.write(("," if written else "") + "\n  " + json.dumps(as_dict(row), ensure_ascii=False))
        written += 1
    out.write("\n]}\n" if written else "]}\n")
    return written
