"""Prices that depend on where a call ran, 10% more than the same call elsewhere:

- Vertex AI bills Claude Sonnet 4.5 and every later Claude model 10% more on a regional or
  multi-region endpoint (``locations/us-east5``, ``locations/eu``) than on the global one
  (``locations/global``), whose rates are Anthropic's own (docs/coverage.md);
- Anthropic bills US-only inference (the answer's ``usage.inference_geo`` "us", asked for by the
  request's ``inference_geo`` or a workspace's default) of Claude Opus 4.6 and every later model
  1.1 times every token rate.

The row keeps no location, only the price's source, which names the premium: ``aispendtrack
reprice`` applies it again to the rows priced with it (``stored_region``).
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from . import Price

REGIONAL = "regional"  # any Vertex location but global, where the row no longer says which
US_ONLY = "us"


class _Premium(NamedTuple):
    regions: frozenset[str] | None  # where it applies; None: anywhere but "global"
    stored: str                     # the region a row priced with it is priced again for
    since: tuple[int, int]          # the first Claude version it applies to
    mark: str                       # in the price's source: how a stored row says it was priced with it
    source: str


_PREMIUMS = {
    "vertex": _Premium(None, REGIONAL, (4, 5), "x1.1 Vertex regional endpoint",
                       "https://cloud.google.com/vertex-ai/generative-ai/pricing"),
    "anthropic": _Premium(frozenset({US_ONLY}), US_ONLY, (4, 6), "x1.1 US-only inference",
                          "https://platform.claude.com/docs/en/build-with-claude/data-residency"),
}
_RATE = Decimal("1.1")
# claude-{family}-{major}[-{minor}]: claude-sonnet-4-5@20250929, claude-opus-5; a dated name without a
# minor version (claude-sonnet-4@20250514, claude-sonnet-4-20250514) is its major's first.
_VERSION = re.compile(r"claude-[a-z]+-(\d+)(?:-(\d{1,2}))?(?=[@-]|$)")


def with_premium(price: Price, provider: str, model: str, region: str | None) -> Price:
    """``price`` with the premium where it applies; unchanged elsewhere. Unpriced there (a model the
    list prices do not know yet), its source names the premium alone: the reprice that prices it
    once they do applies it (the row keeps no location)."""
    premium = _premium(provider, model, region)
    if premium is None:
        return price
    if price.cost_usd is None:
        return dataclasses.replace(price, source=f"unpriced, {premium.mark} once priced ({premium.source})")
    return dataclasses.replace(price, cost_usd=price.cost_usd * _RATE,
                               source=f"{price.source} {premium.mark} ({premium.source})")


def stored_region(price_source: str | None) -> str | None:
    """The region a stored row was priced for, as far as its price source says (REGIONAL, US_ONLY or None)."""
    return next((p.stored for p in _PREMIUMS.values() if price_source and p.mark in price_source), None)


def _premium(provider: str, model: str, region: str | None) -> _Premium | None:
    premium = _PREMIUMS.get(provider)
    if premium is None or region in (None, "global") or premium.regions is not None and region not in premium.regions:
        return None
    found = _VERSION.match(model)
    return premium if found is not None and (int(found.group(1)), int(found.group(2) or 0)) >= premium.since else None
