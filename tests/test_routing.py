"""Findings 3, 6 and 11 (query key) of the hardening issue: credentials and canonical paths.

Anthropic and Gemini credentials go to Anthropic and Gemini only, whatever the path; a path the
owner does not serve gets a 404 naming the base URL and nothing is forwarded. Paths are made
canonical before routing, metering and budgets, so a non-canonical spelling is metered as what
the upstream serves. The proxy's own key never leaves in a query string.
"""

from __future__ import annotations

import base64
import http.client
import json

import anthropic
import httpx
import openai
import pytest
from mitmproxy.http import Headers

from addon.routing import Misrouted, canonical, route

from .helpers import run_cli, start_proxy, until, until_read
from .upstream import FakeProvider

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": "claude-sonnet-4-20250514", "max_tokens": 10, "messages": CHAT["messages"]}
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-secret", "anthropic-version": "2023-06-01"}


@pytest.mark.parametrize("raw,expected", [
    ("/v1/chat/completions", "/v1/chat/completions"),
    ("/v1/%63hat/completions", "/v1/chat/completions"),
    ("/v1//chat/completions", "/v1/chat/completions"),
    ("/v1/chat/completions/", "/v1/chat/completions"),
    ("/v1/./chat/x/../completions", "/v1/chat/completions"),
    ("/v1beta/models/gemini-2.5-flash%3AgenerateContent", "/v1beta/models/gemini-2.5-flash:generateContent"),
    ("/v1/files/a%25b", "/v1/files/a%25b"),
    ("/v1/files/a%25b%63/c%25d%65", "/v1/files/a%25bc/c%25de"),  # decoded around each kept '%25'
    ("/v1/files/{id}", "/v1/files/{id}"),  # a clean path is forwarded as sent
    ("/v1/chat%2Fcompletions", None),
    ("/v1/chat%5ccompletions", None),
    ("/../v1/chat/completions", None),
    ("/v1/%ff", None),
    ("/v1/chat/completions;x", None),
    ("/v1/chat/completions%2e", None),
    ("/v1/files/a%3Fb", None),
    ("/v1/chat/%2e%2e/chat/completions", "/v1/chat/completions"),
])
def test_canonical_paths(raw, expected):
    assert canonical(raw) == expected


GEMINI_KEY = "AIzaSyD-fake-test-key-0123456789abcdefg"  # Google's format: AIza and 35 more characters
assert len(GEMINI_KEY) == 39
BASIC_ANTHROPIC = "Basic " + base64.b64encode(b":sk-ant-secret-basic").decode()
BASIC_OPENAI = "Basic " + base64.b64encode(b"user:sk-proj-0123456789abcdefghij").decode()
VERTEX_TOKEN = {"authorization": "Bearer ya29.a0AfB_token"}
# What a refusal tells the client to do, by the provider whose credentials it carries.
WHERE = {
    "anthropic": "set the base URL to the proxy's address with no path (Anthropic SDK: "
                 "Anthropic(base_url=\"http://HOST:PORT\")), or to http://HOST:PORT/v1 for the Vercel AI SDK",
    "google": "set the base URL to http://HOST:PORT/gemini (see docs/providers.md)",
    "vertex": "set the base URL to http://HOST:PORT/vertex (google-genai) or http://HOST:PORT/vertex/v1 "
              "(AnthropicVertex; see docs/providers.md)",
    "openai": "OpenAI(base_url=\"http://HOST:PORT/v1\"); other providers take a prefix (see docs/providers.md)",
    "azure": "set the endpoint to http://HOST:PORT/azure (AzureOpenAI(azure_endpoint=\"http://HOST:PORT/azure\"))",
}


def _route(providers, target: str, headers: dict):
    path, _, query = target.partition("?")
    return route(list(providers.values()), path, Headers([(k.encode(), v.encode()) for k, v in headers.items()]),
                 query)


