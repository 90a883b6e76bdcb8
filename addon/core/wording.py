"""How a count of things is written for people, in the CLI, alerts and refusals alike."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """1 call, 2 calls, 1,234 calls; ``nouns`` when adding an s is wrong (1 entry, 2 entries)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
