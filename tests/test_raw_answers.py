"""A report over few calls scans their raw rows (reports.RAW_SCAN_MAX), where none was purged
(store/raw_horizon.py): the same counts and costs as the rollups, percentiles exact."""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import replace
from decimal import Decimal

import duckdb
import pytest

from addon.core import home as home_dir
from addon.core.reports import parse_report
from addon.core.store import calls as call_rows
from addon.core.store import lifecycle, migrations, raw_horizon, rollups, writing
from addon.core.store import reports as report_rows

from .helpers import call_row, migrated_before, migrations_from, read_rollups, run_cli
from .test_rollups import EXACT_METRICS, START, assert_coarse_tiers_right, random_call


def spread_latencies(n: int, rng: random.Random, start: dt.datetime = START) -> list[dict]:
    return [random_call(rng, start, 6 * 3600) | {"latency_ms": round(10 ** rng.uniform(0, 5), 3), "key_id": 1,
                                                  "model": "gpt-4o", "status": 200, "outcome": "completed"}
            for _ in range(n)]


def test_few_calls_give_exact_percentiles_and_many_read_the_rollups(tmp_path, monkeypatch):
    rows = spread_latencies(2000, random.Random(11))
    spec = parse_report(["model"], now=START + dt.timedelta(days=1))
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, rows)
        ([few], few_total), ([exact], exact_total) = report_rows.report(con, spec), report_rows.report(con, spec, True)
        monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", 1999)  # one call too many: the rollups
        ([many], many_total) = report_rows.report(con, spec)
    assert few == exact and few_total == exact_total
    assert {k: many[k] for k in EXACT_METRICS} == {k: exact[k] for k in EXACT_METRICS}
    assert many["calls"] == 2000
    for name in ("p50_latency_ms", "p95_latency_ms"):  # the histogram's: close, not equal
        assert many[name] != exact[name]
        assert abs(many[name] - exact[name]) <= 0.0099 * exact[name] + 0.001


def test_a_filter_for_few_calls_in_a_range_of_many_reads_the_rollups(tmp_path, monkeypatch):
    # A scan of one customer's calls reads every call of the range (the filter skips none): what is
    # few is the range's calls, not the customer's.
    rows = spread_latencies(2000, random.Random(13))
    for i, row in enumerate(rows):
        row["customer_id"] = "rare" if i % 20 == 0 else "common"
    spec = parse_report(["model"], now=START + dt.timedelta(days=1), customer="rare")
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, rows)
        exact = report_rows.total(con, spec, True)
        monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", 2000)  # the range's 2,000 calls: a raw scan
        scanned = report_rows.total(con, spec)
        monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", 1999)  # 100 of the customer's, but 2,000 to read
        summed = report_rows.total(con, spec)  # the customers' weekly tier, its histograms
    assert scanned == exact and exact["calls"] == 100
    assert {k: summed[k] for k in EXACT_METRICS} == {k: exact[k] for k in EXACT_METRICS}
    for name in ("p50_latency_ms", "p95_latency_ms"):
        assert summed[name] != exact[name]
        assert abs(summed[name] - exact[name]) <= 0.0099 * exact[name] + 0.001


def test_the_total_alone_is_the_reports_total_from_raw_rows_and_rollups(tmp_path, monkeypatch):
    rows = spread_latencies(300, random.Random(12))
    for i, row in enumerate(rows):
        row.update(model=("gpt-4o", "claude")[i % 2], proxy_us=100 + i)
    spec = parse_report(["model"], now=START + dt.timedelta(days=1))
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, rows)
        for most in (report_rows.RAW_SCAN_MAX, 0):
            monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", most)
            _, want = report_rows.report(con, spec)
            assert {"model": None, **report_rows.total(con, spec)} == want  # the same, without groups to name
            assert (want["calls"], want["model"]) == (300, None)
            if most:  # a raw scan: exact
                assert (want["p50_proxy_us"], want["p99_proxy_us"]) == (250, 396)
            else:  # the rollups' histograms of proxy_us: within 0.99%, rounded to the µs
                assert want["p50_proxy_us"] == pytest.approx(250, rel=rollups.RELATIVE_ERROR, abs=1)
                assert want["p99_proxy_us"] == pytest.approx(396, rel=rollups.RELATIVE_ERROR, abs=1)


