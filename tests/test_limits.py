"""Per-key limits: 429s with the right retry-after, in each SDK's error shape, surviving restarts."""

from __future__ import annotations

import datetime as dt
import json
import math
import zoneinfo

import anthropic
import openai
import pytest

from addon.core import periods
from addon.core.home import db_path
from addon.core.limits import Limiter, Team, team_counts, teams_of_keys
from addon.core.plans import Limits, limits_for
from addon.core.store import calls as call_rows
from addon.core.store import writing

from .helpers import call_row, run_cli, start_proxy, until_admitted

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
LA = zoneinfo.ZoneInfo("America/Los_Angeles")


def test_hourly_window_admits_the_limit_then_refuses_until_the_next_hour(counting):
    limiter = counting(Limiter(zoneinfo.ZoneInfo("UTC")))
    limiter.set_limits({1: Limits(per_hour=2, per_month=None)})
    now = dt.datetime(2026, 11, 25, 10, 59, 30, tzinfo=dt.UTC)
    limiter.seed({}, now)
    assert limiter.admit(1, now) is None and limiter.admit(1, now) is None
    refusal = limiter.admit(1, now)
    assert (refusal.limit, refusal.size, refusal.used) == ("per-hour", 2, 2)
    assert refusal.retry_after(now) == 30
    assert limiter.admit(1, now + dt.timedelta(seconds=31)) is None  # a new hour, a new count
    assert limiter.admit(2, now) is None  # other keys are unaffected


def test_monthly_quota_resets_on_the_first_in_the_configured_zone(counting):
    limiter = counting(Limiter(LA))
    limiter.set_limits({1: limits_for("free", None, 2)})
    # 2026-12-01 07:30 UTC is still November 30th in Los Angeles.
    now = dt.datetime(2026, 12, 1, 7, 30, tzinfo=dt.UTC)
    limiter.seed({1: (0, 0)}, now)
    assert limiter.admit(1, now) is None and limiter.admit(1, now) is None
    refusal = limiter.admit(1, now)
    assert refusal.limit == "per-month"
    assert refusal.resets_at == dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)  # midnight PST
    # December in Los Angeles: a fresh quota of 2, and then a refusal until January 1st, midnight PST.
    december = [dt.datetime(2026, 12, 1, 8, 0, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=m) for m in range(3)]
    assert [limiter.admit(1, at) for at in december[:2]] == [None, None]
    refusal = limiter.admit(1, december[2])
    assert refusal is not None, "a third call in December was admitted over a monthly quota of 2"
    assert (refusal.limit, refusal.size, refusal.used) == ("per-month", 2, 2)
    assert refusal.resets_at == dt.datetime(2027, 1, 1, 8, 0, tzinfo=dt.UTC)


def test_a_new_hour_and_a_new_month_start_at_their_first_instant():
    limiter = Limiter(LA)
    limiter.set_limits({1: Limits(per_hour=1, per_month=None), 2: Limits(per_hour=None, per_month=1)})
    before = dt.datetime(2026, 12, 1, 7, 59, 59, tzinfo=dt.UTC)  # 23:59:59 on November 30th in Los Angeles
    limiter.seed({2: (0, 1)}, before)  # key 2 made its one call of the month before a restart
    hour, month = dt.datetime(2026, 12, 1, 7, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, 7, tzinfo=dt.UTC)
    assert limiter.periods(before) == (hour, month)
    assert limiter.admit(1, before) is None
    assert limiter.admit(1, before).limit == "per-hour" and limiter.admit(2, before).limit == "per-month"
    midnight = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    assert limiter.admit(1, midnight) is None, "refused at the first instant of a new hour"
    assert limiter.admit(2, midnight) is None, "refused at the first instant of a new month"
    assert limiter.periods(midnight) == (midnight, midnight)


def test_a_limiter_counts_in_its_zone_from_the_start_before_any_seed():
    limiter = Limiter(LA)
    limiter.set_limits({1: Limits(per_hour=None, per_month=1)}, {1: Team(7, "research", Limits(None, None))})
    now = dt.datetime.now(dt.UTC)
    this_month = periods.month_start(now, LA)
    assert limiter.periods(now)[1] == this_month
    assert limiter.admit(1, now) is None
    assert limiter.admit(1, now).resets_at == periods.next_month_start(this_month, LA)


