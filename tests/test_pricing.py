"""Prices: list prices by the call's date, and the user's override file."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal

import pytest

from pricing import Price, PriceBook, PriceData, PriceFileError, TokenUsage

NOW = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
MILLION_EACH = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)


def test_historic_price_is_the_one_in_force_on_the_day_of_the_call(tmp_path):
    book = PriceBook(tmp_path / "prices.toml")
    before_cut = book.price(MILLION_EACH, "openai", "o3", dt.datetime(2025, 5, 1, tzinfo=dt.UTC))
    after_cut = book.price(MILLION_EACH, "openai", "o3", dt.datetime(2025, 7, 1, tzinfo=dt.UTC))
    assert before_cut.cost_usd == Decimal("50")  # $10 in + $40 out before 2025-06-10
    assert after_cut.cost_usd == Decimal("10")   # $2 in + $8 out after


def test_gemini_long_prompts_are_priced_at_the_long_context_tier(tmp_path):
    book = PriceBook(tmp_path / "prices.toml")
    short = book.price(TokenUsage(input_tokens=200_000), "google", "gemini-2.5-pro", NOW).cost_usd
    long = book.price(TokenUsage(input_tokens=300_000), "google", "gemini-2.5-pro", NOW).cost_usd
    assert short == Decimal("0.25")   # $1.25 per 1M up to 200k tokens
    assert long == Decimal("0.75")    # the whole prompt at $2.50 per 1M past 200k


def test_claude_3_haiku_cache_write_is_not_derived_from_a_multiplier(tmp_path):
    book = PriceBook(tmp_path / "prices.toml")
    usage = TokenUsage(cache_write_tokens=1_000_000)
    assert book.price(usage, "anthropic", "claude-3-haiku-20240307", NOW).cost_usd == Decimal("0.30")


def test_override_prices_a_custom_model_and_wins_over_list_prices(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text("""
[[price]]
model = "ft:gpt-4o-mini:acme:*"
input_mtok = 0.30
output_mtok = 1.20

[[price]]
provider = "openai"
model = "gpt-4o"
input_mtok = 2.00
output_mtok = 8.00
cache_read_mtok = 1.00

