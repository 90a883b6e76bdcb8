"""Anthropic's wire format: the Messages API (plain and streamed), and the legacy Text Completions.

``/v1/complete`` reports no usage at all: its calls are estimated (our tokenizer on the prompt and
the completion, marked ``estimated``), priced at the model's token rates.

Usage fields (docs/provider-usage.md, section 3): ``input_tokens`` already
excludes cache reads and writes; ``cache_creation`` splits writes by TTL. In a stream the
``message_delta`` usage is cumulative and overrides ``message_start`` field by field.
Server-side tools: ``server_tool_use`` counts web searches and web fetches; code execution is not
counted there but is one ``server_tool_use`` content block per run, and the message's
``container`` (in a stream: ``message_delta.delta.container``) names the container it ran in,
billed by its time, which no response reports.
"""

from __future__ import annotations

import dataclasses
import json
import re

from pricing.usage import TokenUsage

from .base import (
    MAX_REQUESTS_PER_CALL,
    BatchCall,
    Observed,
    Provider,
    StreamParser,
    as_dict,
    count,
    loads,
    patterns,
    texts_in,
    tier_name,
)

MESSAGES = "/v1/messages"
COMPLETE = "/v1/complete"
PATHS = (MESSAGES, "/v1/messages/count_tokens", COMPLETE)
# Anthropic's price page (https://www.anthropic.com/pricing#api, docs/coverage.md): every path it
# serves through the proxy other than the metered ones bills nothing per call (batches are billed by
# their results; file storage and the admin API are free).
_FREE = patterns(r"/v1/messages/count_tokens", r"/v1/messages/batches(?:/.*)?", r"/v1/models(?:/.*)?",
                 r"/v1/files(?:/.*)?", r"/v1/organizations(?:/.*)?", r"/v1/skills(?:/.*)?")
BATCHES = "/v1/messages/batches"
_BATCH = re.compile(r"/v1/messages/batches/([A-Za-z0-9_-]{1,200})(/results|/cancel)?")
# The results URL a batch object names, absolute on the provider's host: only its path is kept, which
# the SDKs resolve against their base_url (the proxy's address, with any prefix), so results() comes
# through the proxy (docs/api.md). Matched on the raw bytes: every other byte stays as sent.
_RESULTS_URL = re.compile(rb'("results_url"\s*:\s*")https?://[^"/\\]+(?:/[^"\\]*?)?'
                          rb'(/v1/messages/batches/[A-Za-z0-9_-]{1,200}/results")')
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                 "cache_creation", "server_tool_use", "output_tokens_details", "iterations")
_MAX_ITERATIONS = 1000  # a call's sampling steps read for compactions, at most
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                502: "api_error", 504: "timeout_error"}


def usage_from(raw: object) -> TokenUsage | None:
    if not isinstance(raw, dict):
        return None
    usage = _tokens(raw, required=True)
    # Compaction (the request's context_management edit compact_20260112) samples a summary of the
    # conversation before the answer: billed at the model's rates, and left out of the top-level
    # counts, which are the answer's alone; ``iterations`` lists every sampling step.
    # The advisor tool's consultations of another model are billed at that model's rates: counted,
    # which leaves the call unpriced (pricing.UNKNOWN_FEES), never priced as the calling model's alone.
    iterations = raw.get("iterations")
    advised = 0
    for step in iterations[:_MAX_ITERATIONS] if isinstance(iterations, list) else ():
        if isinstance(step, dict) and step.get("type") == "compaction":
            usage = usage.plus(_tokens(step, required=False))
        advised += isinstance(step, dict) and step.get("type") == "advisor_message"
    return dataclasses.replace(usage, advisor_calls=advised) if advised else usage


def _tokens(raw: dict, required: bool) -> TokenUsage:
    split = raw.get("cache_creation")
    one_hour = count(split, "ephemeral_1h_input_tokens")
    written = count(raw, "cache_creation_input_tokens") or one_hour + count(split, "ephemeral_5m_input_tokens")
    output = count(raw, "output_tokens", required=required)
    return TokenUsage(
        input_tokens=count(raw, "input_tokens", required=required),
        cache_read_tokens=count(raw, "cache_read_input_tokens"),
        cache_write_tokens=written,
        cache_write_1h_tokens=min(one_hour, written),
        output_tokens=output,
        reasoning_tokens=min(count(raw, "output_tokens_details", "thinking_tokens"), output),
        web_search_requests=count(raw, "server_tool_use", "web_search_requests", limit=MAX_REQUESTS_PER_CALL),
        web_fetch_requests=count(raw, "server_tool_use", "web_fetch_requests", limit=MAX_REQUESTS_PER_CALL),
    )


