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

from .helpers import (
    call_row,
    key_with_blocking_budget,
    migrated_before,
    run_cli,
    start_proxy,
    until_admitted,
)

UTC = zoneinfo.ZoneInfo("UTC")
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "weather?"}]}
LEGACY_COST = Decimal("0.000405")  # 14 in x $2.50 + 37 out x $10, per million (the "legacy" payload)


def test_tracker_counts_spend_per_scope_and_resets_each_day(counting):
    tracker = counting(BudgetTracker(UTC))
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


def test_a_feature_budget_counts_the_calls_of_its_feature_whoever_sends_them(counting):
    tracker = counting(BudgetTracker(UTC))
    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    chat = Budget(1, "feature", "chat", Decimal("1.00"), None, True)
    tracker.load([chat], lambda b, day, month: (Decimal(0), Decimal(0)), now)
    tracker.record(7, "acme", "search", Decimal("5"), now)  # another feature: not this budget
    assert tracker.blocked(7, "acme", "chat", now) is None
    tracker.record(7, "acme", "chat", Decimal("0.60"), now)
    tracker.record(8, None, "chat", Decimal("0.40"), now)  # another key, no customer: still the feature's
    refusal = tracker.blocked(9, "globex", "chat", now)
    assert (refusal.budget, refusal.period, refusal.spent) == (chat, "daily", Decimal("1.00"))
    assert tracker.blocked(9, "globex", "search", now) is None


def test_a_budget_added_after_others_starts_from_its_stored_spend_and_refuses_at_once(counting):
    """A reload keeps the budgets it already counts and seeds each new one, wherever it is listed."""
    tracker = counting(BudgetTracker(UTC))
    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    kept = Budget(1, "customer", "globex", Decimal("1.00"), None, True)
    added = Budget(2, "customer", "acme", Decimal("1.00"), None, True)
    stored = {1: (Decimal(0), Decimal(0)), 2: (Decimal("1.00"), Decimal("1.00"))}
    tracker.load([kept], lambda b, day, month: stored[b.id], now)
    tracker.load([kept, added], lambda b, day, month: stored[b.id], now)
    refusal = tracker.blocked(3, "acme", None, now)
    assert (refusal.budget, refusal.period, refusal.spent) == (added, "daily", Decimal("1.00"))


def test_a_call_is_refused_by_any_used_up_budget_covering_it_not_only_the_first_blocking_one(counting):
    tracker = counting(BudgetTracker(UTC))
    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    other = Budget(1, "customer", "globex", Decimal("1.00"), None, True)
    feature = Budget(2, "feature", "chat", None, Decimal("10.00"), True)
    spent = {1: (Decimal(0), Decimal(0)), 2: (Decimal("4.00"), Decimal("10.00"))}
    tracker.load([other, feature], lambda b, day, month: spent[b.id], now)
    refusal = tracker.blocked(3, "acme", "chat", now)
    assert (refusal.budget, refusal.period, refusal.spent) == (feature, "monthly", Decimal("10.00"))
    assert refusal.retry_after(now) == 5 * 86400 + 12 * 3600  # until December 1st
    assert tracker.blocked(3, "acme", "search", now) is None
    # A daily budget in a zone 14 hours east of UTC: its day ends at 10:00 UTC, so at 12:00 UTC
    # the refusal lasts until 10:00 UTC tomorrow.
    east = counting(BudgetTracker(zoneinfo.ZoneInfo("Etc/GMT-14")))
    daily = Budget(3, "feature", "chat", Decimal("1.00"), None, True)
    east.load([daily], lambda b, day, month: (Decimal("1.00"), Decimal("1.00")), now)
    refusal = east.blocked(3, "acme", "chat", now)
    assert (refusal.period, refusal.retry_after(now)) == ("daily", 22 * 3600)


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
    created = key_with_blocking_budget(home, "spender", daily="0.001")
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
    created = key_with_blocking_budget(home, "spender", monthly="0.001")
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
    run_cli(home, "budgets", "set", "--scope", "feature:summaries", "--key", str(created["id"]), "--daily", "0.0005")
    (home / "alerts.toml").write_text(f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n')
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=created["key"],
                        extra_args=("--alert-interval", "1"))
    try:
        client = proxy.openai(headers={"x-feature": "summaries", "x-test-scenario": "legacy"})
        for _ in range(2):  # $0.00081: over the $0.0005 budget, which does not block
            client.chat.completions.create(**CHAT)
        deadline = time.monotonic() + 20
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