[[price]]
provider = "openai"
model = "gpt-4o"
input_mtok = 1.50
output_mtok = 6.00
since = 2026-11-01
""")
    book = PriceBook(path)
    ft = book.price(MILLION_EACH, "openai", "ft:gpt-4o-mini:acme:v2", NOW)
    assert ft.cost_usd == Decimal("1.50") and ft.source == "override prices.toml#1"
    cached = TokenUsage(input_tokens=1_000_000, cache_read_tokens=1_000_000)
    assert book.price(cached, "openai", "gpt-4o", dt.datetime(2026, 10, 1, tzinfo=dt.UTC)).cost_usd == Decimal("3")
    newer = book.price(MILLION_EACH, "openai", "gpt-4o", NOW)
    assert newer.cost_usd == Decimal("7.5") and newer.source == "override prices.toml#3"
    assert book.price(MILLION_EACH, "openai", "gpt-4o-mini", NOW).source.startswith("genai-prices")


@pytest.mark.parametrize("text,message", [
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1\n", "missing ['output_mtok']; it needs model, input_mtok, output_mtok."),
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1\noutput_mtok = -2\n", "output_mtok must be zero or more"),
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1\noutput_mtok = 2\ninptu_mtok = 3\n", "unknown key(s) ['inptu_mtok']"),
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1\noutput_mtok = 2\n[[price.tier]]\ninput_mtok = 2\noutput_mtok = 3\n",
     "missing ['above_input_tokens']"),
    ("[[price]]\nmodel = 'x'\ninput_mtok = 'cheap'\noutput_mtok = 2\n", "input_mtok must be a number"),
    ("[price]\nmodel = 'x'\n", "write [[price]], not [price]"),
    ("[[price]\n", "not valid TOML"),
    ("[[tool_fee]]\nprovider = 'openai'\nusd_per_hour = 0.09\n", "missing ['minutes']"),
    ("[[prices]]\nmodel = 'x'\n", "unknown top-level key(s) ['prices']; write each price as a [[price]] table"),
    ("[[price]]\nmodel = []\ninput_mtok = 1\noutput_mtok = 2\n",
     "[[price]] entry 1: model must be a model id or pattern, or a list of them."),
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1\noutput_mtok = 2\ntier = 3\n",
     "[[price]] entry 1: 'tier' must be an array of tables: write [[price.tier]]."),
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1\noutput_mtok = 2\n[[price.tier]]\nabove_input_tokens = -1\n"
     "input_mtok = 2\noutput_mtok = 3\n", "[[price]] entry 1, tier 1: above_input_tokens must be a whole number of "
     "tokens, got -1."),
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1\noutput_mtok = 2\nsince = 'soon'\n",
     "[[price]] entry 1: since must be a TOML date such as 2026-01-01, got 'soon'."),
    ("[tool_fee]\nprovider = 'openai'\n", "'tool_fee' must be an array of tables: write [[tool_fee]]"),
    ("[[price]]\nmodel = ['x', '']\ninput_mtok = 1\noutput_mtok = 2\n",
     "[[price]] entry 1: model must be a model id or pattern, or a list of them."),
    ("[image_price]\nprovider = 'openai'\n", "'image_price' must be an array of tables: write [[image_price]]"),
    ("[[image_price]]\nprovider = 'openai'\nmodel = 'x'\nsize = []\nusd_per_image = 1\n",
     "[[image_price]] entry 1: size must be a non-empty string, or a list of them."),
    ("[[price]]\nprovider = ''\nmodel = 'x'\ninput_mtok = 1\noutput_mtok = 2\n",
     "[[price]] entry 1: provider must be a non-empty string, got ''."),
    ("[[price]]\nmodel = 'x'\nservice_tier = 3\ninput_mtok = 1\noutput_mtok = 2\n",
     "[[price]] entry 1: service_tier must be a non-empty string, got 3."),
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1\noutput_mtok = 2\nweb_search_kcount = -1\n",
     "[[price]] entry 1: web_search_kcount must be zero or more, got -1."),
    # A cost at 1e30 per million tokens does not fit the stored column: the call was set aside.
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1e30\noutput_mtok = 2\n",
     "[[price]] entry 1: input_mtok must be at most 1,000,000, got 1e+30."),
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1\noutput_mtok = '1e400000000'\n",
     "[[price]] entry 1: output_mtok must be at most 1,000,000, got '1e400000000'."),
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1\noutput_mtok = 2\nchecked = 'today'\n",
     "[[price]] entry 1: checked must be a TOML date such as 2026-01-01, got 'today'."),
    ("[[price]]\nmodel = 'x'\ninput_mtok = 1\noutput_mtok = 2\n[[price.tier]]\nabove_input_tokens = true\n"
     "input_mtok = 2\noutput_mtok = 3\n", "tier 1: above_input_tokens must be a whole number of tokens, got True."),
    ("[[service_tier]]\nprovider = 'openai'\nname = 'flex'\nmultiplier = 0.5\nrate = 1\n",
     "[[service_tier]] entry 1: unknown key(s) ['rate']"),
    ("[[service_tier]]\nprovider = 'openai'\nname = ''\nmultiplier = 0.5\n",
     "[[service_tier]] entry 1: name must be a non-empty string, got ''."),
    ("[[service_tier]]\nprovider = 'openai'\nname = 'flex'\nmultiplier = 0.5\nchecked = 'today'\n",
     "[[service_tier]] entry 1: checked must be a TOML date"),
    ("[[tool_fee]]\nprovider = 'openai'\nusd_per_hour = 'x'\nminutes = 5\n",
     "[[tool_fee]] entry 1: usd_per_hour must be a number (USD), got 'x'."),
    ("[service_tier]\nprovider = 'openai'\n", "'service_tier' must be an array of tables: write [[service_tier]]"),
    ("[[service_tier]]\nprovider = 'openai'\nname = 'flex'\nmultiplier = 'half'\n",
     "[[service_tier]] entry 1: multiplier must be a number (USD), got 'half'."),
    ("[[service_tier]]\nprovider = ''\nname = 'flex'\nmultiplier = 0.5\n",
     "[[service_tier]] entry 1: provider must be a non-empty string, got ''."),
    ("[[tool_fee]]\nprovider = ''\nusd_per_hour = 1\nminutes = 5\n",
     "[[tool_fee]] entry 1: provider must be a non-empty string, got ''."),
    ("[[tool_fee]]\nprovider = 'openai'\nusd_per_hour = 1\nminutes = 'five'\n",
     "[[tool_fee]] entry 1: minutes must be a number of minutes, got 'five'."),
    ("[[image_price]]\nprovider = 'openai'\nmodel = 'x'\nsize = '1024x1024'\nusd_per_image = 'cheap'\n",
     "[[image_price]] entry 1: usd_per_image must be a number (USD), got 'cheap'."),
    ("[[image_price]]\nprovider = 'openai'\nmodel = 'x'\nsize = '1024x1024'\nusd_per_image = 1\nsince = 'soon'\n",
     "[[image_price]] entry 1: since must be a TOML date such as 2026-01-01, got 'soon'."),
    ("[[image_price]]\nprovider = 'openai'\nmodel = 'x'\nsize = ['1024x1024', '']\nusd_per_image = 1\n",
     "[[image_price]] entry 1: size must be a non-empty string, or a list of them."),
    ("price = [1]\n", "[[price]] entry 1 is not a table."),
    ("[[price]]\nmodel = 'x'\ninput_mtok = true\noutput_mtok = 2\n",
     "[[price]] entry 1: input_mtok must be a number (USD), got True."),
    ("[[price]]\nmodel = 'caf\xe9'\n".encode("latin-1"),
     "not valid TOML ('utf-8' codec can't decode byte 0xe9 in position 22"),
])
def test_bad_override_files_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "prices.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)  # not UTF-8
    else:
        path.write_text(text)
    with pytest.raises(PriceFileError) as raised:
        PriceBook(path)
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_the_running_proxy_picks_up_an_edited_override_file(proxy, customer):
    from .helpers import until
    path = proxy.home / "prices.toml"
    path.write_text('[[price]]\nmodel = "acme-llm-7b"\ninput_mtok = 1.0\noutput_mtok = 2.0\n')
    try:
        def call(tag: str) -> dict:
            client = proxy.openai(headers={"x-customer-id": tag, "x-test-scenario": "unknown_model"})
            client.chat.completions.create(model="acme-llm-7b", messages=[{"role": "user", "content": "hi"}])
            [row] = proxy.rows(tag)
            return row
        # The writer reads the file between its cycles (every 100 ms, later on a loaded host): probe
        # calls until one is priced by it, then the call checked.
        probes = iter(range(1000))
        until(lambda: call(f"{customer}-probe-{next(probes)}")["priced"], 20, "the proxy never read prices.toml",
              every=0)
        row = call(customer)
        assert row["priced"] is True and row["cost_usd"] == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)
        assert row["price_source"] == "override prices.toml#1"
        # The operator who edited the file sees that it was read.
        assert f"reloaded price overrides from {path} (entries: 1)" in proxy.log_path.read_text()
    finally:
        path.unlink()


def test_proxy_refuses_to_start_with_a_broken_override_file(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "prices.toml").write_text("[[price]]\nmodel = 'x'\n")
    result = subprocess.run([sys.executable, "-m", "cli", "--home", str(home), "proxy", "--port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "missing ['input_mtok', 'output_mtok']" in result.stdout + result.stderr


@pytest.mark.parametrize("provider,model", [
    ("openai", "gpt-4o"), ("openai", "gpt-5-mini"), ("openai", "gpt-6-cyber"), ("openai", "text-embedding-3-small"),
    ("anthropic", "claude-sonnet-4-20250514"), ("anthropic", "claude-3-haiku-20240307"),
    ("anthropic", "claude-sonnet-4-5"),  # tiered: priced by genai-prices directly
    ("google", "gemini-2.5-pro"), ("google", "gemini-2.5-flash"), ("mistral", "mistral-large-latest"),
    ("cohere", "command-a-03-2025"), ("groq", "llama-3.3-70b-versatile"), ("azure", "gpt-4o"),
    ("deepseek", "deepseek-v4-pro"),  # off-peak windows: priced by genai-prices directly
])
def test_cached_rates_give_exactly_what_genai_prices_gives(tmp_path, provider, model):
    import random

    import genai_prices
    book = PriceBook(tmp_path / "prices.toml", patch_path=tmp_path / "no-patches.toml")
    rng = random.Random(model)
    for _ in range(20):
        write = rng.randrange(0, 300_000)
        usage = TokenUsage(input_tokens=rng.randrange(0, 300_000), cache_read_tokens=rng.randrange(0, 300_000),
                           cache_write_tokens=write, cache_write_1h_tokens=rng.randrange(0, write + 1),
                           output_tokens=rng.randrange(0, 50_000), web_search_requests=rng.randrange(0, 3))
        expected = genai_prices.calc_price(genai_prices.Usage(
            input_tokens=usage.total_input_tokens, cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens, cache_write_1h_tokens=usage.cache_write_1h_tokens,
            output_tokens=usage.output_tokens, web_searches=usage.web_search_requests),
            model, provider_id=provider, genai_request_timestamp=NOW).total_price
        search_rate = genai_prices.calc_price(genai_prices.Usage(web_searches=1), model, provider_id=provider,
                                              genai_request_timestamp=NOW).total_price
        if usage.web_search_requests and not search_rate:
            expected = None  # billed per search at a rate genai-prices does not know: unpriced, not free
        hour_rate = genai_prices.calc_price(genai_prices.Usage(input_tokens=10**6, cache_write_tokens=10**6,
                                                               cache_write_1h_tokens=10**6),
                                            model, provider_id=provider, genai_request_timestamp=NOW).total_price
        five_minutes = genai_prices.calc_price(genai_prices.Usage(input_tokens=10**6, cache_write_tokens=10**6),
                                               model, provider_id=provider, genai_request_timestamp=NOW).total_price
        if usage.cache_write_1h_tokens and hour_rate == five_minutes:
            expected = None  # an hour's writes with no rate of their own: unpriced, not at the 5 minutes' rate
        assert book.price(usage, provider, model, NOW).cost_usd == expected


def test_the_tier_that_served_a_call_is_recorded_and_priced(proxy, customer):
    client = proxy.openai(headers={"x-customer-id": customer})
    stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, service_tier="flex")
    assert {chunk.service_tier for chunk in stream} == {"flex"}
    [row] = proxy.rows(customer)
    assert row["service_tier"] == "flex" and row["usage_source"] == "reported"
    # genai-prices has no flex rates for gpt-4o: OpenAI's flex discount (half) applies to its list price.
    assert row["cost_usd"] == pytest.approx((79 * 2.50 + 14 * 10.00) / 2 / 1e6, abs=1e-12)
    assert "x0.5 flex" in row["price_source"]


def test_a_priced_file_entry_can_carry_tiers_and_a_service_tier(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text("""
[[price]]
model = ["acme-*", "beta-*"]
input_mtok = 1
output_mtok = 2
  [[price.tier]]
  above_input_tokens = 1000
  input_mtok = 3
  output_mtok = 4

