"""The forward-proxy mode (HTTPS_PROXY): the official clients with only environment variables set.

The proxy runs as users start it (``aispendtrack proxy --forward-port``), its providers' upstreams
pointed at the fake provider on 127.0.0.1 (``--openai-upstream``, ``--upstream``): the client calls
https://api.openai.com as ever, the proxy intercepts it with its own CA and the fake answers with
the request's Host header still the provider's.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import boto3
import botocore.exceptions
import httpx
import openai
import pytest
from google import genai
from google.genai import types
from google.oauth2.credentials import Credentials

from . import vertex_upstream as vertex_fake
from .bedrock_upstream import ACCESS_KEY, BLOCKED_WORD, CONVERSE_USAGE, GUARDRAIL, REGION, SECRET_KEY, FakeBedrock
from .bedrock_upstream import API_KEY as BEDROCK_API_KEY
from .certs import make_ca_and_leaf
from .helpers import cost, free_port, run_cli, start_proxy, until, until_read

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def upstream_certs(tmp_path_factory):
    return make_ca_and_leaf(tmp_path_factory.mktemp("upstream-certs"))


@pytest.fixture(scope="module")
def bedrock(upstream_certs):
    with FakeBedrock(upstream_certs) as fake:
        yield fake


@pytest.fixture(scope="module")
def vertex(upstream_certs):
    with vertex_fake.VertexFake(upstream_certs) as fake:
        yield fake


@pytest.fixture(scope="module")
def forward(tmp_path_factory, upstream, bedrock, vertex, upstream_certs):
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    running = start_proxy(home, upstream.url, tmp_path_factory.mktemp("logs") / "proxy.log", extra_args=(
        "--forward-port", str(port), "--upstream", f"bedrock={bedrock.url}", "--upstream", f"vertex={vertex.url}",
        "--upstream-ca", str(upstream_certs["ca"]), "--forward-host", "openai=*.llm-gateway.test",
        "--forward-local"))  # the other sites these tests reach listen on 127.0.0.1
    running.forward_port = port  # type: ignore[attr-defined]
    yield running
    running.stop()


@pytest.fixture
def env(monkeypatch, forward):
    """The environment `aispendtrack ca` prints, with the proxy credential: nothing else is set."""
    printed = run_cli(forward.home, "ca", "--forward-port", str(forward.forward_port))
    for line in printed.splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export "):].partition("=")
            monkeypatch.setenv(name, value.split("  #")[0].strip())
    # The key as the password: every client sends it so (botocore sends a credential only with both parts).
    monkeypatch.setenv("HTTPS_PROXY", f"http://aispendtrack:{forward.key}@127.0.0.1:{forward.forward_port}")
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-forward")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-forward")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return printed


def test_ca_prints_the_certificate_and_the_environment_and_keeps_its_key_private(forward, env):
    assert "SSL_CERT_FILE=" in env and "NODE_EXTRA_CA_CERTS=" in env and "AWS_CA_BUNDLE=" in env
    ca_dir = forward.home / "ca"
    assert oct(ca_dir.stat().st_mode & 0o777) == "0o700"
    assert oct((ca_dir / "mitmproxy-ca.pem").stat().st_mode & 0o777) == "0o600"
    assert f"NODE_EXTRA_CA_CERTS={ca_dir / 'mitmproxy-ca-cert.pem'}" in env


def test_openai_sdk_through_the_forward_port(forward, env, upstream, customer, monkeypatch):
    # The key as the proxy user name, as the issue writes it.
    monkeypatch.setenv("HTTPS_PROXY", f"http://{forward.key}@127.0.0.1:{forward.forward_port}")
    client = openai.OpenAI(max_retries=0, default_headers={"x-customer-id": customer, "x-feature": "fwd"})
    reply = client.chat.completions.create(**CHAT)
    assert reply.usage.prompt_tokens == 156
    received = upstream.last()
    assert received.headers["host"] == "api.openai.com"  # as the client addressed it
    assert received.headers["authorization"] == "Bearer sk-test-forward"
    assert not {"proxy-authorization", "x-customer-id", "x-feature", "x-aispendtrack-key"} & set(received.headers)
    [row] = forward.rows(customer)
    assert (row["provider"], row["endpoint"], row["model"]) == ("openai", "/v1/chat/completions",
                                                               "gpt-5-mini-2025-08-07")
    assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (156, 561, 512)
    assert row["cost_usd"] == pytest.approx(cost((156, "0.25"), (561, "2.00")), abs=1e-12)
    assert row["key_id"] == forward.key_id and row["feature"] == "fwd"


def test_openai_stream_through_the_forward_port(forward, env, customer):
    client = openai.OpenAI(max_retries=0, default_headers={"x-customer-id": customer})
    chunks = list(client.chat.completions.create(**CHAT, stream=True))
    assert all(chunk.usage is None for chunk in chunks)  # the usage we asked for is not shown to the client
    [row] = forward.rows(customer)
    assert row["stream"] is True and row["usage_source"] == "reported"
    assert (row["input_tokens"], row["output_tokens"]) == (79, 14)
    assert row["cost_usd"] == pytest.approx(cost((79, "2.50"), (14, "10.00")), abs=1e-12)


def test_anthropic_sdk_through_the_forward_port(forward, env, upstream, customer):
    client = anthropic.Anthropic(max_retries=0, default_headers={"x-customer-id": customer})
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.usage.output_tokens > 0
    assert upstream.last().headers["host"] == "api.anthropic.com"
    sent = upstream.last().headers
    assert "sk-ant-test-forward" in (sent.get("x-api-key") or sent.get("authorization", ""))
    [row] = forward.rows(customer)
    assert row["provider"] == "anthropic" and row["endpoint"] == "/v1/messages"
    assert row["input_tokens"] == message.usage.input_tokens
    assert row["output_tokens"] == message.usage.output_tokens
    assert row["priced"] is True and row["cost_usd"] > 0


def test_a_host_added_with_forward_host_is_metered_as_its_provider(forward, env, upstream, customer):
    client = openai.OpenAI(base_url="https://eu.llm-gateway.test/v1", max_retries=0,
                           default_headers={"x-customer-id": customer})
    client.chat.completions.create(**CHAT)
    assert upstream.last().headers["host"] == "eu.llm-gateway.test"
    [row] = forward.rows(customer)
    assert row["provider"] == "openai" and row["cost_usd"] == pytest.approx(cost((156, "0.25"), (561, "2.00")),
                                                                            abs=1e-12)


def test_curl_through_the_forward_port(forward, env, upstream):
    """curl with the proxy and the CA as `aispendtrack ca` prints them (no SDK involved)."""
    rows_before = len(forward.calls())
    done = subprocess.run(["curl", "-sS", "--fail-with-body", "--noproxy", "", "--proxy",
                           f"http://aispendtrack:{forward.key}@127.0.0.1:{forward.forward_port}",
                           "--cacert", str(forward.home / "ca" / "mitmproxy-ca-cert.pem"),
                           "https://api.openai.com/v1/chat/completions", "-H", "authorization: Bearer sk-curl",
                           "-H", "content-type: application/json", "-d", json.dumps(CHAT)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout)["usage"]["prompt_tokens"] == 156
    assert upstream.last().headers["authorization"] == "Bearer sk-curl"
    deadline = time.monotonic() + 20  # a loaded CI host has taken over 5 s to flush a row
    while len(forward.calls()) == rows_before:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert forward.calls(1)[0]["provider"] == "openai"


def _connect(port: int, target: str, credential: str | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    auth = f"Proxy-Authorization: Basic {base64.b64encode(credential.encode()).decode()}\r\n" if credential else ""
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
    return sock


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0]) if lengths else 0
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("credential", [None, "ask_not-a-real-key:", "someone:secret"])
def test_a_connect_without_an_active_key_gets_407_and_nothing_is_forwarded(forward, upstream, credential):
    before = len(upstream.received)
    with _connect(forward.forward_port, "api.openai.com:443", credential) as sock:
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 407")
    assert b'proxy-authenticate: basic realm="aispendtrack"' in answer.lower()
    assert b"HTTPS_PROXY=http://aispendtrack:ask_KEY@HOST:PORT" in answer and b"Nothing was forwarded" in answer
    assert len(upstream.received) == before


def test_the_sdk_with_a_wrong_key_gets_407(forward, env, upstream, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", f"http://ask_wrong@127.0.0.1:{forward.forward_port}")
    before = len(upstream.received)
    with pytest.raises(openai.APIConnectionError) as raised:
        openai.OpenAI(max_retries=0).chat.completions.create(**CHAT)
    assert "407" in str(raised.value.__cause__)
    assert len(upstream.received) == before


def test_a_client_without_our_ca_gets_a_tls_error_and_the_log_names_the_fix(forward, env, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE")  # the public CAs only
    with pytest.raises(openai.APIConnectionError) as raised:
        openai.OpenAI(max_retries=0).chat.completions.create(**CHAT)
    assert "CERTIFICATE_VERIFY_FAILED" in repr(raised.value.__cause__)
    deadline = time.monotonic() + 20
    while "refused the AiSpendTrack CA for api.openai.com" not in forward.log_path.read_text():
        assert time.monotonic() < deadline, forward.log_path.read_text()[-2000:]
        time.sleep(0.05)
    assert "aispendtrack ca" in forward.log_path.read_text()


@pytest.fixture(scope="module")
def other_site(tmp_path_factory):
    """An HTTPS site that is no provider's, with a certificate of its own CA."""
    certs = make_ca_and_leaf(tmp_path_factory.mktemp("site"))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            body = b'{"site": "ours"}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["cert"], certs["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], certs
    server.shutdown()


