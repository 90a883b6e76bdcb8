"""The store under real conditions: readers in other processes, shutdowns, a locked file."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from addon.core.store import calls as call_rows
from addon.core.store import connection, migrations, reading, remote, writing
from addon.writer import Writer

from .helpers import call_row, hold_read_only, run_cli, start_proxy, until

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_reading_while_the_proxy_writes_loses_nothing_and_shows_no_lock_errors(proxy, customer):
    stop = threading.Event()
    reader_results: list[subprocess.CompletedProcess] = []
    read_seconds: list[float] = []

    def read_in_a_loop():
        while not stop.is_set():
            started = time.monotonic()
            reader_results.append(subprocess.run(
                [sys.executable, "-m", "cli", "--home", str(proxy.home), "calls", "--limit", "5", "--format", "json"],
                capture_output=True, text=True, timeout=60))
            read_seconds.append(time.monotonic() - started)

    readers = [threading.Thread(target=read_in_a_loop) for _ in range(2)]
    for reader in readers:
        reader.start()
    client = proxy.openai(headers={"x-customer-id": customer})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: client.chat.completions.create(**CHAT), range(200)))
    completed_at = time.monotonic()
    rows = proxy.rows(customer, expect=200)
    visible_after = time.monotonic() - completed_at
    stop.set()
    for reader in readers:
        reader.join()
    assert len(rows) == 200 and len({r["id"] for r in rows}) == 200
    # Prompt: within the flush interval and a reader's turn on the file, measured on this machine now
    # (a busy machine stretches both); a writer that waited for the readers to stop would take 10 s.
    assert visible_after < 1.0 + 2 * max(read_seconds), (visible_after, max(read_seconds))
    assert reader_results and all(r.returncode == 0 for r in reader_results), \
        [r.stderr for r in reader_results if r.returncode]
    assert all(isinstance(json.loads(r.stdout), list) for r in reader_results)


def test_shutdown_flushes_every_completed_call(tmp_path, upstream, customer):
    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log", flush_ms=60_000)
    try:
        client = proxy.openai(headers={"x-customer-id": customer})
        for _ in range(25):
            client.chat.completions.create(**CHAT)
        assert proxy.rows(customer, expect=25, timeout=0.5) == []  # nothing flushed yet: 60 s interval
        proxy.stop()  # SIGTERM, with the client's keep-alive connection still open
    finally:
        proxy.stop()
    assert proxy.process.returncode == 0
    assert len(proxy.rows(customer, expect=25, timeout=0)) == 25
    assert "Traceback" not in proxy.log_path.read_text()  # a normal stop is quiet


def _row(n: int) -> dict:
    return {"id": uuid.uuid4(), "ts": dt.datetime(2026, 11, 1, 12, 0, n, tzinfo=dt.UTC), "key_id": 1,
            "provider": "openai", "endpoint": "/v1/chat/completions", "model": "gpt-4o", "stream": False,
            "status": 200, "outcome": "completed", "error": None, "input_tokens": n, "cache_read_tokens": 0,
            "cache_write_tokens": 0, "cache_write_1h_tokens": 0, "output_tokens": 1, "reasoning_tokens": 0,
            "web_search_requests": 0, "cost_usd": Decimal("0.0000125"), "priced": True,
            "price_source": "genai-prices", "usage_source": "reported", "customer_id": "spill", "feature": None,
            "latency_ms": 1.5, "ttft_ms": None}



def test_a_reader_whose_upgrade_fails_says_why(tmp_path, monkeypatch):
    """A file an upgrade step failed on was reported as 'IndexError: pop from empty list' (the reader
    closed its connection, then closed it again after the failure), hiding the step's error."""
    db = tmp_path / "a.duckdb"
    with writing(db):
        pass
    monkeypatch.setattr(migrations, "is_current", lambda con, database=None: False)

    def failing_upgrade(*args, **kwargs):
        raise RuntimeError("Binder Error: the step that failed")
    monkeypatch.setattr(connection, "writing", failing_upgrade)
    with pytest.raises(RuntimeError, match="the step that failed"), reading(db):
        pass


