"""``aispendtrack reconcile``: our rows beside the provider's usage API (a fake at the wire).

Our rows come from real SDK calls through the proxy (or, for a month of history, are generated);
the provider's side is what the fake provider actually served, direct calls included.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from decimal import Decimal

import openai
import pytest
from click.testing import CliRunner

from addon.core.money import usd
from addon.core.reconcile import anthropic
from addon.core.store import calls as call_rows
from addon.core.store import writing
from cli.main import cli

from .batch_api import completed_openai_batch
from .helpers import call_row, start_proxy
from .upstream import FakeProvider
from .usage_api import ADMIN_KEY, Billed, UsageApi, billed_from

M = Decimal(1_000_000)
GPT4O = "gpt-4o-2024-08-06"
LEGACY = {"x-test-scenario": "legacy"}  # 14 input + 37 output tokens of gpt-4o-2024-08-06
LEGACY_COST = (14 * Decimal("2.50") + 37 * Decimal("10.00")) / M
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "weather?"}]}


@pytest.fixture
def usage_api():
    api = UsageApi()
    yield api
    api.close()
    anthropic.forget_refusals()  # a later fake may get this one's port


def reconcile(home, *args: str, env: dict | None = None):
    env = {"OPENAI_ADMIN_KEY": ADMIN_KEY, "ANTHROPIC_ADMIN_KEY": ADMIN_KEY, **(env or {})}
    return CliRunner().invoke(cli, ["--home", str(home), "reconcile", *args], env=env, catch_exceptions=False)


def lines(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_openai_calls_through_the_proxy_match_and_direct_calls_show_as_untracked(tmp_path, usage_api):
    with FakeProvider() as provider:
        proxy = start_proxy(tmp_path / "home", provider.url, tmp_path / "proxy.log")
        try:
            client = proxy.openai(headers={**LEGACY, "x-customer-id": "rec"})
            for _ in range(3):
                client.chat.completions.create(**CHAT)
            assert len(proxy.rows("rec", expect=3)) == 3
            usage_api.ledger = billed_from(provider.received)
            args = ("--provider", "openai", "--since", "1d", "--upstream", usage_api.url, "--format", "json")
            [today, total] = lines(reconcile(proxy.home, *args))
            assert (today["model"], today["status"], today["ours_requests"], today["theirs_requests"]) == \
                (GPT4O, "match", 3, 3)
            assert Decimal(str(total["difference_usd"])) == 0 and total["status"] == "match"

            direct = openai.OpenAI(base_url=f"{provider.url}/v1", api_key="sk-direct", default_headers=LEGACY)
            for _ in range(2):  # a service that calls the provider without the proxy
                direct.chat.completions.create(**CHAT)
            usage_api.ledger = billed_from(provider.received)
            [today, total] = lines(reconcile(proxy.home, *args))
        finally:
            proxy.stop()
    assert today["status"] == "untracked" and today["pending"] is True  # today's bucket may still change
    assert (today["ours_requests"], today["theirs_requests"]) == (3, 5)
    assert (today["ours_input_tokens"], today["theirs_input_tokens"]) == (3 * 14, 5 * 14)
    assert (today["ours_output_tokens"], today["theirs_output_tokens"]) == (3 * 37, 5 * 37)
    assert Decimal(str(today["ours_cost_usd"])) == 3 * LEGACY_COST
    assert Decimal(str(today["theirs_cost_usd"])) == 5 * LEGACY_COST
    assert Decimal(str(total["difference_usd"])) == 2 * LEGACY_COST
    assert total["difference_percent"] == pytest.approx(40.0)


def test_anthropic_analytics_api_with_cache_writes_and_the_legacy_reports_where_it_is_refused(tmp_path, usage_api):
    with FakeProvider() as provider:
        proxy = start_proxy(tmp_path / "home", provider.url, tmp_path / "proxy.log")
        try:
            client = proxy.anthropic(headers={"x-customer-id": "rec"})
            for _ in range(2):
                client.messages.create(model="claude-sonnet-4-20250514", max_tokens=50,
                                       messages=[{"role": "user", "content": "hi"}])
            assert len(proxy.rows("rec", expect=2)) == 2
        finally:
            proxy.stop()
    usage_api.ledger = billed_from(provider.received)
    for entry in usage_api.ledger:
        entry.billed_usd = 0.0125  # the cost APIs answer in cents: "1.250000" each
    analytics = reconcile(proxy.home, "--provider", "anthropic", "--upstream", usage_api.url)
    assert analytics.exit_code == 0, analytics.output
    assert all("/v1/organizations/analytics/" in path for path in usage_api.requests)
    assert "claude-sonnet-4-20250514" in analytics.output and "match" in analytics.output
    assert "REQ ours/theirs" in analytics.output  # the analytics API counts requests
    assert "Everything Anthropic reports matches what the proxy recorded." in analytics.output
    assert "Its cost report says $0.025 was billed" in analytics.output
    # 2 calls of 3 uncached + 9,511 cache-read + 1,956 cache-write (5 min) + 44 output tokens, both sides.
    assert "19,022/19,022" in analytics.output and "3,912/3,912" in analytics.output

    usage_api.requests.clear()
    longer = reconcile(proxy.home, "--provider", "anthropic", "--since", "45d", "--upstream", usage_api.url)
    assert longer.exit_code == 0 and "19,022/19,022" in longer.output  # 46 days: two requests of at most 31
    assert [path.split("?")[0].rsplit("/", 1)[1] for path in usage_api.requests] == ["usage"] * 2 + ["cost"] * 2

    usage_api.analytics_refused = True  # as for an organisation with HIPAA readiness: 400
    usage_api.requests.clear()
    legacy = reconcile(proxy.home, "--provider", "anthropic", "--upstream", usage_api.url)
    assert legacy.exit_code == 0, legacy.output
    assert "reading its legacy usage and cost reports instead" in legacy.output
    assert [path.split("?")[0] for path in usage_api.requests] == [
        "/v1/organizations/analytics/usage", "/v1/organizations/usage_report/messages",
        "/v1/organizations/cost_report"]  # refused once, then the legacy pair only
    assert "REQ" not in legacy.output  # the legacy report does not count requests, so neither do we here
    assert "19,022/19,022" in legacy.output and "3,912/3,912" in legacy.output
    assert "Everything Anthropic reports matches" in legacy.output and "says $0.025 was billed" in legacy.output



def test_us_only_inference_matches_in_both_of_anthropics_apis(tmp_path, usage_api):
    """Calls run in the US alone cost 1.1 times Claude Opus 4.6's rates, ours priced so: the
    provider's figures were priced at the global rates, a tenth under ours, a difference every day."""
    with FakeProvider() as provider:
        proxy = start_proxy(tmp_path / "home", provider.url, tmp_path / "proxy.log")
        try:
            client = proxy.anthropic(headers={"x-customer-id": "rec-geo"})
            for geo in ("us", "us", "global"):
                client.messages.create(model="claude-opus-4-6", max_tokens=50, inference_geo=geo,
                                       messages=[{"role": "user", "content": "hi"}])
            assert len(proxy.rows("rec-geo", expect=3)) == 3
        finally:
            proxy.stop()
    usage_api.ledger = billed_from(provider.received)
    assert sorted(entry.inference_geo for entry in usage_api.ledger) == ["global", "us", "us"]
    # Opus 4.6: 1,000 input at 5, 2,000 cache reads at 0.50, 400 5-minute writes at 6.25, 200 output at 25.
    one = (1000 * Decimal(5) + 2000 * Decimal("0.50") + 400 * Decimal("6.25") + 200 * Decimal(25)) / M
    for refused in (False, True):  # the analytics API, then the legacy report
        usage_api.analytics_refused = refused
        result = reconcile(proxy.home, "--provider", "anthropic", "--upstream", usage_api.url, "--format", "json")
        assert result.exit_code == 0, result.output
        said = "reading its legacy usage and cost reports instead"
        assert (said in result.output) == refused  # said before the lines, once
        [today, total] = json.loads(result.output[result.output.index("["):])
        assert (today["model"], today["status"]) == ("claude-opus-4-6", "match")
        assert Decimal(str(today["theirs_cost_usd"])) == Decimal(str(today["ours_cost_usd"])) == \
            one * Decimal("3.2")  # two at 1.1 times, one at the list rates
        assert Decimal(str(total["difference_usd"])) == 0