def test_another_host_is_tunnelled_with_its_own_certificate_and_not_recorded(forward, env, other_site, monkeypatch):
    port, certs = other_site
    rows_before = len(forward.calls())
    with _connect(forward.forward_port, f"127.0.0.1:{port}", forward.key + ":") as sock:
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=certs["ca"])  # the site's CA only, not the proxy's
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            issuer = dict(item[0] for item in tls.getpeercert()["issuer"])
    assert issuer["commonName"] == "AiSpendTrack test CA"
    # And an SDK-style client, trusting only that site's CA, gets its answer through the proxy.
    monkeypatch.setenv("SSL_CERT_FILE", str(certs["ca"]))
    with httpx.Client() as client:
        assert client.get(f"https://127.0.0.1:{port}/").json() == {"site": "ours"}
    time.sleep(0.5)  # a row would be stored within a flush (100 ms)
    assert len(forward.calls()) == rows_before


def _connect_status(port: int, key: str) -> int:
    with _connect(port, "api.openai.com:443", key + ":") as sock:
        return int(_answer(sock).split(b" ", 2)[1])


def test_a_revoked_key_is_refused_on_the_next_connect(forward, tmp_path):
    created = json.loads(run_cli(forward.home, "keys", "create", "--name", "soon-revoked", "--json"))
    # The proxy reads keys every 2 s, later on a loaded host; each try before is a wrong key to its
    # guard (30 a minute), so the tries are spaced.
    until(lambda: _connect_status(forward.forward_port, created["key"]) == 200, 20, "the new key was never admitted",
          every=0.5)
    run_cli(forward.home, "keys", "revoke", str(created["id"]))
    refused = until(lambda: (status := _connect_status(forward.forward_port, created["key"])) != 200 and status, 20,
                    "the revoked key was still admitted", every=0.5)
    assert refused == 407