def test_rows_spill_while_the_database_is_locked_and_are_written_exactly_once(tmp_path):
    db, spill = tmp_path / "a.duckdb", tmp_path / "spill"
    writer = Writer(db, spill, build_row=lambda row: row, on_refresh=lambda con: None,
                    spill_after_rows=5, spill_after_seconds=3600)
    writer.load_keys_now()  # creates the schema
    holder = hold_read_only(db, 30)
    try:
        rows = [_row(n) for n in range(12)]
        for row in rows:
            writer.submit(row)
            writer.cycle(lock_timeout=0.05)
        spilled = sorted(spill.glob("*.jsonl"))
        assert spilled, "rows should have gone to a spill file while the database was locked"
        for n, path in enumerate(spilled):
            shutil.copy(path, tmp_path / f"saved-{n}.jsonl")
        saved = sorted(tmp_path.glob("saved-*"))
    finally:
        holder.kill()
        holder.wait()
    writer.stop()
    with reading(db) as con:
        stored = call_rows.newest(con, 100)
    assert sorted(r["input_tokens"] for r in stored) == list(range(12))
    assert not list(spill.glob("*.jsonl"))
    # A crash after the insert but before the spill file was removed: the replay must not double.
    for path in saved:
        shutil.copy(path, spill / path.name.replace("saved-", "0-replay-"))
    writer = Writer(db, spill, build_row=lambda row: row, on_refresh=lambda con: None)
    writer.cycle(lock_timeout=5)
    with reading(db) as con:
        again = call_rows.newest(con, 100)
    assert sorted(r["input_tokens"] for r in again) == list(range(12))
    assert {r["cost_usd"] for r in again} == {Decimal("0.0000125")}


def test_rows_wait_for_a_busy_file_but_are_spilled_within_a_second_while_the_store_is_away(tmp_path):
    """A reader holding the file a moment is how it is shared: the rows wait in memory (30 s). A store
    that is away (a worker's owner restarting here; PostgreSQL stopped in the shared mode alike) may
    stay away, and the rows were kept 30 s in memory all the same: a kill -9 of the process meanwhile
    lost every call it served in that time (probes: 10 of 40, and 50 of 50)."""
    def cycles(writer: Writer, seconds: float) -> None:
        until_at = time.monotonic() + seconds
        while time.monotonic() < until_at:
            writer.cycle(lock_timeout=0.05)
            time.sleep(0.1)

    db, spill = tmp_path / "a.duckdb", tmp_path / "spill"
    writer = Writer(db, spill, build_row=lambda row: row, on_refresh=lambda con: None)
    writer.load_keys_now()
    holder = hold_read_only(db, 30)
    try:
        writer.submit(_row(1))
        cycles(writer, 1.6)
        assert not list(spill.glob("*.jsonl"))
    finally:
        holder.kill()
        holder.wait()
    away, away_spill = tmp_path / "b.duckdb", tmp_path / "b-spill"
    with writing(away):
        pass  # the file exists; its owner does not answer
    connection.only_through_owner(away)
    try:
        absent = Writer(away, away_spill, build_row=lambda row: row, on_refresh=lambda con: None)
        absent.submit(_row(2))
        cycles(absent, 1.6)
        spilled = [json.loads(line) for path in away_spill.glob("*.jsonl") for line in path.read_text().splitlines()]
        assert [row["input_tokens"] for row in spilled] == [2]
    finally:
        connection._owner_only.clear()


