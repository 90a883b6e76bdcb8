"""The rows of AWS Bedrock and Vertex AI calls and the forward mode's routing by host, in-process.

tests/test_forward.py and tests/test_vertex.py drive the same calls end to end through a proxy
subprocess, which mutation testing cannot see into (it imports the original code). Here each
provider's recorded bytes go through the meter and row builder the proxy uses, as in
tests/test_call_rows.py: Bedrock's binary event stream framed by tests/bedrock_upstream.py's
encoder, its usage headers and invocation metrics, Vertex's paths for both publishers.

Rates (genai-prices, USD per 1M tokens): Claude Sonnet 4.5 on Bedrock 3 in / 0.30 cache read /
3.75 cache write / 15 out by a global profile, 10% more by a regional one (us.); Mistral Large
(2402) on Bedrock 4 in / 12 out; on Vertex (``google``) gemini-2.5-flash 0.30 in / 0.03 cached /
2.50 out, claude-sonnet-4-5 as Anthropic's list, claude-haiku-4-5 1 in / 0.10 cache read / 5 out.
"""

from __future__ import annotations

import base64
import json
import time
from decimal import Decimal

import pytest
from mitmproxy.http import Headers

from addon.core import reprice
from addon.eventstream import EventStreamDecoder
from addon.meter import CallMeter
from addon.providers.bedrock import ConverseStream, InvokeStream
from addon.providers.vertex import vertex_host
from addon.record import MAX_REQUEST_PARSE_BYTES, build_row
from addon.routing import Misrouted, route, route_host
from pricing import PriceBook, TokenUsage

from . import bedrock_upstream as aws
from . import vertex_upstream as gcp

M = Decimal(1_000_000)
EVENT_STREAM = "application/vnd.amazon.eventstream"
CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"  # a regional inference profile
CLAUDE_GLOBAL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
MISTRAL = "mistral.mistral-large-2402-v1:0"
LLAMA = "meta.llama3-70b-instruct-v1:0"
BEDROCK_MESSAGE = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "hi"}]}
VERTEX = f"/v1/projects/{gcp.PROJECT}/locations/us-central1/publishers"
VERTEX_ENDPOINT = "/v1/projects/{{project}}/locations/{{location}}/publishers/{publisher}/models/{{model}}:{method}"


def _row(providers, book, provider: str, path: str, content_type: str, answer: bytes | list[bytes],
         request: dict | None = None, headers: dict[str, str] | None = None, status: int = 200,
         keep: int | None = None) -> dict:
    """The row of a call answered with ``answer``: one body, or a stream's messages (the first ``keep``
    of them), cut every 37 bytes across message boundaries as a network does."""
    meter = CallMeter(providers[provider], path, 7, "acme", "chat", time.time(),
                      json.dumps(request or {}).encode(), "")
    meter.response_headers = Headers([(k.encode(), v.encode()) for k, v in (headers or {}).items()])
    streamed = meter.start_response(status, content_type, "")
    if streamed:
        wire = b"".join(answer[:keep] if isinstance(answer, list) else [answer])
        for start in range(0, len(wire), 37):
            meter.tap(wire[start:start + 37])
        meter.tap(b"")
    meter.finish(status, "completed", None, None if streamed else answer)  # type: ignore[arg-type]
    return build_row(meter, book)


def _tokens(row: dict) -> tuple:
    return (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"],
            row["reasoning_tokens"])


def _usd(*priced: tuple[int, str]) -> Decimal:
    return sum((tokens * Decimal(rate) for tokens, rate in priced), Decimal(0)) / M


def _chunk(event: dict) -> bytes:
    """An InvokeModelWithResponseStream message: the model's own event, base64 in ``bytes``."""
    return aws.event_message({":event-type": "chunk", ":content-type": "application/json",
                              ":message-type": "event"},
                             json.dumps({"bytes": base64.b64encode(json.dumps(event).encode()).decode()}).encode())


def _exception(kind: str, message: str) -> bytes:
    return aws.event_message({":message-type": "exception", ":exception-type": kind, ":content-type":
                              "application/json"}, json.dumps({"message": message}).encode())


# Bedrock


def test_a_bedrock_claude_stream_is_the_claude_events_usage_priced_as_the_profile_the_path_names(providers, book):
    row = _row(providers, book, "bedrock", f"/model/{CLAUDE}/invoke-with-response-stream", EVENT_STREAM,
               aws.claude_stream(), BEDROCK_MESSAGE)
    # The events name claude-sonnet-4-5-20250929; the path's inference profile is what is billed.
    assert (row["provider"], row["model"], row["endpoint"]) == \
        ("bedrock", CLAUDE, "/model/{modelId}/invoke-with-response-stream")
    assert _tokens(row) == (25, 0, 0, 12, 0) and row["usage_source"] == "reported"
    assert (row["stream"], row["outcome"], row["error"], row["status"]) == (True, "completed", None, 200)
    assert row["cost_usd"] == _usd((25, "3.30"), (12, "16.50"))


def _llama_stream(metrics: dict) -> list[bytes]:
    """Llama's own events carry no usage: the invocation metrics in the last chunk are the call's."""
    return [_chunk({"generation": "Hel", "prompt_token_count": None, "generation_token_count": 1,
                    "stop_reason": None}),
            _chunk({"generation": "lo", "prompt_token_count": None, "generation_token_count": 2,
                    "stop_reason": "stop", "amazon-bedrock-invocationMetrics": metrics})]


def test_a_bedrock_stream_without_usage_of_its_own_is_its_invocation_metrics(providers, book):
    metrics = {"inputTokenCount": 17, "outputTokenCount": 9, "cacheReadInputTokenCount": 40,
               "cacheWriteInputTokenCount": 5, "invocationLatency": 300, "firstByteLatency": 120}
    row = _row(providers, book, "bedrock", f"/model/{LLAMA}/invoke-with-response-stream", EVENT_STREAM,
               _llama_stream(metrics), {"prompt": "hi"})
    assert (row["model"], row["usage_source"], row["outcome"]) == (LLAMA, "reported", "completed")
    assert _tokens(row) == (17, 40, 5, 9, 0)


@pytest.mark.parametrize("metrics,error", [
    ({"inputTokenCount": None, "outputTokenCount": 9}, "inputTokenCount is null"),
    ({"inputTokenCount": 17, "outputTokenCount": None}, "outputTokenCount is null"),
    ({"inputTokenCount": 17, "outputTokenCount": 9, "cacheReadInputTokenCount": -1}, "cacheReadInputTokenCount=-1"),
    ({"inputTokenCount": 17, "outputTokenCount": 9, "cacheWriteInputTokenCount": "x"}, "cacheWriteInputTokenCount='x'"),
])
def test_invocation_metrics_missing_a_count_or_with_one_that_is_not_one_are_refused_by_name(providers, book,
                                                                                            metrics, error):
    # Bedrock always sends both counts: a null one is refused (an absent cache count is none read).
    row = _row(providers, book, "bedrock", f"/model/{LLAMA}/invoke-with-response-stream", EVENT_STREAM,
               _llama_stream(metrics), {"prompt": "hi"})
    assert row["input_tokens"] == row["output_tokens"] == 0 and row["usage_source"] == "invalid"
    assert error in row["error"]


def test_invocation_metrics_that_are_not_an_object_give_no_usage(providers, book):
    row = _row(providers, book, "bedrock", f"/model/{LLAMA}/invoke-with-response-stream", EVENT_STREAM,
               _llama_stream([17, 9]), {"prompt": "hi"})
    assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (0, 0, "none")


