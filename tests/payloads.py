"""Provider responses as they appear on the wire (docs/provider-usage.md).

Usage objects marked VERBATIM are copied from recorded SDK and genai-prices payloads; ids and
texts are filler. ``reply_for`` picks the response for a path, the request, and a test scenario.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

STREAM_TEXT = ["Hello", " there", "!", " How", " can", " I", " help", " you", " today", "?"]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    events: list[bytes] | None = None  # SSE events: a streamed reply
    headers: dict[str, str] = field(default_factory=dict)
    gzip: bool = False
    gzip_members: bool = False  # each piece a gzip member of its own, as a server compressing each event apart
    gated: bool = False        # pause after the first event until the test opens the gate
    delay: float = 0.0         # seconds between events
    die_after: int | None = None  # close the connection after this many pieces
    linger: float = 0.0        # seconds the connection stays open after the last event
    split: int | None = None   # cut the stream into pieces of this many bytes
    lone_cr: bool = False      # CRLF line ends, the last blank line a lone CR (a line end too, in SSE)

    def pieces(self) -> list[bytes]:
        if self.lone_cr:
            events = [e.replace(b"\n", b"\r\n") for e in self.events]
            return [*events[:-1], events[-1][:-1]]
        if self.split is None:
            return self.events
        whole = b"".join(self.events)
        return [whole[i:i + self.split] for i in range(0, len(whole), self.split)]


def _json(obj: dict, status: int = 200, **headers: str) -> Reply:
    return Reply(status=status, body=json.dumps(obj).encode(), headers=headers)


def _data(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def _event(name: str, obj: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


# --- OpenAI chat completions -------------------------------------------------------------

USAGE_REASONING = {"completion_tokens": 561,  # VERBATIM, gpt-5-mini-2025-08-07
                   "completion_tokens_details": {"accepted_prediction_tokens": 0, "audio_tokens": 0,
                                                 "reasoning_tokens": 512, "rejected_prediction_tokens": 0},
                   "prompt_tokens": 156, "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
                   "total_tokens": 717}
USAGE_CACHED = {"completion_tokens": 4,  # VERBATIM, prompt cache e2e
                "completion_tokens_details": {"accepted_prediction_tokens": 0, "audio_tokens": 0,
                                              "reasoning_tokens": 0, "rejected_prediction_tokens": 0},
                "prompt_tokens": 4020,
                "prompt_tokens_details": {"audio_tokens": 0, "cache_write_tokens": 0, "cached_tokens": 4012},
                "total_tokens": 4024}
LEGACY_BODY = {"id": "chatcmpl-ABfvaueLEMLNYbT8YzpJxsmiQ6HSY", "object": "chat.completion",  # VERBATIM
               "created": 1727346142, "model": "gpt-4o-2024-08-06",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "I'm unable to provide "
                            "real-time weather updates. ...", "refusal": None}, "logprobs": None,
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 14, "completion_tokens": 37, "total_tokens": 51,
                         "completion_tokens_details": {"reasoning_tokens": 0}},
               "system_fingerprint": "fp_b40fb1c6fb"}
STREAM_USAGE = {"prompt_tokens": 79, "completion_tokens": 14, "total_tokens": 93,  # VERBATIM stream tail
                "completion_tokens_details": {"reasoning_tokens": 0}}


def _chat_body(model: str, usage: dict) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 1727346142, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!", "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}], "usage": usage}


def _chat_chunk(delta: dict, finish: str | None = None, usage_null: bool = False, tier: str | None = None) -> dict:
    chunk = {"id": "chatcmpl-ABfw1e5abtU8OwGr15vOreYVb2MiF", "object": "chat.completion.chunk",
             "created": 1727346169, "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_5050236cbd",
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if tier:  # OpenAI names the tier that served the call in every chunk when the request set one
        chunk["service_tier"] = tier
    if usage_null:
        chunk["usage"] = None
    return chunk


def chat_stream(include_usage: bool, usage_null: bool = False, repeat: int = 1,
                usage: object = STREAM_USAGE, tier: str | None = None) -> list[bytes]:
    events = [_data(_chat_chunk({"role": "assistant", "content": "", "refusal": None}, usage_null=usage_null,
                                tier=tier))]
    for _ in range(repeat):
        events += [_data(_chat_chunk({"content": piece}, usage_null=usage_null, tier=tier)) for piece in STREAM_TEXT]
    events.append(_data(_chat_chunk({}, "stop", usage_null, tier)))
    if include_usage:
        last = _chat_chunk({}, None, tier=tier)
        last["choices"] = []
        last["usage"] = usage
        events.append(_data(last))
    events.append(_data("[DONE]"))
    return events


def _big_event(megabytes: int) -> Reply:
    """One content chunk of ``megabytes`` MB, sent 1 KB at a time, between a normal start and usage."""
    events = chat_stream(include_usage=True)
    big = _chat_chunk({"content": "x" * (megabytes * 1024 * 1024)})
    return Reply(events=events[:1] + [_data(big)] + events[1:], split=1024)


def _chat(scenario: str, request: dict) -> Reply:
    if request.get("stream") and scenario.startswith("big_event:"):
        return _big_event(int(scenario.split(":")[1]))
    if request.get("stream"):
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        # As documented: with include_usage, every chunk but the last carries "usage": null.
        reply = Reply(events=chat_stream(include_usage, usage_null="usage_null" in scenario and include_usage,
                                         repeat=200 if "slow" in scenario else 1,
                                         usage=request.get("test_usage", STREAM_USAGE),
                                         tier=request.get("service_tier")))
        reply.gzip = "gzip" in scenario
        reply.gzip_members = "gzip_members" in scenario
        reply.lone_cr = "lone_cr" in scenario
        reply.gated = "gated" in scenario
        reply.delay = 0.05 if "slow" in scenario else 0.5 if "paced" in scenario else 0.0
        reply.die_after = 4 if "die" in scenario else None
        reply.split = 7 if "split" in scenario else None
        return reply
    if scenario.startswith("big_json:"):  # an answer of that many MiB, read in full only by a patient client
        body = _chat_body("gpt-4o", USAGE_CACHED)
        body["choices"][0]["message"]["content"] = "x" * (int(scenario.split(":")[1]) * 1024 * 1024)
        return _json(body)
    if scenario == "cached":
        return _json(_chat_body("gpt-4o", USAGE_CACHED))
    if scenario == "legacy":
        return _json(LEGACY_BODY, **{"x-request-id": "req_abc123", "openai-processing-ms": "321"})
    if scenario == "unknown_model":
        return _json(_chat_body("acme-llm-7b", {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}))
    if scenario == "error400":
        return _json({"error": {"message": "Invalid 'messages': empty array.", "type": "invalid_request_error",
                                "param": "messages", "code": "empty_array"}}, status=400)
    # A test can make the upstream report any usage at all (a buggy or hostile provider).
    body = _chat_body("gpt-5-mini-2025-08-07", request.get("test_usage", USAGE_REASONING))
    return _json(body | ({"service_tier": request["service_tier"]} if request.get("service_tier") else {}))


# --- OpenAI responses, embeddings, legacy completions ---------------------------------------

RESPONSES_CACHED_USAGE = {"input_tokens": 4020,  # VERBATIM
                          "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 4012},
                          "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 4025}
RESPONSES_REASONING_USAGE = {"input_tokens": 45, "input_tokens_details": {"cached_tokens": 0},  # VERBATIM, gpt-5
                             "output_tokens": 1719, "output_tokens_details": {"reasoning_tokens": 1408},
                             "total_tokens": 1764}


def _response_obj(model: str, status: str, usage: dict | None) -> dict:
    return {"id": "resp_1", "object": "response", "created_at": 1754925861, "status": status, "model": model,
            "output": [], "service_tier": "default", "usage": usage}


def _responses(scenario: str, request: dict) -> Reply:
    if not request.get("stream"):
        body = _response_obj("gpt-4o-mini-2024-07-18", "completed", RESPONSES_CACHED_USAGE)
        body["output"] = [{"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "Hi"}]}]
        return _json(body)
    events = [_event("response.created", {"type": "response.created", "sequence_number": 0,
                                           "response": _response_obj("gpt-5-2025-08-07", "in_progress", None)})]
    for n, piece in enumerate(STREAM_TEXT, start=1):
        events.append(_event("response.output_text.delta", {
            "type": "response.output_text.delta", "sequence_number": n, "item_id": "msg_1", "output_index": 0,
            "content_index": 0, "delta": piece, "logprobs": []}))
    events.append(_event("response.completed", {
        "type": "response.completed", "sequence_number": len(STREAM_TEXT) + 1,
        "response": _response_obj("gpt-5-2025-08-07", "completed", RESPONSES_REASONING_USAGE)}))
    return Reply(events=events)


def _embeddings(scenario: str, request: dict) -> Reply:
    return _json({"object": "list", "model": "text-embedding-3-small",
                  "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0093, 0.0158]}],
                  "usage": {"prompt_tokens": 4, "total_tokens": 4}})  # VERBATIM usage


def _completions(scenario: str, request: dict) -> Reply:
    return _json({"id": "cmpl-xxx", "object": "text_completion", "created": 1727346142,
                  "model": "gpt-3.5-turbo-instruct",
                  "choices": [{"text": "Hello", "index": 0, "logprobs": None, "finish_reason": "length"}],
                  "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})


# --- Anthropic messages ----------------------------------------------------------------------

ANTHROPIC_CACHE_USAGE = {"cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 1956},
                         "cache_creation_input_tokens": 1956, "cache_read_input_tokens": 9511,  # VERBATIM
                         "input_tokens": 3, "output_tokens": 44}
ANTHROPIC_1H_USAGE = {"cache_creation": {"ephemeral_1h_input_tokens": 1000, "ephemeral_5m_input_tokens": 500},
                      "cache_creation_input_tokens": 1500, "cache_read_input_tokens": 0,
                      "input_tokens": 20, "output_tokens": 10}
ANTHROPIC_THINKING_USAGE = {"cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
                            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,  # VERBATIM
                            "inference_geo": "global", "input_tokens": 13, "output_tokens": 44,
                            "output_tokens_details": {"thinking_tokens": 33}, "service_tier": "standard"}


def _message(model: str, usage: dict) -> dict:
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hi!"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": usage}


def anthropic_stream(start_usage: dict, delta_usage: dict, model: str, repeat: int = 1) -> list[bytes]:
    start = {"type": "message_start", "message": {
        "id": "msg_019Q1hrJbZG26Fb9BQhrkHEr", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}}
    events = [_event("message_start", start),
              _event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
              _event("ping", {"type": "ping"})]
    for _ in range(repeat):
        events += [_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": piece}})
                   for piece in STREAM_TEXT]
    events += [_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
               _event("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                        "usage": delta_usage}),
               _event("message_stop", {"type": "message_stop"})]
    return events


SONNET = "claude-sonnet-4-20250514"
TOOL_USE_START = {"input_tokens": 377, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,  # VERBATIM
                  "output_tokens": 1, "service_tier": "standard"}
WEB_SEARCH_START = {"input_tokens": 2679, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                    "output_tokens": 3}  # VERBATIM
WEB_SEARCH_DELTA = {"input_tokens": 10682, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                    "output_tokens": 510, "server_tool_use": {"web_search_requests": 1}}  # VERBATIM


# A request naming where it runs (``inference_geo``), answered as Anthropic does: the usage says
# where it ran; a model before Claude Opus 4.6 refuses the parameter.
GEO_USAGE = {"input_tokens": 1000, "cache_creation_input_tokens": 400, "cache_read_input_tokens": 2000,
             "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 0},
             "output_tokens": 200, "service_tier": "standard"}
_GEO_MODELS = re.compile(r"claude-(opus-4-[6-9]|sonnet-4-[6-9]|[a-z]+-[5-9])")


def _in_geo(request: dict) -> Reply:
    model, geo = str(request.get("model")), request["inference_geo"]
    if not _GEO_MODELS.match(model) or geo not in ("us", "global"):
        return _json({"type": "error", "error": {"type": "invalid_request_error",
                                                 "message": f"inference_geo: not supported for {model}"}}, status=400)
    usage = {**GEO_USAGE, "inference_geo": geo}
    if request.get("stream"):
        start = {**usage, "output_tokens": 1}
        return Reply(events=anthropic_stream(start, {"output_tokens": usage["output_tokens"]}, model))
    return _json(_message(model, usage))


# Compaction (context_management's compact_20260112 edit) past its trigger: a summary sampled before
# the answer, its tokens listed in usage.iterations and left out of the top-level counts, as the
# docs' example (https://platform.claude.com/docs/en/build-with-claude/compaction) has them.
COMPACTED_USAGE = {"input_tokens": 23000, "output_tokens": 1000, "cache_read_input_tokens": 0,
                   "cache_creation_input_tokens": 0,
                   "iterations": [{"type": "compaction", "input_tokens": 180000, "output_tokens": 3500,
                                   "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
                                  {"type": "message", "input_tokens": 23000, "output_tokens": 1000,
                                   "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}]}


def _compacting(request: dict) -> bool:
    edits = (request.get("context_management") or {}).get("edits") or []
    return any(isinstance(e, dict) and e.get("type") == "compact_20260112" for e in edits)


def _compacted(request: dict, scenario: str) -> Reply:
    model = str(request.get("model"))
    if not _GEO_MODELS.match(model):
        return _json({"type": "error", "error": {"type": "invalid_request_error",
                                                 "message": f"compaction is not supported for {model}"}}, status=400)
    if request.get("stream"):  # message_start counts the input so far; message_delta has the whole usage
        start = {"input_tokens": 23000, "output_tokens": 1, "cache_read_input_tokens": 0,
                 "cache_creation_input_tokens": 0}
        events = anthropic_stream(start, COMPACTED_USAGE, model)
        summary = _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "compaction", "content": "Summary of the conversation: ..."}})
        events = [events[0], summary, _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                  *events[1:]]
        return Reply(events=events, die_after=4 if "die" in scenario else None)
    message = _message(model, COMPACTED_USAGE)
    message["content"] = [{"type": "compaction", "content": "Summary of the conversation: ..."}, *message["content"]]
    return _json(message)


# The advisor tool (advisor_20260301, beta advisor-tool-2026-03-01): the executor consults another
# model mid-answer; the advisor's tokens, at its own rates, are an advisor_message iteration, and the
# top-level counts are the executor's (https://platform.claude.com/docs/en/agents-and-tools/tool-use/advisor-tool).
ADVISOR_PAIRS = {"claude-haiku-4-5-20251001": "claude-opus-4-6", "claude-sonnet-4-6": "claude-opus-4-6",
                 "claude-opus-4-6": "claude-opus-4-6"}
ADVISED_USAGE = {"input_tokens": 4000, "output_tokens": 900, "cache_read_input_tokens": 0,
                 "cache_creation_input_tokens": 0}


def _advisor(request: dict) -> str | None:
    tools = request.get("tools") or []
    return next((str(t.get("model")) for t in tools if isinstance(t, dict) and t.get("type") == "advisor_20260301"),
                None)


def _advised(request: dict, advisor: str, scenario: str) -> Reply:
    model = str(request.get("model"))
    if ADVISOR_PAIRS.get(model) != advisor:
        return _json({"type": "error", "error": {"type": "invalid_request_error",
                                                 "message": f"advisor: {model} cannot be advised by {advisor}"}},
                     status=400)
    zero = {"cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    usage = {**ADVISED_USAGE, "iterations": [
        {"type": "message", "input_tokens": 1500, "output_tokens": 300, **zero},
        {"type": "advisor_message", "model": advisor, "input_tokens": 1800, "output_tokens": 1600, **zero},
        {"type": "message", "input_tokens": 2500, "output_tokens": 600, **zero}]}
    call = {"type": "server_tool_use", "id": "srvtoolu_01", "name": "advisor", "input": {}}
    advice = {"type": "advisor_tool_result", "tool_use_id": "srvtoolu_01",
              "content": {"type": "advisor_result", "text": "Plan: ..."}}
    if not request.get("stream"):
        message = _message(model, usage)
        message["content"] = [call, advice, *message["content"]]
        return _json(message)
    start = {"type": "message_start", "message": {
        "id": "msg_adv", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {**ADVISED_USAGE, "input_tokens": 1500, "output_tokens": 1}}}
    events = [_event("message_start", start),
              _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": call}),
              _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
              _event("content_block_start", {"type": "content_block_start", "index": 1, "content_block": advice}),
              _event("content_block_stop", {"type": "content_block_stop", "index": 1}),
              _event("content_block_start", {"type": "content_block_start", "index": 2,
                                             "content_block": {"type": "text", "text": ""}}),
              _event("content_block_delta", {"type": "content_block_delta", "index": 2,
                                             "delta": {"type": "text_delta", "text": "Following the plan."}}),
              _event("content_block_stop", {"type": "content_block_stop", "index": 2}),
              _event("message_delta", {"type": "message_delta", "usage": usage,
                                       "delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
              _event("message_stop", {"type": "message_stop"})]
    return Reply(events=events, die_after=7 if "die" in scenario else None)


def _messages(scenario: str, request: dict) -> Reply:
    if (advisor := _advisor(request)) is not None:
        return _advised(request, advisor, scenario)
    if "inference_geo" in request:
        return _in_geo(request)
    if _compacting(request):
        return _compacted(request, scenario)
    if request.get("stream"):
        if "web_search" in scenario:
            return Reply(events=anthropic_stream(WEB_SEARCH_START, WEB_SEARCH_DELTA, SONNET))
        reply = Reply(events=anthropic_stream(TOOL_USE_START, {"output_tokens": 65}, SONNET,
                                              repeat=200 if "slow" in scenario else 1))
        reply.delay = 0.05 if "slow" in scenario else 0.0
        reply.die_after = 0 if "die_at_start" in scenario else 6 if "die" in scenario else None
        if "no_stop" in scenario:  # the body ends cleanly, but before message_delta and message_stop
            reply.events = reply.events[:-2]
        reply.gated = "gated" in scenario
        reply.split = 5 if "split" in scenario else None
        reply.gzip = "gzip" in scenario
        reply.gzip_members = "gzip_members" in scenario
        reply.lone_cr = "lone_cr" in scenario
        return reply
    if scenario == "cache_1h":
        return _json(_message("claude-opus-4-20250514", ANTHROPIC_1H_USAGE))
    if scenario == "thinking":
        return _json(_message(SONNET, ANTHROPIC_THINKING_USAGE))
    if scenario == "overloaded":
        return _json({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, status=529)
    return _json(_message(SONNET, ANTHROPIC_CACHE_USAGE), **{"request-id": "req_018EeWyXxfu5pfWkrYcMdjWG"})


# --- Google Gemini, Mistral, Cohere (sections 6 and 7 of the reference) --------------------------

GEMINI_CACHED_USAGE = {"cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 58},  # VERBATIM
                                              {"modality": "DOCUMENT", "tokenCount": 172}],
                       "cachedContentTokenCount": 230, "candidatesTokenCount": 51, "promptTokenCount": 345,
                       "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 87},
                                               {"modality": "DOCUMENT", "tokenCount": 258}], "totalTokenCount": 396}


def _gemini_chunk(text: str, candidates: int, finish: bool) -> dict:
    candidate = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": {  # running totals, as in the real capture
        "promptTokenCount": 4, "candidatesTokenCount": candidates, "totalTokenCount": 4 + candidates + 2042,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4}], "thoughtsTokenCount": 2042},
        "modelVersion": "gemini-2.5-flash", "responseId": "IZI2acSKMoWl0-kPmYj2yQc"}


def _gemini(path: str, scenario: str) -> Reply:
    if ":streamGenerateContent" in path:
        chunks = [_gemini_chunk("Okay, let's", 49, False), _gemini_chunk(" build it", 3000, False),
                  _gemini_chunk(" now.", 5947, True)]
        return Reply(events=[_data(c) for c in chunks])
    return _json({"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}, "finishReason": "STOP",
                                  "index": 0}], "usageMetadata": GEMINI_CACHED_USAGE,
                  "modelVersion": "gemini-2.5-flash", "responseId": "resp-1"})


MISTRAL_USAGE = {"completion_tokens": 12, "num_cached_tokens": 69, "prompt_tokens": 70, "total_tokens": 82}  # VERBATIM


def _mistral(request: dict) -> Reply:
    if not request.get("stream"):
        return _json({"id": "cmpl-m", "object": "chat.completion", "created": 1732548656,
                      "model": "mistral-large-latest", "choices": [{"index": 0, "message": {
                          "role": "assistant", "content": "Bonjour"}, "finish_reason": "stop"}],
                      "usage": MISTRAL_USAGE})
    base = {"id": "f798ebd5c41a45d88bb079635121cade", "object": "chat.completion.chunk", "created": 1732548656,
            "model": "mistral-large-latest"}
    events = [_data({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece},
                                          "finish_reason": None}]}) for piece in STREAM_TEXT]
    events.append(_data({**base, "choices": [{"index": 0, "delta": {"content": "izable"}, "finish_reason": "length"}],
                         "usage": {"prompt_tokens": 34, "total_tokens": 134, "completion_tokens": 100}}))  # VERBATIM
    return Reply(events=events + [_data("[DONE]")])


COHERE_USAGE = {"billed_units": {"input_tokens": 431, "output_tokens": 661},  # VERBATIM
                "tokens": {"input_tokens": 2190, "output_tokens": 1257}}


def _cohere(request: dict) -> Reply:
    if not request.get("stream"):
        return _json({"id": "c-1", "finish_reason": "COMPLETE", "message": {
            "role": "assistant", "content": [{"type": "text", "text": "Hello"}]}, "usage": COHERE_USAGE})
    events = [{"id": "a8fc192e-4bb8-4e15-ae1f-a174e8b02ae8", "type": "message-start", "delta": {"message": {
        "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}},
        {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}]
    events += [{"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": piece}}}}
               for piece in STREAM_TEXT]
    events += [{"type": "content-end", "index": 0},
               {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {  # VERBATIM
                   "billed_units": {"input_tokens": 21, "output_tokens": 105},
                   "tokens": {"input_tokens": 186, "output_tokens": 105}}}}]
    return Reply(events=[f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events])


COMPATIBLE_USAGE = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
# Azure's first chunk of a chat stream: its prompt's content filter results, no model, no choices.
_AZURE_PROMPT_FILTER = {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": [
    {"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}}}]}


def _compatible(scenario: str, request: dict, azure: bool) -> Reply:
    """An OpenAI-compatible provider answering with its own model name (scenario "model:NAME");
    streamed as Azure streams when ``azure`` (its prompt filter's chunk first)."""
    model = scenario.split(":", 1)[1]
    if not request.get("stream"):
        return _json(_chat_body(model, COMPATIBLE_USAGE))
    chunk = {"id": "chatcmpl-cmp", "object": "chat.completion.chunk", "created": 1727346169, "model": model}
    events = [_data(_AZURE_PROMPT_FILTER)] if azure else []
    events += [_data({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi there, "},
                                            "finish_reason": None}]}),
               _data({**chunk, "choices": [{"index": 0, "delta": {"content": "how can I help?"},
                                            "finish_reason": "stop"}]})]
    if (request.get("stream_options") or {}).get("include_usage"):
        events.append(_data({**chunk, "choices": [], "usage": COMPATIBLE_USAGE}))
    return Reply(events=[*events, _data("[DONE]")])


