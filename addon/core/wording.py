"""How a count of things, and a share, is written for people, in the CLI, alerts and refusals alike."""

from __future__ import annotations

import unicodedata
from decimal import ROUND_HALF_UP, Decimal


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """1 call, 2 calls, 1,234 calls; ``nouns`` when adding an s is wrong (1 entry, 2 entries)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def percent(share: float) -> str:
    """A share as the page writes it (web/static/app.js ``pct``): a decimal under 10% (1.8%, 0.0%),
    none from there (12%); halves up, from the float's exact value as JavaScript's toFixed rounds.
    The CLI wrote 2% where the page wrote 1.8%."""
    value = Decimal(share * 100)  # the same double the page multiplies out
    places = Decimal("0.1") if share < 0.1 else Decimal(1)
    return f"{value.quantize(places, ROUND_HALF_UP)}%"


def visible(text: str, limit: int) -> str:
    """Text from outside (a provider's report, an identity provider's claims) as we show and store it:
    control characters (terminal escapes, CR that overwrites a table's row, line breaks) written as
    visible escapes, at most ``limit`` characters."""
    text = "".join(ch if unicodedata.category(ch) != "Cc" else f"\\x{ord(ch):02x}" for ch in text)
    return text if len(text) <= limit else text[:limit - 1] + "…"