# --- AWS Bedrock: boto3 with only the environment set, against a fake that checks SigV4 ---

CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"  # an inference profile: genai-prices' regional rates
CLAUDE_GLOBAL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
HOST = f"bedrock-runtime.{REGION}.amazonaws.com"


def bedrock_row(proxy, endpoint: str, model: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in proxy.calls() if r["provider"] == "bedrock" and r["endpoint"] == endpoint
                and r["model"] == model]
        if rows or time.monotonic() > deadline:
            assert len(rows) == 1, rows
            return rows[0]
        time.sleep(0.05)


def _signed_as_sent(bedrock, operation: str) -> tuple[str, dict]:
    method, path, headers, _ = bedrock.received[-1]
    assert path.endswith("/" + operation) and headers["host"] == HOST
    assert "proxy-authorization" not in headers
    return path, headers


def test_bedrock_invoke_model(forward, env, bedrock):
    client = boto3.client("bedrock-runtime")
    answer = client.invoke_model(modelId=CLAUDE, body=json.dumps({
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}))
    assert json.loads(answer["body"].read())["usage"]["output_tokens"] == 12
    path, _ = _signed_as_sent(bedrock, "invoke")
    assert path == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"  # byte for byte, as signed
    row = bedrock_row(forward, "/model/{modelId}/invoke", CLAUDE)
    assert (row["input_tokens"], row["output_tokens"], row["status"], row["stream"]) == (25, 12, 200, False)
    assert row["usage_source"] == "reported" and row["key_id"] == forward.key_id
    assert row["cost_usd"] == pytest.approx(cost((25, "3.30"), (12, "16.50")), abs=1e-12)


def test_bedrock_invoke_model_usage_from_the_headers(forward, env):
    client = boto3.client("bedrock-runtime")
    model = "mistral.mistral-large-2402-v1:0"
    client.invoke_model(modelId=model, body=json.dumps({"prompt": "<s>[INST] hi [/INST]", "max_tokens": 20}))
    row = bedrock_row(forward, "/model/{modelId}/invoke", model)
    assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (17, 9, "reported")
    assert row["cost_usd"] == pytest.approx(cost((17, "4.00"), (9, "12.00")), abs=1e-12)


def test_bedrock_invoke_model_with_response_stream(forward, env, bedrock):
    client = boto3.client("bedrock-runtime")
    answer = client.invoke_model_with_response_stream(modelId=CLAUDE_GLOBAL, body=json.dumps({
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}))
    events = [json.loads(event["chunk"]["bytes"]) for event in answer["body"]]
    assert [e["type"] for e in events][-1] == "message_stop" and len(events) == 6  # every event, CRCs intact
    _signed_as_sent(bedrock, "invoke-with-response-stream")
    row = bedrock_row(forward, "/model/{modelId}/invoke-with-response-stream", CLAUDE_GLOBAL)
    assert (row["input_tokens"], row["output_tokens"], row["stream"]) == (25, 12, True)
    assert row["usage_source"] == "reported" and row["outcome"] == "completed"
    assert row["cost_usd"] == pytest.approx(cost((25, "3.00"), (12, "15.00")), abs=1e-12)


