"""Report figures over ranges and zones that cut the rollups' buckets (store/reports.py), on a real
DuckDB file: each range's count, cost and percentiles are worked out by hand below, and every tier
a report may read (the weekly rollups of customers and of features, the daily ones, the hourly
ones, the 15-minute ones, the raw rows) must give them.

In-process and in tests/mutation_selection.txt: the edges of a range are summed from finer tiers
than its whole days and hours, and only a range that cuts a bucket reaches that code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from decimal import Decimal

import pytest

from addon.core.reports import parse_report
from addon.core.store import calls as call_rows
from addon.core.store import lifecycle, rollups, writing
from addon.core.store import reports as report_rows

from .helpers import call_row, read_rollups

DAY = "2026-11-10"
# (UTC time, cost): costs are powers of two, so a total says which calls it holds. Each call's latency
# is ten times its cost in ms, its time in the proxy a hundred times its cost in µs, its input tokens its cost.
CALLS = [("09:50", 1), ("10:05", 2), ("10:12", 4), ("10:20", 8), ("10:47", 16), ("10:55", 32), ("11:10", 64),
         ("11:40", 512), ("12:03", 128), ("12:20", 256)]


def at(hhmm: str, day: str = DAY) -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=dt.UTC)


def rows(calls=CALLS, day: str = DAY, **changes) -> list[dict]:
    return [call_row(cost, ts=at(hhmm, day), cost_usd=Decimal(cost), latency_ms=10.0 * cost, proxy_us=100 * cost,
                     customer_id="acme", feature="chat", **changes) for hhmm, cost in calls]


@pytest.fixture(autouse=True)
def rollups_at_any_size(monkeypatch):
    """These tests are about the rollups: read them however few the calls."""
    read_rollups(monkeypatch)


@pytest.fixture
def con(tmp_path, new_store):
    with writing(new_store(tmp_path / "aispendtrack.duckdb")) as connection:
        call_rows.insert(connection, rows())
        yield connection


def interpolated(values: list[float], p: float) -> float:
    """The percentile as quantile_cont (and a spreadsheet's PERCENTILE) takes it."""
    ordered, rank = sorted(values), (len(values) - 1) * p
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (rank - low) * (ordered[high] - ordered[low]), 3)  # to the µs, as reports


def costs_in(since: str | None, until: str | None) -> list[int]:
    return [c for hhmm, c in CALLS if (since is None or hhmm >= since) and (until is None or hhmm < until)]


# (since, until): ranges across hours whose both ends cut a 15-minute bucket (one cutting its hour
# past the first quarter), one within an hour cutting two buckets, one within a bucket, one on
# bucket edges, one on hour edges, open ends.
RANGES = [("10:05", "12:20"), ("10:20", "12:20"), ("10:10", "10:50"), ("10:01", "10:14"), ("10:15", "10:45"),
          ("10:00", "12:00"), ("10:05", "11:15"), ("10:12", None), (None, "10:12"), ("10:47", "10:55"), (None, None)]


def test_a_range_at_the_calendars_ends_reads_the_rollups_without_an_error(con):
    # The years 1 and 9999 are the bounds a time may take (reports.parse_when): a week's start before
    # 1 Jan 1 (a Monday) and a float of 23:59:59.999999 on 31 Dec 9999 rounded to the year 10000 were
    # tracebacks (an HTML 500 in the API) once a store was too big for a raw scan.
    first, last = "0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00"
    for by, since, until, tz in (([], first, None, "UTC"), ([], first, last, "UTC"), (["day"], first, last, "UTC"),
                                 (["hour"], None, last, "UTC"), ([], "0001-01-01", None, "America/Los_Angeles"),
                                 (["model"], "0001-01-03T00:00:01+00:00", last, "UTC")):
        spec = parse_report(by or ["model"], since=since, until=until, tz=tz, now=at("13:00"))
        spec = spec if by else dataclasses.replace(spec, by=())
        assert report_rows._source(con, spec)[0] is not None, (by, since, until)  # the rollups, not a raw scan
        groups, total = report_rows.report(con, spec)
        assert (total["calls"], total["cost_usd"]) == (len(CALLS), sum(c for _, c in CALLS)), (by, since, until)
        assert sum(g["calls"] for g in groups) == len(CALLS)


def test_a_range_counts_the_calls_inside_it_once_from_every_tier(con, host_zone):
    for since, until in RANGES:
        assert_every_tier_counts(con, since and f"{DAY}T{since}", until and f"{DAY}T{until}",
                                 costs_in(since, until), at("13:00"))