[[price]]
model = "acme-*"
service_tier = "priority"
input_mtok = 10
output_mtok = 20
""")
    book = PriceBook(path)
    short, long = TokenUsage(input_tokens=1000, output_tokens=10), TokenUsage(input_tokens=600, cache_read_tokens=401)
    assert book.price(short, "openai", "beta-2", NOW).cost_usd == Decimal("0.00102")
    assert book.price(long, "openai", "acme-1", NOW).cost_usd == Decimal("0.003003")  # cache counts toward the tier
    assert book.price(short, "openai", "acme-1", NOW, "priority").cost_usd == Decimal("0.0102")
    assert book.price(short, "openai", "beta-2", NOW, "priority").cost_usd is None  # no rate for that tier
    assert book.price(short, "openai", "beta-2", NOW, "default").cost_usd == Decimal("0.00102")


def test_every_bundled_patch_cites_its_source_and_the_check_lists_them(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    book = PriceBook(tmp_path / "prices.toml")
    assert book.patches.prices and all(entry.cited and "checked 20" in entry.cited for entry in book.patches.prices)
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "prices", "check"])
    assert result.exit_code == 0, result.output
    assert "claude-sonnet-4-0*" in result.output and "1 long-context tier(s)" in result.output
    assert "https://api-docs.deepseek.com/quick_start/pricing (checked " in result.output
    # Per-image prices are bundled corrections too: each listed with its size, quality and citation.
    assert book.patches.images and all(entry.cited and "checked 20" in entry.cited for entry in book.patches.images)
    assert ("openai/dall-e-3 dall-e-3-* 1024x1792/1792x1024 hd: $0.12 an image: "
            "https://platform.openai.com/docs/pricing#image-generation (checked ") in result.output
    assert "openai/dall-e-3 dall-e-3-* 1024x1024: $0.04 an image: " in result.output


def test_azure_prices_only_openais_and_anthropics_models_at_their_makers_rates(tmp_path):
    """genai-prices lends Azure DeepSeek's, xAI's and Moonshot's rates, which Azure does not charge
    (DeepSeek-R1 on Azure AI Foundry: $1.35 and $5.40 per million; DeepSeek's own $0.55 and $2.19,
    off-peak $0.135 and $0.55, which it was priced at): such a model is unpriced until prices.toml has it."""
    usage = TokenUsage(input_tokens=1000, output_tokens=1000)
    book = PriceBook(tmp_path / "prices.toml")
    assert [book.price(usage, "azure", model, NOW).cost_usd for model in ("DeepSeek-R1", "grok-3-mini")] == [None, None]
    assert book.price(usage, "deepseek", "deepseek-reasoner", NOW).cost_usd is not None  # at DeepSeek itself
    assert book.price(usage, "azure", "gpt-4o-2024-11-20", NOW).cost_usd == Decimal("0.0125")  # OpenAI's rates
    (tmp_path / "prices.toml").write_text(
        '[[price]]\nprovider = "azure"\nmodel = "DeepSeek-R1"\ninput_mtok = 1.35\noutput_mtok = 5.40\n')
    assert PriceBook(tmp_path / "prices.toml").price(usage, "azure", "DeepSeek-R1", NOW).cost_usd == Decimal("0.00675")


def test_a_model_priced_for_its_input_alone_is_unpriced_once_it_writes_output(tmp_path):
    """genai-prices' Azure davinci-002 has an input rate and none for output: its completions' tokens
    were free ($2 per million in, $0 out), where Azure bills them."""
    book = PriceBook(tmp_path / "prices.toml")
    assert book.price(TokenUsage(input_tokens=1000), "azure", "davinci-002", NOW).cost_usd == Decimal("0.002")
    assert book.price(TokenUsage(input_tokens=1000, output_tokens=10), "azure", "davinci-002", NOW).cost_usd is None


def test_images_made_by_the_image_tool_leave_the_call_unpriced_whatever_layer_prices_its_tokens(tmp_path):
    """Billed at the image model's rates, in tokens no usage reports: priced at the chat model's
    tokens alone it read as a few cents a picture cheaper, also after a reprice (which prices the
    stored counts again)."""
    tokens = TokenUsage(input_tokens=1_000_000, output_tokens=1_000, file_search_calls=1)
    drawn = TokenUsage(input_tokens=1_000_000, output_tokens=1_000, file_search_calls=1, image_generation_calls=1)
    bundled = PriceBook(tmp_path / "prices.toml")
    assert bundled.price(tokens, "openai", "gpt-4o", NOW).cost_usd == Decimal("2.51") + Decimal("0.0025")
    unpriced = bundled.price(drawn, "openai", "gpt-4o", NOW)
    assert (unpriced.cost_usd, unpriced.source) == (None, None)
    (tmp_path / "prices.toml").write_text('[[price]]\nmodel = "gpt-4o*"\ninput_mtok = 2\noutput_mtok = 8\n')
    own = PriceBook(tmp_path / "prices.toml")
    assert own.price(tokens, "openai", "gpt-4o", NOW).cost_usd == Decimal("2.008") + Decimal("0.0025")
    assert own.price(drawn, "openai", "gpt-4o", NOW).cost_usd is None


def test_a_call_a_bedrock_guardrail_checked_is_unpriced_whatever_layer_prices_its_tokens(tmp_path):
    """Its checks are billed per text unit and policy on top of the tokens, in units no answer
    reports without the guardrail's trace: never its tokens alone, nor $0 for a refused prompt."""
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    tokens = TokenUsage(input_tokens=1_000_000, output_tokens=1_000)
    bundled = PriceBook(tmp_path / "prices.toml")
    assert bundled.price(tokens, "bedrock", model, NOW).cost_usd == Decimal("0.25") + Decimal("0.00125")
    for usage in (replace(tokens, guardrail_checks=1), TokenUsage(guardrail_checks=1)):
        assert bundled.price(usage, "bedrock", model, NOW).cost_usd is None
    (tmp_path / "prices.toml").write_text('[[price]]\nmodel = "anthropic.claude-3-haiku*"\ninput_mtok = 1\n'
                                          'output_mtok = 5\n')
    own = PriceBook(tmp_path / "prices.toml")
    assert own.price(tokens, "bedrock", model, NOW).cost_usd == Decimal("1.005")
    assert own.price(replace(tokens, guardrail_checks=1), "bedrock", model, NOW).cost_usd is None


