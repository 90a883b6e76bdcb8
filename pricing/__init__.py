"""What a call cost: list prices from genai-prices, or the user's overrides file.

    book = PriceBook(home / "prices.toml")
    price = book.price(TokenUsage(input_tokens=10, output_tokens=5), "openai", "gpt-4o", at)
    price.cost_usd  # Decimal, or None when the model has no known price

An unknown model is never priced at $0: ``cost_usd`` is None and ``priced`` False.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import genai_prices

from . import overrides
from .overrides import PriceFileError
from .usage import TokenUsage

__all__ = ["Price", "PriceBook", "PriceFileError", "TokenUsage", "data_source"]

log = logging.getLogger(__name__)
_MTOK = Decimal(1_000_000)


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
    # genai-prices counts input_tokens as *all* input, cache included.
    counts = genai_prices.Usage(
        input_tokens=usage.total_input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        output_tokens=usage.output_tokens,
        web_searches=usage.web_search_requests,
    )
    try:
        calc = genai_prices.calc_price(counts, model, provider_id=provider, genai_request_timestamp=at)
    except LookupError:
        return UNPRICED
    return Price(Decimal(calc.total_price), data_source())


def _override_cost(usage: TokenUsage, o: overrides.OverridePrice) -> Decimal:
    cache_write_5m = usage.cache_write_tokens - usage.cache_write_1h_tokens
    per_mtok = (usage.input_tokens * o.input_mtok
                + usage.cache_read_tokens * o.cache_read_mtok
                + cache_write_5m * o.cache_write_mtok
                + usage.cache_write_1h_tokens * o.cache_write_1h_mtok
                + usage.output_tokens * o.output_mtok)
    return per_mtok / _MTOK + usage.web_search_requests * o.web_search_kcount / 1000