def _api_budgets(home, secret: str) -> list[dict]:
    from web import create_app
    answer = create_app(home).test_client().get("/api/v1/budgets", headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 200
    return answer.get_json()


def test_another_key_sending_a_customers_id_neither_spends_nor_is_blocked_by_its_budget(tmp_path, upstream):
    home = tmp_path / "home"
    victim = json.loads(run_cli(home, "keys", "create", "--name", "victim", "--json"))
    attacker = json.loads(run_cli(home, "keys", "create", "--name", "attacker", "--json"))
    run_cli(home, "budgets", "set", "--scope", "customer:victim", "--key", str(victim["id"]), "--daily", "0.001",
            "--block")
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=victim["key"])
    posing = proxy.openai(headers={"x-aispendtrack-key": attacker["key"], "x-customer-id": "victim",
                                   "x-test-scenario": "legacy"})
    own = proxy.openai(headers={"x-customer-id": "victim", "x-test-scenario": "legacy"})
    try:
        for _ in range(5):  # $0.002: twice the victim's budget, all on the attacker's key
            posing.chat.completions.create(**CHAT)
        own.chat.completions.create(**CHAT)  # the victim is still served
        assert len(proxy.rows("victim", expect=6)) == 6
        [listed] = json.loads(run_cli(home, "budgets", "list", "--json"))
        assert (listed["key_id"], Decimal(str(listed["spent_today_usd"]))) == (victim["id"], LEGACY_COST)
        for _ in range(2):  # the victim's own calls cross it: $0.0012
            own.chat.completions.create(**CHAT)
        with pytest.raises(openai.RateLimitError) as raised:
            own.chat.completions.create(**CHAT)
        assert "budget exceeded for customer victim of key" in raised.value.message
        assert "$0.001215 spent of the daily budget of $0.001" in raised.value.message  # its own figures
        posing.chat.completions.create(**CHAT)  # the attacker's key was never in its scope
        # The web API: the budget is the victim key's to see, not the attacker's.
        assert [b["scope_value"] for b in _api_budgets(home, victim["key"])] == ["victim"]
        assert _api_budgets(home, attacker["key"]) == []
    finally:
        proxy.stop()


def test_a_budget_over_other_keys_calls_refuses_without_its_figures(tmp_path, upstream):
    home = tmp_path / "home"
    first = json.loads(run_cli(home, "keys", "create", "--name", "first", "--json"))
    second = json.loads(run_cli(home, "keys", "create", "--name", "second", "--json"))
    run_cli(home, "budgets", "set", "--scope", "customer:shared", "--all-keys", "--daily", "0.001", "--block")
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=first["key"])
    try:
        for _ in range(3):  # $0.0012, all on the first key
            proxy.openai(headers={"x-customer-id": "shared", "x-test-scenario": "legacy"}).chat.completions.create(
                **CHAT)
        with pytest.raises(openai.RateLimitError) as raised:  # a budget over every key's calls: explicit
            proxy.openai(headers={"x-aispendtrack-key": second["key"], "x-customer-id": "shared"}
                         ).chat.completions.create(**CHAT)
        message = raised.value.message
        assert "budget exceeded" in message and "customer shared on all keys" in message
        assert "$" not in message and "0.001" not in message  # nothing of the first key's spend
        assert int(raised.value.response.headers["retry-after"]) > 0
        assert _api_budgets(home, second["key"]) == [] == _api_budgets(home, first["key"])
    finally:
        proxy.stop()
    run_cli(home, "budgets", "set", "--scope", "all", "--daily", "0.001", "--block")  # the organisation's
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy2.log", key=first["key"])
    try:
        with pytest.raises(openai.RateLimitError) as raised:
            proxy.openai(headers={"x-aispendtrack-key": second["key"]}).chat.completions.create(**CHAT)
        assert "budget exceeded" in raised.value.message and "$" not in raised.value.message
        # The web API lists it to every key, as the page does: its limit, not the spend of the others.
        for key in (first, second):
            [shown] = _api_budgets(home, key["key"])
            assert (shown["scope"], shown["daily_usd"], shown["block"]) == ("all", 0.001, True)
            assert shown["spent_today_usd"] is None and shown["spent_this_month_usd"] is None
    finally:
        proxy.stop()


