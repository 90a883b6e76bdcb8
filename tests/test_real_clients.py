"""The clients people use, unmodified, through the proxy: LangChain, LiteLLM, the OpenAI Agents SDK
and the Vercel AI SDK.

Each streams without asking for usage (their default once a base URL is set), so the proxy must
inject ``include_usage`` and hand back exactly what a direct call returns. Every test makes the
same call twice, directly to the fake provider and through the proxy, and compares what the client
got; then it checks the row is ``reported`` with the provider's exact counts, cache included.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI

JS = Path(__file__).parent / "js"
# Usage the fake reports when asked for it: 1,920 of 2,006 prompt tokens from the cache.
CACHED_USAGE = {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920}, "completion_tokens_details": {"reasoning_tokens": 0}}


def _proxied(proxy, customer: str) -> dict:
    return {"x-aispendtrack-key": proxy.key, "x-customer-id": customer}


def _assert_reported_cached(row: dict) -> None:
    assert row["usage_source"] == "reported" and row["outcome"] == "completed" and row["error"] is None
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (86, 1920, 300)
    assert row["cost_usd"] == pytest.approx((86 * 2.5 + 1920 * 1.25 + 300 * 10) / 1e6, abs=1e-12)


def _chunks_of(chat) -> list[tuple]:
    return [(chunk.content, chunk.usage_metadata, chunk.response_metadata.get("finish_reason"))
            for chunk in chat.stream("hi")]


def test_langchain_chat_openai_stream_is_reported_and_unchanged(proxy, upstream, customer):
    def chat(base_url: str, headers: dict) -> ChatOpenAI:
        # With a base_url set, ChatOpenAI turns stream_usage off: the request has no stream_options.
        return ChatOpenAI(model="gpt-4o", base_url=base_url, api_key="sk-test-key", default_headers=headers,
                          max_retries=0, extra_body={"test_usage": CACHED_USAGE})

    direct = _chunks_of(chat(upstream.url + "/v1", {}))
    assert "stream_options" not in json.loads(upstream.last().body)
    proxied = _chunks_of(chat(proxy.url + "/v1", _proxied(proxy, customer)))
    assert proxied == direct and all(usage is None for _, usage, _ in proxied)
    [row] = proxy.rows(customer)
    _assert_reported_cached(row)


def test_langchain_chat_anthropic_stream_and_invoke_are_reported(proxy, upstream, customer):
    def chat(base_url: str, headers: dict) -> ChatAnthropic:
        return ChatAnthropic(model="claude-sonnet-4-20250514", base_url=base_url, api_key="sk-ant-test-key",
                             default_headers=headers, max_retries=0)

    assert _chunks_of(chat(proxy.url, _proxied(proxy, customer))) == _chunks_of(chat(upstream.url, {}))
    reply = chat(proxy.url, _proxied(proxy, customer)).invoke("hi")
    assert reply.usage_metadata["input_tokens"] == 3 + 1956 + 9511  # LangChain counts cache as input
    streamed, invoked = sorted(proxy.rows(customer, expect=2), key=lambda r: r["stream"])[::-1]
    assert streamed["usage_source"] == "reported" and (streamed["input_tokens"], streamed["output_tokens"]) == (377, 65)
    assert streamed["service_tier"] == "standard"
    assert invoked["usage_source"] == "reported"
    assert (invoked["input_tokens"], invoked["cache_read_tokens"], invoked["cache_write_tokens"]) == (3, 9511, 1956)


@pytest.fixture(scope="module")
def litellm():
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # it would fetch its price list from GitHub
    os.environ["LITELLM_TELEMETRY"] = "False"
    import litellm as module
    return module


def _litellm_stream(litellm, base_url: str, headers: dict) -> list[tuple]:
    chunks = litellm.completion(model="openai/gpt-4o", api_base=base_url, api_key="sk-test-key", stream=True,
                                messages=[{"role": "user", "content": "hi"}], extra_headers=headers,
                                extra_body={"test_usage": CACHED_USAGE}, num_retries=0)
    return [(c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks if c.choices]


def test_litellm_completion_stream_is_reported_and_unchanged(proxy, upstream, customer, litellm):
    direct = _litellm_stream(litellm, upstream.url + "/v1", {})
    assert "stream_options" not in json.loads(upstream.last().body)
    assert _litellm_stream(litellm, proxy.url + "/v1", _proxied(proxy, customer)) == direct
    [row] = proxy.rows(customer)
    _assert_reported_cached(row)


def _agent_run(base_url: str, headers: dict) -> list[str]:
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # it would send traces to OpenAI
    client = AsyncOpenAI(base_url=base_url, api_key="sk-test-key", default_headers=headers, max_retries=0)
    agent = Agent(name="a", instructions="Be brief.", model=OpenAIChatCompletionsModel("gpt-4o", client),
                  model_settings=ModelSettings(extra_body={"test_usage": CACHED_USAGE}))

    async def run() -> list[str]:
        result = Runner.run_streamed(agent, "hi")
        return [event.data.delta async for event in result.stream_events()
                if event.type == "raw_response_event" and event.data.type == "response.output_text.delta"]
    return asyncio.run(run())


def test_openai_agents_sdk_chat_completions_stream_is_reported_and_unchanged(proxy, upstream, customer):
    direct = _agent_run(upstream.url + "/v1", {})
    assert "stream_options" not in json.loads(upstream.last().body)
    proxied = _agent_run(proxy.url + "/v1", _proxied(proxy, customer))
    assert proxied == direct and "".join(proxied)
    [row] = proxy.rows(customer)
    _assert_reported_cached(row)


def _ai_sdk(provider: str, base_url: str, headers: dict) -> dict:
    node = shutil.which("node")
    assert node and (JS / "node_modules" / "ai").is_dir(), "run `./install.sh --test` (it installs tests/js)"
    result = subprocess.run([node, str(JS / "ai_sdk_stream.mjs"), provider, base_url, json.dumps(headers)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_vercel_ai_sdk_openai_stream_is_reported_and_unchanged(proxy, upstream, customer):
    direct = _ai_sdk("openai", upstream.url + "/v1", {})
    proxied = _ai_sdk("openai", proxy.url + "/v1", _proxied(proxy, customer))
    assert proxied == direct and proxied["text"] and proxied["inputTokens"] == 79
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "reported" and (row["input_tokens"], row["output_tokens"]) == (79, 14)


def test_vercel_ai_sdk_anthropic_stream_is_reported_and_unchanged(proxy, upstream, customer):
    direct = _ai_sdk("anthropic", upstream.url + "/v1", {})
    proxied = _ai_sdk("anthropic", proxy.url + "/v1", _proxied(proxy, customer))
    assert proxied == direct and proxied["text"] and proxied["outputTokens"] == 65
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "reported" and (row["input_tokens"], row["output_tokens"]) == (377, 65)
