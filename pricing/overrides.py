"""The user's own prices: negotiated rates and custom or fine-tuned models.

The file is ``prices.toml`` in the data directory. Every rate is USD per million tokens,
except ``web_search_kcount`` (USD per thousand searches)::

    [[price]]
    provider = "openai"            # optional; without it the entry matches any provider
    model = "ft:gpt-4o-mini:acme:*"  # exact model id, or a pattern with * wildcards
    input_mtok = 0.30
    output_mtok = 1.20
    cache_read_mtok = 0.15         # optional, defaults to input_mtok
    cache_write_mtok = 0.375       # optional, defaults to input_mtok
    cache_write_1h_mtok = 0.60     # optional, defaults to cache_write_mtok
    web_search_kcount = 10         # optional, defaults to 0
    since = 2026-01-01             # optional; the entry applies to calls from that day (UTC) on

An override wins over genai-prices. When several entries match a call, the one with the
latest ``since`` that is not after the call wins; among equals, the first in the file.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

FILE_NAME = "prices.toml"
_REQUIRED = ("model", "input_mtok", "output_mtok")
_RATES = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok",
          "cache_write_1h_mtok", "web_search_kcount")
_ALLOWED = ("provider", "model", "since", *_RATES)


class PriceFileError(ValueError):
    """The override file cannot be used; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class OverridePrice:
    model: str
    provider: str | None
    since: dt.datetime | None
    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal
    cache_write_mtok: Decimal
    cache_write_1h_mtok: Decimal
    web_search_kcount: Decimal
    source: str

    def matches(self, provider: str, model: str, at: dt.datetime) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        if self.since is not None and at < self.since:
            return False
        return fnmatch.fnmatchcase(model, self.model)


def load(path: Path) -> list[OverridePrice]:
    """Read and validate the override file; a missing file means no overrides."""
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PriceFileError(f"{path}: not valid TOML ({exc}). See docs/pricing.md for the format.") from None
    unknown_top = set(data) - {"price"}
    if unknown_top:
        raise PriceFileError(f"{path}: unknown top-level key(s) {sorted(unknown_top)}; "
                             "write each price as a [[price]] table.")
    entries = data.get("price", [])
    if not isinstance(entries, list):
        raise PriceFileError(f"{path}: 'price' must be an array of tables: write [[price]], not [price].")
    return [_parse_entry(path, n, entry) for n, entry in enumerate(entries, start=1)]


def best_match(overrides: list[OverridePrice], provider: str, model: str,
               at: dt.datetime) -> OverridePrice | None:
    matching = [o for o in overrides if o.matches(provider, model, at)]
    if not matching:
        return None
    floor = dt.datetime.min.replace(tzinfo=dt.UTC)
    return max(matching, key=lambda o: o.since or floor)  # max keeps the first of equals


def _parse_entry(path: Path, n: int, entry: object) -> OverridePrice:
    where = f"{path}: [[price]] entry {n}"
    if not isinstance(entry, dict):
        raise PriceFileError(f"{where} is not a table.")
    unknown = set(entry) - set(_ALLOWED)
    if unknown:
        raise PriceFileError(f"{where}: unknown key(s) {sorted(unknown)}; allowed keys are {list(_ALLOWED)}.")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise PriceFileError(f"{where}: missing {missing}; every entry needs model, input_mtok and output_mtok.")
    model = entry["model"]
    if not isinstance(model, str) or not model:
        raise PriceFileError(f"{where}: model must be a non-empty string.")
    provider = entry.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise PriceFileError(f"{where}: provider must be a string such as \"openai\" or \"anthropic\".")
    rates = {k: _rate(where, k, entry[k]) for k in _RATES if k in entry}
    rates.setdefault("cache_read_mtok", rates["input_mtok"])
    rates.setdefault("cache_write_mtok", rates["input_mtok"])
    rates.setdefault("cache_write_1h_mtok", rates["cache_write_mtok"])
    rates.setdefault("web_search_kcount", Decimal(0))
    return OverridePrice(model=model, provider=provider, since=_since(where, entry.get("since")),
                         source=f"override {path.name}#{n}", **rates)


def _rate(where: str, key: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PriceFileError(f"{where}: {key} must be a number (USD), got {value!r}.")
    try:
        rate = Decimal(str(value))
    except InvalidOperation:
        raise PriceFileError(f"{where}: {key} must be a number (USD), got {value!r}.") from None
    if not rate.is_finite() or rate < 0:
        raise PriceFileError(f"{where}: {key} must be zero or more, got {value!r}.")
    return rate


def _since(where: str, value: object) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise PriceFileError(f"{where}: since must be a TOML date such as 2026-01-01, got {value!r}.")
