"""Reports, exports, repricing and the JSON API, on a real DuckDB file.

The small data set below is chosen so every expected number can be worked out by hand.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import re
import urllib.parse
import uuid
from decimal import Decimal

import duckdb
import pytest
from click.testing import CliRunner

from addon.core import home as home_dir
from addon.core.reports import Selection, parse_report
from addon.core.store import calls as call_rows
from addon.core.store import reports as report_rows
from addon.core.store import synthetic, writing
from cli.main import cli
from web import create_app

from .helpers import call_row
from .helpers import report_row as row

UTC = dt.UTC


DATA = [
    row("2026-10-31T23:30:00", "gpt-4o", "1.00", 100),                        # Oct in UTC, Oct 31 in Pacific
    row("2026-11-01T00:30:00", "gpt-4o", "2.00", 200, feature="search"),       # Nov in UTC, Oct 31 in Pacific
    row("2026-11-01T08:00:00", "claude-sonnet-4", "3.00", 300, customer="globex", key_id=2, provider="anthropic"),
    row("2026-11-02T12:00:00", "acme-llm", None, 400, customer="globex", key_id=2),   # unpriced
    row("2026-11-02T13:00:00", "gpt-4o", "0", 50, status=500, usage="none", input_tokens=0, output_tokens=0),
]


@pytest.fixture
def home(tmp_path, new_store):
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        call_rows.insert(con, DATA)
    return tmp_path


def cli_json(home, *args) -> list[dict]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def by(groups: list[dict], key: str) -> dict:
    return {g[key]: g for g in groups}


def test_report_by_model_with_errors_unpriced_share_and_latency(home):
    groups = by(cli_json(home, "report", "--by", "model"), "model")
    assert list(groups) == ["gpt-4o", "claude-sonnet-4", "acme-llm"]  # by cost, unpriced last
    gpt = groups["gpt-4o"]
    assert (gpt["calls"], gpt["errors"], gpt["unpriced_calls"]) == (3, 1, 0)
    assert gpt["cost_usd"] == 3.0 and gpt["share"] == 0.5
    assert gpt["input_tokens"] == 200 and gpt["output_tokens"] == 20
    # Of 50, 100, 200, from the rollups' histogram: within 0.99% (store/rollups.py).
    assert gpt["p50_latency_ms"] == pytest.approx(100, rel=0.0099)
    assert gpt["p95_latency_ms"] == pytest.approx(190, rel=0.0099)
    unpriced = groups["acme-llm"]
    assert unpriced["unpriced_calls"] == 1 and unpriced["cost_usd"] is None and unpriced["share"] is None


def test_months_follow_the_time_zone_the_invoice_uses(home):
    utc = by(cli_json(home, "report", "--by", "month"), "month")
    assert {m: (g["calls"], g["cost_usd"]) for m, g in utc.items()} == {"2026-10": (1, 1.0), "2026-11": (4, 5.0)}
    pacific = by(cli_json(home, "report", "--by", "month", "--tz", "America/Los_Angeles"), "month")
    assert {m: (g["calls"], g["cost_usd"]) for m, g in pacific.items()} == {"2026-10": (2, 3.0),
                                                                              "2026-11": (3, 3.0)}
    days = by(cli_json(home, "report", "--by", "day", "--tz", "America/Los_Angeles"), "day")
    assert days["2026-10-31"]["calls"] == 2


# Around the end of daylight saving in Los Angeles (2026-11-01 09:00 UTC: 02:00 PDT becomes 01:00 PST).
# Costs are powers of two, so each total says which calls it holds.
DST_DATA = [
    row("2026-11-01T06:59:59", "gpt-4o", "1", 1),    # Oct 31 23:59:59 PDT
    row("2026-11-01T07:00:00", "gpt-4o", "2", 1),    # Nov 1 00:00 PDT
    row("2026-11-01T08:30:00", "gpt-4o", "4", 1),    # Nov 1 01:30 PDT
    row("2026-11-01T09:00:00", "gpt-4o", "64", 1),   # Nov 1 01:00 PST: the switch itself
    row("2026-11-01T09:30:00", "gpt-4o", "8", 1),    # Nov 1 01:30 PST, the hour that comes twice
    row("2026-11-02T07:30:00", "gpt-4o", "16", 1),   # Nov 1 23:30 PST (00:30 on Nov 2 at the summer offset)
    row("2026-11-02T08:00:00", "gpt-4o", "32", 1),   # Nov 2 00:00 PST
]


@pytest.fixture
def dst_home(tmp_path, new_store):
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        call_rows.insert(con, DST_DATA)
    return tmp_path


def test_days_and_hours_across_the_end_of_daylight_saving(dst_home):
    days = cli_json(dst_home, "report", "--by", "day", "--tz", "America/Los_Angeles")
    assert [(g["day"], g["calls"], g["cost_usd"]) for g in days] == [
        ("2026-10-31", 1, 1.0), ("2026-11-01", 5, 94.0), ("2026-11-02", 1, 32.0)]
    hours = cli_json(dst_home, "report", "--by", "hour", "--tz", "America/Los_Angeles")
    assert [(g["hour"], g["calls"], g["cost_usd"]) for g in hours] == [
        ("2026-10-31 23:00", 1, 1.0), ("2026-11-01 00:00", 1, 2.0), ("2026-11-01 01:00", 3, 76.0),
        ("2026-11-01 23:00", 1, 16.0), ("2026-11-02 00:00", 1, 32.0)]


def test_adjacent_reports_count_a_call_at_the_boundary_once(dst_home):
    def window(since: str, until: str) -> tuple[int, float]:
        [total] = cli_json(dst_home, "report", "--by", "model", "--since", since, "--until", until,
                           "--tz", "America/Los_Angeles")
        return total["calls"], total["cost_usd"]

    # The call at 2026-11-02 00:00 PST is the first of the second day, not the last of the first.
    assert window("2026-11-01", "2026-11-02") == (5, 94.0)
    assert window("2026-11-02", "2026-11-03") == (1, 32.0)
    assert window("2026-11-01", "2026-11-03") == (6, 126.0)


def test_filters_and_time_range(home):
    acme = cli_json(home, "report", "--by", "customer", "--customer", "acme")
    assert [(g["customer_id"], g["calls"], g["cost_usd"]) for g in acme] == [("acme", 3, 3.0)]
    window = cli_json(home, "report", "--by", "provider", "--since", "2026-11-01", "--until", "2026-11-02")
    assert {g["provider"]: g["cost_usd"] for g in window} == {"anthropic": 3.0, "openai": 2.0}
    pacific_day = cli_json(home, "report", "--by", "model", "--since", "2026-10-31", "--until", "2026-11-01",
                           "--tz", "America/Los_Angeles")
    assert [(g["model"], g["calls"]) for g in pacific_day] == [("gpt-4o", 2)]


def test_two_dimensions(home):
    groups = cli_json(home, "report", "--by", "customer", "--by", "feature")
    assert {(g["customer_id"], g["feature"]): g["calls"] for g in groups} == {
        ("acme", "chat"): 2, ("acme", "search"): 1, ("globex", "chat"): 2}


def test_each_group_of_two_dimensions_has_its_own_percentiles_to_the_microsecond(tmp_path, new_store):
    # A customer in the groups: read from the 15-minute rollups, percentiles exact over the raw rows.
    latencies = {("acme", "chat"): [300, 400.004], ("acme", "search"): [200], ("globex", "chat"): [50, 70.5]}
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        call_rows.insert(con, [row("2026-11-02T12:00:00", "gpt-4o", "1.00", latency, customer=customer, feature=feature)
                               for (customer, feature), values in latencies.items() for latency in values])
    groups = cli_json(tmp_path, "report", "--by", "customer", "--by", "feature")
    # quantile_cont interpolates: 300 + 0.95 x 100.004 = 395.0038, shown to the µs as stored.
    assert {(g["customer_id"], g["feature"]): (g["p50_latency_ms"], g["p95_latency_ms"]) for g in groups} == {
        ("acme", "chat"): (350.002, 395.004), ("acme", "search"): (200, 200), ("globex", "chat"): (60.25, 69.475)}


def test_table_has_a_total_line_and_flags_unpriced(home):
    result = CliRunner().invoke(cli, ["--home", str(home), "report", "--by", "model"])
    lines = result.output.splitlines()
    total = next(line for line in lines if line.startswith("TOTAL"))
    assert "$6.00*" in total and "5" in total.split()
    assert "* 1 more call has no price, see `aispendtrack prices check` for why." in result.output
    assert max(len(line) for line in lines) <= 80


@pytest.mark.parametrize("args,message", [
    (["--by", "colour"], "Invalid value for '--by'"),
    (["--since", "last tuesday"], "cannot read since 'last tuesday'"),
    (["--tz", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
    (["--since", "2026-11-02", "--until", "2026-11-01"], "must be before --until"),
    # A local time the clocks skip or show twice was read as one of them silently (02:30 as 03:30,
    # then "--since (10:30 UTC) must be before --until (10:15 UTC)" for 02:30 to 03:15).
    (["--tz", "America/Los_Angeles", "--since", "2026-03-08T02:30", "--until", "2026-03-08T03:15"],
     "since '2026-03-08T02:30' does not exist in America/Los_Angeles: the clocks skipped it (daylight saving "
     "time). Give a time that exists, or one with its UTC offset (2026-03-08T03:30-07:00)."),
    (["--tz", "America/Los_Angeles", "--since", "2026-11-01T00:30", "--until", "2026-11-01T01:15"],
     "until '2026-11-01T01:15' happens twice in America/Los_Angeles (the clocks went back): give its UTC offset, "
     "2026-11-01T01:15-07:00 for the first or 2026-11-01T01:15-08:00 for the second."),
])
def test_bad_report_arguments_say_what_to_fix(home, args, message):
    result = CliRunner().invoke(cli, ["--home", str(home), "report", *args])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
def test_export_writes_every_matching_row(home, tmp_path, fmt):
    out = tmp_path / f"calls.{fmt}"
    result = CliRunner().invoke(cli, ["--home", str(home), "export", "--format", fmt, "--customer", "acme",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        rows = list(csv.DictReader(out.open()))
    elif fmt == "json":
        rows = json.loads(out.read_text())
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        rows = [dict(zip(("customer_id", "model"), r)) for r in
                duckdb.connect().execute(f"SELECT customer_id, model FROM '{out}'").fetchall()]
    assert len(rows) == 3 and {r["customer_id"] for r in rows} == {"acme"}
    assert "Wrote 3 calls" in result.output


def test_reprice_keeps_the_old_cost_and_prints_the_change(home):
    (home / "prices.toml").write_text('[[price]]\nmodel = "acme-llm"\ninput_mtok = 10\noutput_mtok = 100\n')
    result = CliRunner().invoke(cli, ["--home", str(home), "reprice", "--model", "acme-llm"])
    assert result.exit_code == 0, result.output
    # 100 in x $10 + 10 out x $100, per million; the call had no price, not a price of $0
    assert result.output == "Checked 1 call; 1 changed:\n  1 priced now: unpriced -> $0.002\n"
    [repriced] = [r for r in cli_json(home, "calls") if r["model"] == "acme-llm"]
    assert repriced["cost_usd"] == pytest.approx(0.002) and repriced["priced"] is True
    exported = json.loads(CliRunner().invoke(cli, ["--home", str(home), "export", "--format", "json",
                                                   "--model", "acme-llm", "--out", str(home / "x.json")]).output
                          and (home / "x.json").read_text())
    assert exported[0]["previous_cost_usd"] is None and exported[0]["previous_price_source"] is None
    assert exported[0]["price_source"] == "override prices.toml#1" and exported[0]["repriced_at"]



def test_a_reprices_summary_adds_up_as_shown(tmp_path, new_store):
    """Each amount rounded alone: "$17.258121 -> $13.14353 (-$4.114592)", 1 micro-dollar off as read."""
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        call_rows.insert(con, [call_row(1_000_000, model="acme-llm", output_tokens=0, cost_usd=Decimal("17.2581214"))])
    (tmp_path / "prices.toml").write_text('[[price]]\nmodel = "acme-llm"\ninput_mtok = 13.1435299\noutput_mtok = 1\n')
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "reprice", "--model", "acme-llm"])
    assert result.output == "Checked 1 call; 1 changed:\n  1 with a new price: $17.258121 -> $13.14353 (-$4.114591)\n"


def test_a_reprice_that_changes_only_the_price_source_says_the_cost_is_the_same(tmp_path, new_store):
    """Was "1 with a new price: $4.00 -> $4.00 (+$0.00)": a call priced again by other data at the
    same cost (a new genai-prices release, an override of the same rates) read as a price change."""
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        call_rows.insert(con, [call_row(1_000_000, model="acme-llm", output_tokens=0, cost_usd=Decimal(4),
                                        price_source="genai-prices 0.0.1")])
    (tmp_path / "prices.toml").write_text('[[price]]\nmodel = "acme-llm"\ninput_mtok = 4\noutput_mtok = 1\n')
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "reprice", "--model", "acme-llm"])
    assert result.output == ("Checked 1 call; 1 changed:\n"
                             "  1 at the same cost ($4.00), by other price data (their price_source)\n")
    [row] = cli_json(tmp_path, "calls")
    assert (row["price_source"], row["previous_price_source"]) == ("override prices.toml#1", "genai-prices 0.0.1")


def test_a_reprice_keeps_the_old_price_stores_the_snapshot_and_a_failed_one_changes_nothing(tmp_path, new_store):
    first, second = call_row(1, cost_usd=Decimal("9"), price_source="list"), call_row(2, cost_usd=Decimal("1"))
    columns = "cost_usd, priced, price_source, price_snapshot, previous_cost_usd, previous_price_source"
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        call_rows.insert(con, [first, second])
        report_rows.apply_reprice(con, [(first["id"], Decimal("0.5"), "override prices.toml#1", "snapshot-7")])
        assert con.execute(f"SELECT {columns}, repriced_at IS NOT NULL FROM calls WHERE id = ?",
                           [first["id"]]).fetchone() == (Decimal("0.5"), True, "override prices.toml#1",
                                                         "snapshot-7", Decimal("9"), "list", True)
        # A cost the column cannot hold: refused whole, the store as it was and still usable.
        with pytest.raises(duckdb.ConversionException):
            report_rows.apply_reprice(con, [(second["id"], Decimal("0.25"), "a", None),
                                            (first["id"], Decimal("1e30"), "b", None)])
        assert con.execute(f"SELECT {columns} FROM calls ORDER BY input_tokens").fetchall() == [
            (Decimal("0.5"), True, "override prices.toml#1", "snapshot-7", Decimal("9"), "list"),
            (Decimal("1"), True, None, None, None, None)]
        report_rows.apply_reprice(con, [])  # nothing to change: nothing written
    assert [(g["calls"], g["cost_usd"]) for g in cli_json(tmp_path, "report", "--by", "model")] == [(2, 1.5)]

# --- JSON API --------------------------------------------------------------------------------

@pytest.fixture
def api(home):
    app = create_app(home, {"TESTING": True})
    runner = CliRunner()

    def secret(*args: str) -> str:
        out = runner.invoke(cli, ["--home", str(home), *args, "--json"], catch_exceptions=False).output
        return json.loads(out)["token" if "admin" in args else "key"]

    tokens = {"admin": secret("admin", "create-token"), "key1": secret("keys", "create", "--name", "one"),
              "key2": secret("keys", "create", "--name", "two")}
    client = app.test_client()

    def get(path: str, who: str | None = "admin"):
        headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
        return client.get(path, headers=headers)

    return get


def test_api_report_equals_the_cli_report(home, api):
    for query, args in [("by=model", ["--by", "model"]),
                        ("by=month&tz=America/Los_Angeles", ["--by", "month", "--tz", "America/Los_Angeles"]),
                        ("by=customer&by=feature&since=2026-11-01", ["--by", "customer", "--by", "feature",
                                                                      "--since", "2026-11-01"])]:
        response = api(f"/api/v1/report?{query}")
        assert response.status_code == 200
        assert response.get_json() == cli_json(home, "report", *args)


def test_api_and_cli_agree_on_generated_volume(tmp_path, new_store):
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        synthetic.generate(con, 30_000, end=dt.datetime(2026, 11, 25, tzinfo=UTC))
    app = create_app(tmp_path, {"TESTING": True})
    token = json.loads(CliRunner().invoke(cli, ["--home", str(tmp_path), "admin", "create-token", "--json"]).output)
    client = app.test_client()
    for dims in (["model"], ["feature", "day"], ["key"]):
        response = client.get("/api/v1/report?" + "&".join(f"by={d}" for d in dims),
                              headers={"Authorization": f"Bearer {token['token']}"})
        cli_groups = cli_json(tmp_path, "report", *[a for d in dims for a in ("--by", d)])
        assert response.get_json() == cli_groups
        assert sum(g["calls"] for g in cli_groups) == 30_000


def test_generated_calls_are_stored_as_the_proxy_stores_them(tmp_path, new_store):
    """A refused or failed call bills nothing, a known $0 (record.py): the generator stored them
    unpriced, ~3% of every bench's calls read as unpriced spend."""
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        synthetic.generate(con, 20_000, end=dt.datetime(2026, 11, 25, tzinfo=UTC))
        kinds = dict(con.execute(
            "SELECT CASE WHEN status >= 400 THEN 'failed' WHEN model = 'acme-ft-7b' THEN 'unknown' ELSE 'priced' END, "
            "list(DISTINCT (priced, cost_usd = 0)) FROM calls GROUP BY 1").fetchall())
    assert kinds == {"failed": [(True, True)], "unknown": [(False, None)], "priced": [(True, False)]}