# The routing decision in-process (the tests below make the same calls through a proxy): which
# provider gets the call, and the path it is sent, for each way a client may name it.
@pytest.mark.parametrize("target,headers,provider,path", [
    ("/v1/chat/completions", {"authorization": "Bearer sk-test"}, "openai", "/v1/chat/completions"),
    ("/v1/chat/completions", {}, "openai", "/v1/chat/completions"),
    ("/openai/v1/chat/completions", {"authorization": "Bearer sk-test"}, "openai", "/v1/chat/completions"),
    ("/mistral/v1/chat/completions", {"authorization": "Bearer m"}, "mistral", "/v1/chat/completions"),
    ("/gemini", {}, "google", "/"),
    ("/gemini/v1beta/models/m:generateContent", {}, "google", "/v1beta/models/m:generateContent"),
    ("/gemini/v1beta/models/m:generateContent", {"x-goog-api-key": "AIza-secret"}, "google",
     "/v1beta/models/m:generateContent"),
    ("/geminis/v1/chat/completions", {}, "openai", "/geminis/v1/chat/completions"),  # not the prefix
    ("/v1beta/models/m:generateContent", {"x-goog-api-key": "AIza-secret"}, "google",
     "/v1beta/models/m:generateContent"),
    ("/v1beta/models/m:generateContent?key=AIza-secret", {}, "google", "/v1beta/models/m:generateContent"),
    ("/v1beta/openai/chat/completions", {"authorization": f"Bearer {GEMINI_KEY}"}, "google",
     "/v1beta/openai/chat/completions"),
    ("/v1/models/gemini-2.5-flash", {"x-goog-api-key": "AIza-secret"}, "google", "/v1/models/gemini-2.5-flash"),
    ("/v1/messages", ANTHROPIC_HEADERS, "anthropic", "/v1/messages"),
    ("/v1/messages", {"anthropic-version": "2023-06-01"}, "anthropic", "/v1/messages"),
    ("/v1/messages", {}, "anthropic", "/v1/messages"),  # Anthropic's own path, no credentials to say otherwise
    ("/v1/messages/count_tokens", {}, "anthropic", "/v1/messages/count_tokens"),
    ("/v1/complete", {}, "anthropic", "/v1/complete"),
    ("/messages", ANTHROPIC_HEADERS, "anthropic", "/v1/messages"),  # the AI SDK's base URL without /v1
    ("/v1/v1/messages", ANTHROPIC_HEADERS, "anthropic", "/v1/messages"),  # and with /v1 twice
    ("/v1/models", ANTHROPIC_HEADERS, "anthropic", "/v1/models"),
    ("/v1/messages/batches/msgbatch_1/results", ANTHROPIC_HEADERS, "anthropic",
     "/v1/messages/batches/msgbatch_1/results"),
    ("/anthropic/v1/messages", ANTHROPIC_HEADERS, "anthropic", "/v1/messages"),
    ("/anthropic/messages", {"x-api-key": "sk-ant-secret"}, "anthropic", "/v1/messages"),
    ("/v1/messages", {"authorization": "Bearer" + " " * 40 + "sk-ant-secret-far"}, "anthropic", "/v1/messages"),
    ("/v1/messages", {"authorization": BASIC_ANTHROPIC}, "anthropic", "/v1/messages"),
    # Without an Anthropic key of its own, a call's credential is what its upstream takes: the
    # Anthropic SDK's Authorization (a LiteLLM gateway's sk- key), Azure Foundry's api-key for Claude.
    ("/v1/messages", {"anthropic-version": "2023-06-01", "authorization": "Bearer gw-token-1"}, "anthropic",
     "/v1/messages"),
    ("/v1/messages", {"anthropic-version": "2023-06-01", "authorization": "Bearer sk-litellm-0123456789abcdef"},
     "anthropic", "/v1/messages"),
    ("/v1/messages", {"anthropic-version": "2023-06-01", "api-key": "0123456789abcdef0123456789abcdef"},
     "anthropic", "/v1/messages"),
    ("/v1/messages", {"authorization": "Bearer sk-ant-a", "x-api-key": "sk-ant-a"}, "anthropic", "/v1/messages"),
    # One credential in two headers: Claude Code's key helper (X-Api-Key and a bearer token).
    ("/v1/messages", {"x-api-key": "sk-gw-0123456789abcdefgh", "authorization": "Bearer sk-gw-0123456789abcdefgh"},
     "anthropic", "/v1/messages"),
    ("/v1/%63hat/completions", {"authorization": "Bearer sk-test"}, "openai", "/v1/chat/completions"),
    ("/v1/files/file-AbC", {"authorization": "Bearer sk-test"}, "openai", "/v1/files/file-AbC"),
    # mitmproxy keeps a query's bytes that are not UTF-8 as surrogates: read, never a crash
    ("/v1/chat/completions?x=\udcff", {"authorization": "Bearer sk-test"}, "openai", "/v1/chat/completions"),
    ("/v1beta/models/m:generateContent?x=\udcff&key=AIza-secret", {}, "google", "/v1beta/models/m:generateContent"),
])
def test_each_request_goes_to_the_provider_its_credentials_and_path_name(providers, target, headers, provider,
                                                                          path):
    routed = _route(providers, target, headers)
    assert (routed.provider.name, routed.path) == (provider, path)


