"""Reported usage on chat streams whose client did not ask for it, and the client's bytes unchanged.

The proxy adds ``stream_options.include_usage=true`` upstream, meters the usage chunk, and gives
the client the stream a direct call without it returns: compared here byte for byte (decoded),
across chunk boundaries, with ``"usage": null`` on every chunk and with gzip.
"""

from __future__ import annotations

import base64
import gzip
import json
import random

import httpx
import httpx2  # the openai SDK's own HTTP library
import openai
import pytest

from addon.injection import MAX_JSON_VALUES, MAX_PARSED_BODY, UsageStripper, with_usage_requested

from . import payloads
from .helpers import cost

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_the_request_gets_include_usage_and_nothing_else_changes():
    body = json.dumps({**CHAT, "stream": True}).encode()
    injected = with_usage_requested(body).body
    assert json.loads(injected) == {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    assert injected.endswith(body[1:])  # the client's own bytes follow unchanged


@pytest.mark.parametrize("request_body,expected", [
    ({**CHAT, "stream": True, "stream_options": {"include_obfuscation": False}},
     {"include_obfuscation": False, "include_usage": True}),
    ({**CHAT, "stream": True, "stream_options": {"include_usage": False}}, {"include_usage": True}),
    ({**CHAT, "stream": True, "stream_options": None}, {"include_usage": True}),
])
def test_existing_stream_options_are_kept(request_body, expected):
    body = json.dumps(request_body).encode()
    sent = json.dumps(request_body["stream_options"]).encode()
    # Only the value of stream_options changes; every other byte is the client's.
    assert with_usage_requested(body).body == body.replace(sent, json.dumps(expected, separators=(",", ":")).encode())


@pytest.mark.parametrize("body,expected", [
    # Names written with escapes are the same names to the provider.
    (b'{"str\\u0065am": true, "stream_opti\\u006fns": {"include_usage": false}}',
     b'{"str\\u0065am": true, "stream_opti\\u006fns": {"include_usage":true}}'),
    # A name given twice: whichever the provider takes, it asks for usage.
    (b'{"stream": true, "stream_options": {"include_usage": true}, "stream_options": {"x": 1}}',
     b'{"stream": true, "stream_options": {"include_usage": true}, "stream_options": {"x":1,"include_usage":true}}'),
    (b'{"stream": false, "stream": true}',
     b'{"stream_options":{"include_usage":true},"stream": false, "stream": true}'),
    (b'{"stream_options": {"include_usage": true, "include_\\u0075sage": false}, "stream": true}',
     b'{"stream_options": {"include_usage":true}, "stream": true}'),
])
def test_the_parsed_members_decide_however_they_are_written(body, expected):
    assert with_usage_requested(body).body == expected


@pytest.mark.parametrize("body,reason", [
    (json.dumps(CHAT).encode(), None),  # not a stream
    (json.dumps({**CHAT, "stream": True, "stream_options": {"include_usage": True}}).encode(), None),  # asked
    (json.dumps({**CHAT, "stream": "yes"}).encode(), None),
    (b"", None),
    (b'{"stream": true, "messages": [', "the request body is cut short"),
    (json.dumps({**CHAT, "stream": True, "stream_options": "usage"}).encode(), "stream_options is not an object"),
    (b'{"stream": true, "m": [' + b"[]," * MAX_JSON_VALUES + b"0]}",
     "the request body holds too many JSON values to read"),
])
def test_requests_that_need_nothing_or_cannot_be_read_are_left_alone(body, reason):
    assert with_usage_requested(body) == (None, reason)


def test_a_body_over_the_limit_is_not_read():
    body = json.dumps({**CHAT, "stream": True, "pad": "x" * MAX_PARSED_BODY}).encode()
    assert with_usage_requested(body) == (None, f"the request body is {len(body):,} bytes, more than the "
                                                f"{MAX_PARSED_BODY:,} the proxy reads")


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


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("step", [1, 2, 3, 5])
def test_stripping_holds_when_every_line_end_comes_apart(newline, step):
    """A stream whose blank lines arrive a byte or two at a time (\r, \n, \r, \n): the separator
    was looked for across two pieces only, so no event was ever cut out, and at the end the whole
    stream, seen as one event holding the usage, was dropped: the client got nothing."""
    events = [e.replace(b"\n", newline) for e in payloads.chat_stream(include_usage=True, usage_null=True)]
    plain = b"".join(payloads.chat_stream(include_usage=False)).replace(b"\n", newline)
    pieces = []
    for event in events:  # the event's text in pieces of ``step``, then its line ends a byte each
        body = event.rstrip(b"\r\n")
        pieces += [body[i:i + step] for i in range(0, len(body), step)]
        pieces += [bytes([byte]) for byte in event[len(body):]]
    stripper = UsageStripper()
    out = b"".join(stripper.feed(piece) for piece in pieces)
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


def test_a_stream_gzipped_an_event_at_a_time_is_read_to_its_usage(proxy, upstream, customer):
    """A server that compresses each event apart sends a gzip member per event: the proxy read the
    first alone, never the usage in the last (the row a prompt-only estimate, without an error)."""
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"authorization": "Bearer sk-test", "x-test-scenario": "gzip_members", "accept-encoding": "gzip",
               "x-aispendtrack-key": proxy.key, "x-customer-id": customer}
    with httpx.Client(timeout=10) as client, \
            client.stream("POST", proxy.url + "/v1/chat/completions", headers=headers, json=body) as response:
        raw = b"".join(response.iter_raw())
    assert raw == b"".join(gzip.compress(e, mtime=0) for e in payloads.chat_stream(include_usage=True))  # as sent
    [row] = proxy.rows(customer)
    assert (row["usage_source"], row["input_tokens"], row["output_tokens"], row["error"]) == ("reported", 79, 14, None)


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