def test_when_neither_database_nor_spill_can_be_written_rows_wait_in_memory_up_to_a_cap(tmp_path, caplog):
    db = tmp_path / "a.duckdb"
    (tmp_path / "not-a-dir").write_text("")
    spill = tmp_path / "not-a-dir" / "spill"  # mkdir fails here even for root
    writer = Writer(db, spill, build_row=lambda row: row, on_refresh=lambda con: None,
                    spill_after_rows=2, spill_after_seconds=3600, max_pending=5)
    writer.load_keys_now()
    holder = hold_read_only(db, 30)
    try:
        for n in range(8):
            writer.submit(_row(n))
            writer.cycle(lock_timeout=0.05)  # each failed spill must leave the writer working
    finally:
        holder.kill()
        holder.wait()
    assert writer.rows_dropped == 3 and "dropping the oldest unwritten rows" in caplog.text
    writer.cycle(lock_timeout=5)
    with reading(db) as con:
        stored = call_rows.newest(con, 100)
    assert sorted(r["input_tokens"] for r in stored) == [3, 4, 5, 6, 7]  # the newest five, once each


def test_spilled_rows_survive_a_restart(tmp_path, upstream, customer):
    home = tmp_path / "home"
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # what an erase does: the file to itself, every other use of it waits
        with remote.session(home, timeout=10, alone=True):
            held.set()
            release.wait(8)  # past the writer's last wait at shutdown (5 s)
    holder = threading.Thread(target=hold)
    try:
        client = proxy.openai(headers={"x-customer-id": customer})
        for _ in range(3):
            client.chat.completions.create(**CHAT)
        holder.start()
        assert held.wait(10)
        proxy.stop()  # the database is still held: shutdown must spill, not drop
        assert list((home / "spill").glob("*.jsonl"))
    finally:
        release.set()
        holder.join(10)
    restarted = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=proxy.key)
    try:
        assert len(restarted.rows(customer, expect=3)) == 3
        # The file goes once its rows are committed (and the rollups' last bucket merged, which the
        # insert does before it returns): a moment after the rows can be read.
        until(lambda: not list((home / "spill").glob("*.jsonl")), 10, "the replayed spill file removed")
    finally:
        restarted.stop()


def test_calls_table_fits_the_terminal_and_marks_unpriced(proxy, customer):
    proxy.openai(headers={"x-customer-id": customer, "x-test-scenario": "unknown_model"}).chat.completions.create(
        **CHAT)
    proxy.rows(customer)
    out = run_cli(proxy.home, "calls", "--limit", "1")
    header, line = out.splitlines()[:2]
    assert header.split()[:3] == ["TIME", "(UTC)", "KEY"]
    assert "acme-llm-7b" in line and "unpriced" in line and "$0" not in line
    checked = run_cli(proxy.home, "prices", "check")
    assert "acme-llm-7b" in checked and "never $0" in checked


def test_the_migration_gives_calls_that_billed_nothing_a_zero_cost(tmp_path):
    legacy = dict(cost_usd=None, priced=False, usage_source="none", price_source=None)
    rows = [call_row(1, status=429, **legacy), call_row(2, status=None, **legacy),
            call_row(3, endpoint="/v1/models", **legacy),
            call_row(4, **legacy),  # a metered endpoint that answered 200 without usage: unknown
            call_row(5, cost_usd=None, priced=False, usage_source="reported", model="acme-7b")]  # unpriced model
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, rows)
        migrations.m010_nothing_billed_costs_zero(con)
        stored = {r["input_tokens"]: (r["cost_usd"], r["priced"]) for r in call_rows.newest(con, 10)}
    assert stored == {1: (0, True), 2: (0, True), 3: (0, True), 4: (None, False), 5: (None, False)}


