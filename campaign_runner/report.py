"""Reports streamed from store rows: who was sent what, who failed and why.

CSV cells that a spreadsheet would run as a formula are neutralised with a leading quote.
"""

from __future__ import annotations

import csv
import json
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
    """Write the report of campaign `name`; return how many recipients it lists."""
    await store.campaign(name)  # an unknown name is an error, not an empty report
    rows = store.report_rows(name, status)
    written = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=REPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        async for row in rows:
            writer.writerow({key: neutralise(value) for key, value in as_dict(row).items()})
            written += 1
        return written
    counts = await store.counts(name)
    out.write(f'{{"campaign": {json.dumps(name)}, "counts": {json.dumps(counts)}, "recipients": [')
    async for row in rows:
        out.write(("," if written else "") + "\n  " + json.dumps(as_dict(row), ensure_ascii=False))
        written += 1
    out.write("\n]}\n" if written else "]}\n")
    return written
