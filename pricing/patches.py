"""Our bundled corrections (patches.toml) against the list prices in use: a patch the list data
has since absorbed is redundant, one it still contradicts is still needed.

    for found in patches.compare(book.patches, now):
        found.entry, found.verdict  # "redundant", "differs", "not in the list data"
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from . import listprices
from .overrides import OverridePrice, PriceFile
from .usage import TokenUsage

# One of each kind an entry may price: equal costs for this mean equal rates for each kind.
_PROBES = (TokenUsage(input_tokens=1_000_000), TokenUsage(output_tokens=1_000_000),
           TokenUsage(output_tokens=1_000_000, reasoning_tokens=1_000_000),  # a thinking rate
           TokenUsage(cache_read_tokens=1_000_000), TokenUsage(cache_write_tokens=1_000_000),
           TokenUsage(web_search_requests=1_000))


@dataclass(frozen=True)
class Compared:
    entry: OverridePrice
    model: str              # the model name compared (a pattern without its wildcard)
    verdict: str            # "redundant", "differs", "not in the list data"
    patch_usd: Decimal      # a million of each token kind, by the patch
    list_usd: Decimal | None  # and by the list data


def compare(patches: PriceFile, now: dt.datetime) -> list[Compared]:
    return [_compare(entry, now) for entry in patches.prices if entry.provider and entry.service_tier is None]


def _compare(entry: OverridePrice, now: dt.datetime) -> Compared:
    at = entry.since or now
    model = entry.models[0].rstrip("*?")
    assert entry.provider is not None
    # None of a kind neither prices (searches of a model that has no search tool) is alike.
    own = [entry.cost(u) for u in _PROBES]
    listed = [listprices.cost(u, entry.provider, model, at) for u in _PROBES]
    ours = sum((c for c in own if c is not None), Decimal(0))
    if listed[0] is None:  # not even its input tokens
        return Compared(entry, model, "not in the list data", ours, None)
    theirs = sum((c for c in listed if c is not None), Decimal(0))
    return Compared(entry, model, "redundant" if own == listed else "differs", ours, theirs)
