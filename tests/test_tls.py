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