# The tier each report reads: grouped by customer and day it is the 15-minute one (no weekly tier
# holds days, no daily one customers).
TIER_OF = [(("model",), rollups.MODELS), (("key",), rollups.DAILY), (("hour",), rollups.COARSE),
           (("customer",), rollups.CUSTOMERS), (("feature",), rollups.FEATURES), (("customer", "day"), rollups.FINE)]


def assert_every_tier_counts(con, since: str | None, until: str | None, want: list[int], now: dt.datetime) -> None:
    """The calls of costs ``want`` in [since, until), from each tier (TIER_OF) and from the raw rows."""
    for by, tier in TIER_OF:
        spec = parse_report(by, since=since, until=until, now=now)
        assert report_rows._source(con, spec)[2] is tier
        for exact in (False, True):
            label = (since, until, by, exact)
            groups, total = report_rows.report(con, spec, exact=exact)
            assert [sum(g[m] for g in groups) for m in ("calls", "cost_usd", "input_tokens")] == [
                len(want), sum(want), sum(want)], label
            timed = {"hour", "day"} & set(by)
            assert len(groups) == 1 or timed, label
            assert (total["calls"], total["cost_usd"], total["share"]) == (len(want), sum(want), 1.0), label
            latencies = [10.0 * c for c in want]
            p50, p95 = interpolated(latencies, 0.5), interpolated(latencies, 0.95)
            if exact or tier.sparse:  # the 15-minute and customers' tiers' groups: from the raw rows
                if not timed:
                    assert (groups[0]["p50_latency_ms"], groups[0]["p95_latency_ms"]) == (p50, p95), label
            if exact:
                assert (total["p50_latency_ms"], total["p95_latency_ms"]) == (p50, p95), label
            else:  # as the report without groups reads them: the features' tier's histograms, within 0.99%
                assert (total["p50_latency_ms"], total["p95_latency_ms"]) == tuple(
                    report_rows.total(con, spec)[k] for k in ("p50_latency_ms", "p95_latency_ms")), label
                for got, exact_value in ((total["p50_latency_ms"], p50), (total["p95_latency_ms"], p95)):
                    assert got == pytest.approx(exact_value, rel=rollups.RELATIVE_ERROR), label
            added = [100 * c for c in want]
            wanted = (round(interpolated(added, 0.5)), round(interpolated(added, 0.99)))
            if exact:
                assert (total["p50_proxy_us"], total["p99_proxy_us"]) == wanted, label
            else:  # the histograms of the tier the report without groups reads: within 0.99%
                for got, exact_value in zip((total["p50_proxy_us"], total["p99_proxy_us"]), wanted, strict=True):
                    assert got == pytest.approx(exact_value, rel=rollups.RELATIVE_ERROR, abs=1), label


# (UTC time, cost) over three days, for ranges that cut a day: costs apart from CALLS' (all below 1024).
DAYS_CALLS = [("2026-11-09T23:50", 1024), ("2026-11-11T00:05", 2048), ("2026-11-11T01:20", 4096),
              ("2026-11-12T00:00", 8192), ("2026-11-12T18:40", 16384)]


def test_a_range_across_days_counts_its_whole_days_and_edges_once_from_every_tier(con, host_zone):
    call_rows.insert(con, [call_row(cost, ts=dt.datetime.fromisoformat(ts).replace(tzinfo=dt.UTC),
                                    cost_usd=Decimal(cost), latency_ms=10.0 * cost, proxy_us=100 * cost,
                                    customer_id="acme", feature="chat") for ts, cost in DAYS_CALLS])
    every = [(f"{DAY}T{hhmm}", cost) for hhmm, cost in CALLS] + DAYS_CALLS
    # Ends that cut a day, an hour and a quarter hour; on day edges; on an hour; open.
    for since, until in (("2026-11-09T23:55", "2026-11-12T00:10"), ("2026-11-10T10:05", "2026-11-11T01:25"),
                         ("2026-11-10", "2026-11-12"), ("2026-11-10T11:00", "2026-11-12T18:00"),
                         ("2026-11-09T23:50", None), (None, "2026-11-11T00:05"), (None, None),
                         # a whole UTC week (from Thursday), and it and the next one open-ended
                         ("2026-11-05", "2026-11-12"), ("2026-11-05", None)):
        want = [cost for ts, cost in every if (since is None or ts >= since) and (until is None or ts < until)]
        assert_every_tier_counts(con, since and f"{since}+00:00", until and f"{until}+00:00", want,
                                 at("00:00", "2026-11-13"))


