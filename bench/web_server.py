"""The web port's server: waitress (web/server.py) against Werkzeug's threaded server (the previous
design), the same Flask app and data, measured in one run, rounds interleaved.

    .venv/bin/python -m bench.web_server                      # 100k rows, 3 rounds
    .venv/bin/python -m bench.web_server --rows 1000000 --rounds 5
    .venv/bin/python -m bench.web_server --proxy this=. --proxy before=/tmp/old-checkout

``--proxy NAME=DIR`` (repeatable) measures instead the API of a running ``aispendtrack proxy
--web-port``, started from the checkout DIR (its own code, this venv) on a copy of the same data,
the checkouts' rounds interleaved: the web app as a team meets it, in the process that records calls
(after WARM_UP requests, unmeasured).

Each round, for each server: CONCURRENCY keep-alive clients fetch the report page's login page and
stylesheet (the server's own cost) and then the API's total (the app's cost), with requests/s, p50
and p99; then the API again with IDLE connections held open by clients that never finish their
request (what a scanner or a slow network leaves behind), counting the process's threads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from werkzeug.serving import make_server

from addon.core import home as home_dir
from addon.core.store import synthetic, writing
from cli.progress import running
from web import create_app
from web.server import WebServer

CONCURRENCY = 8
IDLE = 100
STATIC = ("/login", "/static/app.css")
API = ("/api/v1/report/total?since=7d",)
# Requests a freshly started proxy answers before the measured ones: its first ~200 go at ~60% of the
# pace of the rest (imports, DuckDB's first plans), and a team's server runs for days.
WARM_UP = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400, help="per client set and round")
    parser.add_argument("--proxy", action="append", default=[], metavar="NAME=DIR",
                        help="measure a running proxy's --web-port, from this checkout (repeatable)")
    args = parser.parse_args()
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is 1", per request
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        token = _setup(home, args.rows)
        if args.proxy:
            _print_proxies(_proxies(home, token, dict(p.split("=", 1) for p in args.proxy), args), args)
            return
        app = create_app(home)
        results: dict[str, list[dict]] = {"werkzeug": [], "waitress": []}
        for _ in range(args.rounds):
            for name in results:  # interleaved: the machine's drift hits both alike
                server, port = _start(name, app)
                try:
                    url = f"http://127.0.0.1:{port}"
                    static = _load(url, token, STATIC, args.requests)
                    api = _load(url, token, API, args.requests)
                    held = [_idle(port) for _ in range(IDLE)]
                    time.sleep(0.3)
                    threads = threading.active_count()
                    busy = _load(url, token, API, args.requests)
                    for sock in held:
                        sock.close()
                    results[name].append({"static": static, "api": api, "held": busy, "threads": threads})
                finally:
                    server.shutdown()
                    if name == "werkzeug":
                        server.server_close()
        _print(results, args)


def _setup(home: Path, rows: int) -> str:
    from click.testing import CliRunner

    from cli.main import cli
    home.mkdir(parents=True)
    with writing(home_dir.db_path(home)) as con, running(f"Generating {rows:,} rows"):
        synthetic.generate(con, rows, end=dt.datetime.now(dt.UTC), days=30)
    out = CliRunner().invoke(cli, ["--home", str(home), "admin", "create-token", "--json"]).output
    return json.loads(out)["token"]


def _start(name: str, app):
    server = WebServer("127.0.0.1", 0, app) if name == "waitress" else make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_port


def _proxies(home: Path, token: str, trees: dict[str, str], args) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():  # interleaved: the machine's drift hits both alike
            copy = home.parent / f"home-{name}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(home, copy)
            process, port = _start_proxy(copy, Path(tree).resolve())
            try:
                url = f"http://127.0.0.1:{port}"
                _load(url, token, API, WARM_UP)
                results[name].append({"static": _load(url, token, STATIC, args.requests),
                                      "api": _load(url, token, API, args.requests)})
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
    return results


def _start_proxy(home: Path, tree: Path) -> tuple[subprocess.Popen, int]:
    port, web_port = _free_port(), _free_port()
    process = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(home), "proxy", "--port", str(port),
                                "--web-port", str(web_port), "--prices-url", "off"], cwd=tree,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/aispendtrack/health", timeout=1).status_code == 200:
                return process, web_port
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the proxy from {tree} did not start")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _print_proxies(results: dict[str, list[dict]], args) -> None:
    print(f"aispendtrack proxy --web-port: {args.rows:,} rows, {CONCURRENCY} clients, {args.requests} requests "
          f"a set, {args.rounds} rounds, medians")
    print(f"{'checkout':<9} {'page req/s':>10} {'p50 ms':>7} {'p99 ms':>7}  {'API req/s':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7}")
    for name, rounds in results.items():
        cells = [" ".join(f"{statistics.median(r[case][key] for r in rounds):>{w}.{d}f}"
                          for key, w, d in (("rps", 10 if case == "static" else 9, 0), ("p50", 7, 1), ("p99", 7, 1)))
                 for case in ("static", "api")]
        print(f"{name:<9} {cells[0]}  {cells[1]}")


def _idle(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /api/v1/report HTTP/1.1\r\n")  # and never the rest
    return sock


def _load(url: str, token: str, paths: tuple[str, ...], total: int) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            for i in range(n):
                started = time.perf_counter()
                response = http.get(paths[i % len(paths)])
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, response.text[:200]
                with lock:
                    latencies.append(elapsed)

    started = time.perf_counter()
    workers = [threading.Thread(target=client, args=(total // CONCURRENCY,)) for _ in range(CONCURRENCY)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {"rps": len(latencies) / wall, "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000}


def _print(results: dict, args) -> None:
    print(f"{args.rows:,} rows, {CONCURRENCY} clients, {args.requests} requests a set, {args.rounds} rounds, "
          f"medians; 'held': with {IDLE} unfinished requests open")
    print(f"{'server':<9} {'page req/s':>10} {'p50 ms':>7} {'p99 ms':>7}  {'API req/s':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7}  {'held req/s':>10} {'p99 ms':>7}  {'threads':>7}")

    def med(rounds: list[dict], case: str, key: str) -> float:
        return statistics.median(r[case][key] for r in rounds)
    for name, rounds in results.items():
        cells = [f"{med(rounds, case, 'rps'):>{width}.0f} {med(rounds, case, 'p50'):>7.1f} "
                 f"{med(rounds, case, 'p99'):>7.1f}" for case, width in (("static", 10), ("api", 9))]
        print(f"{name:<9} {cells[0]}  {cells[1]}  {med(rounds, 'held', 'rps'):>10.0f} "
              f"{med(rounds, 'held', 'p99'):>7.1f}  {statistics.median(r['threads'] for r in rounds):>7.0f}")
    w, z = results["werkzeug"], results["waitress"]
    print("waitress / werkzeug throughput: " + ", ".join(
        f"{case} {med(z, case, 'rps') / med(w, case, 'rps'):.2f}" for case in ("static", "api", "held")))


if __name__ == "__main__":
    main()
