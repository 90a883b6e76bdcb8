"""The row stored for a finished call, built in-process from the provider's bytes as they arrive.

Each provider's response (tests/payloads.py, usage copied from real captures) goes through the same
meter and row builder the proxy uses; the row must carry the tokens the provider reported, a cost
equal to those tokens priced, and where the usage came from (``usage_source``). These run in
milliseconds, so mutation testing (.ci/mutation) can run them against every change.
"""

from __future__ import annotations

import gzip
import json
import struct
import time
import uuid
from decimal import Decimal

import httpx
import pytest
from mitmproxy import http

from addon import batches
from addon.meter import CallMeter
from addon.providers.gemini import GROUNDING_ESTIMATE as GROUNDING
from addon.realtime import RealtimeSession
from addon.record import build_row
from pricing import TokenUsage

from . import payloads

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
STREAMED = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
MESSAGE = {"model": payloads.SONNET, "max_tokens": 10, "messages": CHAT["messages"]}
COHERE = {"model": "command-r-plus-08-2024", "messages": CHAT["messages"]}


def _row(providers, book, provider: str, path: str, request: dict, scenario: str = "", keep: int | None = None,
         status: int | None = None, reply: payloads.Reply | None = None) -> dict:
    """The row for ``request`` answered as tests/payloads.py answers it (or with ``reply``); ``keep``:
    the stream's pieces that arrive before the connection ends."""
    reply = reply or payloads.reply_for(path, scenario, request)
    meter = CallMeter(providers[provider], path, 7, "acme", "chat", time.time(), json.dumps(request).encode(), "")
    streamed = meter.start_response(status or reply.status,
                                    "text/event-stream" if reply.events else "application/json", "")
    if streamed:
        for piece in reply.pieces()[:keep]:
            meter.tap(piece)
        meter.tap(b"")
    meter.finish(status or reply.status, "completed", None, None if streamed else reply.body)
    return build_row(meter, book)


def _answer(body: object) -> payloads.Reply:
    return payloads.Reply(body=json.dumps(body).encode())


def _tokens(row: dict) -> dict:
    return {k: row[k] for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                                "output_tokens", "reasoning_tokens", "web_search_requests") if row[k]}


CASES = [
    ("openai", "/v1/chat/completions", CHAT, "", "gpt-5-mini-2025-08-07",
     {"input_tokens": 156, "output_tokens": 561, "reasoning_tokens": 512}),
    ("openai", "/v1/chat/completions", STREAMED, "", "gpt-4o-2024-08-06", {"input_tokens": 79, "output_tokens": 14}),
    ("openai", "/v1/responses", {"model": "gpt-4o", "input": "hi"}, "", "gpt-4o-mini-2024-07-18",
     {"input_tokens": 8, "cache_read_tokens": 4012, "output_tokens": 5}),
    ("openai", "/v1/responses", {"model": "gpt-5", "input": "hi", "stream": True}, "", "gpt-5-2025-08-07",
     {"input_tokens": 45, "output_tokens": 1719, "reasoning_tokens": 1408}),
    ("openai", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}, "", "text-embedding-3-small",
     {"input_tokens": 4}),
    ("anthropic", "/v1/messages", MESSAGE, "", payloads.SONNET,
     {"input_tokens": 3, "cache_read_tokens": 9511, "cache_write_tokens": 1956, "output_tokens": 44}),
    ("anthropic", "/v1/messages", {**MESSAGE, "stream": True}, "", payloads.SONNET,
     {"input_tokens": 377, "output_tokens": 65}),
    ("google", "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": []}, "", "gemini-2.5-flash",
     {"input_tokens": 115, "cache_read_tokens": 230, "output_tokens": 51}),
    ("google", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", {"contents": []}, "", "gemini-2.5-flash",
     {"input_tokens": 4, "output_tokens": 5947 + 2042, "reasoning_tokens": 2042}),
    ("cohere", "/v2/chat", COHERE, "", COHERE["model"], {"input_tokens": 431, "output_tokens": 661}),
    ("cohere", "/v2/chat", {**COHERE, "stream": True}, "", COHERE["model"], {"input_tokens": 21, "output_tokens": 105}),
    ("mistral", "/v1/chat/completions", {"model": "mistral-large-latest", "messages": []}, "mistral",
     "mistral-large-latest", {"input_tokens": 70 - 69, "cache_read_tokens": 69, "output_tokens": 12}),
]


@pytest.mark.parametrize("provider,path,request_body,scenario,model,tokens", CASES,
                         ids=[f"{c[0]}{c[1]}{'-stream' if c[2].get('stream') else ''}" for c in CASES])
def test_a_completed_call_stores_the_reported_tokens_priced(providers, book, provider, path, request_body, scenario,
                                                            model, tokens):
    row = _row(providers, book, provider, path, request_body, scenario)
    assert (row["provider"], row["model"], row["status"], row["key_id"]) == (provider, model, 200, 7)
    assert (row["customer_id"], row["feature"], row["error"]) == ("acme", "chat", None)
    assert row["usage_source"] == "reported"
    assert _tokens(row) == tokens
    expected = book.price(TokenUsage(**tokens), provider, model, row["ts"], row["service_tier"])
    assert row["priced"] and row["cost_usd"] == expected.cost_usd > 0 and row["price_source"] == expected.source
    assert row["price_snapshot"] == expected.snapshot is not None  # the list-price data that priced it
    assert isinstance(row["id"], uuid.UUID) and row["outcome"] == "completed"
    assert row["stream"] is (bool(request_body.get("stream")) or ":stream" in path)
    assert row["latency_ms"] >= 0 and (row["ttft_ms"] is not None) is row["stream"]