def test_a_container_is_estimated_at_the_tool_fee_of_the_nearest_layer_and_tools_add_to_any_layer(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    usage = TokenUsage(input_tokens=1_000_000, file_search_calls=4, code_executions=2, containers=2)
    bundled = PriceBook(tmp_path / "prices.toml").price(usage, "openai", "gpt-4o", NOW)
    # gpt-4o $2.50 per million input; file search $2.50 per 1,000; a 1 GB container $0.09/hour, 5 minutes.
    assert bundled.cost_usd == Decimal("2.50") + 4 * Decimal("0.0025") + 2 * Decimal("0.0075")
    (tmp_path / "prices.toml").write_text("""
[[price]]
model = "gpt-4o*"
input_mtok = 2
output_mtok = 8
[[tool_fee]]
provider = "openai"
usd_per_hour = 0.36   # a 4 GB container
minutes = 10
""")
    mine = PriceBook(tmp_path / "prices.toml").price(usage, "openai", "gpt-4o", NOW)
    # The file's token rate; the file search still at genai-prices' rate (a file has none for it).
    assert mine.cost_usd == Decimal(2) + 4 * Decimal("0.0025") + 2 * Decimal("0.06")
    assert PriceBook(tmp_path / "prices.toml").price(usage, "acme", "acme-7b", NOW).cost_usd is None
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "prices", "check"])
    assert "openai containers: estimated at 5 minutes of $0.09/hour each: https://platform.openai.com" in result.output


def test_reprice_prices_stored_calls_at_their_service_tier(tmp_path, new_store):
    from click.testing import CliRunner

    from addon.core.home import db_path
    from addon.core.store import calls as call_rows
    from addon.core.store import writing
    from cli.main import cli

    from .helpers import call_row
    with writing(new_store(db_path(tmp_path))) as con:
        call_rows.insert(con, [call_row(1_000_000, model="gpt-5", service_tier="flex", customer_id="flex"),
                               call_row(1_000_000, model="gpt-5", service_tier="default", customer_id="std")])
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "reprice"])
    assert result.exit_code == 0, result.output
    rows = {r["customer_id"]: r for r in json.loads(CliRunner().invoke(
        cli, ["--home", str(tmp_path), "calls", "--format", "json"]).output)}
    assert rows["flex"]["cost_usd"] == pytest.approx(0.625) and rows["std"]["cost_usd"] == pytest.approx(1.25)


def test_an_anthropic_usage_body_costs_each_kind_of_token_at_its_own_rate(tmp_path):
    from addon.providers.anthropic import usage_from
    body = {"input_tokens": 1000, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 7000,
            "cache_creation": {"ephemeral_5m_input_tokens": 3000, "ephemeral_1h_input_tokens": 4000},
            "output_tokens": 500}
    price = PriceBook(tmp_path / "prices.toml").price(usage_from(body), "anthropic", "claude-sonnet-4-20250514", NOW)
    # $3 input, $0.30 cache read, $3.75 5-minute write, $6 one-hour write, $15 output, per 1M tokens
    assert price.cost_usd == Decimal("0.04635")


def test_only_a_model_with_a_thinking_rate_bills_a_response_that_thought_at_it(tmp_path):
    book = PriceBook(tmp_path / "prices.toml")
    answered = TokenUsage(output_tokens=1_000_000)
    thought = TokenUsage(output_tokens=1_000_000, reasoning_tokens=1)
    preview = "gemini-2.5-flash-preview-05-20"
    assert book.price(answered, "google", preview, NOW).cost_usd == Decimal("0.60")
    assert book.price(thought, "google", preview, NOW).cost_usd == Decimal("3.50")
    assert book.price(thought, "openai", "o3", NOW).cost_usd == Decimal("8")  # o3 has one output rate


@pytest.mark.parametrize("value", [True, -1, "12", 1.0, None, Decimal("1.5")])
def test_a_token_count_that_is_not_a_whole_number_is_refused_by_name(value):
    with pytest.raises(ValueError, match=re.escape(f"cache_read_tokens must be a non-negative integer, got {value!r}")):
        TokenUsage(input_tokens=5, cache_read_tokens=value)


def test_only_seconds_of_audio_may_be_a_fraction_and_the_counts_after_them_are_checked_too():
    assert TokenUsage(audio_seconds=Decimal("1.5"), characters=3).audio_seconds == Decimal("1.5")
    with pytest.raises(ValueError, match="characters must be a non-negative integer, got -1"):
        TokenUsage(audio_seconds=Decimal("1.5"), characters=-1)


def test_an_edited_override_file_applies_without_a_restart_and_a_broken_edit_keeps_the_last_good(tmp_path):
    path = tmp_path / "prices.toml"
    book = PriceBook(path)  # no file yet: list prices, which do not know this model
    assert _cost_and_source(book.price(MILLION_EACH, "openai", "acme-llm", NOW)) == (None, None)

    def edit(n: int, text: str) -> None:  # each edit a second apart, as the proxy's check sees files change
        path.write_text(text)
        os.utime(path, (n, n))
        book.reload_if_changed()

    edit(1, '[[price]]\nmodel = "acme-llm"\ninput_mtok = 1\noutput_mtok = 2\n')
    assert _cost_and_source(book.price(MILLION_EACH, "openai", "acme-llm", NOW)) == (
        Decimal("3"), "override prices.toml#1")
    assert len(book.overrides) == 1
    edit(2, '[[price]]\nmodel = "acme-llm"\ninput_mtok = "lots"\n')  # a broken edit
    assert book.price(MILLION_EACH, "openai", "acme-llm", NOW).cost_usd == Decimal("3")
    edit(3, '[[price]]\nmodel = "acme-llm"\ninput_mtok = 2\noutput_mtok = 2\n')
    assert book.price(MILLION_EACH, "openai", "acme-llm", NOW).cost_usd == Decimal("4")
    path.unlink()  # removed: no overrides, as at a start without the file
    book.reload_if_changed()
    assert _cost_and_source(book.price(MILLION_EACH, "openai", "acme-llm", NOW)) == (None, None)


