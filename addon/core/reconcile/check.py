"""One reconciliation: fetch the provider's usage for whole UTC days, read ours, price theirs with
our book, and compare. ``aispendtrack reconcile`` and the daily run (daily.py) both call ``check``."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

from pricing import PriceBook
from pricing.usage import TokenUsage

from ..store import reading, usage_totals
from . import KINDS, PROVIDERS, compare

DAY = dt.timedelta(days=1)


def pricer(book: PriceBook, provider: str):
    """Price the provider's figures with our book, as our rows are priced."""
    def price(model: str | None, bucket: dt.datetime, usage: dict) -> Decimal | None:
        tokens = TokenUsage(**{kind: usage.get(kind) or 0 for kind in KINDS})
        return book.price(tokens, provider, model, bucket + DAY / 2).cost_usd
    return price


def check(db: Path, book: PriceBook, provider: str, base_url: str, admin_key: str, start: dt.datetime,
          end: dt.datetime, now: dt.datetime, tolerance: float = 0.0) -> list[dict]:
    """The lines for [start, end) per UTC day and model: the provider's report beside our rows.
    ``tolerance``: the fraction by which a count may differ and still match."""
    api = PROVIDERS[provider]
    theirs = api.fetch(base_url, admin_key, start, end, "1d")
    with reading(db) as con:
        ours = usage_totals.per_bucket(con, provider, start, end)
    for line in ours:
        line["bucket"] = line["bucket"].replace(tzinfo=dt.UTC)
    counts_requests = all(line["requests"] is not None for line in theirs)  # Anthropic's legacy report does not
    return compare(ours, theirs, pricer(book, provider), DAY, now, tolerance, counts_requests)
