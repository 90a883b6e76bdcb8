"""Anthropic calls through the real proxy with the official SDK: exact tokens and costs per call."""

from __future__ import annotations

import anthropic
import pytest

from .helpers import cost

MESSAGES = [{"role": "user", "content": "hi"}]


def tokens(row: dict) -> tuple:
    return (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"],
            row["cache_write_1h_tokens"], row["output_tokens"], row["reasoning_tokens"])


def test_cache_reads_and_writes_are_separate_and_priced_at_their_rates(proxy, customer):
    client = proxy.anthropic(headers={"x-customer-id": customer, "x-feature": "chat"})
    message = client.messages.create(model="claude-sonnet-4-20250514", max_tokens=100, messages=MESSAGES)
    assert message.usage.cache_read_input_tokens == 9511
    [row] = proxy.rows(customer)
    assert row["provider"] == "anthropic" and row["endpoint"] == "/v1/messages"
    assert tokens(row) == (3, 9511, 1956, 0, 44, 0)
    # Sonnet 4: input 3, 5m write 3.75, cache read 0.30, output 15.
    assert row["cost_usd"] == pytest.approx(
        cost((3, "3"), (1956, "3.75"), (9511, "0.30"), (44, "15")), abs=1e-12)
    assert row["usage_source"] == "reported" and row["feature"] == "chat"


def test_one_hour_cache_writes_cost_twice_the_input_rate(proxy, customer):
    client = proxy.anthropic(headers={"x-customer-id": customer, "x-test-scenario": "cache_1h"})
    client.messages.create(model="claude-opus-4-20250514", max_tokens=100, messages=MESSAGES)
    [row] = proxy.rows(customer)
    assert tokens(row) == (20, 0, 1500, 1000, 10, 0)
    # Opus 4: input 15, 5m write 18.75, 1h write 30, output 75.
    assert row["cost_usd"] == pytest.approx(
        cost((20, "15"), (500, "18.75"), (1000, "30"), (10, "75")), abs=1e-12)


def test_thinking_tokens_are_the_reasoning_part_of_output(proxy, customer):
    client = proxy.anthropic(headers={"x-customer-id": customer, "x-test-scenario": "thinking"})
    client.messages.create(model="claude-sonnet-4-20250514", max_tokens=100, messages=MESSAGES)
    [row] = proxy.rows(customer)
    assert tokens(row) == (13, 0, 0, 0, 44, 33)
    assert row["cost_usd"] == pytest.approx(cost((13, "3"), (44, "15")), abs=1e-12)


