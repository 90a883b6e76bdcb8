"""Retention purges and GDPR requests: what is deleted, what keeps counting, and what is left on disk."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import stat
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from addon.core import home as home_dir
from addon.core.store import alerts as alert_rows
from addon.core.store import batches, reading, writing
from addon.core.store import calls as call_rows

from .helpers import Receiver, clear_of_utc_midnight, free_port, run_cli, start_proxy

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
NOW = dt.datetime.now(dt.UTC)


def call_row(key_id: int, age: dt.timedelta, customer: str, cost: str = "0.25", **fields) -> dict:
    return {"id": uuid.uuid4(), "ts": NOW - age, "key_id": key_id, "provider": "openai",
            "endpoint": "/v1/chat/completions", "model": "gpt-4o", "stream": False, "status": 200,
            "outcome": "completed", "error": None, "input_tokens": 100, "cache_read_tokens": 10,
            "cache_write_tokens": 0, "cache_write_1h_tokens": 0, "output_tokens": 20, "reasoning_tokens": 0,
            "web_search_requests": 0, "cost_usd": Decimal(cost), "priced": True, "price_source": "test",
            "usage_source": "reported", "customer_id": customer, "feature": "chat", "latency_ms": 5.0,
            "ttft_ms": None, **fields}


def make_key(home: Path, name: str, plan: str) -> int:
    return json.loads(run_cli(home, "keys", "create", "--name", name, "--plan", plan, "--json"))["id"]


def budget_spend(home: Path, customer: str) -> tuple[Decimal, Decimal]:
    [budget] = [b for b in json.loads(run_cli(home, "budgets", "list", "--format", "json"))
                if b["scope_value"] == customer]
    return Decimal(str(budget["spent_today_usd"])), Decimal(str(budget["spent_this_month_usd"]))


def month_counts(home: Path) -> dict[int, int]:
    return {k["id"]: k["used_this_month"] for k in json.loads(run_cli(home, "keys", "list", "--json"))}


def raw_rows(db: Path) -> list[tuple]:
    with reading(db) as con:
        return con.execute("SELECT key_id, ts FROM calls ORDER BY ts").fetchall()


def test_purge_follows_each_plan_and_budgets_and_quotas_keep_counting(migrated_home):
    home = migrated_home
    free, pro, enterprise = make_key(home, "f", "free"), make_key(home, "p", "pro"), make_key(home, "e", "enterprise")
    rows = [call_row(free, dt.timedelta(hours=2), "acme"),
            call_row(free, dt.timedelta(days=6), "acme"),
            call_row(free, dt.timedelta(days=8), "acme", cost="1.5"),
            call_row(free, dt.timedelta(days=9), "acme", cost="2", outcome="upstream_failed", status=502),
            call_row(pro, dt.timedelta(days=60), "acme"),
            call_row(pro, dt.timedelta(days=91), "beta"),
            call_row(enterprise, dt.timedelta(days=200), "beta")]
    db = home_dir.db_path(home)
    with writing(db) as con:
        call_rows.insert(con, rows)
    run_cli(home, "budgets", "set", "--scope", "customer:acme", "--all-keys", "--monthly", "1000")
    spend_before, counts_before = budget_spend(home, "acme"), month_counts(home)

    dry = json.loads(run_cli(home, "purge", "--dry-run", "--json"))
    assert dry["expired_calls"] == 3 and dry["deleted"] is None and len(raw_rows(db)) == 7

    done = json.loads(run_cli(home, "purge", "--json"))
    assert done["deleted"]["calls"] == 3
    kept = {(key_id, round((NOW - ts).total_seconds() / 86400)) for key_id, ts in raw_rows(db)}
    assert kept == {(free, 0), (free, 6), (pro, 60), (enterprise, 200)}
    # What the purged calls cost and how many there were is still counted, to the cent and the call.
    assert budget_spend(home, "acme") == spend_before and month_counts(home) == counts_before
    with reading(db) as con:
        rollup = con.execute("SELECT sum(calls), sum(errors), sum(cost_usd), sum(input_tokens) "
                             "FROM rollups").fetchone()
    assert rollup == (7, 1, Decimal("4.75"), 700)  # the purged calls' rollups stay

    # --older-than shortens retention for every key (enterprise included) and never lengthens it.
    run_cli(home, "purge", "--older-than", "30d")
    kept = {(key_id, round((NOW - ts).total_seconds() / 86400)) for key_id, ts in raw_rows(db)}
    assert kept == {(free, 0), (free, 6)}
    assert month_counts(home) == counts_before  # the 60-day call was not in this month anyway


def test_a_key_can_keep_its_own_retention(migrated_home):
    home = migrated_home
    key = make_key(home, "e", "enterprise")
    db = home_dir.db_path(home)
    with writing(db) as con:
        call_rows.insert(con, [call_row(key, dt.timedelta(days=d), "c") for d in (1, 20, 40)])
    run_cli(home, "keys", "set-retention", str(key), "--days", "30")
    assert "30d" in run_cli(home, "keys", "list")
    run_cli(home, "purge")
    assert len(raw_rows(db)) == 2


def test_bad_purge_arguments_say_what_to_give(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "purge", "--older-than", "30 days"])
    assert result.exit_code == 2 and "e.g. 30d, 12h or 2w" in result.output


def test_the_running_proxy_purges_by_itself(tmp_path, upstream):
    home = tmp_path / "home"
    free = make_key(home, "free", "free")
    db = home_dir.db_path(home)
    with writing(db) as con:
        call_rows.insert(con, [call_row(free, dt.timedelta(days=10), "old"),
                               call_row(free, dt.timedelta(days=1), "new")])
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", extra_args=("--alert-interval", "1"))
    try:
        deadline = time.monotonic() + 60  # the first round of alerts comes first: seconds at load 9-10
        while len(raw_rows(db)) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [c["customer_id"] for c in proxy.calls()] == ["new"]
    finally:
        proxy.stop()
    assert "retention: purged 1 calls" in proxy.log_path.read_text()


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_gdpr_export_then_delete_while_the_proxy_runs_leaves_no_trace_on_disk(tmp_path, upstream):
    home = tmp_path / "home"
    customer = f"gdpr-{uuid.uuid4().hex[:12]}"
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log")
    try:
        client = proxy.openai(headers={"x-customer-id": customer})
        for _ in range(3):
            client.chat.completions.create(**CHAT)
        client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True}).close()
        proxy.openai(headers={"x-customer-id": "someone-else"}).chat.completions.create(**CHAT)
        proxy.rows(customer, expect=4)
        run_cli(home, "budgets", "set", "--scope", f"customer:{customer}", "--all-keys", "--daily", "5")
        db = home_dir.db_path(home)
        with writing(db) as con:
            alert_rows.record(con, NOW, "spike", f"AiSpendTrack: spend spike for customer {customer}", "webhook",
                              "hooks.example", True, None, f"spike:customer:{customer}:2026-11-25T10")
        exported = tmp_path / "export.json"
        run_cli(home, "gdpr", "export", "--customer", customer, "--out", str(exported))
        document = json.loads(exported.read_text())
        assert document["subject"] == {"customer": customer}
        assert len(document["calls"]) == 4 and {c["customer_id"] for c in document["calls"]} == {customer}
        assert [b["scope_value"] for b in document["budgets"]] == [customer]
        assert len(document["alerts"]) == 1

        output = run_cli(home, "gdpr", "delete", "--customer", customer, "--yes")
        assert "Erased customer " + customer in output and "Database rewritten" in output
        assert ": 4 calls, " in output and ", 1 budget, 1 alert, 0 pending calls" in output  # not "1 budgets"
        assert files_containing(home, customer.encode()) == []

        # The proxy keeps serving and recording, into the rewritten file.
        proxy.openai(headers={"x-customer-id": "after-erase"}).chat.completions.create(**CHAT)
        assert len(proxy.rows("after-erase")) == 1
        assert len(proxy.rows("someone-else")) == 1
    finally:
        proxy.stop()
    assert files_containing(home, customer.encode()) == []
    assert files_containing(tmp_path / "proxy.log", customer.encode()) == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_calls_answered_before_an_erase_and_not_yet_written_never_reach_the_file(tmp_path, upstream, workers):
    """A proxy writes its rows a flush after the answers: a customer's calls answered just before
    `gdpr delete` were still in its writer's memory (one process, or any worker of --workers) and
    landed after the erase, the customer back in the file and its reports. They are dropped as
    they land; another customer's, answered beside them, are stored."""
    home = tmp_path / "home"
    victim, bystander = f"gone-{uuid.uuid4().hex[:12]}", f"kept-{uuid.uuid4().hex[:12]}"
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", flush_ms=15_000,
                        extra_args=("--workers", workers))
    try:
        for customer in (victim, bystander, victim, victim):
            proxy.openai(headers={"x-customer-id": customer}).chat.completions.create(**CHAT)
        with reading(home_dir.db_path(home)) as con:  # a flush has not come: the rows are all held
            assert con.execute("SELECT count(*) FROM calls").fetchone() == (0,)
        output = run_cli(home, "gdpr", "delete", "--customer", victim, "--yes")
        assert output.startswith(f"Nothing was stored about customer {victim}"), output
        assert "Calls a running proxy has not written yet are checked against this erase when they land." in output
    finally:
        proxy.stop()  # its rows are all written before it exits
    with reading(home_dir.db_path(home)) as con:
        stored = con.execute("SELECT customer_id, count(*) FROM calls GROUP BY ALL").fetchall()
    assert stored == [(bystander, 1)]
    assert files_containing(home, victim.encode()) == []