def test_a_customer_budget_says_whose_customer_it_is(migrated_home):
    from click.testing import CliRunner

    from cli.main import cli
    home = migrated_home
    key_id = json.loads(run_cli(home, "keys", "create", "--name", "k", "--json"))["id"]
    unsaid = CliRunner().invoke(cli, ["--home", str(home), "budgets", "set", "--scope", "customer:acme",
                                      "--daily", "1"])
    assert unsaid.exit_code == 2 and "--key ID counts only that key's calls" in unsaid.output
    wrong = CliRunner().invoke(cli, ["--home", str(home), "budgets", "set", "--scope", "customer:acme", "--key", "99",
                                     "--daily", "1"])
    assert wrong.exit_code == 2 and "no key 99" in wrong.output
    # The same customer id of two keys, and over all keys: three budgets, each listed with its key.
    assert f"customer acme of key {key_id}" in run_cli(home, "budgets", "set", "--scope", "customer:acme", "--key",
                                                 str(key_id), "--daily", "1")
    other = json.loads(run_cli(home, "keys", "create", "--name", "k2", "--json"))["id"]
    run_cli(home, "budgets", "set", "--scope", "customer:acme", "--key", str(other), "--daily", "2")
    run_cli(home, "budgets", "set", "--scope", "customer:acme", "--all-keys", "--daily", "3")
    listed = json.loads(run_cli(home, "budgets", "list", "--json"))
    assert sorted((b["key_id"] or 0, b["daily_usd"]) for b in listed) == [(0, 3), (key_id, 1), (other, 2)]
    assert "all" in run_cli(home, "budgets", "list").splitlines()[-1]
    # The zone of "today" and "this month", as the API's list says it (the CLI's left it out).
    run_cli(home, "config", "set", "quota-tz", "Asia/Kolkata")
    assert {b["tz"] for b in json.loads(run_cli(home, "budgets", "list", "--json"))} == {"Asia/Kolkata"}


def test_budgets_stored_before_keys_owned_them_keep_counting_every_key(tmp_path):
    """A database from before budgets had keys: its customer budget is migrated as "all keys"."""
    import duckdb

    from addon.core import home as home_dir
    from addon.core.store import migrations
    home = tmp_path / "home"
    home.mkdir()
    con = duckdb.connect(str(home_dir.db_path(home)))
    migrated_before(con, migrations.m016_budgets_per_key)
    con.execute("INSERT INTO budgets (scope, scope_value, daily_usd, block, created_at) "
                "VALUES ('customer', 'acme', 5, true, now())")
    con.close()
    [budget] = json.loads(run_cli(home, "budgets", "list", "--json"))
    assert (budget["scope"], budget["scope_value"], budget["key_id"], budget["daily_usd"]) == ("customer", "acme",
                                                                                              None, 5)


def test_following_the_429s_advice_keeps_the_monthly_cap_and_the_budget(tmp_path, upstream):
    """The refusal says how to raise the daily budget; doing exactly that keeps the monthly cap,
    the budget's id and its blocking, and the proxy lets calls through again."""
    import re
    home = tmp_path / "home"
    created = json.loads(run_cli(home, "keys", "create", "--name", "budgeted", "--json"))
    run_cli(home, "budgets", "set", "--scope", "customer:acme", "--key", str(created["id"]), "--daily", "0.0004",
            "--monthly", "500", "--block")
    [before] = json.loads(run_cli(home, "budgets", "list", "--json"))
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=created["key"])
    try:
        client = proxy.openai(headers={"x-customer-id": "acme", "x-test-scenario": "legacy"})
        client.chat.completions.create(**CHAT)  # $0.000405: past the day's $0.0004
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(**CHAT)
        advice = re.search(r"`aispendtrack (budgets set [^`]+)`", raised.value.message).group(1)
        assert advice == f"budgets set --scope customer:acme --key {created['id']} --daily USD --block"
        said = run_cli(home, *advice.replace("USD", "25").split())
        [after] = json.loads(run_cli(home, "budgets", "list", "--json"))
        assert (after["id"], after["daily_usd"], after["monthly_usd"], after["block"]) == (before["id"], 25, 500, True)
        assert said == (f"Budget {before['id']} for customer acme of key {created['id']}: $25.00 a day (was $0.0004), "
                        f"$500.00 a month (unchanged), blocking.\n")
        until_admitted(lambda: client.chat.completions.create(**CHAT), 10, "the raised budget still refuses")
    finally:
        proxy.stop()


