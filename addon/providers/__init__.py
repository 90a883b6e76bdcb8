"""The providers the proxy knows (which one a request is for is addon/routing.py's to say).

One port serves them all. ``/openai/...``, ``/anthropic/...``, ``/gemini/...`` and the other
prefixes below name a provider explicitly (the prefix is removed before forwarding). Adding a
provider is one module here (or an OpenAICompatible entry) plus its line in ``all_providers``;
docs/providers.md says how.
"""

from __future__ import annotations

from ..estimate import Counter
from .anthropic import Anthropic
from .azure import Azure
from .base import Observed, Provider, StreamParser
from .bedrock import Bedrock
from .cohere import Cohere
from .gemini import Gemini
from .openai import OpenAI, OpenAICompatible
from .vertex import Vertex

__all__ = ["Observed", "Provider", "StreamParser", "all_providers"]


def all_providers(counter: Counter | None) -> list[Provider]:
    """The shared-port fallbacks come last: Anthropic's paths, then OpenAI for everything else."""
    return [
        Gemini(counter),
        Cohere(counter),
        Vertex(counter),
        OpenAICompatible("mistral", "/mistral", "https://api.mistral.ai", counter),
        Azure(counter),  # no default upstream: one per resource, --upstream azure=https://NAME.openai.azure.com
        OpenAICompatible("openrouter", "/openrouter", "https://openrouter.ai/api", counter),
        OpenAICompatible("groq", "/groq", "https://api.groq.com/openai", counter, accepts_stream_options=True),
        OpenAICompatible("deepseek", "/deepseek", "https://api.deepseek.com", counter, accepts_stream_options=True),
        OpenAICompatible("x-ai", "/xai", "https://api.x.ai", counter, accepts_stream_options=True),
        OpenAICompatible("together", "/together", "https://api.together.xyz", counter),
        OpenAICompatible("fireworks", "/fireworks", "https://api.fireworks.ai/inference", counter),
        Bedrock(counter),  # the forward mode's only (no prefix): SigV4 signs the host
        Anthropic(counter),
        OpenAI(counter),
    ]

