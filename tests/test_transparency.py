"""The proxy changes nothing the caller or the provider would notice, except our own headers."""

from __future__ import annotations

import json
import threading
import time

import anthropic
import httpx
import openai
import pytest

from .helpers import run_cli, until_key_works, until_refused

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
HOP_BY_HOP = {"date", "connection", "keep-alive", "transfer-encoding"}


def _fetch_raw(url: str, headers: dict, body: dict) -> tuple[int, dict, bytes]:
    with httpx.Client() as client, client.stream("POST", url, headers=headers, json=body) as response:
        raw = b"".join(response.iter_raw())  # the bytes on the wire, still gzip-encoded where they were
        kept = {k: v for k, v in response.headers.items() if k not in HOP_BY_HOP}
        return response.status_code, kept, raw


@pytest.mark.parametrize("path,scenario,body", [
    ("/v1/chat/completions", "legacy", CHAT),
    ("/v1/chat/completions", "gzip", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
    ("/v1/messages", "", {"model": "claude-sonnet-4-20250514", "max_tokens": 10, "messages": CHAT["messages"]}),
    ("/v1/messages", "plain", {"model": "claude-sonnet-4-20250514", "max_tokens": 10,
                               "messages": CHAT["messages"], "stream": True}),
])
def test_response_bytes_and_headers_equal_a_direct_call(proxy, upstream, path, scenario, body):
    credentials = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"} if path == "/v1/messages" \
        else {"authorization": "Bearer sk-test"}
    headers = {**credentials, "x-test-scenario": scenario}
    direct = _fetch_raw(upstream.url + path, headers, body)
    proxied = _fetch_raw(proxy.url + path, {**headers, "x-aispendtrack-key": proxy.key}, body)
    assert proxied == direct


def test_our_headers_are_stripped_and_everything_else_forwarded(proxy, upstream, customer):
    client = proxy.openai(api_key="sk-provider-secret",
                          headers={"x-customer-id": customer, "x-feature": "search", "x-custom": "kept"})
    client.chat.completions.create(**CHAT)
    received = upstream.last()
    names = {k.lower() for k in received.headers}
    assert not names & {"x-aispendtrack-key", "x-customer-id", "x-feature"}
    assert received.headers["authorization"] == "Bearer sk-provider-secret"
    assert received.headers["x-custom"] == "kept"
    assert json.loads(received.body) == CHAT
    assert received.headers["host"] == f"127.0.0.1:{upstream.port}"


def test_anthropic_and_openai_share_one_port(proxy, upstream, customer):
    proxy.anthropic(headers={"x-customer-id": customer}).messages.create(
        model="claude-sonnet-4-20250514", max_tokens=10, messages=CHAT["messages"])
    assert upstream.last().path == "/v1/messages"
    sent = upstream.last().headers  # this SDK version authenticates with a bearer token
    assert sent.get("x-api-key", sent.get("authorization")) in ("sk-ant-test-key", "Bearer sk-ant-test-key")
    assert sent["anthropic-version"]


def test_missing_key_is_refused_in_the_openai_shape(proxy, upstream):
    before = len(upstream.received)
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-x", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(**CHAT)
    assert "Missing x-aispendtrack-key header" in raised.value.message
    assert raised.value.code == "aispendtrack_missing_key"
    assert len(upstream.received) == before  # never forwarded


def test_wrong_key_is_refused_in_the_anthropic_shape(proxy, upstream):
    before = len(upstream.received)
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-x", max_retries=0,
                                 default_headers={"x-aispendtrack-key": "ask_not-a-real-key"})
    with pytest.raises(anthropic.AuthenticationError) as raised:
        client.messages.create(model="claude-sonnet-4-20250514", max_tokens=10, messages=CHAT["messages"])
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "authentication_error"
    assert "not an active AiSpendTrack key" in raised.value.body["error"]["message"]
    assert len(upstream.received) == before


