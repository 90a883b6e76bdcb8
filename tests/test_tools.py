"""Server-side tools through the proxy with the official SDKs: OpenAI's file search, web search and
code interpreter (Responses API), Anthropic's web search, web fetch and code execution (plain and
streamed), Gemini's grounding with Google Search. Each row holds the tools' counts exactly as the
provider's own fields give them, and a cost worked out here by hand from the providers' price pages;
a fee the proxy cannot know exactly (a container's time, a free allowance) is marked estimated with
the reason, never $0.

The upstream is tests/tools_upstream.py, strict at the wire (a tool must be declared as documented).
"""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest
from google import genai
from google.genai import types

from . import tools_upstream as fake
from .helpers import key_with_blocking_budget, start_proxy

M = Decimal(1_000_000)
# OpenAI's price page: gpt-4o $2.50 input, $1.25 cached input, $10 output per million tokens; file
# search $2.50 and web search $10 per 1,000 tool calls; a 1 GB container $0.03 per 20 minutes,
# billed per minute with a 5-minute minimum.
GPT_4O_TOKENS = (4000 * Decimal("2.50") + 1200 * Decimal("1.25") + 410 * 10) / M
FILE_SEARCH, OPENAI_WEB_SEARCH = Decimal("2.50") / 1000, Decimal(10) / 1000
OPENAI_CONTAINER_MINIMUM = Decimal("0.03") / 20 * 5
# Anthropic's: Claude Sonnet 4.5 $3 input, $15 output per million tokens; web search $10 per 1,000;
# web fetch no charge beyond its tokens; code execution $0.05 per container-hour, 5 minutes at least.
SONNET_TOKENS = (10682 * 3 + 510 * 15) / M
ANTHROPIC_WEB_SEARCH = Decimal(10) / 1000
ANTHROPIC_CONTAINER_MINIMUM = Decimal("0.05") * 5 / 60
# Gemini's: 2.5 Flash $0.30 input, $2.50 output; grounding $35 per 1,000 grounded prompts. 3 Pro
# preview $2 input, $12 output (prompts up to 200k tokens); grounding $14 per 1,000 search queries.
# The tool's prompt tokens (toolUsePromptTokenCount) are input.
FLASH_TOKENS = ((12 + 160) * Decimal("0.30") + 240 * Decimal("2.50")) / M
PRO_3_TOKENS = ((12 + 160) * 2 + 240 * 12) / M


@pytest.fixture(scope="module")
def upstream():
    """This module's provider (conftest's ``proxy`` sends every provider to it): the tools' wire fake."""
    with fake.ToolsProvider() as provider:
        yield provider


def _usd(value) -> Decimal:
    return Decimal(str(value))


def _cents(value) -> Decimal:
    return _usd(value).quantize(Decimal("0.0000001"))


def _tag(customer: str) -> dict:
    return {"extra_headers": {"x-customer-id": customer}}


def _tools(row: dict) -> tuple:
    return (row["web_search_requests"], row["web_fetch_requests"], row["file_search_calls"],
            row["code_executions"], row["containers"], row["grounded_prompts"])


# --- OpenAI Responses -----------------------------------------------------------------------------

def test_file_search_calls_are_counted_and_priced_per_call_on_top_of_tokens(proxy, upstream, customer):
    response = proxy.openai().responses.create(
        model="gpt-4o", input="What is our refund policy?",
        tools=[{"type": "file_search", "vector_store_ids": ["vs_68f1"]}], **_tag(customer))
    assert [item.type for item in response.output].count("file_search_call") == 2
    [row] = proxy.rows(customer)
    assert row["endpoint"] == "/v1/responses" and row["usage_source"] == "reported" and row["error"] is None
    assert _tools(row) == (0, 0, 2, 0, 0, 0)
    assert _usd(row["cost_usd"]) == GPT_4O_TOKENS + 2 * FILE_SEARCH


def test_code_interpreter_runs_and_their_container_are_counted_the_container_estimated(proxy, upstream, customer):
    response = proxy.openai().responses.create(
        model="gpt-4o", input="Double 0, 1 and 2 in Python.",
        tools=[{"type": "code_interpreter", "container": {"type": "auto"}}], **_tag(customer))
    assert {item.container_id for item in response.output if item.type == "code_interpreter_call"} == {
        upstream.containers[-1]}
    [row] = proxy.rows(customer)
    assert _tools(row) == (0, 0, 0, fake.CODE_RUNS, 1, 0)
    # Billed by the session's minutes, which no response reports: the 5-minute minimum, said so.
    assert row["usage_source"] == "estimated" and row["priced"] is True
    assert row["error"].startswith("tool fee estimated: OpenAI bills a code interpreter container by its session")
    assert _usd(row["cost_usd"]) == GPT_4O_TOKENS + OPENAI_CONTAINER_MINIMUM


