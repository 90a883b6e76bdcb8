"""What a call cost: the user's overrides, then our bundled patches, then genai-prices' list prices.

    book = PriceBook(home / "prices.toml")
    price = book.price(TokenUsage(input_tokens=10, output_tokens=5), "openai", "gpt-4o", at)
    price.cost_usd  # Decimal, or None when the model has no known price

An unknown model is never priced at $0: ``cost_usd`` is None and ``priced`` False. Neither is a
service tier whose rates nobody publishes: a priority call is not priced at the standard rate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from . import listprices, openai_search, overrides, regions
from .listprices import data_source
from .overrides import PriceFile, PriceFileError
from .snapshots import PriceData, PriceDataError
from .usage import ImageOptions, TokenUsage

__all__ = ["PATCH_FILE", "UNKNOWN_FEES", "UNPRICED", "ImageOptions", "Price", "PriceBook", "PriceData",
           "PriceDataError", "PriceFile", "PriceFileError", "TokenUsage", "data_source", "priced_tier", "unknown_fee"]

log = logging.getLogger(__name__)
PATCH_FILE = Path(__file__).with_name("patches.toml")
# Tiers billed at the standard list rates. OpenAI's "scale" is capacity bought in advance; its
# per-token list price is the standard one (docs/pricing.md).
_STANDARD_TIERS = frozenset({"default", "auto", "standard", "scale", "on_demand"})


@dataclass(frozen=True)
class Price:
    cost_usd: Decimal | None
    source: str | None  # where the rates came from: "genai-prices 0.2.3", "override prices.toml#2", ...
    snapshot: str | None = None  # the list-price data in use (PriceData.id), priced by it or not

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None


UNPRICED = Price(None, None)


def priced_tier(reported: str | None) -> str | None:
    """The service tier a call is priced at: None for the standard tier, else "batch", "flex", ..."""
    if reported is None or reported.lower() in _STANDARD_TIERS:
        return None
    return reported.lower()


# Why a call is unpriced (its row's error), for the fees on top of its tokens that no answer prices:
# the image generation tool's images, at the image model's token rates, which no usage we read has;
# a Bedrock guardrail's checks, per 1,000 text units of each policy, reported only with its trace.
UNKNOWN_FEES = {
    "image_generation_calls": "the image generation tool's images are billed at the image model's rates, "
                              "which the answer does not report (docs/coverage.md)",
    "guardrail_checks": "a Bedrock guardrail's checks are billed per text unit and policy, which the answer "
                        "does not report (docs/coverage.md)",
    "advisor_calls": "the advisor tool's model is billed at its own rates, on tokens the calling model's row "
                     "does not hold (docs/coverage.md)",
}


def unknown_fee(usage: TokenUsage) -> str | None:
    """Why the call's fees cannot be priced (one of UNKNOWN_FEES), None when they can."""
    return next((why for name, why in UNKNOWN_FEES.items() if getattr(usage, name)), None)