@pytest.mark.parametrize("target,headers,owner,status,code,shown", [
    ("/v1/chat/completions", ANTHROPIC_HEADERS, "anthropic", 404, "aispendtrack_wrong_base_url",
     "/v1/chat/completions"),
    ("/chat/completions", {"authorization": "Bearer sk-ant-secret"}, "anthropic", 404, "aispendtrack_wrong_base_url",
     "/chat/completions"),
    ("/V1/messages", ANTHROPIC_HEADERS, "anthropic", 404, "aispendtrack_wrong_base_url", "/V1/messages"),
    ("/openai/v1/chat/completions", ANTHROPIC_HEADERS, "anthropic", 404, "aispendtrack_wrong_base_url", "/openai"),
    ("/v1/chat/completions", {"x-goog-api-key": "AIza-secret"}, "google", 404, "aispendtrack_wrong_base_url",
     "/v1/chat/completions"),
    ("/mistral/v1/chat/completions", {"x-goog-api-key": "AIza-secret"}, "google", 404,
     "aispendtrack_wrong_base_url", "/mistral"),
    ("/v1/chat/completions?k%65y=AIza-secret", {"authorization": "Bearer sk-test"}, "google", 404,
     "aispendtrack_wrong_base_url", "/v1/chat/completions"),
    ("/v1/chat/completions", {"api-key": "sk-ant-secret-azure"}, "anthropic", 404, "aispendtrack_wrong_base_url",
     "/v1/chat/completions"),
    ("/v1/chat/completions", VERTEX_TOKEN, "vertex", 404, "aispendtrack_wrong_base_url", "/v1/chat/completions"),
    # Azure's api-key header, which no other provider takes: an AzureOpenAI endpoint without /azure
    # (its /openai/deployments/... paths read as OpenAI's prefix) sent it to OpenAI.
    ("/openai/deployments/prod-4o/chat/completions", {"api-key": "0123456789abcdef0123456789abcdef"}, "azure", 404,
     "aispendtrack_wrong_base_url", "/openai"),
    ("/v1/chat/completions", {"api-key": "0123456789abcdef0123456789abcdef"}, "azure", 404,
     "aispendtrack_wrong_base_url", "/v1/chat/completions"),
    ("/mistral/v1/chat/completions", {"api-key": "0123456789abcdef0123456789abcdef"}, "azure", 404,
     "aispendtrack_wrong_base_url", "/mistral"),
    ("/gemini/v1beta/models/m:generateContent", VERTEX_TOKEN, "vertex", 404, "aispendtrack_wrong_base_url",
     "/gemini"),
    ("/v1/messages", {"authorization": "Bearer sk-proj"}, "openai", 404, "aispendtrack_wrong_base_url",
     "/v1/messages"),  # a bearer token on Anthropic's path without Anthropic's signature is someone else's
    ("/v1/chat/completions", {**VERTEX_TOKEN, "x-api-key": "sk-ant-secret"}, "openai", 400,
     "aispendtrack_mixed_credentials", "it carries the credentials of two providers"),
    # Another provider's key beside Anthropic's or Gemini's went along to it (the leak audit's finding).
    ("/v1/messages", {"x-api-key": "sk-ant-a", "x-goog-api-key": "AIza-b"}, "openai", 400,
     "aispendtrack_mixed_credentials", "Send only the one the provider takes"),
    ("/v1/messages?key=AIza-b", {"x-api-key": "sk-ant-a"}, "openai", 400, "aispendtrack_mixed_credentials",
     "Nothing was forwarded"),
    ("/v1/messages", {"x-api-key": "sk-ant-a", "authorization": "Bearer sk-proj-0123456789abcdefgh"}, "anthropic",
     400, "aispendtrack_foreign_key", "its authorization header holds another provider's key"),
    ("/v1/messages", {"x-api-key": "sk-ant-a", "api-key": "0123456789abcdef0123456789abcdef"}, "anthropic", 400,
     "aispendtrack_foreign_key", "its api-key header holds another provider's key"),
    ("/gemini/v1beta/models/m:generateContent", {"x-goog-api-key": "AIza-b",
                                                  "authorization": "Bearer sk-proj-0123456789abcdefgh"}, "google",
     400, "aispendtrack_foreign_key", "Send only google's"),
    ("/gemini/v1beta/models/m:generateContent?key=AIza-b", {"authorization": BASIC_OPENAI}, "google", 400,
     "aispendtrack_foreign_key", "another provider's key"),
    ("/gemini/v1beta/models/m:generateContent?key=AIza-b", {"api-key": "0123456789abcdef0123456789abcdef"},
     "google", 400, "aispendtrack_foreign_key", "its api-key header"),
    ("/v1/messages", {"x-goog-api-key": "ya29.token", "anthropic-version": "2023-06-01"}, "openai", 400,
     "aispendtrack_mixed_credentials", "Nothing was forwarded"),
    ("/v1/chat/completions", {"authorization": "Bearer ya29.t, AIza" + "x" * 35}, "openai", 400,
     "aispendtrack_mixed_credentials", "Nothing was forwarded"),
    ("/v1/chat/completions;x", {"authorization": "Bearer sk-test"}, "openai", 400, "aispendtrack_bad_path",
     "AiSpendTrack cannot forward '/v1/chat/completions;x'"),
    ("/v1/Chat/completions", {"authorization": "Bearer sk-test"}, "openai", 404, "aispendtrack_bad_path",
     "API paths are case-sensitive; use /v1/chat/completions."),
])
def test_a_request_that_can_go_nowhere_safely_is_refused_with_what_to_do(providers, target, headers, owner,
                                                                          status, code, shown):
    with pytest.raises(Misrouted) as refused:
        _route(providers, target, headers)
    exc = refused.value
    assert (exc.provider.name, exc.status, exc.code) == (owner, status, code)
    assert shown in exc.message and str(exc) == exc.message  # what a log line of the exception says
    if code == "aispendtrack_wrong_base_url":
        assert exc.message == (f"AiSpendTrack did not forward this call: it carries {owner} credentials, but "
                               f"{shown} is not one of {owner}'s API paths, and a key is never sent to another "
                               f"provider. Check the client's base URL: {WHERE[owner]}.")