def test_a_streamed_response_counts_its_tools_from_response_completed(proxy, upstream, customer):
    stream = proxy.openai().responses.create(
        model="gpt-4o", input="Search the web and our files.", stream=True,
        tools=[{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_68f1"]}], **_tag(customer))
    assert [event.type for event in stream][-1] == "response.completed"
    [row] = proxy.rows(customer)
    assert row["stream"] is True and row["usage_source"] == "reported"
    assert _tools(row) == (fake.WEB_SEARCHES, 0, 2, 0, 0, 0)
    assert _usd(row["cost_usd"]) == GPT_4O_TOKENS + fake.WEB_SEARCHES * OPENAI_WEB_SEARCH + 2 * FILE_SEARCH


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_an_image_the_image_generation_tool_made_leaves_the_call_unpriced(proxy, upstream, customer, streamed):
    """The tool's images are billed at the image model's rates, in tokens the answer's usage does
    not hold: priced at gpt-4o's tokens alone, the call looked ~$0.04 a picture cheaper than billed."""
    made = proxy.openai().responses.create(
        model="gpt-4o", input="Draw a lighthouse.", tools=[{"type": "image_generation"}], stream=streamed,
        **_tag(customer))
    if streamed:
        done = [event.item for event in made if event.type == "response.output_item.done"]
        assert [item.type for item in done] == ["image_generation_call", "message"]
    else:
        assert [item.type for item in made.output] == ["image_generation_call", "message"]
    [row] = proxy.rows(customer)
    assert row["image_generation_calls"] == 1 and row["stream"] is streamed
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (4000, 1200, 410)
    assert row["usage_source"] == "reported" and row["priced"] is False and row["cost_usd"] is None
    assert row["error"] == ("tool fee unknown: the image generation tool's images are billed at the image "
                            "model's rates, which the answer does not report (docs/coverage.md)")


# o4-mini: $1.10 input, $0.275 cached input, $4.40 output per million tokens.
O4_MINI_TOKENS = (4000 * Decimal("1.10") + 1200 * Decimal("0.275") + 410 * Decimal("4.40")) / M
# The web search preview tool on a model without reasoning (gpt-4o, gpt-4.1): $25 per 1,000 calls.
OPENAI_WEB_SEARCH_PREVIEW = Decimal(25) / 1000


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_the_web_search_preview_tool_costs_25_per_1000_on_gpt_4o_and_the_searches_rate_on_a_reasoning_model(
        proxy, upstream, customer, streamed):
    """Was $10 per 1,000 on every model: 2.5 times under the bill of gpt-4o's and gpt-4.1's searches."""
    costs = {}
    for model, tool in (("gpt-4o", "web_search_preview"), ("o4-mini-2025-04-16", "web_search_preview_2025_03_11"),
                        ("gpt-4o", "web_search")):
        tag = f"{customer}-{len(costs)}"
        answer = proxy.openai().responses.create(model=model, input="Weather in Paris?", tools=[{"type": tool}],
                                                 stream=streamed, **_tag(tag))
        if streamed:
            assert [event.type for event in answer][-1] == "response.completed"
        [row] = proxy.rows(tag)
        assert (row["web_search_requests"], row["web_search_preview_requests"]) == (
            fake.WEB_SEARCHES, fake.WEB_SEARCHES if tool.startswith("web_search_preview") else 0)
        costs[model, tool] = _usd(row["cost_usd"])
    assert costs == {("gpt-4o", "web_search_preview"): GPT_4O_TOKENS + fake.WEB_SEARCHES * OPENAI_WEB_SEARCH_PREVIEW,
                     ("o4-mini-2025-04-16", "web_search_preview_2025_03_11"):
                         O4_MINI_TOKENS + fake.WEB_SEARCHES * OPENAI_WEB_SEARCH,
                     ("gpt-4o", "web_search"): GPT_4O_TOKENS + fake.WEB_SEARCHES * OPENAI_WEB_SEARCH}


def test_a_blocking_budget_counts_tool_fees_in_dollars(tmp_path, upstream):
    """$0.0156 of tokens stays under a $0.017 daily budget; with its two file searches ($0.005) the
    call crosses it, and the next call is refused."""
    home = tmp_path / "home"
    created = key_with_blocking_budget(home, "searcher", daily="0.017")
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=created["key"])
    try:
        client = proxy.openai(headers={"x-customer-id": "searcher"})
        search = {"model": "gpt-4o", "input": "What is our refund policy?",
                  "tools": [{"type": "file_search", "vector_store_ids": ["vs_68f1"]}]}
        client.responses.create(**search)
        with pytest.raises(openai.RateLimitError) as raised:
            client.responses.create(**search)
        spent = GPT_4O_TOKENS + 2 * FILE_SEARCH
        assert f"${spent} spent of the daily budget of $0.017." in raised.value.message
    finally:
        proxy.stop()


# --- Anthropic Messages ---------------------------------------------------------------------------

_ANTHROPIC_TOOLS = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                    {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 5}]


def test_anthropic_web_search_and_fetch_are_counted_and_priced(proxy, upstream, customer):
    message = proxy.anthropic().messages.create(
        model="claude-sonnet-4-5", max_tokens=1024, tools=_ANTHROPIC_TOOLS,
        messages=[{"role": "user", "content": "When was Claude Shannon born? Read his page."}], **_tag(customer))
    assert message.usage.server_tool_use.web_fetch_requests == fake.WEB_FETCHES
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "reported" and row["error"] is None
    assert _tools(row) == (fake.WEB_SEARCHES, fake.WEB_FETCHES, 0, 0, 0, 0)
    # A fetch costs its tokens only ($0 on top, as billed); each search $0.01.
    assert _usd(row["cost_usd"]) == SONNET_TOKENS + fake.WEB_SEARCHES * ANTHROPIC_WEB_SEARCH


def test_a_streamed_anthropic_call_takes_its_tool_counts_from_the_last_message_delta(proxy, upstream, customer):
    with proxy.anthropic().messages.stream(
            model="claude-sonnet-4-5", max_tokens=1024, tools=_ANTHROPIC_TOOLS,
            messages=[{"role": "user", "content": "When was Claude Shannon born?"}], **_tag(customer)) as stream:
        final = stream.get_final_message()
    assert final.usage.server_tool_use.web_search_requests == fake.WEB_SEARCHES
    [row] = proxy.rows(customer)
    assert row["stream"] is True and row["usage_source"] == "reported"
    # message_start said 0 searches and 2,679 input tokens; the last message_delta's counts win.
    assert (row["input_tokens"], row["output_tokens"]) == (10682, 510)
    assert _tools(row) == (fake.WEB_SEARCHES, fake.WEB_FETCHES, 0, 0, 0, 0)
    assert _usd(row["cost_usd"]) == SONNET_TOKENS + fake.WEB_SEARCHES * ANTHROPIC_WEB_SEARCH


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
def test_anthropic_code_execution_counts_its_runs_and_container_estimated(proxy, upstream, customer, streamed):
    client = proxy.anthropic()
    request = {"model": "claude-sonnet-4-5", "max_tokens": 1024,
               "tools": [{"type": "code_execution_20250825", "name": "code_execution"}],
               "messages": [{"role": "user", "content": "What is 6 * 7? Run it."}], **_tag(customer)}
    if streamed:
        with client.messages.stream(**request) as stream:
            message = stream.get_final_message()
    else:
        message = client.messages.create(**request)
    assert message.container is not None and message.container.id == upstream.containers[-1]
    [row] = proxy.rows(customer)
    assert _tools(row) == (0, 0, 0, 1, 1, 0)
    assert row["usage_source"] == "estimated" and row["priced"] is True
    assert row["error"].startswith("tool fee estimated: Anthropic bills code execution by container time")
    assert _cents(row["cost_usd"]) == _cents(SONNET_TOKENS + ANTHROPIC_CONTAINER_MINIMUM)


# --- Gemini grounding -----------------------------------------------------------------------------

def _gemini(proxy, customer: str) -> genai.Client:
    return genai.Client(api_key="gemini-test-key", http_options=types.HttpOptions(
        base_url=f"{proxy.url}/gemini", api_version="v1beta",
        headers={"x-aispendtrack-key": proxy.key, "x-customer-id": customer}))


_SEARCH = types.GenerateContentConfig(tools=[types.Tool(google_search=types.GoogleSearch())])


def test_gemini_2_5_grounding_is_one_fee_per_grounded_prompt_estimated(proxy, upstream, customer):
    client = _gemini(proxy, customer)
    reply = client.models.generate_content(model="gemini-2.5-flash", contents="Who won Euro 2024?", config=_SEARCH)
    assert reply.candidates[0].grounding_metadata.web_search_queries == fake.GROUNDING_QUERIES
    [row] = proxy.rows(customer)
    assert _tools(row) == (0, 0, 0, 0, 0, 1)  # two queries, one grounded prompt: what 2.5 bills
    assert row["usage_source"] == "estimated"
    assert row["error"].startswith("tool fee estimated: Google bills grounding with Google Search after a free")
    assert _usd(row["cost_usd"]) == FLASH_TOKENS + Decimal(35) / 1000


def test_gemini_3_grounding_is_one_fee_per_search_query_in_a_stream(proxy, upstream, customer):
    client = _gemini(proxy, customer)
    chunks = list(client.models.generate_content_stream(model="gemini-3-pro-preview", contents="Who won Euro 2024?",
                                                        config=_SEARCH))
    assert chunks[-1].candidates[0].grounding_metadata.web_search_queries == fake.GROUNDING_QUERIES
    [row] = proxy.rows(customer)
    assert row["stream"] is True and _tools(row) == (len(fake.GROUNDING_QUERIES), 0, 0, 0, 0, 0)
    assert row["usage_source"] == "estimated"
    assert _usd(row["cost_usd"]) == PRO_3_TOKENS + len(fake.GROUNDING_QUERIES) * Decimal(14) / 1000


def test_a_call_that_declared_a_tool_but_ran_none_pays_its_tokens_only(proxy, upstream, customer):
    client = _gemini(proxy, customer)
    client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    [row] = proxy.rows(customer)
    assert _tools(row) == (0, 0, 0, 0, 0, 0) and row["usage_source"] == "reported" and row["error"] is None
    assert _usd(row["cost_usd"]) == (12 * Decimal("0.30") + 240 * Decimal("2.50")) / M