def azure_refusal(target: str, request: dict) -> Reply | None:
    """Azure's 400 for ``stream_options`` on an api-version before 2024-09-01 (``target``: path and query)."""
    path, _, query = target.partition("?")
    version = dict(p.partition("=")[::2] for p in query.split("&")).get("api-version", "")
    if not path.startswith("/openai/deployments/") or "stream_options" not in request or version >= "2024-09-01":
        return None
    return _json({"error": {"message": "Unrecognized request argument supplied: stream_options",
                            "type": "invalid_request_error", "param": None, "code": None}}, status=400)


def reply_for(path: str, scenario: str, request: dict) -> Reply:
    if "/models/" in path and ":" in path:
        return _gemini(path, scenario)
    if path == "/v2/chat":
        return _cohere(request)
    if scenario == "mistral":
        return _mistral(request)
    if scenario == "content_filter":  # Azure's content filter refusing the prompt
        return _json({"error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management "
                       "policy. Please modify your prompt and retry.", "type": None, "param": "prompt",
            "code": "content_filter", "status": 400, "innererror": {
                "code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                    "hate": {"filtered": False, "severity": "safe"},
                    "violence": {"filtered": True, "severity": "medium"}}}}}, status=400)
    if scenario.startswith("model:"):
        return _compatible(scenario, request, azure=path.startswith("/openai/deployments/"))
    routes = {"/v1/chat/completions": _chat, "/v1/responses": _responses, "/v1/embeddings": _embeddings,
              "/v1/completions": _completions, "/v1/messages": _messages}
    if path in routes:
        reply = routes[path](scenario, request)
        if "linger" in scenario:
            reply.linger = 3.0
        return reply
    if path == "/v1/messages/count_tokens":
        return _json({"input_tokens": 14})
    if path == "/v1/models":
        return _json({"object": "list", "data": [{"id": "gpt-4o", "object": "model", "owned_by": "openai"}]})
    return _json({"error": {"message": f"Unknown path {path}", "type": "invalid_request_error",
                            "param": None, "code": None}}, status=404)
