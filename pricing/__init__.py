"""What a call cost: list prices from genai-prices, or the user's overrides file.

    book = PriceBook(home / "prices.toml")
    price = book.price(TokenUsage(input_tokens=10, output_tokens=5), "openai", "gpt-4o", at)
    price.cost_usd  # Decimal, or None when the model has no known price

An unknown model is never priced at $0: ``cost_usd`` is None and ``priced`` False.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import genai_prices
from genai_prices.types import TieredPrices

from . import overrides
from .overrides import PriceFileError
from .usage import TokenUsage

__all__ = ["Price", "PriceBook", "PriceFileError", "TokenUsage", "data_source"]

log = logging.getLogger(__name__)
_MTOK = Decimal(1_000_000)
_TIER_FIELDS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok")


@dataclass(frozen=True)
class Price:
    cost_usd: Decimal | None
    source: str | None  # where the rates came from: "genai-prices 0.2.3" or "override prices.toml#2"

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None


UNPRICED = Price(None, None)


def data_source() -> str:
    return f"genai-prices {genai_prices.__version__}"


class PriceBook:
    """Prices calls; re-reads the override file when it changes, keeping the last good one on error."""

    def __init__(self, override_path: Path):
        self.override_path = override_path
        self._overrides = overrides.load(override_path)  # a bad file at start is the caller's to report
        self._mtime = self._current_mtime()

    @property
    def overrides(self) -> list[overrides.OverridePrice]:
        return list(self._overrides)

    def price(self, usage: TokenUsage, provider: str, model: str | None, at: dt.datetime) -> Price:
        if not model:
            return UNPRICED
        override = overrides.best_match(self._overrides, provider, model, at)
        if override is not None:
            return Price(_override_cost(usage, override), override.source)
        return _list_price(usage, provider, model, at)

    def reload_if_changed(self) -> None:
        mtime = self._current_mtime()
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            self._overrides = overrides.load(self.override_path)
            log.info("reloaded price overrides from %s (%d entries)", self.override_path, len(self._overrides))
        except PriceFileError as exc:
            log.error("keeping the previous price overrides: %s", exc)

    def _current_mtime(self) -> float | None:
        try:
            return self.override_path.stat().st_mtime
        except FileNotFoundError:
            return None


def _list_price(usage: TokenUsage, provider: str, model: str, at: dt.datetime) -> Price:
    rates = _linear_rates(provider, model, at.date())
    if rates is None:
        return UNPRICED
    if rates is _TIERED:
        return Price(_genai_cost(usage, provider, model, at), data_source())
    per_unit = sum(getattr(usage, field) * rate for field, rate in rates.items())
    return Price(per_unit / _MTOK, data_source())


def _genai_cost(usage: TokenUsage, provider: str, model: str, at: dt.datetime) -> Decimal:
    # genai-prices counts input_tokens as *all* input, cache included.
    counts = genai_prices.Usage(
        input_tokens=usage.total_input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        output_tokens=usage.output_tokens,
        web_searches=usage.web_search_requests,
    )
    calc = genai_prices.calc_price(counts, model, provider_id=provider, genai_request_timestamp=at)
    return Decimal(calc.total_price)


# A price without tiers is linear in the counts, so it is worked out once per model and day by
# pricing a million of each kind alone, then applied by multiplication: genai-prices' general
# calculation costs ~150 us a call, which the writer thread would otherwise pay for every row.
_TIERED = object()
_PROBES = {
    "input_tokens": TokenUsage(input_tokens=1_000_000),
    "cache_read_tokens": TokenUsage(cache_read_tokens=1_000_000),
    "cache_write_tokens": TokenUsage(cache_write_tokens=1_000_000),
    "cache_write_1h_tokens": TokenUsage(cache_write_tokens=1_000_000, cache_write_1h_tokens=1_000_000),
    "output_tokens": TokenUsage(output_tokens=1_000_000),
    "web_search_requests": TokenUsage(web_search_requests=1_000_000),
}


@functools.lru_cache(maxsize=4096)
def _linear_rates(provider: str, model: str, day: dt.date) -> dict[str, Decimal] | object | None:
    at = dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)
    try:
        probe = genai_prices.calc_price(genai_prices.Usage(input_tokens=1), model, provider_id=provider,
                                        genai_request_timestamp=at)
    except LookupError:
        return None
    if any(isinstance(getattr(probe.model_price, name, None), TieredPrices) for name in _TIER_FIELDS):
        return _TIERED
    costs = {field: _genai_cost(usage, provider, model, at) for field, usage in _PROBES.items()}
    # A 1h write is also a write: its rate is what it adds on top of a 5-minute write.
    costs["cache_write_1h_tokens"] -= costs["cache_write_tokens"]
    return {field: cost for field, cost in costs.items() if cost}


def _override_cost(usage: TokenUsage, o: overrides.OverridePrice) -> Decimal:
    cache_write_5m = usage.cache_write_tokens - usage.cache_write_1h_tokens
    per_mtok = (usage.input_tokens * o.input_mtok
                + usage.cache_read_tokens * o.cache_read_mtok
                + cache_write_5m * o.cache_write_mtok
                + usage.cache_write_1h_tokens * o.cache_write_1h_mtok
                + usage.output_tokens * o.output_mtok)
    return per_mtok / _MTOK + usage.web_search_requests * o.web_search_kcount / 1000
