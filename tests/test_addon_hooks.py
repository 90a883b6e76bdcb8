"""The addons' hooks in isolation, with mitmproxy's own test helpers."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import inspect
import json
from decimal import Decimal

import pytest
from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from addon.aispendtrack import make_addons
from addon.core import periods
from addon.core.budgets import Budget
from addon.core.keys import hash_key
from addon.core.plans import Limits
from addon.gate import Gate

KEY = "ask_unit-test-key"


class Chain:
    """The addons' request hooks in mitmproxy's order, as mitmproxy calls them."""

    def __init__(self, addons: list) -> None:
        self.addons = addons
        self.state = next(a for a in addons if isinstance(a, Gate)).state

    def request(self, flow) -> None:
        self._hook("request", flow)

    def answer(self, flow, response: http.Response) -> None:
        """The upstream's ``response`` through the response hooks."""
        flow.response = response
        self._hook("responseheaders", flow)
        self._hook("response", flow)

    def _hook(self, name: str, flow) -> None:
        for addon in self.addons:
            if hasattr(addon, name):
                result = getattr(addon, name)(flow)
                if inspect.iscoroutine(result):  # mitmproxy awaits a hook that is a coroutine
                    asyncio.run(result)


@pytest.fixture
def addon(tmp_path):
    addons = make_addons()
    gate = next(a for a in addons if isinstance(a, Gate))
    with taddons.context(*addons) as tctx:
        tctx.options.update(aispendtrack_home=str(tmp_path), aispendtrack_openai_upstream="",
                            aispendtrack_anthropic_upstream="https://anthropic.example:8443/base/")
        gate.state.keyring.replace({hash_key(KEY): 7})
        yield Chain(addons)


def _flow(path: str, **headers: str):
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:https://api.openai.com")  # as `aispendtrack proxy` runs
    flow.request.path = path
    flow.request.headers["host"] = "localhost:8080"  # as the client sent it
    for name, value in headers.items():
        flow.request.headers.add(name, value)
    return flow


def test_anthropic_paths_go_to_the_anthropic_upstream_with_its_base_path(addon):
    flow = _flow("/v1/messages?beta=true", **{"x-aispendtrack-key": KEY})
    addon.request(flow)
    assert flow.response is None  # forwarded
    assert (flow.request.scheme, flow.request.host, flow.request.port) == ("https", "anthropic.example", 8443)
    assert flow.request.path == "/base/v1/messages?beta=true"
    assert flow.request.headers["host"] == "anthropic.example:8443"


def test_openai_paths_keep_the_reverse_mode_target(addon):
    flow = _flow("/v1//chat/completions/", **{"x-aispendtrack-key": KEY})
    # Where mitmproxy's reverse mode pointed the request before our hooks ran.
    flow.request.scheme, flow.request.host, flow.request.port = "https", "reverse.example", 9443
    addon.request(flow)
    assert flow.response is None  # forwarded, and metered as an OpenAI chat call
    meter = flow.metadata["aispendtrack"]
    assert (meter.provider.name, meter.path, meter.key_id) == ("openai", "/v1/chat/completions", 7)
    assert (flow.request.scheme, flow.request.host, flow.request.port, flow.request.path) == (
        "https", "reverse.example", 9443, "/v1/chat/completions")


def test_an_openai_upstream_option_replaces_the_reverse_mode_target(addon):
    ctx.options.update(aispendtrack_openai_upstream="http://openai.example:8081/base/")
    flow = _flow("/v1/chat/completions", **{"x-aispendtrack-key": KEY})
    flow.request.scheme, flow.request.host, flow.request.port = "https", "reverse.example", 9443
    addon.request(flow)
    assert (flow.request.scheme, flow.request.host, flow.request.port, flow.request.path) == (
        "http", "openai.example", 8081, "/base/v1/chat/completions")