@pytest.mark.parametrize("placed", ["api_key", "api-key", "x-custom"])
def test_our_key_in_a_header_that_goes_to_the_provider_is_refused(proxy, upstream, placed):
    """A client given its AiSpendTrack key as api_key= (or in a header of its own) would hand it to
    the provider: refused, never forwarded, whatever else it carries."""
    before = len(upstream.received)
    client = (proxy.openai(api_key=proxy.key) if placed == "api_key"
              else proxy.openai(headers={placed: f"{proxy.key}"}))
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(**CHAT)
    where = "authorization" if placed == "api_key" else placed
    assert raised.value.code == "aispendtrack_key_in_provider_header"
    assert f"An AiSpendTrack key (ask_...) is in the {where} header" in raised.value.message
    assert len(upstream.received) == before


def test_a_header_value_with_ask_that_is_not_a_key_is_forwarded(proxy, upstream, customer):
    """Only a whole key (ask_ and its 43 characters) is refused: a word holding "ask_", or a path
    starting with it, is not one."""
    values = {"x-task": "task_0123456789abcdefghij0123456789abcdefghij0123",
              "x-ref": "https://app.example/ask_anything_about_your_docs",
              "x-long": "ask_" + "a" * 50}
    client = proxy.openai(headers={"x-customer-id": customer, **values})
    client.chat.completions.create(**CHAT)
    assert {name: upstream.last().headers[name] for name in values} == values


@pytest.mark.parametrize("header,value", [("x-customer-id", "c" * 129), ("x-feature", "tab\there")])
def test_bad_tags_get_a_400_that_states_the_rule(proxy, upstream, header, value):
    before = len(upstream.received)
    client = proxy.openai(headers={header: value})
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(**CHAT)
    assert f"The {header} header must be 1 to 128 printable characters" in raised.value.message
    assert len(upstream.received) == before


def test_revoked_key_is_refused_within_five_seconds(proxy):
    created = json.loads(run_cli(proxy.home, "keys", "create", "--name", "temp", "--json"))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-x", max_retries=0,
                           default_headers={"x-aispendtrack-key": created["key"]})
    until_key_works(lambda: client.chat.completions.create(**CHAT), 5, "new key never accepted")
    run_cli(proxy.home, "keys", "revoke", str(created["id"]))
    until_refused(lambda: client.chat.completions.create(**CHAT), 5, "revoked key still accepted after 5 s")
    listed = json.loads(run_cli(proxy.home, "keys", "list", "--json"))
    assert [k["status"] for k in listed if k["id"] == created["id"]] == ["revoked"]
    assert all("key_hash" not in k and "key" not in k for k in listed)


@pytest.mark.parametrize("make_call", ["openai", "anthropic"])
def test_first_chunk_reaches_the_client_while_the_upstream_is_still_sending(proxy, upstream, customer, make_call):
    upstream.gate.clear()
    first = {}

    def consume():
        if make_call == "openai":
            stream = proxy.openai(headers={"x-customer-id": customer, "x-test-scenario": "gated"}
                                  ).chat.completions.create(**CHAT, stream=True)
        else:
            stream = proxy.anthropic(headers={"x-customer-id": customer, "x-test-scenario": "gated"}
                                     ).messages.create(model="claude-sonnet-4-20250514", max_tokens=10,
                                                       messages=CHAT["messages"], stream=True)
        iterator = iter(stream)
        first["event"] = next(iterator)
        first["gate_was_open"] = upstream.gate.is_set()
        first["rest"] = list(iterator)

    reader = threading.Thread(target=consume)
    reader.start()
    deadline = time.monotonic() + 20
    while "event" not in first and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "event" in first, "first chunk did not arrive while the upstream held the rest back"
    assert first["gate_was_open"] is False
    upstream.gate.set()
    reader.join(10)
    assert first["rest"], "stream did not finish after the upstream continued"
    [row] = proxy.rows(customer)
    assert row["stream"] is True and row["ttft_ms"] < row["latency_ms"]