def test_a_purge_sends_reports_over_its_range_to_the_rollups(tmp_path):
    # Few calls, some purged: a raw scan would miss those, so reports that reach before the purge's
    # cutoff read the rollups; a range after it scans the raw rows left.
    home = tmp_path / "home"
    key = json.loads(run_cli(home, "keys", "create", "--name", "f", "--plan", "free", "--json"))["id"]
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(3)
    tags = {"key_id": key, "priced": True, "customer_id": "acme"}
    old = [random_call(rng, now - dt.timedelta(days=20), 3600) | tags | {"cost_usd": Decimal("1.5")} for _ in range(5)]
    new = [random_call(rng, now - dt.timedelta(hours=3), 3600) | tags | {"cost_usd": Decimal("0.25")} for _ in range(3)]
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, old + new)
        assert raw_horizon.since(con) == raw_horizon.EVER
    run_cli(home, "purge")  # the free plan keeps 7 days of raw calls
    with writing(home_dir.db_path(home)) as con:
        horizon = raw_horizon.since(con)
    assert now - dt.timedelta(days=7, hours=1) <= horizon <= now - dt.timedelta(days=7) + dt.timedelta(hours=1)

    def report(*extra: str) -> tuple[int, float]:
        [row] = json.loads(run_cli(home, "report", "--by", "customer", "--format", "json", *extra))
        return row["calls"], row["cost_usd"]
    assert report() == (8, 8.25)
    assert report("--since", "30d") == (8, 8.25)
    assert report("--since", "1d") == (3, 0.75)
    assert report("--exact") == (3, 0.75)


def test_the_horizon_never_moves_back_nor_for_a_purge_that_deleted_nothing(tmp_path):
    at = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, spread_latencies(3, random.Random(1), at))
        lifecycle.purge(con, {1: at - dt.timedelta(days=1)}, at)  # older than every call: nothing goes
        assert raw_horizon.since(con) == raw_horizon.EVER
        lifecycle.purge(con, {1: at + dt.timedelta(days=1)}, at)
        assert raw_horizon.since(con) == at + dt.timedelta(days=1)
        raw_horizon.move(con, at, at)
        assert raw_horizon.since(con) == at + dt.timedelta(days=1)


def test_rollups_past_the_history_part_from_raw_rows_kept_forever(tmp_path):
    at = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    later = at + dt.timedelta(days=lifecycle.HISTORY_DAYS + 4, hours=5, minutes=20)
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, spread_latencies(3, random.Random(1), at))
        # No raw call is due (a key kept forever); the rollups before the history cutoff's week (which
        # starts on Thursday 4 June) go, 1 June's with them.
        lifecycle.purge(con, {}, later)
        assert raw_horizon.since(con) == dt.datetime(2026, 6, 4, tzinfo=dt.UTC)


