"""Gemini, Mistral, Cohere and the OpenAI-compatible family, each through its official SDK.

Rates are the list prices in the genai-prices snapshot the package ships (USD per 1M tokens):
gemini-2.5-flash 0.30 in / 0.03 cached / 2.50 out; mistral-large 2 / 6; command-a 2.5 / 10;
Groq llama-3.3-70b 0.59 / 0.79; Azure gpt-4o 2.50 / 10.
"""

from __future__ import annotations

import cohere
import httpx
import pytest
from google import genai
from google.genai import types

try:
    from mistralai import Mistral
except ImportError:  # mistralai 2+ moved it
    from mistralai.client import Mistral

from .helpers import cost

MESSAGES = [{"role": "user", "content": "hi"}]


def headers(proxy, customer: str, scenario: str = "") -> dict:
    return {"x-aispendtrack-key": proxy.key, "x-customer-id": customer, "x-test-scenario": scenario}


def tokens(row: dict) -> tuple:
    return (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"], row["reasoning_tokens"])


def gemini_client(proxy, customer: str) -> genai.Client:
    return genai.Client(api_key="gemini-test-key", http_options=types.HttpOptions(
        base_url=f"{proxy.url}/gemini", api_version="v1beta", headers=headers(proxy, customer)))


def test_gemini_cached_content_is_inside_the_prompt(proxy, customer):
    client = gemini_client(proxy, customer)  # keep it referenced: the SDK closes its transport on collection
    reply = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert reply.usage_metadata.cached_content_token_count == 230
    [row] = proxy.rows(customer)
    assert row["provider"] == "google" and row["model"] == "gemini-2.5-flash"
    assert row["endpoint"] == "/v1beta/models/{model}:generateContent"
    assert tokens(row) == (115, 230, 51, 0)  # 345 prompt, 230 of them cached
    assert row["cost_usd"] == pytest.approx(cost((115, "0.30"), (230, "0.03"), (51, "2.50")), abs=1e-12)


def test_gemini_stream_takes_the_last_running_total(proxy, customer):
    client = gemini_client(proxy, customer)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert chunks[-1].usage_metadata.candidates_token_count == 5947
    [row] = proxy.rows(customer)
    assert row["stream"] is True and row["usage_source"] == "reported"
    assert row["endpoint"] == "/v1beta/models/{model}:streamGenerateContent"
    # Thoughts are billed as output but are not inside candidatesTokenCount.
    assert tokens(row) == (4, 0, 5947 + 2042, 2042)
    assert row["cost_usd"] == pytest.approx(cost((4, "0.30"), (7989, "2.50")), abs=1e-12)


def mistral_client(proxy, customer: str) -> Mistral:
    return Mistral(api_key="mistral-test-key", server_url=f"{proxy.url}/mistral",
                   client=httpx.Client(headers=headers(proxy, customer, "mistral")))


def test_mistral_chat(proxy, customer):
    reply = mistral_client(proxy, customer).chat.complete(model="mistral-large-latest", messages=MESSAGES)
    assert reply.usage.prompt_tokens == 70
    [row] = proxy.rows(customer)
    assert row["provider"] == "mistral" and row["endpoint"] == "/v1/chat/completions"
    assert tokens(row) == (1, 69, 12, 0)  # num_cached_tokens are cache reads (priced at input: no cache rate)
    assert row["cost_usd"] == pytest.approx(cost((70, "2"), (12, "6")), abs=1e-12)


def test_mistral_stream_reports_usage_in_its_last_chunk_by_default(proxy, customer):
    events = list(mistral_client(proxy, customer).chat.stream(model="mistral-large-latest", messages=MESSAGES))
    assert events[-1].data.usage.completion_tokens == 100
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "reported" and tokens(row) == (34, 0, 100, 0)
    assert row["cost_usd"] == pytest.approx(cost((34, "2"), (100, "6")), abs=1e-12)


def cohere_client(proxy, customer: str) -> cohere.ClientV2:
    return cohere.ClientV2(api_key="cohere-test-key", base_url=f"{proxy.url}/cohere",
                           httpx_client=httpx.Client(headers=headers(proxy, customer)))


def test_cohere_bills_billed_units_not_raw_tokens(proxy, customer):
    reply = cohere_client(proxy, customer).chat(model="command-a-03-2025", messages=MESSAGES)
    assert reply.usage.tokens.input_tokens == 2190
    [row] = proxy.rows(customer)
    assert row["provider"] == "cohere" and row["model"] == "command-a-03-2025"  # from the request
    assert tokens(row) == (431, 0, 661, 0)
    assert row["cost_usd"] == pytest.approx(cost((431, "2.5"), (661, "10")), abs=1e-12)


def test_cohere_stream_usage_from_message_end(proxy, customer):
    events = list(cohere_client(proxy, customer).chat_stream(model="command-a-03-2025", messages=MESSAGES))
    assert events[-1].type == "message-end"
    [row] = proxy.rows(customer)
    assert row["stream"] is True and tokens(row) == (21, 0, 105, 0)
    assert row["cost_usd"] == pytest.approx(cost((21, "2.5"), (105, "10")), abs=1e-12)


@pytest.mark.parametrize("prefix,provider,model,rates", [
    ("/groq/v1", "groq", "llama-3.3-70b-versatile", ("0.59", "0.79")),
    ("/azure/openai/deployments/prod-4o", "azure", "gpt-4o-2024-08-06", ("2.50", "10")),
])
def test_openai_compatible_providers_use_their_own_prices(proxy, upstream, customer, prefix, provider, model, rates):
    import openai
    client = openai.OpenAI(base_url=proxy.url + prefix, api_key="sk-compatible", max_retries=0,
                           default_headers=headers(proxy, customer, f"model:{model}"),
                           default_query={"api-version": "2024-10-21"} if provider == "azure" else None)
    client.chat.completions.create(model="whatever-the-deployment-is", messages=MESSAGES)
    assert upstream.last().path.split("?")[0] == prefix.removeprefix("/" + prefix.split("/")[1]) + \
        "/chat/completions"  # the prefix never reaches the provider
    [row] = proxy.rows(customer)
    assert (row["provider"], row["model"]) == (provider, model)
    assert row["cost_usd"] == pytest.approx(cost((1000, rates[0]), (500, rates[1])), abs=1e-12)


@pytest.mark.parametrize("api_version,asked", [("2024-06-01", False), ("2024-10-21", True), (None, True)],
                         ids=["older", "2024-10-21", "v1"])
def test_an_azure_stream_is_asked_for_its_usage_only_where_its_api_version_takes_it(proxy, upstream, customer,
                                                                                     api_version, asked):
    """Azure's api-versions before 2024-09-01 answer stream_options with a 400: every such stream
    failed through the proxy. It goes on as sent now, estimated from its text, under the model its
    answer names (Azure's first chunk, "model": "", had the deployment's name stored instead)."""
    import json

    import openai
    key, scenario = "0123456789abcdef0123456789abcdef", headers(proxy, customer, "model:gpt-4o-2024-08-06")
    if api_version is None:  # the v1 API: no api-version
        client = openai.OpenAI(base_url=proxy.url + "/azure/openai/v1", api_key=key, max_retries=0,
                               default_headers=scenario)
    else:
        client = openai.AzureOpenAI(azure_endpoint=proxy.url + "/azure", api_key=key, api_version=api_version,
                                    max_retries=0, default_headers=scenario)
    chunks = list(client.chat.completions.create(model="prod-4o", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there, how can I help?"
    assert all(c.usage is None for c in chunks)  # the usage asked for is not shown to the client
    assert ("stream_options" in json.loads(upstream.last().body)) is asked
    [row] = proxy.rows(customer)
    assert (row["provider"], row["model"], row["status"]) == ("azure", "gpt-4o-2024-08-06", 200)
    assert row["endpoint"] == ("/openai/v1/chat/completions" if api_version is None
                               else "/openai/deployments/{deployment}/chat/completions")
    if asked:
        assert (row["usage_source"], row["input_tokens"], row["output_tokens"]) == ("reported", 1000, 500)
        assert row["cost_usd"] == pytest.approx(cost((1000, "2.50"), (500, "10")), abs=1e-12)
    else:
        assert row["usage_source"] == "estimated" and row["output_tokens"] >= 5 and row["priced"] is True


@pytest.mark.parametrize("deployment", ["prod-4o", "gpt-4o"])  # named as its model: priced if estimated
def test_a_prompt_azures_content_filter_refused_is_unpriced_not_a_free_refusal(proxy, customer, deployment):
    """Azure bills such a prompt (its prompt's and completion's tokens, none reported): was stored as
    a refusal, $0.00 and priced; nor is it the estimate of its prompt alone."""
    import openai
    client = openai.AzureOpenAI(azure_endpoint=proxy.url + "/azure", api_key="0123456789abcdef0123456789abcdef",
                                api_version="2024-10-21", max_retries=0,
                                default_headers=headers(proxy, customer, "content_filter"))
    with pytest.raises(openai.BadRequestError, match="content management policy"):
        client.chat.completions.create(model=deployment, messages=MESSAGES)
    [row] = proxy.rows(customer)
    assert (row["provider"], row["status"], row["priced"], row["cost_usd"]) == ("azure", 400, False, None)
    assert (row["usage_source"], row["input_tokens"]) == ("none", 0)
    assert row["error"] == ("usage unknown: Azure bills a prompt its content filter refused (400 content_filter), "
                            "the prompt's and the completion's tokens, which its answer does not report "
                            "(docs/coverage.md)")


def test_an_unpriced_model_at_a_compatible_provider_is_flagged(proxy, customer):
    import openai
    client = openai.OpenAI(base_url=proxy.url + "/together/v1", api_key="sk-compatible", max_retries=0,
                           default_headers=headers(proxy, customer, "model:acme/secret-model-9b"))
    client.chat.completions.create(model="acme/secret-model-9b", messages=MESSAGES)
    [row] = proxy.rows(customer)
    assert row["provider"] == "together" and row["priced"] is False and row["cost_usd"] is None
