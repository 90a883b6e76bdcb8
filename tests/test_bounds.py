"""Findings 2, 8 and 9 of the hardening issue: what one client connection may take, tried with raw sockets.

A never-ending header line, slowloris connections, idle keep-alives and a flood of connections
each meet a bound; the proxy answers everyone else meanwhile and logs one line per burst.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from .helpers import closed_by_peer, start_proxy

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture(scope="module")
def strict(tmp_path_factory, upstream):
    """A proxy that allows 30 connections and gives a client 2 s to send its request headers."""
    home = tmp_path_factory.mktemp("home")
    running = start_proxy(home, upstream.url, tmp_path_factory.mktemp("logs") / "proxy.log",
                          extra_args=("--max-connections", "30", "--client-timeout", "2"))
    yield running
    running.stop()


def _connect(proxy) -> socket.socket:
    host, port = proxy.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _ok(proxy) -> bool:
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=10,
                          headers={"x-aispendtrack-key": proxy.key, "authorization": "Bearer sk-test"})
    return response.status_code == 200


def test_a_never_ending_header_line_gets_431_and_memory_stays_flat(strict):
    before = _rss_kib(strict.process.pid)
    sock = _connect(strict)
    sock.sendall(HEAD + b"x-filler: ")
    sent, refused = 0, False
    try:
        while sent < 200 * 1024 * 1024:  # 200 MB, as a header line that never ends
            sock.sendall(b"a" * 65536)
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        refused = True
    answer = b""
    try:
        answer = sock.recv(4096)
    except ConnectionResetError:
        pass
    sock.close()
    assert refused and sent < 50 * 1024 * 1024
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431")
    assert _rss_kib(strict.process.pid) - before < 50 * 1024
    assert _ok(strict)


def test_an_oversized_head_is_answered_431_with_a_reason(strict):
    sock = _connect(strict)
    sock.sendall(HEAD + b"".join(b"x-filler-%d: %s\r\n" % (n, b"v" * 60) for n in range(2000)) + b"\r\n")
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431") and b"larger than 64 KB" in answer


def test_slowloris_and_idle_keep_alive_connections_are_closed_and_others_served(strict):
    dribblers = [_connect(strict) for _ in range(20)]
    for sock in dribblers:
        sock.sendall(HEAD[:10])
    stop = threading.Event()

    def dribble() -> None:  # one byte a second each: never a complete head
        n = 10
        while not stop.is_set() and n < len(HEAD):
            for sock in dribblers:
                try:
                    sock.sendall(HEAD[n:n + 1])
                except OSError:
                    pass
            n += 1
            stop.wait(1)

    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    idle = _connect(strict)  # a keep-alive connection that finished one call and then says nothing
    idle.sendall(HEAD.replace(b"POST", b"GET").replace(b"/v1/chat/completions", b"/aispendtrack/health") + b"\r\n")
    assert idle.recv(4096).startswith(b"HTTP/1.1 200")
    try:
        assert _ok(strict)  # served while the dribblers hold their connections
        assert all(closed_by_peer(sock, within=6) for sock in dribblers)
        assert closed_by_peer(idle, within=6)
    finally:
        stop.set()
        for sock in [*dribblers, idle]:
            sock.close()
    log = strict.log_path.read_text()
    assert log.count("closed connections that sent no complete request in time: no complete") == 1, log[-3000:]


def test_connections_past_the_cap_are_closed_at_once_and_logged_once(strict):
    held = [_connect(strict) for _ in range(30)]
    time.sleep(0.3)
    extra = [_connect(strict) for _ in range(40)]
    try:
        assert all(closed_by_peer(sock, within=1) for sock in extra)  # no waiting for a timeout
        assert all(not closed_by_peer(sock, within=0.01) for sock in held[:5])
    finally:
        for sock in [*held, *extra]:
            sock.close()
    time.sleep(0.5)
    assert _ok(strict)  # the slots come back as soon as the connections go
    log = strict.log_path.read_text()
    assert log.count("refused connections over the limit: 30 open") == 1, log[-3000:]


def test_a_4_mb_event_in_1_kb_chunks_neither_stalls_other_callers_nor_escapes_metering(proxy, customer):
    started = time.monotonic()
    result: dict = {}

    def big() -> None:
        response = httpx.post(f"{proxy.url}/v1/chat/completions", timeout=60,
                              json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
                              headers={"x-aispendtrack-key": proxy.key, "authorization": "Bearer sk-test",
                                       "x-test-scenario": "big_event:4", "x-customer-id": customer})
        result["bytes"], result["seconds"] = len(response.content), time.monotonic() - started

    thread = threading.Thread(target=big)
    thread.start()
    others = []
    while thread.is_alive() and len(others) < 50:
        t0 = time.monotonic()
        assert _ok(proxy)
        others.append(time.monotonic() - t0)
    thread.join(60)
    assert result["bytes"] > 4 * 1024 * 1024
    [row] = proxy.rows(customer)
    assert (row["usage_source"], row["input_tokens"], row["output_tokens"]) == ("reported", 79, 14)
    # Quadratic buffering made the others wait 3.7 s (median); linear decoding leaves them alone.
    assert sorted(others)[len(others) // 2] < 0.5, others