def test_a_llama_stream_cut_before_its_metrics_is_not_reported_or_estimated(providers, book):
    row = _row(providers, book, "bedrock", f"/model/{LLAMA}/invoke-with-response-stream", EVENT_STREAM,
               _llama_stream({"inputTokenCount": 17, "outputTokenCount": 9}), {"prompt": "hi"}, keep=1)
    # Llama's own events are not read for text: no usage, unpriced (never $0), and it says so.
    assert (row["usage_source"], row["output_tokens"], row["error"], row["priced"]) == ("none", 0, None, False)


def test_a_cut_claude_stream_on_bedrock_is_estimated_as_on_anthropics_own_api(providers, book, counter):
    # Cut after "Hello": the input message_start reported, the output counted from the text so far
    # (at least the 1 message_start said), priced as the path's regional profile.
    row = _row(providers, book, "bedrock", f"/model/{CLAUDE}/invoke-with-response-stream", EVENT_STREAM,
               aws.claude_stream(), BEDROCK_MESSAGE, keep=3)
    output = max(counter.count("Hello", None), 1)
    assert (row["usage_source"], row["outcome"], row["model"]) == ("partial", "completed", CLAUDE)
    assert _tokens(row) == (25, 0, 0, output, 0) and row["priced"]
    assert row["cost_usd"] == _usd((25, "3.30"), (output, "16.50"))
    # The same stream cut before message_start: nothing to go on, unpriced.
    early = _row(providers, book, "bedrock", f"/model/{CLAUDE}/invoke-with-response-stream", EVENT_STREAM,
                 aws.claude_stream(), BEDROCK_MESSAGE, keep=0)
    assert (early["usage_source"], early["priced"]) == ("none", False)


def test_a_cut_converse_stream_counts_the_requests_text_and_the_text_streamed(providers, book, counter):
    system, question = "You answer in one word.", "Say hello to the whole wide world, please."
    request = {"system": [{"text": system}], "messages": [
        {"role": "user", "content": [{"text": question}, {"image": {"format": "png", "source": {"bytes": "AAAA"}}}]},
        {"role": "assistant", "content": [{"text": "Hi"}]}, {"role": "user", "content": [{"text": "Again"}]}]}
    row = _row(providers, book, "bedrock", f"/model/{CLAUDE_GLOBAL}/converse-stream", EVENT_STREAM,
               aws.converse_stream(), request, keep=-1)  # no metadata event
    prompt = sum(counter.count(text, None) for text in (system, question, "Hi", "Again"))
    output = counter.count("Hello", None)
    assert prompt > 10 and output > 0
    assert (row["usage_source"], _tokens(row)) == ("partial", (prompt, 0, 0, output, 0))
    assert row["cost_usd"] == _usd((prompt, "3.00"), (output, "15.00"))


def test_a_cut_converse_stream_counts_tool_results_and_specs_in_and_reasoning_and_tool_input_out(providers, book,
                                                                                                 counter):
    """Probe: a cut ConverseStream counted only ``delta.text`` out (thinking and a tool call's input
    streamed are billed as output) and missed a tool's result in (nested under ``toolResult``): 2
    output tokens of ~4,100, 5 input of ~7,000."""
    result, args, spec = "row 17: 4.5 kWh " * 40, {"city": "Paris", "days": 3}, {"toolSpec": {"name": "weather"}}
    request = {"messages": [
        {"role": "user", "content": [{"text": "Weather?"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "weather", "input": args}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": result},
                                                                                   {"json": {"rain": True}}]}}]}],
        "toolConfig": {"tools": [spec]}}
    thought, partial = "Let me think about the forecast carefully. " * 20, '{"city": "Lyon", "da'
    stream = [aws._event("messageStart", {"role": "assistant"}),
              aws._event("contentBlockDelta", {"contentBlockIndex": 0,
                                               "delta": {"reasoningContent": {"text": thought}}}),
              aws._event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Checking"}}),
              aws._event("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": partial}}})]
    row = _row(providers, book, "bedrock", f"/model/{CLAUDE_GLOBAL}/converse-stream", EVENT_STREAM, stream, request)
    prompt = sum(counter.count(text, None) for text in ("Weather?", json.dumps(args), result,
                                                         json.dumps({"rain": True}), json.dumps([spec])))
    output = counter.count(thought + "Checking" + partial, None)
    assert prompt > counter.count(result, None) > 100 and output > counter.count(thought, None) > 100
    assert (row["usage_source"], _tokens(row)) == ("partial", (prompt, 0, 0, output, 0))
    assert row["cost_usd"] == _usd((prompt, "3.00"), (output, "15.00"))


def test_a_text_naming_the_invocation_metrics_does_not_end_a_claude_stream_on_bedrock(providers, book, counter):
    """Probe: the metrics' name inside a text delta marked the stream complete, and a stream cut after
    it was stored as reported at message_start's 1 output token."""
    text = 'Read "amazon-bedrock-invocationMetrics" in the last chunk. ' * 30
    said = aws._chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
    row = _row(providers, book, "bedrock", f"/model/{CLAUDE}/invoke-with-response-stream", EVENT_STREAM,
               [*aws.claude_stream()[:2], said], BEDROCK_MESSAGE)
    assert (row["usage_source"], row["output_tokens"]) == ("partial", counter.count(text, None))


def test_a_cut_converse_stream_whose_request_is_too_large_to_read_is_unpriced_not_guessed(providers, book):
    picture = {"image": {"format": "png", "source": {"bytes": "A" * MAX_REQUEST_PARSE_BYTES}}}
    request = {"messages": [{"role": "user", "content": [{"text": "What is this?"}, picture]}]}
    row = _row(providers, book, "bedrock", f"/model/{CLAUDE_GLOBAL}/converse-stream", EVENT_STREAM,
               aws.converse_stream(), request, keep=-1)  # began, cut before its metadata event
    assert (row["usage_source"], row["priced"], row["error"], row["input_tokens"]) == ("none", False, None, 0)


