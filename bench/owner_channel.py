"""The CLI's channel to the owner, measured: DuckDB's Quack against our socket (store/remote.py).

    pip download duckdb-extension-quack==1.5.5 --no-deps -d /tmp/quack && unzip -d /tmp/quack /tmp/quack/*.whl
    .venv/bin/python -m bench.owner_channel --rows 100000

A SELECT 42 round trip and the API's total over the rows, each channel against a server process
that holds the file; medians in ms. Figures: docs/architecture.md ("One writer per file").
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from addon.core import home as home_dir
from addon.core.store import remote, synthetic, writing

QUACK = "/tmp/quack/duckdb_extension_quack/extensions/v1.5.5/quack.duckdb_extension"
TOTAL = ("SELECT count(*), sum(cost_usd), sum(input_tokens), sum(output_tokens) FROM calls "
         "WHERE ts >= now() - INTERVAL 7 DAY")


def _median_ms(run: Callable[[], object], times: int = 20) -> float:
    took = []
    for _ in range(times):
        started = time.perf_counter()
        run()
        took.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(took), 2)


def _server(code: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "up"
    return process


def _quack(db: Path, httpfs: str) -> dict:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"quack:127.0.0.1:{port}"
    server = _server(f"""
import duckdb, time
con = duckdb.connect({str(db)!r}, config={{'allow_unsigned_extensions': 'true'}})
con.execute("LOAD '{httpfs}'"); con.execute("LOAD '{QUACK}'")
con.execute("CALL quack_serve('{uri}', token = 'secret')")
print('up', flush=True); time.sleep(600)
""")
    try:
        started = time.perf_counter()
        client = duckdb.connect(config={"allow_unsigned_extensions": "true"})
        client.execute(f"LOAD '{httpfs}'")
        client.execute(f"LOAD '{QUACK}'")
        found: dict[str, object] = {"load extensions": round((time.perf_counter() - started) * 1000, 2)}

        def ask(sql: str) -> list:
            return client.execute(f"FROM quack_query('{uri}', {sql!r}, token := 'secret')").fetchall()
        found["select 42"] = _median_ms(lambda: ask("SELECT 42"))
        found["total (runs in the server)"] = _median_ms(lambda: ask(TOTAL), 5)
        try:
            client.execute(f"ATTACH '{uri}' AS remote (TOKEN 'secret')")
            found["total over ATTACH"] = _median_ms(
                lambda: client.execute(TOTAL.replace("FROM calls", "FROM remote.calls")).fetchall(), 3)
        except duckdb.Error as exc:
            found["ATTACH"] = str(exc)[:80]
        return found
    finally:
        server.kill()
        server.wait()


def _ours(home: Path, db: Path) -> dict:
    server = _server(f"""
import sys, time
from pathlib import Path
sys.path.insert(0, '.')
from addon.core.store import owner
owner.start(Path({str(db)!r})); print('up', flush=True); time.sleep(600)
""")
    try:
        def session_and_select() -> None:
            with remote.session(home, 5) as con:
                assert con is not None
                con.execute("SELECT 42").fetchall()
        with remote.session(home, 5) as con:
            assert con is not None
            return {"session + select 42": _median_ms(session_and_select),
                    "select 42": _median_ms(lambda: con.execute("SELECT 42").fetchall()),
                    "total": _median_ms(lambda: con.execute(TOTAL).fetchall(), 5)}
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    httpfs = str(next(Path(duckdb.__file__).parents[1].glob(
        "duckdb_extension_httpfs/extensions/*/httpfs.duckdb_extension")))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        db = home_dir.db_path(home)
        with writing(db) as con:
            synthetic.generate(con, args.rows, end=dt.datetime.now(dt.UTC), days=30)
        print(f"{args.rows:,} rows, ms, medians")
        print("quack:       ", _quack(db, httpfs))
        print("owner socket:", _ours(home, db))


if __name__ == "__main__":
    main()
