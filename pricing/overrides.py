"""Price files: the user's ``prices.toml``, and the bundled ``patches.toml`` in the same format.

Every rate is USD per million tokens, except ``web_search_kcount`` (USD per thousand searches)::

    [[price]]
    provider = "anthropic"         # optional; without it the entry matches any provider
    model = "claude-sonnet-4-0*"   # exact model id, a pattern with * wildcards, or a list of them
    input_mtok = 3
    output_mtok = 15
    cache_read_mtok = 0.30         # optional, defaults to input_mtok
    cache_write_mtok = 3.75        # optional, defaults to input_mtok
    cache_write_1h_mtok = 6        # optional, defaults to cache_write_mtok
    thinking_output_mtok = 3.50    # optional: the output rate of a response that spent reasoning tokens
    web_search_kcount = 10         # optional: without it a call that searched is unpriced
    service_tier = "flex"          # optional; without it the entry prices the standard tier
    since = 2026-01-01             # optional; the entry applies to calls from that day (UTC) on
    source = "https://..."         # optional here, required in patches.toml: where the rates are published
    checked = 2026-11-26           # optional here, required in patches.toml: when they were read there

      [[price.tier]]               # optional, any number: long-context rates
      above_input_tokens = 200000  # applies to the whole call when its input (cache included) exceeds this;
                                   # 0 or more, each tier of an entry its own
      input_mtok = 6               # the tier's rates, with the same keys and defaults as above
      output_mtok = 22.50

    [[service_tier]]               # a tier's rates as a multiple of the standard rates, where the
    provider = "openai"            # provider publishes one discount for every model
    name = "flex"
    multiplier = 0.5

    [[tool_fee]]                   # a container billed by its session's time, which no response
    provider = "anthropic"         # reports: each container a call ran code in is estimated at
    usd_per_hour = 0.05            # ``minutes`` (the provider's minimum) at this rate
    minutes = 5

    [[image_price]]                # models billed per image (DALL·E), by the size and quality asked for
    provider = "openai"
    model = "dall-e-3"
    size = ["1024x1792", "1792x1024"]  # one size or a list
    quality = "hd"                 # optional, defaults to "standard"
    usd_per_image = 0.12
    checked = 2026-12-03           # optional, and since and source, as in [[price]]

A model with image prices is priced by them alone: an image of a size or quality no entry names is
unpriced, never priced as another size.

When several price entries match a call, the one with the latest ``since`` that is not after the
call wins; among equals, the first in the file.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .rates import Rates

FILE_NAME = "prices.toml"
_RATE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok",
              "thinking_output_mtok")
_ENTRY_KEYS = ("provider", "model", "since", "service_tier", "source", "checked", "web_search_kcount",
               "tier", *_RATE_KEYS)
_TIER_KEYS = ("above_input_tokens", *_RATE_KEYS)
_MULTIPLIER_KEYS = ("provider", "name", "multiplier", "source", "checked")
_TOOL_FEE_KEYS = ("provider", "usd_per_hour", "minutes", "source", "checked")
_IMAGE_KEYS = ("provider", "model", "size", "quality", "usd_per_image", "since", "source", "checked")


# The most any number of a price file may be: thousands of times any published rate ($600 per million
# tokens at most), and small enough that a call's cost at it (MAX_TOKENS_PER_CALL of each kind) fits
# the stored DECIMAL(38, 18). A call priced at 1e30 could not be stored, and was set aside unread.
MAX_RATE = Decimal(1_000_000)


class PriceFileError(ValueError):
    """The price file cannot be used; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class OverridePrice:
    models: tuple[str, ...]  # patterns
    provider: str | None
    since: dt.datetime | None
    service_tier: str | None
    rates: Rates
    tiers: tuple[tuple[int, Rates], ...]  # (above_input_tokens, rates), ascending
    web_search_kcount: Decimal | None  # None: no rate given, a call that searched is not priced by it
    source: str
    cited: str | None = None  # "https://... (checked 2026-11-26)"

    def matches(self, provider: str, model: str, at: dt.datetime, service_tier: str | None) -> bool:
        if self.provider is not None and self.provider != provider or self.service_tier != service_tier:
            return False
        if self.since is not None and at < self.since:
            return False
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def cost(self, usage) -> Decimal | None:
        """None for a call that searched when the entry has no rate for searches: not free."""
        rates = self.rates
        for above, tier_rates in self.tiers:
            if usage.total_input_tokens > above:
                rates = tier_rates
        if not usage.web_search_requests:
            return rates.cost(usage)
        if self.web_search_kcount is None:
            return None
        return rates.cost(usage) + usage.web_search_requests * self.web_search_kcount / 1000