def test_setting_one_period_keeps_the_rest_and_removing_one_says_what_went(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    home = tmp_path / "home"
    run_cli(home, "budgets", "set", "--scope", "all", "--daily", "10", "--monthly", "500", "--block")
    [first] = json.loads(run_cli(home, "budgets", "list", "--json"))
    # Without --block or --no-block, blocking stays as it was.
    assert run_cli(home, "budgets", "set", "--scope", "all", "--monthly", "600") == (
        f"Budget {first['id']} for all calls: $10.00 a day (unchanged), $600.00 a month (was $500.00), blocking.\n")
    assert run_cli(home, "budgets", "set", "--scope", "all", "--clear-daily") == (
        f"Budget {first['id']} for all calls: $600.00 a month (unchanged), blocking. Removed its daily "
        f"budget of $10.00.\n")
    assert run_cli(home, "budgets", "set", "--scope", "all", "--no-block") == (
        f"Budget {first['id']} for all calls: $600.00 a month (unchanged), no longer blocking.\n")
    [last] = json.loads(run_cli(home, "budgets", "list", "--json"))
    assert (last["id"], last["daily_usd"], last["monthly_usd"], last["block"]) == (first["id"], None, 600, False)
    emptied = CliRunner().invoke(cli, ["--home", str(home), "budgets", "set", "--scope", "all", "--clear-monthly"])
    assert emptied.exit_code == 2 and f"`aispendtrack budgets delete {first['id']}`" in emptied.output
    both = CliRunner().invoke(cli, ["--home", str(home), "budgets", "set", "--scope", "all", "--daily", "5",
                                    "--clear-daily"])
    assert both.exit_code == 2 and "--daily and --clear-daily" in both.output
    assert run_cli(home, "budgets", "set", "--scope", "all", "--daily", "3", "--block") == (
        f"Budget {first['id']} for all calls: $3.00 a day (new), $600.00 a month (unchanged), now blocking.\n")
    assert len(json.loads(run_cli(home, "budgets", "list", "--json"))) == 1


def test_a_budget_is_stored_as_printed_or_refused_in_one_line(tmp_path):
    # "1e3" was printed and audited as $1,000.00 and stored as $1 (DuckDB 1.5 binds a Decimal with a
    # positive exponent as its digits alone); 0.0000004 was stored as a $0 budget that blocked every call.
    from click.testing import CliRunner

    from cli.main import cli
    home = tmp_path / "home"
    most = ("999999999999.999999", "$999,999,999,999.999999", 999999999999.999999)
    for given, printed, stored in (("1e3", "$1,000.00", 1000), ("2.5E+2", "$250.00", 250),
                                   ("$0.000001", "$0.000001", 0.000001), ("0.1234565", "$0.123457", 0.123457), most):
        assert run_cli(home, "budgets", "set", "--scope", "all", "--daily", given).startswith(
            f"Budget 1 for all calls: {printed} a day"), given
        [budget] = json.loads(run_cli(home, "budgets", "list", "--json"))
        assert budget["daily_usd"] == stored, given
    for given, said in (("0.0000004", "must be at least $0.000001: a budget keeps millionths of a dollar"),
                        ("1e400", "must be at most $999,999,999,999.99"),
                        ("123456789012345", "must be at most"), ("0", "must be more than 0")):
        refused = CliRunner().invoke(cli, ["--home", str(home), "budgets", "set", "--scope", "all", "--daily", given])
        assert refused.exit_code == 2 and said in refused.output and "Traceback" not in refused.output, given
    [budget] = json.loads(run_cli(home, "budgets", "list", "--json"))
    assert budget["daily_usd"] == 999999999999.999999  # none of those changed it
    for scope in ("key:0", "key:999"):  # as --key 999 is: no budget for a key that does not exist
        refused = CliRunner().invoke(cli, ["--home", str(home), "budgets", "set", "--scope", scope, "--daily", "5"])
        assert refused.exit_code == 2 and f"no key {scope[4:]}; see `aispendtrack keys list`" in refused.output
    refused = CliRunner().invoke(cli, ["--home", str(home), "budgets", "set", "--scope", "key:²", "--daily", "5"])
    assert refused.exit_code == 2 and "key:ID takes a key id" in refused.output  # was a ValueError's traceback
    assert len(json.loads(run_cli(home, "budgets", "list", "--json"))) == 1
    # key:01 is key 1's budget (stored as "01", it counted none of key 1's calls).
    run_cli(home, "keys", "create", "--name", "k")
    assert run_cli(home, "budgets", "set", "--scope", "key:01", "--daily", "5").startswith("Budget 2 for key 1:")
    assert {(b["scope"], b["scope_value"]) for b in json.loads(run_cli(home, "budgets", "list", "--json"))} == {
        ("all", None), ("key", "1")}


def test_each_scope_counts_only_its_calls_and_a_month_outlives_its_days(counting):
    la = zoneinfo.ZoneInfo("America/Los_Angeles")
    tracker = counting(BudgetTracker(la))
    everything = Budget(1, "all", None, None, Decimal("100"), True)
    key_3 = Budget(2, "key", "3", Decimal("1"), None, True)
    acme_of_3 = Budget(3, "customer", "acme", None, Decimal("2"), True, key_id=3)
    chat_anywhere = Budget(4, "feature", "chat", Decimal("50"), None, False)
    seeded = []

    def seed(budget, day, month):
        seeded.append((budget.id, day, month))
        return (Decimal("0.5"), Decimal("1.5")) if budget.id == 3 else (Decimal(0), Decimal(0))

    # 2026-11-30 23:30 in Los Angeles: the last half hour of the day and of the month.
    now = dt.datetime(2026, 12, 1, 7, 30, tzinfo=dt.UTC)
    tracker.load([everything, key_3, acme_of_3, chat_anywhere], seed, now)
    day, month = dt.datetime(2026, 11, 30, 8, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, 7, tzinfo=dt.UTC)
    assert seeded == [(1, day, month), (2, day, month), (3, day, month), (4, day, month)]
    assert tracker.periods(now) == (day, month) and tracker.has_budgets() and len(tracker.budgets()) == 4
    assert tracker.any_blocking(9, None, None)  # "all" covers every call
    assert not chat_anywhere.block and tracker.blocked(9, "acme", "chat", now) is None

    tracker.record(4, "acme", "chat", Decimal("0.25"), now)  # key 4's "acme" is not key 3's
    assert tracker.blocked(4, "acme", None, now) is None
    tracker.record(3, "acme", "search", Decimal("0.5"), now)  # key 3's acme: 1.5 + 0.5 this month
    refusal = tracker.blocked(3, "acme", None, now)
    assert (refusal.budget.id, refusal.period, refusal.spent) == (3, "monthly", Decimal("2.0"))
    assert refusal.resets_at == dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)
    assert tracker.blocked(3, "globex", None, now) is None  # key 3: $0.5 of its $1 today
    tracker.record(3, "globex", "chat", Decimal("0.5"), now)
    refusal = tracker.blocked(3, "globex", None, now)
    assert (refusal.budget.id, refusal.period, refusal.spent) == (2, "daily", Decimal("1.0"))

    december = dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)  # midnight, local: a new day and a new month
    assert tracker.blocked(3, "acme", None, december) is None
    assert tracker.periods(december) == (december, december)
    tracker.record(3, "acme", None, Decimal("1.5"), december)
    tracker.record(3, "acme", None, Decimal("0.25"), december + dt.timedelta(days=1))
    assert tracker.blocked(3, "acme", None, december + dt.timedelta(days=1)) is None  # $1.75 of $2
    tracker.record(3, "acme", None, Decimal("0.25"), december + dt.timedelta(days=2))
    refusal = tracker.blocked(3, "acme", None, december + dt.timedelta(days=2))
    assert (refusal.budget.id, refusal.period, refusal.spent) == (3, "monthly", Decimal("2.00"))


