"""Reported usage on chat streams whose client did not ask for it, and the client's bytes unchanged.

The proxy adds ``stream_options.include_usage=true`` upstream, meters the usage chunk, and gives
the client the stream a direct call without it returns: compared here byte for byte (decoded),
across chunk boundaries, with ``"usage": null`` on every chunk and with gzip.
"""

from __future__ import annotations

import json
import random

import httpx
import pytest

from addon.injection import MAX_PARSED_BODY, UsageStripper, with_usage_requested

from . import payloads

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_the_request_gets_include_usage_and_nothing_else_changes():
    body = json.dumps({**CHAT, "stream": True}).encode()
    injected = with_usage_requested(body)
    assert json.loads(injected) == {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    assert injected.endswith(body[1:])  # the client's own bytes follow unchanged


@pytest.mark.parametrize("request_body,expected", [
    ({**CHAT, "stream": True, "stream_options": {"include_obfuscation": False}},
     {"include_obfuscation": False, "include_usage": True}),
    ({**CHAT, "stream": True, "stream_options": {"include_usage": False}}, {"include_usage": True}),
])
def test_existing_stream_options_are_kept(request_body, expected):
    assert json.loads(with_usage_requested(json.dumps(request_body).encode()))["stream_options"] == expected


@pytest.mark.parametrize("body", [
    json.dumps(CHAT).encode(),  # not a stream
    json.dumps({**CHAT, "stream": True, "stream_options": {"include_usage": True}}).encode(),  # asked itself
    json.dumps({**CHAT, "stream": "yes"}).encode(),
    b'{"stream": true, "messages": [',  # cut short
    json.dumps({**CHAT, "stream": True, "pad": "x" * MAX_PARSED_BODY}).encode(),  # too large to parse here
    b"",
])
def test_requests_that_need_nothing_are_left_alone(body):
    assert with_usage_requested(body) is None


@pytest.mark.parametrize("seed", range(12))
def test_stripping_gives_the_stream_without_usage_however_the_bytes_are_cut(seed):
    asked = b"".join(payloads.chat_stream(include_usage=True, usage_null=bool(seed % 2)))
    plain = b"".join(payloads.chat_stream(include_usage=False))
    if seed % 3 == 0:
        asked, plain = asked.replace(b"\n", b"\r\n"), plain.replace(b"\n", b"\r\n")
    cuts = sorted(random.Random(seed).sample(range(1, len(asked)), 30))
    stripper, out, start = UsageStripper(), b"", 0
    for cut in cuts + [len(asked)]:
        out += stripper.feed(asked[start:cut])
        start = cut
    assert out + stripper.close() == plain


def _decoded(url: str, headers: dict, body: dict) -> tuple[int, str, bytes]:
    with httpx.Client(timeout=10) as client, client.stream("POST", url, headers=headers, json=body) as response:
        return response.status_code, response.headers["content-type"], b"".join(response.iter_bytes())


@pytest.mark.parametrize("scenario", ["plain", "usage_null", "split usage_null", "gzip usage_null",
                                      "gzip split usage_null"])
def test_the_client_gets_the_bytes_of_a_direct_call_and_the_row_is_reported(proxy, upstream, customer, scenario):
    body = {**CHAT, "stream": True}
    headers = {"authorization": "Bearer sk-test", "x-test-scenario": scenario}
    direct = _decoded(upstream.url + "/v1/chat/completions", headers, body)
    proxied = _decoded(proxy.url + "/v1/chat/completions",
                       {**headers, "x-aispendtrack-key": proxy.key, "x-customer-id": customer}, body)
    assert proxied == direct
    sent = json.loads(upstream.last().body)
    assert sent["stream_options"] == {"include_usage": True}
    [row] = proxy.rows(customer)
    assert (row["usage_source"], row["input_tokens"], row["output_tokens"]) == ("reported", 79, 14)
    assert (row["outcome"], row["error"]) == ("completed", None)


def test_the_openai_sdk_streaming_without_include_usage_sees_no_usage_and_the_row_is_exact(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer, "x-test-scenario": "usage_null"})
    chunks = list(client.chat.completions.create(**CHAT, stream=True))
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(payloads.STREAM_TEXT)
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "reported" and row["cost_usd"] == pytest.approx((79 * 2.5 + 14 * 10) / 1e6)


def test_a_client_that_asked_for_usage_gets_every_byte_untouched(proxy, upstream, customer):
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"authorization": "Bearer sk-test", "x-test-scenario": "usage_null"}
    direct = _decoded(upstream.url + "/v1/chat/completions", headers, body)
    proxied = _decoded(proxy.url + "/v1/chat/completions",
                       {**headers, "x-aispendtrack-key": proxy.key, "x-customer-id": customer}, body)
    assert proxied == direct and b'"usage":null' in direct[2] and b'"prompt_tokens":79' in direct[2]


@pytest.mark.parametrize("prefix", ["/mistral/v1", "/openrouter/v1"])
def test_providers_not_known_to_take_the_field_get_the_request_as_sent(proxy, upstream, customer, prefix):
    body = json.dumps({**CHAT, "stream": True}).encode()
    httpx.post(f"{proxy.url}{prefix}/chat/completions", content=body, timeout=10,
               headers={"x-aispendtrack-key": proxy.key, "authorization": "Bearer sk-test",
                        "content-type": "application/json", "x-customer-id": customer})
    assert upstream.last().body == body
