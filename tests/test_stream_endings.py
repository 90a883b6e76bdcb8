"""Streams that report no usage, and streams that end badly: still exactly one honest row each."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import time

import httpx
import openai
import pytest
import tiktoken
import tiktoken.load

from .helpers import start_proxy
from .payloads import STREAM_TEXT

CHAT = {"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Say hello to the whole team."}]}


@pytest.fixture(scope="module")
def o200k(tmp_path_factory) -> tiktoken.Encoding:
    """The o200k encoding built here, independently of the proxy's loader, from the same offline file."""
    data = gzip.decompress((importlib.resources.files("bpe_openai") / "data" / "o200k_base.tiktoken.gz").read_bytes())
    path = tmp_path_factory.mktemp("bpe") / "o200k_base.tiktoken"
    path.write_bytes(data)
    ranks = tiktoken.load.load_tiktoken_bpe(str(path), hashlib.sha256(data).hexdigest())
    return tiktoken.Encoding(name="o200k_test", pat_str=_O200K_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018})


_O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+""",
])


def chat_prompt_tokens(enc: tiktoken.Encoding, messages: list[dict]) -> int:
    """OpenAI's published recipe: 3 tokens per message plus its role and content, 3 to prime the reply."""
    return 3 + sum(3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in messages)


@pytest.fixture(scope="module")
def estimating(tmp_path_factory, upstream):
    """A proxy that does not ask for usage the client did not ask for (--no-usage-injection)."""
    running = start_proxy(tmp_path_factory.mktemp("home"), upstream.url, tmp_path_factory.mktemp("logs") / "p.log",
                          extra_args=("--no-usage-injection",))
    yield running
    running.stop()


def test_stream_without_include_usage_is_estimated_not_zero_when_injection_is_off(estimating, customer, o200k):
    proxy = estimating
    client = proxy.openai(headers={"x-customer-id": customer})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in
                   client.chat.completions.create(**CHAT, stream=True) if chunk.choices)
    assert text == "".join(STREAM_TEXT)
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "estimated"
    assert row["output_tokens"] == len(o200k.encode(text))
    assert row["input_tokens"] == chat_prompt_tokens(o200k, CHAT["messages"])
    assert row["cost_usd"] == pytest.approx((row["input_tokens"] * 2.5 + row["output_tokens"] * 10) / 1e6, abs=1e-12)
    assert row["priced"] is True


def test_client_disconnect_mid_stream_records_one_partial_row(proxy, upstream, customer, o200k):
    upstream.stream_abandoned.clear()
    headers = {"x-aispendtrack-key": proxy.key, "x-customer-id": customer, "x-test-scenario": "slow",
               "authorization": "Bearer sk-test"}
    with httpx.Client() as client, client.stream("POST", f"{proxy.url}/v1/chat/completions", headers=headers,
                                                 json={**CHAT, "stream": True}) as response:
        received = b""
        for piece in response.iter_raw():
            received += piece
            if received.count(b"\n\n") >= 6:  # role chunk + 5 content chunks, then hang up
                break
    assert upstream.stream_abandoned.wait(10), "upstream kept streaming to nobody"
    rows = proxy.rows(customer, timeout=30)  # a loaded CI host took over 5 s to flush it
    time.sleep(0.5)
    assert proxy.rows(customer) == rows and len(rows) == 1
    [row] = rows
    assert row["outcome"] == "client_disconnected" and row["usage_source"] == "partial"
    assert row["status"] == 200 and row["stream"] is True
    assert row["input_tokens"] == chat_prompt_tokens(o200k, CHAT["messages"])
    # At least what the client saw was generated (and at most a little more, still in flight).
    assert len(o200k.encode("".join(STREAM_TEXT[:5]))) <= row["output_tokens"] < 200
    assert row["cost_usd"] > 0


def test_upstream_dying_mid_stream_reaches_the_client_and_is_recorded(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer, "x-test-scenario": "die"})
    seen = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for chunk in client.chat.completions.create(**CHAT, stream=True):
            seen.append(chunk)
    assert len(seen) == 4  # the role chunk and three content chunks made it before the upstream fell over
    [row] = proxy.rows(customer)
    assert row["outcome"] == "upstream_failed" and row["usage_source"] == "partial"
    assert row["output_tokens"] >= 2 and row["error"]


