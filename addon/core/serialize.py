"""JSON as the CLI and the API write it: one dialect for ``--format json``, ``--json`` and every
API answer (docs/api.md, "JSON").

Two-space indentation; UTF-8 text as is; money as a JSON number in its shortest exact form
(0.001852, not 0.001852000000000000); times as ISO 8601 in UTC with microseconds, as exports
write them; durations in milliseconds to the microsecond."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid


def dumps(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=json_value)


def json_value(value: object) -> object:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime):  # as exports write it (addon/core/store/reports.py)
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds") if value.tzinfo else \
            value.isoformat(timespec="microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def json_row(row: dict) -> dict:
    # Durations to the microsecond: a stored 1815.6840503827784 ms reads 1815.684.
    return {k: round(v, 3) if k.endswith("_ms") and isinstance(v, float) else json_value(v) for k, v in row.items()}