def test_a_team_budget_counts_its_keys_alone_and_a_moved_key_takes_its_stored_spend_along(counting):
    tracker = counting(BudgetTracker(UTC))
    now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
    search = Budget(1, "team", "search", Decimal("1"), None, True)
    ads = Budget(2, "team", "ads", None, Decimal("5"), True)
    stored = {1: (Decimal("0.25"), Decimal("0.25")), 2: (Decimal(0), Decimal(0))}
    seeded = []

    def seed(budget, day, month):
        seeded.append(budget.id)
        return stored[budget.id]

    tracker.load([search, ads], seed, now, teams={1: "search", 2: "search", 3: "ads"})
    assert sorted(seeded) == [1, 2]
    assert tracker.any_blocking(1, None, None) and tracker.any_blocking(3, None, None)
    assert not tracker.any_blocking(4, "acme", "chat") and not tracker.any_blocking(None, None, None)
    tracker.record(1, "acme", None, Decimal("0.5"), now)
    tracker.record(3, "acme", None, Decimal("0.5"), now)  # ads': not search's
    tracker.record(4, None, None, Decimal("9"), now)  # in no team
    assert tracker.blocked(2, None, None, now) is None  # search: 0.25 stored + 0.5 of $1 today
    tracker.record(2, None, None, Decimal("0.25"), now)
    for key in (1, 2):
        refusal = tracker.blocked(key, None, None, now)
        assert (refusal.budget, refusal.period, refusal.spent) == (search, "daily", Decimal("1.00"))
    assert tracker.blocked(3, None, None, now) is None and tracker.blocked(4, None, None, now) is None
    # Key 2 moves to ads: both team budgets start again from what their keys' calls stored.
    stored.update({1: (Decimal("0.75"), Decimal("0.75")), 2: (Decimal("4.75"), Decimal("4.75"))})
    seeded.clear()
    tracker.load([search, ads], seed, now, teams={1: "search", 2: "ads", 3: "ads"})
    assert sorted(seeded) == [1, 2]
    assert tracker.blocked(1, None, None, now) is None  # search: key 1's 0.75 of $1
    tracker.record(2, None, None, Decimal("0.25"), now)  # now ads': 4.75 + 0.25 of $5 this month
    refusal = tracker.blocked(3, None, None, now)
    assert (refusal.budget, refusal.period, refusal.spent) == (ads, "monthly", Decimal("5.00"))
    assert tracker.blocked(1, None, None, now) is None
    seeded.clear()
    tracker.load([search, ads], seed, now, teams={1: "search", 2: "ads", 3: "ads"})  # nothing moved
    assert seeded == [] and tracker.blocked(2, None, None, now).spent == Decimal("5.00")


