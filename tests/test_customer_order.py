"""Closed weeks of the 15-minute rollups put in customer key order (store/customer_order.py), and
one customer's reports reading them there."""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import zoneinfo
from dataclasses import replace
from decimal import Decimal

from addon.core import home as home_dir
from addon.core.evaluate import Evaluator
from addon.core.reports import parse_report
from addon.core.store import calls as call_rows
from addon.core.store import customer_order, reading, rollups, writing
from addon.core.store import reports as report_rows

from .helpers import call_row, run_cli
from .test_rollups import assert_same

WEEK0 = rollups.bucket_start(dt.datetime(2026, 3, 5, tzinfo=dt.UTC), rollups.CUSTOMERS.seconds)
CUSTOMERS = [f"cust-{n}" for n in range(60)]


def write_weeks(con, rng: random.Random, weeks: int = 3, flushes: int = 12, per_flush: int = 150) -> None:
    """Calls of 60 customers over ``weeks`` weeks from WEEK0, written in time order as a proxy does."""
    span = weeks * rollups.WEEK / flushes
    for flush in range(flushes):
        start = WEEK0 + flush * span
        call_rows.insert(con, [call_row(
            rng.randrange(5000), ts=start + rng.random() * span, customer_id=rng.choice(CUSTOMERS),
            model=rng.choice(["gpt-4o", "gpt-4o-mini", "o3"]), key_id=rng.choice([1, 2]),
            cost_usd=Decimal(rng.randrange(10**6)) / 10**9,
            latency_ms=round(rng.uniform(20, 4000), 3), proxy_us=rng.randrange(50, 900),
            status=rng.choice([200, 200, 429])) for _ in range(per_flush)])


def order_all(con, now: dt.datetime) -> None:
    """Every week due by ``now`` put in order, as the alert rounds would one a minute."""
    while customer_order.order_oldest(con, now) is not None:
        pass


def week_keys(con, week: dt.datetime, tier: rollups.Tier = rollups.FINE) -> list[int]:
    """The customer keys of a week's rows of ``tier``, in the order they are stored."""
    return [k for (k,) in con.execute(f"SELECT customer_key FROM {tier.table} WHERE bucket >= ? AND bucket < ? "
                                      "ORDER BY rowid", [week, week + rollups.WEEK]).fetchall()]


def sums(con) -> tuple[set[tuple], set[tuple]]:
    """Per (bucket, customer, model, status) of the 15-minute tier: its sums, and its latency histogram's bins."""
    group = "bucket, customer_id, model, status"
    return (set(con.execute(f"SELECT {group}, sum(calls), sum(errors), sum(input_tokens), sum(cost_usd) "
                            "FROM rollups GROUP BY ALL").fetchall()),
            set(con.execute(f"SELECT {group}, b, sum(n) FROM (SELECT {group}, unnest(map_keys(latency)) AS b, "
                            "unnest(map_values(latency)) AS n FROM rollups) GROUP BY ALL").fetchall()))


def test_closed_weeks_are_ordered_oldest_first_once_settled_and_their_sums_stay(tmp_path):
    with writing(tmp_path / "a.duckdb") as con:
        write_weeks(con, random.Random(1))
        # As the version before wrote its closed weeks: merged, but in no order.
        con.execute("CREATE TEMP TABLE written AS SELECT * FROM rollups_customers ORDER BY hash(customer_id)")
        con.execute("DELETE FROM rollups_customers")
        con.execute("INSERT INTO rollups_customers SELECT * FROM written")
        before = sums(con)
        assert customer_order.ordered_until(con) is None
        now = WEEK0 + 3 * rollups.WEEK + customer_order.SETTLE / 2  # the third week ended half an hour ago
        done = [customer_order.order_oldest(con, now) for _ in range(3)]
        assert done == [WEEK0, WEEK0 + rollups.WEEK, None]
        assert customer_order.ordered_until(con) == WEEK0 + 2 * rollups.WEEK
        ordered = [week_keys(con, WEEK0 + n * rollups.WEEK) for n in range(3)]
        weekly = [week_keys(con, WEEK0 + n * rollups.WEEK, rollups.CUSTOMERS) for n in range(3)]
        later = customer_order.order_oldest(con, now + customer_order.SETTLE)
        after = sums(con)
    assert later == WEEK0 + 2 * rollups.WEEK
    for keys in [*ordered[:2], *weekly[:2]]:
        assert keys == sorted(keys) and len(set(keys)) == len(CUSTOMERS)
    # As written: the order the ordered weeks no longer have.
    assert ordered[2] != sorted(ordered[2]) and weekly[2] != sorted(weekly[2])
    assert after == before