@pytest.mark.parametrize("provider,path,request_body,keep", [
    ("openai", "/v1/chat/completions", STREAMED, -2),  # neither the usage chunk nor [DONE]
    ("openai", "/v1/responses", {"model": "gpt-5", "input": "hi", "stream": True}, -1),  # no response.completed
    ("anthropic", "/v1/messages", {**MESSAGE, "stream": True}, -1),  # no message_stop
    ("google", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", {"contents": []}, 2),
    ("cohere", "/v2/chat", {**COHERE, "stream": True}, -1),  # no message-end
])
def test_a_stream_cut_before_its_end_is_an_estimate_marked_partial(providers, book, provider, path, request_body,
                                                                   keep):
    row = _row(providers, book, provider, path, request_body, keep=keep)
    assert row["usage_source"] == "partial"
    assert row["output_tokens"] > 0 and row["priced"] and row["cost_usd"] > 0


def test_a_refused_or_unmetered_call_costs_nothing_known(providers, book):
    refused = _row(providers, book, "openai", "/v1/nothing", CHAT)
    assert (refused["status"], refused["usage_source"], refused["cost_usd"], refused["priced"]) == \
        (404, "none", Decimal(0), True)
    models = _row(providers, book, "openai", "/v1/models", {})
    assert (models["usage_source"], models["cost_usd"], models["priced"]) == ("none", Decimal(0), True)


def test_a_body_too_large_to_keep_is_read_for_its_model_and_usage(providers, book):
    usage = {"prompt_tokens": 3_000_000, "total_tokens": 3_000_000}
    # Numbers of unlike lengths, as real embeddings have: with one number repeated, the body's start
    # joined by mistake to its last megabytes could still read as one JSON document.
    vector = [round((i % 113) / 1000 - 0.05, 6) for i in range(1536)]
    body = {"object": "list", "model": "text-embedding-3-large",  # the model that answered, not the one asked
            "data": [{"object": "embedding", "index": n, "embedding": vector} for n in range(1100)],
            "usage": usage}
    request = {"model": "text-embedding-3-small", "input": ["hi"]}
    reply = payloads.Reply(body=json.dumps(body, separators=(",", ":")).encode())
    assert len(reply.body) > 9 * 1024 * 1024
    row = _row(providers, book, "openai", "/v1/embeddings", request, reply=reply)
    assert (row["model"], row["usage_source"], _tokens(row)) == \
        ("text-embedding-3-large", "reported", {"input_tokens": 3_000_000})
    assert row["cost_usd"] == Decimal("0.39")  # $0.13 per 1M tokens
    # written with spaces, and without a model: the usage is found all the same, the model is the request's
    del body["model"]
    row = _row(providers, book, "openai", "/v1/embeddings", request, reply=_answer(body))
    assert (row["model"], row["usage_source"], row["input_tokens"]) == ("text-embedding-3-small", "reported", 3_000_000)


def test_a_request_whose_model_is_not_a_name_stores_no_model(providers, book):
    body = {"object": "list", "data": [], "usage": {"prompt_tokens": 4, "total_tokens": 4}}
    row = _row(providers, book, "openai", "/v1/embeddings", {"model": ["text-embedding-3-small"], "input": "hi"},
               reply=_answer(body))
    assert (row["model"], row["usage_source"], row["input_tokens"], row["priced"]) == (None, "reported", 4, False)


@pytest.mark.parametrize("provider,status,expected", [
    ("anthropic", 429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
    ("anthropic", 404, {"type": "error", "error": {"type": "not_found_error", "message": "slow down"}}),
    ("anthropic", 503, {"type": "error", "error": {"type": "api_error", "message": "slow down"}}),
    ("anthropic", 500, {"type": "error", "error": {"type": "api_error", "message": "slow down"}}),
    ("anthropic", 409, {"type": "error", "error": {"type": "invalid_request_error", "message": "slow down"}}),
    ("google", 429, {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}),
    ("google", 401, {"error": {"code": 401, "message": "slow down", "status": "UNAUTHENTICATED"}}),
    ("google", 418, {"error": {"code": 418, "message": "slow down", "status": "FAILED_PRECONDITION"}}),
    ("google", 400, {"error": {"code": 400, "message": "slow down", "status": "INVALID_ARGUMENT"}}),
    ("google", 403, {"error": {"code": 403, "message": "slow down", "status": "PERMISSION_DENIED"}}),
    ("cohere", 429, {"message": "slow down"}),
    ("openai", 429, {"error": {"message": "slow down", "type": "rate_limit_exceeded", "param": None,
                               "code": "aispendtrack_limit"}}),
    ("openai", 499, {"error": {"message": "slow down", "type": "invalid_request_error", "param": None,
                               "code": "aispendtrack_limit"}}),
    ("openai", 500, {"error": {"message": "slow down", "type": "server_error", "param": None,
                               "code": "aispendtrack_limit"}}),
])
def test_our_refusals_come_in_the_shape_each_providers_sdk_reads(providers, provider, status, expected):
    assert json.loads(providers[provider].error_body(status, "slow down", "aispendtrack_limit")) == expected


def _chunk(delta: dict, model: str = "gpt-4o-2024-08-06") -> bytes:
    return payloads._data({"id": "c", "object": "chat.completion.chunk", "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})


def test_a_cut_chat_stream_is_estimated_as_openai_counts_a_prompt_and_the_text_that_came(providers, book):
    """OpenAI's counting: 3 tokens per message plus its role, name and text, and 3 priming the reply."""
    count = providers["openai"].counter.count
    messages = [{"role": "system", "content": "You answer in French."},
                {"role": "user", "name": "ana", "content": [{"type": "text", "text": "Bonjour, ça va ?"},
                                                            {"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": None, "tool_calls": []}]
    request = {"model": "gpt-4o", "messages": messages, "stream": True}
    came = [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Oui, "}),
            _chunk({"reasoning_content": "polite"}),
            _chunk({"tool_calls": [{"index": 0, "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]}),
            _chunk({"content": "merci."})]
    row = _row(providers, book, "openai", "/v1/chat/completions", request, reply=payloads.Reply(events=came))
    prompt = 3 + sum(3 + sum(count(t, "gpt-4o") for t in texts) for texts in (
        ["system", "You answer in French."], ["user", "ana", "Bonjour, ça va ?"], ["assistant"]))
    output = sum(count(t, "gpt-4o") for t in ("Oui, ", "polite", "lookup", '{"q": "x"}', "merci."))
    assert (row["usage_source"], row["model"]) == ("partial", "gpt-4o-2024-08-06")
    assert _tokens(row) == {"input_tokens": prompt, "output_tokens": output}
    assert row["cost_usd"] == book.price(TokenUsage(input_tokens=prompt, output_tokens=output), "openai",
                                         "gpt-4o-2024-08-06", row["ts"]).cost_usd


@pytest.mark.parametrize("path,request_body,texts", [
    ("/v1/responses", {"model": "gpt-4o", "instructions": "Be brief.",
                       "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}, "again"]},
     ["Hello", "again", "Be brief."]),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ["one", "two"]}, ["one", "two"]),
])
def test_a_cut_stream_of_the_other_apis_counts_every_input_text(providers, book, path, request_body, texts):
    count = providers["openai"].counter.count
    cut = payloads.Reply(events=[b"data: {\"partial\": true"])  # the connection ended mid-event
    row = _row(providers, book, "openai", path, {**request_body, "stream": True}, reply=cut)
    assert row["usage_source"] == "partial"
    assert row["input_tokens"] == sum(count(t, request_body["model"]) for t in texts) > 0


def test_cohere_bills_what_its_meta_says_on_other_endpoints_and_a_stream_that_failed_says_so(providers, book):
    embed = _answer({"id": "e-1", "embeddings": {"float": [[0.1, 0.2]]}, "texts": ["hi"],
                                            "meta": {"api_version": {"version": "2"},
                                                     "billed_units": {"input_tokens": 12}}})
    row = _row(providers, book, "cohere", "/v2/embed", {"model": "embed-english-v3.0", "texts": ["hi"]}, reply=embed)
    assert (row["usage_source"], _tokens(row)) == ("reported", {"input_tokens": 12})
    failed = [b'event: content-delta\ndata: {"type": "content-delta", "index": 0, '
              b'"delta": {"message": {"content": {"text": "Hel"}}}}\n\n',
              b'event: message-end\ndata: {"type": "message-end", "delta": {"finish_reason": "ERROR", "usage": '
              b'{"billed_units": {"input_tokens": 21, "output_tokens": 1}}}}\n\n']
    row = _row(providers, book, "cohere", "/v2/chat", {**COHERE, "stream": True}, reply=payloads.Reply(events=failed))
    assert row["error"] == "ERROR" and _tokens(row) == {"input_tokens": 21, "output_tokens": 1}


def test_a_cut_cohere_stream_counts_the_request_and_the_text_tool_plan_and_arguments_that_came(providers, book):
    """Probe: a stream cut before any text was stored at 0 tokens, $0.00, priced, and one cut later
    never counted its prompt (Cohere bills the prompt the moment it starts)."""
    count = providers["cohere"].counter.count
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    request = {**COHERE, "stream": True, "messages": [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
               "tools": tools}
    prompt = sum(count(text, None) for text in ("Be brief.", "hi", json.dumps(tools)))
    row = _row(providers, book, "cohere", "/v2/chat", request, keep=-1)  # no message-end
    assert (row["usage_source"], row["input_tokens"]) == ("partial", prompt)
    assert row["output_tokens"] == count("".join(payloads.STREAM_TEXT), COHERE["model"])
    early = _row(providers, book, "cohere", "/v2/chat", request, keep=1)  # message-start only
    assert (early["usage_source"], early["input_tokens"], early["output_tokens"]) == ("partial", prompt, 0)
    assert early["priced"] and early["cost_usd"] > 0
    start = payloads.reply_for("/v2/chat", "", request).events[:1]
    planned = [*start, payloads._data({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will look"}}}),
               payloads._data({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {
                   "function": {"arguments": '{"city": "Par'}}}}})]
    row = _row(providers, book, "cohere", "/v2/chat", request, reply=payloads.Reply(events=planned))
    assert (row["input_tokens"], row["output_tokens"]) == (prompt, count('I will look{"city": "Par', None))


def _gemini_chunk(text: str, usage: dict | None = None, **more) -> dict:
    chunk = {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}], **more}
    return chunk | ({"usageMetadata": usage} if usage else {})


def test_gemini_rows_name_the_model_of_the_path_and_count_tool_prompts_and_json_array_streams(providers, book):
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    usage = {"promptTokenCount": 100, "cachedContentTokenCount": 40, "toolUsePromptTokenCount": 7,
             "candidatesTokenCount": 20}
    array = payloads.Reply(body=json.dumps([_gemini_chunk("Hi"), _gemini_chunk(" there", usage)]).encode())
    row = _row(providers, book, "google", path, {"contents": []}, reply=array)  # no alt=sse: one JSON array
    assert (row["model"], row["endpoint"], row["usage_source"]) == \
        ("gemini-2.5-flash", "/v1beta/models/{model}:streamGenerateContent", "reported")
    assert _tokens(row) == {"input_tokens": 100 - 40 + 7, "cache_read_tokens": 40, "output_tokens": 20}
    assert row["cost_usd"] == book.price(TokenUsage(input_tokens=67, cache_read_tokens=40, output_tokens=20),
                                         "google", "gemini-2.5-flash", row["ts"]).cost_usd


def test_a_gemini_stream_that_errs_or_is_cut_says_so_and_keeps_the_last_totals_it_saw(providers, book):
    path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    erred = [payloads._data(_gemini_chunk("Hel")),
             payloads._data({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}})]
    row = _row(providers, book, "google", path, {"contents": []}, reply=payloads.Reply(events=erred))
    assert row["error"] == "RESOURCE_EXHAUSTED" and row["model"] == "gemini-2.5-pro"
    running = {"promptTokenCount": 9, "candidatesTokenCount": 3}
    cut = [payloads._data(_gemini_chunk("Okay, ", running, modelVersion="gemini-2.5-pro-002")),
           payloads._data(_gemini_chunk("let's go.", running | {"candidatesTokenCount": 6}))]
    row = _row(providers, book, "google", path, {"contents": []}, reply=payloads.Reply(events=cut))
    # Gemini repeats its running totals in every chunk: a cut stream keeps the last ones it saw.
    assert (row["usage_source"], row["model"]) == ("partial", "gemini-2.5-pro-002")
    assert _tokens(row) == {"input_tokens": 9, "output_tokens": 6}


def _grounded(text: str, queries: list | None, usage: dict | None = None,
              model: str | None = "gemini-3-pro-preview") -> dict:
    chunk = _gemini_chunk(text, usage, **({"modelVersion": model} if model else {}))
    if queries is not None:
        chunk["candidates"][0]["groundingMetadata"] = {"webSearchQueries": queries}
    return chunk


@pytest.mark.parametrize("versioned", [True, False], ids=["modelVersion", "path's model"])
@pytest.mark.parametrize("model,searches,prompts", [("gemini-3-pro-preview", 3, 0), ("gemini-2.5-flash", 0, 1)])
def test_a_grounded_gemini_call_counts_its_searches_in_the_unit_its_model_is_billed_in(providers, book, model,
                                                                                       searches, prompts, versioned):
    """Gemini 3 bills each search query, Gemini 2.x each grounded prompt; after a free allowance the
    proxy cannot see, so the fee is an estimate and the row says so. The model is the answer's
    ``modelVersion``, else the one the path names."""
    path = f"/v1beta/models/{model}:generateContent"
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5}
    version = model if versioned else None
    body = _grounded("Hi", ["weather paris", "weather lyon"], usage, version)
    body["candidates"].append({**body["candidates"][0], "index": 1,
                               "groundingMetadata": {"webSearchQueries": ["news"]}})
    body["candidates"].append({"index": 2, "groundingMetadata": "not an object"})
    row = _row(providers, book, "google", path, {"contents": []}, reply=_answer(body))
    last = _grounded(" there", None, usage, version)
    last["candidates"][0]["finishReason"] = "STOP"
    stream = [payloads._data(_grounded("Hi", ["weather paris", "weather lyon", "news"], model=version)),
              payloads._data(last)]
    streamed = _row(providers, book, "google", path.replace(":generateContent", ":streamGenerateContent"),
                    {"contents": []}, reply=payloads.Reply(events=stream))
    for found in (row, streamed):  # a stream's queries come before its usage: kept until it comes
        assert (found["web_search_requests"], found["grounded_prompts"]) == (searches, prompts)
        assert (found["usage_source"], found["error"]) == ("estimated", f"tool fee estimated: {GROUNDING}")
        assert found["cost_usd"] == book.price(TokenUsage(input_tokens=10, output_tokens=5,
                                                          web_search_requests=searches, grounded_prompts=prompts),
                                               "google", model, found["ts"]).cost_usd


def test_a_gemini_call_that_searched_nothing_or_past_the_bound_has_no_search_fee(providers, book):
    path = "/v1beta/models/gemini-3-pro-preview:generateContent"
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5}
    for queries in ([], ["q"] * 100_001, None):
        row = _row(providers, book, "google", path, {"contents": []}, reply=_answer(_grounded("Hi", queries, usage)))
        assert (row["web_search_requests"], row["usage_source"], row["error"]) == (0, "reported", None)
    bound = _answer(_grounded("Hi", ["q"] * 100_000, usage))
    assert _row(providers, book, "google", path, {"contents": []}, reply=bound)["web_search_requests"] == 100_000


def test_a_rows_error_says_why_its_usage_is_missing_or_refused(providers, book):
    refused = _row(providers, book, "openai", "/v1/chat/completions", CHAT, scenario="error400")
    assert (refused["status"], refused["usage_source"], refused["cost_usd"], refused["priced"]) == \
        (400, "none", Decimal(0), True)
    hostile = {**CHAT, "test_usage": {"prompt_tokens": -5, "completion_tokens": 2, "total_tokens": 2}}
    invalid = _row(providers, book, "openai", "/v1/chat/completions", hostile)
    assert (invalid["usage_source"], invalid["priced"], invalid["cost_usd"]) == ("invalid", False, None)
    assert invalid["error"].startswith("usage implausible: ") and "prompt_tokens" in invalid["error"]

    meter = CallMeter(providers["openai"], "/v1/chat/completions", 7, "acme", None, time.time(),
                      json.dumps(CHAT).encode(), "")
    meter.start_response(200, "application/json", "gzip")
    meter.finish(200, "completed", None, b"this is not gzip")
    unreadable = build_row(meter, book)
    assert (unreadable["error"], unreadable["status"]) == ("usage unreadable: cannot decode body: error", 200)
    # Answered in full, but unreadable: its usage unknown, so unpriced; it was estimated from the
    # request alone, as if cut short, a prompt's worth ($0.00002 for a $0.0088 call).
    assert (unreadable["usage_source"], unreadable["priced"], unreadable["cost_usd"]) == ("none", False, None)


# OpenAI's Realtime API: the rows a session's frames give, read by the same RealtimeSession the
# proxy's WebSocket hook uses (tests/test_realtime.py runs it through the proxy with the SDK).
REALTIME_USAGE = {"total_tokens": 2100, "input_tokens": 1200, "output_tokens": 900,  # as OpenAI documents it
                  "input_token_details": {"text_tokens": 200, "audio_tokens": 1000, "image_tokens": 0,
                                          "cached_tokens": 640, "cached_tokens_details": {
                                              "text_tokens": 128, "audio_tokens": 512, "image_tokens": 0}},
                  "output_token_details": {"text_tokens": 100, "audio_tokens": 800}}


def _realtime_rows(providers, book, *frames: dict | bytes, query: str = "model=gpt-realtime") -> list[dict]:
    """The rows of a session whose server sends ``frames`` (a client frame is given as ("client", event))."""
    handshake = CallMeter(providers["openai"], "/v1/realtime", 7, "acme", "voice", time.time(), None, "", "GET")
    session = RealtimeSession(handshake, query)
    meters = []
    for frame in frames:
        from_client = isinstance(frame, tuple)
        event = frame[1] if isinstance(frame, tuple) else frame
        meter = session.read(event if isinstance(event, bytes) else json.dumps(event).encode(), from_client)
        meters.append(meter)
    return [build_row(m, book) for m in meters if m is not None]


def _done(usage: dict | None, status: str = "completed") -> dict:
    return {"event_id": "event_1", "type": "response.done", "response": {
        "object": "realtime.response", "id": "resp_1", "status": status, "output": [],
        **({"usage": usage} if usage is not None else {})}}


def test_a_realtime_response_is_a_row_with_its_tokens_by_kind_and_the_sessions_model(providers, book):
    updated = {"type": "session.updated", "session": {"type": "realtime", "model": "gpt-realtime-mini"}}
    [row] = _realtime_rows(providers, book, {"type": "session.created", "session": {"model": "gpt-realtime"}},
                           {"type": "response.created", "response": {"id": "resp_1"}},
                           {"type": "response.output_audio.delta", "delta": "AAAA", "type_of": "session.updated"},
                           updated, _done(REALTIME_USAGE))
    assert (row["model"], row["endpoint"], row["usage_source"], row["error"]) == \
        ("gpt-realtime-mini", "/v1/realtime", "reported", None)
    assert (row["input_tokens"], row["input_audio_tokens"], row["input_image_tokens"], row["cache_read_tokens"],
            row["cache_read_audio_tokens"], row["output_tokens"], row["output_audio_tokens"]) == \
        (560, 488, 0, 640, 512, 900, 800)
    assert row["priced"] and row["cost_usd"] > 0
    # a model named by the client or in a nested object, or not a model name, does not rename the session
    nested = {"item": {"type": "session.updated", "session": {"model": "gpt-4o"}}, "type": "conversation.item.added"}
    [row] = _realtime_rows(providers, book, nested,
                           ("client", {"type": "session.updated", "session": {"model": "gpt-4o"}}),
                           {"type": "session.created", "session": {"model": "gpt realtime; drop"}},
                           {"type": "session.created", "session": {"model": "g" * 201}},
                           _done(REALTIME_USAGE), query="model=gpt-realtime")
    assert (row["model"], row["usage_source"]) == ("gpt-realtime", "reported")


def test_realtime_parts_may_reach_their_whole_but_never_pass_it(providers, book):
    whole = {"input_tokens": 1000, "output_tokens": 50, "output_token_details": {"audio_tokens": 50},
             "input_token_details": {"audio_tokens": 600, "image_tokens": 400, "cached_tokens": 1000,
                                     "cached_tokens_details": {"audio_tokens": 600, "image_tokens": 400}}}
    [row] = _realtime_rows(providers, book, _done(whole))
    assert (row["usage_source"], row["input_tokens"], row["cache_read_tokens"], row["cache_read_audio_tokens"],
            row["cache_read_image_tokens"], row["output_audio_tokens"]) == ("reported", 0, 1000, 600, 400, 50)
    assert (row["input_audio_tokens"], row["input_image_tokens"]) == (0, 0)
    half = {**whole, "input_token_details": {**whole["input_token_details"], "cached_tokens": 500,
                                             "cached_tokens_details": {"audio_tokens": 300, "image_tokens": 200}}}
    [row] = _realtime_rows(providers, book, _done(half))
    assert (row["input_tokens"], row["input_audio_tokens"], row["input_image_tokens"], row["cache_read_tokens"],
            row["cache_read_audio_tokens"], row["cache_read_image_tokens"]) == (500, 300, 200, 500, 300, 200)
    for field in ("input_tokens", "output_tokens"):
        [row] = _realtime_rows(providers, book, _done({**whole, field: None}))
        assert (row["usage_source"], row["error"]) == ("invalid", f"usage implausible: {field} is null")
    details = whole["input_token_details"]
    past = [{**whole, "input_tokens": 999},  # cached, and audio + image, above the input
            {**whole, "input_token_details": {**details, "cached_tokens": 999}},  # cached parts above cached
            {**whole, "input_token_details": {**details, "audio_tokens": 599}},  # cached audio above audio
            {**whole, "input_token_details": {**details, "image_tokens": 399}},  # cached images above images
            {**whole, "input_token_details": {**details, "cached_tokens": 900,
                                              "cached_tokens_details": {"audio_tokens": 600, "image_tokens": 300},
                                              "audio_tokens": 601}},  # audio + image above the input
            {**whole, "output_tokens": 49}]  # output audio above the output
    for usage in past:
        [row] = _realtime_rows(providers, book, _done(usage))
        assert (row["usage_source"], row["priced"], row["cost_usd"]) == ("invalid", False, None), usage
        assert row["error"] == (f"usage implausible: the parts of input_tokens={usage['input_tokens']} or "
                                f"output_tokens={usage['output_tokens']} exceed them")


def test_a_realtime_response_that_did_not_complete_says_so(providers, book):
    rows = _realtime_rows(providers, book, _done(REALTIME_USAGE, "cancelled"), _done(REALTIME_USAGE, "x" * 33),
                          _done(REALTIME_USAGE, "y" * 32), _done(REALTIME_USAGE, "incomplete"))
    assert [(r["error"], r["usage_source"], r["output_tokens"]) for r in rows] == [
        ("response cancelled", "reported", 900), (None, "reported", 900), ("response " + "y" * 32, "reported", 900),
        ("response incomplete", "reported", 900)]
    [missing] = _realtime_rows(providers, book, _done(None))
    assert (missing["usage_source"], missing["priced"], missing["cost_usd"]) == ("none", False, None)


# OpenAI's images and audio APIs (tests/test_media.py runs them through the proxy with the SDK).
def _media_row(providers, book, path: str, content_type: str, answer: bytes | list[bytes],
               request: dict | None = None, upload: dict | None = None, status: int = 200) -> dict:
    """The row for a call to ``path`` sent as JSON (``request``) or as a form with a file (``upload``,
    encoded by httpx as the SDK does), answered with ``answer``: a body, or a stream's pieces."""
    if upload is not None:
        form = httpx.Request("POST", f"https://api.openai.com{path}", files={"file": upload.pop("file")},
                             data=upload)
        body, kind = form.read(), form.headers["content-type"]
    else:
        body, kind = json.dumps(request).encode(), "application/json"
    meter = CallMeter(providers["openai"], path, 7, "acme", "media", time.time(), body, "", request_type=kind)
    streamed = meter.start_response(status, content_type, "")
    if streamed:
        for piece in answer:
            meter.tap(piece)
        meter.tap(b"")
    meter.finish(status, "completed", None, None if streamed else answer)  # type: ignore[arg-type]
    return build_row(meter, book)


def _units(row: dict) -> dict:
    return {k: row[k] for k in ("input_tokens", "cache_read_tokens", "input_image_tokens", "input_audio_tokens",
                                "output_tokens", "output_image_tokens", "output_audio_tokens", "images",
                                "audio_seconds", "characters") if row[k]}


def _wav(seconds: int, rate: int = 16000) -> bytes:
    data = b"\0\0" * (seconds * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)


def test_an_image_call_stores_its_tokens_by_kind_and_its_images(providers, book):
    path, request = "/v1/images/generations", {"model": "chatgpt-image-latest", "prompt": "a red cat", "n": 2}
    usage = {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
             "input_tokens_details": {"cached_tokens": 10, "image_tokens": 30, "text_tokens": 20},
             "output_tokens_details": {"image_tokens": 4000}}
    body = {"created": 1764763200, "model": "gpt-image-1", "data": [{"b64_json": "iVBO"}] * 2, "usage": usage}
    row = _media_row(providers, book, path, "application/json", json.dumps(body).encode(), request)
    assert (row["model"], row["usage_source"], row["error"]) == ("gpt-image-1", "reported", None)
    assert _units(row) == {"input_tokens": 40, "cache_read_tokens": 10, "input_image_tokens": 30,
                           "output_tokens": 4160, "output_image_tokens": 4000, "images": 2}
    assert row["priced"] and row["cost_usd"] > 0
    # image parts larger than what they are part of count as the whole, never more
    odd = {**usage, "input_tokens_details": {"cached_tokens": 60, "image_tokens": 45},
           "output_tokens_details": {"image_tokens": 5000}}
    row = _media_row(providers, book, path, "application/json", json.dumps({**body, "usage": odd}).encode(), request)
    assert _units(row) == {"cache_read_tokens": 50, "output_tokens": 4160, "output_image_tokens": 4160, "images": 2}
    row = _media_row(providers, book, path, "application/json", json.dumps({"usage": usage}).encode(), request)
    assert (row["usage_source"], row["images"], row["output_tokens"]) == ("reported", 0, 4160)  # no data: no images
    for field in ("input_tokens", "output_tokens"):
        row = _media_row(providers, book, path, "application/json",
                         json.dumps({**body, "usage": {**usage, field: None}}).encode(), request)
        assert (row["usage_source"], row["error"]) == ("invalid", f"usage implausible: {field} is null")
    row = _media_row(providers, book, path, "application/json", json.dumps({**body, "model": 123}).encode(), request)
    assert (row["model"], row["usage_source"]) == ("chatgpt-image-latest", "reported")  # not a name: the request's
    row = _media_row(providers, book, path, "application/json", b'{"created": 1}', request)
    assert (row["usage_source"], row["priced"], row["error"]) == (
        "none", False, "usage unknown: the response carried no usage")
    dall_e = {"created": 1764763200, "data": [{"url": "https://example.invalid/1.png"}] * 3}
    row = _media_row(providers, book, path, "application/json", json.dumps(dall_e).encode(),
                     {"model": "dall-e-3", "prompt": "a cat", "size": "1024x1024"})
    assert (row["model"], row["usage_source"], _units(row)) == ("dall-e-3", "reported", {"images": 3})


@pytest.mark.parametrize("asked,cost", [
    ({}, "0.08"),  # OpenAI's defaults: 1024x1024, standard
    ({"size": "auto", "quality": "auto"}, "0.08"),
    ({"size": "1792x1024"}, "0.16"),
    ({"quality": "hd"}, "0.16"),
    ({"size": "1024x1792", "quality": "hd"}, "0.24"),
    ({"size": 1024, "quality": ["hd"]}, "0.08"),  # not a size or a quality: the defaults, as OpenAI's
    ({"size": "512x512"}, None),  # DALL-E 3 makes no such size: unpriced, never priced as another
    ({"quality": "ultra"}, None),
])
def test_an_image_is_priced_at_the_size_and_quality_the_request_asked_for(providers, book, asked, cost):
    request = {"model": "dall-e-3", "prompt": "a cat", "n": 2, **asked}
    answer = json.dumps({"created": 1764763200, "data": [{"url": "https://example.invalid/1.png"}] * 2}).encode()
    row = _media_row(providers, book, "/v1/images/generations", "application/json", answer, request)
    assert (row["images"], row["priced"], row["cost_usd"]) == (2, cost is not None, cost and Decimal(cost))


def test_an_image_edit_is_priced_at_the_size_its_form_asked_for(providers, book):
    answer = json.dumps({"created": 1764763200, "data": [{"b64_json": "iVBO"}]}).encode()
    upload = {"file": ("cat.png", b"\x89PNG\r\n", "image/png"), "model": "dall-e-2", "prompt": "a hat",
              "size": "512x512"}
    row = _media_row(providers, book, "/v1/images/edits", "application/json", answer, upload=upload)
    assert (row["model"], row["images"], row["cost_usd"]) == ("dall-e-2", 1, Decimal("0.018"))


def test_an_image_count_past_the_bound_is_refused_by_name(providers, book):
    path, request = "/v1/images/generations", {"model": "dall-e-2", "prompt": "a cat"}
    many = json.dumps({"created": 1, "data": [{}] * 100_000}).encode()
    assert _media_row(providers, book, path, "application/json", many, request)["images"] == 100_000
    too_many = json.dumps({"created": 1, "data": [{}] * 100_001}).encode()
    row = _media_row(providers, book, path, "application/json", too_many, request)
    assert (row["usage_source"], row["priced"], row["images"]) == ("invalid", False, 0)
    assert row["error"] == "usage implausible: data holds 100,001 images, more than 100,000"


def test_a_transcription_stores_its_audio_tokens_or_its_seconds(providers, book):
    path, wav = "/v1/audio/transcriptions", ("a.wav", _wav(1), "audio/wav")
    tokens = {"type": "tokens", "input_tokens": 134, "output_tokens": 9,
              "input_token_details": {"text_tokens": 14, "audio_tokens": 120}}
    row = _media_row(providers, book, path, "application/json", json.dumps({"text": "hi", "usage": tokens}).encode(),
                     upload={"model": "gpt-4o-transcribe", "file": wav})
    assert (row["model"], row["usage_source"]) == ("gpt-4o-transcribe", "reported")
    assert _units(row) == {"input_tokens": 134, "input_audio_tokens": 120, "output_tokens": 9}
    odd = {**tokens, "input_token_details": {"audio_tokens": 150}}  # audio is part of the input: at most all of it
    row = _media_row(providers, book, path, "application/json", json.dumps({"text": "hi", "usage": odd}).encode(),
                     upload={"model": "gpt-4o-transcribe", "file": wav})
    assert _units(row) == {"input_tokens": 134, "input_audio_tokens": 134, "output_tokens": 9}
    for answer in ({"text": "hi", "usage": {"type": "duration", "seconds": 8}},
                   {"text": "hi", "task": "transcribe", "duration": 8.0},  # verbose_json: no usage, a duration
                   {"text": "hi", "duration": 3, "usage": {"type": "duration", "seconds": 8}}):
        row = _media_row(providers, book, path, "application/json", json.dumps(answer).encode(),
                         upload={"model": "whisper-1", "file": wav})
        assert (row["usage_source"], row["audio_seconds"]) == ("reported", Decimal(8)), answer
        assert row["cost_usd"] == Decimal("0.006") * 8 / 60  # whisper-1: $0.006 a minute
    row = _media_row(providers, book, path, "application/json", json.dumps({"text": "hi", "duration": 86400}).encode(),
                     upload={"model": "whisper-1", "file": wav})
    assert row["audio_seconds"] == Decimal(86400)
    row = _media_row(providers, book, path, "application/json", json.dumps({"text": "", "duration": 0}).encode(),
                     upload={"model": "whisper-1", "file": wav})
    assert (row["usage_source"], row["audio_seconds"], row["cost_usd"]) == ("reported", 0, 0)
    for field in ("input_tokens", "output_tokens"):
        answer = {"text": "hi", "usage": {**tokens, field: None}}
        row = _media_row(providers, book, path, "application/json", json.dumps(answer).encode(),
                         upload={"model": "gpt-4o-transcribe", "file": wav})
        assert (row["usage_source"], row["error"]) == ("invalid", f"usage implausible: {field} is null")
    row = _media_row(providers, book, "/v1/audio/translations", "application/json", b'{"text": "hi"}',
                     upload={"model": "whisper-1", "file": ("a.wav", _wav(2), "audio/wav")})
    assert (row["usage_source"], row["audio_seconds"]) == ("estimated", 2)  # whisper's JSON names no duration


@pytest.mark.parametrize("seconds,shown", [(-1, "-1"), (86400.5, "86400.5"), (True, "True"), ("8", "'8'"),
                                           ([8], "[8]"), (float("nan"), "nan"), (float("inf"), "inf"),
                                           (1e300, "1e+300"), ("x" * 50, repr("x" * 50)[:40])])
def test_a_transcription_whose_duration_is_not_a_length_of_audio_is_refused_by_name(providers, book, seconds, shown):
    # NaN is written (and read back) as Python's json does: a hostile upstream can send it
    answer = json.dumps({"text": "hi", "usage": {"type": "duration", "seconds": seconds}}).encode()
    row = _media_row(providers, book, "/v1/audio/translations", "application/json", answer,
                     upload={"model": "whisper-1", "file": ("a.wav", _wav(1), "audio/wav")})
    assert (row["usage_source"], row["priced"], row["cost_usd"]) == ("invalid", False, None)
    assert row["error"] == f"usage implausible: audio duration {shown} is not a number of seconds from 0 to 86400"


def test_a_transcript_answered_as_text_is_timed_by_its_wav_header_or_unpriced_with_why(providers, book):
    path = "/v1/audio/transcriptions"
    row = _media_row(providers, book, path, "text/plain; charset=utf-8", b"Hello there.\n",
                     upload={"model": "whisper-1", "response_format": "text", "file": ("a.wav", _wav(3), "audio/wav")})
    assert (row["usage_source"], row["audio_seconds"], row["error"]) == ("estimated", Decimal(3), None)
    assert row["cost_usd"] == Decimal("0.006") * 3 / 60
    row = _media_row(providers, book, path, "text/plain; charset=utf-8", b"Hello there.\n",
                     upload={"model": "whisper-1", "response_format": "text",
                             "file": ("a.mp3", b"ID3\x04" + bytes(4000), "audio/mpeg")})
    assert (row["usage_source"], row["priced"], row["cost_usd"]) == ("none", False, None)
    assert row["error"] == ("usage unknown: the response reported no duration (response_format json or verbose_json "
                            "reports it) and the audio file is not a WAV file whose header gives it")
    row = _media_row(providers, book, path, "text/plain", b"Hello there.\n", {"model": "whisper-1", "file": "a.wav"})
    assert (row["usage_source"], row["priced"]) == ("none", False)  # no upload to read a duration from
    assert row["error"].startswith("usage unknown: the response reported no duration")


def test_speech_is_counted_in_characters_or_read_from_its_done_event(providers, book):
    path, words = "/v1/audio/speech", "Today is a wonderful day."
    audio = [b"ID3\x04" + bytes(20_000), bytes(10_000)]
    row = _media_row(providers, book, path, "audio/mpeg", audio, {"model": "tts-1", "input": words, "voice": "alloy"})
    assert (row["usage_source"], _units(row), row["error"]) == ("counted", {"characters": len(words)}, None)
    assert row["cost_usd"] == Decimal(15) * len(words) / 1_000_000  # tts-1: $15 per million characters
    row = _media_row(providers, book, path, "audio/mpeg", audio,
                     {"model": "gpt-4o-mini-tts", "input": words, "voice": "alloy"})
    assert (row["usage_source"], row["priced"], row["cost_usd"]) == ("none", False, None)
    assert row["error"] == "usage unknown: gpt-4o-mini-tts reports its tokens only with stream_format=sse"
    done = {"type": "speech.audio.done", "usage": {"input_tokens": 5, "output_tokens": 1200, "total_tokens": 1205}}
    sse = [payloads._data({"type": "speech.audio.delta", "audio": "AAAA" * 500}), payloads._data(done)]
    row = _media_row(providers, book, path, "text/event-stream", sse,
                     {"model": "gpt-4o-mini-tts", "input": words, "voice": "alloy", "stream_format": "sse"})
    assert (row["usage_source"], row["stream"]) == ("reported", True)
    assert _units(row) == {"input_tokens": 5, "output_tokens": 1200, "output_audio_tokens": 1200}


def test_a_streamed_transcription_is_read_from_its_done_event_or_says_why_it_failed(providers, book):
    path, upload = "/v1/audio/transcriptions", {"model": "gpt-4o-mini-transcribe", "stream": "true"}
    usage = {"type": "tokens", "input_tokens": 54, "output_tokens": 9, "total_tokens": 63,
             "input_token_details": {"text_tokens": 14, "audio_tokens": 40}}
    sse = [payloads._data({"type": "transcript.text.delta", "delta": "Hello "}),
           payloads._data({"type": "transcript.text.done", "text": "Hello there", "usage": usage})]
    row = _media_row(providers, book, path, "text/event-stream", sse,
                     upload={**upload, "file": ("a.wav", _wav(4), "audio/wav")})
    assert (row["usage_source"], row["model"]) == ("reported", "gpt-4o-mini-transcribe")
    assert _units(row) == {"input_tokens": 54, "input_audio_tokens": 40, "output_tokens": 9}
    failed = [sse[0], payloads._data({"type": "error", "error": {"type": "server_error", "message": "oops"}})]
    row = _media_row(providers, book, path, "text/event-stream", failed,
                     upload={**upload, "file": ("a.wav", _wav(4), "audio/wav")})
    assert (row["error"], row["usage_source"], row["audio_seconds"]) == ("server_error", "partial", Decimal(4))
    for error, stored in (({"code": "rate_limited"}, "rate_limited"), ({}, "error")):
        erred = [payloads._data({"type": "error", "error": error})]
        row = _media_row(providers, book, path, "text/event-stream", erred,
                         upload={**upload, "file": ("a.wav", _wav(4), "audio/wav")})
        assert row["error"] == stored


def test_a_call_whose_usage_reading_fails_is_still_stored_without_usage(providers, book, monkeypatch):
    def broken(path, body):
        raise KeyError("a bug in a parser")
    monkeypatch.setattr(providers["openai"], "parse_body", broken)
    row = _row(providers, book, "openai", "/v1/chat/completions", CHAT)
    assert (row["status"], row["model"], row["customer_id"], row["key_id"]) == (200, None, "acme", 7)
    assert (row["usage_source"], row["priced"], row["cost_usd"], _tokens(row)) == ("none", False, None, {})
    assert row["error"] == "usage unreadable: internal error"


def test_a_billed_call_we_do_not_meter_is_unpriced_and_named(providers, book):
    row = _row(providers, book, "openai", "/v1/images/variations", {"model": "dall-e-2"},
               reply=payloads.Reply(body=b'{"created": 1, "data": [{"url": "https://example.invalid/1.png"}]}'))
    assert (row["status"], row["usage_source"], row["priced"], row["cost_usd"]) == (200, "unmetered", False, None)
    assert row["error"] == ("not metered: openai bills /v1/images/variations, AiSpendTrack does not read its usage "
                            "(docs/coverage.md)")


def test_a_model_name_too_long_to_be_real_is_stored_cut(providers, book):
    for length, stored in ((200, "m" * 200), (201, "m" * 199 + "…")):
        row = _row(providers, book, "openai", "/v1/embeddings", {"model": "m" * length, "input": "hi"},
                   reply=payloads.Reply(body=b'{"object": "list", "data": [], "usage": {"prompt_tokens": 4}}'))
        assert (row["model"], row["usage_source"], row["input_tokens"]) == (stored, "reported", 4)


def test_a_stream_whose_usage_we_could_not_ask_for_says_why_unless_it_came(providers, book):
    def row_for(request: dict, keep: int | None) -> dict:
        reply = payloads.reply_for("/v1/chat/completions", "", request)
        meter = CallMeter(providers["openai"], "/v1/chat/completions", 7, "acme", "chat", time.time(),
                          json.dumps(request).encode(), "")
        meter.usage_not_requested = "the request body is compressed (gzip)"  # as the proxy notes it
        meter.start_response(200, "text/event-stream", "")
        for piece in reply.pieces()[:keep]:
            meter.tap(piece)
        meter.tap(b"")
        meter.finish(200, "completed", None)
        # the clock readings of a call that took 1.2345678 s, its first byte after 12.3456 ms
        meter.started_at = 1_764_763_200.0
        meter.first_byte_at, meter.finished_at = meter.started_at + 0.0123456, meter.started_at + 1.2345678
        meter.hooks_ns, meter.tap_ns = 40_100, 2_400  # 42.5 us in our hooks and stream tap
        return build_row(meter, book)
    estimated = row_for({**CHAT, "stream": True}, None)
    assert (estimated["usage_source"], estimated["error"]) == (
        "estimated", "usage not requested: the request body is compressed (gzip)")
    reported = row_for(STREAMED, None)
    assert (reported["usage_source"], reported["error"]) == ("reported", None)
    # latency from the request to the end, time to first token from the request to the first byte, in ms
    assert (reported["ttft_ms"], reported["latency_ms"]) == (12.346, 1234.568)
    assert reported["proxy_us"] == 43  # what the proxy added, in whole microseconds


@pytest.mark.parametrize("path,usage,field", [
    ("/v1/chat/completions", {"prompt_tokens": None, "completion_tokens": 5}, "prompt_tokens"),
    ("/v1/chat/completions", {"prompt_tokens": 5, "completion_tokens": None}, "completion_tokens"),
    ("/v1/responses", {"input_tokens": None, "output_tokens": 5}, "input_tokens"),
    ("/v1/responses", {"input_tokens": 5, "output_tokens": None}, "output_tokens"),
])
def test_an_openai_count_sent_as_null_is_refused_by_name_not_taken_as_zero(providers, book, path, usage, field):
    body = {"id": "x", "object": "response", "model": "gpt-4o", "status": "completed", "output": [], "usage": usage}
    row = _row(providers, book, "openai", path, {"model": "gpt-4o", "input": "hi"},
               reply=_answer(body))
    assert (row["usage_source"], row["priced"]) == ("invalid", False)
    assert row["error"] == f"usage implausible: {field} is null"


def test_deepseeks_cache_hits_are_cache_reads_and_the_service_tier_is_kept(providers, book):
    usage = {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105, "prompt_cache_hit_tokens": 60,
             "prompt_cache_miss_tokens": 40}
    body = {"id": "x", "object": "chat.completion", "model": "deepseek-chat", "choices": [], "usage": usage}
    row = _row(providers, book, "deepseek", "/v1/chat/completions", {**CHAT, "model": "deepseek-chat"},
               reply=_answer(body))
    assert (row["usage_source"], _tokens(row)) == ("reported", {"input_tokens": 40, "cache_read_tokens": 60,
                                                                "output_tokens": 5})
    flex = {"id": "x", "object": "chat.completion", "model": "o3-2025-04-16", "service_tier": "flex", "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    row = _row(providers, book, "openai", "/v1/chat/completions", {**CHAT, "model": "o3"},
               reply=_answer(flex))
    assert (row["service_tier"], row["model"]) == ("flex", "o3-2025-04-16")
    at_flex = book.price(TokenUsage(input_tokens=10, output_tokens=5), "openai", "o3-2025-04-16", row["ts"], "flex")
    standard = book.price(TokenUsage(input_tokens=10, output_tokens=5), "openai", "o3-2025-04-16", row["ts"])
    assert row["cost_usd"] == at_flex.cost_usd < standard.cost_usd  # priced at the tier it was served at
    # in a stream the tier comes with the first chunks; the usage chunk need not repeat it
    events = payloads.chat_stream(include_usage=True, tier="priority")
    last = json.loads(events[-2][len(b"data: "):])
    del last["service_tier"]
    row = _row(providers, book, "openai", "/v1/chat/completions", STREAMED,
               reply=payloads.Reply(events=[*events[:-2], payloads._data(last), events[-1]]))
    assert (row["service_tier"], row["usage_source"]) == ("priority", "reported")


def test_each_web_search_of_a_response_is_counted_up_to_the_bound(providers, book):
    def row_for(searches: int) -> dict:
        output = [{"type": "web_search_call", "id": f"ws_{n}", "status": "completed"} for n in range(searches)]
        body = {**payloads._response_obj("gpt-4o-2024-08-06", "completed", {"input_tokens": 10, "output_tokens": 5}),
                "output": [*output, {"type": "message", "content": []}]}
        return _row(providers, book, "openai", "/v1/responses", {"model": "gpt-4o", "input": "news?"},
                    reply=_answer(body))
    assert (row_for(2)["web_search_requests"], row_for(2)["usage_source"]) == (2, "reported")
    assert row_for(100_000)["web_search_requests"] == 100_000
    refused = row_for(100_001)
    assert (refused["usage_source"], refused["web_search_requests"], refused["priced"]) == ("invalid", 0, False)
    assert refused["error"] == "usage implausible: output has 100,001 tool call items, more than 100,000"


def test_code_interpreter_runs_of_a_response_count_their_containers_whose_time_is_estimated(providers, book):
    def row_for(*containers: str) -> dict:
        output = [{"type": "code_interpreter_call", "id": f"ci_{n}", "status": "completed", "code": "print(2)",
                   "container_id": container} for n, container in enumerate(containers)]
        body = {**payloads._response_obj("gpt-4o-2024-08-06", "completed", {"input_tokens": 10, "output_tokens": 5}),
                "output": [*output, {"type": "message", "content": []}]}
        return _row(providers, book, "openai", "/v1/responses", {"model": "gpt-4o", "input": "double 2"},
                    reply=_answer(body))
    row = row_for("cntr_a", "cntr_a", "cntr_b")
    assert (row["code_executions"], row["containers"], row["usage_source"]) == (3, 2, "estimated")
    assert row["error"].startswith("tool fee estimated: OpenAI bills a code interpreter container by its session")
    plain = row_for()
    assert (plain["containers"], plain["usage_source"], plain["error"]) == (0, "reported", None)


@pytest.mark.parametrize("error,stored", [({"type": "server_error", "code": "x"}, "server_error"),
                                          ({"code": "rate_limit"}, "rate_limit"), ({}, "error"),
                                          # an upstream echoing the prompt where a code goes: never stored
                                          ({"type": "bad: Tell me my secret plan"}, "error (not a code: not stored)")])
def test_an_error_inside_a_chat_stream_is_the_rows_error(providers, book, error, stored):
    events = payloads.chat_stream(include_usage=False)[:3] + [payloads._data({"error": error})]
    row = _row(providers, book, "openai", "/v1/chat/completions", STREAMED, reply=payloads.Reply(events=events))
    assert (row["error"], row["usage_source"]) == (stored, "partial")


def _data_only(events: list[bytes]) -> list[bytes]:
    """The same events without their ``event:`` lines, as some OpenAI-compatible servers send them."""
    return [e.split(b"\n", 1)[1] if e.startswith(b"event:") else e for e in events]


def test_a_responses_stream_is_read_with_or_without_event_names(providers, book):
    request = {"model": "gpt-5", "input": "hi", "stream": True}
    whole = payloads.reply_for("/v1/responses", "", request).events
    row = _row(providers, book, "openai", "/v1/responses", request, reply=payloads.Reply(events=_data_only(whole)))
    assert (row["usage_source"], row["model"], row["output_tokens"]) == ("reported", "gpt-5-2025-08-07", 1719)
    # cut before response.completed: the model from response.created, the text of every delta counted
    empty = payloads._event("response.output_text.delta", {"type": "response.output_text.delta", "delta": ""})
    cut = [*whole[:-1], empty]
    count = providers["openai"].counter.count
    for events in (cut, _data_only(cut)):
        row = _row(providers, book, "openai", "/v1/responses", request, reply=payloads.Reply(events=events))
        assert (row["usage_source"], row["model"]) == ("partial", "gpt-5-2025-08-07")
        assert row["output_tokens"] == count("".join(payloads.STREAM_TEXT), "gpt-5-2025-08-07")


@pytest.mark.parametrize("last,error", [
    (payloads._event("response.failed", {"type": "response.failed", "response": payloads._response_obj(
        "gpt-5-2025-08-07", "failed", {"input_tokens": 45, "output_tokens": 3})}), "response.failed"),
    (payloads._event("error", {"type": "error", "code": "server_error", "message": "oops"}), "server_error"),
    (payloads._event("error", {"code": "rate_limit_exceeded", "message": "slow down"}), "rate_limit_exceeded"),
    (payloads._data({"type": "error", "message": "oops"}), "error"),
])
def test_a_responses_stream_that_fails_says_how(providers, book, last, error):
    request = {"model": "gpt-5", "input": "hi", "stream": True}
    events = payloads.reply_for("/v1/responses", "", request).events[:3] + [last]
    row = _row(providers, book, "openai", "/v1/responses", request, reply=payloads.Reply(events=events))
    assert (row["error"], row["model"]) == (error, "gpt-5-2025-08-07")
    if last.startswith(b"event: response.failed"):  # billed for what it used, as reported
        assert (row["usage_source"], row["input_tokens"], row["output_tokens"]) == ("reported", 45, 3)


def _message_row(providers, book, usage: dict, model: str = payloads.SONNET) -> dict:
    body = json.dumps({"id": "msg_01", "type": "message", "role": "assistant", "model": model,
                       "content": [{"type": "text", "text": "Hi!"}], "stop_reason": "end_turn", "usage": usage})
    return _row(providers, book, "anthropic", "/v1/messages", {**MESSAGE, "model": "claude-sonnet-4-0"},
                reply=payloads.Reply(body=body.encode()))


def test_a_claude_message_stores_thinking_searches_the_cache_write_and_the_answering_model(providers, book):
    usage = {"input_tokens": 13, "output_tokens": 44, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 30,
             "cache_creation": {"ephemeral_1h_input_tokens": 20, "ephemeral_5m_input_tokens": 10},
             "output_tokens_details": {"thinking_tokens": 33}, "server_tool_use": {"web_search_requests": 2},
             "service_tier": "Priority"}
    row = _message_row(providers, book, usage)
    assert (row["model"], row["usage_source"], row["service_tier"]) == (payloads.SONNET, "reported", "priority")
    assert _tokens(row) == {"input_tokens": 13, "cache_read_tokens": 5, "cache_write_tokens": 30,
                            "cache_write_1h_tokens": 20, "output_tokens": 44, "reasoning_tokens": 33,
                            "web_search_requests": 2}
    # the total, when sent, is the cache write (the split may name only part of it)
    row = _message_row(providers, book, {**usage, "cache_creation_input_tokens": 40})
    assert (row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (40, 20)
    for field in ("input_tokens", "output_tokens"):
        row = _message_row(providers, book, {**usage, field: None})
        assert (row["usage_source"], row["error"]) == ("invalid", f"usage implausible: {field} is null")
    row = _message_row(providers, book, {**usage, "server_tool_use": None, "output_tokens_details": None})
    assert (row["web_search_requests"], row["reasoning_tokens"], row["usage_source"]) == (0, 0, "reported")
    row = _message_row(providers, book, {**usage, "server_tool_use": {"web_search_requests": 100_001}})
    assert row["error"] == ("usage implausible: server_tool_use.web_search_requests=100001 is not a whole number "
                            "from 0 to 100,000")


def test_a_claude_messages_web_fetches_are_counted_and_bounded_and_its_parts_never_exceed_their_whole(providers, book):
    usage = {"input_tokens": 13, "output_tokens": 4, "server_tool_use": {"web_fetch_requests": 100_000},
             "output_tokens_details": {"thinking_tokens": 9},  # more than the output: at most all of it
             "cache_creation_input_tokens": 10, "cache_creation": {"ephemeral_1h_input_tokens": 25}}
    row = _message_row(providers, book, usage)
    assert (row["usage_source"], row["web_fetch_requests"], row["output_tokens"], row["reasoning_tokens"],
            row["cache_write_tokens"], row["cache_write_1h_tokens"]) == ("reported", 100_000, 4, 4, 10, 10)
    row = _message_row(providers, book, {**usage, "server_tool_use": {"web_fetch_requests": 100_001}})
    assert (row["usage_source"], row["web_fetch_requests"], row["priced"]) == ("invalid", 0, False)
    assert row["error"] == ("usage implausible: server_tool_use.web_fetch_requests=100001 is not a whole number "
                            "from 0 to 100,000")


def _claude_stream(*, cut_after: int | None = None, error: dict | None = None) -> list[bytes]:
    """A streamed message with thinking, text and a tool call; ``cut_after``: events kept."""
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                  "model": payloads.SONNET, "content": [], "usage": {
                                                      "input_tokens": 377, "cache_read_input_tokens": 10,
                                                      "cache_creation_input_tokens": 30, "output_tokens": 1,
                                                      "cache_creation": {"ephemeral_1h_input_tokens": 30},
                                                      "server_tool_use": {"web_search_requests": 1},
                                                      "service_tier": "standard"}}}
    deltas = [{"type": "thinking_delta", "thinking": "The user wants the weather in Paris."},
              {"type": "text_delta", "text": "Let me look that up for you."},
              {"type": "input_json_delta", "partial_json": '{"city": "Paris", "units": "celsius"}'},
              {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}]
    events = [payloads._event("message_start", start), payloads._event("ping", {"type": "ping"})]
    events += [payloads._event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
               for d in deltas]
    if error is not None:
        return [*events, payloads._event("error", {"type": "error", "error": error})]
    events += [payloads._event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                                 "usage": {"input_tokens": None, "output_tokens": 3}}),
               payloads._event("message_stop", {"type": "message_stop"})]
    return events[:cut_after]


def test_a_claude_stream_cut_before_its_usage_counts_the_thinking_text_and_tool_input_that_came(providers, book):
    count = providers["anthropic"].counter.count
    request = {**MESSAGE, "model": "claude-sonnet-4-0", "stream": True}
    came = count("The user wants the weather in Paris.Let me look that up for you."
                 '{"city": "Paris", "units": "celsius"}', None)
    for events in (_claude_stream(cut_after=6), _data_only(_claude_stream(cut_after=6))):
        row = _row(providers, book, "anthropic", "/v1/messages", request, reply=payloads.Reply(events=events))
        assert (row["usage_source"], row["model"], row["service_tier"]) == ("partial", payloads.SONNET, "standard")
        seen = {"input_tokens": 377, "cache_read_tokens": 10, "cache_write_tokens": 30, "cache_write_1h_tokens": 30,
                "output_tokens": came, "web_search_requests": 1}
        assert _tokens(row) == seen
        assert row["cost_usd"] == book.price(TokenUsage(**seen), "anthropic", payloads.SONNET, row["ts"]).cost_usd
    # the usage of message_delta came, only message_stop did not: the larger of it and the text wins
    row = _row(providers, book, "anthropic", "/v1/messages", request,
               reply=payloads.Reply(events=_claude_stream(cut_after=-1)))
    assert (row["usage_source"], row["output_tokens"]) == ("partial", came)
    whole = _row(providers, book, "anthropic", "/v1/messages", request, reply=payloads.Reply(events=_claude_stream()))
    assert (whole["usage_source"], whole["input_tokens"], whole["output_tokens"]) == ("reported", 377, 3)
    # a whole message that reports no usage has nothing to estimate from: unpriced, never a crash
    row = _row(providers, book, "anthropic", "/v1/messages", MESSAGE,
               reply=_answer({"id": "msg_01", "type": "message", "model": payloads.SONNET, "content": []}))
    assert (row["usage_source"], row["priced"], row["error"]) == ("none", False, None)


def test_a_cut_claude_stream_whose_reported_output_covers_its_text_keeps_the_reported_thinking(providers, book):
    """Cut after message_delta: when the text that came counts no more tokens than the usage
    reported, the reported usage stands whole, thinking included; only a larger count replaces it."""
    count = providers["anthropic"].counter.count
    request = {**MESSAGE, "model": "claude-sonnet-4-0", "stream": True}
    came = count("The user wants the weather in Paris.Let me look that up for you."
                 '{"city": "Paris", "units": "celsius"}', None)
    for output in (came, came + 1):
        delta = payloads._event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                                  "usage": {"output_tokens": output,
                                                            "output_tokens_details": {"thinking_tokens": 9}}})
        row = _row(providers, book, "anthropic", "/v1/messages", request,
                   reply=payloads.Reply(events=[*_claude_stream(cut_after=-2), delta]))
        seen = {"input_tokens": 377, "cache_read_tokens": 10, "cache_write_tokens": 30, "cache_write_1h_tokens": 30,
                "output_tokens": output, "reasoning_tokens": 9, "web_search_requests": 1}
        assert (row["usage_source"], _tokens(row)) == ("partial", seen)
        assert row["cost_usd"] == book.price(TokenUsage(**seen), "anthropic", payloads.SONNET, row["ts"]).cost_usd


