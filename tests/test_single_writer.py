"""Embedded mode: one proxy per data directory. A second one exits at once and names the first.
Readers use the proxy's open file beside its writer; an erase, which needs the file alone, keeps the
writer out: a short wait costs nothing, a long one one clear line."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from addon.core import home as home_dir
from addon.core.store import remote, synthetic, writing
from addon.writer import BUSY_PATIENCE_S

from .helpers import Load, free_port, run_cli, start_proxy

REPO = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_a_second_proxy_on_the_same_directory_is_refused_and_the_first_keeps_serving(tmp_path, upstream):
    first = start_proxy(tmp_path / "home", upstream.url, tmp_path / "first.log")
    try:
        port = free_port()
        second = subprocess.run(
            [sys.executable, "-m", "cli", "--home", str(first.home), "proxy", "--port", str(port),
             "--openai-upstream", upstream.url], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"process {first.process.pid}, listening on" in second.stderr
        assert "Running several proxies" in second.stderr and "Traceback" not in second.stderr
        assert "No keys yet" not in second.stdout and "proxy on" not in second.stdout  # refused before anything

        # Plain mitmdump with the addon gets the same refusal, and exits.
        mitmdump = Path(sys.executable).parent / "mitmdump"
        plain = subprocess.run(
            [str(mitmdump), "-q", "-s", str(REPO / "addon" / "aispendtrack.py"), "--mode", f"reverse:{upstream.url}",
             "--listen-port", str(port), "--set", f"aispendtrack_home={first.home}"],
            cwd=REPO, capture_output=True, text=True, timeout=60)
        assert plain.returncode != 0
        assert f"process {first.process.pid}" in plain.stdout + plain.stderr

        # The first proxy never noticed: it serves and records.
        assert httpx.get(f"{first.url}/aispendtrack/health", timeout=5).status_code == 200
        first.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "still-first"})
        assert len(first.rows("still-first")) == 1
    finally:
        first.stop()
    # Once it stops (or dies: the kernel drops its lock), the directory is free again.
    again = start_proxy(first.home, upstream.url, tmp_path / "again.log", key=first.key)
    again.stop()


def _stored_tags(home: Path) -> set[str]:
    rows = json.loads(run_cli(home, "calls", "--limit", "1000000", "--format", "json"))
    return {r["customer_id"] for r in rows if (r["customer_id"] or "").startswith("load-")}


def _writer_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "cannot write" in line or "waiting rows" in line]


def test_a_user_browsing_the_page_while_the_proxy_records_costs_no_log_line(tmp_path, upstream):
    """The in-process web app's reads run on cursors of the proxy's connection, beside the writer."""
    home = tmp_path / "home"
    home.mkdir()
    with writing(home_dir.db_path(home)) as con:  # enough rows that each report holds the file a while
        synthetic.generate(con, 20_000, end=dt.datetime.now(dt.UTC), days=30, customers=500)
    web_port = free_port()
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", flush_ms=200,
                        extra_args=("--web-port", str(web_port)))
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    stop, reads, slowest = threading.Event(), [], [0.0]

    def browse() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}/api/v1", timeout=30,
                          headers={"Authorization": f"Bearer {admin}"}) as client:
            while not stop.is_set():
                started = time.monotonic()
                reads.append(client.get("/report", params={"by": ["model", "day"], "since": "30d"}).status_code)
                slowest[0] = max(slowest[0], time.monotonic() - started)
                time.sleep(0.3)  # reading the page between refreshes

    browsers = [threading.Thread(target=browse)]  # one person at a time
    try:
        with Load(proxy, threads=1) as load:
            for browser in browsers:
                browser.start()
            time.sleep(8)
            stop.set()
            for browser in browsers:
                browser.join(30)
    finally:
        stop.set()
        proxy.stop()
    # Read once the proxy has stopped (a clean stop writes every row it holds): on a loaded host the
    # last rows have taken over 20 s to land while reports held the file (CI at load 10).
    stored = _stored_tags(home)
    assert load.failed == 0 and set(load.completed) <= stored, "a call was lost"
    assert len(reads) >= 4 and set(reads) == {200}, (reads, slowest)
    assert _writer_lines(proxy.log_path.read_text()) == []


def test_an_erase_holding_the_file_long_is_one_line_naming_it_and_every_row_lands(tmp_path, upstream):
    """An erase rewrites the file with every other use of it kept out (store/owner.py, ``alone``):
    here a session through the owner's socket that holds it so for longer than the writer's patience."""
    home = tmp_path / "home"
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", flush_ms=200)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with remote.session(home, timeout=10, alone=True) as con:
            assert con is not None
            held.set()
            release.wait(BUSY_PATIENCE_S + 3)
    holder = threading.Thread(target=hold)
    try:
        with Load(proxy, threads=2) as load:
            holder.start()
            assert held.wait(10)
            holder.join(BUSY_PATIENCE_S + 30)
            load.wait_for(len(load.completed) + 5)
        stored = proxy.until_stored(set(load.completed))
    finally:
        release.set()
        proxy.stop()
    assert load.failed == 0 and set(load.completed) <= stored, "a call was lost"
    lines = _writer_lines(proxy.log_path.read_text())
    assert len(lines) == 2, lines  # one when the wait began to matter, one when it was over
    waiting, over = lines
    assert "is being rewritten (a GDPR erase)" in waiting
    assert "rows waiting are safe: kept in memory" in waiting and "Traceback" not in waiting
    assert "wrote the waiting rows" in over and "nothing was lost" in over