def test_our_headers_are_removed_even_when_sent_twice_and_the_first_value_counts(addon):
    flow = _flow("/v1/chat/completions", **{"X-AiSpendTrack-Key": KEY, "x-customer-id": "first"})
    flow.request.headers.add("x-customer-id", "second")
    flow.request.headers.add("x-other", "kept")
    addon.request(flow)
    names = [name.lower() for name in flow.request.headers]
    assert "x-aispendtrack-key" not in names and "x-customer-id" not in names
    assert flow.request.headers["x-other"] == "kept"
    assert flow.metadata["aispendtrack"].customer_id == "first"
    assert flow.metadata["aispendtrack"].key_id == 7


def test_health_answers_without_a_key(addon):
    flow = _flow("/aispendtrack/health")
    addon.request(flow)
    assert flow.response.status_code == 200 and "aispendtrack" not in flow.metadata


def test_a_bad_upstream_option_is_refused_with_an_example(tmp_path):
    addons = make_addons()
    with taddons.context(*addons) as tctx:
        with pytest.raises(exceptions.OptionsError, match="must be an http"):
            tctx.options.update(aispendtrack_anthropic_upstream="api.anthropic.com")


def test_a_key_over_its_hourly_limit_is_answered_429_and_never_metered(addon):
    addon.state.limiter.set_limits({7: Limits(per_hour=1, per_month=None)})
    first, second = (_flow("/v1/chat/completions", **{"x-aispendtrack-key": KEY}) for _ in range(2))
    addon.request(first)
    addon.request(second)
    assert first.response is None and "aispendtrack" in first.metadata
    assert second.response.status_code == 429 and "aispendtrack" not in second.metadata
    assert "limit reached for key 7: 1 request per hour" in second.response.get_text()
    assert int(second.response.headers["retry-after"]) > 0


SPENT = (Decimal("1.25"), Decimal("1.25"))  # the spend stored for each budget today and this month


@pytest.mark.parametrize("budget,caller,words", [
    (Budget(1, "customer", "acme", Decimal("1"), None, True, key_id=7), {"x-customer-id": "acme"},
     "budget exceeded for customer acme of key 7: $1.25 spent of the daily budget of $1.00. Calls are blocked "
     "until {day} 00:00 UTC; raise it with `aispendtrack budgets set --scope customer:acme --key 7 --daily USD "
     "--block`."),
    (Budget(2, "key", "7", None, Decimal("1.25"), True), {},
     "budget exceeded for key 7: $1.25 spent of the monthly budget of $1.25. Calls are blocked until {month} "
     "00:00 UTC; raise it with `aispendtrack budgets set --scope key:7 --monthly USD --block`."),
    (Budget(3, "feature", "chat", Decimal("1"), None, True), {"x-feature": "chat"},
     "budget exceeded: a daily budget set by the administrator over feature chat on all keys blocks this call "
     "until {day} 00:00 UTC. It counts other keys' calls too, so its figures are not shown"),
    (Budget(4, "all", None, Decimal("1"), None, True), {},
     "budget exceeded: a daily budget set by the administrator over all calls blocks this call until {day} "
     "00:00 UTC."),
])
def test_a_blocking_budget_answers_429_with_its_figures_only_to_the_key_it_belongs_to(addon, budget, caller, words):
    now = dt.datetime.now(dt.UTC)
    addon.state.budgets.load([budget], lambda b, day, month: SPENT, now)
    flow = _flow("/v1/chat/completions", **{"x-aispendtrack-key": KEY, **caller})
    addon.request(flow)
    assert flow.response.status_code == 429 and "aispendtrack" not in flow.metadata
    day, month = periods.next_day_start(now, periods.UTC), periods.next_month_start(now, periods.UTC)
    text = json.loads(flow.response.get_text())["error"]["message"]
    assert words.format(day=f"{day:%Y-%m-%d}", month=f"{month:%Y-%m-%d}") in text
    wait = int(flow.response.headers["retry-after"])
    assert abs(wait - (day if budget.daily_usd else month).timestamp() + now.timestamp()) <= 2
    other = _flow("/v1/chat/completions", **{"x-aispendtrack-key": KEY, "x-customer-id": "globex",
                                              "x-feature": "search"})
    addon.request(other)
    assert (other.response is None) == (budget.scope in ("customer", "feature"))  # outside its scope


