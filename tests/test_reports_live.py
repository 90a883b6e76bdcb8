"""Reports over calls made through the real proxy, read by the CLI and by the API served in-process."""

from __future__ import annotations

import json

import httpx
import pytest

from .helpers import cost, free_port, run_cli, start_proxy

MESSAGES = [{"role": "user", "content": "hi"}]


def test_report_totals_match_the_calls_made(tmp_path, upstream):
    web_port = free_port()
    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log",
                        extra_args=("--web-port", str(web_port)))
    try:
        tagged = {"x-customer-id": "live", "x-feature": "f1"}
        oa = proxy.openai(headers=tagged)
        oa.chat.completions.create(model="gpt-5-mini", messages=MESSAGES)                       # 0.001161
        oa.with_options(default_headers={**tagged, "x-aispendtrack-key": proxy.key,
                                         "x-test-scenario": "cached"}).chat.completions.create(
            model="gpt-4o", messages=MESSAGES)                                                   # 0.005075
        proxy.anthropic(headers={**tagged, "x-feature": "f2"}).messages.create(
            model="claude-sonnet-4-20250514", max_tokens=10, messages=MESSAGES)                  # 0.0108573
        proxy.openai(headers={**tagged, "x-test-scenario": "unknown_model"}).chat.completions.create(
            model="acme-llm-7b", messages=MESSAGES)                                              # unpriced
        assert len(proxy.rows("live", expect=4)) == 4

        groups = json.loads(run_cli(proxy.home, "report", "--by", "feature", "--customer", "live",
                                    "--format", "json"))
        by_feature = {g["feature"]: g for g in groups}
        assert by_feature["f1"]["cost_usd"] == pytest.approx(
            cost((156, "0.25"), (561, "2.00")) + cost((8, "2.50"), (4012, "1.25"), (4, "10.00")), abs=1e-12)
        assert by_feature["f1"]["calls"] == 3 and by_feature["f1"]["unpriced_calls"] == 1
        assert by_feature["f2"]["cost_usd"] == pytest.approx(
            cost((3, "3"), (1956, "3.75"), (9511, "0.30"), (44, "15")), abs=1e-12)
        assert by_feature["f1"]["cache_read_tokens"] == 4012 and by_feature["f2"]["cache_write_tokens"] == 1956

        api = httpx.get(f"http://127.0.0.1:{web_port}/api/v1/report",
                        params={"by": "feature", "customer": "live"},
                        headers={"Authorization": f"Bearer {proxy.key}"})
        assert api.status_code == 200 and api.json() == groups
    finally:
        proxy.stop()
