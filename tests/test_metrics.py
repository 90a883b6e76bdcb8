"""``/metrics``: the proxy's counters in the Prometheus text format, scraped and parsed with the
Prometheus client library's own parser, checked against the rows the same calls produced."""

from __future__ import annotations

import json
import re
import socket
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from addon.core.metrics import Metrics

from .helpers import free_port, run_cli, scrape, start_proxy
from .upstream import FakeProvider

LEGACY = {"x-test-scenario": "legacy"}  # 14 input + 37 output tokens of gpt-4o-2024-08-06
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "weather?"}]}
DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"


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


def _listening_addresses(port: int) -> set[str]:
    """The addresses sockets listen on at ``port``, as the kernel reports them (/proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _outward_address() -> str | None:
    """A non-loopback address of this machine (the one its default route leaves from), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP: no packet is sent
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("explicit", [False, True])
def test_the_metrics_port_stays_on_loopback_when_the_proxy_listens_everywhere(tmp_path, explicit):
    home, metrics_port = tmp_path / "home", free_port()
    extra = ("--host", "0.0.0.0", "--metrics-port", str(metrics_port))
    if explicit:
        extra += ("--metrics-host", "0.0.0.0")
    with FakeProvider() as provider:
        proxy = start_proxy(home, provider.url, tmp_path / "proxy.log", extra_args=extra)
        try:
            expected = "0.0.0.0" if explicit else "127.0.0.1"
            deadline = time.monotonic() + 20
            while _listening_addresses(metrics_port) != {expected} and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _listening_addresses(metrics_port) == {expected}
            scrape(f"http://127.0.0.1:{metrics_port}/metrics")
            outward = _outward_address()
            if outward is not None:
                url = f"http://{outward}:{metrics_port}/metrics"
                if explicit:
                    scrape(url)
                else:
                    with pytest.raises(httpx.ConnectError):
                        httpx.get(url, timeout=5)
        finally:
            proxy.stop()
    help_text = run_cli(tmp_path / "other", "proxy", "--help")
    assert "[default: 127.0.0.1]" in help_text.split("--metrics-host TEXT")[1][:300]


def test_label_combinations_are_capped_so_a_scrape_stays_small():
    metrics = Metrics(tags=True)  # the defaults: 100 values per label, 1,000 combinations
    for n in range(8000):  # 100 models x 80 customers: every value within its label's cap, every call a new pair
        metrics.observe({"provider": "openai", "model": f"model-{n % 100}", "key_id": 1,
                         "customer_id": f"customer-{n // 100}", "feature": "chat", "status": 200,
                         "input_tokens": 10, "cost_usd": Decimal("0.001")})
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    calls = [s for s in families["aispendtrack_calls"].samples if s.name == "aispendtrack_calls_total"]
    assert sum(s.value for s in calls) == 8000
    assert len(calls) <= 1000 + 1  # the kept combinations, and "other"
    assert sum(s.value for s in calls if s.labels["model"] == "other" and s.labels["customer"] == "other") == 7000
    assert len(metrics.exposition()) < 1_000_000


def test_huge_model_names_are_stored_cut_and_leave_the_scrape_small(tmp_path):
    metrics_port = free_port()
    with FakeProvider() as provider:
        proxy = start_proxy(tmp_path / "home", provider.url, tmp_path / "proxy.log",
                            extra_args=("--metrics-port", str(metrics_port)))
        try:
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            client = proxy.openai(headers={"x-customer-id": "huge"})
            client.chat.completions.create(**CHAT, extra_headers=LEGACY)
            proxy.rows("huge", expect=1)
            baseline = len(httpx.get(metrics_url, timeout=5).content)
            huge = [f"{n}-" + "m" * 256 * 1024 for n in range(4)]  # a new 256 KB name each call, refused upstream
            for model in huge:
                with pytest.raises(openai.BadRequestError):
                    client.chat.completions.create(model=model, messages=CHAT["messages"],
                                                   extra_headers={"x-test-scenario": "error400"})
            assert [json.loads(r.body)["model"] for r in provider.received[-4:]] == huge  # sent on whole
            rows = proxy.rows("huge", expect=5)
            stored = sorted(r["model"] for r in rows if r["status"] == 400)
            assert stored == [m[:199] + "…" for m in huge]  # cut to 200 characters, and marked as cut
            scraped = httpx.get(metrics_url, timeout=60).content
            assert len(scraped) < baseline + 4 * 20_000, len(scraped)  # a few lines per call, no 256 KB label
            assert total(scrape(metrics_url), "aispendtrack_calls_total", status="400") == 4
        finally:
            proxy.stop()


def test_forgetting_a_customer_or_a_key_drops_its_series_and_keeps_the_others():
    metrics = Metrics(tags=True)
    for customer, key in (("ann", 1), ("bob", 1), ("bob", 2)):
        metrics.observe({"provider": "openai", "model": "gpt-4o", "key_id": key, "customer_id": customer,
                         "feature": "chat", "status": 500, "input_tokens": 10, "cost_usd": Decimal("0.001")})
        metrics.observe({"provider": "openai", "model": "gpt-x", "key_id": key, "customer_id": customer,
                         "feature": "chat", "status": 200, "input_tokens": 10, "cost_usd": None, "priced": False})
    metrics.forget("customer", "ann")
    page = metrics.exposition().decode()
    assert 'customer="ann"' not in page and page.count('customer="bob"') > 0
    metrics.forget("key", "1")
    samples = [s for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples
               if s.name in ("aispendtrack_calls_total", "aispendtrack_errors_total", "aispendtrack_tokens_total",
                             "aispendtrack_cost_usd_total", "aispendtrack_unpriced_calls_total")]
    assert {s.name for s in samples} >= {"aispendtrack_unpriced_calls_total", "aispendtrack_cost_usd_total"}
    assert samples and {(s.labels["customer"], s.labels["key"]) for s in samples} == {("bob", "2")}
    assert metrics.label_values("customer") == ["bob"]