def test_a_call_refused_by_several_budgets_and_a_limit_is_told_to_wait_for_the_last_of_them(addon):
    """retry-after is when a call would pass: the first refusal found (a daily budget) said tomorrow
    while a monthly budget, or the key's monthly limit, still refused until the month's end."""
    now = dt.datetime.now(dt.UTC)
    day, month = periods.next_day_start(now, periods.UTC), periods.next_month_start(now, periods.UTC)
    if day == month:
        pytest.skip("the last day of a month: the day and the month end together")
    daily = Budget(1, "key", "7", Decimal("1"), None, True)
    monthly = Budget(2, "customer", "acme", None, Decimal("1"), True, key_id=7)
    addon.state.budgets.load([daily, monthly], lambda b, d, m: SPENT, now)
    flow = _flow("/v1/chat/completions", **{"x-aispendtrack-key": KEY, "x-customer-id": "acme"})
    addon.request(flow)
    assert "monthly budget" in json.loads(flow.response.get_text())["error"]["message"]
    assert abs(int(flow.response.headers["retry-after"]) - (month - now).total_seconds()) <= 2
    # The key's own daily budget and its monthly limit of one call, used: the limit says when.
    addon.state.budgets.load([daily], lambda b, d, m: SPENT, now)
    addon.state.limiter.set_limits({7: Limits(per_hour=None, per_month=1)})
    assert addon.state.limiter.admit(7, now) is None
    assert addon.state.limiter.refusing(7, now) is not None and addon.state.limiter.refusing(7, now) is not None
    limited = _flow("/v1/chat/completions", **{"x-aispendtrack-key": KEY})
    addon.request(limited)
    assert "per-month" in json.loads(limited.response.get_text())["error"]["message"]
    assert abs(int(limited.response.headers["retry-after"]) - (month - now).total_seconds()) <= 2
    addon.state.limiter.set_limits({7: Limits(per_hour=None, per_month=5)})  # not reached: the budget answers
    assert addon.state.limiter.refusing(7, now) is None
    budgeted = _flow("/v1/chat/completions", **{"x-aispendtrack-key": KEY})
    addon.request(budgeted)
    assert "daily budget" in json.loads(budgeted.response.get_text())["error"]["message"]
    assert addon.state.limiter.admit(7, now) is None  # refusing() counted nothing: 2 of 5


def test_a_refused_key_stops_at_the_gate(addon):
    flow = _flow("/v1/chat/completions", **{"x-aispendtrack-key": "ask_wrong"})
    addon.request(flow)
    assert flow.response.status_code == 401 and "aispendtrack" not in flow.metadata


def _basic(user_password: str) -> str:
    return "Basic " + base64.b64encode(user_password.encode()).decode()


