"""What the proxy adds to a call: each row's ``proxy_us`` (the time in our own hooks and stream tap),
its histogram on ``/metrics`` and its p50/p99 in the API's total (docs/architecture.md, "What the
proxy adds"). Calls go through the real proxy with the official OpenAI SDK to a fake provider on
loopback."""

from __future__ import annotations

import json

import httpx
import pytest

from addon.core import home as home_dir
from addon.core.store import calls as call_rows
from addon.core.store import writing

from .helpers import free_port, key_with_blocking_budget, report_row, run_cli, scrape, start_proxy, until_key_works
from .upstream import FakeProvider

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "weather?"}]}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    home = tmp_path_factory.mktemp("added-home")
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    web_port = free_port()
    with FakeProvider() as provider:
        proxy = start_proxy(home, provider.url, tmp_path_factory.mktemp("added-logs") / "proxy.log", metrics=True,
                            extra_args=("--web-port", str(web_port)))
        try:
            yield {"proxy": proxy, "api": f"http://127.0.0.1:{web_port}/api/v1", "admin": admin, "home": home}
        finally:
            proxy.stop()


def _total(site, **params) -> dict:
    response = httpx.get(f"{site['api']}/report/total", params={"since": "2000-01-01", **params},
                         headers={"Authorization": f"Bearer {site['admin']}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_each_call_records_the_time_it_spent_in_our_hooks_and_metrics_count_every_one(site):
    proxy = site["proxy"]
    before = scrape(proxy.metrics_url)
    client = proxy.openai(headers={"x-customer-id": "hooks"})
    for _ in range(2):
        client.chat.completions.create(**CHAT)
    # ~200 chunks, 50 ms apart: the tap runs for every one of them.
    chunks = sum(1 for _ in client.chat.completions.create(**CHAT, stream=True, extra_headers={
        "x-test-scenario": "slow"}))
    assert chunks > 100
    for _ in client.chat.completions.create(**CHAT, stream=True):
        pass
    rows = proxy.rows("hooks", expect=4)
    assert sorted(r["stream"] for r in rows) == [False, False, True, True]
    for row in rows:
        assert isinstance(row["proxy_us"], int) and row["proxy_us"] > 0, row
        assert row["proxy_us"] <= row["latency_ms"] * 1000, row  # a part of the call's time, never more

    after = scrape(proxy.metrics_url)
    count = after[("aispendtrack_added_seconds_count", ())] - before.get(("aispendtrack_added_seconds_count", ()), 0)
    assert count == len(rows) == 4
    added = after[("aispendtrack_added_seconds_sum", ())] - before.get(("aispendtrack_added_seconds_sum", ()), 0)
    assert added == pytest.approx(sum(r["proxy_us"] for r in rows) / 1e6, rel=1e-6)

    # The CLI's JSON and the export carry it as stored.
    listed = json.loads(run_cli(proxy.home, "calls", "--customer", "hooks", "--format", "json"))
    assert sorted(r["proxy_us"] for r in listed) == sorted(r["proxy_us"] for r in rows)
    exported = run_cli(proxy.home, "export", "--customer", "hooks", "--format", "csv")
    assert exported.splitlines()[0].split(",").count("proxy_us") == 1


def test_the_total_gives_p50_and_p99_of_measured_calls_and_leaves_older_rows_out(site):
    """Rows stored before the column existed read NULL: not a 0 µs call."""
    older = [report_row("2026-11-20T10:00:00", "gpt-4o", "0.01", 100, customer="mixed") for _ in range(5)]
    measured = [{**report_row("2026-11-20T11:00:00", "gpt-4o", "0.01", 100, customer="mixed"), "proxy_us": us}
                for us in (100, 200, 300)]
    with writing(home_dir.db_path(site["home"])) as con:
        call_rows.insert(con, older + measured)
    total = _total(site, customer="mixed")
    assert total["calls"] == 8
    assert (total["p50_proxy_us"], total["p99_proxy_us"]) == (200, 298)  # 100..300, interpolated as latencies are
    assert (_total(site, customer="mixed", until="2026-11-20T10:30:00")["p50_proxy_us"]) is None  # older rows only


def test_a_call_under_a_blocking_budget_counts_the_row_built_before_its_answer(site):
    """Under a blocking budget the row is built on the request path (its cost must count before the
    next call): that time is the proxy's too."""
    proxy = site["proxy"]
    created = key_with_blocking_budget(site["home"], "budgeted", monthly="100")
    client = proxy.openai(headers={"x-aispendtrack-key": created["key"], "x-customer-id": "budgeted"})
    until_key_works(lambda: client.chat.completions.create(**CHAT), 15, "the new key was never admitted")
    [row] = proxy.rows("budgeted")
    assert isinstance(row["proxy_us"], int) and 0 < row["proxy_us"] <= row["latency_ms"] * 1000, row