@pytest.fixture(scope="module")
def split(tmp_path_factory, upstream):
    """A proxy whose Anthropic and Gemini upstreams are servers of their own, apart from OpenAI's."""
    with FakeProvider() as claude, FakeProvider() as gemini:
        home = tmp_path_factory.mktemp("home")
        proxy = start_proxy(home, upstream.url, tmp_path_factory.mktemp("logs") / "proxy.log",
                            extra_args=("--anthropic-upstream", claude.url, "--upstream", f"google={gemini.url}"))
        yield proxy, upstream, claude, gemini
        proxy.stop()


@pytest.mark.parametrize("where", ["/anthropic", ""])
def test_azure_foundrys_anthropic_client_sending_its_key_twice_goes_to_anthropics_upstream(split, where):
    """AnthropicFoundry sends one key as x-api-key and api-key: one credential, not another
    provider's beside Anthropic's (the first version of the foreign-key check refused it)."""
    from anthropic.lib.foundry import AnthropicFoundry

    proxy, _, claude, _ = split
    client = AnthropicFoundry(api_key="f0undry0123456789abcdef0123456789", base_url=proxy.url + where,
                              default_headers={"x-aispendtrack-key": proxy.key, "x-customer-id": f"foundry{where}"},
                              max_retries=0)
    client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    sent = claude.last()
    assert sent.path == "/v1/messages" and sent.headers["api-key"] == sent.headers["x-api-key"]
    [row] = proxy.rows(f"foundry{where}")
    assert (row["provider"], row["status"]) == ("anthropic", 200)