def test_a_chunk_whose_bytes_are_not_base64_is_skipped_and_the_rest_still_read(providers, book):
    # Base64 with a character outside its alphabet (these metrics would count 99): not read at all.
    metrics = {"amazon-bedrock-invocationMetrics": {"inputTokenCount": 99, "outputTokenCount": 99}}
    junk = "!" + base64.b64encode(json.dumps(metrics).encode()).decode()
    bad = aws.event_message({":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
                            json.dumps({"bytes": junk}).encode())
    not_a_string = aws.event_message({":event-type": "chunk", ":message-type": "event"}, b'{"bytes": 12}')
    row = _row(providers, book, "bedrock", f"/model/{LLAMA}/invoke-with-response-stream", EVENT_STREAM,
               [bad, not_a_string, *_llama_stream({"inputTokenCount": 17, "outputTokenCount": 9})], {"prompt": "hi"})
    assert (_tokens(row), row["usage_source"], row["error"]) == ((17, 0, 0, 9, 0), "reported", None)


def test_an_exception_in_a_bedrock_stream_is_the_rows_error(providers, book, counter):
    long_kind = "x" * 120 + "Exception"
    hello = counter.count("Hello", None)
    for path, messages, stored, source, tokens in [
        # After the model began: estimated as a cut stream (Claude's input as message_start said).
        (f"/model/{CLAUDE}/invoke-with-response-stream", [*aws.claude_stream()[:3],
                                                          _exception("throttlingException", "slow down")],
         "throttlingException", "partial", (25, max(hello, 1))),
        (f"/model/{CLAUDE}/converse-stream", [*aws.converse_stream()[:2],
                                              _exception("modelStreamErrorException", "the model failed")],
         "modelStreamErrorException", "partial", (counter.count("hi", None), hello)),
        # Before it began: nothing to go on, unpriced.
        (f"/model/{CLAUDE}/converse-stream", [_exception(long_kind, "long")], "x" * 100, "none", (0, 0)),
        # A type with a ':' of its own (as AWS's x-amzn-ErrorType has) is kept whole after "exception:".
        (f"/model/{CLAUDE}/converse-stream", [_exception("internalServerException:coral", "x")],
         "internalServerException:coral", "none", (0, 0)),
        (f"/model/{CLAUDE}/invoke-with-response-stream", [_exception("internalServerException:coral", "x")],
         "internalServerException:coral", "none", (0, 0)),
        (f"/model/{CLAUDE}/invoke-with-response-stream", [_exception(long_kind, "long")], "x" * 100, "none", (0, 0)),
    ]:
        row = _row(providers, book, "bedrock", path, EVENT_STREAM, messages, BEDROCK_MESSAGE)
        assert (row["error"], row["usage_source"], (row["input_tokens"], row["output_tokens"])) == \
            (stored, source, tokens), path


def test_a_bedrock_converse_stream_is_its_metadata_usage_with_cache_reads_and_writes_apart(providers, book):
    row = _row(providers, book, "bedrock", f"/model/{CLAUDE_GLOBAL}/converse-stream", EVENT_STREAM,
               aws.converse_stream(), {"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    assert (row["model"], row["endpoint"], row["stream"]) == (CLAUDE_GLOBAL, "/model/{modelId}/converse-stream", True)
    # Converse's inputTokens leaves out the cache reads and writes, which have fields of their own.
    assert _tokens(row) == (30, 2000, 1030, 12, 0) and row["usage_source"] == "reported"
    assert row["cost_usd"] == _usd((30, "3.00"), (2000, "0.30"), (1030, "3.75"), (12, "15.00"))


def test_a_guardrail_on_a_converse_stream_or_a_body_too_large_to_read_leaves_the_call_unpriced(providers, book):
    """ConverseStream names its guardrail as Converse does; a body past what is decoded (inline
    documents) is searched as sent: priced at its tokens alone it read cheaper than AWS bills."""
    guard = {"guardrailConfig": {"guardrailIdentifier": aws.GUARDRAIL, "guardrailVersion": "1"}}
    picture = {"image": {"format": "png", "source": {"bytes": "A" * MAX_REQUEST_PARSE_BYTES}}}
    for request in ({"messages": [{"role": "user", "content": [{"text": "hi"}]}], **guard},
                    {"messages": [{"role": "user", "content": [{"text": "What is this?"}, picture]}], **guard}):
        row = _row(providers, book, "bedrock", f"/model/{CLAUDE_GLOBAL}/converse-stream", EVENT_STREAM,
                   aws.converse_stream(), request)
        assert (row["guardrail_checks"], row["priced"], row["usage_source"]) == (1, False, "reported")
    unguarded = _row(providers, book, "bedrock", f"/model/{CLAUDE_GLOBAL}/converse-stream", EVENT_STREAM,
                     aws.converse_stream(), {"messages": [{"role": "user", "content": [{"text": "guardrailConfig"}]}]})
    assert (unguarded["guardrail_checks"], unguarded["priced"]) == (0, True)  # the word in a prompt is not one


@pytest.mark.parametrize("usage,error", [
    ({"inputTokens": None, "outputTokens": 12}, "inputTokens is null"),
    ({"inputTokens": 30, "outputTokens": None}, "outputTokens is null"),
])
def test_a_converse_usage_with_a_null_count_is_refused_by_name(providers, book, usage, error):
    answer = {"output": {"message": {"role": "assistant", "content": [{"text": "Hello"}]}}, "usage": usage}
    for path, kind, body in [
        (f"/model/{CLAUDE}/converse", "application/json", json.dumps(answer).encode()),
        (f"/model/{CLAUDE}/converse-stream", EVENT_STREAM,
         [aws.event_message({":event-type": "metadata", ":message-type": "event"},
                            json.dumps({"usage": usage}).encode())]),
    ]:
        row = _row(providers, book, "bedrock", path, kind, body)
        assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (0, 0, "invalid"), path
        assert error in row["error"], path


def test_an_hours_cache_writes_and_a_tier_not_the_standard_one_are_not_priced_at_the_standard_rates(providers,
                                                                                                    book):
    """Converse's cacheDetails split the writes by time to live (an hour's: $6 per million on Sonnet
    4.5, the 5 minutes' $3.75); Converse's serviceTier and Vertex's trafficType name a tier whose
    rates are not the standard ones: both were priced at the standard rates."""
    usage = {"inputTokens": 10, "outputTokens": 100, "totalTokens": 15110, "cacheReadInputTokens": 5000,
             "cacheWriteInputTokens": 10000, "cacheDetails": [{"ttl": "1h", "inputTokens": 10000}]}
    answer = {"output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}}, "stopReason": "end_turn",
              "usage": usage}
    converse = f"/model/{CLAUDE_GLOBAL}/converse"
    row = _row(providers, book, "bedrock", converse, "application/json", json.dumps(answer).encode())
    assert (row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (10000, 10000)
    assert row["cost_usd"] == _usd((10, "3.00"), (5000, "0.30"), (10000, "6.00"), (100, "15.00"))
    for tier, said, priced in [(tier, {"serviceTier": {"type": tier}}, tier == "default")
                               for tier in ("default", "priority", "flex")] + [
            ("latency_optimized", {"performanceConfig": {"latency": "optimized"}}, False),
            (None, {"performanceConfig": {"latency": "standard"}}, True)]:
        whole = _row(providers, book, "bedrock", converse, "application/json", json.dumps({**answer, **said}).encode())
        streamed = _row(providers, book, "bedrock", f"/model/{CLAUDE_GLOBAL}/converse-stream", EVENT_STREAM,
                        [*aws.converse_stream()[:-1], aws.event_message(
                            {":event-type": "metadata", ":message-type": "event"},
                            json.dumps({"usage": usage, **said}).encode())])
        for row in (whole, streamed):
            assert (row["service_tier"], row["priced"], row["cost_usd"] is not None) == (tier, priced, priced), tier
    # InvokeModel says it in its headers, for a whole body and a stream.
    invoke = f"/model/{CLAUDE_GLOBAL}/invoke"
    claude = json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                         "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
                         "usage": {"input_tokens": 10, "output_tokens": 100}}).encode()
    for headers, tier in (({"x-amzn-bedrock-service-tier": "priority"}, "priority"),
                          ({"x-amzn-bedrock-performanceconfig-latency": "optimized"}, "latency_optimized"),
                          ({"x-amzn-bedrock-service-tier": "default"}, "default")):
        whole = _row(providers, book, "bedrock", invoke, "application/json", claude, headers=headers)
        streamed = _row(providers, book, "bedrock", f"{invoke}-with-response-stream", EVENT_STREAM,
                        aws.claude_stream(), headers=headers)
        for row in (whole, streamed):
            assert (row["service_tier"], row["priced"]) == (tier, tier == "default"), (tier, row["stream"])
    for traffic, priced in (("ON_DEMAND", True), ("ON_DEMAND_PRIORITY", False), ("ON_DEMAND_FLEX", False),
                            ("PROVISIONED_THROUGHPUT", False)):
        body = gcp._gemini_chunk("Hi", "STOP", {**gcp.GEMINI_USAGE, "trafficType": traffic}, "gemini-2.5-flash")
        row = _row(providers, book, "vertex", f"{VERTEX}/google/models/gemini-2.5-flash:generateContent",
                   "application/json; charset=UTF-8", json.dumps(body).encode(), {"contents": []})
        assert (row["service_tier"], row["priced"]) == (traffic.lower(), priced), traffic


def test_bedrocks_dual_stack_and_fips_hosts_are_metered_in_the_forward_mode(providers):
    """botocore names bedrock-runtime.REGION.api.aws when asked for dual-stack endpoints: tunnelled
    untouched and unrecorded before."""
    from addon.hosts import ProviderHosts

    hosts = ProviderHosts([providers["bedrock"]])
    for host in ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock-runtime-fips.us-east-1.amazonaws.com",
                 "bedrock-runtime.us-east-1.api.aws", "bedrock-runtime-fips.us-gov-west-1.api.aws"):
        assert hosts.provider(host) == "bedrock", host
    assert hosts.provider("bedrock-runtime.us-east-1.api.aws.attacker.net") is None
    assert hosts.provider("bedrock.us-east-1.api.aws") is None  # the control plane: not calls


def test_a_nova_invoke_model_body_counts_its_cache_reads_and_writes(providers, book):
    # Nova's own InvokeModel body names the cache counts ...TokenCount, where Converse says ...Tokens.
    answer = {"output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}}, "stopReason": "end_turn",
              "usage": {"inputTokens": 11, "outputTokens": 23, "totalTokens": 1334, "cacheReadInputTokenCount": 1000,
                        "cacheWriteInputTokenCount": 300}}
    row = _row(providers, book, "bedrock", "/model/us.amazon.nova-pro-v1:0/invoke", "application/json",
               json.dumps(answer).encode(), {"messages": []})
    assert (row["model"], row["usage_source"]) == ("us.amazon.nova-pro-v1:0", "reported")
    assert _tokens(row) == (11, 1000, 300, 23, 0)


def test_a_llama_invoke_model_body_is_its_prompt_and_generation_counts(providers, book):
    answer = {"generation": "Hi!", "prompt_token_count": 18, "generation_token_count": 5, "stop_reason": "stop"}
    row = _row(providers, book, "bedrock", f"/model/{LLAMA}/invoke", "application/json", json.dumps(answer).encode(),
               {"prompt": "hi"})
    assert (row["model"], row["usage_source"], _tokens(row)) == (LLAMA, "reported", (18, 0, 0, 5, 0))
    assert row["cost_usd"] == _usd((18, "2.65"), (5, "3.50"))
    for field in ("prompt_token_count", "generation_token_count"):
        null = _row(providers, book, "bedrock", f"/model/{LLAMA}/invoke", "application/json",
                    json.dumps({**answer, field: None}).encode(), {"prompt": "hi"})
        assert (null["usage_source"], null["input_tokens"], null["output_tokens"]) == ("invalid", 0, 0)
        assert f"{field} is null" in null["error"]


def test_a_model_given_as_an_inference_profile_arn_is_priced_as_the_profile_it_names(providers, book):
    answer = {"output": {"message": {"role": "assistant", "content": [{"text": "Hello"}]}},
              "usage": aws.CONVERSE_USAGE}
    # The path as signed and forwarded: the ARN one segment, its ':' and '/' encoded.
    row = _row(providers, book, "bedrock", ARN_PATH, "application/json", json.dumps(answer).encode())
    assert (row["model"], row["endpoint"]) == (CLAUDE, "/model/{modelId}/converse")
    assert row["cost_usd"] == _usd((30, "3.30"), (2000, "0.33"), (1030, "4.125"), (12, "16.50"))


def test_a_converse_stream_keeps_the_text_of_its_deltas(providers):
    parser = providers["bedrock"].stream_parser(f"/model/{CLAUDE}/converse-stream")
    assert isinstance(parser, ConverseStream) and parser.observed.model == CLAUDE
    for text in ("Hel", None, "lo"):
        parser.feed("contentBlockDelta", json.dumps({"contentBlockIndex": 0, "delta": {"text": text}}).encode())
    parser.feed("contentBlockDelta", json.dumps({"delta": {"toolUse": {"input": "{}"}}}).encode())
    parser.feed("messageStop", b'{"stopReason": "end_turn"}')
    assert parser.output_text() == "Hello{}" and not parser.observed.complete  # a tool call's input is output too


def test_an_invoke_stream_keeps_the_text_of_claudes_deltas(providers):
    parser = providers["bedrock"].stream_parser(f"/model/{CLAUDE}/invoke-with-response-stream")
    decoder = EventStreamDecoder()
    for event, data in decoder.feed(b"".join(aws.claude_stream()[:4])):  # to content_block_stop
        parser.feed(event, data)
    assert parser.output_text() == "Hello" and not parser.observed.complete


def test_each_bedrock_operation_gets_its_parser_with_the_paths_model(providers):
    bedrock = providers["bedrock"]
    for path, kind, model in [(f"/model/{CLAUDE}/invoke-with-response-stream", InvokeStream, CLAUDE),
                              (f"/model/{CLAUDE}/converse-stream", ConverseStream, CLAUDE),
                              ("/model/x/count-tokens", InvokeStream, "")]:
        parser = bedrock.stream_parser(path)
        assert type(parser) is kind and parser.observed.model == model, path


def test_bedrock_invoke_model_usage_comes_from_the_headers_when_the_body_has_none(providers, book):
    body = json.dumps({"outputs": [{"text": "Bonjour", "stop_reason": "stop"}]}).encode()
    row = _row(providers, book, "bedrock", f"/model/{MISTRAL}/invoke", "application/json", body,
               {"prompt": "hi"}, aws.MISTRAL_HEADERS)
    assert (row["model"], row["endpoint"], row["stream"]) == (MISTRAL, "/model/{modelId}/invoke", False)
    assert _tokens(row) == (17, 0, 0, 9, 0) and row["usage_source"] == "reported"
    assert row["cost_usd"] == _usd((17, "4.00"), (9, "12.00"))
    cached = _row(providers, book, "bedrock", f"/model/{MISTRAL}/invoke", "application/json", body, {"prompt": "hi"},
                  {"x-amzn-bedrock-input-token-count": " 17 ", "x-amzn-bedrock-output-token-count": "9",
                   "x-amzn-bedrock-cache-read-input-token-count": "300",
                   "x-amzn-bedrock-cache-write-input-token-count": "44"})
    assert _tokens(cached) == (17, 300, 44, 9, 0)
    none = _row(providers, book, "bedrock", f"/model/{MISTRAL}/invoke", "application/json", body, {"prompt": "hi"},
                {"x-amzn-bedrock-output-token-count": "9"})  # no input count: no usage in the headers
    assert (none["input_tokens"], none["output_tokens"], none["usage_source"]) == (0, 0, "none")


def test_bedrock_usage_headers_count_when_the_body_cannot_be_decoded(providers, book):
    """AWS's counts in the headers are the provider's own: a body the proxy cannot decode does not
    make the call's usage unknown (nor an estimate)."""
    path = f"/model/{MISTRAL}/invoke"
    meter = CallMeter(providers["bedrock"], path, 7, "acme", "chat", time.time(), b'{"prompt": "hi"}', "")
    meter.response_headers = Headers([(k.encode(), v.encode()) for k, v in aws.MISTRAL_HEADERS.items()])
    meter.start_response(200, "application/json", "gzip")
    meter.finish(200, "completed", None, b"not gzip at all")
    row = build_row(meter, book)
    assert (_tokens(row), row["usage_source"]) == ((17, 0, 0, 9, 0), "reported")
    assert row["cost_usd"] == _usd((17, "4.00"), (9, "12.00"))


def test_bedrock_usage_headers_count_whatever_the_invoke_body_holds(providers, book):
    """A model's own output format need not be a JSON object: AWS's counts in the headers still bill it."""
    for body in [json.dumps([{"generation": "Bonjour"}]).encode(), b"Bonjour", b""]:
        row = _row(providers, book, "bedrock", f"/model/{MISTRAL}/invoke", "application/json", body,
                   {"prompt": "hi"}, aws.MISTRAL_HEADERS)
        assert (row["model"], _tokens(row), row["usage_source"]) == (MISTRAL, (17, 0, 0, 9, 0), "reported"), body
        assert row["cost_usd"] == _usd((17, "4.00"), (9, "12.00"))
    bare = _row(providers, book, "bedrock", f"/model/{MISTRAL}/invoke", "application/json", b"[]", {"prompt": "hi"})
    assert (bare["input_tokens"], bare["usage_source"], bare["priced"]) == (0, "none", False)


def test_a_claude_invoke_body_is_read_before_the_usage_headers_which_cannot_split_its_cache_writes(providers, book):
    usage = {"input_tokens": 25, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 1000,
             "cache_creation": {"ephemeral_1h_input_tokens": 1000, "ephemeral_5m_input_tokens": 0}, "output_tokens": 12}
    answer = {"id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
              "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn", "usage": usage}
    headers = {"x-amzn-bedrock-input-token-count": "25", "x-amzn-bedrock-output-token-count": "12",
               "x-amzn-bedrock-cache-read-input-token-count": "0",
               "x-amzn-bedrock-cache-write-input-token-count": "1000"}  # as AWS sends them beside every body
    row = _row(providers, book, "bedrock", f"/model/{CLAUDE}/invoke", "application/json",
               json.dumps(answer).encode(), BEDROCK_MESSAGE, headers)
    assert (row["usage_source"], _tokens(row), row["cache_write_1h_tokens"]) == ("reported", (25, 0, 1000, 12, 0), 1000)
    one_hour = TokenUsage(input_tokens=25, cache_write_tokens=1000, cache_write_1h_tokens=1000, output_tokens=12)
    assert row["cost_usd"] == book.price(one_hour, "bedrock", CLAUDE, row["ts"]).cost_usd


def test_a_bedrock_call_that_got_no_answer_keeps_its_error_and_costs_nothing_known(providers, book):
    meter = CallMeter(providers["bedrock"], f"/model/{CLAUDE}/invoke", 7, "acme", "chat", time.time(),
                      json.dumps(BEDROCK_MESSAGE).encode(), "")
    meter.finish(None, "upstream_failed", "upstream unreachable: connection refused")  # no response, no headers
    row = build_row(meter, book)
    assert (row["status"], row["error"]) == (None, "upstream unreachable: connection refused")
    assert (row["usage_source"], row["cost_usd"], row["priced"]) == ("none", Decimal(0), True)


def test_a_usage_header_that_is_not_a_count_is_refused_showing_at_most_40_characters(providers, book):
    body = json.dumps({"outputs": [{"text": "Bonjour"}]}).encode()
    value = "seventeen" * 10
    row = _row(providers, book, "bedrock", f"/model/{MISTRAL}/invoke", "application/json", body, {"prompt": "hi"},
               {"x-amzn-bedrock-input-token-count": value, "x-amzn-bedrock-output-token-count": "9"})
    assert row["input_tokens"] == row["output_tokens"] == 0 and row["usage_source"] == "invalid"
    assert row["error"] == (f"usage implausible: x-amzn-bedrock-input-token-count={repr(value)[:40]}... "
                            "is not a whole number from 0 to 100,000,000")


def test_bedrock_endpoints_and_what_is_metered(providers):
    bedrock = providers["bedrock"]
    assert bedrock.endpoint(f"/model/{CLAUDE}/converse") == "/model/{modelId}/converse"
    assert bedrock.endpoint(f"/model/{CLAUDE}/invoke") == "/model/{modelId}/invoke"
    assert bedrock.endpoint("/model/x/count-tokens") == "/model/x/count-tokens"
    assert bedrock.metered(f"/model/{CLAUDE}/converse") and bedrock.metered(f"/model/{MISTRAL}/invoke")
    assert not bedrock.metered("/model/x/count-tokens") and not bedrock.metered("/async-invoke")


def test_our_refusal_reaches_botocore_as_its_error_code_and_message(providers):
    body = providers["bedrock"].error_body(429, "Limit reached: 10 calls an hour.", "aispendtrack_limit_reached")
    assert body == b'{"__type": "aispendtrack_limit_reached", "message": "Limit reached: 10 calls an hour."}'


# Vertex AI


def test_a_vertex_gemini_call_counts_its_cached_thoughts_and_tool_use_prompt(providers, book):
    body = json.dumps(gcp._gemini_chunk("Hello there!", "STOP", gcp.GEMINI_USAGE, "gemini-2.5-flash")).encode()
    row = _row(providers, book, "vertex", f"{VERTEX}/google/models/gemini-2.5-flash:generateContent",
               "application/json; charset=UTF-8", body, {"contents": []})
    assert (row["provider"], row["model"]) == ("vertex", "gemini-2.5-flash")
    assert row["endpoint"] == VERTEX_ENDPOINT.format(publisher="google", method="generateContent")
    # 345 prompt tokens, 230 of them cached, and 7 of a tool-use prompt; 51 candidates and 19 thoughts.
    assert _tokens(row) == (345 - 230 + 7, 230, 0, 51 + 19, 19) and row["usage_source"] == "reported"
    assert row["cost_usd"] == _usd((122, "0.30"), (230, "0.03"), (70, "2.50"))


def _gemini_chunks() -> list[dict]:
    return [gcp._gemini_chunk("Hel", None, gcp.GEMINI_STREAM_USAGE[0], "gemini-2.5-flash"),
            gcp._gemini_chunk("lo!", "STOP", gcp.GEMINI_STREAM_USAGE[1], "gemini-2.5-flash")]


def test_a_vertex_gemini_stream_is_its_last_running_total_and_a_cut_one_the_last_it_saw(providers, book):
    path = f"{VERTEX.replace('/v1/', '/v1beta1/')}/google/models/gemini-2.5-flash:streamGenerateContent"
    events = [f"data: {json.dumps(c)}\r\n\r\n".encode() for c in _gemini_chunks()]
    row = _row(providers, book, "vertex", path, "text/event-stream", events, {"contents": []})
    assert row["endpoint"] == VERTEX_ENDPOINT.replace("/v1/", "/v1beta1/").format(publisher="google",
                                                                                   method="streamGenerateContent")
    assert (row["stream"], row["model"], row["usage_source"]) == (True, "gemini-2.5-flash", "reported")
    assert _tokens(row) == (12, 0, 0, 40 + 88, 88)
    assert row["cost_usd"] == _usd((12, "0.30"), (128, "2.50"))
    cut = _row(providers, book, "vertex", path, "text/event-stream", events, {"contents": []}, keep=1)
    assert (_tokens(cut), cut["usage_source"]) == ((12, 0, 0, 3, 0), "partial")
    unnamed = [f"data: {json.dumps({**c, 'modelVersion': None})}\r\n\r\n".encode() for c in _gemini_chunks()]
    url_named = _row(providers, book, "vertex", path, "text/event-stream", unnamed, {"contents": []})
    assert (url_named["model"], url_named["cost_usd"]) == ("gemini-2.5-flash", row["cost_usd"])  # the URL's model
    array = json.dumps(_gemini_chunks()).encode()  # without alt=sse: one JSON array
    whole = _row(providers, book, "vertex", path, "application/json; charset=UTF-8", array, {"contents": []})
    assert (_tokens(whole), whole["usage_source"]) == ((12, 0, 0, 128, 88), "reported")


def test_a_vertex_gemini_stream_cut_before_its_counts_is_unpriced_not_free(providers, book):
    """Vertex's chunks before the last carry usageMetadata with no count ({"trafficType": "ON_DEMAND"}):
    a stream cut before the last was stored at 0 tokens, $0.00, priced, for a prompt Google billed."""
    path = f"{VERTEX}/google/models/gemini-2.5-flash:streamGenerateContent"
    traffic_only = {"trafficType": "ON_DEMAND"}
    chunks = [gcp._gemini_chunk("Hel", None, traffic_only, "gemini-2.5-flash"),
              gcp._gemini_chunk("lo", None, traffic_only, "gemini-2.5-flash"),
              gcp._gemini_chunk("!", "STOP", {**gcp.GEMINI_STREAM_USAGE[1], **traffic_only}, "gemini-2.5-flash")]
    events = [f"data: {json.dumps(c)}\r\n\r\n".encode() for c in chunks]
    whole = _row(providers, book, "vertex", path, "text/event-stream", events, {"contents": []})
    assert (_tokens(whole), whole["cost_usd"]) == ((12, 0, 0, 128, 88), _usd((12, "0.30"), (128, "2.50")))
    cut = _row(providers, book, "vertex", path, "text/event-stream", events, {"contents": []}, keep=2)
    assert (cut["priced"], cut["cost_usd"], cut["usage_source"], cut["service_tier"]) == (False, None, "none",
                                                                                         "on_demand")


def test_a_vertex_claude_message_is_read_as_anthropics_with_the_urls_model(providers, book):
    message = {"id": "msg_vrtx_01", "type": "message", "role": "assistant", "content": [{"type": "text",
               "text": "Hello!"}], "stop_reason": "end_turn", "usage": gcp.CLAUDE_USAGE}  # no model in the body
    request = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 256,
               "messages": [{"role": "user", "content": "hi"}]}
    row = _row(providers, book, "vertex", "/v1/projects/p/locations/us-east5/publishers/anthropic/models/"
               "claude-sonnet-4-5@20250929:rawPredict", "application/json", json.dumps(message).encode(), request)
    assert row["endpoint"] == VERTEX_ENDPOINT.format(publisher="anthropic", method="rawPredict")
    assert row["model"] == "claude-sonnet-4-5@20250929" and row["usage_source"] == "reported"
    assert _tokens(row) == (21, 3400, 1200, 64, 0)
    # Anthropic's rates, 10% more on a regional endpoint (us-east5) from Claude Sonnet 4.5 on.
    assert row["cost_usd"] == _usd((21, "3.30"), (3400, "0.33"), (1200, "4.125"), (64, "16.50"))


