"""Rollups summed before m032 get their proxy histograms (store/proxy_backfill.py), a day at a time.

A real DuckDB file; the rows of a store upgraded from before m032 are made as the migration left
them: every tier's ``proxy`` column NULL.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import zoneinfo

import pytest

from addon.core import home as home_dir
from addon.core.evaluate import Evaluator
from addon.core.reports import parse_report
from addon.core.store import calls as call_rows
from addon.core.store import proxy_backfill, reading, rollups, writing
from addon.core.store import reports as report_rows

from .helpers import read_rollups, run_cli
from .test_rollups import assert_coarse_tiers_right, random_call, tier_rows


@pytest.fixture(autouse=True)
def rollups_at_any_size(monkeypatch):
    read_rollups(monkeypatch)


def calls(rng: random.Random, key: int, start: dt.datetime, hours: int, count: int) -> list[dict]:
    return [random_call(rng, start, hours * 3600) | {"key_id": key, "proxy_us": rng.randrange(5, 50_000)}
            for _ in range(count)]


def as_before_m032(con) -> None:
    for tier in rollups.TIERS:
        con.execute(f"UPDATE {tier.table} SET proxy = NULL")


def test_old_rollups_get_the_histograms_of_their_raw_calls_and_empty_ones_for_purged_calls(tmp_path):
    home, alone = tmp_path / "home", tmp_path / "alone"
    key = json.loads(run_cli(home, "keys", "create", "--name", "k", "--plan", "free", "--json"))["id"]
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(32)
    old = calls(rng, key, now - dt.timedelta(days=20), 30, 300)  # past the free plan's 7 days: purged
    recent = calls(rng, key, now - dt.timedelta(days=2), 40, 400)
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, old + recent)
    run_cli(home, "purge")
    alone.mkdir()
    with writing(alone / "a.duckdb") as con:  # the same raw calls, never purged, summed as today
        call_rows.insert(con, recent)
        want_added = report_rows.total(con, parse_report([], now=now))
    with writing(home_dir.db_path(home)) as con:
        (kept,) = con.execute("SELECT count(*) FROM calls").fetchone()
        assert kept == len(recent)
        summed = {tier.table: tier_rows(con, tier) for tier in rollups.TIERS}
        as_before_m032(con)
        days = []
        while (day := proxy_backfill.fill_oldest(con)) is not None:
            days.append(day)
            assert len(days) < 20, "the backfill does not end"
        for tier in rollups.TIERS:
            (missing,) = con.execute(f"SELECT count(*) FROM {tier.table} WHERE proxy IS NULL").fetchone()
            assert missing == 0, tier.table
            # Every sum as before; the proxy histograms as before where the calls are raw, empty where purged.
            cut = now - dt.timedelta(days=10)
            want = [(*row[:-1], {} if row[0] < cut else row[-1]) for row in summed[tier.table]]
            assert tier_rows(con, tier) == sorted(want, key=str), tier.table
        assert_coarse_tiers_right(con, raw=False)
        found = report_rows.total(con, parse_report([], now=now))
    # One day at a time, oldest first: the days that had calls, nothing else.
    assert days == sorted({rollups.bucket_start(c["ts"], 86400) for c in old + recent})
    assert (found["p50_proxy_us"], found["p99_proxy_us"]) == (want_added["p50_proxy_us"], want_added["p99_proxy_us"])
    assert found["calls"] == len(old) + len(recent)  # the purged calls still counted, their costs too


def test_the_alert_rounds_fill_them_in_and_stop_asking_once_none_is_left(tmp_path, caplog):
    home = tmp_path / "home"
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(33)
    home.mkdir()
    db = home_dir.db_path(home)
    rows = calls(rng, 1, now - dt.timedelta(days=3), 60, 200)
    with writing(db) as con:
        call_rows.insert(con, rows)
        as_before_m032(con)
    days = len({rollups.bucket_start(c["ts"], 86400) for c in rows})
    evaluator = Evaluator(db, home, zoneinfo.ZoneInfo("UTC"))  # not started: its rounds are called here
    with caplog.at_level(logging.INFO, logger="addon.core.evaluate"):
        evaluator._backfill()
    assert evaluator._backfilled
    assert f"proxy histograms filled in for {days} day(s) summed before they were kept; none left" in caplog.text
    with reading(db) as con:
        assert {tier.table: con.execute(f"SELECT count(*) FROM {tier.table} WHERE proxy IS NULL").fetchone()[0]
                for tier in rollups.TIERS} == dict.fromkeys((t.table for t in rollups.TIERS), 0)
        total = report_rows.total(con, parse_report([], now=now))
    assert total["p50_proxy_us"] is not None and total["calls"] == 200


def test_the_lake_of_the_shared_mode_gets_them_the_same_way(shared_env, tmp_path):
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(34)
    with writing(tmp_path / "unused.duckdb") as con:  # the shared mode: the lake on PostgreSQL
        call_rows.insert(con, calls(rng, 1, now - dt.timedelta(days=9), 200, 300))
        summed = {tier.table: tier_rows(con, tier) for tier in rollups.TIERS}
        as_before_m032(con)
        assert tier_rows(con, rollups.CUSTOMERS) != summed[rollups.CUSTOMERS.table]
        while proxy_backfill.fill_oldest(con) is not None:
            pass
        assert {tier.table: tier_rows(con, tier) for tier in rollups.TIERS} == summed