def _post(proxy, path: str, headers: dict, body: dict | None = None, method: str = "POST") -> httpx.Response:
    return httpx.request(method, proxy.url + path, headers={"x-aispendtrack-key": proxy.key, **headers},
                         json=body, timeout=10)


def _leaked(openai_upstream) -> list[str]:
    return [r.path for r in openai_upstream.received
            if "x-api-key" in r.headers or "sk-ant-" in r.headers.get("authorization", "")
            or "x-goog-api-key" in r.headers]


def test_the_anthropic_sdks_own_calls_go_to_anthropic(split):
    proxy, openai_upstream, claude, _ = split
    client = proxy.anthropic(api_key="sk-ant-secret")
    client.messages.create(**MESSAGE)
    client.models.list()
    assert [r.path.split("?")[0] for r in claude.received][-2:] == ["/v1/messages", "/v1/models"]
    sent = claude.last().headers  # newer SDKs send the key as a bearer token, older ones as x-api-key
    assert "sk-ant-secret" in (sent.get("x-api-key", ""), sent.get("authorization", "").removeprefix("Bearer "))
    assert _leaked(openai_upstream) == []


@pytest.mark.parametrize("path,forwarded", [
    ("/v1//messages", "/v1/messages"),
    ("/v1/%6dessages", "/v1/messages"),
    ("/messages", "/v1/messages"),  # the Vercel AI SDK appends /messages to its baseURL
    ("/v1/v1/messages", "/v1/messages"),
    ("/anthropic/messages", "/v1/messages"),
])
def test_anthropic_paths_written_another_way_are_forwarded_canonical_and_metered(split, path, forwarded):
    proxy, openai_upstream, claude, _ = split
    customer = f"anthropic-{path}"
    response = _post(proxy, path, {**ANTHROPIC_HEADERS, "x-customer-id": customer}, MESSAGE)
    assert response.status_code == 200, response.text
    assert claude.last().path == forwarded
    [row] = proxy.rows(customer)
    assert (row["provider"], row["endpoint"], row["usage_source"]) == ("anthropic", "/v1/messages", "reported")
    assert row["cost_usd"] > 0
    assert _leaked(openai_upstream) == []


@pytest.mark.parametrize("path", ["/v1/files", "/v1/organizations/usage_report/messages"])
def test_anthropic_api_paths_that_are_not_metered_still_go_to_anthropic(split, path):
    proxy, openai_upstream, claude, _ = split
    _post(proxy, path, ANTHROPIC_HEADERS, method="GET")
    assert claude.last().path == path
    assert _leaked(openai_upstream) == []


@pytest.mark.parametrize("path,headers", [
    ("/v1/chat/completions", ANTHROPIC_HEADERS),
    ("/chat/completions", {"authorization": "Bearer sk-ant-secret"}),
    ("/V1/messages", ANTHROPIC_HEADERS),
    ("/openai/v1/chat/completions", ANTHROPIC_HEADERS),
    ("/v1/chat/completions", {"x-goog-api-key": "AIza-secret"}),
    ("/mistral/v1/chat/completions", {"x-goog-api-key": "AIza-secret"}),
])
def test_credentials_on_a_path_their_owner_does_not_serve_are_refused_and_not_forwarded(split, path, headers):
    proxy, openai_upstream, claude, gemini = split
    before = len(openai_upstream.received), len(claude.received), len(gemini.received)
    response = _post(proxy, path, headers, CHAT)
    assert response.status_code == 404
    message = json.dumps(response.json())
    assert "base URL" in message and "did not forward" in message or "case-sensitive" in message
    assert (len(openai_upstream.received), len(claude.received), len(gemini.received)) == before


