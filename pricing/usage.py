"""The normalised token record every provider parser produces and pricing consumes.

The counts never overlap, so a price is simply count x rate summed over the fields:

- ``input_tokens``: input billed at the normal input rate (no cache reads, no cache writes);
- ``cache_read_tokens``: input read from the provider's prompt cache;
- ``cache_write_tokens``: input written to the cache (all TTLs);
- ``output_tokens``: all billed output, reasoning included.

Two fields are *subsets*, kept because they are priced or reported differently:
``cache_write_1h_tokens`` is the part of ``cache_write_tokens`` written with a one-hour TTL,
``reasoning_tokens`` is the part of ``output_tokens`` spent on reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class TokenUsage:
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    web_search_requests: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{f.name} must be a non-negative integer, got {value!r}")

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