def test_a_vertex_claude_call_costs_anthropics_rates_whichever_way_the_model_is_spelt(providers, book):
    """Vertex bills Claude at Anthropic's rates. genai-prices' Vertex entries have no 1-hour cache
    write rate before Claude 4.5: those writes were priced at the 5 minutes' rate ($3.75 for $6 on
    Sonnet 4); and Sonnet 4's long context was priced only when the row's model was the path's
    "claude-sonnet-4@..." (patches.toml #5), not the answer's "claude-sonnet-4-20250514" (half)."""
    path = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/{model}:rawPredict"
    request = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 256, "messages": []}
    hour = {"input_tokens": 21, "output_tokens": 64, "cache_creation_input_tokens": 1200,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 1000}}
    long = {"input_tokens": 250_000, "output_tokens": 1000, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0}
    for at_path, answered, rates in [
            ("claude-sonnet-4@20250514", "claude-sonnet-4-20250514", ("3", "3.75", "6", "15")),
            ("claude-3-5-haiku@20241022", "claude-3-5-haiku-20241022", ("0.80", "1", "1.60", "4")),
            ("claude-opus-4@20250514", None, ("15", "18.75", "30", "75"))]:
        message = {"id": "msg_vrtx_01", "type": "message", "role": "assistant", "content": [], "usage": hour,
                   "stop_reason": "end_turn", **({"model": answered} if answered else {})}
        row = _row(providers, book, "vertex", path.format(model=at_path), "application/json",
                   json.dumps(message).encode(), request)
        assert (row["model"], row["cache_write_1h_tokens"]) == (answered or at_path, 1000)
        written_in, five_minutes, an_hour, out = rates
        assert row["cost_usd"] == _usd((21, written_in), (200, five_minutes), (1000, an_hour), (64, out)), at_path
    for answered in ("claude-sonnet-4-20250514", None):  # past 200K input: $6 and $22.50, however named
        message = {"id": "msg_vrtx_02", "type": "message", "role": "assistant", "content": [], "usage": long,
                   "stop_reason": "end_turn", **({"model": answered} if answered else {})}
        row = _row(providers, book, "vertex", path.format(model="claude-sonnet-4@20250514"), "application/json",
                   json.dumps(message).encode(), request)
        assert row["cost_usd"] == _usd((250_000, "6"), (1000, "22.50")), answered


