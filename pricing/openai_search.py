"""OpenAI's web search preview tool (``web_search_preview`` among a Responses call's tools) on a model
without reasoning (gpt-4o, gpt-4.1 and their minis) costs $25 per 1,000 searches, its search content
tokens free; the generally available tool (``web_search``), and the preview on a reasoning model (o3,
gpt-5), cost the $10 genai-prices lists, their content tokens billed as input (OpenAI's price page,
https://platform.openai.com/docs/pricing#built-in-tools). The tokens a preview call's usage reports
are priced as reported.
"""

from __future__ import annotations

import re
from decimal import Decimal

from .usage import TokenUsage

RATE = Decimal(25) / 1000
_WITHOUT_REASONING = re.compile(r"(?:gpt-4o|gpt-4\.1|chatgpt-4o)(?:-|$)")


def flat_searches(usage: TokenUsage, provider: str, model: str) -> int:
    """How many of the call's searches are billed at ``RATE``."""
    if provider != "openai" or not _WITHOUT_REASONING.match(model):
        return 0
    return min(usage.web_search_preview_requests, usage.web_search_requests)
