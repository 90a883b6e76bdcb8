"""Per-key limits: 429s with the right retry-after, in each SDK's error shape, surviving restarts."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import zoneinfo

import anthropic
import openai
import pytest

from addon.core.limits import Limiter
from addon.core.plans import Limits, limits_for

from .helpers import run_cli, start_proxy

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
LA = zoneinfo.ZoneInfo("America/Los_Angeles")


def test_hourly_window_admits_the_limit_then_refuses_until_the_next_hour():
    limiter = Limiter(zoneinfo.ZoneInfo("UTC"))
    limiter.set_limits({1: Limits(per_hour=2, per_month=None)})
    now = dt.datetime(2026, 11, 25, 10, 59, 30, tzinfo=dt.UTC)
    limiter.seed({}, now)
    assert limiter.admit(1, now) is None and limiter.admit(1, now) is None
    refusal = limiter.admit(1, now)
    assert refusal.limit == "per-hour" and refusal.size == 2
    assert refusal.retry_after(now) == 30
    assert limiter.admit(1, now + dt.timedelta(seconds=31)) is None  # a new hour, a new count
    assert limiter.admit(2, now) is None  # other keys are unaffected


def test_monthly_quota_resets_on_the_first_in_the_configured_zone():
    limiter = Limiter(LA)
    limiter.set_limits({1: limits_for("free", None, 1)})
    # 2026-12-01 07:30 UTC is still November 30th in Los Angeles.
    now = dt.datetime(2026, 12, 1, 7, 30, tzinfo=dt.UTC)
    limiter.seed({1: (0, 0)}, now)
    assert limiter.admit(1, now) is None
    refusal = limiter.admit(1, now)
    assert refusal.limit == "per-month"
    assert refusal.resets_at == dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)  # midnight PST
    assert limiter.admit(1, dt.datetime(2026, 12, 1, 8, 0, 1, tzinfo=dt.UTC)) is None


def test_plans_and_overrides():
    assert limits_for("free", None, None) == Limits(1_000, 10_000)
    assert limits_for("pro", None, None) == Limits(10_000, None)
    assert limits_for("enterprise", None, None) == Limits(None, None)
    assert limits_for("free", 5, None) == Limits(5, 10_000)


def _seconds_to_next_hour() -> float:
    now = dt.datetime.now(dt.UTC)
    return (now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1) - now).total_seconds()


def test_over_the_limit_the_sdks_get_a_429_with_retry_after_and_a_restart_keeps_the_count(tmp_path, upstream):
    home = tmp_path / "home"
    created = json.loads(run_cli(home, "keys", "create", "--name", "limited", "--json"))
    run_cli(home, "keys", "set-limit", str(created["id"]), "--per-hour", "3")
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=created["key"])
    try:
        client = proxy.openai(headers={"x-customer-id": "limited"})
        for _ in range(3):
            client.chat.completions.create(**CHAT)
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(**CHAT)
        response = raised.value.response
        expected = _seconds_to_next_hour()
        assert abs(int(response.headers["retry-after"]) - math.ceil(expected)) <= 2
        assert "AiSpendTrack limit reached" in raised.value.message and "3 requests per hour" in raised.value.message
        assert f"aispendtrack keys set-limit {proxy.key_id} --per-hour N" in raised.value.message
        with pytest.raises(anthropic.RateLimitError) as refused:
            proxy.anthropic().messages.create(model="claude-sonnet-4-20250514", max_tokens=5, messages=CHAT["messages"])
        assert refused.value.body["error"]["type"] == "rate_limit_error"
        assert len(proxy.rows("limited", expect=3)) == 3  # refusals are not forwarded or recorded
    finally:
        proxy.stop()
    restarted = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=proxy.key)
    try:
        with pytest.raises(openai.RateLimitError):
            restarted.openai().chat.completions.create(**CHAT)  # a restart grants no fresh quota
        listed = json.loads(run_cli(home, "keys", "list", "--json"))[0]
        assert (listed["used_this_hour"], listed["limit_per_hour"]) == (3, 3)
        run_cli(home, "keys", "set-limit", str(proxy.key_id), "--reset")  # back to the enterprise plan
        deadline = time.monotonic() + 5
        while True:
            try:
                restarted.openai().chat.completions.create(**CHAT)
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "raised limit not applied within 5 s"
                time.sleep(0.2)
    finally:
        restarted.stop()