def _call_both_sides_agree_on(book, day: int, n: int, at: dt.datetime, **billed) -> tuple[dict, Billed]:
    """The ``n``th gpt-4o call of ``day``: our row, and the provider's line for it at the same cost."""
    from pricing.usage import TokenUsage
    usage = TokenUsage(input_tokens=1000 + day, cache_read_tokens=200 * n, output_tokens=300 + n)
    cost = book.price(usage, "openai", GPT4O, at).cost_usd
    row = call_row(day * 2 + n, ts=at, model=GPT4O, input_tokens=usage.input_tokens,
                   cache_read_tokens=usage.cache_read_tokens, output_tokens=usage.output_tokens,
                   cost_usd=cost, price_source="test")
    return row, Billed(at, "openai", GPT4O, usage.input_tokens, usage.cache_read_tokens,
                       output_tokens=usage.output_tokens, billed_usd=float(cost), **billed)


def test_a_month_with_a_known_gap_is_reported_to_the_token_and_the_cent(tmp_path, usage_api):
    """Generated history: 30 days, calls either side of each UTC midnight, one day with an extra
    call the provider billed and we never saw."""
    from pricing import PriceBook
    book = PriceBook(tmp_path / "none.toml")
    start = dt.datetime(2026, 10, 26, tzinfo=dt.UTC)
    rows, ledger = [], []
    for day in range(30):
        midnight = start + dt.timedelta(days=day)
        for n, at in enumerate((midnight + dt.timedelta(hours=9), midnight + dt.timedelta(days=1, microseconds=-1))):
            row, billed = _call_both_sides_agree_on(book, day, n, at)
            rows.append(row)
            ledger.append(billed)
    gap_day = dt.datetime(2026, 11, 10, tzinfo=dt.UTC)
    ledger.append(Billed(gap_day, "openai", GPT4O, 1000, output_tokens=500, billed_usd=0.0075))  # 00:00:00
    home = tmp_path / "home"
    home.mkdir()
    with writing(home / "aispendtrack.duckdb") as con:
        call_rows.insert(con, rows)
    usage_api.ledger = ledger
    usage_api.page_size = 7  # five pages of days
    args = ("--provider", "openai", "--since", "2026-10-26", "--until", "2026-11-25", "--upstream", usage_api.url)

    as_json = lines(reconcile(home, *args, "--format", "json"))
    *days, total = as_json
    assert len(days) == 30 and total["model"] == "TOTAL"
    assert [d["bucket"][:10] for d in days if d["status"] != "match"] == ["2026-11-10"]
    [gap] = [d for d in days if d["bucket"].startswith("2026-11-10")]
    assert gap["status"] == "untracked" and gap["pending"] is False
    assert gap["theirs_requests"] - gap["ours_requests"] == 1
    assert gap["theirs_input_tokens"] - gap["ours_input_tokens"] == 1000
    assert gap["theirs_output_tokens"] - gap["ours_output_tokens"] == 500
    assert gap["theirs_cache_read_tokens"] == gap["ours_cache_read_tokens"] == 200  # the 23:59:59.999999 call
    expected_gap = (1000 * Decimal("2.50") + 500 * Decimal("10.00")) / M
    assert Decimal(str(total["difference_usd"])) == expected_gap == Decimal("0.0075")
    assert sum(d["theirs_requests"] for d in days) == 61 and total["ours_requests"] == 60

    as_csv = list(csv.DictReader(io.StringIO(reconcile(home, *args, "--format", "csv").output)))
    [csv_gap] = [r for r in as_csv if r["bucket"].startswith("2026-11-10")]
    assert csv_gap["status"] == "untracked"
    assert int(csv_gap["theirs_input_tokens"]) - int(csv_gap["ours_input_tokens"]) == 1000
    assert Decimal(as_csv[-1]["difference_usd"]) == expected_gap

    table = reconcile(home, *args).output
    assert "2026-11-10" in table and "untracked" in table
    assert "OpenAI reports $0.0075 more than the proxy recorded" in table
    assert "Its cost report says $0.347475 was billed for these days" in table  # exact, not $0.3475
    [*by_day, day_total] = lines(reconcile(home, *args, "--by", "day", "--format", "json"))
    [billed_gap] = [d for d in by_day if d["bucket"].startswith("2026-11-10")]
    assert billed_gap["billed_usd"] == pytest.approx(float(Decimal(billed_gap["theirs_cost_usd"])))
    assert day_total["billed_usd"] == pytest.approx(float(Decimal(str(day_total["theirs_cost_usd"]))))
    assert len(usage_api.requests) >= 4 * 5  # json, csv, table, by day: five pages each


def test_a_wrong_admin_key_a_missing_one_and_rate_limits(tmp_path, usage_api):
    home = tmp_path / "home"
    refused = reconcile(home, "--provider", "openai", "--upstream", usage_api.url,
                        env={"OPENAI_ADMIN_KEY": "sk-proj-ordinary-key"})
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "refused the admin key in OPENAI_ADMIN_KEY with 401" in refused.output
    assert "organization admin key, not an ordinary API key" in refused.output
    assert "sk-proj-ordinary-key" not in refused.output  # a key is never echoed
    missing = reconcile(home, "--provider", "anthropic", env={"ANTHROPIC_ADMIN_KEY": ""})
    assert missing.exit_code == 2 and "Set ANTHROPIC_ADMIN_KEY" in missing.output
    usage_api.throttle = 2  # two 429s with retry-after: 1, then answers
    waited = reconcile(home, "--provider", "anthropic", "--upstream", usage_api.url, "--format", "json")
    assert waited.exit_code == 0, waited.output
    assert len(usage_api.requests) == 1 + 4  # the refused call, then 2 throttled, the usage and the cost
    # A secret file's trailing line break is not part of the key (the request library refused the
    # header with an error that quoted the whole key); one inside it is refused without quoting it.
    trailing = reconcile(home, "--provider", "openai", "--upstream", usage_api.url, "--format", "json",
                         env={"OPENAI_ADMIN_KEY": ADMIN_KEY + "\r\n"})
    assert trailing.exit_code == 0, trailing.output
    inside = reconcile(home, "--provider", "openai", "--upstream", usage_api.url,
                       env={"OPENAI_ADMIN_KEY": ADMIN_KEY[:8] + "\n" + ADMIN_KEY[8:]})
    assert inside.exit_code == 1 and ADMIN_KEY[8:] not in inside.output and "Traceback" not in inside.output
    assert "header for OpenAI's usage API holds a line break" in inside.output
    usage_api.malformed = 1
    odd = reconcile(home, "--provider", "openai", "--upstream", usage_api.url)
    assert odd.exit_code == 1 and "answered a page we cannot read (KeyError" in odd.output
    assert "nothing was compared" in odd.output and "Traceback" not in odd.output
    unreachable = reconcile(home, "--provider", "openai", "--upstream", "http://127.0.0.1:9")
    assert unreachable.exit_code == 1 and "Cannot reach OpenAI's usage API" in unreachable.output