def test_errors_and_unpriced_calls_are_the_reports(tmp_path):
    """The same rows counted by /metrics and by a report: a stream cut after its 200 and a client
    gone are errors in both (the metric counted only error statuses); the calls of unknown cost are
    counted apart (the cost counter left them out silently)."""
    import datetime as dt

    from addon.core.reports import parse_report
    from addon.core.store import calls as call_rows
    from addon.core.store import reports as report_rows
    from addon.core.store import writing

    from .helpers import call_row
    rows = [call_row(1), call_row(2, status=500, outcome="completed"), call_row(3, outcome="upstream_failed"),
            call_row(4, outcome="client_disconnected"), call_row(5, status=None, outcome="upstream_failed"),
            call_row(6, status=429, outcome="completed"),
            call_row(7, model="acme-llm", cost_usd=None, priced=False),  # unpriced, as a report counts them:
            call_row(8, model="tts-1", cost_usd=None, priced=False, usage_source="none")]  # no price, no usage
    metrics = Metrics(tags=False)
    for row in rows:
        metrics.observe(row)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    counted = sum(s.value for s in families["aispendtrack_errors"].samples if s.name.endswith("_total"))
    unpriced = sum(s.value for s in families["aispendtrack_unpriced_calls"].samples if s.name.endswith("_total"))
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, rows)
        _, found = report_rows.report(con, parse_report([], now=dt.datetime(2026, 12, 1, tzinfo=dt.UTC)), exact=True)
    assert counted == found["errors"] == 5
    assert unpriced == found["unpriced_calls"] == 2
    cost = sum(s.value for s in families["aispendtrack_cost_usd"].samples if s.name.endswith("_total"))
    assert cost == pytest.approx(float(found["cost_usd"]))


def test_the_workers_merge_keeps_the_label_cap_over_the_host_and_one_created_per_series():
    """Each worker caps its own labels: two workers with --metrics-label-cap 2 showed four models (and
    each replaced worker two more); the merge keeps the cap over the host. A *_created sample was
    served per worker (the text format makes it a gauge of its own): the earliest now."""
    from addon.core.metrics_merge import Merged

    workers = [Metrics(cap=2), Metrics(cap=2)]
    for n, worker in enumerate(workers):
        for model in (f"a{n}", f"b{n}", f"c{n}"):
            worker.observe({"provider": "openai", "model": model, "key_id": 1, "status": 200, "input_tokens": 5})

    servers = [_serving(w) for w in workers]
    try:
        merged = Merged(lambda: {n: f"http://127.0.0.1:{s.server_port}/metrics" for n, s in enumerate(servers)}, 2)
        families = {f.name: f for f in text_string_to_metric_families(merged.exposition().decode())}
        # A series the parent serves under other, forgotten by its worker (an erased subject), keeps
        # its count there: other never goes down (Prometheus would read a reset).
        workers[1].forget("model", "a1")
        after = {f.name: f for f in text_string_to_metric_families(merged.exposition().decode())}
    finally:
        for server in servers:
            server.shutdown()
    calls = [s for s in families["aispendtrack_calls"].samples if s.name == "aispendtrack_calls_total"]
    assert {s.labels["model"] for s in calls} == {"a0", "b0", "other"}
    assert sum(s.value for s in calls) == 6
    created = families["aispendtrack_calls_created"].samples
    assert len(created) == len(calls) and all("worker" not in s.labels for s in created)
    later = [s for s in after["aispendtrack_calls"].samples if s.name == "aispendtrack_calls_total"]
    assert {s.labels["model"]: s.value for s in later} == {s.labels["model"]: s.value for s in calls}


def test_the_workers_merge_keeps_no_erased_customer_in_a_series_it_served_under_other():
    """A series folded under other for its model still names its customer: once the worker forgets
    the customer (gdpr delete), the parent must not keep it."""
    from addon.core.metrics_merge import Merged

    worker = Metrics(tags=True, cap=5)
    for model in ("a", "b"):
        worker.observe({"provider": "openai", "model": model, "key_id": 1, "customer_id": "erased-one",
                        "feature": "f", "status": 200, "input_tokens": 5})
    server = _serving(worker)
    try:
        merged = Merged(lambda: {0: f"http://127.0.0.1:{server.server_port}/metrics"}, 1)
        assert 'model="other"' in merged.exposition().decode()  # b under other, naming its customer
        worker.forget("customer", "erased-one")
        assert "erased-one" not in merged.exposition().decode()
    finally:
        server.shutdown()


def _serving(worker: Metrics):
    """A worker's /metrics on 127.0.0.1, as the parent reads it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = worker.exposition()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
