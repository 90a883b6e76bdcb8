"""APIs in another provider's wire format: Anthropic's legacy Text Completions (``/v1/complete``,
which reports no usage: estimated with our tokenizer) and Gemini's OpenAI-compatible API
(``/v1beta/openai/...``, OpenAI's wire format priced as Gemini's models), through the proxy.

The anthropic SDK no longer has a client for ``/v1/complete``: calls are made as its last versions
did (the same headers and body). Gemini's OpenAI-compatible API is called with the official
OpenAI SDK and a Gemini key. The upstream is tests/media_upstream.py.
"""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

from addon.estimate import Counter

from . import media_upstream as fake
from .helpers import start_proxy

M = Decimal(1_000_000)
GEMINI_KEY = "AIza" + "S" * 35
PROMPT = "\n\nHuman: Hello there, how are you today?\n\nAssistant:"


@pytest.fixture(scope="module")
def media():
    with fake.MediaProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, media):
    running = start_proxy(tmp_path_factory.mktemp("home"), media.url, tmp_path_factory.mktemp("logs") / "proxy.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return Counter(tmp_path_factory.mktemp("tiktoken")).count


def _complete(proxy, customer: str, **more) -> httpx.Response:
    return httpx.post(f"{proxy.url}/v1/complete", timeout=10, headers={
        "x-api-key": "sk-ant-test-key", "anthropic-version": "2023-06-01", "x-aispendtrack-key": proxy.key,
        "x-customer-id": customer}, json={"model": "claude-2.1", "prompt": PROMPT, "max_tokens_to_sample": 300, **more})


def test_a_text_completion_is_estimated_and_priced_at_the_models_token_rates(proxy, media, customer, tokens):
    answer = _complete(proxy, customer)
    assert answer.status_code == 200 and answer.json()["completion"] == fake.COMPLETION_TEXT
    [row] = proxy.rows(customer, timeout=30)  # the first estimate waits for the tokenizer to load
    prompt, output = tokens(PROMPT, None), tokens(fake.COMPLETION_TEXT, None)
    assert (row["endpoint"], row["model"], row["usage_source"]) == ("/v1/complete", "claude-2.1", "estimated")
    assert (row["input_tokens"], row["output_tokens"]) == (prompt, output) and prompt > 10 and output > 5
    assert Decimal(str(row["cost_usd"])) == (prompt * 8 + output * 24) / M  # Claude 2.1: $8 in, $24 out per MTok


def test_a_streamed_text_completion_is_estimated_from_the_text_it_streamed(proxy, media, customer, tokens):
    answer = _complete(proxy, customer, stream=True)
    assert answer.status_code == 200 and b"event: completion" in answer.content
    [row] = proxy.rows(customer, timeout=30)  # the first estimate waits for the tokenizer to load
    output = tokens(fake.COMPLETION_TEXT, None)
    assert row["stream"] is True and row["usage_source"] == "estimated" and row["output_tokens"] == output
    assert Decimal(str(row["cost_usd"])) == (tokens(PROMPT, None) * 8 + output * 24) / M


@pytest.mark.parametrize("base", ["/v1beta/openai", "/gemini/v1beta/openai"])
def test_geminis_openai_compatible_chat_is_metered_at_geminis_prices(proxy, media, customer, base):
    client = openai.OpenAI(base_url=proxy.url + base, api_key=GEMINI_KEY, max_retries=0,
                           default_headers={"x-aispendtrack-key": proxy.key, "x-customer-id": customer})
    reply = client.chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content == "Hello."
    assert media.last().path == "/v1beta/openai/chat/completions"
    assert media.last().headers["authorization"] == f"Bearer {GEMINI_KEY}"
    [row] = proxy.rows(customer)
    assert (row["provider"], row["endpoint"], row["model"]) == ("google", "/v1beta/openai/chat/completions",
                                                                 "gemini-2.5-flash")
    assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (1200, 300, "reported")
    # Gemini 2.5 Flash: $0.30 input (text), $2.50 output per million tokens.
    assert Decimal(str(row["cost_usd"])) == (1200 * Decimal("0.30") + 300 * Decimal("2.50")) / M


def test_geminis_openai_compatible_embeddings_are_metered(proxy, media, customer):
    client = openai.OpenAI(base_url=proxy.url + "/v1beta/openai", api_key=GEMINI_KEY, max_retries=0,
                           default_headers={"x-aispendtrack-key": proxy.key, "x-customer-id": customer})
    client.embeddings.create(model="gemini-embedding-001", input="hello")
    [row] = proxy.rows(customer)
    assert row["endpoint"] == "/v1beta/openai/embeddings" and row["input_tokens"] == 800
    assert Decimal(str(row["cost_usd"])) == 800 * Decimal("0.15") / M  # gemini-embedding-001: $0.15 per MTok