def test_gdpr_delete_removes_the_subject_from_pending_spill_files(tmp_path):
    home = tmp_path / "home"
    key = make_key(home, "k", "pro")
    spill = home / home_dir.SPILL_DIR
    spill.mkdir()
    lines = [json.dumps(call_row(key, dt.timedelta(0), who), default=str) for who in ("erase-me", "stay", "erase-me")]
    (spill / "1-1-1.jsonl").write_text("\n".join(lines) + "\n")
    (spill / "1-1-2.jsonl").write_text(lines[0] + "\n")
    # A worker of `proxy --workers N` (embedded) spills in its own directory: replayed later all the same.
    worker_spill = home / home_dir.WORKERS_DIR / "1" / home_dir.SPILL_DIR
    worker_spill.mkdir(parents=True)
    (worker_spill / "1-2-1.jsonl").write_text(lines[2] + "\n" + lines[1] + "\n")
    document = json.loads(run_cli(home, "gdpr", "export", "--customer", "erase-me"))
    assert len(document["pending_calls"]) == 4
    output = run_cli(home, "gdpr", "delete", "--customer", "erase-me", "--yes")
    assert "4 pending calls" in output
    assert [p.name for p in spill.iterdir()] == ["1-1-1.jsonl"]
    assert [json.loads(line)["customer_id"] for line in (worker_spill / "1-2-1.jsonl").read_text().splitlines()] == [
        "stay"]
    assert [json.loads(line)["customer_id"] for line in (spill / "1-1-1.jsonl").read_text().splitlines()] == ["stay"]
    assert files_containing(home, b"erase-me") == []
    # A torn spill file (a crash in an older version) is reported, never silently left out.
    (spill / "1-1-3.jsonl").write_text('{"customer_id": "stay"')
    from click.testing import CliRunner

    from cli.main import cli
    result = CliRunner().invoke(cli, ["--home", str(home), "gdpr", "export", "--customer", "stay"])
    assert result.exit_code == 1 and "Could not read 1 spill file" in result.output
    assert "not in the export" in result.output