@dataclass(frozen=True)
class TierMultiplier:
    provider: str
    name: str
    multiplier: Decimal
    source: str
    cited: str | None = None


@dataclass(frozen=True)
class ContainerFee:
    """What one container session is estimated to cost: its minimum billed time at its hourly rate."""

    provider: str
    usd_per_hour: Decimal
    minutes: Decimal
    source: str
    cited: str | None = None

    @property
    def each(self) -> Decimal:
        return self.usd_per_hour * self.minutes / 60


@dataclass(frozen=True)
class ImagePrice:
    provider: str
    models: tuple[str, ...]  # patterns
    sizes: tuple[str, ...]
    quality: str
    usd_per_image: Decimal
    since: dt.datetime | None
    source: str
    cited: str | None = None

    def names(self, provider: str, model: str) -> bool:
        return self.provider == provider and any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


@dataclass(frozen=True)
class PriceFile:
    prices: tuple[OverridePrice, ...] = ()
    multipliers: tuple[TierMultiplier, ...] = ()
    container_fees: tuple[ContainerFee, ...] = ()
    images: tuple[ImagePrice, ...] = ()

    def __len__(self) -> int:
        return len(self.prices) + len(self.multipliers) + len(self.container_fees) + len(self.images)

    def container_fee(self, provider: str) -> ContainerFee | None:
        return next((f for f in self.container_fees if f.provider == provider), None)

    def prices_images_of(self, provider: str, model: str) -> bool:
        """Whether this file prices the model per image (then only its image prices apply)."""
        return any(entry.names(provider, model) for entry in self.images)

    def image_price(self, provider: str, model: str, at: dt.datetime, size: str, quality: str) -> ImagePrice | None:
        """The entry for one image of that size and quality at ``at``; the latest ``since`` wins."""
        matching = [e for e in self.images if e.names(provider, model) and size in e.sizes and e.quality == quality
                    and (e.since is None or e.since <= at)]
        floor = dt.datetime.min.replace(tzinfo=dt.UTC)
        return max(matching, key=lambda e: e.since or floor) if matching else None

    def best_match(self, provider: str, model: str, at: dt.datetime,
                   service_tier: str | None = None) -> OverridePrice | None:
        matching = [o for o in self.prices if o.matches(provider, model, at, service_tier)]
        if not matching:
            return None
        floor = dt.datetime.min.replace(tzinfo=dt.UTC)
        return max(matching, key=lambda o: o.since or floor)  # max keeps the first of equals

    def multiplier(self, provider: str, service_tier: str) -> TierMultiplier | None:
        return next((m for m in self.multipliers if (m.provider, m.name) == (provider, service_tier)), None)


def load(path: Path, *, cited: bool = False) -> PriceFile:
    """Read and validate a price file; a missing file means no entries.

    ``cited``: every entry must say where its rates are published and when they were checked."""
    if not path.exists():
        return PriceFile()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PriceFileError(f"{path}: not valid TOML ({exc}). See docs/pricing.md for the format.") from None
    return parse(text, str(path), name=path.name, cited=cited)


