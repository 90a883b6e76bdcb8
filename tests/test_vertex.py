"""Google Vertex AI through the proxy's ``/vertex`` prefix, with the official clients: AnthropicVertex
and google-genai's Vertex client, each holding a static Google access token (no call to Google),
against tests/vertex_upstream.py, a strict wire fake of Vertex.

Rates: genai-prices' ``google`` provider, which ``vertex`` resolves to (USD per 1M tokens; the same
as the first-party list prices, docs/coverage.md): gemini-2.5-flash 0.30 in / 0.03 cached / 2.50 out;
claude-sonnet-4-5 3 in / 0.30 cache read / 3.75 cache write (5 min) / 15 out; claude-haiku-4-5
1 in / 0.10 cache read / 5 out.
"""

from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import httpx
import pytest
from google import genai
from google.genai import types
from google.oauth2.credentials import Credentials
from mitmproxy.test import tutils

from addon.hosts import ProviderHosts
from addon.providers.vertex import Vertex, vertex_host
from addon.upstreams import missing, point

from . import vertex_upstream as fake

M = Decimal(1_000_000)
ENDPOINT = "/v1/projects/{{project}}/locations/{{location}}/publishers/{publisher}/models/{{model}}:{method}"
GEMINI_PATH = f"/v1/projects/{fake.PROJECT}/locations/us-central1/publishers/google/models/gemini-2.5-flash"


@pytest.fixture(scope="module")
def upstream():
    """This module's provider (conftest's ``proxy`` sends every provider to it): Vertex's wire fake."""
    with fake.VertexFake() as vertex:
        yield vertex


def _tags(proxy, customer: str) -> dict:
    return {"x-aispendtrack-key": proxy.key, "x-customer-id": customer}


def claude(proxy, customer: str, region: str = "us-east5") -> anthropic.AnthropicVertex:
    return anthropic.AnthropicVertex(region=region, project_id=fake.PROJECT, access_token=fake.TOKEN,
                                     base_url=f"{proxy.url}/vertex/v1", default_headers=_tags(proxy, customer),
                                     max_retries=0)


def gemini(proxy, customer: str, api_version: str | None = "v1") -> genai.Client:
    """``api_version`` None: the SDK's default for Vertex, v1beta1."""
    return genai.Client(vertexai=True, project=fake.PROJECT, location="us-central1",
                        credentials=Credentials(token=fake.TOKEN),
                        http_options=types.HttpOptions(base_url=f"{proxy.url}/vertex", api_version=api_version,
                                                       headers=_tags(proxy, customer)))


def _usd(value) -> Decimal:
    return Decimal(str(value))


def _tokens(row: dict) -> tuple:
    return (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"],
            row["reasoning_tokens"])


def test_anthropic_vertex_message_is_metered_with_its_cache_writes_and_reads(proxy, upstream, customer):
    reply = claude(proxy, customer).messages.create(model="claude-sonnet-4-5@20250929", max_tokens=256,
                                                    messages=[{"role": "user", "content": "hi"}])
    assert reply.content[0].text == "Hello!" and reply.usage.cache_read_input_tokens == 3400
    sent = upstream.last()
    assert sent.path == (f"/v1/projects/{fake.PROJECT}/locations/us-east5/publishers/anthropic/models/"
                         f"claude-sonnet-4-5@20250929:rawPredict")
    assert sent.headers["authorization"] == f"Bearer {fake.TOKEN}"  # untouched
    assert "x-aispendtrack-key" not in sent.headers and "x-customer-id" not in sent.headers
    [row] = proxy.rows(customer)
    assert row["provider"] == "vertex" and row["model"] == "claude-sonnet-4-5-20250929" and row["stream"] is False
    assert row["endpoint"] == ENDPOINT.format(publisher="anthropic", method="rawPredict")
    assert _tokens(row) == (21, 3400, 1200, 64, 0) and row["usage_source"] == "reported"
    # Anthropic's rates, 10% more on a regional endpoint (us-east5) from Claude Sonnet 4.5 on.
    assert _usd(row["cost_usd"]) == (21 * Decimal(3) + 3400 * Decimal("0.30") + 1200 * Decimal("3.75")
                                     + 64 * Decimal(15)) / M * Decimal("1.1")  # $0.0071973


