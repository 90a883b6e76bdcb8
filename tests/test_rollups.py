"""Rollups (store/rollups.py): reports from 15-minute sums agree with a scan of every raw row.

hypothesis is not installed here: the property test draws its cases from a seeded generator.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import uuid
from dataclasses import replace
from decimal import Decimal

import duckdb
import pytest

from addon.core import home as home_dir
from addon.core.reports import parse_report
from addon.core.store import calls as call_rows
from addon.core.store import config, customer_order, lifecycle, migrations, reading, rollups, writing
from addon.core.store import reports as report_rows

from .helpers import call_row, migrated_before, migrations_from, read_rollups, run_cli

# Half-hour, 45-minute and DST-switching zones: Kolkata +5:30, Kathmandu +5:45, Eucla +8:45,
# Chatham +12:45/+13:45 (switches 2026-04-05), St John's -3:30/-2:30 (2026-03-08), Lord Howe
# +10:30/+11 (a half-hour switch, 2026-04-05), Los Angeles (2026-03-08), Berlin (2026-03-29).
ZONES = ["UTC", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla", "Pacific/Chatham", "America/St_Johns",
         "Australia/Lord_Howe", "America/Los_Angeles", "Europe/Berlin"]
START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SPAN_S = 45 * 86400  # across every switch above
EXACT_METRICS = ("calls", "errors", "unpriced_calls", "unmetered_calls", "estimated_calls", "input_tokens",
                 "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens", "images",
                 "characters", "web_search_requests", "code_executions", "audio_seconds", "cost_usd")


@pytest.fixture(autouse=True)
def rollups_at_any_size(monkeypatch):
    """These tests are about the rollups: read them however few the calls."""
    read_rollups(monkeypatch)


def random_call(rng: random.Random, start: dt.datetime = START, span_s: int = SPAN_S) -> dict:
    status = rng.choice([200, 200, 200, 429, 500, None])
    source = rng.choice(["reported", "reported", "estimated", "partial", "none", "unmetered", "invalid"])
    priced = rng.random() < 0.8
    latency = rng.choice([None, 0.0, round(10 ** rng.uniform(-3, 6), 3), round(rng.uniform(20, 3000), 3)])
    return {"id": uuid.uuid4(), "ts": start + dt.timedelta(microseconds=rng.randrange(span_s * 1_000_000)),
            "key_id": rng.choice([1, 2, 3, None]), "provider": rng.choice(["openai", "anthropic"]),
            "endpoint": "/v1/chat/completions", "model": rng.choice(["gpt-4o", "claude", None]), "stream": False,
            "status": status, "outcome": rng.choice(["completed", "completed", "client_disconnected"]),
            "error": None, "input_tokens": rng.randrange(5000), "cache_read_tokens": rng.randrange(100),
            "cache_write_tokens": rng.randrange(50), "cache_write_1h_tokens": 0,
            "output_tokens": rng.randrange(900), "reasoning_tokens": rng.randrange(30), "web_search_requests": 0,
            "cost_usd": Decimal(rng.randrange(10**9)) / 10**15 if priced else None, "priced": priced,
            "price_source": "test", "usage_source": source,
            "customer_id": rng.choice(["acme", "beta", "x:1", None]), "feature": rng.choice(["chat", None]),
            "latency_ms": latency, "ttft_ms": None, "images": rng.choice([0, 0, 2]),
            "audio_seconds": Decimal(rng.randrange(10_000)) / 1000, "code_executions": rng.choice([0, 1])}


def random_bound(rng: random.Random) -> str | None:
    if rng.random() < 0.25:
        return None
    at = START + dt.timedelta(seconds=rng.randrange(-86400, SPAN_S + 86400))
    if rng.random() < 0.3:
        at = at.replace(minute=rng.choice([0, 15, 30, 45]), second=0)  # on a bucket edge
        if rng.random() < 0.3:
            at = at.replace(hour=0, minute=0)  # on a UTC day's edge
    return at.isoformat()


def assert_same(rolled: tuple[list[dict], dict], exact: tuple[list[dict], dict], label: str) -> None:
    (groups, total), (exact_groups, exact_total) = rolled, exact
    assert len(groups) == len(exact_groups), label
    for row, want in zip([*groups, total], [*exact_groups, exact_total], strict=True):
        assert {k: row[k] for k in EXACT_METRICS} == {k: want[k] for k in EXACT_METRICS}, label
        for name in ("p50_latency_ms", "p95_latency_ms"):
            if want[name] is None:
                assert row[name] is None, label
            else:  # the stated error, and the microsecond both are rounded to
                assert abs(row[name] - want[name]) <= rollups.RELATIVE_ERROR * want[name] + 0.001, (label, name)


def test_reports_from_rollups_match_a_raw_scan_over_random_zones_and_ranges(tmp_path):
    rng = random.Random(28)
    db = tmp_path / "aispendtrack.duckdb"
    with writing(db) as con:
        stored: list[dict] = []
        for _ in range(8):  # several writes: several rollup rows per group, added up by every read
            batch = [random_call(rng) for _ in range(rng.randrange(50, 400))]
            call_rows.insert(con, batch)
            stored += batch
        # A spill replay brings rows already stored and new ones: each is counted once.
        replay = rng.sample(stored, 40) + [random_call(rng) for _ in range(30)]
        call_rows.insert(con, replay, skip_existing=True)
        rollups.compact(con, START + dt.timedelta(days=10), START + dt.timedelta(days=20))
        rollups.compact(con, START + dt.timedelta(days=15), START + dt.timedelta(days=25), rollups.COARSE)
        rollups.compact(con, START + dt.timedelta(days=5), START + dt.timedelta(days=30), rollups.DAILY)
        assert_coarse_tiers_right(con)
        read = {tier.table: 0 for tier in rollups.TIERS}
        for case in range(120):
            by = rng.sample(["model", "provider", "customer", "feature", "key", "day", "hour", "month"],
                            rng.choice([1, 1, 2]))
            since, until = random_bound(rng), random_bound(rng)
            if since and until and since >= until:
                since, until = until, since
            if since == until:
                until = None
            filters = rng.choice([{}, {"customer": "acme"}, {"key": 2}, {"errors": True}, {"status": 429},
                                  {"model": "gpt-4o", "provider": "openai"}, {"feature": "chat"}])
            spec = parse_report(by, since=since, until=until, tz=rng.choice(ZONES), now=START, **filters)
            label = f"case {case}: {by} {since} {until} {filters} {spec.selection.tz}"
            _, _, tier = report_rows._source(con, spec)
            if tier is not None:
                read[tier.table] += 1
            assert_same(report_rows.report(con, spec), report_rows.report(con, spec, exact=True), label)
        (calls,) = con.execute("SELECT sum(calls) FROM rollups").fetchone()
        assert calls == len(stored) + 30
    # Each tier was read, and agreed, in that many cases.
    assert read["rollups"] >= 20 and read["rollups_hourly"] >= 8 and read["rollups_daily"] >= 15, read


def test_a_zone_off_the_quarter_hours_reads_raw_rows(tmp_path):
    # Amsterdam was +0:19:32 before 1937: a local day there does not start on a bucket edge.
    rng = random.Random(5)
    start = dt.datetime(1936, 6, 1, tzinfo=dt.UTC)
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, [random_call(rng, start, 3 * 86400) for _ in range(300)])
        spec = parse_report(["hour"], tz="Europe/Amsterdam", now=start)
        rolled, exact = report_rows.report(con, spec), report_rows.report(con, spec, exact=True)
        whole = report_rows.total(con, spec)
    assert [g["hour"] for g in rolled[0]] == [g["hour"] for g in exact[0]]
    assert rolled[0] == exact[0]  # raw rows: exact percentiles too
    # The total's percentiles are those of the report without groups (the features' weekly tier).
    percentiles = ("p50_latency_ms", "p95_latency_ms")
    assert {k: v for k, v in rolled[1].items() if k not in percentiles} == \
        {k: v for k, v in exact[1].items() if k not in percentiles}
    for name in percentiles:
        assert rolled[1][name] == whole[name] == pytest.approx(exact[1][name], rel=rollups.RELATIVE_ERROR)


def test_percentiles_of_one_bucket_are_within_one_percent(tmp_path):
    # One group, 2,000 latencies from 1 ms to 100 s: the histogram's p50/p95 against quantile_cont's.
    rng = random.Random(7)
    rows = [random_call(rng, START, 600) | {"latency_ms": round(10 ** rng.uniform(0, 5), 3), "key_id": 1,
                                            "customer_id": "acme", "model": "gpt-4o"} for _ in range(2000)]
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, rows)
        by_model, by_customer = parse_report(["model"], now=START), parse_report(["customer"], now=START)
        ([rolled], _), ([exact], _) = report_rows.report(con, by_model), report_rows.report(con, by_model, exact=True)
        ([customer], _) = report_rows.report(con, by_customer)
    for name in ("p50_latency_ms", "p95_latency_ms"):
        assert rolled[name] != exact[name]  # from the daily tier's histogram, not the rows
        assert abs(rolled[name] - exact[name]) <= 0.0099 * exact[name] + 0.001
        assert customer[name] == exact[name]  # the customers' tier's reports take them from the raw rows


def test_purged_calls_stay_in_reports_and_exact_scans_only_raw_rows(tmp_path):
    home = tmp_path / "home"
    key = json.loads(run_cli(home, "keys", "create", "--name", "f", "--plan", "free", "--json"))["id"]
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(3)
    old = [random_call(rng, now - dt.timedelta(days=20), 3600) | {"key_id": key, "customer_id": "acme",
                                                                  "cost_usd": Decimal("1.5"), "priced": True}
           for _ in range(5)]
    new = [random_call(rng, now - dt.timedelta(hours=3), 3600) | {"key_id": key, "customer_id": "acme",
                                                                  "cost_usd": Decimal("0.25"), "priced": True}
           for _ in range(3)]
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, old + new)
    run_cli(home, "purge")

    def report(*extra: str) -> dict:
        [row] = json.loads(run_cli(home, "report", "--by", "customer", "--format", "json", *extra))
        return row
    assert (report()["calls"], report()["cost_usd"]) == (8, 8.25)
    assert (report("--exact")["calls"], report("--exact")["cost_usd"]) == (3, 0.75)


def test_the_migration_keeps_hourly_totals_and_sums_existing_calls(tmp_path):
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    migrated_before(con, migrations.m023_rollups)
    hour = dt.datetime(2026, 1, 5, 10, tzinfo=dt.UTC)
    con.execute("INSERT INTO hourly_usage VALUES (?, 1, 'acme', 'chat', 'openai', 'gpt-4o', 7, 2, 1, 700, 5, 0, "
                "140, 0, 3.5)", [hour])
    con.execute("INSERT INTO calls (id, ts, key_id, provider, endpoint, stream, status, outcome, input_tokens, "
                "cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, "
                "web_search_requests, cost_usd, priced, usage_source, customer_id, latency_ms) VALUES "
                "(uuid(), ?, 1, 'openai', '/v1/chat/completions', false, 200, 'completed', 10, 0, 0, 0, 2, 0, 0, "
                "0.25, true, 'reported', 'acme', 12.5)", [hour + dt.timedelta(days=30, minutes=20)])
    migrations.apply_pending(con)
    rows = con.execute("SELECT bucket, calls, errors, input_tokens, output_tokens, cost_usd, status FROM rollups "
                       "ORDER BY bucket").fetchall()
    assert rows == [(hour, 7, 2, 700, 140, Decimal(3.5), None),
                    (hour + dt.timedelta(days=30, minutes=15), 1, 0, 10, 2, Decimal("0.25"), 200)]
    assert con.execute("SELECT sum(calls), sum(cost_usd) FROM usage_history WHERE customer_id = 'acme'").fetchone() \
        == (8, Decimal("3.75"))
    # The hourly tier (m024) holds the moved totals and the calls alike.
    assert con.execute("SELECT bucket, calls, cost_usd FROM rollups_hourly ORDER BY bucket").fetchall() \
        == [(hour, 7, Decimal(3.5)), (hour + dt.timedelta(days=30), 1, Decimal("0.25"))]
    with pytest.raises(duckdb.CatalogException):
        con.execute("SELECT * FROM hourly_usage")
    con.close()
    with reading(db) as con:  # and the file opens as current
        assert migrations.is_current(con)


def test_calls_whose_usage_is_missing_or_not_believed_are_unpriced_in_every_total_and_after_the_migration(
        tmp_path, monkeypatch):
    """A speech call answered without its usage, or a usage not believed, has no known cost: the
    totals counted it as neither priced nor unpriced, so a report's cost read as complete ($0.25 for
    three calls) and a budget named no unpriced call."""
    home = tmp_path / "home"
    home.mkdir()
    con = duckdb.connect(str(home_dir.db_path(home)))
    migrated_before(con, migrations.m037_unknown_usage_unpriced)
    at = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
    call_rows.insert(con, [
        call_row(1, ts=at, cost_usd=Decimal("0.25")),
        call_row(2, ts=at, cost_usd=None, priced=False, usage_source="none", model="tts-1", input_tokens=0),
        call_row(3, ts=at, cost_usd=None, priced=False, usage_source="invalid", input_tokens=0),
        call_row(4, ts=at, cost_usd=Decimal(0), priced=True, usage_source="none", status=500, outcome="failed",
                 input_tokens=0)])  # a call that failed: nothing billed, a known $0
    for tier in rollups.TIERS:  # as the version before counted them
        con.execute(f"UPDATE {tier.table} SET unpriced_calls = 0")
    migrations.apply_pending(con)
    con.close()
    read_rollups(monkeypatch)  # the rollups m037 summed again, and the raw calls
    for exact in ((), ("--exact",)):
        [total] = json.loads(run_cli(home, "report", "--by", "day", "--since", "2026-11-25", "--until",
                                     "2026-11-26", "--tz", "UTC", "--format", "json", *exact))
        assert (total["calls"], total["unpriced_calls"], Decimal(str(total["cost_usd"]))) == (4, 2, Decimal("0.25"))


@pytest.mark.parametrize(("migration", "column"), [("m038_openai_tools", "image_generation_calls"),
                                                 ("m039_guardrail_checks", "guardrail_checks"),
                                                 ("m040_advisor_calls", "advisor_calls")])
def test_the_migration_counts_a_fee_left_unpriced_in_the_calls_and_every_tier(tmp_path, monkeypatch, migration,
                                                                              column):
    """m038: the images OpenAI's image generation tool made; m039: the calls a Bedrock guardrail
    checked; m040: the times Anthropic's advisor tool consulted another model. Unit columns of the
    calls and of every tier (such calls are unpriced: pricing.UNKNOWN_FEES); the rows before count
    none."""
    home = tmp_path / "home"
    home.mkdir()
    con = duckdb.connect(str(home_dir.db_path(home)))
    migrated_before(con, getattr(migrations, migration))
    at = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
    call_rows.insert(con, [call_row(1, ts=at, customer_id="acme")])
    tables = ["calls", *(tier.table for tier in rollups.TIERS)]
    for table in tables:  # as the version before had them
        con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    assert migrations.apply_pending(con) == migrations_from(getattr(migrations, migration))
    for table in tables:
        assert con.execute(f"SELECT DISTINCT {column} FROM {table}").fetchall() == [(0,)], table
    call_rows.insert(con, [call_row(2, ts=at, customer_id="acme", cost_usd=None, priced=False, **{column: 2})])
    con.close()
    read_rollups(monkeypatch)
    for exact in ((), ("--exact",)):
        [group] = json.loads(run_cli(home, "report", "--by", "customer", "--since", "2026-11-25", "--until",
                                     "2026-11-26", "--tz", "UTC", "--format", "json", *exact))
        assert (group["calls"], group["unpriced_calls"], group[column], group["cost_usd"]) == (2, 1, 2, 0.01), exact


@pytest.mark.parametrize("before", ["m031_tag_rollups", "m035_total_rollups", "m037_unknown_usage_unpriced"])
def test_a_store_from_before_a_unit_column_upgrades_through_the_steps_that_sum_every_column(tmp_path, monkeypatch,
                                                                                            before):
    """m035 (and m031, m037) sum every unit column today's code has, which a store from before m038
    lacks: the upgrade failed ('Referenced column "image_generation_calls" not found') and the file
    could not be opened. unit_columns_first adds the missing ones before any step runs."""
    migration = getattr(migrations, before)
    tiers = {"m031_tag_rollups": rollups.BEFORE_NARROW, "m035_total_rollups": rollups.BEFORE_TOTALS}.get(before,
                                                                                                          rollups.TIERS)
    db = tmp_path / "old.duckdb"
    con, week, calls = _three_weeks_before(db, monkeypatch, migration, tiers, 38)
    added = ("image_generation_calls", "web_search_preview_requests", "guardrail_checks",  # m038's, m039's
             "advisor_calls")  # m040's
    for table in ("calls", *(tier.table for tier in tiers)):
        for column in added:
            con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    applied = migrations.apply_pending(con)
    assert applied == migrations_from(migration)
    for tier in rollups.TIERS:
        assert con.execute(f"SELECT sum(calls), sum(image_generation_calls) FROM {tier.table}").fetchone() == (
            len(calls), 0), tier.table
    con.close()
    with reading(db) as con:
        assert migrations.is_current(con)


def test_the_migration_fills_the_daily_tier_from_the_15_minute_rows(tmp_path, monkeypatch):
    # A file as the version before the daily tier left it: calls over three days in both older
    # tiers, then the first day's calls purged (only the rollups keep them).
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    migrated_before(con, migrations.m029_daily_rollups)
    rng = random.Random(29)
    calls = [random_call(rng, START, 3 * 86400) for _ in range(400)]
    with monkeypatch.context() as older:
        older.setattr(rollups, "TIERS", (rollups.FINE, rollups.COARSE))
        call_rows.insert(con, calls)
    for tier in (rollups.FINE, rollups.COARSE):  # nor had its tiers a histogram of proxy_us
        con.execute(f"ALTER TABLE {tier.table} DROP COLUMN proxy")
    con.execute("DELETE FROM calls WHERE ts < ?", [START + rollups.DAY])
    assert migrations.apply_pending(con)[0] == "m029_daily_rollups"
    days = con.execute("SELECT bucket, sum(calls), sum(cost_usd), sum(input_tokens) FROM rollups_daily "
                       "GROUP BY bucket ORDER BY bucket").fetchall()
    assert days == [(START + n * rollups.DAY, len(on_day), sum(c["cost_usd"] or 0 for c in on_day),
                     sum(c["input_tokens"] for c in on_day))
                    for n in range(3) for on_day in [[c for c in calls if (c["ts"] - START).days == n]]]
    assert_coarse_tiers_right(con, raw=False)
    con.close()
    with reading(db) as con:  # the file opens as current, and a report by key reads the new tier
        assert migrations.is_current(con)
        spec = parse_report(["key"], now=START)
        assert report_rows._source(con, spec)[2] is rollups.DAILY
        assert sum(g["calls"] for g in report_rows.report(con, spec)[0]) == len(calls)


def _three_weeks_before(db, monkeypatch, migration, tiers: tuple[rollups.Tier, ...], seed: int):
    """A file as the version before ``migration`` left it, whose rollups were ``tiers``: 400 calls over
    three weeks, then the first week's calls purged (only the rollups keep them). (A version before
    m032 had no histogram of proxy_us in its tiers either.) Returns (connection, first week, calls)."""
    con = duckdb.connect(str(db))
    migrated_before(con, migration)
    rng = random.Random(seed)
    week = rollups.bucket_start(START, int(rollups.WEEK.total_seconds()))
    calls = [random_call(rng, week, 21 * 86400) for _ in range(400)]
    with monkeypatch.context() as older:
        older.setattr(rollups, "TIERS", tiers)
        call_rows.insert(con, calls)
    if migrations.MIGRATIONS.index(migration) <= migrations.MIGRATIONS.index(migrations.m032_proxy_histograms):
        for tier in tiers:
            con.execute(f"ALTER TABLE {tier.table} DROP COLUMN proxy")
    con.execute("DELETE FROM calls WHERE ts < ?", [week + rollups.WEEK])
    return con, week, calls


def test_the_migration_fills_the_weekly_tiers_from_the_15_minute_rows(tmp_path, monkeypatch):
    # A file as the version before the weekly tiers left it: calls over three weeks, then the first
    # week's calls purged (only the rollups keep them).
    db = tmp_path / "old.duckdb"
    con, week, calls = _three_weeks_before(db, monkeypatch, migrations.m031_tag_rollups, rollups.BEFORE_NARROW, 31)
    assert migrations.apply_pending(con) == migrations_from(migrations.m031_tag_rollups)
    for tier, tag in ((rollups.CUSTOMERS, "customer_id"), (rollups.FEATURES, "feature")):
        groups: dict[tuple, list[dict]] = {}
        for call in calls:
            groups.setdefault((week + (call["ts"] - week).days // 7 * rollups.WEEK, call[tag]), []).append(call)
        costs = {g: [c["cost_usd"] for c in of if c["cost_usd"] is not None] for g, of in groups.items()}
        order = sorted(groups, key=lambda g: (g[0], g[1] is None, g[1] or ""))  # as ORDER BY ALL: NULLs last
        want = [(*g, len(groups[g]), sum(costs[g]) if costs[g] else None, sum(c["input_tokens"] for c in groups[g]))
                for g in order]
        assert len({g[0] for g in groups}) == 3
        assert con.execute(f"SELECT bucket, {tag}, sum(calls), sum(cost_usd), sum(input_tokens) FROM {tier.table} "
                           f"GROUP BY ALL ORDER BY ALL").fetchall() == want, tier.table
    assert_coarse_tiers_right(con, raw=False)
    con.close()
    with reading(db) as con:  # the file opens as current, and a report by customer reads the new tier
        assert migrations.is_current(con)
        spec = parse_report(["customer"], now=START + dt.timedelta(days=30))
        assert report_rows._source(con, spec)[2] is rollups.CUSTOMERS
        assert sum(g["calls"] for g in report_rows.report(con, spec)[0]) == len(calls)


def test_the_migration_fills_the_daily_totals_from_the_models_days(tmp_path, monkeypatch):
    # A file as the version before the daily totals left it: calls over three weeks, then the first
    # week's calls purged (only the rollups keep them): m035 sums the models' days into the totals,
    # and a total over whole weeks, and a report by day, read those.
    db = tmp_path / "old.duckdb"
    con, week, calls = _three_weeks_before(db, monkeypatch, migrations.m035_total_rollups, rollups.BEFORE_TOTALS, 35)
    assert migrations.apply_pending(con) == migrations_from(migrations.m035_total_rollups)
    groups: dict[dt.datetime, list[dict]] = {}
    for call in calls:
        groups.setdefault(rollups.bucket_start(call["ts"], rollups.TOTAL_DAYS.seconds), []).append(call)
    want = [(b, len(groups[b]), sum(c["cost_usd"] for c in groups[b] if c["cost_usd"] is not None),
             sum(c["input_tokens"] for c in groups[b])) for b in sorted(groups)]
    assert len(want) == 21
    assert con.execute(f"SELECT bucket, calls, cost_usd, input_tokens FROM {rollups.TOTAL_DAYS.table} "
                       f"ORDER BY bucket").fetchall() == want
    assert_coarse_tiers_right(con, raw=False)
    con.close()
    with reading(db) as con:
        assert migrations.is_current(con)
        now = week + dt.timedelta(days=30)
        total = replace(parse_report([], now=now, since=week.date().isoformat()), by=())
        assert report_rows._source(con, total)[2] is rollups.TOTAL_DAYS  # not the features' weeks
        assert report_rows.total(con, total)["calls"] == len(calls)
        by_day = parse_report(["day"], now=now, since=week.date().isoformat())
        assert report_rows._source(con, by_day)[2] is rollups.TOTAL_DAYS
        assert sum(g["calls"] for g in report_rows.report(con, by_day)[0]) == len(calls)


def test_reprice_and_erase_keep_the_rollups_right(tmp_path):
    from .helpers import call_row
    home = tmp_path / "home"
    home.mkdir()
    rows = [call_row(1_000_000, model="gpt-5", cost_usd=Decimal("9"), customer_id="acme"),  # a wrong price
            call_row(2_000_000, model="gpt-5", cost_usd=None, priced=False, customer_id="acme"),  # none yet
            call_row(1_000, model="gpt-5", cost_usd=Decimal("0.00125"), customer_id="beta")]  # right already
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, rows)

    def report(*extra: str) -> dict:
        found = json.loads(run_cli(home, "report", "--by", "customer", "--format", "json", *extra))
        return {g["customer_id"]: (g["calls"], g["unpriced_calls"], g["cost_usd"]) for g in found}
    assert report() == report("--exact") == {"acme": (2, 1, 9.0), "beta": (1, 0, 0.00125)}
    run_cli(home, "reprice")
    # gpt-5: $1.25 per million input tokens.
    assert report() == report("--exact") == {"acme": (2, 0, 3.75), "beta": (1, 0, 0.00125)}
    run_cli(home, "gdpr", "delete", "--customer", "acme", "--yes")
    assert report() == report("--exact") == {"beta": (1, 0, 0.00125)}
    with reading(home_dir.db_path(home)) as con:
        for table in ("rollups", "rollups_customers"):
            assert con.execute(f"SELECT count(*) FROM {table} WHERE customer_id = 'acme'").fetchone() == (0,)


def test_each_flush_adds_rows_and_a_closed_bucket_is_merged_to_one_row_per_group(tmp_path):
    # A writer flushing every second for 30 minutes: 1,800 inserts, 3 groups in the first bucket, one
    # in the hourly, daily and weekly feature tiers (no customer, no feature), 3 in the customers'.
    start = dt.datetime(2027, 5, 1, 9, 0, tzinfo=dt.UTC)
    rng = random.Random(11)
    customers_in_open_week = set()  # the customers' groups when the open week was merged at 09:15
    open_week_rows = 0
    with writing(tmp_path / "a.duckdb") as con:
        for second in range(0, 1800, 10):  # every 10 s, to keep the test short: 180 flushes
            rows = [random_call(rng, start + dt.timedelta(seconds=second), 10)
                    | {"key_id": 1, "customer_id": rng.choice(["a", "b", "c"]), "feature": None, "model": "m",
                       "provider": "openai", "status": 200, "outcome": "completed"} for _ in range(3)]
            call_rows.insert(con, rows)
            flushed = {r["customer_id"] for r in rows}
            if second <= 900:  # up to the flush that moved on to 09:15, merged with it
                customers_in_open_week |= flushed
                open_week_rows = len(customers_in_open_week)
            else:
                open_week_rows += len(flushed)
        per_bucket = dict(con.execute("SELECT bucket, count(*) FROM rollups GROUP BY bucket").fetchall())
        open_rows = [con.execute(f"SELECT count(*) FROM {tier.table}").fetchone()[0] for tier in rollups.DERIVED]
        assert_coarse_tiers_right(con)
        for by in (["customer"], ["model"], ["hour"]):  # the 15-minute, daily and hourly tiers
            spec = parse_report(by, tz="UTC", now=start)
            assert_same(report_rows.report(con, spec), report_rows.report(con, spec, exact=True), f"merged {by}")
    assert per_bucket[start] == 3  # the closed bucket: one row per customer
    assert per_bucket[start + rollups.BUCKET] > 3  # the open one: a row per flush and customer
    # The open hour, days and weeks (one group): merged when the 15-minute bucket closed at 09:15, then
    # a row per flush since (90 flushes, the first merged in): not 180. The customers' week: a row
    # per customer of each flush since, ~190 against ~500 unmerged.
    assert [t.table for t in rollups.DERIVED][-1] == rollups.CUSTOMERS.table
    assert open_rows == [90] * (len(rollups.DERIVED) - 1) + [open_week_rows]
    assert open_week_rows < 250


def tier_rows(con, tier: rollups.Tier, source: str | None = None) -> list[tuple]:
    """One row per bucket and group of ``tier`` (key, provider, model, status, failed; or a customer,
    or a feature) of ``source`` (rows of ``tier``'s columns; its table if None), histograms merged:
    what the tier holds, in an order to compare."""
    return sorted(con.execute(rollups.merged(source or f"SELECT * FROM {tier.table}", tier)).fetchall(), key=str)


def assert_coarse_tiers_right(con, raw: bool = True) -> None:
    """The hourly, daily and weekly tiers against the 15-minute rows summed per hour, day and week
    (always) and against raw calls (``raw``: while no call is purged)."""
    for tier in rollups.DERIVED:
        rows = tier_rows(con, tier)
        assert rows, f"an empty {tier.table} proves nothing"
        columns = ", ".join([*tier.dimensions, *rollups.COUNTS, *rollups.SUMS, "cost_usd", *rollups.HISTOGRAMS])
        assert rows == tier_rows(con, tier, f"SELECT to_timestamp(floor(epoch(bucket) / {tier.seconds}) * "
                                            f"{tier.seconds}) AS bucket, {columns} FROM rollups"), tier.table
        if raw:
            assert rows == tier_rows(con, tier, rollups.aggregate("SELECT * FROM calls", tier)), tier.table


def test_the_coarser_tiers_stay_right_through_reprice_erase_and_purge(tmp_path):
    # Reports by model read the models' daily tier, by key the daily one; by hour (UTC) the hourly
    # one; by customer or feature the weekly ones, and the 15-minute one when they also filter by
    # key; --exact the raw rows. All agree while no call is purged, and the tiers after.
    home = tmp_path / "home"
    keys = [json.loads(run_cli(home, "keys", "create", "--name", f"k{n}", "--plan", "free", "--json"))["id"]
            for n in range(2)]
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(29)
    rows = [random_call(rng, start, 6 * 3600) | {"key_id": rng.choice(keys), "model": rng.choice(["gpt-5", "gpt-4o"])}
            for start in (now - dt.timedelta(days=20), now - dt.timedelta(hours=8)) for _ in range(150)]
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, rows)

    def report(by: str, *extra: str) -> tuple[dict, tuple]:
        found = json.loads(run_cli(home, "report", "--by", by, "--format", "json", *extra))
        return ({g[report_rows.dimension_name(by)]: (g["calls"], g["input_tokens"], g["cost_usd"]) for g in found},
                tuple(sum(Decimal(str(g[m] or 0)) for g in found) for m in ("calls", "errors", "output_tokens",
                                                                            "cost_usd")))

    def check(raw: bool) -> None:
        with reading(home_dir.db_path(home)) as con:
            assert_coarse_tiers_right(con, raw)
            tiers = {by: report_rows._source(con, parse_report([by], tz="UTC", now=now))[2]
                     for by in ("model", "hour", "customer", "feature")}
            tiers["customer of a key"] = report_rows._source(con, parse_report(["customer"], now=now,
                                                                               key=keys[0]))[2]
            tiers["key"] = report_rows._source(con, parse_report(["key"], now=now))[2]
        assert tiers == {"model": rollups.MODELS, "key": rollups.DAILY, "hour": rollups.COARSE,
                         "customer": rollups.CUSTOMERS, "feature": rollups.FEATURES, "customer of a key": rollups.FINE}
        totals = {report(by, "--tz", "UTC")[1] for by in ("model", "key", "hour", "customer", "feature")}
        assert len(totals) == 1, totals
        if raw:
            for by in ("model", "key", "hour", "day", "customer", "feature"):
                assert report(by, "--tz", "UTC") == report(by, "--tz", "UTC", "--exact"), by
    check(raw=True)
    before = report("model")[0]
    run_cli(home, "reprice")
    assert report("model")[0] != before  # gpt-5's costs changed, in the daily tier too
    check(raw=True)
    run_cli(home, "gdpr", "delete", "--customer", "acme", "--yes")
    check(raw=True)
    assert report("customer")[0].get("acme") is None
    run_cli(home, "gdpr", "delete", "--key", str(keys[1]), "--yes")
    check(raw=True)
    assert set(report("key")[0]) == {keys[0]}
    kept = report("model")
    run_cli(home, "purge")  # the 20-day-old calls: past the free plan's 7 days
    assert report("model", "--exact")[1][0] < kept[1][0]
    assert report("model") == kept  # purged calls stay in every tier
    check(raw=False)


def test_a_reprice_after_a_purge_keeps_the_purged_calls_of_a_day(tmp_path):
    # The free plan's 7 days cut a UTC day of a key's calls: its day row then sums purged calls and
    # raw ones, and a reprice of the raw ones must leave the purged ones' costs in it.
    from .helpers import call_row
    home = tmp_path / "home"
    key = json.loads(run_cli(home, "keys", "create", "--name", "k", "--plan", "free", "--json"))["id"]
    cut = dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
    rows = [call_row(1_000_000, model="gpt-5", cost_usd=Decimal("9"), key_id=key,
                     ts=cut + dt.timedelta(minutes=minutes)) for minutes in range(-170, 180, 20)]
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, rows)
    run_cli(home, "purge")
    run_cli(home, "reprice")  # gpt-5: $1.25 per million input tokens
    with reading(home_dir.db_path(home)) as con:
        (kept,) = con.execute("SELECT count(*) FROM calls").fetchone()
        assert 0 < kept < len(rows)
        assert_coarse_tiers_right(con, raw=False)
    want = Decimal(9) * (len(rows) - kept) + Decimal("1.25") * kept
    for by in ("model", "hour", "customer"):  # the daily, hourly and 15-minute tiers
        found = json.loads(run_cli(home, "report", "--by", by, "--tz", "UTC", "--format", "json"))
        assert (sum(g["calls"] for g in found), sum(Decimal(str(g["cost_usd"])) for g in found)) \
            == (len(rows), want), by


@pytest.mark.parametrize("mode", ["embedded", "shared"])
def test_the_history_purge_drops_whole_utc_weeks_of_purged_calls_and_keeps_those_kept_raw(tmp_path, mode, request):
    # Calls over six days around the 400-day history cutoff (2026-05-06 15:20), which is cut back to
    # the start of its week (Thursday 2026-04-30, 00:00 UTC): the widest rollup bucket. Keys 1, 2 and
    # none are purged up to that week; key 3 is kept forever, so its calls stay raw, and so do their
    # sums (the reports read only rollups there: they lost key 3's old calls).
    if mode == "shared":
        request.getfixturevalue("shared_env")  # a lake on a throwaway PostgreSQL
    now = dt.datetime(2027, 6, 10, 15, 20, tzinfo=dt.UTC)
    rng = random.Random(400)
    week = dt.datetime(2026, 4, 30, tzinfo=dt.UTC)
    assert week.weekday() == 3 and now - dt.timedelta(days=lifecycle.HISTORY_DAYS) - week < dt.timedelta(days=7)
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, [random_call(rng, week - dt.timedelta(days=3), 6 * 86400) for _ in range(600)])
        if mode == "embedded":  # the owner has put the weeks up to the cutoff's in customer order
            config.put(con, customer_order.SETTING, (week + rollups.WEEK).isoformat(), now)
        order = customer_order.ordered_until(con)
        lifecycle.purge(con, {1: week, 2: week, None: week}, now)
        assert_coarse_tiers_right(con)  # every tier sums exactly the calls still stored
        old = con.execute("SELECT count(*), sum(cost_usd), count(DISTINCT coalesce(key_id, -1)) FROM calls "
                          "WHERE ts < ?", [week]).fetchone()
        sums = {tier.table: con.execute(f"SELECT sum(calls), sum(cost_usd) FROM {tier.table} WHERE bucket < ?",
                                        [week]).fetchone() for tier in rollups.TIERS}
        spec = parse_report(["key"], since="2026-04-01", until="2026-05-10", now=now)
        assert_same(report_rows.report(con, spec), report_rows.report(con, spec, exact=True), "by key")
        # No 15-minute row was appended: the weeks stay in customer order (re-ordering a year of them
        # would follow). The next day's purge finds nothing more to drop and leaves the tiers as they
        # are: the kept rows stay older than the cutoff for good.
        assert customer_order.ordered_until(con) == order
        tiers = {tier.table: tier_rows(con, tier) for tier in rollups.DERIVED}
        _, totals = lifecycle.purge(con, {1: week, 2: week, None: week}, now + dt.timedelta(days=1))
        assert totals["hourly_rows"] == 0 and customer_order.ordered_until(con) == order
        assert {tier.table: tier_rows(con, tier) for tier in rollups.DERIVED} == tiers
    assert 50 < old[0] < 150 and old[2] == 1  # key 3's: only their plans' retention purges raw calls
    assert set(sums.values()) == {old[:2]}  # kept in every tier; the purged keys' days before the week gone


@pytest.mark.parametrize("mode", ["embedded", "shared"])
def test_a_reprice_of_a_late_row_in_a_purged_hour_keeps_the_purged_calls(tmp_path, mode, request):
    """A spill replayed after its hour was purged stores a raw row beside sums of calls gone raw:
    repricing it summed the pair again from its one raw row (1 call, $0.50 in every tier, where 11
    calls and $10.50 were stored)."""
    if mode == "shared":
        request.getfixturevalue("shared_env")
    now = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)
    noon = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, [call_row(i, ts=noon + dt.timedelta(minutes=i), key_id=1, cost_usd=Decimal(1),
                                        customer_id=("acme", "beta")[i % 2], latency_ms=100.0 * (i + 1))
                               for i in range(10)])
        lifecycle.purge(con, {1: dt.datetime(2026, 11, 2, tzinfo=dt.UTC)}, now)
        late = call_row(99, ts=noon + dt.timedelta(minutes=3, seconds=7), key_id=1, cost_usd=None, priced=False,
                        customer_id="acme", latency_ms=5000.0)
        call_rows.insert(con, [late], skip_existing=True)
        report_rows.apply_reprice(con, [(late["id"], Decimal("0.5"), "test", None)])
        for tier in rollups.TIERS:
            found = con.execute(f"SELECT sum(calls), sum(cost_usd), sum(unpriced_calls), "
                                f"sum(list_sum(map_values(latency))) FROM {tier.table}").fetchone()
            assert found == (11, Decimal("10.5"), 0, 11), tier.table
        assert_coarse_tiers_right(con, raw=False)
        spec = parse_report(["customer"], since="2026-11-01", until="2026-11-02", now=now)
        groups, total = report_rows.report(con, spec)
        assert [(g["customer_id"], g["calls"], g["cost_usd"]) for g in groups] == [
            ("acme", 6, Decimal("5.5")), ("beta", 5, Decimal("5"))]
        assert (total["calls"], total["cost_usd"]) == (11, Decimal("10.5"))


def test_calls_without_a_time_in_the_proxy_sum_to_an_empty_histogram_not_a_missing_one(tmp_path):
    # A batch's result rows carry no proxy_us: their rollups say "none", which a total reads from the
    # rollups, where NULL (rows summed before m032) sends it to the raw calls.
    from .helpers import call_row
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, [call_row(1, ts=START, proxy_us=None, customer_id="acme"),
                               call_row(2, ts=START + dt.timedelta(hours=1), proxy_us=700, customer_id="acme")])
        for tier in rollups.TIERS:
            found = con.execute(f"SELECT bucket, proxy FROM {tier.table} ORDER BY bucket").fetchall()
            assert [h for _, h in found] == ([{}, {rollups_bin(700): 1}] if tier.seconds < 7200
                                             else [{rollups_bin(700): 1}]), tier.table


def rollups_bin(value: float) -> int:
    return math.ceil(math.log(value) / math.log(rollups.GROWTH))


def customer_totals(con, customers: tuple[str, ...], **range_) -> dict[str, int]:
    """Each customer's calls, as a report's total line reads them (the weekly tier over whole weeks)."""
    return {c: report_rows.total(con, parse_report([], customer=c, now=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
                                                   **range_))["calls"] for c in customers}


def stored_keys(con) -> dict[str, set]:
    """Per tier naming customers: the (text, key) pairs of its rows, and the key as computed from the text."""
    computed = call_rows.customer_key_sql("customer_id")
    return {tier.table: set(con.execute(f"SELECT customer_id, customer_key, {computed} FROM {tier.table}").fetchall())
            for tier in rollups.TIERS if tier.keyed}


def test_the_tiers_naming_customers_find_them_by_their_key_then_their_text(tmp_path):
    # c19345 and c211544 share a key (md5's low bits modulo 2^31 - 1); a lake's rows summed before
    # s025 hold NULL and are found by their text alone.
    from .helpers import call_row
    customers = ("c19345", "c211544", "other", "none")
    with writing(tmp_path / "a.duckdb") as con:
        for part in (["c19345", "c211544", "other"], ["c19345", "c211544", "c211544"]):  # two flushes
            call_rows.insert(con, [call_row(i, customer_id=c) for i, c in enumerate(part)])
        week = rollups.bucket_start(dt.datetime(2026, 11, 25, tzinfo=dt.UTC), rollups.CUSTOMERS.seconds)
        for tier in (rollups.FINE, rollups.CUSTOMERS):  # a closed bucket's rows merged, as the writer does
            rollups.compact(con, week, week + rollups.WEEK, tier)
        keys = stored_keys(con)
        con.execute("UPDATE rollups_customers SET customer_key = NULL WHERE customer_id = 'c211544'")
        con.execute("UPDATE rollups SET customer_key = NULL WHERE customer_id = 'c19345'")
        weeks = customer_totals(con, customers, since="2026-11-01", until="2026-12-01")
        quarters = customer_totals(con, customers, since="2026-11-25T11:00Z", until="2026-11-25T13:00Z")
        spec = parse_report([], customer="c19345", since="2026-11-01", until="2026-12-01", now=START)
        assert report_rows._source(con, replace(spec, by=()))[2] is rollups.CUSTOMERS
    for table, rows in keys.items():
        assert {(c, k) for c, k, _ in rows} == {(c, want) for c, _, want in rows}, table
        assert {c for c, _, _ in rows} == {"c19345", "c211544", "other"}, table
        assert len({k for c, k, _ in rows if c != "other"}) == 1, table  # the shared key
    assert weeks == quarters == {"c19345": 2, "c211544": 3, "other": 1, "none": 0}


def test_the_migration_gives_the_rows_summed_before_their_customer_key(tmp_path):
    from .helpers import call_row
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, [call_row(i, customer_id=c) for i, c in enumerate(["acme", "acme", None, "beta"])])
        for tier in rollups.TIERS:
            if tier.keyed:
                con.execute(f"ALTER TABLE {tier.table} DROP COLUMN customer_key")
        con.execute("DELETE FROM schema_migrations WHERE name = 'm034_rollup_customer_key'")
        assert migrations.apply_pending(con) == ["m034_rollup_customer_key"]
        keys = stored_keys(con)
        totals = customer_totals(con, ("acme", "beta"), since="2026-11-01", until="2026-12-01")
    assert keys["rollups"] == keys["rollups_customers"] == {(c, k, k) for c, k, _ in keys["rollups"]}
    assert {c for c, k, _ in keys["rollups"] if k == 0} == {None}  # no customer: 0, as in raw calls
    assert totals == {"acme": 2, "beta": 1}


def test_a_merge_of_the_last_bucket_refused_its_turn_is_tried_again_at_the_next_flush(tmp_path, monkeypatch):
    """Each flush merges the rows the flushes left in the bucket before (once per bucket). On the
    shared storage the merge waits for its turn among the replicas' writes, the flush's 0.2 s at
    most; one refused (StoreBusy) was marked done all the same, leaving the bucket a row per flush."""
    from addon.core.store import StoreBusy

    monkeypatch.setattr(rollups, "_settled", set())
    monkeypatch.setattr(rollups, "_quarters", set())
    newest = dt.datetime(2026, 11, 25, 12, 20, tzinfo=dt.UTC)
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, [call_row(n, ts=newest - dt.timedelta(minutes=15), customer_id="acme")
                               for n in range(3)])
        call_rows.insert(con, [call_row(n, ts=newest - dt.timedelta(minutes=15), customer_id="acme")
                               for n in range(3, 6)])
        fine = rollups.bucket_start(newest, rollups.FINE.seconds) - dt.timedelta(seconds=rollups.FINE.seconds)
        rows = con.execute("SELECT count(*) FROM rollups WHERE bucket = ?", [fine]).fetchone()[0]
        merge = rollups._merge_bucket
        refused = []

        def once_refused(con, tier, bucket):
            if tier is rollups.FINE and not refused:
                refused.append(bucket)
                raise StoreBusy("another change to the stored rows is under way")
            merge(con, tier, bucket)

        monkeypatch.setattr(rollups, "_merge_bucket", once_refused)
        with pytest.raises(StoreBusy):
            rollups.compact_previous(con, newest)
        # The coarser tiers' open buckets, merged when a process moves to a new quarter hour, wait too.
        quarter_left = rollups.bucket_start(newest, rollups.FINE.seconds) not in rollups._quarters
        rollups.compact_previous(con, newest)
        merged = con.execute("SELECT count(*) FROM rollups WHERE bucket = ?", [fine]).fetchone()[0]
    assert refused == [fine] and rows == 2 and merged == 1
    assert quarter_left and rollups.bucket_start(newest, rollups.FINE.seconds) in rollups._quarters