def _cost_and_source(price: Price) -> tuple:
    return price.cost_usd, price.source


def test_images_are_priced_per_image_by_size_and_quality_and_an_override_wins_for_its_models(tmp_path):
    """In-process (the mutation selection's): DALL-E's per-image prices (patches.toml), an override's
    own per-image price for a model, the latest ``since`` in force, and a size or quality nobody
    prices left unpriced, never priced as another."""
    from pricing.usage import ImageOptions
    path = tmp_path / "prices.toml"
    path.write_text("""
[[image_price]]
provider = "openai"
model = "dall-e-3-acme*"
size = "1024x1024"
usd_per_image = 0.05

[[image_price]]
provider = "openai"
model = "dall-e-3-acme*"
size = ["1024x1024", "512x512"]
usd_per_image = 0.03
since = 2026-11-01

[[image_price]]
provider = "openai"
model = "dall-e-3-acme*"
size = "1024x1024"
usd_per_image = 0.01
since = 2099-01-01
""")
    book = PriceBook(path)
    three = TokenUsage(images=3)

    def cost(model: str, size: str, quality: str = "standard", at: dt.datetime = NOW,
             provider: str = "openai") -> tuple:
        found = book.price(three, provider, model, at, image=ImageOptions(size, quality))
        return found.cost_usd, found.source

    patch = "patch patches.toml [[image_price]]#{}".format
    assert cost("dall-e-3", "1024x1024") == (Decimal("0.12"), patch(1))
    assert cost("dall-e-3", "1024x1024", "hd") == (Decimal("0.24"), patch(3))
    assert cost("dall-e-3-2026", "1792x1024", "hd") == (Decimal("0.36"), patch(4))
    assert cost("dall-e-3", "1024x1792") == (Decimal("0.24"), patch(2))
    assert cost("dall-e-3", "512x512") == (None, None)  # DALL-E 3 has no such size: unpriced
    assert cost("dall-e-3", "1024x1024", "ultra") == (None, None)
    assert book.price(three, "openai", "dall-e-3", NOW).cost_usd is None  # no size asked: unpriced
    # The override prices its own models, the latest entry in force at the call's time wins;
    # a size it does not name is unpriced, not priced by the patches' DALL-E 3 entry.
    assert cost("dall-e-3-acme-v1", "1024x1024") == (Decimal("0.09"), "override prices.toml [[image_price]]#2")
    assert cost("dall-e-3-acme-v1", "1024x1024", at=dt.datetime(2026, 10, 1, tzinfo=dt.UTC)) == (
        Decimal("0.15"), "override prices.toml [[image_price]]#1")
    assert cost("dall-e-3-acme-v1", "1024x1024", at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC)) == (
        Decimal("0.09"), "override prices.toml [[image_price]]#2")  # in force from its first instant
    assert cost("dall-e-3-acme-v1", "512x512") == (Decimal("0.09"), "override prices.toml [[image_price]]#2")
    assert cost("dall-e-3-acme-v1", "1792x1024") == (None, None)
    assert cost("dall-e-3-acme-v1", "1024x1024", "hd") == (None, None)
    assert cost("dall-e-3", "1024x1024", provider="azure")[0] != Decimal("0.12")


def test_healing_prices_only_the_calls_that_had_no_price(tmp_path, new_store):
    """What the proxy does once a refresh or an override prices a model it could not: the calls
    stored unpriced get their price; a priced call keeps the price it was stored with."""
    from addon.core.home import db_path
    from addon.core.reprice import heal_unpriced
    from addon.core.store import calls as call_rows
    from addon.core.store import reading, writing

    from .helpers import call_row
    path = tmp_path / "prices.toml"
    path.write_text('[[price]]\nprovider = "openai"\nmodel = "acme-llm"\ninput_mtok = 2.00\noutput_mtok = 8.00\n')
    db = new_store(db_path(tmp_path))
    with writing(db) as con:
        call_rows.insert(con, [
            call_row(1_000_000, model="acme-llm", cost_usd=None, priced=False, customer_id="unpriced"),
            call_row(1_000_000, model="acme-llm", cost_usd=Decimal("0.5"), price_source="old", customer_id="priced"),
            call_row(1_000_000, model="acme-unknown", cost_usd=None, priced=False, customer_id="still")])
    assert heal_unpriced(db, PriceBook(path)) == {("openai", "acme-llm"): 1}
    with reading(db) as con:
        stored = {c: (cost, priced, source) for c, cost, priced, source in con.execute(
            "SELECT customer_id, cost_usd, priced, price_source FROM calls").fetchall()}
    assert stored == {"unpriced": (Decimal("2"), True, "override prices.toml#1"),
                      "priced": (Decimal("0.5"), True, "old"), "still": (None, False, None)}


def test_a_tier_is_priced_at_its_own_list_rates_else_at_a_published_multiplier_else_not_at_all(tmp_path):
    """In-process (the mutation selection's): which rates a service tier gets. genai-prices
    publishes gpt-5's priority and gpt-4o's batch rates, so those apply (not standard x a
    multiplier); gpt-4o has no flex rates, so OpenAI's flex discount (patches.toml) halves its
    list price; Azure's gpt-4o is one genai-prices borrows from OpenAI, whose tier rates are not
    Azure's: with no Azure discount known, unpriced."""
    from pricing import data_source
    book = PriceBook(tmp_path / "prices.toml")

    def cost(provider: str, model: str, tier: str) -> tuple:
        found = book.price(MILLION_EACH, provider, model, NOW, tier)
        return found.cost_usd, found.source

    assert cost("openai", "gpt-5", "priority") == (Decimal("22.50"), data_source())  # $2.50 in, $20 out
    assert cost("openai", "gpt-4o", "batch") == (Decimal("6.25"), data_source())
    assert cost("openai", "gpt-4o", "flex") == (
        Decimal("6.25"), f"{data_source()} x0.5 flex (patch patches.toml [[service_tier]]#1)")
    assert book.price(MILLION_EACH, "azure", "gpt-4o", NOW).cost_usd == Decimal("12.50")
    assert cost("azure", "gpt-4o", "batch") == (None, None)
    # A bundled patch prices its model and says so: 1M input is past Claude Sonnet 4's 200k tier ($6 + $22.50).
    assert cost("anthropic", "claude-sonnet-4-0", None) == (Decimal("28.5"), "patch patches.toml#1")
    # The same on Vertex AI, which names the model with "@" (priced at $3 and $15 before: half).
    assert cost("vertex", "claude-sonnet-4@20250514", None) == (Decimal("28.5"), "patch patches.toml#5")