def test_the_migration_finds_where_an_earlier_purge_left_raw_rows_and_rollups_apart(tmp_path, monkeypatch):
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    migrated_before(con, migrations.m030_raw_horizon)
    rows = spread_latencies(40, random.Random(5), dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
    rows += spread_latencies(40, random.Random(6), dt.datetime(2026, 2, 9, tzinfo=dt.UTC))
    with monkeypatch.context() as older:  # the version before had no weekly tiers
        older.setattr(rollups, "TIERS", rollups.BEFORE_NARROW)
        call_rows.insert(con, rows)
    # What a purge before this version left: raw rows gone, their sums kept.
    cutoff = dt.datetime(2026, 2, 1, 3, tzinfo=dt.UTC)
    (purged,) = con.execute("SELECT count(*) FROM calls WHERE ts < ?", [cutoff]).fetchone()
    con.execute("DELETE FROM calls WHERE ts < ?", [cutoff])
    (newest_purged,) = con.execute("SELECT max(bucket) FROM rollups WHERE bucket < ?", [cutoff]).fetchone()
    migrations.apply_pending(con)
    assert raw_horizon.since(con) == newest_purged + dt.timedelta(hours=1)
    spec = parse_report(["model"], now=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    [group], _ = report_rows.report(con, spec)
    assert purged > 0 and group["calls"] == 80  # the purged calls too, from the rollups
    con.close()


def test_a_file_whose_raw_rows_and_rollups_agree_keeps_no_horizon(tmp_path, monkeypatch):
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    migrated_before(con, migrations.m030_raw_horizon)
    with monkeypatch.context() as older:  # the version before had no weekly tiers
        older.setattr(rollups, "TIERS", rollups.BEFORE_NARROW)
        call_rows.insert(con, spread_latencies(40, random.Random(5)))
    migrations.apply_pending(con)
    assert raw_horizon.since(con) == raw_horizon.EVER
    con.close()


@pytest.mark.parametrize("why", ["few calls", "in place of the 15-minute tier"])
def test_a_purge_committed_during_a_raw_scan_sends_the_report_to_the_rollups(tmp_path, monkeypatch, why):
    # The report reads the horizon, then a purge commits (the proxy's daily one, on another cursor),
    # then the raw scan runs: it would miss the purged calls, so the report reads the rollups.
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    real_since = raw_horizon.since
    by = ["model"]
    if why != "few calls":
        monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", 0)
        by = ["model", "hour"]  # with a customer's calls: only the 15-minute tier names both
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, [call_row(i, ts=now - dt.timedelta(hours=hours, minutes=i), customer_id="c",
                                        feature=f"f{hours}-{i}")  # a 15-minute row each
                               for hours, n in ((20 * 24, 5), (2, 3)) for i in range(n)])

        def since_then_purge(c):
            found = real_since(c)
            monkeypatch.setattr(raw_horizon, "since", real_since)
            lifecycle.purge(con, {1: now - dt.timedelta(days=7)}, now)
            return found
        spec = parse_report(by, now=now, customer="c")
        if why != "few calls":
            assert report_rows._source(con, spec)[2] is rollups.FINE and report_rows._fine_is_sparse(con)
        monkeypatch.setattr(raw_horizon, "since", since_then_purge)
        groups, total = report_rows.report(con, spec)
        assert (sum(g["calls"] for g in groups), total["calls"]) == (8, 8)
        assert report_rows.report(con, spec, exact=True)[1]["calls"] == 3


def test_the_total_of_a_report_by_customer_is_the_report_without_groups(tmp_path, monkeypatch):
    # The groups' percentiles are exact (the customers' tier reads raw rows); the total's are those
    # of the report without groups (the features' tier's histograms), wherever it is read.
    rows = spread_latencies(400, random.Random(13))
    for i, row in enumerate(rows):
        row["customer_id"] = f"c{i % 7}"
    spec = parse_report(["customer"], now=START + dt.timedelta(days=1))
    read_rollups(monkeypatch)  # the rollups, not a raw scan of few calls
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, rows)
        groups, want = report_rows.report(con, spec)
        exact_groups, exact = report_rows.report(con, spec, exact=True)
        assert {"customer_id": None, **report_rows.total(con, spec)} == want
        _, alone = report_rows.report(con, replace(spec, by=()))
    assert groups == exact_groups
    for name in ("p50_latency_ms", "p95_latency_ms"):
        assert want[name] == alone[name] == pytest.approx(exact[name], rel=rollups.RELATIVE_ERROR)
        assert want[name] != exact[name]




def test_one_customers_total_comes_from_the_customers_weekly_histograms(tmp_path, monkeypatch):
    # One group: a row per week of the customers' tier, not a scan of every raw call for its rows.
    rows = spread_latencies(400, random.Random(17))
    for i, row in enumerate(rows):
        row["customer_id"] = f"c{i % 3}"
    spec = parse_report(["model"], customer="c1", now=START + dt.timedelta(days=1))
    read_rollups(monkeypatch)
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, rows)
        assert report_rows._source(con, replace(spec, by=()))[2] is rollups.CUSTOMERS
        alone = report_rows.total(con, spec)
        exact = report_rows.total(con, spec, exact=True)
        ([by_customer], _) = report_rows.report(con, replace(spec, by=("customer",)))
    calls = len([r for r in rows if r["customer_id"] == "c1"])
    assert alone["calls"] == exact["calls"] == by_customer["calls"] == calls
    for name in ("p50_latency_ms", "p95_latency_ms"):
        assert alone[name] == pytest.approx(exact[name], rel=rollups.RELATIVE_ERROR)
        assert alone[name] != exact[name]  # from the histograms
        assert by_customer[name] == exact[name]  # a report by customer, every group: from the raw rows


