"""OpenAI's wire format: chat completions, responses, embeddings and legacy completions.

Usage fields (docs/provider-usage.md, sections 1 and 2):
``cached_tokens`` and ``cache_write_tokens`` are inside ``prompt_tokens``/``input_tokens``
(DeepSeek names cache reads ``prompt_cache_hit_tokens``, Mistral ``num_cached_tokens``);
``reasoning_tokens`` is inside ``completion_tokens``/``output_tokens``, except at xAI, whose
``total_tokens`` shows it outside.
The Responses API's server-side tools are items of its output, one per call of the tool:
``web_search_call``, ``file_search_call``, ``code_interpreter_call`` (with the ``container_id``
its code ran in; a container is billed by its session's time, which no response reports).
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from pricing.usage import ImageOptions, TokenUsage

from ..estimate import Counter
from . import openai_media as media
from . import openai_realtime as realtime
from .base import (
    MAX_REQUESTS_PER_CALL,
    BatchCall,
    InvalidUsage,
    Observed,
    Provider,
    StreamParser,
    as_dict,
    count,
    loads,
    patterns,
    texts_in,
    tier_name,
    unix_time,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
_METERED = (CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS, *media.PATHS)
# OpenAI's price page (https://platform.openai.com/docs/pricing, docs/coverage.md): billed per call
# or per session, not metered here (recorded unpriced, with the endpoint) ...
_BILLABLE = patterns(
    r"/v1/images/variations",                        # dall-e-2, per image
    r"/v1/threads/runs", r"/v1/threads/[^/]+/runs(?:/[^/]+/submit_tool_outputs)?",  # Assistants: tokens
    r"/v1/containers",                               # code interpreter container sessions
    r"/v1/videos(?:/[^/]+/remix)?",                  # Sora, per second of video
    r"/v1/evals/[^/]+/runs",                         # model calls of an eval run
)
# ... and billed nothing per call (storage, training and batches are billed apart: reconciliation).
_FREE = patterns(
    r"/v1/models(?:/.*)?", r"/v1/files(?:/.*)?", r"/v1/uploads(?:/.*)?", r"/v1/batches(?:/.*)?",
    r"/v1/moderations", r"/v1/responses/input_tokens", r"/v1/responses/[^/]+/cancel",
    r"/v1/chat/completions/[^/]+", r"/v1/conversations(?:/.*)?", r"/v1/assistants(?:/.*)?",
    r"/v1/threads(?:/[^/]+)?", r"/v1/threads/[^/]+/messages(?:/.*)?", r"/v1/vector_stores(?:/.*)?",
    r"/v1/fine_tuning(?:/.*)?", r"/v1/organization(?:/.*)?", r"/v1/evals(?:/[^/]+)?",
    r"/v1/realtime/(?:sessions|client_secrets|transcription_sessions)",
)
# OpenAI-compatible APIs mount the same endpoints under other roots (/openai/deployments/x/..., /api/v1/...).
_SUFFIXES = ("/chat/completions", "/completions", "/responses", "/embeddings")
RESPONSES_SUFFIX = "/responses"
# The Responses API's streamed text billed as output: the answer, a function call's or a custom
# tool's input, reasoning and its summary, a refusal, code for the interpreter, an MCP call's arguments.
_OUTPUT_DELTAS = frozenset({
    "response.output_text.delta", "response.function_call_arguments.delta", "response.reasoning_text.delta",
    "response.reasoning_summary_text.delta", "response.refusal.delta", "response.custom_tool_call_input.delta",
    "response.code_interpreter_call_code.delta", "response.mcp_call_arguments.delta"})
_RESPONSE_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
BATCHES = "/v1/batches"
_BATCH = re.compile(r"/v1/batches/([A-Za-z0-9_-]{1,200})")
_FILE_CONTENT = re.compile(r"/v1/files/([A-Za-z0-9_-]{1,200})/content")
_COUNTS = frozenset({"prompt_tokens", "completion_tokens", "input_tokens", "output_tokens"})
# OpenAI's recipe for chat framing: tokens per message, and to prime the assistant's reply.
_PER_MESSAGE, _REPLY_PRIMING = 3, 3


def usage_from(raw: object) -> TokenUsage | None:
    """Normalise a chat/completions/embeddings ``usage`` or a Responses ``usage``."""
    if not isinstance(raw, dict) or not _COUNTS.intersection(raw):
        return None  # {} or a total alone: no usage to price (was $0.00, priced), not a usage of nothing
    if "input_tokens" in raw:  # Responses API names
        prompt, completion = count(raw, "input_tokens", required=True), count(raw, "output_tokens", required=True)
        in_details, out_details = raw.get("input_tokens_details"), raw.get("output_tokens_details")
    else:
        prompt, completion = count(raw, "prompt_tokens", required=True), count(raw, "completion_tokens", required=True)
        in_details, out_details = raw.get("prompt_tokens_details"), raw.get("completion_tokens_details")
    cached = count(in_details, "cached_tokens")
    if not cached:  # DeepSeek's and Mistral's own names for cache reads (docs/provider-usage.md)
        cached = count(raw, "prompt_cache_hit_tokens") or count(raw, "num_cached_tokens")
    cached = min(cached, prompt)
    written = min(count(in_details, "cache_write_tokens"), prompt - cached)
    reasoning = count(out_details, "reasoning_tokens")
    if reasoning and count(raw, "total_tokens") == prompt + completion + reasoning:
        # xAI counts reasoning outside completion_tokens (its total says so); it is billed as output.
        completion += reasoning
    # A chat completion's audio (gpt-audio, gpt-4o-audio-preview), in and out, has rates of its own:
    # the prompt's audio is not split cached or not, so it is counted against the uncached part first.
    uncached, audio = prompt - cached - written, min(count(in_details, "audio_tokens"), prompt)
    return TokenUsage(
        input_tokens=uncached,
        input_audio_tokens=min(audio, uncached),
        cache_read_tokens=cached,
        cache_read_audio_tokens=min(audio - min(audio, uncached), cached),
        cache_write_tokens=written,
        output_tokens=completion,
        output_audio_tokens=min(count(out_details, "audio_tokens"), completion),
        reasoning_tokens=min(reasoning, completion),
    )


def observe_response(observed: Observed, response: dict) -> None:
    """Usage and service tier from a whole response: a chat completion, or a Responses object."""
    observed.service_tier = tier_name(response.get("service_tier")) or observed.service_tier
    observed.take_usage(lambda raw: _with_tools(usage_from(raw), response.get("output"), response.get("tools")),
                        response.get("usage"))
    if observed.usage is not None and observed.usage.containers:
        observed.fee_estimated = CONTAINER_ESTIMATE


CONTAINER_ESTIMATE = ("OpenAI bills a code interpreter container by its session's minutes; estimated at the "
                      "5-minute minimum (docs/coverage.md)")
# Output item type -> the usage field that counts it.
_TOOL_ITEMS = {"web_search_call": "web_search_requests", "file_search_call": "file_search_calls",
               "code_interpreter_call": "code_executions", "image_generation_call": "image_generation_calls"}


def _with_tools(usage: TokenUsage | None, output: object, tools: object) -> TokenUsage | None:
    """``usage`` with the tools the output items ran; ``tools``: those the call declared (the
    response echoes them)."""
    if usage is None or not isinstance(output, list):
        return usage
    items = [item for item in output if isinstance(item, dict) and item.get("type") in _TOOL_ITEMS]
    if len(items) > MAX_REQUESTS_PER_CALL:
        raise InvalidUsage(f"output has {len(items):,} tool call items, more than {MAX_REQUESTS_PER_CALL:,}")
    for item in items:
        field = _TOOL_ITEMS[item["type"]]
        setattr(usage, field, getattr(usage, field) + 1)
    usage.containers = len({str(item.get("container_id")) for item in items if item["type"] == "code_interpreter_call"})
    if _searches_by_preview(tools):
        usage.web_search_preview_requests = usage.web_search_requests
    return usage


def _searches_by_preview(tools: object) -> bool:
    """Whether the call's web searches ran the older preview tool (web_search_preview_2025_03_11, ...):
    it is the only search tool declared (a web_search_call item does not say which ran)."""
    kinds = {str(as_dict(tool).get("type")) for tool in tools} if isinstance(tools, list) else set()
    searching = {kind for kind in kinds if kind.startswith("web_search")}
    return bool(searching) and all(kind.startswith("web_search_preview") for kind in searching)


BACKGROUND = ("a background response is billed when it has run: its usage comes with GET /v1/responses/{id}, "
              "which is not metered (docs/coverage.md)")


def _in_background(path: str, request: dict | None) -> bool:
    """A Responses call run in the background: its answer says "queued", with no usage yet."""
    return path.endswith(RESPONSES_SUFFIX) and isinstance(request, dict) and request.get("background") is True


class OpenAIStream(StreamParser):
    def __init__(self, path: str):
        super().__init__()
        self.responses_api = path.endswith(RESPONSES_SUFFIX)
        self.tools_run: list[dict] = []  # the Responses API's tool items done so far

    def feed(self, event: str | None, data: bytes) -> None:
        if self.responses_api:
            self._feed_responses(event, data)
        else:
            self._feed_chat(data)

    def _feed_chat(self, data: bytes) -> None:
        if data == b"[DONE]":
            self.observed.complete = True
            return
        # Only the usage chunk, the chunks until one names the model and errors are decoded here
        # (Azure's first chunk, its prompt's filter results, has "model": "").
        if not self.observed.model or _may_carry_usage(data) or b'"error"' in data:
            chunk = loads(data) or {}
            self.observed.model = self.observed.model or chunk.get("model") or None
            # Groq reports a stream's usage in its last chunk's x_groq when none was asked for.
            groq = as_dict(chunk.get("x_groq")).get("usage")
            if chunk.get("usage") or groq:
                observe_response(self.observed, chunk if chunk.get("usage") else {**chunk, "usage": groq})
            else:
                self.observed.service_tier = self.observed.service_tier or tier_name(chunk.get("service_tier"))
            if isinstance(chunk.get("error"), dict):
                self.observed.error = str(chunk["error"].get("type") or chunk["error"].get("code") or "error")
        if self.observed.usage is None:
            self.keep_delta(data)

    def _feed_responses(self, event: str | None, data: bytes) -> None:
        if event in _OUTPUT_DELTAS or event is None and any(f'"{name}"'.encode() in data for name in _OUTPUT_DELTAS):
            self.keep_delta(data)
            return
        if event not in (None, "response.created", "response.output_item.done", "error", *_RESPONSE_TERMINAL):
            return
        payload = loads(data) or {}
        kind = payload.get("type", event)
        if kind == "response.output_item.done":  # a tool that ran: billed, though the stream may end before the total
            item = as_dict(payload.get("item"))
            if item.get("type") in _TOOL_ITEMS and len(self.tools_run) < MAX_REQUESTS_PER_CALL:
                self.tools_run.append({"type": item["type"], "container_id": item.get("container_id")})
            return
        response = as_dict(payload.get("response"))
        self.observed.model = response.get("model") or self.observed.model
        if kind == "response.created":  # the tier asked for, until the end says which served it
            self.observed.service_tier = tier_name(response.get("service_tier")) or self.observed.service_tier
        if kind in _RESPONSE_TERMINAL:
            self.observed.complete = True
            observe_response(self.observed, response)
            if kind == "response.failed":
                self.observed.error = "response.failed"
        elif kind == "error":
            self.observed.error = str(payload.get("code") or "error")

    def output_text(self) -> str:
        parts: list[str] = []
        for data in self.deltas:
            chunk = loads(data)
            if chunk is None:
                continue
            if self.responses_api:
                parts.append(str(chunk.get("delta") or ""))
                continue
            for choice in chunk.get("choices") or ():
                parts.extend(_choice_texts(choice))
        return "".join(parts)


def _may_carry_usage(data: bytes) -> bool:
    # Chunks may carry "usage": null throughout; decoding each of those would be wasted work.
    return b'"usage"' in data and b'"usage":null' not in data and b'"usage": null' not in data


def _choice_texts(choice: object) -> list[str]:
    if not isinstance(choice, dict):
        return []
    delta = choice.get("delta") or {}
    if "text" in choice:  # legacy completions stream
        return [str(choice.get("text") or "")]
    texts = [str(delta.get("content") or ""), str(delta.get("reasoning_content") or "")]
    for call in delta.get("tool_calls") or ():
        function = call.get("function") or {} if isinstance(call, dict) else {}
        texts += [str(function.get("name") or ""), str(function.get("arguments") or "")]
    return texts


class OpenAI(Provider):
    name = "openai"
    # Whether the API takes stream_options.include_usage on chat streams (documented by OpenAI,
    # Azure OpenAI, DeepSeek, xAI and Groq); the others are not asked (see docs/providers.md).
    accepts_stream_options = True
    prefix: str | None = "/openai"
    default_upstream: str | None = "https://api.openai.com"
    paths: tuple[str, ...] = ("/v1/",)
    hosts: tuple[str, ...] = ("api.openai.com",)
    billable = _BILLABLE
    free = _FREE

    def metered(self, path: str) -> bool:
        return path in _METERED or path == realtime.PATH  # realtime: per response, addon/realtime.py

    def answers_text(self, path: str) -> bool:
        return path in media.TRANSCRIPTS  # response_format text, srt or vtt

    def streams_binary(self, path: str) -> bool:
        return path == media.SPEECH

    def injects_usage(self, path: str, query: str = "") -> bool:
        return self.accepts_stream_options and path.endswith("/chat/completions")

    def parse_body(self, path: str, body) -> Observed:
        if path in media.PATHS:
            return media.observe(path, body)
        if not isinstance(body, dict):
            return Observed()
        observed = Observed(model=body.get("model"), complete=True)
        observe_response(observed, body)
        return observed

    def stream_parser(self, path: str) -> StreamParser:
        return media.MediaStream(path) if path in media.PATHS else OpenAIStream(path)

    def counted(self, path, request, model) -> TokenUsage | None:
        return media.counted(path, request, model)

    def image_options(self, path: str, request: dict | None) -> ImageOptions | None:
        return media.image_options(path, request)

    def missing_usage(self, path: str, request: dict | None) -> str | None:
        if _in_background(path, request):
            return BACKGROUND
        return media.missing(path) if path in media.PATHS else None

    def estimate(self, path, request, parser, model) -> TokenUsage | None:
        if parser is not None and parser.observed.usage is not None:
            return parser.observed.usage  # the usage chunk came; only [DONE] was missed
        if _in_background(path, request):
            return None  # answered "queued", or a stream cut while the run goes on: billed whole, later
        if path in media.PATHS:
            return media.estimate(path, request)
        if self.counter is None or request is None:
            return None
        prompt = self._prompt_tokens(path, request, model)
        output = self.counter.count(parser.output_text(), model) if parser is not None else 0
        usage = TokenUsage(input_tokens=prompt, output_tokens=output)
        if isinstance(parser, OpenAIStream) and parser.tools_run:
            usage = _with_tools(usage, parser.tools_run, request.get("tools")) or usage
            if usage.containers:
                parser.observed.fee_estimated = CONTAINER_ESTIMATE
        return usage

    def _prompt_tokens(self, path: str, request: dict, model: str | None) -> int:
        # The tools' definitions are billed as input too (their JSON, near enough).
        tools = self.counter.count(json.dumps(request["tools"]), model) if request.get("tools") else 0
        if path.endswith("/chat/completions"):
            messages = request.get("messages") or []
            total = _REPLY_PRIMING + tools
            for message in messages if isinstance(messages, list) else ():
                if isinstance(message, dict):
                    total += _PER_MESSAGE + sum(self.counter.count(t, model) for t in _message_texts(message))
            return total
        texts = texts_in(request.get("input" if path.endswith(("/responses", "/embeddings")) else "prompt"))
        texts.append(str(request.get("instructions") or ""))
        return tools + sum(self.counter.count(t, model) for t in texts)

    batch_endpoint = BATCHES

    def endpoint(self, path: str) -> str:
        if _BATCH.fullmatch(path):
            return BATCHES + "/{batch_id}"
        return "/v1/files/{file_id}/content" if _FILE_CONTENT.fullmatch(path) else path

    def batch_call(self, method: str, path: str) -> BatchCall | None:
        """A batch's usage is read from its output file (one line per request, each priced alone)
        as it is downloaded; the completed batch object names that file."""
        if method == "POST" and path == BATCHES:
            return BatchCall("create")
        if method != "GET":
            return None
        if found := _BATCH.fullmatch(path):
            return BatchCall("retrieve", found.group(1))
        if found := _FILE_CONTENT.fullmatch(path):
            return BatchCall("results", found.group(1))
        return None

    def batch_object(self, body: dict) -> tuple[str | None, str | None]:
        if body.get("object") != "batch" or not isinstance(body.get("id"), str):
            return None, None
        output = body.get("output_file_id")
        return body["id"], output if isinstance(output, str) else None

    def batch_result(self, line: dict) -> Observed | None:
        response = as_dict(line.get("response"))
        if response.get("status_code") != 200:
            return None  # a failed request: not billed
        observed = self.parse_body(BATCHES, response.get("body"))
        if observed is not None:  # the answer's own time: chat completions' "created", responses' "created_at"
            body = as_dict(response.get("body"))
            observed.ran_at = unix_time(body.get("created", body.get("created_at")))
        return observed

    def error_body(self, status: int, message: str, code: str) -> bytes:
        kind = "invalid_request_error" if status < 500 else "server_error"
        if status == 429:
            kind = "rate_limit_exceeded"
        return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


def _message_texts(message: dict) -> list[str]:
    texts = [str(message.get("role") or "")]
    if message.get("name"):
        texts.append(str(message["name"]))
    texts += texts_in(message.get("content"))
    return texts


# What is free at every OpenAI-compatible API: not OpenAI's list, whose batches, moderations and
# conversations others bill (Mistral's conversations and moderations, Groq's, Together's and xAI's
# batches, none metered here: unpriced, never $0). Their realtime sessions too (xAI's, Azure's).
_COMPATIBLE_FREE = patterns(r"/v1/models(?:/.*)?", r"/v1/files(?:/.*)?", r"/v1/batches/[^/]+/cancel",
                            r"/v1/responses/[^/]+/cancel", r"/v1/chat/completions/[^/]+")
_COMPATIBLE_BILLABLE = patterns(r"(?:/.*)?/realtime")


class OpenAICompatible(OpenAI):
    """Mistral, Azure OpenAI, OpenRouter, Groq, DeepSeek, xAI, Together, Fireworks: OpenAI's wire
    format under their own root path, priced with their own price data."""

    paths = ()
    billable = _COMPATIBLE_BILLABLE
    free = _COMPATIBLE_FREE

    def __init__(self, name: str, prefix: str, default_upstream: str | None, counter: Counter | None = None,
                 accepts_stream_options: bool = False, hosts: tuple[str, ...] | None = None):
        super().__init__(counter)
        self.name, self.prefix, self.default_upstream = name, prefix, default_upstream
        # Its API's host is its default upstream's, unless it has several (Azure: one per resource).
        self.hosts = hosts if hosts is not None else (urlsplit(default_upstream).hostname or "",) \
            if default_upstream else ()
        self.accepts_stream_options = accepts_stream_options

    def metered(self, path: str) -> bool:
        return path.endswith(_SUFFIXES)

    def batch_call(self, method: str, path: str) -> BatchCall | None:
        return None  # their batch APIs (where there is one) live under other paths: not metered yet