def test_the_units_migration_makes_free_looking_image_and_audio_calls_unpriced(tmp_path):
    """Before it, images, transcriptions and speech were forwarded unmetered and stored as $0, priced."""
    free = dict(cost_usd=Decimal(0), priced=True, usage_source="none", price_source=None, model=None)
    rows = [call_row(1, endpoint="/v1/images/generations", **free), call_row(2, endpoint="/v1/audio/speech", **free),
            call_row(3, endpoint="/v1/audio/transcriptions", status=400, **free),  # refused: billed nothing
            call_row(4, endpoint="/v1/models", **free), call_row(5)]
    with writing(tmp_path / "a.duckdb") as con:
        con.execute("DELETE FROM schema_migrations WHERE name = 'm017_units_columns'")
        con.execute("; ".join(f"ALTER TABLE calls DROP COLUMN {name}" for name in call_rows.UNIT_NAMES))
        names = [n for n in rows[0] if n not in call_rows.UNIT_NAMES]
        for row in rows:
            con.execute(f"INSERT INTO calls ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                        [row[n] for n in names])
        assert migrations.apply_pending(con) == ["m017_units_columns"]
        stored = {r["input_tokens"]: (r["cost_usd"], r["priced"], r["usage_source"], r["characters"])
                  for r in call_rows.newest(con, 10)}
    assert stored == {1: (None, False, "unmetered", 0), 2: (None, False, "unmetered", 0), 3: (0, True, "none", 0),
                      4: (0, True, "none", 0), 5: (Decimal("0.01"), True, "reported", 0)}


def test_the_tools_migration_gives_an_older_file_the_tool_columns_and_its_rows_zero_tool_calls(tmp_path):
    tools = ["web_fetch_requests", "file_search_calls", "code_executions", "containers", "grounded_prompts"]
    with writing(tmp_path / "a.duckdb") as con:
        con.execute("DELETE FROM schema_migrations WHERE name = 'm020_tools'")
        con.execute("; ".join(f"ALTER TABLE calls DROP COLUMN {name}" for name in tools))
        row = call_row(1, web_search_requests=2)
        names = [n for n in row if n not in tools]
        con.execute(f"INSERT INTO calls ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                    [row[n] for n in names])
        assert migrations.apply_pending(con) == ["m020_tools"]
        call_rows.insert(con, [call_row(2, **{**dict.fromkeys(tools, 0), "file_search_calls": 3, "containers": 1})])
        stored = {r["input_tokens"]: (r["web_search_requests"], *(r[t] for t in tools))
                  for r in call_rows.newest(con, 10)}
    assert stored == {1: (2, 0, 0, 0, 0, 0), 2: (0, 0, 3, 0, 1, 0)}


def test_the_proxy_us_migration_gives_an_older_file_the_column_and_its_rows_null(tmp_path):
    """Rows from before it were never measured: NULL, not 0 µs (the report's p50/p99 leave them out)."""
    with writing(tmp_path / "a.duckdb") as con:
        con.execute("DELETE FROM schema_migrations WHERE name = 'm022_proxy_us'")
        con.execute("ALTER TABLE calls DROP COLUMN proxy_us")
        row = call_row(1)
        names = [n for n in row if n != "proxy_us"]
        con.execute(f"INSERT INTO calls ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                    [row[n] for n in names])
        assert migrations.apply_pending(con) == ["m022_proxy_us"]
        call_rows.insert(con, [call_row(2, proxy_us=57)])
        stored = {r["input_tokens"]: r["proxy_us"] for r in call_rows.newest(con, 10)}
    assert stored == {1: None, 2: 57}


def test_the_customer_key_migration_fills_older_rows_and_reports_find_them(tmp_path):
    from addon.core.reports import parse_report
    from addon.core.store import reports as report_rows
    with writing(tmp_path / "a.duckdb") as con:
        con.execute("DELETE FROM schema_migrations WHERE name = 'm033_customer_key'")
        con.execute("ALTER TABLE calls DROP COLUMN customer_key")
        for row in (call_row(1, customer_id="acme"), call_row(2, customer_id=None)):
            con.execute(f"INSERT INTO calls ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        list(row.values()))
        assert migrations.apply_pending(con) == ["m033_customer_key"]
        call_rows.insert(con, [call_row(3, customer_id="acme"), call_row(4, customer_id=None)])
        keys = dict(con.execute("SELECT input_tokens, customer_key FROM calls").fetchall())
        (acme,) = con.execute(f"SELECT {call_rows.customer_key_sql('?')}", ["acme"]).fetchone()
        spec = parse_report(["model"], customer="acme", now=dt.datetime.now(dt.UTC))
        found = report_rows.report(con, spec, exact=True)[1]["calls"]
    assert keys == {1: acme, 2: 0, 3: acme, 4: 0} and acme != 0
    assert found == 2


def test_customers_sharing_a_key_and_rows_without_one_are_told_apart_by_their_text(tmp_path):
    # c19345 and c211544 have the same key (md5's low bits modulo 2^31 - 1); a lake's rows written
    # before the key hold NULL and are found by the text alone.
    from addon.core.reports import parse_report
    from addon.core.store import reports as report_rows
    with writing(tmp_path / "a.duckdb") as con:
        call_rows.insert(con, [call_row(i, customer_id=c) for i, c in enumerate(
            ["c19345", "c19345", "c211544", "c211544", "c211544", "other"])])
        con.execute("UPDATE calls SET customer_key = NULL WHERE input_tokens IN (1, 4)")
        (same,) = con.execute("SELECT count(DISTINCT customer_key) FROM calls WHERE customer_id IN "
                              "('c19345', 'c211544') AND customer_key IS NOT NULL").fetchone()
        counts = {c: report_rows.report(con, parse_report(["model"], customer=c, now=dt.datetime.now(dt.UTC)),
                                        exact=True)[1]["calls"] for c in ("c19345", "c211544", "other", "none")}
    assert same == 1
    assert counts == {"c19345": 2, "c211544": 3, "other": 1, "none": 0}


def test_a_sum_of_stored_costs_is_the_cost_of_the_summed_usage(tmp_path):
    """A cent-fraction price: 1 cache-read token of deepseek-v4-pro's promotional $0.003625 per
    million is $3.625e-9 a call; at ten decimals it was stored as $3.6e-9 and 1,000 calls lost 0.7%."""
    from addon.core.home import db_path
    from pricing import PriceBook, TokenUsage
    price = PriceBook(tmp_path / "prices.toml").price(TokenUsage(cache_read_tokens=1), "deepseek",
                                                      "deepseek-v4-pro", dt.datetime(2026, 7, 1, 12, tzinfo=dt.UTC))
    assert price.cost_usd == Decimal("0.000000003625")
    with writing(db_path(tmp_path)) as con:
        call_rows.insert(con, [call_row(n, cost_usd=price.cost_usd) for n in range(1000)])
    [model] = json.loads(run_cli(tmp_path, "report", "--since", "2026-11-25", "--format", "json"))
    assert model["calls"] == 1000 and Decimal(str(model["cost_usd"])) == Decimal("0.000003625")


def test_an_upgrade_applies_every_migration_on_start_and_keeps_keys_and_calls(tmp_path, upstream):
    """docs/operations.md, "Upgrading": a database written by the first version, then today's proxy."""
    import duckdb

    from addon.core import keys as keygen
    key = keygen.new_key()
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    con = duckdb.connect(str(home / "aispendtrack.duckdb"))
    con.execute("CREATE TABLE schema_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ)")
    migrations.MIGRATIONS[0](con)
    con.execute("INSERT INTO schema_migrations VALUES (?, now())", [migrations.MIGRATIONS[0].__name__])
    con.execute("INSERT INTO keys (name, key_hash, prefix, created_at) VALUES ('old', ?, ?, now())",
                [keygen.hash_key(key), keygen.display_prefix(key)])
    old = call_row(7, customer_id="before-upgrade")
    old.pop("service_tier", None)
    names = [name for name in old if name in {c for (c,) in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'calls'").fetchall()}]
    con.execute(f"INSERT INTO calls ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [old[name] for name in names])
    con.close()

    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=key)
    try:
        proxy.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "after-upgrade"})
        assert len(proxy.rows("after-upgrade")) == 1
        [before] = proxy.rows("before-upgrade")
        assert before["input_tokens"] == 7 and Decimal(str(before["cost_usd"])) == Decimal("0.01")
    finally:
        proxy.stop()
    with reading(home / "aispendtrack.duckdb") as con:
        applied = [name for (name,) in con.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()]
    assert applied == sorted(m.__name__ for m in migrations.MIGRATIONS)


def test_an_owner_that_stops_answering_mid_request_is_one_line_and_an_export_says_its_file_is_incomplete(tmp_path):
    """Probe: a command whose owner was killed mid-answer printed "Aborted!" (click's word for an
    EOFError, as for Ctrl-C) and nothing else, and an export left a partial file without a word."""
    import socket

    import click

    from addon.core.store import StoreError
    from cli.output import written_whole

    for answers_first in (False, True):
        ours, theirs = socket.socketpair()
        if answers_first:  # reads the request, then dies before answering
            threading.Thread(target=lambda s=theirs: (s.recv(65536), s.close()), daemon=True).start()
        else:  # already gone
            theirs.close()
        try:
            with pytest.raises(StoreError, match="owner of the data stopped answering mid-request"):
                remote.RemoteConnection(ours).execute("SELECT 1")
        finally:
            ours.close()
    out = tmp_path / "calls.csv"
    with pytest.raises(click.ClickException) as raised, written_whole(str(out)):
        raise StoreError("the proxy's owner of the data stopped answering mid-request")
    assert raised.value.message.endswith(f"What was written to {out} is incomplete.")


def test_a_postgresql_session_on_a_descriptor_past_1023_is_not_taken_for_ended():
    """Review: select() refuses a descriptor past 1023, which a proxy serving hundreds of connections
    gives its PostgreSQL sessions: each healthy one was taken for ended (the alert round sent nothing,
    the limits reconnected for every batch)."""
    import os
    import resource
    import socket
    from types import SimpleNamespace

    from addon.core.store import shared

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), max(hard, 2048)))
    ours, theirs = socket.socketpair()
    high = os.dup2(ours.fileno(), 1500)
    session = SimpleNamespace(closed=False, fileno=lambda: high)
    try:
        assert not shared.ended_by_server(session)
        theirs.close()  # the server ends it (a restart): readable, at end of file
        assert shared.ended_by_server(session)
    finally:
        os.close(high)
        ours.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_outage_leaves_a_spill_file_a_second_and_the_files_are_replayed_together(tmp_path, caplog):
    """Review: past its patience the writer spilled on every cycle (10 to 100 files a second with a
    short --flush-ms), and the replay stored each file as an insert of its own (on the lake, a
    commit each): minutes of one thread after an hour's outage."""
    import logging

    away, spilled = tmp_path / "away.duckdb", tmp_path / "away-spill"
    with writing(away):
        pass  # its owner does not answer
    connection.only_through_owner(away)
    try:
        writer = Writer(away, spilled, build_row=lambda row: row, on_refresh=lambda con: None)
        n = 0
        until_at = time.monotonic() + 2.6
        while time.monotonic() < until_at:
            writer.submit(_row(n % 60))
            writer.cycle(lock_timeout=0.05)
            n += 1
            time.sleep(0.05)
    finally:
        connection._owner_only.clear()
    files = sorted(spilled.glob("*.jsonl"))
    assert 1 <= len(files) <= 2, len(files)  # after 1 s, then once a second; the last rows still in memory
    held = sum(len(path.read_text().splitlines()) for path in files)
    db, spill_dir = tmp_path / "back.duckdb", tmp_path / "back-spill"
    spill_dir.mkdir()
    for path in files:
        shutil.move(path, spill_dir / path.name)
    writer = Writer(db, spill_dir, build_row=lambda row: row, on_refresh=lambda con: None)
    caplog.set_level(logging.INFO, logger="addon.writer")
    writer.load_keys_now()  # replays them before anything else
    with reading(db) as con:
        assert len(call_rows.newest(con, 1000)) == held
    assert f"replayed {held} rows from {len(files)} spill file" in caplog.text
