"""Google Gemini (Generative Language API): generateContent and streamGenerateContent, and its
OpenAI-compatible chat completions and embeddings (``/v1beta/openai/...``: OpenAI's wire format,
read by the OpenAI module, priced as Gemini's models).

Usage fields (docs/provider-usage.md, section 4): ``cachedContentTokenCount`` is
inside ``promptTokenCount``; ``thoughtsTokenCount`` is *not* inside ``candidatesTokenCount``
and is billed as output. A stream repeats running totals in every chunk: the last one counts.
Grounding with Google Search: a candidate's ``groundingMetadata.webSearchQueries`` lists the
searches run. Gemini 2.x and older bill one fee per grounded prompt, later models one per search
query; both after a free daily or monthly allowance the proxy cannot see (so: estimated).
"""

from __future__ import annotations

import json
import re

from pricing import priced_tier
from pricing.usage import TokenUsage

from .base import (
    MAX_REQUESTS_PER_CALL,
    Observed,
    Provider,
    StreamParser,
    as_dict,
    count,
    loads,
    patterns,
    tier_name,
)
from .openai import OpenAI

_CALL = re.compile(r"^/v1(?:beta|alpha)?/models/([^/:]+):(generateContent|streamGenerateContent)$")
OPENAI_COMPATIBLE = ("/v1beta/openai/chat/completions", "/v1beta/openai/embeddings")
# Google's Live API, on Gemini's host and on Vertex's: /ws/google.ai.generativelanguage.v1beta.
# GenerativeService.BidiGenerateContent, /ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent.
LIVE_SESSIONS = r"/ws/.+"
# The model of a call on Gemini's API or on Vertex AI's (vertex.py hands its paths over as they are):
# read before the answer, as the grounding fee's unit depends on it when the answer names none.
_NAMED_MODEL = re.compile(r"/models/([^/:]+):(?:generateContent|streamGenerateContent)$")
# Gemini's price page (https://ai.google.dev/gemini-api/docs/pricing, docs/coverage.md): billed per
# call but not metered here, and free.
_BILLABLE = patterns(r"/v1(?:beta|alpha)?/models/[^/:]+:(?:embedContent|batchEmbedContents|predict|"
                     r"predictLongRunning|batchGenerateContent)",
                     r"/v1beta/openai/(?:images/generations|audio/.*)", r"/v1(?:beta)?/cachedContents",
                     # A tuned model's calls bill its base model's tokens; the Live API's sessions
                     # (a websocket, opened by a GET) bill audio and text tokens.
                     r"/v1(?:beta)?/tunedModels/[^/:]+:(?:generateContent|streamGenerateContent|"
                     r"batchGenerateContent)",
                     LIVE_SESSIONS)
_FREE = patterns(r"/v1(?:beta|alpha)?/models/[^/:]+:countTokens", r"/v1(?:beta|alpha)?/models(?:/[^/:]+)?",
                 r"/v1(?:beta)?/files(?:/.*)?", r"/upload/.*", r"/v1beta/openai/models(?:/.*)?",
                 r"/v1(?:beta)?/operations(?:/.*)?", r"/v1(?:beta)?/tunedModels(?:/.*)?")
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED"}


# Vertex's stream chunks before the last carry usageMetadata with no count ({"trafficType":
# "ON_DEMAND"}): not a usage of zero tokens, which a cut stream would have been priced at ($0).
_COUNTS = ("promptTokenCount", "candidatesTokenCount", "totalTokenCount", "cachedContentTokenCount",
           "thoughtsTokenCount", "toolUsePromptTokenCount")


def usage_from(meta: object) -> TokenUsage | None:
    if not isinstance(meta, dict):
        return None
    prompt = count(meta, "promptTokenCount")
    cached = min(count(meta, "cachedContentTokenCount"), prompt)
    thoughts = count(meta, "thoughtsTokenCount")
    input_tokens = prompt - cached + count(meta, "toolUsePromptTokenCount")
    output_tokens = count(meta, "candidatesTokenCount") + thoughts
    # Audio (in, cached, out) and generated images have rates of their own; images, video and
    # documents in the prompt are billed as text, so they are not told apart (a price file's entry
    # for the model still applies to them: pricing/overrides.py).
    heard = _modality(meta, "promptTokensDetails", "AUDIO")
    cached_heard = min(_modality(meta, "cacheTokensDetails", "AUDIO"), cached)
    return TokenUsage(
        input_tokens=input_tokens,
        cache_read_tokens=cached,
        output_tokens=output_tokens,
        reasoning_tokens=thoughts,
        input_audio_tokens=min(max(heard - cached_heard, 0), input_tokens),
        cache_read_audio_tokens=cached_heard,
        output_audio_tokens=min(_modality(meta, "candidatesTokensDetails", "AUDIO"), output_tokens),
        output_image_tokens=min(_modality(meta, "candidatesTokensDetails", "IMAGE"), output_tokens),
    )


def _modality(meta: dict, details: str, modality: str) -> int:
    """The tokens of one modality in a ``*TokensDetails`` list ([{"modality", "tokenCount"}])."""
    entries = meta.get(details)
    if not isinstance(entries, list):
        return 0
    return sum(count(entry, "tokenCount") for entry in entries
               if isinstance(entry, dict) and entry.get("modality") == modality)