def test_days_whose_raw_calls_were_purged_are_read_from_the_rollups_and_still_match(tmp_path, usage_api):
    """A free-plan key keeps 7 days of raw calls; the rollups keep the sums. Reading the raw calls
    alone, the purged days' calls (all through the proxy) showed as untracked, and the daily check
    alerted on them."""
    from addon.core import retention
    from pricing import PriceBook
    from pricing.usage import TokenUsage

    home = tmp_path / "home"
    key = json.loads(CliRunner().invoke(cli, ["--home", str(home), "keys", "create", "--name", "app", "--plan",
                                              "free", "--json"]).output)["id"]
    book = PriceBook(tmp_path / "none.toml")
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows, ledger = [], []
    for day in range(2, 16):
        at = today - dt.timedelta(days=day, hours=-12)
        cost = book.price(TokenUsage(input_tokens=1000, output_tokens=100), "openai", GPT4O, at).cost_usd
        rows.append(call_row(day, ts=at, key_id=key, model=GPT4O, input_tokens=1000, output_tokens=100,
                             cost_usd=cost))
        ledger.append(Billed(at, "openai", GPT4O, 1000, output_tokens=100, billed_usd=float(cost)))
    with writing(home / "aispendtrack.duckdb") as con:
        call_rows.insert(con, rows)
    usage_api.ledger = ledger
    args = ("--provider", "openai", "--since", "20d", "--upstream", usage_api.url, "--by", "day")
    assert lines(reconcile(home, *args, "--format", "json"))[-1]["status"] == "match"
    purged = retention.purge(home / "aispendtrack.duckdb", dt.datetime.now(dt.UTC), audited=False).deleted
    assert purged and sum(purged.values()) > 0
    *days, after = lines(reconcile(home, *args, "--format", "json"))
    assert (after["status"], after["difference_usd"], after["ours_requests"]) == ("match", 0, None)
    assert [d["status"] for d in days] == ["match"] * 14
    rolled = [d for d in days if d["ours_requests"] is None]  # not counted by the rollups
    assert 5 <= len(rolled) < 14 and all(d["ours_input_tokens"] == d["theirs_input_tokens"] == 1000 for d in rolled)
    table = reconcile(home, *args).output
    assert "-/1" in table and "1/1" in table


def _month_so_far(now: dt.datetime, gap: bool, book) -> tuple[list[dict], list[Billed]]:
    """Two calls on each past day of this month (UTC); with ``gap``, one more the proxy never saw."""
    from pricing.usage import TokenUsage
    rows, ledger = [], []
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for day in range((now - first).days):
        at = first + dt.timedelta(days=day, hours=12)
        usage = TokenUsage(input_tokens=50_000, output_tokens=20_000)
        cost = book.price(usage, "openai", GPT4O, at).cost_usd
        rows += [call_row(day * 2 + n, ts=at, model=GPT4O, input_tokens=50_000, output_tokens=20_000, cost_usd=cost)
                 for n in range(2)]
        ledger += [Billed(at, "openai", GPT4O, 50_000, output_tokens=20_000) for _ in range(2)]
    if gap:
        ledger.append(Billed(first + dt.timedelta(hours=3), "openai", GPT4O, 400_000, output_tokens=100_000))
    return rows, ledger


@pytest.mark.parametrize("gap", [True, False])
def test_the_proxy_reconciles_daily_and_alerts_once_when_the_month_differs(tmp_path, monkeypatch, gap):
    from .helpers import Receiver, run_cli
    now = dt.datetime.now(dt.UTC)
    if now.day == 1:
        pytest.skip("on the 1st the daily run covers last month, which this test does not generate")
    home = tmp_path / "home"
    home.mkdir()
    receiver = Receiver()
    (home / "alerts.toml").write_text(f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n'
                                      f'[reconcile]\npercent = 1.0\nmin_usd = 0.5\n')
    from pricing import PriceBook
    rows, ledger = _month_so_far(now, gap, PriceBook(tmp_path / "none.toml"))
    with writing(home / "aispendtrack.duckdb") as con:
        call_rows.insert(con, rows)
    token = json.loads(run_cli(home, "admin", "create-token", "--name", "ops", "--json"))["token"]
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    with FakeProvider() as provider:
        provider.usage_api = UsageApi()  # the usage API on the provider's own host, as OpenAI's is
        provider.usage_api.ledger = ledger
        proxy = start_proxy(home, provider.url, tmp_path / "proxy.log", extra_args=("--alert-interval", "1"))
        try:
            from web import create_app
            web = create_app(home).test_client()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                found = web.get("/api/v1/reconciliation", headers={"Authorization": f"Bearer {token}"}).get_json()
                if found:
                    break
                time.sleep(0.2)
            time.sleep(3)  # three more rounds: nothing is checked or sent twice
        finally:
            proxy.stop()
            provider.usage_api.close()
            receiver.close()
    [latest] = found
    assert latest["provider"] == "openai" and latest["until"].startswith(f"{now:%Y-%m-%d}")
    alerts = [json.loads(body) for _, body in receiver.requests]
    if gap:
        extra = (400_000 * Decimal("2.50") + 100_000 * Decimal("10.00")) / M  # $2.00
        assert Decimal(str(latest["difference_usd"])) == extra and latest["days_differing"] == 1
        [alert] = alerts  # once
        assert alert["kind"] == "reconcile" and "OpenAI usage differs" in alert["subject"]
        assert "OpenAI reports $2.00 more than the proxy" in alert["text"]
    else:
        assert Decimal(str(latest["difference_usd"])) == 0 and latest["lines"] == []
        assert alerts == []
    assert "OPENAI_ADMIN_KEY" not in (tmp_path / "proxy.log").read_text()
    assert ADMIN_KEY not in (tmp_path / "proxy.log").read_text()
    # Said at start: the admin key goes to the upstream, here not OpenAI's own API.
    assert f"the openai admin key goes to {provider.url} for the daily reconciliation" in \
        (tmp_path / "proxy.log").read_text()


def test_a_host_of_workers_says_where_the_admin_key_goes(tmp_path, monkeypatch):
    """With several workers the host's owner runs the reconciliation: it says so at start as a lone
    proxy does, naming the host alone, never the key."""
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    home = tmp_path / "home"
    home.mkdir()
    with FakeProvider() as provider:
        proxy = start_proxy(home, provider.url, tmp_path / "proxy.log", extra_args=("--workers", "2"))
        proxy.stop()
    logged = (tmp_path / "proxy.log").read_text()
    said = f"the openai admin key goes to {provider.url} for the daily reconciliation"
    assert logged.count(said) == 1
    assert "anthropic admin key" not in logged and ADMIN_KEY not in logged


# --- a hostile or broken usage API ---------------------------------------------------------------

from addon.core.reconcile import http as rec_http  # noqa: E402


@pytest.mark.parametrize("fault", ["stuck_cursor", "endless"])
def test_paging_that_never_ends_stops_with_a_clear_error_after_a_bounded_number_of_requests(tmp_path, usage_api,
                                                                                            fault):
    setattr(usage_api, fault, True)
    result = reconcile(tmp_path / "home", "--provider", "openai", "--upstream", usage_api.url)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "nothing was compared" in result.output
    if fault == "stuck_cursor":
        assert "a page cursor it had already given" in result.output
        assert len(usage_api.requests) == 2  # the first page, and the one that repeated its cursor
    else:
        assert f"still said there was more after {rec_http.MAX_PAGES} pages" in result.output
        assert len(usage_api.requests) == rec_http.MAX_PAGES


@pytest.mark.parametrize(("page", "said"), [
    ({}, "answered a page we cannot read (TypeError)"),
    ({"object": "page", "data": None, "has_more": False}, "answered a page we cannot read (TypeError)"),
    ({"error": {"message": "internal", "type": "server_error"}}, "answered a page we cannot read (TypeError)"),
    ({"object": "page", "data": [], "has_more": True, "next_page": None}, "gave no cursor to ask for it"),
    ({"object": "page", "has_more": False, "next_page": None, "data": [
        {"object": "bucket", "start_time": 1764547200, "end_time": 1764633600,
         "results": [{"object": "organization.usage.completions.result", "model": 123, "input_tokens": 1,
                      "output_tokens": 1, "num_model_requests": 1}]}]},
     "answered a page we cannot read (TypeError)")])