def percentiles(report: tuple[list[dict], dict]) -> list[tuple]:
    """The groups' p50 and p95 (a total's are those of the report without groups, from its own tier)."""
    return [(row["p50_latency_ms"], row["p95_latency_ms"]) for row in report[0]]


def test_one_customers_report_reads_the_ordered_weeks_and_agrees_with_a_raw_scan(tmp_path, monkeypatch):
    monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", 0)  # however few the calls; and the raw scan that
    # the 15-minute tier's sparse rows would get instead (reports._scan_instead) left on
    with writing(tmp_path / "a.duckdb") as con:
        write_weeks(con, random.Random(2), weeks=4)
        now = WEEK0 + 4 * rollups.WEEK + dt.timedelta(hours=6)
        ranges = ((WEEK0 + dt.timedelta(hours=5), now), (WEEK0 + dt.timedelta(days=2, minutes=7),
                                                          WEEK0 + dt.timedelta(days=20)))
        specs = [replace(parse_report(["model"], customer=customer, since=since.isoformat(), until=until.isoformat(),
                                      now=now, **filters), by=by)
                 for by, filters in ((("model",), {}), (("day",), {}), ((), {}), ((), {"model": "o3"}),
                                     (("day",), {"status": 429}), (("model",), {"key": 2}))
                 for customer in ("cust-7", "cust-41", "nobody")
                 for since, until in ranges]
        fine = [s for s in specs if report_rows._source(con, s)[2] is rollups.FINE]
        assert len(fine) == 30  # all but the plain totals: what the weekly customers' tier cannot name
        short = parse_report(["model"], customer="cust-7", since=(now - dt.timedelta(days=7)).isoformat(),
                             until=now.isoformat(), now=now)
        read_before = [report_rows._one_customer_from_tier(con, rollups.FINE, s.selection) for s in [*fine, short]]
        exact = [report_rows.report(con, spec, exact=True) for spec in specs]
        before = [report_rows.report(con, spec) for spec in specs]
        order_all(con, now)
        read_after = [report_rows._one_customer_from_tier(con, rollups.FINE, s.selection) for s in [*fine, short]]
        after = [report_rows.report(con, spec) for spec in specs]
        whole = parse_report(["model"], customer="cust-7", until=now.isoformat(), now=now)
        unbounded = report_rows._one_customer_from_tier(con, rollups.FINE, whole.selection)
        later = now + 3 * rollups.WEEK  # three weeks more written, none of them ordered yet
        far = report_rows._one_customer_from_tier(con, rollups.FINE, parse_report(
            ["model"], customer="cust-7", since=WEEK0.isoformat(), until=later.isoformat(), now=later).selection)
        others = report_rows._one_customer_from_tier(con, rollups.FINE, parse_report(["model"], now=now).selection)
    # Nothing ordered yet, however short the range: the raw calls, exact percentiles.
    assert read_before == [False] * 31 and read_after == [True] * 31
    for spec, report, want in zip(specs, before, exact, strict=True):
        assert_same(report, want, str(spec))
        assert spec not in fine or percentiles(report) == percentiles(want), spec
    # Ordered: the same counts and costs, percentiles within 1% from the 15-minute histograms.
    for spec, report, want in zip(specs, after, exact, strict=True):
        assert_same(report, want, str(spec))
    moved = [s for s, report, want in zip(specs, after, exact, strict=True)
             if s in fine and s.selection.customer_id != "nobody" and percentiles(report) != percentiles(want)]
    assert len(moved) == 20, moved
    assert unbounded  # from the first call: the ordered weeks, then at most UNORDERED_MAX
    assert not far and not others