def test_the_refusal_reaches_the_anthropic_sdk_as_a_readable_error(split):
    proxy, *_ = split
    client = anthropic.Anthropic(base_url=proxy.url + "/v1/chat", api_key="sk-ant-secret", max_retries=0,
                                 default_headers={"x-aispendtrack-key": proxy.key})
    with pytest.raises(anthropic.NotFoundError, match="did not forward this call.*base URL"):
        client.messages.create(**MESSAGE)


def test_gemini_credentials_without_the_prefix_go_to_gemini(split):
    proxy, openai_upstream, _, gemini = split
    response = _post(proxy, "/v1beta/models/gemini-2.5-flash:generateContent",
                     {"x-goog-api-key": "AIza-secret", "x-customer-id": "gemini-bare"},
                     {"contents": [{"parts": [{"text": "hi"}]}]})
    assert response.status_code == 200
    assert gemini.last().headers["x-goog-api-key"] == "AIza-secret"
    [row] = proxy.rows("gemini-bare")
    assert row["provider"] == "google" and row["usage_source"] == "reported"
    assert _leaked(openai_upstream) == []


@pytest.mark.parametrize("path", ["/v1/%63hat/completions", "/v1/chat/completions/", "/v1//chat//completions"])
def test_non_canonical_spellings_are_metered_and_budgeted_as_the_canonical_path(split, path):
    proxy, openai_upstream, *_ = split
    customer = f"bypass-{path}"
    run_cli(proxy.home, "budgets", "set", "--scope", f"customer:{customer}", "--all-keys", "--daily", "0.000001",
            "--block")
    until_read(proxy)  # a running proxy reads a new budget within ~2 s, later on a loaded host
    headers = {"authorization": "Bearer sk-test", "x-test-scenario": "legacy", "x-customer-id": customer}
    first = _post(proxy, path, headers, CHAT)
    assert first.status_code == 200 and openai_upstream.last().path == "/v1/chat/completions"
    [row] = proxy.rows(customer)
    assert (row["endpoint"], row["usage_source"], row["input_tokens"]) == ("/v1/chat/completions", "reported", 14)
    second = _post(proxy, path, headers, CHAT)
    assert second.status_code == 429 and "budget exceeded" in second.text


def test_an_encoded_slash_is_refused_not_forwarded_unmetered(split):
    proxy, openai_upstream, *_ = split
    before = len(openai_upstream.received)
    response = _post(proxy, "/v1/chat%2Fcompletions", {"authorization": "Bearer sk-test"}, CHAT)
    assert response.status_code == 400 and "encoded '/'" in response.json()["error"]["message"]
    assert len(openai_upstream.received) == before


def test_our_key_in_a_query_string_is_removed_and_refused(split):
    proxy, openai_upstream, *_ = split
    before = len(openai_upstream.received)
    response = httpx.post(f"{proxy.url}/v1/chat/completions?x-aispendtrack-key={proxy.key}&x=1",
                          headers={"authorization": "Bearer sk-test"}, json=CHAT, timeout=10)
    assert response.status_code == 401 and response.json()["error"]["code"] == "aispendtrack_key_in_url"
    assert len(openai_upstream.received) == before
    # With the key in its header too, the call goes through, without the key in its URL.
    response = httpx.post(f"{proxy.url}/v1/chat/completions?x-aispendtrack-key={proxy.key}&x=1",
                          headers={"authorization": "Bearer sk-test", "x-aispendtrack-key": proxy.key},
                          json=CHAT, timeout=10)
    assert response.status_code == 200
    assert openai_upstream.last().path == "/v1/chat/completions?x=1"


@pytest.mark.parametrize("param", ["api_key=%61sk_{key}", "note=key:{key}", "note=key%3A{key}", "{key}",
                                   "a%3Db=ask_{key}"])
