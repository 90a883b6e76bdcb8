"""List prices from genai-prices, by the call's time and service tier.

genai-prices' general calculation costs ~150 us a call, which the writer thread would otherwise pay
for every row. A price that is linear in the counts is therefore worked out once per model, day and
tier by pricing a million of each kind alone, then applied by multiplication. A price that is not
linear (long-context tiers) or not constant over the day (DeepSeek's off-peak windows) goes through
genai-prices for every call: caching it by day would lose the window.
"""

from __future__ import annotations

import datetime as dt
import functools
from decimal import Decimal

import genai_prices
from genai_prices.types import ModelInfo, TieredPrices, TimeOfDateConstraint

from .rates import MTOK
from .snapshots import PriceData, PriceDataError, bundled
from .usage import TokenUsage

_TIER_FIELDS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok")
_PER_CALL = object()
_PROBES = {
    "input_tokens": TokenUsage(input_tokens=1_000_000),
    "cache_read_tokens": TokenUsage(cache_read_tokens=1_000_000),
    "cache_write_tokens": TokenUsage(cache_write_tokens=1_000_000),
    "cache_write_1h_tokens": TokenUsage(cache_write_tokens=1_000_000, cache_write_1h_tokens=1_000_000),
    "output_tokens": TokenUsage(output_tokens=1_000_000),
    "web_search_requests": TokenUsage(web_search_requests=1_000_000),
    # A subset's rate is what it adds on top of its parent's (see _own_cost).
    "input_audio_tokens": TokenUsage(input_tokens=1_000_000, input_audio_tokens=1_000_000),
    "input_image_tokens": TokenUsage(input_tokens=1_000_000, input_image_tokens=1_000_000),
    "output_audio_tokens": TokenUsage(output_tokens=1_000_000, output_audio_tokens=1_000_000),
    "cache_read_audio_tokens": TokenUsage(cache_read_tokens=1_000_000, cache_read_audio_tokens=1_000_000),
    "cache_read_image_tokens": TokenUsage(cache_read_tokens=1_000_000, cache_read_image_tokens=1_000_000),
    "output_image_tokens": TokenUsage(output_tokens=1_000_000, output_image_tokens=1_000_000),
    "audio_seconds": TokenUsage(audio_seconds=1_000_000),
    "characters": TokenUsage(characters=1_000_000),
    "file_search_calls": TokenUsage(file_search_calls=1_000_000),
    "code_executions": TokenUsage(code_executions=1_000_000),
    "grounded_prompts": TokenUsage(grounded_prompts=1_000_000),
}
_SUBSETS = {"cache_write_1h_tokens": "cache_write_tokens", "input_audio_tokens": "input_tokens",
            "input_image_tokens": "input_tokens", "output_audio_tokens": "output_tokens",
            "output_image_tokens": "output_tokens", "cache_read_audio_tokens": "cache_read_tokens",
            "cache_read_image_tokens": "cache_read_tokens"}
# Units billed at a rate of their own, which genai-prices leaves out for a model it knows no rate of
# it for: a call counting one of them is then unpriced, never priced without it (gpt-4o-transcribe
# has token rates but none per second, so a transcript whose seconds alone are known cost $0).
# Not code runs (billed by their containers' time: pricing.PriceBook.tool_fees) nor pages fetched
# (tokens only); token subsets (audio, image) fall back to their parent's rate in genai-prices, but
# not an hour's cache writes: every provider that reports them bills them above the 5 minutes' rate
# (Anthropic's: twice the input rate, against 1.25 times), so without a rate of their own they were
# priced a third low.
_OWN_RATE = ("audio_seconds", "characters", "web_search_requests", "file_search_calls", "grounded_prompts",
             "cache_write_1h_tokens")
# Media tokens a provider always bills above its text tokens: OpenAI's audio (gpt-audio: $32 against
# $2.50 in, $64 against $10 out), Cohere's embedded images ($0.47 against $0.12 for embed-v4.0). On a
# model genai-prices has no such rate for (gpt-4o-audio-preview, embed-v4.0) the call is unpriced,
# not priced many times low. Output all audio is at the output rate, which is then the audio one (a
# speech model's, gpt-4o-mini-tts: a chat answer in audio has its transcript's text tokens too).
# (Gemini bills some models' audio as text.)
_AUDIO = ("input_audio_tokens", "output_audio_tokens")
_MEDIA_APART = {"openai": _AUDIO, "azure": _AUDIO, "cohere": ("input_image_tokens",)}
Context = tuple[tuple[str, str], ...]  # genai-prices' price_context, hashable