@pytest.mark.parametrize("scenario", ["plain", "split", "gzip"])
def test_stream_takes_input_from_message_start_and_output_from_the_last_delta(proxy, customer, scenario):
    client = proxy.anthropic(headers={"x-customer-id": customer, "x-test-scenario": scenario})
    with client.messages.stream(model="claude-sonnet-4-20250514", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello there! How can I help you today?"
    assert final.usage.output_tokens == 65
    [row] = proxy.rows(customer)
    assert row["stream"] is True and row["usage_source"] == "reported"
    assert tokens(row) == (377, 0, 0, 0, 65, 0)
    assert row["cost_usd"] == pytest.approx(cost((377, "3"), (65, "15")), abs=1e-12)


def test_stream_with_server_tools_uses_the_cumulative_delta_values(proxy, customer):
    client = proxy.anthropic(headers={"x-customer-id": customer, "x-test-scenario": "web_search"})
    with client.messages.stream(model="claude-sonnet-4-20250514", max_tokens=100, messages=MESSAGES) as stream:
        stream.until_done()
    [row] = proxy.rows(customer)
    # message_delta's input (10682) replaces message_start's (2679); never added together.
    assert tokens(row) == (10682, 0, 0, 0, 510, 0)
    assert row["web_search_requests"] == 1
    assert row["cost_usd"] == pytest.approx(cost((10682, "3"), (510, "15")) + 10 / 1000, abs=1e-12)


def test_count_tokens_is_recorded_without_usage(proxy, customer):
    client = proxy.anthropic(headers={"x-customer-id": customer})
    counted = client.messages.count_tokens(model="claude-sonnet-4-20250514", messages=MESSAGES)
    assert counted.input_tokens == 14
    [row] = proxy.rows(customer)
    assert row["endpoint"] == "/v1/messages/count_tokens" and row["usage_source"] == "none"
    assert row["cost_usd"] == 0 and row["priced"] is True  # free, not unpriced


def test_overloaded_error_reaches_the_sdk_and_is_recorded(proxy, customer):
    client = proxy.anthropic(headers={"x-customer-id": customer, "x-test-scenario": "overloaded"})
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(model="claude-sonnet-4-20250514", max_tokens=100, messages=MESSAGES)
    assert raised.value.status_code == 529
    [row] = proxy.rows(customer)
    assert row["status"] == 529 and row["usage_source"] == "none"


@pytest.mark.parametrize("geo, stream", [("us", False), ("us", True), ("global", False)])
def test_us_only_inference_costs_a_tenth_more_on_every_token_rate_and_keeps_it_when_repriced(
        proxy, customer, geo, stream):
    """Anthropic bills US-only inference (the answer's inference_geo "us") of Claude Opus 4.6 and
    later 1.1 times every token rate: it was priced at the global rates, a tenth under the bill."""
    from .helpers import run_cli
    client = proxy.anthropic(headers={"x-customer-id": customer})
    asked = {"model": "claude-opus-4-6", "max_tokens": 300, "messages": MESSAGES, "inference_geo": geo}
    if stream:
        with client.messages.stream(**asked) as answer:
            final = answer.get_final_message()
    else:
        final = client.messages.create(**asked)
    assert final.usage.inference_geo == geo
    [row] = proxy.rows(customer)
    assert tokens(row) == (1000, 2000, 400, 0, 200, 0)
    # Opus 4.6: input 5, 5m write 6.25, cache read 0.50, output 25; 1.1 times each in the US alone.
    at_global = cost((1000, "5"), (400, "6.25"), (2000, "0.50"), (200, "25"))
    assert row["cost_usd"] == pytest.approx(at_global * (1.1 if geo == "us" else 1), abs=1e-12)
    assert ("x1.1 US-only inference" in row["price_source"]) == (geo == "us")
    dry = run_cli(proxy.home, "reprice", "--customer", customer, "--dry-run", "--quiet")
    assert dry.strip() == "Checked 1 call; 0 would change."  # the premium kept


def test_a_model_before_opus_4_6_asked_to_run_in_the_us_is_refused_and_costs_nothing(proxy, customer):
    client = proxy.anthropic(headers={"x-customer-id": customer})
    with pytest.raises(anthropic.BadRequestError, match="inference_geo"):
        client.messages.create(model="claude-sonnet-4-5-20250929", max_tokens=10, messages=MESSAGES,
                               inference_geo="us")
    [row] = proxy.rows(customer)
    assert (row["status"], row["cost_usd"], row["input_tokens"]) == (400, 0, 0)


def test_a_stream_cut_after_a_compaction_began_is_unpriced_not_estimated_without_it(proxy, customer):
    """The summary's tokens (a whole context's input) come only in the last message_delta: a stream
    cut before it was estimated from the answer's part alone, 180,000 input tokens short."""
    client = proxy.anthropic(headers={"x-customer-id": customer, "x-test-scenario": "die"})
    with pytest.raises((anthropic.APIError, anthropic.APIConnectionError)):
        with client.beta.messages.stream(model="claude-opus-4-6", max_tokens=2000, messages=MESSAGES,
                                         betas=["compact-2026-01-12"],
                                         context_management={"edits": [{"type": "compact_20260112"}]}) as answer:
            answer.until_done()
    [row] = proxy.rows(customer)
    assert (row["cost_usd"], row["priced"], row["usage_source"]) == (None, False, "none")


@pytest.mark.parametrize("stream", [False, True])
def test_a_compactions_summary_is_billed_with_the_answer(proxy, customer, stream):
    """Compaction samples a summary of the conversation before the answer, billed at the model's
    rates and left out of the top-level usage: 180,000 input and 3,500 output tokens a call were
    missing from the row (and its cost) beside the answer's 23,000 and 1,000."""
    client = proxy.anthropic(headers={"x-customer-id": customer})
    asked = {"model": "claude-opus-4-6", "max_tokens": 2000, "messages": MESSAGES, "betas": ["compact-2026-01-12"],
             "context_management": {"edits": [{"type": "compact_20260112"}]}}
    if stream:
        with client.beta.messages.stream(**asked) as answer:
            final = answer.get_final_message()
    else:
        final = client.beta.messages.create(**asked)
    assert [it.type for it in final.usage.iterations] == ["compaction", "message"]
    [row] = proxy.rows(customer)
    assert tokens(row) == (203_000, 0, 0, 0, 4500, 0)
    # Opus 4.6: input 5, output 25, the summary's tokens and the answer's alike.
    assert row["cost_usd"] == pytest.approx(cost((203_000, "5"), (4500, "25")), abs=1e-12)
    assert row["usage_source"] == "reported"


@pytest.mark.parametrize("how", ["plain", "stream", "stream cut"])
def test_a_call_the_advisor_tool_advised_is_unpriced_not_priced_as_the_executor_alone(proxy, customer, how):
    """The advisor tool has another model (Opus) advise mid-answer, billed at its rates on tokens the
    top-level usage leaves out: such a call was priced at the executor's tokens alone, 1,800 input
    and 1,600 output tokens of Opus under the bill. Counted, and unpriced with the reason."""
    scenario = {"x-test-scenario": "die"} if how == "stream cut" else {}
    client = proxy.anthropic(headers={"x-customer-id": customer, **scenario})
    asked = {"model": "claude-sonnet-4-6", "max_tokens": 2000, "messages": MESSAGES,
             "betas": ["advisor-tool-2026-03-01"],
             "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-6"}]}
    if how == "plain":
        final = client.beta.messages.create(**asked)
        assert [it.type for it in final.usage.iterations] == ["message", "advisor_message", "message"]
    else:
        try:
            with client.beta.messages.stream(**asked) as answer:
                answer.until_done()
        except (anthropic.APIError, anthropic.APIConnectionError):
            assert how == "stream cut"
    [row] = proxy.rows(customer)
    assert row["advisor_calls"] == 1
    assert (row["cost_usd"], row["priced"]) == (None, False)
    if how == "stream cut":  # the consultation begun counts, as a search begun does; the cut is the error
        assert row["usage_source"] == "partial" and row["error"] == "HTTP/1 protocol error"
    else:
        assert row["error"].startswith("tool fee unknown: the advisor tool's model is billed at its own rates")
        assert tokens(row) == (4000, 0, 0, 0, 900, 0) and row["usage_source"] == "reported"
