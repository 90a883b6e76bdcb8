"""``aispendtrack prices``: where prices come from, and which models we could not price."""

from __future__ import annotations

import click

import pricing
from addon.store import calls as call_rows
from addon.store import reading
from pricing.overrides import FILE_NAME

from .output import emit, format_option


@click.group(invoke_without_command=True)
@click.pass_context
def prices(ctx: click.Context) -> None:
    """Price data and unpriced models (default: check)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(check)


@prices.command()
@format_option()
@click.pass_obj
def check(obj, fmt: str = "table") -> None:
    """Validate the override file and list models seen in calls that have no price."""
    override_path = obj.home / FILE_NAME
    try:
        book = pricing.PriceBook(override_path)
    except pricing.PriceFileError as exc:
        raise click.ClickException(str(exc)) from None
    with reading(obj.db) as con:
        rows = call_rows.unpriced_models(con)
    if fmt != "table":
        emit(rows, fmt, [])
        return
    overrides = f"{len(book.overrides)} entries" if override_path.exists() else "none"
    click.echo(f"Prices: {pricing.data_source()} bundled data; overrides ({override_path}): {overrides}")
    if not rows:
        click.echo("Every metered call so far has a price.")
        return
    click.echo(f"\n{sum(r['calls'] for r in rows)} calls used models with no known price (cost shown as "
               f"'unpriced', never $0). Add them to {override_path}:\n")
    emit(rows, "table", [
        ("PROVIDER", lambda r: r["provider"], "<"), ("MODEL", lambda r: r["model"], "<"),
        ("CALLS", lambda r: f"{r['calls']:,}", ">"),
        ("LAST SEEN (UTC)", lambda r: r["last_seen"].strftime("%Y-%m-%d %H:%M"), "<"),
    ])