@pytest.mark.parametrize("path,headers,query,provider,forwarded", [
    ("/v1/messages", {"authorization": _basic("user:sk-ant-api03-secret")}, "", "anthropic", "/base/v1/messages"),
    ("/messages", {"x-api-key": "sk-ant-secret", "anthropic-version": "2023-06-01"}, "", "anthropic",
     "/base/v1/messages"),
    ("/v1/v1/messages", {"anthropic-version": "2023-06-01"}, "", "anthropic", "/base/v1/messages"),
    ("/v1beta/models/gemini-2.5-flash:generateContent", {}, "KEY=AIza" + "x" * 35, "google",
     "/v1beta/models/gemini-2.5-flash:generateContent?KEY=AIza" + "x" * 35),
    ("/v1beta/models/gemini-2.5-flash:generateContent", {}, "k%65y=abc", "google",
     "/v1beta/models/gemini-2.5-flash:generateContent?k%65y=abc"),
    ("/v1beta/models/gemini-2.5-flash:generateContent", {"x-goog-api-key": "abc"}, "", "google",
     "/v1beta/models/gemini-2.5-flash:generateContent"),
    ("/v1/chat/completions", {"authorization": _basic("user:sk-proj-ours")}, "", "openai", "/v1/chat/completions"),
    ("/v1beta/openai/chat/completions", {"x-goog-api-key": "abc"}, "", "google",  # OpenAI's format, Gemini's
     "/v1beta/openai/chat/completions"),
    ("/v1/messages", {"authorization": "Basic " + base64.urlsafe_b64encode(b"~~~:sk-ant-api03-secret").decode()},
     "", "anthropic", "/base/v1/messages"),  # a Basic credential in base64's URL alphabet
    ("/v1beta/models/gemini-2.5-flash:generateContent", {}, "x=1&KEY=abc", "google",
     "/v1beta/models/gemini-2.5-flash:generateContent?x=1&KEY=abc"),
    ("/v1beta/models/gemini-2.5-flash:generateContent", {}, "key=ab=c", "google",
     "/v1beta/models/gemini-2.5-flash:generateContent?key=ab=c"),
    ("/gemini/v1beta/models/gemini-2.5-flash:generateContent", {}, "", "google",
     "/v1beta/models/gemini-2.5-flash:generateContent"),
    ("/gemini", {"x-goog-api-key": "abc"}, "", "google", "/"),
    ("/v1/messages/batches/msgbatch_1", {"x-api-key": "sk-ant-secret"}, "", "anthropic",
     "/base/v1/messages/batches/msgbatch_1"),
    ("/files/file_1/content", {"x-api-key": "sk-ant-secret"}, "", "anthropic", "/base/v1/files/file_1/content"),
    ("/v1/chat/completions", {"x-note": "AIzaNotAKey sk-ant"}, "", "openai", "/v1/chat/completions"),
])
def test_the_credentials_name_the_provider_whatever_the_path_looks_like(addon, path, headers, query, provider,
                                                                        forwarded):
    flow = _flow(path + ("?" + query if query else ""), **{"x-aispendtrack-key": KEY, **headers})
    addon.request(flow)
    assert flow.response is None, flow.response and flow.response.get_text()
    assert flow.metadata["aispendtrack"].provider.name == provider
    assert flow.request.path == forwarded


def test_a_batch_fetched_by_id_names_its_results_url_through_the_proxy(addon):
    """Anthropic's batch object names its results on api.anthropic.com. Fetched by id (a GET of the
    batch, not of its results), it reaches the client with that URL's path alone: the SDK then
    downloads the results through the proxy, which meters them."""
    results = "/v1/messages/batches/msgbatch_01/results"
    ended = json.dumps({"id": "msgbatch_01", "type": "message_batch", "processing_status": "ended",
                        "results_url": "https://api.anthropic.com" + results}).encode()
    flow = _flow("/v1/messages/batches/msgbatch_01", **{"x-aispendtrack-key": KEY, "x-api-key": "sk-ant-secret"})
    assert flow.request.method == "GET"
    addon.request(flow)
    assert flow.response is None
    addon.answer(flow, http.Response.make(200, ended, {"content-type": "application/json"}))
    assert json.loads(flow.response.content)["results_url"] == results


# Where each provider's refusal tells the client to point its base URL.
TO_ANTHROPIC = ("Check the client's base URL: set the base URL to the proxy's address with no path (Anthropic "
                "SDK: Anthropic(base_url=\\\"http://HOST:PORT\\\")), or to http://HOST:PORT/v1 for the Vercel AI SDK.")