def test_a_range_on_bucket_edges_counts_purged_calls_from_the_rollups(con):
    # The calls before 11:00 are purged: only the rollups keep them, so a range whose ends fall on
    # bucket edges must read them there, not cut its ends off to the raw rows.
    lifecycle.purge(con, {1: at("11:00")}, now=at("13:00"))
    for since, until in (("10:00", "12:00"), ("10:15", "10:45"), ("10:15", "12:30"), (None, "10:30"), ("09:45", None)):
        want = costs_in(since, until)
        for by in ("model", "customer", "feature"):
            spec = parse_report([by], since=since and f"{DAY}T{since}", until=until and f"{DAY}T{until}",
                                now=at("13:00"))
            [group], total = report_rows.report(con, spec)
            assert (group["calls"], group["cost_usd"], total["cost_usd"]) == (len(want), sum(want), sum(want)), (
                since, until, by)
            if by != "customer":  # the daily and features' tiers' percentiles: of every call their histograms hold
                assert group["p50_latency_ms"] == pytest.approx(interpolated([10.0 * c for c in want], 0.5),
                                                                rel=rollups.RELATIVE_ERROR), (since, until)
            _, raw = report_rows.report(con, spec, exact=True)  # the raw rows left: from 11:00
            assert raw["cost_usd"] == sum(c for c in want if c in (64, 512, 128, 256)), (since, until, by)  # $0: none


def test_hours_of_zones_off_the_whole_hour_start_at_their_local_hour(con):
    def hours(tz: str, since: str | None = None, until: str | None = None) -> dict[str, tuple[int, Decimal]]:
        spec = parse_report(["hour"], tz=tz, since=since, until=until, now=at("13:00"))
        groups, _ = report_rows.report(con, spec)
        return {g["hour"][11:]: (g["calls"], g["cost_usd"]) for g in groups}

    # India, +5:30: 09:50 to 10:20 UTC is 15:20 to 15:50, 10:47 to 11:10 is 16:17 to 16:40.
    assert hours("Asia/Kolkata") == {"15:00": (4, 15), "16:00": (3, 112), "17:00": (3, 896)}
    # Nepal, +5:45: 10:12 UTC is 15:57, 10:20 is 16:05, 11:40 is 17:25, 12:20 is 18:05.
    assert hours("Asia/Kathmandu") == {"15:00": (3, 7), "16:00": (4, 120), "17:00": (2, 640), "18:00": (1, 256)}
    # A range in local time cutting buckets: 15:40 to 16:20 in Kolkata is 10:10 to 10:50 UTC.
    assert hours("Asia/Kolkata", f"{DAY}T15:40", f"{DAY}T16:20") == {"15:00": (2, 12), "16:00": (1, 16)}
    assert hours("America/Los_Angeles", f"{DAY}T02:10", f"{DAY}T03:15") == {"02:00": (4, 60), "03:00": (1, 64)}


def test_a_zone_off_the_quarter_hours_groups_each_call_by_its_own_local_hour(tmp_path, new_store):
    # Amsterdam kept +1:19:32 in the summer of 1936: 10:35 UTC was 11:54:32 there, 10:42 was 12:01:32,
    # in another local hour than its 15-minute bucket's start (10:30 UTC, 11:49:32).
    with writing(new_store(tmp_path / "aispendtrack.duckdb")) as con:
        call_rows.insert(con, rows([("10:35", 1), ("10:42", 2), ("11:20", 4)], day="1936-06-01"))
        spec = parse_report(["hour"], tz="Europe/Amsterdam", now=at("00:00", "1936-06-02"))
        groups, total = report_rows.report(con, spec)
    assert [(g["hour"], g["calls"], g["cost_usd"]) for g in groups] == [
        ("1936-06-01 11:00", 1, 1), ("1936-06-01 12:00", 2, 6)]
    assert [(g["p50_latency_ms"], g["p95_latency_ms"]) for g in groups] == [(10.0, 10.0), (30.0, 39.0)]  # raw rows
    # The total's, as the report without groups reads them (the features' weekly tier): within 0.99%.
    assert total["p50_latency_ms"] == pytest.approx(20.0, rel=rollups.RELATIVE_ERROR)
    assert total["p95_latency_ms"] == pytest.approx(38.0, rel=rollups.RELATIVE_ERROR)