@pytest.mark.parametrize("error,stored", [({"type": "overloaded_error", "message": "Overloaded"}, "overloaded_error"),
                                          ({"message": "?"}, "error")])
def test_an_error_inside_a_claude_stream_is_the_rows_error(providers, book, error, stored):
    request = {**MESSAGE, "stream": True}
    for events in (_claude_stream(error=error), _data_only(_claude_stream(error=error))):
        row = _row(providers, book, "anthropic", "/v1/messages", request, reply=payloads.Reply(events=events))
        assert (row["error"], row["usage_source"], row["input_tokens"]) == (stored, "partial", 377)
    untyped = [*_claude_stream(cut_after=3), b"event: error\ndata: " + json.dumps({"error": error}).encode() + b"\n\n"]
    row = _row(providers, book, "anthropic", "/v1/messages", request, reply=payloads.Reply(events=untyped))
    assert row["error"] == stored  # named by its event line alone


def test_a_claude_stream_refused_before_message_start_costs_nothing_and_one_cut_there_is_estimated(providers, book):
    """An `error` event first (overloaded): Anthropic bills nothing, the row $0 with the error. Cut
    before any event: the request's text is estimated (it ran), never $0."""
    request = {**MESSAGE, "stream": True}
    refused = [b"event: error\ndata: " + json.dumps({"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}).encode() + b"\n\n"]
    row = _row(providers, book, "anthropic", "/v1/messages", request, reply=payloads.Reply(events=refused))
    assert (row["error"], row["input_tokens"], row["cost_usd"]) == ("overloaded_error", 0, 0)
    cut = _row(providers, book, "anthropic", "/v1/messages", request, reply=payloads.Reply(events=_claude_stream()),
               keep=0)
    assert cut["input_tokens"] == providers["anthropic"].counter.count(CHAT["messages"][0]["content"], None) > 0
    assert cut["cost_usd"] > 0


COMPLETE = {"model": "claude-2", "prompt": "\n\nHuman: Say hello\n\nAssistant:", "max_tokens_to_sample": 20}


def test_a_text_completion_is_estimated_from_its_prompt_and_completion(providers, book):
    count = providers["anthropic"].counter.count
    body = {"type": "completion", "id": "compl_01", "completion": " Hello there, how are you today?",
            "stop_reason": "stop_sequence", "model": "claude-2.1"}
    row = _row(providers, book, "anthropic", "/v1/complete", COMPLETE, reply=_answer(body))
    assert (row["usage_source"], row["model"], row["error"]) == ("estimated", "claude-2.1", None)
    assert _tokens(row) == {"input_tokens": count(COMPLETE["prompt"], None),
                            "output_tokens": count(body["completion"], None)}
    assert row["priced"] and row["cost_usd"] > 0
    row = _row(providers, book, "anthropic", "/v1/complete", COMPLETE,
               reply=_answer({**body, "completion": None}))
    assert (row["usage_source"], row["output_tokens"]) == ("estimated", 0)


def _completion_events(texts: list[str], stop: bool) -> list[bytes]:
    events = [payloads._event("completion", {"type": "completion", "completion": t, "stop_reason": None,
                                             "model": "claude-2.1"}) for t in texts]
    events.insert(1, payloads._event("ping", {"type": "ping"}))
    if stop:
        events.append(payloads._event("completion", {"type": "completion", "completion": "", "model": "claude-2.1",
                                                     "stop_reason": "stop_sequence"}))
    return events


def test_a_streamed_text_completion_is_estimated_and_a_cut_or_failed_one_says_so(providers, book):
    count = providers["anthropic"].counter.count
    texts = [" Hello", " there,", " how are you?"]
    request = {**COMPLETE, "stream": True}
    for events in (_completion_events(texts, True), _data_only(_completion_events(texts, True))):
        row = _row(providers, book, "anthropic", "/v1/complete", request, reply=payloads.Reply(events=events))
        assert (row["usage_source"], row["model"], row["stream"]) == ("estimated", "claude-2.1", True)
        assert row["output_tokens"] == count("".join(texts), None)
    row = _row(providers, book, "anthropic", "/v1/complete", request,
               reply=payloads.Reply(events=_completion_events(texts, False)))
    assert (row["usage_source"], row["output_tokens"]) == ("partial", count("".join(texts), None))
    for error, stored in (({"type": "overloaded_error", "message": "Overloaded"}, "overloaded_error"), ({}, "error")):
        for last in (payloads._event("error", {"type": "error", "error": error}),
                     payloads._data({"type": "error", "error": error}),
                     payloads._event("error", {"error": error})):
            failed = [*_completion_events(texts[:1], False), last]
            row = _row(providers, book, "anthropic", "/v1/complete", request, reply=payloads.Reply(events=failed))
            assert (row["error"], row["usage_source"]) == (stored, "partial")
    row = _row(providers, book, "anthropic", "/v1/complete", {**request, "prompt": ["not", "a", "prompt"]},
               reply=payloads.Reply(events=_completion_events(texts, True)))
    assert (row["usage_source"], row["input_tokens"]) == ("estimated", 0)


def _batch_rows(providers, book, provider: str, method: str, path: str, answer: bytes,
                content_type: str = "application/json") -> list[dict]:
    """The rows a batch API call gives (addon/batches.py): the call's own, then one per model of a results download."""
    meter = CallMeter(providers[provider], path, 7, "acme", "offline", time.time(), b"{}", "", method,
                      batch=providers[provider].batch_call(method, path))
    streamed = meter.start_response(200, content_type, "")
    if streamed:
        for start in range(0, len(answer), 100):
            meter.tap(answer[start:start + 100])
        meter.tap(b"")
    meter.finish(200, "completed", None, None if streamed else answer)
    return batches.rows(meter, build_row(meter, book), book)


def _lines(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_an_openai_batch_is_noted_at_creation_and_its_results_priced_per_model_at_the_batch_rate(providers, book):
    created = json.dumps({"id": "batch_abc", "object": "batch", "status": "validating", "output_file_id": None})
    [row] = _batch_rows(providers, book, "openai", "POST", "/v1/batches", created.encode())
    assert (row["endpoint"], row["cost_usd"]) == ("/v1/batches", Decimal(0))
    assert row[batches.NOTE] == {"created": "batch_abc"}
    done = json.dumps({"id": "batch_abc", "object": "batch", "status": "completed", "output_file_id": "file-xyz"})
    [row] = _batch_rows(providers, book, "openai", "GET", "/v1/batches/batch_abc", done.encode())
    assert row["endpoint"] == "/v1/batches/{batch_id}"
    assert row[batches.NOTE] == {"batch": "batch_abc", "results": "file-xyz"}
    for unlike in ({"id": "batch_abc", "object": "list", "output_file_id": "file-xyz"}, {"object": "batch", "id": 7},
                   {"id": "batch_abc", "object": "batch", "output_file_id": 7}):
        [row] = _batch_rows(providers, book, "openai", "GET", "/v1/batches/batch_abc", json.dumps(unlike).encode())
        assert batches.NOTE not in row, unlike
    [row] = _batch_rows(providers, book, "openai", "POST", "/v1/batches/batch_abc/cancel", created.encode())
    assert batches.NOTE not in row

    def line(n: int, model: str, status: int = 200) -> dict:
        body = {"id": f"chatcmpl-{n}", "object": "chat.completion", "model": model, "choices": [],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}
        return {"id": f"batch_req_{n}", "custom_id": f"r{n}", "response": {"status_code": status, "body": body}}
    results = _lines(line(1, "gpt-4o-2024-08-06"), line(2, "gpt-4o-2024-08-06"), line(3, "gpt-4o-mini-2024-07-18"),
                     line(4, "gpt-4o-2024-08-06", status=500))
    own, *models = _batch_rows(providers, book, "openai", "GET", "/v1/files/file-xyz/content", results,
                               "application/octet-stream")
    assert own["endpoint"] == "/v1/files/{file_id}/content"
    by_model = {r["model"]: r for r in models}
    assert {m: (r["input_tokens"], r["output_tokens"], r["service_tier"], r["endpoint"]) for m, r in by_model.items()} \
        == {"gpt-4o-2024-08-06": (200, 20, "batch", "/v1/batches"), "gpt-4o-mini-2024-07-18": (100, 10, "batch",
                                                                                             "/v1/batches")}
    assert by_model["gpt-4o-2024-08-06"][batches.NOTE]["results"] == "file-xyz"
    full = book.price(TokenUsage(input_tokens=100, output_tokens=10), "openai", "gpt-4o-2024-08-06", own["ts"])
    assert by_model["gpt-4o-2024-08-06"]["cost_usd"] == full.cost_usd  # two lines at half the price each
    # other methods on the batch paths are not batch calls (the call is still stored, alone)
    assert len(_batch_rows(providers, book, "openai", "DELETE", "/v1/files/file-xyz/content", results)) == 1


def test_a_batch_results_download_that_cannot_be_read_says_why_on_its_row_and_records_no_usage(providers, book):
    """The results file is not a metered path: its row says why no usage was read all the same."""
    path = "/v1/files/file-xyz/content"
    meter = CallMeter(providers["openai"], path, 7, "acme", "offline", time.time(), b"{}", "", "GET",
                      batch=providers["openai"].batch_call("GET", path))
    assert meter.start_response(200, "application/octet-stream", "compress")
    meter.tap(b"\x1f\x9d\x90")
    meter.tap(b"")
    meter.finish(200, "completed", None, None)
    [row] = batches.rows(meter, build_row(meter, book), book)
    assert (row["endpoint"], row["error"], row["cost_usd"]) == (
        "/v1/files/{file_id}/content", "usage unreadable: unsupported content-encoding 'compress'", Decimal(0))


def test_an_anthropic_batch_is_noted_and_its_results_url_points_back_through_the_proxy(providers, book):
    created = {"id": "msgbatch_01", "type": "message_batch", "processing_status": "in_progress", "results_url": None}
    [row] = _batch_rows(providers, book, "anthropic", "POST", "/v1/messages/batches", json.dumps(created).encode())
    assert (row["endpoint"], row[batches.NOTE]) == ("/v1/messages/batches", {"created": "msgbatch_01"})
    [row] = _batch_rows(providers, book, "anthropic", "GET", "/v1/messages/batches", json.dumps(created).encode())
    assert batches.NOTE not in row  # the list of batches: nothing created
    for unlike in ({"id": "msgbatch_01", "type": "message"}, {"type": "message_batch", "id": None}):
        [row] = _batch_rows(providers, book, "anthropic", "POST", "/v1/messages/batches", json.dumps(unlike).encode())
        assert batches.NOTE not in row
    for path, endpoint in (("/v1/messages/batches/msgbatch_01", "/v1/messages/batches/{message_batch_id}"),
                           ("/v1/messages/batches/msgbatch_01/cancel",
                            "/v1/messages/batches/{message_batch_id}/cancel")):
        [row] = _batch_rows(providers, book, "anthropic", "POST" if "cancel" in path else "GET", path, b"{}")
        assert row["endpoint"] == endpoint
    ended = json.dumps({**created, "processing_status": "ended",
                        "results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_01/results"}).encode()
    response = http.Response.make(200, ended, {"content-type": "application/json"})
    batches.point_results_here(response, providers["anthropic"])
    assert response.content == ended.replace(b"https://api.anthropic.com", b"")
    unchanged = http.Response.make(200, json.dumps(created).encode(), {"content-type": "application/json"})
    batches.point_results_here(unchanged, providers["anthropic"])
    assert unchanged.content == json.dumps(created).encode()

    def line(n: int, kind: str = "succeeded") -> dict:
        message = {"id": f"msg_{n}", "type": "message", "model": payloads.SONNET, "content": [],
                   "usage": {"input_tokens": 100, "output_tokens": 10, "cache_read_input_tokens": 5}}
        return {"custom_id": f"r{n}", "result": {"type": kind, **({"message": message} if kind == "succeeded" else {})}}
    results = _lines(line(1), line(2), line(3, "errored"), line(4, "expired"))
    own, model = _batch_rows(providers, book, "anthropic", "GET", "/v1/messages/batches/msgbatch_01/results", results,
                             "application/binary")
    assert own["endpoint"] == "/v1/messages/batches/{message_batch_id}/results"
    assert (model["model"], model["input_tokens"], model["cache_read_tokens"], model["output_tokens"],
            model["service_tier"]) == (payloads.SONNET, 200, 10, 20, "batch")
    assert model[batches.NOTE]["results"] == "msgbatch_01"  # the batch the usage is billed to
    assert model["cost_usd"] == book.price(TokenUsage(input_tokens=100, cache_read_tokens=5, output_tokens=10),
                                           "anthropic", payloads.SONNET, own["ts"]).cost_usd


def test_a_cut_chat_stream_counts_tool_call_pieces_and_text_in_the_models_own_encoding(providers, book):
    count = providers["openai"].counter.count
    text = "Très bien, merci. Voilà ce que j'ai trouvé à Zürich : 23 °C."
    assert count(text, "gpt-4") != count(text, None)  # gpt-4 counts in cl100k, the default is o200k
    messages = [{"role": "user", "name": "ana_maria_garcia_lopez", "content": text}, {"content": "Merci"}]
    model = "gpt-4-0613"
    came = [_chunk({"role": "assistant", "content": text, "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}]}, model),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Zürich"}'}}]}, model),
            _chunk({"tool_calls": ["not a call"]}, model), _chunk({"content": None}, model)]
    row = _row(providers, book, "openai", "/v1/chat/completions", {"model": "gpt-4", "messages": messages,
                                                                    "stream": True}, reply=payloads.Reply(events=came))
    prompt = 3 + 3 + sum(count(t, model) for t in ("user", "ana_maria_garcia_lopez", text)) + 3 + count("Merci", model)
    output = count(text + "get_weather" + '{"city": "Zürich"}', model)  # what came, counted as one text
    assert (row["usage_source"], row["input_tokens"], row["output_tokens"]) == ("partial", prompt, output)
    # an OpenAI-compatible provider's cut stream is estimated the same way
    row = _row(providers, book, "mistral", "/v1/chat/completions", {**CHAT, "model": "mistral-large-latest",
                                                                   "stream": True}, keep=3)
    assert row["usage_source"] == "partial" and row["input_tokens"] > 0 and row["output_tokens"] > 0


def test_a_cut_legacy_completion_stream_counts_its_text(providers, book):
    count = providers["openai"].counter.count
    pieces = ["Il était une fois, à Zürich,", "", " une très vieille horloge.", None]
    came = [payloads._data({"id": "cmpl-1", "object": "text_completion", "model": "gpt-3.5-turbo-instruct",
                            "choices": [{"index": 0, "text": t, "finish_reason": None}]}) for t in pieces]
    prompt = "Raconte-moi une histoire très courte sur Zürich."
    assert count(prompt, "gpt-3.5-turbo-instruct") != count(prompt, None)  # cl100k, not the default o200k
    request = {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "stream": True}
    row = _row(providers, book, "openai", "/v1/completions", request, reply=payloads.Reply(events=came))
    assert (row["usage_source"], row["input_tokens"]) == ("partial", count(prompt, "gpt-3.5-turbo-instruct"))
    assert row["output_tokens"] == count("Il était une fois, à Zürich, une très vieille horloge.",
                                         "gpt-3.5-turbo-instruct")


def test_embeddings_answered_without_usage_are_estimated_from_their_input(providers, book):
    count = providers["openai"].counter.count
    body = {"object": "list", "model": "text-embedding-3-small", "data": [{"object": "embedding", "embedding": [0.1]}]}
    request = {"model": "text-embedding-3-small", "input": ["Bonjour tout le monde", "Hello world"]}
    row = _row(providers, book, "openai", "/v1/embeddings", request, reply=_answer(body))
    assert (row["usage_source"], row["output_tokens"]) == ("estimated", 0)
    assert row["input_tokens"] == sum(count(t, "text-embedding-3-small") for t in request["input"])


def test_what_a_call_costs_follows_its_method_and_path_when_we_do_not_meter_it(providers, book):
    meter = CallMeter(providers["openai"], "/v1/responses/resp_123", 7, "acme", None, time.time(), b"", "", "GET")
    meter.start_response(200, "application/json", "")
    meter.finish(200, "completed", None, b"{}")
    row = build_row(meter, book)  # a GET reads: free
    assert (row["usage_source"], row["cost_usd"], row["priced"], row["error"]) == ("none", Decimal(0), True, None)
    meter = CallMeter(providers["openai"], "/v1/brand_new_api", 7, "acme", None, time.time(), b"{}", "", "POST")
    meter.start_response(200, "application/json", "")
    meter.finish(200, "completed", None, b"{}")
    row = build_row(meter, book)  # a call we cannot name is never claimed to cost $0
    assert (row["usage_source"], row["cost_usd"], row["priced"]) == ("unmetered", None, False)
    assert row["error"].startswith("not metered: openai bills /v1/brand_new_api")
    long = "/v1/brand_new_api/" + "x" * 300
    meter = CallMeter(providers["openai"], long, 7, "acme", None, time.time(), b"{}", "", "POST")
    meter.start_response(200, "application/json", "")
    meter.finish(200, "completed", None, b"{}")
    assert build_row(meter, book)["error"] == (f"not metered: openai bills {long[:200]}, AiSpendTrack does not read "
                                               "its usage (docs/coverage.md)")
    refused = _media_row(providers, book, "/v1/images/generations", "application/json",
                         json.dumps({"error": {"message": "Your prompt was rejected", "type": "invalid_request_error",
                                               "code": "content_policy_violation"}}).encode(),
                         {"model": "gpt-image-1", "prompt": "x"}, status=400)
    assert (refused["usage_source"], refused["cost_usd"], refused["priced"], refused["error"]) == (
        "none", Decimal(0), True, None)


def test_a_cut_responses_stream_counts_every_output_delta_the_tools_that_ran_and_the_tier_asked(providers, book):
    """Probe: a cut Responses stream counted only output_text deltas (a cut in a function call's
    arguments or a reasoning summary was 0 output tokens), no search that had run, and priced a
    priority call at the default rate."""
    count = providers["openai"].counter.count
    request = {"model": "gpt-5", "input": "Find it", "stream": True, "service_tier": "priority",
               "tools": [{"type": "web_search"}]}
    created = [payloads._event("response.created", {"type": "response.created", "response": {
        **payloads._response_obj("gpt-5-2025-08-07", "in_progress", None), "service_tier": "priority"}})]
    args, summary = '{"query": "weather in Par', "The user wants the forecast."
    events = [*created,
              payloads._event("response.output_item.done", {"type": "response.output_item.done", "item": {
                  "type": "web_search_call", "id": "ws_1", "status": "completed"}}),
              payloads._event("response.reasoning_summary_text.delta", {
                  "type": "response.reasoning_summary_text.delta", "delta": summary}),
              payloads._event("response.function_call_arguments.delta", {
                  "type": "response.function_call_arguments.delta", "delta": args})]
    row = _row(providers, book, "openai", "/v1/responses", request, reply=payloads.Reply(events=events))
    assert (row["usage_source"], row["output_tokens"]) == ("partial", count(summary + args, "gpt-5"))
    assert row["input_tokens"] == count("Find it", "gpt-5") + count(json.dumps(request["tools"]), "gpt-5")
    assert (row["web_search_requests"], row["service_tier"]) == (1, "priority")


def test_a_cut_claude_stream_keeps_the_web_searches_it_began(providers, book):
    """Probe: searches begun before the cut were billed, but message_start's usage (0 searches) was kept."""
    search = payloads._event("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}})
    events = payloads.anthropic_stream(payloads.WEB_SEARCH_START, payloads.WEB_SEARCH_DELTA, payloads.SONNET)
    cut = [*events[:3], search, search, *events[3:5]]  # before message_delta
    row = _row(providers, book, "anthropic", "/v1/messages", {**MESSAGE, "stream": True},
               reply=payloads.Reply(events=cut))
    assert (row["usage_source"], row["web_search_requests"], row["input_tokens"]) == ("partial", 2, 2679)


@pytest.mark.parametrize("usage", [{}, {"total_tokens": 900}])
def test_a_usage_without_counts_is_no_usage_not_a_usage_of_nothing(providers, book, usage):
    """Probe: ``usage: {}`` (or a total alone) was read as 0 tokens: $0.00, priced, "reported"."""
    body = {"id": "c-1", "object": "chat.completion", "model": "gpt-4o", "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}]}
    row = _row(providers, book, "openai", "/v1/chat/completions", CHAT, reply=_answer(body))
    assert row["usage_source"] == "estimated" and row["input_tokens"] > 0 and row["cost_usd"] > 0


def test_a_groq_stream_without_usage_asked_for_takes_its_x_groq_usage(providers, book):
    """Probe: with no usage requested (a compressed request body, or injection off), Groq's own
    x_groq.usage in the last chunk was ignored and the call estimated with our tokenizer."""
    model = "llama-3.3-70b-versatile"
    chunks = [{"id": "c", "object": "chat.completion.chunk", "model": model,
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
              {"id": "c", "object": "chat.completion.chunk", "model": model,
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "x_groq": {"id": "req_1", "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}}}]
    events = [*(payloads._data(c) for c in chunks), payloads._data("[DONE]")]
    row = _row(providers, book, "groq", "/v1/chat/completions", {**CHAT, "model": model, "stream": True},
               reply=payloads.Reply(events=events))
    assert (row["usage_source"], _tokens(row)) == ("reported", {"input_tokens": 40, "output_tokens": 12})


def test_a_background_response_answered_queued_is_unpriced_not_its_prompt_alone(providers, book):
    """Probe: a background run (200K tokens in, 30 searches: $3.50) was stored at its prompt's
    estimate, $0.00005: its usage comes only with GET /v1/responses/{id}, when it has run."""
    request = {"model": "o3-deep-research", "input": "Research the market", "background": True}
    queued = {"id": "resp_1", "object": "response", "status": "queued", "background": True,
              "model": "o3-deep-research-2025-06-26", "output": [], "usage": None}
    row = _row(providers, book, "openai", "/v1/responses", request, reply=_answer(queued))
    assert (row["usage_source"], row["cost_usd"], row["priced"], _tokens(row)) == ("none", None, False, {})
    assert row["error"] == ("usage unknown: a background response is billed when it has run: its usage comes with "
                            "GET /v1/responses/{id}, which is not metered (docs/coverage.md)")
    # Streamed, and cut: the run goes on upstream and is billed whole; the part seen is not the bill.
    events = [payloads._event("response.created", {"type": "response.created", "response": {
        **payloads._response_obj("o3-deep-research-2025-06-26", "queued", None), "background": True}}),
        payloads._event("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Start"})]
    cut = _row(providers, book, "openai", "/v1/responses", {**request, "stream": True},
               reply=payloads.Reply(events=events))
    assert (cut["usage_source"], cut["cost_usd"], cut["error"]) == ("none", None, row["error"])
    done = {**queued, "status": "completed", "background": False,
            "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}}
    row = _row(providers, book, "openai", "/v1/responses", {**request, "background": False}, reply=_answer(done))
    assert (row["usage_source"], _tokens(row)) == ("reported", {"input_tokens": 10, "output_tokens": 5})


@pytest.mark.parametrize("provider, method, path", [
    # Probe: each was stored at $0.00, priced, for a call its provider bills.
    ("mistral", "POST", "/v1/conversations"), ("mistral", "POST", "/v1/conversations/conv_1/restart"),
    ("mistral", "POST", "/v1/moderations"), ("groq", "POST", "/v1/batches"), ("together", "POST", "/v1/batches"),
    ("x-ai", "POST", "/v1/batches"), ("x-ai", "GET", "/v1/realtime"), ("azure", "GET", "/openai/realtime"),
    ("google", "GET", "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"),
    ("vertex", "GET", "/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent"),
    ("google", "POST", "/v1beta/tunedModels/my-model-1:generateContent"),
])
def test_calls_other_providers_bill_where_openais_of_the_same_path_are_free_are_unpriced(providers, book, provider,
                                                                                        method, path):
    meter = CallMeter(providers[provider], path, 7, "acme", None, time.time(), b"{}", "", method)
    meter.start_response(101 if path.endswith(("realtime", "BidiGenerateContent")) else 200, "application/json", "")
    meter.finish(meter.status or 200, "completed", None, b"{}")
    row = build_row(meter, book)
    assert (row["usage_source"], row["cost_usd"], row["priced"]) == ("unmetered", None, False), path
    assert row["error"].startswith(f"not metered: {provider} bills ")


@pytest.mark.parametrize("provider, method, path", [
    ("groq", "GET", "/v1/files/file_1/content"), ("mistral", "GET", "/v1/models"),
    ("together", "POST", "/v1/batches/batch_1/cancel"), ("openai", "POST", "/v1/moderations"),
    ("openai", "POST", "/v1/conversations"), ("google", "GET", "/v1beta/tunedModels/my-model-1"),
    # reads of a metered path: the SDK's chat.completions.list() (stored completions), a HEAD
    ("openai", "GET", "/v1/chat/completions"), ("openai", "HEAD", "/v1/chat/completions"),
    ("anthropic", "HEAD", "/v1/messages"), ("mistral", "GET", "/v1/chat/completions"),
])
def test_what_is_free_at_openai_or_at_every_compatible_api_costs_nothing(providers, book, provider, method, path):
    """A read of a metered path was stored unpriced, counted in reports and `prices check` as a
    call with a price missing."""
    meter = CallMeter(providers[provider], path, 7, "acme", None, time.time(), b"{}", "", method)
    meter.start_response(200, "application/json", "")
    meter.finish(200, "completed", None, b"{}")
    assert (build_row(meter, book)["cost_usd"], build_row(meter, book)["priced"]) == (Decimal(0), True), path


@pytest.mark.parametrize("provider, path", [("openai", "/v1/realtime"), ("openai", "/v1/responses"),
                                            ("x-ai", "/v1/responses")])
def test_a_websocket_a_get_opens_on_a_metered_path_is_not_a_free_read(providers, book, provider, path):
    """The realtime API and the Responses API's WebSocket mode open with a GET, billed per response."""
    meter = CallMeter(providers[provider], path, 7, "acme", None, time.time(), b"", "", "GET", upgrade=True)
    meter.start_response(101, "", "")
    meter.finish(101, "completed", None, b"")
    row = build_row(meter, book)
    assert (row["cost_usd"], row["priced"]) == (None, False), row


@pytest.mark.parametrize("value,shown", [("x" * 38, repr("x" * 38)), ("x" * 39, repr("x" * 39)[:40] + "..."),
                                         (2.5, "2.5")])
def test_a_count_that_is_not_a_whole_number_is_shown_in_the_error_at_most_40_characters_long(providers, book, value,
                                                                                              shown):
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": value}}
    body = {"id": "x", "object": "chat.completion", "model": "gpt-4o", "choices": [], "usage": usage}
    row = _row(providers, book, "openai", "/v1/chat/completions", CHAT, reply=_answer(body))
    assert row["error"] == (f"usage implausible: cached_tokens={shown} is not a whole number "
                            "from 0 to 100,000,000")


def test_gemini_rows_take_the_answering_model_and_never_more_cache_than_prompt(providers, book):
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    usage = {"promptTokenCount": 10, "cachedContentTokenCount": 50, "candidatesTokenCount": 4, "thoughtsTokenCount": 6}
    body = {**_gemini_chunk("Hi", usage, modelVersion="gemini-2.5-flash-001"), "responseId": "r"}
    body["candidates"][0]["finishReason"] = "STOP"
    row = _row(providers, book, "google", path, {"contents": []}, reply=_answer(body))
    assert (row["model"], row["usage_source"]) == ("gemini-2.5-flash-001", "reported")
    assert _tokens(row) == {"cache_read_tokens": 10, "output_tokens": 10, "reasoning_tokens": 6}
    # a JSON-array answer (no alt=sse) whose items are not all chunks
    row = _row(providers, book, "google", "/v1/models/gemini-2.5-pro:streamGenerateContent", {"contents": []},
               reply=_answer([None, "x", _gemini_chunk("Hi", {"promptTokenCount": 3, "candidatesTokenCount": 2})]))
    assert (row["model"], row["usage_source"], _tokens(row)) == ("gemini-2.5-pro", "reported",
                                                                 {"input_tokens": 3, "output_tokens": 2})


def test_a_gemini_stream_ends_with_a_finish_reason_and_an_error_without_status_is_still_an_error(providers, book):
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    running = {"promptTokenCount": 9, "candidatesTokenCount": 3}
    finished = _gemini_chunk(".", running | {"candidatesTokenCount": 4})
    finished["candidates"][0]["finishReason"] = "STOP"
    events = [payloads._data(_gemini_chunk("Hi", running)), payloads._data({"candidates": []}),
              payloads._data(finished)]
    row = _row(providers, book, "google", path, {"contents": []}, reply=payloads.Reply(events=events))
    assert (row["usage_source"], row["error"], _tokens(row)) == ("reported", None, {"input_tokens": 9,
                                                                                    "output_tokens": 4})
    erred = [payloads._data(_gemini_chunk("Hi", running)), payloads._data({"error": {"code": 500}})]
    row = _row(providers, book, "google", path, {"contents": []}, reply=payloads.Reply(events=erred))
    assert (row["error"], row["usage_source"], row["output_tokens"]) == ("error", "partial", 3)
    row = _row(providers, book, "google", path, {"contents": []},
               reply=payloads.Reply(events=[payloads._data({"candidates": [{"content": {"parts": []}}]})]))
    assert (row["usage_source"], row["cost_usd"], row["priced"]) == ("none", None, False)  # cut before any totals
    row = _row(providers, book, "google", "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": []},
               reply=_answer({"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finishReason": "STOP"}]}))
    assert (row["usage_source"], row["priced"], row["error"]) == ("none", False, None)  # answered without totals


def test_geminis_openai_compatible_api_is_read_as_openais_and_priced_as_geminis(providers, book):
    path = "/v1beta/openai/chat/completions"
    body = {"id": "g1", "object": "chat.completion", "model": "models/gemini-2.5-flash", "choices": [],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}}
    request = {"model": "gemini-flash-latest", "messages": CHAT["messages"]}  # an alias: the answer names the model
    row = _row(providers, book, "google", path, request, reply=_answer(body))
    assert (row["provider"], row["endpoint"], row["model"], row["usage_source"]) == (
        "google", path, "gemini-2.5-flash", "reported")
    assert row["cost_usd"] == (1200 * Decimal("0.30") + 300 * Decimal("2.50")) / 1_000_000  # $0.30 and $2.50 per MTok
    row = _row(providers, book, "google", path, {**request, "stream": True},
               reply=payloads.Reply(events=payloads.chat_stream(include_usage=False)[:4]))
    assert (row["usage_source"], row["input_tokens"] > 0, row["output_tokens"] > 0) == ("partial", True, True)
    row = _row(providers, book, "google", "/v1beta/openai/embeddings", {"model": "gemini-embedding-001", "input": "hi"},
               reply=_answer({"object": "list", "model": "gemini-embedding-001", "data": [],
                              "usage": {"prompt_tokens": 800, "total_tokens": 800}}))
    assert (row["model"], row["input_tokens"], row["usage_source"]) == ("gemini-embedding-001", 800, "reported")


def test_a_cohere_stream_reads_its_end_whatever_its_framing_and_counts_only_text(providers, book):
    count = providers["cohere"].counter.count
    reply = payloads.reply_for("/v2/chat", "", {**COHERE, "stream": True})
    data_only = [*_data_only(reply.events), payloads._data("[DONE]")]
    row = _row(providers, book, "cohere", "/v2/chat", {**COHERE, "stream": True},
               reply=payloads.Reply(events=data_only))
    assert (row["usage_source"], _tokens(row)) == ("reported", {"input_tokens": 21, "output_tokens": 105})
    odd = [payloads._data({"type": "content-delta", "index": 1, "delta": {"message": {"content": content}}})
           for content in (["not text"], {"text": ""}, {}, {"text": " Zürich liegt am Zürichsee."})]
    cut = [*reply.events[:-2], *odd]  # no content-end, no message-end
    row = _row(providers, book, "cohere", "/v2/chat", {**COHERE, "stream": True}, reply=payloads.Reply(events=cut))
    expected = count("".join(payloads.STREAM_TEXT) + " Zürich liegt am Zürichsee.", None)
    assert (row["usage_source"], row["output_tokens"]) == ("partial", expected)
    # a whole answer that reports no usage has nothing to estimate from: unpriced, never a crash
    row = _row(providers, book, "cohere", "/v2/chat", COHERE,
               reply=_answer({"id": "c-1", "finish_reason": "COMPLETE", "message": {"content": []}}))
    assert (row["usage_source"], row["priced"], row["error"]) == ("none", False, None)


def test_stray_events_that_are_not_json_objects_neither_break_the_row_nor_hide_the_text_after_them(providers, book):
    count = providers["openai"].counter.count
    stray = [payloads._data("[1, 2]"), payloads._data('"keep-alive"'), payloads._data("not json")]
    came = [_chunk({"role": "assistant", "content": "Bonjour"}), *stray, _chunk({"content": " tout le monde"})]
    row = _row(providers, book, "openai", "/v1/chat/completions", STREAMED, reply=payloads.Reply(events=came))
    assert (row["usage_source"], row["error"]) == ("partial", None)
    assert row["output_tokens"] == count("Bonjour tout le monde", "gpt-4o-2024-08-06")
    request = {"model": "gpt-5", "input": "hi", "stream": True}
    whole = payloads.reply_for("/v1/responses", "", request).events
    odd = payloads._event("response.created", {"type": "response.created", "response": ["not", "an", "object"]})
    row = _row(providers, book, "openai", "/v1/responses", request,
               reply=payloads.Reply(events=[odd, *whole[1:3], *stray, *whole[3:-1]]))
    assert (row["usage_source"], row["error"]) == ("partial", None)
    assert row["output_tokens"] == count("".join(payloads.STREAM_TEXT), "gpt-5")
    claude = [*_claude_stream(cut_after=3), payloads._event("content_block_delta", {"type": "content_block_delta",
                                                                                 "delta": ["x"]}),
              *stray, *_claude_stream(cut_after=6)[3:]]
    row = _row(providers, book, "anthropic", "/v1/messages", {**MESSAGE, "stream": True},
               reply=payloads.Reply(events=claude))
    assert (row["usage_source"], row["error"], row["input_tokens"]) == ("partial", None, 377)
    assert row["output_tokens"] == count("The user wants the weather in Paris.Let me look that up for you."
                                         '{"city": "Paris", "units": "celsius"}', None)


def test_a_call_that_got_no_answer_costs_nothing_known_and_keeps_its_error(providers, book):
    meter = CallMeter(providers["openai"], "/v1/chat/completions", 7, "acme", None, time.time(),
                      json.dumps(CHAT).encode(), "")
    meter.finish(None, "upstream_failed", "upstream unreachable: connection refused")
    row = build_row(meter, book)
    assert (row["status"], row["outcome"], row["error"]) == (None, "upstream_failed",
                                                             "upstream unreachable: connection refused")
    assert (row["usage_source"], row["cost_usd"], row["priced"], row["ttft_ms"]) == ("none", Decimal(0), True, None)


def test_a_stream_we_cannot_decode_says_why_only_where_we_meter(providers, book):
    def row_for(path: str, method: str = "POST") -> dict:
        meter = CallMeter(providers["openai"], path, 7, "acme", None, time.time(), json.dumps(STREAMED).encode(), "",
                          method)
        meter.start_response(200, "text/event-stream", "compress")
        for piece in payloads.chat_stream(include_usage=True):
            meter.tap(piece)
        meter.tap(b"")
        meter.finish(200, "completed", None)
        return build_row(meter, book)
    row = row_for("/v1/chat/completions")
    assert row["error"] == "usage unreadable: unsupported content-encoding 'compress'"
    assert (row["usage_source"], row["cost_usd"]) == ("none", None)  # unpriced, never the request's estimate
    assert row_for("/v1/models", "GET")["error"] is None  # free, nothing to read


def test_a_compressed_request_is_read_for_its_estimate_and_an_unreadable_one_is_not(providers, book):
    count = providers["openai"].counter.count
    request = {"model": "gpt-4o", "input": "Summarise the history of Zürich in three sentences.", "stream": True}

    def cut_row(body: bytes) -> dict:
        meter = CallMeter(providers["openai"], "/v1/responses", 7, "acme", None, time.time(), body, "gzip")
        meter.start_response(200, "text/event-stream", "")
        meter.tap(b'data: {"partial": true')
        meter.tap(b"")
        meter.finish(200, "completed", None)
        return build_row(meter, book)
    row = cut_row(gzip.compress(json.dumps(request).encode()))
    assert (row["usage_source"], row["input_tokens"]) == ("partial", count(request["input"], "gpt-4o"))
    row = cut_row(b"this is not gzip")
    assert (row["usage_source"], row["priced"], row["model"], row["error"]) == ("none", False, None, None)


def test_a_chat_answer_without_usage_or_request_is_unpriced_without_a_reason_to_invent(providers, book):
    meter = CallMeter(providers["openai"], "/v1/chat/completions", 7, "acme", None, time.time(), None, "")
    meter.start_response(200, "application/json", "")
    meter.finish(200, "completed", None, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
    row = build_row(meter, book)
    assert (row["usage_source"], row["priced"], row["cost_usd"], row["error"]) == ("none", False, None, None)


def _server_tool(n: int, name: str) -> dict:
    return {"type": "server_tool_use", "id": f"srvtoolu_{n}", "name": name, "input": {"command": "ls"}}


CONTAINER = {"id": "container_011CT9dc", "expires_at": "2026-12-03T17:00:00Z", "skills": None}


def _code_run_blocks() -> list[dict]:
    """Claude's content running code twice (bash, then the text editor), searching once and calling
    the client's own tool that happens to be named like a code tool."""
    return [_server_tool(1, "bash_code_execution"),
            {"type": "bash_code_execution_tool_result", "tool_use_id": "srvtoolu_1", "content": {
                "type": "bash_code_execution_result", "stdout": "42\n", "stderr": "", "return_code": 0,
                "content": []}},
            _server_tool(2, "text_editor_code_execution"), _server_tool(3, "web_search"),
            {"type": "tool_use", "id": "toolu_4", "name": "code_execution", "input": {}},  # the client's tool
            {"type": "text", "text": "Done.", "citations": None}]


def _code_run_stream(named: bool) -> payloads.Reply:
    """Claude running code twice in one container (bash, then the text editor), searching once and
    calling the client's own tool that happens to be named like a code tool, streamed as the
    Messages API streams it; ``named``: with its `event:` lines, else data lines only."""
    blocks = _code_run_blocks()
    start = {"id": "msg_01", "type": "message", "role": "assistant", "model": payloads.SONNET, "content": [],
             "stop_reason": None, "container": None,
             "usage": {"input_tokens": 2679, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                       "output_tokens": 3}}
    events: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(blocks):
        events += [("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}),
                   ("content_block_stop", {"type": "content_block_stop", "index": index})]
    events += [("message_delta", {"type": "message_delta", "delta": {
                   "stop_reason": "end_turn", "stop_sequence": None, "container": CONTAINER},
                   "usage": {"input_tokens": 10682, "output_tokens": 510,
                             "server_tool_use": {"web_search_requests": 1}}}),
               ("message_stop", {"type": "message_stop"})]
    lines = [(f"event: {name}\n" if named else "") + f"data: {json.dumps(body)}\n\n" for name, body in events]
    return payloads.Reply(events=[line.encode() for line in lines])


@pytest.mark.parametrize("named", [True, False], ids=["event lines", "data only"])
def test_a_streamed_anthropic_call_counts_its_code_runs_and_their_container(providers, book, named):
    row = _row(providers, book, "anthropic", "/v1/messages", {**MESSAGE, "stream": True},
               reply=_code_run_stream(named))
    assert (row["input_tokens"], row["output_tokens"], row["priced"]) == (10682, 510, True)
    assert row["usage_source"] == "estimated"  # the tokens are reported, the container's time is not
    assert (row["code_executions"], row["containers"], row["web_search_requests"]) == (2, 1, 1)
    assert row["error"].startswith("tool fee estimated: Anthropic bills code execution by container time")


def _code_run_message(**changed) -> payloads.Reply:
    message = {"id": "msg_01", "type": "message", "role": "assistant", "model": payloads.SONNET,
               "content": _code_run_blocks(), "stop_reason": "end_turn", "container": CONTAINER,
               "usage": {"input_tokens": 10682, "output_tokens": 510, "server_tool_use": {"web_search_requests": 1}}}
    return payloads.Reply(body=json.dumps({**message, **changed}, separators=(",", ":")).encode())


def test_a_whole_anthropic_message_counts_its_code_runs_and_their_container(providers, book):
    row = _row(providers, book, "anthropic", "/v1/messages", MESSAGE, reply=_code_run_message())
    assert (row["input_tokens"], row["output_tokens"], row["priced"]) == (10682, 510, True)
    assert row["usage_source"] == "estimated"  # the tokens are reported, the container's time is not
    assert (row["code_executions"], row["containers"], row["web_search_requests"]) == (2, 1, 1)
    assert row["error"].startswith("tool fee estimated: Anthropic bills code execution by container time")
    # Runs without a container named bill nothing by time; a message without a content list ran nothing.
    for changed, runs in (({"container": None}, 2), ({"container": None, "content": None}, 0)):
        row = _row(providers, book, "anthropic", "/v1/messages", MESSAGE, reply=_code_run_message(**changed))
        assert (row["code_executions"], row["containers"], row["usage_source"], row["error"]) == \
            (runs, 0, "reported", None), changed


def test_a_messages_code_runs_are_counted_up_to_the_bound_and_past_it_not_at_all(providers, book):
    run = {"type": "server_tool_use", "name": "code_execution"}  # cut to what counts it: 5 MB of them
    for runs, counted in ((100_000, 100_000), (100_001, 0)):
        reply = _code_run_message(content=[run] * runs)
        row = _row(providers, book, "anthropic", "/v1/messages", MESSAGE, reply=reply)
        assert (row["code_executions"], row["containers"], row["output_tokens"]) == \
            (counted, 1 if counted else 0, 510), runs


def test_a_cut_claude_stream_keeps_the_code_runs_container_and_web_fetches_it_saw(providers, book):
    """Cut after message_delta, its text counting more tokens than the usage said: the output is our
    count, and the tools the content and the usage named stay on the row."""
    text = "Let me run that for you, then read the two pages it names."
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                  "model": payloads.SONNET, "content": [],
                                                  "usage": {"input_tokens": 2679, "output_tokens": 1}}}
    events = [payloads._event("message_start", start),
              payloads._event("content_block_start", {"type": "content_block_start", "index": 0,
                                                      "content_block": _server_tool(1, "bash_code_execution")}),
              payloads._event("content_block_delta", {"type": "content_block_delta", "index": 1,
                                                      "delta": {"type": "text_delta", "text": text}}),
              payloads._event("message_delta", {"type": "message_delta",
                                                 "delta": {"stop_reason": None, "container": CONTAINER},
                                                 "usage": {"output_tokens": 1,
                                                           "server_tool_use": {"web_fetch_requests": 2}}})]
    row = _row(providers, book, "anthropic", "/v1/messages", {**MESSAGE, "stream": True},
               reply=payloads.Reply(events=events))
    output = providers["anthropic"].counter.count(text, None)
    assert output > 1 and (row["usage_source"], row["input_tokens"], row["output_tokens"]) == ("partial", 2679, output)
    assert (row["code_executions"], row["containers"], row["web_fetch_requests"]) == (1, 1, 2)


@pytest.mark.parametrize("outcome", ["proxy_stopped", "client_disconnected"])
def test_a_call_cut_before_its_answer_has_a_cost_unknown_not_zero(providers, book, outcome):
    """Forwarded, then the proxy stopped (or the client left) before the provider answered: the
    provider may have run it, yet it was stored as a priced $0 (read as free) and added nothing to
    budgets. Its request's tokens are counted, as an estimate, and the row says so."""
    meter = CallMeter(providers["openai"], "/v1/chat/completions", 7, "acme", None, time.time(),
                      json.dumps(CHAT).encode(), "")
    meter.finish(None, outcome, "the proxy stopped before the call ended")
    row = build_row(meter, book)
    assert (row["usage_source"], row["priced"], row["output_tokens"]) == ("partial", True, 0), row
    assert row["input_tokens"] > 0 and row["cost_usd"] > 0  # at least what its prompt costs, flagged estimated
    assert row["status"] is None and row["outcome"] == outcome
