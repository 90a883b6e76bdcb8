"""Bad days upstream and bad input from callers: the proxy answers clearly, keeps serving, records the call."""

from __future__ import annotations

import json
import socket
import threading
import time

import anthropic
import httpx
import openai
import pytest

from .helpers import free_port, start_proxy

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": "claude-sonnet-4-20250514", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def impatient(tmp_path_factory, upstream):
    """A proxy that gives the upstream one second and allows five wrong keys a minute per address."""
    home = tmp_path_factory.mktemp("home")
    running = start_proxy(home, upstream.url, tmp_path_factory.mktemp("logs") / "proxy.log",
                          extra_args=("--upstream-timeout", "1", "--auth-failures-per-minute", "5"))
    yield running
    running.stop()


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_refused_upstream_is_a_502_each_sdk_can_read(tmp_path, customer):
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = start_proxy(tmp_path / "home", dead, tmp_path / "proxy.log")
    try:
        with pytest.raises(openai.InternalServerError) as raised:
            proxy.openai(headers={"x-customer-id": customer}).chat.completions.create(**CHAT)
        assert raised.value.status_code == 502
        assert raised.value.body["message"].startswith("AiSpendTrack could not get a response from the openai upstream")
        assert "Connect call failed" in raised.value.body["message"]
        assert "Check the proxy's --openai-upstream setting" in raised.value.body["message"]  # the flag there is
        with pytest.raises(anthropic.InternalServerError) as raised:
            proxy.anthropic(headers={"x-customer-id": customer}).messages.create(**MESSAGE)
        assert raised.value.status_code == 502
        assert raised.value.body["error"]["type"] == "api_error"
        assert "anthropic upstream" in raised.value.body["error"]["message"]
        assert "--anthropic-upstream setting" in raised.value.body["error"]["message"]
        rows = proxy.rows(customer, expect=2)
        assert sorted(r["provider"] for r in rows) == ["anthropic", "openai"]
        assert all(r["status"] == 502 and r["outcome"] == "upstream_failed" and r["usage_source"] == "none"
                   for r in rows)
    finally:
        proxy.stop()


def test_silent_upstream_is_a_504_and_the_proxy_keeps_serving(impatient, customer):
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as raised:
        impatient.openai(headers={"x-customer-id": customer, "x-test-scenario": "hang"}).chat.completions.create(**CHAT)
    assert raised.value.status_code == 504
    assert "sent no response within 1 s" in raised.value.body["message"]
    assert time.monotonic() - started < 5
    with pytest.raises(anthropic.APIStatusError) as raised:
        impatient.anthropic(headers={"x-customer-id": customer, "x-test-scenario": "hang"}).messages.create(**MESSAGE)
    assert raised.value.status_code == 504 and raised.value.body["error"]["type"] == "timeout_error"
    # The next call on the same client is served normally.
    reply = impatient.openai(headers={"x-customer-id": customer}).chat.completions.create(**CHAT)
    assert reply.usage.total_tokens > 0
    rows = impatient.rows(customer, expect=3)
    assert sorted((r["status"], r["outcome"]) for r in rows) == [(200, "completed"), (504, "upstream_timeout"),
                                                                  (504, "upstream_timeout")]


def test_wrong_keys_from_one_address_are_slowed_but_a_valid_key_there_still_works(impatient):
    def call(key: str, source: str) -> httpx.Response:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source)) as client:
            return client.post(f"{impatient.url}/v1/chat/completions", json=CHAT,
                               headers={"x-aispendtrack-key": key, "authorization": "Bearer sk-test"})

    guesses = [call(f"ask_guess{n}", "127.0.0.3").status_code for n in range(7)]
    assert guesses == [401] * 5 + [429] * 2
    refused = call("", "127.0.0.3")  # a keyless neighbour behind the same NAT is throttled too
    assert refused.status_code == 429 and 0 < int(refused.headers["retry-after"]) <= 60
    assert "Too many calls with a wrong x-aispendtrack-key from 127.0.0.3" in refused.json()["error"]["message"]
    # ...but the valid keys of everyone else at that address go on working.
    assert [call(impatient.key, "127.0.0.3").status_code for _ in range(3)] == [200] * 3
    assert call(impatient.key, "127.0.0.4").status_code == 200
    assert call("ask_typo", "127.0.0.4").status_code == 401


