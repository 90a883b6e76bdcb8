"""``aispendtrack calls``: the recorded calls, newest first."""

from __future__ import annotations

import datetime as dt

import click

from addon.core.money import column_places, usd
from addon.core.store import reading
from addon.core.store import reports as report_rows

from .export import write_calls
from .options import selection_options
from .output import emit, format_option, tokens


@click.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1_000_000),
              help="How many calls to show.")
@selection_options
@format_option()
@click.pass_obj
def calls(obj, limit: int, selection, fmt: str) -> None:
    """Show recorded calls with tokens and cost (metadata only), filtered as `report` filters; csv as
    `export` writes it, json as the API's /calls does."""
    if fmt == "csv":
        write_calls(obj.home, selection, fmt, newest=limit)
        return
    with reading(obj.db) as con:
        rows = report_rows.calls_page(con, selection, limit, None)
    places = column_places(r["cost_usd"] for r in rows)
    emit(rows, fmt, [
        ("TIME (UTC)", lambda r: r["ts"].astimezone(dt.UTC).strftime("%m-%d %H:%M:%S"), "<"),
        ("KEY", lambda r: r["key_name"] or _text(r["key_id"]), "<"),
        ("CUSTOMER", lambda r: _text(r["customer_id"]), "<"),
        ("FEATURE", lambda r: _text(r["feature"]), "<"),
        ("MODEL", lambda r: _text(r["model"]), "<"),
        ("IN", lambda r: tokens(r["input_tokens"]), ">"),
        ("CACHE R/W", lambda r: f'{tokens(r["cache_read_tokens"])}/{tokens(r["cache_write_tokens"])}', ">"),
        ("OUT", lambda r: tokens(r["output_tokens"]), ">"),
        ("COST", lambda r: usd(r["cost_usd"], places), ">"),
        ("USAGE", lambda r: r["usage_source"], "<"),
        ("STATUS", lambda r: f'{r["status"] or "-"}{"" if r["outcome"] == "completed" else " " + r["outcome"]}', "<"),
    ])


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)