def test_gdpr_by_key_removes_the_key_and_its_calls(migrated_home):
    home = migrated_home
    keep, gone = make_key(home, "keep", "pro"), make_key(home, "gone", "free")
    db = home_dir.db_path(home)
    with writing(db) as con:
        call_rows.insert(con, [call_row(keep, dt.timedelta(hours=1), "a"), call_row(gone, dt.timedelta(hours=1), "b"),
                               call_row(gone, dt.timedelta(days=9), "b")])
    run_cli(home, "purge")  # one of the key's calls now lives on only in the rollups
    document = json.loads(run_cli(home, "gdpr", "export", "--key", str(gone)))
    assert document["subject"] == {"key": gone}  # a key id is a number, as it is asked for
    assert [k["name"] for k in document["key"]] == ["gone"] and "key_hash" not in document["key"][0]
    assert len(document["calls"]) == 1 and len(document["rollups"]) == 2
    run_cli(home, "gdpr", "delete", "--key", str(gone), "--yes")
    assert [k["id"] for k in json.loads(run_cli(home, "keys", "list", "--json"))] == [keep]
    with reading(db) as con:
        assert con.execute("SELECT DISTINCT key_id FROM rollups").fetchall() == [(keep,)]
        assert con.execute("SELECT DISTINCT key_id FROM calls").fetchall() == [(keep,)]


