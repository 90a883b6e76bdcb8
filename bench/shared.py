"""The shared mode against the embedded mode and bare mitmdump, measured in the same run.

    .venv/bin/python -m bench.shared            # about 4 minutes on 2 cores
    .venv/bin/python -m bench.shared --quick    # a smoke run

Needs Debian's postgresql and haproxy (a throwaway cluster and balancer are started here, as
the tests do). Everything runs on 127.0.0.1 with the canned upstream of bench/loopback.py.

1. One proxy: latency (p50, p99; sequential requests) and throughput (32 connections) of plain
   JSON calls through bare mitmdump, ours embedded, ours shared with a key without limits, and
   ours shared with a limited key (one PostgreSQL statement per call). Interleaved rounds.
2. Three shared replicas behind HAProxy against one, throughput at 32 connections.
3. Files under the data path after 3,600 flushes (an hour at one a second), run back to back,
   with the default inlining and with inlining off, before maintenance and after two runs of it
   (an hour apart: files a run replaces are deleted by the next).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import cast

import duckdb

from tests.loadbalancer import LoadBalancer
from tests.pg import Cluster

from . import loopback
from .proxy_overhead import ROOT, free_port, latency, mitmdump, percentile, start, throughput, wait_for_port

ENV = ("AISPENDTRACK_CATALOG", "AISPENDTRACK_DATA_PATH")


def cli(home: Path, *args: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-m", "cli", "--home", str(home), *args], capture_output=True, text=True,
                          check=True, cwd=ROOT, env=env).stdout


def proxy(upstream_port: int, env: dict, limited: bool = False) -> tuple[int, subprocess.Popen, str]:
    home = Path(tempfile.mkdtemp(prefix="aispendtrack-bench-"))
    created = json.loads(cli(home, "keys", "create", "--name", "bench", "--json", env=env))
    if limited:
        cli(home, "keys", "set-limit", str(created["id"]), "--per-hour", "100000000", env=env)
    port = free_port()
    saved = {name: os.environ.get(name) for name in ENV}
    os.environ.update({k: v for k, v in env.items() if k in ENV})
    try:
        process = mitmdump(upstream_port, port, ["-s", str(ROOT / "addon" / "aispendtrack.py"),
                                                 "--set", f"aispendtrack_home={home}"])
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return port, process, created["key"]


def one_proxy(upstream_port: int, shared_env: dict, plain_env: dict, rounds: int, count: int, load: int) -> dict:
    targets: dict[str, tuple[int, subprocess.Popen, dict]] = {}
    port = free_port()
    targets["bare mitmdump"] = (port, mitmdump(upstream_port, port, []), {})
    for name, env, limited in (("embedded", plain_env, False), ("shared", shared_env, False),
                               ("shared, limited key", shared_env, True)):
        port, process, key = proxy(upstream_port, env, limited)
        targets[name] = (port, process, {"x-aispendtrack-key": key})
    samples: dict = {name: {"total": [], "rps": []} for name in targets}
    try:
        for port, process, _ in targets.values():
            wait_for_port(port, process)
        time.sleep(2)  # keys loaded
        order = list(targets.items())
        for n in range(rounds):
            for name, (port, _, headers) in (order[::-1] if n % 2 else order):
                raw = loopback.request_bytes(port, False, headers)
                asyncio.run(latency(port, raw, 20))
                totals, _ = asyncio.run(latency(port, raw, count))
                samples[name]["total"] += totals
                samples[name]["rps"].append(asyncio.run(throughput(port, raw, 32, load)))
    finally:
        for _, process, _ in targets.values():
            process.terminate()
            process.wait(30)
    return {name: {"p50_ms": percentile(s["total"], 50) * 1000, "p99_ms": percentile(s["total"], 99) * 1000,
                   "rps": sorted(s["rps"])[len(s["rps"]) // 2]} for name, s in samples.items()}


def replicas(upstream_port: int, shared_env: dict, rounds: int, load: int) -> dict:
    started = [proxy(upstream_port, shared_env) for _ in range(3)]
    key = started[0][2]  # every replica knows every key: it is shared
    results = {}
    try:
        for port, process, _ in started:
            wait_for_port(port, process)
        time.sleep(2)
        for label, members in (("1 replica", started[:1]), ("3 replicas", started)):
            balancer = LoadBalancer([port for port, _, _ in members])
            try:
                raw = loopback.request_bytes(balancer.port, False, {"x-aispendtrack-key": key})
                asyncio.run(latency(balancer.port, raw, 50))
                results[label] = sorted(asyncio.run(throughput(balancer.port, raw, 32, load))
                                        for _ in range(rounds))[rounds // 2]
            finally:
                balancer.stop()
    finally:
        for _, process, _ in started:
            process.terminate()
            process.wait(30)
    return results


def flush_files(cluster: Cluster, flushes: int) -> dict:
    """Files in the data path after ``flushes`` small inserts, as the writer makes them."""
    from addon.core.store import calls, lake, shared
    from addon.core.store.connection import one
    from tests.helpers import call_row
    results = {}
    for label, inline in (("inlining (default)", shared.INLINE_ROWS), ("inlining off", 0)):
        data = Path(tempfile.mkdtemp(prefix="aispendtrack-lake-"))
        cfg = shared.SharedConfig(cluster.create_database(f"files_{uuid.uuid4().hex[:8]}"), str(data))
        saved, shared.INLINE_ROWS = shared.INLINE_ROWS, inline
        try:
            # As the store's callers take it (store.connection): a DuckDB connection to them.
            con = cast(duckdb.DuckDBPyConnection, shared.SharedConnection(cfg))
        finally:
            shared.INLINE_ROWS = saved
        start_time = time.perf_counter()
        for n in range(flushes):
            calls.insert(con, [call_row(n % 500 + i) for i in range(3)])  # ~3 calls a second
        elapsed = time.perf_counter() - start_time
        before = sum(1 for p in data.rglob("*") if p.is_file())
        # Two runs, the second as if an hour later: files replaced by the first are deleted by the next.
        now = dt.datetime.now(dt.UTC)
        lake.maintain(con, now)
        lake.maintain(con, now + lake.KEEP_SNAPSHOTS + dt.timedelta(minutes=1))
        after = sum(1 for p in data.rglob("*") if p.is_file())
        (rows,) = one(con.execute("SELECT count(*) FROM calls"))
        con.close()
        results[label] = {"files": before, "files_after_maintenance": after, "rows": rows,
                          "ms_per_flush": elapsed / flushes * 1000}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, count, load, flushes = (2, 100, 500, 200) if args.quick else (6, 300, 2000, 3600)
    cluster = Cluster()
    up_port = free_port()
    upstream = start([sys.executable, "-c", f"import asyncio; from bench import loopback; "
                                            f"asyncio.run(loopback.serve_upstream({up_port}))"])
    try:
        lake_dir = tempfile.mkdtemp(prefix="aispendtrack-lake-")
        shared_env = {**os.environ, "AISPENDTRACK_CATALOG": cluster.create_database("bench"),
                      "AISPENDTRACK_DATA_PATH": lake_dir}
        plain_env = {k: v for k, v in os.environ.items() if k not in ENV}
        single = one_proxy(up_port, shared_env, plain_env, rounds, count, load)
        bare = single["bare mitmdump"]
        print(f"\none proxy, plain JSON ({rounds} interleaved rounds; rps at 32 connections)")
        print(f"  {'':<22}{'p50 ms':>8}{'+ms':>7}{'p99 ms':>8}{'rps':>8}{'x bare':>8}")
        for name, r in single.items():
            print(f"  {name:<22}{r['p50_ms']:>8.2f}{r['p50_ms'] - bare['p50_ms']:>+7.2f}{r['p99_ms']:>8.2f}"
                  f"{r['rps']:>8.0f}{r['rps'] / bare['rps']:>8.2f}")
        scale = replicas(up_port, shared_env, max(2, rounds // 2), load)
        print("\nbehind HAProxy, shared, 32 connections")
        for label, rps in scale.items():
            print(f"  {label:<22}{rps:>8.0f} rps  ({rps / scale['1 replica']:.2f}x one)")
        print(f"\nfiles under the data path after {flushes:,} flushes of 3 rows, back to back")
        for label, r in flush_files(cluster, flushes).items():
            print(f"  {label:<22}{r['files']:>6,} files, {r['files_after_maintenance']:>5,} after two maintenance "
                  f"runs ({r['rows']:,} rows, {r['ms_per_flush']:.1f} ms a flush)")
    finally:
        upstream.terminate()
        cluster.remove()


if __name__ == "__main__":
    main()