@pytest.mark.parametrize("location, model, premium", [
    ("us-east5", "claude-sonnet-4-5@20250929", True), ("eu", "claude-opus-4-5@20251101", True),
    ("global", "claude-sonnet-4-5@20250929", False), ("us-east5", "claude-opus-4-1@20250805", False),
    ("europe-west1", "claude-sonnet-4@20250514", False)])
def test_claude_from_4_5_on_costs_10_percent_more_off_vertexs_global_endpoint_and_keeps_it_when_repriced(
        providers, book, location, model, premium):
    """Was priced at the global endpoint's rates wherever it ran: 10% under the bill of every call to
    a regional or multi-region endpoint (us-east5, europe-west1, us, eu) of Claude 4.5 and later."""
    usage = {"input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    message = {"id": "msg_vrtx_03", "type": "message", "role": "assistant", "content": [], "usage": usage,
               "stop_reason": "end_turn"}
    path = f"/v1/projects/p/locations/{location}/publishers/anthropic/models/{model}:rawPredict"
    row = _row(providers, book, "vertex", path, "application/json", json.dumps(message).encode(),
               {"anthropic_version": "vertex-2023-10-16", "max_tokens": 256, "messages": []})
    at_global = book.price(TokenUsage(input_tokens=1000, output_tokens=200), "vertex", model, row["ts"]).cost_usd
    assert row["cost_usd"] == (at_global * Decimal("1.1") if premium else at_global)
    assert ("regional endpoint" in row["price_source"]) == premium
    stored = {**row, "summed": False}
    assert list(reprice.changed([stored], book)) == []  # priced again as stored, the premium kept