def test_our_key_escaped_or_inside_a_query_value_never_reaches_the_provider(split, param):
    """The leak audit's finding: the key was looked for only as a value's start, and not behind an
    escape; such a parameter went to the provider, in its URL (and logs)."""
    proxy, openai_upstream, *_ = split
    query = param.format(key=proxy.key) if "%61" not in param and "a%3D" not in param else \
        param.format(key=proxy.key[4:14])  # a%3Db=: a key's start alone, behind an escaped "=" in the name
    response = httpx.post(f"{proxy.url}/v1/chat/completions?{query}&x=1&mode=m%61sk_1",
                          headers={"authorization": "Bearer sk-test", "x-aispendtrack-key": proxy.key},
                          json=CHAT, timeout=10)
    assert response.status_code == 200
    assert openai_upstream.last().path == "/v1/chat/completions?x=1&mode=m%61sk_1"


@pytest.mark.parametrize(("path", "logged"), [
    ("/gemini/v1beta/models/m:generateContent%3Fkey=AIzaLOGCANARY0123456789abcdef",
     "/gemini/v1beta/models/m:generateContent…"),
    ("/v1/chat/completions;api_key=sk-proj-LOGCANARY2", "/v1/chat/completions…"),
    ("/v1/chat/completions%23sk-proj-LOGCANARY3", "/v1/chat/completions…"),
    ("/v1/sk-proj-LOGCANARY4/x%00", "/v1/sk-…/x…"),
    ("/v1/task-runner-abcdef/gsk_LOGCANARY5/x%00", "/v1/task-runner-abcdef/gsk_…/x…")])
def test_a_refused_path_is_logged_without_the_key_a_client_put_in_it(split, path, logged):
    """The leak audit's finding: the log cut a refused path only at a literal '?', so a key behind an
    escaped one, a ';' or a '#' was written to the proxy's log."""
    proxy, *_ = split
    refused = proxy.log_path.read_text(errors="replace").count(": aispendtrack_bad_path")
    status, _ = _raw_post(proxy, path, {"authorization": "Bearer sk-test"}, CHAT)
    assert status == 400
    until(lambda: proxy.log_path.read_text(errors="replace").count(": aispendtrack_bad_path") > refused, 10,
          "the refusal logged")
    log = proxy.log_path.read_text(errors="replace")
    assert "LOGCANARY" not in log and f"refused POST {logged}: aispendtrack_bad_path" in log


def _raw_post(proxy, path: str, headers: dict, body: dict) -> tuple[int, dict]:
    """POST with the path exactly as written (an HTTP library would clean some of these up)."""
    connection = http.client.HTTPConnection(proxy.url.removeprefix("http://"), timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), {"x-aispendtrack-key": proxy.key,
                                                           "content-type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("path", [
    "/v1/chat/completions;x", "/v1/chat/completions%3B", "/v1/chat/completions%3bx", "/v1/chat/completions%20",
    "/v1/chat/completions%2e", "/v1/chat/completions.", "/v1/chat/completions%00", "/v1/chat/completions\\",
    "/v1/chat/completions%09", "/v1/chat/completions%3F", "/v1/chat/completions%23", "/v1/embeddings;",
    "/v1/chat/compl%C3%A9tions", "/openai/v1/chat/completions;", "/groq/openai/v1/chat/completions%20",
])
def test_paths_a_front_end_may_rewrite_into_a_metered_one_are_refused_not_forwarded(split, path):
    proxy, openai_upstream, *_ = split
    before = len(openai_upstream.received)
    status, body = _raw_post(proxy, path, {"authorization": "Bearer sk-test"}, CHAT)
    assert status == 400 and body["error"]["code"] == "aispendtrack_bad_path"
    assert "Nothing was forwarded" in body["error"]["message"] and "character" in body["error"]["message"]
    assert len(openai_upstream.received) == before


