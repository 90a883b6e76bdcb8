"""The addons' hooks in isolation, with mitmproxy's own test helpers."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from mitmproxy import ctx, exceptions
from mitmproxy.test import taddons, tflow

from addon.aispendtrack import make_addons
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
        for addon in self.addons:
            if hasattr(addon, "request"):
                result = addon.request(flow)
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
    assert "limit reached for key 7: 1 requests per hour" in second.response.get_text()
    assert int(second.response.headers["retry-after"]) > 0


def test_a_refused_key_stops_at_the_gate(addon):
    flow = _flow("/v1/chat/completions", **{"x-aispendtrack-key": "ask_wrong"})
    addon.request(flow)
    assert flow.response.status_code == 401 and "aispendtrack" not in flow.metadata
