"""One reconciliation: fetch the provider's usage for whole UTC days, read ours, price theirs with
our book, and compare. ``aispendtrack reconcile`` and the daily run (daily.py) both call ``check``."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

from pricing import ImageOptions, PriceBook
from pricing.usage import TokenUsage

from ..store import reading, usage_totals
from . import KINDS, PROVIDERS, compare

DAY = dt.timedelta(days=1)
WIDTHS = {"1d": DAY, "1h": dt.timedelta(hours=1)}  # the providers' bucket_width values we read


def pricer(book: PriceBook, provider: str, width: dt.timedelta = DAY):
    """Price the provider's figures with our book, as our rows are priced (at the bucket's middle;
    ``service_tier`` "batch": at the batch rate; images of ``image_size`` at its standard quality,
    as the usage API does not say which; ``region``: where they ran, where the price depends on it)."""
    def price(model: str | None, bucket: dt.datetime, usage: dict, service_tier: str | None = None,
              image_size: str | None = None, region: str | None = None) -> Decimal | None:
        tokens = TokenUsage(**{kind: usage.get(kind) or 0 for kind in KINDS})
        image = ImageOptions(image_size) if image_size else None
        return book.price(tokens, provider, model, bucket + width / 2, service_tier, image, region=region).cost_usd
    return price


def check(db: Path, book: PriceBook, provider: str, base_url: str, admin_key: str, start: dt.datetime,
          end: dt.datetime, now: dt.datetime, tolerance: float = 0.0, width: str = "1d",
          by_key: bool = False) -> list[dict]:
    """The lines for [start, end) per UTC bucket (``width``: "1d" or "1h") and model, and per
    provider key and project when ``by_key``: the provider's report beside our rows.
    ``tolerance``: the fraction by which a count may differ and still match."""
    api = PROVIDERS[provider]
    theirs = api.fetch(base_url, admin_key, start, end, width, by_key)
    with reading(db) as con:
        ours = usage_totals.per_bucket(con, provider, start, end, hourly=width == "1h")
    for line in ours:
        line["bucket"] = line["bucket"].replace(tzinfo=dt.UTC)
    counts_requests = all(line["requests"] is not None for line in theirs)  # Anthropic's legacy report does not
    return compare(ours, theirs, pricer(book, provider, WIDTHS[width]), WIDTHS[width], now, tolerance,
                   counts_requests, by_key)
