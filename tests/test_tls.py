"""HTTPS on both sides: the proxy serves a given certificate, and checks providers against a given CA."""

from __future__ import annotations

import ssl

import httpx
import openai
import pytest

from .certs import make_ca_and_leaf
from .helpers import start_proxy
from .test_workers import start_workers
from .upstream import FakeProvider

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_ca_and_leaf(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def https_upstream(certs):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["cert"], certs["key"])
    with FakeProvider(context) as provider:
        yield provider


def test_https_in_and_out_with_a_private_ca(tmp_path, certs, https_upstream):
    proxy = start_proxy(tmp_path / "home", https_upstream.url, tmp_path / "proxy.log", extra_args=(
        "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]), "--upstream-ca", str(certs["ca"])))
    try:
        base = proxy.url.replace("http://", "https://")
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0,
                               default_headers={"x-aispendtrack-key": proxy.key, "x-customer-id": "tls"},
                               http_client=httpx.Client(verify=ssl.create_default_context(cafile=certs["ca"])))
        assert client.chat.completions.create(**CHAT).usage.total_tokens > 0
        assert https_upstream.last().headers["authorization"] == "Bearer sk-test"
        # Plain HTTP to an HTTPS proxy is refused, so a wrong base_url cannot send keys in clear text for long.
        plain = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, headers={"x-aispendtrack-key": proxy.key})
        assert plain.status_code == 400 and "only takes HTTPS" in plain.json()["error"]["message"]
        [row] = proxy.rows("tls")
        assert row["status"] == 200 and row["cost_usd"] > 0
        assert oct((proxy.home / "tls" / "listen.pem").stat().st_mode & 0o777) == "0o600"
    finally:
        proxy.stop()


def test_workers_share_the_port_in_front_of_an_https_upstream(tmp_path, certs, https_upstream):
    """The providers' own scheme, https://: mitmproxy's reverse mode to it also binds UDP (HTTP/3), which
    a port shared by several workers cannot take; every worker must serve all the same."""
    proxy = start_workers(tmp_path / "home", https_upstream.url, tmp_path / "proxy.log", 2,
                          "--upstream-ca", str(certs["ca"]))
    try:
        client = proxy.openai(headers={"x-customer-id": "https-workers"})
        assert all(client.chat.completions.create(**CHAT).usage.total_tokens > 0 for _ in range(6))
        assert [row["status"] for row in proxy.rows("https-workers", expect=6)] == [200] * 6
    finally:
        proxy.stop()
    assert "exited at start" not in (tmp_path / "proxy.log").read_text()


def test_an_upstream_certificate_from_an_unknown_ca_is_refused(tmp_path, https_upstream):
    proxy = start_proxy(tmp_path / "home", https_upstream.url, tmp_path / "proxy.log")
    try:
        with pytest.raises(openai.InternalServerError) as raised:
            proxy.openai(headers={"x-customer-id": "untrusted"}).chat.completions.create(**CHAT)
        assert raised.value.status_code == 502
        message = raised.value.body["message"]
        assert "Certificate verify failed" in message and "--upstream-ca" in message
        [row] = proxy.rows("untrusted")
        assert row["outcome"] == "upstream_failed"
    finally:
        proxy.stop()


def _h2_post(port: int, cafile, headers: list[tuple[str, str]], body: bytes) -> int:
    """One HTTP/2 request whose body's length only the end of its stream says (no content-length,
    as HTTP/2 allows); its status."""
    import socket

    import h2.connection
    import h2.events
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["h2"])  # HTTP/2 alone, as a gRPC-style or h2-only client offers
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                             server_hostname="127.0.0.1") as sock:
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":path", "/v1/chat/completions"), (":scheme", "https"),
                              (":authority", "127.0.0.1"), *headers])
        conn.send_data(1, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        while True:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    return int(dict(event.headers)[b":status"])
            sock.sendall(conn.data_to_send())


def test_an_http2_body_without_a_length_reaches_an_http1_upstream_framed_never_as_more_requests(
        tmp_path, certs, https_upstream):
    """HTTP/2 lets a request's stream end say where its body ends. Forwarded to an HTTP/1.1
    upstream without a length, the body was read as further requests: ones the key check never saw,
    unmetered, past the key's limit (5 smuggled here, under another provider key)."""
    import json

    from .helpers import run_cli
    proxy = start_proxy(tmp_path / "home", https_upstream.url, tmp_path / "proxy.log", extra_args=(
        "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]), "--upstream-ca", str(certs["ca"])))
    try:
        run_cli(proxy.home, "keys", "set-limit", str(proxy.key_id), "--per-hour", "1")
        inner = json.dumps(CHAT)
        smuggled = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer sk-other\r\n"
                    f"content-type: application/json\r\ncontent-length: {len(inner)}\r\n\r\n{inner}")
        body = (smuggled * 5).encode()
        before = len(https_upstream.received)
        port = int(proxy.url.rsplit(":", 1)[1])
        status = _h2_post(port, certs["ca"], [("content-type", "application/json"), ("authorization", "Bearer sk-test"),
                                               ("x-aispendtrack-key", proxy.key), ("x-customer-id", "h2")], body)
        received = https_upstream.received[before:]
        assert [(r.body, r.headers["authorization"]) for r in received] == [(body, "Bearer sk-test")]
        [row] = proxy.rows("h2")
        assert row["status"] == status
    finally:
        proxy.stop()