def test_rollups_summed_before_the_proxy_histograms_send_totals_to_the_raw_calls_proxy_us(tmp_path, monkeypatch):
    # A file as the version before m032 left it: rollups without a proxy_us histogram, and the first
    # six hours' calls purged (their sums only in the rollups, their proxy_us gone).
    from .test_report_ranges import interpolated
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    migrated_before(con, migrations.m032_proxy_histograms)
    rng = random.Random(32)
    day = dt.timedelta(days=1)
    rows = [r | {"proxy_us": rng.randrange(100, 5000)} for r in spread_latencies(300, rng)
            + spread_latencies(300, rng, START + dt.timedelta(hours=6))]
    with monkeypatch.context() as older:
        older.setattr(rollups, "TIERS", rollups.BEFORE_TOTALS)
        call_rows.insert(con, rows)
    for tier in rollups.BEFORE_TOTALS:
        con.execute(f"ALTER TABLE {tier.table} DROP COLUMN proxy")
    cutoff = START + dt.timedelta(hours=6)
    con.execute("DELETE FROM calls WHERE ts < ?", [cutoff])
    assert migrations.apply_pending(con) == migrations_from(migrations.m032_proxy_histograms)
    read_rollups(monkeypatch)

    def added(since: dt.datetime) -> tuple:
        _, total = report_rows.report(con, parse_report(["model"], since=since.isoformat(), now=START + 3 * day))
        return total["calls"], total["p50_proxy_us"], total["p99_proxy_us"]

    kept = [r["proxy_us"] for r in rows if r["ts"] >= cutoff]  # the only proxy_us left
    # Rows summed before: the raw calls' proxy_us, exact (the purged calls' sums still counted).
    assert added(START) == (600, round(interpolated(kept, 0.5)), round(interpolated(kept, 0.99)))
    later = [r | {"proxy_us": rng.randrange(100, 5000)} for r in spread_latencies(300, rng, START + 2 * day)]
    call_rows.insert(con, later)
    calls, p50, p99 = added(START + 2 * day)  # rows summed since: their histograms, within 0.99%
    new = [r["proxy_us"] for r in later]
    assert calls == 300 and (p50, p99) != (round(interpolated(new, 0.5)), round(interpolated(new, 0.99)))
    assert p50 == pytest.approx(interpolated(new, 0.5), rel=rollups.RELATIVE_ERROR, abs=1)
    assert p99 == pytest.approx(interpolated(new, 0.99), rel=rollups.RELATIVE_ERROR, abs=1)
    assert added(START)[1:] == (round(interpolated(kept + new, 0.5)), round(interpolated(kept + new, 0.99)))
    assert_coarse_tiers_right(con, raw=False)
    con.close()


def _customers_hours(con) -> list[dict]:
    """Calls of 3 customers, each of its own feature: the 15-minute tier holds a row per call, as
    with many customers (reports._fine_is_sparse)."""
    rows = spread_latencies(600, random.Random(23))
    for i, row in enumerate(rows):
        row.update(customer_id=f"c{i % 3}", feature=f"f{i}")
    call_rows.insert(con, rows)
    assert report_rows._fine_is_sparse(con)
    return rows