GPT_OSS = "openai.gpt-oss-20b-1:0"


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_bedrock_openai_compatible_chat_with_a_bedrock_api_key(forward, env, bedrock, customer, streamed):
    """Bedrock's OpenAI-compatible API (gpt-oss, a Bedrock API key as the bearer): forwarded
    unpriced before; read now as OpenAI's wire format, at Bedrock's prices ($0.07 in, $0.30 out)."""
    client = openai.OpenAI(base_url=f"https://{HOST}/openai/v1", api_key=BEDROCK_API_KEY, max_retries=0,
                           default_headers={"x-customer-id": customer})
    ask = {"model": GPT_OSS, "messages": [{"role": "user", "content": "Hola"}]}
    if streamed:
        chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens == 310
    else:
        assert client.chat.completions.create(**ask).usage.prompt_tokens == 84
    _, path, headers, body = bedrock.received[-1]
    assert (path, headers["host"], headers["authorization"]) == ("/openai/v1/chat/completions", HOST,
                                                                 f"Bearer {BEDROCK_API_KEY}")
    assert not {"proxy-authorization", "x-customer-id"} & set(headers)
    assert "include_usage" in body.decode() if streamed else "stream_options" not in body.decode()
    [row] = forward.rows(customer)
    assert (row["provider"], row["endpoint"], row["model"], row["stream"]) == (
        "bedrock", "/openai/v1/chat/completions", GPT_OSS, streamed)
    assert (row["input_tokens"], row["output_tokens"], row["usage_source"], row["error"]) == (84, 310, "reported", None)
    assert row["cost_usd"] == pytest.approx(cost((84, "0.07"), (310, "0.30")), abs=1e-12)


def test_bedrock_openai_compatible_stream_without_usage_is_estimated_and_left_as_sent(forward, env, bedrock,
                                                                                       customer):
    """Not asked for its usage: the request may be signed, so it goes on as sent, and the row is
    counted from the text (never $0)."""
    client = openai.OpenAI(base_url=f"https://{HOST}/openai/v1", api_key=BEDROCK_API_KEY, max_retries=0,
                           default_headers={"x-customer-id": customer})
    chunks = list(client.chat.completions.create(model=GPT_OSS, messages=[{"role": "user", "content": "Hola"}],
                                                 stream=True))
    assert [c.usage for c in chunks] == [None, None]
    assert b"stream_options" not in bedrock.received[-1][3]
    [row] = forward.rows(customer)
    assert (row["usage_source"], row["priced"]) == ("estimated", True) and row["output_tokens"] >= 1


def _converse_cost() -> float:
    return cost((CONVERSE_USAGE["inputTokens"], "3.00"), (CONVERSE_USAGE["cacheReadInputTokens"], "0.30"),
                (CONVERSE_USAGE["cacheWriteInputTokens"], "3.75"), (CONVERSE_USAGE["outputTokens"], "15.00"))


def test_bedrock_converse_with_cache_reads_and_writes(forward, env, bedrock):
    client = boto3.client("bedrock-runtime")
    answer = client.converse(modelId=CLAUDE_GLOBAL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert answer["usage"]["cacheReadInputTokens"] == 2000
    _signed_as_sent(bedrock, "converse")
    row = bedrock_row(forward, "/model/{modelId}/converse", CLAUDE_GLOBAL)
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]) == \
        (30, 2000, 1030, 12)
    assert row["cost_usd"] == pytest.approx(_converse_cost(), abs=1e-12)


def test_bedrock_converse_stream(forward, env, bedrock):
    client = boto3.client("bedrock-runtime")
    answer = client.converse_stream(modelId=CLAUDE_GLOBAL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    events = list(answer["stream"])
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 12
    _signed_as_sent(bedrock, "converse-stream")
    row = bedrock_row(forward, "/model/{modelId}/converse-stream", CLAUDE_GLOBAL)
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]) == \
        (30, 2000, 1030, 12)
    assert row["stream"] is True and row["usage_source"] == "reported"
    assert row["cost_usd"] == pytest.approx(_converse_cost(), abs=1e-12)


GUARDRAIL_FEE = "tool fee unknown: a Bedrock guardrail's checks are billed per text unit and policy"