def test_gdpr_by_key_exports_and_erases_its_quota_alerts(migrated_home):
    from .helpers import Receiver
    home = migrated_home
    keep, gone = make_key(home, "keep", "free"), make_key(home, "gone", "free")
    for key_id in (keep, gone):
        run_cli(home, "keys", "set-limit", str(key_id), "--per-month", "4")
    with writing(home_dir.db_path(home)) as con:  # 3 of 4 calls this month: a 75% quota alert for each key
        call_rows.insert(con, [call_row(key_id, dt.timedelta(0), f"c{key_id}") for key_id in (keep, gone)
                               for _ in range(3)])
    receiver = Receiver()
    (home / "alerts.toml").write_text(f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n')
    try:
        run_cli(home, "alerts", "check")
    finally:
        receiver.close()

    def quota_alerts() -> list[str]:
        listed = json.loads(run_cli(home, "alerts", "list", "--json"))
        return sorted(a["subject"] for a in listed if a["kind"] == "quota")

    assert [f"key {k} has used 75% of its monthly quota" in s for k, s in zip((keep, gone), quota_alerts())] == \
        [True, True]
    document = json.loads(run_cli(home, "gdpr", "export", "--key", str(gone)))
    assert [a["subject"] for a in document["alerts"]] == [quota_alerts()[1]]
    output = run_cli(home, "gdpr", "delete", "--key", str(gone), "--yes")
    assert f"Erased key {gone}: 3 calls, 1 rollup row, 0 budgets, 1 alert," in output
    [kept] = quota_alerts()
    assert f"key {keep} has used 75% of its monthly quota" in kept


def test_gdpr_api_is_for_admin_tokens_sent_as_a_header(migrated_home):
    from web import create_app
    home = migrated_home
    key = json.loads(run_cli(home, "keys", "create", "--name", "k", "--json"))
    admin = json.loads(run_cli(home, "admin", "create-token", "--name", "ops", "--json"))["token"]
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, [call_row(key["id"], dt.timedelta(hours=1), "api-cust")])
        batches.remember(con, "anthropic", "msgbatch_api", None, (key["id"], "api-cust", "nightly"), NOW)
    client = create_app(home).test_client()
    as_key = {"Authorization": f"Bearer {key['key']}"}
    as_admin = {"Authorization": f"Bearer {admin}"}
    assert client.get("/api/v1/gdpr/export?customer=api-cust", headers=as_key).status_code == 403
    exported = client.get("/api/v1/gdpr/export?customer=api-cust", headers=as_admin)
    assert exported.status_code == 200 and len(exported.get_json()["calls"]) == 1
    assert [b["batch_id"] for b in exported.get_json()["batches"]] == ["msgbatch_api"]
    assert client.post("/api/v1/gdpr/delete", json={}, headers=as_admin).get_json()["error"]["message"] == \
        "Give exactly one of customer=ID or key=ID."
    assert set(exported.get_json()) >= {"calls", "rollups", "budgets", "alerts", "batches"}
    for bad in ({"customer": ""}, {"customer": 7}):  # nothing to match a call by: refused, not "everyone's"
        refused = client.post("/api/v1/gdpr/delete", json=bad, headers=as_admin)
        assert refused.status_code == 400
        assert refused.get_json()["error"]["message"] == "customer must be a non-empty string."
    deleted = client.post("/api/v1/gdpr/delete", json={"customer": "api-cust"}, headers=as_admin).get_json()
    counts = ("calls", "rollups", "alerts", "budgets", "batches", "keys")
    assert {n: deleted["deleted"].get(n) for n in counts} == {"calls": 1, "rollups": 1, "alerts": 0, "budgets": 0,
                                                           "batches": 1, "keys": None}
    with reading(home_dir.db_path(home)) as con:  # the batch stays known, naming no one
        assert con.execute("SELECT batch_id, key_id, customer_id, feature FROM batches").fetchall() == [
            ("msgbatch_api", None, None, None)]
    by_key = client.post("/api/v1/gdpr/delete", json={"key": key["id"]}, headers=as_admin).get_json()
    assert by_key["subject"] == {"key": key["id"]}
    assert {n: by_key["deleted"].get(n) for n in counts} == {"calls": 0, "rollups": 0, "alerts": 0, "budgets": 0,
                                                           "batches": 0, "keys": 1}
    assert client.post("/api/v1/purge", json={"dry_run": True}, headers=as_admin).get_json()["expired_calls"] == 0


