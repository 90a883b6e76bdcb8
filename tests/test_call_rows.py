"""The row stored for a finished call, built in-process from the provider's bytes as they arrive.

Each provider's response (tests/payloads.py, usage copied from real captures) goes through the same
meter and row builder the proxy uses; the row must carry the tokens the provider reported, a cost
equal to those tokens priced, and where the usage came from (``usage_source``). These run in
milliseconds, so mutation testing (.ci/mutation) can run them against every change.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from addon.estimate import Counter
from addon.meter import CallMeter
from addon.providers import all_providers
from addon.record import build_row
from pricing import PriceBook, TokenUsage

from . import payloads

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
STREAMED = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
MESSAGE = {"model": payloads.SONNET, "max_tokens": 10, "messages": CHAT["messages"]}
COHERE = {"model": "command-r-plus-08-2024", "messages": CHAT["messages"]}


@pytest.fixture(scope="module")
def providers(tmp_path_factory):
    counter = Counter(tmp_path_factory.mktemp("cache") / "tiktoken")
    counter.load_in_background().join(60)
    return {p.name: p for p in all_providers(counter)}


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    return PriceBook(tmp_path_factory.mktemp("prices") / "prices.toml")


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
    assert row["priced"] and row["cost_usd"] == expected.cost_usd > 0
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
    body = {"object": "list", "model": "text-embedding-3-large",  # the model that answered, not the one asked
            "data": [{"object": "embedding", "index": n, "embedding": [0.0123456789] * 1536} for n in range(600)],
            "usage": usage}
    reply = payloads.Reply(body=json.dumps(body, separators=(",", ":")).encode())
    assert len(reply.body) > 9 * 1024 * 1024
    row = _row(providers, book, "openai", "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["hi"]},
               reply=reply)
    assert (row["model"], row["usage_source"], _tokens(row)) == \
        ("text-embedding-3-large", "reported", {"input_tokens": 3_000_000})
    assert row["cost_usd"] == Decimal("0.39")  # $0.13 per 1M tokens


@pytest.mark.parametrize("provider,status,expected", [
    ("anthropic", 429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
    ("anthropic", 404, {"type": "error", "error": {"type": "not_found_error", "message": "slow down"}}),
    ("anthropic", 503, {"type": "error", "error": {"type": "api_error", "message": "slow down"}}),
    ("anthropic", 409, {"type": "error", "error": {"type": "invalid_request_error", "message": "slow down"}}),
    ("google", 429, {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}),
    ("google", 401, {"error": {"code": 401, "message": "slow down", "status": "UNAUTHENTICATED"}}),
    ("google", 418, {"error": {"code": 418, "message": "slow down", "status": "FAILED_PRECONDITION"}}),
    ("cohere", 429, {"message": "slow down"}),
])
def test_our_refusals_come_in_the_shape_each_providers_sdk_reads(providers, provider, status, expected):
    assert json.loads(providers[provider].error_body(status, "slow down", "aispendtrack_limit")) == expected


def _chunk(delta: dict) -> bytes:
    return payloads._data({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06",
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
    embed = payloads.Reply(body=json.dumps({"id": "e-1", "embeddings": {"float": [[0.1, 0.2]]}, "texts": ["hi"],
                                            "meta": {"api_version": {"version": "2"},
                                                     "billed_units": {"input_tokens": 12}}}).encode())
    row = _row(providers, book, "cohere", "/v2/embed", {"model": "embed-english-v3.0", "texts": ["hi"]}, reply=embed)
    assert (row["usage_source"], _tokens(row)) == ("reported", {"input_tokens": 12})
    failed = [b'event: content-delta\ndata: {"type": "content-delta", "index": 0, '
              b'"delta": {"message": {"content": {"text": "Hel"}}}}\n\n',
              b'event: message-end\ndata: {"type": "message-end", "delta": {"finish_reason": "ERROR", "usage": '
              b'{"billed_units": {"input_tokens": 21, "output_tokens": 1}}}}\n\n']
    row = _row(providers, book, "cohere", "/v2/chat", {**COHERE, "stream": True}, reply=payloads.Reply(events=failed))
    assert row["error"] == "ERROR" and _tokens(row) == {"input_tokens": 21, "output_tokens": 1}


def test_a_cut_cohere_stream_counts_the_text_that_came(providers, book):
    count = providers["cohere"].counter.count
    row = _row(providers, book, "cohere", "/v2/chat", {**COHERE, "stream": True}, keep=-1)  # no message-end
    assert row["usage_source"] == "partial"
    assert row["output_tokens"] == count("".join(payloads.STREAM_TEXT), COHERE["model"])


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
    assert unreadable["error"].startswith("usage unreadable: ") and unreadable["status"] == 200
    # estimated from the request, as a call cut short would be
    assert (unreadable["usage_source"], unreadable["priced"]) == ("partial", True) and unreadable["input_tokens"] > 0