# Los Angeles over 2026: 02:00 PST becomes 03:00 PDT at 2026-03-08 10:00 UTC, 02:00 PDT becomes
# 01:00 PST at 2026-11-01 09:00 UTC. (UTC time, cost); the local time each call has there.
DST_CALLS = [("2026-03-01T07:30:00", 1),        # Feb 28 23:30 PST
             ("2026-03-08T09:59:59.500", 2),    # Mar 8 01:59:59 PST, half a second before the switch
             ("2026-03-08T10:00:00", 4),        # Mar 8 03:00 PDT: the switch itself
             ("2026-03-08T10:00:00.500", 8),    # 03:00:00.5 PDT
             ("2026-03-08T10:00:01.500", 16),   # 03:00:01.5 PDT
             ("2026-07-01T07:30:00", 32),       # Jul 1 00:30 PDT (Jun 30 23:30 at the winter offset)
             ("2026-11-01T08:30:00", 64),       # Nov 1 01:30 PDT
             ("2026-11-01T09:05:00", 128),      # Nov 1 01:05 PST
             ("2026-12-01T07:30:00", 256)]      # Nov 30 23:30 PST (Dec 1 00:30 at the summer offset)
LA = "America/Los_Angeles"


@pytest.fixture
def dst_con(tmp_path, new_store):
    with writing(new_store(tmp_path / "dst.duckdb")) as connection:
        call_rows.insert(connection, [call_row(cost, ts=dt.datetime.fromisoformat(ts).replace(tzinfo=dt.UTC),
                                               cost_usd=Decimal(cost), latency_ms=float(cost))
                                      for ts, cost in DST_CALLS])
        yield connection


def groups_by(con, dimension: str, exact: bool, **selection) -> dict[str, tuple[int, Decimal]]:
    groups, _ = report_rows.report(con, parse_report([dimension], tz=LA, now=at("00:00", "2027-01-01"), **selection),
                                   exact=exact)
    return {g[dimension]: (g["calls"], g["cost_usd"]) for g in groups}


def test_months_hours_and_days_across_both_switches_of_a_year(dst_con):
    for exact in (False, True):  # the hourly rollups (whole-hour offsets) and the raw rows
        assert groups_by(dst_con, "month", exact) == {"2026-02": (1, 1), "2026-03": (4, 30), "2026-07": (1, 32),
                                                      "2026-11": (3, 448)}, exact
        # The hour after the spring switch starts at it, to the second.
        assert groups_by(dst_con, "hour", exact, since="2026-03-08", until="2026-03-09") == {
            "2026-03-08 01:00": (1, 2), "2026-03-08 03:00": (3, 28)}, exact
        # The last calls of a range, just after the autumn switch, take the winter offset.
        assert groups_by(dst_con, "hour", exact, since="2026-11-01", until="2026-11-01T09:10:00+00:00") == {
            "2026-11-01 01:00": (2, 192)}, exact
        assert groups_by(dst_con, "day", exact, since="2026-05-01", until="2026-05-02") == {}, exact
        groups, _ = report_rows.report(dst_con, parse_report(["model", "month"], tz=LA, now=at("00:00", "2027-01-01")),
                                       exact=exact)
        assert [(g["model"], g["month"], g["calls"]) for g in groups] == [
            ("gpt-4o", "2026-02", 1), ("gpt-4o", "2026-03", 4), ("gpt-4o", "2026-07", 1), ("gpt-4o", "2026-11", 3)]


def test_purged_calls_stay_in_every_local_period_of_the_rollups(dst_con, con):
    lifecycle.purge(dst_con, {1: dt.datetime(2026, 12, 1, tzinfo=dt.UTC)}, now=at("00:00", "2027-01-01"))
    assert groups_by(dst_con, "month", exact=False) == {"2026-02": (1, 1), "2026-03": (4, 30), "2026-07": (1, 32),
                                                        "2026-11": (3, 448)}
    assert groups_by(dst_con, "month", exact=True) == {"2026-11": (1, 256)}  # the raw rows left
    lifecycle.purge(con, {1: at("13:00")}, now=at("13:00"))
    for tz, by, want in (("UTC", "hour", {"09:00": (1, 1), "10:00": (5, 62), "11:00": (2, 576), "12:00": (2, 384)}),
                         ("Asia/Kolkata", "hour", {"15:00": (4, 15), "16:00": (3, 112), "17:00": (3, 896)}),
                         ("Asia/Kathmandu", "day", {DAY: (10, 1023)})):
        groups, _ = report_rows.report(con, parse_report([by], tz=tz, now=at("13:00")))
        assert {g[by].removeprefix(f"{DAY} "): (g["calls"], g["cost_usd"]) for g in groups} == want, tz