def test_bedrock_a_call_a_guardrail_checked_is_unpriced_not_priced_at_its_tokens(forward, env, bedrock):
    """A guardrail's checks are billed per 1,000 text units of each policy on top of the tokens: the
    tokens alone would be a cheaper bill than AWS's, and a prompt the guardrail refused $0."""
    client = boto3.client("bedrock-runtime")
    model, blocked_model, invoked = ("us.anthropic.claude-3-5-haiku-20241022-v1:0", "us.amazon.nova-lite-v1:0",
                                     "anthropic.claude-3-haiku-20240307-v1:0")
    answer = client.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "hi"}]}],
                             guardrailConfig={"guardrailIdentifier": GUARDRAIL, "guardrailVersion": "1",
                                              "trace": "enabled"})
    assert answer["trace"]["guardrail"]["inputAssessment"][GUARDRAIL]["invocationMetrics"]["usage"]["topicPolicyUnits"]
    refused = client.converse(modelId=blocked_model, messages=[{"role": "user", "content": [{"text": BLOCKED_WORD}]}],
                              guardrailConfig={"guardrailIdentifier": GUARDRAIL, "guardrailVersion": "1"})
    assert refused["stopReason"] == "guardrail_intervened"
    client.invoke_model(modelId=invoked, guardrailIdentifier=GUARDRAIL, guardrailVersion="1", body=json.dumps({
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}))
    assert bedrock.received[-1][2]["x-amzn-bedrock-guardrailidentifier"] == GUARDRAIL  # signed, sent as it was
    streamed = "anthropic.claude-3-5-sonnet-20240620-v1:0"
    answer = client.invoke_model_with_response_stream(
        modelId=streamed, guardrailIdentifier=GUARDRAIL, guardrailVersion="1", body=json.dumps({
            "anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}]}))
    assert list(answer["body"])
    checked = bedrock_row(forward, "/model/{modelId}/converse", model)
    assert (checked["input_tokens"], checked["cache_read_tokens"], checked["output_tokens"]) == (30, 2000, 12)
    blocked = bedrock_row(forward, "/model/{modelId}/converse", blocked_model)
    assert (blocked["input_tokens"], blocked["output_tokens"], blocked["status"]) == (0, 0, 200)
    header = bedrock_row(forward, "/model/{modelId}/invoke", invoked)
    assert (header["input_tokens"], header["output_tokens"]) == (25, 12)
    stream = bedrock_row(forward, "/model/{modelId}/invoke-with-response-stream", streamed)
    assert (stream["input_tokens"], stream["output_tokens"], stream["stream"]) == (25, 12, True)
    for row in (checked, blocked, header, stream):
        assert (row["guardrail_checks"], row["cost_usd"], row["priced"]) == (1, None, False)
        assert row["usage_source"] == "reported" and row["error"].startswith(GUARDRAIL_FEE)


def test_bedrock_a_model_given_as_an_inference_profile_arn_is_priced_as_the_model_it_names(forward, env, bedrock):
    arn = f"arn:aws:bedrock:{REGION}:123456789012:inference-profile/{CLAUDE}"
    boto3.client("bedrock-runtime").converse(modelId=arn, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    path, _ = _signed_as_sent(bedrock, "converse")
    assert "%2Finference-profile" not in path and "inference-profile%2Fus.anthropic" in path  # '/' kept encoded
    row = bedrock_row(forward, "/model/{modelId}/converse", CLAUDE)
    assert row["cost_usd"] == pytest.approx(cost((30, "3.30"), (2000, "0.33"), (1030, "4.125"), (12, "16.50")),
                                            abs=1e-12)


def test_the_bedrock_fake_refuses_a_request_signed_with_other_credentials(forward, env, bedrock, monkeypatch):
    """The fake checks SigV4 for real: the calls above passed the proxy with their signature intact."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # a new session reads it
    rejected = bedrock.rejected
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        boto3.session.Session().client("bedrock-runtime").converse(modelId="us.amazon.nova-pro-v1:0",
                                                 messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert raised.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert bedrock.rejected == rejected + 1
    row = bedrock_row(forward, "/model/{modelId}/converse", "us.amazon.nova-pro-v1:0")
    assert row["status"] == 403 and row["cost_usd"] == 0


def _adding_in_before_sign(client, headers: dict[str, str]) -> None:
    """botocore's hook before SigV4 signs the request: the headers become part of the signature."""
    def add(request, **_) -> None:
        for name, value in headers.items():
            request.headers[name] = value
    client.meta.events.register("before-sign.bedrock-runtime.*", add)


def test_a_tag_header_the_client_signs_is_read_and_left_for_the_signature(forward, env, bedrock, customer):
    client = boto3.session.Session().client("bedrock-runtime")
    _adding_in_before_sign(client, {"x-customer-id": customer})
    model = "us.amazon.nova-micro-v1:0"
    rejected = bedrock.rejected
    client.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert bedrock.rejected == rejected  # the signature held
    _, headers = _signed_as_sent(bedrock, "converse")
    assert headers["x-customer-id"] == customer  # signed, so it stays
    [row] = forward.rows(customer)
    assert (row["provider"], row["model"], row["status"]) == ("bedrock", model, 200)


def test_our_key_in_a_signed_header_is_refused_not_sent_to_aws(forward, env, bedrock):
    client = boto3.session.Session().client("bedrock-runtime")
    _adding_in_before_sign(client, {"x-aispendtrack-key": forward.key})
    received = len(bedrock.received)
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        client.converse(modelId="us.amazon.nova-micro-v1:0", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Error"]["Code"] == "aispendtrack_key_signed"
    assert "Give the key only in HTTPS_PROXY" in error["Error"]["Message"]
    assert len(bedrock.received) == received


def test_a_plain_http_request_to_another_host_loses_our_key_header(forward, upstream):
    """Through the forward port, http:// to a host that is no provider's: passed on, not metered,
    but our key header goes no further (nor the proxy credential)."""
    proxy = f"http://aispendtrack:{forward.key}@127.0.0.1:{forward.forward_port}"
    before = len(upstream.received)
    with httpx.Client(proxy=proxy, trust_env=False) as client:
        answer = client.post(f"{upstream.url}/elsewhere", json=CHAT,
                             headers={"x-aispendtrack-key": forward.key, "x-customer-id": "theirs"})
    assert len(upstream.received) == before + 1, answer.text
    sent = upstream.last().headers
    assert "x-aispendtrack-key" not in sent and "proxy-authorization" not in sent
    assert sent["x-customer-id"] == "theirs"  # the other host's own header, if it has one


def _raw_answer(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        return _answer(sock)


@pytest.mark.parametrize("value", [b"Basic \xff", b"Basic \xc3\xa9", b"Basic w6k=", b"Basic \x00"])
def test_a_credential_that_is_no_text_gets_407_and_opens_nothing(forward, upstream, value):
    """A Proxy-Authorization of bytes that are no ASCII (or base64 of no UTF-8) made the credential's
    reading raise, and mitmproxy opened the tunnel its hook had not refused: to any host, keyless."""
    before = len(upstream.received)
    port = int(upstream.url.rsplit(":", 1)[1])
    connect = _raw_answer(forward.forward_port, b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                          b"Proxy-Authorization: %s\r\n\r\n" % (port, port, value))
    plain = _raw_answer(forward.forward_port, b"GET %s/elsewhere HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                        b"Proxy-Authorization: %s\r\nConnection: close\r\n\r\n" % (upstream.url.encode(), port, value))
    assert connect.startswith(b"HTTP/1.1 407") and b"Nothing was forwarded" in connect, connect[:200]
    assert plain.startswith(b"HTTP/1.1 407") and b"Nothing was forwarded" in plain, plain[:200]
    assert len(upstream.received) == before


def _this_hosts_address() -> str | None:
    """An IPv4 address of this host that is not loopback (the forward port reaches those), if any."""
    found = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    return next((line.split()[3].split("/")[0] for line in found.stdout.splitlines()), None)


def test_this_hosts_loopback_and_link_local_addresses_are_refused_unless_allowed(tmp_path, upstream):
    """Without --forward-local, a key holder reached the proxy's own metrics port (key ids, models,
    customers), its web app, and would reach a cloud's metadata service, through the forward port."""
    port, metrics = free_port(), free_port()
    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log",
                        extra_args=("--forward-port", str(port), "--metrics-port", str(metrics)))
    credential = base64.b64encode(f"aispendtrack:{proxy.key}".encode())
    auth = b"Proxy-Authorization: Basic " + credential + b"\r\n"
    try:
        for target in (f"127.0.0.1:{metrics}", f"localhost:{metrics}", f"[::1]:{metrics}", f"127.1.2.3:{metrics}",
                       f"0.0.0.0:{metrics}", "169.254.169.254:80", f"[::ffff:127.0.0.1]:{metrics}"):
            answer = _raw_answer(port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode() + auth + b"\r\n")
            assert answer.startswith(b"HTTP/1.1 403"), (target, answer[:300])
            assert b"an address of this host (loopback or link-local)" in answer and b"--forward-local" in answer
        answer = _raw_answer(port, f"GET http://127.0.0.1:{metrics}/metrics HTTP/1.1\r\nHost: 127.0.0.1:{metrics}\r\n"
                             .encode() + auth + b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 403") and b"aispendtrack_" not in answer, answer[:300]
        address = _this_hosts_address()
        if address is None:
            pytest.skip("this host has no address but loopback: the allowed path is not reachable here")
        # Another address of this host is no loopback one: passed on, to the address checked, with
        # the Host header as the client sent it.
        seen: list[str] = []

        class Site(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                seen.append(self.headers["host"])
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        server = ThreadingHTTPServer((address, 0), Site)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            site = f"{address}:{server.server_address[1]}"
            answer = _raw_answer(port, f"GET http://{site}/ HTTP/1.1\r\nHost: site.example\r\n".encode() + auth
                                 + b"Connection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"ok") and seen == ["site.example"]
        finally:
            server.shutdown()
    finally:
        proxy.stop()


def test_a_limit_applies_in_the_forward_mode_in_bedrocks_error_shape(forward, env, bedrock, monkeypatch):
    created = json.loads(run_cli(forward.home, "keys", "create", "--name", "limited", "--json"))
    run_cli(forward.home, "keys", "set-limit", str(created["id"]), "--per-hour", "2")
    monkeypatch.setenv("HTTPS_PROXY", f"http://aispendtrack:{created['key']}@127.0.0.1:{forward.forward_port}")
    until_read(forward)  # the key and its limit, read together
    client = boto3.session.Session().client("bedrock-runtime")
    model = "us.amazon.nova-lite-v1:0"
    for _ in range(2):
        client.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    received = len(bedrock.received)
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        client.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert error["Error"]["Code"] == "aispendtrack_limit_reached"
    assert "2 requests per hour" in error["Error"]["Message"]
    assert len(bedrock.received) == received  # refused here, never forwarded


def test_another_providers_key_is_never_sent_to_a_providers_host(forward, env, upstream, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ant-api03-not-for-openai")
    before = len(upstream.received)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        openai.OpenAI(max_retries=0).chat.completions.create(**CHAT)
    assert raised.value.status_code == 403 and "carries a key for anthropic" in raised.value.message
    assert len(upstream.received) == before


def test_a_tunnel_to_another_host_outlives_the_client_timeout(tmp_path, upstream, other_site):
    """--client-timeout bounds how long a client takes to send a request to us; a tunnelled host's
    bytes are not ours to time (a long download through the forward port must not be cut)."""
    port = free_port()
    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log",
                        extra_args=("--forward-port", str(port), "--client-timeout", "1", "--forward-local"))
    try:
        site_port, certs = other_site
        with _connect(port, f"127.0.0.1:{site_port}", "aispendtrack:" + proxy.key) as sock:
            assert _answer(sock).startswith(b"HTTP/1.1 200")
            with ssl.create_default_context(cafile=certs["ca"]).wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                time.sleep(3.5)  # the request deadline is checked every second
                tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                assert _answer(tls).endswith(b'{"site": "ours"}')
    finally:
        proxy.stop()


def test_anthropic_vertex_through_the_forward_port(forward, env, vertex, customer):
    """The SDK as a team uses it, no base URL: it calls us-east5-aiplatform.googleapis.com itself."""
    client = anthropic.AnthropicVertex(region="us-east5", project_id=vertex_fake.PROJECT,
                                       access_token=vertex_fake.TOKEN, max_retries=0,
                                       default_headers={"x-customer-id": customer})
    reply = client.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=256,
                                   messages=[{"role": "user", "content": "hi"}])
    assert reply.usage.cache_read_input_tokens == 3400
    sent = vertex.last()
    assert sent.headers["host"] == "us-east5-aiplatform.googleapis.com"  # as the client addressed it
    assert sent.headers["authorization"] == f"Bearer {vertex_fake.TOKEN}"
    assert not {"proxy-authorization", "x-customer-id"} & set(sent.headers)
    [row] = forward.rows(customer)
    assert (row["provider"], row["model"], row["key_id"]) == ("vertex", "claude-sonnet-4-5-20250929", forward.key_id)
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]) == (
        21, 3400, 1200, 64)
    # Anthropic's rates, 10% more on a regional endpoint (us-east5) from Claude Sonnet 4.5 on.
    assert row["cost_usd"] == pytest.approx(cost((21, "3.30"), (3400, "0.33"), (1200, "4.125"), (64, "16.50")),
                                            abs=1e-12)


def test_google_genai_vertex_stream_through_the_forward_port(forward, env, vertex, customer):
    client = genai.Client(vertexai=True, project=vertex_fake.PROJECT, location="us-central1",
                          credentials=Credentials(token=vertex_fake.TOKEN),
                          http_options=types.HttpOptions(headers={"x-customer-id": customer}))
    text = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi"))
    assert text == "Hello!"
    sent = vertex.last()
    assert sent.headers["host"] == "us-central1-aiplatform.googleapis.com"
    assert sent.path.endswith("/locations/us-central1/publishers/google/models/gemini-2.5-flash"
                              ":streamGenerateContent?alt=sse")
    [row] = forward.rows(customer)
    assert (row["provider"], row["model"], row["stream"], row["usage_source"]) == (
        "vertex", "gemini-2.5-flash", True, "reported")
    # The fake's last running total: 12 prompt tokens; 40 candidates and 88 thoughts.
    assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (12, 128, 88)
    assert row["cost_usd"] == pytest.approx(cost((12, "0.30"), (128, "2.50")), abs=1e-12)


def test_the_forward_port_serves_no_page_of_mitmproxys_own(forward):
    """mitmdump's onboarding app answered http://mitm.it/ on the forward port, before any of our addons
    saw the request; `aispendtrack proxy` loads only the mitmproxy addons it uses (cli/proxy.py)."""
    credential = base64.b64encode(f"aispendtrack:{forward.key}".encode()).decode()
    with socket.create_connection(("127.0.0.1", forward.forward_port), timeout=30) as sock:
        sock.sendall(f"GET http://mitm.it/ HTTP/1.1\r\nHost: mitm.it\r\nProxy-Authorization: Basic {credential}\r\n"
                     "Connection: close\r\n\r\n".encode())
        sock.settimeout(30)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    # Its page ("Install mitmproxy's Certificate Authority"); now the request goes where any other
    # host's plain-HTTP request goes (here, with no internet, a 502).
    assert b"certificate authority" not in answer.lower(), answer[:300]


@pytest.mark.parametrize("request_head", [
    b"CONNECT api.openai.com HTTP/1.1\r\n",          # no port
    b"CONNECT api.openai.com:99999 HTTP/1.1\r\n",    # no such port
    b"GET /v1/models HTTP/1.1\r\nHost: \r\n",        # origin form and no host: no destination
])
def test_a_malformed_proxy_request_gets_a_line_of_text_not_mitmproxys_page(forward, request_head):
    """mitmproxy answered these with its HTML page and `Server: mitmproxy <version>`."""
    credential = base64.b64encode(f"aispendtrack:{forward.key}".encode())
    answer = _raw_answer(forward.forward_port, request_head + b"Proxy-Authorization: Basic " + credential
                         + b"\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] in (b"400", b"502"), answer[:300]
    assert b"content-type: text/plain" in head.lower() and body.startswith(b"AiSpendTrack proxy: "), answer[:300]
    assert b"mitmproxy" not in answer.lower() and b"<html" not in answer.lower()


def test_a_name_is_connected_at_the_address_checked_and_a_lookup_that_fails_refuses(monkeypatch):
    """The check must hold the connection to its answer: mitmproxy would look the name up again, and
    a name whose first answer is public (or no answer) and second 127.0.0.1 reached the metrics port."""
    import asyncio

    from mitmproxy.test import tflow, tutils

    from addon.forward import Forward

    answers: dict[str, object] = {"site.example": ["192.0.2.10", "192.0.2.11"], "local.example": ["192.0.2.10", "::1"],
                                  "gone.example": OSError(-3, "Temporary failure in name resolution"),
                                  "empty.example": [], "meta.example": ["fd00:ec2::254"]}

    async def getaddrinfo(self, host, port, *args, **kwargs):
        found = answers[host]
        if isinstance(found, Exception):
            raise found
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in found]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)

    def pinned(host: str, scheme: str = "http"):
        flow = tflow.tflow(req=tutils.treq(host=host, port=80, scheme=scheme.encode(), authority=b"",
                                           headers=((b"host", b"site.example:8080"),)))
        asyncio.run(Forward._pinned(object.__new__(Forward), flow))
        return flow

    flow = pinned("site.example")
    assert flow.response is None and flow.request.host == "192.0.2.10"  # connected where it was checked
    assert flow.request.headers["host"] == "site.example:8080"  # and the request as the client sent it
    assert pinned("site.example", "https").request.host == "site.example"  # (its SNI is the name)
    for host, status in (("local.example", 403), ("meta.example", 403), ("gone.example", 502), ("empty.example", 502)):
        flow = pinned(host)
        assert flow.response is not None and flow.response.status_code == status, host
        assert b"Nothing was forwarded" in flow.response.content


def test_an_upstream_that_is_one_of_the_providers_own_hosts_leaves_a_forward_call_at_the_host_it_named():
    """The reverse mode needs `--upstream azure=https://RESOURCE.openai.azure.com` (one resource). In
    the forward mode that upstream took every Azure host's calls: a client of another resource had
    its api-key and prompt sent to this one. Only an upstream elsewhere (a fake, an egress proxy)
    takes a provider's calls from every host."""
    from addon import upstreams
    from addon.providers import all_providers

    providers = all_providers(None)
    configured = upstreams.parse(providers, "", "https://api.anthropic.com", [
        "azure=https://myres.openai.azure.com", "bedrock=https://bedrock-runtime.us-west-2.amazonaws.com",
        "mistral=http://127.0.0.1:9", "cohere=https://egress.example.com/cohere"])
    assert upstreams.redirected(providers, configured) == {"mistral", "cohere"}
