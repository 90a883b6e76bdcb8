"""A report's ``limit`` (store/reports.py): the first groups of the whole report, percentiles and
all, computed for those groups alone; the order, the total and what was left out are those of
every group. On a real DuckDB file, through the store, the CLI and the JSON API.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal

import pytest
from click.testing import CliRunner

from addon.core import home as home_dir
from addon.core.reports import parse_report
from addon.core.store import calls as call_rows
from addon.core.store import reading, rollups, writing
from addon.core.store import reports as report_rows
from addon.core.wording import percent
from cli.main import cli
from web import create_app

from .helpers import call_row, read_rollups

START = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
NOW = START + dt.timedelta(days=6)
CUSTOMERS = [None, *(f"c{i:02}" for i in range(30))]
# A third of the calls have no customer: that group is among the first by cost, so a limit keeps it.
WEIGHTS = [15, *[1] * 30]


def spread_calls(n: int = 900, seed: int = 3) -> list[dict]:
    """Five days of calls: 31 customers (one of them none), priced and unpriced models, three keys
    and no key, every call with a latency (a group shown without percentiles would stand out)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        model = rng.choice(["gpt-4o", "gpt-4o-mini", "claude", "local-llm"])
        rows.append(call_row(i, ts=START + dt.timedelta(seconds=rng.randrange(5 * 86400)), model=model,
                             customer_id=rng.choices(CUSTOMERS, WEIGHTS)[0], key_id=rng.choice([1, 2, 3, None]),
                             cost_usd=None if model == "local-llm" else Decimal(rng.randrange(1, 10**4)) / 100,
                             priced=model != "local-llm", latency_ms=round(10 ** rng.uniform(1, 4), 3)))
    return rows


@pytest.fixture(scope="module")
def home(tmp_path_factory, store_template):
    path = tmp_path_factory.mktemp("limit")
    db = home_dir.db_path(path)
    db.write_bytes(store_template.read_bytes())
    with writing(db) as con:
        call_rows.insert(con, spread_calls())
    return path


@pytest.fixture
def con(home):
    with reading(home_dir.db_path(home)) as connection:
        yield connection


PERCENTILES = ("p50_latency_ms", "p95_latency_ms")
SPECS = [
    (["customer"], {}),                                  # the customers' weekly tier (raw percentiles unlimited)
    (["customer"], {"since": "2026-11-21T10:07"}),       # ... and a range that cuts its buckets
    (["model"], {}),                                     # the models' tier's histograms
    (["model"], {"since": "2026-11-21T10:07"}),          # ... its edges from the hourly and 15-minute tiers
    (["key"], {}),                                       # key ids are numbers, and some calls have no key
    (["day"], {}),                                       # the first days, not the costliest
    (["model", "hour"], {}),                             # the hourly tier, in time order
    (["customer", "day"], {}),                           # two dimensions, one of them time
    (["model"], {"customer": "c01"}),                    # one customer's: the 15-minute tier, or one scan
]


@pytest.mark.parametrize("how", ["rollups", "raw scan", "exact", "scan for the 15-minute tier"])
@pytest.mark.parametrize("by,options", SPECS, ids=[
    " ".join(by) + (" cut" if "since" in o else "") + (" of one customer" if "customer" in o else "")
    for by, o in SPECS])
