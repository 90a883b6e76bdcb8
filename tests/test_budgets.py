"""Budgets: spend counted as calls complete, and a blocking budget refusing the very next call."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import zoneinfo
from dataclasses import dataclass
from decimal import Decimal

import openai
import pytest

from addon.core.budgets import Budget, BudgetTracker
from addon.core.home import db_path
from addon.core.store import calls as call_rows
from addon.core.store import writing

from .helpers import call_row, run_cli, start_proxy

UTC = zoneinfo.ZoneInfo("UTC")
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "weather?"}]}
LEGACY_COST = Decimal("0.000405")  # 14 in x $2.50 + 37 out x $10, per million (the "legacy" payload)


def test_tracker_counts_spend_per_scope_and_resets_each_day():
    tracker = BudgetTracker(UTC)
    now = dt.datetime(2026, 11, 25, 23, 0, tzinfo=dt.UTC)
    budget = Budget(1, "customer", "acme", Decimal("1.00"), None, True)
    tracker.load([budget], lambda b, day, month: (Decimal("0.60"), Decimal("0.60")), now)
    assert tracker.blocked(1, "acme", None, now) is None
    tracker.record(7, "globex", None, Decimal("5"), now)  # another customer: not this budget
    tracker.record(7, "acme", None, Decimal("0.40"), now)
    refusal = tracker.blocked(3, "acme", "chat", now)
    assert refusal.period == "daily" and refusal.spent == Decimal("1.00")
    assert refusal.retry_after(now) == 3600  # until midnight UTC
    assert tracker.blocked(3, "globex", None, now) is None
    assert tracker.blocked(3, "acme", None, now + dt.timedelta(hours=1)) is None  # a new day


# Zones with a fixed offset (hours east of UTC), so a day and a month are easy to work out by hand.
_OFFSETS = {"UTC": 0, "Etc/GMT-14": 14, "Etc/GMT+12": -12}


@dataclass(frozen=True)
class LocalCalendar:
    """Where today and this month begin and end (in UTC) for a zone whose today is not the 1st, so
    that a call stored earlier this month is not today's."""
    zone: str
    day_start: dt.datetime
    day_end: dt.datetime
    month_start: dt.datetime
    month_end: dt.datetime

    @classmethod
    def past_the_first(cls, now: dt.datetime) -> LocalCalendar:
        zone, hours = next((z, h) for z, h in _OFFSETS.items() if (now + dt.timedelta(hours=h)).day != 1)
        offset = dt.timedelta(hours=hours)
        local = now + offset
        day = dt.datetime(local.year, local.month, local.day, tzinfo=dt.UTC)
        month = day.replace(day=1)
        next_month = (month + dt.timedelta(days=32)).replace(day=1)
        return cls(zone, day - offset, day + dt.timedelta(days=1) - offset, month - offset, next_month - offset)


def _seed_earlier_this_month(home, calendar: LocalCalendar, customer: str, cost: str) -> None:
    """A call stored a minute into this month (in the calendar's zone): this month's spend, not today's."""
    with writing(db_path(home)) as con:
        call_rows.insert(con, [call_row(1, ts=calendar.month_start + dt.timedelta(minutes=1), customer_id=customer,
                                        cost_usd=Decimal(cost))])


def _spend(home) -> tuple[Decimal, Decimal]:
    [listed] = json.loads(run_cli(home, "budgets", "list", "--json"))
    return Decimal(str(listed["spent_today_usd"])), Decimal(str(listed["spent_this_month_usd"]))


def test_a_blocking_budget_refuses_the_call_after_the_one_that_crossed_it(tmp_path, upstream):
    home = tmp_path / "home"
    created = json.loads(run_cli(home, "keys", "create", "--name", "budgeted", "--json"))
    run_cli(home, "budgets", "set", "--scope", "customer:spender", "--daily", "0.001", "--block")
    calendar = LocalCalendar.past_the_first(dt.datetime.now(dt.UTC))
    _seed_earlier_this_month(home, calendar, "spender", "5")  # this month's, not today's: no refusal
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=created["key"],
                        extra_args=("--quota-tz", calendar.zone))
    try:
        client = proxy.openai(headers={"x-customer-id": "spender", "x-test-scenario": "legacy"})
        for _ in range(3):  # 0.000405 each: the third takes the spend past $0.001
            client.chat.completions.create(**CHAT)
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(**CHAT)
        assert "budget exceeded for customer spender" in raised.value.message
        assert "$0.001215 spent of the daily budget of $0.001." in raised.value.message
        wait = int(raised.value.response.headers["retry-after"])
        assert abs(wait - math.ceil((calendar.day_end - dt.datetime.now(dt.UTC)).total_seconds())) <= 2
        other = proxy.openai(headers={"x-customer-id": "someone-else"})
        other.chat.completions.create(**CHAT)  # outside the budget's scope
        assert len(proxy.rows("spender", expect=4)) == 4  # the seeded call and three through the proxy
        assert _spend(home) == (3 * LEGACY_COST, 5 + 3 * LEGACY_COST)
    finally:
        proxy.stop()


def test_a_blocking_monthly_budget_counts_the_whole_month_not_today(tmp_path, upstream):
    home = tmp_path / "home"
    created = json.loads(run_cli(home, "keys", "create", "--name", "budgeted", "--json"))
    run_cli(home, "budgets", "set", "--scope", "customer:spender", "--monthly", "0.001", "--block")
    calendar = LocalCalendar.past_the_first(dt.datetime.now(dt.UTC))
    _seed_earlier_this_month(home, calendar, "spender", "0.0008")
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=created["key"],
                        extra_args=("--quota-tz", calendar.zone))
    try:
        client = proxy.openai(headers={"x-customer-id": "spender", "x-test-scenario": "legacy"})
        client.chat.completions.create(**CHAT)  # $0.0008 + $0.000405: past the month's $0.001
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(**CHAT)
        assert "$0.001205 spent of the monthly budget of $0.001." in raised.value.message
        wait = int(raised.value.response.headers["retry-after"])
        assert abs(wait - math.ceil((calendar.month_end - dt.datetime.now(dt.UTC)).total_seconds())) <= 2
        assert len(proxy.rows("spender", expect=2)) == 2
        assert _spend(home) == (LEGACY_COST, Decimal("0.0008") + LEGACY_COST)
    finally:
        proxy.stop()


def test_the_running_proxy_alerts_when_a_budget_is_crossed(tmp_path, upstream):
    from .helpers import Receiver
    receiver = Receiver()
    home = tmp_path / "home"
    created = json.loads(run_cli(home, "keys", "create", "--name", "watched", "--json"))
    run_cli(home, "budgets", "set", "--scope", "feature:summaries", "--daily", "0.0005")
    (home / "alerts.toml").write_text(f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n')
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=created["key"],
                        extra_args=("--alert-interval", "1"))
    try:
        client = proxy.openai(headers={"x-feature": "summaries", "x-test-scenario": "legacy"})
        for _ in range(2):  # $0.00081: over the $0.0005 budget, which does not block
            client.chat.completions.create(**CHAT)
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.2)
        [(_, body)] = receiver.requests
        alert = json.loads(body)
        assert alert["kind"] == "budget" and "feature summaries" in alert["subject"]
        assert "Calls are not blocked." in alert["text"]
        time.sleep(2.5)  # more evaluations: still one alert for this budget today
        assert len(receiver.requests) == 1
    finally:
        proxy.stop()
        receiver.close()
