"""How fast the report page appears with 10 million calls in the store (headless Chromium).

    .venv/bin/python -m bench.page                  # 10M rows, ~1 minute; needs /usr/bin/chromium
    .venv/bin/python -m bench.page --rows 1000000
    .venv/bin/python -m bench.page --rows 100000000 --days 365 --customers 100000 --view "" --view range=30d \
        --view "range=custom&from=2025-12-01&to=2026-12-31"

Measures the page as ``aispendtrack proxy --web-port`` serves it (``--standalone``: ``aispendtrack
web``; ``--shared``: the proxy in the shared mode, the calls copied into a DuckLake on a throwaway
PostgreSQL, which needs Debian's postgresql), from navigation start: the browser's first
contentful paint and the moment the totals, and then every table, are filled in, for each
``--view`` (the page's query string; the default: the default view, the last 7 days). Target: first paint <= 1.5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from addon.core import home as home_dir
from addon.core.store import synthetic, writing
from cli.progress import running

from .proxy_overhead import free_port
from .reports import copied_into_lake

ROOT = Path(__file__).resolve().parent.parent


def build(home: Path, rows: int, days: int, customers: int) -> None:
    with writing(home_dir.db_path(home)) as con, running(f"Generating {rows:,} rows"):
        synthetic.generate(con, rows, end=dt.datetime.now(dt.UTC), days=days, customers=customers)


def _token(home: Path, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "cli", "--home", str(home), "admin", "create-token", "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return json.loads(out.stdout)["token"]


def measure(url: str, token: str, runs: int, view: str) -> list[dict]:
    from tests.helpers import chromium

    results = []
    with chromium() as browser:
        # The page forbids eval (its CSP); the waits below are evaluated by Playwright, not the page.
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        page.goto(url + "/login")
        page.fill("#secret", token)
        page.click("button[type=submit]")
        # Loaded, not "a row shown": a store whose calls ended over a week ago shows none by default.
        page.wait_for_function("document.body.dataset.loaded === location.search", timeout=60_000)
        for _ in range(runs):
            page.goto(url + "/" + (f"?{view}" if view else ""), wait_until="commit")
            page.wait_for_function("document.querySelector('#total-spend').dataset.value !== undefined",
                                   timeout=60_000)
            totals = page.evaluate("performance.now()")
            page.wait_for_function("document.body.dataset.loaded === location.search", timeout=60_000)
            tables = page.evaluate("performance.now()")
            paint = page.evaluate("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime")
            results.append({"first_paint_ms": paint, "totals_ms": totals, "tables_ms": tables})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--days", type=int, default=90, help="the time the calls span, ending now")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--view", action="append", help="the page's query string, e.g. range=30d (repeatable; "
                                                        "default: the default view)")
    parser.add_argument("--standalone", action="store_true", help="measure `aispendtrack web` instead of the "
                                                                    "proxy's --web-port")
    parser.add_argument("--shared", action="store_true", help="serve the page in the shared mode, from a copy "
                                                                "of the calls in a DuckLake")
    parser.add_argument("--home", type=Path, help="keep the generated data here, and use what an earlier run "
                                                   "left there instead of generating it again")
    args = parser.parse_args()
    views = args.view or [""]
    with tempfile.TemporaryDirectory(prefix="aispendtrack-page-") as tmp, contextlib.ExitStack() as stack:
        home = args.home or Path(tmp)
        if home_dir.db_path(home).exists():
            print(f"the calls of {home} (generated before)")
        else:
            home.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            build(home, args.rows, args.days, args.customers)
            print(f"generated {args.rows:,} calls in {time.perf_counter() - start:.1f} s")
        env = dict(os.environ)
        if args.shared:
            env.update(stack.enter_context(copied_into_lake(home_dir.db_path(home), Path(tmp))))
        token = _token(home, env)
        port = free_port()
        # As a team runs it: the proxy's web port, served next to the open file (a standalone
        # `aispendtrack web` opens the file for each request: ~40 ms each at 100M calls, and cold).
        command = ["proxy", "--port", str(free_port()), "--web-port", str(port), "--prices-url", "off"]
        if args.standalone:
            command = ["web", "--port", str(port)]
        server = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(home), *command],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            results = {view: measure(f"http://127.0.0.1:{port}", token, args.runs, view) for view in views}
        finally:
            server.terminate()
            server.wait(60)
    ok = True
    for view, loads in results.items():
        medians = {k: statistics.median(r[k] for r in loads) for k in loads[0]}
        print(f"{view or 'default view'}: median of {args.runs} loads: first paint {medians['first_paint_ms']:.0f} ms, "
              f"totals shown {medians['totals_ms']:.0f} ms, every table filled {medians['tables_ms']:.0f} ms")
        ok = ok and medians["first_paint_ms"] <= 1500
    print(f"first paint target <= 1500 ms: {'ok' if ok else 'MISSED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