class PriceBook:
    """Prices calls; re-reads the override file when it changes, keeping the last good one on error.

    ``override_path`` None: no file; the overrides are those given to ``use_overrides`` (the shared
    mode keeps them in the shared store: addon/core/config_files.py)."""

    def __init__(self, override_path: Path | None, patch_path: Path = PATCH_FILE):
        self.override_path = override_path
        self.patches = overrides.load(patch_path, cited=True)
        # A bad file at start is the caller's to report.
        self._overrides = overrides.load(override_path) if override_path else PriceFile()
        self._mtime = self._current_mtime()

    @property
    def overrides(self) -> PriceFile:
        return self._overrides

    def use_overrides(self, found: PriceFile) -> None:
        """Price with ``found`` from now on (swapped whole: a pricing thread sees the old or the new)."""
        self._overrides = found

    def price(self, usage: TokenUsage, provider: str, model: str | None, at: dt.datetime,
              service_tier: str | None = None, image: ImageOptions | None = None,
              data: PriceData | None = None, region: str | None = None) -> Price:
        """``service_tier``: as the provider reported it (None, "default", "flex", "batch", ...);
        ``image``: the size and quality the request asked for, for a model billed per image;
        ``data``: the list prices to use (default: those in use now); ``region``: where the call
        ran, where its price depends on it (Provider.price_region; ``regions.REGIONAL`` for a row
        priced off a global endpoint before, ``regions.stored_region``)."""
        data = data or listprices.current()
        price = self._price(data, usage, provider, model, at, service_tier, image, region)
        return dataclasses.replace(price, snapshot=data.id)

    def _price(self, data: PriceData, usage: TokenUsage, provider: str, model: str | None, at: dt.datetime,
               service_tier: str | None, image: ImageOptions | None, region: str | None) -> Price:
        if not model:
            return UNPRICED
        if self.priced_per_image(usage, provider, model):
            return self._per_image(usage, provider, model, at, image)
        if not usage.has_tools:
            tokens = self._tokens_and_searches(data, usage, provider, model, at, service_tier)
            return regions.with_premium(tokens, provider, model, region)
        # A regional premium is on the token rates alone (regions.py), never on a tool's fee.
        tokens = regions.with_premium(self._tokens_and_searches(data, usage.without_tools(), provider, model, at,
                                                                service_tier), provider, model, region)
        fees = self.tool_fees(usage, provider, model, at, service_tier, data)
        if tokens.cost_usd is None or fees is None:
            # A tool billed at a rate nobody publishes is not free either; a premium stays named,
            # for the reprice that prices the call.
            return regions.with_premium(UNPRICED, provider, model, region)
        return Price(tokens.cost_usd + fees, tokens.source)

    def tool_fees(self, usage: TokenUsage, provider: str, model: str, at: dt.datetime,
                  service_tier: str | None = None, data: PriceData | None = None) -> Decimal | None:
        """What the call's server-side tools add to its tokens (None: a fee with no known rate).

        Web searches cost what the price layer that prices the model says; the other tools are
        genai-prices' rates whichever layer prices the tokens (a price file has no rates for them);
        containers are estimated at their minimum billed time (``[[tool_fee]]`` in patches.toml)."""
        if unknown_fee(usage):
            return None
        data = data or listprices.current()
        flat = openai_search.flat_searches(usage, provider, model)
        searches = TokenUsage(web_search_requests=usage.web_search_requests - flat)
        with_searches = self._tokens_and_searches(data, searches, provider, model, at, service_tier).cost_usd
        if with_searches is not None:
            with_searches += flat * openai_search.RATE
        listed = TokenUsage(file_search_calls=usage.file_search_calls, code_executions=usage.code_executions,
                            grounded_prompts=usage.grounded_prompts)
        others = listprices.cost(listed, provider, model, at, listprices.context(priced_tier(service_tier)), data)
        if with_searches is None or others is None and listed.has_tools:
            return None
        fees = with_searches + (others or 0)
        if usage.containers:
            fee = self._overrides.container_fee(provider) or self.patches.container_fee(provider)
            if fee is None:
                return None
            fees += usage.containers * fee.each
        return fees

    def _tokens_and_searches(self, data: PriceData, usage: TokenUsage, provider: str, model: str, at: dt.datetime,
                             service_tier: str | None) -> Price:
        tier = priced_tier(service_tier)
        # Price files hold text-token rates only: a call billed in images, seconds or characters, or
        # with audio or image tokens, is priced by the list prices, never at $0 (or at a text rate)
        # by a file entry that has no rate for its units.
        for layer in () if usage.has_units or usage.has_media_tokens else (self._overrides, self.patches):
            price = self._from_file(layer, usage, provider, model, at, tier)
            if price is not None:
                return price
        return self._from_list(data, usage, provider, model, at, tier)

    def adds_up(self, provider: str, model: str, at: dt.datetime, service_tier: str | None = None) -> bool:
        """Whether a sum of the model's calls costs what they cost one by one: no long-context tier,
        no output rate for a response that thought, no rate by the time of day in whatever layer may
        price them. A batch's row holds its requests' counts summed, each priced alone when stored;
        only then can the sum be priced again (``reprice``)."""
        tier = priced_tier(service_tier)
        for layer in (self._overrides, self.patches):
            for entry in (layer.best_match(provider, model, at, tier), layer.best_match(provider, model, at)):
                if entry is not None and (entry.tiers or entry.rates.thinking_output_mtok is not None):
                    return False
        return listprices.adds_up(provider, model, at, listprices.context(tier))

    def priced_per_image(self, usage: TokenUsage, provider: str, model: str) -> bool:
        """Whether the call's price is its images at a per-image price (which needs ImageOptions)."""
        return bool(usage.images and not usage.output_tokens) and any(
            layer.prices_images_of(provider, model) for layer in (self._overrides, self.patches))

    def _per_image(self, usage: TokenUsage, provider: str, model: str, at: dt.datetime,
                   image: ImageOptions | None) -> Price:
        """The first layer that prices the model per image decides; a size or quality it does not
        name is unpriced, never priced as another."""
        layer = next(layer for layer in (self._overrides, self.patches) if layer.prices_images_of(provider, model))
        entry = layer.image_price(provider, model, at, image.size, image.quality) if image else None
        return Price(usage.images * entry.usd_per_image, entry.source) if entry else UNPRICED

    def _from_file(self, layer: PriceFile, usage: TokenUsage, provider: str, model: str, at: dt.datetime,
                   tier: str | None) -> Price | None:
        exact = layer.best_match(provider, model, at, tier)
        if exact is not None:
            cost = exact.cost(usage)  # None: it searched, and the entry has no rate for searches
            return Price(cost, exact.source) if cost is not None else UNPRICED
        standard = layer.best_match(provider, model, at) if tier else None
        if standard is None:
            return None
        # The file prices this model, but not at this tier: its standard rates times the tier's
        # published discount, or no price at all (never the standard rate for a priority call).
        cost = standard.cost(usage)
        return (self._scaled(cost, standard.source, provider, tier) if cost is not None else None) or UNPRICED

    def _from_list(self, data: PriceData, usage: TokenUsage, provider: str, model: str, at: dt.datetime,
                   tier: str | None) -> Price:
        ctx = listprices.context(tier)
        if tier is None or listprices.has_tier(provider, model, at, ctx, data):
            cost = listprices.cost(usage, provider, model, at, ctx, data)
            return Price(cost, data.label) if cost is not None else UNPRICED
        standard = listprices.cost(usage, provider, model, at, data=data)
        if standard is None:
            return UNPRICED
        return self._scaled(standard, data.label, provider, tier) or UNPRICED

    def _scaled(self, standard: Decimal, source: str, provider: str, tier: str | None) -> Price | None:
        assert tier is not None
        found = self._overrides.multiplier(provider, tier) or self.patches.multiplier(provider, tier)
        if found is None:
            return None
        return Price(standard * found.multiplier, f"{source} x{found.multiplier} {tier} ({found.source})")

    def reload_if_changed(self) -> None:
        if self.override_path is None:
            return
        mtime = self._current_mtime()
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            self._overrides = overrides.load(self.override_path)
            log.info("reloaded price overrides from %s (entries: %d)", self.override_path, len(self._overrides))
        except PriceFileError as exc:
            log.error("keeping the previous price overrides: %s", exc)

    def _current_mtime(self) -> float | None:
        if self.override_path is None:
            return None
        try:
            return self.override_path.stat().st_mtime
        except FileNotFoundError:
            return None