def test_a_regional_claude_call_unpriced_when_made_gets_the_premium_when_repriced(providers, book, tmp_path):
    """A Claude model the list prices do not know yet, on a regional endpoint: the reprice that
    priced it once they did charged the global rate (the row keeps no location), 10% under the bill."""
    usage = {"input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    message = {"id": "msg_vrtx_04", "type": "message", "role": "assistant", "content": [], "usage": usage,
               "stop_reason": "end_turn"}
    rows = {}
    for location in ("us-east5", "global"):
        path = f"/v1/projects/p/locations/{location}/publishers/anthropic/models/claude-sonnet-9@20271201:rawPredict"
        rows[location] = _row(providers, book, "vertex", path, "application/json", json.dumps(message).encode(),
                              {"anthropic_version": "vertex-2023-10-16", "max_tokens": 256, "messages": []})
        assert (rows[location]["priced"], rows[location]["cost_usd"]) == (False, None)
    (tmp_path / "prices.toml").write_text('[[price]]\nprovider = "vertex"\nmodel = "claude-sonnet-9*"\n'
                                          'input_mtok = 4\noutput_mtok = 20\n')
    later = PriceBook(tmp_path / "prices.toml")  # the model priced since (here by an override)
    at_global = (1000 * 4 + 200 * 20) / M
    repriced = {location: price.cost_usd for location, row in rows.items()
                for _, price in reprice.changed([{**row, "summed": False}], later)}
    assert repriced == {"us-east5": at_global * Decimal("1.1"), "global": at_global}