def test_anthropic_stream_cut_short_keeps_the_input_it_was_told(proxy, customer):
    client = proxy.anthropic(headers={"x-customer-id": customer, "x-test-scenario": "die"})
    with pytest.raises(Exception):
        with client.messages.stream(model="claude-sonnet-4-20250514", max_tokens=100,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            stream.until_done()
    [row] = proxy.rows(customer)
    assert row["outcome"] == "upstream_failed" and row["usage_source"] == "partial"
    assert row["input_tokens"] == 377  # from message_start, exact
    assert row["output_tokens"] >= 1


def test_an_anthropic_stream_cut_before_message_start_is_estimated_from_the_request_not_zero(proxy, customer, o200k):
    """Cut after its 200 and before any event: Anthropic ran the request and bills its input, which
    no event told; the row was $0.00, priced, 0 tokens. Estimated from the request's text now."""
    client = proxy.anthropic(headers={"x-customer-id": customer, "x-test-scenario": "die_at_start"})
    system, question = "You answer in one line.", "Say hello to the whole team, please."
    with pytest.raises(Exception):
        with client.messages.stream(model="claude-sonnet-4-20250514", max_tokens=100, system=system,
                                    messages=[{"role": "user", "content": question}]) as stream:
            stream.until_done()
    [row] = proxy.rows(customer)
    assert row["outcome"] == "upstream_failed" and row["usage_source"] == "partial"
    assert row["input_tokens"] == len(o200k.encode(system)) + len(o200k.encode(question)) > 0
    assert row["output_tokens"] == 0
    assert row["cost_usd"] == pytest.approx(row["input_tokens"] * 3 / 1e6, abs=1e-12) and row["cost_usd"] > 0


def test_a_stream_that_ends_without_its_terminal_event_is_partial_not_reported(proxy, customer, o200k):
    """message_start says output_tokens 1; the real count came in message_delta, which never did."""
    client = proxy.anthropic(headers={"x-customer-id": customer, "x-test-scenario": "no_stop"})
    events = list(client.messages.create(model="claude-sonnet-4-20250514", max_tokens=100, stream=True,
                                         messages=[{"role": "user", "content": "hi"}]))
    assert events[-1].type == "content_block_stop"  # the client got all the provider sent, nothing more
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "".join(STREAM_TEXT)
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "partial"
    assert row["input_tokens"] == 377  # from message_start, exact
    assert row["output_tokens"] == len(o200k.encode(text))  # counted from the text, not message_start's 1
    assert row["cost_usd"] == pytest.approx((377 * 3 + row["output_tokens"] * 15) / 1e6, abs=1e-12)


def test_upstream_unreachable_gives_502_and_a_row(tmp_path, customer):
    from .helpers import free_port, start_proxy
    proxy = start_proxy(tmp_path / "home", f"http://127.0.0.1:{free_port()}", tmp_path / "proxy.log")
    try:
        client = proxy.openai(headers={"x-customer-id": customer})
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(**CHAT)
        assert raised.value.status_code == 502
        [row] = proxy.rows(customer)
        assert row["outcome"] == "upstream_failed" and row["status"] == 502 and row["usage_source"] == "none"
    finally:
        proxy.stop()


def test_a_complete_stream_is_completed_even_if_the_provider_holds_the_connection_after_done(proxy, customer):
    def streamed(scenario: str) -> tuple[list, float]:
        tag = customer if scenario == "linger" else f"{customer}-baseline"
        client = proxy.openai(headers={"x-customer-id": tag, "x-test-scenario": scenario})
        started = time.monotonic()
        chunks = list(client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True}))
        return chunks, time.monotonic() - started

    plain = max(streamed("plain")[1] for _ in range(2))  # the same stream's time on this machine, now
    chunks, took = streamed("linger")
    # The SDK stopped at [DONE] and closed, not waiting the provider's 3 s for the body to end.
    assert took < plain + 2, (took, plain)
    assert chunks[-1].usage.completion_tokens == 14
    [row] = proxy.rows(customer)
    assert (row["outcome"], row["usage_source"], row["error"]) == ("completed", "reported", None)
    assert (row["input_tokens"], row["output_tokens"]) == (79, 14)


@pytest.mark.parametrize("path,body,last", [
    ("/v1/messages", {"model": "claude-sonnet-4-20250514", "max_tokens": 10, "stream": True,
                      "messages": [{"role": "user", "content": "hi"}]}, b"message_stop"),
    ("/v1/responses", {"model": "gpt-5", "input": "hi", "stream": True}, b"response.completed"),
])
def test_a_client_that_stops_at_the_terminal_event_leaves_a_completed_row(proxy, customer, path, body, last):
    headers = {"x-aispendtrack-key": proxy.key, "x-customer-id": customer, "x-test-scenario": "linger",
               "authorization": "Bearer sk-test"}
    if path == "/v1/messages":
        headers |= {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
    seen = b""
    with httpx.Client(timeout=10) as client, client.stream("POST", proxy.url + path, headers=headers,
                                                           json=body) as response:
        for piece in response.iter_raw():
            seen += piece
            if last in seen and seen.endswith(b"\n\n"):
                break  # as an SDK does: it has everything, and closes
    [row] = proxy.rows(customer)
    assert (row["outcome"], row["usage_source"], row["error"]) == ("completed", "reported", None)
    assert row["cost_usd"] > 0


def test_a_crlf_stream_whose_last_line_end_is_a_lone_cr_is_completed_when_the_client_closes(proxy, customer):
    """SSE takes a lone CR as a line end: an SDK has [DONE] at "data: [DONE]\\r\\n\\r" and closes. The
    proxy's reader held that event for the LF that might follow, so the call was recorded cut
    short by the client (client_disconnected, partial) though its answer was whole."""
    headers = {"x-aispendtrack-key": proxy.key, "x-customer-id": customer, "x-test-scenario": "lone_cr linger",
               "authorization": "Bearer sk-test"}
    seen = b""
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", proxy.url + "/v1/chat/completions", headers=headers,
            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}}) as response:
        for piece in response.iter_raw():
            seen += piece
            if seen.endswith(b"data: [DONE]\r\n\r"):
                break  # the SDK's end of the stream: it closes
    [row] = proxy.rows(customer)
    assert (row["outcome"], row["usage_source"], row["error"]) == ("completed", "reported", None)
    assert (row["input_tokens"], row["output_tokens"]) == (79, 14)
