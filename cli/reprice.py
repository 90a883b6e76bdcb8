"""``aispendtrack reprice``: recompute stored costs after prices or the override file changed."""

from __future__ import annotations

from decimal import Decimal

import click

from addon.core import config_files
from addon.core.money import usd
from addon.core.store import reports as report_rows
from addon.core.store import writing
from addon.core.wording import plural
from pricing import PriceFileError, TokenUsage

from .options import selection_options
from .progress import Bar, quiet_option, running

_TOKEN_FIELDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                 "output_tokens", "reasoning_tokens", "web_search_requests")


@click.command()
@selection_options
@click.option("--dry-run", is_flag=True, help="Show what would change without writing.")
@quiet_option
@click.pass_obj
def reprice(obj, selection, dry_run: bool, quiet: bool) -> None:
    """Recompute costs with today's price data; the old cost and its source are kept per call."""
    try:
        book = config_files.price_book(obj.home)
    except PriceFileError as exc:
        raise click.ClickException(str(exc)) from None
    checked, changes, before, after = 0, [], Decimal(0), Decimal(0)
    with writing(obj.db) as con:
        with Bar("Repricing", lambda: report_rows.count(con, selection), quiet) as bar:
            for row in report_rows.reprice_inputs(con, selection):
                checked += 1
                bar.advance()
                usage = TokenUsage(**{name: row[name] for name in _TOKEN_FIELDS})
                price = book.price(usage, row["provider"], row["model"], row["ts"], row["service_tier"])
                if price.cost_usd != row["cost_usd"] or price.source != row["price_source"]:
                    changes.append((row["id"], price.cost_usd, price.source))
                    before += row["cost_usd"] or 0
                    after += price.cost_usd or 0
        if not dry_run:
            with running(f"Storing {len(changes):,} new costs", quiet):
                report_rows.apply_reprice(con, changes)
    verb = "would change" if dry_run else "changed"
    click.echo(f"Checked {plural(checked, 'call')}; {len(changes):,} {verb}: {usd(before)} -> {usd(after)} "
               f"({'+' if after >= before else '-'}{usd(abs(after - before))}).")
    newly_unpriced = sum(1 for _, cost, _ in changes if cost is None)
    if newly_unpriced:
        click.echo(f"{newly_unpriced:,} of them have no price now; see `aispendtrack prices check`.")