def test_counts_from_the_other_replicas_carry_on_locally():
    limiter = Limiter(zoneinfo.ZoneInfo("UTC"))
    limiter.set_limits({1: Limits(per_hour=3, per_month=5), 2: Limits(per_hour=None, per_month=None),
                        4: Limits(per_hour=None, per_month=7), 5: Limits(per_hour=9, per_month=None)})
    now = dt.datetime(2026, 11, 25, 10, 15, tzinfo=dt.UTC)
    limiter.seed({}, now)
    assert limiter.observe(1, 2, 2, now) is None  # 2 of 3 this hour in shared storage: one more is fine
    assert limiter.admit(1, now) is None
    refusal = limiter.admit(1, now)
    assert (refusal.limit, refusal.size, refusal.used) == ("per-hour", 3, 3)
    refusal = limiter.observe(1, 0, 5, now)
    assert (refusal.limit, refusal.size, refusal.used) == ("per-month", 5, 5)
    assert refusal.resets_at == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert limiter.limits_of(1) == Limits(per_hour=3, per_month=5)
    assert limiter.limits_of(2) is None and limiter.limits_of(3) is None  # no limit at all, or no key
    assert limiter.limits_of(4) == Limits(None, 7) and limiter.limits_of(5) == Limits(9, None)
    assert limiter.limited_keys() == [1, 4, 5]
    hour, month = dt.datetime(2026, 11, 25, 10, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert limiter.periods(now) == (hour, month)


RESEARCH = Team(7, "research", Limits(per_hour=3, per_month=None))


def test_a_teams_limit_counts_all_its_keys_and_a_refused_call_counts_in_neither(counting):
    limiter = counting(Limiter(zoneinfo.ZoneInfo("UTC")))
    ops = Team(8, "ops", Limits(per_hour=1, per_month=None))
    limiter.set_limits({1: Limits(per_hour=3, per_month=None), 2: Limits(per_hour=1, per_month=None),
                        3: Limits(None, None), 4: Limits(None, None)}, {1: RESEARCH, 2: RESEARCH, 3: ops})
    now = dt.datetime(2026, 11, 25, 10, 59, 30, tzinfo=dt.UTC)
    limiter.seed({}, now)
    assert limiter.admit(2, now) is None
    own = limiter.admit(2, now)  # key 2's own limit: its own figures, no team named
    assert (own.limit, own.size, own.used, own.team) == ("per-hour", 1, 1, None)
    assert limiter.admit(1, now) is None and limiter.admit(1, now) is None, "key 2's refused call counted"
    refusal = limiter.admit(1, now)
    assert (refusal.limit, refusal.size, refusal.used, refusal.team) == ("per-hour", 3, 3, "research")
    assert refusal.retry_after(now) == 30
    assert limiter.admit(3, now) is None and limiter.admit(4, now) is None  # another team, no team
    assert limiter.admit(3, now).team == "ops"
    # The team's limit raised: key 1's refused call did not count for key 1 either (2 of its 3).
    limiter.set_limits({1: Limits(per_hour=3, per_month=None)}, {1: Team(7, "research", Limits(5, None))})
    assert limiter.admit(1, now) is None
    assert (limiter.admit(1, now).team, limiter.admit(1, now).used) == (None, 3)
    assert limiter.admit(1, now + dt.timedelta(seconds=31)) is None  # a new hour, a new count


def test_a_teams_monthly_limit_starts_from_its_keys_stored_calls_in_the_quota_zone():
    limiter = Limiter(LA)
    team = Team(7, "research", Limits(per_hour=None, per_month=3))
    ops = Team(8, "ops", Limits(per_hour=None, per_month=1))  # no calls stored: starts from 0
    limiter.set_limits({1: Limits(None, None), 2: Limits(None, None), 3: Limits(None, None)},
                       {1: team, 2: team, 3: ops})
    now = dt.datetime(2026, 12, 1, 7, 30, tzinfo=dt.UTC)  # still November 30th in Los Angeles
    counts = {1: (0, 1), 2: (1, 1), 5: (4, 4)}  # key 5 is in no team
    assert team_counts({1: (2, 5), 2: (1, 3), 5: (4, 4)}, {1: 7, 2: 7, 3: 8}) == {7: (3, 8)}
    limiter.seed(counts, now, team_counts(counts, {1: 7, 2: 7}))
    assert limiter.admit(2, now) is None
    refusal = limiter.admit(1, now)
    assert (refusal.limit, refusal.used, refusal.team) == ("per-month", 3, "research")
    assert refusal.resets_at == dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)  # midnight PST
    assert limiter.admit(3, now) is None and limiter.admit(3, now).team == "ops"
    assert limiter.admit(1, dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)) is None  # December: a fresh count


