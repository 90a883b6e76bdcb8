"""Prices that depend on where a call ran: Vertex AI bills Claude Sonnet 4.5 and every later Claude
model 10% more on a regional or multi-region endpoint (``locations/us-east5``, ``locations/eu``)
than on the global one (``locations/global``), whose rates are Anthropic's own (docs/coverage.md).

The row keeps no location, only the price's source, which names the premium: ``aispendtrack
reprice`` applies it again to the rows priced with it (``stored_region``).
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Price

_PREMIUM = Decimal("1.1")
_SOURCE = "https://cloud.google.com/vertex-ai/generative-ai/pricing"
MARK = "x1.1 Vertex regional endpoint"
REGIONAL = "regional"  # any location but global, where the row no longer says which
# claude-{family}-{major}[-{minor}]: claude-sonnet-4-5@20250929, claude-opus-5; a dated name without a
# minor version (claude-sonnet-4@20250514, claude-sonnet-4-20250514) is its major's first.
_VERSION = re.compile(r"claude-[a-z]+-(\d+)(?:-(\d{1,2}))?(?=[@-]|$)")
_FROM = (4, 5)


def with_premium(price: Price, provider: str, model: str, region: str | None) -> Price:
    """``price`` with the regional premium where it applies; unchanged elsewhere. Unpriced there (a
    model the list prices do not know yet), its source names the premium alone: the reprice that
    prices it once they do applies it (the row keeps no location)."""
    if provider != "vertex" or region in (None, "global") or not _premium_model(model):
        return price
    if price.cost_usd is None:
        return dataclasses.replace(price, source=f"unpriced, {MARK} once priced ({_SOURCE})")
    return dataclasses.replace(price, cost_usd=price.cost_usd * _PREMIUM, source=f"{price.source} {MARK} ({_SOURCE})")


def stored_region(price_source: str | None) -> str | None:
    """The region a stored row was priced for, as far as its price source says (REGIONAL or None)."""
    return REGIONAL if price_source and MARK in price_source else None


def _premium_model(model: str) -> bool:
    found = _VERSION.match(model)
    return found is not None and (int(found.group(1)), int(found.group(2) or 0)) >= _FROM