def test_an_overrides_tier_multiplier_wins_over_the_bundled_one_and_the_check_counts_every_entry(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    from pricing import data_source
    (tmp_path / "prices.toml").write_text("""
[[price]]
model = "acme-*"
input_mtok = 1
output_mtok = 2

[[service_tier]]
provider = "openai"
name = "flex"
multiplier = 0.25

[[tool_fee]]
provider = "openai"
usd_per_hour = 0.36
minutes = 10

[[image_price]]
provider = "openai"
model = "acme-image"
size = "1024x1024"
usd_per_image = 0.05

[[image_price]]
provider = "openai"
model = "acme-image"
size = "512x512"
usd_per_image = 0.02
""")
    flex = PriceBook(tmp_path / "prices.toml").price(MILLION_EACH, "openai", "gpt-4o", NOW, "flex")
    assert (flex.cost_usd, flex.source) == (
        Decimal("3.125"), f"{data_source()} x0.25 flex (override prices.toml [[service_tier]]#1)")
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "prices", "check"])
    assert result.exit_code == 0, result.output
    assert ": 5 entries" in result.output  # 1 price, 1 tier multiplier, 1 tool fee, 2 image prices


def test_searches_are_priced_at_the_calls_tier_and_each_tool_adds_its_own_fee(tmp_path):
    """In-process: a call with server-side tools is its tokens, its web searches at the rate of the
    entry pricing its tier, and the other tools' fees; reconciliation asks for the fees alone."""
    path = tmp_path / "prices.toml"
    path.write_text("""
[[price]]
provider = "openai"
model = "acme-*"
input_mtok = 1
output_mtok = 2
web_search_kcount = 10

[[price]]
provider = "openai"
model = "acme-*"
service_tier = "priority"
input_mtok = 2
output_mtok = 4
web_search_kcount = 30

[[tool_fee]]
provider = "openai"
usd_per_hour = 0.36
minutes = 10
""")
    book = PriceBook(path)
    searched = TokenUsage(input_tokens=1_000_000, web_search_requests=100, containers=1)
    # $2 of input, 100 searches at $30 per 1,000, a container at 10 minutes of $0.36/hour.
    assert book.price(searched, "openai", "acme-1", NOW, "priority").cost_usd == Decimal("5.06")
    assert book.price(searched, "openai", "acme-1", NOW).cost_usd == Decimal("2.06")
    assert book.price(searched, "anthropic", "acme-1", NOW).cost_usd is None  # the entries are OpenAI's
    # Gemini's grounding: $35 per 1,000 grounded prompts on top of the tokens ($2.50 per 1M output).
    grounded = TokenUsage(output_tokens=1_000_000, grounded_prompts=2)
    assert book.price(grounded, "google", "gemini-2.5-flash", NOW).cost_usd == Decimal("2.57")
    # The fees alone, at the list prices in use: 4 file searches at $2.50 and 2 web searches at $10 per 1,000.
    tools = TokenUsage(input_tokens=1_000_000, file_search_calls=4, web_search_requests=2)
    assert book.tool_fees(tools, "openai", "gpt-4o", NOW) == Decimal("0.03")


def test_a_unit_with_no_known_rate_leaves_the_call_unpriced_never_free(tmp_path):
    """genai-prices knows gpt-4o-transcribe's tokens but no rate per second, gpt-image-1's tokens but
    none per image, gpt-4o-mini-tts' tokens but none per search: a call counting only such units
    was priced at $0 for them."""
    book = PriceBook(tmp_path / "prices.toml")
    for usage, model in ((TokenUsage(audio_seconds=Decimal(60)), "gpt-4o-transcribe"),
                         (TokenUsage(images=2), "gpt-image-1"),  # an answer without its usage
                         (TokenUsage(input_tokens=10, output_tokens=10, web_search_requests=1), "gpt-4o-mini-tts"),
                         (TokenUsage(characters=1000), "gpt-4o")):
        assert book.price(usage, "openai", model, NOW).cost_usd is None, (usage, model)
    # The same units where a rate is known: whisper-1 at $0.006 a minute, gpt-image-1 by its tokens.
    assert book.price(TokenUsage(audio_seconds=Decimal(60)), "openai", "whisper-1", NOW).cost_usd == Decimal("0.006")
    assert book.price(TokenUsage(output_tokens=4160, images=1), "openai", "gpt-image-1", NOW).cost_usd == \
        Decimal("0.1664")


def test_a_price_file_entry_prices_text_tokens_and_leaves_audio_and_image_ones_to_the_list(tmp_path):
    """A `gpt-4o*` entry at gpt-4o's text rates matched gpt-4o-transcribe and priced its audio
    tokens at the text rate ($2.50 per million, where OpenAI bills $6)."""
    path = tmp_path / "prices.toml"
    path.write_text('[[price]]\nprovider = "openai"\nmodel = "gpt-4o*"\ninput_mtok = 2.50\noutput_mtok = 10\n')
    book = PriceBook(path)
    audio = TokenUsage(input_tokens=607, input_audio_tokens=600, output_tokens=9)
    price = book.price(audio, "openai", "gpt-4o-transcribe", NOW)
    assert price.cost_usd == (600 * 6 + 7 * Decimal("2.5") + 9 * 10) / 1_000_000
    assert price.source is not None and price.source.startswith("genai-prices")
    text = book.price(TokenUsage(input_tokens=607, output_tokens=9), "openai", "gpt-4o-transcribe", NOW)
    assert text.cost_usd == (607 * Decimal("2.5") + 9 * 10) / 1_000_000
    assert text.source is not None and "prices.toml" in text.source