def test_anthropic_vertex_stream_takes_message_deltas_cumulative_output(proxy, upstream, customer):
    with claude(proxy, customer, region="global").messages.stream(
            model="claude-haiku-4-5@20251001", max_tokens=256, messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
    assert text == "Hello!"
    assert upstream.last().path.endswith("/locations/global/publishers/anthropic/models/"
                                         "claude-haiku-4-5@20251001:streamRawPredict")
    [row] = proxy.rows(customer)
    assert row["provider"] == "vertex" and row["model"] == "claude-haiku-4-5-20251001" and row["stream"] is True
    assert _tokens(row) == (9, 2048, 0, 117, 0) and row["outcome"] == "completed"
    assert _usd(row["cost_usd"]) == (9 * Decimal(1) + 2048 * Decimal("0.10") + 117 * Decimal(5)) / M


def test_genai_vertex_generate_content_counts_cached_thoughts_and_tool_use_prompt(proxy, upstream, customer):
    client = gemini(proxy, customer)  # kept referenced: the SDK closes its transport on collection
    reply = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert reply.text == "Hello there!" and reply.usage_metadata.cached_content_token_count == 230
    assert upstream.last().path == GEMINI_PATH + ":generateContent"
    assert upstream.last().headers["authorization"] == f"Bearer {fake.TOKEN}"
    [row] = proxy.rows(customer)
    assert row["provider"] == "vertex" and row["model"] == "gemini-2.5-flash"
    assert row["endpoint"] == ENDPOINT.format(publisher="google", method="generateContent")
    # 345 prompt tokens, 230 of them cached, and 7 of a tool-use prompt; 51 candidates and 19 thoughts.
    assert _tokens(row) == (345 - 230 + 7, 230, 0, 51 + 19, 19)
    assert _usd(row["cost_usd"]) == (122 * Decimal("0.30") + 230 * Decimal("0.03") + 70 * Decimal("2.50")) / M


def test_gemini_audio_in_and_images_out_are_priced_at_their_own_rates_not_as_text(proxy, upstream, customer):
    """usageMetadata splits each count by modality: audio in ($1.00, cached $0.10 per million on
    gemini-2.5-flash) and a generated image ($30 per million on gemini-2.5-flash-image) were priced
    as text ($0.30, $2.50): 3.3 and 12 times under the bill."""
    client = gemini(proxy, customer)
    sound = types.Part.from_bytes(data=b"RIFF fake wav", mime_type="audio/wav")
    client.models.generate_content(model="gemini-2.5-flash", contents=[sound, "transcribe this"])
    client.models.generate_content(model="gemini-2.5-flash-image", contents="a red cat")
    heard, drawn = sorted(proxy.rows(customer, expect=2), key=lambda r: r["model"])
    assert (heard["input_tokens"], heard["input_audio_tokens"], heard["cache_read_tokens"],
            heard["cache_read_audio_tokens"], heard["output_tokens"]) == (70_345, 70_000, 30_000, 30_000, 100)
    assert _usd(heard["cost_usd"]) == (345 * Decimal("0.30") + 70_000 * Decimal(1) + 30_000 * Decimal("0.10")
                                       + 100 * Decimal("2.50")) / M
    assert (drawn["output_tokens"], drawn["output_image_tokens"]) == (1295, 1290)
    assert _usd(drawn["cost_usd"]) == (10 * Decimal("0.30") + 5 * Decimal("2.50") + 1290 * Decimal(30)) / M


def test_genai_vertex_stream_takes_the_last_running_total(proxy, upstream, customer):
    client = gemini(proxy, customer, api_version=None)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert "".join(c.text for c in chunks) == "Hello!"
    assert upstream.last().path == GEMINI_PATH.replace("/v1/", "/v1beta1/") + ":streamGenerateContent?alt=sse"
    [row] = proxy.rows(customer)
    assert row["stream"] is True and row["endpoint"] == ENDPOINT.replace("/v1/", "/v1beta1/").format(
        publisher="google", method="streamGenerateContent")
    assert _tokens(row) == (12, 0, 0, 40 + 88, 88)
    assert _usd(row["cost_usd"]) == (12 * Decimal("0.30") + 128 * Decimal("2.50")) / M


def test_express_mode_on_an_api_key_is_metered_as_any_gemini_call(proxy, upstream, customer):
    """Vertex AI in express mode names no project or location: stored unmetered before."""
    client = genai.Client(vertexai=True, api_key=fake.API_KEY,
                          http_options=types.HttpOptions(base_url=f"{proxy.url}/vertex", api_version="v1",
                                                         headers=_tags(proxy, customer)))
    reply = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert reply.text == "Hello there!"
    sent = upstream.last()
    assert sent.path == "/v1/publishers/google/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == fake.API_KEY and "x-aispendtrack-key" not in sent.headers
    [row] = proxy.rows(customer)
    assert (row["provider"], row["model"], row["usage_source"]) == ("vertex", "gemini-2.5-flash", "reported")
    assert row["endpoint"] == "/v1/publishers/google/models/{model}:generateContent"
    assert _usd(row["cost_usd"]) == (122 * Decimal("0.30") + 230 * Decimal("0.03") + 70 * Decimal("2.50")) / M
    assert fake.API_KEY not in json.dumps(proxy.calls(), default=str)


def test_a_stream_without_alt_sse_is_one_json_array_read_whole(proxy, upstream, customer):
    response = httpx.post(f"{proxy.url}/vertex{GEMINI_PATH}:streamGenerateContent",
                          headers={"authorization": f"Bearer {fake.TOKEN}", **_tags(proxy, customer)},
                          json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, timeout=10)
    assert response.status_code == 200 and [c["usageMetadata"] for c in response.json()] == fake.GEMINI_STREAM_USAGE
    [row] = proxy.rows(customer)
    assert _tokens(row) == (12, 0, 0, 128, 88) and row["usage_source"] == "reported"
    assert _usd(row["cost_usd"]) == (12 * Decimal("0.30") + 128 * Decimal("2.50")) / M


def test_count_tokens_bills_nothing(proxy, upstream, customer):
    client = gemini(proxy, customer)
    assert client.models.count_tokens(model="gemini-2.5-flash", contents="hi").total_tokens == 31
    count = claude(proxy, customer).messages.count_tokens(model="claude-sonnet-4-5@20250929",
                                                          messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens == 14
    rows = sorted(proxy.rows(customer, expect=2), key=lambda row: row["endpoint"])
    assert [row["endpoint"] for row in rows] == [
        "/v1/projects/{project}/locations/{location}/publishers/anthropic/models/count-tokens:rawPredict",
        ENDPOINT.format(publisher="google", method="countTokens")]
    assert all(row["priced"] is True and _usd(row["cost_usd"]) == 0 and row["status"] == 200 for row in rows)


def test_vertexs_own_refusal_reaches_the_client_unchanged_and_costs_nothing(proxy, upstream, customer):
    client = anthropic.AnthropicVertex(region="us-east5", project_id=fake.PROJECT, access_token="ya29.expired",
                                       base_url=f"{proxy.url}/vertex/v1", default_headers=_tags(proxy, customer),
                                       max_retries=0)
    with pytest.raises(anthropic.AuthenticationError, match="invalid authentication credentials"):
        client.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=8,
                               messages=[{"role": "user", "content": "hi"}])
    assert upstream.last().headers["authorization"] == "Bearer ya29.expired"  # forwarded as sent
    [row] = proxy.rows(customer)
    assert (row["provider"], row["status"], row["priced"], _usd(row["cost_usd"])) == ("vertex", 401, True, 0)


@pytest.mark.parametrize("location,host", [
    ("us-central1", "us-central1-aiplatform.googleapis.com"),
    ("europe-west4", "europe-west4-aiplatform.googleapis.com"),
    ("global", "aiplatform.googleapis.com"),
    ("us", "aiplatform.us.rep.googleapis.com"),
    ("eu", "aiplatform.eu.rep.googleapis.com"),
])
def test_without_an_upstream_a_call_goes_to_its_locations_host(location, host):
    request = tutils.treq(host="127.0.0.1", port=8080, scheme=b"http",
                          path=f"/v1/projects/p/locations/{location}/publishers/google/models/m:generateContent?alt=sse")
    request.headers["host"] = "127.0.0.1:8080"  # as a client sent it to the proxy
    assert point(request, Vertex(), {"vertex": None})
    assert (request.scheme, request.host, request.port, request.headers["host"]) == ("https", host, 443, host)
    assert request.path.endswith(f"/locations/{location}/publishers/google/models/m:generateContent?alt=sse")


def test_an_express_mode_call_goes_to_the_global_host():
    request = tutils.treq(host="127.0.0.1", port=8080, scheme=b"http",
                          path="/v1beta1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert point(request, Vertex(), {"vertex": None})
    assert (request.scheme, request.host, request.port) == ("https", "aiplatform.googleapis.com", 443)


def test_hosts_declare_vertex_for_the_forward_mode():
    hosts = ProviderHosts([Vertex()])
    assert all(hosts.provider(vertex_host(loc) or "") == "vertex" for loc in ("us-east5", "global", "us", "eu"))
    assert hosts.provider("US-CENTRAL1-aiplatform.googleapis.com.") == "vertex"
    assert hosts.provider("evil.example-aiplatform.googleapis.com.attacker.net") is None
    assert hosts.provider("a.b-aiplatform.googleapis.com") is None  # "*" is within one DNS label
    assert vertex_host("evil.com#") is None and vertex_host("") is None


SECRET_OAUTH = "ya29.a0-someone-elses-google-token"


@pytest.mark.parametrize("path,headers,status", [
    # A Google OAuth token goes to Vertex only: never to OpenAI, Anthropic, Gemini or another prefix.
    ("/v1/chat/completions", {"authorization": f"Bearer {SECRET_OAUTH}"}, 404),
    ("/gemini/v1beta/models/gemini-2.5-flash:generateContent", {"authorization": f"Bearer {SECRET_OAUTH}"}, 404),
    ("/mistral/v1/chat/completions", {"authorization": f"Bearer {SECRET_OAUTH}"}, 404),
    ("/v1/messages", {"authorization": f"Bearer {SECRET_OAUTH}", "anthropic-version": "2023-06-01"}, 400),
    ("/v1/chat/completions?access_token=" + SECRET_OAUTH, {"authorization": "Bearer sk-test"}, 404),
    ("/gemini/v1beta/models/gemini-2.5-flash:generateContent", {"x-goog-api-key": SECRET_OAUTH}, 400),
    # Nothing but a Google token goes to Vertex.
    ("/vertex" + GEMINI_PATH + ":generateContent", {"x-api-key": "sk-ant-secret"}, 404),
    ("/vertex" + GEMINI_PATH + ":generateContent", {"x-goog-api-key": "AIzaSyD-fake-test-key-0123456789abcdefg"}, 404),
    ("/vertex" + GEMINI_PATH + ":generateContent", {"authorization": "Bearer sk-proj-openai-secret"}, 401),
    ("/vertex" + GEMINI_PATH + ":generateContent", {"authorization": f"Bearer {fake.TOKEN}",
                                                    "api-key": "azure-secret"}, 401),
    ("/vertex" + GEMINI_PATH + ":generateContent", {"authorization": f"Bearer {fake.TOKEN}",
                                                    "x-other": "sk-ant-secret"}, 400),
])
def test_credentials_never_cross_between_vertex_and_other_providers(proxy, upstream, path, headers, status):
    before = len(upstream.received)  # every provider's upstream is this one fake
    response = httpx.post(proxy.url + path, headers={"x-aispendtrack-key": proxy.key, **headers},
                          json={"contents": [], "model": "m", "messages": []}, timeout=10)
    assert response.status_code == status, response.text
    assert "did not forward this call" in json.dumps(response.json())
    assert len(upstream.received) == before


def test_a_location_that_names_no_host_is_not_forwarded():
    request = tutils.treq(host="127.0.0.1", port=8080, scheme=b"http",
                          path="/v1/projects/p/locations/evil.example.com/publishers/google/models/m:generateContent")
    assert not point(request, Vertex(), {"vertex": None}) and request.host == "127.0.0.1"
    assert "names no vertex location" in missing(Vertex())


def test_the_access_token_is_never_stored(proxy, upstream, customer):
    claude(proxy, customer).messages.create(model="claude-sonnet-4-5@20250929", max_tokens=8,
                                            messages=[{"role": "user", "content": "hi"}])
    assert proxy.rows(customer)
    proxy.stop()  # its last flush done, every file is complete (so this test runs last)
    files = [p for p in proxy.home.rglob("*") if p.is_file()]
    assert files and not [str(p) for p in files if fake.TOKEN.encode() in p.read_bytes()]
    assert fake.TOKEN not in proxy.log_path.read_text()
