"""Many rows as one statement parameter: a JSON document unnested into typed columns.

Binding one Python list per column (``unnest(?::T[])``) converts every element in Python: fine on
DuckDB 2.0, ~0.2 ms per value on 1.5 (150 rows took ~0.6 s). One JSON string parameter is parsed
by DuckDB itself: 150 rows in ~5 ms on either version, and the same SQL works in a DuckLake table.
Values travel as JSON strings where a JSON number would lose them (exact decimals, UUIDs, times).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from decimal import Decimal


def select(columns: Sequence[tuple[str, str]]) -> str:
    """``SELECT`` of one row per element of the JSON parameter, one column per (name, type).

    Every value is read as text and cast in SQL: from_json turns a value its type cannot hold
    into NULL without a word, a CAST raises, so a bad row is refused (and set aside), never
    stored with a hole in it."""
    structure = json.dumps([{name: "VARCHAR" for name, _ in columns}]).replace("'", "''")
    casts = ", ".join(f"CAST(r.{name} AS {typ}) AS {name}" for name, typ in columns)
    return f"SELECT {casts} FROM (SELECT unnest(from_json(?::JSON, '{structure}')) AS r)"


def param(columns: Sequence[tuple[str, str]], rows: Sequence[dict]) -> str:
    """The JSON parameter for ``select(columns)``; a row's missing names are NULL."""
    names = [name for name, _ in columns]
    return json.dumps([{name: row.get(name) for name in names} for row in rows], default=_text)


def _text(value: object) -> str:
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"cannot store a {type(value).__name__}")