BUNDLED = bundled()  # the installed package's data
_current = BUNDLED


def current() -> PriceData:
    """The list-price data every call is priced with now."""
    return _current


def use(data: PriceData) -> None:
    """Price with ``data`` from now on (a pricing thread sees the old data or the new, whole)."""
    global _current
    _current = data
    # Keyed by the data too, so a lookup racing the swap cannot keep an old answer; cleared so
    # the old data is not held in memory by its cached entries.
    _model.cache_clear()
    _linear_rates.cache_clear()


def data_source() -> str:
    return _current.label


def context(service_tier: str | None) -> Context:
    """genai-prices' request context for a (normalised) service tier; () for the standard tier."""
    if service_tier is None:
        return ()
    if service_tier == "fast":  # Anthropic's fast mode (usage.speed), on the standard tier
        return (("speed", "fast"),)
    return (("processing", "batch"),) if service_tier == "batch" else (("service_tier", service_tier),)


# Providers recorded under another name than genai-prices' id for them.
_GENAI_IDS = {"bedrock": "aws"}


def _listed(provider: str, model: str) -> tuple[str, str]:
    """genai-prices' provider and model for a row's. Vertex AI bills Anthropic's models at
    Anthropic's own rates (docs/coverage.md), which genai-prices' Anthropic entries carry in full
    where its Vertex ones lack the 1-hour cache writes of every model before Claude 4.5: a Vertex
    Claude call is priced as Anthropic's, its model named as Anthropic names it (the path's
    claude-sonnet-4@20250514 and the answer's claude-sonnet-4-20250514 alike)."""
    if provider == "vertex" and model.startswith("claude-"):
        return "anthropic", model.replace("@", "-")
    return _GENAI_IDS.get(provider, provider), model


def has_tier(provider: str, model: str, at: dt.datetime, ctx: Context, data: PriceData | None = None) -> bool:
    """Whether genai-prices publishes this tier's own rates for the model at that time."""
    provider, model = _listed(provider, model)
    info = _model(data or _current, provider, model, own=True)
    return info is not None and any(
        tuple(sorted(v.when.items())) == ctx and (v.constraint is None or v.constraint.active(at))
        for v in info.price_variants or ())


def cost(usage: TokenUsage, provider: str, model: str, at: dt.datetime, ctx: Context = (),
         data: PriceData | None = None) -> Decimal | None:
    """The list price by ``data`` (default: the current), or None when it does not know the model,
    or not the rate of a unit the call is billed in (``_OWN_RATE``)."""
    data = data or _current
    provider, model = _listed(provider, model)
    rates = _linear_rates(data, provider, model, at.date(), ctx)
    if rates is None or usage.images and not usage.output_tokens:  # genai-prices prices no image count
        return None
    own = _OWN_RATE + tuple(field for field in _MEDIA_APART.get(provider, ())
                            if field != "output_audio_tokens" or usage.output_audio_tokens < usage.output_tokens)
    if rates is _PER_CALL:
        if any(getattr(usage, field) and not _own_cost(data, field, provider, model, at, ctx) for field in own):
            return None
        return _genai_cost(data, usage, provider, model, at, ctx)
    assert isinstance(rates, dict)
    if any(getattr(usage, field) and field not in rates for field in own):
        return None
    if usage.output_tokens and "input_tokens" in rates and "output_tokens" not in rates:
        return None  # input priced, output not (Azure's davinci-002 in genai-prices): unknown, not free
    return sum((getattr(usage, field) * rate for field, rate in rates.items()), Decimal(0)) / MTOK


def adds_up(provider: str, model: str, at: dt.datetime, ctx: Context = (), data: PriceData | None = None) -> bool:
    """Whether the list prices a sum of calls as the sum of their prices (no long-context tier, no
    rate by the time of day): true of a model they do not know."""
    provider, model = _listed(provider, model)
    return _linear_rates(data or _current, provider, model, at.date(), ctx) is not _PER_CALL


def check_not_free(new: PriceData, current: PriceData, at: dt.datetime) -> None:
    """Refuse a document in which models ``current`` prices now cost nothing at all (input and
    output at $0): a broken or tampered mirror would otherwise make every call to them $0, priced,
    without a word. (A model that really became free can be priced in prices.toml.)"""
    freed = sorted((provider, model) for provider, model in new.models() & current.models()
                   if _charges(current, provider, model, at) and _charges(new, provider, model, at) is False)
    if freed:
        examples = ", ".join(f"{p}/{m}" for p, m in freed[:3])
        raise PriceDataError(f"{new.source} prices {len(freed)} model(s) priced now at $0 for input and output "
                             f"(e.g. {examples}): refused, the list prices in use stay")