_CODE_TOOLS = frozenset({"code_execution", "bash_code_execution", "text_editor_code_execution"})
CONTAINER_ESTIMATE = ("Anthropic bills code execution by container time after free hours; estimated at the "
                      "5-minute minimum (docs/coverage.md)")


def _is_code_run(block: object) -> bool:
    return isinstance(block, dict) and block.get("type") == "server_tool_use" and block.get("name") in _CODE_TOOLS


def _observe_code(observed: Observed, runs: int, container: object) -> None:
    """Code runs and the container they ran in, on top of the usage's own counts."""
    if observed.usage is None or runs > MAX_REQUESTS_PER_CALL:
        return
    observed.usage.code_executions = runs
    observed.usage.containers = 1 if isinstance(container, dict) and container.get("id") else 0
    if observed.usage.containers:
        observed.fee_estimated = CONTAINER_ESTIMATE


def usage_tier(usage: dict) -> str | None:
    """The tier a call is priced at: its ``service_tier``, or "fast" for fast mode (``speed``), billed
    at rates of its own (genai-prices' ``speed`` variant), on the standard tier; a tier other than
    the standard one wins (its rates are unpublished: unpriced either way)."""
    tier = tier_name(usage.get("service_tier"))
    if tier_name(usage.get("speed")) == "fast" and tier in (None, "standard"):
        return "fast"
    return tier


class AnthropicStream(StreamParser):
    def __init__(self) -> None:
        super().__init__()
        self._raw_usage: dict = {}
        self._code_runs = 0
        self.searches = 0  # web searches begun: billed, though a stream cut before message_delta never says
        self.advisor_calls = 0  # the advisor consulted: the same
        self.compacted = False  # a compaction ran: its tokens are told only in the last message_delta
        self._container: object = None

    def feed(self, event: str | None, data: bytes) -> None:
        if event == "content_block_delta":
            self.keep_delta(data)
            return
        if (event == "content_block_start" or event is None and b'"content_block_start"' in data) \
                and b'"compaction"' in data:
            block = (loads(data) or {}).get("content_block")
            self.compacted = self.compacted or isinstance(block, dict) and block.get("type") == "compaction"
            return
        if (event == "content_block_start" or event is None and b'"content_block_start"' in data) \
                and b'"server_tool_use"' in data:
            block = (loads(data) or {}).get("content_block")
            self._code_runs += _is_code_run(block)
            self.searches += isinstance(block, dict) and block.get("name") == "web_search"
            self.advisor_calls += isinstance(block, dict) and block.get("name") == "advisor"
            return
        if event not in (None, "message_start", "message_delta", "message_stop", "error"):
            return  # ping, content_block_start/stop, and event types added later
        payload = loads(data) or {}
        kind = payload.get("type", event)
        if kind == "message_start":
            message = as_dict(payload.get("message"))
            self.observed.model = message.get("model")
            self._merge(message.get("usage"))
        elif kind == "message_delta":
            self._container = as_dict(payload.get("delta")).get("container") or self._container
            self._merge(payload.get("usage"))
        elif kind == "message_stop":
            self.observed.complete = True
        elif kind == "error":
            error = as_dict(payload.get("error"))
            self.observed.error = str(error.get("type") or "error")
        elif kind == "content_block_delta":
            self.keep_delta(data)

    def _merge(self, usage: object) -> None:
        # Cumulative: a later value replaces an earlier one; never add them up.
        if isinstance(usage, dict):
            self.observed.service_tier = usage_tier(usage) or self.observed.service_tier
            self.observed.region = tier_name(usage.get("inference_geo")) or self.observed.region
            self._raw_usage.update({k: v for k, v in usage.items() if k in _USAGE_FIELDS and v is not None})
            self.observed.take_usage(usage_from, self._raw_usage)
            _observe_code(self.observed, self._code_runs, self._container)

    def output_text(self) -> str:
        parts = []
        for data in self.deltas:
            delta = (loads(data) or {}).get("delta")
            if isinstance(delta, dict):
                for key in ("text", "thinking", "partial_json"):
                    if isinstance(delta.get(key), str):
                        parts.append(delta[key])
        return "".join(parts)


class CompletionStream(StreamParser):
    """A legacy Text Completions stream: ``completion`` events carry text, the last a stop_reason."""

    def feed(self, event: str | None, data: bytes) -> None:
        if event not in (None, "completion", "error"):
            return  # ping
        payload = loads(data) or {}
        if payload.get("type", event) == "error":
            self.observed.error = str(as_dict(payload.get("error")).get("type") or "error")
            return
        self.observed.model = self.observed.model or payload.get("model")
        self.keep_delta(data)
        if payload.get("stop_reason"):
            self.observed.complete = True

    def output_text(self) -> str:
        return "".join(str((loads(data) or {}).get("completion") or "") for data in self.deltas)


