"""Documented usage payloads priced by hand from the providers' own price pages.

Each case is a response body in the provider's wire format, parsed by our provider module and
priced by the price book, against a sum written out by hand: (token count, USD per million) pairs
plus web searches, with the page each rate comes from. Every case must be exact to the last digit.
docs/pricing.md lists the corrections these cases forced (the bundled patches.toml).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import NamedTuple

import pytest

from addon.providers import all_providers
from pricing import PriceBook

OPENAI = "https://platform.openai.com/docs/pricing"
ANTHROPIC = "https://platform.claude.com/docs/en/about-claude/pricing"
RESIDENCY = "https://platform.claude.com/docs/en/build-with-claude/data-residency"
COMPACTION = "https://platform.claude.com/docs/en/build-with-claude/compaction"
GOOGLE = "https://ai.google.dev/gemini-api/docs/pricing"
DEEPSEEK = "https://api-docs.deepseek.com/quick_start/pricing"
XAI = "https://docs.x.ai/docs/models"
# Vertex's own page; its Gemini and Claude (global endpoint) rates are the first-party ones above.
VERTEX = "https://cloud.google.com/vertex-ai/generative-ai/pricing"
VERTEX_MODELS = "/v1/projects/p/locations/{location}/publishers/{publisher}/models/{model}:{method}"
BEDROCK = "https://aws.amazon.com/bedrock/pricing/"
NOW = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
PROVIDERS = {p.name: p for p in all_providers(None)}
CHAT, RESPONSES = "/v1/chat/completions", "/v1/responses"


class Case(NamedTuple):
    id: str
    provider: str
    path: str
    model: str
    body: dict
    lines: list[tuple[int, str]] | None  # (tokens, USD per 1M tokens); None: no price may be given
    source: str
    at: dt.datetime = NOW
    searches: tuple[int, str] = (0, "0")  # (searches, USD per 1,000)


def chat(prompt, completion, cached=None, reasoning=None, total=None, tier=None, **extra):
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion if total is None else total, **extra}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    body = {"object": "chat.completion", "choices": [], "usage": usage}
    return body | ({"service_tier": tier} if tier else {})


def responses(inp, out, cached=0, reasoning=0, searches=0, tier="default"):
    output = [{"type": "web_search_call", "id": f"ws_{n}", "status": "completed"} for n in range(searches)]
    output.append({"type": "message", "role": "assistant", "content": []})
    return {"object": "response", "status": "completed", "service_tier": tier, "output": output,
            "usage": {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
                      "output_tokens": out, "output_tokens_details": {"reasoning_tokens": reasoning},
                      "total_tokens": inp + out}}


def messages(inp, out, read=0, write_5m=0, write_1h=0, searches=0, thinking=None, tier=None, split=True, speed=None,
             geo=None, iterations=None):
    usage = {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": read,
             "cache_creation_input_tokens": write_5m + write_1h}
    if split:
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h}
    if searches:
        usage["server_tool_use"] = {"web_search_requests": searches, "web_fetch_requests": 0}
    if thinking is not None:
        usage["output_tokens_details"] = {"thinking_tokens": thinking}
    if tier:
        usage["service_tier"] = tier
    if speed:
        usage["speed"] = speed
    if geo:
        usage["inference_geo"] = geo
    if iterations:
        usage["iterations"] = [{"type": kind, "input_tokens": i, "output_tokens": o, "cache_read_input_tokens": r,
                                "cache_creation_input_tokens": 0} for kind, i, o, r in iterations]
    return {"type": "message", "role": "assistant", "content": [], "usage": usage}


def gemini(prompt, candidates, cached=0, thoughts=0, tool_prompt=0, tier=None):
    meta = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates + thoughts + tool_prompt}
    meta |= {"serviceTier": tier} if tier else {}
    meta |= {k: v for k, v in (("cachedContentTokenCount", cached), ("thoughtsTokenCount", thoughts),
                               ("toolUsePromptTokenCount", tool_prompt)) if v}
    return {"candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}], "usageMetadata": meta}


def cohere(billed_in, billed_out, raw_in, raw_out):
    return {"id": "c1", "finish_reason": "COMPLETE", "message": {"role": "assistant", "content": []},
            "usage": {"billed_units": {"input_tokens": billed_in, "output_tokens": billed_out},
                      "tokens": {"input_tokens": raw_in, "output_tokens": raw_out}}}


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def gem(model: str) -> str:
    return f"/v1beta/models/{model}:generateContent"


CASES = [
    # OpenAI chat completions: cached input inside prompt_tokens, reasoning inside completion_tokens.
    Case("openai-2024-payload-without-details", "openai", CHAT, "gpt-4o", chat(14, 37, reasoning=0),
         [(14, "2.50"), (37, "10.00")], OPENAI),
    Case("openai-cached-prompt", "openai", CHAT, "gpt-4o", chat(2006, 300, cached=1920),
         [(86, "2.50"), (1920, "1.25"), (300, "10.00")], OPENAI),
    Case("openai-mini", "openai", CHAT, "gpt-4o-mini", chat(1000, 500), [(1000, "0.15"), (500, "0.60")], OPENAI),
    Case("openai-mini-cached", "openai", CHAT, "gpt-4o-mini", chat(5000, 100, cached=4096),
         [(904, "0.15"), (4096, "0.075"), (100, "0.60")], OPENAI),
    Case("openai-4.1-long-prompt-has-no-tier", "openai", CHAT, "gpt-4.1", chat(900_000, 1000),
         [(900_000, "2.00"), (1000, "8.00")], OPENAI),
    Case("openai-4.1-mini-cached", "openai", CHAT, "gpt-4.1-mini", chat(3000, 200, cached=2048),
         [(952, "0.40"), (2048, "0.10"), (200, "1.60")], OPENAI),
    Case("openai-o3-before-the-2025-06-10-cut", "openai", CHAT, "o3", chat(1000, 2000, reasoning=1500),
         [(1000, "10.00"), (2000, "40.00")], OPENAI, at=utc(2025, 5, 1)),
    Case("openai-o3-after-the-cut", "openai", CHAT, "o3", chat(1000, 2000, reasoning=1500),
         [(1000, "2.00"), (2000, "8.00")], OPENAI, at=utc(2025, 7, 1)),
    Case("openai-reasoning-billed-once", "openai", CHAT, "o4-mini", chat(100, 800, reasoning=500),
         [(100, "1.10"), (800, "4.40")], OPENAI),
    Case("openai-gpt-5-partial-details", "openai", CHAT, "gpt-5-2025-08-07", chat(45, 1719, reasoning=1408),
         [(45, "1.25"), (1719, "10.00")], OPENAI),
    Case("openai-gpt-5-mini-cached", "openai", CHAT, "gpt-5-mini", chat(4020, 5, cached=4012),
         [(8, "0.25"), (4012, "0.025"), (5, "2.00")], OPENAI),
    # A chat completion's audio (prompt_tokens_details / completion_tokens_details.audio_tokens) at
    # the audio rates; a model with none published is unpriced, never at the text rate.
    Case("openai-chat-audio-in-and-out", "openai", CHAT, "gpt-audio",
         chat(1000, 2000, prompt_tokens_details={"audio_tokens": 800},
              completion_tokens_details={"audio_tokens": 1800}),
         [(200, "2.50"), (800, "32.00"), (200, "10.00"), (1800, "64.00")], OPENAI),
    Case("openai-chat-audio-without-an-audio-rate-is-unpriced", "openai", CHAT, "gpt-4o-audio-preview-2024-12-17",
         chat(1000, 2000, prompt_tokens_details={"audio_tokens": 800},
              completion_tokens_details={"audio_tokens": 1800}), None, OPENAI),
    Case("openai-chat-audio-input-only-without-an-audio-rate-is-unpriced", "openai", CHAT, "gpt-4o-audio-preview",
         chat(800, 200, prompt_tokens_details={"audio_tokens": 800}), None, OPENAI),
    Case("openai-chat-cached-audio-without-an-audio-rate-is-unpriced", "openai", CHAT, "gpt-4o-audio-preview",
         chat(2000, 80, prompt_tokens_details={"audio_tokens": 1800, "cached_tokens": 1536}), None,
         OPENAI),
    Case("openai-flex", "openai", CHAT, "gpt-5", chat(1000, 1000, tier="flex"),
         [(1000, "0.625"), (1000, "5.00")], OPENAI),
    Case("openai-flex-cached", "openai", CHAT, "gpt-5", chat(2000, 100, cached=1000, tier="flex"),
         [(1000, "0.625"), (1000, "0.0625"), (100, "5.00")], OPENAI),
    Case("openai-flex-is-half-before-genai-prices-has-tier-rates", "openai", CHAT, "gpt-5",
         chat(1000, 1000, tier="flex"), [(1000, "0.625"), (1000, "5.00")],
         "https://platform.openai.com/docs/guides/flex-processing", at=utc(2026, 1, 1)),
    Case("openai-priority", "openai", CHAT, "gpt-5", chat(1000, 1000, tier="priority"),
         [(1000, "2.50"), (1000, "20.00")], OPENAI),
    Case("openai-priority-gpt-4o", "openai", CHAT, "gpt-4o", chat(1000, 1000, cached=500, tier="priority"),
         [(500, "4.25"), (500, "2.125"), (1000, "17.00")], OPENAI),
    Case("openai-priority-without-a-published-rate-is-unpriced", "openai", CHAT, "gpt-5",
         chat(1000, 1000, tier="priority"), None, OPENAI, at=utc(2026, 1, 1)),
    Case("openai-default-tier-is-standard", "openai", CHAT, "gpt-4o", chat(1000, 1000, tier="default"),
         [(1000, "2.50"), (1000, "10.00")], OPENAI),
    Case("openai-scale-tier-is-list-price", "openai", CHAT, "gpt-4o", chat(1000, 1000, tier="scale"),
         [(1000, "2.50"), (1000, "10.00")], OPENAI),
    # OpenAI Responses API: the same subsets under other names; web_search_call items are searches.
    Case("responses-plain", "openai", RESPONSES, "gpt-4o-mini-2024-07-18", responses(14, 50),
         [(14, "0.15"), (50, "0.60")], OPENAI),
    Case("responses-reasoning", "openai", RESPONSES, "gpt-5-2025-08-07", responses(45, 1719, reasoning=1408),
         [(45, "1.25"), (1719, "10.00")], OPENAI),
    Case("responses-cached", "openai", RESPONSES, "gpt-4.1", responses(4020, 5, cached=4012),
         [(8, "2.00"), (4012, "0.50"), (5, "8.00")], OPENAI),
    Case("responses-web-search", "openai", RESPONSES, "gpt-4o", responses(300, 100, searches=2),
         [(300, "2.50"), (100, "10.00")], OPENAI, searches=(2, "10.00")),
    Case("responses-web-search-reasoning-model", "openai", RESPONSES, "gpt-5", responses(2000, 600, reasoning=300,
                                                                                        searches=1),
         [(2000, "1.25"), (600, "10.00")], OPENAI, searches=(1, "10.00")),
    Case("embeddings", "openai", "/v1/embeddings", "text-embedding-3-small",
         {"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}, [(8, "0.02")], OPENAI),
    Case("legacy-completions", "openai", "/v1/completions", "gpt-3.5-turbo-instruct", chat(5, 7),
         [(5, "1.50"), (7, "2.00")], OPENAI),
    Case("azure-cached", "azure", CHAT, "gpt-4o", chat(3000, 100, cached=1024),
         [(1976, "2.50"), (1024, "1.25"), (100, "10.00")],
         "https://azure.microsoft.com/pricing/details/cognitive-services/openai-service/"),
    Case("azure-mini", "azure", CHAT, "gpt-4o-mini", chat(700, 300), [(700, "0.15"), (300, "0.60")],
         "https://azure.microsoft.com/pricing/details/cognitive-services/openai-service/"),
    # Anthropic: input_tokens excludes cache; writes split by TTL; thinking inside output_tokens.
    Case("anthropic-cache-read-and-5m-write", "anthropic", "/v1/messages", "claude-3-5-haiku-20241022",
         messages(3, 44, read=9511, write_5m=1956), [(3, "0.80"), (1956, "1.00"), (9511, "0.08"), (44, "4.00")],
         ANTHROPIC),
    Case("anthropic-web-search", "anthropic", "/v1/messages", "claude-sonnet-4-20250514",
         messages(10809, 644, searches=1, tier="standard"), [(10809, "3.00"), (644, "15.00")], ANTHROPIC,
         searches=(1, "10.00")),
    Case("anthropic-thinking-billed-once", "anthropic", "/v1/messages", "claude-sonnet-4-20250514",
         messages(13, 44, thinking=33, tier="standard"), [(13, "3.00"), (44, "15.00")], ANTHROPIC),
    Case("anthropic-haiku-3-write-is-not-1.25x", "anthropic", "/v1/messages", "claude-3-haiku-20240307",
         messages(0, 0, write_5m=1_000_000), [(1_000_000, "0.30")], ANTHROPIC),
    Case("anthropic-haiku-3-read-is-not-0.1x", "anthropic", "/v1/messages", "claude-3-haiku-20240307",
         messages(100, 50, read=10_000), [(100, "0.25"), (10_000, "0.03"), (50, "1.25")], ANTHROPIC),
    Case("anthropic-1h-and-5m-writes", "anthropic", "/v1/messages", "claude-opus-4-20250514",
         messages(10, 100, write_5m=1000, write_1h=2000),
         [(10, "15.00"), (1000, "18.75"), (2000, "30.00"), (100, "75.00")], ANTHROPIC),
    Case("anthropic-write-without-ttl-split-is-5m", "anthropic", "/v1/messages", "claude-opus-4-1-20250805",
         messages(20, 30, write_5m=5000, split=False), [(20, "15.00"), (5000, "18.75"), (30, "75.00")], ANTHROPIC),
    Case("anthropic-sonnet-4-under-200k", "anthropic", "/v1/messages", "claude-sonnet-4-20250514",
         messages(150_000, 2000), [(150_000, "3.00"), (2000, "15.00")], ANTHROPIC),
    Case("anthropic-sonnet-4-at-200k-is-not-long", "anthropic", "/v1/messages", "claude-sonnet-4-20250514",
         messages(200_000, 2000), [(200_000, "3.00"), (2000, "15.00")], ANTHROPIC),
    Case("anthropic-sonnet-4-over-200k-all-long", "anthropic", "/v1/messages", "claude-sonnet-4-20250514",
         messages(250_000, 2000), [(250_000, "6.00"), (2000, "22.50")], ANTHROPIC),
    Case("anthropic-sonnet-4-cache-counts-toward-200k", "anthropic", "/v1/messages", "claude-sonnet-4-0",
         messages(50_000, 1000, read=180_000, write_1h=1000),
         [(50_000, "6.00"), (180_000, "0.60"), (1000, "12.00"), (1000, "22.50")], ANTHROPIC),
    Case("anthropic-sonnet-4.5-over-200k", "anthropic", "/v1/messages", "claude-sonnet-4-5-20250929",
         messages(250_000, 2000, write_5m=10_000), [(250_000, "6.00"), (10_000, "7.50"), (2000, "22.50")], ANTHROPIC),
    Case("anthropic-haiku-4.5", "anthropic", "/v1/messages", "claude-haiku-4-5-20251001",
         messages(1200, 300, read=4000), [(1200, "1.00"), (4000, "0.10"), (300, "5.00")], ANTHROPIC),
    Case("anthropic-batch-with-published-rates", "anthropic", "/v1/messages", "claude-sonnet-4-5-20250929",
         messages(1000, 1000, tier="batch"), [(1000, "1.50"), (1000, "7.50")], ANTHROPIC),
    Case("anthropic-batch-by-the-50-percent-rule", "anthropic", "/v1/messages", "claude-opus-4-20250514",
         messages(1000, 1000, read=2000, tier="batch"), [(1000, "7.50"), (2000, "0.75"), (1000, "37.50")],
         "https://platform.claude.com/docs/en/build-with-claude/batch-processing#pricing"),
    Case("anthropic-sonnet-4-long-context-batch", "anthropic", "/v1/messages", "claude-sonnet-4-20250514",
         messages(250_000, 2000, tier="batch"), [(250_000, "3.00"), (2000, "11.25")], ANTHROPIC),
    # Fast mode (usage.speed "fast") at its own rates; a model with none published is unpriced.
    Case("anthropic-fast-mode", "anthropic", "/v1/messages", "claude-opus-5",
         messages(10_000, 2000, tier="standard", speed="fast"), [(10_000, "10.00"), (2000, "50.00")], ANTHROPIC),
    Case("anthropic-fast-mode-without-a-published-rate-is-unpriced", "anthropic", "/v1/messages", "claude-opus-4-6",
         messages(10_000, 2000, tier="standard", speed="fast"), None, ANTHROPIC),
    # US-only inference (usage.inference_geo "us") of Claude Opus 4.6 and later: 1.1x every token
    # rate, on top of fast mode and batch; global inference, and a model without it, at the list rates.
    Case("anthropic-us-only-inference", "anthropic", "/v1/messages", "claude-opus-4-6",
         messages(10_000, 2000, read=5000, write_5m=1000, write_1h=1000, geo="us"),
         [(10_000, "5.50"), (5000, "0.55"), (1000, "6.875"), (1000, "11.00"), (2000, "27.50")], RESIDENCY),
    Case("anthropic-us-only-inference-with-web-searches-at-their-own-rate", "anthropic", "/v1/messages",
         "claude-opus-4-6", messages(10_000, 2000, searches=3, geo="us"), [(10_000, "5.50"), (2000, "27.50")],
         RESIDENCY, searches=(3, "10")),
    Case("anthropic-us-only-inference-in-fast-mode", "anthropic", "/v1/messages", "claude-opus-5",
         messages(10_000, 2000, tier="standard", speed="fast", geo="us"), [(10_000, "11.00"), (2000, "55.00")],
         RESIDENCY),
    Case("anthropic-us-only-inference-in-a-batch", "anthropic", "/v1/messages", "claude-opus-4-6",
         messages(10_000, 2000, tier="batch", geo="us"), [(10_000, "2.75"), (2000, "13.75")], RESIDENCY),
    Case("anthropic-global-inference-at-list-rates", "anthropic", "/v1/messages", "claude-opus-4-6",
         messages(10_000, 2000, geo="global"), [(10_000, "5.00"), (2000, "25.00")], RESIDENCY),
    Case("anthropic-inference-geo-not-available-before-opus-4-6", "anthropic", "/v1/messages",
         "claude-haiku-4-5-20251001", messages(1000, 300, geo="not_available"), [(1000, "1.00"), (300, "5.00")],
         RESIDENCY),
    # Compaction's summary is billed beside the answer, its tokens only in usage.iterations; the
    # "message" iterations of a server-side tool loop are the top-level counts already.
    Case("anthropic-compaction-summary-billed-with-the-answer", "anthropic", "/v1/messages", "claude-opus-4-6",
         messages(23_000, 1000, iterations=[("compaction", 180_000, 3500, 20_000), ("message", 23_000, 1000, 0)]),
         [(203_000, "5.00"), (20_000, "0.50"), (4500, "25.00")], COMPACTION),
    Case("anthropic-tool-loop-iterations-are-the-top-level-counts", "anthropic", "/v1/messages", "claude-opus-4-6",
         messages(3000, 700, iterations=[("message", 1000, 300, 0), ("message", 2000, 400, 0)]),
         [(3000, "5.00"), (700, "25.00")], COMPACTION),
    Case("anthropic-priority-has-no-list-price", "anthropic", "/v1/messages", "claude-haiku-4-5-20251001",
         messages(1000, 1000, tier="priority"), None, ANTHROPIC),
    # Gemini: cached inside promptTokenCount, thoughts outside candidatesTokenCount, 200K tiers.
    # The Gemini API says which tier served the call (usageMetadata.serviceTier); flex and priority
    # have rates of their own, and a model without them is unpriced, never at the standard rates.
    Case("gemini-4-neon-flex", "google", gem("gemini-4-neon"), "gemini-4-neon", gemini(100_000, 10_000, tier="flex"),
         [(100_000, "1.50"), (10_000, "7.50")], GOOGLE),
    Case("gemini-4-neon-priority", "google", gem("gemini-4-neon"), "gemini-4-neon",
         gemini(100_000, 10_000, tier="priority"), [(100_000, "5.40"), (10_000, "27.00")], GOOGLE),
    Case("gemini-4-neon-standard", "google", gem("gemini-4-neon"), "gemini-4-neon",
         gemini(100_000, 10_000, tier="standard"), [(100_000, "3.00"), (10_000, "15.00")], GOOGLE),
    Case("gemini-2.5-flash-flex-without-a-published-rate-is-unpriced", "google", gem("gemini-2.5-flash"),
         "gemini-2.5-flash", gemini(1000, 100, tier="flex"), None, GOOGLE),
    Case("gemini-pro-at-200k", "google", gem("gemini-2.5-pro"), "gemini-2.5-pro", gemini(200_000, 1000),
         [(200_000, "1.25"), (1000, "10.00")], GOOGLE),
    Case("gemini-pro-over-200k-all-long", "google", gem("gemini-2.5-pro"), "gemini-2.5-pro", gemini(300_000, 1000),
         [(300_000, "2.50"), (1000, "15.00")], GOOGLE),
    Case("gemini-pro-thoughts-are-output", "google", gem("gemini-2.5-pro"), "gemini-2.5-pro",
         gemini(100, 50, thoughts=400), [(100, "1.25"), (450, "10.00")], GOOGLE),
    Case("gemini-pro-cached", "google", gem("gemini-2.5-pro"), "gemini-2.5-pro", gemini(10_000, 100, cached=8000),
         [(2000, "1.25"), (8000, "0.125"), (100, "10.00")], GOOGLE),
    Case("gemini-flash-cached", "google", gem("gemini-2.5-flash"), "gemini-2.5-flash",
         gemini(10_000, 100, cached=8000), [(2000, "0.30"), (8000, "0.03"), (100, "2.50")], GOOGLE),
    Case("gemini-2.0-flash", "google", gem("gemini-2.0-flash"), "gemini-2.0-flash", gemini(1000, 1000),
         [(1000, "0.10"), (1000, "0.40")], GOOGLE),
    Case("gemini-flash-lite-thoughts", "google", gem("gemini-2.5-flash-lite"), "gemini-2.5-flash-lite",
         gemini(500, 100, thoughts=900), [(500, "0.10"), (1000, "0.40")], GOOGLE),
    Case("gemini-tool-use-prompt-is-input", "google", gem("gemini-2.5-flash"), "gemini-2.5-flash",
         gemini(1000, 100, tool_prompt=250), [(1250, "0.30"), (100, "2.50")], GOOGLE),
    Case("gemini-flash-preview-thinking-rate", "google", gem("gemini-2.5-flash-preview-05-20"),
         "gemini-2.5-flash-preview-05-20", gemini(100, 200, thoughts=300), [(100, "0.15"), (500, "3.50")], GOOGLE,
         at=utc(2025, 6, 1)),
    Case("gemini-flash-preview-without-thinking", "google", gem("gemini-2.5-flash-preview-04-17"),
         "gemini-2.5-flash-preview-04-17", gemini(100, 200), [(100, "0.15"), (200, "0.60")], GOOGLE,
         at=utc(2025, 5, 1)),
    # Mistral, Cohere, Groq, OpenRouter, Together, Fireworks.
    Case("mistral-large", "mistral", CHAT, "mistral-large-latest", chat(1000, 500), [(1000, "2.00"), (500, "6.00")],
         "https://mistral.ai/pricing"),
    Case("mistral-small-before-2026-03-16", "mistral", CHAT, "mistral-small-latest", chat(1000, 500),
         [(1000, "0.10"), (500, "0.30")], "https://mistral.ai/pricing", at=utc(2026, 1, 10)),
    Case("mistral-small-after-2026-03-16", "mistral", CHAT, "mistral-small-latest", chat(1000, 500, cached=400),
         [(600, "0.15"), (400, "0.015"), (500, "0.60")], "https://mistral.ai/pricing"),
    Case("mistral-num-cached-tokens", "mistral", CHAT, "mistral-small-latest",
         chat(70, 12, num_cached_tokens=69), [(1, "0.15"), (69, "0.015"), (12, "0.60")], "https://mistral.ai/pricing"),
    Case("mistral-cache-without-a-cache-rate-is-input", "mistral", CHAT, "mistral-large-latest",
         chat(70, 12, num_cached_tokens=69), [(70, "2.00"), (12, "6.00")], "https://mistral.ai/pricing"),
    Case("cohere-billed-units-not-raw-tokens", "cohere", "/v2/chat", "command-a-03-2025",
         cohere(1000, 200, 1450, 210), [(1000, "2.50"), (200, "10.00")], "https://cohere.com/pricing"),
    # Images embedded (billed_units.image_tokens, or images) have a rate of their own, not in the price data.
    Case("cohere-embed-image-tokens-are-unpriced-not-at-the-text-rate", "cohere", "/v2/embed", "embed-v4.0",
         {"id": "e-2", "embeddings": {"float": [[0.1]]}, "meta": {"billed_units": {"input_tokens": 10,
                                                                                  "image_tokens": 1000}}},
         None, "https://cohere.com/pricing"),
    Case("cohere-embed-images-are-unpriced", "cohere", "/v2/embed", "embed-v4.0",
         {"id": "e-3", "embeddings": {"float": [[0.1]]}, "meta": {"billed_units": {"images": 3}}},
         None, "https://cohere.com/pricing"),
    Case("cohere-embed", "cohere", "/v2/embed", "embed-v4.0",
         {"id": "e1", "embeddings": {}, "meta": {"billed_units": {"input_tokens": 500}}},
         [(500, "0.12")], "https://cohere.com/pricing"),
    Case("groq-llama-70b", "groq", CHAT, "llama-3.3-70b-versatile", chat(1000, 1000),
         [(1000, "0.59"), (1000, "0.79")], "https://groq.com/pricing"),
    Case("groq-llama-8b", "groq", CHAT, "llama-3.1-8b-instant", chat(20_000, 3000),
         [(20_000, "0.05"), (3000, "0.08")], "https://groq.com/pricing"),
    Case("openrouter-gpt-4o", "openrouter", CHAT, "openai/gpt-4o", chat(1000, 100, cached=512),
         [(488, "2.50"), (512, "1.25"), (100, "10.00")], "https://openrouter.ai/openai/gpt-4o"),
    Case("together-llama-70b", "together", CHAT, "meta-llama/Llama-3.3-70B-Instruct-Turbo", chat(1000, 1000),
         [(1000, "0.88"), (1000, "0.88")], "https://www.together.ai/pricing"),
    Case("fireworks-deepseek-v3", "fireworks", CHAT, "accounts/fireworks/models/deepseek-v3-0324",
         chat(1000, 1000), [(1000, "0.90"), (1000, "0.90")], "https://fireworks.ai/pricing"),
    # DeepSeek: its own cache fields, the 2025 off-peak window, and the prices since.
    Case("deepseek-peak-2025-own-cache-fields", "deepseek", CHAT, "deepseek-chat",
         chat(1000, 100, prompt_cache_hit_tokens=600, prompt_cache_miss_tokens=400),
         [(400, "0.27"), (600, "0.07"), (100, "1.10")], DEEPSEEK, at=utc(2025, 3, 1, 3)),
    Case("deepseek-off-peak-2025", "deepseek", CHAT, "deepseek-chat",
         chat(1000, 100, prompt_cache_hit_tokens=600, prompt_cache_miss_tokens=400),
         [(400, "0.135"), (600, "0.035"), (100, "0.55")], DEEPSEEK, at=utc(2025, 3, 1, 20)),
    Case("deepseek-reasoner-peak-2025", "deepseek", CHAT, "deepseek-reasoner", chat(1000, 500, reasoning=300),
         [(1000, "0.55"), (500, "2.19")], DEEPSEEK, at=utc(2025, 3, 1, 10)),
    Case("deepseek-night-discount-ended-2025-09-05-16utc", "deepseek", CHAT, "deepseek-chat",
         chat(1000, 100, prompt_cache_hit_tokens=600, prompt_cache_miss_tokens=400),
         [(400, "0.56"), (600, "0.07"), (100, "1.68")], DEEPSEEK, at=utc(2025, 9, 10, 20)),
    Case("deepseek-v3.2-prices", "deepseek", CHAT, "deepseek-reasoner",
         chat(2000, 800, reasoning=500, prompt_cache_hit_tokens=1500, prompt_cache_miss_tokens=500),
         [(500, "0.28"), (1500, "0.028"), (800, "0.42")], DEEPSEEK, at=utc(2025, 10, 15)),
    Case("deepseek-v4-flash-peak", "deepseek", CHAT, "deepseek-v4-flash", chat(1000, 1000, cached=500),
         [(500, "0.30"), (500, "0.006"), (1000, "1.20")], DEEPSEEK, at=utc(2026, 11, 25, 2)),
    Case("deepseek-v4-flash-off-peak", "deepseek", CHAT, "deepseek-v4-flash", chat(1000, 1000, cached=500),
         [(500, "0.15"), (500, "0.003"), (1000, "0.60")], DEEPSEEK, at=utc(2026, 11, 25, 12)),
    # xAI: reasoning_tokens outside completion_tokens (total_tokens says so), billed as output.
    Case("xai-grok-3-mini-reasoning-outside", "x-ai", CHAT, "grok-3-mini",
         chat(100, 50, reasoning=200, total=350), [(100, "0.30"), (250, "0.50")], XAI),
    Case("xai-grok-4-reasoning-outside-cached", "x-ai", CHAT, "grok-4-0709",
         chat(1000, 100, cached=800, reasoning=500, total=1600), [(200, "3.00"), (800, "0.75"), (600, "15.00")], XAI),
    Case("xai-grok-3-no-reasoning", "x-ai", CHAT, "grok-3", chat(1000, 200), [(1000, "3.00"), (200, "15.00")], XAI),
    Case("vertex-gemini-cached-thoughts-and-tool-prompt", "vertex",
         VERTEX_MODELS.format(location="us-central1", publisher="google", model="gemini-2.5-flash",
                              method="generateContent"),
         "gemini-2.5-flash", gemini(345, 51, cached=230, thoughts=19, tool_prompt=7),
         [(345 - 230 + 7, "0.30"), (230, "0.03"), (51 + 19, "2.50")], VERTEX),
    Case("vertex-claude-sonnet-4.5-writes-and-reads", "vertex",
         VERTEX_MODELS.format(location="global", publisher="anthropic", model="claude-sonnet-4-5@20250929",
                              method="rawPredict"),
         "claude-sonnet-4-5@20250929", messages(21, 64, read=3400, write_5m=1200, write_1h=500),
         [(21, "3.00"), (3400, "0.30"), (1200, "3.75"), (500, "6.00"), (64, "15.00")], VERTEX),
    Case("vertex-claude-sonnet-4.5-over-200k", "vertex",
         VERTEX_MODELS.format(location="global", publisher="anthropic", model="claude-sonnet-4-5@20250929",
                              method="rawPredict"),
         "claude-sonnet-4-5@20250929", messages(250_000, 2000), [(250_000, "6.00"), (2000, "22.50")], VERTEX),
    # Vertex bills Claude Sonnet 4.5 and later 10% more off the global endpoint (a region, or us/eu).
    Case("vertex-claude-sonnet-4.5-regional-endpoint", "vertex",
         VERTEX_MODELS.format(location="us-east5", publisher="anthropic", model="claude-sonnet-4-5@20250929",
                              method="rawPredict"),
         "claude-sonnet-4-5@20250929", messages(1000, 200, read=3000), [(1000, "3.30"), (3000, "0.33"), (200, "16.50")],
         VERTEX),
    Case("vertex-claude-haiku-4.5-multi-region-endpoint", "vertex",
         VERTEX_MODELS.format(location="eu", publisher="anthropic", model="claude-haiku-4-5@20251001",
                              method="rawPredict"),
         "claude-haiku-4-5-20251001", messages(1000, 200), [(1000, "1.10"), (200, "5.50")], VERTEX),
    Case("vertex-claude-opus-4.1", "vertex",
         VERTEX_MODELS.format(location="us-east5", publisher="anthropic", model="claude-opus-4-1@20250805",
                              method="rawPredict"),
         "claude-opus-4-1@20250805", messages(100, 200), [(100, "15.00"), (200, "75.00")], VERTEX),
    # Bedrock: the model is the path's; a regional inference profile (us.) costs 10% over the global one.
    Case("bedrock-invoke-claude-regional-profile", "bedrock",
         "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke", "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
         messages(100, 50, read=1000, write_5m=200, split=False),
         [(100, "3.30"), (1000, "0.33"), (200, "4.125"), (50, "16.50")], BEDROCK),
    Case("bedrock-converse-claude-global-profile-cache", "bedrock",
         "/model/global.anthropic.claude-sonnet-4-5-20250929-v1:0/converse",
         "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
         {"output": {}, "stopReason": "end_turn",
          "usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 3072, "cacheReadInputTokens": 2000,
                    "cacheWriteInputTokens": 1030}},
         [(30, "3.00"), (2000, "0.30"), (1030, "3.75"), (12, "15.00")], BEDROCK),
    # Past 200K input tokens (cache included) the whole call is at the long-context rates, as at Anthropic.
    Case("bedrock-converse-claude-sonnet-4.5-regional-over-200k", "bedrock",
         "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/converse", "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
         {"output": {}, "stopReason": "end_turn",
          "usage": {"inputTokens": 150_000, "outputTokens": 2000, "totalTokens": 212_000,
                    "cacheReadInputTokens": 60_000}},
         [(150_000, "6.60"), (60_000, "0.66"), (2000, "24.75")], BEDROCK),
    Case("bedrock-invoke-claude-sonnet-4.5-global-over-200k", "bedrock",
         "/model/global.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke",
         "global.anthropic.claude-sonnet-4-5-20250929-v1:0", messages(250_000, 2000),
         [(250_000, "6.00"), (2000, "22.50")], BEDROCK),
    Case("bedrock-invoke-claude-sonnet-4-at-200k-is-not-long", "bedrock",
         "/model/anthropic.claude-sonnet-4-20250514-v1:0/invoke", "anthropic.claude-sonnet-4-20250514-v1:0",
         messages(200_000, 2000), [(200_000, "3.00"), (2000, "15.00")], BEDROCK),
    Case("bedrock-invoke-claude-sonnet-4-over-200k", "bedrock",
         "/model/eu.anthropic.claude-sonnet-4-20250514-v1:0/invoke", "eu.anthropic.claude-sonnet-4-20250514-v1:0",
         messages(190_000, 1000, write_5m=20_000, split=False), [(190_000, "6.00"), (20_000, "7.50"), (1000, "22.50")],
         BEDROCK),
    # Hour-long cache writes at twice the input rate, the rule of every Claude provider (none listed here).
    Case("bedrock-converse-claude-sonnet-4-hour-writes", "bedrock",
         "/model/us.anthropic.claude-sonnet-4-20250514-v1:0/converse", "us.anthropic.claude-sonnet-4-20250514-v1:0",
         {"output": {}, "stopReason": "end_turn",
          "usage": {"inputTokens": 10, "outputTokens": 100, "totalTokens": 10110, "cacheWriteInputTokens": 10000,
                    "cacheDetails": [{"ttl": "1h", "inputTokens": 10000}]}},
         [(10, "3.00"), (10000, "6.00"), (100, "15.00")], ANTHROPIC),
    Case("bedrock-invoke-llama-counts", "bedrock", "/model/meta.llama3-3-70b-instruct-v1:0/invoke",
         "meta.llama3-3-70b-instruct-v1:0",
         {"generation": "ok", "prompt_token_count": 40, "generation_token_count": 20, "stop_reason": "stop"},
         [(40, "0.72"), (20, "0.72")], BEDROCK),
]


def hand_priced(case: Case) -> Decimal:
    tokens = sum((count * Decimal(rate) for count, rate in case.lines or ()), Decimal(0)) / 1_000_000
    searches, per_thousand = case.searches
    return tokens + searches * Decimal(per_thousand) / 1000


def test_the_audit_covers_at_least_sixty_payloads_and_every_metered_provider():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert {c.provider for c in CASES} == set(PROVIDERS)
    assert all(c.source.startswith("https://") for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_documented_payload_costs_its_hand_computed_list_price(case, tmp_path):
    provider = PROVIDERS[case.provider]
    observed = provider.parse_body(case.path, case.body)
    assert observed.usage is not None and observed.invalid_usage is None
    region = provider.price_region(case.path, observed)
    price = PriceBook(tmp_path / "prices.toml").price(observed.usage, case.provider, case.model, case.at,
                                                      observed.service_tier, region=region)
    if case.lines is None:
        assert price.cost_usd is None and not price.priced  # never the standard rate for another tier
    else:
        assert price.cost_usd == hand_priced(case), case.source
