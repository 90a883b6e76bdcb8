"""Printing rows as a table, JSON or CSV; one place so every command formats alike."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import sys
import uuid
from collections.abc import Callable, Sequence

import click

FORMATS = ("table", "json", "csv")


def format_option(default: str = "table"):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default=default, show_default=True,
                        help="Output format.")


def json_value(value: object) -> object:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def emit(rows: Sequence[dict], fmt: str, table: Sequence[tuple[str, Callable[[dict], str], str]]) -> None:
    """``table`` lists (heading, cell function, "<" or ">") for the human-readable form."""
    if fmt == "json":
        click.echo(json.dumps([{k: json_value(v) for k, v in row.items()} for row in rows], indent=2))
    elif fmt == "csv":
        if rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: json_value(v) for k, v in row.items()} for row in rows)
    else:
        click.echo(render_table(rows, table))


def render_table(rows: Sequence[dict], table: Sequence[tuple[str, Callable[[dict], str], str]]) -> str:
    cells = [[heading for heading, _, _ in table]] + [[cell(row) for _, cell, _ in table] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(table))]
    lines = []
    for line in cells:
        parts = [text.rjust(w) if align == ">" else text.ljust(w)
                 for text, w, (_, _, align) in zip(line, widths, table)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def money(value: decimal.Decimal | float | None) -> str:
    """Cost with precision that fits its size: sub-cent calls keep their digits."""
    if value is None:
        return "unpriced"
    value = float(value)
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.6f}".rstrip("0")


def tokens(value: int | None) -> str:
    return f"{value:,}" if value else "0"