# A streamed reasoning call: almost all of its cost is in tokens the client never sees, so only the
# provider's usage can price it (an estimate from the visible text misses ~99% of it).
REASONING = {"prompt_tokens": 1500, "completion_tokens": 1825, "total_tokens": 3325,
             "completion_tokens_details": {"reasoning_tokens": 1700}}
ASKED = b'"stream_options":{"include_usage":true},'
# Past the old 1 MB parse limit, and within what OpenAI takes (50 MB of images per request).
IMAGE = "data:image/png;base64," + base64.b64encode(random.Random(7).randbytes(6 * 1024 * 1024)).decode()
SCHEMA_TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"include_usage": True}}}}  # a JSON Schema may be just `true`


class Rewriting(httpx2.BaseTransport):
    """Sends the SDK's request with its body rewritten, as an unusual or hostile client would."""

    def __init__(self, rewrite) -> None:
        self.rewrite, self.sent, self._inner = rewrite, [], httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = self.rewrite(request.read())
        self.sent.append(body)
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
        return self._inner.handle_request(httpx2.Request(request.method, request.url, headers=headers,
                                                        content=body, extensions=request.extensions))


def _duplicate_include_usage(body: bytes) -> bytes:
    assert b'"stream_options":{"include_usage":true}' in body
    return body.replace(b'"stream_options":{"include_usage":true}',
                        b'"stream_options":{"include_usage": true, "include_usage": false}')


BYPASSES = {
    # name: (what the client's SDK call adds, how its bytes are rewritten, what goes upstream instead)
    "whitespace past 1 MB": ({}, lambda b: b"{" + b" \n" * 600_000 + b[1:], lambda sent: b"{" + ASKED + sent[1:]),
    "6 MB image": ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {
        "type": "image_url", "image_url": {"url": IMAGE}}]}]}, None, lambda sent: b"{" + ASKED + sent[1:]),
    "duplicate include_usage": ({"stream_options": {"include_usage": True}}, _duplicate_include_usage,
                                lambda sent: sent.replace(b'{"include_usage": true, "include_usage": false}',
                                                          b'{"include_usage":true}')),
    "include_usage in a tool schema": ({"tools": [SCHEMA_TOOL]}, None, lambda sent: b"{" + ASKED + sent[1:]),
}


@pytest.mark.parametrize("name", BYPASSES)
def test_no_request_shape_turns_reported_usage_into_an_estimate(proxy, upstream, customer, name):
    extra, rewrite, expected = BYPASSES[name]
    transport = Rewriting(rewrite or (lambda body: body))
    client = proxy.openai(headers={"x-customer-id": customer},
                          http_client=openai.DefaultHttpxClient(transport=transport))
    call = {**CHAT, "stream": True, "extra_body": {"test_usage": REASONING}, **extra}
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**call) if c.choices)
    assert text == "".join(payloads.STREAM_TEXT)
    [sent] = transport.sent
    assert upstream.last().body == expected(sent)  # the client's bytes, but for the usage we asked for
    [row] = proxy.rows(customer)
    assert (row["usage_source"], row["error"]) == ("reported", None)
    assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (1500, 1825, 1700)
    assert row["cost_usd"] == pytest.approx(cost((1500, "2.5"), (1825, "10")), abs=1e-12)


def test_a_body_over_the_providers_limit_goes_as_sent_and_its_row_says_why(proxy, upstream, customer):
    image = "data:image/png;base64," + "A" * MAX_PARSED_BODY
    transport = Rewriting(lambda body: body)
    client = proxy.openai(headers={"x-customer-id": customer}, timeout=120,
                          http_client=openai.DefaultHttpxClient(transport=transport))
    stream = client.chat.completions.create(model="gpt-4o", stream=True, extra_body={"test_usage": REASONING},
                                            messages=[{"role": "user", "content": [
                                                {"type": "image_url", "image_url": {"url": image}}]}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "".join(payloads.STREAM_TEXT)
    assert upstream.last().body == transport.sent[0]
    [row] = proxy.rows(customer, timeout=20)
    # Unknown rather than a wrong estimate: the prompt is too large to count, and the row says why.
    assert (row["usage_source"], row["cost_usd"], row["priced"]) == ("none", None, False)
    assert row["error"] == (f"usage not requested: the request body is {len(transport.sent[0]):,} bytes, more than "
                            f"the {MAX_PARSED_BODY:,} the proxy reads")


def test_a_body_of_more_values_than_the_proxy_reads_goes_as_sent_and_its_row_says_why(proxy, upstream, customer):
    transport = Rewriting(lambda body: body)
    client = proxy.openai(headers={"x-customer-id": customer},
                          http_client=openai.DefaultHttpxClient(transport=transport))
    pad = [[]] * (MAX_JSON_VALUES // 2 + 1)  # two brackets each: one more value than is read
    stream = client.chat.completions.create(**CHAT, stream=True, extra_body={"test_usage": REASONING, "pad": pad})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "".join(payloads.STREAM_TEXT)
    assert upstream.last().body == transport.sent[0]
    [row] = proxy.rows(customer, timeout=30)  # the estimate is made on the writer thread
    assert row["usage_source"] == "estimated" and row["output_tokens"] < 100  # what the text shows, not 1,825
    assert row["error"] == "usage not requested: the request body holds too many JSON values to read"