def _charges(data: PriceData, provider: str, model: str, at: dt.datetime) -> bool | None:
    """Whether ``data`` prices the model's input or output above $0 at ``at``; None when it cannot tell."""
    try:
        return _model(data, provider, model) is not None and any(
            _genai_cost(data, _PROBES[kind], provider, model, at, ()) for kind in ("input_tokens", "output_tokens"))
    except Exception:  # a model genai-prices cannot price without more (a context it needs): not judged
        return None


# The providers whose rates genai-prices may lend to another for a model it does not list there:
# Azure bills OpenAI's and Anthropic's models at their makers' rates, but the other makers' models
# it serves (DeepSeek's, xAI's, Moonshot's) at its own (DeepSeek-R1: $1.35 and $5.40 per million
# on Azure AI Foundry, $0.55 and $2.19 at DeepSeek): those are unpriced, never at another's price.
_LENDERS = {"azure": ("azure", "openai", "anthropic")}


@functools.lru_cache(maxsize=1024)
def _model(data: PriceData, provider: str, model: str, own: bool = False) -> ModelInfo | None:
    """``own``: only a model of that provider's, not one genai-prices borrows from another provider
    (whose tier rates it then ignores)."""
    try:
        found_in, info = data.snapshot.find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    lenders = _LENDERS.get(provider)
    if lenders and not any(info is m for p in data.snapshot.providers if p.id in lenders for m in p.models):
        return None
    return None if own and not any(info is m for m in found_in.models) else info


def _genai_cost(data: PriceData, usage: TokenUsage, provider: str, model: str, at: dt.datetime,
                ctx: Context) -> Decimal:
    # genai-prices counts input_tokens as *all* input, cache included.
    counts = genai_prices.Usage(
        input_tokens=usage.total_input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        output_tokens=usage.output_tokens,
        # genai-prices prices Gemini 2.x's grounding per grounded prompt as its "web searches".
        web_searches=usage.web_search_requests + usage.grounded_prompts,
        storage_searches=usage.file_search_calls,  # OpenAI's file search tool calls
        code_executions=usage.code_executions,
        # genai-prices' audio and image input include their cached part; ours are the uncached part.
        input_audio_tokens=usage.input_audio_tokens + usage.cache_read_audio_tokens,
        cache_audio_read_tokens=usage.cache_read_audio_tokens,
        output_audio_tokens=usage.output_audio_tokens,
        input_image_tokens=usage.input_image_tokens + usage.cache_read_image_tokens,
        cache_image_read_tokens=usage.cache_read_image_tokens,
        output_image_tokens=usage.output_image_tokens,
        audio_seconds=usage.audio_seconds,
        input_characters=usage.characters,
    )
    calc = data.snapshot.calc(counts, model, provider, None, at, price_context=dict(ctx) or None)
    return Decimal(calc.total_price)


@functools.lru_cache(maxsize=4096)
def _linear_rates(data: PriceData, provider: str, model: str, day: dt.date,
                  ctx: Context) -> dict[str, Decimal] | object | None:
    info = _model(data, provider, model)
    if info is None:
        return None
    if _varies_by_time_of_day(info):
        return _PER_CALL
    at = dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)
    prices = info.get_prices(at, dict(ctx) or None)
    if any(isinstance(getattr(prices, name, None), TieredPrices) for name in _TIER_FIELDS):
        return _PER_CALL
    costs = {field: _own_cost(data, field, provider, model, at, ctx) for field in _PROBES}
    return {field: value for field, value in costs.items() if value}


def _own_cost(data: PriceData, field: str, provider: str, model: str, at: dt.datetime, ctx: Context) -> Decimal:
    """What a million of ``field`` costs beyond its parent's rate (a subset's), or at all: a 1h write
    is also a write, so its rate is what it adds on top of a 5-minute write (and an audio token's is
    what it adds on top of a text token's)."""
    cost = _genai_cost(data, _PROBES[field], provider, model, at, ctx)
    parent = _SUBSETS.get(field)
    return cost - _genai_cost(data, _PROBES[parent], provider, model, at, ctx) if parent else cost


def _varies_by_time_of_day(info: ModelInfo) -> bool:
    conditions = [*(info.prices if isinstance(info.prices, list) else ()), *(info.price_variants or ())]
    return any(isinstance(c.constraint, TimeOfDateConstraint) for c in conditions)
