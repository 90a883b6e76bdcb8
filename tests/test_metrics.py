"""``/metrics``: the proxy's counters in the Prometheus text format, scraped and parsed with the
Prometheus client library's own parser, checked against the rows the same calls produced."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from addon.core.metrics import Metrics

from .helpers import free_port, run_cli, start_proxy
from .upstream import FakeProvider

LEGACY = {"x-test-scenario": "legacy"}  # 14 input + 37 output tokens of gpt-4o-2024-08-06
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "weather?"}]}
DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"


def scrape(url: str, **kwargs) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} as a Prometheus server would read the page."""
    response = httpx.get(url, timeout=5, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, v2) in ls for k, v2 in labels.items()))


@pytest.fixture
def proxied(tmp_path):
    home = tmp_path / "home"
    created = json.loads(run_cli(home, "keys", "create", "--name", "metrics", "--json"))
    run_cli(home, "keys", "set-limit", str(created["id"]), "--per-hour", "5")
    token = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    metrics_port, web_port = free_port(), free_port()
    with FakeProvider() as provider:
        proxy = start_proxy(home, provider.url, tmp_path / "proxy.log", key=created["key"],
                            extra_args=("--metrics-port", str(metrics_port), "--web-port", str(web_port)))
        try:
            yield proxy, f"http://127.0.0.1:{metrics_port}/metrics", f"http://127.0.0.1:{web_port}/metrics", token
        finally:
            proxy.stop()


def test_counters_match_the_rows_after_a_few_calls(proxied):
    proxy, metrics_url, web_url, token = proxied
    before = scrape(metrics_url)
    assert total(before, "aispendtrack_refusals_total", reason="limit") == 0  # present before any refusal
    client = proxy.openai(headers={"x-customer-id": "m"})
    for _ in range(3):
        client.chat.completions.create(**CHAT, extra_headers=LEGACY)
    for _ in client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True}):
        pass
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**CHAT, extra_headers={"x-test-scenario": "error400"})
    refused = 0
    for _ in range(2):  # over the key's 5 calls an hour
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**CHAT)
        refused += 1
    rows = proxy.rows("m", expect=5)
    assert len(rows) == 5
    samples = scrape(metrics_url)

    assert total(samples, "aispendtrack_calls_total") == len(rows) == 5
    assert total(samples, "aispendtrack_calls_total", status="200") == 4
    assert total(samples, "aispendtrack_calls_total", status="400") == 1
    assert total(samples, "aispendtrack_errors_total") == 1
    assert total(samples, "aispendtrack_calls_total", model="gpt-4o-2024-08-06", key=str(proxy.key_id)) == 4
    assert total(samples, "aispendtrack_tokens_total", kind="input") == sum(r["input_tokens"] for r in rows)
    assert total(samples, "aispendtrack_tokens_total", kind="output") == sum(r["output_tokens"] for r in rows)
    assert total(samples, "aispendtrack_tokens_total", kind="output") == 3 * 37 + rows_stream_output(rows)
    cost = sum(Decimal(str(r["cost_usd"] or 0)) for r in rows)
    assert total(samples, "aispendtrack_cost_usd_total") == pytest.approx(float(cost), rel=1e-9)
    assert total(samples, "aispendtrack_latency_seconds_count") == sum(r["latency_ms"] is not None for r in rows)
    assert total(samples, "aispendtrack_time_to_first_token_seconds_count") == 1  # the one stream
    assert total(samples, "aispendtrack_refusals_total", reason="limit") == refused == 2
    assert total(samples, "aispendtrack_rows_written_total") >= 5
    assert total(samples, "aispendtrack_rows_dropped_total") == 0
    assert ("aispendtrack_writer_queue", ()) in samples and ("aispendtrack_spill_files", ()) in samples
    assert not any(("customer", "m") in labels for _, labels in samples)  # tags only with --metrics-tags

    # The web port serves the same page, to admins only.
    assert httpx.get(web_url, timeout=5).status_code == 401
    assert httpx.get(web_url, headers={"Authorization": f"Bearer {proxy.key}"}, timeout=5).status_code == 401
    on_web = scrape(web_url, headers={"Authorization": f"Bearer {token}"})
    assert total(on_web, "aispendtrack_calls_total") == 5

    # Every metric the Grafana dashboard queries is one the proxy exports.
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"aispendtrack_[a-z_]+", expr)}
    exported = {name for name, _ in samples}
    assert len(exprs) >= 8 and used <= exported, used - exported


def rows_stream_output(rows: list[dict]) -> int:
    return sum(r["output_tokens"] for r in rows if r["stream"])


def test_label_values_are_capped_so_cardinality_cannot_explode():
    metrics = Metrics(tags=True, cap=3)
    for n in range(50):  # an upstream, or a caller, with a new model and customer every call
        metrics.observe({"provider": "openai", "model": f"model-{n}", "key_id": 1, "customer_id": f"c{n}",
                         "feature": "chat", "status": 200, "input_tokens": 10, "cost_usd": Decimal("0.001"),
                         "latency_ms": 12.5})
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    calls = families["aispendtrack_calls"].samples
    assert {s.labels["model"] for s in calls} == {"model-0", "model-1", "model-2", "other"}
    assert {s.labels["customer"] for s in calls} == {"c0", "c1", "c2", "other"}
    assert sum(s.value for s in calls) == 50 and len(calls) <= 4 * 4
    metrics.observe({"provider": "openai", "model": object(), "status": "not a number"})  # never raises


def test_the_metrics_port_serves_nothing_else_and_stays_off_by_default(proxied, tmp_path):
    proxy, metrics_url, _, _ = proxied
    assert httpx.get(metrics_url.replace("/metrics", "/api/v1/report"), timeout=5).status_code == 404
    assert "--metrics-port" in run_cli(tmp_path / "other", "proxy", "--help")