def test_a_limit_on_one_customers_report_from_the_tier_shows_the_first_groups_and_sums_the_rest(
        tmp_path, monkeypatch):
    """Read from the 15-minute tier (its groups summed at once, then cut to the limit), a limited
    report of one customer shows what the raw scan shows: the same first groups in the same order,
    how many there are, and the sums of those left out."""
    monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", 0)
    from .test_rollups import EXACT_METRICS
    with writing(tmp_path / "a.duckdb") as con:
        write_weeks(con, random.Random(5), weeks=2)
        now = WEEK0 + 2 * rollups.WEEK + dt.timedelta(hours=6)
        order_all(con, now)
        checked = 0
        for by in (("model",), ("key",), ("day",), ("model", "key")):
            for limit in (1, 2, 50):
                spec = replace(parse_report([], customer="cust-7", since=(WEEK0 + dt.timedelta(hours=3)).isoformat(),
                                            until=now.isoformat(), now=now), by=by)
                assert report_rows._one_customer_from_tier(con, report_rows._source(con, spec)[2], spec.selection)
                groups, total = report_rows.report(con, spec, False, limit=limit)
                want, want_total = report_rows.report(con, spec, False, exact=True, limit=limit)
                label = f"{by} limit {limit}"
                assert_same((groups, total), (want, want_total), label)
                assert [[g[n] for n in ("model", "key_id", "day") if n in g] for g in groups] == \
                       [[g[n] for n in ("model", "key_id", "day") if n in g] for g in want], label
                assert groups.total_groups == want.total_groups, label
                if want.rest is None:
                    assert groups.rest is None, label
                else:
                    checked += 1
                    assert {k: groups.rest[k] for k in EXACT_METRICS} == {k: want.rest[k] for k in EXACT_METRICS}, label
    assert checked == 7  # the limits that left groups out: 1 and 2 of 3 models, 2 keys and 15 days, 6 pairs


def test_a_shared_connection_reads_one_customer_from_the_tier_with_no_week_ordered(tmp_path, monkeypatch):
    """The lake's rule, in process (the lake's test below needs PostgreSQL): one customer's 15-minute
    rows whatever the order, and nothing else changes."""
    now = WEEK0 + 2 * rollups.WEEK
    with writing(tmp_path / "a.duckdb") as con:
        write_weeks(con, random.Random(3), weeks=1, flushes=2, per_flush=20)
        selection = parse_report(["model"], customer="cust-7", since=WEEK0.isoformat(), until=now.isoformat(),
                                 now=now).selection
        embedded = report_rows._one_customer_from_tier(con, rollups.FINE, selection)
        monkeypatch.setattr(report_rows, "is_shared", lambda con: True)
        shared = [report_rows._one_customer_from_tier(con, tier, chosen) for tier, chosen in (
            (rollups.FINE, selection), (rollups.CUSTOMERS, selection), (None, selection),
            (rollups.FINE, replace(selection, customer_id=None)))]
    assert not embedded and shared == [True, False, False, False]