def test_a_key_moved_to_another_team_counts_there_from_the_next_reload():
    limiter = Limiter(zoneinfo.ZoneInfo("UTC"))
    now = dt.datetime(2026, 11, 25, 10, 15, tzinfo=dt.UTC)
    limiter.seed({}, now)
    members = [(1, 7, "research", 2, 9), (2, 7, "research", 2, 9), (3, 8, "ops", None, None)]
    limiter.set_limits({5: Limits(1, None)}, teams_of_keys(members))
    assert limiter.team_of(1) == limiter.team_of(2) == Team(7, "research", Limits(2, 9))
    assert limiter.team_of(3) is None and limiter.team_of(4) is None  # a team without limits, no team
    assert limiter.limited(1) and not limiter.limited(3) and not limiter.limited(4)
    assert limiter.limited(5)  # its own limit, in no team
    assert limiter.limited_teams() == {7: [1, 2]}
    assert limiter.admit(1, now) is None and limiter.admit(3, now) is None and limiter.admit(3, now) is None
    limiter.set_limits({5: Limits(1, None)}, teams_of_keys([(1, 7, "research", 2, None), (3, 7, "research", 2, None)]))
    assert limiter.admit(3, now) is None  # key 3's calls in "ops" did not move with it
    assert limiter.admit(3, now).team == "research"
    assert limiter.admit(2, now) is None, "key 2 left the team but is still counted in it"


def test_a_teams_counts_from_the_other_replicas_carry_on_locally():
    limiter = Limiter(zoneinfo.ZoneInfo("UTC"))
    team = Team(7, "research", Limits(per_hour=4, per_month=6))
    limiter.set_limits({1: Limits(None, None), 2: Limits(None, None), 3: Limits(per_hour=2, per_month=5)},
                       {1: team, 2: team, 3: team})
    now = dt.datetime(2026, 11, 25, 10, 15, tzinfo=dt.UTC)
    limiter.seed({}, now)
    assert limiter.observe(1, 1, 1, now, (3, 3)) is None  # 3 of 4 this hour over the team's keys
    assert limiter.admit(2, now) is None
    refusal = limiter.admit(1, now)
    assert (refusal.limit, refusal.used, refusal.team) == ("per-hour", 4, "research")
    refusal = limiter.observe(2, 0, 0, now, (0, 6))
    assert (refusal.limit, refusal.size, refusal.team) == ("per-month", 6, "research")
    assert limiter.observe(1, 0, 0, now) is None  # the team's count not given: the key's alone decides
    own = limiter.observe(3, 2, 1, now, (0, 0))  # the key's own limit first, with its own figures
    assert (own.limit, own.size, own.used, own.team) == ("per-hour", 2, 2, None)


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
        until_admitted(lambda: restarted.openai().chat.completions.create(**CHAT), 20,
                       "raised limit not applied within 20 s")
    finally:
        restarted.stop()