def test_a_renamed_team_keeps_the_spend_its_budget_counted_and_a_shared_replica_waits_for_the_shared_total():
    now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
    stored = (Decimal("0.25"), Decimal("0.25"))  # the rows stored when the proxy read the budget
    for shared in (False, True):
        tracker = BudgetTracker(dt.UTC)
        tracker.shared = shared
        tracker.load([Budget(1, "team", "search", Decimal("1"), None, True)], lambda b, d, m: stored, now,
                     teams={1: "search", 2: "search"})
        tracker.record(1, None, None, Decimal("0.80"), now)  # counted, not yet in the rows the seed reads
        renamed = Budget(1, "team", "retrieval", Decimal("1"), None, True)
        tracker.load([renamed], lambda b, d, m: stored, now, teams={1: "retrieval", 2: "retrieval"})
        refusal = tracker.blocked(2, None, None, now)
        assert (refusal.budget, refusal.spent) == (renamed, Decimal("1.05")), shared
    # A key moved out: the embedded proxy counts the team's keys' rows again; a replica keeps its
    # count until the sync brings the shared total, which the move recounted (respend_teams).
    tracker.load([renamed], lambda b, d, m: stored, now, teams={1: "retrieval"})
    assert tracker.blocked(1, None, None, now).spent == Decimal("1.05") and tracker.blocked(2, None, None, now) is None
    sent, day, _ = tracker.take_unsynced(now)  # the sync sends the replica's 0.80, then reads the total
    assert sent == {1: (Decimal("0.80"), Decimal("0.80"))}
    tracker.set_spend({1: (Decimal("0.30"), Decimal("0.30"))}, day)
    assert tracker.blocked(1, None, None, now) is None


def test_a_key_moved_out_takes_its_stored_spend_and_leaves_the_spend_not_yet_stored():
    """Recounting the team from the store alone lost the calls counted but still on their way to it."""
    now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
    stored = {1: Decimal("0.25"), 2: Decimal("0.50"), 3: Decimal("0.125")}  # by key, today and this month

    def key_spend(keys, day, month):
        return (sum((stored[k] for k in keys), Decimal(0)),) * 2

    tracker = BudgetTracker(UTC)
    search = Budget(1, "team", "search", Decimal("2"), None, True)
    tracker.load([search], lambda b, d, m: key_spend({1, 2}, d, m), now, {1: "search", 2: "search"}, key_spend)
    tracker.record(1, None, None, Decimal("1.00"), now)  # counted, not yet stored
    tracker.load([search], lambda b, d, m: key_spend({1, 3}, d, m), now, {1: "search", 3: "search"}, key_spend)
    assert tracker.blocked(1, None, None, now) is None  # 0.25 + 1.00 + 0.125 (3 came) of $2
    tracker.record(3, None, None, Decimal("0.625"), now)
    assert tracker.blocked(1, None, None, now).spent == Decimal("2.000")
    assert tracker.blocked(2, None, None, now) is None  # key 2 left with its 0.50


def test_who_may_see_a_budget_is_the_key_every_call_of_it_belongs_to():
    assert Budget(1, "customer", "acme", None, None, False, key_id=3).owned_by(3)
    assert not Budget(1, "customer", "acme", None, None, False, key_id=3).owned_by(4)
    assert not Budget(1, "customer", "acme", None, None, False).owned_by(3)  # every key's acme
    assert Budget(1, "key", "3", None, None, False).owned_by(3)
    assert not Budget(1, "key", "3", None, None, False).owned_by(4)
    assert not Budget(1, "all", None, None, None, False).owned_by(3)
    assert not Budget(1, "key", "3", None, None, False).owned_by(None)