def test_api_needs_credentials(api):
    assert api("/api/v1/report", who=None).status_code == 401
    response = api("/api/v1/calls", who=None)
    assert "Authorization: Bearer" in response.get_json()["error"]["message"]


def test_a_key_sees_only_its_own_calls(api):
    # Keys 1 and 2 of the data set are the first two keys created by the fixture.
    own = api("/api/v1/report?by=key", who="key2").get_json()
    assert [(g["key_id"], g["calls"]) for g in own] == [(2, 2)]
    assert api("/api/v1/report?by=model&key=1", who="key2").status_code == 403
    calls = api("/api/v1/calls?limit=100", who="key1").get_json()["calls"]
    assert {c["key_id"] for c in calls} == {1} and len(calls) == 3
    exported = csv.DictReader(io.StringIO(api("/api/v1/export?format=csv", who="key1").get_data(as_text=True)))
    assert sorted((r["key_id"], r["customer_id"], r["cost_usd"]) for r in exported) == [
        ("1", "acme", "0"), ("1", "acme", "1"), ("1", "acme", "2")]
    assert [r["key_id"] for r in api("/api/v1/export?format=json", who="key2").get_json()] == [2, 2]
    refused = api("/api/v1/export?format=json&key=2", who="key1")
    assert refused.status_code == 403 and "may only see its own calls" in refused.get_json()["error"]["message"]
    refused = api("/api/v1/reconciliation", who="key1")  # the whole organisation's: admin tokens only
    assert refused.status_code == 403 and refused.get_json()["error"] == {
        "code": "forbidden", "message": "The reconciliation covers the whole organisation: use an admin token."}
    assert api("/api/v1/reconciliation").get_json() == []