def test_a_limit_gives_the_first_groups_of_the_whole_report(con, monkeypatch, how, by, options):
    if how == "rollups":  # however few the calls, read the rollups
        read_rollups(monkeypatch)
    if how == "scan for the 15-minute tier":  # not few calls: a raw scan only in place of that tier
        monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", 0)
        assert report_rows._fine_is_sparse(con)
    exact = how == "exact"
    spec = parse_report(by, now=NOW, **options)
    groups, total = report_rows.report(con, spec, exact=exact)
    assert len(groups) >= 4 and all(g["p50_latency_ms"] is not None for g in groups)
    tier = report_rows._source(con, spec)[2]
    # Limited, the customers' weekly tier takes its groups' percentiles from histograms: within 0.99%.
    weekly = how != "raw scan" and not exact and tier.seconds >= rollups.WEEK.total_seconds()
    for limit in (1, 3, len(groups) - 1, len(groups), len(groups) + 10):
        first, first_total = report_rows.report(con, spec, exact=exact, limit=limit)
        if weekly and tier.sparse:
            for got, want in zip(first, groups[:limit], strict=True):
                for name in PERCENTILES:
                    assert got.pop(name) == pytest.approx(want[name], rel=rollups.RELATIVE_ERROR), (limit, name)
            first = report_rows.Groups(first, first.total_groups, first.rest)
            assert first == [{k: v for k, v in g.items() if k not in PERCENTILES} for g in groups[:limit]], limit
        else:
            assert first == groups[:limit], limit  # the same groups, sums, shares and percentiles
        assert first_total == total, limit
        assert first.total_groups == len(groups)
        left = groups[limit:]
        if not left:
            assert first.rest is None
            continue
        priced = [g["cost_usd"] for g in left if g["cost_usd"] is not None]
        for name in ("calls", "errors", "unpriced_calls", "input_tokens", "output_tokens", "audio_seconds"):
            assert first.rest[name] == sum(g[name] for g in left), name
        assert first.rest["cost_usd"] == (sum(priced) if priced else None)
        assert first.rest["calls"] + sum(g["calls"] for g in first) == total["calls"]


def test_the_first_groups_are_the_costliest_or_the_earliest_and_keep_the_calls_without_a_customer(con, monkeypatch):
    read_rollups(monkeypatch)
    by_customer = parse_report(["customer"], now=NOW)
    _, _, tier = report_rows._source(con, by_customer)
    assert tier is not None and tier.sparse  # a tier whose percentiles come from the raw rows
    groups, _ = report_rows.report(con, by_customer, limit=3)
    assert None in [g["customer_id"] for g in groups]
    costs = [g["cost_usd"] for g in groups]
    assert costs == sorted(costs, reverse=True)
    by_model = parse_report(["model"], now=NOW)
    _, _, tier = report_rows._source(con, by_model)
    assert tier is not None and not tier.sparse  # a tier of histograms
    days, _ = report_rows.report(con, parse_report(["day"], now=NOW), limit=2)
    assert [d["day"] for d in days] == ["2026-11-20", "2026-11-21"]
    assert days.rest["calls"] == sum(1 for c in spread_calls() if c["ts"] >= START + dt.timedelta(days=2))


# --- the CLI and the API ------------------------------------------------------------------------------