def test_an_hours_cache_writes_without_a_rate_of_their_own_are_unpriced_not_at_the_5_minutes_rate(providers, book):
    """genai-prices' Bedrock entry for Claude Opus 4.1 has no 1-hour write rate: its writes were
    priced at the 5 minutes' $18.75, a third under what every provider bills them at."""
    usage = {"inputTokens": 10, "outputTokens": 100, "totalTokens": 10110, "cacheWriteInputTokens": 10000,
             "cacheDetails": [{"ttl": "1h", "inputTokens": 10000}]}
    answer = {"output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}}, "stopReason": "end_turn",
              "usage": usage}
    converse = "/model/us.anthropic.claude-opus-4-1-20250805-v1:0/converse"
    row = _row(providers, book, "bedrock", converse, "application/json", json.dumps(answer).encode())
    assert (row["cache_write_1h_tokens"], row["priced"], row["cost_usd"]) == (10000, False, None)
    five_minutes = {**usage, "cacheDetails": [{"ttl": "5m", "inputTokens": 10000}]}
    row = _row(providers, book, "bedrock", converse, "application/json",
               json.dumps({**answer, "usage": five_minutes}).encode())
    assert row["cost_usd"] == _usd((10, "15"), (10000, "18.75"), (100, "75"))


def _claude_events() -> list[bytes]:
    named = "claude-haiku-4-5-20251001"
    start = {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": named,
                                                  "content": [], "usage": gcp.CLAUDE_STREAM_START}}
    events = [("message_start", start),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "Hello, how are you today? " * 4}}),
              ("message_delta", {"type": "message_delta", "usage": gcp.CLAUDE_STREAM_END,
                                 "delta": {"stop_reason": "end_turn"}}),
              ("message_stop", {"type": "message_stop"})]
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


def test_a_vertex_claude_stream_takes_the_cumulative_output_and_a_cut_one_counts_its_text(providers, book, counter):
    path = "/v1/projects/p/locations/global/publishers/anthropic/models/claude-haiku-4-5@20251001:streamRawPredict"
    request = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 256, "stream": True,
               "messages": [{"role": "user", "content": "hi"}]}
    row = _row(providers, book, "vertex", path, "text/event-stream", _claude_events(), request)
    assert (row["model"], row["stream"], row["usage_source"]) == ("claude-haiku-4-5-20251001", True, "reported")
    assert row["endpoint"] == VERTEX_ENDPOINT.format(publisher="anthropic", method="streamRawPredict")
    assert _tokens(row) == (9, 2048, 0, 117, 0)
    assert row["cost_usd"] == _usd((9, "1"), (2048, "0.10"), (117, "5"))
    cut = _row(providers, book, "vertex", path, "text/event-stream", _claude_events(), request, keep=3)
    came = counter.count("Hello, how are you today? " * 4, None)
    assert came > 1 and (_tokens(cut), cut["usage_source"]) == ((9, 2048, 0, came, 0), "partial")


def test_vertex_endpoints_and_what_is_metered(providers):
    vertex = providers["vertex"]
    google, claude = f"{VERTEX}/google/models/m", f"{VERTEX}/anthropic/models/c@1"
    assert [vertex.metered(p) for p in (google + ":generateContent", google + ":streamGenerateContent",
                                        claude + ":rawPredict", claude + ":streamRawPredict")] == [True] * 4
    for free in (google + ":countTokens", google + ":computeTokens", google + ":rawPredict",
                 claude + ":generateContent", f"{VERTEX}/anthropic/models/count-tokens:rawPredict",
                 google + ":generateContent/x", "/v2" + google[3:] + ":generateContent"):
        assert not vertex.metered(free), free
    assert vertex.endpoint(f"{VERTEX}/anthropic/models/count-tokens:rawPredict") == \
        "/v1/projects/{project}/locations/{location}/publishers/anthropic/models/count-tokens:rawPredict"
    assert vertex.endpoint("/v1beta1/projects/p/locations/eu/publishers/google/models/m:countTokens") == \
        "/v1beta1/projects/{project}/locations/{location}/publishers/google/models/{model}:countTokens"
    assert vertex.endpoint("/v1/projects/p/locations/l/endpoints/e:predict") == \
        "/v1/projects/p/locations/l/endpoints/e:predict"


@pytest.mark.parametrize("location,host", [
    ("us-central1", "us-central1-aiplatform.googleapis.com"),
    ("europe-west4", "europe-west4-aiplatform.googleapis.com"),
    ("global", "aiplatform.googleapis.com"), ("us", "aiplatform.us.rep.googleapis.com"),
    ("eu", "aiplatform.eu.rep.googleapis.com"), ("a", "a-aiplatform.googleapis.com"),
    ("evil.example.com", None), ("-us", None), ("us-", None), ("US", None), ("", None), ("a" * 64, None),
])
def test_the_host_of_a_vertex_path_is_its_locations(providers, location, host):
    assert vertex_host(location) == host
    vertex = providers["vertex"]
    assert vertex.host_for(f"/v1/projects/p/locations/{location}/publishers/google/models/m:generateContent") == host
    assert vertex.host_for(f"/v1beta1/projects/p/locations/{location}") == host
    assert vertex.host_for(f"/v2/projects/p/locations/{location}/x") is None


def test_vertex_refusals_come_in_googles_error_shape_for_both_sdks(providers):
    body = providers["vertex"].error_body(401, "Send a Google token.", "aispendtrack_not_a_google_token")
    assert json.loads(body) == {"error": {"code": 401, "message": "Send a Google token.", "status": "UNAUTHENTICATED"}}


# The forward mode's route by host, and what Vertex may be sent


GOOGLE_KEY = "AIza" + "S" * 35
ARN_PATH = ("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
            "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse")


def _headers(**fields: str) -> Headers:
    return Headers([(name.replace("_", "-").encode(), value.encode()) for name, value in fields.items()])