def test_long_context_tiers_apply_by_their_bound_whatever_order_the_file_lists_them(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text("""
[[price]]
model = "acme-*"
input_mtok = 1
output_mtok = 2
  [[price.tier]]
  above_input_tokens = 2000
  input_mtok = 5
  output_mtok = 5
  [[price.tier]]
  above_input_tokens = 1000
  input_mtok = 3
  output_mtok = 3
""")
    book = PriceBook(path)
    # Each call's whole input at the rate of the highest bound it passes: $1, $3, then $5 per 1M.
    assert [book.price(TokenUsage(input_tokens=n), "openai", "acme-1", NOW).cost_usd for n in (1000, 1500, 2500)] == [
        Decimal("0.001"), Decimal("0.0045"), Decimal("0.0125")]
    # An entry with no web_search_kcount prices no call that searched (a search is billed: not free,
    # nor at some default rate); one that says 0 makes searches free.
    searched = TokenUsage(input_tokens=1000, web_search_requests=1000)
    assert book.price(searched, "openai", "acme-1", NOW).cost_usd is None
    path.write_text(path.read_text().replace("output_mtok = 2\n", "output_mtok = 2\nweb_search_kcount = 0\n", 1))
    assert PriceBook(path).price(searched, "openai", "acme-1", NOW).cost_usd == Decimal("0.001")


def _tier(above: object, rate: object = 3) -> str:
    return f"  [[price.tier]]\n  above_input_tokens = {above}\n  input_mtok = {rate}\n  output_mtok = {rate}\n"


def test_a_tier_may_start_at_zero_but_two_tiers_may_not_share_a_bound_and_a_tiers_error_names_it(tmp_path):
    path, entry = tmp_path / "prices.toml", "[[price]]\nmodel = 'acme-*'\ninput_mtok = 1\noutput_mtok = 2\n"
    path.write_text(entry + _tier(0))
    book = PriceBook(path)
    # above 0: any input at all takes the tier's rates ($3 in and out), none keeps the entry's
    assert [book.price(TokenUsage(input_tokens=n, output_tokens=1000), "openai", "acme-1", NOW).cost_usd
            for n in (0, 1)] == [Decimal("0.002"), Decimal("0.003003")]
    for tiers, message in ((_tier(1000) + _tier(2000, "'x'"),
                            "[[price]] entry 1, tier 2: input_mtok must be a number (USD), got 'x'."),
                           (_tier(1000) + _tier(2000) + _tier(1000, 5),
                            "[[price]] entry 1: two tiers have above_input_tokens = 1000; give each tier its own "
                            "bound.")):
        path.write_text(entry + tiers)
        with pytest.raises(PriceFileError) as raised:
            PriceBook(path)
        assert str(raised.value) == f"{path}: {message}"


@pytest.mark.parametrize("citation", ["checked = 2026-11-26", "source = 'https://example.com/prices'"])
def test_a_bundled_entry_without_both_its_source_and_its_check_date_is_refused(citation):
    from pricing import overrides
    entries = ("[[price]]\nmodel = 'acme-*'\ninput_mtok = 1\noutput_mtok = 2\n",
               "[[service_tier]]\nprovider = 'openai'\nname = 'flex'\nmultiplier = 0.5\n",
               "[[tool_fee]]\nprovider = 'openai'\nusd_per_hour = 0.09\nminutes = 5\n",
               "[[image_price]]\nprovider = 'openai'\nmodel = 'dall-e-9'\nsize = '1024x1024'\nusd_per_image = 1\n")
    for kind, text in zip(("[[price]]", "[[service_tier]]", "[[tool_fee]]", "[[image_price]]"), entries, strict=True):
        assert len(overrides.parse(text + citation, "prices.toml")) == 1  # a user's file may leave either out
        with pytest.raises(PriceFileError) as raised:
            overrides.parse(text + citation, "patches.toml", name="patches.toml", cited=True)
        assert str(raised.value) == (f"patches.toml: {kind} entry 1: a bundled patch needs source (the page with "
                                     "the rates) and checked (a date).")


def test_prices_check_cites_each_bundled_tier_multiplier(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "prices", "check"])
    assert result.exit_code == 0, result.output
    assert "  openai flex tier: x0.5 of standard: https://platform.openai.com/docs/guides/flex-processing " \
           "(checked 2026-11-26)\n" in result.output


def test_a_patch_is_redundant_when_the_list_prices_each_kind_alike_and_needed_when_one_differs_or_is_missing():
    """pricing.patches, what `prices check` says of each bundled correction, over list data whose
    gpt-4o rates are $2.50 in (and cache writes), $10 out, $1.25 cached, $10 per 1,000 searches, and
    whose DeepSeek rates halve off-peak (16:30-00:30 UTC)."""
    from pricing import overrides, patches
    file = overrides.parse("""
[[price]]
provider = "openai"
model = "gpt-4o*"
input_mtok = 2.5
output_mtok = 10
cache_read_mtok = 1.25
web_search_kcount = 10

[[price]]
provider = "openai"
model = "gpt-4o"
input_mtok = 2.5
output_mtok = 11
cache_read_mtok = 1.25
web_search_kcount = 10

[[price]]
provider = "openai"
model = "acme-llm-7X*"
input_mtok = 1
output_mtok = 2

[[price]]
provider = "deepseek"
model = "deepseek-chat"
input_mtok = 0.135
output_mtok = 0.55
cache_read_mtok = 0.035
since = 2026-11-25T00:00:00Z

[[price]]
provider = "openai"
model = "gpt-4o"
service_tier = "flex"
input_mtok = 1.25
output_mtok = 5

[[price]]
model = "gpt-4o"
input_mtok = 2.5
output_mtok = 10
""", "patches.toml")
    noon = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)  # on-peak: the DeepSeek entry's own since is off-peak
    found = [(c.model, c.verdict, c.patch_usd, c.list_usd) for c in patches.compare(file, noon)]
    assert found == [
        ("gpt-4o", "redundant", Decimal("36.25"), Decimal("36.25")),
        ("gpt-4o", "differs", Decimal("38.25"), Decimal("36.25")),
        ("acme-llm-7X", "not in the list data", Decimal("7"), None),
        ("deepseek-chat", "redundant", Decimal("1.405"), Decimal("1.405")),
    ]  # the service tier's entry and the one for any provider are not compared


def test_a_tiers_own_list_rates_apply_from_the_day_they_are_published_and_a_multiplier_before(tmp_path):
    """genai-prices publishes Claude Sonnet 4.5's batch rates from 2026-10-14 on: a batch call the
    hour before is priced at the standard rates times Anthropic's batch discount (patches.toml)."""
    from pricing import data_source
    book = PriceBook(tmp_path / "prices.toml")
    found = [(p.cost_usd, p.source) for p in (
        book.price(MILLION_EACH, "anthropic", "claude-sonnet-4-5", dt.datetime(2026, 10, 13, 23, tzinfo=dt.UTC),
                   "batch"),
        book.price(MILLION_EACH, "anthropic", "claude-sonnet-4-5", dt.datetime(2026, 10, 14, 1, tzinfo=dt.UTC),
                   "batch"))]
    # 1M input is past the 200k long-context bound: $6 + $22.50, halved either way
    assert found == [(Decimal("14.25"), f"{data_source()} x0.5 batch (patch patches.toml [[service_tier]]#3)"),
                     (Decimal("14.25"), data_source())]


