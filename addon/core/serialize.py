"""Values from the store as JSON-friendly values, the same for the CLI and the API."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid


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