def test_the_api_total_has_the_totals_and_percentiles_a_key_sees_its_own(api):
    total = api("/api/v1/report/total").get_json()
    assert (total["calls"], total["errors"], total["cost_usd"], total["unpriced_calls"]) == (5, 1, 6.0, 1)
    # Of 50, 100, 200, 300, 400; from the rollups within 0.99%, exact with exact=true.
    assert (total["p50_latency_ms"], total["p95_latency_ms"]) == (pytest.approx(200, rel=0.0099),
                                                                  pytest.approx(380, rel=0.0099))
    exact = api("/api/v1/report/total?exact=true").get_json()
    assert (exact["p50_latency_ms"], exact["p95_latency_ms"]) == (200, 380)
    own = api("/api/v1/report/total", who="key2").get_json()
    assert (own["calls"], own["cost_usd"], own["p50_latency_ms"]) == (2, 3.0, pytest.approx(350, rel=0.0099))
    refused = api("/api/v1/report/total?key=1", who="key2")
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"
    # The total has no groups: a `by` sent along (as to /report) names no dimension in it.
    assert api("/api/v1/report/total?by=model&by=day").get_json() == total


def test_calls_pages_are_newest_first_and_complete(api):
    seen, cursor = [], None
    while True:
        page = api(f"/api/v1/calls?limit=2{'&cursor=' + cursor if cursor else ''}").get_json()
        seen += page["calls"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(DATA) and len({c["id"] for c in seen}) == len(DATA)
    assert [c["ts"] for c in seen] == sorted((c["ts"] for c in seen), reverse=True)
    one = api("/api/v1/calls?limit=1").get_json()
    assert [c["ts"] for c in one["calls"]] == [seen[0]["ts"]] and one["next_cursor"]
    assert len(api("/api/v1/calls?limit=1000").get_json()["calls"]) == len(DATA)


@pytest.mark.parametrize("shared", [False, True], ids=["file", "lake's windows"])
def test_pages_of_calls_near_now_and_far_back_are_whole_and_in_order(tmp_path, new_store, monkeypatch, shared):
    """On the lake calls_page looks back from the newest end in widening windows: however the calls
    are spread around them, each page is the next rows of the whole list, newest first (ties by id),
    as the file's one statement gives them."""
    monkeypatch.setattr(report_rows, "is_shared", lambda con: shared)
    now = dt.datetime.now(UTC)
    ages = [-dt.timedelta(minutes=1), dt.timedelta(minutes=10), dt.timedelta(minutes=10), dt.timedelta(hours=2),
            dt.timedelta(days=3), dt.timedelta(days=20), dt.timedelta(days=60), dt.timedelta(days=60),
            dt.timedelta(days=400)]
    rows = [call_row(i, ts=now - age) for i, age in enumerate(ages)]
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        call_rows.insert(con, rows)
        for selection in (Selection(), Selection(until=now - dt.timedelta(days=1)),
                          Selection(since=now - dt.timedelta(days=30)),
                          Selection(since=now - dt.timedelta(days=90), until=now - dt.timedelta(hours=1))):
            expected = sorted(((r["ts"], r["id"]) for r in rows
                               if (selection.since is None or r["ts"] >= selection.since)
                               and (selection.until is None or r["ts"] < selection.until)), reverse=True)
            for limit in (1, 2, 3, 4, 100):
                listed, after = [], None
                while True:
                    page = report_rows.calls_page(con, selection, limit, after)
                    assert len(page) <= limit
                    listed += [(c["ts"], c["id"]) for c in page]
                    if len(page) < limit:
                        break
                    after = listed[-1]
                assert listed == expected, (selection, limit)


def test_calls_at_the_ends_of_time_and_a_cursor_without_a_zone(api, home, monkeypatch):
    """The windows calls_page looks back in on the lake start before the year 1 for an ``until``
    there: no window then, not a 500; a cursor whose time names no offset is not one the API gave out."""
    monkeypatch.setattr(report_rows, "is_shared", lambda con: True)
    for until, found in (("0001-01-01T00:30+00:00", 0), ("9999-12-31T23:30+00:00", len(DATA))):
        response = api(f"/api/v1/calls?until={urllib.parse.quote(until)}")
        assert response.status_code == 200 and len(response.get_json()["calls"]) == found, until
        assert len(cli_json(home, "calls", "--until", until)) == found
    naive = base64.urlsafe_b64encode(f"2030-01-01T00:00:00|{uuid.uuid4()}".encode()).decode()
    response = api(f"/api/v1/calls?since=30d&cursor={naive}")
    assert response.status_code == 400 and response.get_json()["error"]["message"] == (
        "cursor is not one this API gave out; start again without it.")


def test_the_api_takes_the_clis_filters(api, home):
    """provider, status and errors filter /calls, /export and /report as `calls --provider ...` does."""
    for query, args in (("provider=anthropic", ("--provider", "anthropic")), ("errors=true", ("--errors",)),
                        ("status=500&customer=acme", ("--status", "500", "--customer", "acme")),
                        ("status=500&customer=globex", ("--status", "500", "--customer", "globex"))):
        listed = [c["id"] for c in api(f"/api/v1/calls?limit=100&{query}").get_json()["calls"]]
        assert listed == [c["id"] for c in cli_json(home, "calls", "--limit", "100", *args)], query
        exported = [c["id"] for c in api(f"/api/v1/export?format=json&{query}").get_json()]
        assert sorted(exported) == sorted(listed), query
        report = api(f"/api/v1/report?by=model&{query}").get_json()
        assert sum(g["calls"] for g in report) == len(listed), query
    assert [c["model"] for c in api("/api/v1/calls?errors=true").get_json()["calls"]] == ["gpt-4o"]
    assert api("/api/v1/calls?errors=false").get_json()["calls"]  # false is no filter, not "successes only"
    every = len(api("/api/v1/calls").get_json()["calls"])
    assert [len(api(f"/api/v1/calls?errors={v}").get_json()["calls"]) for v in ("1", "0", "FALSE")] == [1, every, every]
    assert api("/api/v1/calls?key=2147483647").get_json()["calls"] == []  # the largest key id: no calls
    for query, message in (("status=abc", "status must be a whole number from 100 to 599"),
                           ("errors=maybe", "errors must be true or false, got 'maybe'")):
        response = api(f"/api/v1/calls?{query}")
        assert response.status_code == 400 and message in response.get_json()["error"]["message"]
        assert response.get_json()["error"]["code"] == "bad_request"


def test_api_export_streams_the_rows(api):
    response = api("/api/v1/export?format=csv&customer=globex")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == 'attachment; filename="aispendtrack-calls.csv"'
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert sorted(r["model"] for r in rows) == ["acme-llm", "claude-sonnet-4"]
    as_json = api("/api/v1/export?format=json").get_json()
    assert len(as_json) == len(DATA)
    lines = api("/api/v1/export?format=jsonl&model=gpt-4o").get_data(as_text=True).splitlines()
    assert len(lines) == 3 and all(json.loads(line)["model"] == "gpt-4o" for line in lines)



def test_pages_of_a_filtered_listing_hold_each_call_once_even_at_one_instant(tmp_path, new_store):
    instant = dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    stored = [call_row(n, ts=instant, customer_id="acme" if n % 2 else "globex") for n in range(1, 8)]
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        call_rows.insert(con, stored)
        seen, after = [], None
        while page := report_rows.calls_page(con, Selection(customer_id="acme"), 2, after):
            assert len(page) <= 2
            seen += page
            after = (page[-1]["ts"], page[-1]["id"])
    assert sorted(c["input_tokens"] for c in seen) == [1, 3, 5, 7]
    assert [c["id"] for c in seen] == sorted((c["id"] for c in seen), reverse=True)  # one instant: by id

NOT_A_KEY = "key must be a key id (a number from 1 to 2147483647, see `aispendtrack keys list`),"


@pytest.mark.parametrize("path,message", [
    ("/api/v1/report?by=colour", "unknown dimension 'colour'"),
    ("/api/v1/calls?limit=1001", "limit must be a whole number from 1 to 1000, got '1001'."),
    ("/api/v1/report?limit=x", "limit must be a whole number from 1 to 100000, got 'x'."),
    ("/api/v1/report?since=yesterday-ish", "cannot read since"),
    ("/api/v1/report?since=2026-11-01T01:30&tz=America/Los_Angeles", "since '2026-11-01T01:30' happens twice"),
    ("/api/v1/calls?limit=0", "limit must be a whole number from 1 to 1000"),
    ("/api/v1/calls?key=abc", f"{NOT_A_KEY} got 'abc'."),
    ("/api/v1/calls?key=2147483648", f"{NOT_A_KEY} got '2147483648'."),
    ("/api/v1/report?key=" + "7" * 150, f"{NOT_A_KEY} got '{'7' * 100}'."),
    ("/api/v1/calls?cursor=bogus", "cursor is not one this API gave out; start again without it."),
    ("/api/v1/export?format=xml", "format must be one of csv, json, jsonl"),
])
def test_api_errors_are_json_and_say_what_to_fix(api, path, message):
    response = api(path)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_request"
    assert response.get_json()["error"]["message"].startswith(message)


def test_calls_csv_the_cli_export_and_the_api_export_are_the_same_bytes(api, home):
    runner = CliRunner()
    listed = runner.invoke(cli, ["--home", str(home), "calls", "--format", "csv", "--limit", "1000"]).output
    exported = runner.invoke(cli, ["--home", str(home), "export", "--format", "csv"]).output
    downloaded = api("/api/v1/export?format=csv").get_data(as_text=True)
    header, *rows = listed.splitlines()
    assert len(rows) == len(DATA)
    for other in (exported, downloaded):
        other_header, *other_rows = other.splitlines()
        assert other_header == header and sorted(other_rows) == sorted(rows)
    first = next(csv.DictReader(io.StringIO(listed)))
    assert first["stream"] in ("true", "false") and first["priced"] in ("true", "false")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", first["ts"])
    listed_json = json.loads(runner.invoke(cli, ["--home", str(home), "calls", "--format", "json"]).output)
    assert listed_json[0]["ts"] == max(r["ts"] for r in listed_json)  # newest first


def test_by_key_names_the_keys_with_their_id_only_where_two_share_a_name(home, api):
    CliRunner().invoke(cli, ["--home", str(home), "keys", "create", "--name", "two"], catch_exceptions=False)
    table = CliRunner().invoke(cli, ["--home", str(home), "report", "--by", "key"]).output
    assert [line.split("  ")[0] for line in table.splitlines()[1:3]] == ["one", "two (id 2)"]
    groups = api("/api/v1/report?by=key").get_json()
    assert [(g["key_id"], g["key_name"]) for g in groups] == [(1, "one"), (2, "two (id 2)")]


def test_calls_shows_customer_and_feature_and_takes_the_reports_filters(home):
    runner = CliRunner()
    for name in ("one", "batch"):  # keys 1 and 2
        runner.invoke(cli, ["--home", str(home), "keys", "create", "--name", name], catch_exceptions=False)

    def table(*args: str) -> list[list[str]]:
        result = runner.invoke(cli, ["--home", str(home), "calls", *args])
        assert result.exit_code == 0, result.output
        return [re.split(r"\s{2,}", line.strip()) for line in result.output.splitlines()]

    header, *rows = table("--customer", "globex", "--key", "batch")  # a key by its name
    assert header[:5] == ["TIME (UTC)", "KEY", "CUSTOMER", "FEATURE", "MODEL"]
    assert [r[1:5] for r in rows] == [["batch", "globex", "chat", "acme-llm"],
                                      ["batch", "globex", "chat", "claude-sonnet-4"]]
    assert [r[4] for r in table("--key", "2", "--provider", "anthropic")[1:]] == ["claude-sonnet-4"]
    assert [r[4] for r in table("--errors")[1:]] == ["gpt-4o"]  # the one 500
    assert [r[4] for r in table("--status", "500", "--customer", "acme")[1:]] == ["gpt-4o"]
    assert table("--status", "500", "--customer", "globex")[1:] == []  # filters combine with AND
    picked = cli_json(home, "calls", "--customer", "acme", "--feature", "search", "--model", "gpt-4o")
    assert [(r["customer_id"], r["feature"], r["model"], r["cost_usd"]) for r in picked] == [
        ("acme", "search", "gpt-4o", 2.0)]
    exported = runner.invoke(cli, ["--home", str(home), "calls", "--format", "csv", "--provider", "anthropic"]).output
    assert [(r["customer_id"], r["model"]) for r in csv.DictReader(io.StringIO(exported))] == [
        ("globex", "claude-sonnet-4")]
    unknown = runner.invoke(cli, ["--home", str(home), "calls", "--key", "nobody"])
    assert unknown.exit_code == 2 and "no key named 'nobody'" in unknown.output
    runner.invoke(cli, ["--home", str(home), "keys", "create", "--name", "batch"], catch_exceptions=False)
    twice = runner.invoke(cli, ["--home", str(home), "calls", "--key", "batch"])
    assert twice.exit_code == 2 and "2 keys are named 'batch' (ids 2, 3)" in twice.output


def test_prices_check_names_the_reprice_once_an_override_prices_unpriced_calls(home):
    runner = CliRunner()
    since = ["--since", "2026-10-01"]  # DATA's calls; by default the check lists the last 30 days'
    before = runner.invoke(cli, ["--home", str(home), "prices", "check", *since]).output
    assert "acme-llm" in before and "Add them to" in before
    (home / "prices.toml").write_text('[[price]]\nmodel = "acme-llm"\ninput_mtok = 10\noutput_mtok = 100\n')
    checked = runner.invoke(cli, ["--home", str(home), "prices", "check", *since]).output
    assert "Add them to" not in checked
    said = "1 call stored as unpriced has a price now; store it with:\n"
    assert said in checked and checked.endswith("\n  aispendtrack reprice --provider openai --model acme-llm\n")
    command = checked.splitlines()[-1].split()[1:]
    # A changed price and a first price are counted apart: $2.00 -> $20.00 is a change, unpriced -> $0.002 not.
    (home / "prices.toml").write_text('[[price]]\nmodel = "acme-llm"\ninput_mtok = 10\noutput_mtok = 100\n\n'
                                      '[[price]]\nmodel = "gpt-4o"\nprovider = "openai"\ninput_mtok = 100\n'
                                      'output_mtok = 0\n')
    result = runner.invoke(cli, ["--home", str(home), *command, "--dry-run"])
    assert result.output == "Checked 1 call; 1 would change:\n  1 priced now: unpriced -> $0.002\n"
    result = runner.invoke(cli, ["--home", str(home), "reprice", "--customer", "acme", "--feature", "search"])
    assert result.output == "Checked 1 call; 1 changed:\n  1 with a new price: $2.00 -> $0.01 (-$1.99)\n"
    runner.invoke(cli, ["--home", str(home), *command])
    assert "Every call since 2026-10-01 00:00 UTC has a price." in runner.invoke(
        cli, ["--home", str(home), "prices", "check", *since]).output


def test_the_report_and_prices_check_name_each_endpoint_forwarded_unmetered(tmp_path, new_store):
    """Calls to an endpoint the provider bills but we do not meter: the report names each endpoint
    with its count (within the report's filters), `prices check` lists them with when last seen."""
    unmetered = {"usage_source": "unmetered", "cost_usd": None, "priced": False}
    rows = [call_row(1), call_row(2, **unmetered, endpoint="/v1/images/variations", customer_id="acme"),
            call_row(3, **unmetered, endpoint="/v1/images/variations", customer_id="acme"),
            call_row(4, **unmetered, endpoint="/v1/images/variations", customer_id="globex"),
            call_row(5, **unmetered, provider="anthropic", endpoint="/v1/files", customer_id="acme"),
            call_row(6, **unmetered, provider="anthropic", endpoint="/v1/files", customer_id="acme",
                     ts=dt.datetime(2026, 10, 1, tzinfo=dt.UTC))]
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        call_rows.insert(con, rows)

    def report(*args: str) -> list[str]:
        out = CliRunner().invoke(cli, ["--home", str(tmp_path), "report", "--since", "2026-11-01", *args],
                                 catch_exceptions=False).output
        return [line.strip() for line in out.splitlines() if "not metered by AiSpendTrack" in line]

    note = "billed by the provider, not metered by AiSpendTrack (unpriced)."
    assert report() == [f"3 calls to openai /v1/images/variations: {note}", f"1 call to anthropic /v1/files: {note}"]
    assert report("--customer", "acme") == [f"2 calls to openai /v1/images/variations: {note}",
                                            f"1 call to anthropic /v1/files: {note}"]
    checked = json.loads(CliRunner().invoke(cli, ["--home", str(tmp_path), "prices", "check", "--format", "json",
                                                  "--since", "2026-09-01"], catch_exceptions=False).output)
    assert [(e["provider"], e["endpoint"], e["calls"], e["last_seen"][:19]) for e in checked if "endpoint" in e] == [
        ("openai", "/v1/images/variations", 3, "2026-11-25T12:00:04"),
        ("anthropic", "/v1/files", 2, "2026-11-25T12:00:05")]
    since_november = json.loads(CliRunner().invoke(cli, ["--home", str(tmp_path), "prices", "check", "--format",
                                                         "json", "--since", "2026-11-01"]).output)
    assert [(e["endpoint"], e["calls"]) for e in since_november] == [("/v1/images/variations", 3), ("/v1/files", 1)]


def test_prices_check_names_the_answers_without_usage_and_never_says_every_call_has_a_price(tmp_path, new_store):
    """Calls answered without usage the proxy could read are unpriced (the report counts them): the
    check said "Every metered call ... has a price" over them. It lists them by endpoint, with the
    latest reason; a free call ($0, no usage) is not among them."""
    unknown = {"usage_source": "none", "cost_usd": None, "priced": False, "input_tokens": 0}
    rows = [call_row(1), call_row(2, usage_source="none", cost_usd=0, endpoint="/v1/models", input_tokens=0),
            call_row(3, **unknown, error="usage unknown: the stream ended before its usage"),
            call_row(4, **unknown, error="usage unknown: no usage in the answer\x1b[2J"),
            call_row(5, usage_source="invalid", cost_usd=None, priced=False, provider="anthropic",
                     endpoint="/v1/messages", error="usage implausible: input_tokens -3"),
            call_row(6, model=None, cost_usd=None, priced=False, endpoint="/v1/responses")]  # no model to price
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        call_rows.insert(con, rows)

    def check(*args: str) -> str:
        return CliRunner().invoke(cli, ["--home", str(tmp_path), "prices", "check", "--since", "2026-11-01", *args],
                                  catch_exceptions=False).output

    table = check()
    assert "has a price" not in table
    assert ("\n4 calls got an answer without usage AiSpendTrack could read, or naming no model (cost unknown, "
            "shown as 'unpriced'") in table
    listed = table[table.rindex("\nPROVIDER") + 1:].splitlines()
    assert listed[0].split() == ["PROVIDER", "ENDPOINT", "CALLS", "LAST", "SEEN", "(UTC)", "LATEST", "REASON"]
    assert [line.split()[:3] for line in listed[1:4]] == [["openai", "/v1/chat/completions", "2"],
                                                          ["anthropic", "/v1/messages", "1"],
                                                          ["openai", "/v1/responses", "1"]]
    assert listed[1].endswith("usage unknown: no usage in the answer\\x1b[2J")  # the escape shown, not run
    assert listed[2].endswith("usage implausible: input_tokens -3")
    as_json = json.loads(check("--format", "json"))
    assert [(e["provider"], e["endpoint"], e["usage_source"], e["calls"]) for e in as_json] == [
        ("openai", "/v1/chat/completions", "none", 2), ("anthropic", "/v1/messages", "invalid", 1),
        ("openai", "/v1/responses", "reported", 1)]
    as_csv = list(csv.DictReader(io.StringIO(check("--format", "csv"))))  # one header over every kind of row
    assert [(r["endpoint"], r["usage_source"], r["calls"]) for r in as_csv] == [
        ("/v1/chat/completions", "none", "2"), ("/v1/messages", "invalid", "1"), ("/v1/responses", "reported", "1")]
    report = CliRunner().invoke(cli, ["--home", str(tmp_path), "report", "--since", "2026-11-01"]).output
    assert "* 4 more calls have no price, see `aispendtrack prices check` for why." in report


def test_exported_cells_a_spreadsheet_would_run_are_quoted_and_money_and_times_read_alike(tmp_path, new_store):
    with writing(new_store(home_dir.db_path(tmp_path))) as con:
        call_rows.insert(con, [
            call_row(1, customer_id='=HYPERLINK("http://evil.example","x")', feature="@SUM(A1)", error="-2+3",
                     model="+cmd", endpoint="\t/v1/chat/completions", cost_usd=Decimal("1.50")),
            call_row(2, customer_id="plain", cost_usd=Decimal("10")),
            call_row(3, customer_id="unpriced", cost_usd=None, priced=False)])

    def export(fmt: str, *args: str) -> str:
        out = tmp_path / f"the team's calls.{fmt}"  # a quote in the path, as a user may name it
        result = CliRunner().invoke(cli, ["--home", str(tmp_path), "export", "--format", fmt, "--out", str(out),
                                          *args], catch_exceptions=False)
        assert result.exit_code == 0 and "Wrote 3 calls" in result.output, result.output
        return out.read_text() if fmt != "parquet" else str(out)

    rows = {r["input_tokens"]: r for r in csv.DictReader(io.StringIO(export("csv")))}
    assert [rows["1"][c] for c in ("customer_id", "feature", "error", "model", "endpoint")] == [
        "'=HYPERLINK(\"http://evil.example\",\"x\")", "'@SUM(A1)", "'-2+3", "'+cmd", "'\t/v1/chat/completions"]
    assert (rows["2"]["customer_id"], rows["2"]["model"], rows["2"]["endpoint"]) == (
        "plain", "gpt-4o", "/v1/chat/completions")
    assert [rows[n]["cost_usd"] for n in ("1", "2", "3")] == ["1.5", "10", ""]
    assert rows["1"]["ts"] == "2026-11-25T12:00:01.000000+00:00" and rows["1"]["repriced_at"] == ""
    for listed in (json.loads(export("json")), [json.loads(line) for line in export("jsonl").splitlines()]):
        found = {r["input_tokens"]: r for r in listed}
        assert (found[1]["customer_id"], found[1]["feature"]) == ('=HYPERLINK("http://evil.example","x")', "@SUM(A1)")
        assert [found[n]["cost_usd"] for n in (1, 2, 3)] == [1.5, 10, None]
        assert found[1]["ts"] == "2026-11-25T12:00:01.000000+00:00" and found[1]["stream"] is False
    typed = duckdb.connect().execute("SELECT input_tokens, ts, cost_usd, feature FROM read_parquet(?) "
                                     "ORDER BY input_tokens", [export("parquet")]).fetchall()
    assert typed[0][1:] == (dt.datetime(2026, 11, 25, 12, 0, 1, tzinfo=UTC), Decimal("1.5"), "@SUM(A1)")
    # `calls --format csv` is the same export, of the newest calls only, newest first.
    newest = CliRunner().invoke(cli, ["--home", str(tmp_path), "calls", "--format", "csv", "--limit", "2"]).output
    assert [r["customer_id"] for r in csv.DictReader(io.StringIO(newest))] == ["unpriced", "plain"]


def test_a_reports_total_audio_seconds_are_the_stores_sum_to_the_millisecond(tmp_path):
    # Summed from the groups in Python, 0.1 + 0.2 seconds came out 0.30000000000000004 on the total
    # line, where the total alone (the store's sum) says 0.3.
    spec = parse_report(["model"], now=dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, [call_row(1, model="whisper-1", audio_seconds=Decimal("0.1")),
                               call_row(2, model="gpt-4o-transcribe", audio_seconds=Decimal("0.2"))])
        groups, total = report_rows.report(con, spec)
        alone = report_rows.total(con, spec)
    assert sorted(g["audio_seconds"] for g in groups) == [0.1, 0.2]
    assert total["audio_seconds"] == alone["audio_seconds"] == 0.3


@pytest.mark.parametrize("exact", [False, True])
def test_a_period_without_calls_cost_nothing_and_one_of_unpriced_calls_is_unknown(tmp_path, exact):
    """No call is $0 spent; calls none of whose cost is known are "unpriced" (null), never $0."""
    from .helpers import call_row
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, [call_row(1, cost_usd=None, priced=False)])  # 2026-11-25 12:00
        total = {label: report_rows.total(con, parse_report([], since=since, until=until, now=now), exact=exact)
                 for label, since, until in (("empty", "2026-11-26", "2026-11-27"),
                                             ("unpriced", "2026-11-25", "2026-11-26"))}
    assert (total["empty"]["calls"], total["empty"]["cost_usd"]) == (0, 0)
    unpriced = total["unpriced"]
    assert (unpriced["calls"], unpriced["unpriced_calls"], unpriced["cost_usd"]) == (1, 1, None)