def parse(text: str, origin: str, *, name: str = FILE_NAME, cited: bool = False) -> PriceFile:
    """Validate a price file's text; ``origin`` says where it is in messages (a path, or the shared
    store), ``name`` names it in each price's source ("override prices.toml#2")."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PriceFileError(f"{origin}: not valid TOML ({exc}). See docs/pricing.md for the format.") from None
    unknown_top = set(data) - {"price", "service_tier", "tool_fee", "image_price"}
    if unknown_top:
        raise PriceFileError(f"{origin}: unknown top-level key(s) {sorted(unknown_top)}; "
                             "write each price as a [[price]] table.")
    prices = _tables(origin, data, "price")
    multipliers = _tables(origin, data, "service_tier")
    return PriceFile(
        prices=tuple(_parse_entry(origin, name, n, entry, cited) for n, entry in enumerate(prices, start=1)),
        multipliers=tuple(_parse_multiplier(origin, name, n, entry, cited)
                          for n, entry in enumerate(multipliers, start=1)),
        container_fees=tuple(_parse_tool_fee(origin, name, n, entry, cited)
                             for n, entry in enumerate(_tables(origin, data, "tool_fee"), start=1)),
        images=tuple(_parse_image(origin, name, n, entry, cited)
                     for n, entry in enumerate(_tables(origin, data, "image_price"), start=1)))


def _tables(origin: str, data: dict, name: str) -> list:
    entries = data.get(name, [])
    if not isinstance(entries, list):
        raise PriceFileError(f"{origin}: '{name}' must be an array of tables: write [[{name}]], not [{name}].")
    return entries


def _parse_entry(origin: str, file_name: str, n: int, entry: object, cited: bool) -> OverridePrice:
    where = f"{origin}: [[price]] entry {n}"
    entry = _table(where, entry, _ENTRY_KEYS, ("model", "input_mtok", "output_mtok"))
    models = entry["model"] if isinstance(entry["model"], list) else [entry["model"]]
    if not models or not all(isinstance(m, str) and m for m in models):
        raise PriceFileError(f"{where}: model must be a model id or pattern, or a list of them.")
    return OverridePrice(
        models=tuple(models), provider=_text(where, entry, "provider"), since=_date(where, entry.get("since"), "since"),
        service_tier=_text(where, entry, "service_tier"), rates=_rates(where, entry),
        tiers=_tiers(where, entry.get("tier", [])),
        web_search_kcount=(_rate(where, "web_search_kcount", entry["web_search_kcount"])
                           if "web_search_kcount" in entry else None),
        source=f"{'patch' if cited else 'override'} {file_name}#{n}", cited=_citation(where, entry, cited))


def _tiers(where: str, tiers: object) -> tuple[tuple[int, Rates], ...]:
    """An entry's long-context tiers, ascending by bound. Two tiers with one bound are refused: which
    of them priced a call would depend on their order in the file."""
    if not isinstance(tiers, list):
        raise PriceFileError(f"{where}: 'tier' must be an array of tables: write [[price.tier]].")
    parsed = sorted((_parse_tier(f"{where}, tier {k}", tier) for k, tier in enumerate(tiers, start=1)),
                    key=lambda tier: tier[0])
    for (low, _), (high, _) in zip(parsed, parsed[1:]):
        if low == high:
            raise PriceFileError(f"{where}: two tiers have above_input_tokens = {low}; "
                                 "give each tier its own bound.")
    return tuple(parsed)


def _parse_tier(where: str, tier: object) -> tuple[int, Rates]:
    tier = _table(where, tier, _TIER_KEYS, ("above_input_tokens", "input_mtok", "output_mtok"))
    above = tier["above_input_tokens"]
    if isinstance(above, bool) or not isinstance(above, int) or above < 0:
        raise PriceFileError(f"{where}: above_input_tokens must be a whole number of tokens, got {above!r}.")
    return above, _rates(where, tier)


def _parse_multiplier(origin: str, file_name: str, n: int, entry: object, cited: bool) -> TierMultiplier:
    where = f"{origin}: [[service_tier]] entry {n}"
    entry = _table(where, entry, _MULTIPLIER_KEYS, ("provider", "name", "multiplier"))
    provider, name = _text(where, entry, "provider"), _text(where, entry, "name")
    assert provider is not None and name is not None  # required keys
    return TierMultiplier(provider=provider, name=name, multiplier=_rate(where, "multiplier", entry["multiplier"]),
                          source=f"{'patch' if cited else 'override'} {file_name} [[service_tier]]#{n}",
                          cited=_citation(where, entry, cited))


def _parse_tool_fee(origin: str, file_name: str, n: int, entry: object, cited: bool) -> ContainerFee:
    where = f"{origin}: [[tool_fee]] entry {n}"
    entry = _table(where, entry, _TOOL_FEE_KEYS, ("provider", "usd_per_hour", "minutes"))
    provider = _text(where, entry, "provider")
    assert provider is not None  # required
    return ContainerFee(provider=provider, usd_per_hour=_rate(where, "usd_per_hour", entry["usd_per_hour"]),
                        minutes=_rate(where, "minutes", entry["minutes"], "a number of minutes"),
                        source=f"{'patch' if cited else 'override'} {file_name} [[tool_fee]]#{n}",
                        cited=_citation(where, entry, cited))


def _parse_image(origin: str, file_name: str, n: int, entry: object, cited: bool) -> ImagePrice:
    where = f"{origin}: [[image_price]] entry {n}"
    entry = _table(where, entry, _IMAGE_KEYS, ("provider", "model", "size", "usd_per_image"))
    models, sizes = (_names(where, entry, key) for key in ("model", "size"))
    provider, quality = _text(where, entry, "provider"), _text(where, entry, "quality") or "standard"
    assert provider is not None  # required
    return ImagePrice(provider=provider, models=models, sizes=sizes, quality=quality,
                      usd_per_image=_rate(where, "usd_per_image", entry["usd_per_image"]),
                      since=_date(where, entry.get("since"), "since"),
                      source=f"{'patch' if cited else 'override'} {file_name} [[image_price]]#{n}",
                      cited=_citation(where, entry, cited))


def _names(where: str, entry: dict, key: str) -> tuple[str, ...]:
    """A string, or a non-empty list of them."""
    found = entry[key] if isinstance(entry[key], list) else [entry[key]]
    if not found or not all(isinstance(name, str) and name for name in found):
        raise PriceFileError(f"{where}: {key} must be a non-empty string, or a list of them.")
    return tuple(found)


def _table(where: str, entry: object, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict:
    if not isinstance(entry, dict):
        raise PriceFileError(f"{where} is not a table.")
    unknown = set(entry) - set(allowed)
    if unknown:
        raise PriceFileError(f"{where}: unknown key(s) {sorted(unknown)}; allowed keys are {list(allowed)}.")
    missing = [k for k in required if k not in entry]
    if missing:
        raise PriceFileError(f"{where}: missing {missing}; it needs {', '.join(required)}.")
    return entry


def _rates(where: str, entry: dict) -> Rates:
    rates = {k: _rate(where, k, entry[k]) for k in _RATE_KEYS if k in entry}
    rates.setdefault("cache_read_mtok", rates["input_mtok"])
    rates.setdefault("cache_write_mtok", rates["input_mtok"])
    rates.setdefault("cache_write_1h_mtok", rates["cache_write_mtok"])
    return Rates(**rates)


def _text(where: str, entry: dict, key: str) -> str | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise PriceFileError(f"{where}: {key} must be a non-empty string, got {value!r}.")
    return value


def _citation(where: str, entry: dict, required: bool) -> str | None:
    source, checked = _text(where, entry, "source"), _date(where, entry.get("checked"), "checked")
    if required and (source is None or checked is None):
        raise PriceFileError(f"{where}: a bundled patch needs source (the page with the rates) and checked (a date).")
    if source is None:
        return None
    return f"{source} (checked {checked:%Y-%m-%d})" if checked else source


def _rate(where: str, key: str, value: object, kind: str = "a number (USD)") -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PriceFileError(f"{where}: {key} must be {kind}, got {value!r}.")
    try:
        rate = Decimal(str(value))
    except InvalidOperation:
        raise PriceFileError(f"{where}: {key} must be {kind}, got {value!r}.") from None
    if not rate.is_finite() or rate < 0:
        raise PriceFileError(f"{where}: {key} must be zero or more, got {value!r}.")
    if rate > MAX_RATE:
        raise PriceFileError(f"{where}: {key} must be at most {MAX_RATE:,}, got {value!r}.")
    return rate


def _date(where: str, value: object, key: str) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise PriceFileError(f"{where}: {key} must be a TOML date such as 2026-01-01, got {value!r}.")