def test_in_shared_mode_the_spend_not_yet_sent_is_kept_until_it_is_and_added_to_the_totals():
    tracker = BudgetTracker(UTC)
    tracker.shared = True
    now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
    tracker.load([Budget(1, "all", None, Decimal("3"), Decimal("10"), True),
                  Budget(2, "feature", "chat", None, None, False)], lambda b, d, m: (Decimal(0), Decimal(0)), now)
    tracker.record(1, None, None, Decimal("0.5"), now)
    tracker.record(1, None, "chat", Decimal("0.25"), now)
    taken, day, month = tracker.take_unsynced(now)
    assert taken == {1: (Decimal("0.75"), Decimal("0.75")), 2: (Decimal("0.25"), Decimal("0.25"))}
    assert (day, month) == (dt.datetime(2026, 11, 25, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    assert tracker.take_unsynced(now)[0] == {}
    tracker.give_back(taken)  # the shared store could not be reached
    tracker.record(1, None, None, Decimal("1"), now)
    tracker.set_spend({1: (Decimal("1"), Decimal("8")), 9: (Decimal("5"), Decimal("5"))}, day)
    assert tracker.blocked(1, None, None, now) is None  # every replica's 1 and 8, plus the 1.75 not yet sent
    tracker.record(1, None, None, Decimal("0.25"), now)
    refusal = tracker.blocked(1, None, None, now)
    assert (refusal.period, refusal.spent) == ("monthly", Decimal("10.00"))
    assert tracker.take_unsynced(now)[0] == {1: (Decimal("2.00"), Decimal("2.00")),
                                             2: (Decimal("0.25"), Decimal("0.25"))}
    tracker.set_spend({1: (Decimal(0), Decimal(0))}, day - dt.timedelta(days=1))  # an older day: ignored
    assert tracker.blocked(1, None, None, now).spent == Decimal("10.00")


def test_a_cost_counts_in_the_day_and_month_its_row_is_dated_in_alone_and_on_replicas():
    """A batch's usage that ran yesterday, downloaded today: this month's, not today's (as its stored
    rows count it after a restart); last month's: no budget of now counts it."""
    now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
    for shared in (False, True):
        tracker = BudgetTracker(UTC)
        tracker.shared = shared
        tracker.load([Budget(1, "all", None, Decimal("1"), Decimal("5"), True)],
                     lambda b, d, m: (Decimal(0), Decimal(0)), now)
        tracker.record(1, None, None, Decimal("0.5"), now, now - dt.timedelta(days=1))
        tracker.record(1, None, None, Decimal("9"), now, dt.datetime(2026, 10, 31, 23, 59, tzinfo=dt.UTC))
        tracker.record(1, None, None, Decimal("0.25"), now, now)
        tracker.record(1, None, None, Decimal("0.125"), now)  # undated: now's
        tracker.set_spend({}, tracker.periods(now)[0])
        assert tracker.blocked(1, None, None, now) is None
        tracker.record(1, None, None, Decimal("4.125"), now, now - dt.timedelta(days=2))
        refusal = tracker.blocked(1, None, None, now)
        assert (refusal.period, refusal.spent) == ("monthly", Decimal("5.000")), shared
        assert tracker.take_unsynced(now)[0] == ({1: (Decimal("0.375"), Decimal("5.000"))} if shared else {})


def test_only_the_calls_a_blocking_budget_covers_wait_for_its_check_and_replicas_totals_add_what_is_unsent():
    tracker = BudgetTracker(UTC)
    tracker.shared = True
    now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
    day = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    tracker.load([Budget(1, "customer", "acme", Decimal("1"), None, True, key_id=3),
                  Budget(2, "feature", "chat", Decimal("1"), None, True, key_id=3)],
                 lambda b, d, m: (Decimal(0), Decimal(0)), now)
    assert tracker.any_blocking(3, "acme", None) and tracker.any_blocking(3, None, "chat")
    assert not tracker.any_blocking(4, "acme", "chat") and not tracker.any_blocking(3, "globex", "search")
    tracker.set_spend({1: (Decimal("0.5"), Decimal("0.5"))}, day)  # nothing unsent here
    assert tracker.blocked(3, "acme", None, now) is None
    tracker.record(3, "acme", None, Decimal("0.5"), now)
    tracker.set_spend({1: (Decimal("0.5"), Decimal("0.5"))}, day)  # the others' 0.5 and our unsent 0.5
    assert tracker.blocked(3, "acme", None, now).spent == Decimal("1.0")
    taken, _, _ = tracker.take_unsynced(now)
    tracker.record(3, "acme", None, Decimal("0.25"), now)
    tracker.give_back(taken)
    assert tracker.take_unsynced(now)[0] == {1: (Decimal("0.75"), Decimal("0.75"))}


def test_the_api_shows_each_key_its_own_budgets_spend_by_day_and_month_and_the_admin_all(migrated_home):
    """In-process (the mutation selection's): who sees which budget in /api/v1/budgets, with the
    spend of today and of this month in the quota zone, a call at either start counted in it."""
    from addon.core import config
    from web import create_app
    home = migrated_home
    one, two = (json.loads(run_cli(home, "keys", "create", "--name", n, "--json")) for n in ("one", "two"))
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    for scope, key in (("customer:acme", ("--key", str(one["id"]))), ("customer:acme", ("--all-keys",)),
                       (f"key:{two['id']}", ()), ("all", ())):
        run_cli(home, "budgets", "set", "--scope", scope, *key, "--daily", "7", "--monthly", "70")
    calendar = LocalCalendar.past_the_first(dt.datetime.now(dt.UTC))
    before_the_month = calendar.month_start - dt.timedelta(microseconds=1)
    with writing(db_path(home)) as con:
        config.set_quota_zone(con, calendar.zone)
        call_rows.insert(con, [
            call_row(1, ts=calendar.day_start, key_id=one["id"], customer_id="acme", cost_usd=Decimal("1")),
            call_row(2, ts=calendar.month_start, key_id=one["id"], customer_id="acme", cost_usd=Decimal("2")),
            call_row(3, ts=before_the_month, key_id=one["id"], customer_id="acme", cost_usd=Decimal("4")),
            call_row(4, ts=calendar.day_start, key_id=two["id"], customer_id="acme", cost_usd=Decimal("8")),
            call_row(5, ts=calendar.month_start, key_id=two["id"], customer_id="globex", cost_usd=Decimal("16"))])
    client = create_app(home).test_client()

    def shown(secret: str) -> list[tuple]:
        answer = client.get("/api/v1/budgets", headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code == 200 and all(b["tz"] == calendar.zone for b in answer.get_json())
        return sorted(((b["scope"], b["scope_value"], b["key_id"], b["spent_today_usd"], b["spent_this_month_usd"])
                       for b in answer.get_json()), key=repr)

    every_key_acme = ("customer", "acme", None, 9, 11)
    assert shown(admin) == sorted([("all", None, None, 9, 27), every_key_acme, ("customer", "acme", one["id"], 1, 3),
                                   ("key", str(two["id"]), None, 8, 24)], key=repr)
    assert shown(one["key"]) == [("all", None, None, None, None), ("customer", "acme", one["id"], 1, 3)]
    assert shown(two["key"]) == [("all", None, None, None, None), ("key", str(two["id"]), None, 8, 24)]
    run_cli(home, "keys", "revoke", str(two["id"]))
    refused = client.get("/api/v1/budgets", headers={"Authorization": f"Bearer {two['key']}"})
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "unauthorized"


def test_calls_without_a_price_are_named_beside_a_budgets_spend_never_read_as_free(migrated_home):
    """A budget's spend is what is known; the calls of unknown cost in its scope are said beside it
    (CLI, JSON and API), where $0.00 of $10.00 read as nothing spent."""
    from addon.core import config
    from web import create_app
    home = migrated_home
    key = json.loads(run_cli(home, "keys", "create", "--name", "k", "--json"))
    run_cli(home, "budgets", "set", "--scope", "customer:acme", "--key", str(key["id"]), "--daily", "10",
            "--monthly", "100")
    calendar = LocalCalendar.past_the_first(dt.datetime.now(dt.UTC))
    with writing(db_path(home)) as con:
        config.set_quota_zone(con, calendar.zone)
        call_rows.insert(con, [
            call_row(1, ts=calendar.day_start, key_id=key["id"], customer_id="acme", cost_usd=Decimal("1")),
            *(call_row(i, ts=calendar.day_start, key_id=key["id"], customer_id="acme", cost_usd=None, priced=False)
              for i in (2, 3)),
            call_row(4, ts=calendar.month_start, key_id=key["id"], customer_id="acme", cost_usd=None, priced=False),
            call_row(5, ts=calendar.day_start, key_id=key["id"], customer_id="other", cost_usd=None, priced=False)])
    [listed] = json.loads(run_cli(home, "budgets", "list", "--json"))
    assert (listed["spent_today_usd"], listed["unpriced_calls_today"]) == (1, 2)
    assert (listed["spent_this_month_usd"], listed["unpriced_calls_this_month"]) == (1, 3)
    row = run_cli(home, "budgets", "list").splitlines()[-1]
    assert "$1.00 + 2 unpriced of $10.00 (10%)" in row and "$1.00 + 3 unpriced of $100.00 (1.0%)" in row
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    [shown] = create_app(home).test_client().get("/api/v1/budgets",
                                                 headers={"Authorization": f"Bearer {admin}"}).get_json()
    assert (shown["unpriced_calls_today"], shown["unpriced_calls_this_month"]) == (2, 3)


@pytest.mark.parametrize("scope", ["customer:evil\r\nBcc: x", "feature:" + "f" * 129, "customer:a\x1b[2Jb"])
def test_a_budget_cannot_name_a_customer_or_feature_the_proxy_would_refuse(tmp_path, scope):
    """The proxy takes 1 to 128 printable characters in x-customer-id and x-feature: a budget over
    any other counted no call, and its newline broke the `budgets list` table."""
    from click.testing import CliRunner

    from cli.main import cli
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "budgets", "set", "--scope", scope, "--all-keys",
                                      "--daily", "5"])
    assert result.exit_code == 2 and "1 to 128 printable characters" in result.output, result.output
