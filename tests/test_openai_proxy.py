"""OpenAI calls through the real proxy with the official SDK: exact tokens and costs per call.

Expected costs are computed by hand from the list prices in the reference (USD per 1M tokens).
"""

from __future__ import annotations

import pytest

from .helpers import cost


def tokens(row: dict) -> tuple:
    return (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"],
            row["output_tokens"], row["reasoning_tokens"])


def test_chat_reasoning_model_counts_reasoning_inside_output(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer, "x-feature": "summarise"})
    reply = client.chat.completions.create(model="gpt-5-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.usage.completion_tokens == 561
    [row] = proxy.rows(customer)
    assert row["provider"] == "openai" and row["endpoint"] == "/v1/chat/completions"
    assert row["model"] == "gpt-5-mini-2025-08-07"
    assert tokens(row) == (156, 0, 0, 561, 512)
    # gpt-5-mini: input $0.25, output $2.00; reasoning is billed as output, once.
    assert row["cost_usd"] == pytest.approx(cost((156, "0.25"), (561, "2.00")), abs=1e-12)
    assert row["priced"] is True and row["usage_source"] == "reported"
    assert row["feature"] == "summarise" and row["key_id"] == proxy.key_id
    assert row["status"] == 200 and row["outcome"] == "completed" and row["stream"] is False


def test_chat_cached_prompt_is_not_double_counted(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer, "x-test-scenario": "cached"})
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    [row] = proxy.rows(customer)
    assert tokens(row) == (8, 4012, 0, 4, 0)  # 4020 prompt tokens, 4012 of them cached
    assert row["cost_usd"] == pytest.approx(cost((8, "2.50"), (4012, "1.25"), (4, "10.00")), abs=1e-12)


def test_chat_payload_without_prompt_details(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer, "x-test-scenario": "legacy"})
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "weather?"}])
    [row] = proxy.rows(customer)
    assert row["model"] == "gpt-4o-2024-08-06"
    assert tokens(row) == (14, 0, 0, 37, 0)
    assert row["cost_usd"] == pytest.approx(cost((14, "2.50"), (37, "10.00")), abs=1e-12)


@pytest.mark.parametrize("scenario", ["plain", "usage_null", "split", "gzip"])
def test_streamed_chat_with_include_usage_is_priced_from_the_usage_chunk(proxy, customer, scenario):
    client = proxy.openai(headers={"x-customer-id": customer, "x-test-scenario": scenario})
    stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens == 79
    [row] = proxy.rows(customer)
    assert row["stream"] is True and row["usage_source"] == "reported"
    assert tokens(row) == (79, 0, 0, 14, 0)
    assert row["cost_usd"] == pytest.approx(cost((79, "2.50"), (14, "10.00")), abs=1e-12)
    assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["latency_ms"]


def test_responses_api_cached(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer})
    client.responses.create(model="gpt-4o-mini", input="hi")
    [row] = proxy.rows(customer)
    assert row["endpoint"] == "/v1/responses" and row["model"] == "gpt-4o-mini-2024-07-18"
    assert tokens(row) == (8, 4012, 0, 5, 0)
    assert row["cost_usd"] == pytest.approx(cost((8, "0.15"), (4012, "0.075"), (5, "0.60")), abs=1e-12)


def test_responses_api_stream_reasoning(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer})
    events = list(client.responses.create(model="gpt-5", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    [row] = proxy.rows(customer)
    assert row["stream"] is True and row["model"] == "gpt-5-2025-08-07"
    assert tokens(row) == (45, 0, 0, 1719, 1408)
    assert row["cost_usd"] == pytest.approx(cost((45, "1.25"), (1719, "10.00")), abs=1e-12)


def test_embeddings(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer})
    client.embeddings.create(model="text-embedding-3-small", input="hello world")
    [row] = proxy.rows(customer)
    assert row["endpoint"] == "/v1/embeddings"
    assert tokens(row) == (4, 0, 0, 0, 0)
    assert row["cost_usd"] == pytest.approx(cost((4, "0.02")), abs=1e-15)


def test_unknown_model_is_unpriced_never_zero(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer, "x-test-scenario": "unknown_model"})
    client.chat.completions.create(model="acme-llm-7b", messages=[{"role": "user", "content": "hi"}])
    [row] = proxy.rows(customer)
    assert (row["input_tokens"], row["output_tokens"]) == (10, 5)
    assert row["cost_usd"] is None and row["priced"] is False and row["usage_source"] == "reported"


def test_provider_error_is_passed_through_and_recorded_without_usage(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer, "x-test-scenario": "error400"})
    import openai
    with pytest.raises(openai.BadRequestError, match="empty array"):
        client.chat.completions.create(model="gpt-4o", messages=[])
    [row] = proxy.rows(customer)
    assert row["status"] == 400 and row["usage_source"] == "none"
    assert row["cost_usd"] == 0 and row["priced"] is True  # the provider bills nothing for it


def test_other_paths_pass_through_and_are_recorded(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer})
    models = client.models.list()
    assert [m.id for m in models] == ["gpt-4o"]
    [row] = proxy.rows(customer)
    assert row["endpoint"] == "/v1/models" and row["status"] == 200 and row["usage_source"] == "none"
    assert row["cost_usd"] == 0 and row["priced"] is True
    assert row["latency_ms"] > 0