def test_rows_summed_again_send_the_ordering_back_to_their_week(tmp_path):
    from addon.core.store import subjects

    with writing(tmp_path / "a.duckdb") as con:
        write_weeks(con, random.Random(4), weeks=3)
        now = WEEK0 + 3 * rollups.WEEK + 2 * customer_order.SETTLE
        order_all(con, now)
        done = customer_order.ordered_until(con)
        (call_id,) = con.execute("SELECT id FROM calls WHERE ts >= ? ORDER BY ts LIMIT 1",
                                 [WEEK0 + rollups.WEEK + dt.timedelta(days=3)]).fetchone()
        report_rows.apply_reprice(con, [(call_id, Decimal("0.5"), "test", None)])
        repriced = customer_order.ordered_until(con)
        unordered = week_keys(con, WEEK0 + rollups.WEEK)
        again = [customer_order.order_oldest(con, now) for _ in range(3)]
        reordered = week_keys(con, WEEK0 + rollups.WEEK)
        subjects.delete(con, subjects.subject_from(None, 2))  # the weekly customers' rows summed again
        erased = customer_order.ordered_until(con)
    assert done == WEEK0 + 3 * rollups.WEEK
    assert repriced == WEEK0 + rollups.WEEK and unordered != sorted(unordered)
    assert again == [WEEK0 + rollups.WEEK, WEEK0 + 2 * rollups.WEEK, None] and reordered == sorted(reordered)
    assert erased == WEEK0


def test_a_reprice_meeting_a_week_being_ordered_waits_for_it_and_is_stored(tmp_path):
    """The owner orders a week in one transaction (6-26 s at 100M calls a year); a reprice of a call
    of that week meanwhile met its deleted rollup rows and failed with DuckDB's "Conflict on tuple
    deletion". It runs again once the ordering ended: the new cost in the call and in its sums."""
    import threading
    import time

    with writing(tmp_path / "a.duckdb") as con:
        write_weeks(con, random.Random(5), weeks=2)
        week = WEEK0 + rollups.WEEK
        (call_id, customer) = con.execute("SELECT id, customer_id FROM calls WHERE ts >= ? ORDER BY ts LIMIT 1",
                                          [week + dt.timedelta(days=2)]).fetchone()
        ordering = con.cursor()
        ordering.execute("BEGIN TRANSACTION")
        rollups.merge(ordering, week, week + rollups.WEEK, rollups.FINE)  # as order_oldest, not committed yet
        threading.Timer(2.0, ordering.execute, ["COMMIT"]).start()
        start = time.monotonic()
        report_rows.apply_reprice(con, [(call_id, Decimal("7.25"), "test", None)])
        waited = time.monotonic() - start
        stored = con.execute("SELECT cost_usd FROM calls WHERE id = ?", [call_id]).fetchone()[0]
        summed = con.execute("SELECT sum(cost_usd) FROM rollups WHERE customer_id = ?", [customer]).fetchone()[0]
        raw = con.execute("SELECT sum(cost_usd) FROM calls WHERE customer_id = ?", [customer]).fetchone()[0]
    assert waited >= 1.5
    assert stored == Decimal("7.25") and summed == raw


def test_two_reprices_of_a_call_at_once_keep_its_cost_from_before_both(tmp_path):
    """The second of two reprices to the same price (``heal_unpriced`` beside a CLI reprice) meets
    the first's rows, runs again once it committed, and leaves the call as the first left it: its
    previous cost is still the one before both, not the new one."""
    import threading

    with writing(tmp_path / "a.duckdb") as con:
        write_weeks(con, random.Random(6), weeks=1, flushes=2, per_flush=20)
        (call_id, before) = con.execute("SELECT id, cost_usd FROM calls ORDER BY ts LIMIT 1").fetchone()
        first = con.cursor()
        first.execute("BEGIN TRANSACTION")  # the first reprice's change of the call, not committed yet
        first.execute("UPDATE calls SET previous_cost_usd = cost_usd, cost_usd = 7.25, price_source = 'test', "
                      "price_snapshot = NULL WHERE id = ?", [call_id])
        threading.Timer(1.0, first.execute, ["COMMIT"]).start()
        report_rows.apply_reprice(con, [(call_id, Decimal("7.25"), "test", None)])
        stored = con.execute("SELECT cost_usd, previous_cost_usd FROM calls WHERE id = ?", [call_id]).fetchone()
    assert stored == (Decimal("7.25"), before)