def test_a_page_answered_200_but_not_as_documented_is_an_error_not_an_empty_day(tmp_path, usage_api, page, said):
    """Read as "no usage", such a page made every day of ours look over (and the daily check could
    alert on it); a model that is not text crashed the price lookup with a traceback."""
    usage_api.odd_pages = [page]
    result = reconcile(tmp_path / "home", "--provider", "openai", "--upstream", usage_api.url)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert said in result.output and "nothing was compared" in result.output


def test_a_dripping_answer_gives_up_within_the_overall_deadline(tmp_path, usage_api, monkeypatch):
    home = tmp_path / "home"
    args = ("--provider", "openai", "--since", "3d", "--upstream", usage_api.url, "--format", "json")
    started = time.monotonic()
    assert reconcile(home, *args).exit_code == 0
    baseline = time.monotonic() - started  # a whole reconciliation, answered at once
    monkeypatch.setattr(rec_http, "RUN_DEADLINE_S", 2.0, raising=False)
    usage_api.drip_s = 0.5  # a byte every half second: no single read ever waits long
    started = time.monotonic()
    result = reconcile(home, *args)
    elapsed = time.monotonic() - started
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "did not answer in full within the 2 s a reconciliation may take" in result.output
    assert elapsed < 2.0 + baseline + 1.5, elapsed


def test_a_page_too_big_to_hold_is_refused_before_it_is_parsed(tmp_path, usage_api, monkeypatch):
    monkeypatch.setattr(rec_http, "MAX_PAGE_BYTES", 100_000, raising=False)
    usage_api.padding = 200_000
    result = reconcile(tmp_path / "home", "--provider", "openai", "--since", "3d", "--upstream", usage_api.url,
                       "--format", "json")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "answered a page larger than 100,000 bytes; nothing was compared" in result.output
    assert len(usage_api.requests) == 1


@pytest.mark.parametrize("field, value, named", [
    ("input_tokens", 1e300, "input_tokens=1e+300"),
    ("output_tokens", 10 ** 30, "output_tokens=1000000000000000000000000000000"),
    ("input_cached_tokens", -5, "input_cached_tokens=-5"),
    ("output_tokens", "twelve", "output_tokens=a string"),
    ("num_model_requests", 2.5, "num_model_requests=2.5"),
    ("input_cached_tokens", 10 ** 6, "input_cached_tokens=1000000 is more than input_tokens"),
])
def test_implausible_figures_are_refused_with_the_field_named(tmp_path, usage_api, field, value, named):
    usage_api.ledger = [Billed(dt.datetime.now(dt.UTC) - dt.timedelta(days=1), "openai", GPT4O, 100,
                               output_tokens=10)]
    usage_api.figures = {field: value}
    result = reconcile(tmp_path / "home", "--provider", "openai", "--since", "3d", "--upstream", usage_api.url,
                       "--format", "json")
    assert result.exit_code == 1 and "Traceback" not in result.output and "Infinity" not in result.output
    assert named in result.output and "nothing was compared" in result.output


@pytest.mark.parametrize("amount", [1e300, -1e300, "lots"])
def test_an_implausible_billed_amount_is_refused(tmp_path, usage_api, amount):
    usage_api.ledger = [Billed(dt.datetime.now(dt.UTC) - dt.timedelta(days=1), "openai", GPT4O, 100,
                               output_tokens=10)]
    usage_api.costs = amount
    result = reconcile(tmp_path / "home", "--provider", "openai", "--since", "3d", "--upstream", usage_api.url,
                       "--by", "day", "--format", "json")
    assert result.exit_code == 1 and "Traceback" not in result.output and "Infinity" not in result.output
    assert "amount.value=" in result.output and "nothing was compared" in result.output


@pytest.mark.parametrize("status", [400, 401, 500])
def test_an_error_that_echoes_the_admin_key_never_shows_it(tmp_path, usage_api, status, caplog):
    usage_api.echo_key = status
    for provider in ("openai", "anthropic"):
        result = reconcile(tmp_path / "home", "--provider", provider, "--upstream", usage_api.url)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert f"answered {status}" in result.output or f"with {status}" in result.output
        assert ADMIN_KEY not in result.output and "sk-admin" not in result.output
    assert not any("sk-admin" in r.getMessage() for r in caplog.records)


def test_an_empty_month_is_recorded_without_an_error(tmp_path, usage_api, monkeypatch):
    from addon.core.reconcile import daily
    from addon.core.store import reading
    from addon.core.store import reconciliations as reconciliation_rows
    from pricing import PriceBook
    home = tmp_path / "home"
    home.mkdir()
    with writing(home / "aispendtrack.duckdb"):
        pass  # the schema, no calls
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    now = dt.datetime.now(dt.UTC)
    alerts = daily.run(home / "aispendtrack.duckdb", home, PriceBook(tmp_path / "none.toml"),
                       {"openai": usage_api.url}, now)
    assert alerts == [] and usage_api.requests  # asked, and nothing to say
    with reading(home / "aispendtrack.duckdb") as con:
        [latest] = reconciliation_rows.latest(con)
    assert latest["provider"] == "openai" and latest["difference_usd"] == 0 and latest["lines"] == []


def test_usage_around_the_proxy_of_a_model_without_a_price_is_named_and_alerted(tmp_path, usage_api, monkeypatch):
    """5M input tokens of a model we have no price for, around the proxy: the total counted its cost
    as $0 ("OpenAI reports $0.00 more (0.0%)"), so the daily check's threshold never saw it."""
    from addon.core.reconcile import daily
    from pricing import PriceBook

    home = tmp_path / "home"
    home.mkdir()
    now = dt.datetime.now(dt.UTC)
    at = (now - dt.timedelta(days=1)).replace(hour=10, minute=0, second=0, microsecond=0)
    if at.month != (now - dt.timedelta(days=1)).month or now.day == 1:
        pytest.skip("on the 1st the daily run covers last month")
    with writing(home / "aispendtrack.duckdb") as con:
        call_rows.insert(con, [call_row(1, ts=at, model=GPT4O, input_tokens=1000, output_tokens=100,
                                        cost_usd=Decimal("0.0035"))])
    usage_api.ledger = [Billed(at, "openai", GPT4O, 1000, output_tokens=100, billed_usd=0.0035),
                        Billed(at, "openai", "acme-llm-7b", 5_000_000, output_tokens=2_000_000)]
    shown = reconcile(home, "--provider", "openai", "--since", "3d", "--upstream", usage_api.url).output
    assert "$0.00 more" not in shown
    assert "The usage of acme-llm-7b has no price here, so it is in no dollar figure" in shown
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    [(_, alert)] = daily.run(home / "aispendtrack.duckdb", home, PriceBook(tmp_path / "none.toml"),
                             {"openai": usage_api.url}, now)
    assert alert.subject == "AiSpendTrack: OpenAI usage of a model without a price differs this month"
    assert "Usage of acme-llm-7b differs too, and has no price here" in alert.text