def test_bad_request_bodies_are_forwarded_untouched_and_recorded(proxy, upstream, customer):
    headers = {"x-aispendtrack-key": proxy.key, "x-customer-id": customer, "content-type": "application/json"}
    bodies = [b"{not json", b"\xff\xfe\x00 not utf-8 \x80",
              b'{"model": "gpt-4o", "messages": "' + b"x" * 12_000_000 + b'"}']
    for body in bodies:
        reply = httpx.post(f"{proxy.url}/v1/chat/completions", content=body, headers=headers, timeout=30)
        assert reply.status_code == 200  # the fake provider's own answer
        assert upstream.last().body == body
    rows = proxy.rows(customer, expect=3)
    assert len(rows) == 3 and all(r["status"] == 200 for r in rows)


def test_hostile_tags_are_stored_as_text_or_refused(proxy, customer):
    sql = customer[:60] + "'); DROP TABLE calls; --"
    proxy.openai(headers={"x-customer-id": sql}).chat.completions.create(**CHAT)
    [row] = proxy.rows(sql)
    assert row["customer_id"] == sql
    reply = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT,
                       headers={"x-aispendtrack-key": proxy.key, "x-feature": "a\tb"})
    assert reply.status_code == 400 and "printable" in reply.json()["error"]["message"]


def test_thousands_of_headers_are_forwarded_and_the_proxy_keeps_serving(proxy, upstream, customer):
    headers = [("x-aispendtrack-key", proxy.key), ("x-customer-id", customer)]
    headers += [(f"x-filler-{n}", "v" * 20) for n in range(1500)]  # ~50 KB, under the 64 KB bound
    reply = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30)
    assert reply.status_code == 200
    received = upstream.last().headers
    assert sum(name.startswith("x-filler-") for name in received) == 1500 and "x-customer-id" not in received
    assert proxy.openai().chat.completions.create(**CHAT).usage.total_tokens > 0


def test_a_gzip_bomb_from_upstream_reaches_the_client_as_sent_and_memory_stays_bounded(proxy, upstream, customer):
    before = rss_kib(proxy.process.pid)
    headers = {"x-aispendtrack-key": proxy.key, "x-customer-id": customer, "x-test-scenario": "gzip_bomb",
               "accept-encoding": "gzip"}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30) as reply:
        raw = b"".join(reply.iter_raw())
    from .upstream import _bomb
    assert reply.status_code == 200 and raw == _bomb()
    [row] = proxy.rows(customer)
    # Read along up to the limit, then stopped: answered in full, its usage unknown to us, so
    # unpriced, never an estimate of the part read.
    assert (row["usage_source"], row["status"], row["cost_usd"]) == ("none", 200, None), row
    assert row["error"].startswith("usage unreadable: decoded body exceeds"), row
    # Inflating it would take 256 MB; reading along stops at the decoder's limit.
    assert rss_kib(proxy.process.pid) - before < 128 * 1024
    assert json.loads(proxy.openai().chat.completions.create(**CHAT).to_json())["usage"]["total_tokens"] > 0


@pytest.fixture
def cut_upstream():
    """An upstream that sends a 200's head, a few bytes of its 500-byte body, and hangs up."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"
                             b'{"id":')

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_an_answer_cut_before_the_client_saw_any_of_it_is_our_502_not_mitmproxys_page(tmp_path, cut_upstream,
                                                                                        customer):
    """A response not streamed is read whole before it is sent: when its body was cut, the client got
    mitmproxy's HTML 502 ("HTTP/1 protocol error"), which no SDK parses, and the row said 200."""
    proxy = start_proxy(tmp_path / "home", cut_upstream, tmp_path / "proxy.log")
    try:
        with pytest.raises(openai.InternalServerError) as raised:
            proxy.openai(headers={"x-customer-id": customer}).chat.completions.create(**CHAT)
        assert raised.value.status_code == 502
        message = raised.value.body["message"]
        assert message.startswith("AiSpendTrack: the openai upstream 127.0.0.1:") and "answered 200 but closed the " \
            "connection before the end of its body" in message, message
        [row] = proxy.rows(customer, expect=1)
        assert (row["status"], row["outcome"]) == (502, "upstream_failed")
        # The provider made its answer before sending it: billed, so an estimate, never $0.
        assert row["usage_source"] == "partial" and row["cost_usd"] > 0 and row["priced"], row
    finally:
        proxy.stop()