def test_a_call_that_reports_its_tokens_is_priced_by_them_even_where_the_model_has_image_prices(tmp_path):
    """GPT Image answers with token usage: an [[image_price]] for it prices only a response that
    reports none (as DALL-E's), never one whose tokens are known."""
    from pricing import data_source
    from pricing.usage import ImageOptions
    path = tmp_path / "prices.toml"
    path.write_text('[[image_price]]\nprovider = "openai"\nmodel = "gpt-image-1"\n'
                    'size = "1024x1024"\nusd_per_image = 0.04\n')
    book = PriceBook(path)

    def priced(usage: TokenUsage) -> tuple:
        found = book.price(usage, "openai", "gpt-image-1", NOW, image=ImageOptions("1024x1024", "standard"))
        return found.cost_usd, found.source
    # genai-prices: $5 per 1M input tokens, $40 per 1M image output tokens.
    reported = TokenUsage(images=1, input_tokens=20, output_tokens=1056, output_image_tokens=1056)
    assert priced(reported) == (Decimal("0.04234"), data_source())
    assert priced(TokenUsage(images=2)) == (Decimal("0.08"), "override prices.toml [[image_price]]#1")


def _gpt_4o_priced_anew() -> PriceData:
    """List data (genai-prices' format, validated as a fetched document is) in which OpenAI's gpt-4o
    costs $5 in, $20 out, $5 per 1,000 file searches and $30 per 1,000 code executions; has flex
    rates of its own ($1 in, $3 out, $1 per 1,000 file searches); and no batch rates."""
    from pricing import snapshots

    from .price_data import bundled_document
    doc = bundled_document()
    gpt_4o = next(m for p in doc if p["id"] == "openai" for m in p["models"] if m["id"] == "gpt-4o")
    gpt_4o["prices"].update(input_mtok=5, output_mtok=20, storage_searches_kcount=5, code_executions_kcount=30)
    gpt_4o["price_variants"] = [v for v in gpt_4o["price_variants"] if v["when"] != {"processing": "batch"}] + [
        {"when": {"service_tier": "flex"}, "prices": {"input_mtok": 1, "output_mtok": 3, "storage_searches_kcount": 1}}]
    return snapshots.parse(json.dumps(doc), "gpt-4o-anew.json", NOW)


def test_a_call_is_priced_by_the_list_data_it_is_given_and_says_which(tmp_path):
    """What `prices diff` does: price stored calls by one version of the list prices while another is
    in use. Every rate comes from the data given (its tokens, its own tier rates or their absence,
    its tools' fees at the call's tier), and the price names that data (stored as price_snapshot)."""
    from pricing import listprices
    data, book = _gpt_4o_priced_anew(), PriceBook(tmp_path / "prices.toml")

    def priced(usage: TokenUsage, tier: str | None = None) -> tuple:
        found = book.price(usage, "openai", "gpt-4o", NOW, tier, data=data)
        return found.cost_usd, found.source, found.snapshot

    in_use = book.price(MILLION_EACH, "openai", "gpt-4o", NOW)
    assert (in_use.cost_usd, in_use.snapshot) == (Decimal("12.5"), listprices.current().id)  # $2.50 + $10
    assert priced(MILLION_EACH) == (Decimal("25"), data.label, data.id)
    assert priced(MILLION_EACH, "flex") == (Decimal("4"), data.label, data.id)  # its own flex rates, not x0.5
    # No batch rates in this data (the data in use has them): its standard rates times OpenAI's batch discount.
    assert priced(MILLION_EACH, "batch") == (
        Decimal("12.5"), f"{data.label} x0.5 batch (patch patches.toml [[service_tier]]#2)", data.id)
    # 4 file searches at $5 and 2 code executions at $30 per 1,000 on top of $5 of input; at flex
    # the file searches cost flex's $1 per 1,000.
    tools = TokenUsage(input_tokens=1_000_000, file_search_calls=4, code_executions=2)
    assert priced(tools) == (Decimal("5.08"), data.label, data.id)
    assert priced(TokenUsage(input_tokens=1_000_000, file_search_calls=4), "flex") == (
        Decimal("1.004"), data.label, data.id)


def test_audio_and_image_output_are_priced_at_their_own_rates(tmp_path):
    """genai-prices' rates per 1M tokens: gpt-realtime-mini's output $2.40, its audio output $20;
    chatgpt-image-latest's output $10, its image output $32. Of 1,000 output tokens 800 are audio
    or image."""
    book = PriceBook(tmp_path / "prices.toml")
    spoken = TokenUsage(output_tokens=1000, output_audio_tokens=800)
    drawn = TokenUsage(output_tokens=1000, output_image_tokens=800)
    assert book.price(spoken, "openai", "gpt-realtime-mini", NOW).cost_usd == Decimal("0.01648")  # $0.00048 + $0.016
    assert book.price(drawn, "openai", "chatgpt-image-latest", NOW).cost_usd == Decimal("0.0276")  # $0.002 + $0.0256


def test_a_call_billed_in_characters_or_seconds_is_priced_by_the_list_prices_never_by_a_token_entry(tmp_path):
    """A price file holds token rates only: an entry whose pattern covers a speech or transcription
    model must not price its characters or seconds at $0."""
    from pricing import data_source
    path = tmp_path / "prices.toml"
    path.write_text('[[price]]\nprovider = "openai"\nmodel = "*"\ninput_mtok = 1\noutput_mtok = 2\n')
    book = PriceBook(path)
    spoken = book.price(TokenUsage(characters=1000), "openai", "tts-1", NOW)  # $15 per 1M characters
    heard = book.price(TokenUsage(audio_seconds=Decimal(90)), "openai", "whisper-1", NOW)  # $0.006 a minute
    assert [(p.cost_usd, p.source) for p in (spoken, heard)] == [(Decimal("0.015"), data_source()),
                                                                 (Decimal("0.009"), data_source())]


def test_a_price_entry_applies_from_the_instant_its_since_names_in_utc_unless_it_gives_an_offset(tmp_path):
    """``since`` as a date (midnight UTC), a local date-time (read as UTC) and one with an offset."""
    path = tmp_path / "prices.toml"
    path.write_text("""
[[price]]
model = "acme-*"
input_mtok = 1
output_mtok = 0
[[price]]
model = "acme-*"
input_mtok = 2
output_mtok = 0
since = 2026-11-01
[[price]]
model = "acme-*"
input_mtok = 3
output_mtok = 0
since = 2026-11-10T12:00:00
[[price]]
model = "acme-*"
input_mtok = 4
output_mtok = 0
since = 2026-11-20T00:00:00+05:00
""")
    book = PriceBook(path)
    second = dt.timedelta(seconds=1)
    firsts = (dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 10, 12, tzinfo=dt.UTC),
              dt.datetime(2026, 11, 19, 19, tzinfo=dt.UTC))  # the last: midnight at +05:00
    found = [book.price(TokenUsage(input_tokens=1_000_000), "openai", "acme-1", at).cost_usd
             for first in firsts for at in (first - second, first)]
    assert found == [1, 2, 2, 3, 3, 4]
