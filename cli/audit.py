"""``aispendtrack audit``: the trail of changes made through the CLI and the API."""

from __future__ import annotations

import click

from addon.core import audit as trail
from addon.core.reports import ReportError
from addon.core.store import reading

from .output import emit


@click.command()
@click.option("--since", help="From: 7d, 24h, today, 2026-11-01 or 2026-11-01T09:00 (UTC).")
@click.option("--json", "as_json", is_flag=True, help="Every entry with its before/after values, as JSON.")
@click.pass_obj
def audit(obj, since: str | None, as_json: bool) -> None:
    """Who changed what, when: keys, teams, admin tokens, budgets, settings, prices, purges and erasures."""
    with reading(obj.db) as con:
        try:
            rows = trail.entries(con, since)
        except ReportError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    emit(rows, "json" if as_json else "table", [
        ("WHEN (UTC)", lambda r: r["changed_at"].astimezone(trail.UTC).strftime("%Y-%m-%d %H:%M:%S"), "<"),
        ("WHO", lambda r: r["actor"], "<"), ("ACTION", lambda r: r["action"], "<"),
        ("TARGET", lambda r: r["target"], "<"),
        ("CHANGE", lambda r: trail.change(r["before"], r["after"]), "<"),
    ])
