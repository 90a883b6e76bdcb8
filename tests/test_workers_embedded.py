"""`aispendtrack proxy --workers N` in the embedded mode: the parent owns the DuckDB file (cli/embedded.py),
the workers send it their rows over owner.sock, limits and budgets are the host's (addon/core/host_counters.py).

Real proxy processes, the official OpenAI SDK as client, tests/upstream.py's OpenAI on 127.0.0.1, a real
DuckDB file; the helpers are tests/test_workers.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from addon.core import home as home_dir
from addon.core.store import calls as call_rows
from addon.core.store import writing
from cli import workers as workers_cli

from .helpers import call_row, chromium, free_port, run_cli, start_proxy, until_read
from .test_workers import CHAT, _calls, alive, children, metric, rows_tagged, start_workers, stop, wait_for


@pytest.fixture(autouse=True)
def _embedded(monkeypatch):
    monkeypatch.delenv("AISPENDTRACK_CATALOG", raising=False)


def owner_pid(proxy) -> int:
    """The child that holds the data file now (the parent logs each one it starts)."""
    return int(re.findall(r"owner of the data started \(pid (\d+)\)", proxy.log_path.read_text())[-1])


def worker_pids(proxy) -> set[int]:
    return children(proxy.process.pid) - {owner_pid(proxy)}


def open_files(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.add(os.readlink(fd))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("count", [2, 4])
def test_n_embedded_workers_store_one_row_per_call_keep_a_limit_exact_and_serve_the_cli_and_api(count, tmp_path,
                                                                                               upstream):
    home, web_port = tmp_path / "home", free_port()
    free = json.loads(run_cli(home, "keys", "create", "--name", "free", "--json"))
    limited = json.loads(run_cli(home, "keys", "create", "--name", "limited", "--json"))
    run_cli(home, "keys", "set-limit", str(limited["id"]), "--per-hour", "30")
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", count, "--web-port", str(web_port),
                          key=free["key"], metrics=True)
    try:
        workers = worker_pids(proxy)
        assert len(workers) == count and len(children(proxy.process.pid)) == count + 1  # and the owner
        db = str(home_dir.db_path(home))
        usages = asyncio.run(_calls(proxy, 200, 16, "w-"))
        outcomes = asyncio.run(_calls(proxy, 120, 32, "lim-", key=limited["key"]))
        # One count for the host: 30 admitted whichever worker took each call (each counting alone: up to 60).
        assert (sum(o != "429" for o in outcomes), outcomes.count("429")) == (30, 90)
        rows = wait_for(lambda: len(r := rows_tagged(home, "w-")) >= 200 and r, 30, "rows not stored")
        assert sorted(r["customer_id"] for r in rows) == sorted(f"w-{i}" for i in range(200))
        assert sum(r["input_tokens"] + r["output_tokens"] for r in rows) == sum(
            u.prompt_tokens + u.completion_tokens for u in usages)
        assert len(wait_for(lambda: len(r := rows_tagged(home, "lim-")) >= 30 and r, 20, "limited rows")) == 30
        # The workers never opened the file, nor did the parent (the web app runs in the owner): only the owner.
        assert [pid for pid in {*workers, proxy.process.pid} if db in open_files(pid)] == []
        assert db in open_files(owner_pid(proxy))
        report = json.loads(run_cli(home, "report", "--by", "customer", "--format", "json"))
        assert sum(r["calls"] for r in report if r["customer_id"].startswith(("w-", "lim-"))) == 230
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}/api/v1", timeout=30,
                          headers={"Authorization": f"Bearer {admin}"}) as api:
            total = api.get("/report/total", params={"since": "1d"})
            assert total.status_code == 200 and total.json()["calls"] == 230, total.text
            # The web port's /metrics is the host's, every worker's calls merged, as --metrics-port's.
            exposition = httpx.get(f"http://127.0.0.1:{web_port}/metrics", timeout=30,
                                   headers={"Authorization": f"Bearer {admin}"}).text
            counted = sum(v for labels, v in metric(exposition, "aispendtrack_calls_total") if 'status="200"' in labels)
            assert counted == 230
        time.sleep(workers_cli.METRICS_READ_S + 1)  # the parent reads the workers' ports at least once more
    finally:
        assert stop(proxy) == 0
    log = proxy.log_path.read_text()
    # That one scrape of the web port: the parent's reads of the workers' ports (two lines every 5 s,
    # most of the log) are not logged.
    assert "Traceback" not in log and log.count('"GET /metrics"') == 1


def test_the_page_signs_in_and_shows_every_workers_calls_in_chromium(tmp_path, upstream):
    home, web_port = tmp_path / "home", free_port()
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, "--web-port", str(web_port))
    try:
        # Chromium for this test alone: the module's other tests run asyncio loops of their own.
        with chromium() as browser:
            _page_shows_the_calls(browser, proxy, home, web_port, admin)
    finally:
        assert stop(proxy) == 0


def _page_shows_the_calls(browser, proxy, home: Path, web_port: int, admin: str) -> None:
    from .test_web_page import sign_in
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        for n in range(40):  # a client each: new connections, spread over the workers by the kernel
            proxy.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": f"page-{n}"})
        wait_for(lambda: len(rows_tagged(home, "page-")) >= 40, 30, "rows not stored")
        page = context.new_page()
        sign_in(page, {"url": f"http://127.0.0.1:{web_port}", "admin": admin})
        groups = json.loads(run_cli(home, "report", "--by", "model", "--since", "7d", "--format", "json"))
        assert int(page.get_attribute("#total-calls", "data-value")) == sum(g["calls"] for g in groups) == 40
        assert float(page.get_attribute("#total-spend", "data-value")) == pytest.approx(
            sum(g["cost_usd"] or 0 for g in groups))
        assert page.locator("#by-customer tbody tr[data-value]").count() > 0
    finally:
        context.close()


def test_a_blocking_budget_refuses_the_next_call_on_every_embedded_worker(tmp_path, upstream):
    home = tmp_path / "home"
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2)
    try:
        proxy.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "probe"})
        cost = Decimal(str(proxy.rows("probe")[0]["cost_usd"]))
        assert cost > 0
        run_cli(home, "budgets", "set", "--scope", "customer:bud", "--daily", str(cost * Decimal("5.5")),
                "--block", "--key", str(proxy.key_id))
        # Every worker reads it within ~2 s, later on a loaded host: a probe key made after it is
        # admitted ten times in a row, on new connections the kernel spreads over the workers.
        until_read(proxy, answers=10)
        outcomes = []
        for _ in range(20):  # a client each: new connections, spread over the workers by the kernel
            try:
                proxy.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "bud"})
                outcomes.append("ok")
            except openai.RateLimitError:
                outcomes.append("429")
        # Six calls cross 5.5 calls' worth; the seventh is refused on whichever worker it lands.
        assert outcomes == ["ok"] * 6 + ["429"] * 14
        assert len(proxy.rows("bud", expect=6)) == 6
    finally:
        stop(proxy)


def test_an_embedded_worker_killed_with_kill_9_is_replaced_while_the_other_serves(tmp_path, upstream):
    home = tmp_path / "home"
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, flush_ms=200)
    served, done = [0], threading.Event()

    def caller() -> None:
        while not done.is_set():
            try:
                proxy.openai().chat.completions.create(**CHAT)
                served[0] += 1
            except openai.APIConnectionError:  # a call on the killed worker
                pass
    threads = [threading.Thread(target=caller) for _ in range(3)]
    try:
        before = worker_pids(proxy)
        for t in threads:
            t.start()
        wait_for(lambda: served[0] >= 10, 30, "no calls served")
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        at_kill = served[0]
        wait_for(lambda: served[0] >= at_kill + 10, 30, "calls stopped after the kill")  # the other serves
        replaced = wait_for(lambda: (now := worker_pids(proxy)) - before and len(now) == 2 and now, 30,
                            "no new worker")
        new_pid = (replaced - before).pop()
        wait_for(lambda: f"(pid {new_pid}) serves in place of the one that died" in proxy.log_path.read_text(), 90,
                 "the new worker does not serve")
        done.set()
        for t in threads:
            t.join(30)
        usages = asyncio.run(_calls(proxy, 40, 8, "after-"))
        assert len(usages) == 40
        assert len(wait_for(lambda: len(r := rows_tagged(home, "after-")) >= 40 and r, 20, "rows")) == 40
        assert f"(pid {victim}) was killed by SIGKILL; starting another" in proxy.log_path.read_text()
    finally:
        done.set()
        stop(proxy)


def test_sigterm_stores_every_completed_call_of_every_embedded_worker(tmp_path, upstream):
    home = tmp_path / "home"
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, "--flush-ms", "5000")
    workers = children(proxy.process.pid)
    usages = asyncio.run(_calls(proxy, 60, 16, "term-"))  # unwritten yet: the writers flush every 5 s
    assert stop(proxy) == 0
    assert not [pid for pid in workers if alive(pid)]
    rows = rows_tagged(home, "term-")
    assert len(usages) == 60 and sorted(r["customer_id"] for r in rows) == sorted(f"term-{i}" for i in range(60))
    assert not list((home / "workers").glob("*/spill/*.jsonl"))  # stored through the owner, not spilled


def _paced_stream(proxy, customer: str):
    """A stream under way (its first chunk read), whose events come every 0.5 s for ~7 s."""
    client = proxy.openai(headers={"x-test-scenario": "paced", "x-customer-id": customer})
    stream = client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
    return stream, [next(iter(stream))]


def test_ctrl_c_in_a_terminal_lets_every_workers_calls_finish_before_the_stop(tmp_path, upstream):
    """Ctrl-C signals the terminal's whole process group: each worker got it beside the parent's
    SIGTERM, took the two for "stop at once" and cut its calls, and the owner closed the file under
    their last rows (probe: calls needing 2 s cut 0.04 s after the signal). The children have a
    group of their own now: the parent alone is told, and it tells each in turn."""
    home = tmp_path / "home"
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, "--drain-s", "20", run_under=("setsid",))
    try:
        stream, chunks = _paced_stream(proxy, "ctrl-c")
        os.killpg(proxy.process.pid, signal.SIGINT)  # setsid: the proxy leads its own group, as a shell's job
        chunks += list(stream)
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0  # the whole answer
        assert proxy.process.wait(60) == 0
    finally:
        proxy.stop()
    [row] = rows_tagged(home, "ctrl-c")
    assert (row["outcome"], row["usage_source"], row["priced"]) == ("completed", "reported", True)


def test_a_second_sigterm_stops_every_worker_at_once(tmp_path, upstream):
    """As a lone proxy does: the first signal drains, a second cuts the calls still in flight (the
    parent passed on only the first, so its workers drained for the whole --drain-s)."""
    home = tmp_path / "home"
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, "--drain-s", "60")
    try:
        stream, _ = _paced_stream(proxy, "twice")
        proxy.process.send_signal(signal.SIGTERM)
        time.sleep(1)
        proxy.process.send_signal(signal.SIGTERM)
        with pytest.raises(openai.APIError):  # cut, not waited for
            list(stream)
        assert proxy.process.wait(30) == 0
    finally:
        proxy.stop()
    [row] = rows_tagged(home, "twice")
    assert row["outcome"] == "proxy_stopped"


def test_a_parent_killed_with_kill_9_loses_no_completed_call_and_stores_none_twice(tmp_path, upstream):
    home = tmp_path / "home"
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, "--flush-ms", "5000")
    workers = children(proxy.process.pid)
    usages = asyncio.run(_calls(proxy, 40, 8, "orphan-"))  # queued in the workers: they flush every 5 s
    proxy.process.kill()
    proxy.process.wait(10)
    # The workers and the owner stop with their parent; the workers' rows went to the owner, or, when it
    # had gone first, to their spill files: every completed call is in one of them.
    # A worker's stop may wait for an owner stopping beside it: its writer's cycle under way (up to
    # Writer.stop's join, 12 s), then a last flush bounded by remote.WORKER_ANSWER_S: ~30 s on a
    # loaded CI host (ci114 timed out at 30 s).
    wait_for(lambda: not [pid for pid in workers if alive(pid)], 60, "a child outlived its parent")
    spilled = [json.loads(line)["customer_id"] for path in (home / "workers").glob("*/spill/*.jsonl")
               for line in path.read_text().splitlines()]
    stored = [r["customer_id"] for r in rows_tagged(home, "orphan-")]
    assert len(usages) == 40 and sorted(spilled + stored) == sorted(f"orphan-{i}" for i in range(40))
    again = start_workers(home, upstream.url, tmp_path / "again.log", 2, key=proxy.key)
    try:
        wait_for(lambda: len(rows_tagged(home, "orphan-")) >= 40, 30, "spilled rows not replayed")
        time.sleep(2)  # a second replay, were there one, would show by now
        assert sorted(r["customer_id"] for r in rows_tagged(home, "orphan-")) == sorted(
            f"orphan-{i}" for i in range(40))
        assert not list((home / "workers").glob("*/spill/*.jsonl"))
    finally:
        stop(again)


def test_the_owner_killed_with_kill_9_is_replaced_while_the_workers_proxy_and_every_row_is_stored_once(
        tmp_path, upstream):
    home, web_port = tmp_path / "home", free_port()
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, "--web-port", str(web_port), flush_ms=200,
                          metrics=True)
    api = httpx.Client(base_url=f"http://127.0.0.1:{web_port}/api/v1", timeout=60,
                       headers={"Authorization": f"Bearer {admin}"})
    try:
        asyncio.run(_calls(proxy, 20, 4, "before-"))
        assert len(wait_for(lambda: len(r := rows_tagged(home, "before-")) >= 20 and r, 20, "rows")) == 20
        victim = owner_pid(proxy)
        os.kill(victim, signal.SIGKILL)
        during = asyncio.run(_calls(proxy, 40, 8, "during-"))  # no owner: the workers proxy all the same
        assert len(during) == 40 and "429" not in during
        assert "serves again" not in proxy.log_path.read_text(), "the calls did not run while the owner was away"
        # The web port is the parent's: a request sent while no owner serves waits for the next one.
        total = api.get("/report/total", params={"since": "1d"})
        assert total.status_code == 200, total.text
        log_text = wait_for(lambda: "serves again" in (t := proxy.log_path.read_text()) and t, 60, "no new owner")
        assert f"(pid {victim}) was killed by SIGKILL; starting another" in log_text
        wait_for(lambda: len(rows_tagged(home, "during-")) >= 40, 30, "the waiting rows never reached the owner")
        time.sleep(2)  # a second copy, were one sent, would be stored by now
        assert sorted(r["customer_id"] for r in rows_tagged(home, "during-")) == sorted(
            f"during-{i}" for i in range(40))
        assert len(rows_tagged(home, "before-")) == 20
        assert api.get("/report/total", params={"since": "1d"}).json()["calls"] == 20 + 40
        text = httpx.get(proxy.metrics_url, timeout=10).text
        assert metric(text, "aispendtrack_owner_restarts_total") == [("", 1.0)]
        assert metric(text, "aispendtrack_workers") == [("", 2.0)]
    finally:
        api.close()
        assert stop(proxy) == 0


def test_a_hung_owner_neither_holds_the_workers_rows_for_good_nor_loses_them_at_a_stop(tmp_path, upstream):
    """An owner that stops answering without dying (here SIGSTOP; a deadlock, a hung disk): the
    workers waited on its socket for good, their rows neither stored nor spilled, and a stop killed
    them with every row (probe: 711 calls answered, no row). A question unanswered within
    remote.WORKER_ANSWER_S now takes it for away: the rows spill, and the next start stores them."""
    home = tmp_path / "home"
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, flush_ms=200)
    owner = owner_pid(proxy)
    os.kill(owner, signal.SIGSTOP)
    try:
        answered = asyncio.run(_calls(proxy, 20, 4, "hung-"))  # admission needs no owner
        assert len(answered) == 20 and "429" not in answered
        proxy.process.send_signal(signal.SIGTERM)
        # The workers' stops (~25 s: a bounded wait on the owner, then a spill), then the parent kills
        # the owner it cannot stop (30 s).
        assert proxy.process.wait(150) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(owner, signal.SIGCONT)
        proxy.stop()
    log_text = proxy.log_path.read_text()
    assert "did not answer within" in log_text
    assert not re.search(r"worker \d+ \(pid \d+\) did not stop within", log_text), log_text  # none killed
    again = start_proxy(home, upstream.url, tmp_path / "again.log")
    try:
        wait_for(lambda: len(rows_tagged(home, "hung-")) >= 20, 30, "the spilled rows were not stored")
        assert sorted(r["customer_id"] for r in rows_tagged(home, "hung-")) == sorted(f"hung-{i}" for i in range(20))
    finally:
        again.stop()


def test_the_owner_fetches_the_list_prices_once_for_the_host_and_every_worker_prices_with_them(tmp_path, upstream):
    """One fetch per host, not one per worker (a price server sees the host once; every worker
    prices with the same version): a model only the served document knows is priced on both workers."""
    from .price_data import PriceServer, bundled_document, with_model
    from .test_price_refresh import NEW_MODEL, RATES, snapshot_id
    document = with_model(bundled_document(), "openai", NEW_MODEL, **RATES)
    with PriceServer(document) as server:
        home = tmp_path / "home"
        proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2,
                              "--prices-url", server.url, "--prices-refresh", "3600")
        try:
            for n in range(12):  # a client each: new connections, spread over the workers by the kernel
                proxy.openai().chat.completions.create(
                    model=NEW_MODEL, messages=[{"role": "user", "content": "hi"}],
                    extra_headers={"x-customer-id": f"priced-{n}", "x-test-scenario": "unknown_model"})
            rows = wait_for(lambda: len(found := rows_tagged(home, "priced-")) == 12 and found, 30,
                            "not every call was stored")
        finally:
            assert stop(proxy) == 0
    assert server.requests == 1
    # Every row, on whichever worker, was priced by that one version.
    assert {(r["priced"], r["price_snapshot"]) for r in rows} == {(True, snapshot_id(document))}


def test_rows_an_earlier_run_spilled_are_stored_whatever_the_worker_count_now(tmp_path, upstream):
    """A directory run as one process, then as two workers (the default on 2 cores), then as one again:
    what one run spilled and could not store, the next stores, wherever it was spilled, and once."""
    home = tmp_path / "home"
    run_cli(home, "keys", "create", "--name", "k")  # key 1, the rows' key

    def spilled(directory: Path, name: str, tag: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(json.dumps(call_row(7, customer_id=tag), default=str) + "\n")

    spilled(home_dir.spill_dir(home), "1-1-1.jsonl", "spilled-alone")
    spilled(home_dir.spill_dir(home, 3), "1-2-1.jsonl", "spilled-by-slot-3")  # a slot past this run's count
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2)
    try:
        wait_for(lambda: len(rows_tagged(home, "spilled-")) == 2, 30, "the earlier spill files were not stored")
    finally:
        assert stop(proxy) == 0
    spilled(home_dir.spill_dir(home, 1), "1-3-1.jsonl", "spilled-by-worker-1")
    lone = start_proxy(home, upstream.url, tmp_path / "lone.log")  # --workers 1
    try:
        wait_for(lambda: len(rows_tagged(home, "spilled-")) == 3, 30, "a worker's spill file was not stored")
    finally:
        lone.stop()
    assert sorted(r["customer_id"] for r in rows_tagged(home, "spilled-")) == [
        "spilled-alone", "spilled-by-slot-3", "spilled-by-worker-1"]
    assert list(home.rglob("*.jsonl")) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_calls_a_killed_run_spilled_count_against_the_limits_and_budgets_of_the_next(tmp_path, upstream, workers):
    """A parent killed with kill -9 leaves its workers' unstored rows in spill files, which the next
    run's workers store once they start: after the host's counts were seeded from the store, so the
    restart granted a fresh hourly limit (60 calls in an hour against 30) and a fresh budget. A lone
    process (--workers 1) too: it seeded its counts before it replayed its spill files."""
    home = tmp_path / "home"
    created = json.loads(run_cli(home, "keys", "create", "--name", "spender", "--json"))
    run_cli(home, "keys", "set-limit", str(created["id"]), "--per-hour", "5")
    run_cli(home, "budgets", "set", "--scope", "customer:spent", "--all-keys", "--daily", "0.05", "--block")
    now = dt.datetime.now(dt.UTC)
    spill = home_dir.spill_dir(home, 0) if workers > 1 else home_dir.spill_dir(home)
    spill.mkdir(parents=True)
    # Three calls of the key this hour, spilled by a worker; six of customer "spent" at $0.01, by another.
    rows = [call_row(i, key_id=created["id"], ts=now - dt.timedelta(seconds=i), customer_id="limited")
            for i in range(3)]
    (spill / "1-1-1.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    with writing(home_dir.db_path(home)) as con:  # one of them stored too: the crash came after its insert
        call_rows.insert(con, rows[:1])
    rows = [call_row(i, key_id=None, ts=now - dt.timedelta(seconds=i), customer_id="spent") for i in range(6)]
    spill = home_dir.spill_dir(home, 1) if workers > 1 else spill
    spill.mkdir(parents=True, exist_ok=True)
    (spill / "1-2-1.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    if now.minute == 59 and now.second > 30:
        pytest.skip("the hour ends before the calls: the limit would reset")  # (a 1-in-120 chance)
    proxy = (start_workers(home, upstream.url, tmp_path / "proxy.log", 2, key=created["key"]) if workers > 1
             else start_proxy(home, upstream.url, tmp_path / "proxy.log", key=created["key"]))
    try:
        outcomes = []
        for _ in range(4):
            try:
                proxy.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "limited"})
                outcomes.append("ok")
            except openai.RateLimitError:
                outcomes.append("429")
        assert outcomes == ["ok", "ok", "429", "429"]  # 3 spilled (1 of them stored, counted once) + 2 = 5
        run_cli(home, "keys", "set-limit", str(created["id"]), "--per-hour", "100")
        until_read(proxy, answers=3)
        with pytest.raises(openai.RateLimitError) as refused:
            proxy.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "spent"})
        assert "budget exceeded" in refused.value.message
    finally:
        if workers > 1:
            stop(proxy)
        else:
            proxy.stop()
    assert len(rows_tagged(home, "limited")) == 5 and len(rows_tagged(home, "spent")) == 6
