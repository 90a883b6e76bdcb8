"""``aispendtrack reprice``: recompute stored costs after prices or the override file changed."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import click

from addon.core import audit, config_files
from addon.core.money import UNPRICED, shown, usd
from addon.core.reprice import changed
from addon.core.store import reports as report_rows
from addon.core.store import writing
from addon.core.wording import plural
from pricing import PriceFileError

from .options import selection_options
from .progress import Bar, quiet_option, running


@dataclass
class _Changed:
    """Calls of one kind of change ("new price", "new source": the same cost by other price data,
    "priced", "unpriced"), what they cost before and after."""

    kind: str
    calls: int = 0
    before: Decimal = Decimal(0)
    after: Decimal = Decimal(0)

    def add(self, before: Decimal | None, after: Decimal | None) -> None:
        self.calls += 1
        self.before += before or 0
        self.after += after or 0


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
    changes, seen, kept = [], [0], list[dict]()
    # A call that had no price was not a $0 call: counted apart from changed prices, as is the reverse.
    kinds = {kind: _Changed(kind) for kind in ("new price", "new source", "priced", "unpriced")}
    with writing(obj.db) as con:
        with Bar("Repricing", lambda: report_rows.count(con, selection), quiet) as bar:
            for row, price in changed(_counted(report_rows.reprice_inputs(con, selection), bar, seen), book, kept):
                changes.append((row["id"], price.cost_usd, price.source, price.snapshot))
                kind = ("priced" if row["cost_usd"] is None else
                        "unpriced" if price.cost_usd is None else
                        "new price" if price.cost_usd != row["cost_usd"] else "new source")
                kinds[kind].add(row["cost_usd"], price.cost_usd)
        checked = seen[0]
        if not dry_run:
            with running(f"Storing {len(changes):,} new costs", quiet):
                report_rows.apply_reprice(con, changes)
            audit.record(con, "reprice", "calls", None, {"checked": checked, "changed": len(changes),
                                                         "selection": dataclasses.asdict(selection)})
    verb = "would change" if dry_run else "changed"
    click.echo(f"Checked {plural(checked, 'call')}; {len(changes):,} {verb}{':' if changes else '.'}")
    for counted in kinds.values():
        if counted.calls:
            click.echo(f"  {_line(counted)}")
    if kept:
        click.echo(f"Left as stored: {plural(len(kept), 'batch row')}, each of a batch's requests priced one by one "
                   "when it was stored, of models with long-context rates (a sum of requests is not priced as they "
                   "were).")


def _counted(rows: Iterator[dict], bar: Bar, seen: list[int]) -> Iterator[dict]:
    for row in rows:
        seen[0] += 1
        bar.advance()
        yield row


def _line(changed: _Changed) -> str:
    if changed.kind == "priced":
        return f"{changed.calls:,} priced now: {UNPRICED} -> {usd(changed.after)}"
    if changed.kind == "unpriced":
        return (f"{changed.calls:,} without a price now: {usd(changed.before)} -> {UNPRICED}; see "
                f"`aispendtrack prices check`.")
    if changed.kind == "new source":
        return f"{changed.calls:,} at the same cost ({usd(changed.after)}), by other price data (their price_source)"
    # Of the amounts as shown (each to the micro-dollar), so the line adds up as read.
    difference = shown(changed.after) - shown(changed.before)
    return (f"{changed.calls:,} with a new price: {usd(changed.before)} -> {usd(changed.after)} "
            f"({'+' if difference >= 0 else '-'}{usd(abs(difference))})")