class Anthropic(Provider):
    name = "anthropic"
    prefix = "/anthropic"
    default_upstream = "https://api.anthropic.com"
    paths = PATHS
    hosts = ("api.anthropic.com",)
    free = _FREE

    def metered(self, path: str) -> bool:
        return path in (MESSAGES, COMPLETE)

    def parse_body(self, path: str, body) -> Observed:
        if not isinstance(body, dict):
            return Observed()
        if path == COMPLETE:
            text = body.get("completion")
            return Observed(model=body.get("model"), complete=True, text=text if isinstance(text, str) else "")
        observed = Observed(model=body.get("model"), complete=True)
        observed.take_usage(usage_from, body.get("usage"))
        content = body.get("content")
        _observe_code(observed, sum(map(_is_code_run, content)) if isinstance(content, list) else 0,
                      body.get("container"))
        if isinstance(body.get("usage"), dict):
            observed.service_tier = usage_tier(body["usage"])
            observed.region = tier_name(body["usage"].get("inference_geo"))  # "us": US-only, 10% more
        return observed

    def stream_parser(self, path: str) -> StreamParser:
        return CompletionStream() if path == COMPLETE else AnthropicStream()

    def estimate(self, path, request, parser, model) -> TokenUsage | None:
        """Text Completions always (they report no usage); Messages only for a stream cut short: the
        output generated so far, when message_delta never came."""
        if self.counter is None or parser is None:
            return None
        if path == COMPLETE:
            prompt = (request or {}).get("prompt")
            return TokenUsage(input_tokens=self.counter.count(prompt if isinstance(prompt, str) else "", None),
                              output_tokens=self.counter.count(parser.output_text(), None))
        if getattr(parser, "compacted", False):  # its summary's tokens, a whole context's, are not ours to guess
            parser.observed.unknown_usage = ("a compaction ran, whose tokens are told only at the answer's end, "
                                             "which never came")
            return None
        estimated_output = self.counter.count(parser.output_text(), None)
        seen = parser.observed.usage
        if seen is None and parser.observed.error is not None:  # refused in the stream (overloaded): billed nothing
            return TokenUsage()
        if seen is None:  # cut before message_start: the request's text, as OpenAI's are (was $0, priced)
            if request is None:
                return None
            prompt = texts_in(request.get("system")) + texts_in(request.get("messages"))
            return TokenUsage(input_tokens=sum(self.counter.count(t, None) for t in prompt),
                              output_tokens=estimated_output)
        # The searches and consultations begun, where the usage seen (message_start's) predates them.
        searches = max(seen.web_search_requests, min(getattr(parser, "searches", 0), MAX_REQUESTS_PER_CALL))
        advised = max(seen.advisor_calls, min(getattr(parser, "advisor_calls", 0), MAX_REQUESTS_PER_CALL))
        return dataclasses.replace(seen, output_tokens=max(estimated_output, seen.output_tokens),
                                   web_search_requests=searches, advisor_calls=advised)

    batch_endpoint = BATCHES

    def endpoint(self, path: str) -> str:
        found = _BATCH.fullmatch(path)
        return BATCHES + "/{message_batch_id}" + (found.group(2) or "") if found else path

    def batch_call(self, method: str, path: str) -> BatchCall | None:
        """Results are JSON lines at the batch's own path (/results); each succeeded line has its usage."""
        if path == BATCHES:
            return BatchCall("create") if method == "POST" else BatchCall("retrieve")  # GET: the list
        found = _BATCH.fullmatch(path)
        if found is None:
            return None
        results = found.group(2) == "/results" and method == "GET"
        return BatchCall("results" if results else "retrieve", found.group(1))

    def batch_object(self, body: dict) -> tuple[str | None, str | None]:
        if body.get("type") != "message_batch" or not isinstance(body.get("id"), str):
            return None, None
        return body["id"], None

    def batch_result(self, line: dict) -> Observed | None:
        result = as_dict(line.get("result"))
        if result.get("type") != "succeeded":
            return None  # errored, canceled and expired requests are not billed
        return self.parse_body(MESSAGES, result.get("message"))

    def results_via_proxy(self, body: bytes) -> bytes | None:
        rewritten, count = _RESULTS_URL.subn(rb"\1\2", body)
        return rewritten if count else None

    def error_body(self, status: int, message: str, code: str) -> bytes:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
