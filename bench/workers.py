"""Whole-host throughput of `aispendtrack proxy --workers N` against bare mitmdump, in the same run.

    .venv/bin/python -m bench.workers            # about 5 minutes on 2 cores
    .venv/bin/python -m bench.workers --quick    # a smoke run
    .venv/bin/python -m bench.workers --embedded # the embedded mode: one DuckDB file, its owner a child

Bare mitmdump (one process), and ours in the shared mode (a throwaway PostgreSQL, as bench/shared.py
starts) with `--workers 1` and `--workers 2`, every call metered with a key without limits. Plain
JSON calls to the canned upstream of bench/loopback.py at 32 and 128 connections, the targets in
interleaved rounds (reversed every other round); medians of requests/s. The client and the upstream
run on the same host: on 2 cores they take a share of what the workers could use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.pg import Cluster

from . import loopback
from .proxy_overhead import ROOT, free_port, mitmdump, start, throughput, wait_for_port

CONNECTIONS = (32, 128)
# A target: (port, process, headers each request carries).
Target = tuple[int, subprocess.Popen, dict[str, str]]
# Starts more targets (bench/peers.py) for the upstream's port, adding each to the dict as it starts, so
# that a later one failing to start leaves none running.
Extra = Callable[[int, dict[str, Target]], None]


def ours(upstream_port: int, env: dict, workers: int) -> tuple[int, subprocess.Popen, str, Path]:
    """`aispendtrack proxy --workers N` (shared mode: ``env`` names the catalog), once every worker serves:
    (port, process, key, home). The key is named after the target, so that its rows can be counted apart."""
    home = Path(tempfile.mkdtemp(prefix="aispendtrack-bench-"))
    created = subprocess.run([sys.executable, "-m", "cli", "--home", str(home), "keys", "create", "--name",
                              f"bench-workers-{workers}", "--json"],
                             capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    port, log = free_port(), home / "proxy.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(home), "proxy", "--port", str(port),
                                    "--openai-upstream", f"http://127.0.0.1:{upstream_port}", "--prices-url", "off",
                                    "--workers", str(workers)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    wait_for_port(port, process, timeout=120)
    deadline = time.monotonic() + 120
    while workers > 1 and f"all {workers} workers serve" not in log.read_text():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"the workers did not start: {log.read_text()}")
        time.sleep(0.2)
    return port, process, json.loads(created.stdout)["key"], home


def run(upstream_port: int, env: dict, rounds: int, load: int,
        extra: Extra | None = None) -> tuple[dict[str, dict[int, float]], dict[str, tuple[int, int]]]:
    """Medians of requests/s per target and connections, and for ours (rows stored, calls sent) per target."""
    targets: dict[str, Target] = {}
    homes: dict[str, Path] = {}
    sent: dict[str, int] = {}
    try:
        port = free_port()
        targets["bare mitmdump"] = (port, mitmdump(upstream_port, port, []), {})
        for workers in (1, 2):
            port, process, key, homes[f"--workers {workers}"] = ours(upstream_port, env, workers)
            targets[f"--workers {workers}"] = (port, process, {"x-aispendtrack-key": key})
        wait_for_port(targets["bare mitmdump"][0], targets["bare mitmdump"][1])
        if extra is not None:
            extra(upstream_port, targets)
        time.sleep(3)  # keys loaded
        for name, (port, _, headers) in targets.items():
            answers(port, headers)
            sent[name] = 1
        samples: dict[str, dict[int, list[float]]] = {name: {c: [] for c in CONNECTIONS} for name in targets}
        order = list(targets.items())
        for n in range(rounds):
            for name, (port, _, headers) in (order[::-1] if n % 2 else order):
                raw = loopback.request_bytes(port, False, headers)
                asyncio.run(throughput(port, raw, 8, 200))  # warm
                for connections in CONNECTIONS:
                    samples[name][connections].append(asyncio.run(throughput(port, raw, connections, load)))
                sent[name] += 200 + load * len(CONNECTIONS)
    finally:
        for _, process, _ in targets.values():
            process.terminate()
            process.wait(60)
    medians = {name: {c: sorted(s)[len(s) // 2] for c, s in by_c.items()} for name, by_c in samples.items()}
    return medians, {name: (stored(home, env, name), sent[name]) for name, home in homes.items()}


def answers(port: int, headers: dict[str, str]) -> None:
    """One call through the target must come back 200 with the upstream's answer: a target misconfigured
    into error pages would look fast."""
    # A generous wait: a target's port may listen while its workers still start (LiteLLM's under uvicorn).
    status, _, body = asyncio.run(asyncio.wait_for(_call(port, loopback.request_bytes(port, False, headers)), 300))
    expected = json.loads(loopback.CHAT_BODY)
    try:
        reply = json.loads(body)
        same = (reply["choices"][0]["message"]["content"] == expected["choices"][0]["message"]["content"]
                and reply["usage"]["total_tokens"] == expected["usage"]["total_tokens"])
    except (ValueError, LookupError, TypeError):
        same = False
    if status != 200 or not same:
        raise RuntimeError(f"the target on port {port} answered {status} {body[:300]!r}, not the upstream's reply")


async def _call(port: int, raw: bytes) -> tuple[int, float, bytes]:
    conn = await loopback.Connection.open(port)
    try:
        return await conn.request(raw, time.perf_counter)
    finally:
        conn.close()


def stored(home: Path, env: dict, name: str) -> int:
    """Rows stored under the key of the target ``name`` (ours, stopped: its rows flushed)."""
    key = "bench-workers-" + name.rsplit(" ", 1)[1]
    out = subprocess.run([sys.executable, "-m", "cli", "--home", str(home), "report", "--by", "key", "--key", key,
                          "--format", "json"], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return sum(int(group["calls"]) for group in json.loads(out.stdout))


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--embedded", action="store_true", help="the embedded mode instead of the shared one")
    parser.add_argument("--rounds", type=int, help="rounds (5; 2 with --quick)")
    parser.add_argument("--requests", type=int,
                        help="requests per target, round and count of connections (3000; 600 with --quick)")
    return parser


def measure(args: argparse.Namespace, extra: Extra | None = None) -> None:
    """Start the upstream (and for the shared mode a PostgreSQL), run the rounds, print the table; exit
    non-zero unless ours stored exactly one row per call."""
    rounds, load = (2, 600) if args.quick else (5, 3000)
    rounds, load = args.rounds or rounds, args.requests or load
    cluster = None if args.embedded else Cluster()
    up_port = free_port()
    upstream = start([sys.executable, "-c", f"import asyncio; from bench import loopback; "
                                            f"asyncio.run(loopback.serve_upstream({up_port}))"])
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("AISPENDTRACK_CATALOG", "AISPENDTRACK_DATA_PATH")}
        if cluster is not None:
            env |= {"AISPENDTRACK_CATALOG": cluster.create_database("bench"),
                    "AISPENDTRACK_DATA_PATH": tempfile.mkdtemp(prefix="aispendtrack-lake-")}
        results, rows = run(up_port, env, rounds, load, extra)
    finally:
        upstream.terminate()
        if cluster is not None:
            cluster.remove()
    bare = results["bare mitmdump"]
    mode = "embedded" if cluster is None else "shared"
    print(f"\nwhole host, plain JSON, {mode} mode, requests/s ({rounds} interleaved rounds, medians; "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f})")
    print(f"  {'':<28}" + "".join(f"{f'c={c}':>10}{'x bare':>8}" for c in CONNECTIONS))
    for name, by_c in results.items():
        print(f"  {name:<28}" + "".join(f"{by_c[c]:>10.0f}{by_c[c] / bare[c]:>8.2f}" for c in CONNECTIONS))
    for name, (count, calls) in rows.items():
        print(f"  {name}: {count} rows stored for {calls} calls")
    if any(count != calls for count, calls in rows.values()):
        sys.exit("ours did not store exactly one row per call")


def main() -> None:
    measure(arguments(__doc__.splitlines()[0]).parse_args())


if __name__ == "__main__":
    main()