def test_our_usage_of_a_model_without_a_price_is_unpriced_on_our_side_not_0(tmp_path, usage_api):
    """Our calls of a model we have no price for read "$0.00/$0.00 over": as if free."""
    home = tmp_path / "home"
    home.mkdir()
    now = dt.datetime.now(dt.UTC)
    at = (now - dt.timedelta(days=1)).replace(hour=10, minute=0, second=0, microsecond=0)
    with writing(home / "aispendtrack.duckdb") as con:
        call_rows.insert(con, [call_row(1, ts=at, model=GPT4O, input_tokens=1000, output_tokens=100,
                                        cost_usd=Decimal("0.0035")),
                               call_row(2, ts=at, model="acme-ft-7b", input_tokens=4000, output_tokens=100,
                                        cost_usd=None, priced=False)])
    usage_api.ledger = [Billed(at, "openai", GPT4O, 1000, output_tokens=100, billed_usd=0.0035)]
    shown = lines(reconcile(home, "--provider", "openai", "--since", "3d", "--upstream", usage_api.url,
                            "--format", "json"))
    [line] = [line for line in shown if line["model"] == "acme-ft-7b"]
    assert (line["ours_cost_usd"], line["status"]) == (None, "over")
    table = reconcile(home, "--provider", "openai", "--since", "3d", "--upstream", usage_api.url).output
    assert "The usage of acme-ft-7b has no price here, so it is in no dollar figure" in table