def _plus14_month(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """(start, end) in UTC of the current month in Etc/GMT-14 (UTC+14, no daylight saving)."""
    local = now + dt.timedelta(hours=14)
    start = dt.datetime(local.year, local.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(local.year + local.month // 12, local.month % 12 + 1, 1, tzinfo=dt.UTC)
    return start - dt.timedelta(hours=14), end - dt.timedelta(hours=14)


def test_the_proxy_counts_the_monthly_quota_in_its_quota_zone(tmp_path, upstream):
    """Calls stored between the start of the month in UTC+14 and in UTC count in one zone's month and
    not in the other's: the proxy, told --quota-tz Etc/GMT-14, must count them as UTC+14 does."""
    home = tmp_path / "home"
    created = json.loads(run_cli(home, "keys", "create", "--name", "zoned", "--json"))
    run_cli(home, "keys", "set-limit", str(created["id"]), "--per-month", "3")
    now = dt.datetime.now(dt.UTC)
    zone_start, zone_end = _plus14_month(now)
    utc_start = dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)
    # Usually UTC+14's month began 14 h before UTC's; in the last 14 h of a UTC month it began after.
    between = min(zone_start, utc_start) + dt.timedelta(minutes=1)
    used_in_zone = 2 if between >= zone_start else 0
    with writing(db_path(home)) as con:
        call_rows.insert(con, [call_row(n, ts=between, key_id=created["id"]) for n in (1, 2)])
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=created["key"],
                        extra_args=("--quota-tz", "Etc/GMT-14"))
    try:
        client = proxy.openai(headers={"x-customer-id": "zoned"})
        for _ in range(3 - used_in_zone):
            client.chat.completions.create(**CHAT)
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(**CHAT)
        assert "3 requests per month" in raised.value.message
        assert f"It resets at {zone_end:%Y-%m-%d %H:%M:%S} UTC" in raised.value.message
        wait = int(raised.value.response.headers["retry-after"])
        assert abs(wait - math.ceil((zone_end - dt.datetime.now(dt.UTC)).total_seconds())) <= 2
        assert len(proxy.rows("zoned", expect=3 - used_in_zone)) == 3 - used_in_zone
    finally:
        proxy.stop()


def test_a_keys_plan_own_limits_and_retention_are_stored_and_a_missing_key_is_named(migrated_home):
    """In-process (the mutation selection's): what `keys set-plan/set-limit/set-retention` store."""
    from click.testing import CliRunner

    from cli.main import cli
    home = migrated_home
    key_id = json.loads(run_cli(home, "keys", "create", "--name", "app", "--json"))["id"]
    other = json.loads(run_cli(home, "keys", "create", "--name", "other", "--json"))["id"]
    assert run_cli(home, "keys", "set-plan", str(key_id), "free") == f"Key {key_id} is on the free plan.\n"
    assert run_cli(home, "keys", "set-limit", str(key_id), "--per-month", "50") == (
        f"Key {key_id}: per hour as its plan says (1,000), 50 per month.\n")
    run_cli(home, "keys", "set-retention", str(key_id), "--days", "3")
    listed = {k["id"]: k for k in json.loads(run_cli(home, "keys", "list", "--json"))}
    assert {n: listed[key_id][n] for n in ("plan", "per_hour_limit", "per_month_limit", "retention_days")} == {
        "plan": "free", "per_hour_limit": None, "per_month_limit": 50, "retention_days": 3}
    assert (listed[other]["plan"], listed[other]["per_month_limit"], listed[other]["retention_days"]) == (
        "enterprise", None, None)
    for args in (("set-plan", "99", "pro"), ("set-limit", "99", "--per-hour", "1"),
                 ("set-retention", "99", "--days", "1"), ("revoke", "99")):
        missing = CliRunner().invoke(cli, ["--home", str(home), "keys", *args])
        assert missing.exit_code == 1 and "No key with id 99; see `aispendtrack keys list`." in missing.output


def test_retry_after_is_when_both_the_key_and_its_team_would_accept_a_call(counting):
    """Key 1's hour and its team's month both used up: the 429 said the key's hour (retry in 30 s),
    when the team's month still refused the call until the 1st."""
    limiter = counting(Limiter(zoneinfo.ZoneInfo("UTC")))
    team = Team(7, "g", Limits(per_hour=None, per_month=4))
    limiter.set_limits({1: Limits(per_hour=2, per_month=None), 2: Limits(per_hour=None, per_month=None)},
                       {1: team, 2: team})
    now = dt.datetime(2026, 11, 25, 10, 59, 30, tzinfo=dt.UTC)
    limiter.seed({}, now)
    assert [limiter.admit(k, now) for k in (1, 1, 2, 2)] == [None] * 4
    refusal = limiter.admit(1, now)
    assert (refusal.limit, refusal.team, refusal.retry_after(now)) == ("per-month", "g", 5 * 86_400 + 13 * 3600 + 30)
    assert limiter.admit(1, now + dt.timedelta(seconds=31)).team == "g"  # the key's new hour: still refused
    # Only the key's own hour used up: its own figures, and its hour.
    other = counting(Limiter(zoneinfo.ZoneInfo("UTC")))
    other.set_limits({1: Limits(per_hour=2, per_month=None)}, {1: Team(8, "h", Limits(per_hour=None, per_month=9))})
    other.seed({}, now)
    assert other.admit(1, now) is None and other.admit(1, now) is None
    refusal = other.admit(1, now)
    assert (refusal.limit, refusal.team, refusal.retry_after(now)) == ("per-hour", None, 30)


def test_asking_whether_a_call_would_be_refused_counts_it_for_neither_the_key_nor_its_team(counting):
    """What a budget's 429 asks (quotas.py: a limit that lasts longer answers): the refusal the next
    call would get, the key's or its team's, without using up any of either."""
    limiter = counting(Limiter(zoneinfo.ZoneInfo("UTC")))
    team = Team(7, "g", Limits(per_hour=None, per_month=3))
    limiter.set_limits({1: Limits(per_hour=2, per_month=None), 2: Limits(per_hour=None, per_month=None)},
                       {1: team, 2: team})
    now = dt.datetime(2026, 11, 25, 10, 59, 30, tzinfo=dt.UTC)
    limiter.seed({}, now)
    for _ in range(4):
        assert limiter.refusing(1, now) is None and limiter.refusing(2, now) is None
    assert [limiter.admit(1, now), limiter.admit(1, now)] == [None, None]  # key 1: 2 of 2; the team: 2 of 3
    own = limiter.refusing(1, now)
    assert (own.limit, own.team, own.used, own.retry_after(now)) == ("per-hour", None, 2, 30)
    assert limiter.refusing(2, now) is None and limiter.admit(2, now) is None  # the team: 3 of 3
    theirs = limiter.refusing(2, now)
    assert (theirs.limit, theirs.team, theirs.used, theirs.size) == ("per-month", "g", 3, 3)
    assert limiter.refusing(1, now) == limiter.admit(1, now) == theirs  # the team's month outlasts the key's hour
    assert limiter.admit(2, now) == theirs and limiter.refusing(2, now) == theirs