def test_a_report_the_15_minute_tier_would_answer_scans_the_raw_calls_and_keeps_its_total(tmp_path, monkeypatch):
    # One customer's hours: only the 15-minute tier names both, a row per call here, and the groups'
    # percentiles come from the raw calls anyway, so the calls are scanned once instead, many as they
    # are. The same groups as --exact; the total line's percentiles are still the report's without
    # groups (the customers' weekly histograms), as with the tier read.
    monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", 0)  # not few calls: the scan is for the tier
    spec = parse_report(["hour"], customer="c1", now=START + dt.timedelta(days=1))
    with writing(tmp_path / "a.duckdb") as con:
        _customers_hours(con)
        assert report_rows._source(con, spec)[2] is rollups.FINE
        scanned, scanned_total = report_rows.report(con, spec)
        exact, exact_total = report_rows.report(con, spec, exact=True)
        alone = report_rows.total(con, spec)
        read_rollups(monkeypatch)
        summed, summed_total = report_rows.report(con, spec)
    assert scanned == exact == summed and sum(g["calls"] for g in scanned) == 200 and len(scanned) == 6
    assert scanned_total == summed_total == {"hour": None, **alone, "share": 1.0}
    assert {k: scanned_total[k] for k in EXACT_METRICS} == {k: exact_total[k] for k in EXACT_METRICS}
    for name in ("p50_latency_ms", "p95_latency_ms"):
        assert scanned_total[name] == pytest.approx(exact_total[name], rel=rollups.RELATIVE_ERROR)
        assert scanned_total[name] != exact_total[name]


def test_one_customers_first_groups_come_from_one_scan_and_many_customers_from_the_tier(tmp_path, monkeypatch):
    # A limit ranks the groups over the tier and reads the raw rows for the shown ones alone: worth
    # it for the costliest of many customers; one customer's few groups are scanned once instead.
    monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", 0)
    ranked = []
    first_groups = report_rows._first_groups
    monkeypatch.setattr(report_rows, "_first_groups", lambda *a, **k: ranked.append(1) or first_groups(*a, **k))
    with writing(tmp_path / "a.duckdb") as con:
        rows = _customers_hours(con)
        ones = parse_report(["feature"], customer="c1", now=START + dt.timedelta(days=1))
        scanned = report_rows.report(con, ones, limit=5)
        assert not ranked
        everyones = parse_report(["feature"], now=START + dt.timedelta(days=1))
        report_rows.report(con, everyones, limit=5)
        assert ranked
        read_rollups(monkeypatch)
        assert report_rows.report(con, ones, limit=5) == scanned
    assert scanned[0].total_groups == sum(r["customer_id"] == "c1" for r in rows) == 200
    assert len(scanned[0]) == 5 and scanned[0].rest["calls"] == 195


def test_a_report_the_15_minute_tier_would_answer_over_purged_calls_reads_the_tier(tmp_path, monkeypatch):
    # The raw calls of the first hours are purged: a scan would miss them, the tier still counts them.
    monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", 0)
    spec = parse_report(["hour"], customer="c1", now=START + dt.timedelta(days=30))
    with writing(tmp_path / "a.duckdb") as con:
        rows = _customers_hours(con)
        lifecycle.purge(con, {1: START + dt.timedelta(hours=3)}, START + dt.timedelta(days=30))
        groups, total = report_rows.report(con, spec)
        kept = report_rows.report(con, spec, exact=True)[1]["calls"]
    want = sum(r["customer_id"] == "c1" for r in rows)
    assert [g["calls"] for g in groups] and total["calls"] == sum(g["calls"] for g in groups) == want == 200
    assert 0 < kept < want  # the raw rows lost some


def test_the_15_minute_tier_is_scanned_around_only_where_it_holds_about_a_row_per_call(tmp_path):
    # 600 calls of 3 customers in 6 hours: about a quarter as many rows of the tier when they share a
    # feature (read it, then the raw latencies), 600 when each has its own (scan the raw calls alone).
    rows = spread_latencies(600, random.Random(29))
    for i, row in enumerate(rows):
        row.update(customer_id=f"c{i % 3}", feature="one")
    with writing(tmp_path / "dense.duckdb") as con:
        call_rows.insert(con, rows)
        assert con.execute("SELECT count(*) FROM rollups").fetchone()[0] < 600 / 2
        assert not report_rows._fine_is_sparse(con)
    with writing(tmp_path / "sparse.duckdb") as con:
        call_rows.insert(con, [row | {"feature": f"f{i}"} for i, row in enumerate(rows)])
        assert report_rows._fine_is_sparse(con)
    with writing(tmp_path / "empty.duckdb") as con:
        assert not report_rows._fine_is_sparse(con)