@pytest.mark.parametrize("target,headers,secret", [
    ("/v1/chat/completions", {"authorization": "Bearer" + " " * 40 + "sk-ant-secret-spaced"}, "sk-ant-secret-spaced"),
    ("/v1/chat/completions", {"authorization": "Bearer\tsk-ant-secret-tab"}, "sk-ant-secret-tab"),
    ("/v1/chat/completions", {"authorization": BASIC_ANTHROPIC}, BASIC_ANTHROPIC),
    ("/v1/chat/completions", {"api-key": "sk-ant-secret-azure-header"}, "sk-ant-secret-azure-header"),
    ("/v1/chat/completions?KEY=AIza-secret-upper", {"authorization": "Bearer sk-test"}, "AIza-secret-upper"),
    ("/v1/chat/completions?k%65y=AIza-secret-escaped", {"authorization": "Bearer sk-test"}, "AIza-secret-escaped"),
    ("/v1/chat/completions?x=1&Key=AIza-secret-mixed", {"authorization": "Bearer sk-test"}, "AIza-secret-mixed"),
    ("/v1/chat/completions", {"authorization": f"Bearer {GEMINI_KEY}"}, GEMINI_KEY),
])
def test_a_key_in_another_providers_form_never_reaches_openai(split, target, headers, secret):
    proxy, openai_upstream, claude, gemini = split
    before = len(openai_upstream.received), len(claude.received), len(gemini.received)
    status, body = _raw_post(proxy, target, headers, CHAT)
    assert status == 404, body
    assert "did not forward this call" in json.dumps(body) and "base URL" in json.dumps(body)
    assert (len(openai_upstream.received), len(claude.received), len(gemini.received)) == before
    assert not [r for r in openai_upstream.received if secret in r.path or secret in json.dumps(r.headers)]


def test_an_azure_client_whose_endpoint_lacks_azure_is_refused_and_its_key_never_reaches_openai(split):
    """AzureOpenAI(azure_endpoint=PROXY) calls /openai/deployments/..., which is OpenAI's prefix here:
    the call went to OpenAI's upstream with the Azure api-key."""
    proxy, openai_upstream, *_ = split
    before = len(openai_upstream.received)
    client = openai.AzureOpenAI(azure_endpoint=proxy.url, api_key="0123456789abcdef0123456789abcdef",
                                api_version="2024-10-21", max_retries=0,
                                default_headers={"x-aispendtrack-key": proxy.key})
    with pytest.raises(openai.NotFoundError, match=r"carries azure credentials.*http://HOST:PORT/azure"):
        client.chat.completions.create(model="prod-4o", messages=CHAT["messages"])
    assert len(openai_upstream.received) == before


def test_a_gemini_key_on_geminis_openai_compatible_path_goes_to_gemini_never_to_openai(split):
    proxy, openai_upstream, claude, gemini = split
    before = len(openai_upstream.received), len(claude.received)
    client = openai.OpenAI(base_url=proxy.url + "/v1beta/openai", api_key=GEMINI_KEY, max_retries=0,
                           default_headers={"x-aispendtrack-key": proxy.key})
    with pytest.raises(openai.NotFoundError, match="Unknown path /v1beta/openai/chat/completions"):  # the fake's 404
        client.chat.completions.create(model="gemini-2.5-flash", messages=CHAT["messages"])
    assert gemini.last().path == "/v1beta/openai/chat/completions"  # metered: tests/test_legacy_and_compatible.py
    assert (len(openai_upstream.received), len(claude.received)) == before
    assert not [r for r in openai_upstream.received if GEMINI_KEY in json.dumps(r.headers)]


def test_an_anthropic_key_after_many_spaces_still_goes_to_anthropic(split):
    proxy, openai_upstream, claude, _ = split
    response = _post(proxy, "/v1/messages", {"authorization": "Bearer" + " " * 40 + "sk-ant-secret-far",
                                             "x-customer-id": "spaced-bearer"}, MESSAGE)
    assert response.status_code == 200, response.text
    assert claude.last().path == "/v1/messages" and "sk-ant-secret-far" in claude.last().headers["authorization"]
    [row] = proxy.rows("spaced-bearer")
    assert row["provider"] == "anthropic" and row["usage_source"] == "reported"
    assert _leaked(openai_upstream) == []