TO_GEMINI = "Check the client's base URL: set the base URL to http://HOST:PORT/gemini (see docs/providers.md)."
TO_OPENAI = ("Check the client's base URL: OpenAI(base_url=\\\"http://HOST:PORT/v1\\\"); other providers take a "
             "prefix (see docs/providers.md).")
GEMINI_KEY = "AIza" + "x" * 35


@pytest.mark.parametrize("path,headers,query,status,shape,words", [
    ("/v1/chat/completions", {"authorization": _basic("user:sk-ant-api03-secret")}, "", 404, "type",
     "carries anthropic credentials, but /v1/chat/completions is not one of anthropic's API paths"),
    ("/v1/chat/completions", {"authorization": "Bearer sk-ant-api03-secret"}, "", 404, "type", TO_ANTHROPIC),
    ("/v1/chat/completions", {"authorization": f"Bearer {GEMINI_KEY}"}, "", 404, "error", TO_GEMINI),
    ("/v1/chat/completions", {}, "x=sk-ant-api03-secret", 404, "type", "carries anthropic credentials"),
    ("/v1/chat/completions", {"x-goog-api-key": "abc"}, "", 404, "error",
     "carries google credentials, but /v1/chat/completions is not one of google's API paths"),
    ("/v1/chat/completions", {}, "key=abc", 404, "error", TO_GEMINI),
    ("/gemini/v1beta/models/x:generateContent", {"x-api-key": "sk-ant-secret"}, "", 404, "type",
     "carries anthropic credentials, but /gemini is not one of anthropic's API paths"),
    ("/v1/messages", {"authorization": "Bearer sk-proj-openai"}, "", 404, "error",
     "carries openai credentials, but /v1/messages is not one of openai's API paths"),
    ("/v1/messages", {"authorization": "Bearer sk-proj-openai"}, "", 404, "error", TO_OPENAI),
    ("/v1/Chat/Completions", {}, "", 404, "error", "API paths are case-sensitive; use /v1/chat/completions"),
    ("/v1/chat%2Fcompletions", {}, "", 400, "error", "AiSpendTrack cannot forward '/v1/chat%2Fcompletions'"),
])
def test_a_call_no_provider_may_take_is_answered_and_not_forwarded(addon, path, headers, query, status, shape, words):
    flow = _flow(path + ("?" + query if query else ""), **{"x-aispendtrack-key": KEY, **headers})
    addon.request(flow)
    assert flow.response is not None and flow.response.status_code == status
    body = json.loads(flow.response.get_text())
    assert shape in body and words in flow.response.get_text()
    if shape == "error" and "status" not in body["error"]:  # OpenAI's shape carries our code (Gemini's a status)
        code = "aispendtrack_bad_path" if status == 400 or "case-sensitive" in words else "aispendtrack_wrong_base_url"
        assert body["error"]["code"] == code
    assert "aispendtrack" not in flow.metadata


@pytest.mark.parametrize("path,headers,asked", [
    ("/v1/chat/completions", {}, True),
    ("/groq/v1/chat/completions", {}, True),  # Groq documents stream_options
    ("/mistral/v1/chat/completions", {}, False),  # Mistral does not: never asked
    ("/v1/responses", {}, False),  # the Responses API reports usage in every stream
    ("/v1/messages", {"x-api-key": "sk-ant-secret", "anthropic-version": "2023-06-01"}, False),
])
def test_only_chat_streams_of_apis_that_take_it_are_asked_for_their_usage(addon, path, headers, asked):
    sent = json.dumps({"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    flow = _flow(path, **{"x-aispendtrack-key": KEY, "content-type": "application/json", **headers})
    flow.request.method, flow.request.content = "POST", sent
    addon.request(flow)
    assert flow.response is None
    forwarded = json.loads(flow.request.content)
    assert (forwarded.get("stream_options") == {"include_usage": True}) is asked
    assert (flow.request.content == sent) is not asked