_BILLED_PER_PROMPT = re.compile(r"(?:^|/)gemini-(?:1|2)\.")
GROUNDING_ESTIMATE = ("Google bills grounding with Google Search after a free allowance the proxy cannot see; "
                      "priced at the paid rate (docs/coverage.md)")


def _observe_chunk(observed: Observed, chunk: dict) -> int | None:
    """Reads one response (or stream chunk); returns the search queries it names, if any."""
    observed.model = chunk.get("modelVersion") or observed.model
    meta = as_dict(chunk.get("usageMetadata"))
    if any(field in meta for field in _COUNTS):
        observed.take_usage(usage_from, meta)  # running totals: replace, never add
    # The Gemini API's serviceTier ("standard", "flex", "priority") and Vertex's trafficType
    # (ON_DEMAND, PROVISIONED_THROUGHPUT): the standard rate or not (pricing.priced_tier prices
    # another tier at its own rates, or leaves it unpriced). A tier other than the standard one wins.
    tier, traffic = tier_name(meta.get("serviceTier")), tier_name(meta.get("trafficType"))
    observed.service_tier = (tier if priced_tier(tier) else traffic or tier) or observed.service_tier
    candidates = [c for c in chunk.get("candidates") or [] if isinstance(c, dict)]
    if any(c.get("finishReason") for c in candidates):
        observed.complete = True
    if isinstance(chunk.get("error"), dict):
        observed.error = str(chunk["error"].get("status") or "error")
    grounding = [c["groundingMetadata"] for c in candidates if isinstance(c.get("groundingMetadata"), dict)]
    queries = [g["webSearchQueries"] for g in grounding if isinstance(g.get("webSearchQueries"), list)]
    return sum(map(len, queries)) if queries else None


def _observe_grounding(observed: Observed, queries: int | None) -> None:
    """The searches of a grounded call, counted in the unit Google bills for its model."""
    if observed.usage is None or not queries or queries > MAX_REQUESTS_PER_CALL:
        return
    if _BILLED_PER_PROMPT.search(observed.model or ""):
        observed.usage.grounded_prompts = 1
    else:
        observed.usage.web_search_requests = queries
    observed.fee_estimated = GROUNDING_ESTIMATE


class GeminiStream(StreamParser):
    """Every chunk carries the running totals, so a cut stream's usage is the last seen: no text is
    kept for an estimate (``Gemini.estimate``)."""

    def __init__(self) -> None:
        super().__init__()
        self._queries: int | None = None

    def feed(self, event: str | None, data: bytes) -> None:
        chunk = loads(data)  # every chunk may carry the running usage, so each is decoded
        if chunk is not None:
            self._queries = _observe_chunk(self.observed, chunk) or self._queries
            _observe_grounding(self.observed, self._queries)


class Gemini(Provider):
    name = "google"
    prefix = "/gemini"
    default_upstream = "https://generativelanguage.googleapis.com"
    hosts = ("generativelanguage.googleapis.com",)
    billable = _BILLABLE
    free = _FREE

    def __init__(self, counter=None):
        super().__init__(counter)
        self._openai_format = OpenAI(counter)  # never asked to add stream usage: not documented here

    def metered(self, path: str) -> bool:
        return _CALL.match(path) is not None or path in OPENAI_COMPATIBLE

    def endpoint(self, path: str) -> str:
        return _CALL.sub(lambda m: m.group(0).replace(m.group(1), "{model}"), path)

    def path_model(self, path: str) -> str | None:
        match = _NAMED_MODEL.search(path)
        return match.group(1) if match else None

    def parse_body(self, path: str, body) -> Observed:
        if path in OPENAI_COMPATIBLE:
            return _model_named(self._openai_format.parse_body(path, body))
        observed = Observed(complete=True, model=self.path_model(path))  # its grounding is billed by it
        # Without alt=sse the stream endpoint answers one JSON array of chunks.
        queries = None
        for chunk in body if isinstance(body, list) else [body]:
            if isinstance(chunk, dict):
                queries = _observe_chunk(observed, chunk) or queries
        _observe_grounding(observed, queries)
        return observed

    def stream_parser(self, path: str) -> StreamParser:
        if path in OPENAI_COMPATIBLE:
            return self._openai_format.stream_parser(path)
        parser = GeminiStream()
        parser.observed.model = self.path_model(path)  # its grounding is billed by it (_observe_grounding)
        return parser

    def estimate(self, path, request, parser, model) -> TokenUsage | None:
        """A stream cut short: the running totals seen so far (Gemini repeats them in every chunk)."""
        if path in OPENAI_COMPATIBLE:
            return self._openai_format.estimate(path, request, parser, model)
        return parser.observed.usage if parser is not None else None

    def error_body(self, status: int, message: str, code: str) -> bytes:
        return json.dumps({"error": {"code": status, "message": message,
                                     "status": _STATUS.get(status, "FAILED_PRECONDITION")}}).encode()


def _model_named(observed: Observed) -> Observed:
    """Gemini's model ids as its price data knows them: without a ``models/`` prefix."""
    if isinstance(observed.model, str) and observed.model.startswith("models/"):
        observed.model = observed.model[len("models/"):]
    return observed