def test_the_alert_rounds_order_a_week_each(tmp_path, caplog):
    home = tmp_path / "home"
    home.mkdir()
    db = home_dir.db_path(home)
    with writing(db) as con:
        write_weeks(con, random.Random(3), weeks=2, flushes=4, per_flush=40)
    evaluator = Evaluator(db, home, zoneinfo.ZoneInfo("UTC"))  # not started: its rounds are called here
    with caplog.at_level(logging.INFO, logger="addon.core.evaluate"):
        evaluator._order_rollups()
        evaluator._order_rollups()
        evaluator._order_rollups()
    assert caplog.text.count("put in customer order") == 2
    assert f"the week from {WEEK0.date().isoformat()} put in customer order" in caplog.text
    with reading(db) as con:
        assert customer_order.ordered_until(con) == WEEK0 + 2 * rollups.WEEK
        assert all(keys == sorted(keys) for keys in (week_keys(con, WEEK0 + n * rollups.WEEK) for n in range(2)))


def test_the_lake_reads_one_customer_from_the_tier_unordered_and_keeps_no_setting(shared_env, tmp_path,
                                                                                 monkeypatch):
    """On the lake one customer's reports read the 15-minute tier as written (its Parquet files
    answer them faster than the raw calls: reports._one_customer_from_tier), with a raw scan's
    counts and costs; nothing orders its weeks (customer_order.py): a setting `migrate-to` copies
    from the file it came from is not read there, and a reprice does not write one."""
    from addon.core.store import config

    monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", 0)  # however few the calls
    lake = {name: os.environ[name] for name in ("AISPENDTRACK_CATALOG", "AISPENDTRACK_DATA_PATH")}
    for name in lake:
        monkeypatch.delenv(name)
    home = tmp_path / "embedded"
    home.mkdir()
    now = WEEK0 + 2 * rollups.WEEK + 2 * customer_order.SETTLE
    with writing(home_dir.db_path(home)) as con:
        write_weeks(con, random.Random(5), weeks=2, flushes=4, per_flush=100)
        order_all(con, now)
        assert customer_order.ordered_until(con) == WEEK0 + 2 * rollups.WEEK
    run_cli(home, "migrate-to", "--catalog", lake["AISPENDTRACK_CATALOG"],
            "--data-path", lake["AISPENDTRACK_DATA_PATH"])
    for name, value in lake.items():
        monkeypatch.setenv(name, value)
    specs = [replace(parse_report(["model"], customer=customer, since=(WEEK0 + dt.timedelta(hours=5)).isoformat(),
                                  until=(WEEK0 + dt.timedelta(days=10)).isoformat(), now=now), by=by)
             for by in (("model",), ("day",), ("key", "model")) for customer in ("cust-7", "cust-41", "nobody")]
    with writing(tmp_path / "replica.duckdb") as con:  # the lake: no file of its own
        copied = config.get(con, customer_order.SETTING)
        tiered = [report_rows._one_customer_from_tier(con, report_rows._source(con, s)[2], s.selection)
                  for s in specs]
        everyone = report_rows._one_customer_from_tier(con, rollups.FINE, replace(specs[0].selection,
                                                                                  customer_id=None))
        exact = [report_rows.report(con, spec, exact=True) for spec in specs]
        found = [report_rows.report(con, spec) for spec in specs]
        setting = customer_order.ordered_until(con)
        (call_id,) = con.execute("SELECT id FROM calls ORDER BY ts LIMIT 1").fetchone()
        report_rows.apply_reprice(con, [(call_id, Decimal("0.5"), "test", None)])
        after = config.get(con, customer_order.SETTING)
    assert copied == after == (WEEK0 + 2 * rollups.WEEK).isoformat()  # copied, and left as it was
    assert setting is None and tiered == [True] * len(specs) and not everyone
    for spec, report, want in zip(specs, found, exact, strict=True):
        assert_same(report, want, str(spec))
    # From the tier's histograms (within 1%), not from the raw calls as the file's unordered weeks.
    moved = [s for s, report, want in zip(specs, found, exact, strict=True)
             if s.selection.customer_id != "nobody" and percentiles(report) != percentiles(want)]
    assert len(moved) == 6, moved