def run(home, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_cli_table_sums_the_groups_it_leaves_out_on_one_line(home):
    everything = json.loads(run(home, "report", "--by", "customer", "--format", "json"))
    assert len(everything) == 31
    table = run(home, "report", "--by", "customer", "--limit", "2").splitlines()
    assert [line.split()[0] for line in table[1:3]] == [g["customer_id"] or "-" for g in everything[:2]]
    left = everything[2:]
    calls = sum(g["calls"] for g in left)
    cost = sum(Decimal(str(g["cost_usd"])) for g in left)  # whole cents: the column's two places
    share = float(cost) / sum(g["cost_usd"] for g in everything)
    # "*": some of those calls have no price (local-llm), as the COST column marks a group
    assert table[3] == f"… 29 more customers: {calls:,} calls, ${cost:,.2f}* ({percent(share)})"
    assert table[4] == "-" * max(len(line) for line in table[:3]) and table[5].startswith("TOTAL")
    unlimited = run(home, "report", "--by", "customer").splitlines()
    assert table[5] == next(line for line in unlimited if line.startswith("TOTAL"))  # of every group
    assert len(unlimited) == len(table) - 2 + 31 - 1
    first = json.loads(run(home, "report", "--by", "customer", "--limit", "2", "--format", "json"))
    assert first == everything[:2]


def test_the_cli_refuses_a_limit_below_one(home):
    result = CliRunner().invoke(cli, ["--home", str(home), "report", "--limit", "0"])
    assert result.exit_code == 2 and "Invalid value for '--limit'" in result.output


@pytest.fixture
def api(home):
    client = create_app(home, {"TESTING": True}).test_client()
    token = json.loads(run(home, "admin", "create-token", "--json"))["token"]
    return lambda path: client.get(path, headers={"Authorization": f"Bearer {token}"})


def test_the_api_limit_cuts_the_same_groups_and_says_how_many_there_are(api):
    for query in ("by=customer", "by=model", "by=day&by=customer"):
        everything = api(f"/api/v1/report?{query}&until={NOW.date()}")
        first = api(f"/api/v1/report?{query}&until={NOW.date()}&limit=5")
        assert first.status_code == 200
        assert first.get_json() == everything.get_json()[:5], query
        assert first.headers["X-Total-Groups"] == everything.headers["X-Total-Groups"] \
            == str(len(everything.get_json())), query
    refused = api("/api/v1/report?by=customer&limit=0")
    assert refused.status_code == 400
    assert refused.get_json()["error"]["message"] == "limit must be a whole number from 1 to 100000, got '0'."


def test_a_table_shows_the_50_costliest_groups_unless_asked_for_every_one(tmp_path, store_template):
    # 60 customers, customer i with one call of $(i + 1) on day i: the table's default cut, not JSON's.
    db = home_dir.db_path(tmp_path)
    db.write_bytes(store_template.read_bytes())
    with writing(db) as con:
        call_rows.insert(con, [call_row(i, ts=START - dt.timedelta(days=i), customer_id=f"c{i:02}",
                                        cost_usd=Decimal(i + 1), latency_ms=100.0) for i in range(60)])
    table = run(tmp_path, "report", "--by", "customer", "--since", "2026-09-01").splitlines()
    assert [line.split()[0] for line in table[1:51]] == [f"c{i:02}" for i in range(59, 9, -1)]
    total_cost = sum(range(1, 61))
    assert table[51] == f"… 10 more customers: 10 calls, $55.00 ({percent(55 / total_cost)})"
    assert table[53].startswith("TOTAL") and len(table) == 54
    every = run(tmp_path, "report", "--by", "customer", "--since", "2026-09-01", "--all").splitlines()
    assert len(every) == 1 + 60 + 2 and every[-1] == table[-1]
    assert len(json.loads(run(tmp_path, "report", "--by", "customer", "--since", "2026-09-01",
                              "--format", "json"))) == 60
    days = run(tmp_path, "report", "--by", "day", "--since", "2026-09-01").splitlines()
    assert len(days) == 1 + 60 + 2  # a time grouping: every period, in order
    both = CliRunner().invoke(cli, ["--home", str(tmp_path), "report", "--limit", "3", "--all"])
    assert both.exit_code == 2 and "give --limit or --all, not both." in both.output


def test_the_api_leaves_out_the_groups_percentiles_when_asked_and_nothing_else(api, monkeypatch):
    # The page's chart draws costs alone: percentiles=false skips their p50/p95, over the rollups
    # and over raw rows alike; every other figure, and the order, stay as they are.
    for raw_max in (0, report_rows.RAW_SCAN_MAX):
        monkeypatch.setattr(report_rows, "RAW_SCAN_MAX", raw_max)
        for query in ("by=day&by=model", "by=customer&limit=5", "by=model"):
            full = api(f"/api/v1/report?{query}&until={NOW.date()}").get_json()
            bare = api(f"/api/v1/report?{query}&until={NOW.date()}&percentiles=false")
            assert bare.status_code == 200
            assert any(g["p50_latency_ms"] is not None for g in full), query
            assert bare.get_json() == [{**g, "p50_latency_ms": None, "p95_latency_ms": None} for g in full], query
    refused = api("/api/v1/report?by=model&percentiles=maybe")
    assert refused.status_code == 400
    assert refused.get_json()["error"]["message"] == "percentiles must be true or false, got 'maybe'."