def test_gdpr_export_and_delete_touch_only_the_subjects_own_alerts(migrated_home):
    home = migrated_home
    key = make_key(home, "k", "pro")
    with writing(home_dir.db_path(home)) as con:
        now = clear_of_utc_midnight()  # the calls and `alerts check` on one UTC day
        call_rows.insert(con, [call_row(key, dt.timedelta(0), who, cost="2", ts=now) for who in ("e", "acme")])
    for who in ("e", "acme"):
        run_cli(home, "budgets", "set", "--scope", f"customer:{who}", "--all-keys", "--daily", "1")
    receiver = Receiver()
    (home / "alerts.toml").write_text(f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n')
    try:
        run_cli(home, "alerts", "check")
        subjects = sorted(json.loads(body)["subject"] for _, body in receiver.requests)
        assert subjects == ["AiSpendTrack: daily budget crossed for customer acme on all keys",
                            "AiSpendTrack: daily budget crossed for customer e on all keys"]
        document = json.loads(run_cli(home, "gdpr", "export", "--customer", "e"))
        assert [a["subject"] for a in document["alerts"]] == [
            "AiSpendTrack: daily budget crossed for customer e on all keys"]
        output = run_cli(home, "gdpr", "delete", "--customer", "e", "--yes")
        assert ", 1 alert," in output, output
        remaining = [a["subject"] for a in json.loads(run_cli(home, "alerts", "list", "--json"))]
        assert remaining == ["AiSpendTrack: daily budget crossed for customer acme on all keys"]
        run_cli(home, "alerts", "check")
        assert len(receiver.requests) == 2  # acme's alert is not sent again
    finally:
        receiver.close()


def test_an_erased_customer_leaves_the_metrics_and_its_record_is_a_keyed_hash(tmp_path, upstream):
    home, metrics_port = tmp_path / "home", free_port()
    customer = "ann"  # short: a plain SHA-256 of it is found by trying every short id
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log",
                        extra_args=("--metrics-port", str(metrics_port), "--metrics-tags"))
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        for who in (customer, "bob"):
            proxy.openai(headers={"x-customer-id": who}).chat.completions.create(**CHAT)
            proxy.rows(who)
        before = httpx.get(metrics_url, timeout=5).text
        assert 'customer="ann"' in before and 'customer="bob"' in before
        run_cli(home, "gdpr", "delete", "--customer", customer, "--yes")
        deadline = time.monotonic() + 20
        while 'customer="ann"' in httpx.get(metrics_url, timeout=5).text and time.monotonic() < deadline:
            time.sleep(0.2)
        after = httpx.get(metrics_url, timeout=5).text
        assert 'customer="ann"' not in after and 'customer="bob"' in after
        proxy.openai(headers={"x-customer-id": customer}).chat.completions.create(**CHAT)  # a new call counts again
        proxy.rows(customer)
        assert 'customer="ann"' in httpx.get(metrics_url, timeout=5).text
    finally:
        proxy.stop()
    with reading(home_dir.db_path(home)) as con:
        [(kind, stored)] = con.execute("SELECT kind, value_hash FROM erasures").fetchall()
    plain = hashlib.sha256(customer.encode()).hexdigest()
    key_file = home / "erasure-key"
    assert kind == "customer" and stored != plain
    assert stored == hmac.new(bytes.fromhex(key_file.read_text()), plain.encode(), hashlib.sha256).hexdigest()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_a_purge_says_per_key_what_goes_and_why(tmp_path):
    import re
    home = tmp_path / "home"
    free, pro = make_key(home, "f", "free"), make_key(home, "p", "pro")
    forever, own = make_key(home, "e", "enterprise"), make_key(home, "o", "enterprise")
    run_cli(home, "keys", "set-retention", str(own), "--days", "14")
    ages = {free: (0.1, 8, 40), pro: (20, 60), forever: (10, 200), own: (20, 40)}
    db = home_dir.db_path(home)
    with writing(db) as con:
        call_rows.insert(con, [call_row(k, dt.timedelta(days=d), "c") for k, days in ages.items() for d in days])

    def said(*args: str) -> list[str]:
        lines = run_cli(home, "purge", *args).splitlines()
        # Measured from after the command (NOW is the module's import time, long past in a slow run).
        cutoff = re.search(r"before (\S+ \S+) UTC", lines[0]).group(1)  # the free plan's: 7 days ago
        age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(cutoff).replace(tzinfo=dt.UTC)
        assert dt.timedelta(days=7) <= age <= dt.timedelta(days=7, hours=1, minutes=5)
        return [re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d", "T", line) for line in lines]

    assert said("--dry-run") == [
        f"  key {free} (f): 2 calls before T UTC: its free plan keeps 7 days",
        f"  key {pro} (p): 0 calls before T UTC: its pro plan keeps 90 days",
        f"  key {forever} (e): nothing: its enterprise plan keeps calls forever",
        f"  key {own} (o): 2 calls before T UTC: its own retention keeps 14 days",
        "Would purge 4 calls (dry run: nothing deleted)."]
    assert said("--older-than", "30d", "--dry-run") == [
        f"  key {free} (f): 2 calls before T UTC: its free plan keeps 7 days, less than --older-than 30d",
        f"  key {pro} (p): 1 call before T UTC: --older-than 30d (its pro plan keeps 90 days)",
        f"  key {forever} (e): 1 call before T UTC: --older-than 30d (its enterprise plan keeps calls forever)",
        f"  key {own} (o): 2 calls before T UTC: its own retention keeps 14 days, less than --older-than 30d",
        "  calls without a key: 0 calls before T UTC: --older-than 30d",
        "Would purge 6 calls (dry run: nothing deleted)."]
    planned = json.loads(run_cli(home, "purge", "--older-than", "30d", "--dry-run", "--json"))["keys"]
    assert [(k["name"], k["retention_days"], k["retention_set_by"], k["expired_calls"]) for k in planned] == [
        ("f", 7, "plan", 2), ("p", 90, "plan", 1), ("e", None, "plan", 1), ("o", 14, "key", 2)]
    assert len(raw_rows(db)) == 9
    done = said("--older-than", "30d")
    assert done[2] == (f"  key {forever} (e): 1 call before T UTC: --older-than 30d (its enterprise plan keeps "
                       f"calls forever)")
    assert done[-1].startswith("Purged 6 calls (kept in the rollups)")
    assert sorted((k, round((NOW - ts).total_seconds() / 86400)) for k, ts in raw_rows(db)) == sorted(
        [(free, 0), (pro, 20), (forever, 10)])


def batch_tags_follow_retention_and_erasure(home: Path, db: Path) -> None:
    """Who created which batch (the ``batches`` table's tags) lives no longer than that key's calls,
    and a subject's erase takes every tag of its batches; the batch stays known, so its usage is
    still recorded once. Run on a DuckDB file and on the shared mode's PostgreSQL."""
    free, enterprise = make_key(home, "f", "free"), make_key(home, "e", "enterprise")
    made = {"old-free": (free, "acme", 8), "new-free": (free, "acme", 1), "old-enterprise": (enterprise, "beta", 200),
            "erase-me": (enterprise, "gone", 1)}
    with writing(db) as con:
        for batch_id, (key_id, customer, days) in made.items():
            batches.remember(con, "anthropic", batch_id, None, (key_id, customer, "nightly"),
                             NOW - dt.timedelta(days=days))
        assert batches.claim(con, "anthropic", "old-free", NOW) == (free, "acme", "nightly")  # its usage recorded

    def tags() -> dict[str, tuple]:
        with reading(db) as con:
            return {row[0]: row[1:] for row in con.execute(
                "SELECT batch_id, key_id, customer_id, feature FROM batches ORDER BY batch_id").fetchall()}

    done = json.loads(run_cli(home, "purge", "--json"))
    assert done["deleted"]["batches"] == 1
    assert tags() == {"old-free": (None, None, None), "new-free": (free, "acme", "nightly"),
                      "old-enterprise": (enterprise, "beta", "nightly"), "erase-me": (enterprise, "gone", "nightly")}
    run_cli(home, "purge", "--older-than", "30d")
    assert tags()["old-enterprise"] == (None, None, None)
    run_cli(home, "gdpr", "delete", "--customer", "gone", "--yes")
    assert tags()["erase-me"] == (None, None, None)
    run_cli(home, "gdpr", "delete", "--key", str(free), "--yes")
    assert tags()["new-free"] == (None, None, None)
    with writing(db) as con:  # still known: recorded once, never adopted as new
        assert batches.claim(con, "anthropic", "old-free", NOW) is None
    assert set(tags()) == set(made)


def test_batch_tags_are_purged_with_their_keys_calls_and_erased_with_their_subject(migrated_home):
    home = migrated_home
    batch_tags_follow_retention_and_erasure(home, home_dir.db_path(home))


def test_gdpr_matches_a_subjects_alerts_whole_whatever_its_id_holds(migrated_home):
    """A GDPR export and erase take a subject's own alerts and no one else's: by dedupe key (its
    budgets', a key's quota, its spikes: wildcards and escapes in a customer id are literal, and
    `x` is not `x\\`) and, for a customer, by the subject line of alerts of budgets since removed."""
    home = migrated_home
    k1, k2 = make_key(home, "one", "pro"), make_key(home, "two", "pro")
    for scope in (f"key:{k1}", f"key:{k2}"):
        run_cli(home, "budgets", "set", "--scope", scope, "--daily", "1")
    run_cli(home, "budgets", "set", "--scope", "customer:abc", "--all-keys", "--daily", "1")
    budget_ids = {b["scope_value"]: b["id"] for b in json.loads(run_cli(home, "budgets", "list", "--format", "json"))}
    customers = ["abc", "a_c", "a%", "x", "x\\", "o'r\"1"]
    hour = "2026-12-03T10"
    made: dict[str, list[tuple[str, str | None]]] = {c: [(f"AiSpendTrack: spend spike for customer {c}",
                                                          f"spike:customer:{c}:{hour}")] for c in customers}
    for k in (k1, k2):
        made[str(k)] = [(f"AiSpendTrack: daily budget crossed for key {k}", f"budget:{budget_ids[str(k)]}:daily:x"),
                        (f"AiSpendTrack: key {k} has used 75% of its monthly quota", f"quota:{k}:2026-12:75"),
                        (f"AiSpendTrack: spend spike for key {k}", f"spike:key:{k}:{hour}")]
    made["abc"].append(("AiSpendTrack: daily budget crossed for customer abc on all keys",
                        f"budget:{budget_ids['abc']}:daily:y"))
    # Alerts of budgets removed since (their dedupe key names a budget that is gone), and one from
    # before alerts had dedupe keys: found by their subject line, in each wording a label had.
    made["a_c"] += [("AiSpendTrack: daily budget crossed for customer a_c", "budget:900:daily:z"),
                    ("AiSpendTrack: monthly budget crossed for customer a_c on all keys", "budget:901:monthly:z"),
                    (f"AiSpendTrack: daily budget crossed for customer a_c of key {k2}", None)]
    made["x\\"].append(("AiSpendTrack: spend spike for customer x\\", None))
    with writing(home_dir.db_path(home)) as con:
        for subject, dedupe in [a for alerts in made.values() for a in alerts]:
            alert_rows.record(con, NOW, "budget", subject, "hook", "https://example.invalid", True, None, dedupe)

    def exported(*args: str) -> list[tuple]:
        return sorted((a["subject"], a["dedupe_key"] or "") for a in
                      json.loads(run_cli(home, "gdpr", "export", *args))["alerts"])

    def expected(who: str) -> list[tuple]:
        return sorted((subject, dedupe or "") for subject, dedupe in made[who])

    for c in customers:
        assert exported("--customer", c) == expected(c), c
    for k in (k1, k2):
        assert exported("--key", str(k)) == expected(str(k)), k
    for prefix in ("a", "ab", "x\\\\"):  # nothing of abc's, a_c's, a%'s or x\'s
        assert f"Nothing is stored about customer {prefix}." in run_cli(home, "gdpr", "export", "--customer", prefix)
    output = run_cli(home, "gdpr", "delete", "--customer", "a_c", "--yes")
    assert "Erased customer a_c: 0 calls, 0 rollup rows, 0 budgets, 4 alerts," in output
    output = run_cli(home, "gdpr", "delete", "--key", str(k1), "--yes")
    assert f"Erased key {k1}: 0 calls, 0 rollup rows, 1 budget, 3 alerts," in output
    left = sorted((a["subject"]) for a in json.loads(run_cli(home, "alerts", "list", "--json", "--limit", "100")))
    assert left == sorted(s for who, alerts in made.items() if who not in ("a_c", str(k1)) for s, _ in alerts)


def test_rows_still_held_for_an_erased_subject_are_dropped_only_if_made_before_the_erase(migrated_home):
    """What a shared-mode replica does with the rows it held while another process erased a customer
    or a key (the writer's flush, subjects.without_erased): made before the erase, they are not
    stored; made after it, or another subject's, they are. In-process over the embedded file, which
    records erasures the same way (keyed hashes in ``erasures``)."""
    from addon.core.store import subjects
    home = migrated_home
    kept_key, gone_key = make_key(home, "kept", "pro"), make_key(home, "gone", "pro")
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, [call_row(gone_key, dt.timedelta(minutes=1), "ann"),
                               call_row(kept_key, dt.timedelta(minutes=1), "ann")])
    with reading(home_dir.db_path(home)) as con:  # nothing erased yet: every row is stored
        rows = [{"ts": NOW, "customer_id": "ann", "key_id": kept_key}]
        assert subjects.without_erased(con, rows, subjects.erasure_key(con, home)) == rows
    run_cli(home, "gdpr", "delete", "--customer", "ann", "--yes")
    run_cli(home, "gdpr", "delete", "--key", str(gone_key), "--yes")
    before, after = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    held = [
        {"n": 1, "ts": before, "customer_id": "ann", "key_id": kept_key},   # the erased customer's
        {"n": 2, "ts": before.isoformat(), "customer_id": "ann", "key_id": None},  # as a spill file holds it
        {"n": 3, "ts": after, "customer_id": "ann", "key_id": kept_key},    # a new call after the erase
        {"n": 4, "ts": before, "customer_id": "bob", "key_id": kept_key},   # another customer's
        {"n": 5, "ts": before, "customer_id": None, "key_id": gone_key},    # the erased key's
        {"n": 6, "ts": before, "customer_id": "bob", "key_id": gone_key},
        {"n": 7, "ts": after, "customer_id": None, "key_id": gone_key},
        {"n": 8, "ts": before, "customer_id": None, "key_id": None},
        # A time no one can read (a damaged spill file's): kept, for the insert to quarantine, never
        # an error that stopped every flush.
        {"n": 9, "ts": "garbage", "customer_id": "ann", "key_id": kept_key},
    ]
    with reading(home_dir.db_path(home)) as con:
        assert sorted(kind for kind, _ in subjects.erasures(con)) == ["customer", "key"]
        kept = subjects.without_erased(con, held, subjects.erasure_key(con, home))
        assert [row["n"] for row in kept] == [3, 4, 7, 8, 9]
        # Only the erasures since the oldest row began are read: rows made after both erases keep all.
        assert subjects.erasures(con, since=after) == {}
        assert subjects.without_erased(con, held[2:3] + held[6:7], subjects.erasure_key(con, home)) == \
            held[2:3] + held[6:7]


def test_a_held_row_stamped_the_erases_very_instant_is_dropped_and_one_without_a_customer_is_no_customers(
        migrated_home):
    """subjects.without_erased at its edges: a call made at the erase's own microsecond is the
    erased subject's; a row naming no customer is not the customer's, even one named "None"."""
    from addon.core.store import subjects
    home = migrated_home
    key = make_key(home, "kept", "pro")
    run_cli(home, "gdpr", "delete", "--customer", "None", "--yes")
    with reading(home_dir.db_path(home)) as con:
        [at] = subjects.erasures(con).values()
        held = [{"n": 1, "ts": at, "customer_id": "None", "key_id": key},
                {"n": 2, "ts": at - dt.timedelta(hours=1), "customer_id": None, "key_id": key},
                {"n": 3, "ts": at + dt.timedelta(microseconds=1), "customer_id": "None", "key_id": key}]
        kept = subjects.without_erased(con, held, subjects.erasure_key(con, home))
    assert [row["n"] for row in kept] == [2, 3]
