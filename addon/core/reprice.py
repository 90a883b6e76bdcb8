"""Costs recomputed with the prices in use now: ``aispendtrack reprice``, and the calls left
unpriced that a price-data refresh can price (price_data.py). The old cost and its source are kept
per call (previous_cost_usd, previous_price_source)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pricing import Price, PriceBook, PriceData, TokenUsage, regions

from .reports import Selection
from .store import reports as report_rows
from .store import writing
from .store.calls import UNIT_NAMES

TOKEN_FIELDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                "output_tokens", "reasoning_tokens", "web_search_requests", *UNIT_NAMES)


def changed(rows: Iterable[dict], book: PriceBook, kept: list[dict] | None = None) -> Iterator[tuple[dict, Price]]:
    """Each stored row (report_rows.reprice_inputs) whose price ``book`` sets differently, with it.
    A batch's row whose sums cannot be priced again (``_sums_apart``) is left as stored, and added
    to ``kept``."""
    for row in rows:
        usage = TokenUsage(**{name: row[name] for name in TOKEN_FIELDS})
        if book.priced_per_image(usage, row["provider"], row["model"]):
            continue  # its price per image depends on the size and quality asked for, which is not stored
        if _sums_apart(row, book):
            if kept is not None:
                kept.append(row)
            continue
        price = book.price(usage, row["provider"], row["model"], row["ts"], row["service_tier"],
                           region=regions.stored_region(row["price_source"]))
        if price.cost_usd != row["cost_usd"] or price.source != row["price_source"]:
            yield row, price


def _sums_apart(row: dict, book: PriceBook) -> bool:
    """Whether the row holds a batch's requests summed (``summed``: addon/batches.py), each priced
    alone when stored, of a model whose price is not a plain sum of its calls' (a long-context
    tier: three requests of 100K input tokens each are under Claude's 200K bound, their sum is not)."""
    return bool(row["summed"]) and not book.adds_up(row["provider"], row["model"], row["ts"], row["service_tier"])


@dataclass
class Spend:
    """A model's calls priced by two versions of the list prices (``prices diff``)."""

    calls: int = 0
    before: Decimal = Decimal(0)
    after: Decimal = Decimal(0)
    unpriced_before: int = 0
    unpriced_after: int = 0

    @property
    def changed(self) -> bool:
        return (self.before, self.unpriced_before) != (self.after, self.unpriced_after)


def spend_by_model(rows: Iterable[dict], book: PriceBook, before: PriceData,
                   after: PriceData) -> dict[tuple[str, str], Spend]:
    """What the stored calls (report_rows.reprice_inputs) cost by ``before`` and by ``after``."""
    found: dict[tuple[str, str], Spend] = {}
    for row in rows:
        usage = TokenUsage(**{name: row[name] for name in TOKEN_FIELDS})
        if book.priced_per_image(usage, row["provider"], row["model"]) or _sums_apart(row, book):
            continue  # priced by the bundled per-image prices, or per request of a batch: left as stored
        spend = found.setdefault((row["provider"], row["model"]), Spend())
        spend.calls += 1
        region = regions.stored_region(row["price_source"])
        old, new = (book.price(usage, row["provider"], row["model"], row["ts"], row["service_tier"], data=data,
                               region=region).cost_usd for data in (before, after))
        spend.before += old or 0
        spend.after += new or 0
        spend.unpriced_before += old is None
        spend.unpriced_after += new is None
    return found


def heal_unpriced(db: Path, book: PriceBook) -> dict[tuple[str, str], int]:
    """Price the stored calls that had no price and have one now; returns how many per (provider, model)."""
    healed: dict[tuple[str, str], int] = {}
    with writing(db) as con:
        changes = []
        for row, price in changed(report_rows.reprice_inputs(con, Selection(), unpriced_only=True), book):
            if price.priced:
                changes.append((row["id"], price.cost_usd, price.source, price.snapshot))
                model = (row["provider"], row["model"])
                healed[model] = healed.get(model, 0) + 1
        report_rows.apply_reprice(con, changes)
    return healed
