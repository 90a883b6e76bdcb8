"""The providers the proxy knows, and which one a request path belongs to.

One port serves them all: Anthropic's paths are matched first, every other path goes to
OpenAI. Adding a provider is one module here plus an entry in ``all_providers``.
"""

from __future__ import annotations

from ..estimate import Counter
from .anthropic import Anthropic
from .base import Observed, Provider, StreamParser
from .openai import OpenAI

__all__ = ["Observed", "Provider", "StreamParser", "all_providers", "route"]

DEFAULT_UPSTREAMS = {"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}


def all_providers(counter: Counter | None) -> list[Provider]:
    """Most specific first: the last one is the catch-all."""
    return [Anthropic(counter), OpenAI(counter)]


def route(providers: list[Provider], path: str) -> Provider:
    for provider in providers[:-1]:
        if any(path == p or path.startswith(p + "/") for p in provider.paths):
            return provider
    return providers[-1]