def _wait(what: str, done, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"still waiting for {what} after {seconds:.0f} s"
        time.sleep(0.2)


def test_a_budget_alert_is_sent_while_the_daily_reconciliation_hangs(tmp_path, monkeypatch):
    """The provider's usage API sends a byte every 5 s (as in the report that hung the proxy's
    alerts): a budget crossed meanwhile is alerted at the next round all the same."""
    from .helpers import Receiver, run_cli
    home = tmp_path / "home"
    home.mkdir()
    receiver = Receiver()
    (home / "alerts.toml").write_text(f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n')
    run_cli(home, "budgets", "set", "--scope", "customer:late", "--all-keys", "--daily", "0.0001")
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    budget_alerts = lambda: [r for _, r in receiver.requests if json.loads(r)["kind"] == "budget"]  # noqa: E731
    with FakeProvider() as provider:
        provider.usage_api = UsageApi()
        provider.usage_api.drip_s = 5.0
        proxy = start_proxy(home, provider.url, tmp_path / "proxy.log", extra_args=("--alert-interval", "1"))
        try:
            _wait("the daily reconciliation to start", lambda: provider.usage_api.dripping > 0)
            assert budget_alerts() == []
            proxy.openai(headers={**LEGACY, "x-customer-id": "late"}).chat.completions.create(**CHAT)
            _wait("the budget alert", budget_alerts)
            hanging = provider.usage_api.dripping  # the reconciliation is still waiting for its answer
        finally:
            proxy.stop()
            provider.usage_api.close()
            receiver.close()
    assert hanging == 1 and len(provider.usage_api.requests) == 1
    [alert] = budget_alerts()
    assert "daily budget crossed for customer late" in json.loads(alert)["subject"]


# Issue 24: the gap named. The proxy's services use one provider key; a batch job uses another,
# straight to the provider. Each test fails on the code before --by hour/api-key/line-item
# ("Invalid value for '--by'").
APP, ETL = ("key_app", "proj_app"), ("key_etl", "proj_etl")


def test_calls_around_the_proxy_are_named_by_their_provider_key(tmp_path, usage_api):
    """Official SDK through the real proxy with one provider key, and straight to the provider
    with another: the second key's calls, and only they, are untracked."""
    with FakeProvider() as provider:
        proxy = start_proxy(tmp_path / "home", provider.url, tmp_path / "proxy.log")
        try:
            client = proxy.openai(api_key="sk-app-secret", headers={**LEGACY, "x-customer-id": "rec"})
            for _ in range(3):
                client.chat.completions.create(**CHAT)
            assert len(proxy.rows("rec", expect=3)) == 3
            direct = openai.OpenAI(base_url=f"{provider.url}/v1", api_key="sk-etl-secret", default_headers=LEGACY)
            for _ in range(2):
                direct.chat.completions.create(**CHAT)
            usage_api.ledger = billed_from(provider.received, {"sk-app-secret": APP, "sk-etl-secret": ETL})
            args = ("--provider", "openai", "--since", "1d", "--upstream", usage_api.url)
            [app, etl, total] = lines(reconcile(proxy.home, *args, "--by", "api-key", "--format", "json"))
            table = reconcile(proxy.home, *args, "--by", "api-key").output
        finally:
            proxy.stop()
    assert (app["api_key_id"], app["project"], app["status"], app["ours_requests"], app["theirs_requests"]) == \
        ("key_app", "proj_app", "match", 3, 3)
    assert (etl["api_key_id"], etl["project"], etl["status"], etl["ours_requests"], etl["theirs_requests"]) == \
        ("key_etl", "proj_etl", "untracked", 0, 2)
    assert Decimal(str(etl["difference_usd"])) == Decimal(str(total["difference_usd"])) == 2 * LEGACY_COST
    assert all("group_by=api_key_id" in path and "group_by=project_id" in path
               for path in usage_api.requests if "/usage/" in path)
    assert "key_etl" in table and "untracked" in table
    assert f"Around the proxy, by the provider's key: key_etl (proj_etl) {usd(2 * LEGACY_COST)}." in table
    assert "sk-etl-secret" not in table and "sk-app-secret" not in table


def _month_with_a_batch_job(tmp_path) -> tuple:
    """30 days, two proxied calls a day (key_app); three calls of key_etl around the proxy, two of
    them in an hour the proxy also served, and a fine-tuning training bill."""
    from pricing import PriceBook
    from pricing.usage import TokenUsage
    book = PriceBook(tmp_path / "none.toml")
    start = dt.datetime(2026, 10, 26, tzinfo=dt.UTC)
    rows, ledger = [], []
    for day in range(30):
        for n, hour in enumerate((9, 17)):
            at = start + dt.timedelta(days=day, hours=hour, minutes=15 + n)
            row, billed = _call_both_sides_agree_on(book, day, n, at, api_key_id=APP[0], project_id=APP[1])
            rows.append(row)
            ledger.append(billed)
    around = [(dt.datetime(2026, 11, 3, 9, 30, tzinfo=dt.UTC), 500, 100),
              (dt.datetime(2026, 11, 10, 3, 0, tzinfo=dt.UTC), 1000, 500),
              (dt.datetime(2026, 11, 20, 17, 5, tzinfo=dt.UTC), 700, 300)]
    gap = Decimal(0)
    for at, given, out in around:
        cost = book.price(TokenUsage(input_tokens=given, output_tokens=out), "openai", GPT4O, at).cost_usd
        gap += cost
        ledger.append(Billed(at, "openai", GPT4O, given, output_tokens=out, billed_usd=float(cost), api_key_id=ETL[0],
                             project_id=ETL[1]))
    home = tmp_path / "home"
    home.mkdir()
    with writing(home / "aispendtrack.duckdb") as con:
        call_rows.insert(con, rows)
    training = Billed(dt.datetime(2026, 11, 12, tzinfo=dt.UTC), "openai", "gpt-4o-mini-2024-07-18", 0,
                      billed_usd=12.5, line_item="fine-tuning training, gpt-4o-mini-2024-07-18")
    return home, ledger, [training], around, gap


def test_a_month_reconciles_to_exactly_the_calls_around_the_proxy_per_key_and_hour(tmp_path, usage_api):
    home, usage_api.ledger, usage_api.extra_costs, around, gap = _month_with_a_batch_job(tmp_path)
    args = ("--provider", "openai", "--since", "2026-10-26", "--until", "2026-11-25", "--upstream", usage_api.url)

    [app, etl, total] = lines(reconcile(home, *args, "--by", "api-key", "--format", "json"))
    assert (app["api_key_id"], app["status"], app["ours_requests"], app["theirs_requests"]) == ("key_app", "match",
                                                                                                 60, 60)
    assert (etl["api_key_id"], etl["project"], etl["status"]) == ("key_etl", "proj_etl", "untracked")
    assert (etl["ours_requests"], etl["theirs_requests"]) == (0, 3)
    assert (etl["theirs_input_tokens"], etl["theirs_output_tokens"]) == (2200, 900)
    assert Decimal(str(etl["difference_usd"])) == Decimal(str(total["difference_usd"])) == gap

    as_csv = list(csv.DictReader(io.StringIO(reconcile(home, *args, "--by", "api-key", "--format", "csv").output)))
    assert [(r["api_key_id"], r["status"]) for r in as_csv[:-1]] == [("key_app", "match"), ("key_etl", "untracked")]
    assert Decimal(as_csv[1]["difference_usd"]) == gap and int(as_csv[1]["theirs_requests"]) == 3

    hourly = lines(reconcile(home, *args, "--by", "hour", "--by", "api-key", "--format", "json"))[:-1]
    untracked = [(dt.datetime.fromisoformat(line["bucket"]), line["api_key_id"], line["theirs_requests"])
                 for line in hourly if line["status"] != "match"]
    assert untracked == [(at.replace(minute=0), "key_etl", 1) for at, _, _ in around]
    assert len(hourly) == 60 + 3  # every proxied hour matches, named key_app
    assert all(line["api_key_id"] == "key_app" for line in hourly if line["status"] == "match")
    assert any("bucket_width=1h" in path and "limit=168" in path for path in usage_api.requests)

    table = reconcile(home, *args, "--by", "hour", "--by", "api-key").output
    assert "2026-11-10 03:00  key_etl" in table
    assert f"Around the proxy, by the provider's key: key_etl (proj_etl) {usd(gap)}." in table


def test_the_cost_line_items_show_the_kind_of_spend_missing_and_what_no_proxy_sees(tmp_path, usage_api):
    home, usage_api.ledger, usage_api.extra_costs, _, gap = _month_with_a_batch_job(tmp_path)
    args = ("--provider", "openai", "--since", "2026-10-26", "--until", "2026-11-25", "--upstream", usage_api.url,
            "--by", "line-item")
    [calls, training, total] = lines(reconcile(home, *args, "--format", "json"))
    assert (training["kind"], training["line_items"], training["status"]) == (
        "fine-tuning training", "fine-tuning training, gpt-4o-mini-2024-07-18", "not visible to a proxy")
    assert (Decimal(str(training["billed_usd"])), Decimal(str(training["ours_cost_usd"]))) == (Decimal("12.5"), 0)
    assert (calls["kind"], calls["line_items"], calls["status"], calls["ours_calls"]) == (
        "model calls", f"{GPT4O}, input and output", "untracked", 60)
    assert float(calls["difference_usd"]) == pytest.approx(float(gap), abs=1e-9)
    assert float(total["difference_usd"]) == pytest.approx(float(gap), abs=1e-9)  # training is no gap
    assert all("group_by=line_item" in path for path in usage_api.requests)

    as_csv = list(csv.DictReader(io.StringIO(reconcile(home, *args, "--format", "csv").output)))
    assert [(r["kind"], r["status"]) for r in as_csv] == [("model calls", "untracked"),
                                                          ("fine-tuning training", "not visible to a proxy"),
                                                          ("TOTAL", "differs")]
    table = reconcile(home, *args).output
    assert "fine-tuning training" in table and "not visible to a proxy" in table
    assert f"OpenAI billed more than the proxy recorded for: model calls {usd(gap)}." in table
    assert "Not visible to a proxy, so no gap: fine-tuning training $12.50." in table


def test_the_fake_refuses_what_the_real_usage_api_refuses(usage_api):
    """Strict as the real API: an unknown parameter, group_by value or width is a 400."""
    import urllib.error
    import urllib.request
    base = f"{usage_api.url}/v1/organization/usage/completions?start_time=0&end_time=86400"
    for query in ("&group_by=workspace_id", "&bucket_width=2h", "&limit=32", "&colour=blue"):
        request = urllib.request.Request(base + query, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400, query
    costs = urllib.request.Request(f"{usage_api.url}/v1/organization/costs?start_time=0&group_by=model",
                                   headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(costs, timeout=10)
    assert refused.value.code == 400


def test_anthropic_names_the_key_around_the_proxy_per_hour_in_both_of_its_apis(tmp_path, usage_api):
    import anthropic as anthropic_sdk
    message = {"model": "claude-sonnet-4-20250514", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    with FakeProvider() as provider:
        proxy = start_proxy(tmp_path / "home", provider.url, tmp_path / "proxy.log")
        try:
            proxy.anthropic(api_key="sk-ant-app-secret", headers={"x-customer-id": "rec"}).messages.create(**message)
            assert len(proxy.rows("rec", expect=1)) == 1
        finally:
            proxy.stop()
        direct = anthropic_sdk.Anthropic(base_url=provider.url, api_key="sk-ant-etl-secret")
        for _ in range(2):  # two, so that which key's usage is ours is not a guess (keys.py)
            direct.messages.create(**message)
        usage_api.ledger = billed_from(provider.received, {"sk-ant-app-secret": ("apikey_app", "wrkspc_app"),
                                                           "sk-ant-etl-secret": ("apikey_etl", "wrkspc_etl")})
    args = ("--provider", "anthropic", "--since", "1d", "--upstream", usage_api.url, "--by", "hour", "--by", "api-key",
            "--format", "json")
    for refused in (False, True):  # the analytics API, then the legacy reports
        usage_api.analytics_refused = refused
        usage_api.requests.clear()
        result = reconcile(proxy.home, *args)
        assert result.exit_code == 0 and ("legacy usage and cost reports" in result.stderr) is refused
        [app, etl, total] = json.loads(result.stdout)
        assert (app["api_key_id"], app["project"], app["status"]) == ("apikey_app", "wrkspc_app", "match")
        assert (etl["api_key_id"], etl["project"], etl["status"]) == ("apikey_etl", "wrkspc_etl", "untracked")
        assert etl["ours_cache_read_tokens"] == 0 and etl["theirs_cache_read_tokens"] == 2 * 9_511
        assert app["ours_cache_read_tokens"] == app["theirs_cache_read_tokens"] == 9_511
        assert Decimal(str(etl["difference_usd"])) == Decimal(str(total["difference_usd"])) > 0
        usage = [path for path in usage_api.requests if "usage" in path]
        assert usage and all("api_key_id" in path and "workspace_id" in path and "1h" in path for path in usage)


def test_anthropic_cost_line_items_show_web_search_missing_in_both_of_its_apis(tmp_path, usage_api):
    sonnet, at = "claude-sonnet-4-20250514", dt.datetime(2026, 11, 12, 10, tzinfo=dt.UTC)
    home = tmp_path / "home"
    home.mkdir()
    with writing(home / "aispendtrack.duckdb") as con:
        call_rows.insert(con, [call_row(1, ts=at, provider="anthropic", endpoint="/v1/messages", model=sonnet,
                                        input_tokens=1000, output_tokens=100, cost_usd=Decimal("0.0045"))])
    usage_api.ledger = [Billed(at, "anthropic", sonnet, 1000, output_tokens=100, billed_usd=0.0045,
                               line_item="Claude Sonnet 4 Usage - Input and Output Tokens")]
    usage_api.extra_costs = [Billed(at, "anthropic", sonnet, 0, billed_usd=0.02, line_item="Web Search Usage",
                                    cost_type="web_search")]
    args = ("--provider", "anthropic", "--since", "2026-11-12", "--until", "2026-11-13", "--upstream", usage_api.url,
            "--by", "line-item", "--format", "json")
    for refused, names in ((False, (f"{sonnet}, tokens", f"{sonnet}, web_search")),
                           (True, ("Claude Sonnet 4 Usage - Input and Output Tokens", "Web Search Usage"))):
        usage_api.analytics_refused = refused
        usage_api.requests.clear()
        result = reconcile(home, *args)
        assert result.exit_code == 0, result.output
        [calls, tools, total] = json.loads(result.stdout)
        assert (calls["kind"], calls["line_items"], calls["status"]) == ("model calls", names[0], "match")
        assert (tools["kind"], tools["line_items"], tools["status"]) == ("tools", names[1], "untracked")
        assert Decimal(str(tools["difference_usd"])) == Decimal(str(total["difference_usd"])) == Decimal("0.02")
        assert all("cost_type" in path or "description" in path for path in usage_api.requests if "cost" in path)


def test_our_tool_fees_are_put_beside_the_providers_tool_line_items_and_match(tmp_path, usage_api):
    """A call that searched the web twice: its $0.02 of searches is ours on the tools line (beside
    Anthropic's "web_search" cost type), its tokens on the model calls line; both match."""
    sonnet, at = "claude-sonnet-4-20250514", dt.datetime(2026, 11, 12, 10, tzinfo=dt.UTC)
    home = tmp_path / "home"
    home.mkdir()
    with writing(home / "aispendtrack.duckdb") as con:
        call_rows.insert(con, [call_row(1, ts=at, provider="anthropic", endpoint="/v1/messages", model=sonnet,
                                        input_tokens=1000, output_tokens=100, web_search_requests=2,
                                        cost_usd=Decimal("0.0245"))])
    usage_api.ledger = [Billed(at, "anthropic", sonnet, 1000, output_tokens=100, billed_usd=0.0045,
                               web_search_requests=2)]
    usage_api.extra_costs = [Billed(at, "anthropic", sonnet, 0, billed_usd=0.02, cost_type="web_search")]
    result = reconcile(home, "--provider", "anthropic", "--since", "2026-11-12", "--until", "2026-11-13",
                       "--upstream", usage_api.url, "--by", "line-item", "--format", "json")
    assert result.exit_code == 0, result.output
    [calls, tools, total] = json.loads(result.stdout)
    assert (calls["kind"], calls["status"], Decimal(str(calls["ours_cost_usd"]))) == (
        "model calls", "match", Decimal("0.0045"))
    assert (tools["kind"], tools["line_items"], tools["status"]) == ("tools", f"{sonnet}, web_search", "match")
    assert Decimal(str(tools["ours_cost_usd"])) == Decimal(str(tools["billed_usd"])) == Decimal("0.02")
    assert total["status"] == "match" and Decimal(str(total["difference_usd"])) == 0


def test_our_web_search_preview_fees_go_on_the_tools_line_at_their_own_rate(tmp_path):
    """Two searches by the preview tool on gpt-4o cost $0.05 (pricing/openai_search.py): the tools
    line took them at $0.02, the general rate, and the $0.03 left on the model calls line."""
    from addon.core.reconcile.line_items import price_tools
    from addon.core.store import usage_totals
    from pricing import PriceBook
    at = dt.datetime(2026, 11, 12, 10, tzinfo=dt.UTC)
    tokens = (1000 * Decimal("2.50") + 100 * Decimal("10.00")) / M
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, [call_row(1, ts=at, model=GPT4O, endpoint="/v1/responses", input_tokens=1000,
                                        output_tokens=100, web_search_requests=2, web_search_preview_requests=2,
                                        cost_usd=tokens + Decimal("0.05"))])
        ours = usage_totals.per_endpoint(con, "openai", at - dt.timedelta(hours=1), at + dt.timedelta(hours=1))
    price_tools(ours, PriceBook(tmp_path / "prices.toml"), "openai", at)
    assert [Decimal(str(row["tool_cost_usd"])) for row in ours] == [Decimal("0.05")]


def test_when_our_side_cannot_be_split_among_keys_the_total_still_names_the_gap(tmp_path, usage_api):
    """Two provider keys made the same call in the same hour, one through the proxy: which one is a
    guess, so ours stays on a line with no key (docs/reconciliation.md), and the total is exact."""
    at = dt.datetime(2026, 11, 12, 10, tzinfo=dt.UTC)
    home = tmp_path / "home"
    home.mkdir()
    cost = (1000 * Decimal("2.50") + 100 * Decimal("10.00")) / M
    with writing(home / "aispendtrack.duckdb") as con:
        call_rows.insert(con, [call_row(1, ts=at, model=GPT4O, input_tokens=1000, output_tokens=100, cost_usd=cost)])
    usage_api.ledger = [Billed(at, "openai", GPT4O, 1000, output_tokens=100, api_key_id=key, project_id=project)
                        for key, project in (APP, ETL)]
    args = ("--provider", "openai", "--since", "2026-11-12", "--until", "2026-11-13", "--upstream", usage_api.url)
    [unsplit, app, etl, total] = lines(reconcile(home, *args, "--by", "api-key", "--format", "json"))
    assert (unsplit["api_key_id"], unsplit["status"], unsplit["ours_requests"]) == (None, "over", 1)
    assert [(x["api_key_id"], x["status"], x["theirs_requests"]) for x in (app, etl)] == [
        ("key_app", "untracked", 1), ("key_etl", "untracked", 1)]
    assert Decimal(str(total["difference_usd"])) == cost
    assert "(no provider key)" in reconcile(home, *args, "--by", "api-key").output


def test_names_from_the_provider_reach_the_terminal_without_their_control_characters(tmp_path, usage_api):
    """A key id or line item with a terminal escape in it (a broken or hostile report) is shown
    escaped, never run by the terminal."""
    at = dt.datetime(2026, 11, 12, 10, tzinfo=dt.UTC)
    home = tmp_path / "home"
    home.mkdir()
    usage_api.ledger = [Billed(at, "openai", GPT4O, 1000, api_key_id="key_\x1b[2Jx", billed_usd=0.0035,
                               line_item="gpt-4o\x1b]0;owned\x07, input" + "x" * 500)]
    args = ("--provider", "openai", "--since", "2026-11-12", "--until", "2026-11-13", "--upstream", usage_api.url)
    for view in ("api-key", "line-item"):
        shown = reconcile(home, *args, "--by", view).output
        assert "\x1b" not in shown and "\x07" not in shown, view
    assert "key_\\x1b[2Jx" in reconcile(home, *args, "--by", "api-key").output
    [items, _] = lines(reconcile(home, *args, "--by", "line-item", "--format", "json"))
    assert items["line_items"].startswith("gpt-4o\\x1b]0;owned\\x07, input") and len(items["line_items"]) == 200


# --- a month's mix of traffic ----------------------------------------------------------------------

SPOKEN = "Today is a wonderful day to build something people love! " * 3  # 171 characters
OPENAI_KEYS = {"sk-app-secret": APP, "sk-etl-secret": ETL}
ANTHROPIC_KEYS = {"sk-ant-app-secret": ("apikey_app", "wrkspc_app"), "sk-ant-etl-secret": ("apikey_etl", "wrkspc_etl")}
SONNET = "claude-sonnet-4-20250514"


def _month_of_openai_through_the_proxy(proxy, provider, media) -> int:
    """Chat, a batch, images, a transcription and speech, as an application makes them; its calls with usage."""
    client = proxy.openai(api_key="sk-app-secret", headers={**LEGACY, "x-customer-id": "month"})
    for _ in range(3):
        client.chat.completions.create(**CHAT)
    batch = completed_openai_batch(client, client, "gpt-4o-mini", 4)
    client.files.content(batch.output_file_id)
    client.images.generate(model="dall-e-2", prompt="a red cat on a mat", n=2, size="512x512")
    client.audio.transcriptions.create(model="whisper-1", file=("hello.wav", media.wav(8.0), "audio/wav"),
                                       response_format="verbose_json")
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=SPOKEN) as answer:
        answer.read()
    return 3 + 1 + 1 + 1 + 1


def _month_of_anthropic_through_the_proxy(proxy, provider) -> int:
    client = proxy.anthropic(api_key="sk-ant-app-secret", headers={"x-customer-id": "month"})
    message = {"model": SONNET, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        client.messages.create(**message)
    batch = client.messages.batches.create(requests=[{"custom_id": f"short-{n}", "params": message} for n in range(4)])
    while client.messages.batches.retrieve(batch.id).processing_status != "ended":
        time.sleep(0.05)
    assert len(list(client.messages.batches.results(batch.id))) == 4
    return 2 + 1


def _around_the_proxy(provider, media) -> Decimal:
    """An ETL job's calls with keys of its own, straight to the providers; what they cost at list prices."""
    import anthropic as anthropic_sdk
    direct = openai.OpenAI(base_url=f"{provider.url}/v1", api_key="sk-etl-secret", default_headers=LEGACY)
    for _ in range(2):
        direct.chat.completions.create(**CHAT)
    direct.images.generate(model="dall-e-2", prompt="a blue dog", n=1, size="512x512")
    with direct.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input="Hello there.") as a:
        a.read()
    anthropic_sdk.Anthropic(base_url=provider.url, api_key="sk-ant-etl-secret").messages.create(
        model=SONNET, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    # tts-1: $15 per million characters; dall-e-2: $0.018 an image of 512x512
    return 2 * LEGACY_COST + len("Hello there.") * Decimal(15) / M + Decimal("0.018")


def _bill_at_list_prices(ledger: list[Billed]) -> None:
    """What each entry of the provider's books cost (its Costs API's amounts), at the list prices."""
    from pricing import ImageOptions, PriceBook
    from pricing.usage import TokenUsage
    book = PriceBook(None)
    for e in ledger:
        usage = TokenUsage(input_tokens=e.input_tokens, cache_read_tokens=e.cached_tokens,
                           cache_write_tokens=e.cache_5m_tokens + e.cache_1h_tokens,
                           cache_write_1h_tokens=e.cache_1h_tokens, output_tokens=e.output_tokens, images=e.images,
                           audio_seconds=e.seconds, characters=e.characters)
        tier = "batch" if e.batch or e.service_tier == "batch" else None
        price = book.price(usage, e.provider, e.model, e.at, tier, ImageOptions(e.size) if e.size else None)
        assert price.cost_usd is not None, e
        e.billed_usd = float(price.cost_usd)


def test_a_month_of_every_kind_of_traffic_reconciles_to_exactly_the_calls_around_the_proxy(tmp_path, usage_api):
    """Chat, batches of both providers, images, a transcription and speech through the proxy, with
    the official SDKs; an ETL job's calls around it with provider keys of its own. The provider's
    books hold all of it: reconcile names exactly the ETL keys' calls, in table, JSON and CSV."""
    from . import media_upstream
    from .batch_api import BatchApi
    with FakeProvider() as provider, media_upstream.MediaProvider() as media:
        provider.batches, provider.media = BatchApi(), media
        proxy = start_proxy(tmp_path / "home", provider.url, tmp_path / "proxy.log")
        try:
            made = _month_of_openai_through_the_proxy(proxy, provider, media_upstream)
            made += _month_of_anthropic_through_the_proxy(proxy, provider)
            deadline = time.monotonic() + 20
            while len(rows := [r for r in proxy.calls() if r["usage_source"] != "none"]) < made:
                assert time.monotonic() < deadline, rows
                time.sleep(0.1)
        finally:
            proxy.stop()
        assert len(rows) == made and all(r["customer_id"] == "month" for r in rows)
        gap = _around_the_proxy(provider, media)
        usage_api.ledger = billed_from(provider.received, {**OPENAI_KEYS, **ANTHROPIC_KEYS}, provider.batches)
    assert {b.usage for b in usage_api.ledger} == {"completions", "images", "audio_transcriptions", "audio_speeches"}
    _bill_at_list_prices(usage_api.ledger)

    openai_args = ("--provider", "openai", "--since", "30d", "--upstream", usage_api.url, "--by", "api-key")
    [app, etl, total] = lines(reconcile(proxy.home, *openai_args, "--format", "json"))
    assert (app["api_key_id"], app["project"], app["status"]) == ("key_app", "proj_app", "match")
    assert Decimal(str(app["difference_usd"])) == 0
    assert (etl["api_key_id"], etl["project"], etl["status"]) == ("key_etl", "proj_etl", "untracked")
    assert (etl["ours_requests"], etl["theirs_requests"]) == (0, 4)
    assert (etl["theirs_images"], etl["theirs_characters"]) == (1, len("Hello there."))
    assert Decimal(str(etl["difference_usd"])) == Decimal(str(total["difference_usd"])) == gap
    assert (total["ours_images"], total["ours_audio_seconds"], total["ours_characters"]) == (2, 8, len(SPOKEN))
    # The provider's cost report bills everything in its books: what we price its usage at, to the float.
    assert total["billed_usd"] == pytest.approx(float(Decimal(str(total["theirs_cost_usd"]))), abs=1e-9)

    as_csv = list(csv.DictReader(io.StringIO(reconcile(proxy.home, *openai_args, "--format", "csv").output)))
    assert [(r["api_key_id"], r["status"]) for r in as_csv[:-1]] == [("key_app", "match"), ("key_etl", "untracked")]
    assert Decimal(as_csv[1]["difference_usd"]) == Decimal(as_csv[-1]["difference_usd"]) == gap
    assert (as_csv[1]["theirs_images"], as_csv[1]["theirs_characters"]) == ("1", "12")
    table = reconcile(proxy.home, *openai_args).output
    assert f"Around the proxy, by the provider's key: key_etl (proj_etl) {usd(gap)}." in table
    assert "key_app" in table and "match" in table and "IMG" in table and "CHARS" in table

    # The ETL job's one message: 3 uncached, 9,511 cache-read, 1,956 cache-write (5 min) and 44 output tokens
    # at Sonnet 4's $3, $0.30, $3.75 and $15 per million.
    etl_cost = (3 * Decimal(3) + 9511 * Decimal("0.30") + 1956 * Decimal("3.75") + 44 * Decimal(15)) / M
    anthropic_args = ("--provider", "anthropic", "--since", "30d", "--upstream", usage_api.url, "--by", "api-key")
    for refused in (True, False):  # its legacy reports, then the analytics API
        usage_api.analytics_refused = refused
        result = reconcile(proxy.home, *anthropic_args, "--format", "json")
        assert result.exit_code == 0 and ("legacy usage and cost reports" in result.stderr) is refused
        [app, etl, total] = json.loads(result.stdout)
        assert (app["api_key_id"], app["project"], app["status"]) == ("apikey_app", "wrkspc_app", "match")
        assert Decimal(str(app["difference_usd"])) == 0
        assert (etl["api_key_id"], etl["project"], etl["status"]) == ("apikey_etl", "wrkspc_etl", "untracked")
        assert Decimal(str(etl["difference_usd"])) == Decimal(str(total["difference_usd"])) == etl_cost
        assert app["theirs_input_tokens"] == app["ours_input_tokens"] == 2 * 3 + sum(500 + n for n in range(3))
        assert total["billed_usd"] == pytest.approx(float(Decimal(str(total["theirs_cost_usd"]))), abs=1e-6)
    as_csv = list(csv.DictReader(io.StringIO(reconcile(proxy.home, *anthropic_args, "--format", "csv").output)))
    assert [(r["api_key_id"], r["status"]) for r in as_csv[:-1]] == [("apikey_app", "match"),
                                                                      ("apikey_etl", "untracked")]
    table = reconcile(proxy.home, *anthropic_args).output
    assert "Around the proxy, by the provider's key: apikey_etl (wrkspc_etl)" in table