def test_a_call_to_a_providers_host_goes_to_it_with_its_path_canonical_or_as_signed(providers):
    bedrock, vertex = providers["bedrock"], providers["vertex"]
    sigv4 = _headers(authorization="AWS4-HMAC-SHA256 Credential=AKID/20261204/us-east-1/bedrock/aws4_request",
                     anthropic_version="2023-06-01")  # the Anthropic SDK sends it to Bedrock too
    assert route_host(bedrock, f"/model/{CLAUDE}/converse", sigv4) == (bedrock, f"/model/{CLAUDE}/converse")
    # An ARN's '/' stays encoded: SigV4 signed those bytes, and canonical() would refuse the %2F.
    assert route_host(bedrock, ARN_PATH, sigv4) == (bedrock, ARN_PATH)
    assert route_host(bedrock, "/model//x/./converse", sigv4).path == "/model/x/converse"
    google = "/v1/projects/p/locations/us/publishers/google/models/m:generateContent"
    assert route_host(vertex, google, _headers(x_goog_api_key=GOOGLE_KEY)).path == google  # express mode
    assert route_host(vertex, google, _headers(authorization="Bearer ya29.token")).path == google
    assert route_host(providers["google"], "/v1beta/models/m:generateContent",
                      _headers(authorization="Bearer ya29.token"), "alt=sse").path == "/v1beta/models/m:generateContent"
    assert route_host(vertex, google, _headers(), "key=" + GOOGLE_KEY).path == google


@pytest.mark.parametrize("provider,headers,query,what", [
    ("bedrock", {"x-api-key": "sk-ant-api03-secret"}, "", "a key for anthropic"),
    ("bedrock", {"authorization": "Basic " + base64.b64encode(b"user:sk-ant-api03-secret").decode()}, "",
     "a key for anthropic"),
    ("bedrock", {"x-note": GOOGLE_KEY}, "", "a key for google"),
    ("bedrock", {}, "key=" + GOOGLE_KEY, "a key for google"),
    ("bedrock", {"authorization": "Bearer ya29.token"}, "", "a key for vertex"),
    ("vertex", {"x-api-key": "sk-ant-api03-secret"}, "", "a key for anthropic"),
    ("anthropic", {"x-goog-api-key": GOOGLE_KEY}, "", "a key for google"),
    ("vertex", {"authorization": "Bearer ya29.token", "x-api-key": "sk-ant-api03-secret"}, "", "a key for anthropic"),
    ("vertex", {"authorization": "Bearer ya29.token sk-ant-api03-secret"}, "", "keys of two providers"),
])
def test_another_providers_key_is_refused_at_a_providers_host(providers, provider, headers, query, what):
    with pytest.raises(Misrouted) as refused:
        route_host(providers[provider], "/v1/x", Headers([(k.encode(), v.encode()) for k, v in headers.items()]),
                   query)
    exc = refused.value
    assert (exc.provider.name, exc.status, exc.code) == (provider, 403, "aispendtrack_foreign_key")
    assert exc.message == (f"AiSpendTrack did not forward this call: it carries {what}, but is addressed to "
                           f"{provider}'s host, and a key is never sent to another provider's upstream.")


def test_a_path_that_could_be_read_as_another_or_in_the_wrong_case_is_refused_at_a_host(providers):
    with pytest.raises(Misrouted) as refused:
        route_host(providers["bedrock"], "/model/x%2F..%2Fy/converse", _headers())
    assert (refused.value.provider.name, refused.value.status, refused.value.code) == \
        ("bedrock", 400, "aispendtrack_bad_path")  # answered in Bedrock's error shape
    assert "AiSpendTrack cannot forward '/model/x%2F..%2Fy/converse'" in refused.value.message
    with pytest.raises(Misrouted) as refused:
        route_host(providers["bedrock"], "/model/x/Converse", _headers())
    assert (refused.value.status, refused.value.code) == (404, "aispendtrack_bad_path")
    assert refused.value.message == ("AiSpendTrack did not forward /model/x/Converse: API paths are "
                                     "case-sensitive; use /model/x/converse.")


JWT = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJzYUBwLmlhbSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer ya29.a0AfB_token"}, {"Authorization": f"bearer {JWT}"},
    {"authorization": "  Bearer ya29.a0AfB_token  "}, {"x-goog-user-project": "p"}, {},
])
def test_vertex_takes_a_google_access_token_or_a_service_account_jwt(providers, headers):
    path = "/vertex" + VERTEX + "/google/models/m:generateContent"
    routed = route(list(providers.values()), path, Headers([(k.encode(), v.encode()) for k, v in headers.items()]))
    assert (routed.provider.name, routed.path) == ("vertex", path[len("/vertex"):])


@pytest.mark.parametrize("name,value", [
    ("Authorization", "Bearer sk-proj-openai-secret"),
    ("authorization", "Basic dXNlcjpwYXNz"),
    ("Proxy-Authorization", "Bearer not-a-google-token"),
    ("api-key", "azure-secret"),
    ("authorization", "Bearer ya29.token extra"),
    ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJzYUBwLmlhbSJ9"),  # two parts: not a JWT
])
def test_any_other_credential_sent_to_vertex_is_refused_naming_its_header(providers, name, value):
    path = "/vertex" + VERTEX + "/google/models/m:generateContent"
    headers = Headers([(b"authorization", b"Bearer ya29.a0AfB_token")] if name.lower() != "authorization" else [])
    headers.fields = (*headers.fields, (name.encode(), value.encode()))
    with pytest.raises(Misrouted) as refused:
        route(list(providers.values()), path, headers)
    exc = refused.value
    assert (exc.provider.name, exc.status, exc.code) == ("vertex", 401, "aispendtrack_not_a_google_token")
    assert exc.message == (f"AiSpendTrack did not forward this call: its {name} header is not a Google OAuth "
                           f"access token, and Vertex AI is sent nothing else (a key is never sent to another "
                           f"provider). Authenticate with Google credentials (see docs/providers.md). "
                           f"Nothing was forwarded.")



@pytest.mark.parametrize("provider,path,model", [
    ("google", "/v1beta/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash"),
    ("vertex", f"{VERTEX}/google/models/gemini-2.5-flash:streamGenerateContent", "gemini-2.5-flash"),
    ("vertex", f"{VERTEX}/anthropic/models/claude-haiku-4-5:rawPredict", "claude-haiku-4-5"),
    ("bedrock", f"/model/{CLAUDE}/invoke", CLAUDE),
    ("bedrock", f"/model/{CLAUDE}/converse", CLAUDE),
])
def test_an_answer_that_is_not_the_providers_keeps_the_model_the_url_names(providers, book, provider, path, model):
    """A gateway's HTML error page, or an empty answer: the call is still the URL's model's, so a
    report by model counts the failure where it belongs (at $0: a failed call is not billed)."""
    page = _row(providers, book, provider, path, "text/html", b"<html><body>502 Bad Gateway</body></html>",
                status=502)
    empty = _row(providers, book, provider, path, "application/json", b"", status=503)
    assert [(r["model"], r["status"], r["usage_source"], r["cost_usd"]) for r in (page, empty)] == [
        (model, 502, "none", 0), (model, 503, "none", 0)]


def test_a_grounded_vertex_gemini_answer_without_its_model_version_is_billed_by_the_paths_model(providers, book):
    """Gemini 2.x bills grounding per prompt, Gemini 3 per search: the path's model decides when the
    answer names no ``modelVersion``."""
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5}
    for model, searches, prompts in (("gemini-2.5-flash", 0, 1), ("gemini-3-pro-preview", 2, 0)):
        body = gcp._gemini_chunk("Hi", "STOP", usage, model)
        del body["modelVersion"]
        body["candidates"][0]["groundingMetadata"] = {"webSearchQueries": ["weather paris", "weather lyon"]}
        row = _row(providers, book, "vertex", f"{VERTEX}/google/models/{model}:generateContent", "application/json",
                   json.dumps(body).encode(), request={"contents": []})
        assert (row["model"], row["web_search_requests"], row["grounded_prompts"]) == (model, searches, prompts)