def test_groups_are_by_cost_then_calls_then_name_with_the_unpriced_last(tmp_path, new_store):
    stored = [("gpt-4o", "0.5"), ("b-model", "0.25"), ("a-model", "0.25"), ("unknown", None), ("c-model", "0.25"),
              ("c-model", "0")]
    with writing(new_store(tmp_path / "aispendtrack.duckdb")) as con:
        call_rows.insert(con, [call_row(n, model=model, cost_usd=None if cost is None else Decimal(cost),
                                        priced=cost is not None) for n, (model, cost) in enumerate(stored)])
        groups, _ = report_rows.report(con, parse_report(["model"], now=at("00:00", "2026-12-01")))
    assert [g["model"] for g in groups] == ["gpt-4o", "c-model", "a-model", "b-model", "unknown"]


def test_a_totals_edges_come_from_the_widest_tier_that_holds_them_not_the_15_minute_rows(con):
    # Seven days from a Tuesday 10:05: the total's whole days come from the daily totals, the
    # first day's hours from the hourly rows (11:10 to 12:20), its quarter
    # hours from the 15-minute ones (10:20 to 10:55) and its first minutes from the raw calls (10:05,
    # 10:12). Read from the 15-minute tier alone, a week at 100M calls is ~2M rows.
    since, until, now = f"{DAY}T10:05+00:00", "2026-11-17T10:05+00:00", at("00:00", "2026-11-20")
    spec = dataclasses.replace(parse_report([], since=since, until=until, now=now), by=())  # a total, as total()'s
    (sql, _), _, tier = report_rows._source(con, spec)
    assert tier is rollups.TOTAL_DAYS
    read = set(re.findall(r"FROM (rollups\w*|calls) ", sql))
    assert read == {"rollups_total_days", "rollups_hourly", "rollups", "calls"}, sql
    total = report_rows.total(con, spec)
    assert (total["calls"], total["cost_usd"]) == (9, sum(c for hhmm, c in CALLS if hhmm >= "10:05"))


def _two_calls_across_la_spring_forward(con) -> None:
    # Los Angeles moves from -8 to -7 hours at 2026-03-08 10:00 UTC: 04:00 local the day before,
    # 05:30 local (12:30 UTC) after it.
    call_rows.insert(con, [call_row(1, ts=dt.datetime(2026, 3, 7, 12, tzinfo=dt.UTC), cost_usd=Decimal(1)),
                           call_row(2, ts=dt.datetime(2026, 3, 8, 12, 30, tzinfo=dt.UTC), cost_usd=Decimal(2))])


def test_local_hours_after_an_offset_change_on_the_last_day_of_purged_calls(tmp_path):
    # Every raw call purged: the zone's offsets are found over the daily tier's days, the whole last one
    # included (its calls came after the change).
    now = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
    with writing(tmp_path / "a.duckdb") as con:
        _two_calls_across_la_spring_forward(con)
        lifecycle.purge(con, {1: dt.datetime(2026, 3, 9, tzinfo=dt.UTC)}, now)
        assert con.execute("SELECT count(*) FROM calls").fetchone() == (0,)
        groups, _ = report_rows.report(con, parse_report(["hour"], tz=LA, now=now))
    assert [(g["hour"], g["calls"]) for g in groups] == [("2026-03-07 04:00", 1), ("2026-03-08 05:00", 1)]


def test_local_hours_of_raw_calls_kept_past_the_rollups_history(tmp_path):
    # Past the rollups' 400 days, calls still kept raw (a key's retention) keep their rollups, and
    # both a report and --exact find the zone's offsets over them.
    now = dt.datetime(2027, 6, 1, tzinfo=dt.UTC)
    with writing(tmp_path / "a.duckdb") as con:
        _two_calls_across_la_spring_forward(con)
        lifecycle.purge(con, {}, now)
        assert con.execute(f"SELECT sum(calls) FROM {rollups.DAILY.table}").fetchone() == (2,)
        found = [report_rows.report(con, parse_report(["hour"], tz=LA, now=now), exact=exact)[0]
                 for exact in (False, True)]
    for groups in found:
        assert [(g["hour"], g["calls"]) for g in groups] == [("2026-03-07 04:00", 1), ("2026-03-08 05:00", 1)]
