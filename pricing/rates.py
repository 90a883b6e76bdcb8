"""One set of per-million-token rates, and what a call's usage costs at them."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from .usage import TokenUsage

MTOK = Decimal(1_000_000)


@dataclass(frozen=True)
class Rates:
    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal
    cache_write_mtok: Decimal        # 5-minute writes, and writes whose TTL the provider does not split
    cache_write_1h_mtok: Decimal
    # Gemini 2.5 Flash preview bills the whole output of a response that thought at a higher rate.
    thinking_output_mtok: Decimal | None = None

    def cost(self, usage: TokenUsage) -> Decimal:
        output_rate = self.output_mtok
        if usage.reasoning_tokens and self.thinking_output_mtok is not None:
            output_rate = self.thinking_output_mtok
        per_mtok = (usage.input_tokens * self.input_mtok
                    + usage.cache_read_tokens * self.cache_read_mtok
                    + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * self.cache_write_mtok
                    + usage.cache_write_1h_tokens * self.cache_write_1h_mtok
                    + usage.output_tokens * output_rate)
        return per_mtok / MTOK
